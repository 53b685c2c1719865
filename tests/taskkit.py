"""Shared helpers for the fine-tuning tests: a tiny WordPiece tokenizer (English words, a few Chinese
characters) and a tiny checkpoint directory built on it."""

from __future__ import annotations

from pathlib import Path

from bertforge.config import PRESETS
from bertforge.modeling import Encoder

WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the a is was movie film good great fun bad awful boring not very "
    "john mary lives works in at paris london acme corp who where what does did ? , . ! ##s ##ing ##ed "
    "play run 中 国 人 民 银 行 北 京 上 海 我 爱 好 坏 很 不 是 在 的 了 喜 欢 电 影 张 三 住 公 司 谁 哪 里 "
    "首 都 城 市 大 学 生 有 一 个 名 字 叫 工 作"
).split()


def tokenizer_dir(tmp: Path) -> Path:
    d = tmp / "tok"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return d


def tokenizer(tmp: Path):
    from bertforge.data.tokenizers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(tmp))


def tiny_config(**changes):
    return PRESETS["test-tiny"].replace(vocab_size=len(WORDS), hidden_dropout=0.0, attention_dropout=0.0, **changes)


def model_dir(tmp: Path, seed: int = 0, **changes) -> Path:
    """A checkpoint directory (config.json + weights + tokenizer) of a random tiny encoder."""
    import torch

    torch.manual_seed(seed)
    d = tmp / "model"
    Encoder(tiny_config(**changes)).save_pretrained(d)
    tok = tokenizer(tmp)
    tok.save_pretrained(d)
    return d


def source_text(source: str, path: Path, pieces: int = 300) -> Path:
    """The first ``pieces`` paragraphs of a named real corpus, one a line, in ``path``."""
    from bertforge.data.sources import BuildReport, named_source

    with path.open("w", encoding="utf-8") as f:
        for i, piece in enumerate(named_source(source).pieces(BuildReport())):
            if i >= pieces:
                break
            f.write(piece.text.replace("\n", " ") + "\n")
    return path


def small_store(root: Path, source: str, kind: str, vocab_size: int, name: str = "store") -> Path:
    """A tokenizer (ROOT/tok) trained on 300 paragraphs of a named corpus and the corpus store
    (ROOT/NAME) built from them, 10% of the documents held out."""
    from bertforge.data.corpus import build_corpus
    from bertforge.data.tokenizer_train import train_tokenizer

    text = source_text(source, root / f"{source}.txt")
    train_tokenizer(kind, [text], vocab_size=vocab_size, out=root / "tok", progress=False)
    build_corpus(root / name, str(root / "tok"), [text], workers=0, validation_fraction=0.1, progress=False)
    return root / name
