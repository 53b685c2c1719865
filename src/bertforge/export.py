"""ONNX export, ONNX Runtime inference and int8 dynamic quantization.

- ``export_onnx`` traces any bertforge model that takes (input_ids, attention_mask, token_type_ids) with
  the TorchScript exporter (``dynamo=False``: the dynamo exporter needs onnxscript and gains nothing for
  a static encoder graph), with dynamic batch and sequence axes, and records the structure of the
  model's output (an ``EncoderOutput``, a dict of logits, ...) in the file's metadata;
- ``OnnxRuntimeModel`` runs the file and rebuilds that structure, so code written for the PyTorch model
  (pipelines, evaluation) can run the ONNX one unchanged; ``export_mismatch`` says why a file is not an
  export of a given model (the file also records what was exported: task, labels, config, weights hash);
- ``verify_onnx`` holds the two equal (default tolerance 1e-4) on several batch sizes and lengths, with
  padding, so that a graph that silently baked in the example shape is caught;
- int8: ``quantize_onnx`` (ONNX Runtime's dynamic quantization: int8 weights, activations quantized
  per batch at run time) and ``quantize_torch`` (``torch.ao``'s dynamic quantization of nn.Linear).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BertforgeError
from .files import atomic_path

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_META_KEY = "bertforge_output_spec"
# What was exported: the encoder config, the task (task, labels, ...) of a fine-tuned model, a fingerprint
# of the weights, and what the caller adds (bertforge export: the source directory and --head).
_ABOUT_KEY = "bertforge_export"


# ---- output structure: flatten for ONNX, rebuild after ---------------------------------------------
def _describe(out: Any, prefix: str = "") -> tuple[Any, list[tuple[str, torch.Tensor]]]:
    """(spec, [(name, tensor), ...]) for a model output made of tensors, None, dicts and dataclasses."""
    if out is None:
        return None, []
    if isinstance(out, torch.Tensor):
        return {"tensor": prefix or "output"}, [(prefix or "output", out)]
    if dataclasses.is_dataclass(out) or isinstance(out, dict):
        items = out.items() if isinstance(out, dict) else ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
        specs, tensors = {}, []
        for key, value in items:
            spec, flat = _describe(value, f"{prefix}.{key}" if prefix else key)
            specs[key] = spec
            tensors += flat
        if isinstance(out, dict):
            return {"dict": specs}, tensors
        cls = type(out)
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": specs}, tensors
    raise BertforgeError(f"export: cannot export a model output of type {type(out).__name__}")


def _rebuild(spec: Any, values: dict[str, torch.Tensor]) -> Any:
    if spec is None:
        return None
    if "tensor" in spec:
        return values[spec["tensor"]]
    if "dict" in spec:
        return {k: _rebuild(s, values) for k, s in spec["dict"].items()}
    module, _, qualname = spec["dataclass"].partition(":")
    if module.split(".")[0] != "bertforge":  # never import arbitrary code named by a file
        raise BertforgeError(f"ONNX metadata names output class {spec['dataclass']!r}, not a bertforge class")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls(**{k: _rebuild(s, values) for k, s in spec["fields"].items()})


def _call(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """Run a model that takes keyword tensors (``Encoder``) or one batch dict (the ``tasks`` models)."""
    if next(iter(inspect.signature(model.forward).parameters)) == "batch":
        return model(inputs)
    return model(**inputs)


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None) or getattr(getattr(model, "encoder", None), "config", None)
    return getattr(config, "vocab_size", 100)


def output_tensors(out: Any) -> list[tuple[str, torch.Tensor]]:
    """A model output's tensors in export order, named as the ONNX outputs are ("encoder.last_hidden_state")."""
    return _describe(out)[1]


