"""Model configuration: every BERT-family variant is one frozen dataclass value, not a subclass.

Only three switches touch the encoder itself (factorized embeddings, positions, layer sharing); the rest
of what distinguishes the family lives in data, objectives and recipes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, get_args

from .errors import BertforgeError
from .files import write_json

ModelType = Literal["bert", "roberta", "albert", "electra", "distilbert", "nezha", "roformer"]
PositionType = Literal["absolute", "relative", "rotary"]
Sharing = Literal["none", "all", "attention", "ffn"]
Activation = Literal["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish"]


@dataclass(frozen=True)
class ModelConfig:
    # Checkpoint family. Decides how weights are named on disk (convert/) and nothing in forward.
    model_type: ModelType = "bert"
    # Number of token ids, special tokens included.
    vocab_size: int = 30522
    # H: width of every encoder layer.
    hidden_size: int = 768
    # E: width of the token embeddings; 0 means E = H. E < H adds an E->H projection (ALBERT, ELECTRA).
    embedding_size: int = 0
    # Number of encoder layers applied (with sharing, fewer distinct modules may exist).
    num_layers: int = 12
    # Attention heads per layer; hidden_size must divide evenly.
    num_heads: int = 12
    # Width of the feed-forward inner layer (4H in BERT).
    intermediate_size: int = 3072
    # Feed-forward activation, with the names released configs use ("gelu" = erf GELU, "gelu_new" = tanh).
    hidden_act: Activation = "gelu"
    # Activation of the MLM head transform; "" means hidden_act (ELECTRA generators hard-code "gelu").
    head_act: Literal["", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish"] = ""
    # Dropout on embeddings and after each sublayer.
    hidden_dropout: float = 0.1
    # Dropout on attention probabilities.
    attention_dropout: float = 0.1
    # Size of the absolute position table (RoBERTa: 514 = 512 + its padding offset of 2).
    max_position_embeddings: int = 512
    # Segment (token type) vocabulary: BERT 2, RoBERTa 1, 0 = no segment embedding at all (DistilBERT).
    type_vocab_size: int = 2
    # absolute: learned table; relative: NEZHA functional relative positions; rotary: RoFormer.
    position_type: PositionType = "absolute"
    # RoBERTa-style position ids that start after the padding index (pad_token_id + 1); 0 = plain 0..L-1.
    position_offset: int = 0
    # NEZHA: relative distances are clipped to [-k, k].
    max_relative_position: int = 64
    # RoFormer: rotate the values as well as queries and keys.
    rotary_value: bool = False
    # Cross-layer sharing (ALBERT): which sublayers all layers share. "all" is ALBERT's default.
    sharing: Sharing = "none"
    # LayerNorm epsilon (BERT 1e-12, RoBERTa 1e-5).
    layer_norm_eps: float = 1e-12
    # Id of the padding token: zero-initialised embedding row, and RoBERTa's position offset base.
    pad_token_id: int = 0
    # Std of the normal initialisation of weights.
    initializer_range: float = 0.02
    # Build the [CLS] pooler (dense + tanh). ELECTRA, DistilBERT and RoFormer checkpoints have none.
    add_pooler: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(ModelConfig)
        for f in fields(self):
            value = getattr(self, f.name)
            choices = _literal_choices(hints[f.name])
            if choices is not None and value not in choices:
                raise BertforgeError(f"config field {f.name}={value!r} is not one of {', '.join(map(repr, choices))}")
        # Sizes first: the divisibility and head-size checks below divide by them.
        require(self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "max_position_embeddings", "max_relative_position"), lambda v: v > 0, "a whole number > 0")
        require(self, ("embedding_size", "type_vocab_size", "position_offset"), lambda v: v >= 0,
                "a whole number >= 0")
        require(self, ("pad_token_id",), lambda v: 0 <= v < self.vocab_size,
                f"a token id in 0..{self.vocab_size - 1} (vocab_size={self.vocab_size})")
        require(self, ("hidden_dropout", "attention_dropout"), lambda v: 0 <= v < 1, "a probability in [0, 1)")
        require(self, ("layer_norm_eps", "initializer_range"), lambda v: v > 0, "a number > 0")
        if self.hidden_size % self.num_heads:
            raise BertforgeError(f"num_heads={self.num_heads}: expected a divisor of hidden_size={self.hidden_size}")
        if self.position_type == "rotary" and self.head_dim % 2:
            raise BertforgeError(f"num_heads={self.num_heads}: rotary positions need an even head size "
                                 f"(hidden_size / num_heads), got {self.head_dim}")

    @property
    def emb_size(self) -> int:
        """E, the width of the token embeddings."""
        return self.embedding_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlm_act(self) -> str:
        return self.head_act or self.hidden_act

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        """Build from a dict; an unknown key is an error that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BertforgeError(
                f"{source}: unknown config key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}"
            )
        values = {k: _coerce(cls, k, v, source) for k, v in data.items()}
        try:
            return cls(**values)
        except BertforgeError as exc:
            raise BertforgeError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str] | None) -> "ModelConfig":
        """Apply ``key=value`` strings (the CLI's ``--set``), converting each value to the field's type."""
        changes: dict[str, Any] = {}
        for item in assignments or []:
            if "=" not in item:
                raise BertforgeError(f"--set {item!r}: expected key=value")
            key, value = item.split("=", 1)
            changes[key.strip()] = value.strip()
        return self.from_dict({**self.to_dict(), **changes}, source="--set")

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), ensure_ascii=True)

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BertforgeError(f"{path}: cannot read config ({exc})") from exc
        return cls.from_dict(data, source=str(path))


