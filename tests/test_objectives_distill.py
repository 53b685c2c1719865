"""DistilBERT: student from every other teacher layer, zero loss against a copy of itself, frozen teacher."""

import copy

import pytest
import torch

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.objectives import DistillationObjective, build_objective, student_from_teacher
from test_objectives import make_batch, trains

TEACHER = PRESETS["test-tiny"].replace(num_layers=6)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "kwargs,expected", [({}, [0, 2, 4]), ({"num_layers": 2}, [0, 2]), ({"layers": [1, 3, 5]}, [1, 3, 5])]
)
def test_student_layers_are_copies_of_teacher_layers(kwargs, expected):
    torch.manual_seed(0)
    teacher = PretrainingModel(TEACHER, heads=("mlm", "pair"))
    student = student_from_teacher(teacher, **kwargs)
    assert student.config.num_layers == len(expected)
    for k, i in enumerate(expected):
        for student_part, teacher_part in zip(student.encoder.layer(k), teacher.encoder.layer(i)):
            assert _same(student_part, teacher_part)
    assert not _same(student.encoder.layer(1)[0], teacher.encoder.layer(1)[0])  # distinct layers differ
    for name in ("embeddings", "pooler"):
        assert _same(getattr(student.encoder, name), getattr(teacher.encoder, name))
    assert _same(student.mlm, teacher.mlm) and _same(student.pair, teacher.pair)
    # copies, not views: training the student leaves the teacher alone
    assert student.embedding_weight.data_ptr() != teacher.embedding_weight.data_ptr()
    with torch.no_grad():
        student.encoder.layer(0)[0].qkv.weight.add_(1.0)
    assert not _same(student.encoder.layer(0)[0], teacher.encoder.layer(0)[0])


def test_student_from_a_shared_teacher_and_with_dropped_parts():
    torch.manual_seed(0)
    albert = PretrainingModel(TEACHER.replace(sharing="all", embedding_size=16), heads=("mlm",))
    student = student_from_teacher(albert)
    assert student.config.sharing == "all" and len(student.encoder.attentions) == 1
    assert _same(student.encoder.layer(2)[1], albert.encoder.layer(4)[1])
    # DistilBERT dropped the segment embeddings and the pooler
    bert = PretrainingModel(TEACHER, heads=("mlm",))
    slim = student_from_teacher(bert, type_vocab_size=0, add_pooler=False)
    assert slim.encoder.embeddings.segment is None and slim.encoder.pooler is None
    assert torch.equal(slim.embedding_weight, bert.embedding_weight)
    with pytest.raises(BertforgeError, match="same-shaped"):
        student_from_teacher(bert, hidden_size=16, num_heads=2)
    with pytest.raises(BertforgeError, match="1 to 3 layers"):
        student_from_teacher(bert, num_layers=4)
    with pytest.raises(BertforgeError, match="0..5"):
        student_from_teacher(bert, layers=[0, 6])


def test_distillation_terms_vanish_for_an_exact_copy():
    torch.manual_seed(0)
    teacher = PretrainingModel(TEACHER, heads=("mlm",))
    objective = DistillationObjective(teacher, student=copy.deepcopy(teacher), alpha_mlm=0.0).eval()
    loss, metrics = objective(make_batch())
    assert metrics["soft_loss"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["cos_loss"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert metrics["mlm_loss"] > 1.0  # the hard-label term is computed, only weighted 0


def test_teacher_is_frozen_and_the_student_trains():
    torch.manual_seed(0)
    teacher = PretrainingModel(TEACHER, heads=("mlm",))
    objective = build_objective(("distill",), TEACHER, teacher=teacher)
    assert objective.model is objective.student and objective.student.config.num_layers == 3
    assert (objective.alpha_ce, objective.alpha_mlm, objective.alpha_cos, objective.temperature) == (5.0, 2.0, 1.0, 2.0)
    before = copy.deepcopy(teacher.state_dict())
    trains(objective, make_batch(), ["soft_loss", "mlm_loss", "mlm_acc", "cos_loss"])
    objective.train()
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("soft_targets,rows", [("tokens", "attention_mask"), ("masked", "mlm_labels")])
def test_soft_targets_positions(soft_targets, rows):
    torch.manual_seed(0)
    teacher = PretrainingModel(TEACHER, heads=("mlm",))
    objective = DistillationObjective(teacher, soft_targets=soft_targets)
    batch = make_batch()
    shapes = []
    for model in (objective.student, objective.teacher):
        model.mlm.register_forward_hook(lambda module, args, output: shapes.append(args[0].shape[0]))
    objective(batch)
    n = int((batch[rows] != (0 if rows == "attention_mask" else -100)).sum())
    assert shapes == [n, n]


def test_distillation_rejects_mismatched_models():
    teacher = PretrainingModel(TEACHER, heads=("mlm",))
    narrow = PretrainingModel(TEACHER.replace(hidden_size=16, num_heads=2), heads=("mlm",))
    with pytest.raises(BertforgeError, match="alpha_cos=0"):
        DistillationObjective(teacher, student=narrow)
    DistillationObjective(teacher, student=narrow, alpha_cos=0.0)  # fine without the cosine term
    with pytest.raises(BertforgeError, match="vocab_size"):
        DistillationObjective(teacher, student=PretrainingModel(TEACHER.replace(vocab_size=50), heads=("mlm",)))
