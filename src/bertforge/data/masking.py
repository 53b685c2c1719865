"""Masked-LM corruption for the BERT family: pure, seeded, vectorized numpy functions.

Masking = which *units* are chosen x how each chosen unit is *corrupted* (docs/masking.md):

- token: one token (BERT, RoBERTa);
- word: one whole word, from the store's word_start flags; Chinese words are the segmenter's (WWM, NEZHA);
- ngram: 1..N consecutive whole words, p(n) = ngram_probs (MacBERT 40/30/20/10, ALBERT 1/n for n <= 3);
- span: 1..10 whole words, n ~ Geometric(0.2) truncated at 10 and renormalised (SpanBERT).

How units are laid out. Each maximal run of maskable tokens (text between special tokens) is tiled from
its first word into consecutive units whose lengths (in words) are drawn iid from the unit's length
distribution; the last unit of a run is cut at the run's end (SpanBERT and ALBERT cut spans at the
sequence end too). Each example then gets a uniformly random subset of m of its U units, m = budget * U
rounded stochastically (E[m] = budget * U exactly; at least 1, BERT's ``max(1, ...)``). Every unit is
equally likely to be chosen whatever its size and units partition the maskable tokens, so the expected
masked share of tokens is the budget and chosen units keep their drawn length distribution; the papers'
"sample until 15% of tokens" loops instead favour whichever unit still fits near the budget's edge.
Special tokens and padding are never chosen.

Corruption is decided once per unit: ``mask_prob`` [MASK], ``random_prob`` random tokens (never special
tokens), the rest unchanged. MacBERT's MLM-as-correction (``replacement="similar"``) puts a similar word
where [MASK] would go: each word of the unit individually (Cui et al., 2020, sec. 3.2) becomes one of its
similar words *of the same token length*, so the sequence keeps its length and alignment, the way
MacBERT swaps a Chinese word for a synonym of as many characters; a word with no such similar word gets
random tokens, as in the paper.

Randomness. Every draw is a pure function of (seed, round, example index, position, purpose): a counter-
based generator (SplitMix64, Steele et al., 2014: output i of seed s is mix(s + i * golden)) evaluated on
whole arrays. numpy's Generators are sequential streams, and building one per example costs ~25 us, more
than masking a 128-token sequence; here one vectorized expression serves a whole batch, and any
example's masks can be regenerated alone, independently of its batch, its padding and of the other
examples (exact resume, dynamic masking at no storage cost). ``round`` is the epoch for dynamic
masking (RoBERTa) and the duplicate index for static masking (BERT's dupe_factor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping

import numpy as np

from ..errors import BertforgeError

if TYPE_CHECKING:
    from .similar import SimilarWords

IGNORE = -100  # mlm_labels value at positions that are not predicted
MASK, RANDOM, KEEP = 0, 1, 2  # corruption actions

# Purposes of the random streams: each gets independent numbers at the same (example, position).
_SELECT, _ACTION, _TOKEN, _LENGTH, _SIMILAR, _COUNT = 1, 2, 3, 4, 5, 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrapping arithmetic is the point)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def mask_keys(seed: int, mask_round: int | np.ndarray, example_index: np.ndarray | list[int]) -> np.ndarray:
    """uint64 [B]: one key per example from (seed, round, example index). Round = epoch (dynamic masking)
    or duplicate number (static masking); the same triple always gives the same masks."""
    idx = np.asarray(example_index, dtype=np.uint64)
    rnd = np.broadcast_to(np.asarray(mask_round, dtype=np.uint64), idx.shape)
    base = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
    return _mix(_mix(base + rnd * _GOLDEN) + idx * _GOLDEN)


def uniform_at(keys: np.ndarray, rows: np.ndarray, cols: np.ndarray, purpose: int) -> np.ndarray:
    """float64 uniforms in [0, 1) at (example rows[i], position cols[i]) for one purpose."""
    state = _mix(keys[rows] ^ np.uint64(purpose * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))
    bits = _mix(state + (cols.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (bits >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def truncated_geometric(p: float, max_len: int) -> tuple[float, ...]:
    """SpanBERT's span lengths: p(1-p)^(n-1) for n = 1..max_len, renormalised (their masking.py does the
    same: lengths above the clip are never drawn, not piled onto max_len)."""
    w = np.array([p * (1 - p) ** (n - 1) for n in range(1, max_len + 1)])
    return tuple((w / w.sum()).tolist())


def albert_ngram_probs(max_n: int = 3) -> tuple[float, ...]:
    """ALBERT's n-gram lengths: p(n) proportional to 1/n for n = 1..max_n (Lan et al., 2020, sec. 4.1)."""
    w = 1.0 / np.arange(1, max_n + 1)
    return tuple((w / w.sum()).tolist())


