"""Similar-word sources for MacBERT's MLM-as-correction (Cui et al., 2020, sec. 3.2).

MacBERT replaces a chosen word with a similar word instead of [MASK]; the paper takes similar words from
the Synonyms toolkit, i.e. nearest neighbours in word2vec space. Two pluggable sources build the same
table here:

- ``SimilarWords.from_synonyms_file(path, tokenizer)``: one line per word, ``word sim1 sim2 ...``;
- ``SimilarWords.from_word2vec(store)``: gensim Word2Vec trained on the corpus store's own words, each
  word's nearest neighbours by cosine similarity. Training takes about half a minute per 2M tokens, so
  the table is cached in the store directory, keyed by the store's checksums and the settings: a second
  run or a resume on the same store loads it.

A word is its token-id sequence. Only candidates with as many tokens as the word are kept (a replacement
must not shift the sequence), so a Chinese 2-character word gets 2-character synonyms. The table is
flat numpy (sorted 64-bit word keys, CSR candidate lists), so a batch's lookups are one searchsorted and
a few gathers; ``save``/``load`` use ``.npz`` without pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import BertforgeError
from ..files import atomic_path
from .masking import _GOLDEN, _expand, _mix

# Bump when the word2vec table or its training changes, so that caches written before are not used.
_CACHE_VERSION = 1

_BASE = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime, here the base of a polynomial hash
_POWERS = np.concatenate([[np.uint64(1)], np.cumprod(np.full(4095, _BASE, dtype=np.uint64))])  # _BASE**k mod 2**64


def word_keys(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 [N] key of each word ids[starts[i] : starts[i] + lengths[i]]: a polynomial hash of its token
    ids mixed with its length. Distinct words collide with probability ~2**-64 per pair."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    if int(lengths.max()) > len(_POWERS):
        raise BertforgeError(f"a word of {int(lengths.max())} tokens is longer than {len(_POWERS)}")
    where = _expand(starts, lengths)
    offset = where - np.repeat(starts, lengths)
    terms = (ids[where].astype(np.uint64) + np.uint64(1)) * _POWERS[offset]
    h = np.add.reduceat(terms, np.cumsum(lengths) - lengths)
    return _mix(h ^ (lengths.astype(np.uint64) * _GOLDEN))


class SimilarWords:
    """word (token ids) -> similar words with the same number of tokens.

    keys [K] uint64 sorted; for key k its candidates are cand[ptr[k]:ptr[k+1]], candidate c spells
    tokens[cand_start[c] : cand_start[c] + length[k]].
    """

    def __init__(self, keys: np.ndarray, length: np.ndarray, ptr: np.ndarray, cand_start: np.ndarray,
                 tokens: np.ndarray):
        self.keys, self.length, self.ptr, self.cand_start, self.tokens = keys, length, ptr, cand_start, tokens

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_pairs(cls, similar: Mapping[tuple[int, ...], Iterable[Sequence[int]]]) -> "SimilarWords":
        """Build from {word token ids: [similar word token ids, ...]}; candidates of another token length
        and the word itself are dropped, duplicates kept once (in first-seen order)."""
        table: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for word, cands in similar.items():
            word = tuple(int(t) for t in word)
            keep = list(dict.fromkeys(
                c for c in (tuple(int(t) for t in c) for c in cands) if len(c) == len(word) and c != word
            ))
            if word and keep:
                table.setdefault(word, [])
                table[word] = list(dict.fromkeys(table[word] + keep))
        words = list(table)
        lengths = np.array([len(w) for w in words], dtype=np.int64)
        flat = np.array([t for w in words for t in w], dtype=np.int64)
        keys = word_keys(flat, np.cumsum(lengths) - lengths, lengths)
        order = np.argsort(keys, kind="stable")
        if len(keys) and np.any(keys[order][1:] == keys[order][:-1]):
            raise BertforgeError("two different words share a 64-bit key; please report this input")
        counts = np.array([len(table[words[i]]) for i in order], dtype=np.int64)
        cand_tokens = [t for i in order for c in table[words[i]] for t in c]
        cand_len = np.repeat(lengths[order], counts)
        return cls(
            keys=keys[order], length=lengths[order], ptr=np.concatenate([[0], np.cumsum(counts)]),
            cand_start=np.cumsum(cand_len) - cand_len, tokens=np.array(cand_tokens, dtype=np.int64),
        )

    @classmethod
    def from_synonyms_file(cls, path: str | os.PathLike, tokenizer: Any) -> "SimilarWords":
        """One line per word: ``word sim1 sim2 ...`` (whitespace separated, UTF-8; blank lines and lines
        starting with '#' skipped). ``tokenizer``: a bertforge tokenizer (its ``encode_with_word_starts``)
        or any callable text -> token ids; it must be the tokenizer the corpus store was built with."""
        encode: Callable[[str], Sequence[int]] = (
            (lambda w: tokenizer.encode_with_word_starts(w)[0]) if hasattr(tokenizer, "encode_with_word_starts")
            else tokenizer
        )
        table: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    fields = line.split()
                    if len(fields) < 2 or fields[0].startswith("#"):
                        continue
                    word = tuple(encode(fields[0]))
                    if not word:
                        raise BertforgeError(f"{path}:{lineno}: word {fields[0]!r} encodes to no tokens")
                    table[word].extend(tuple(encode(s)) for s in fields[1:])
        except OSError as exc:
            raise BertforgeError(f"{path}: cannot read synonyms file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise BertforgeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return cls.from_pairs(table)

    @classmethod
    def from_word2vec(cls, store: Any, split: str | None = "train", top_k: int = 10, min_similarity: float = 0.5,
                      vector_size: int = 100, window: int = 5, min_count: int = 5, epochs: int = 5,
                      seed: int = 0, workers: int = 1, progress: bool = True, cache: bool = True) -> "SimilarWords":
        """Train gensim Word2Vec (skip-gram) on the store's words (runs of tokens from one word_start flag to
        the next) and keep each word's ``top_k`` nearest neighbours of the same token length with cosine
        similarity >= ``min_similarity``. ``workers=1`` keeps training reproducible for a seed.

        ``cache``: keep the table in the store directory (``similar-word2vec-<key>.npz``, key = the store's
        data checksums, these settings and the gensim version) and load it from there next time; a store
        that cannot be written to is simply not cached."""
        settings = dict(split=split, top_k=top_k, min_similarity=min_similarity, vector_size=vector_size,
                        window=window, min_count=min_count, epochs=epochs, seed=seed, workers=workers)
        path = _word2vec_cache(store, settings) if cache else None
        if path is not None and path.is_file():
            try:
                return cls.load(path)
            except BertforgeError:
                pass  # damaged: computed again and replaced below
        table = cls._word2vec(store, progress=progress, **settings)
        if path is not None:
            try:
                table.save(path)
            except (OSError, BertforgeError):
                pass  # a read-only store: no cache, the same table next time, only slower
        return table

    @classmethod
    def _word2vec(cls, store: Any, split: str | None, top_k: int, min_similarity: float, vector_size: int,
                  window: int, min_count: int, epochs: int, seed: int, workers: int,
                  progress: bool) -> "SimilarWords":
        from gensim.models import Word2Vec

        sentences = _StoreWords(store, split)
        # gensim reads the corpus once to count words, then once per epoch: one bar over all the passes.
        with tqdm(total=sentences.num_sentences * (epochs + 1), desc="word2vec (similar words)", unit="sent",
                  unit_scale=True, disable=not progress) as bar:
            sentences.bar = bar
            model = Word2Vec(
                sentences=sentences, vector_size=vector_size, window=window, min_count=min_count,
                sg=1, epochs=epochs, seed=seed, workers=workers, hashfxn=_stable_hash,
            )
        words = list(model.wv.index_to_key)
        if not words:
            raise BertforgeError(f"word2vec: no word occurs min_count={min_count} times in the store")
        vectors = model.wv.get_normed_vectors()  # [V, d], unit rows: dot product = cosine similarity
        ids = [tuple(int(t) for t in w.split(",")) for w in words]
        lengths = np.array([len(w) for w in ids])
        table: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for n in tqdm(np.unique(lengths), desc="word2vec neighbours", unit="length", disable=not progress):
            group = np.flatnonzero(lengths == n)  # only same-length words can replace each other
            for lo in range(0, len(group), 1024):
                rows = group[lo:lo + 1024]
                sims = vectors[rows] @ vectors[group].T  # [r, g]
                sims[np.arange(len(rows)), np.arange(lo, lo + len(rows))] = -np.inf
                k = min(top_k, len(group) - 1)
                if k <= 0:
                    continue
                best = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                for r, cols in zip(range(len(rows)), best):
                    cols = cols[np.argsort(-sims[r, cols])]
                    cols = cols[sims[r, cols] >= min_similarity]
                    if len(cols):
                        table[ids[rows[r]]] = [ids[group[c]] for c in cols]
        return cls.from_pairs(table)

    def replace(self, out: np.ndarray, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                u: np.ndarray) -> np.ndarray:
        """For each word ids[starts[i]:starts[i]+lengths[i]] that has similar words, write candidate
        floor(u[i] * count) over out[...] (same positions). Returns [N] bool: the word had a candidate."""
        if len(self.keys) == 0:
            return np.zeros(len(starts), dtype=bool)
        keys = word_keys(ids, starts, lengths)
        k = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = (self.keys[k] == keys) & (self.length[k] == lengths)
        if found.any():
            k, u_f, s, n = k[found], u[found], starts[found], lengths[found]
            count = self.ptr[k + 1] - self.ptr[k]
            cand = self.ptr[k] + np.minimum((u_f * count).astype(np.int64), count - 1)
            src = _expand(self.cand_start[cand], n)
            out[_expand(s, n)] = self.tokens[src]
        return found

    # -- storage ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a .npz (atomically: bertforge.files)."""
        with atomic_path(path) as tmp:
            np.savez(tmp, keys=self.keys, length=self.length, ptr=self.ptr, cand_start=self.cand_start,
                     tokens=self.tokens)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimilarWords":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(**{name: z[name] for name in ("keys", "length", "ptr", "cand_start", "tokens")})
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # cut short: BadZipFile
            raise BertforgeError(f"{path}: not a similar-words table ({exc})") from None


