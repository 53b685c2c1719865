"""Train a tokenizer of any kind from raw text files.

The pipelines come from `tokenizers.build_pipeline`, so what is trained here is exactly what
`AutoTokenizer` and transformers later run. WordPiece and byte-level BPE use the `tokenizers` trainers;
the unigram kind uses `sentencepiece` itself, as ALBERT did (its character coverage matters on CJK text),
and hands its pieces and scores to a `tokenizers` Unigram model.

The input files are read exactly as ``corpus build`` reads them (`sources.FileSource`), so a tokenizer
learns from the text its corpus store will hold: compression recognised by content, binary and empty
files skipped with a warning, a truncated archive kept up to the damage, invalid UTF-8 replaced.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from tokenizers import normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE, Unigram, WordPiece

from ..errors import BertforgeError
from .sources import BuildReport, FileSource, resolve_inputs
from .tokenizers import (
    _CJK, KINDS, SPECIAL_TOKENS, Tokenizer, _jieba, build_pipeline, post_processor, special_added_tokens,
)

# BERT's English vocabulary keeps about a thousand single characters; more would be rare symbols.
_WORDPIECE_ALPHABET = 1000
# A WordPiece vocabulary smaller than the characters that make up this share of the text (with their ##
# forms) gets a warning: many words then hold a character it lacks and encode as [UNK]. 0.9 is also the
# lowest --character-coverage the unigram kind accepts.
_WORDPIECE_MIN_COVERAGE = 0.9


class _Report(BuildReport):
    """A build report shared by all passes over the text: each warning is printed once, not per pass."""

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            super().warn(message)


class TextInput:
    """The input files, read as ``corpus build`` reads them, as often as a trainer needs.
    ``lines_seen``: the non-empty lines the last pass yielded."""

    def __init__(self, files: Sequence[str | os.PathLike]):
        if not files:
            raise BertforgeError("no input files given")
        # Every input problem that can be found up front (missing file, empty directory, unreadable
        # file) raises here, with corpus build's messages.
        self.sources: list[FileSource] = resolve_inputs([str(f) for f in files])
        self.report = _Report()
        self.lines_seen = 0

    def describe(self) -> str:
        names = [s.name for s in self.sources]
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    def no_text(self) -> BertforgeError:
        return BertforgeError(f"no text found in {self.describe()} (see the warnings above)")

    def lines(self, progress: bool = True, desc: str = "reading") -> Iterator[str]:
        """Non-empty, stripped lines (long lines in pieces of at most ``sources.MAX_PIECE_BYTES``), with a
        progress bar over the files' on-disk bytes."""
        from tqdm.auto import tqdm

        self.lines_seen = 0
        start = self.report.raw_bytes
        with tqdm(total=sum(s.size for s in self.sources), unit="B", unit_scale=True, desc=desc,
                  disable=not progress) as bar:
            for source in self.sources:
                for i, piece in enumerate(source.pieces(self.report)):
                    text = piece.text.strip()
                    if text:
                        self.lines_seen += 1
                        yield text
                    if i % 4096 == 0:
                        bar.update(self.report.raw_bytes - start - bar.n)
            bar.update(bar.total - bar.n)


