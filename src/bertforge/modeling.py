"""THE bertforge encoder: embeddings, attention, feed-forward, the layer stack. Read top to bottom.

One post-LN Transformer encoder (Devlin et al., 2019) serves the whole family. What varies is data in
``ModelConfig``:

- factorized embeddings (ALBERT, ELECTRA): tokens are embedded at width E and projected to H;
- positions: learned absolute (BERT/RoBERTa), NEZHA functional relative, RoFormer rotary;
- cross-layer sharing (ALBERT): a *plan* says which attention and feed-forward module each layer uses;
  forward never branches on the sharing mode.

Shapes: B batch, L sequence length, H hidden size, E embedding size, h heads, d = H / h head size.
Rows packed with several sequences carry sequence numbers (1, 1, 2, 2, 0) in their [B, L] attention mask:
attention becomes block-diagonal and positions restart per sequence, so no compute goes to padding and a
packed sequence gets exactly the output it would get alone.
Attention runs through ``F.scaled_dot_product_attention`` (the fast path) or a plain eager path that
tests hold equal to it; NEZHA's value-side relative term needs the attention probabilities, so it always
takes the eager path. q, k and v come from one fused H -> 3H projection (one GEMM instead of three);
the checkpoint converters split and join it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .positions import apply_rotary, nezha_relative_positions, roberta_position_ids, rotary_angles

AttentionImpl = Literal["sdpa", "eager"]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, as in BERT's released code
    "gelu_new": _gelu_tanh,  # tanh approximation (GPT-2, ALBERT)
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


# Dropout on CPU. torch draws a dropout mask with ``bernoulli_``, one Mersenne-Twister number per element on
# one thread: in a small bf16 pretraining step that was 21% of the time (267 ms of 1,293; profile in
# docs/PERFORMANCE.md), more than the feed-forward GEMMs. numpy's SFC64 bit generator yields 64 random bits
# in under a nanosecond; each 16-bit slice is one uniform draw, so a mask costs ~1/10 of bernoulli_. The
# generator is seeded from torch's own generator at every call, so torch.manual_seed and a checkpoint's
# saved RNG state still make a run reproducible and exactly resumable. The drop probability is p rounded
# to a multiple of 1/65536 (0.1 -> 0.100006). On other devices (CUDA), and inside torch.compile, torch's
# own dropout is used.
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@functools.lru_cache(maxsize=None)
def _kept_bits(p: float, dtype: torch.dtype) -> np.unsignedinteger:
    """The bit pattern of 1/(1-p) in ``dtype``, as the unsigned integer of the same width."""
    bits = torch.tensor(1.0 / (1.0 - p), dtype=dtype).view(getattr(torch, f"int{dtype.itemsize * 8}")).item()
    return _UINT[dtype.itemsize](bits & (2 ** (dtype.itemsize * 8) - 1))


def dropout_keep(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of ``shape``: 1/(1-p) where an element is kept, 0 where dropped (probability p)."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    draws = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]  # n uniform 16-bit draws
    # 0/1 times the bit pattern of 1/(1-p): the scaled mask in one numpy pass, no float math
    mask = (draws >= np.uint16(round(p * 65536))).view(np.uint8) * _kept_bits(p, dtype)
    return torch.from_numpy(mask).view(dtype).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with a fast CPU mask (see above); the same expectation, the same gradient rule."""
    if not training or p == 0.0:
        return x
    if (x.device.type != "cpu" or not x.dtype.is_floating_point or p >= 1.0 or x.dtype.itemsize not in _UINT
            or torch.compiler.is_compiling()):  # compiled: inductor generates its own (vectorized) random numbers
        return F.dropout(x, p, training=True)
    return x * dropout_keep(x.shape, p, x.dtype)


class Dropout(nn.Module):
    """nn.Dropout through :func:`dropout` (no parameters; checkpoints are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # [B, L, H]
    pooler_output: torch.Tensor | None = None  # [B, H], tanh(W h_[CLS] + b) when the model has a pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output + every layer's output


class Embeddings(nn.Module):
    """token + segment + position embeddings at width E, LayerNorm, dropout, then E -> H if E != H."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        e = c.emb_size
        self.config = c
        self.word = nn.Embedding(c.vocab_size, e, padding_idx=c.pad_token_id)
        # Only learned absolute positions have a table; relative/rotary positions act inside attention.
        self.position = nn.Embedding(c.max_position_embeddings, e) if c.position_type == "absolute" else None
        self.segment = nn.Embedding(c.type_vocab_size, e) if c.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(e, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout)
        self.project = nn.Linear(e, c.hidden_size) if e != c.hidden_size else None

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L]
        token_type_ids: torch.Tensor | None = None,  # [B, L]
        position_ids: torch.Tensor | None = None,  # [B, L]
    ) -> torch.Tensor:  # [B, L, H]
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(position_ids)
        if self.segment is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.segment(token_type_ids)
        x = self.dropout(self.norm(x))
        if self.project is not None:
            x = self.project(x)
        return x


