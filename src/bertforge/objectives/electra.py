"""ELECTRA replaced-token detection (Clark et al., 2020, sec. 2 and 3.2).

A small generator G (an MLM model) fills the masked positions M with samples x^_i ~ p_G(x | x_masked);
the discriminator D reads the corrupted sequence and says, for every non-padding token, whether it is
replaced. A sampled token equal to the original counts as original (sec. 2: "if the generator happens to
generate the correct token, that token is considered real"; the released code's
``labels = masked * (sampled != original)``).

    L = L_MLM(G) + lambda * L_Disc(D),   lambda = 50 (sec. 2; appendix A)
    L_Disc = -1/T sum_t [ r_t log D(x_corrupt, t) + (1 - r_t) log(1 - D(x_corrupt, t)) ]  over T real tokens

Sampling is not differentiable, and runs under no_grad on detached logits: the discriminator's loss never
reaches the generator except through the embeddings they share (sec. 3.2: "we share the embeddings
(both the token and positional embeddings) between the generator and discriminator"). As in the released
code (google-research/electra, model/modeling.py: both models reuse the "electra/embeddings" scope) the
whole E-wide embedding block is shared - token, position and segment tables and their LayerNorm - and each
model keeps its own E -> H projection, which is what lets a narrower generator use the same embeddings.
Sampling draws from torch's global RNG, like dropout, so a run seeded with torch.manual_seed (and a
checkpoint that saves torch's RNG state) reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import BertforgeError
from ..heads import PretrainingModel
from .base import IGNORE, Batch, as_floats, encode, linear_cross_entropy_and_sample, real_tokens, require

# Fields that fix the shape or meaning of the shared embedding block; generator and discriminator must agree.
_EMBEDDING_FIELDS = ("vocab_size", "emb_size", "position_type", "max_position_embeddings", "type_vocab_size",
                     "pad_token_id")


def generator_config(discriminator: ModelConfig, fraction: float = 0.25, num_layers: int | None = None) -> ModelConfig:
    """The generator's config: the discriminator's, with hidden size, heads and FFN width scaled by ``fraction``.

    1/4 is the default (sec. 3.2: generators 1/4-1/2 the discriminator's size work best; the released large
    generator is 1/4 of the width, base 1/3, and the released small generator is full width (H=256)). The embedding width E stays the discriminator's, since the
    embeddings are shared; a generator with H != E gets its own E -> H projection. Depth is kept unless
    ``num_layers`` is given (the paper varies only width). The generator's MLM head uses erf GELU, as the
    released generators do.
    """
    if not 0 < fraction <= 1:
        raise BertforgeError(f"ELECTRA generator fraction={fraction} must be in (0, 1]")
    d = discriminator

    def scaled(n: int) -> int:
        return max(1, int(round(n * fraction)))

    return d.replace(
        hidden_size=scaled(d.hidden_size), num_heads=scaled(d.num_heads),
        intermediate_size=scaled(d.intermediate_size), embedding_size=d.emb_size,
        num_layers=num_layers or d.num_layers, head_act="gelu", add_pooler=False,
    )


def share_embeddings(generator: PretrainingModel, discriminator: PretrainingModel) -> None:
    """Make the generator use the discriminator's embedding modules: the very same Parameter objects."""
    for name in _EMBEDDING_FIELDS:
        g, d = getattr(generator.config, name), getattr(discriminator.config, name)
        if g != d:
            raise BertforgeError(
                f"ELECTRA: generator {name}={g!r} differs from discriminator {name}={d!r}; shared embeddings "
                f"need equal {', '.join(_EMBEDDING_FIELDS)} (use generator_config())"
            )
    g, d = generator.encoder.embeddings, discriminator.encoder.embeddings
    for name in ("word", "position", "segment", "norm"):
        setattr(g, name, getattr(d, name))


class ElectraObjective(nn.Module):
    """Generator MLM + lambda * replaced-token detection. ``.generator`` and ``.discriminator`` for export.

    Metrics: gen_mlm_loss, gen_acc (argmax accuracy of the generator at masked positions), rtd_loss, rtd_acc
    (over non-padding tokens), replaced_fraction (share of non-padding tokens the discriminator must flag).
    """

    name = "electra"

    def __init__(
        self,
        generator: PretrainingModel,  # heads include "mlm"
        discriminator: PretrainingModel,  # heads include "rtd"
        rtd_weight: float = 50.0,  # lambda
        temperature: float = 1.0,  # of the generator's sampling softmax
    ):
        super().__init__()
        if generator.mlm is None or discriminator.rtd is None:
            raise BertforgeError(
                f"ELECTRA needs a generator with the 'mlm' head and a discriminator with the 'rtd' head; got "
                f"{generator.head_names} and {discriminator.head_names}"
            )
        if temperature <= 0:
            raise BertforgeError(f"ELECTRA sampling temperature={temperature} must be positive")
        share_embeddings(generator, discriminator)
        self.generator = generator
        self.discriminator = discriminator
        self.rtd_weight = rtd_weight
        self.temperature = temperature

    @classmethod
    def from_config(
        cls, config: ModelConfig, generator_fraction: float = 0.25, generator_layers: int | None = None, **options
    ) -> "ElectraObjective":
        """Fresh discriminator from ``config`` and a generator sized by ``generator_config``."""
        discriminator = PretrainingModel(config, heads=("rtd",))
        generator = PretrainingModel(generator_config(config, generator_fraction, generator_layers), heads=("mlm",))
        return cls(generator, discriminator, **options)

    @property
    def model(self) -> PretrainingModel:
        """The model a run keeps (the discriminator; the generator is discarded after pretraining)."""
        return self.discriminator

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        require(batch, ("input_ids", "mlm_labels"), self.name)
        ids, labels = batch["input_ids"], batch["mlm_labels"]  # [B, L] each
        chosen = labels != IGNORE  # [B, L] masked positions M
        real = real_tokens(batch)  # [B, L]

        # Generator: MLM at the masked positions only, [N, H] -> [N, V], and the corruption: x^_i ~
        # softmax(logits / temperature), drawn from the same fused pass over the logits (sample_categorical
        # per chunk); integer ids carry no gradient back to G.
        features = self.generator.mlm.features(encode(self.generator, batch).last_hidden_state[chosen])
        gen_loss, gen_acc, sampled = linear_cross_entropy_and_sample(
            features, self.generator.embedding_weight, self.generator.mlm.bias, labels[chosen], self.temperature)
        with torch.no_grad():
            original = torch.where(chosen, labels, ids)  # [B, L] the uncorrupted sequence
            corrupted = original.masked_scatter(chosen, sampled)  # row-major order, as labels[chosen]
            replaced = (corrupted != original) & real  # [B, L]; a sample equal to the original is original

        # Discriminator: one logit per token, binary cross-entropy averaged over non-padding tokens.
        rtd_logits = self.discriminator.rtd(encode(self.discriminator, batch, corrupted).last_hidden_state)  # [B, L]
        weight = real.float()
        n_real = weight.sum().clamp(min=1)
        per_token = F.binary_cross_entropy_with_logits(rtd_logits.float(), replaced.float(), reduction="none")
        rtd_loss = (per_token * weight).sum() / n_real
        rtd_acc = (((rtd_logits.detach() > 0) == replaced) & real).sum() / n_real

        loss = gen_loss + self.rtd_weight * rtd_loss
        return loss, as_floats(
            gen_mlm_loss=gen_loss, gen_acc=gen_acc, rtd_loss=rtd_loss, rtd_acc=rtd_acc,
            replaced_fraction=replaced.sum() / n_real,
        )