def train_tokenizer(
    kind: str,
    files: Sequence[str | os.PathLike],
    vocab_size: int,
    out: str | os.PathLike | None = None,
    lowercase: bool = False,
    min_frequency: int = 2,
    character_coverage: float = 0.9995,
    progress: bool = True,
) -> Tokenizer:
    """Train a ``kind`` tokenizer on ``files`` (files, directories or globs, read as ``corpus build``
    reads them; one or more sentences a line) and, if ``out`` is given, save it there. Returns the
    loaded `Tokenizer`."""
    if kind not in KINDS:
        raise BertforgeError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    specials = list(SPECIAL_TOKENS[kind].values())
    minimum = len(specials) + (256 if kind == "bpe" else 1)  # byte-level BPE starts from all 256 bytes
    if vocab_size < minimum:
        raise BertforgeError(f"--vocab-size {vocab_size} is too small for {kind}: at least {minimum} "
                             f"({len(specials)} special tokens{' + 256 bytes' if kind == 'bpe' else ' + some text'})")
    if not 0.9 <= character_coverage <= 1.0:
        raise BertforgeError(f"--character-coverage {character_coverage} must be between 0.9 and 1.0")
    if min_frequency < 1:
        raise BertforgeError(f"--min-frequency {min_frequency} must be at least 1")
    text = TextInput(files)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise BertforgeError(f"{out}: exists and is not a directory")
    if kind == "chinese-word":
        backend = _train_chinese_word(text, vocab_size, lowercase, min_frequency, progress)
    elif kind == "unigram":
        backend = _train_unigram(text, vocab_size, lowercase, character_coverage, progress)
    elif kind == "bpe":
        backend = _train_bpe(text, vocab_size, min_frequency, progress)
    else:
        backend = _train_wordpiece(kind, text, vocab_size, lowercase, min_frequency, progress)
    if not text.lines_seen:
        raise text.no_text()
    got = backend.get_vocab_size(with_added_tokens=True)
    if got > vocab_size:
        raise BertforgeError(f"--vocab-size {vocab_size} is too small for this text: its characters and the "
                             f"special tokens alone need {got}; pass --vocab-size {got} or more")
    tok = Tokenizer(backend, kind, SPECIAL_TOKENS[kind], config=_config(kind, lowercase))
    if out is not None:
        tok.save_pretrained(out)
    return tok


def _config(kind: str, lowercase: bool) -> dict:
    """The tokenizer_config.json keys from which the transformers class rebuilds the same pipeline."""
    if kind == "bpe":
        return {}
    if kind == "unigram":
        return {"do_lower_case": lowercase, "keep_accents": not lowercase}
    return {"do_lower_case": lowercase, "strip_accents": None, "tokenize_chinese_chars": True}


def _train_bpe(text: TextInput, vocab_size: int, min_frequency: int, progress: bool):
    """RoBERTa's byte-level BPE: all 256 bytes are in the alphabet, so nothing is ever unknown."""
    backend = build_pipeline("bpe", BPE(), lowercase=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_added_tokens("bpe"),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress,
    )
    backend.train_from_iterator(text.lines(progress), trainer=trainer)
    backend.post_processor = post_processor("bpe", backend)
    return backend


class _Alphabet(NamedTuple):
    """The characters of a text as the WordPiece trainer sees them (after the kind's normalizer and
    pre-tokenizer), most frequent first. ``cost[k]``: the tokens the first k characters take (each one,
    plus its "##" form when it occurs inside a word). ``needed``: how many of them make up
    _WORDPIECE_MIN_COVERAGE of the text (at most ``limit``). ``limit``: the most the kind keeps."""

    chars: list[str]
    cost: list[int]
    needed: int
    limit: int


# After one of these a character starts a word (BertPreTokenizer splits at whitespace and punctuation,
# the BERT normalizer isolates CJK ideographs); only ASCII and CJK punctuation are listed, which
# covers nearly all text: a miss only misjudges a "##" form, which _train_wordpiece then corrects.
_BREAK = (r"\s!-/:-@\[-`{-~"  # whitespace, ASCII punctuation
          r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK punctuation and ideographs
          r"\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65")  # full-width punctuation
_INSIDE_WORD = re.compile(f"(?<=[^{_BREAK}])[^{_BREAK}]+")


