"""Optimizers (AdamW, LAMB) and the learning-rate schedule.

LAMB is written here because no maintained CPU implementation exists (NVIDIA apex's FusedLAMB is
CUDA-only, and torch.optim has none). The schedule is a pure function of the run's counters, so it needs
no state of its own in a checkpoint: the step, token and clock counters saved there determine it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with a layer-wise trust ratio (You et al., 2020, "Large Batch Optimization for
    Deep Learning: Training BERT in 76 minutes", Algorithm 2).

    For each parameter tensor x (a "layer") with gradient g, at step t:
        m = beta1 m + (1 - beta1) g                v = beta2 v + (1 - beta2) g^2
        m^ = m / (1 - beta1^t)                     v^ = v / (1 - beta2^t)        (bias_correction)
        r = m^ / (sqrt(v^) + eps) + lambda x       (decoupled weight decay inside the update)
        x = x - lr * (||x|| / ||r||) * r           (trust ratio 1 when either norm is 0)
    A param group with ``adapt=False`` skips the trust ratio (plain AdamW-style step): the reference
    implementations (Google's ALBERT ``exclude_from_layer_adaptation``, NVIDIA's FusedLAMB without
    ``use_nvlamb``) exclude biases and LayerNorm weights from adaptation as well as from weight decay.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, bias_correction: bool = True, adapt: bool = True):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
                else:
                    m_hat, v_hat = m, v
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                ratio = 1.0
                if group["adapt"]:
                    w_norm, u_norm = p.norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (group["lr"] * ratio))
        return loss


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (weights, embeddings) with weight decay; 1-D tensors (biases, LayerNorm gains
    and shifts, the MLM output bias) without it, and without LAMB's trust ratio. This is BERT's rule
    (``exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]``), decided by shape instead of by name
    so it holds for every module in the family. Frozen parameters (a distillation teacher) are left out."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(module, config.weight_decay)
    if config.optimizer == "lamb":
        return Lamb(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    for g in groups:
        g.pop("adapt", None)
    params = [p for g in groups for p in g["params"]]
    # The fused kernel updates all tensors in one pass (about 8x faster than the per-tensor loop on CPU,
    # measured on a small model); it needs floating-point parameters on a CPU or CUDA device.
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


def progress(config: TrainConfig, step: int, tokens: int, seconds: float) -> float:
    """Fraction of the budget used, in [0, 1]: the largest of steps, tokens and minutes used so far."""
    fractions = [0.0]
    if config.max_steps:
        fractions.append(step / config.max_steps)
    if config.max_tokens:
        fractions.append(tokens / config.max_tokens)
    if config.max_minutes:
        fractions.append(seconds / (60 * config.max_minutes))
    return min(1.0, max(fractions))


def lr_multiplier(config: TrainConfig, step: int, p: float) -> float:
    """Multiplier of the peak lr for the update after ``step`` completed steps, at budget progress ``p``.

    Google BERT's schedule (optimization.py): linear warmup from 0, then a polynomial decay computed
    from the start of the run, ``(1 - p) ** power`` (linear when power = 1). Warmup is counted in steps,
    or as a fraction of the budget when warmup_steps is 0.
    """
    if config.warmup_steps and step < config.warmup_steps:
        return step / config.warmup_steps
    if not config.warmup_steps and p < config.warmup_ratio:
        return p / config.warmup_ratio
    if config.decay == "constant":
        return 1.0
    power = 1.0 if config.decay == "linear" else config.power
    return math.pow(max(0.0, 1.0 - p), power)
