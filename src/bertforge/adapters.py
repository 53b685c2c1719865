"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP").

A small H -> m -> H feed-forward with a skip connection sits after the attention and after the
feed-forward sublayer of every layer, on the sublayer output before the residual and LayerNorm
(``modeling.SelfAttention.adapter`` / ``FeedForward.adapter``, identity slots in the base model). Per
task only the adapters, the LayerNorms and the head train: about 2 % of BERT-base's parameters at m = 64.

The LayerNorms train too, so a task owns its own copy of every LayerNorm gain and bias. Installing a
task's ``AdapterSet`` puts its adapter modules in the slots and swaps its LayerNorm parameters into
the encoder (the same Parameter objects: gradients go straight to the task's copy); removing it puts
back the identity slots and the base LayerNorm parameters, so the base encoder is bit-identical to
what it was before, however long the adapters trained. Several tasks share one base encoder by
switching sets (``AdapterBank``); each set is saved on its own in safetensors, with its head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import BertforgeError
from .files import atomic_path
from .modeling import ACTIVATIONS, Encoder


class Adapter(nn.Module):
    """x + up(act(down(x))): H -> m -> H. ``up`` starts at zero, so a new adapter is the identity
    (the paper's near-identity initialisation) and training starts from the base model's function."""

    def __init__(self, hidden_size: int, bottleneck: int, act: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.act = ACTIVATIONS[act]
        nn.init.normal_(self.down.weight, std=1e-3)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., H]
        return x + self.up(self.act(self.down(x)))


def _norms(encoder: Encoder) -> dict[str, nn.LayerNorm]:
    return {name: m for name, m in encoder.named_modules() if isinstance(m, nn.LayerNorm)}


def _slots(encoder: Encoder) -> list[nn.Module]:
    """The sublayers with an adapter slot, in a fixed order: attentions, then feed-forwards."""
    return [*encoder.attentions, *encoder.ffns]


class AdapterSet(nn.Module):
    """One task's adapter parameters: an ``Adapter`` per sublayer slot and a copy of every LayerNorm.

    Built for one encoder architecture; ``describe()`` records it so a saved set refuses to load onto a
    different one."""

    def __init__(self, encoder: Encoder, bottleneck: int = 64):
        super().__init__()
        c = encoder.config
        if bottleneck <= 0:
            raise BertforgeError(f"adapter bottleneck must be positive, got {bottleneck}")
        self.bottleneck = bottleneck
        self.adapters = nn.ModuleList(Adapter(c.hidden_size, bottleneck, c.hidden_act) for _ in _slots(encoder))
        # ParameterDict keys cannot contain '.', so LayerNorm paths are stored with '/' instead.
        self.norms = nn.ParameterDict()
        for name, ln in _norms(encoder).items():
            key = name.replace(".", "/")
            self.norms[f"{key}/weight"] = nn.Parameter(ln.weight.detach().clone())
            self.norms[f"{key}/bias"] = nn.Parameter(ln.bias.detach().clone())
        self.architecture = describe(encoder)


def describe(encoder: Encoder) -> dict:
    """The encoder facts an adapter set depends on."""
    c = encoder.config
    return {"hidden_size": c.hidden_size, "num_attentions": len(encoder.attentions), "num_ffns": len(encoder.ffns),
            "norms": sorted(_norms(encoder))}


def install(encoder: Encoder, adapters: AdapterSet) -> None:
    """Put ``adapters`` into the encoder's slots and its LayerNorm copies into the LayerNorms
    (removing any set installed before)."""
    if describe(encoder) != adapters.architecture:
        raise BertforgeError(
            f"adapter set was built for a different encoder ({adapters.architecture['hidden_size']} hidden, "
            f"{adapters.architecture['num_attentions']} attention modules) than this one "
            f"({encoder.config.hidden_size} hidden, {len(encoder.attentions)} attention modules)"
        )
    remove(encoder)
    base = {}
    for name, ln in _norms(encoder).items():
        base[name] = (ln.weight, ln.bias)
        key = name.replace(".", "/")
        ln.weight, ln.bias = adapters.norms[f"{key}/weight"], adapters.norms[f"{key}/bias"]
    # Kept outside the module tree (a plain attribute, not a registered buffer) so the encoder's
    # state_dict never changes shape because an adapter set is installed.
    encoder.__dict__["_base_norms"] = base
    for sublayer, adapter in zip(_slots(encoder), adapters.adapters):
        sublayer.adapter = adapter


def remove(encoder: Encoder) -> None:
    """Identity slots and the base LayerNorm parameters again."""
    base = encoder.__dict__.pop("_base_norms", None)
    if base is None:
        return
    for name, ln in _norms(encoder).items():
        ln.weight, ln.bias = base[name]
    for sublayer in _slots(encoder):
        sublayer.adapter = nn.Identity()


def train_only_adapters(model: nn.Module, encoder: Encoder) -> None:
    """Freeze everything in ``encoder`` except the installed adapters and LayerNorms; whatever ``model``
    holds outside the encoder (the head) keeps training."""
    if "_base_norms" not in encoder.__dict__:
        raise BertforgeError("no adapter set is installed in this encoder")
    for p in model.parameters():
        p.requires_grad_(True)
    trainable = {id(p) for m in _slots(encoder) for p in m.adapter.parameters()}
    trainable |= {id(p) for ln in _norms(encoder).values() for p in ln.parameters()}
    for p in encoder.parameters():
        p.requires_grad_(id(p) in trainable)


def save_adapter(path: str | Path, adapters: AdapterSet, head: nn.Module | None = None, meta: dict | None = None) -> None:
    """One safetensors file: the adapter set (``adapters.*``), optionally a head (``head.*``), and as
    metadata the bottleneck, the encoder architecture and ``meta`` (e.g. the task config)."""
    from safetensors.torch import save_file

    tensors = {f"adapters.{k}": v.detach().contiguous() for k, v in adapters.state_dict().items()}
    if head is not None:
        tensors |= {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    header = {"bottleneck": str(adapters.bottleneck), "architecture": json.dumps(adapters.architecture),
              "meta": json.dumps(meta or {}, ensure_ascii=False)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_adapter(path: str | Path, encoder: Encoder, head: nn.Module | None = None) -> tuple[AdapterSet, dict]:
    """Read an adapter file for ``encoder`` (not installed yet) and fill ``head`` from it when given.
    -> (adapter set, meta)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise BertforgeError(f"{path}: cannot read adapter file ({exc})") from None
    if "bottleneck" not in header:
        raise BertforgeError(f"{path}: not a bertforge adapter file (no 'bottleneck' in its metadata)")
    saved_arch = json.loads(header["architecture"])
    if saved_arch != describe(encoder):
        raise BertforgeError(
            f"{path}: adapters for an encoder with hidden size {saved_arch['hidden_size']} and "
            f"{saved_arch['num_attentions']} attention modules; this encoder has {encoder.config.hidden_size} "
            f"and {len(encoder.attentions)}"
        )
    adapters = AdapterSet(encoder, int(header["bottleneck"]))
    adapters.load_state_dict({k[len("adapters."):]: v for k, v in tensors.items() if k.startswith("adapters.")})
    head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    if head is not None:
        if not head_state:
            raise BertforgeError(f"{path}: holds no head weights")
        try:
            head.load_state_dict(head_state)
        except RuntimeError as exc:
            raise BertforgeError(f"{path}: head weights do not fit this head ({str(exc).splitlines()[0]})") from None
    return adapters, json.loads(header.get("meta", "{}"))


class AdapterBank:
    """Several task adapter sets on one base encoder; ``activate(name)`` switches tasks in place.

    ``models[name]`` is that task's model (sharing the encoder); calling it is only meaningful while its
    set is active, which ``__call__`` takes care of."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.sets: dict[str, AdapterSet] = {}
        self.models: dict[str, nn.Module] = {}
        self.active: str | None = None

    def add(self, name: str, adapters: AdapterSet, model: nn.Module) -> None:
        self.sets[name] = adapters
        self.models[name] = model

    def activate(self, name: str | None) -> None:
        if name is None:
            remove(self.encoder)
        elif name not in self.sets:
            raise BertforgeError(f"no adapter named {name!r}; loaded: {', '.join(self.sets) or 'none'}")
        else:
            install(self.encoder, self.sets[name])
        self.active = name

    def __call__(self, name: str, batch: dict) -> dict:
        if self.active != name:
            self.activate(name)
        return self.models[name](batch)
