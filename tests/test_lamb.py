"""LAMB against an independent numpy implementation of the paper's update (You et al., 2020, Algorithm 2)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bertforge.train import Lamb, TrainConfig, build_optimizer
from bertforge.train.optim import param_groups


def reference_lamb(x, grads, lr, beta1, beta2, eps, wd, adapt):
    """Algorithm 2 written out in float64 numpy, one layer: returns x after len(grads) steps."""
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        r = m_hat / (np.sqrt(v_hat) + eps) + wd * x
        w_norm, r_norm = np.linalg.norm(x), np.linalg.norm(r)
        trust = w_norm / r_norm if adapt and w_norm > 0 and r_norm > 0 else 1.0
        x = x - lr * trust * r
    return x


def test_lamb_matches_the_paper_update_over_several_steps():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(5, 3)), rng.normal(size=3) * 0.1
    steps = 6
    w_grads = [rng.normal(size=(5, 3)) * s for s in np.linspace(0.5, 2.0, steps)]
    b_grads = [rng.normal(size=3) for _ in range(steps)]
    lr, betas, eps, wd = 0.05, (0.9, 0.999), 1e-6, 0.01

    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    b = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = Lamb([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0, "adapt": False}],
               lr=lr, betas=betas, eps=eps)
    for gw, gb in zip(w_grads, b_grads):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()

    np.testing.assert_allclose(w.detach().numpy(), reference_lamb(w0, w_grads, lr, *betas, eps, wd, True),
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.detach().numpy(), reference_lamb(b0, b_grads, lr, *betas, eps, 0.0, False),
                               atol=1e-6, rtol=0)
    # The trust ratio matters: plain Adam with decoupled decay lands elsewhere.
    assert np.abs(w.detach().numpy() - reference_lamb(w0, w_grads, lr, *betas, eps, wd, False)).max() > 1e-3


def test_float32_lamb_matches_the_reference_on_a_small_regression():
    """Whole optimisation on a least-squares problem: gradients come from the model itself, in float32."""
    rng = np.random.default_rng(1)
    xs, ys = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    w0 = rng.normal(size=(4, 2)) * 0.5
    lr, betas, eps, wd, steps = 0.02, (0.9, 0.99), 1e-6, 0.1, 8

    w = nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = Lamb([w], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    x_t, y_t = torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)
    for _ in range(steps):
        opt.zero_grad()
        ((x_t @ w - y_t) ** 2).mean().backward()
        opt.step()

    ref, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t in range(1, steps + 1):
        g = 2 * xs.T @ (xs @ ref - ys) / ys.size
        m, v = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
        r = (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps) + wd * ref
        ref = ref - lr * np.linalg.norm(ref) / np.linalg.norm(r) * r
    np.testing.assert_allclose(w.detach().numpy(), ref, atol=1e-6, rtol=0)


def test_trust_ratio_is_one_for_a_zero_weight():
    w = nn.Parameter(torch.zeros(4, 4))
    opt = Lamb([w], lr=0.1, weight_decay=0.01)
    w.grad = torch.ones(4, 4)
    opt.step()
    # ||w|| = 0: trust ratio 1, so the first step is lr * m^/(sqrt(v^) + eps) = 0.1 * 1 / (1 + 1e-6).
    torch.testing.assert_close(w.detach(), torch.full((4, 4), -0.1 / (1 + 1e-6)))


def test_weight_decay_and_adaptation_skip_biases_and_layernorm():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Embedding(10, 8))
    model[2].weight.requires_grad_(False)  # frozen weights are not optimised at all
    decay, no_decay = param_groups(model, 0.01)
    assert [tuple(p.shape) for p in decay["params"]] == [(8, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(8,), (8,), (8,)]
    assert (decay["weight_decay"], no_decay["weight_decay"], no_decay["adapt"]) == (0.01, 0.0, False)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="lamb")), Lamb)
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", betas=(0.9, 0.98)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.98)


def test_lamb_state_round_trips():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = Lamb(a.parameters(), lr=0.01), Lamb(b.parameters(), lr=0.01)
    x = torch.randn(8, 3)
    a(x).sum().backward()
    opt_a.step()
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no shared tensors
    b.load_state_dict(a.state_dict())
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError):
        Lamb(a.parameters(), betas=(0.9, 1.5))
