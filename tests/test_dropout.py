"""The CPU dropout mask (modeling.dropout): rate, scaling, independence, gradient, seeding."""

import math

import pytest
import torch

from bertforge.config import ModelConfig
from bertforge.modeling import Dropout, Encoder, dropout, dropout_keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_mask_rate_and_scale(dtype):
    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    keep = dropout_keep((1000, 1000), p, dtype)
    assert keep.dtype == dtype and keep.shape == (1000, 1000)
    values = set(keep.unique().tolist())
    assert values == {0.0, float(torch.tensor(1 / (1 - p), dtype=dtype))}
    dropped = int((keep == 0).sum())
    # p is rounded to a multiple of 1/65536; the count is Binomial(n, p'): within 5 standard errors
    p_eff = round(p * 65536) / 65536
    assert abs(dropped - n * p_eff) < 5 * math.sqrt(n * p_eff * (1 - p_eff))


def test_mask_elements_are_independent():
    """Neighbouring elements come from the same 64-bit draw (4 per draw): their drops must still be
    independent. P(both dropped) = p^2 for pairs within a draw and across draws, within 5 SE."""
    torch.manual_seed(1)
    p, n = 0.3, 2_000_000
    drop = (dropout_keep((n,), p, torch.float32) == 0).view(-1, 4)
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (drop[:, a] & drop[:, b]).double().mean().item()
        se = math.sqrt(p * p * (1 - p * p) / drop.shape[0])
        assert abs(both - p * p) < 5 * se, (a, b, both)
    across = (drop[:-1, 3] & drop[1:, 0]).double().mean().item()
    assert abs(across - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / drop.shape[0])


def test_expectation_gradient_and_identity():
    torch.manual_seed(0)
    x = torch.randn(400, 500, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert abs(y.mean().item() - x.mean().item()) < 0.02  # E[dropout(x)] = x
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_seeded_by_torch():
    torch.manual_seed(5)
    a = dropout_keep((64, 64), 0.1, torch.float32)
    torch.manual_seed(5)
    b = dropout_keep((64, 64), 0.1, torch.float32)
    c = dropout_keep((64, 64), 0.1, torch.float32)
    assert torch.equal(a, b) and not torch.equal(b, c)
    state = torch.get_rng_state()
    d = dropout_keep((64, 64), 0.1, torch.float32)
    torch.set_rng_state(state)  # a checkpoint's saved RNG state replays the same masks (exact resume)
    assert torch.equal(d, dropout_keep((64, 64), 0.1, torch.float32))


def test_encoder_in_training_mode_is_reproducible_and_drops():
    config = ModelConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position_embeddings=64, hidden_dropout=0.1, attention_dropout=0.1)
    model = Encoder(config).train()
    ids = torch.randint(0, 100, (3, 16))
    mask = torch.ones_like(ids)
    torch.manual_seed(0)
    a = model(ids, mask).last_hidden_state
    torch.manual_seed(0)
    b = model(ids, mask).last_hidden_state
    c = model(ids, mask).last_hidden_state
    assert torch.equal(a, b) and not torch.allclose(b, c)
    assert isinstance(model.embeddings.dropout, Dropout)
    model.eval()
    assert torch.equal(model(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)
