"""Sequence builders over a corpus store: NSP, SOP, FULL-SENTENCES, DOC-SENTENCES, single segments."""

import random

import numpy as np
import pytest

from bertforge.data.builders import (
    BUILDERS, DocSentences, FullSentences, NSPPairs, SingleSegments, SOPPairs, _truncate, builder,
)
from bertforge.errors import BertforgeError

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


class FakeStore:
    """In memory, with the attributes of bertforge.data.corpus.CorpusStore (interfaces.md, section 2)."""

    def __init__(self, doc_sentence_lengths, vocab_size=1000, seed=0, word_start_p=0.6, validation=()):
        rng = np.random.default_rng(seed)
        lengths = np.array([n for doc in doc_sentence_lengths for n in doc], dtype=np.int64)
        self.num_tokens, self.num_sents = int(lengths.sum()), len(lengths)
        self.num_docs = len(doc_sentence_lengths)
        self.tokens = rng.integers(5, vocab_size, self.num_tokens).astype(np.uint16)
        self.sent_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.doc_offsets = np.concatenate([[0], np.cumsum([len(d) for d in doc_sentence_lengths])]).astype(np.int64)
        starts = rng.random(self.num_tokens) < word_start_p
        starts[self.sent_offsets[:-1][lengths > 0]] = True
        self.word_start = starts.astype(np.uint8)
        self.validation = np.isin(np.arange(self.num_docs), list(validation))
        self.manifest = {"vocab_size": vocab_size, "tokenizer_kind": "wordpiece", "tokenizer_fingerprint": "fake",
                         "special_ids": dict(SPECIAL)}

    def documents(self, split=None):
        docs = np.arange(self.num_docs, dtype=np.int64)
        return docs if split is None else docs[self.validation == (split == "validation")]

    def doc_of_token(self, t):
        return np.searchsorted(self.doc_offsets, np.searchsorted(self.sent_offsets, t, side="right") - 1,
                               side="right") - 1


def random_store(num_docs=3600, seed=0, **kw):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, 30, rng.integers(1, 20)).tolist() for _ in range(num_docs)]
    return FakeStore(docs, seed=seed, **kw)


@pytest.fixture(scope="module")
def store():
    return random_store()


def segments(ex, i):
    """(A range, B range) of pair sequence i, checking the [CLS] A [SEP] B [SEP] layout."""
    pieces = ex.ranges(i)
    assert pieces[0] == SPECIAL["cls"] and pieces[2] == SPECIAL["sep"] and pieces[4] == SPECIAL["sep"]
    return pieces[1], pieces[3]


def pair_arrays(ex):
    """Vectorized `segments` over all pairs: (a0, a1, b0, b1) token bounds."""
    p = ex.ptr[:-1]
    assert (np.diff(ex.ptr) == 5).all() and (ex.token[p] == SPECIAL["cls"]).all()
    assert (ex.token[p + 2] == SPECIAL["sep"]).all() and (ex.token[p + 4] == SPECIAL["sep"]).all()
    assert (ex.token[p + 1] == -1).all() and (ex.token[p + 3] == -1).all()
    a0, b0 = ex.lo[p + 1], ex.lo[p + 3]
    return a0, a0 + ex.length[p + 1], b0, b0 + ex.length[p + 3]


def test_nsp_labels_balanced_and_negatives_from_another_document(store):
    ex = NSPPairs(max_len=64).build(store, None, seed=0)
    assert len(ex) >= 10_000
    assert abs(ex.pair_label.mean() - 0.5) < 0.02
    a0, a1, b0, b1 = pair_arrays(ex)
    da, db = store.doc_of_token(a0), store.doc_of_token(b0)
    assert (da == store.doc_of_token(a1 - 1)).all() and (db == store.doc_of_token(b1 - 1)).all()  # one doc each
    random_b = ex.pair_label == 1
    assert (da[random_b] != db[random_b]).all()
    assert (da[~random_b] == db[~random_b]).all() and (b0[~random_b] >= a1[~random_b]).all()  # B follows A
    assert ((a1 - a0) + (b1 - b0) <= 64 - 3).all() and (a1 > a0).all() and (b1 > b0).all()