class _Flat(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> flat tuple of the model's output tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return tuple(t for _, t in _describe(_call(self.model, inputs))[1])


def sample_inputs(model: nn.Module, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids above the usual special-token range, with the first row padded after half its length."""
    vocab = _vocab_size(model)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1 and length > 2:
        mask[0, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's TorchScript exporter (the one export_onnx uses) writes: 7 to 20 in torch 2.13.
    Above its maximum torch only warns, and the graph is then outside what torch tests."""
    try:
        from torch.onnx import _constants

        return _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):  # a private module: fall back to torch 2.13's values
        return 7, 20


# Below 11 ONNX Runtime's quantizer cannot infer the graph's shapes ("Incomplete symbolic shape inference").
QUANTIZE_MIN_OPSET = 11


@contextlib.contextmanager
def _silenced_stdout():
    """File descriptor 1 to /dev/null. torch 2.13's exporter switches its C++ ONNX log on whatever the setting
    (setup_onnx_logging tests the function ``_C._jit_is_onnx_log_enabled`` instead of calling it), so a failed
    export prints its whole IR graph to stdout, past Python's sys.stdout."""
    import ctypes

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C++ left in the C stdout buffer goes to /dev/null too
        os.dup2(saved, 1)
        os.close(saved)


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's parameters and buffers: tells whether an export holds these weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def describe_model(model: nn.Module) -> dict:
    """What an export of ``model`` holds, as export_onnx records it in the file."""
    config = getattr(model, "config", None) or getattr(getattr(model, "encoder", None), "config", None)
    task = getattr(model, "task", None)
    return {
        "config": config.to_dict() if config is not None else None,
        "task": json.loads(json.dumps(dataclasses.asdict(task))) if dataclasses.is_dataclass(task) else None,
        "weights": fingerprint(model),
    }


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 17, sample_length: int = 16,
                about: dict | None = None) -> Path:
    """Write ``model`` as ONNX with inputs input_ids / attention_mask / token_type_ids, all [batch, sequence]
    int64, and one output per tensor of the model's output (named by its field, e.g. "last_hidden_state",
    "logits"). Batch and sequence axes are dynamic. The file's metadata records the output structure and
    ``describe_model(model)`` plus ``about`` (read back as OnnxRuntimeModel.about). Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    # Wrapper in eval mode too: the exporter restores the mode of the module it was given, recursively.
    flat = _Flat(model).eval()
    inputs = sample_inputs(model, 2, sample_length)
    with torch.no_grad():
        spec, named = _describe(_call(model, inputs))
    output_names = [name for name, _ in named]
    dynamic_axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    for name, tensor in named:
        # Every output is [batch, ...]; those that keep a length axis ([B, L, ...]) have it at 1.
        axes = {0: "batch"}
        if tensor.dim() >= 2 and tensor.shape[1] == sample_length:
            axes[1] = "sequence"
        dynamic_axes[name] = axes
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected here
                try:
                    with _silenced_stdout():
                        torch.onnx.export(
                            flat, tuple(inputs[n] for n in INPUT_NAMES), str(tmp), input_names=list(INPUT_NAMES),
                            output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                        )
                except torch.onnx.OnnxExporterError as exc:  # an operator this opset lacks (einsum < 12, ...)
                    reason = str(exc).splitlines()[0].split("  [Caused by")[0]
                    raise BertforgeError(f"ONNX opset {opset}: torch cannot export this model at it ({reason})") from None
            import onnx

            proto = onnx.load(str(tmp))
            for key, value in ((_META_KEY, spec), (_ABOUT_KEY, describe_model(model) | (about or {}))):
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OnnxRuntimeModel:
    """An exported model run by ONNX Runtime, called like the PyTorch model it came from.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` or ``model(batch_dict)`` takes torch
    tensors and returns the same structure (``EncoderOutput``, dict of logits, ...) with torch tensors.
    Inputs the graph does not use (token_type_ids of a model without segments) are dropped, as the
    exporter dropped them. ``like``: the PyTorch model it was exported from; attributes the ONNX model
    lacks (``task``, ``decode``, ``config``...) are read from it, so a pipeline or an evaluation loop can
    take the ONNX model in its place.
    """

    def __init__(self, path: str | Path, *, num_threads: int | None = None, config: Any = None,
                 like: nn.Module | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise BertforgeError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failed run is raised as one BertforgeError, not logged in colour too
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
            raise BertforgeError(f"{path}: not a loadable ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if _META_KEY not in meta:
            raise BertforgeError(f"{path}: no {_META_KEY} metadata; was it written by bertforge export?")
        self.spec = json.loads(meta[_META_KEY])
        # exports written before bertforge recorded it have none
        self.about: dict | None = json.loads(meta[_ABOUT_KEY]) if _ABOUT_KEY in meta else None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.config = config if config is not None else getattr(like, "config", None)
        self.path = path
        self._like = like

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found on self
        like = self.__dict__.get("_like")
        if like is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(like, name)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **unused: Any) -> Any:
        if isinstance(input_ids, dict):  # the tasks models' calling convention: one batch dict
            batch = input_ids
            input_ids, attention_mask, token_type_ids = (batch.get(n) for n in INPUT_NAMES)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if feed["attention_mask"] is None:
            feed["attention_mask"] = torch.ones_like(input_ids)
        if feed["token_type_ids"] is None:
            feed["token_type_ids"] = torch.zeros_like(input_ids)
        arrays = {n: np.ascontiguousarray(feed[n].cpu().numpy(), dtype=np.int64) for n in self.input_names}
        try:
            outputs = self.session.run(self.output_names, arrays)
        except Exception as exc:  # onnxruntime's own untyped errors, e.g. a token id past the graph's vocabulary
            raise BertforgeError(f"{self.path}: ONNX Runtime failed on the inputs ({str(exc).strip().splitlines()[0]})") from None
        return _rebuild(self.spec, {n: torch.from_numpy(o) for n, o in zip(self.output_names, outputs)})

    def eval(self) -> "OnnxRuntimeModel":
        return self


def _outputs(shapes: dict[str, list]) -> str:
    return ", ".join(f"{name} [{', '.join(map(str, dims))}]" for name, dims in shapes.items())


def _contents(shapes: dict[str, list], about: dict | None) -> str:
    """Plain words for what a model outputs: "the bare encoder (outputs ...)", "the fine-tuned ner model ..."."""
    outputs = _outputs(shapes)
    if about and about.get("task"):
        task = about["task"]
        labels = f" with labels {', '.join(task['labels'])}" if task["labels"] else ""
        return f"the fine-tuned {task['task']} model{labels} (outputs {outputs})"
    if all(name.split(".")[-1] in ("last_hidden_state", "pooler_output", "hidden_states") for name in shapes):
        return f"the bare encoder, no task head (outputs {outputs})"
    if any(name.endswith("mlm_logits") for name in shapes):
        return f"an encoder with its masked-LM head, no task head (outputs {outputs})"
    return f"a model with outputs {outputs}"


def _torch_shapes(model: nn.Module) -> dict[str, list]:
    """Output name -> dims of the PyTorch model, "batch" and "sequence" where they follow the input's."""
    runs = []
    with torch.no_grad():
        for length in (5, 6):
            runs.append({name: list(t.shape) for name, t in output_tensors(_call(model, sample_inputs(model, 2, length)))})
    return {name: ["batch" if i == 0 else "sequence" if d != runs[1][name][i] else d for i, d in enumerate(dims)]
            for name, dims in runs[0].items()}


def _compatible(onnx_dims: list, torch_dims: list) -> bool:
    """ONNX output dims (ints, or names for dynamic axes) against the PyTorch model's."""
    return len(onnx_dims) == len(torch_dims) and all(
        not isinstance(a, int) or a == b for a, b in zip(onnx_dims, torch_dims))


def export_mismatch(runner: OnnxRuntimeModel, model: nn.Module) -> str | None:
    """Why ``runner`` cannot stand in for ``model`` (None when nothing tells them apart): it holds other outputs
    (a bare encoder, a masked-LM head, another task's head), another task or label set, another architecture,
    other weights, or it fails on the model's token ids. Exports without the record of what they hold (older
    bertforge) are judged by their outputs and a trial run."""
    was_training = model.training
    model.eval()
    try:
        needed, mine, about = _torch_shapes(model), describe_model(model), runner.about
        shapes = {o.name: [d if isinstance(d, int) else str(d) for d in o.shape] for o in runner.session.get_outputs()}
        holds = f"it holds {_contents(shapes, about)}, not {_contents(needed, mine)}"
        if list(shapes) != list(needed) or not all(_compatible(shapes[n], needed[n]) for n in shapes):
            return holds
        if about is not None:
            if about.get("task") != mine["task"]:
                return holds
            config = about.get("config") or {}
            changed = [k for k, v in (mine["config"] or {}).items() if k in config and config[k] != v]
            if changed:
                k = changed[0]
                return f"it was exported from a model with {k}={config[k]!r}, this one has {k}={mine['config'][k]!r}"
            if about.get("weights") != mine["weights"]:
                source = f" ({about['source']})" if about.get("source") else ""
                return f"it was exported from other weights{source}: the same kind of model, trained differently"
        inputs = sample_inputs(model, 2, 5)
        inputs["input_ids"][0, 1] = _vocab_size(model) - 1  # the highest id: a smaller vocabulary fails here
        try:
            runner(**inputs)
        except BertforgeError as exc:
            return f"it fails on this model's token ids, so it was exported from another model ({exc})"
        return None
    finally:
        model.train(was_training)


def verify_onnx(
    model: nn.Module,
    onnx_model: OnnxRuntimeModel | str | Path,
    *,
    shapes: tuple[tuple[int, int], ...] = ((1, 1), (1, 7), (3, 19), (4, 64)),
    atol: float = 1e-4,
) -> float:
    """Largest |ONNX - PyTorch| over every output at each (batch, length) in ``shapes``; raises
    BertforgeError when it exceeds ``atol``. Lengths differ from the export example on purpose."""
    runner = onnx_model if isinstance(onnx_model, OnnxRuntimeModel) else OnnxRuntimeModel(onnx_model)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for i, (batch, length) in enumerate(shapes):
            inputs = sample_inputs(model, batch, length, seed=i + 1)
            with torch.no_grad():
                _, expected = _describe(_call(model, inputs))
            _, got = _describe(runner(**inputs))
            for (name, e), (_, o) in zip(expected, got):
                diff = (e.float() - o.float()).abs().max().item() if e.numel() else 0.0
                worst = max(worst, diff)
                if not diff <= atol:  # also catches NaN
                    raise BertforgeError(
                        f"{runner.path}: output {name!r} differs from PyTorch by {diff:.3g} > {atol:g} "
                        f"at batch {batch}, length {length}"
                    )
    finally:
        model.train(was_training)
    return worst


def quantize_onnx(src: str | Path, dst: str | Path) -> Path:
    """int8 dynamic quantization with ONNX Runtime: MatMul weights stored as int8 per output channel,
    activations quantized per batch at run time. The graph is first shape-inferred and optimised
    (ONNX Runtime's ``quant_pre_process``), which its docs recommend before quantizing. Keeps bertforge's
    metadata (the output structure, what was exported). Written atomically."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props
            if p.key in (_META_KEY, _ABOUT_KEY)}
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as tmp:
        prepared, quantized = os.path.join(tmp, "prepared.onnx"), os.path.join(tmp, "int8.onnx")
        quant_pre_process(str(src), prepared)
        logging.disable(logging.WARNING)  # quantize_dynamic logs a "please pre-process" hint regardless
        try:
            quantize_dynamic(prepared, quantized, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
        proto = onnx.load(quantized)
        kept = {p.key for p in proto.metadata_props}
        for key, value in meta.items():
            if key not in kept:
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
        onnx.save(proto, quantized)
        os.replace(quantized, dst)
    return dst


def quantize_torch(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every nn.Linear replaced by a dynamically quantized int8 one (CPU only, per-
    channel weight scales): the same conversion as ``--precision int8`` (inference/fast.prepare).
    Embeddings and the tied MLM projection (an F.linear on the embedding matrix) stay float."""
    from .inference.fast import prepare

    return prepare(model, "int8")