def _alphabet(kind: str, text: TextInput, lowercase: bool, progress: bool) -> _Alphabet:
    # Counted on the raw text, then mapped through the normalizer one distinct character at a time (the
    # BERT normalizer works character by character): pre-tokenizing every line from Python would take
    # several times as long as training itself.
    raw: Counter[str] = Counter()
    raw_inside: set[str] = set()
    for line in text.lines(progress, desc="counting characters"):
        raw.update(line)
        raw_inside.update("".join(_INSIDE_WORD.findall(line)))
    pipeline = build_pipeline(kind, WordPiece(unk_token=SPECIAL_TOKENS[kind]["unk"]), lowercase=lowercase)
    norm, pre = pipeline.normalizer, pipeline.pre_tokenizer
    total: Counter[str] = Counter()
    inside: set[str] = set()
    for c, n in raw.items():
        prev_in_word = c in raw_inside
        for x in norm.normalize_str(c):  # "" for a control character, " 中 " for an ideograph
            in_word = len(pre.pre_tokenize_str(f"a{x}a")) == 1  # not whitespace or punctuation
            if not x.isspace():
                total[x] += n
            if in_word and prev_in_word:
                inside.add(x)
            prev_in_word = in_word
    chars = sorted(total, key=lambda c: (-total[c], c))
    cost, covered, needed, enough = [0], 0, 0, _WORDPIECE_MIN_COVERAGE * sum(total.values())
    for c in chars:
        cost.append(cost[-1] + 1 + (c in inside))
        if covered < enough:
            covered += total[c]
            needed += 1
    # English BERT keeps about a thousand characters; bert-base-chinese every frequent one.
    limit = len(chars) if kind == "chinese-char" else min(len(chars), _WORDPIECE_ALPHABET)
    return _Alphabet(chars, cost, min(needed, limit), limit)


def _minimum_vocab(kind: str, alphabet: _Alphabet, vocab_size: int, name: str | None = None) -> None:
    """Refuse a vocabulary without room for the special tokens and one character (``name``: the kind as the
    user gave it): the trainer would return fewer tokens than asked."""
    specials = len(SPECIAL_TOKENS[kind])
    minimum = specials + alphabet.cost[1]
    if vocab_size < minimum:
        forms = " and its '##' form" if alphabet.cost[1] == 2 else ""
        raise BertforgeError(f"--vocab-size {vocab_size} is too small for {name or kind}: at least {minimum} "
                             f"({specials} special tokens + the most frequent character{forms})")


def _coverage_vocab(kind: str, alphabet: _Alphabet) -> int:
    """The vocabulary that holds the characters making up _WORDPIECE_MIN_COVERAGE of the text (with their
    "##" forms): below it, a good share of the words encode as [UNK]."""
    return len(SPECIAL_TOKENS[kind]) + alphabet.cost[alphabet.needed]


