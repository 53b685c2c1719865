"""`data.pack=true` through the real pretraining pipeline: an MLM recipe trains on packed rows; pair
recipes are refused with one clear line."""

import pytest
import torch

from bertforge.data.corpus import build_corpus
from bertforge.data.sources import BuildReport, named_source
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.errors import BertforgeError
from bertforge.pretrain import make_spec, pretrain

FAST = ["max_steps=3", "batch_size=8", "max_len=64", "eval_batches=2", "eval_every=0", "save_every_steps=0",
        "log_every=1", "warmup_steps=1", "hidden_size=32", "intermediate_size=64", "num_heads=2", "pack=true"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed-pretrain")
    text = root / "wiki.txt"
    with text.open("w", encoding="utf-8") as f:
        for i, piece in enumerate(named_source("wiki-sample").pieces(BuildReport())):
            if i >= 300:
                break
            f.write(piece.text.replace("\n", " ") + "\n")
    train_tokenizer("bpe", [text], vocab_size=800, out=root / "tok", progress=False)
    build_corpus(root / "store", str(root / "tok"), [text], workers=0, validation_fraction=0.1, progress=False)
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
