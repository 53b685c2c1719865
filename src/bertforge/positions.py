"""Position information for the three families of positions the BERT family uses.

Small pure functions; the model calls them, tests check them against the papers' formulas.

- absolute learned positions (BERT, RoBERTa, ALBERT, ELECTRA, DistilBERT) live in ``modeling.Embeddings``;
  only RoBERTa's padding-offset position ids are computed here;
- NEZHA's functional relative positions (Wei et al., 2019, sec. 3.2): fixed sinusoids of the clipped
  relative distance j - i, added to the keys (in the scores) and to the values (in the context);
- rotary positions (RoFormer, Su et al., 2021): rotate each (x[2i], x[2i+1]) pair of queries and keys by
  the angle pos * 10000^(-2i/d).
"""

from __future__ import annotations

import math

import torch


def roberta_position_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """RoBERTa/fairseq positions: real tokens count from pad_token_id + 1, pad tokens sit at pad_token_id.

    input_ids: [B, L] -> [B, L] int64. Padding is read from the ids, as fairseq and transformers do.
    """
    not_pad = input_ids.ne(pad_token_id).long()
    return torch.cumsum(not_pad, dim=1) * not_pad + pad_token_id


def sinusoid_table(num_positions: int, depth: int) -> torch.Tensor:
    """The Transformer sinusoid table, interleaved: row p = [sin(p w_0), cos(p w_0), sin(p w_1), ...].

    w_i = 10000^(-2i/depth). Computed in float64 then rounded, so that it equals reference
    implementations bit for bit. -> [num_positions, depth] float32.
    """
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, depth, 2, dtype=torch.float64) * (-math.log(10000.0) / depth))
    table = torch.zeros(num_positions, depth, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)[:, : depth // 2]
    return table.float()


def nezha_relative_positions(length: int, depth: int, max_relative_position: int) -> torch.Tensor:
    """NEZHA's functional relative position encodings a_ij for a sequence of ``length`` tokens.

    a_ij = sinusoid(clip(j - i, -k, k) + k) with k = max_relative_position (the paper's eq. 4-5; the
    released code shifts the clipped distance by +k to index a (2k+1)-row sinusoid table, and so do we).
    -> [length, length, depth]: entry [i, j] is the encoding of key j as seen from query i.
    """
    idx = torch.arange(length)
    distance = idx[None, :] - idx[:, None]  # [L, L], [i, j] = j - i
    clipped = distance.clamp(-max_relative_position, max_relative_position) + max_relative_position
    table = sinusoid_table(2 * max_relative_position + 1, depth)
    return table[clipped]


def rotary_angles(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of the rotary angles for each position, repeated per pair.

    position_ids: [B, L] (or [L]) -> (sin, cos), each [B, 1, L, head_dim] with entries for pair i at
    2i and 2i+1 (RoFormer's interleaved layout, so released RoFormer weights work unchanged).
    Angles are formed in float64, as the reference builds its table with numpy.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    inv_freq = torch.pow(10000.0, -torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = position_ids.to(torch.float64).unsqueeze(-1) * inv_freq  # [B, L, d/2]
    # each angle twice, (a0, a0, a1, a1, ...): stack + flatten rather than repeat_interleave, whose ONNX
    # (TorchScript) symbolic corrupts the graph's shared -1 constant
    sin = torch.stack([torch.sin(angles)] * 2, dim=-1).flatten(-2).float().unsqueeze(1)  # [B, 1, L, d]
    cos = torch.stack([torch.cos(angles)] * 2, dim=-1).flatten(-2).float().unsqueeze(1)
    return sin, cos


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x: [B, h, L, d] by the angles whose sin/cos are given ([B, 1, L, d])."""
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape_as(x)  # (-x1, x0, -x3, x2, ...)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
