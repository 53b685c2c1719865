"""DistilBERT's triple loss (Sanh et al., 2019, sec. 2-3) and its student initialisation.

    L = a_ce * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + a_mlm * L_MLM(student) + a_cos * L_cos

z_t, z_s are teacher and student MLM logits; L_cos = mean over non-padding tokens of
1 - cos(h_s, h_t) between last hidden states. Multiplying the soft-target term by T^2 keeps its gradients
the same size when T changes (Hinton et al., 2015, sec. 2). Defaults are the ones DistilBERT was trained
with: weights 5.0 / 2.0 / 1.0 and T = 2.0 (huggingface/transformers,
examples/research_projects/distillation: README's training command ``--alpha_ce 5.0 --alpha_mlm 2.0
--alpha_cos 1.0``; train.py ``--temperature`` default 2.0). Like that code's default (its
``restrict_ce_to_mask`` is off) the soft targets cover every non-padding token; "masked" restricts them to
the MLM positions and skips most of the two V-wide projections. The teacher is frozen: eval mode (no
dropout) and no gradient, whatever mode the objective is put in.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BertforgeError
from ..heads import PretrainingModel
from .base import IGNORE, Batch, as_floats, classification_loss, encode, real_tokens, require

_LAYER_KEYS = ("encoder.attentions.", "encoder.ffns.")


def student_from_teacher(
    teacher: PretrainingModel,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    **config_changes,
) -> PretrainingModel:
    """A student initialised from ``teacher``: its layers are copies of teacher layers 0, 2, 4, ...

    Sec. 3: "we initialize the student from the teacher by taking one layer out of two". ``num_layers``
    takes the first that many of 0, 2, 4, ... (default: all of them, i.e. half the depth rounded up);
    ``layers`` names the teacher layers explicitly (the released DistilBERT used 0, 2, 4, 7, 9, 11;
    scripts/extract_distilbert.py). Embeddings, pooler and heads are copied. ``config_changes`` may drop
    parts, as DistilBERT did (``type_vocab_size=0, add_pooler=False``); every student tensor must exist in
    the teacher with the same shape. All values are copies: training the student never touches the teacher.

    Layers are copied sublayer by sublayer through ``Encoder.layer(i)``, so a teacher with cross-layer
    sharing works too: the student inherits the teacher's sharing, and a shared module receives the
    (identical) shared teacher module.
    """
    depth = teacher.config.num_layers
    if layers is None:
        every_other = list(range(0, depth, 2))
        n = len(every_other) if num_layers is None else num_layers
        if not 0 < n <= len(every_other):
            raise BertforgeError(
                f"student num_layers={n}: a {depth}-layer teacher gives 1 to {len(every_other)} layers "
                f"from every other layer (0, 2, 4, ...); pass layers=[...] to choose others"
            )
        layers = every_other[:n]
    layers = list(layers)
    if not layers or any(not 0 <= i < depth for i in layers):
        raise BertforgeError(f"student layers={layers}: each must be a teacher layer index in 0..{depth - 1}")
    student = PretrainingModel(
        teacher.config.replace(num_layers=len(layers), **config_changes), heads=teacher.head_names
    )
    source = teacher.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith(_LAYER_KEYS):
            continue
        if key not in source or source[key].shape != value.shape:
            raise BertforgeError(
                f"student tensor {key} {tuple(value.shape)} has no same-shaped teacher tensor; "
                f"config_changes may only drop parts (e.g. type_vocab_size=0, add_pooler=False)"
            )
        value.copy_(source[key])
    for k, i in enumerate(layers):
        for student_part, teacher_part in zip(student.encoder.layer(k), teacher.encoder.layer(i)):
            student_part.load_state_dict(teacher_part.state_dict())
    return student


class DistillationObjective(nn.Module):
    """Student trained against a frozen teacher. ``.student`` for export.

    Metrics: soft_loss (T^2-scaled KL), mlm_loss, mlm_acc (student, hard labels), cos_loss.
    """

    name = "distill"

    def __init__(
        self,
        teacher: PretrainingModel,  # heads include "mlm"
        student: PretrainingModel | None = None,  # default: student_from_teacher(teacher)
        temperature: float = 2.0,
        alpha_ce: float = 5.0,
        alpha_mlm: float = 2.0,
        alpha_cos: float = 1.0,
        soft_targets: Literal["tokens", "masked"] = "tokens",  # positions the soft-target KL covers
    ):
        super().__init__()
        student = student_from_teacher(teacher) if student is None else student
        if teacher.mlm is None or student.mlm is None:
            raise BertforgeError(
                f"distillation needs teacher and student with the 'mlm' head; got {teacher.head_names} "
                f"and {student.head_names}"
            )
        if teacher.config.vocab_size != student.config.vocab_size:
            raise BertforgeError(
                f"distillation: teacher vocab_size={teacher.config.vocab_size} != student "
                f"vocab_size={student.config.vocab_size}; both must use the same tokenizer"
            )
        if alpha_cos > 0 and teacher.config.hidden_size != student.config.hidden_size:
            raise BertforgeError(
                f"distillation: the cosine loss compares hidden states, but teacher hidden_size="
                f"{teacher.config.hidden_size} != student hidden_size={student.config.hidden_size}; set alpha_cos=0"
            )
        if not temperature > 0 or min(alpha_ce, alpha_mlm, alpha_cos) < 0:
            raise BertforgeError(
                f"distillation: temperature={temperature} must be > 0 and the alphas "
                f"({alpha_ce}, {alpha_mlm}, {alpha_cos}) >= 0"
            )
        if soft_targets not in ("tokens", "masked"):
            raise BertforgeError(f"distillation soft_targets={soft_targets!r} is not one of 'tokens', 'masked'")
        self.student = student
        # A registered submodule so .to(device) moves it; frozen, so optimizers built from parameters that
        # require grad skip it.
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature = temperature
        self.alpha_ce, self.alpha_mlm, self.alpha_cos = alpha_ce, alpha_mlm, alpha_cos
        self.soft_targets = soft_targets

    def train(self, mode: bool = True) -> "DistillationObjective":
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout stays off
        return self

    @property
    def model(self) -> PretrainingModel:
        """The model a run keeps."""
        return self.student

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        require(batch, ("input_ids", "mlm_labels"), self.name)
        labels = batch["mlm_labels"]  # [B, L]
        chosen = labels != IGNORE  # [B, L]
        real = real_tokens(batch)  # [B, L]
        rows = real if self.soft_targets == "tokens" else chosen  # [B, L]: where logits are computed (R rows)

        h_s = encode(self.student, batch).last_hidden_state  # [B, L, H]
        with torch.no_grad():
            h_t = encode(self.teacher, batch).last_hidden_state
            t_logits = self.teacher.mlm_logits(h_t[rows]).float()  # [R, V]
        s_logits = self.student.mlm_logits(h_s[rows])  # [R, V]; the MLM term reuses its masked rows

        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(s_logits.float() / t, dim=-1), F.log_softmax(t_logits / t, dim=-1),
            reduction="sum", log_target=True,
        ) / max(s_logits.shape[0], 1) * t * t  # "batchmean" over the R rows, as the reference code
        row_labels = labels[rows]  # [R]
        mlm_loss, mlm_acc = classification_loss(s_logits[row_labels != IGNORE], row_labels[row_labels != IGNORE])
        # Cosine embedding loss with target 1 = mean(1 - cos) over non-padding tokens.
        s_real = h_s[real].float()
        cos = F.cosine_embedding_loss(s_real, h_t[real].float(), torch.ones(s_real.shape[0], device=s_real.device))

        loss = self.alpha_ce * soft + self.alpha_mlm * mlm_loss + self.alpha_cos * cos
        return loss, as_floats(soft_loss=soft, mlm_loss=mlm_loss, mlm_acc=mlm_acc, cos_loss=cos)
