"""Examples -> model inputs, for every task, and the padding collator.

A feature is a dict of Python lists/ints for one sequence (one window for QA); ``collate`` pads a list
of them into the batch dict the task models read (see tasks.py for keys and shapes). Whatever is
truncated is counted in a ``Skips`` with the rows it happened to, never silently dropped.

- sequence classification: the tokenizer's single/pair template, truncated to max_length;
- NER: the words of a CoNLL sentence are encoded pre-split; the tag goes on each word's first
  sub-token (-100 elsewhere; Devlin et al., 2019, sec. 5.3); a sentence longer than max_length is
  split at word boundaries into pieces that fit;
- QA: question + context windows: the context is cut into windows of the room left after the
  question, consecutive windows overlapping by ``doc_stride`` tokens (BERT's run_squad.py); a window
  whose span does not contain the whole answer is labelled with [CLS] (position 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import BertforgeError
from ..taskdata import QAExample, Skips, TextExample, TokenExample
from ..tasks import IGNORE, TaskConfig


def check_tokenizer(tok, config: ModelConfig, where: str) -> None:
    """A tokenizer that does not match the model indexes the wrong (or no) embedding rows: refuse it."""
    if tok.vocab_size > config.vocab_size:
        raise BertforgeError(
            f"{where}: the tokenizer has {tok.vocab_size} tokens but the model's embedding has {config.vocab_size} "
            "rows; use the tokenizer the model was trained with"
        )
    if tok.pad_token_id != config.pad_token_id:
        raise BertforgeError(
            f"{where}: the tokenizer's pad id is {tok.pad_token_id} but the model was built with pad_token_id="
            f"{config.pad_token_id}; use the tokenizer the model was trained with"
        )


# ---- sequence classification ----------------------------------------------------------------------
def encode_texts(tok, examples: list[TextExample], label_ids: dict[str, int] | None, max_length: int,
                 skips: Skips) -> list[dict]:
    """One feature per example: input_ids, token_type_ids (+ labels when ``label_ids`` is given and the
    example has a label). A label not in ``label_ids`` is an error naming the row."""
    if not examples:
        return []
    pairs = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    enc = tok([ex.text for ex in examples], pairs, truncation=True, max_length=max_length)
    features = []
    for i, ex in enumerate(examples):
        if enc.encodings[i].overflowing:
            skips.add(f"texts longer than {max_length} tokens truncated", ex.source)
        f = {"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i]}
        if label_ids is not None and ex.label is not None:
            if ex.label not in label_ids:
                raise BertforgeError(
                    f"{ex.source}: label {ex.label!r} never appears in the training data "
                    f"(training labels: {', '.join(label_ids)})"
                )
            f["labels"] = label_ids[ex.label]
        features.append(f)
    return features


# ---- token classification -------------------------------------------------------------------------
# Inference on raw text splits it into the units CoNLL data uses: each CJK character is a word
# (MSRA/People's Daily are tagged per character), other letters and digits run until a space or a
# punctuation mark, and each punctuation mark is a word of its own (CoNLL tokenisation).
_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK_CHARS}]|[^\\W{_CJK_CHARS}]+|[^\\w\\s]")


def split_words(text: str) -> list[tuple[str, int]]:
    """Raw text -> (word, character offset) pairs."""
    return [(m.group(), m.start()) for m in _WORD.finditer(text)]


@dataclass
class WordEncoding:
    input_ids: list[int]
    token_type_ids: list[int]
    word_starts: list[bool]  # per token: first sub-token of a word
    first_token: list[int | None]  # per word: index of its first token; None if cut off or it has no token


def encode_words(tok, words: list[str], max_length: int) -> WordEncoding:
    enc = tok(list(words), is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = enc.word_ids()
    first: list[int | None] = [None] * len(words)
    starts = []
    for i, w in enumerate(word_ids):
        is_start = w is not None and first[w] is None
        if is_start:
            first[w] = i
        starts.append(is_start)
    return WordEncoding(enc["input_ids"], enc["token_type_ids"], starts, first)


def word_chunks(tok, words: list[str], max_length: int) -> list[tuple[int, int]]:
    """Split a word sequence into consecutive [start, end) pieces that each fit max_length tokens with the
    special tokens, so long sentences are tagged whole instead of cut (a single word longer than that
    is a piece of its own and gets truncated)."""
    specials = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    budget = max_length - specials
    lengths = [len(ids) for ids in tok(list(words), add_special_tokens=False)["input_ids"]] if words else []
    chunks, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if used + n > budget and i > start:
            chunks.append((start, i))
            start, used = i, 0
        used += n
    chunks.append((start, len(words)))
    return chunks


def encode_tokens(tok, examples: list[TokenExample], tag_ids: dict[str, int] | None, max_length: int,
                  skips: Skips) -> list[dict]:
    """Features for pre-split sentences: input_ids, token_type_ids, word_starts, example (index into
    ``examples``), first_token (per word of the piece) and, with ``tag_ids``, labels [L] holding the tag
    id at each word's first sub-token and -100 elsewhere. A sentence longer than max_length tokens is
    split into pieces at word boundaries (counted in ``skips``)."""
    features = []
    for n, ex in enumerate(examples):
        pieces = word_chunks(tok, ex.tokens, max_length)
        if len(pieces) > 1:
            skips.add(f"sentences longer than {max_length} tokens split into pieces", ex.source)
        for start, end in pieces:
            w = encode_words(tok, ex.tokens[start:end], max_length)
            missing = sum(t is None for t in w.first_token)
            if missing:
                skips.add("words the tokenizer turns into no token (or past max_length) tagged O", ex.source)
            f = {"input_ids": w.input_ids, "token_type_ids": w.token_type_ids, "word_starts": w.word_starts,
                 "example": n, "first_token": w.first_token}
            if tag_ids is not None and ex.tags is not None:
                labels = [IGNORE] * len(w.input_ids)
                for word, (tag, pos) in enumerate(zip(ex.tags[start:end], w.first_token)):
                    if tag not in tag_ids:
                        raise BertforgeError(
                            f"{ex.source}: tag {tag!r} (word {start + word + 1}) never appears in the training "
                            f"data (training tags: {', '.join(tag_ids)})"
                        )
                    if pos is not None:
                        labels[pos] = tag_ids[tag]
                f["labels"] = labels
            features.append(f)
    return features


# ---- extractive QA --------------------------------------------------------------------------------
@dataclass
class PairTemplate:
    """Where the tokenizer puts its special tokens around two segments: [CLS] A [SEP] B [SEP] for BERT,
    <s> A </s></s> B </s> for RoBERTa, read off the tokenizer itself."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    types: tuple[list[int], int, list[int], int, list[int]]  # token types of prefix, A, middle, B, suffix


