"""The fused vocabulary projection + cross-entropy (objectives.base.linear_cross_entropy) against the plain
composition F.linear -> classification_loss: values, gradients, chunking, bf16 autocast, underflow."""

import pytest
import torch
import torch.nn.functional as F

from bertforge.objectives import base
from bertforge.objectives.base import classification_loss, linear_cross_entropy


def inputs(n=9, e=6, v=50, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, e, generator=g, dtype=dtype) * scale).requires_grad_()
    weight = torch.randn(v, e, generator=g, dtype=dtype).requires_grad_()
    bias = (torch.randn(v, generator=g, dtype=dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, bias, targets


def loss_and_grads(fn, hidden, weight, bias, targets):
    for t in (hidden, weight, bias):
        t.grad = None
    loss, accuracy = fn(hidden, weight, bias, targets)
    loss.backward()
    return loss.detach(), accuracy, hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()


def reference(hidden, weight, bias, targets):
    return classification_loss(F.linear(hidden, weight, bias), targets)


@pytest.mark.parametrize("chunk_elements", [1 << 20, 100, 1])  # one chunk; 2 rows per chunk, uneven tail; 1 row
def test_equal_to_the_plain_composition_in_float32(monkeypatch, chunk_elements):
    monkeypatch.setattr(base, "_CHUNK_ELEMENTS", chunk_elements)
    args = inputs()
    ours, theirs = loss_and_grads(linear_cross_entropy, *args), loss_and_grads(reference, *args)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert 0 < ours[0] and 0 <= ours[1] <= 1


def test_gradcheck_in_float64_with_and_without_bias(monkeypatch):
    monkeypatch.setattr(base, "_CHUNK_ELEMENTS", 14)  # 2 rows per chunk of V 7
    hidden, weight, bias, targets = inputs(n=5, e=4, v=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, targets)[0], (hidden, weight, bias))
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, None, targets)[0], (hidden, weight))
    # the loss times an upstream gradient other than 1 (as when a combined objective weights it)
    assert torch.autograd.gradcheck(lambda h, w, b: 3.5 * linear_cross_entropy(h, w, b, targets)[0],
                                    (hidden, weight, bias))


def test_accuracy_counts_rows_whose_target_is_the_maximum():
    hidden = torch.eye(3)
    weight = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [1, 1, 1]])  # row i's maximum is class i
    _, accuracy = linear_cross_entropy(hidden, weight, None, torch.tensor([0, 1, 3]))
    assert accuracy.item() == pytest.approx(2 / 3)
    _, tie = linear_cross_entropy(torch.zeros(2, 3), weight, None, torch.tensor([0, 3]))
    assert tie.item() == 1.0  # every logit 0: a tie counts as correct, as in classification_loss


def test_a_target_whose_probability_underflows_keeps_a_finite_exact_loss():
    hidden, weight, bias, targets = inputs(n=4, v=30)
    with torch.no_grad():
        bias[targets[1]] = -250.0  # softmax probability exp(-250) is 0 in float32
    ours, theirs = loss_and_grads(linear_cross_entropy, hidden, weight, bias, targets), \
        loss_and_grads(reference, hidden, weight, bias, targets)
    assert torch.isfinite(ours[0]) and ours[0] > 60
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_is_close_to_autocast_of_the_composition():
    args = inputs(n=40, e=32, v=300, scale=0.3)
    with torch.autocast("cpu", torch.bfloat16):
        ours = loss_and_grads(linear_cross_entropy, *args)
        theirs = loss_and_grads(reference, *args)
    exact = loss_and_grads(reference, *args)  # float32
    assert abs(ours[0] - exact[0]) < 2e-2 and abs(ours[0] - theirs[0]) < 2e-2
    for a, b in zip(ours[2:], theirs[2:]):
        assert a.dtype == b.dtype == torch.float32  # gradients land in the parameters' dtype
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_no_grad_and_nothing_to_predict():
    hidden, weight, bias, targets = inputs()
    with torch.no_grad():
        loss, accuracy = linear_cross_entropy(hidden, weight, bias, targets)
    torch.testing.assert_close(loss, reference(hidden, weight, bias, targets)[0].detach())
    loss, accuracy = linear_cross_entropy(hidden[:0], weight, bias, targets[:0])
    loss.backward()  # still in the graph: a batch with nothing masked trains nothing and does not fail
    assert loss.item() == 0.0 and accuracy.item() == 0.0 and weight.grad.abs().sum() == 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_fused_sampling_draws_from_the_softmax_at_the_temperature(monkeypatch, temperature):
    """ELECTRA's generator samples from the chunks of the fused pass: a chi-square goodness-of-fit test (fixed
    seed) of 60,000 draws from one row of logits against softmax(logits / T), over many chunks; and the loss
    and gradients are those of linear_cross_entropy."""
    from scipy.stats import chisquare

    monkeypatch.setattr(base, "_CHUNK_ELEMENTS", 12 * 1000)  # 1,000 rows per chunk of V 12
    torch.manual_seed(0)
    hidden = torch.randn(1, 6).expand(60_000, -1).contiguous().requires_grad_()
    weight, bias = torch.randn(12, 6, requires_grad=True), torch.randn(12, requires_grad=True)
    targets = torch.randint(0, 12, (60_000,))
    loss, accuracy, draws = base.linear_cross_entropy_and_sample(hidden, weight, bias, targets, temperature)
    probs = torch.softmax((F.linear(hidden[0], weight, bias) / temperature).double(), -1).detach()
    counts = torch.bincount(draws, minlength=12).double()
    assert chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue > 0.01
    plain = loss_and_grads(linear_cross_entropy, hidden, weight, bias, targets)
    weight.grad = None
    loss.backward()
    torch.testing.assert_close(loss.detach(), plain[0])
    torch.testing.assert_close(accuracy, plain[1])
    torch.testing.assert_close(weight.grad, plain[3])
