"""Sequences -> pretraining batches (interfaces.md, section 3), and the resumable stream the loop iterates.

A batch is a dict of int64 torch tensors: input_ids (corrupted), attention_mask, token_type_ids,
mlm_labels (-100 where nothing is predicted), pair_labels [B] with NSP/SOP, and span_left / span_right /
span_position with span masking. Padding goes to the longest sequence of the batch, rounded up to a
multiple of 8 by default (tensor-core friendly shapes, fewer distinct shapes to compile).

``PretrainingStream`` yields such batches forever. Everything about a batch is a pure function of
(seed, epoch, position): the epoch's order is a seeded permutation (with ``group_by_length``, rearranged
into batches of similar length by the same seeded generator), each rank takes every world_size-th
sequence of it, and masks come from (seed, masking round, sequence index) (see masking.py). Its state is
just (epoch, position), so a resumed run produces exactly the batch the interrupted one would have.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import BertforgeError
from .builders import Examples
from .masking import Masker, mask_keys


def pad_examples(examples: Sequence[Mapping[str, Any]], pad_id: int,
                 pad_to_multiple_of: int | None = 8) -> dict[str, np.ndarray]:
    """Pad a list of sequences (dicts with input_ids and optional token_type_ids, word_start, pair_label)
    into numpy [B, L] input_ids, token_type_ids, attention_mask, word_start (+ pair_labels [B])."""
    if not examples:
        raise BertforgeError("cannot collate an empty list of sequences")
    lengths = [len(e["input_ids"]) for e in examples]
    width = max(lengths)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    b = len(examples)
    out = {
        "input_ids": np.full((b, width), pad_id, dtype=np.int64),
        "token_type_ids": np.zeros((b, width), dtype=np.int64),
        "attention_mask": np.zeros((b, width), dtype=np.int64),
        "word_start": np.zeros((b, width), dtype=bool),
    }
    for i, (e, n) in enumerate(zip(examples, lengths)):
        out["input_ids"][i, :n] = e["input_ids"]
        out["attention_mask"][i, :n] = 1
        if "token_type_ids" in e:
            out["token_type_ids"][i, :n] = e["token_type_ids"]
        # Without word_start flags every token is its own word.
        out["word_start"][i, :n] = e["word_start"] if "word_start" in e else True
    labels = [e.get("pair_label", -1) for e in examples]
    if labels[0] is not None and labels[0] >= 0:
        out["pair_labels"] = np.asarray(labels, dtype=np.int64)
    return out


class PretrainingCollator:
    """Pads sequences and masks them: ``collator(examples, mask_round)`` -> batch dict of tensors.

    Each example needs an "index" (its sequence number, e.g. from ``Examples[i]``): together with the
    seed and the round it names the example's masks, so the same example in any batch, padded to any
    length, gets the same masks. Round = epoch for dynamic masking, duplicate number for static.
    """

    def __init__(self, masker: Masker, pad_id: int, pad_to_multiple_of: int | None = 8, seed: int = 0):
        self.masker, self.pad_id, self.pad_to_multiple_of, self.seed = masker, pad_id, pad_to_multiple_of, seed

    def __call__(self, examples: Sequence[Mapping[str, Any]], mask_round: int = 0) -> dict[str, torch.Tensor]:
        if examples and "index" not in examples[0]:
            raise BertforgeError("collator: each example needs an 'index' (its sequence number) to seed its masks")
        arrays = pad_examples(examples, self.pad_id, self.pad_to_multiple_of)
        keys = mask_keys(self.seed, mask_round, [e["index"] for e in examples])
        return self.mask(arrays, keys)

    def mask(self, arrays: dict[str, np.ndarray], keys: np.ndarray) -> dict[str, torch.Tensor]:
        """Padded numpy arrays (``pad_examples`` / ``Examples.batch``) + mask keys -> batch of tensors."""
        masked = self.masker(arrays["input_ids"], arrays["word_start"], keys)
        batch = {name: torch.from_numpy(a) for name, a in masked.items()}
        batch["attention_mask"] = torch.from_numpy(arrays["attention_mask"])
        batch["token_type_ids"] = torch.from_numpy(arrays["token_type_ids"])
        if "pair_labels" in arrays:
            batch["pair_labels"] = torch.from_numpy(arrays["pair_labels"])
        return batch


# Examples per length group = this x the batch size (the megabatch of transformers' LengthGroupedSampler).
GROUP_BATCHES = 50


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``order`` (a shuffled [N] index array; ``lengths[k]`` is the length of ``order[k]``) rearranged so that
    its consecutive slices of ``batch_size`` hold examples of similar length: cut into groups of GROUP_BATCHES
    batches, each group sorted by length and cut into batches, the batches shuffled with ``rng``. Only the
    last group can end in a short batch; it stays last. A batch is padded to its longest example: random
    batches of real data carry 19-52% padding (pretraining builders on the named corpora) or 43-55% (task
    data; docs/PERFORMANCE.md), grouped ones 2-11%, and each batch is still a draw from a random group."""
    order, lengths = np.asarray(order), np.asarray(lengths)
    group = GROUP_BATCHES * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, len(order), group):
        # stable descending sort: equal lengths keep their (random) order
        members = order[start:start + group][np.argsort(-lengths[start:start + group], kind="stable")]
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    last = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    batches = [batches[i] for i in rng.permutation(len(batches))] + last
    return np.concatenate(batches) if batches else order[:0]