@dataclass
class AttentionContext:
    """Everything attention needs besides its input, computed once per forward for all layers."""

    mask: torch.Tensor | None  # [B, 1, 1 or L, L] bool, True = may attend; None = attend everywhere
    impl: AttentionImpl = "sdpa"
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # (sin, cos), each [B, 1, L, d]
    relative: torch.Tensor | None = None  # NEZHA a_ij: [L, L, d]


class SelfAttention(nn.Module):
    """Multi-head self-attention sublayer: fused QKV, attention, output projection, residual, LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.num_heads = c.num_heads
        self.head_dim = c.head_dim
        self.rotary_value = c.rotary_value
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)  # rows: [W_q; W_k; W_v]
        self.out = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention_dropout = c.attention_dropout
        self.dropout = Dropout(c.hidden_dropout)
        # Slot for a bottleneck adapter (Houlsby et al., 2019): applied to the sublayer output before the
        # residual. Identity (no parameters) unless fine-tuning installs one.
        self.adapter: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:  # [B, L, H] -> [B, L, H]
        b, n, _ = x.shape
        # [B, L, 3H] -> [B, L, 3, h, d] -> 3 x [B, h, L, d]
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if ctx.rotary is not None:
            sin, cos = ctx.rotary
            q, k = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
            if self.rotary_value:
                v = apply_rotary(v, sin, cos)
        p_drop = self.attention_dropout if self.training else 0.0
        # Training on CPU takes the eager path: with attention dropout SDPA falls back to the same math but
        # with bernoulli_'s slow mask (33 ms for a [16, 8, 128, 128] batch vs 3 ms), and without it, the CPU
        # flash kernel's backward is slower than the eager one (small bf16 MLM step: 886 vs 754 ms; fp32
        # 1,868 vs 1,539 ms). Inference (no autograd) keeps SDPA.
        if ctx.impl == "sdpa" and ctx.relative is None and not (q.requires_grad and q.device.type == "cpu"):
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, dropout_p=p_drop)
        else:
            context = self._eager(q, k, v, ctx, p_drop)
        context = context.transpose(1, 2).reshape(b, n, -1)  # [B, h, L, d] -> [B, L, H]
        return self.norm(x + self.adapter(self.dropout(self.out(context))))

    def _eager(self, q, k, v, ctx: AttentionContext, p_drop: float) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + mask) v, spelled out; NEZHA adds a_ij to keys and to values."""
        scores = q @ k.transpose(-1, -2)  # [B, h, L, L]
        if ctx.relative is not None:
            # NEZHA eq. (3): e_ij = q_i (k_j + a_ij)^T / sqrt(d); a: [L, L, d]
            scores = scores + torch.einsum("bhid,ijd->bhij", q, ctx.relative.to(q.dtype))
        scores = scores / math.sqrt(self.head_dim)
        if ctx.mask is not None:
            scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
        probs = dropout(scores.softmax(dim=-1), p_drop)
        context = probs @ v  # [B, h, L, d]
        if ctx.relative is not None:
            # NEZHA eq. (2): z_i = sum_j p_ij (v_j + a_ij)
            context = context + torch.einsum("bhij,ijd->bhid", probs, ctx.relative.to(probs.dtype))
        return context


class FeedForward(nn.Module):
    """Position-wise feed-forward sublayer: H -> I -> H, activation, residual, LayerNorm (post-LN)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.up = nn.Linear(c.hidden_size, c.intermediate_size)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout)
        self.adapter: nn.Module = nn.Identity()  # bottleneck adapter slot, as in SelfAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.adapter(self.dropout(self.down(self.act(self.up(x))))))


def sharing_plan(config: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which attention module and which feed-forward module each layer uses (ALBERT, Lan et al. 2020, 3.1).

    Returns (attention_index, ffn_index), one entry per layer. "all" = every layer uses module 0 of
    both kinds; "attention"/"ffn" share only that sublayer; "none" gives each layer its own.
    """
    n = config.num_layers
    own, shared = tuple(range(n)), (0,) * n
    share_attention = config.sharing in ("all", "attention")
    share_ffn = config.sharing in ("all", "ffn")
    return (shared if share_attention else own, shared if share_ffn else own)


