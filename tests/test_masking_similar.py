"""MacBERT's MLM-as-correction: similar-word replacement from a synonyms file or word2vec; Chinese WWM."""

import numpy as np
import pytest

from bertforge.data.masking import IGNORE, MASKING, Masker, MaskingConfig, choose_units, layout_units, mask_keys
from bertforge.data.masking import _expand
from bertforge.data.similar import SimilarWords, word_keys
from bertforge.errors import BertforgeError

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB = 5000


def lexicon(num_words=400, seed=0):
    """Word "wK" -> 1..3 token ids (distinct per word), and a tokenizer callable over those words."""
    rng = np.random.default_rng(seed)
    words = {}
    nxt = 5
    for k in range(num_words):
        n = int(rng.integers(1, 4))
        words[f"w{k}"] = tuple(range(nxt, nxt + n))
        nxt += n
    return words, (lambda text: list(words[text]))


def sentences_of_words(words, n=10_000, length=128, seed=0):
    """[CLS] random words... [SEP] [PAD]..., with word_start flags at each word's first token."""
    rng = np.random.default_rng(seed)
    lex = list(words.values())
    lex_len = np.array([len(w) for w in lex])
    lex_start = np.cumsum(lex_len) - lex_len
    lex_tokens = np.array([t for w in lex for t in w])
    pick = rng.integers(len(lex), size=(n, length))
    keep = np.cumsum(lex_len[pick], axis=1) <= length - 2  # room for [CLS] and [SEP]
    kept = pick[keep]  # row-major
    wlen = lex_len[kept]
    tok = lex_tokens[_expand(lex_start[kept], wlen)]
    first = np.zeros(len(tok), dtype=bool)
    first[np.cumsum(wlen) - wlen] = True
    count = np.bincount(np.repeat(np.repeat(np.arange(n), keep.sum(axis=1)), wlen), minlength=n)
    row = np.repeat(np.arange(n), count)
    col = 1 + np.arange(len(tok)) - np.repeat(np.cumsum(count) - count, count)
    ids = np.zeros((n, length), dtype=np.int64)
    starts = np.zeros((n, length), dtype=bool)
    ids[:, 0] = SPECIAL["cls"]
    ids[row, col], starts[row, col] = tok, first
    ids[np.arange(n), count + 1] = SPECIAL["sep"]
    return ids, starts


