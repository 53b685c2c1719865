"""The collator's batch format (interfaces.md, section 3) and the resumable, sharded PretrainingStream."""

import numpy as np
import pytest
import torch

from bertforge.config import PRESETS
from bertforge.data.builders import NSPPairs, SingleSegments, SOPPairs
from bertforge.data.collate import PretrainingCollator, PretrainingStream, pad_examples
from bertforge.data.masking import IGNORE, MASKING, Masker
from bertforge.errors import BertforgeError
from bertforge.objectives import build_objective
from test_builders import SPECIAL, random_store


@pytest.fixture(scope="module")
def store():
    return random_store(num_docs=600, seed=5, vocab_size=100)  # vocab fits PRESETS["test-tiny"]


def masker(store, name="wwm"):
    return Masker.from_manifest(MASKING[name], store.manifest)


def test_batch_format(store):
    stream = PretrainingStream(store, SOPPairs(max_len=64), masker(store, "spanbert"), batch_size=8, split=None)
    batch = next(stream)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "mlm_labels", "pair_labels",
                          "span_left", "span_right", "span_position"}
    b, length = batch["input_ids"].shape
    assert b == 8 and length % 8 == 0 and length <= 64
    for name, t in batch.items():
        assert t.dtype == torch.int64, name
        assert t.shape == ((8,) if name == "pair_labels" else (8, length)), name
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == SPECIAL["pad"]).all() and (batch["mlm_labels"][pad] == IGNORE).all()
    assert (batch["token_type_ids"][pad] == 0).all() and batch["token_type_ids"].max() == 1
    plain = PretrainingStream(store, SingleSegments(max_len=64), masker(store), batch_size=8, split=None)
    assert set(next(plain)) == {"input_ids", "attention_mask", "token_type_ids", "mlm_labels"}


def test_collator_pads_lists_of_examples(store):
    ex = NSPPairs(max_len=64).build(store, None, seed=0)
    collate = PretrainingCollator(masker(store), pad_id=SPECIAL["pad"], pad_to_multiple_of=8, seed=1)
    examples = [ex[i] for i in range(5)]
    batch = collate(examples)
    assert batch["input_ids"].shape[1] == -(-max(len(e["input_ids"]) for e in examples) // 8) * 8
    again = collate(examples[::-1])  # same examples, other order: same masks per example
    assert torch.equal(batch["mlm_labels"], again["mlm_labels"].flip(0))
    assert not torch.equal(batch["mlm_labels"], collate(examples, mask_round=1)["mlm_labels"])
    arrays = pad_examples([{"input_ids": [2, 7, 8, 3]}], pad_id=0, pad_to_multiple_of=None)
    assert arrays["input_ids"].shape == (1, 4) and arrays["word_start"].all()
    with pytest.raises(BertforgeError, match="'index'"):
        collate([{"input_ids": [2, 7, 3]}])


def test_resumed_stream_continues_with_exactly_the_same_batches(store):
    make = lambda: PretrainingStream(store, SOPPairs(max_len=64), masker(store), batch_size=16, split=None,  # noqa: E731
                                     seed=7)
    first = make()
    for _ in range(first.batches_per_epoch + 3):  # into the second epoch
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(4)]
    resumed = make()
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert all(torch.equal(got[k], want[k]) for k in want)
    bad = dict(state, batch_size=8)
    with pytest.raises(BertforgeError, match="batch_size=8"):
        make().load_state_dict(bad)


def test_ranks_get_disjoint_shares_of_each_epoch(store):
    ex = SingleSegments(max_len=64).build(store, None, seed=0)
    seen = []
    for rank in range(3):
        s = PretrainingStream(store, None, masker(store), batch_size=4, seed=1, rank=rank, world_size=3, examples=ex)
        order = s._rank_order(0)
        assert len(order) == s.batches_per_epoch * 4
        seen.append(set(order.tolist()))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) > 0.95 * len(ex)


def labels_by_entry(stream, epoch, batches=3):
    """{epoch entry: its mlm_labels, unpadded} over the first batches of ``epoch``."""
    out = {}
    order = stream._rank_order(epoch)
    for position in range(batches):
        batch = stream.batch_at(epoch, position)
        entries = order[position * stream.batch_size:(position + 1) * stream.batch_size]
        for e, labels, att in zip(entries.tolist(), batch["mlm_labels"], batch["attention_mask"]):
            out[e] = labels[att.bool()].tolist()
    return out


def test_dynamic_masks_change_every_epoch_static_masks_do_not(store):
    ex = SingleSegments(max_len=64).build(store, None, seed=0)
    dynamic = PretrainingStream(store, None, masker(store), 64, seed=2, examples=ex)
    static = PretrainingStream(store, None, masker(store), 64, seed=2, examples=ex, static_masking=True)
    for stream, should_change in ((dynamic, True), (static, False)):
        e0, e1 = labels_by_entry(stream, 0), labels_by_entry(stream, 1)
        common = set(e0) & set(e1)
        assert len(common) > 10
        changed = np.mean([e0[i] != e1[i] for i in common])
        assert changed > 0.9 if should_change else changed == 0
    # BERT's dupe_factor: an epoch holds d copies of every sequence, each copy with its own masks.
    dup = PretrainingStream(store, None, masker(store), 64, seed=2, examples=ex, static_masking=True, dupe_factor=3)
    assert dup.entries == 3 * len(ex)
    n = len(ex)
    e0, e1 = labels_by_entry(dup, 0, batches=dup.batches_per_epoch), labels_by_entry(dup, 1, batches=3)
    assert all(e0[e] == e1[e] for e in set(e0) & set(e1))  # the same copy: the same masks
    copies = [(i, i + n) for i in range(n) if i in e0 and i + n in e0]
    assert copies and np.mean([e0[a] != e0[b] for a, b in copies]) > 0.9  # two copies: different masks


@pytest.mark.parametrize("objectives,builder,masking", [
    (("mlm", "nsp"), NSPPairs(max_len=64), "bert"),
    (("mlm", "sop"), SOPPairs(max_len=64), "albert"),
    (("mlm", "sbo"), SingleSegments(max_len=64), "spanbert"),
])
def test_batches_train_the_objectives(store, objectives, builder, masking):
    torch.manual_seed(0)
    objective = build_objective(objectives, PRESETS["test-tiny"])
    stream = PretrainingStream(store, builder, masker(store, masking), batch_size=8, split=None)
    loss, metrics = objective(next(stream))
    loss.backward()
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())


def test_stream_errors_are_one_line(store):
    with pytest.raises(BertforgeError, match="rank=2"):
        PretrainingStream(store, SOPPairs(), masker(store), 8, rank=2, world_size=2)
    with pytest.raises(BertforgeError, match="fewer than one batch"):
        PretrainingStream(store, SOPPairs(), masker(store), 10**6, split=None)
    with pytest.raises(BertforgeError, match="static_masking"):
        PretrainingStream(store, SOPPairs(), masker(store), 8, dupe_factor=2)
