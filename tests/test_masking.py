"""Statistical tests of bertforge.data.masking over 10,000 sequences each (fixed seeds, about a second)."""

import numpy as np
import pytest

from bertforge.data.masking import (
    IGNORE, MASKING, KEEP, MASK, RANDOM, Masker, MaskingConfig, albert_ngram_probs, choose_units, layout_units,
    mask_keys, span_targets, truncated_geometric,
)
from bertforge.errors import BertforgeError

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB = 30000  # large, so that a random replacement equal to the original (p = 1/V) is negligible
N, L = 10_000, 128


def pair_batch(n=N, length=L, seed=0, word_start_p=0.6):
    """[CLS] A [SEP] B [SEP] [PAD]... with random lengths, ids and word starts (~1.7 tokens per word)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (n, length))
    word_start = rng.random((n, length)) < word_start_p
    total = rng.integers(length // 2, length + 1, n)  # real length incl. specials
    sep = rng.integers(3, total - 2)  # position of the middle [SEP]
    pos = np.arange(length)[None, :]
    ids[:, 0] = SPECIAL["cls"]
    ids[pos == sep[:, None]] = SPECIAL["sep"]
    ids[pos == total[:, None] - 1] = SPECIAL["sep"]
    ids[pos >= total[:, None]] = SPECIAL["pad"]
    return ids, word_start


@pytest.fixture(scope="module")
def batch():
    return pair_batch()


def run(config, ids, word_start, seed=0, mask_round=0, similar=None):
    keys = mask_keys(seed, mask_round, np.arange(len(ids)))
    return Masker(config, VOCAB, SPECIAL, similar)(ids, word_start, keys), keys


def unit_actions(config, ids, word_start, keys, out):
    """Per chosen unit: MASK / RANDOM / KEEP read back from the output, and whether it was uniform."""
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    units = layout_units(config, maskable, word_start, keys)
    chosen = choose_units(config, units, keys, len(ids))
    tu = units.text_unit
    flat_in, flat_out = ids.ravel()[units.text_pos], out["input_ids"].ravel()[units.text_pos]
    n = units.num_tokens
    n_mask = np.bincount(tu, weights=flat_out == SPECIAL["mask"], minlength=len(n))
    n_same = np.bincount(tu, weights=flat_out == flat_in, minlength=len(n))
    action = np.where(n_mask == n, MASK, np.where(n_same == n, KEEP, RANDOM))
    mixed = (n_mask > 0) & (n_mask < n)
    return units, chosen, action[chosen], mixed[chosen]


@pytest.mark.parametrize("name", ["bert", "wwm", "albert", "spanbert"])
def test_budget_and_80_10_10_per_unit(batch, name):
    ids, word_start = batch
    cfg = MASKING[name]
    out, keys = run(cfg, ids, word_start)
    chosen = out["mlm_labels"] != IGNORE
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    assert abs(chosen.sum() / maskable.sum() - cfg.budget) < 0.005
    _, _, action, mixed = unit_actions(cfg, ids, word_start, keys, out)
    assert not mixed.any(), "a unit got more than one corruption decision"
    shares = np.bincount(action, minlength=3) / len(action)
    assert abs(shares[MASK] - 0.8) < 0.01 and abs(shares[RANDOM] - 0.1) < 0.01 and abs(shares[KEEP] - 0.1) < 0.01
    # Labels hold the original ids exactly where chosen.
    assert (out["mlm_labels"][chosen] == ids[chosen]).all()
    assert (out["input_ids"][~chosen] == ids[~chosen]).all()


def test_budget_and_shares_are_configurable(batch):
    ids, word_start = batch
    cfg = MaskingConfig(unit="word", budget=0.3, mask_prob=0.5, random_prob=0.3)
    out, keys = run(cfg, ids, word_start)
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    assert abs((out["mlm_labels"] != IGNORE).sum() / maskable.sum() - 0.3) < 0.005
    _, _, action, _ = unit_actions(cfg, ids, word_start, keys, out)
    shares = np.bincount(action, minlength=3) / len(action)
    assert np.allclose(shares, [0.5, 0.3, 0.2], atol=0.01)


@pytest.mark.parametrize("name", ["wwm", "albert", "macbert", "spanbert"])
def test_a_whole_word_is_never_partly_masked(batch, name):
    ids, word_start = batch
    cfg = MASKING[name]
    if cfg.replacement == "similar":
        cfg = MaskingConfig(unit=cfg.unit, ngram_probs=cfg.ngram_probs)
    out, _ = run(cfg, ids, word_start)
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    prev = np.zeros_like(maskable)
    prev[:, 1:] = maskable[:, :-1]
    starts = (maskable & (word_start | ~prev)).ravel()
    word = np.cumsum(starts) - 1
    text = maskable.ravel()
    chosen = (out["mlm_labels"] != IGNORE).ravel()
    size = np.bincount(word[text])
    hit = np.bincount(word[text], weights=chosen[text], minlength=len(size))
    assert ((hit == 0) | (hit == size)).all()
    assert (hit == size).sum() > 1000


def test_special_tokens_are_never_chosen_nor_drawn(batch):
    ids, word_start = batch
    special = np.isin(ids, list(SPECIAL.values()))
    for name in ("bert", "wwm", "spanbert"):
        out, _ = run(MaskingConfig(unit=MASKING[name].unit, mask_prob=0.0, random_prob=1.0), ids, word_start)
        chosen = out["mlm_labels"] != IGNORE
        assert not (chosen & special).any()
        assert (out["input_ids"][special] == ids[special]).all()
        assert not np.isin(out["input_ids"][chosen], list(SPECIAL.values())).any()


def test_span_lengths_follow_the_clipped_geometric(batch):
    ids, word_start = batch
    cfg = MASKING["spanbert"]
    probs = np.array(truncated_geometric(0.2, 10))
    # Analytic mean of Geometric(0.2) truncated to 1..10 and renormalised (SpanBERT's masking.py):
    n = np.arange(1, 11)
    analytic = (n * 0.2 * 0.8 ** (n - 1)).sum() / (0.2 * 0.8 ** (n - 1)).sum()
    assert abs(analytic - 3.797) < 0.001  # SpanBERT, sec. 3.1: "a mean span length of 3.8"
    keys = mask_keys(0, 0, np.arange(N))
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    units = layout_units(cfg, maskable, word_start, keys)
    chosen = choose_units(cfg, units, keys, N)
    # Units with room for the longest span: that condition depends on where a unit starts, never on its
    # own draw (conditioning on "was not cut short" would favour short draws).
    whole = units.num_words[chosen & (units.room >= 10)]
    assert len(whole) > 15_000
    assert abs(whole.mean() - analytic) / analytic < 0.02
    observed = np.bincount(whole, minlength=11)[1:] / len(whole)
    assert np.abs(observed - probs).max() < 0.01
    assert units.num_words.max() == 10
    # Every span starts at a word start: a flagged token, or the first text token after a special token.
    assert (word_start[units.row, units.col] | ~maskable[units.row, units.col - 1]).all()


@pytest.mark.parametrize("probs", [(0.4, 0.3, 0.2, 0.1), albert_ngram_probs(3)])
def test_ngram_lengths_follow_their_distribution(batch, probs):
    ids, word_start = batch
    cfg = MaskingConfig(unit="ngram", ngram_probs=probs)
    keys = mask_keys(1, 0, np.arange(N))
    maskable = ~np.isin(ids, list(SPECIAL.values()))
    units = layout_units(cfg, maskable, word_start, keys)
    chosen = choose_units(cfg, units, keys, N)
    whole = units.num_words[chosen & (units.room >= len(probs))]
    observed = np.bincount(whole, minlength=len(probs) + 1)[1:] / len(whole)
    assert np.abs(observed - np.array(probs)).max() < 0.01
    if len(probs) == 3:
        assert np.allclose(probs, np.array([6, 3, 2]) / 11)


def test_same_seed_same_masks_and_rounds_differ(batch):
    ids, word_start = batch[0][:2000], batch[1][:2000]
    cfg = MASKING["wwm"]
    a, _ = run(cfg, ids, word_start, seed=5, mask_round=0)
    b, _ = run(cfg, ids, word_start, seed=5, mask_round=0)
    c, _ = run(cfg, ids, word_start, seed=5, mask_round=1)
    d, _ = run(cfg, ids, word_start, seed=6, mask_round=0)
    for k in a:
        assert (a[k] == b[k]).all()
    same_c = ((a["mlm_labels"] != IGNORE) == (c["mlm_labels"] != IGNORE)).all(axis=1)
    same_d = ((a["mlm_labels"] != IGNORE) == (d["mlm_labels"] != IGNORE)).all(axis=1)
    assert same_c.mean() < 0.01 and same_d.mean() < 0.01


def test_an_example_masks_the_same_alone_or_in_any_batch(batch):
    """Masks depend on (seed, round, example index) only, not on batch company or padding."""
    ids, word_start = batch[0][:64], batch[1][:64]
    cfg = MASKING["spanbert"]
    masker = Masker(cfg, VOCAB, SPECIAL)
    keys = mask_keys(3, 7, np.arange(64))
    together = masker(ids, word_start, keys)
    for i in (0, 17, 63):
        wide_ids = np.concatenate([ids[i:i + 1], np.zeros((1, 40), dtype=ids.dtype)], axis=1)  # more padding
        wide_ws = np.concatenate([word_start[i:i + 1], np.zeros((1, 40), dtype=bool)], axis=1)
        alone = masker(wide_ids, wide_ws, keys[i:i + 1])
        for k in together:
            assert (alone[k][0, :L] == together[k][i]).all()


def test_sbo_targets_describe_merged_spans(batch):
    ids, word_start = batch[0][:3000], batch[1][:3000]
    out, _ = run(MASKING["spanbert"], ids, word_start)
    chosen = out["mlm_labels"] != IGNORE
    rows, cols = np.nonzero(out["span_position"] >= 0)
    left, right = out["span_left"][rows, cols], out["span_right"][rows, cols]
    pos = out["span_position"][rows, cols]
    assert (left < cols).all() and (cols < right).all()
    assert (pos == cols - left - 1).all() and (pos < 10).all()
    assert not chosen[rows, left].any() and not chosen[rows, right].any()  # boundaries are outside the span
    # Inside a run every chosen token within the first 10 has a target.
    assert (out["span_position"][chosen] >= 0).mean() > 0.85
    assert (out["span_position"][~chosen] == -1).all()
    small = span_targets(np.array([[False, True, True, True, False]]), max_targets=2)
    assert small["span_position"].tolist() == [[-1, 0, 1, -1, -1]]
    assert small["span_left"].tolist() == [[-1, 0, 0, -1, -1]] and small["span_right"].tolist() == [[-1, 4, 4, -1, -1]]


def test_config_errors_are_one_line():
    with pytest.raises(BertforgeError, match="budget"):
        MaskingConfig(budget=0)
    with pytest.raises(BertforgeError, match="sum <= 1"):
        MaskingConfig(mask_prob=0.9, random_prob=0.2)
    with pytest.raises(BertforgeError, match="ngram_probs"):
        MaskingConfig(unit="ngram", ngram_probs=(0.5, 0.2))
    with pytest.raises(BertforgeError, match="similar-word source"):
        Masker(MASKING["macbert"], VOCAB, SPECIAL)
    with pytest.raises(BertforgeError, match="whole words"):
        MaskingConfig(replacement="similar")


def test_every_sequence_with_text_gets_a_prediction():
    ids, word_start = pair_batch(n=2000, length=12, seed=2)  # 3-9 text tokens: often no unit drawn
    out, _ = run(MASKING["wwm"], ids, word_start)
    has_text = (~np.isin(ids, list(SPECIAL.values()))).any(axis=1)
    assert ((out["mlm_labels"] != IGNORE).any(axis=1) == has_text).all()
