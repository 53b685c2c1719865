"""Sequence builders: the documents of a corpus store -> the training sequences each paper used.

- NSPPairs (BERT): [CLS] A [SEP] B [SEP]; B is A's real continuation or, 50%, from another document;
- SOPPairs (ALBERT): [CLS] A [SEP] B [SEP]; consecutive segments of one document, 50% swapped;
- FullSentences (RoBERTa): [CLS] sentences [SEP] next document's sentences [SEP] ..., across documents;
- DocSentences (RoBERTa): [CLS] sentences [SEP], packed inside one document;
- SingleSegments (SpanBERT): [CLS] sentences [SEP] of one document, no pair, optional short targets.

[CLS] and [SEP] are the store manifest's cls and sep ids (<s> and </s> for RoBERTa's BPE). A builder is
deterministic given (store, split, seed) and returns :class:`Examples`: every sequence as a few token
ranges of the memory-mapped store plus special tokens, so building copies no tokens and a batch of any
sequences is materialized in one vectorized gather (``Examples.batch``).

NSP and SOP follow BERT's create_instances_from_document (and ALBERT's, which only swaps instead of
drawing a random B): sentences accumulate into a chunk until the target length (max_len - 3; with
probability short_seq_prob a random target in [2, max_len - 3]), A takes the first 1..k-1 sentences of a
k-sentence chunk, and truncate_seq_pair trims the longer side one token at a time from a random end
(computed here in closed form: which side loses how many tokens is fixed, how many of those come off the
front is Binomial(k, 1/2)). Where BERT and ALBERT leave the labels to chance, here they are not:

- the label is a fair coin for every chunk. BERT forces "random next" on a one-sentence chunk (skewing
  NSP labels), and ALBERT's SOP silently turns a one-sentence chunk into a random-document (NSP) example.
  Here a one-sentence chunk that needs two segments is split at the word start nearest its middle; one
  that cannot be split (a single word) is skipped and counted in ``Examples.stats["unsplittable"]``.
- NSP's random B always comes from another document (BERT tried 10 times and could give up).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import BertforgeError
from .masking import _expand


@dataclass
class Examples:
    """Built sequences as piece tables. Sequence i is pieces ptr[i]:ptr[i+1], in order; piece p is
    store.tokens[lo[p] : lo[p] + length[p]] when token[p] == -1, else the one special id token[p];
    segment[p] is its token type id. pair_label[i]: NSP/SOP label, -1 when the builder makes no pairs."""

    store: Any
    ptr: np.ndarray  # [N+1] int64
    lo: np.ndarray  # [P] int64
    length: np.ndarray  # [P] int64
    token: np.ndarray  # [P] int64
    segment: np.ndarray  # [P] int64
    pair_label: np.ndarray  # [N] int64
    pad_id: int
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pair_label)

    @property
    def has_pairs(self) -> bool:
        return bool(len(self.pair_label)) and bool(self.pair_label[0] >= 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sequence: input_ids, token_type_ids (int64), word_start (bool), pair_label, index."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range (0..{len(self) - 1})")
        i = i % len(self)
        arrays = self.batch(np.array([i]), pad_to_multiple_of=1)
        return {"input_ids": arrays["input_ids"][0], "token_type_ids": arrays["token_type_ids"][0],
                "word_start": arrays["word_start"][0], "pair_label": int(self.pair_label[i]), "index": i}

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """[N] int64: the number of tokens of each sequence (specials included)."""
        total = np.concatenate([[0], np.cumsum(self.length, dtype=np.int64)])  # tokens before each piece
        return total[self.ptr[1:]] - total[self.ptr[:-1]]

    def ranges(self, i: int) -> list[tuple[int, int] | int]:
        """The pieces of sequence i: (lo, hi) token ranges of the store and special token ids."""
        return [int(self.token[p]) if self.token[p] >= 0 else (int(self.lo[p]), int(self.lo[p] + self.length[p]))
                for p in range(self.ptr[i], self.ptr[i + 1])]

    def batch(self, indices: np.ndarray, pad_to_multiple_of: int | None = 8) -> dict[str, np.ndarray]:
        """Sequences ``indices`` padded to the longest (rounded up to a multiple): numpy [B, L] input_ids,
        token_type_ids, attention_mask (int64), word_start (bool; 1 at the first token of every store
        range); pair_labels [B] when the builder makes pairs. One gather from the store, no Python loop."""
        idx = np.asarray(indices, dtype=np.int64)
        b = len(idx)
        first, count = self.ptr[idx], self.ptr[idx + 1] - self.ptr[idx]
        piece = _expand(first, count)  # the batch's pieces, in order
        piece_row = np.repeat(np.arange(b), count)
        plen = self.length[piece]
        row_len = np.bincount(piece_row, weights=plen, minlength=b).astype(np.int64)
        width = int(row_len.max()) if b else 0
        if pad_to_multiple_of and pad_to_multiple_of > 1:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        # Flat [B * width] position of each piece's first token.
        start = np.cumsum(plen) - plen
        dest = piece_row * width + start - (np.cumsum(row_len) - row_len)[piece_row]
        text = self.token[piece] < 0
        to = _expand(dest[text], plen[text])
        src = _expand(self.lo[piece[text]], plen[text])
        ids = np.full(b * width, self.pad_id, dtype=np.int64)
        ids[to] = self.store.tokens[src]
        ids[dest[~text]] = self.token[piece[~text]]
        word_start = np.zeros(b * width, dtype=bool)
        word_start[to] = self.store.word_start[src]
        word_start[dest[text]] = True
        types = np.zeros(b * width, dtype=np.int64)
        second = self.segment[piece] != 0
        types[_expand(dest[second], plen[second])] = np.repeat(self.segment[piece[second]], plen[second])
        out = {
            "input_ids": ids.reshape(b, width),
            "token_type_ids": types.reshape(b, width),
            "attention_mask": (np.arange(width) < row_len[:, None]).astype(np.int64),
            "word_start": word_start.reshape(b, width),
        }
        if self.has_pairs:
            out["pair_labels"] = self.pair_label[idx].astype(np.int64)
        return out


class _Writer:
    """Accumulates sequences as pieces (lists while building, numpy at the end)."""

    def __init__(self, store: Any):
        specials = store.manifest["special_ids"]
        self.store = store
        self.cls, self.sep, self.pad = int(specials["cls"]), int(specials["sep"]), int(specials["pad"])
        self.ptr, self.lo, self.length, self.token, self.segment, self.label = [0], [], [], [], [], []
        self.stats: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _piece(self, lo: int, length: int, token: int, segment: int) -> None:
        self.lo.append(lo)
        self.length.append(length)
        self.token.append(token)
        self.segment.append(segment)

    def _end(self, label: int) -> None:
        self.ptr.append(len(self.lo))
        self.label.append(label)

    def pair(self, a: tuple[int, int], b: tuple[int, int], label: int) -> None:
        """[CLS] A [SEP] B [SEP], token types 0 then 1."""
        self._piece(0, 1, self.cls, 0)
        self._piece(a[0], a[1] - a[0], -1, 0)
        self._piece(0, 1, self.sep, 0)
        self._piece(b[0], b[1] - b[0], -1, 1)
        self._piece(0, 1, self.sep, 1)
        self._end(label)

    def single(self, fragments: Sequence[tuple[int, int]]) -> None:
        """[CLS] frag1 [SEP] frag2 [SEP] ...: one [SEP] after each fragment (RoBERTa's document separator)."""
        self._piece(0, 1, self.cls, 0)
        for lo, hi in fragments:
            self._piece(lo, hi - lo, -1, 0)
            self._piece(0, 1, self.sep, 0)
        self._end(-1)

    def done(self) -> Examples:
        self.stats["sequences"] = len(self.label)
        if not self.label:
            raise BertforgeError("the builder made no sequence: the split has no document with text")
        as64 = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
        return Examples(self.store, as64(self.ptr), as64(self.lo), as64(self.length), as64(self.token),
                        as64(self.segment), as64(self.label), self.pad, self.stats)


def _documents(store: Any, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(docs with at least one token, sentence offsets, document offsets) as in-memory int64 arrays."""
    sent = np.asarray(store.sent_offsets, dtype=np.int64)
    doc = np.asarray(store.doc_offsets, dtype=np.int64)
    docs = np.asarray(store.documents(split), dtype=np.int64)
    ntok = sent[doc[docs + 1]] - sent[doc[docs]]
    return docs[ntok > 0], sent, doc


def _check_len(name: str, max_len: int, least: int) -> None:
    if max_len < least:
        raise BertforgeError(f"{name}: max_len={max_len} is too short (at least {least})")


def _truncate(la: int, lb: int, max_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """BERT's truncate_seq_pair in closed form: tokens cut from the (front, back) of A and of B.
    It removes one token at a time from the longer side (B on ties), from a random end."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return 0, 0, 0, 0
    if la > lb:
        ka = min(excess, la - lb)
        kb = 0
    else:
        kb = min(excess, lb - la)
        ka = 0
    rest = excess - ka - kb  # now equal: B, A, B, A, ...
    kb += (rest + 1) // 2
    ka += rest // 2
    fa = bin(rng.getrandbits(ka)).count("1") if ka else 0  # Binomial(ka, 1/2) tokens off A's front
    fb = bin(rng.getrandbits(kb)).count("1") if kb else 0
    return fa, ka - fa, fb, kb - fb


def _split_point(store: Any, lo: int, hi: int) -> int | None:
    """The word start strictly inside [lo, hi) nearest its middle, or None for a single word."""
    starts = np.flatnonzero(np.asarray(store.word_start[lo + 1:hi])) + lo + 1
    if len(starts) == 0:
        return None
    return int(starts[np.argmin(np.abs(2 * starts - (lo + hi)))])


def _build_pairs(name: str, store: Any, split: str | None, seed: int, max_len: int, short_seq_prob: float,
                 swap: bool) -> Examples:
    """NSP (swap=False) or SOP (swap=True) pairs; see the module docstring."""
    _check_len(name, max_len, 5)
    rng = random.Random(seed)
    docs, sent, doc_off = _documents(store, split)
    if not swap and len(docs) < 2:
        raise BertforgeError(f"{name}: NSP needs at least 2 documents with text in split {split!r}, found {len(docs)}")
    out = _Writer(store)
    max_tokens = max_len - 3
    for pos, d in enumerate(tqdm(docs.tolist(), desc=f"{name} pairs", unit="doc", disable=len(docs) < 10000)):
        s0, n = int(doc_off[d]), int(doc_off[d + 1] - doc_off[d])
        starts = sent[s0:s0 + n + 1].tolist()  # token offset of each sentence of the doc, and its end
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_tokens)
        first = i = 0
        while i < n:
            if i == n - 1 or starts[i + 1] - starts[first] >= target:
                label = int(rng.random() < 0.5)  # NSP: 1 = random B; SOP: 1 = swapped
                k = i - first + 1
                if k >= 2:
                    a_end = first + rng.randint(1, k - 1)
                    a, b = (starts[first], starts[a_end]), (starts[a_end], starts[i + 1])
                elif not swap and label:
                    a, b = (starts[first], starts[i + 1]), None
                else:
                    cut = _split_point(store, starts[first], starts[i + 1])
                    if cut is None:
                        out.count("unsplittable")
                        first = i = i + 1
                        continue
                    out.count("split_single_segment")
                    a, b = (starts[first], cut), (cut, starts[i + 1])
                if not swap and label:
                    # Random next: B from another document, from a random sentence on, until it fills the
                    # target; the chunk's unused sentences go back to the pool (BERT).
                    j = rng.randrange(len(docs) - 1)
                    other = int(docs[len(docs) - 1 if j == pos else j])  # never the same document
                    o0, o1 = int(doc_off[other]), int(doc_off[other + 1])
                    r = rng.randint(o0, o1 - 1)
                    end = int(np.searchsorted(sent, sent[r] + target - (a[1] - a[0]), side="left"))
                    end = max(r + 1, min(end, o1))
                    b = (int(sent[r]), int(sent[end]))
                    if k >= 2:
                        i = a_end - 1
                elif swap and label:
                    a, b = b, a
                la, lb = a[1] - a[0], b[1] - b[0]
                if la == 0 or lb == 0:
                    out.count("empty_segment")
                else:
                    fa, ba, fb, bb = _truncate(la, lb, max_tokens, rng)
                    if fa + ba + fb + bb:
                        out.count("truncated")
                    out.pair((a[0] + fa, a[1] - ba), (b[0] + fb, b[1] - bb), label)
                first = i + 1
            i += 1
    return out.done()


def _build_packed(name: str, store: Any, split: str | None, seed: int, max_len: int, cross_documents: bool,
                  short_seq_prob: float) -> Examples:
    """Whole sentences packed greedily up to max_len - 2 tokens (plus one [SEP] per extra document when
    crossing documents). A sentence longer than a sequence is cut into max_len - 2 token pieces
    (fairseq would let the block overflow; a fixed max_len cannot), counted in stats["long_sentences"]."""
    _check_len(name, max_len, 3)
    rng = random.Random(seed)
    docs, sent, doc_off = _documents(store, split)
    out = _Writer(store)
    budget = max_len - 2

    def new_target() -> int:
        return rng.randint(2, budget) if short_seq_prob and rng.random() < short_seq_prob else budget

    frags: list[list[int]] = []  # [lo, hi] token ranges, one per document in the sequence
    used, target = 0, new_target()  # used = tokens + separators beyond the first

    def flush() -> None:
        nonlocal frags, used, target
        if frags:
            out.single([(lo, hi) for lo, hi in frags])
        frags, used, target = [], 0, new_target()

    for d in tqdm(docs.tolist(), desc=f"{name}", unit="doc", disable=len(docs) < 10000):
        offs = sent[doc_off[d]:doc_off[d + 1] + 1].tolist()
        new_doc = True
        for lo, hi in zip(offs[:-1], offs[1:]):
            if hi == lo:
                continue
            if hi - lo > budget:
                out.count("long_sentences")
                flush()
                while hi - lo > budget:
                    frags = [[lo, lo + budget]]
                    flush()
                    lo += budget
                new_doc = True
            extra = int(bool(frags) and new_doc)  # a [SEP] between documents
            if frags and used + extra + hi - lo > target:
                flush()
                extra = 0
            if frags and not new_doc:
                frags[-1][1] = hi  # sentences of one document are contiguous in the store
            else:
                frags.append([lo, hi])
            used += extra + hi - lo
            new_doc = False
        if not cross_documents:
            flush()
    flush()
    return out.done()


@dataclass(frozen=True)
class NSPPairs:
    """BERT's next-sentence-prediction pairs. pair_label 0 = B is A's real continuation, 1 = random B."""

    max_len: int = 128
    short_seq_prob: float = 0.1

    def build(self, store: Any, split: str | None = "train", seed: int = 0) -> Examples:
        return _build_pairs("nsp", store, split, seed, self.max_len, self.short_seq_prob, swap=False)


@dataclass(frozen=True)
class SOPPairs:
    """ALBERT's sentence-order-prediction pairs. pair_label 0 = in order, 1 = the two segments swapped."""

    max_len: int = 128
    short_seq_prob: float = 0.1

    def build(self, store: Any, split: str | None = "train", seed: int = 0) -> Examples:
        return _build_pairs("sop", store, split, seed, self.max_len, self.short_seq_prob, swap=True)


@dataclass(frozen=True)
class FullSentences:
    """RoBERTa's FULL-SENTENCES: contiguous sentences packed across documents, [SEP] between documents."""

    max_len: int = 512

    def build(self, store: Any, split: str | None = "train", seed: int = 0) -> Examples:
        return _build_packed("full-sentences", store, split, seed, self.max_len, True, 0.0)


@dataclass(frozen=True)
class DocSentences:
    """RoBERTa's DOC-SENTENCES: contiguous sentences packed inside one document (shorter at its end)."""

    max_len: int = 512

    def build(self, store: Any, split: str | None = "train", seed: int = 0) -> Examples:
        return _build_packed("doc-sentences", store, split, seed, self.max_len, False, 0.0)


@dataclass(frozen=True)
class SingleSegments:
    """SpanBERT's single segments: one contiguous run of whole sentences of one document, no pair. With
    short_seq_prob > 0, a sequence's target length is random in [2, max_len - 2] that often (BERT's
    option; SpanBERT trained with 0, where this equals DocSentences)."""

    max_len: int = 512
    short_seq_prob: float = 0.0

    def build(self, store: Any, split: str | None = "train", seed: int = 0) -> Examples:
        return _build_packed("single", store, split, seed, self.max_len, False, self.short_seq_prob)


BUILDERS = {"nsp": NSPPairs, "sop": SOPPairs, "full-sentences": FullSentences, "doc-sentences": DocSentences,
            "single": SingleSegments}


def builder(name: str, **options: Any) -> Any:
    """A builder by name (``BUILDERS``), e.g. builder("sop", max_len=512)."""
    try:
        cls = BUILDERS[name]
    except KeyError:
        raise BertforgeError(f"unknown sequence builder {name!r}; valid builders: {', '.join(BUILDERS)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise BertforgeError(f"sequence builder {name!r}: {exc}") from None