def pair_template(tok) -> PairTemplate:
    enc = tok("a", "b")
    ids, types, seq = enc["input_ids"], enc["token_type_ids"], enc.sequence_ids()
    a = [i for i, s in enumerate(seq) if s == 0]
    b = [i for i, s in enumerate(seq) if s == 1]
    p, m, s = range(0, a[0]), range(a[-1] + 1, b[0]), range(b[-1] + 1, len(ids))
    return PairTemplate(
        [ids[i] for i in p], [ids[i] for i in m], [ids[i] for i in s],
        ([types[i] for i in p], types[a[0]], [types[i] for i in m], types[b[0]], [types[i] for i in s]),
    )


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last context token overlapping characters [start, end)."""
    inside = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    return (inside[0], inside[-1]) if inside else None


def encode_qa(tok, examples: list[QAExample], task: TaskConfig, skips: Skips, train: bool) -> list[dict]:
    """Windows over each context: input_ids, token_type_ids, example (index into ``examples``),
    offsets (per token: (start, end) characters in the context, None outside it) and, when ``train``,
    start_positions / end_positions of the first verified answer (0 when the window does not hold it
    whole). Training skips questions without a verified answer (counted by the reader)."""
    tpl = pair_template(tok)
    specials = len(tpl.prefix) + len(tpl.middle) + len(tpl.suffix)
    pre_t, a_t, mid_t, b_t, suf_t = tpl.types
    questions = tok([ex.question for ex in examples], add_special_tokens=False)["input_ids"]
    contexts = tok([ex.context for ex in examples], add_special_tokens=False, return_offsets_mapping=True)
    features = []
    for n, ex in enumerate(examples):
        if train and not ex.answers:
            continue
        q = questions[n]
        if len(q) > task.max_question_length:
            skips.add(f"questions longer than {task.max_question_length} tokens truncated", ex.source)
            q = q[: task.max_question_length]
        ctx_ids, ctx_off = contexts["input_ids"][n], contexts["offset_mapping"][n]
        room = task.max_length - len(q) - specials
        if room <= task.doc_stride:
            raise BertforgeError(f"{ex.source}: max_length={task.max_length} leaves no room for the context")
        if not ctx_ids:
            skips.add("questions whose context has no token skipped", ex.source)
            continue
        if len(ctx_ids) > room:
            skips.add("contexts longer than a window (max_length minus the question) split into overlapping windows",
                      ex.source)
        answer = None
        if ex.answers:
            text, start = ex.answers[0]
            answer = _token_span(ctx_off, start, start + len(text))
        head = tpl.prefix + q + tpl.middle
        head_types = pre_t + [a_t] * len(q) + mid_t
        begin = 0
        while True:
            end = min(begin + room, len(ctx_ids))
            window = ctx_ids[begin:end]
            f = {
                "input_ids": head + window + tpl.suffix,
                "token_type_ids": head_types + [b_t] * len(window) + suf_t,
                "example": n,
                "offsets": [None] * len(head) + [tuple(o) for o in ctx_off[begin:end]] + [None] * len(tpl.suffix),
            }
            if train:
                inside = answer is not None and begin <= answer[0] and answer[1] < end
                f["start_positions"] = answer[0] - begin + len(head) if inside else 0
                f["end_positions"] = answer[1] - begin + len(head) if inside else 0
            features.append(f)
            if end == len(ctx_ids):
                break
            begin = end - task.doc_stride
    return features


# ---- batching -------------------------------------------------------------------------------------
# How each list-valued key is padded; keys not listed here and not ints (offsets, first_token) stay
# Python-side and never reach the model.
_PAD = {"token_type_ids": 0, "word_starts": False, "labels": IGNORE}


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch: input_ids with pad_id, attention_mask 1/0, token types 0,
    word_starts False, token labels -100; int keys (labels, positions, example) stack to [B]."""
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    ids = [f["input_ids"] + [pad_id] * (longest - len(f["input_ids"])) for f in features]
    batch["input_ids"] = torch.tensor(ids, dtype=torch.long)
    batch["attention_mask"] = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features], dtype=torch.long
    )
    for key, value in features[0].items():
        if key == "input_ids":
            continue
        if isinstance(value, int):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        elif key in _PAD:
            rows = [f[key] + [_PAD[key]] * (longest - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.bool if key == "word_starts" else torch.long)
    return batch