@pytest.fixture(scope="module")
def synonyms(tmp_path_factory):
    words, tokenize = lexicon()
    by_len = {}
    for name, toks in words.items():
        by_len.setdefault(len(toks), []).append(name)
    lines, expected = [], {}
    for k, (name, toks) in enumerate(words.items()):
        if k % 2:  # half of the words have synonyms
            continue
        same = [w for w in by_len[len(toks)] if w != name][:3]
        other = next(w for w in words if len(words[w]) != len(toks))  # a different length: must be dropped
        lines.append(" ".join([name, *same, other]))
        expected[toks] = {words[w] for w in same}
    path = tmp_path_factory.mktemp("syn") / "synonyms.txt"
    path.write_text("# word sim1 sim2 ...\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return words, tokenize, path, expected


def test_synonyms_file_keeps_same_length_candidates(synonyms):
    words, tokenize, path, expected = synonyms
    table = SimilarWords.from_synonyms_file(path, tokenize)
    assert len(table) == len(expected)
    for toks, cands in list(expected.items())[:20]:
        out = np.zeros(len(toks), dtype=np.int64)
        got = set()
        for u in np.linspace(0, 0.999, 12):
            found = table.replace(out, np.array(toks), np.array([0]), np.array([len(toks)]), np.array([u]))
            assert found.all()
            got.add(tuple(out.tolist()))
        assert got == cands  # every candidate reachable, none of another length


def test_macbert_replaces_chosen_words_by_their_similar_words(synonyms, tmp_path):
    words, tokenize, path, expected = synonyms
    table = SimilarWords.from_synonyms_file(path, tokenize)
    table.save(tmp_path / "sim.npz")
    table = SimilarWords.load(tmp_path / "sim.npz")
    ids, starts = sentences_of_words(words)
    cfg = MASKING["macbert"]
    keys = mask_keys(0, 0, np.arange(len(ids)))
    out = Masker(cfg, VOCAB, SPECIAL, table)(ids, starts, keys)
    assert not (out["input_ids"] == SPECIAL["mask"]).any()  # correction task: no [MASK] at all
    chosen = out["mlm_labels"] != IGNORE
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.005
    # The chosen words that have synonyms are replaced by one of them in the configured share (80%).
    units = layout_units(MaskingConfig(unit="word"), maskable, starts, keys)
    pos, n = units.word_pos, units.word_len
    picked = chosen.ravel()[pos]
    before = word_keys(ids.ravel(), pos[picked], n[picked])
    after = word_keys(out["input_ids"].ravel(), pos[picked], n[picked])
    key = lambda w: word_keys(np.array(w), np.array([0]), np.array([len(w)]))[0]  # noqa: E731
    orig = np.array([key(o) for o, cs in expected.items() for _ in cs], dtype=np.uint64)
    cand = np.array([key(c) for cs in expected.values() for c in cs], dtype=np.uint64)
    pair_key = lambda a, b: a * np.uint64(1000003) ^ b  # noqa: E731  (arrays: wrapping arithmetic)
    has = np.isin(before, orig)
    became_similar = np.isin(pair_key(before, after), pair_key(orig, cand))
    assert has.sum() > 10_000
    assert abs(became_similar[has].mean() - cfg.mask_prob) < 0.01


def test_words_without_similar_words_fall_back_to_random_tokens(synonyms):
    words, tokenize, path, _ = synonyms
    ids, starts = sentences_of_words(words, n=3000)
    empty = SimilarWords.from_pairs({})
    cfg = MaskingConfig(unit="word", replacement="similar")
    keys = mask_keys(0, 0, np.arange(len(ids)))
    out = Masker(cfg, VOCAB, SPECIAL, empty)(ids, starts, keys)
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    units = layout_units(cfg, maskable, starts, keys)
    chosen = choose_units(cfg, units, keys, len(ids))
    changed = np.bincount(units.text_unit, weights=out["input_ids"].ravel()[units.text_pos]
                          != ids.ravel()[units.text_pos], minlength=len(chosen))
    share = (changed[chosen] > 0).mean()  # 80% "similar" -> random, 10% random, 10% kept
    assert abs(share - 0.9) < 0.02


def test_bad_synonyms_file_is_one_clear_error(tmp_path):
    with pytest.raises(BertforgeError, match="cannot read"):
        SimilarWords.from_synonyms_file(tmp_path / "missing.txt", lambda w: [5])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe word\n")
    with pytest.raises(BertforgeError, match="not UTF-8"):
        SimilarWords.from_synonyms_file(bad, lambda w: [5])


def test_word_keys_depend_on_ids_and_length():
    ids = np.array([7, 8, 7, 8, 9, 8, 7])
    keys = word_keys(ids, np.array([0, 2, 2, 5]), np.array([2, 2, 3, 2]))
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 3


class _Corpus:
    """Two interchangeable 2-token words (10 11 / 12 13) in identical contexts, plus filler words."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        toks, ws, sents = [], [], [0]
        for _ in range(3000):
            middle = [(10, 11), (12, 13)][rng.integers(2)]
            for word in [(20,), (21,), middle, (22,), (23,)] + [(int(rng.integers(30, 60)),) for _ in range(3)]:
                toks += word
                ws += [1] + [0] * (len(word) - 1)
            sents.append(len(toks))
        self.tokens, self.word_start = np.array(toks, dtype=np.uint16), np.array(ws, dtype=np.uint8)
        self.sent_offsets = np.array(sents, dtype=np.int64)
        self.doc_offsets = np.array([0, 1500, 3000], dtype=np.int64)

    def documents(self, split=None):
        return np.arange(2)


@pytest.mark.slow
def test_word2vec_neighbours_have_the_same_length():
    table = SimilarWords.from_word2vec(_Corpus(), split=None, top_k=3, min_similarity=0.0, vector_size=16,
                                       min_count=5, epochs=5, seed=1)
    out = np.zeros(2, dtype=np.int64)
    found = table.replace(out, np.array([10, 11]), np.array([0]), np.array([2]), np.array([0.0]))
    assert found.all() and out.tolist() == [12, 13]  # the only other 2-token word
    one = np.zeros(1, dtype=np.int64)
    assert table.replace(one, np.array([20]), np.array([0]), np.array([1]), np.array([0.5])).all()
    assert one[0] != 20 and one[0] not in (10, 11, 12, 13)



@pytest.fixture
def small_store(tmp_path):
    from bertforge.data.corpus import build_corpus
    from bertforge.data.tokenizer_train import train_tokenizer

    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on under mat rug big small red blue".split()
    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(400)) + "\n")
    train_tokenizer("wordpiece", [text], 100, out=tmp_path / "tok", progress=False)
    return build_corpus(tmp_path / "c.store", tmp_path / "tok", [text], workers=0, progress=False)


W2V = dict(vector_size=8, min_count=2, epochs=2, min_similarity=0.0)


def test_word2vec_table_is_cached_in_the_store_and_shows_progress(small_store, monkeypatch, capsys):
    from bertforge.data.corpus import resplit

    first = SimilarWords.from_word2vec(small_store, **W2V)
    err = capsys.readouterr().err
    assert "word2vec (similar words): 100%" in err  # the bar counts every pass gensim makes over the store
    cached = list(small_store.path.glob("similar-word2vec-*.npz"))
    assert len(cached) == 1 and len(first) > 0

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    with monkeypatch.context() as m:  # a resume: the same store and settings load the table
        m.setattr(SimilarWords, "_word2vec", classmethod(no_training))
        again = SimilarWords.from_word2vec(small_store, **W2V)
    for name in ("keys", "length", "ptr", "cand_start", "tokens"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    # Other settings, or the same store with another split, are other tables.
    SimilarWords.from_word2vec(small_store, **dict(W2V, epochs=1), progress=False)
    SimilarWords.from_word2vec(resplit(small_store.path, 0.2, seed=3), **W2V, progress=False)
    assert len(list(small_store.path.glob("similar-word2vec-*.npz"))) == 3
    # A damaged cache (not an .npz, or one cut short) is computed again and replaced.
    whole = cached[0].read_bytes()
    for damaged in (b"not an npz", whole[:len(whole) // 2]):
        cached[0].write_bytes(damaged)
        repaired = SimilarWords.from_word2vec(small_store, **W2V, progress=False)
        assert np.array_equal(repaired.tokens, first.tokens)
        assert np.array_equal(SimilarWords.load(cached[0]).tokens, first.tokens)


def test_word2vec_on_a_store_that_cannot_be_written_still_works(small_store, monkeypatch, capsys):
    def read_only(self, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(SimilarWords, "save", read_only)
    table = SimilarWords.from_word2vec(small_store, **W2V, progress=False)
    assert len(table) > 0 and not list(small_store.path.glob("similar-word2vec-*"))
    assert capsys.readouterr().err == ""

def test_chinese_whole_words_come_from_the_segmenter():
    """Character tokens with jieba's word starts: whole-word masking takes whole jieba words."""
    import jieba

    jieba.setLogLevel(60)
    text = "自然语言处理是人工智能的一个重要方向我们使用全词掩码训练中文预训练模型"
    words = jieba.lcut(text)
    chars = {c: i + 5 for i, c in enumerate(dict.fromkeys(text))}
    ids_row = [SPECIAL["cls"]] + [chars[c] for c in text] + [SPECIAL["sep"]]
    flags = [False] + [k == 0 for w in words for k in range(len(w))] + [False]
    n = 500
    ids, starts = np.tile(ids_row, (n, 1)), np.tile(flags, (n, 1))
    out = Masker(MASKING["wwm"], VOCAB, SPECIAL)(ids, starts, mask_keys(0, 0, np.arange(n)))
    chosen = out["mlm_labels"] != IGNORE
    bounds = np.cumsum([0] + [len(w) for w in words]) + 1
    multi = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        hit = chosen[:, lo:hi].sum(axis=1)
        assert ((hit == 0) | (hit == hi - lo)).all()
        multi += (hi - lo > 1) and (hit == hi - lo).any()
    assert multi > 3
    assert (out["input_ids"][chosen] == SPECIAL["mask"]).mean() == pytest.approx(0.8, abs=0.03)
