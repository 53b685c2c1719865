"""Inference fast path: length bucketing, bf16 (AMX) and int8 weights, sensible threads.

- ``prepare(model, precision)``: an eval-mode copy for inference. "bf16" casts weights and activations to
  bfloat16, so oneDNN runs its AMX bf16 kernels on CPUs that have them (Sapphire Rapids and later; check
  with ONEDNN_VERBOSE=1, docs/PERFORMANCE.md), with every linear's weight laid out for them once
  (PackedLinear) instead of at every call; "int8" is PyTorch's dynamic quantization of every
  nn.Linear (int8 weights per output channel, activations quantized per batch; Jacob et al., 2018): an
  approximation (MiniLM sentence embeddings keep cosine 0.94-0.98 to fp32, tests/test_fast.py); "fp32" is
  the model, its linears packed for short inputs (PackedLinear).
- ``bucketed(forward, input_ids)``: sorts the items by length, runs batches of similar lengths (each
  padded only to its own longest, a multiple of 8), and returns each item's output row in input order.
  Padding is one numpy scatter per batch: no per-token Python work.

Hooking it into a pipeline: replace "tokenize the batch with padding=True, call the model" with
``bucketed(lambda ids, mask, types: model(ids, mask, types).last_hidden_state, enc["input_ids"],
enc["token_type_ids"], pad_id=tok.pad_token_id)`` over the unpadded encodings of *all* inputs.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BertforgeError
from ..modeling import ACTIVATIONS, Encoder, FeedForward

Precision = Literal["fp32", "bf16", "int8"]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def set_threads(num_threads: int | None = None) -> int:
    """Use one intra-op thread per core this process may run on (oversubscribing cores only adds
    contention); returns the count set."""
    n = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def prepare(model: nn.Module, precision: Precision = "fp32", *, inplace: bool = False,
            compile: bool = False, dynamic: bool = True) -> nn.Module:
    """An eval-mode inference copy of ``model`` at ``precision`` (the original is left untouched unless
    ``inplace``: then it is converted itself, which saves a copy of the weights when loading).

    ``compile``: torch.compile (inductor) of the encoder with weight *freezing*: under no_grad, inductor
    treats the weights as constants, folds them and pre-packs them in oneDNN's blocked layout once,
    instead of every call re-laying them out for the AMX/AVX-512 kernels, and fuses the element-wise work
    (GELU, LayerNorm, residual adds) into the GEMMs' epilogues. ``dynamic`` (default): one graph for every
    batch size >= 2 and length, plus one for batch size 1; both are compiled here, on a dummy batch, so a
    server's first request does not wait (MiniLM ~60 s on one core, BERT-base ~40 s on two; inductor
    caches them on disk for the next start). ``dynamic=False``: one graph per input shape, compiled at its
    first call: ~15% faster at a fixed shape (BERT-base bf16 batch 1 x 128: 54 vs 64 ms; eager 98 ms), for
    fixed-shape jobs. Measured in docs/PERFORMANCE.md. A model with an ``encoder`` attribute (task models,
    the masked-LM model) gets only its encoder compiled: the heads are cheap and some (the CRF's Viterbi
    loop) do not trace."""
    if precision not in ("fp32", "bf16", "int8"):
        raise BertforgeError(f"precision={precision!r}: expected 'fp32', 'bf16' or 'int8'")
    model = unpack_linears((model if inplace else copy.deepcopy(model)).eval())  # a prepared model again
    if compile:
        if precision == "int8":
            raise BertforgeError("compile=True works with fp32 and bf16; int8 dynamic quantization does not compile")
        return _compiled(_bf16(model) if precision == "bf16" else model, dynamic)  # inductor packs its own weights
    if precision == "bf16":
        return pack_linears(_bf16(model))
    if precision == "fp32":
        return pack_linears(model)
    if precision == "int8":
        # Per-output-channel weight scales: per-tensor scales cost MiniLM's embeddings ~3 points of cosine.
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            # from float32: a bf16 model's int8 layers would get bf16 inputs, which they refuse
            return quantize_dynamic(model.float(), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model


def _bf16(model: nn.Module) -> nn.Module:
    model = model.to(torch.bfloat16)
    for module in model.modules():
        if getattr(module, "keep_fp32", False):  # e.g. the CRF: its scores accumulate along a sentence
            module.float()
    return model


# float32 rows (batch x tokens) up to which the packed kernel beats F.linear (MKL sgemm). BERT-base batch 1 on
# 2 cores: 12 tokens 47 vs 73 ms, 32 tokens 75 vs 92 ms, 128 tokens 235 vs 200 ms (slower); per-layer GEMMs
# measured faster up to 96 rows with the weights in cache. bf16 is packed at every size (never slower).
FP32_PACKED_ROWS = 64

# Rows up to which the exact (erf) GELU runs inside the GEMM as oneDNN's post-op (bf16, 2 cores: BERT-base's
# 768 -> 3072 at 12 rows 0.54 vs 0.69 ms with a separate F.gelu, at 128 rows 1.61 vs 1.78 ms); on bigger
# blocks oneDNN's erf epilogue is the slower one (MiniLM's 384 -> 1536 at 4096 rows: 14.0 vs 12.2 ms). The
# tanh approximation is always fused: aten's tanh GELU is slow (4096 rows: 15.2 fused vs 24.2 ms).
FUSED_ERF_GELU_ROWS = 256


# Activation function (as modeling.FeedForward holds it) -> oneDNN's GELU algorithm for it.
_GELU_ALGORITHM: dict[Callable, str] = {ACTIVATIONS["gelu"]: "none", ACTIVATIONS["gelu_new"]: "tanh"}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class PackedLinear(nn.Linear):
    """nn.Linear for inference on CPU whose weight oneDNN lays out in its blocked (AMX / AVX-512) format once.

    F.linear hands oneDNN a plain row-major weight, which it re-lays out on every call: at batch 1 that is
    as much memory traffic as the GEMM itself (BERT-base's per-token bf16 GEMMs alone: 67 ms per forward at
    128 tokens via F.linear, 48 ms pre-packed; benchmarks/fast_paths.py). This calls the same kernels
    inductor uses after weight freezing (mkldnn._reorder_linear_weight, mkldnn._linear_pointwise), without
    compiling. bf16 results equal F.linear's (bit for bit at batch 1 here; at larger batches oneDNN may pick
    another kernel and round differently); float32 ones differ in summation order (~5e-6 at BERT-base's
    output) and are used only up to FP32_PACKED_ROWS rows. The packed copy is an opaque oneDNN
    tensor, cached here (not in the state_dict) and re-made when the weight is replaced or modified in place;
    ``weight`` and ``bias`` stay ordinary parameters. Anything else (gradients, tracing or export, another
    device, a mismatched dtype) runs F.linear."""

    _packed: torch.Tensor | None = None
    _key: tuple | None = None
    # The activation applied to this layer's output (a FeedForward's up-projection; set by pack_linears):
    # fused into the GEMM where it pays, applied after F.linear wherever the packed kernel is not used.
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "PackedLinear":
        return _sharing(cls, linear)

    def _usable(self, x: torch.Tensor) -> bool:  # ~5 us: cheapest tests first
        w = self.weight
        if not x.is_cpu or x.dtype != w.dtype or torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return False
        if w.dtype == torch.float32:
            if x.numel() > FP32_PACKED_ROWS * x.shape[-1]:
                return False
        elif w.dtype != torch.bfloat16:
            return False
        # a traced, exported (torch.export: is_compiling; the TorchScript ONNX exporter: is_tracing) or compiled
        # graph must not capture the opaque packed weight
        return not (torch.jit.is_tracing() or torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.activation
        if not self._usable(x):
            y = nn.functional.linear(x, self.weight, self.bias)
            return y if act is None else act(y)
        key = (self.weight.data_ptr(), self.weight._version)
        if key != self._key:
            # 128: the batch-size hint inductor's dynamic-shape path also passes; any M runs (measured 1-300)
            self._packed, self._key = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 128), key
        algorithm = _GELU_ALGORITHM.get(act) if act is not None else None
        if algorithm and (algorithm == "tanh" or x.numel() <= FUSED_ERF_GELU_ROWS * x.shape[-1]):
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "gelu", [], algorithm)
        y = torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
        return y if act is None else act(y)

    def __getstate__(self):  # copy.deepcopy / pickle: an opaque oneDNN tensor has no storage to copy; re-pack
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_key")}


def _sharing(cls: type[nn.Linear], linear: nn.Linear) -> nn.Linear:
    """A ``cls`` (nn.Linear or PackedLinear) holding ``linear``'s own weight and bias parameters."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.in_features, new.out_features = linear.in_features, linear.out_features
    new.weight, new.bias = linear.weight, linear.bias
    return new


