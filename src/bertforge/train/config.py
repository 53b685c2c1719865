"""TrainConfig: everything the training loop reads, as one frozen dataclass with a comment per field.

Loaded from a flat YAML mapping and/or ``--set key=value`` strings; an unknown key is an error that lists
the valid ones. ``from_mapping`` / ``parse_assignments`` are generic over frozen dataclasses so other
configs (fine-tuning, data) can reuse them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import _coerce, _literal_choices, require
from ..errors import BertforgeError


@dataclass(frozen=True)
class TrainConfig:
    # Peak learning rate, reached at the end of warmup.
    lr: float = 1e-4
    # Decoupled weight decay (AdamW, LAMB); never applied to biases and LayerNorm weights (1-D tensors).
    weight_decay: float = 0.01
    # Adam / LAMB moment decay rates (beta1, beta2); "--set betas=0.9,0.98" on the command line.
    betas: tuple[float, float] = (0.9, 0.999)
    # Added to sqrt(v) in the denominator (BERT used 1e-6).
    eps: float = 1e-6
    # adamw: torch.optim.AdamW. lamb: layer-wise adaptive moments (You et al., 2020), train/optim.py.
    optimizer: Literal["adamw", "lamb"] = "adamw"
    # Linear warmup length in optimizer steps; 0 = use warmup_ratio.
    warmup_steps: int = 0
    # Linear warmup as a fraction of the budget (see max_*); used when warmup_steps is 0.
    warmup_ratio: float = 0.01
    # After warmup: lr * (1 - progress) ** power; linear is power 1; constant keeps the peak.
    decay: Literal["linear", "polynomial", "constant"] = "linear"
    # Exponent of the polynomial decay (ignored unless decay="polynomial").
    power: float = 1.0
    # Budget in optimizer steps (0 = none). Training stops at whichever budget is reached first, and the
    # schedule's progress is the largest fraction of any budget used so far.
    max_steps: int = 1000
    # Budget in non-padding training tokens summed over all processes (0 = none).
    max_tokens: int = 0
    # Budget in wall-clock minutes of training, summed over resumes (0 = none). When set, the lr
    # schedule follows the clock, so a resumed run is no longer bit-identical to an uninterrupted one.
    max_minutes: float = 0.0
    # Micro-batches whose gradients are summed before each optimizer step (global batch = micro x accum).
    grad_accum: int = 1
    # Clip the global gradient L2 norm to this value before each step (0 = no clipping).
    clip_norm: float = 1.0
    # fp32, or autocast mixed precision: bf16 (CPU and CUDA) or fp16 (CUDA only, with loss scaling).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Wrap the objective in torch.compile (needs a C++ compiler on CPU).
    compile: bool = False
    # Evaluate on the held-out stream every N optimizer steps and at the end (0 = only at the end).
    eval_every: int = 200
    # Evaluate on at most this many held-out batches (0 = the whole held-out stream).
    eval_batches: int = 50
    # Write a checkpoint every N optimizer steps (0 = off); one is always written at the end.
    save_every_steps: int = 500
    # Also write one when this many minutes have passed since the last (0 = off).
    save_every_minutes: float = 0.0
    # Complete checkpoints kept on disk; older ones are deleted after a newer one is complete.
    keep_last: int = 3
    # Seeds python, numpy and torch at the start of a fresh run (process r uses seed + r).
    seed: int = 42
    # Log the mean training loss and metrics every N optimizer steps (metrics.jsonl, TensorBoard, bar).
    log_every: int = 10

    def __post_init__(self) -> None:
        check_literals(self)
        require(self, ("grad_accum", "keep_last", "log_every"), lambda v: v > 0, "a whole number > 0")
        require(self, ("warmup_steps", "max_steps", "max_tokens", "eval_every", "eval_batches", "save_every_steps"),
                lambda v: v >= 0, "a whole number >= 0")
        require(self, ("lr", "weight_decay", "eps", "power"), lambda v: v >= 0, "a number >= 0")
        # limits: infinity means none, as 0 does for clip_norm and save_every_minutes
        require(self, ("max_minutes", "clip_norm", "save_every_minutes"), lambda v: v >= 0, "a number >= 0",
                infinite=True)
        require(self, ("warmup_ratio",), lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        if not (self.max_steps or self.max_tokens or self.max_minutes):
            raise BertforgeError("train config: set a budget: max_steps, max_tokens or max_minutes (all are 0)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise BertforgeError(f"betas={list(self.betas)!r}: expected two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> "TrainConfig":
        return from_mapping(cls, data, source)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a flat YAML mapping of TrainConfig fields."""
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def with_overrides(self, assignments: list[str] | None) -> "TrainConfig":
        """Apply ``key=value`` strings (the CLI's ``--set``)."""
        return from_mapping(type(self), {**self.to_dict(), **parse_assignments(assignments)}, "--set")


# ---- generic helpers for frozen config dataclasses ----------------------------------------------
def from_mapping(cls: type, data: dict[str, Any], source: str) -> Any:
    """Build dataclass ``cls`` from a dict; an unknown key is an error listing the valid ones, and
    strings (from the command line) are converted to each field's declared type."""
    names = sorted(f.name for f in fields(cls))
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise BertforgeError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    values = {k: coerce(cls, k, v, source) for k, v in data.items()}
    try:
        return cls(**values)
    except BertforgeError as exc:  # a value out of range: say where it came from
        raise BertforgeError(f"{source}: {exc}") from None


def coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """``config._coerce`` plus tuples of floats, given as a YAML list or a comma-separated string."""
    tp = typing.get_type_hints(cls)[key]
    if typing.get_origin(tp) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(float(x) for x in items)
        except (TypeError, ValueError):
            raise BertforgeError(f"{source}: {key}={value!r} is not a comma-separated list of numbers") from None
    return _coerce(cls, key, value, source)


def check_literals(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        choices = _literal_choices(hints[f.name])
        value = getattr(obj, f.name)
        if choices is not None and value not in choices:
            raise BertforgeError(f"config field {f.name}={value!r} is not one of {', '.join(map(repr, choices))}")


def parse_assignments(assignments: list[str] | None) -> dict[str, str]:
    """["lr=3e-4", "betas=0.9,0.98"] -> {"lr": "3e-4", "betas": "0.9,0.98"}."""
    changes: dict[str, str] = {}
    for item in assignments or []:
        if "=" not in item:
            raise BertforgeError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        changes[key.strip()] = value.strip()
    return changes


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BertforgeError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise BertforgeError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BertforgeError(f"{path}: expected a mapping of key: value lines, got a {type(data).__name__}")
    return data
