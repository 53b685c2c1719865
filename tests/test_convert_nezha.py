"""NEZHA: the relative position table against the paper's formula, and both checkpoint layouts.

Parity with transformers 4.40.2's NezhaModel (the last release that had it) needs an old transformers
and lives in scripts/verify_nezha_parity.sh.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from bertforge.auto import AutoConfig, AutoModelForPreTraining
from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.positions import nezha_relative_positions

NEZHA = PRESETS["nezha-base"].replace(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                      intermediate_size=37, max_relative_position=5)


@pytest.mark.parametrize("length,depth,k", [(9, 8, 3), (4, 6, 64), (12, 16, 5)])
def test_relative_table_follows_the_paper(length, depth, k):
    """Wei et al. (2019), eq. 4-5: a_ij[2m] = sin(x / 10000^(2m/d)), a_ij[2m+1] = cos(x / 10000^(2m/d)),
    with x the relative distance j - i clipped to [-k, k]; the released code (and transformers) index a
    sinusoid table with x + k, so x + k is the argument here."""
    table = nezha_relative_positions(length, depth, k)
    assert table.shape == (length, length, depth)
    expected = torch.empty(length, length, depth, dtype=torch.float64)
    for i in range(length):
        for j in range(length):
            x = max(-k, min(k, j - i)) + k
            for m in range(depth // 2):
                angle = x / 10000 ** (2 * m / depth)
                expected[i, j, 2 * m], expected[i, j, 2 * m + 1] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(table, expected.float(), atol=1e-6, rtol=0)
    # a_ij depends on j - i only, and is constant beyond the clipping distance
    assert torch.equal(table[0, 1], table[length - 2, length - 1])
    if length > k + 1:
        assert torch.equal(table[0, k], table[0, length - 1])


def test_saves_the_transformers_4_40_layout(tmp_path):
    PretrainingModel(NEZHA, ("mlm", "pair")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "nezha" and config["architectures"] == ["NezhaForPreTraining"]
    assert config["max_relative_position"] == 5
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "nezha.embeddings.word_embeddings.weight" in names and "cls.seq_relationship.weight" in names
    assert not any("position_embeddings" in n for n in names)  # positions are functional, not learned


def original_layout(src, dst):
    """Rewrite a transformers NEZHA directory as Huawei released NEZHA: bert_config.json without model_type,
    pytorch_model.bin with bert.* names."""
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
            "max_relative_position", "type_vocab_size", "initializer_range")
    original = {k: config[k] for k in keep} | {"use_relative_position": True}
    (dst / "bert_config.json").write_text(json.dumps(original))
    tensors = {k.replace("nezha.", "bert.", 1): v for k, v in load_file(src / "model.safetensors").items()}
    torch.save(tensors, dst / "pytorch_model.bin")
    return original


def test_loads_the_original_release_layout(tmp_path):
    torch.manual_seed(0)
    model = PretrainingModel(NEZHA, ("mlm", "pair")).eval()
    model.save_pretrained(tmp_path / "hf")
    original_layout(tmp_path / "hf", tmp_path / "original")
    assert AutoConfig.from_pretrained(tmp_path / "original") == NEZHA
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path / "original")
    assert loaded.head_names == ("mlm", "pair")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_original_config_without_relative_positions_is_refused(tmp_path):
    PretrainingModel(NEZHA, ("mlm",)).save_pretrained(tmp_path / "hf")
    original = original_layout(tmp_path / "hf", tmp_path / "original")
    (tmp_path / "original" / "bert_config.json").write_text(json.dumps(original | {"use_relative_position": False}))
    with pytest.raises(BertforgeError, match=r"bert_config\.json: use_relative_position=False: .* plain BERT"):
        AutoConfig.from_pretrained(tmp_path / "original")
