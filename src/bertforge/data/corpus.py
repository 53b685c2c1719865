"""The corpus store: tokenized text on disk, memory-mapped, read in O(1) per slice by every recipe.

A store is a directory (docs/corpus.md has the full story)::

    tokens.bin        uint16 (vocab <= 65536) or uint32 [T]    token ids, special tokens NOT included
    word_start.bin    uint8 [T]                                 1 = the token starts a whole word (WWM)
    sent_offsets.bin  int64 [S+1]                               sentence s = tokens[off[s]:off[s+1]]
    doc_offsets.bin   int64 [D+1]                               document d = sentences off[d]:off[d+1]
    doc_split.bin     uint8 [D]                                 0 = train, 1 = validation
    tokenizer/        a copy of the tokenizer the store was built with (training finds it there)
    manifest.json     written last: tokenizer fingerprint, sizes, counts, sources + checksums, build report

``build_corpus`` streams: the main process reads and chunks the input (bertforge.data.sources), worker
processes split sentences and tokenize the chunks, and the main process appends their results in input
order. Nothing is ever held whole, so memory stays flat however large the corpus. The store is built in
``DIR.tmp-*`` and renamed into place at the end, and the manifest is its last file, so an interrupted
build never leaves something that :class:`CorpusStore` would open. No timestamps or absolute temp paths
enter any file: the same input and tokenizer give a byte-identical store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BertforgeError
from ..files import atomic_path, write_json
from .sources import (MAX_PIECE_BYTES, BuildReport, Piece, Source, named_source, resolve_inputs,
                      split_sentences, split_word_sentences)

FORMAT, FORMAT_VERSION = "bertforge-corpus", 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
# Characters of text per unit of work sent to a worker: large enough that pickling is noise, small
# enough that the progress bar moves and that 2 * workers chunks in flight cost a few MB.
CHUNK_CHARS = 1 << 18
# More unknown tokens than this share means the tokenizer was made for other text: a model trained on the
# store would mostly learn to predict the unknown token. A fitting tokenizer stays well below 1%.
UNK_WARN_RATE = 0.05


def _data_files(dtype: str, t: int, s: int, d: int) -> dict[str, tuple[str, int]]:
    """file name -> (dtype, length) of every array in a store."""
    return {"tokens.bin": (dtype, t), "word_start.bin": ("uint8", t), "sent_offsets.bin": ("int64", s + 1),
            "doc_offsets.bin": ("int64", d + 1), "doc_split.bin": ("uint8", d)}


class CorpusStore:
    """A read-only view of a built store. Arrays are memory-mapped: opening is instant, slices are O(1).

    >>> store = CorpusStore("corpus/")
    >>> for d in store.documents("train"):
    ...     tokens, word_start = store.doc_tokens(d)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BertforgeError(f"corpus store {self.path} does not exist (build one with `bertforge corpus build`)")
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise BertforgeError(f"{self.path} is not a complete corpus store: {MANIFEST} is missing "
                                 "(an interrupted build leaves none); rebuild it with `bertforge corpus build`")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BertforgeError(f"{mpath} is not valid JSON ({exc}); rebuild the store") from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BertforgeError(f"{mpath}: not a bertforge corpus manifest (expected format {FORMAT!r})")
        if m.get("format_version", 0) > FORMAT_VERSION:
            raise BertforgeError(f"{mpath}: format_version {m['format_version']} is newer than this bertforge "
                                 f"reads ({FORMAT_VERSION}); upgrade bertforge")
        self.num_tokens, self.num_sents, self.num_docs = int(m["num_tokens"]), int(m["num_sents"]), int(m["num_docs"])
        arrays = {}
        for name, (dtype, length) in _data_files(m["dtype"], self.num_tokens, self.num_sents, self.num_docs).items():
            f = self.path / name
            expected = length * np.dtype(dtype).itemsize
            if not f.is_file() or f.stat().st_size != expected:
                size = f.stat().st_size if f.is_file() else "missing"
                raise BertforgeError(f"{f}: expected {expected} bytes as the manifest says, found {size}; "
                                     "the store is damaged, rebuild it")
            arrays[name] = np.memmap(f, dtype=dtype, mode="r", shape=(length,))
        self.tokens: np.ndarray = arrays["tokens.bin"]
        self.word_start: np.ndarray = arrays["word_start.bin"]
        self.sent_offsets: np.ndarray = arrays["sent_offsets.bin"]
        self.doc_offsets: np.ndarray = arrays["doc_offsets.bin"]
        self._split: np.ndarray = arrays["doc_split.bin"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self.manifest["special_ids"])

    def documents(self, split: str | None = None) -> np.ndarray:
        """int64 ids of the documents in ``split`` ("train", "validation"; None = all), ascending."""
        if split is None:
            return np.arange(self.num_docs, dtype=np.int64)
        if split not in SPLITS:
            raise BertforgeError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or None for all)")
        return np.flatnonzero(self._split == SPLITS.index(split)).astype(np.int64)

    def doc_sentences(self, d: int) -> range:
        """Sentence ids of document ``d``."""
        return range(int(self.doc_offsets[d]), int(self.doc_offsets[d + 1]))

    def doc_tokens(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, word_start) views of document ``d``."""
        a, b = self.sent_offsets[self.doc_offsets[d]], self.sent_offsets[self.doc_offsets[d + 1]]
        return self.tokens[a:b], self.word_start[a:b]

    def sentence(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, word_start) views of sentence ``s``."""
        a, b = self.sent_offsets[s], self.sent_offsets[s + 1]
        return self.tokens[a:b], self.word_start[a:b]

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise unless ``tokenizer`` encodes exactly as the one this store was built with."""
        have, want = getattr(tokenizer, "fingerprint", None), self.manifest["tokenizer_fingerprint"]
        if have != want:
            raise BertforgeError(
                f"corpus store {self.path} was built with tokenizer {want[:12]} ({self.manifest['tokenizer_kind']}, "
                f"vocab {self.vocab_size}) but the tokenizer given is {str(have)[:12]}; rebuild the store with "
                "this tokenizer or train with the store's"
            )

    def verify(self) -> None:
        """Re-hash every data file against the manifest (O(size)); raise on any difference."""
        for name, digest in self.manifest["sha256"].items():
            if _sha256_file(self.path / name) != digest:
                raise BertforgeError(f"{self.path / name}: checksum differs from the manifest; the store was modified")

    def __repr__(self) -> str:
        return (f"CorpusStore({str(self.path)!r}: {self.num_docs} documents, {self.num_sents} sentences, "
                f"{self.num_tokens} tokens, {self.manifest['tokenizer_kind']} vocab {self.vocab_size})")


# ---------------------------------------------------------------------------------------------------
# Build


def build_corpus(
    out_dir: str | os.PathLike,
    tokenizer: Any,
    inputs: Sequence[str | os.PathLike] = (),
    *,
    sources: Sequence[str] = (),
    workers: int = 2,
    document_per: str = "line",
    text_field: str = "text",
    input_format: str = "auto",
    validation_fraction: float = 0.01,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusStore:
    """Tokenize ``inputs`` (files, directories, globs) and the named ``sources`` into a store at ``out_dir``.

    ``tokenizer``: a tokenizer directory or a loaded tokenizer (saved to a temporary directory for the
    workers to load). ``workers=0`` tokenizes in this process. ``document_per``: "line" or
    "block" (blank-line separated) for text files. ``input_format``: "auto" (by file name), "text", "jsonl"
    or "peoples-daily" (PKU word/tag format). Returns the opened store; what the readers met
    (skipped files, repaired bytes, empty documents) is its ``manifest["build_report"]``.
    Every input problem that can be found up front (missing file, unknown source, existing output)
    raises before any long work starts."""
    from tqdm import tqdm

    out = Path(out_dir)
    if not 0 <= validation_fraction < 1:
        raise BertforgeError(f"validation_fraction={validation_fraction}: expected 0 <= fraction < 1")
    if workers < 0:
        raise BertforgeError(f"workers={workers}: expected 0 (tokenize in this process) or more")
    srcs: list[Source] = [named_source(s) for s in sources]
    srcs += resolve_inputs([str(p) for p in inputs], document_per, text_field, input_format, skip=[out])
    if not srcs:
        raise BertforgeError("no input: give files, directories or globs, or --source NAME")
    _check_output(out, overwrite)
    tok = load_tokenizer(tokenizer)
    vocab_size = int(tok.vocab_size)
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    specials = {r: int(getattr(tok, f"{r}_token_id")) for r in ("cls", "sep", "mask", "pad", "unk")}

    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    report = BuildReport()
    bar = tqdm(total=sum(s.size for s in srcs), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"corpus build ({workers} workers)", disable=not progress, file=sys.stderr)
    try:
        writer = _Writer(tmp, dtype, vocab_size, specials["unk"])
        # closing(): on an error or Ctrl-C the generator stops its worker processes now, not whenever it is
        # garbage-collected (possibly during the interpreter's shutdown, where the pool's threads hang).
        with contextlib.closing(_encode_in_order(_chunks(srcs, report), tokenizer, tok, workers)) as encoded:
            for result, flags, raw_pos, chars in encoded:
                writer.add(result, flags)
                writer.characters += chars
                bar.update(raw_pos - bar.n)
                bar.set_postfix(tokens=f"{writer.num_tokens:,}", refresh=False)
        bar.update(bar.total - bar.n)
        writer.close()
        if writer.num_tokens == 0:
            raise BertforgeError(f"no text found in {', '.join(s.name for s in srcs)} (see the warnings above)")
        report.counts["empty_documents"] += writer.empty_docs
        unk_rate = writer.unk_tokens / writer.num_tokens
        if unk_rate > UNK_WARN_RATE:
            report.warn(f"{unk_rate:.1%} of the tokens are the unknown token {tok.unk_token}: the tokenizer "
                        f"({tok.kind}, vocab {vocab_size:,}) does not fit this text (another language or script?); "
                        "train one on it with `bertforge tokenizer train`")
        split = split_documents(writer.num_docs, validation_fraction, seed)
        # The store carries its tokenizer: training finds it without being told, and a model exported from
        # the run ships with exactly the tokenizer its ids came from.
        tok.save_pretrained(tmp / "tokenizer")
        sha = dict(writer.sha256, **{"doc_split.bin": _write_array(tmp / "doc_split.bin", split)})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer_kind": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint,
            "vocab_size": vocab_size,
            "special_ids": specials,
            "dtype": dtype.name,
            "num_tokens": writer.num_tokens,
            "num_sents": writer.num_sents,
            "num_docs": writer.num_docs,
            "counts": {"documents": writer.num_docs, "sentences": writer.num_sents, "tokens": writer.num_tokens,
                       "unk_tokens": writer.unk_tokens, "unk_rate": round(unk_rate, 6),
                       "characters": writer.characters, "input_bytes": sum(s.size for s in srcs)},
            "split": {"seed": seed, "validation_fraction": validation_fraction,
                      "train_docs": int((split == 0).sum()), "validation_docs": int((split == 1).sum())},
            "options": {"document_per": document_per, "text_field": text_field, "input_format": input_format,
                        "max_piece_bytes": MAX_PIECE_BYTES,
                        "chunk_chars": CHUNK_CHARS},
            "sources": [s.describe() for s in srcs],
            "build_report": report.to_dict(),
            "sha256": sha,
        }
        write_json(tmp / MANIFEST, manifest)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return CorpusStore(out)


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object from a directory path, or the object itself."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from .tokenizers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise BertforgeError(f"tokenizer directory {tokenizer} does not exist (train one with "
                                 "`bertforge tokenizer train`)")
        return AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise BertforgeError(f"output {out} already exists; pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise BertforgeError(f"refusing to overwrite {out}: it is not a corpus store")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished store to its name; an old store is moved aside first and then deleted."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _chunks(sources: Iterable[Source], report: BuildReport) -> Iterator[tuple[list[Piece], int]]:
    """Pieces grouped into chunks of about CHUNK_CHARS characters, with the raw bytes read so far.
    Documents never span sources: each source's first piece starts a document."""
    batch: list[Piece] = []
    size = 0
    for src in sources:
        first = True
        for piece in src.pieces(report):
            if first and not piece.new_doc:
                piece = piece._replace(new_doc=True)
            first = False
            batch.append(piece)
            size += len(piece.text)
            if size >= CHUNK_CHARS:
                yield batch, report.raw_bytes
                batch, size = [], 0
    if batch:
        yield batch, report.raw_bytes