class Encoder(nn.Module):
    """The bare encoder: ids -> contextual vectors (+ the [CLS] pooler when the config has one)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.attention_impl: AttentionImpl = "sdpa"
        self.embeddings = Embeddings(config)
        self.attention_index, self.ffn_index = sharing_plan(config)
        # Distinct modules only: a shared module appears once here, so parameters and saved tensors
        # are stored once and every layer that uses it sends its gradient to the same storage.
        self.attentions = nn.ModuleList(SelfAttention(config) for _ in range(max(self.attention_index) + 1))
        self.ffns = nn.ModuleList(FeedForward(config) for _ in range(max(self.ffn_index) + 1))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if config.add_pooler else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms, zero padding row."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def layer(self, i: int) -> tuple[SelfAttention, FeedForward]:
        """The two sublayers layer i runs, after sharing."""
        return self.attentions[self.attention_index[i]], self.ffns[self.ffn_index[i]]

    def attention_context(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> AttentionContext:
        c = self.config
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() == 2 and is_packed(attention_mask):
                # [B, L] sequence numbers of packed rows -> block-diagonal [B, 1, L, L]: a token sees only its
                # own sequence; padding (0) sees only padding, so no query row is empty (no NaN).
                mask = (attention_mask[:, :, None] == attention_mask[:, None, :])[:, None]
            elif attention_mask.dim() == 2:  # [B, L] padding mask -> every query sees the same keys
                # No padding at all (a lone text, equal lengths): no mask, so SDPA skips adding one to every
                # score (bf16 MiniLM batch 8 x 128: 5.2 -> 4.4 ms per layer's attention). Not in a graph being
                # compiled, exported or traced: it would bake in the example's answer (or need a graph per case).
                graph = torch.compiler.is_compiling() or torch.jit.is_tracing()
                unpadded = not graph and bool(attention_mask.all())
                mask = None if unpadded else attention_mask.bool()[:, None, None, :]
            elif attention_mask.dim() == 3:  # [B, L, L] per-query mask (packed sequences)
                mask = attention_mask.bool()[:, None, :, :]
            else:
                raise ValueError(f"attention_mask must be [B, L] or [B, L, L], got {tuple(attention_mask.shape)}")
        ctx = AttentionContext(mask=mask, impl=self.attention_impl)
        if c.position_type == "rotary":
            ctx.rotary = rotary_angles(position_ids, c.head_dim)
        elif c.position_type == "relative":
            ctx.relative = nezha_relative_positions(input_ids.shape[1], c.head_dim, c.max_relative_position).to(
                input_ids.device
            )
        return ctx

    def default_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if attention_mask is not None and attention_mask.dim() == 2 and is_packed(attention_mask):
            position_ids = packed_position_ids(attention_mask)  # restart at 0 in every packed sequence
            if c.position_offset:  # RoBERTa: real tokens from pad + 1, padding at pad
                position_ids = torch.where(attention_mask > 0, position_ids + c.pad_token_id + 1, c.pad_token_id)
            return position_ids
        if c.position_offset:
            return roberta_position_ids(input_ids, c.pad_token_id)
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L] int64
        attention_mask: torch.Tensor | None = None,  # [B, L] 1 = real token, 0 = padding (packed: 1, 2, ...); or [B, L, L]
        token_type_ids: torch.Tensor | None = None,  # [B, L] segment ids
        position_ids: torch.Tensor | None = None,  # [B, L]; default 0..L-1 (RoBERTa: after the pad offset)
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, attention_mask)
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        ctx = self.attention_context(input_ids, attention_mask, position_ids)
        hidden_states = [x] if output_hidden_states else None
        for i in range(self.config.num_layers):
            attention, ffn = self.layer(i)
            x = ffn(attention(x, ctx))
            if hidden_states is not None:
                hidden_states.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return EncoderOutput(x, pooled, tuple(hidden_states) if hidden_states is not None else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # Checkpoint directories: thin delegations; every checkpoint name lives in convert/.
    @classmethod
    def from_pretrained(cls, directory) -> "Encoder":
        """Load a local checkpoint directory (transformers' layout or bertforge's); see bertforge.auto."""
        from .convert.checkpoint import load_pretrained

        return load_pretrained(directory, "model")

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers' AutoModel loads (when it can express the model)."""
        from .convert.checkpoint import save_pretrained

        return save_pretrained(self, directory)


def is_packed(attention_mask: torch.Tensor) -> bool:
    """A [B, L] mask holding sequence numbers (1, 1, 2, 2, 2, 0) rather than 0/1: rows packed with several
    sequences (bertforge.data.packing). Its nonzero entries are still the real tokens, so code that only
    asks "is this padding?" reads it unchanged."""
    return attention_mask.numel() > 0 and bool(attention_mask.max() > 1)


def packed_position_ids(sequence_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] sequence numbers -> [B, L] positions counted from 0 at the start of each sequence (and of the
    padding run)."""
    b, n = sequence_ids.shape
    idx = torch.arange(n, device=sequence_ids.device).expand(b, n)
    starts = torch.ones_like(sequence_ids, dtype=torch.bool)
    starts[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
    return idx - torch.cummax(torch.where(starts, idx, 0), dim=1).values


def count_parameters(config: ModelConfig) -> int:
    """Parameters of Encoder(config), counted on the meta device: no memory, instant even for xxlarge."""
    with torch.device("meta"):
        return Encoder(config).num_parameters()