def _train_wordpiece(kind: str, text: TextInput, vocab_size: int, lowercase: bool, min_frequency: int,
                     progress: bool, alphabet: _Alphabet | None = None):
    """WordPiece for wordpiece and chinese-char. bert-base-chinese keeps every frequent character,
    English BERT about a thousand. The trainer adds a "##" form of each character seen inside a word on
    top of the alphabet, so the alphabet is chosen here, most frequent characters first, as large as
    fits the vocabulary (its rarest characters become [UNK]), and handed to the trainer as is."""
    if alphabet is None:
        alphabet = _alphabet(kind, text, lowercase, progress)
    if not alphabet.chars:
        raise text.no_text()
    _minimum_vocab(kind, alphabet, vocab_size)
    specials = special_added_tokens(kind)
    k = max(k for k in range(1, alphabet.limit + 1) if len(specials) + alphabet.cost[k] <= vocab_size)
    for _ in range(4):
        backend = build_pipeline(kind, WordPiece(unk_token=SPECIAL_TOKENS[kind]["unk"]), lowercase=lowercase)
        # initial_alphabet outranks every counted character, so the trainer keeps exactly these k.
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=alphabet.chars[:k], limit_alphabet=k, show_progress=progress,
        )
        backend.train_from_iterator(text.lines(progress), trainer=trainer)
        # The "##" forms counted above can be off by a few: correct the alphabet by the difference, so that
        # a vocabulary short of vocab_size means the text gave no more pieces. A character takes one or two
        # tokens, so neither step overshoots; with exact counts a vocabulary short by two or more already
        # holds the whole alphabet.
        missing = vocab_size - backend.get_vocab_size(with_added_tokens=True)
        if missing >= 2 and k < alphabet.limit:
            k = min(alphabet.limit, k + missing // 2)
        elif missing < 0 and k > 1:
            k = max(1, k + missing)
        else:
            break
    if k < alphabet.needed:  # allowed (tiny test models), but the user should know what it costs
        text.report.warn(f"--vocab-size {vocab_size} holds the {k} most frequent characters, less than "
                         f"{_WORDPIECE_MIN_COVERAGE:.0%} of the text: words with the others encode as [UNK] "
                         f"(--vocab-size {_coverage_vocab(kind, alphabet)} holds {_WORDPIECE_MIN_COVERAGE:.0%})")
    backend.post_processor = post_processor(kind, backend)
    return backend


def _train_chinese_word(text: TextInput, vocab_size: int, lowercase: bool, min_frequency: int, progress: bool):
    """WoBERT (Su, 2020): the character vocabulary of bert-base-chinese plus the most frequent jieba
    words. Here: half the budget at most goes to words (WoBERT: 20k words on a 21k character vocab), less
    when the characters need more; the character WordPiece is trained on the rest, and any room it
    leaves goes to more words."""
    jieba = _jieba()
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=None, lowercase=lowercase
    )
    counts: Counter[str] = Counter()
    for line in text.lines(progress, desc="jieba words"):
        counts.update(w for w in jieba.cut(norm.normalize_str(line), HMM=False)
                      if len(w) > 1 and all(_CJK.match(c) for c in w))
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_frequency]
    alphabet = _alphabet("chinese-char", text, lowercase, progress)
    if not alphabet.chars:
        raise text.no_text()
    _minimum_vocab("chinese-char", alphabet, vocab_size, name="chinese-word")
    # the characters first: words only from the room left once they cover most of the text
    n_words = min(len(words), vocab_size // 2, max(0, vocab_size - _coverage_vocab("chinese-char", alphabet)))
    chars = _train_wordpiece("chinese-char", text, vocab_size - n_words, lowercase, min_frequency, progress,
                             alphabet)
    vocab = chars.get_vocab(with_added_tokens=True)
    free = vocab_size - len(vocab)
    for w in words[:free]:
        vocab.setdefault(w, len(vocab))
    return build_pipeline("chinese-word", WordPiece(vocab, unk_token=SPECIAL_TOKENS["chinese-word"]["unk"]),
                          lowercase=lowercase)


def _train_unigram(text: TextInput, vocab_size: int, lowercase: bool, coverage: float, progress: bool):
    """ALBERT's unigram vocabulary, trained by SentencePiece itself (ALBERT's own recipe: pad 0, unk 1,
    [CLS] [SEP] [MASK] as control symbols, no bos/eos), whose character coverage keeps rare CJK
    characters from crowding out pieces. SentencePiece sees text already normalized by our pipeline and
    normalizes nothing itself; its pieces and scores then become the `tokenizers` Unigram model, as
    transformers' AlbertConverter does for the released ALBERT models."""
    import io

    import sentencepiece as spm

    normalizer = build_pipeline("unigram", Unigram(), lowercase=lowercase).normalizer
    model = io.BytesIO()
    specials = SPECIAL_TOKENS["unigram"]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(normalizer.normalize_str(line) for line in text.lines(progress)),
            model_writer=model, model_type="unigram", vocab_size=vocab_size, hard_vocab_limit=False,
            character_coverage=coverage, normalization_rule_name="identity",
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=specials["pad"], unk_piece=specials["unk"],
            control_symbols=[specials["cls"], specials["sep"], specials["mask"]],
            input_sentence_size=10_000_000, shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
            minloglevel=0 if progress else 2,
        )
    except RuntimeError as exc:
        if not text.lines_seen:
            raise text.no_text() from None
        found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(exc))
        if found:
            raise BertforgeError(
                f"--vocab-size {vocab_size} is too small for this text: at --character-coverage {coverage} its "
                f"{found.group(2)} characters alone need more; raise --vocab-size above {found.group(2)} or lower "
                "--character-coverage") from None
        raise BertforgeError(f"unigram training failed: {str(exc).strip().splitlines()[-1]}") from None
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return build_pipeline("unigram", Unigram(pieces, unk_id=1, byte_fallback=False), lowercase=lowercase)
