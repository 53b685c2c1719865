"""Tokenizers for every BERT-family variant, on the Hugging Face `tokenizers` library.

Five kinds, each written as a directory that both ``bertforge.AutoTokenizer`` and
``transformers.AutoTokenizer`` load and that encodes identically in both:

=============  ===========================================  =======================  ====================
kind           what                                         transformers class       specials (id order)
=============  ===========================================  =======================  ====================
wordpiece      BERT WordPiece; CJK characters split apart   BertTokenizer            [PAD] [UNK] [CLS] [SEP] [MASK]
bpe            RoBERTa byte-level BPE (``Ġ`` = a space)     RobertaTokenizer         <s> <pad> </s> <unk> <mask>
unigram        ALBERT unigram LM (``▁`` = a space)          AlbertTokenizer          <pad> <unk> [CLS] [SEP] [MASK]
chinese-char   bert-base-chinese: one token per character   BertTokenizer            as wordpiece
chinese-word   WoBERT: jieba words, else characters         RoFormerTokenizer        as wordpiece
=============  ===========================================  =======================  ====================

Each pipeline here is built exactly as the transformers class builds its own (transformers 5 rebuilds
the normalizer and pre-tokenizer from ``tokenizer_config.json`` and the vocabulary, so anything else
would encode differently there). WoBERT's jieba pre-tokenization is Python code that tokenizer.json
cannot hold: bertforge attaches it on load with python ``jieba``; transformers' RoFormerTokenizer does
the same with ``rjieba`` (jieba's Rust port, same dictionary and algorithm). See docs/tokenizers.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import (
    AddedToken, NormalizedString, PreTokenizedString, decoders, normalizers, pre_tokenizers, processors,
)
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, WordPiece

from ..errors import BertforgeError
from ..files import write_json, write_text

KINDS = ("wordpiece", "bpe", "unigram", "chinese-char", "chinese-word")

# Role -> token string per family; the list order is the id order of a freshly trained vocabulary
# (RoBERTa's and ALBERT's released orders; transformers' BertTokenizer default for WordPiece).
_ROLES = ("pad", "unk", "cls", "sep", "mask")
SPECIAL_TOKENS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "unigram": {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
}
SPECIAL_TOKENS["chinese-char"] = SPECIAL_TOKENS["chinese-word"] = SPECIAL_TOKENS["wordpiece"]
TOKENIZER_CLASS = {
    "wordpiece": "BertTokenizer",
    "chinese-char": "BertTokenizer",
    "bpe": "RobertaTokenizer",
    "unigram": "AlbertTokenizer",
    "chinese-word": "RoFormerTokenizer",
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")

# BERT's _is_chinese_char ranges (CJK Unified Ideographs and extensions, compatibility ideographs).
_CJK = re.compile(
    "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f]"
)
# ALBERT's create_pretraining_data._is_start_piece: these pieces start a word even without "▁".
_ALBERT_START_PIECES = frozenset('!"#$%&()*+,-./:;?@[\\]^_`{|}~')


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (ByteLevel pre-tokenizer): char -> byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


# Byte-level tokens that begin with an ASCII whitespace byte (Ġ space, Ċ newline, ĉ tab, ...); bytes
# 0x85 and 0xA0 are only UTF-8 continuation bytes here, not spaces.
_BYTE_SPACE_CHARS = frozenset(c for c, b in _gpt2_byte_chars().items() if b < 128 and chr(b).isspace())


# ---- pipelines, exactly as transformers' classes build them ----------------------------------------
def build_pipeline(kind: str, model: Any, lowercase: bool, strip_accents: bool | None = None,
                   handle_chinese_chars: bool = True) -> Backend:
    """A `tokenizers.Tokenizer` for ``kind`` around ``model`` (trained or not): normalizer,
    pre-tokenizer, decoder, post-processor and the special tokens, mirroring the transformers class of
    TOKENIZER_CLASS[kind] so that both libraries encode identically. For chinese-word the pre-tokenizer
    is BertPreTokenizer, the serializable stand-in; `Tokenizer` swaps in the jieba one."""
    specials = SPECIAL_TOKENS[kind]
    tok = Backend(model)
    if kind == "bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    elif kind == "unigram":
        norm = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if strip_accents if strip_accents is not None else lowercase:  # ALBERT: keep_accents=False
            norm += [normalizers.NFKD(), normalizers.StripAccents()]
        if lowercase:
            norm.append(normalizers.Lowercase())
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    else:
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=handle_chinese_chars and kind != "chinese-word",
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    # Specials are "added tokens": matched in raw text before normalization, never split. An untrained
    # model gets all of them (ids 0-4, the trainers keep them there); a loaded vocabulary only marks
    # those it has, so a missing one is reported rather than silently appended.
    vocab = tok.get_vocab(with_added_tokens=False)
    tok.add_special_tokens([t for t in special_added_tokens(kind) if not vocab or t.content in vocab])
    cls, sep = specials["cls"], specials["sep"]
    if tok.token_to_id(cls) is not None and tok.token_to_id(sep) is not None:
        tok.post_processor = post_processor(kind, tok)
    return tok


def special_added_tokens(kind: str) -> list[AddedToken]:
    """The family's special tokens in id order. RoBERTa's <mask> swallows the space before it
    (lstrip), so "the <mask>" masks the word "Ġword" as a whole."""
    return [AddedToken(t, special=True, normalized=False, lstrip=(kind == "bpe" and role == "mask"))
            for role, t in SPECIAL_TOKENS[kind].items()]


def post_processor(kind: str, tok: Backend) -> Any:
    specials = SPECIAL_TOKENS[kind]
    cls, sep = specials["cls"], specials["sep"]
    cls_id, sep_id = tok.token_to_id(cls), tok.token_to_id(sep)
    if kind == "bpe":  # <s> A </s></s> B </s>
        return processors.RobertaProcessing((sep, sep_id), (cls, cls_id), trim_offsets=True, add_prefix_space=False)
    return processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )


# ---- jieba --------------------------------------------------------------------------------------------
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." chatter on every process start
    return jieba


class JiebaPreTokenizer:
    """WoBERT's pre-tokenization (Su, 2020; bert4keras ``pre_tokenize``): jieba words (HMM off) that are
    in the vocabulary stay whole; any other word falls back to BERT's splitting (one piece per CJK
    character), then WordPiece. Same logic as transformers' RoFormer JiebaPreTokenizer, with python
    jieba instead of rjieba. Written by hand because a tokenizer.json cannot express it."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab
        self.jieba = _jieba()
        self.split_chars = normalizers.BertNormalizer(
            clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )

    def jieba_split(self, i: int, normalized: NormalizedString) -> list[NormalizedString]:
        pieces = []
        for word, start, end in self.jieba.tokenize(str(normalized), HMM=False):
            if word in self.vocab:
                pieces.append(normalized[start:end])
            else:
                for piece in self.split_chars.normalize_str(word).split():
                    end = start + len(piece)
                    pieces.append(normalized[start:end])
                    start = end
        return pieces

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        pretok.split(self.jieba_split)