def _swap_linears(model: nn.Module, wanted: Callable[[nn.Module], bool], cls: type[nn.Linear]) -> nn.Module:
    """Replace (in place) every submodule for which ``wanted`` holds by a ``cls`` sharing its parameters."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, _sharing(cls, child))
    return model


def pack_linears(model: nn.Module) -> nn.Module:
    """Swap every CPU bf16 / float32 nn.Linear of ``model`` for a PackedLinear (in place), for each dtype
    whose packed linear this CPU's oneDNN runs (probed once; bf16 needs AVX-512 / AMX support)."""
    if not torch.backends.mkldnn.is_available():
        return model
    usable = set()
    for dtype in (torch.bfloat16, torch.float32):
        try:
            probe = PackedLinear.from_linear(nn.Linear(8, 8, dtype=dtype).requires_grad_(False))
            with torch.no_grad():
                probe(torch.zeros(1, 8, dtype=dtype))
            usable.add(dtype)
        except RuntimeError:  # oneDNN could not create the primitive on this CPU
            pass
    _swap_linears(model, lambda m: type(m) is nn.Linear and m.weight.dtype in usable
                  and m.weight.device.type == "cpu", PackedLinear)
    # Each feed-forward's GELU moves into its up-projection, where oneDNN can apply it inside the GEMM.
    for ffn in model.modules():
        if isinstance(ffn, FeedForward) and isinstance(ffn.up, PackedLinear) and ffn.act in _GELU_ALGORITHM:
            ffn.up.activation, ffn.act = ffn.act, _identity
    return model