@dataclass(frozen=True)
class MaskingConfig:
    # What one masking decision covers: a token, a whole word, an n-gram of words, a geometric span of words.
    unit: Literal["token", "word", "ngram", "span"] = "token"
    # Expected share of maskable tokens chosen for prediction (15% in BERT and all its descendants).
    budget: float = 0.15
    # Share of chosen units put to [MASK] (or a similar word, see replacement).
    mask_prob: float = 0.8
    # Share of chosen units put to random non-special tokens; the rest (0.1) stays unchanged.
    random_prob: float = 0.1
    # "similar": MacBERT's correction task, a similar word of the same token length instead of [MASK].
    replacement: Literal["mask", "similar"] = "mask"
    # unit="ngram": p(n) for n = 1, 2, ... words (MacBERT 40/30/20/10; ALBERT: albert_ngram_probs(3)).
    ngram_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    # unit="span": geometric parameter and clip (in words) of SpanBERT's span lengths.
    span_p: float = 0.2
    span_max_words: int = 10
    # unit="span": tokens of a masked run past this many get no SBO target (span_* = -1); SpanBERT's
    # --max-pair-targets was 15; 10 matches the default table of heads.SpanBoundaryHead.
    sbo_max_targets: int = 10

    def __post_init__(self) -> None:
        if self.unit not in ("token", "word", "ngram", "span"):
            raise BertforgeError(f"masking unit={self.unit!r} is not one of 'token', 'word', 'ngram', 'span'")
        if self.replacement not in ("mask", "similar"):
            raise BertforgeError(f"masking replacement={self.replacement!r} is not one of 'mask', 'similar'")
        if not 0.0 < self.budget <= 1.0:
            raise BertforgeError(f"masking budget={self.budget} must be in (0, 1]")
        if min(self.mask_prob, self.random_prob) < 0 or self.mask_prob + self.random_prob > 1 + 1e-9:
            raise BertforgeError(
                f"masking mask_prob={self.mask_prob}, random_prob={self.random_prob}: each must be >= 0 and "
                "their sum <= 1 (the rest is kept unchanged)"
            )
        if self.unit == "ngram" and (not self.ngram_probs or min(self.ngram_probs) < 0
                                     or abs(sum(self.ngram_probs) - 1) > 1e-6):
            raise BertforgeError(f"masking ngram_probs={self.ngram_probs} must be >= 0 and sum to 1")
        if self.unit == "span" and not (0 < self.span_p <= 1 and self.span_max_words >= 1):
            raise BertforgeError(
                f"masking span_p={self.span_p}, span_max_words={self.span_max_words}: need 0 < p <= 1, max >= 1"
            )
        if self.replacement == "similar" and self.unit == "token":
            raise BertforgeError("masking replacement='similar' replaces whole words: use unit 'word', 'ngram' or 'span'")

    def length_probs(self) -> tuple[float, ...]:
        """p(n words) of one unit, n = 1, 2, ..."""
        if self.unit == "ngram":
            return self.ngram_probs
        if self.unit == "span":
            return truncated_geometric(self.span_p, self.span_max_words)
        return (1.0,)


# The papers' settings by name (recipes pick one of these).
MASKING: dict[str, MaskingConfig] = {
    "bert": MaskingConfig(),
    "wwm": MaskingConfig(unit="word"),
    "albert": MaskingConfig(unit="ngram", ngram_probs=albert_ngram_probs(3)),
    "macbert": MaskingConfig(unit="ngram", replacement="similar"),
    "spanbert": MaskingConfig(unit="span"),
}


@dataclass
class Units:
    """The units of a batch in row-major order: U units, W words, T text tokens (flat positions in [B*L])."""

    row: np.ndarray  # [U] int64 example (row) of each unit
    col: np.ndarray  # [U] int64 position of its first token
    num_tokens: np.ndarray  # [U] int64
    num_words: np.ndarray  # [U] int64
    room: np.ndarray  # [U] int64 words from the unit's first word to the end of its run of text
    text_pos: np.ndarray  # [T] int64 flat position of each text token (not special, not padding)
    text_unit: np.ndarray  # [T] int64 unit of each text token
    word_pos: np.ndarray  # [W] int64 flat position of each word's first token
    word_len: np.ndarray  # [W] int64 tokens per word
    word_unit: np.ndarray  # [W] int64 unit of each word