def _jieba_identity() -> str:
    """What a chinese-word tokenizer's output depends on besides its files: jieba and its dictionary."""
    jieba = _jieba()
    dict_file = Path(jieba.__file__).parent / "dict.txt"
    digest = hashlib.sha256(dict_file.read_bytes()).hexdigest() if dict_file.exists() else "?"
    return f"jieba {jieba.__version__} dict {digest}"


# ---- outputs -------------------------------------------------------------------------------------------
class BatchEncoding(dict):
    """input_ids, token_type_ids, attention_mask (+ optional offset_mapping, special_tokens_mask), as
    transformers returns them; keys are also attributes. ``encodings`` keeps the `tokenizers` encodings
    for ``word_ids(i)``, ``tokens(i)`` and ``sequence_ids(i)``."""

    def __init__(self, data: dict[str, Any], encodings: list[Any]):
        super().__init__(data)
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def tokens(self, i: int = 0) -> list[str]:
        return self.encodings[i].tokens

    def word_ids(self, i: int = 0) -> list[int | None]:
        return self.encodings[i].word_ids

    def sequence_ids(self, i: int = 0) -> list[int | None]:
        return self.encodings[i].sequence_ids

    def to(self, device: Any) -> "BatchEncoding":
        for k, v in self.items():
            if hasattr(v, "to"):
                self[k] = v.to(device)
        return self


