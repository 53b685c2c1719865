"""Pretraining heads. Each takes encoder outputs and returns logits; objectives turn logits into losses.

The MLM and span-boundary heads predict tokens through the *input* embedding matrix (tied weights), so
they take it as an argument rather than owning a copy: one tensor, no tying bookkeeping. With factorized
embeddings (E < H) the transform maps H -> E before the E -> V projection (ALBERT, ELECTRA generators).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .modeling import ACTIVATIONS


class MLMHead(nn.Module):
    """Masked-LM head: dense H->E, activation, LayerNorm(E), then E->V with the tied embedding + a bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        e = config.emb_size
        self.dense = nn.Linear(config.hidden_size, e)
        self.act = ACTIVATIONS[config.mlm_act]
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] -> [..., E], the input of the vocabulary projection (``forward`` = that projection
        of these; the MLM objective hands them to objectives.base.linear_cross_entropy instead)."""
        return self.norm(self.act(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] (pass only the masked positions to skip the rest of the V-wide GEMM) -> [..., V]."""
        return nn.functional.linear(self.features(hidden), embedding_weight, self.bias)


class PairHead(nn.Module):
    """Sentence-pair head on the pooled [CLS] vector: NSP (is B the real next segment?) or SOP (in order?)."""

    def __init__(self, config: ModelConfig, num_labels: int = 2):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B, 2]
        return self.classifier(pooled)


class ReplacedTokenHead(nn.Module):
    """ELECTRA discriminator head: dense H->H, activation, dense H->1: one 'replaced?' logit per token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, L]
        return self.prediction(self.act(self.dense(hidden))).squeeze(-1)


class SpanBoundaryHead(nn.Module):
    """SpanBERT's span boundary objective head (Joshi et al., 2020, sec. 3.2).

    y_i = f(x_{s-1}, x_{e+1}, p_{i-s+1}): the representations of the two tokens just outside the span and
    a learned embedding of the target's position inside the span, concatenated, through a 2-layer
    feed-forward network with GELU and LayerNorm, then projected to the vocabulary with the tied
    embedding matrix (H -> E first when factorized). Inside-span tokens are never read.
    """

    def __init__(self, config: ModelConfig, max_span_length: int = 10):
        super().__init__()
        h, e = config.hidden_size, config.emb_size
        self.max_span_length = max_span_length
        self.position = nn.Embedding(max_span_length, h)
        self.layer1 = nn.Linear(3 * h, h)
        self.norm1 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.layer2 = nn.Linear(h, e)
        self.norm2 = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def features(
        self,
        left: torch.Tensor,  # [N, H] representation of the token before the span (x_{s-1})
        right: torch.Tensor,  # [N, H] representation of the token after the span (x_{e+1})
        relative_position: torch.Tensor,  # [N] int64, 0 for the span's first token
    ) -> torch.Tensor:  # [N, E], the input of the vocabulary projection
        z = torch.cat([left, right, self.position(relative_position)], dim=-1)
        z = self.norm1(nn.functional.gelu(self.layer1(z)))
        return self.norm2(nn.functional.gelu(self.layer2(z)))

    def forward(self, left, right, relative_position, embedding_weight: torch.Tensor) -> torch.Tensor:  # [N, V]
        return nn.functional.linear(self.features(left, right, relative_position), embedding_weight, self.bias)


HEADS = {"mlm": MLMHead, "pair": PairHead, "rtd": ReplacedTokenHead, "sbo": SpanBoundaryHead}


class PretrainingModel(nn.Module):
    """An encoder with the pretraining heads a checkpoint or recipe uses, named in ``heads``.

    ``heads`` is data: ("mlm", "pair") is BertForPreTraining (NSP) or AlbertForPreTraining (SOP),
    ("mlm",) a masked-LM model (RoBERTa, DistilBERT, RoFormer, an ELECTRA generator), ("rtd",) an ELECTRA
    discriminator, ("mlm", "sbo") SpanBERT. Objectives call the heads they need; ``forward`` here runs
    the encoder and the cheap per-sequence heads.
    """

    def __init__(self, config: ModelConfig, heads: tuple[str, ...] = ("mlm",)):
        super().__init__()
        from .modeling import Encoder

        unknown = [h for h in heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown head {unknown[0]!r}; valid heads: {', '.join(HEADS)}")
        self.config = config
        self.head_names = tuple(heads)
        self.encoder = Encoder(config)
        self.mlm = MLMHead(config) if "mlm" in heads else None
        self.pair = PairHead(config) if "pair" in heads else None
        self.rtd = ReplacedTokenHead(config) if "rtd" in heads else None
        self.sbo = SpanBoundaryHead(config) if "sbo" in heads else None
        if "pair" in heads and self.encoder.pooler is None:
            raise ValueError("the pair (NSP/SOP) head reads the pooled [CLS] vector: set add_pooler=True")
        for module in (self.mlm, self.pair, self.rtd, self.sbo):
            if module is not None:
                module.apply(self.encoder._init_weights)

    @property
    def embedding_weight(self) -> torch.Tensor:
        """[V, E], the input embedding matrix that token-predicting heads are tied to."""
        return self.encoder.embeddings.word.weight

    @classmethod
    def from_pretrained(cls, directory, heads: tuple[str, ...] | None = None) -> "PretrainingModel":
        """Load a local checkpoint directory with its pretraining heads; see bertforge.auto."""
        from .convert.checkpoint import load_pretrained

        return load_pretrained(directory, "pretraining", heads)

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers' ...ForPreTraining / ...ForMaskedLM loads."""
        from .convert.checkpoint import save_pretrained

        return save_pretrained(self, directory)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] at the positions to predict -> [..., V]."""
        return self.mlm(hidden, self.embedding_weight)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states: bool = False, mlm_positions: torch.Tensor | None = None) -> dict:
        """Returns a dict: "encoder" (EncoderOutput), "mlm_logits" ([B, L, V], or [N, V] at the boolean
        ``mlm_positions`` [B, L] when given), "pair_logits" [B, 2], "rtd_logits" [B, L]."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states)
        result: dict = {"encoder": out}
        h = out.last_hidden_state
        if self.mlm is not None:
            result["mlm_logits"] = self.mlm_logits(h if mlm_positions is None else h[mlm_positions])
        if self.pair is not None:
            result["pair_logits"] = self.pair(out.pooler_output)
        if self.rtd is not None:
            result["rtd_logits"] = self.rtd(h)
        return result
