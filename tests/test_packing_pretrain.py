"""`data.pack=true` through the real pretraining pipeline: an MLM recipe trains on packed rows; pair
recipes are refused with one clear line."""

import pytest
import torch

from bertforge.errors import BertforgeError
from bertforge.pretrain import make_spec, pretrain
from taskkit import small_store

FAST = ["max_steps=3", "batch_size=8", "max_len=64", "eval_batches=2", "eval_every=0", "save_every_steps=0",
        "log_every=1", "warmup_steps=1", "hidden_size=32", "intermediate_size=64", "num_heads=2", "pack=true"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed-pretrain")
    small_store(root, "wiki-sample", "bpe", 800)
    return root


@pytest.mark.slow
def test_packed_roberta_pretrains(store, tmp_path):
    spec = make_spec("roberta", str(store / "store"), "tiny", assignments=FAST, tokenizer=str(store / "tok"))
    result = pretrain(spec, tmp_path / "run", progress_bar=False)
    assert result.step == 3
    assert result.eval_metrics and all(torch.isfinite(torch.tensor(v)) for v in result.eval_metrics.values())


def test_pair_recipes_refuse_packing(store, tmp_path):
    spec = make_spec("albert", str(store / "store"), "tiny", assignments=FAST, tokenizer=str(store / "tok"))
    with pytest.raises(BertforgeError, match="data.pack=true: recipe .albert"):
        pretrain(spec, tmp_path / "run", progress_bar=False)
