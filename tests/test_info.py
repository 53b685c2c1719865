"""`bertforge info`: every preset's parameter count equals the equivalent transformers model's, is close to
the paper's number, and --set overrides change it."""

import json

import pytest
import torch

from bertforge.cli import main
from bertforge.commands.info import PAPER, count_parameters
from bertforge.config import PRESETS
from bertforge.convert import hf

PRESET_NAMES = [n for n in PRESETS if n != "test-tiny"]


def transformers_count(config) -> int:
    """The parameter count of transformers' AutoModel for the same config, built on the meta device."""
    transformers = pytest.importorskip("transformers")
    data = hf.config_to_hf(config, ())
    if config.model_type == "nezha":
        # transformers 5 has no NEZHA (scripts/verify_nezha_parity.sh compares with 4.40.2's NezhaModel):
        # it is BertModel without the absolute position table.
        bert = transformers.BertConfig(**{k: v for k, v in data.items() if k in hf.HF_SPECS["bert"].keys})
        with torch.device("meta"):
            count = transformers.BertModel(bert).num_parameters()
        return count - config.max_position_embeddings * config.hidden_size
    hf_config = transformers.AutoConfig.for_model(**data)
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(hf_config)
    # RoFormer keeps its fixed sinusoid table as a frozen parameter; bertforge computes it on the fly.
    return model.num_parameters(only_trainable=config.model_type == "roformer")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_count_equals_transformers(name):
    config = PRESETS[name]
    assert hf.hf_incompatibility(config, ()) is None
    assert count_parameters(config) == transformers_count(config)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_count_is_close_to_the_paper(name):
    millions = count_parameters(PRESETS[name]) / 1e6
    # ALBERT-xxlarge is the loosest: 235M published, 222.6M counted (also by transformers).
    assert abs(millions - PAPER[name][0]) / PAPER[name][0] < 0.06


@pytest.mark.slow
def test_info_lists_every_preset_with_its_count(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in PRESET_NAMES:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count_parameters(PRESETS[name]):,}" in line
    assert "110M (Devlin et al., 2019)" in out and "235M (Lan et al., 2020" in out


def test_set_overrides_show_the_new_count(capsys):
    assert main(["info", "--preset", "albert-base", "--set", "sharing=none", "--set", "num_layers=6"]) == 0
    out = capsys.readouterr().out
    unshared = PRESETS["albert-base"].replace(sharing="none", num_layers=6)
    assert out.startswith(f"albert-base: {count_parameters(unshared):,} parameters")
    assert f"preset without --set sharing=none num_layers=6: {count_parameters(PRESETS['albert-base']):,}" in out
    assert "sharing = none" in out
    # the count is the model's own: six distinct layers instead of one, as transformers' num_hidden_groups=6
    assert count_parameters(unshared) == transformers_count(unshared)


def test_json_and_checkpoint_directory(capsys, tmp_path):
    assert main(["info", "--preset", "electra-small-discriminator", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["parameters"] == count_parameters(PRESETS["electra-small-discriminator"])
    assert row["config"]["embedding_size"] == 128 and row["paper_millions"] == 14
    from bertforge.modeling import Encoder

    Encoder(PRESETS["test-tiny"]).save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == count_parameters(PRESETS["test-tiny"])


def test_bad_override_is_a_clear_error(capsys):
    assert main(["info", "--preset", "bert-base", "--set", "frobnicate=1"]) == 2
    assert "bertforge: error: --set: unknown config key 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("setting, expected", [
    ("num_heads=0", "num_heads=0: expected a whole number > 0"),  # was a ZeroDivisionError
    ("num_heads=5", "num_heads=5: expected a divisor of hidden_size=768"),
    ("embedding_size=-4", "embedding_size=-4: expected a whole number >= 0"),
    ("hidden_dropout=nan", "hidden_dropout=nan: expected a probability in [0, 1)"),
    ("pad_token_id=30522", "pad_token_id=30522: expected a token id in 0..30521 (vocab_size=30522)"),
])
def test_out_of_range_override_is_a_clear_error(setting, expected, capsys):
    assert main(["info", "--preset", "bert-base", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bertforge: error: --set: {expected}"]
