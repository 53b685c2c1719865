"""Checkpoint directories: config.json + weights in, a built model out, and back.

Loading reads the whole checkpoint, maps its names (hf.py), checks every tensor against the model that
config.json describes, and only then builds the model: a bad checkpoint raises one BertforgeError naming
the file and the problem, never a half-loaded model. Parts that released checkpoints often leave out (the
pooler, pretraining heads) load as absent, with a one-line note on the "bertforge" logger.

Weights are never unpickled: model.safetensors, or pytorch_model.bin through torch.load(weights_only=True)
(sharded *.index.json variants too). Saving writes the transformers layout of the model type whenever
transformers can express the model, else bertforge's own names under ``"model_type": "bertforge"``;
either way config.json carries a "bertforge" section with the full ModelConfig, so a bertforge -> bertforge
round trip is exact.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..errors import BertforgeError
from ..files import atomic_path, write_json
from ..heads import HEADS, PretrainingModel
from ..modeling import Encoder
from . import hf, nezha

log = logging.getLogger("bertforge")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
FORMAT = 1  # version of config.json's "bertforge" section
HEAD_TITLES = {"mlm": "masked-LM", "pair": "NSP/SOP", "rtd": "replaced-token-detection", "sbo": "span-boundary"}
Task = Literal["model", "mlm", "pretraining"]


@dataclass(frozen=True)
class CheckpointConfig:
    config: ModelConfig
    layout: Literal["hf", "bertforge"]  # whose tensor names the weights use
    path: Path  # the config file, for messages


def resolve_directory(path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or an error that says to pass one (no hub, no network, ever)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise BertforgeError(f"{p}: is a file; pass the checkpoint directory that holds config.json and the weights")
    raise BertforgeError(
        f"{str(path)!r} is not a local directory: bertforge never downloads from a model hub; pass a local "
        "directory with config.json and model.safetensors (e.g. one written by save_pretrained)"
    )


def read_config(directory: str | os.PathLike) -> CheckpointConfig:
    d = resolve_directory(directory)
    path = next((d / n for n in nezha.CONFIG_NAMES if (d / n).is_file()), None)
    if path is None:
        raise BertforgeError(f"{d}: no config.json (a checkpoint directory holds config.json and the weights)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BertforgeError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(data, dict):
        raise BertforgeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    section = data.get("bertforge")
    if section is not None:
        source = f"{path} (bertforge section)"
        if not isinstance(section, dict) or set(section) != {"format", "layout", "config"}:
            raise BertforgeError(f"{source}: expected exactly the keys format, layout, config")
        if section["format"] != FORMAT or section["layout"] not in ("hf", "bertforge"):
            raise BertforgeError(
                f"{source}: format={section['format']!r}, layout={section['layout']!r}; this bertforge reads "
                f"format {FORMAT} with layout 'hf' or 'bertforge'"
            )
        if not isinstance(section["config"], dict):
            raise BertforgeError(f"{source}: config must be a JSON object")
        return CheckpointConfig(ModelConfig.from_dict(section["config"], source=source), section["layout"], path)
    if nezha.is_original_config(data):
        data = nezha.config_from_original(data, str(path))
    if "model_type" not in data:
        raise BertforgeError(f"{path}: no model_type; bertforge reads {', '.join(hf.HF_SPECS)}")
    return CheckpointConfig(hf.config_from_hf(data, str(path)), "hf", path)


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BertforgeError(f"{path}: missing (the index lists it)")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BertforgeError(
            f"{path}: refused: it holds Python objects besides tensors, and bertforge never runs pickled code; "
            "convert it to model.safetensors"
        ) from None
    except Exception as exc:  # safetensors, torch's zip reader and the OS each raise their own types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BertforgeError(f"{path}: cannot read weights ({first_line}); is the file truncated?") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise BertforgeError(f"{path}: expected a flat name -> tensor mapping (a state dict)")
    return tensors


def read_tensors(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a checkpoint directory and the file they came from (the index, when sharded)."""
    d = resolve_directory(directory)
    path = next((d / n for n in WEIGHT_FILES if (d / n).is_file()), None)
    if path is None:
        others = sorted(p.name for p in d.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt", ".index", ".pt", ".pth"))
        hint = f"; found {', '.join(others)}: convert TensorFlow/Flax checkpoints with transformers first" if others else ""
        raise BertforgeError(f"{d}: no weights: expected one of {', '.join(WEIGHT_FILES)}{hint}")
    if not path.name.endswith(".index.json"):
        return _read_weight_file(path), path
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BertforgeError(f"{path}: not a weight index with a weight_map ({exc})") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_read_weight_file(d / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise BertforgeError(f"{path}: {missing[0]!r} is listed in {weight_map[missing[0]]} but not stored there")
    return tensors, path


# ---- loading ---------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Names on both sides for one checkpoint: internal (PretrainingModel) name -> checkpoint name."""

    encoder: dict[str, hf.Name]  # "encoder.*" without the pooler
    pooler: dict[str, hf.Name]
    heads: dict[str, dict[str, str]]  # every head this layout can hold
    in_base: Callable[[str], bool]  # does a checkpoint name belong to the encoder?
    decoder: str | None = None  # hf: the tied decoder module, whose .weight must equal the word embeddings


def _prefixed(prefix: str, names: dict[str, hf.Name]) -> dict[str, hf.Name]:
    return {f"{prefix}{k}": v for k, v in names.items()}


def _plan(config: ModelConfig, layout_name: str) -> tuple[_Plan, Callable[[str], str | None]]:
    """The name plan and a function that canonicalises checkpoint names (None = skip this tensor)."""
    if layout_name == "bertforge":
        with torch.device("meta"):
            names = {k: k for k in PretrainingModel(config.replace(add_pooler=True), heads=tuple(HEADS)).state_dict()}
        if not config.add_pooler:
            names = {k: v for k, v in names.items() if not k.startswith("encoder.pooler.")}
        encoder = {k: v for k, v in names.items() if k.startswith("encoder.") and not k.startswith("encoder.pooler.")}
        pooler = {k: v for k, v in names.items() if k.startswith("encoder.pooler.")}
        heads = {h: {k: v for k, v in names.items() if k.startswith(f"{h}.")} for h in HEADS}
        return _Plan(encoder, pooler, heads, lambda n: n.startswith("encoder.")), lambda n: n

    layout = hf.LAYOUTS[config.model_type]
    # Where transformers may hold a pooler, look for one whatever config.json says; load decides.
    full = config.replace(add_pooler=True) if config.model_type in ("bert", "roberta", "albert", "nezha") else config
    names = _prefixed("encoder.", hf.encoder_names(full, layout))
    pooler = {k: v for k, v in names.items() if k.startswith("encoder.pooler.")}
    encoder = {k: v for k, v in names.items() if k not in pooler}
    heads = {h: hf.head_names(layout, h) for h in layout.heads}
    roots = {str(n).split(".")[0] for v in names.values() for n in (v if isinstance(v, tuple) else (v,))}
    prefixes = tuple(f"{p}." for p in layout.prefixes)

    def canonical(name: str) -> str | None:
        # Old ports of TF BERT name LayerNorm parameters gamma/beta.
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        if hf.BUFFERS.search(name):
            return None
        for p in prefixes:
            if name.startswith(p):
                return _BASE + name[len(p):]
        return _BASE + name if name.split(".")[0] in roots else name

    encoder = {k: _in_base(v) for k, v in encoder.items()}
    pooler = {k: _in_base(v) for k, v in pooler.items()}
    return _Plan(encoder, pooler, heads, lambda n: n.startswith(_BASE), layout.decoder), canonical


# Marks a canonical checkpoint name as inside the base model, with or without its "bert."-style prefix
# (a base-model checkpoint such as MiniLM's has none, a task-model checkpoint has one).
_BASE = "\0"


def _in_base(name: hf.Name) -> hf.Name:
    return tuple(_BASE + n for n in name) if isinstance(name, tuple) else _BASE + name


def _flat(names: dict[str, hf.Name]) -> list[str]:
    return [n for v in names.values() for n in (v if isinstance(v, tuple) else (v,))]


def load_pretrained(directory: str | os.PathLike, task: Task = "model", heads: tuple[str, ...] | None = None) -> nn.Module:
    """Build an Encoder (task "model") or a PretrainingModel ("mlm", "pretraining") from a checkpoint directory.

    heads=None takes the heads the checkpoint has (for "mlm": its MLM head); an explicit tuple builds exactly
    those heads, initialising the ones the checkpoint lacks (with a note).
    """
    d = resolve_directory(directory)
    ckpt = read_config(d)
    raw, wpath = read_tensors(d)
    config, where, cfg = ckpt.config, wpath.name, ckpt.path.name
    plan, canonical = _plan(config, ckpt.layout)

    tensors: dict[str, tuple[torch.Tensor, str]] = {}  # canonical name -> (tensor, name in the file)
    for name, tensor in raw.items():
        key = canonical(name)
        if key is not None:
            tensors[key] = (tensor, name)

    def shown(name: str) -> str:
        return tensors[name][1] if name in tensors else name.lstrip(_BASE)

    missing = [n for n in _flat(plan.encoder) if n not in tensors]
    if missing:
        raise BertforgeError(
            f"{wpath}: encoder tensor {shown(missing[0])!r} is missing ({len(missing)} missing in all); "
            f"does {cfg} describe this checkpoint (num_layers={config.num_layers}, "
            f"position_type={config.position_type!r}, embedding_size={config.embedding_size})?"
        )
    known = set(_flat(plan.encoder)) | set(_flat(plan.pooler))
    unexpected = sorted(n for n in tensors if plan.in_base(n) and n not in known)
    if unexpected:
        raise BertforgeError(
            f"{wpath}: unexpected encoder tensor {shown(unexpected[0])!r} ({len(unexpected)} in all): {cfg} "
            f"describes no such part (num_layers={config.num_layers}, sharing={config.sharing!r})"
        )
    notes: list[str] = []
    has_pooler = _complete(plan.pooler, tensors, wpath, "pooler")
    if not has_pooler and config.add_pooler:
        if ckpt.layout == "bertforge":
            raise BertforgeError(f"{wpath}: the pooler is missing although {cfg} says add_pooler=true")
        notes.append(f"{where}: no pooler in the checkpoint; loaded without it (pooler_output is None)")
    config = config.replace(add_pooler=has_pooler)

    if plan.decoder is not None:
        _alias_decoder_bias(plan, tensors)
    found = tuple(h for h in HEADS if h in plan.heads and _complete(plan.heads[h], tensors, wpath, f"{h} head"))

    if task == "model":
        chosen: tuple[str, ...] = ()
    elif heads is not None:
        chosen = tuple(heads)
        unknown = [h for h in chosen if h not in HEADS]
        if unknown:
            raise BertforgeError(f"unknown head {unknown[0]!r}; valid heads: {', '.join(HEADS)}")
    else:
        wanted = ("mlm",) if task == "mlm" else hf.PRETRAINING_HEADS.get(config.model_type, ("mlm",))
        chosen = tuple(h for h in (wanted if task == "mlm" else found) if h in found)
        notes += [f"{where}: no {HEAD_TITLES[h]} head in the checkpoint; loaded without it" for h in wanted if h not in found]
    fresh = [h for h in chosen if h not in found]
    notes += [f"{where}: no {HEAD_TITLES[h]} head in the checkpoint; initialised it randomly" for h in fresh]
    if "pair" in chosen and not has_pooler:
        if "pair" in found:
            raise BertforgeError(f"{wpath}: has a pair (NSP/SOP) head but no pooler, which that head reads")
        config = config.replace(add_pooler=True)
        notes.append(f"{where}: initialised the pooler randomly (the new pair head reads it)")

    # Assemble the internal state dict and check every shape against the model config.json describes.
    with torch.device("meta"):
        expected = (Encoder(config) if task == "model" else PretrainingModel(config, chosen)).state_dict()
    prefix = "encoder." if task == "model" else ""
    sources = {**plan.encoder, **(plan.pooler if has_pooler else {})}
    for h in chosen:
        if h in found:
            sources.update(plan.heads[h])
    state: dict[str, torch.Tensor] = {}
    for internal, source in sources.items():
        target = expected[internal[len(prefix):]]
        parts = source if isinstance(source, tuple) else (source,)
        part_shape = (target.shape[0] // len(parts), *target.shape[1:])
        for part in parts:
            if tuple(tensors[part][0].shape) != part_shape:
                raise BertforgeError(
                    f"{wpath}: tensor {shown(part)!r} has shape {tuple(tensors[part][0].shape)}, but {cfg} "
                    f"implies {part_shape}"
                )
        tensor = torch.cat([tensors[p][0] for p in parts]) if len(parts) > 1 else tensors[parts[0]][0]
        # float32, as transformers loads by default (a bf16 checkpoint is upcast)
        state[internal[len(prefix):]] = tensor.to(torch.float32 if tensor.is_floating_point() else tensor.dtype)
    if plan.decoder is not None:
        _check_tied(plan, tensors, wpath)

    used = set(_flat(sources))
    if plan.decoder is not None:
        used |= {f"{plan.decoder}.weight", f"{plan.decoder}.bias"}
    used |= {n for h in plan.heads for n in plan.heads[h].values()}  # heads not asked for are skipped quietly
    ignored = sorted(tensors[n][1] for n in tensors if n not in used)
    if ignored:
        notes.append(f"{where}: ignored {len(ignored)} tensor(s) no bertforge part uses: {', '.join(ignored[:4])}"
                     + (", ..." if len(ignored) > 4 else ""))

    if fresh or set(expected) - set(state):
        model = Encoder(config) if task == "model" else PretrainingModel(config, chosen)
        model.load_state_dict(state, strict=False)
    else:
        with torch.device("meta"):
            model = Encoder(config) if task == "model" else PretrainingModel(config, chosen)
        model.load_state_dict(state, strict=True, assign=True)
    for note in notes:
        log.warning(note)
    return model.eval()


def _complete(names: dict[str, hf.Name], tensors: dict, wpath: Path, what: str) -> bool:
    """True when all of a part's tensors are present, False when none is; a partial part is an error."""
    flat = _flat(names)
    present = [n for n in flat if n in tensors]
    if present and len(present) < len(flat):
        absent = next(n for n in flat if n not in tensors)
        raise BertforgeError(f"{wpath}: the {what} is incomplete: {absent.lstrip(_BASE)!r} is missing")
    return bool(flat) and len(present) == len(flat)


def _alias_decoder_bias(plan: _Plan, tensors: dict) -> None:
    """Some checkpoints keep only the decoder's copy of the MLM output bias (transformers ties the two)."""
    mlm_bias, bias = plan.heads.get("mlm", {}).get("mlm.bias"), f"{plan.decoder}.bias"
    if mlm_bias is not None and mlm_bias not in tensors and bias in tensors:
        tensors[mlm_bias] = tensors[bias]


def _check_tied(plan: _Plan, tensors: dict, wpath: Path) -> None:
    """Released checkpoints may store the MLM decoder; bertforge ties it to the word embeddings."""
    decoder, word = f"{plan.decoder}.weight", plan.encoder["encoder.embeddings.word.weight"]
    if decoder in tensors and not torch.equal(tensors[decoder][0].float(), tensors[word][0].float()):
        raise BertforgeError(
            f"{wpath}: {tensors[decoder][1]!r} differs from the word embeddings; bertforge ties the MLM "
            "decoder to them (untied output embeddings are not supported)"
        )


# ---- saving ----------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors; transformers loads the result whenever it can express the model."""
    if isinstance(model, PretrainingModel):
        heads = tuple(h for h in HEADS if h in model.head_names)
        state = model.state_dict()
    elif isinstance(model, Encoder):
        heads, state = (), {f"encoder.{k}": v for k, v in model.state_dict().items()}
    else:
        raise TypeError(f"save_pretrained takes an Encoder or a PretrainingModel, not {type(model).__name__}")
    config, d = model.config, Path(directory).expanduser()
    why = hf.hf_incompatibility(config, heads)
    if why is None:
        layout = hf.LAYOUTS[config.model_type]
        names = _prefixed("encoder.", hf.encoder_names(config, layout))
        head_maps = {h: hf.head_names(layout, h) for h in heads}
        # e.g. an adapter installed for fine-tuning: transformers has no place for it, so keep bertforge's names
        extra = sorted(set(state) - set(names) - {k for m in head_maps.values() for k in m})
        if extra:
            why = f"{extra[0]} ({len(extra)} tensor(s) with no transformers name)"
    if why is None:
        # transformers writes base models without the prefix and task models with it; so do we.
        prefix = f"{layout.prefixes[0]}." if heads else ""
        tensors = hf.split_qkv(names, state, prefix)
        tensors.update({prefix + k: v for k, v in hf.fixed_tensors(config).items()})
        for h in heads:
            tensors.update(hf.split_qkv(head_maps[h], state))
        data = hf.config_to_hf(config, heads)
    else:
        log.warning(f"{d}: transformers cannot express {why}; saved in bertforge's own layout, "
                    "which transformers does not load")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        data = {"model_type": "bertforge"}
    data["bertforge"] = {"format": FORMAT, "layout": "hf" if why is None else "bertforge", "config": config.to_dict()}
    d.mkdir(parents=True, exist_ok=True)
    # Weights first, config last: a directory interrupted mid-save has no config.json and does not load.
    with atomic_path(d / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(d / "config.json", data, ensure_ascii=True)
    return d
