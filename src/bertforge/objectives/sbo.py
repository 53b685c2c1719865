"""SpanBERT's span boundary objective (Joshi et al., 2020, sec. 3.2).

For a masked span (x_s, ..., x_e) each token x_i is predicted from the encoder outputs of the two tokens
just outside the span and the target's position inside it: y_i = f(x_{s-1}, x_{e+1}, p_{i-s+1}),
L_SBO = -1/N sum_i log p(x_i | y_i). SpanBERT trains L_MLM + L_SBO: use objectives ("mlm", "sbo").
The head only ever sees the gathered boundary vectors, never a vector from inside the span.
"""

from __future__ import annotations

import torch

from ..errors import BertforgeError
from ..modeling import EncoderOutput
from .base import Batch, HeadObjective, as_floats, linear_cross_entropy, require


class SBOObjective(HeadObjective):
    """Span boundary objective on the batch's span_left / span_right / span_position. Metrics: sbo_loss, sbo_acc."""

    name = "sbo"
    head = "sbo"
    batch_keys = ("input_ids", "mlm_labels", "span_left", "span_right", "span_position")

    def terms(self, out: EncoderOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        require(batch, self.batch_keys, self.name)
        h = out.last_hidden_state  # [B, L, H]
        position = batch["span_position"]  # [B, L], -1 outside spans
        inside = position >= 0  # [B, L] bool: the N span tokens to predict
        rows = inside.nonzero(as_tuple=True)[0]  # [N] batch index of each target
        left = h[rows, batch["span_left"][inside]]  # [N, H] = x_{s-1}
        right = h[rows, batch["span_right"][inside]]  # [N, H] = x_{e+1}
        relative = position[inside]  # [N]
        longest = self.model.sbo.max_span_length
        if relative.numel() and int(relative.max()) >= longest:
            raise BertforgeError(
                f"objective 'sbo': span_position {int(relative.max())} is outside the head's table of "
                f"{longest} positions; set MaskingConfig.sbo_max_targets <= {longest}"
            )
        features = self.model.sbo.features(left, right, relative)  # [N, E]; its [N, V] logits fused into the loss
        loss, accuracy = linear_cross_entropy(features, self.model.embedding_weight, self.model.sbo.bias,
                                              batch["mlm_labels"][inside])
        return loss, as_floats(sbo_loss=loss, sbo_acc=accuracy)