# ---- the tokenizer ------------------------------------------------------------------------------------
class Tokenizer:
    """A loaded tokenizer of one of the five kinds (or any BERT/RoBERTa/ALBERT-style HF tokenizer).

    The `tokenizers` backend does the work; this class adds the transformers-style call, the bertforge
    metadata (kind, fingerprint) and word-start flags for whole-word masking."""

    def __init__(self, backend: Backend, kind: str, special_tokens: dict[str, str],
                 model_max_length: int = 512, config: dict[str, Any] | None = None):
        if kind not in KINDS:
            raise BertforgeError(f"tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
        backend.no_padding()
        backend.no_truncation()
        self.kind = kind
        self.model_max_length = int(model_max_length)
        self.special_tokens = dict(special_tokens)
        self.config = dict(config or {})
        self._backend = backend
        # The serializable form: what tokenizer.json holds, and what the fingerprint hashes.
        self._json = backend.to_str()
        self._vocab = backend.get_vocab(with_added_tokens=True)
        for role in _ROLES:
            token = self.special_tokens.get(role)
            if token is None or token not in self._vocab:
                raise BertforgeError(
                    f"tokenizer: the {role} token {token!r} is not in the vocabulary "
                    f"(set {role}_token in tokenizer_config.json)"
                )
        self._special_ids = frozenset(self._vocab[self.special_tokens[r]] for r in _ROLES)
        if kind == "chinese-word":
            backend.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(JiebaPreTokenizer(self._vocab))
        self._lock = threading.Lock()  # padding/truncation are backend state; calls may come from threads
        self._settings: tuple | None = None
        self._fingerprint: str | None = None
        self._jieba = None

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        return _load(Path(path).expanduser())

    def __reduce__(self):
        """Pickle (e.g. to worker processes) as the serializable form; the jieba pre-tokenizer and the
        lock are rebuilt on the other side."""
        return _from_state, (self._json, self.kind, self.special_tokens, self.model_max_length, self.config)

    # -- vocabulary ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Rows an embedding needs: the largest id + 1 (a vocab.txt with a repeated line has a gap)."""
        return max(self._vocab.values()) + 1

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _id(self, role: str) -> int:
        return self._vocab[self.special_tokens[role]]

    cls_token_id = property(lambda self: self._id("cls"))
    sep_token_id = property(lambda self: self._id("sep"))
    mask_token_id = property(lambda self: self._id("mask"))
    pad_token_id = property(lambda self: self._id("pad"))
    unk_token_id = property(lambda self: self._id("unk"))
    cls_token = property(lambda self: self.special_tokens["cls"])
    sep_token = property(lambda self: self.special_tokens["sep"])
    mask_token = property(lambda self: self.special_tokens["mask"])
    pad_token = property(lambda self: self.special_tokens["pad"])
    unk_token = property(lambda self: self.special_tokens["unk"])

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self._id(r) for r in _ROLES})

    @property
    def all_special_tokens(self) -> list[str]:
        return [self._backend.id_to_token(i) for i in self.all_special_ids]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self._vocab.get(tokens, unk)
        return [self._vocab.get(t, unk) for t in tokens]

    # -- encoding --------------------------------------------------------------------------------------
    def _configure(self, padding: bool | str, truncation: bool | str, max_length: int | None) -> None:
        """Set the backend's padding/truncation for one call (under self._lock)."""
        settings = (padding, truncation, max_length)
        if settings == self._settings:
            return
        if truncation not in (False, None, True, "longest_first", "only_first", "only_second", "do_not_truncate"):
            raise BertforgeError(
                f"truncation={truncation!r}: expected True, False, 'longest_first', 'only_first' or 'only_second'"
            )
        if padding not in (False, None, True, "longest", "max_length", "do_not_pad"):
            raise BertforgeError(f"padding={padding!r}: expected True, False, 'longest' or 'max_length'")
        if truncation in (False, None, "do_not_truncate"):
            self._backend.no_truncation()
        else:
            strategy = "longest_first" if truncation is True else truncation
            self._backend.enable_truncation(max_length or self.model_max_length, strategy=strategy)
        if padding in (False, None, "do_not_pad"):
            self._backend.no_padding()
        else:
            length = (max_length or self.model_max_length) if padding == "max_length" else None
            self._backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token, length=length)
        self._settings = settings

    def _encode(self, inputs: list, padding=False, truncation=False, max_length=None,
                add_special_tokens=True, is_split_into_words=False) -> list[Any]:
        with self._lock:
            self._configure(padding, truncation, max_length)
            try:
                return self._backend.encode_batch(
                    inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
                )
            except Exception as exc:  # e.g. "Truncation error: Second sequence not provided"
                raise BertforgeError(f"tokenizer: {exc} (padding={padding!r}, truncation={truncation!r}, "
                                     f"max_length={max_length!r})") from None

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        is_split_into_words: bool = False,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
    ) -> BatchEncoding:
        """Encode one text (or pre-split word list) or a batch, optionally as pairs; returns
        input_ids, token_type_ids, attention_mask like transformers (lists, or [B, L] tensors with
        return_tensors="pt"; a single text gives [1, L])."""
        batched = _is_batch(text, is_split_into_words)
        texts = list(text) if batched else [text]
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise BertforgeError(f"got {len(texts)} texts but {len(pairs)} text pairs")
            inputs: list = list(zip(texts, pairs))
        else:
            inputs = texts
        for item in texts + (pairs if text_pair is not None else []):
            ok = isinstance(item, str) if not is_split_into_words else (
                isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item))
            if not ok:
                want = "a list of words" if is_split_into_words else "a string"
                raise BertforgeError(f"tokenizer input must be {want} (or a list of them), got {type(item).__name__}")
        encs = self._encode(inputs, padding, truncation, max_length, add_special_tokens, is_split_into_words)
        data: dict[str, Any] = {
            "input_ids": [e.ids for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
        }
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encs]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encs]
        if return_tensors is not None:
            lengths = {len(ids) for ids in data["input_ids"]}
            if len(lengths) > 1:
                raise BertforgeError(
                    f"return_tensors={return_tensors!r} needs equal lengths, got {min(lengths)}..{max(lengths)} "
                    "tokens: pass padding=True"
                )
            data = {k: _as_tensor(v, return_tensors) for k, v in data.items()}
        elif not batched:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encs)

    def tokenize(self, text: str) -> list[str]:
        return self._encode([text], add_special_tokens=False)[0].tokens

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        item = text if text_pair is None else (text, text_pair)
        return self._encode([item], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    # -- word starts (whole-word masking) -------------------------------------------------------------
    def encode_with_word_starts(self, text: str, words: Sequence[str] | None = None) -> tuple[list[int], list[bool]]:
        """Token ids of ``text`` without special tokens, and for each token whether it starts a word.

        Latin-script words come from the tokenizer's own markers: WordPiece "##" continues a word
        (BERT's create_pretraining_data), byte-BPE starts one with a whitespace byte such as "Ġ"
        (fairseq's is_beginning_of_word), unigram with "▁" or a lone punctuation piece (ALBERT's
        _is_start_piece). Tokens on Chinese characters follow a word segmentation: ``words`` when
        given (gold, e.g. People's Daily; they must spell out ``text``), else jieba."""
        return self.encode_batch_with_word_starts([text], None if words is None else [words])[0]

    def encode_batch_with_word_starts(
        self, texts: Sequence[str], words: Sequence[Sequence[str] | None] | None = None
    ) -> list[tuple[list[int], list[bool]]]:
        """`encode_with_word_starts` over a batch; the encoding runs in parallel in Rust."""
        if words is not None and len(words) != len(texts):
            raise BertforgeError(f"got {len(texts)} texts but {len(words)} word lists")
        encs = self._encode(list(texts), add_special_tokens=False)
        return [
            (enc.ids, self._word_starts(text, enc, None if words is None else words[i]))
            for i, (text, enc) in enumerate(zip(texts, encs))
        ]

    def _word_starts(self, text: str, enc: Any, words: Sequence[str] | None) -> list[bool]:
        specials = self._special_ids
        seg: set[int] | None = None  # character offsets where a Chinese word starts
        starts: list[bool] = []
        prev_char, prev_cjk = -1, False
        for i, (tid, tok, (s, e)) in enumerate(zip(enc.ids, enc.tokens, enc.offsets)):
            cjk = s < e and _CJK.match(text, s) is not None
            if cjk:
                if seg is None:
                    seg = _segment_starts(text, words) if words is not None else self._jieba_starts(text)
                # Byte-BPE may split one character into several tokens: only the first can start.
                start = s in seg and s != prev_char
            elif i == 0 or tid in specials or prev_cjk:
                start = True
            elif self.kind == "bpe":
                start = tok[0] in _BYTE_SPACE_CHARS
            elif self.kind == "unigram":
                start = tok.startswith("▁") or tok in _ALBERT_START_PIECES
            else:
                start = not tok.startswith("##")
            starts.append(start)
            if s < e:
                prev_char, prev_cjk = s, cjk
        return starts

    def _jieba_starts(self, text: str) -> set[int]:
        if self._jieba is None:
            self._jieba = _jieba()
        return {start for _, start, _ in self._jieba.tokenize(text)}

    # -- identity and saving ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the encoding: the canonical tokenizer.json (padding and truncation
        left out), plus jieba's version and dictionary for chinese-word."""
        if self._fingerprint is None:
            # Unigram scores are float32 that print differently after a reload: compare them rounded.
            canonical = json.loads(self._json, parse_float=lambda x: round(float(x), 5))
            h = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode())
            if self.kind == "chinese-word":
                h.update(_jieba_identity().encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the vocabulary files
        of the transformers class (vocab.txt; vocab.json + merges.txt for BPE), each atomically."""
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise BertforgeError(f"{out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        tj = json.loads(self._json)
        model = tj["model"]
        if model["type"] == "WordPiece":
            vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
            write_text(out / "vocab.txt", "".join(f"{t}\n" for t, _ in vocab))
        elif model["type"] == "BPE":
            write_json(out / "vocab.json", model["vocab"], indent=None)
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            write_text(out / "merges.txt", "#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
        write_json(out / "special_tokens_map.json", self._special_tokens_map(), ensure_ascii=True)
        write_text(out / "tokenizer.json", self._json)
        write_json(out / "tokenizer_config.json", self._tokenizer_config())
        return out

    def _special_tokens_map(self) -> dict[str, str]:
        m = {f"{r}_token": self.special_tokens[r] for r in ("cls", "sep", "mask", "pad", "unk")}
        if self.kind in ("bpe", "unigram"):  # RoBERTa/ALBERT also name bos/eos
            m["bos_token"], m["eos_token"] = m["cls_token"], m["sep_token"]
        return m

    def _tokenizer_config(self) -> dict[str, Any]:
        added = self._backend.get_added_tokens_decoder()
        cfg: dict[str, Any] = {
            "tokenizer_class": TOKENIZER_CLASS[self.kind],
            "bertforge_kind": self.kind,
            **{k: v for k, v in self.config.items() if k in _PIPELINE_KEYS},
            **self._special_tokens_map(),
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {
                str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                         "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
                for i, t in sorted(added.items())
            },
        }
        return cfg

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"


# The tokenizer_config.json keys that decide a transformers class's pipeline.
_PIPELINE_KEYS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "keep_accents")


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(dir)``: any tokenizer directory bertforge or transformers wrote."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike) -> Tokenizer:
        return _load(Path(path).expanduser())


# ---- loading ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BertforgeError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise BertforgeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_str(value: Any) -> str | None:
    """tokenizer_config.json stores a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _infer_kind(backend: Backend, cfg: dict[str, Any]) -> str:
    if (cfg.get("tokenizer_class") or "").removesuffix("Fast") == "RoFormerTokenizer":
        return "chinese-word"
    model = type(backend.model).__name__
    if model == "BPE":
        return "bpe"
    if model == "Unigram":
        return "unigram"
    if model != "WordPiece":
        raise BertforgeError(f"tokenizer model {model} is not supported (expected WordPiece, BPE or Unigram)")
    vocab = backend.get_vocab()
    chars = sum(1 for t in vocab if len(t) == 1 and _CJK.match(t))
    # bert-base-chinese: a third of its vocabulary are single characters; English BERT: ~3%.
    return "chinese-char" if chars >= 0.2 * len(vocab) else "wordpiece"


def _load(path: Path) -> Tokenizer:
    if not path.exists():
        hint = " bertforge never downloads from a model hub: pass a local directory" if not path.is_absolute() else ""
        raise BertforgeError(f"{path}: no such tokenizer directory.{hint} (one that transformers' save_pretrained or "
                             "'bertforge tokenizer train' wrote, with tokenizer.json or vocab.txt)")
    if not path.is_dir():
        raise BertforgeError(f"{path}: expected a tokenizer directory, got a file")
    cfg = _read_json(path / "tokenizer_config.json")
    special_map = _read_json(path / "special_tokens_map.json")
    lowercase = bool(cfg.get("do_lower_case", True))
    if (path / "tokenizer.json").exists():
        try:
            backend = Backend.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the Rust error names the JSON problem
            raise BertforgeError(f"{path / 'tokenizer.json'}: cannot load ({exc})") from None
    elif (path / "vocab.txt").exists():
        # A vocab.txt-only BERT directory (e.g. bert-base-chinese): BertTokenizer's pipeline and defaults.
        vocab = _read_vocab_txt(path / "vocab.txt")
        word_level = (cfg.get("tokenizer_class") or "").startswith("RoFormer")  # WoBERT / RoFormer-Chinese
        unk = _token_str(cfg.get("unk_token", special_map.get("unk_token"))) or "[UNK]"
        backend = build_pipeline(
            "chinese-word" if word_level else "wordpiece", WordPiece(vocab, unk_token=unk), lowercase=lowercase,
            strip_accents=cfg.get("strip_accents"), handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
        )
    elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
        try:
            bpe = BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
        except Exception as exc:
            raise BertforgeError(f"{path}: cannot load vocab.json/merges.txt ({exc})") from None
        backend = build_pipeline("bpe", bpe, lowercase=False)
    else:
        raise BertforgeError(
            f"{path}: no tokenizer files (expected tokenizer.json, vocab.txt, or vocab.json + merges.txt)"
        )
    kind = cfg.get("bertforge_kind") or _infer_kind(backend, cfg)
    if kind not in KINDS:
        raise BertforgeError(
            f"{path / 'tokenizer_config.json'}: bertforge_kind={kind!r} is not one of {', '.join(KINDS)}"
        )
    family = SPECIAL_TOKENS[kind]
    specials = {}
    for role in _ROLES:
        value = cfg.get(f"{role}_token", special_map.get(f"{role}_token"))
        specials[role] = _token_str(value) or family[role]
    extra = {k: cfg[k] for k in _PIPELINE_KEYS if k in cfg}
    if kind in ("wordpiece", "chinese-char", "chinese-word"):
        extra.setdefault("do_lower_case", lowercase)
    max_len = cfg.get("model_max_length", 512)
    if not isinstance(max_len, int) or max_len > 1_000_000:  # transformers writes 1e30 for "no limit"
        max_len = 512
    return Tokenizer(backend, kind, specials, model_max_length=max_len, config=extra)


def _from_state(json_str: str, kind: str, special_tokens: dict, model_max_length: int, config: dict) -> Tokenizer:
    return Tokenizer(Backend.from_str(json_str), kind, special_tokens, model_max_length, config)


def _read_vocab_txt(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BertforgeError(f"{path}: cannot read ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        vocab.setdefault(line.rstrip("\r"), i)
    if not vocab:
        raise BertforgeError(f"{path}: empty vocabulary")
    return vocab


# ---- helpers ------------------------------------------------------------------------------------------
def _is_batch(text: Any, is_split_into_words: bool) -> bool:
    if isinstance(text, str):
        return False
    if is_split_into_words:
        return bool(text) and isinstance(text[0], (list, tuple))
    return isinstance(text, (list, tuple))


def _as_tensor(rows: list, return_tensors: str) -> Any:
    if return_tensors == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.long)
    if return_tensors == "np":
        import numpy as np

        return np.asarray(rows, dtype=np.int64)
    raise BertforgeError(f"return_tensors={return_tensors!r}: expected 'pt' or 'np'")


def _segment_starts(text: str, words: Sequence[str]) -> set[int]:
    """Character offsets in ``text`` where each of ``words`` starts; the words, in order and ignoring
    whitespace between them, must spell out the text."""
    starts, pos, n = set(), 0, len(text)
    for word in words:
        word = word.strip()
        if not word:
            continue
        while pos < n and text[pos].isspace():
            pos += 1
        if not text.startswith(word, pos):
            raise BertforgeError(
                f"word {word!r} does not match the text at character {pos} ({text[pos:pos + len(word) + 5]!r}): "
                "words must spell out the text in order"
            )
        starts.add(pos)
        pos += len(word)
    return starts


