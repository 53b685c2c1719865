"""Training checkpoints: atomic, checksummed directories that a killed run never leaves half-written.

Layout of ``<run>/checkpoints/step-00000040/``:
    model.safetensors   the objective's trainable weights and buffers (tied tensors stored once)
    optimizer.pt        optimizer.state_dict()
    state.pt            counters, data position, RNG states of every process, loss-scaler state
    manifest.json       step, tokens, time, and the sha256 + size of each file above; written last

A checkpoint is written into a hidden temp directory, every file and the directory fsync'ed, then renamed
into place (one atomic rename), so a crash at any point leaves either the complete checkpoint or a
temp directory that is ignored. On resume the manifest's checksums are verified; a checkpoint that fails
is reported with a warning and the previous one is used. ``.pt`` files are read with
``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ..errors import BertforgeError

FORMAT = "bertforge-checkpoint/1"
FILES = ("model.safetensors", "optimizer.pt", "state.pt")
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (incomplete or corrupted) and an older one used instead."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ---- model weights --------------------------------------------------------------------------------
def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: ``state_dict()`` without frozen parameters (a distillation teacher
    is rebuilt from its own directory) and with each shared tensor under its first name only (an ELECTRA
    generator and discriminator share embeddings; safetensors refuses aliased tensors)."""
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple]] = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if name in frozen or not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach()
    return state


def load_model_state(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved tensors into the live module in place (aliases are filled through their shared storage)."""
    live = model_state(module)
    if set(live) != set(tensors):
        missing, unexpected = sorted(set(live) - set(tensors)), sorted(set(tensors) - set(live))
        raise BertforgeError(
            f"{source}: the checkpoint does not match the model being trained "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it written by another recipe or size?"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            if live[name].shape != tensor.shape:
                raise BertforgeError(
                    f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model has {tuple(live[name].shape)}"
                )
            live[name].copy_(tensor)


# ---- RNG states -----------------------------------------------------------------------------------
def find_generators(module: nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` an objective keeps as an attribute of one of its modules, by dotted name.
    An objective that samples with its own generator (rather than the global one) is thus saved and
    restored without any hook of its own."""
    found = {}
    for prefix, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{attr}" if prefix else attr] = value
    return found


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of every random source a training step can draw from, in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- numpy values in the data position ------------------------------------------------------------
def to_loadable(value: Any) -> Any:
    """Make a data-stream state weights_only-loadable: numpy arrays become tagged tensors, numpy scalars
    Python numbers; ``from_loadable`` undoes the array tagging exactly."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_loadable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_loadable(v) for v in value)
    return value


def from_loadable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: from_loadable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_loadable(v) for v in value)
    return value


# ---- writing --------------------------------------------------------------------------------------
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_synced(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(root: Path, step: int, model: nn.Module, optimizer_state: dict, state: dict,
                     meta: dict) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and return its path. ``meta`` goes into the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {k: v.contiguous().cpu() for k, v in model_state(model).items()}
        blobs = {
            "model.safetensors": save_safetensors(weights, metadata={"format": "pt", "step": str(step)}),
            "optimizer.pt": _torch_bytes(optimizer_state),
            "state.pt": _torch_bytes(state),
        }
        files = {name: _write_synced(tmp / name, data) for name, data in blobs.items()}
        manifest = {"format": FORMAT, "step": step, **meta, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "files": files}
        _write_synced(tmp / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # free the space of a write that failed (disk full, Ctrl-C)
        raise
    if final.exists():  # an older, invalid checkpoint of the same step (its valid twin is never rewritten)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    return final


# ---- finding and reading --------------------------------------------------------------------------
def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (temp directories are not listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: Path) -> str | None:
    """None when ``path`` is complete and every file matches its manifest checksum, else the reason."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        return "no manifest.json (the write did not finish)"
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable manifest.json ({exc})"
    if manifest.get("format") != FORMAT or set(manifest.get("files", {})) != set(FILES):
        return "manifest.json is not a bertforge checkpoint manifest"
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected["sha256"]:
            return f"{name} does not match its sha256 checksum"
    return None


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies. Each newer one that fails is renamed ``*.corrupt`` (kept for
    inspection, out of the way of the step that will be written again) with a CheckpointWarning."""
    for path in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        aside = path.with_name(path.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        warnings.warn(f"checkpoint {path} is incomplete or corrupted: {problem}; moved it to {aside.name} "
                      f"and resuming from the previous checkpoint", CheckpointWarning, stacklevel=2)
    return None


def read_checkpoint(path: Path, model: nn.Module, device: torch.device | str = "cpu") -> tuple[dict, dict, dict]:
    """Load the weights into ``model`` in place; return (optimizer state, trainer state, manifest)."""
    tensors = load_safetensors((path / "model.safetensors").read_bytes())
    load_model_state(model, tensors, str(path))
    optimizer_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    manifest = json.loads((path / "manifest.json").read_text())
    return optimizer_state, state, manifest


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and temp directories of dead writers."""
    for path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-step-*"):
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)


def estimated_bytes(module: nn.Module, optimizer_slots: int = 2) -> int:
    """Size of one checkpoint: the weights plus ``optimizer_slots`` moment tensors per trainable weight."""
    state = model_state(module)
    weights = sum(t.numel() * t.element_size() for t in state.values())
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return weights + optimizer_slots * trainable + (1 << 20)
