"""Head objectives (MLM, NSP/SOP, SBO) and their composition, on hand-built batches (interfaces section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.modeling import EncoderOutput
from bertforge.objectives import (
    OBJECTIVES, Combined, MLMObjective, NSPObjective, SBOObjective, SOPObjective, build_objective, compose,
    required_heads,
)

TINY = PRESETS["test-tiny"]
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def make_batch(b=4, n=16, seed=0):
    """Every key of a pretraining batch. Row r masks two spans: [2+r, 5+r) and [9, 11); the last row is
    padded after position 11. Masked tokens are [MASK] in input_ids and their originals in mlm_labels."""
    g = torch.Generator().manual_seed(seed)
    original = torch.randint(10, TINY.vocab_size, (b, n), generator=g)
    original[:, 0], original[:, -1] = CLS, SEP
    attention_mask = torch.ones(b, n, dtype=torch.long)
    original[-1, 11], original[-1, 12:], attention_mask[-1, 12:] = SEP, PAD, 0
    token_type_ids = torch.zeros(b, n, dtype=torch.long)
    token_type_ids[:, n // 2 :] = 1
    token_type_ids[attention_mask == 0] = 0
    span_left, span_right, span_position = (torch.full((b, n), -1) for _ in range(3))
    for r in range(b):
        for start, length in ((2 + r, 3), (9, 2)):
            for k in range(length):
                span_left[r, start + k], span_right[r, start + k] = start - 1, start + length
                span_position[r, start + k] = k
    chosen = span_position >= 0
    return {
        "input_ids": original.masked_fill(chosen, MASK),
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "mlm_labels": original.masked_fill(~chosen, -100),
        "pair_labels": torch.tensor([0, 1, 0, 1])[:b],
        "span_left": span_left,
        "span_right": span_right,
        "span_position": span_position,
    }


def trains(objective, batch, metric_names, steps=12, lr=2e-3):
    """Finite loss with the metrics named; backward works; a few Adam steps on the batch lower the loss
    (measured in eval mode, with the same RNG seed before and after)."""

    def evaluate():
        objective.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            return objective(batch)

    before, metrics = evaluate()
    assert torch.isfinite(before)
    assert set(metric_names) <= set(metrics) and all(math.isfinite(v) for v in metrics.values())
    objective.train()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimizer.step()
    after, _ = evaluate()
    assert after < before
    return before, after


@pytest.mark.parametrize(
    "names,metrics",
    [
        (("mlm",), ["mlm_loss", "mlm_acc"]),
        (("nsp",), ["nsp_loss", "nsp_acc"]),
        (("sop",), ["sop_loss", "sop_acc"]),
        (("sbo",), ["sbo_loss", "sbo_acc"]),
        (("mlm", "nsp"), ["mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"]),
        (("mlm", "sbo"), ["mlm_loss", "mlm_acc", "sbo_loss", "sbo_acc"]),
    ],
)
def test_head_objectives_train(names, metrics):
    torch.manual_seed(0)
    trains(build_objective(names, TINY), make_batch(), metrics)


def test_mlm_projects_only_the_masked_positions():
    torch.manual_seed(0)
    model = PretrainingModel(TINY, heads=("mlm",)).eval()
    batch = make_batch()
    seen = []
    model.mlm.dense.register_forward_hook(lambda module, args, output: seen.append((args[0].shape, output.shape)))
    loss, metrics = MLMObjective(model)(batch)
    n = int((batch["mlm_labels"] != -100).sum())
    assert seen == [((n, TINY.hidden_size), (n, TINY.emb_size))]
    # same value as projecting every position and ignoring the unmasked ones
    full = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["mlm_logits"]
    reference = F.cross_entropy(full.flatten(0, 1), batch["mlm_labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, reference)
    assert metrics["mlm_loss"] == pytest.approx(reference.item(), rel=1e-5)


def test_mlm_with_nothing_masked_is_zero_not_nan():
    model = PretrainingModel(TINY, heads=("mlm",))
    batch = make_batch()
    batch["mlm_labels"] = torch.full_like(batch["mlm_labels"], -100)
    loss, metrics = MLMObjective(model)(batch)
    loss.backward()
    assert loss.item() == 0.0 and metrics["mlm_acc"] == 0.0


@pytest.mark.parametrize("objective_class", [NSPObjective, SOPObjective])
def test_pair_accuracy_on_a_hand_batch(objective_class):
    model = PretrainingModel(TINY, heads=("pair",)).eval()
    with torch.no_grad():  # the head always says class 0, with logits (2, 0)
        model.pair.classifier.weight.zero_()
        model.pair.classifier.bias.copy_(torch.tensor([2.0, 0.0]))
    batch = make_batch()
    batch["pair_labels"] = torch.tensor([0, 1, 0, 0])
    loss, metrics = objective_class(model)(batch)
    name = objective_class.name
    assert metrics[f"{name}_acc"] == pytest.approx(0.75)
    # 3 rows pay -log softmax(2,0)[0], one pays -log softmax(2,0)[1]
    expected = (3 * math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics[f"{name}_loss"] == pytest.approx(expected, rel=1e-6)


def test_sbo_reads_only_boundaries_and_positions():
    """With a fixed encoder output, changing the vectors inside every span leaves the head's inputs
    unchanged; changing a boundary vector changes them (so the check is not vacuous)."""
    torch.manual_seed(0)
    model = PretrainingModel(TINY, heads=("mlm", "sbo")).eval()
    batch = make_batch()
    objective = SBOObjective(model)
    captured = []
    features = model.sbo.features
    model.sbo.features = lambda *args: (captured.append([a.clone() for a in args]), features(*args))[1]
    hidden = torch.randn(4, 16, TINY.hidden_size)

    def run(h):
        model.encoder.forward = lambda *args, **kwargs: EncoderOutput(h)
        objective(batch)
        return captured[-1]

    left, right, position = run(hidden)
    inside = batch["span_position"] >= 0
    assert left.shape == (int(inside.sum()), TINY.hidden_size)
    # left/right are exactly the boundary rows of the encoder output
    rows = inside.nonzero(as_tuple=True)[0]
    torch.testing.assert_close(left, hidden[rows, batch["span_left"][inside]])
    torch.testing.assert_close(right, hidden[rows, batch["span_right"][inside]])
    assert position.tolist() == batch["span_position"][inside].tolist()

    scrambled = hidden.clone()
    scrambled[inside] = torch.randn(int(inside.sum()), TINY.hidden_size)
    for got, expected in zip(run(scrambled), (left, right, position)):
        assert torch.equal(got, expected)

    moved = hidden.clone()
    moved[0, 1] += 1.0  # the left boundary of row 0's first span
    assert not torch.equal(run(moved)[0], left)


def test_sbo_rejects_positions_beyond_the_head_table():
    model = PretrainingModel(TINY, heads=("mlm", "sbo"))
    batch = make_batch()
    batch["span_position"] = batch["span_position"].masked_fill(batch["span_position"] == 2, 10)
    with pytest.raises(BertforgeError, match="sbo_max_targets <= 10"):
        SBOObjective(model)(batch)


def test_combined_is_the_sum_over_one_encoder_pass():
    torch.manual_seed(0)
    model = PretrainingModel(TINY, heads=("mlm", "sbo", "pair")).eval()
    batch = make_batch()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    combined = compose(model, ("mlm", "sbo", "nsp"))
    loss, metrics = combined(batch)
    assert len(calls) == 1
    separate = [cls(model)(batch) for cls in (MLMObjective, SBOObjective, NSPObjective)]
    torch.testing.assert_close(loss, sum(part_loss for part_loss, _ in separate))
    assert metrics == {k: v for _, m in separate for k, v in m.items()}
    # the model's weights appear once in the checkpoint
    assert set(combined.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    assert combined.names == ("mlm", "sbo", "nsp")


def test_registry_and_composition_errors():
    assert set(OBJECTIVES) == {"mlm", "nsp", "sop", "sbo", "electra", "distill"}
    assert required_heads(("mlm", "nsp")) == ("mlm", "pair")
    assert required_heads(("mlm", "sbo")) == ("mlm", "sbo")
    model = PretrainingModel(TINY, heads=("mlm",))
    with pytest.raises(BertforgeError, match="valid objectives: mlm, nsp, sop, sbo, electra, distill"):
        compose(model, ("mlm", "nextsentence"))
    with pytest.raises(BertforgeError, match="choose one"):
        required_heads(("mlm", "nsp", "sop"))
    with pytest.raises(BertforgeError, match="cannot be combined"):
        build_objective(("mlm", "electra"), TINY)
    with pytest.raises(BertforgeError, match="'pair' head"):
        compose(model, ("mlm", "nsp"))
    with pytest.raises(BertforgeError, match="needs a teacher"):
        build_objective(("distill",), TINY)
    with pytest.raises(BertforgeError, match="Combined needs"):
        Combined([MLMObjective(model), MLMObjective(PretrainingModel(TINY, heads=("mlm",)))])
    batch = make_batch()
    del batch["span_left"]
    with pytest.raises(BertforgeError, match="needs batch key 'span_left'"):
        compose(PretrainingModel(TINY, heads=("mlm", "sbo")), ("mlm", "sbo"))(batch)