class EpochCursor:
    """Iteration shared by the pretraining streams: yield batch_at(epoch, position), then advance."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.batch_at(self.epoch, self.position)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch


class PretrainingStream(EpochCursor):
    """An endless, resumable, rank-sharded stream of masked pretraining batches over a corpus store.

    >>> stream = PretrainingStream(store, SOPPairs(max_len=128), Masker.from_manifest(MASKING["wwm"],
    ...                            store.manifest), batch_size=32, seed=1, rank=rank, world_size=world)
    >>> batch = next(stream); state = stream.state_dict()   # ... later: stream.load_state_dict(state)

    Epoch e visits the split's sequences in the order np.random.default_rng([seed, e]).permutation;
    rank r takes positions r, r + world_size, ... of it (every rank the same count; the remainder of an
    epoch that does not fill a batch on every rank is left out). Dynamic masking (RoBERTa, the default)
    draws fresh masks every epoch. Static masking (BERT) fixes them: with ``dupe_factor`` d the epoch holds
    d copies of every sequence, copy c masked with round c, as BERT's create_pretraining_data wrote
    dupe_factor differently masked copies of its data (the sequences themselves are built once here).
    ``group_by_length`` (pretrain.py's default): the permutation is grouped (group_by_length) in units of an
    optimizer step, batch_size x world_size x ``step_batches`` (gradient accumulation) sequences, before the
    ranks take their shares: every rank and micro-batch of a step holds sequences of similar length, and a
    step's sequences do not depend on how it is split (2 processes x 8 = 1 process x 2 micro-batches x 8).
    """

    def __init__(self, store: Any, builder: Any, masker: Masker, batch_size: int, *, split: str | None = "train",
                 seed: int = 0, rank: int = 0, world_size: int = 1, static_masking: bool = False,
                 dupe_factor: int = 1, pad_to_multiple_of: int | None = 8, examples: Examples | None = None,
                 group_by_length: bool = False, step_batches: int = 1):
        if not 0 <= rank < world_size:
            raise BertforgeError(f"rank={rank} is not in 0..world_size-1 (world_size={world_size})")
        if batch_size < 1 or dupe_factor < 1:
            raise BertforgeError(f"batch_size={batch_size} and dupe_factor={dupe_factor} must be >= 1")
        if dupe_factor > 1 and not static_masking:
            raise BertforgeError("dupe_factor > 1 only means something with static_masking=True")
        self.examples = examples if examples is not None else builder.build(store, split, seed)
        self.collator = PretrainingCollator(masker, self.examples.pad_id, pad_to_multiple_of, seed)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.static_masking, self.dupe_factor = static_masking, dupe_factor
        self.entries = len(self.examples) * dupe_factor
        self.batches_per_epoch = self.entries // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise BertforgeError(
                f"split {split!r} gives {len(self.examples)} sequences, fewer than one batch of {batch_size} "
                f"on each of {world_size} ranks"
            )
        # sequences per length-grouped unit (an optimizer step, all ranks); 0 = random batches
        self.group_unit = batch_size * world_size * step_batches if group_by_length else 0
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    def _rank_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.entries)
            if self.group_unit:  # no rank waits for another's longer batch
                perm = group_by_length(perm, self.examples.lengths[perm % len(self.examples)], self.group_unit, rng)
            self._order = perm[self.rank::self.world_size][: self.batches_per_epoch * self.batch_size]
            self._order_epoch = epoch
        return self._order

    def batch_at(self, epoch: int, position: int) -> dict[str, torch.Tensor]:
        """The batch this rank gets at (epoch, position): pure, does not move the stream."""
        entry = self._rank_order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        n = len(self.examples)
        index = entry % n
        mask_round = entry // n if self.static_masking else np.full(len(entry), epoch)
        arrays = self.examples.batch(index, self.collator.pad_to_multiple_of)
        return self.collator.mask(arrays, mask_keys(self.seed, mask_round, index))

    def state_dict(self) -> dict[str, int]:
        """Where the stream is (the next batch it yields), plus what must match on resume."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "sequences": len(self.examples),
                "batch_size": self.batch_size, "world_size": self.world_size, "dupe_factor": self.dupe_factor,
                "static_masking": int(self.static_masking), "group_by_length": self.group_unit}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "sequences", "batch_size", "world_size", "dupe_factor", "static_masking",
                    "group_by_length"):
            mine = self.state_dict()[key]
            # group_by_length: sequences per grouped unit; a checkpoint from before grouping was ungrouped (0)
            theirs = state.get(key, 0) if key == "group_by_length" else state.get(key, mine)
            if int(theirs) != mine:
                raise BertforgeError(
                    f"data stream state: {key}={theirs} in the checkpoint but {mine} now; resuming exactly "
                    "needs the same corpus split, builder, seed, batch size, world size, gradient accumulation and "
                    "group_by_length"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position < self.batches_per_epoch:
            raise BertforgeError(f"data stream state: position={position} is outside 0..{self.batches_per_epoch - 1}")
        self.epoch, self.position = epoch, position
