"""Feature options for fine-tuning: ELMo scalar mix over layers, pooling, layer-wise lr decay, a frozen encoder.

- ``ScalarMix``: gamma * sum_j softmax(w)_j h_j over the embedding output and every layer's output
  (Peters et al., 2018, "Deep contextualized word representations", eq. 1), so a head can read the
  layers that suit its task (lower layers for syntax-like tagging, upper ones for semantics).
- ``mean_pool``: the mean of the non-padding token vectors (Sentence-BERT's default pooling).
- ``layerwise_lr_groups``: parameter groups whose lr shrinks by ``decay`` per layer going down
  (Howard & Ruder 2018 "discriminative fine-tuning"; Clark et al. 2020, ELECTRA, appendix), each
  group carrying ``lr_scale`` for the schedule to multiply.
- ``freeze_encoder``: the encoder as a fixed feature extractor; only what sits on top trains.
"""

from __future__ import annotations

import torch
from torch import nn

from .modeling import Encoder


class ScalarMix(nn.Module):
    """gamma * sum_j s_j h_j with s = softmax(w): one learned weight per hidden layer and one scale."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))  # uniform mix at start
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        """hidden_states: num_layers tensors [B, L, H] -> [B, L, H]."""
        if len(hidden_states) != self.weights.numel():
            raise ValueError(f"ScalarMix over {self.weights.numel()} layers got {len(hidden_states)}")
        s = self.weights.softmax(0)
        return self.gamma * torch.einsum("j,jblh->blh", s, torch.stack(tuple(hidden_states)))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """hidden [B, L, H], attention_mask [B, L] (1 = real token) -> [B, H], the mean over real tokens."""
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def freeze_encoder(encoder: Encoder) -> None:
    """No gradient into the encoder: its parameters stop requiring grad. Task models then run it under
    ``torch.no_grad`` in eval mode (no dropout), so features are deterministic and cheap."""
    for p in encoder.parameters():
        p.requires_grad_(False)


def layer_depths(model: nn.Module, encoder: Encoder) -> dict[int, int]:
    """id(parameter) -> depth: 0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for
    everything outside the encoder (pooler included, as the head's input). A module shared by several
    layers (ALBERT) gets the depth of the highest layer that runs it."""
    n = encoder.config.num_layers
    depth = {id(p): n + 1 for p in model.parameters()}
    for p in encoder.embeddings.parameters():
        depth[id(p)] = 0
    for i in range(n):
        for module in encoder.layer(i):
            for p in module.parameters():
                depth[id(p)] = i + 1
    return depth


def layerwise_lr_groups(model: nn.Module, encoder: Encoder, decay: float, weight_decay: float) -> list[dict]:
    """Trainable parameters grouped by (depth, decayed or not): ``lr_scale = decay ** (top - depth)``,
    so the head trains at the full lr, the top layer at decay x lr, ..., the embeddings at
    decay ** (num_layers + 1) x lr. 1-D tensors (biases, LayerNorms) get no weight decay, as in
    train.optim.param_groups. decay = 1 gives plain fine-tuning."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    depths = layer_depths(model, encoder)
    top = encoder.config.num_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        d, matrix = depths[id(p)], p.ndim >= 2
        group = groups.setdefault((d, matrix), {
            "params": [], "weight_decay": weight_decay if matrix else 0.0, "lr_scale": decay ** (top - d),
        })
        if not matrix:
            group["adapt"] = False  # LAMB's trust ratio skips 1-D tensors (train.optim)
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