def test_sop_negatives_are_exactly_swapped_consecutive_segments(store):
    ex = SOPPairs(max_len=64).build(store, None, seed=0)
    assert len(ex) >= 10_000
    assert abs(ex.pair_label.mean() - 0.5) < 0.02
    a0, a1, b0, b1 = pair_arrays(ex)
    swapped = ex.pair_label == 1
    first0, first1 = np.where(swapped, b0, a0), np.where(swapped, b1, a1)  # the earlier segment
    second0, second1 = np.where(swapped, a0, b0), np.where(swapped, a1, b1)
    assert (store.doc_of_token(first0) == store.doc_of_token(second1 - 1)).all(), "one document"
    assert (second0 >= first1).all()
    whole = (a1 - a0) + (b1 - b0) < 64 - 3  # not truncated: the two segments touch
    assert (second0[whole] == first1[whole]).all() and whole.sum() > 1000 and (whole & swapped).sum() > 500


def test_one_segment_documents_are_split_or_skipped_and_counted():
    # doc 0: one 12-token sentence; doc 1: one sentence that is a single word; doc 2: normal.
    st = FakeStore([[12], [5], [10, 10, 10]], seed=1)
    st.word_start[st.sent_offsets[1]:st.sent_offsets[2]] = [1, 0, 0, 0, 0]
    ex = SOPPairs(max_len=64, short_seq_prob=0.0).build(st, None, seed=0)
    assert ex.stats["unsplittable"] == 1 and ex.stats["split_single_segment"] == 1
    (a0, a1), (b0, b1) = segments(ex, 0)
    lo, hi = sorted([(a0, a1), (b0, b1)])
    assert lo[0] == 0 and lo[1] == hi[0] and hi[1] == 12 and st.word_start[hi[0]] == 1
    for i in range(len(ex)):  # never a segment from another document
        (a0, a1), (b0, b1) = segments(ex, i)
        assert st.doc_of_token(a0) == st.doc_of_token(b0)


def test_pair_batches_have_bert_layout_and_types(store):
    ex = NSPPairs(max_len=64).build(store, None, seed=0)
    arrays = ex.batch(np.arange(16))
    ids, types, att = arrays["input_ids"], arrays["token_type_ids"], arrays["attention_mask"]
    assert ids.shape[1] % 8 == 0 and ids.shape[1] <= 64
    for r in range(16):
        n = att[r].sum()
        (a0, a1), (b0, b1) = segments(ex, r)
        expect = [2, *store.tokens[a0:a1], 3, *store.tokens[b0:b1], 3]
        assert ids[r, :n].tolist() == expect and (ids[r, n:] == 0).all()
        assert types[r, :n].tolist() == [0] * (a1 - a0 + 2) + [1] * (b1 - b0 + 1)
        assert arrays["word_start"][r, 1] and not arrays["word_start"][r, 0]
    assert (arrays["pair_labels"] == ex.pair_label[:16]).all()
    one = ex[3]
    assert one["input_ids"].tolist() == ids[3, :att[3].sum()].tolist() and one["index"] == 3


def test_short_sequences_appear_at_short_seq_prob(store):
    full = NSPPairs(max_len=128, short_seq_prob=0.0).build(store, None, seed=0)
    short = NSPPairs(max_len=128, short_seq_prob=0.5).build(store, None, seed=0)
    length = lambda ex: np.add.reduceat(ex.length, ex.ptr[:-1])  # noqa: E731  tokens per sequence
    assert length(short).mean() < 0.8 * length(full).mean()
    assert len(short) > len(full)


def coverage(ex, store, docs):
    """Every token of ``docs`` appears exactly once across the sequences, in store order."""
    ranges = [p for i in range(len(ex)) for p in ex.ranges(i) if isinstance(p, tuple)]
    got = np.concatenate([np.arange(lo, hi) for lo, hi in ranges])
    want = np.concatenate([np.arange(store.sent_offsets[store.doc_offsets[d]],
                                     store.sent_offsets[store.doc_offsets[d + 1]]) for d in docs])
    return np.array_equal(got, want)


