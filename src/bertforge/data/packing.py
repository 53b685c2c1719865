"""Packed pretraining batches: several whole sequences per row, so (almost) no compute goes to padding.

A row of width L holds sequences s1, s2, ... back to back; its attention_mask holds their numbers
(1, 1, 1, 2, 2, 0, ...; 0 = padding) instead of 0/1. The encoder (modeling.py) turns that into a
block-diagonal attention mask and restarts positions in every sequence, so each sequence is encoded
exactly as it would be alone (tests/test_packing.py holds them equal). Nonzero still means "real token",
so the objectives' padding checks read the mask unchanged. Packing is for MLM-style objectives: NSP/SOP
classify the [CLS] of a row, and a packed row has several.

Rows are filled by best fit decreasing over windows of the epoch's seeded shuffle (``best_fit``): the
shuffle's order stays local and the waste falls to about 1%. Masks are
drawn per sequence with the same keys as ``PretrainingStream`` (seed, round, sequence index), so a
sequence gets the same masks packed or not.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..errors import BertforgeError
from .builders import Examples
from .collate import EpochCursor
from .masking import Masker, mask_keys


def best_fit(lengths: np.ndarray, capacity: int, window: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Assign items of ``lengths`` to rows of ``capacity``; returns (row [N], offset [N]).

    Best fit decreasing (Johnson, 1973) inside each window of ``window`` consecutive items: longest first,
    each into the open row with the least room that still fits it. Windows keep the epoch's shuffle
    local; sorting inside one brings the waste to ~1% where online best fit leaves ~5%. ``open_by_room[r]``
    lists rows with exactly r free slots, so the tightest row is found by scanning at most ``capacity``
    buckets. Hand written: no maintained library packs sequences into fixed-width rows (~20 lines)."""
    n = len(lengths)
    if n and int(lengths.max()) > capacity:
        raise BertforgeError(f"packing: a sequence of {int(lengths.max())} tokens does not fit a row of {capacity}")
    row, offset = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    used: list[int] = []  # tokens used per row
    for start in range(0, n, window):
        open_by_room: list[list[int]] = [[] for _ in range(capacity + 1)]
        part = start + np.argsort(-lengths[start:start + window], kind="stable")
        for i, length in zip(part.tolist(), lengths[part].tolist()):
            r = next((room for room in range(length, capacity + 1) if open_by_room[room]), -1)
            if r < 0:
                target = len(used)
                used.append(0)
            else:
                target = open_by_room[r].pop()
            row[i], offset[i] = target, used[target]
            used[target] += length
            if capacity > used[target]:
                open_by_room[capacity - used[target]].append(target)
    return row, offset