def unpack_linears(model: nn.Module) -> nn.Module:
    """PackedLinear -> nn.Linear (in place, sharing the parameters; fused activations back in place): what
    quantization and compilation expect."""
    for ffn in model.modules():
        if isinstance(ffn, FeedForward) and isinstance(ffn.up, PackedLinear) and ffn.up.activation is not None:
            ffn.act = ffn.up.activation
    return _swap_linears(model, lambda m: isinstance(m, PackedLinear), nn.Linear)


def _compiled(model: nn.Module, dynamic: bool) -> nn.Module:
    import torch._inductor.config as inductor_config

    # A process-wide inductor switch; it only changes graphs compiled without gradients (inference).
    inductor_config.freezing = True
    # The encoder asks whether a mask holds packed sequences (a data-dependent ``.item()``): dynamo splits the
    # graph there, once per forward, by design. Its multi-line warning about it would greet every server start.
    logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)
    if isinstance(model, Encoder):
        model = encoder = torch.compile(model, dynamic=dynamic)
    elif isinstance(getattr(model, "encoder", None), Encoder):
        encoder = model.encoder = torch.compile(model.encoder, dynamic=dynamic)
    else:
        raise BertforgeError(f"compile=True needs an Encoder or a model with an .encoder, not {type(model).__name__}")
    if dynamic:  # compile both graphs now: batch size 1 (torch specializes on it) and the general one
        with torch.inference_mode():
            for batch in (1, 2):
                ids = torch.zeros(batch, 8, dtype=torch.long)
                encoder(ids, torch.ones_like(ids), torch.zeros_like(ids))
    return model


def bucketed(forward: Forward, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None
             = None, *, pad_id: int = 0, batch_size: int = 32, pad_to_multiple_of: int = 8) -> list[torch.Tensor]:
    """Run ``forward(input_ids [b, L], attention_mask [b, L], token_type_ids [b, L]) -> [b, ...]`` over
    length-sorted batches; returns one output row per item, in input order, as float32. Token-level rows
    are [L_batch, ...] with the item's tokens first (its length is len(input_ids[i]))."""
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    if len(lengths) and lengths.min() == 0:
        raise BertforgeError(f"input {int(np.argmin(lengths))} has no tokens")
    order = np.argsort(lengths, kind="stable")
    flat_ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in input_ids]) if len(lengths) else np.zeros(0)
    flat_types = (np.concatenate([np.asarray(x, dtype=np.int64) for x in token_type_ids])
                  if token_type_ids is not None else np.zeros_like(flat_ids))
    starts = np.cumsum(lengths) - lengths
    out: list[torch.Tensor | None] = [None] * len(lengths)
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            items = order[b0:b0 + batch_size]
            n = lengths[items]
            width = -(-int(n.max()) // pad_to_multiple_of) * pad_to_multiple_of
            real = np.arange(width) < n[:, None]  # [b, W]
            src = (starts[items][:, None] + np.arange(width))[real]
            ids = np.full((len(items), width), pad_id, dtype=np.int64)
            types = np.zeros((len(items), width), dtype=np.int64)
            ids[real], types[real] = flat_ids[src], flat_types[src]
            result = forward(torch.from_numpy(ids), torch.from_numpy(real.astype(np.int64)), torch.from_numpy(types))
            for i, row in zip(items.tolist(), result.float().unbind(0)):
                out[i] = row
    return out  # type: ignore[return-value]
