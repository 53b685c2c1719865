"""Pretraining objectives: nn.Modules that wrap encoders and map a batch to ``(loss, metrics)``.

Registry names are what recipes list: ("mlm", "nsp") is BERT, ("mlm", "sop") ALBERT, ("mlm", "sbo")
SpanBERT, ("mlm",) RoBERTa, ("electra",) ELECTRA, ("distill",) DistilBERT. Head objectives (mlm, nsp, sop,
sbo) read one PretrainingModel and combine into one module that runs the encoder once and sums the terms;
electra and distill wrap two models each and stand alone. ``build_objective`` turns a recipe's names into a
ready module; every objective has ``.model``, the model a run keeps and exports.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import BertforgeError
from ..heads import PretrainingModel
from .base import Batch, HeadObjective, encode
from .distill import DistillationObjective, student_from_teacher
from .electra import ElectraObjective, generator_config, share_embeddings
from .mlm import MLMObjective
from .pair import NSPObjective, SOPObjective
from .sbo import SBOObjective

HEAD_OBJECTIVES: dict[str, type[HeadObjective]] = {
    "mlm": MLMObjective, "nsp": NSPObjective, "sop": SOPObjective, "sbo": SBOObjective,
}
OBJECTIVES: dict[str, type[nn.Module]] = {
    **HEAD_OBJECTIVES, "electra": ElectraObjective, "distill": DistillationObjective,
}


class Combined(nn.Module):
    """Head objectives over one model and ONE encoder pass; loss = sum of their terms, metrics merged."""

    def __init__(self, parts: Sequence[HeadObjective]):
        super().__init__()
        if not parts or len({id(p.model) for p in parts}) != 1:
            raise BertforgeError("Combined needs one or more head objectives that wrap the same model")
        self.model = parts[0].model
        # A plain tuple, not a ModuleList: the parts own no parameters besides self.model, and registering
        # them would list the model's weights once per part in state_dict.
        self.parts = tuple(parts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = encode(self.model, batch)
        total, metrics = None, {}
        for part in self.parts:
            loss, part_metrics = part.terms(out, batch)
            total = loss if total is None else total + loss
            metrics.update(part_metrics)
        return total, metrics


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    for name in names:
        if name not in OBJECTIVES:
            raise BertforgeError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    if not names or len(set(names)) != len(names):
        raise BertforgeError(f"objectives {names}: expected one or more distinct names")
    alone = [n for n in names if n not in HEAD_OBJECTIVES]
    if alone and len(names) > 1:
        raise BertforgeError(f"objective {alone[0]!r} wraps its own models and cannot be combined with {names}")
    if "nsp" in names and "sop" in names:
        raise BertforgeError("objectives 'nsp' and 'sop' both read the one pair head and pair_labels; choose one")
    return names


def required_heads(names: Sequence[str]) -> tuple[str, ...]:
    """The PretrainingModel heads that head objectives ``names`` need, e.g. ("mlm", "nsp") -> ("mlm", "pair")."""
    names = _check_names(names)
    if names[0] not in HEAD_OBJECTIVES:
        raise BertforgeError(f"objective {names[0]!r} builds its own models; it has no heads to request")
    return tuple(dict.fromkeys(HEAD_OBJECTIVES[name].head for name in names))


def compose(model: PretrainingModel, names: Sequence[str]) -> Combined:
    """Head objectives ``names`` over ``model`` (which must have their heads), as one module."""
    required_heads(names)
    return Combined([HEAD_OBJECTIVES[name](model) for name in names])


def build_objective(
    names: Sequence[str], config: ModelConfig, teacher: PretrainingModel | None = None, **options
) -> nn.Module:
    """A recipe's objective names -> a ready objective with freshly initialised models.

    ("electra",): ``ElectraObjective.from_config(config, **options)`` (generator_fraction, generator_layers,
    rtd_weight, temperature). ("distill",): ``DistillationObjective(teacher, **options)``, student from the
    teacher (``config`` is unused: the teacher defines it). Otherwise a PretrainingModel(config) with the
    heads the names need, composed.
    """
    names = _check_names(names)
    if names == ("electra",):
        return ElectraObjective.from_config(config, **options)
    if names == ("distill",):
        if teacher is None:
            raise BertforgeError("objective 'distill' needs a teacher model (e.g. --teacher DIR)")
        return DistillationObjective(teacher, **options)
    if options:
        raise BertforgeError(f"objectives {names} take no options; got {', '.join(options)}")
    return compose(PretrainingModel(config, heads=required_heads(names)), names)


__all__ = [
    "OBJECTIVES", "HEAD_OBJECTIVES", "Combined", "compose", "required_heads", "build_objective",
    "MLMObjective", "NSPObjective", "SOPObjective", "SBOObjective", "ElectraObjective", "DistillationObjective",
    "generator_config", "share_embeddings", "student_from_teacher",
]
