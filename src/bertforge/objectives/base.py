"""What the objectives share: the batch -> encoder call, the token-level loss, metrics as plain floats.

A batch is the dict of tensors from interfaces section 3 (input_ids, attention_mask, token_type_ids,
mlm_labels, and pair_labels / span_* when the data provides them). Every objective is an nn.Module
whose ``forward(batch)`` returns ``(loss, metrics)``: a scalar tensor to backpropagate and a dict of floats.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BertforgeError
from ..heads import PretrainingModel
from ..modeling import EncoderOutput

Batch = dict[str, torch.Tensor]
IGNORE = -100  # mlm_labels value at positions that are not predicted (PyTorch's cross-entropy default)


def encode(model: PretrainingModel, batch: Batch, input_ids: torch.Tensor | None = None) -> EncoderOutput:
    """Run ``model``'s encoder on the batch (or on ``input_ids`` [B, L] in its place, e.g. ELECTRA's corrupted ids)."""
    ids = batch["input_ids"] if input_ids is None else input_ids
    return model.encoder(ids, batch.get("attention_mask"), batch.get("token_type_ids"))


def real_tokens(batch: Batch) -> torch.Tensor:
    """[B, L] bool, True at non-padding tokens."""
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of ``logits`` [N, C] against ``targets`` [N].

    The sum is divided by max(N, 1) so a batch with nothing to predict gives a loss of 0 that is still in
    the graph (backward works, nothing moves) instead of NaN. Computed in float32 under mixed precision.
    """
    n = max(targets.numel(), 1)
    logits = logits.float()
    loss = F.cross_entropy(logits, targets, reduction="sum") / n
    # Correct when the target's logit is the row maximum (a tie counts as correct). amax is a vectorized
    # reduction: at [321, 30522] 2.6 ms, where argmax takes 15 ms (float32) or 30 ms (bfloat16).
    with torch.no_grad():
        accuracy = (logits.gather(1, targets[:, None]).squeeze(1) >= logits.amax(-1)).sum() / n
    return loss, accuracy


def as_floats(**values: torch.Tensor) -> dict[str, float]:
    """Scalar tensors -> floats with one device sync (one ``tolist``) instead of one ``.item()`` each."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, numbers))


def require(batch: Batch, keys: tuple[str, ...], objective: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise BertforgeError(
            f"objective {objective!r} needs batch key {missing[0]!r}, which the data pipeline did not produce "
            f"(batch has: {', '.join(sorted(batch))}); check the recipe's builder/mask_unit"
        )


class HeadObjective(nn.Module):
    """An objective computed by one head of a PretrainingModel from one encoder pass.

    ``terms(out, batch)`` is the loss given the encoder output, so several head objectives can share a
    single pass (see ``objectives.Combined``); ``forward(batch)`` runs the encoder and then ``terms``.
    """

    name: ClassVar[str]  # registry name, also the metric prefix
    head: ClassVar[str]  # the PretrainingModel head it needs ("mlm", "pair", "sbo")
    batch_keys: ClassVar[tuple[str, ...]] = ("input_ids", "mlm_labels")

    def __init__(self, model: PretrainingModel):
        super().__init__()
        if getattr(model, self.head, None) is None:
            raise BertforgeError(
                f"objective {self.name!r} needs a PretrainingModel with the {self.head!r} head; "
                f"this one has heads {model.head_names}"
            )
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.terms(encode(self.model, batch), batch)

    def terms(self, out: EncoderOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError
