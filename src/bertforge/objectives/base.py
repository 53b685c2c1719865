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
from torch.autograd.function import once_differentiable

from .. import native
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


# Rows per chunk of the fused loss = this // V: [34, 30522] float32 is 4 MB, about the L2 of two cores, so
# each elementwise pass over a chunk reads cache, not DRAM. Measured at N 321, V 30522, E 128 (bf16, 2 cores,
# loss and all gradients): 46 ms against 69 unfused; chunks of 8 / 16 / 32 / 64 rows in a prototype 52 / 49 /
# 45 / 44 ms.
_CHUNK_ELEMENTS = 1 << 20
_TINY = 1e-30  # a target probability below this underflowed in float32; its loss is recomputed in log space


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of -log softmax(hidden @ weight.T + bias)[target], the number of rows whose target
    logit is the row maximum, and (``temperature`` not None) one draw per row from softmax(logits / T);
    the gradient of the sum is made in the same pass (see linear_cross_entropy)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype, temperature):
        n, v = targets.numel(), weight.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            grad = any(ctx.needs_input_grad[:3])
            wide = torch.promote_types(dtype, torch.float32)  # softmax and sums: float32, float64 in gradcheck
            device = hidden.device
            # One GEMM for all rows (per-chunk GEMMs measured slower). Each chunk's logits are then overwritten
            # in place by d(sum of losses)/d logits = softmax - one_hot(target), in the compute dtype: the
            # tensor autocast's own backward would feed its two GEMMs, without a second [N, V] allocation.
            logits = h @ w.t()  # [N, V]; the bias is added per chunk, in float32
            column = torch.zeros(v, dtype=wide, device=device)  # sum of softmax over rows
            rows = torch.arange(n, device=device)
            target_logit = logits[rows, targets].to(wide) + (0 if bias is None else bias[targets])
            top, target_p = torch.empty(n, dtype=wide, device=device), torch.empty(n, dtype=wide, device=device)
            samples = torch.empty(n if temperature is not None else 0, dtype=torch.long, device=device)
            step = min(max(1, _CHUNK_ELEMENTS // v), n)
            buffer = torch.empty(step, v, dtype=wide, device=device) if dtype != wide else None
            for start in range(0, n, step):
                stop = min(start + step, n)
                chunk = logits[start:stop]
                p = chunk if buffer is None else buffer[: stop - start].copy_(chunk)
                if bias is not None:
                    p.add_(bias)
                torch.amax(p, 1, out=top[start:stop])
                torch.ops.aten._softmax.out(p, 1, False, out=p)  # in place: no second chunk-sized buffer
                target_p[start:stop] = p[rows[: stop - start], targets[start:stop]]
                if temperature is not None:  # softmax(z / T) is proportional to softmax(z) ** (1 / T)
                    samples[start:stop] = sample_categorical(p if temperature == 1 else p.pow(1 / temperature))
                if grad:
                    if ctx.needs_input_grad[2]:
                        column += p.sum(0)
                    if p is not chunk:
                        chunk.copy_(p)
            losses = -target_p.log()
            far = (target_p < _TINY).nonzero()[:, 0]  # logit more than ~69 below the row's log-sum-exp
            if far.numel():
                z = (h[far] @ w.t()).to(wide) + (0 if bias is None else bias)
                losses[far] = torch.logsumexp(z, 1) - target_logit[far]
            correct = (target_logit >= top).sum()  # a tie counts as correct, as in classification_loss
            if grad:
                logits[rows, targets] = (target_p - 1).to(dtype)  # now the gradient, see above
                column.index_add_(0, targets, torch.full((n,), -1.0, dtype=wide, device=device))
                ctx.save_for_backward(logits, h, w)
                ctx.column, ctx.dtypes = column, (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(correct, samples)
        return losses.sum(), correct, samples

    @staticmethod
    @once_differentiable  # the gradient is precomputed: no double backward
    def backward(ctx, grad_loss, _grad_correct, _grad_samples):
        dlogits, h, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        dh = (dlogits @ w).to(ctx.dtypes[0]).mul_(grad_loss) if need[0] else None
        dw = (dlogits.t() @ h).to(ctx.dtypes[1]).mul_(grad_loss) if need[1] else None
        db = ctx.column * grad_loss if need[2] else None
        return dh, dw, db, None, None, None


class _LinearCrossEntropyColumns(torch.autograd.Function):
    """_LinearCrossEntropy for bf16 (sum of losses, count of correct rows, and with ``sample`` one draw per
    row from the softmax at temperature 1), with the logits laid out one column per row of ``hidden``
    ([V, N], W @ h.T) and the softmax pass in C (bertforge.native).

    Why: the three vocabulary GEMMs run much faster in this layout. At N 2,552, E 128, V 30,522 (2 cores,
    AMX bf16), h @ W.T, the [N, V] orientation, ran at ~100-170 GFLOP/s (its 156 MB output leaves the
    cache) while W @ h.T ran at ~510; the weight gradient likewise ~250 -> ~580 GFLOP/s. But a softmax down
    the columns of [V, N] is slow in PyTorch (82-193 ms per 512 tokens, against 29 along rows), and no
    library offers one, hence the C kernel: a pass that finds each column's maximum and sum of exponentials
    chunk by chunk, then one that writes softmax - one-hot over the logits. Measured in a tiny-model MLM step
    (bf16, 2 threads, paired in one process): 0.84x the time at 32 sequences, 0.85x at 256 (docs/PERFORMANCE.md)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, lib, sample):
        n, e = hidden.shape
        with torch.autocast("cpu", enabled=False):
            # padding columns: zero rows of h, so their logits are the bias alone, and the kernel zeroes
            # their gradient; the padded h then serves the weight gradient GEMM as it is
            width = -(-n // native.COLUMN_ALIGN) * native.COLUMN_ALIGN
            h = hidden.new_zeros((width, e), dtype=torch.bfloat16)
            h[:n] = hidden
            w = weight.to(torch.bfloat16)
            logits_t = w @ h.t()  # [V, width]
            b = None if bias is None else bias.detach().float().contiguous()
            # one uniform number per row, drawn as sample_categorical draws them (same generator, same count)
            uniform = torch.rand(n, device=hidden.device) if sample else None
            out = native.vocab_loss(logits_t, n, b, targets.long().contiguous(), lib, uniform=uniform)
            losses, top, target_logit, column = out[:4]
            samples = out[4] if sample else torch.empty(0, dtype=torch.long)
            correct = (target_logit >= top).sum()  # a tie counts as correct, as in classification_loss
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(logits_t, h, w)  # logits_t now holds the gradient of the summed loss
            ctx.column, ctx.n, ctx.dtypes = column, n, (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(correct, samples)
        return losses.sum(), correct, samples

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_correct, _grad_samples):
        dlogits_t, h, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        dh = (dlogits_t.t() @ w)[: ctx.n].to(ctx.dtypes[0]).mul_(grad_loss) if need[0] else None
        dw = (dlogits_t @ h).to(ctx.dtypes[1]).mul_(grad_loss) if need[1] else None
        db = ctx.column * grad_loss if need[2] else None
        return dh, dw, db, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``classification_loss(F.linear(hidden, weight, bias), targets)`` without its [N, V] float32 tensors.

    hidden [N, E], weight [V, E], bias [V] or None, targets [N] -> (mean cross-entropy, accuracy). For the
    vocabulary-wide output of the MLM / SBO heads: unfused, the logits, float32 log-softmax, its backward,
    the casts and the zero-filled gradient each stream the whole [N, V] array through memory (at V 30,522
    that was half of a tiny model's training step). Here the logits are one GEMM in the compute dtype
    (autocast's, else the weight's); then each chunk of rows gets the bias, softmax and its gradient while
    it is in cache, written over its logits (softmax - one-hot, in the compute dtype); backward is two
    GEMMs. PyTorch has no fused linear + cross-entropy for CPU (Liger's and Apple's cut-cross-entropy are
    Triton, GPU only), hence this. In bf16 with bertforge.native's kernels built, the logits are laid out
    the other way and the softmax pass runs in C (_LinearCrossEntropyColumns). Off the CPU, and with
    nothing to predict, it is the plain composition.
    Accuracy compares float32 logits (bias added in float32, not bf16 as inside autocast's addmm), so a
    tie can resolve differently than in classification_loss.
    """
    return _fused(hidden, weight, bias, targets, None)[:2]


def linear_cross_entropy_and_sample(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                    targets: torch.Tensor, temperature: float = 1.0
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear_cross_entropy, plus one draw per row from softmax(logits / temperature) -> [N] int64 (ELECTRA's
    generator), taken from each chunk's softmax while it is in cache. No gradient flows through the draws."""
    return _fused(hidden, weight, bias, targets, float(temperature))


def _fused(hidden, weight, bias, targets, temperature):
    n = targets.numel()
    if hidden.device.type != "cpu" or n == 0:
        logits = F.linear(hidden, weight, bias)
        loss, accuracy = classification_loss(logits, targets)
        if temperature is None:
            return loss, accuracy, None
        with torch.no_grad():
            return loss, accuracy, sample_categorical(torch.softmax(logits.detach().float() / temperature, -1))
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    if dtype == torch.bfloat16 and temperature in (None, 1.0):  # the kernel samples at temperature 1 only
        out = _columns(hidden, weight, bias, targets, temperature is not None)
        if out is not None:
            loss, correct, samples = out
            return loss / n, correct / n, samples if temperature is not None else None
    loss, correct, samples = _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, temperature)
    return loss / n, correct / n, samples


# Run as is under torch.compile: dynamo cannot trace the ctypes calls, so it compiled the pieces between them,
# and inductor's code for those failed at run time once N varied (as the number of masked tokens does):
# "NameError: name 's26' is not defined" in an ELECTRA step with compile=true.
@torch.compiler.disable
def _columns(hidden, weight, bias, targets, sample):
    """_LinearCrossEntropyColumns (sum of losses, correct count, samples), or None without the kernels."""
    lib = native.library()
    # out-of-range targets: the PyTorch path raises IndexError for them; C would read out of bounds
    if lib is None or not (0 <= int(targets.min()) and int(targets.max()) < weight.shape[0]):
        return None
    return _LinearCrossEntropyColumns.apply(hidden, weight, bias, targets, lib, sample)


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs`` [N, V] (rows need not be normalised) by inverting the CDF: one uniform
    number per row, a cumulative sum and a binary search. torch.multinomial draws an exponential random
    number for every vocabulary entry of every row instead, which made it 6-35% of an ELECTRA step on CPU;
    this is ~10x cheaper and exact up to float32 rounding of the cumulative sum."""
    cdf = probs.cumsum(-1)  # [N, V]
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]  # [N, 1] in [0, total)
    # right=True: the first entry whose cdf exceeds u, so zero-probability entries are never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


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