def test_full_sentences_pack_across_documents_with_a_separator(store):
    ex = FullSentences(max_len=128).build(store, "train", seed=0)
    assert coverage(ex, store, store.documents("train"))
    assert not ex.has_pairs
    crossing = 0
    for i in range(len(ex)):
        pieces = ex.ranges(i)
        assert pieces[0] == SPECIAL["cls"] and pieces[-1] == SPECIAL["sep"]
        ranges = pieces[1::2]
        assert pieces[2::2] == [SPECIAL["sep"]] * len(ranges)  # a [SEP] after each document's part
        assert 2 + sum(hi - lo for lo, hi in ranges) + len(ranges) - 1 <= 128
        docs = [store.doc_of_token(lo) for lo, _ in ranges]
        assert len(set(docs)) == len(docs)
        crossing += len(ranges) > 1
        for lo, hi in ranges:  # whole sentences
            assert lo in store.sent_offsets and hi in store.sent_offsets
    assert crossing > len(ex) // 2


def test_doc_sentences_never_cross_a_document(store):
    for b in (DocSentences(max_len=96), SingleSegments(max_len=96)):
        ex = b.build(store, None, seed=0)
        assert coverage(ex, store, store.documents(None))
        for i in range(len(ex)):
            pieces = ex.ranges(i)
            assert len(pieces) == 3
            lo, hi = pieces[1]
            assert store.doc_of_token(lo) == store.doc_of_token(hi - 1) and hi - lo <= 94


def test_long_sentences_are_cut_not_lost():
    st = FakeStore([[5, 300, 7]], seed=2)
    ex = FullSentences(max_len=64).build(st, None, seed=0)
    assert coverage(ex, st, [0]) and ex.stats["long_sentences"] == 1
    assert max(ex.length[ex.token < 0]) == 62


def test_single_segments_honour_short_seq_prob(store):
    ex = SingleSegments(max_len=128, short_seq_prob=0.3).build(store, None, seed=0)
    base = SingleSegments(max_len=128).build(store, None, seed=0)
    assert len(ex) > len(base)


def test_builders_are_deterministic_given_the_seed():
    store = random_store(num_docs=500, seed=4)
    for name in BUILDERS:
        a, b = builder(name, max_len=64).build(store, None, 3), builder(name, max_len=64).build(store, None, 3)
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("ptr", "lo", "length", "token", "pair_label"))
    c = builder("nsp", max_len=64).build(store, None, 4)
    a = builder("nsp", max_len=64).build(store, None, 3)
    assert not np.array_equal(a.pair_label[:100], c.pair_label[:100])


def test_builders_read_only_their_split():
    st = random_store(num_docs=200, seed=3, validation=range(0, 200, 10))
    ex = NSPPairs(max_len=64).build(st, "validation", seed=0)
    for i in range(len(ex)):
        (a0, _), (b0, _) = segments(ex, i)
        assert st.doc_of_token(a0) % 10 == 0 and st.doc_of_token(b0) % 10 == 0


def test_truncation_matches_berts_loop():
    rng = random.Random(0)
    for _ in range(2000):
        la, lb, limit = rng.randint(1, 80), rng.randint(1, 80), rng.randint(2, 100)
        a, b = list(range(la)), list(range(lb))
        while len(a) + len(b) > limit:  # create_pretraining_data.truncate_seq_pair (ends chosen by us)
            (a if len(a) > len(b) else b).pop()
        fa, ba, fb, bb = _truncate(la, lb, limit, rng)
        assert (la - fa - ba, lb - fb - bb) == (len(a), len(b))
    fronts = [_truncate(100, 10, 50, rng)[0] for _ in range(4000)]  # 60 cut from A, Binomial(60, 1/2) in front
    assert abs(np.mean(fronts) - 30) < 0.5


def test_builder_errors_are_one_line(store):
    with pytest.raises(BertforgeError, match="unknown sequence builder 'nope'"):
        builder("nope")
    with pytest.raises(BertforgeError, match="max_len=4 is too short"):
        NSPPairs(max_len=4).build(store, None)
    with pytest.raises(BertforgeError, match="at least 2 documents"):
        NSPPairs().build(FakeStore([[10, 10]]), None)