# Worker side. Each worker process loads the tokenizer once (initializer), then encodes chunks.
_WORKER_TOKENIZER: Any = None


# Signals only the main process handles: it cleans up and then kills the workers. A Ctrl-C in a terminal,
# `timeout -s INT` and a service manager's SIGTERM reach the whole process group, workers included.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since the spawn (_stop_signals_blocked); pending ones are dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process; no thread oversubscription
    _WORKER_TOKENIZER = load_tokenizer(tokenizer)


def _encode_in_worker(pieces: list[Piece]) -> tuple[np.ndarray, ...]:
    return encode_pieces(_WORKER_TOKENIZER, pieces)


def encode_pieces(tok: Any, pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``pieces`` into sentences and tokenize them.

    Returns (ids uint32 [n], word_start uint8 [n], sentence lengths int64 [s], sentences per piece
    int64 [p]). Sentences that tokenize to nothing are dropped."""
    texts: list[str] = []
    words: list[Sequence[str] | None] = []
    per_piece: list[int] = []
    for p in pieces:
        if p.words is not None:
            sents = split_word_sentences(p.words)
            texts += ["".join(s) for s in sents]
            words += sents
        else:
            sents = split_sentences(p.text)
            texts += sents
            words += [None] * len(sents)
        per_piece.append(len(sents))
    encoded = tok.encode_batch_with_word_starts(texts, words) if texts else []
    lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
    n = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e for e, _ in encoded), dtype=np.uint32, count=n)
    starts = np.fromiter(chain.from_iterable(w for _, w in encoded), dtype=np.uint8, count=n)
    # Drop empty sentences and recount sentences per piece.
    keep = lengths > 0
    piece_of_sentence = np.repeat(np.arange(len(per_piece)), per_piece)
    sents_per_piece = np.bincount(piece_of_sentence[keep], minlength=len(per_piece)).astype(np.int64)
    return ids, starts, lengths[keep], sents_per_piece


def _encode_in_order(chunks: Iterator[tuple[list[Piece], int]], tokenizer: Any, tok: Any, workers: int):
    """Yield (encoded chunk, new-document flags, raw bytes read, characters) in input order.
    ``tokenizer`` is what the user passed (a directory or an object), ``tok`` the loaded tokenizer.

    Unlike Pool.imap, whose feeder thread drains the whole input iterator into memory, this keeps at
    most 2 * workers + 2 chunks in flight: reading waits for tokenizing, so memory is bounded."""

    def meta(pieces: list[Piece]) -> tuple[list[bool], int]:
        return [p.new_doc for p in pieces], sum(len(p.text) for p in pieces)

    if workers == 0:
        for pieces, pos in chunks:
            flags, chars = meta(pieces)
            yield encode_pieces(tok, pieces), flags, pos, chars
        return
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with contextlib.ExitStack() as stack:
        tok_dir = tokenizer
        if not isinstance(tokenizer, (str, os.PathLike)):  # a loaded tokenizer: workers load a saved copy
            tok_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bertforge-tokenizer-"))
            tok.save_pretrained(tok_dir)
        # spawn, not fork: the parent holds a Rust tokenizer (its thread pool must not be forked) and a
        # progress-bar thread; spawn behaves the same on every platform.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(str(tok_dir),))
        pending: deque = deque()
        try:
            for pieces, pos in chunks:
                flags, chars = meta(pieces)
                with _stop_signals_blocked():  # submit() starts the worker processes
                    fut = pool.submit(_encode_in_worker, pieces)
                pending.append((fut, flags, pos, chars))
                if len(pending) >= 2 * workers + 2:
                    fut, *rest = pending.popleft()
                    yield fut.result(), *rest
            while pending:
                fut, *rest = pending.popleft()
                yield fut.result(), *rest
        except BaseException as exc:  # Ctrl-C, an error, or the consumer closing this generator
            _kill_workers(pool)
            if isinstance(exc, BrokenProcessPool):
                raise BertforgeError(
                    "a corpus worker process died (killed, out of memory, or a script that calls build_corpus "
                    "without an `if __name__ == '__main__':` guard); rerun with workers=0 to see the error here"
                ) from None
            raise
        pool.shutdown()  # every chunk is done: the workers are idle and exit at once


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while worker processes may start. A child inherits the mask,
    so a signal sent to the process group during its imports waits until _init_worker ignores it, instead of
    killing it with a traceback. In this process a blocked signal is only delayed, not lost."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _kill_workers(pool: Any) -> None:
    """Stop a pool at once: cancel the queued chunks and kill the workers mid-chunk. shutdown(wait=True)
    would wait for the running chunks (tens of seconds on long lines), and a pool whose workers never
    finish makes the interpreter's exit hang joining them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.kill()  # SIGKILL: the workers ignore SIGINT and SIGTERM


class _Writer:
    """Appends encoded chunks to the store's files, hashing what it writes."""

    def __init__(self, root: Path, dtype: np.dtype, vocab_size: int, unk_id: int):
        self.dtype, self.vocab_size, self.unk_id = dtype, vocab_size, unk_id
        self._files = {n: open(root / n, "wb") for n in ("tokens.bin", "word_start.bin", "sent_offsets.bin",
                                                         "doc_offsets.bin")}
        self._hash = {n: hashlib.sha256() for n in self._files}
        self.num_tokens = self.num_sents = self.num_docs = 0
        self.unk_tokens = self.characters = self.empty_docs = 0
        self._doc_waiting = False  # a document has started but has no sentence yet
        self._write("sent_offsets.bin", np.zeros(1, np.int64))

    def _write(self, name: str, array: np.ndarray) -> None:
        data = array.tobytes()
        self._files[name].write(data)
        self._hash[name].update(data)

    def add(self, result: tuple[np.ndarray, ...], new_doc: list[bool]) -> None:
        ids, starts, lengths, per_piece = result
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise BertforgeError(f"the tokenizer produced id {int(ids.max())} >= its vocab_size {self.vocab_size}")
        doc_starts = []
        s = self.num_sents
        for flag, n in zip(new_doc, per_piece.tolist()):
            if flag:
                self.empty_docs += self._doc_waiting
                self._doc_waiting = True
            if n and self._doc_waiting:
                doc_starts.append(s)
                self._doc_waiting = False
            s += n
        self._write("tokens.bin", ids.astype(self.dtype))
        self._write("word_start.bin", starts)
        self._write("sent_offsets.bin", self.num_tokens + np.cumsum(lengths, dtype=np.int64))
        self._write("doc_offsets.bin", np.asarray(doc_starts, dtype=np.int64))
        self.num_tokens += int(ids.size)
        self.num_sents = s
        self.num_docs += len(doc_starts)
        self.unk_tokens += int(np.count_nonzero(ids == self.unk_id))

    def close(self) -> None:
        self.empty_docs += self._doc_waiting
        self._write("doc_offsets.bin", np.asarray([self.num_sents], dtype=np.int64))
        for f in self._files.values():
            f.close()
        self.sha256 = {n: h.hexdigest() for n, h in self._hash.items()}


def _write_array(path: Path, array: np.ndarray) -> str:
    data = array.tobytes()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Split and stats


def split_documents(num_docs: int, validation_fraction: float, seed: int) -> np.ndarray:
    """uint8 [num_docs]: 1 for the validation documents, a seeded random ``validation_fraction`` of them
    (at least one when the fraction is > 0 and there are two or more documents; never all)."""
    n_val = 0
    if validation_fraction > 0 and num_docs > 1:
        n_val = min(num_docs - 1, max(1, round(validation_fraction * num_docs)))
    split = np.zeros(num_docs, dtype=np.uint8)
    split[np.random.default_rng(seed).permutation(num_docs)[:n_val]] = 1
    return split


def resplit(path: str | os.PathLike, validation_fraction: float, seed: int) -> CorpusStore:
    """Redraw a store's train/validation split in place (no re-tokenizing)."""
    if not 0 <= validation_fraction < 1:
        raise BertforgeError(f"validation_fraction={validation_fraction}: expected 0 <= fraction < 1")
    store = CorpusStore(path)
    split = split_documents(store.num_docs, validation_fraction, seed)
    manifest = dict(store.manifest)
    manifest["split"] = {"seed": seed, "validation_fraction": validation_fraction,
                         "train_docs": int((split == 0).sum()), "validation_docs": int((split == 1).sum())}
    with atomic_path(Path(path) / "doc_split.bin") as tmp:
        manifest["sha256"] = dict(manifest["sha256"], **{"doc_split.bin": _write_array(tmp, split)})
    write_json(Path(path) / MANIFEST, manifest)
    return CorpusStore(path)


def _log2_histogram(lengths_chunks: Iterable[np.ndarray]) -> tuple[list[dict], float, int, int]:
    """Histogram over power-of-two bins [1], [2,3], [4,7], ...; also mean, max, count."""
    counts = np.zeros(64, dtype=np.int64)
    total, n, longest = 0, 0, 0
    for lengths in lengths_chunks:
        if lengths.size:
            counts += np.bincount(np.log2(np.maximum(lengths, 1)).astype(np.int64), minlength=64)[:64]
            total += int(lengths.sum())
            n += lengths.size
            longest = max(longest, int(lengths.max()))
    used = np.flatnonzero(counts)
    bins = [{"min": 1 << k, "max": (2 << k) - 1, "count": int(counts[k])}
            for k in (range(used.min(), used.max() + 1) if used.size else ())]
    return bins, (total / n if n else 0.0), longest, n


def corpus_stats(store: CorpusStore, chunk: int = 1 << 24) -> dict[str, Any]:
    """Counts, unknown-token rate, split sizes and sentence/document length histograms, computed by
    streaming over the memory-mapped arrays (bounded memory on any store size)."""
    unk = store.special_ids["unk"]
    unk_count = sum(int(np.count_nonzero(store.tokens[i:i + chunk] == unk)) for i in range(0, store.num_tokens, chunk))

    def sentence_lengths():
        for i in range(0, store.num_sents, chunk):
            yield np.diff(store.sent_offsets[i:i + chunk + 1])

    def doc_lengths():
        for i in range(0, store.num_docs, chunk):
            starts = store.sent_offsets[store.doc_offsets[i:i + chunk + 1]]
            yield np.diff(starts)

    sent_bins, sent_mean, sent_max, _ = _log2_histogram(sentence_lengths())
    doc_bins, doc_mean, doc_max, _ = _log2_histogram(doc_lengths())
    split_tokens = {name: 0 for name in SPLITS}
    for i, lengths in zip(range(0, store.num_docs, chunk), doc_lengths()):
        part = store._split[i:i + chunk]
        for k, name in enumerate(SPLITS):
            split_tokens[name] += int(lengths[part == k].sum())
    m = store.manifest
    return {
        "path": str(store.path),
        "tokenizer": {"kind": m["tokenizer_kind"], "vocab_size": store.vocab_size,
                      "fingerprint": m["tokenizer_fingerprint"]},
        "dtype": m["dtype"],
        "documents": store.num_docs,
        "sentences": store.num_sents,
        "tokens": store.num_tokens,
        "unk_tokens": unk_count,
        "unk_rate": unk_count / max(store.num_tokens, 1),
        "split": {**m["split"], "train_tokens": split_tokens["train"],
                  "validation_tokens": split_tokens["validation"]},
        "sentence_length": {"mean": sent_mean, "max": sent_max, "histogram": sent_bins},
        "document_length": {"mean": doc_mean, "max": doc_max, "histogram": doc_bins},
        "sources": [{k: s.get(k) for k in ("path", "sha256", "status", "documents")} for s in m["sources"]],
        "build_report": m["build_report"],
    }


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    """Human-readable form of :func:`corpus_stats`."""
    t, sp = stats["tokenizer"], stats["split"]
    lines = [
        f"corpus store   {stats['path']}",
        f"tokenizer      {t['kind']}, vocab {t['vocab_size']:,}, fingerprint {t['fingerprint'][:12]} "
        f"({stats['dtype']} ids)",
        f"documents      {stats['documents']:,}  (train {sp['train_docs']:,} / validation {sp['validation_docs']:,}, "
        f"seed {sp['seed']})",
        f"sentences      {stats['sentences']:,}",
        f"tokens         {stats['tokens']:,}  (train {sp['train_tokens']:,} / validation {sp['validation_tokens']:,})",
        f"unknown tokens {stats['unk_tokens']:,}  ({stats['unk_rate']:.3%})",
    ]
    for what in ("sentence", "document"):
        h = stats[f"{what}_length"]
        lines.append(f"\n{what} length in tokens: mean {h['mean']:.1f}, max {h['max']:,}")
        peak = max((b["count"] for b in h["histogram"]), default=0) or 1
        total = sum(b["count"] for b in h["histogram"]) or 1
        for b in h["histogram"]:
            label = str(b["min"]) if b["min"] == b["max"] else f"{b['min']}-{b['max']}"
            bar = "#" * round(width * b["count"] / peak)
            lines.append(f"  {label:>13} {bar:<{width}} {b['count']:>10,} {b['count'] / total:6.1%}")
    report = {k: v for k, v in stats["build_report"].items() if k != "warnings" and v}
    lines.append("\nbuild report   " + (", ".join(f"{k} {v:,}" for k, v in report.items()) or "clean"))
    for w in stats["build_report"].get("warnings", []):
        lines.append(f"  warning: {w}")
    lines.append("sources")
    for s in stats["sources"]:
        lines.append(f"  {s['path']}  sha256 {str(s['sha256'])[:12]}  {s['documents']:,} documents  {s['status']}")
    return "\n".join(lines)
