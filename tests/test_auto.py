"""bertforge -> bertforge round trips through save_pretrained / from_pretrained are exact, whatever the config."""

import json
import logging

import pytest
import torch

from bertforge import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining
from bertforge.config import PRESETS
from bertforge.convert.hf import PRETRAINING_HEADS
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder

TINY = PRESETS["test-tiny"]


def shrink(name):
    """A preset at test size, keeping everything that makes it that architecture."""
    c = PRESETS[name]
    return c.replace(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=37,
                     embedding_size=16 if c.embedding_size else 0, max_position_embeddings=40)


def batch(config):
    ids = torch.randint(5, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = config.pad_token_id, 0
    return ids, mask


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def assert_identical(a, b):
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "test-tiny"])
def test_every_preset_round_trips_in_transformers_layout(name, tmp_path):
    config = shrink(name)
    torch.manual_seed(0)
    model = PretrainingModel(config, PRETRAINING_HEADS[config.model_type]).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config.model_type and saved["bertforge"]["layout"] == "hf"
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert_identical(model, loaded)
    assert AutoConfig.from_pretrained(tmp_path) == config


@pytest.mark.parametrize(
    "config,heads",
    [
        (TINY.replace(sharing="attention"), ("mlm", "pair")),
        (TINY.replace(sharing="ffn", embedding_size=16), ("mlm",)),
        (TINY.replace(sharing="all"), ("mlm",)),  # all-shared, but a BERT: transformers' BertModel cannot
        (TINY.replace(position_type="rotary"), ("mlm",)),  # rotary positions under model_type "bert"
        (TINY, ("mlm", "sbo")),  # SpanBERT's span boundary head has no transformers class
        (shrink("electra-small-discriminator"), ("mlm", "rtd")),  # generator + discriminator heads together
    ],
    ids=["attention-sharing", "ffn-sharing", "bert-all-sharing", "bert-rotary", "sbo-head", "mlm+rtd"],
)
def test_configs_transformers_cannot_express_round_trip_in_bertforge_layout(config, heads, tmp_path, caplog):
    torch.manual_seed(0)
    model = PretrainingModel(config, heads).eval()
    perturb(model)
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        model.save_pretrained(tmp_path)
    assert "transformers cannot express" in caplog.text and "bertforge's own layout" in caplog.text
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "bertforge" and saved["bertforge"]["layout"] == "bertforge"
    loaded = PretrainingModel.from_pretrained(tmp_path)
    assert loaded.head_names == heads
    assert_identical(model, loaded)
    ids, mask = batch(config)
    with torch.no_grad():
        for key in ("mlm_logits", "pair_logits", "rtd_logits"):
            if key in model(ids, mask):
                assert torch.equal(model(ids, mask)[key], loaded(ids, mask)[key])
    # the encoder alone, from the same directory
    assert_identical(model.encoder, AutoModel.from_pretrained(tmp_path))


def test_encoder_round_trip_and_entry_points_agree(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(TINY.replace(sharing="attention")).eval()
    encoder.save_pretrained(tmp_path / "a")
    assert_identical(encoder, Encoder.from_pretrained(tmp_path / "a"))
    model = PretrainingModel(TINY, ("mlm",))
    model.save_pretrained(tmp_path / "b")
    assert_identical(model, AutoModelForMaskedLM.from_pretrained(tmp_path / "b"))
    assert_identical(model.encoder, AutoModel.from_pretrained(tmp_path / "b"))


def test_save_is_atomic_and_overwrites(tmp_path):
    model = PretrainingModel(TINY, ("mlm",))
    model.save_pretrained(tmp_path)
    torch.manual_seed(1)
    other = PretrainingModel(TINY, ("mlm",))
    other.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    assert_identical(other, AutoModelForMaskedLM.from_pretrained(tmp_path))


def test_loaded_models_are_in_eval_mode_and_fp32(tmp_path):
    model = PretrainingModel(TINY, ("mlm", "pair")).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert not loaded.training
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
