"""Builders, masking and the stream on real corpus stores (bertforge.data.corpus), English and Chinese."""

import numpy as np
import pytest

from bertforge.data.builders import FullSentences, NSPPairs, SOPPairs
from bertforge.data.collate import PretrainingStream
from bertforge.data.corpus import build_corpus
from bertforge.data.masking import IGNORE, MASKING, Masker
from bertforge.data.sources import BuildReport, named_source
from bertforge.data.tokenizer_train import train_tokenizer

WORDS = ("the quick brown fox jumps over lazy dog playing played running unbelievable house garden music river "
         "mountain city rain snow light").split()


def english_docs(n, seed=0):
    rng = np.random.default_rng(seed)
    sentence = lambda: " ".join(rng.choice(WORDS, rng.integers(3, 12))).capitalize() + "."  # noqa: E731
    return [[" ".join(sentence() for _ in range(rng.integers(1, 4))) for _ in range(rng.integers(1, 6))]
            for _ in range(n)]


def store_from(tmp_path, kind, docs, vocab):
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    train_tokenizer(kind, [text], vocab, out=tmp_path / "tok", progress=False)
    return build_corpus(tmp_path / "store", tmp_path / "tok", [str(text)], document_per="block", workers=0,
                        validation_fraction=0.1, progress=False)


def whole_words_only(batch, starts):
    """Chosen tokens cover whole words of ``starts`` (a word runs from one flag to the next text token
    that is flagged or follows a special token). Returns the number of chosen multi-token words."""
    chosen = (batch["mlm_labels"] != IGNORE).numpy()
    multi = 0
    for row, flags in zip(chosen, starts):
        word = np.cumsum(flags)
        for w in np.unique(word[row]):
            members = word == w
            assert row[members].all(), "a word is partly masked"
            multi += members.sum() > 1
    return multi


def test_english_store(tmp_path):
    store = store_from(tmp_path, "wordpiece", english_docs(300, seed=3), 150)
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)
    multi = 0
    for builder in (NSPPairs(max_len=48), SOPPairs(max_len=48), FullSentences(max_len=64)):
        stream = PretrainingStream(store, builder, masker, batch_size=16, seed=1)
        batch = next(stream)
        ex = stream.examples
        order = stream._rank_order(0)[:16]
        arrays = ex.batch(order)
        real = batch["attention_mask"].bool().numpy()
        text = real & ~np.isin(arrays["input_ids"], list(store.manifest["special_ids"].values()))
        chosen = batch["mlm_labels"].numpy() != IGNORE
        assert not (chosen & ~text).any() and (batch["mlm_labels"].numpy()[chosen] == arrays["input_ids"][chosen]).all()
        starts = arrays["word_start"] | ~text  # specials close words
        multi += whole_words_only(batch, starts)
        train = set(store.documents("train").tolist())
        for i in order[:8]:  # sequences come from the train split, spelled as the store has them
            for piece in ex.ranges(int(i)):
                if isinstance(piece, tuple):
                    lo, hi = piece
                    d = np.searchsorted(store.doc_offsets, np.searchsorted(store.sent_offsets, lo, "right") - 1,
                                        "right") - 1
                    assert int(d) in train
        if ex.has_pairs:
            assert abs(ex.pair_label.mean() - 0.5) < 0.1
    assert multi > 0  # words of several WordPiece tokens were masked whole


@pytest.mark.slow
def test_chinese_store_masks_the_segmenters_words(tmp_path):
    """A chinese-char store gets its word starts from jieba at build time; WWM masks those words."""
    pieces = list(named_source("peoples-daily").pieces(BuildReport()))[:400]
    docs = [[p.text] for p in pieces]
    store = store_from(tmp_path, "chinese-char", docs, 3000)
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)
    stream = PretrainingStream(store, SOPPairs(max_len=128), masker, batch_size=32, seed=0)
    multi = 0
    for _ in range(4):
        position = stream.position
        batch = next(stream)
        arrays = stream.examples.batch(stream._rank_order(0)[position * 32:(position + 1) * 32])
        text = batch["attention_mask"].bool().numpy() & ~np.isin(
            arrays["input_ids"], list(store.manifest["special_ids"].values()))
        multi += whole_words_only(batch, arrays["word_start"] | ~text)
    assert multi > 50  # multi-character words masked whole, not character by character
    assert store.word_start[:2000].mean() < 0.8  # the flags are words, not characters
