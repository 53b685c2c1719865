"""Masked language modelling (Devlin et al., 2019, sec. 3.1, "Task #1").

L_MLM = -1/N sum_{i in M} log p(x_i | x_corrupted), over the N positions M chosen for prediction
(mlm_labels != -100). The V-wide output projection is the most expensive GEMM of a small model, so it is
computed only at those ~15% of positions: hidden states are gathered first (MosaicBERT / ModernBERT do
the same), [B, L, H] -> [N, H] -> [N, V].
"""

from __future__ import annotations

import torch

from ..modeling import EncoderOutput
from .base import IGNORE, Batch, HeadObjective, as_floats, linear_cross_entropy, require


class MLMObjective(HeadObjective):
    """Cross-entropy of the MLM head at the masked positions only. Metrics: mlm_loss, mlm_acc."""

    name = "mlm"
    head = "mlm"

    def terms(self, out: EncoderOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        require(batch, self.batch_keys, self.name)
        labels = batch["mlm_labels"]  # [B, L]
        chosen = labels != IGNORE  # [B, L] bool
        features = self.model.mlm.features(out.last_hidden_state[chosen])  # [N, H] -> [N, E]
        # the [N, V] logits are never kept in float32: projection, softmax and gradient fused, chunk by chunk
        loss, accuracy = linear_cross_entropy(features, self.model.embedding_weight, self.model.mlm.bias,
                                              labels[chosen])
        return loss, as_floats(mlm_loss=loss, mlm_acc=accuracy)