def _word2vec_cache(store: Any, settings: dict) -> Path | None:
    """Where the word2vec table of ``store`` with ``settings`` is cached: in the store directory, named by a
    hash of the store's data checksums (tokens, word starts, split, ...), the settings and the gensim
    version. None for a store without a directory and manifest (an in-memory one)."""
    manifest, root = getattr(store, "manifest", None), getattr(store, "path", None)
    if root is None or not isinstance(manifest, dict) or "sha256" not in manifest:
        return None
    import gensim

    key = json.dumps({"version": _CACHE_VERSION, "gensim": gensim.__version__, "store": manifest["sha256"],
                      **settings}, sort_keys=True)
    return Path(root) / f"similar-word2vec-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector with hashfxn(word + seed); Python's hash() of str changes
    with every process (PYTHONHASHSEED), this does not."""
    return zlib.crc32(text.encode())


class _StoreWords:
    """Re-iterable sentences of word strings ("12,7" = the token ids of one word) for gensim."""

    def __init__(self, store: Any, split: str | None):
        self.store, self.docs = store, store.documents(split)
        self.num_sentences = int((store.doc_offsets[self.docs + 1] - store.doc_offsets[self.docs]).sum())
        self.bar: Any = None  # a progress bar advanced by the sentences read

    def __iter__(self) -> Iterator[list[str]]:
        st = self.store
        for d in self.docs:
            lo, hi = int(st.doc_offsets[d]), int(st.doc_offsets[d + 1])
            if self.bar is not None:
                self.bar.update(hi - lo)
            for s in range(lo, hi):
                a, b = int(st.sent_offsets[s]), int(st.sent_offsets[s + 1])
                if a == b:
                    continue
                toks = np.asarray(st.tokens[a:b])
                starts = np.flatnonzero(np.asarray(st.word_start[a:b]))
                cuts = np.union1d([0], starts)
                yield [",".join(map(str, w.tolist())) for w in np.split(toks, cuts[1:])]