class PackedStream(EpochCursor):
    """Endless, resumable, rank-sharded stream of packed, masked pretraining batches (MLM-style recipes).

    Same interface as ``collate.PretrainingStream`` (``next``, ``batch_at``, ``state_dict``/``load_state_dict``,
    ``world_size``) and the same batch keys; attention_mask holds sequence numbers (module docstring).
    Epoch e shuffles the sequences with np.random.default_rng([seed, e]), packs them into rows of
    ``row_len`` tokens by best fit, and rank r takes rows r, r + world_size, ...; an epoch holds as many
    whole batches as the smallest epoch could (``batches_per_epoch``, fixed), so resuming is exact.
    """

    def __init__(self, store: Any, builder: Any, masker: Masker, batch_size: int, *, split: str | None = "train",
                 seed: int = 0, rank: int = 0, world_size: int = 1, row_len: int | None = None,
                 examples: Examples | None = None, window: int = 4096):
        if not 0 <= rank < world_size:
            raise BertforgeError(f"rank={rank} is not in 0..world_size-1 (world_size={world_size})")
        if batch_size < 1:
            raise BertforgeError(f"batch_size={batch_size} must be >= 1")
        self.examples = examples if examples is not None else builder.build(store, split, seed)
        if self.examples.has_pairs:
            raise BertforgeError("packing puts several sequences in one row, but this builder makes NSP/SOP pairs, "
                                 "which classify each row's [CLS]; use pack=false for pair recipes")
        self.masker, self.batch_size, self.seed = masker, batch_size, seed
        self.rank, self.world_size, self.window = rank, world_size, window
        self.lengths = self.examples.lengths
        self.row_len = int(row_len or self.lengths.max())
        # Epoch 0's row count fixes the epoch length. Another shuffle may pack into a row more or fewer:
        # extra rows are left out (as an unpacked stream leaves out its last partial batch), a missing
        # row is all padding (it costs time, not correctness).
        self.batches_per_epoch = 0
        self.epoch, self.position = 0, 0
        self._plan_epoch = -1
        self._plan: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        rows = int(best_fit(self._order(0)[1], self.row_len, window)[0].max()) + 1
        self.batches_per_epoch = rows // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise BertforgeError(f"split {split!r} packs into {rows} rows of {self.row_len} tokens, fewer than "
                                 f"one batch of {batch_size} on each of {world_size} ranks")

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        return order, self.lengths[order]

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequences sorted by this rank's row, their row, their offset) for the epoch."""
        if epoch != self._plan_epoch:
            order, lengths = self._order(epoch)
            row, offset = best_fit(lengths, self.row_len, self.window)
            need = self.batches_per_epoch * self.batch_size * self.world_size
            mine = (row % self.world_size == self.rank) & (row < need)
            seq, row, offset = order[mine], row[mine] // self.world_size, offset[mine]
            by_row = np.argsort(row, kind="stable")
            self._plan = (seq[by_row], row[by_row], offset[by_row])
            self._plan_epoch = epoch
        assert self._plan is not None
        return self._plan

    def batch_at(self, epoch: int, position: int) -> dict[str, torch.Tensor]:
        """The batch this rank gets at (epoch, position): pure, does not move the stream."""
        seq, row, offset = self._epoch_plan(epoch)
        lo, hi = np.searchsorted(row, [position * self.batch_size, (position + 1) * self.batch_size])
        return pack_batch(self.examples, self.masker, seq[lo:hi], row[lo:hi] - position * self.batch_size,
                          offset[lo:hi], self.batch_size, self.row_len, mask_keys(self.seed, epoch, seq[lo:hi]))

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of the epoch's row slots (this rank) that hold padding."""
        seq, _, _ = self._epoch_plan(epoch)
        return 1.0 - float(self.lengths[seq].sum()) / (self.batches_per_epoch * self.batch_size * self.row_len)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "sequences": len(self.examples),
                "batch_size": self.batch_size, "world_size": self.world_size, "row_len": self.row_len, "packed": 1}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "sequences", "batch_size", "world_size", "row_len", "packed"):
            if int(state.get(key, 0 if key == "packed" else mine[key])) != mine[key]:
                raise BertforgeError(f"data stream state: {key}={state.get(key)} in the checkpoint but {mine[key]} "
                                     "now; resuming exactly needs the same corpus split, builder, seed, batch size, "
                                     "world size and packing")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position < self.batches_per_epoch:
            raise BertforgeError(f"data stream state: position={position} is outside 0..{self.batches_per_epoch - 1}")
        self.epoch, self.position = epoch, position


def pack_batch(examples: Examples, masker: Masker, seq: np.ndarray, row: np.ndarray, offset: np.ndarray,
               num_rows: int, row_len: int, keys: np.ndarray) -> dict[str, torch.Tensor]:
    """Sequences ``seq`` placed at (row, offset) of a [num_rows, row_len] batch, each masked with its key.

    The sequences are gathered and masked as an ordinary padded batch ([N, longest], ``Examples.batch`` and
    the Masker, so masks equal the unpacked stream's), then their real tokens are scattered into the rows."""
    arrays = examples.batch(seq, pad_to_multiple_of=1)
    masked = masker(arrays["input_ids"], arrays["word_start"], keys)
    real = arrays["attention_mask"].astype(bool)  # [N, W]
    n, w = real.shape
    dest = (row[:, None] * row_len + offset[:, None] + np.arange(w))[real]  # flat slot of each real token
    # Sequence numbers 1, 2, ... within each row, in order of offset (seq is sorted by row, then offset).
    number = np.arange(n) - np.searchsorted(row, row, side="left") + 1
    out: dict[str, np.ndarray] = {}
    fills = {"input_ids": examples.pad_id, "mlm_labels": -100, "token_type_ids": 0, "attention_mask": 0}
    sources = {**masked, "token_type_ids": arrays["token_type_ids"], "attention_mask": np.broadcast_to(number[:, None], (n, w))}
    for name, fill in fills.items():
        flat = np.full(num_rows * row_len, fill, dtype=np.int64)
        flat[dest] = sources[name][real]
        out[name] = flat.reshape(num_rows, row_len)
    if "span_left" in masked:  # SpanBERT boundaries index the sequence: shift them into the row
        shift = np.broadcast_to(offset[:, None], (n, w))[real]
        for name in ("span_left", "span_right", "span_position"):
            values = masked[name][real]
            if name != "span_position":
                values = np.where(values >= 0, values + shift, values)
            flat = np.full(num_rows * row_len, -1, dtype=np.int64)
            flat[dest] = values
            out[name] = flat.reshape(num_rows, row_len)
    return {name: torch.from_numpy(a) for name, a in out.items()}
