"""Bad checkpoints give one clear error naming the file and the problem; omitted parts load as absent.

Checkpoint directories here are pure transformers layout (bertforge's own section removed from
config.json), built without transformers so these tests need only bertforge.
"""

import json
import logging
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertforge.auto import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining
from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel

TINY = PRESETS["test-tiny"]


def hf_dir(path, heads=("mlm", "pair"), config=TINY):
    """A transformers-layout BertForPreTraining directory (no bertforge section)."""
    torch.manual_seed(0)
    model = PretrainingModel(config, heads)
    model.save_pretrained(path)
    edit_config(path, lambda c: c.pop("bertforge"))
    return model


def edit_config(path, change):
    data = json.loads((path / "config.json").read_text())
    change(data)
    (path / "config.json").write_text(json.dumps(data))


def edit_weights(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def batch():
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["bert-base-uncased", "google/electra-small-discriminator"])
def test_hub_name_asks_for_a_local_directory(name):
    with pytest.raises(BertforgeError, match="not a local directory: bertforge never downloads"):
        AutoModel.from_pretrained(name)


def test_a_file_is_not_a_directory(tmp_path):
    hf_dir(tmp_path)
    with pytest.raises(BertforgeError, match="is a file; pass the checkpoint directory"):
        AutoModel.from_pretrained(tmp_path / "config.json")


def test_unknown_config_key(tmp_path):
    hf_dir(tmp_path)
    edit_config(tmp_path, lambda c: c.update(frobnicate=3))
    with pytest.raises(BertforgeError, match=r"config\.json: unknown config key 'frobnicate' for model_type 'bert'"):
        AutoModel.from_pretrained(tmp_path)


def test_unknown_key_in_bertforge_section(tmp_path):
    PretrainingModel(TINY, ("mlm",)).save_pretrained(tmp_path)
    edit_config(tmp_path, lambda c: c["bertforge"]["config"].update(frobnicate=3))
    with pytest.raises(BertforgeError, match=r"config\.json \(bertforge section\): unknown config key 'frobnicate'"):
        AutoConfig.from_pretrained(tmp_path)


def test_unknown_model_type(tmp_path):
    hf_dir(tmp_path)
    edit_config(tmp_path, lambda c: c.update(model_type="gpt2"))
    with pytest.raises(BertforgeError, match=r"config\.json: unknown model_type 'gpt2'; bertforge reads bert, "):
        AutoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("key,value", [("position_embedding_type", "relative_key"), ("is_decoder", True),
                                       ("tie_word_embeddings", False), ("hidden_act", "mish")])
def test_config_values_bertforge_does_not_build(tmp_path, key, value):
    hf_dir(tmp_path)
    edit_config(tmp_path, lambda c: c.update({key: value}))
    with pytest.raises(BertforgeError, match=rf"config\.json: .*{key}.*{value}"):
        AutoModel.from_pretrained(tmp_path)


