"""Sentence-pair objectives on the pooled [CLS] vector: NSP (BERT) and SOP (ALBERT).

Both are a 2-way cross-entropy on the pair head, L = -1/B sum_b log p(y_b | h_[CLS]); they differ only in
how the data builds negatives, so one class serves both and the name sets the metric prefix.
pair_labels follow transformers' convention: NSP 0 = B is the real next segment, 1 = random segment;
SOP 0 = in order, 1 = swapped.
"""

from __future__ import annotations

import torch

from ..modeling import EncoderOutput
from .base import Batch, HeadObjective, as_floats, classification_loss, require


class PairObjective(HeadObjective):
    head = "pair"
    batch_keys = ("input_ids", "pair_labels")

    def terms(self, out: EncoderOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        require(batch, self.batch_keys, self.name)
        logits = self.model.pair(out.pooler_output)  # [B, H] -> [B, 2]
        loss, accuracy = classification_loss(logits, batch["pair_labels"])
        return loss, as_floats(**{f"{self.name}_loss": loss, f"{self.name}_acc": accuracy})


class NSPObjective(PairObjective):
    """Next sentence prediction (Devlin et al., 2019, sec. 3.1, "Task #2"). Metrics: nsp_loss, nsp_acc."""

    name = "nsp"


class SOPObjective(PairObjective):
    """Sentence order prediction (Lan et al., 2020, sec. 3.1). Metrics: sop_loss, sop_acc."""

    name = "sop"