def layout_units(config: MaskingConfig, maskable: np.ndarray, word_start: np.ndarray, keys: np.ndarray) -> Units:
    """Tile every run of maskable tokens into units (module docstring). maskable, word_start: [B, L] bool."""
    length = maskable.shape[1]
    flat_m = maskable.ravel()
    text_pos = np.flatnonzero(flat_m)  # [T]
    t = len(text_pos)
    # A run of text opens at column 0 or after a special token; a word opens at a flagged token or a run.
    opens_run = (text_pos % length == 0) | ~flat_m[text_pos - 1]  # [T] (index -1 only where column is 0)
    if config.unit == "token":
        opens_word = np.ones(t, dtype=bool)
    else:
        opens_word = opens_run | np.asarray(word_start, dtype=bool).ravel()[text_pos]
    word_first = np.flatnonzero(opens_word)  # [W] text index of each word's first token
    w = len(word_first)
    word_pos = text_pos[word_first]
    word_len = np.diff(np.append(word_first, t))
    token_word = np.cumsum(opens_word) - 1  # [T]
    run_first = opens_run[word_first]  # [W] word opens a run of text
    first_words = np.flatnonzero(run_first)  # [R]
    word_run = np.cumsum(run_first) - 1  # [W]
    run_words = np.diff(np.append(first_words, w))[word_run]  # [W] words in the word's run
    probs = config.length_probs()
    if len(probs) == 1:
        head = np.arange(w)
        n_words = np.ones(w, dtype=np.int64)
        room = run_words - (head - first_words[word_run])
    else:
        # Renewal tiling, restarted at each run: the k-th unit of a run takes its length from the draw
        # stored at the run's k-th word ("slot"); an exclusive cumsum of lengths inside each run gives the
        # unit heads. Slots past the run's end are unused.
        u = uniform_at(keys, word_pos // length, word_pos % length, _LENGTH)
        draw = np.searchsorted(np.cumsum(probs)[:-1], u, side="right") + 1  # [W] in 1..len(probs)
        before = np.cumsum(draw) - draw
        offset = before - before[first_words][word_run]  # words before this slot's unit, inside the run
        used = offset < run_words
        head = first_words[word_run[used]] + offset[used]
        room = run_words[used] - offset[used]
        n_words = np.minimum(draw[used], room)
    if len(head) == w:
        word_unit = np.arange(w)
    else:
        is_head = np.zeros(w, dtype=bool)
        is_head[head] = True
        word_unit = np.cumsum(is_head) - 1
    pos = word_pos[head]
    return Units(
        row=pos // length, col=pos % length, num_tokens=np.add.reduceat(word_len, head) if w else word_len,
        num_words=n_words, room=room, text_pos=text_pos, text_unit=word_unit[token_word], word_pos=word_pos,
        word_len=word_len, word_unit=word_unit,
    )


def choose_units(config: MaskingConfig, units: Units, keys: np.ndarray, batch_size: int) -> np.ndarray:
    """[U] bool: in each example, a uniformly random subset of m of its U units, m = budget * U rounded
    stochastically (so E[m] = budget * U exactly) and at least 1 when U > 0 (BERT's max(1, ...))."""
    per_row = np.bincount(units.row, minlength=batch_size)  # U of each example
    rows = np.arange(batch_size)
    jitter = uniform_at(keys, rows, np.zeros(batch_size, dtype=np.int64), _COUNT)
    m = np.floor(config.budget * per_row + jitter).astype(np.int64)
    m = np.where(per_row > 0, np.maximum(m, 1), 0)
    # The m smallest of the units' uniforms win: sort each example's uniforms in a padded [B, max U] grid
    # (units are already grouped by example) and compare with the m-th smallest.
    u = uniform_at(keys, units.row, units.col, _SELECT)
    grid = np.full((batch_size, int(per_row.max(initial=0))), 2.0)
    grid[units.row, np.arange(len(u)) - (np.cumsum(per_row) - per_row)[units.row]] = u
    grid.sort(axis=1)
    threshold = np.where(m > 0, grid[rows, np.maximum(m - 1, 0)] if grid.shape[1] else -1.0, -1.0)
    return u <= threshold[units.row]


class Masker:
    """Applies one MaskingConfig to padded batches. Holds only constants; calls are pure.

    ``special_ids``: the store manifest's {"cls", "sep", "mask", "pad", "unk", ...} -> id. Those ids are
    never chosen and never drawn as random replacements.
    """

    def __init__(self, config: MaskingConfig, vocab_size: int, special_ids: Mapping[str, int],
                 similar: "SimilarWords | None" = None):
        if "mask" not in special_ids:
            raise BertforgeError(f"special_ids {dict(special_ids)} has no 'mask' id")
        if config.replacement == "similar" and similar is None:
            raise BertforgeError("masking replacement='similar' needs a similar-word source (bertforge.data.similar)")
        self.config = config
        self.similar = similar
        self.mask_id = int(special_ids["mask"])
        specials = np.array(sorted(set(int(i) for i in special_ids.values())), dtype=np.int64)
        self.special = np.zeros(max(vocab_size, int(specials.max()) + 1), dtype=bool)
        self.special[specials] = True
        self.normal_ids = np.flatnonzero(~self.special[:vocab_size])  # random replacements come from here

    @classmethod
    def from_manifest(cls, config: MaskingConfig, manifest: Mapping, similar: "SimilarWords | None" = None) -> "Masker":
        return cls(config, int(manifest["vocab_size"]), manifest["special_ids"], similar)

    def maskable(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, L] bool: text tokens (not special, not padding)."""
        return ~self.special[input_ids]

    def __call__(self, input_ids: np.ndarray, word_start: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        """input_ids [B, L] int64 (specials and padding in place), word_start [B, L] bool, keys [B] uint64
        (``mask_keys``). Returns int64 [B, L] arrays: input_ids (corrupted), mlm_labels (original id where
        chosen, -100 elsewhere) and, for unit="span", span_left / span_right / span_position."""
        cfg = self.config
        ids = np.asarray(input_ids, dtype=np.int64)
        b, length = ids.shape
        units = layout_units(cfg, self.maskable(ids), word_start, keys)
        chosen = np.flatnonzero(choose_units(cfg, units, keys, b))
        u = uniform_at(keys, units.row[chosen], units.col[chosen], _ACTION)
        action = np.full(len(units.row), -1)
        action[chosen] = np.where(u < cfg.mask_prob, MASK, np.where(u < cfg.mask_prob + cfg.random_prob, RANDOM, KEEP))
        token_action = action[units.text_unit]  # [T]
        picked = token_action >= 0
        pos, pos_action = units.text_pos[picked], token_action[picked]  # the chosen tokens
        flat = ids.ravel()
        out = flat.copy()
        labels = np.full(flat.shape, IGNORE, dtype=np.int64)
        labels[pos] = flat[pos]
        randomize = pos[pos_action == RANDOM]
        if cfg.replacement == "mask":
            out[pos[pos_action == MASK]] = self.mask_id
        else:
            words = np.flatnonzero(action[units.word_unit] == MASK)
            starts, lens = units.word_pos[words], units.word_len[words]
            found = self.similar.replace(out, flat, starts, lens,
                                         uniform_at(keys, starts // length, starts % length, _SIMILAR))
            # No similar word: random tokens instead (MacBERT, sec. 3.2).
            randomize = np.concatenate([randomize, _expand(starts[~found], lens[~found])])
        if len(randomize):
            pick = uniform_at(keys, randomize // length, randomize % length, _TOKEN)
            out[randomize] = self.normal_ids[(pick * len(self.normal_ids)).astype(np.int64)]
        result = {"input_ids": out.reshape(b, length), "mlm_labels": labels.reshape(b, length)}
        if cfg.unit == "span":
            result.update(span_targets(labels.reshape(b, length) != IGNORE, cfg.sbo_max_targets))
        return result


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lengths[i]) as one int64 array."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def span_targets(chosen: np.ndarray, max_targets: int) -> dict[str, np.ndarray]:
    """SpanBERT's SBO inputs from a [B, L] bool mask of chosen tokens. Adjacent spans are merged first, as
    SpanBERT's span_masking does (merge_intervals), so both boundary tokens are unmasked text or specials.
    For each token of a merged run: the index just before it (span_left), just after it (span_right), its
    0-based position in the run (span_position); -1 elsewhere and past ``max_targets`` tokens of a run."""
    b, length = chosen.shape
    prev = np.zeros_like(chosen)
    prev[:, 1:] = chosen[:, :-1]
    nxt = np.zeros_like(chosen)
    nxt[:, :-1] = chosen[:, 1:]
    first = np.flatnonzero(chosen & ~prev)  # flat start of each run
    last = np.flatnonzero(chosen & ~nxt)  # flat end of each run
    flat = chosen.ravel()
    run = np.cumsum((chosen & ~prev).ravel()) - 1
    idx = np.flatnonzero(flat)
    position = idx - first[run[idx]]
    left = first[run[idx]] % length - 1
    right = last[run[idx]] % length + 1
    ok = (position < max_targets) & (left >= 0) & (right < length)
    out = {}
    for name, values in (("span_left", left), ("span_right", right), ("span_position", position)):
        arr = np.full(b * length, -1, dtype=np.int64)
        arr[idx[ok]] = values[ok]
        out[name] = arr.reshape(b, length)
    return out