def require(obj: Any, names: tuple[str, ...], test: Callable[[Any], bool], expected: str,
            infinite: bool = False) -> None:
    """Refuse the first field of ``obj`` among ``names`` that is not a number passing ``test``, naming the key,
    the value and what was ``expected``. nan never passes (it would fail deep in torch); infinity only with
    ``infinite`` (limits, where it means none)."""
    for name in names:
        value = getattr(obj, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        if number and math.isinf(value) and not infinite:
            raise BertforgeError(f"{name}={value!r}: expected a finite number ({expected})")
        if not (number and test(value)):
            raise BertforgeError(f"{name}={value!r}: expected {expected}")


def _literal_choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return get_args(tp)
    return None


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Turn strings from the command line (and ints from JSON) into the field's declared type."""
    tp = typing.get_type_hints(cls)[key]
    if _literal_choices(tp) is not None:
        return value
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
    except (TypeError, ValueError):
        raise BertforgeError(f"{source}: {key}={value!r} is not a valid {tp.__name__}") from None
    return value


# ---- architecture presets ------------------------------------------------------------------------
# Sizes of the released checkpoints. Parameter counts are computed by the model (`bertforge info`).
_BERT = ModelConfig()
_ALBERT = ModelConfig(
    model_type="albert", vocab_size=30000, embedding_size=128, hidden_act="gelu_new", sharing="all",
    hidden_dropout=0.0, attention_dropout=0.0,
)
_ELECTRA = ModelConfig(model_type="electra", add_pooler=False)

PRESETS: dict[str, ModelConfig] = {
    # Google's BERT miniatures (Turc et al., 2019) and the two original sizes.
    "bert-tiny": _BERT.replace(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "bert-mini": _BERT.replace(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "bert-small": _BERT.replace(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
    "bert-base": _BERT,
    "bert-large": _BERT.replace(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "bert-base-chinese": _BERT.replace(vocab_size=21128),
    "roberta-base": ModelConfig(
        model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=1, position_offset=2, layer_norm_eps=1e-5,
    ),
    "albert-base": _ALBERT,
    "albert-large": _ALBERT.replace(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "albert-xlarge": _ALBERT.replace(hidden_size=2048, num_layers=24, num_heads=16, intermediate_size=8192),
    "albert-xxlarge": _ALBERT.replace(hidden_size=4096, num_layers=12, num_heads=64, intermediate_size=16384),
    # The released small generator is as wide as its discriminator (google/electra-small-generator's config.json:
    # H=256, 4 heads, FFN 1024; its model card warns it is not the paper's 1/4-width generator).
    "electra-small-generator": _ELECTRA.replace(
        embedding_size=128, hidden_size=256, num_heads=4, intermediate_size=1024, head_act="gelu",
    ),
    "electra-small-discriminator": _ELECTRA.replace(
        embedding_size=128, hidden_size=256, num_heads=4, intermediate_size=1024,
    ),
    "electra-base-generator": _ELECTRA.replace(
        embedding_size=768, hidden_size=256, num_heads=4, intermediate_size=1024, head_act="gelu",
    ),
    "electra-base-discriminator": _ELECTRA,
    "distilbert-base": ModelConfig(model_type="distilbert", num_layers=6, type_vocab_size=0, add_pooler=False),
    "nezha-base": ModelConfig(model_type="nezha", vocab_size=21128, position_type="relative"),
    "roformer-base": ModelConfig(
        model_type="roformer", vocab_size=50000, position_type="rotary", max_position_embeddings=1536,
        add_pooler=False,
    ),
    # For tests and smoke runs: the transformers tester's tiny size.
    "test-tiny": _BERT.replace(
        vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise BertforgeError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