def test_directory_without_weights(tmp_path):
    hf_dir(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(BertforgeError, match="no weights: expected one of model.safetensors, "):
        AutoModel.from_pretrained(tmp_path)


def test_shape_disagrees_with_config(tmp_path):
    hf_dir(tmp_path)
    edit_config(tmp_path, lambda c: c.update(intermediate_size=40))
    with pytest.raises(BertforgeError, match=r"model\.safetensors: tensor '.*intermediate\.dense\.weight' has shape "
                                             r"\(37, 32\), but config\.json implies \(40, 32\)"):
        AutoModel.from_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path):
    hf_dir(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(BertforgeError, match=r"model\.safetensors: cannot read weights \(.*\); is the file truncated"):
        AutoModel.from_pretrained(tmp_path)


def test_missing_encoder_tensor(tmp_path):
    hf_dir(tmp_path)
    edit_weights(tmp_path, lambda t: t.pop("bert.encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(BertforgeError, match=r"encoder tensor 'encoder\.layer\.1\.attention\.self\.key\.weight' is missing"):
        AutoModel.from_pretrained(tmp_path)


def test_unexpected_encoder_tensor(tmp_path):
    hf_dir(tmp_path)
    edit_config(tmp_path, lambda c: c.update(num_hidden_layers=1))
    with pytest.raises(BertforgeError, match=r"unexpected encoder tensor 'bert\.encoder\.layer\.1\..*num_layers=1"):
        AutoModel.from_pretrained(tmp_path)


def test_incomplete_head(tmp_path):
    hf_dir(tmp_path)
    edit_weights(tmp_path, lambda t: t.pop("cls.predictions.transform.LayerNorm.bias"))
    with pytest.raises(BertforgeError, match=r"the mlm head is incomplete: 'cls\.predictions\.transform\.LayerNorm\.bias'"):
        AutoModelForPreTraining.from_pretrained(tmp_path)


def test_untied_decoder_is_refused(tmp_path):
    model = hf_dir(tmp_path)
    decoder = model.embedding_weight.detach() + 1
    edit_weights(tmp_path, lambda t: t.update({"cls.predictions.decoder.weight": decoder}))
    with pytest.raises(BertforgeError, match="differs from the word embeddings"):
        AutoModelForMaskedLM.from_pretrained(tmp_path)


def test_pickle_in_pytorch_model_bin_is_refused(tmp_path):
    hf_dir(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": object()}, f, protocol=2)
    with pytest.raises(BertforgeError, match=r"pytorch_model\.bin: refused: .* never runs pickled code"):
        AutoModel.from_pretrained(tmp_path)


def test_pytorch_model_bin_and_shards_load(tmp_path):
    model = hf_dir(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    ids, mask = batch()
    with torch.no_grad():
        expected = model.eval()(ids, mask)["mlm_logits"]
        torch.testing.assert_close(AutoModelForMaskedLM.from_pretrained(tmp_path)(ids, mask)["mlm_logits"], expected)
    # the sharded variant: two safetensors files and an index
    (tmp_path / "pytorch_model.bin").unlink()
    names = sorted(tensors)
    shards = {"model-1.safetensors": names[::2], "model-2.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard, metadata={"format": "pt"})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForMaskedLM.from_pretrained(tmp_path)(ids, mask)["mlm_logits"], expected)
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(BertforgeError, match=r"model-2\.safetensors: missing \(the index lists it\)"):
        AutoModel.from_pretrained(tmp_path)


def test_legacy_names_and_stored_decoder_load(tmp_path):
    """Old ports name LayerNorm parameters gamma/beta and store the (tied) decoder and its bias."""
    model = hf_dir(tmp_path)

    def legacy(t):
        for key in [k for k in t if k.endswith("LayerNorm.weight")]:
            t[key[: -len("weight")] + "gamma"] = t.pop(key)
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].clone()
        t["cls.predictions.decoder.bias"] = t.pop("cls.predictions.bias")
        t["bert.embeddings.position_ids"] = torch.arange(512)[None]

    edit_weights(tmp_path, legacy)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_missing_pooler_loads_as_absent_with_a_note(tmp_path, caplog):
    hf_dir(tmp_path, heads=("mlm",), config=TINY.replace(add_pooler=False))  # BertForMaskedLM: no pooler
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        encoder = AutoModel.from_pretrained(tmp_path)
    assert encoder.pooler is None and encoder(*batch()).pooler_output is None
    assert [r.message for r in caplog.records] == [
        "model.safetensors: no pooler in the checkpoint; loaded without it (pooler_output is None)"
    ]


def test_missing_pretraining_heads_load_as_absent_with_a_note(tmp_path, caplog):
    hf_dir(tmp_path, heads=("mlm",))  # MLM, no NSP head
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        model = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert model.head_names == ("mlm",) and model.pair is None
    assert [r.message for r in caplog.records] == [
        "model.safetensors: no NSP/SOP head in the checkpoint; loaded without it"
    ]


def test_base_checkpoint_for_masked_lm(tmp_path, caplog):
    torch.manual_seed(0)
    PretrainingModel(TINY, ()).encoder.save_pretrained(tmp_path)  # a bare BertModel, like MiniLM
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        absent = AutoModelForMaskedLM.from_pretrained(tmp_path)
        fresh = AutoModelForMaskedLM.from_pretrained(tmp_path, heads=("mlm",))
    assert absent.head_names == () and absent.mlm is None
    assert fresh.head_names == ("mlm",) and fresh(*batch())["mlm_logits"].shape == (2, 7, 100)
    assert [r.message for r in caplog.records] == [
        "model.safetensors: no masked-LM head in the checkpoint; loaded without it",
        "model.safetensors: no masked-LM head in the checkpoint; initialised it randomly",
    ]


def test_unused_tensors_are_noted(tmp_path, caplog):
    hf_dir(tmp_path)
    edit_weights(tmp_path, lambda t: t.update({"classifier.weight": torch.zeros(3, 32), "classifier.bias": torch.zeros(3)}))
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        AutoModelForPreTraining.from_pretrained(tmp_path)
    assert [r.message for r in caplog.records] == [
        "model.safetensors: ignored 2 tensor(s) no bertforge part uses: classifier.bias, classifier.weight"
    ]
