"""`tokenizer train` reads its input as `corpus build` does, and refuses vocabularies too small for the kind.

Input: compression by content, binary/empty files skipped with a warning, a truncated archive kept up to
the damage, no text at all a one-line error. Vocabulary: each kind's minimum refused with the number, a
small one warned about, and a vocabulary short of --vocab-size only when the text offers no more.
"""

from __future__ import annotations

import gzip
import lzma
import random

import pytest

from bertforge import AutoTokenizer
from bertforge.cli import main
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.errors import BertforgeError
from test_tokenizers_minilm import peoples_daily, rotten_tomatoes

PNG = b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(4000)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    en = "\n".join(rotten_tomatoes(300)) + "\n"
    zh = "\n".join("".join(words) for words in peoples_daily(200)) + "\n"
    (d / "en.txt").write_text(en, encoding="utf-8")
    (d / "zh.txt").write_text(zh, encoding="utf-8")
    (d / "zh.txt.xz").write_bytes(lzma.compress(zh.encode()))
    (d / "zh_gzip_named.txt").write_bytes(gzip.compress(zh.encode()))
    (d / "zh_gbk.txt").write_bytes(zh.encode("gbk", errors="replace"))
    whole = gzip.compress(en.encode() * 20)
    (d / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    (d / "img.png").write_bytes(PNG)
    (d / "blank.txt").write_text("  \n\t\n\n")
    return d


def _train_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["tokenizer", "train", "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- input ------------------------------------------------------------------------------------------------
def _tokens(tok) -> set[str]:
    # Token sets, not fingerprints: the trainers number "##" forms in a varying order from run to run.
    return set(tok.convert_ids_to_tokens(list(range(tok.vocab_size))))


def test_compressed_input_is_recognised_by_content(texts):
    chars = set((texts / "zh.txt").read_text()) - {"\n"}
    for name in ("zh.txt", "zh.txt.xz", "zh_gzip_named.txt"):
        tok = train_tokenizer("chinese-char", [texts / name], 3000, progress=False)
        assert {t for t in _tokens(tok) if len(t) == 1} == chars, name  # the text, not its compressed bytes


def test_truncated_archive_keeps_its_text_with_a_warning(texts, tmp_path, capsys):
    code, out, err = _train_cli(capsys, "--kind", "wordpiece", "--vocab-size", 300, "--out", tmp_path / "t",
                                texts / "cut.txt.gz")
    assert code == 0 and "Traceback" not in err
    assert err.count("cut.txt.gz is truncated or corrupt") == 1  # once, though training reads the text twice
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    assert tok.vocab_size == 300 and tok.unk_token_id not in tok("the film is funny")["input_ids"]


@pytest.mark.parametrize("name, why", [("img.png", "PNG image"), ("zh_gbk.txt", "are not UTF-8"),
                                       ("blank.txt", "has no text")])
@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_input_without_text_is_a_one_line_error(texts, tmp_path, capsys, kind, name, why):
    code, out, err = _train_cli(capsys, "--kind", kind, "--vocab-size", 300, "--out", tmp_path / "t", texts / name)
    warning, error = err.strip().splitlines()
    assert code == 2 and name in warning and why in warning
    assert error == f"bertforge: error: no text found in {texts / name} (see the warnings above)"
    assert not (tmp_path / "t").exists()


def test_binary_file_among_text_files_is_skipped(texts, tmp_path, capsys):
    code, out, err = _train_cli(capsys, "--kind", "wordpiece", "--vocab-size", 300, "--out", tmp_path / "t",
                                texts / "en.txt", texts / "img.png")
    assert code == 0 and err.count("skipping") == 1 and "img.png: looks like PNG image" in err
    english = set((texts / "en.txt").read_text())
    assert {c for t in _tokens(AutoTokenizer.from_pretrained(tmp_path / "t")) if "[" not in t
            for c in t.removeprefix("##")} <= english  # nothing learnt from the image's bytes


def test_missing_input_names_the_file(texts, tmp_path):
    with pytest.raises(BertforgeError, match="input file .*missing.txt does not exist"):
        train_tokenizer("wordpiece", [texts / "en.txt", tmp_path / "missing.txt"], 300, progress=False)


# ---- vocabulary size --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["wordpiece", "chinese-char", pytest.param("chinese-word", marks=pytest.mark.slow)])
def test_vocab_without_room_for_a_character_is_refused_and_a_small_one_warned(texts, tmp_path, capsys, kind):
    """Below the special tokens + one character: refused with the minimum (the trainer gave fewer tokens than
    asked). Above it but short of the characters of 90% of the text: trained to the exact size, with a
    warning that the rest is [UNK] (tiny test models want such vocabularies)."""
    files = [texts / "en.txt", texts / "zh.txt"]
    code, out, err = _train_cli(capsys, "--kind", kind, "--vocab-size", 6, "--out", tmp_path / "t", *files)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "t").exists()
    minimum = int(err.split("at least ")[1].split()[0])  # 7: the most frequent character, 'e', needs '##e' too
    assert f"--vocab-size 6 is too small for {kind}: at least {minimum} (5 special tokens + the most frequent" in err
    with pytest.raises(BertforgeError, match=f"at least {minimum} "):
        train_tokenizer(kind, files, minimum - 1, progress=False)
    assert train_tokenizer(kind, files, minimum, progress=False).vocab_size == minimum
    capsys.readouterr()
    code, out, err = _train_cli(capsys, "--kind", kind, "--vocab-size", 40, "--out", tmp_path / "u", *files)
    assert code == 0 and AutoTokenizer.from_pretrained(tmp_path / "u").vocab_size == 40
    assert "--vocab-size 40 holds the" in err and "less than 90% of the text" in err


def test_bpe_minimum_is_the_bytes_and_specials(texts):
    with pytest.raises(BertforgeError, match=r"too small for bpe: at least 261 \(5 special tokens \+ 256 bytes\)"):
        train_tokenizer("bpe", [texts / "en.txt"], 260, progress=False)


def test_wordpiece_fills_the_vocabulary_exactly_when_the_text_allows(texts):
    """The alphabet is chosen to fit: every size from the minimum up is met exactly (the old shrinking
    loop fell short, or refused sizes it could have met)."""
    files = [texts / "en.txt", texts / "zh.txt"]
    with pytest.raises(BertforgeError, match="at least") as refused:
        train_tokenizer("wordpiece", files, 6, progress=False)
    minimum = int(str(refused.value).split("at least ")[1].split()[0])
    for size in (minimum, minimum + 1, minimum + 37, minimum + 301, 1500):
        tok = train_tokenizer("wordpiece", files, size, progress=False)
        assert tok.vocab_size == size


def test_short_vocabulary_message_says_why(texts, tmp_path, capsys):
    """Only a text with nothing more to offer gives fewer tokens than asked, and the message says so."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a good film . a bad film .\n" * 10)
    code, out, _ = _train_cli(capsys, "--kind", "wordpiece", "--vocab-size", 500, "--out", tmp_path / "t", tiny)
    got = AutoTokenizer.from_pretrained(tmp_path / "t").vocab_size
    assert code == 0 and got < 500
    assert f": {got} tokens (the text has no more pieces seen at least --min-frequency 2 times)" in out
    code, out, _ = _train_cli(capsys, "--kind", "wordpiece", "--vocab-size", 300, "--out", tmp_path / "u",
                              texts / "en.txt")
    assert code == 0 and ": 300 tokens, fingerprint" in out
