"""Fine-tuned model directories: written so transformers' AutoModelFor... loads them whenever it can.

A directory holds the tokenizer, ``task.json`` (TaskConfig: task, labels, pooling, lengths) and weights:

- transformers layout (``config.json`` with ``architectures: ["BertForSequenceClassification"]``,
  ``id2label``, one ``model.safetensors`` with the encoder under ``bert.`` and the head under
  transformers' names) when the model is one transformers has: a plain linear head on the pooler
  (sequence classification, multiple choice: BERT and ALBERT, whose transformers classes are
  pooler -> dropout -> linear) or on the tokens (token classification, QA: every model type);
- otherwise (a CRF, a scalar mix, mean pooling, a model type whose transformers head differs) the
  encoder as ``convert.checkpoint.save_pretrained`` writes it plus ``head.safetensors``; transformers'
  AutoModel still loads the encoder;
- with adapters: only ``adapter.safetensors`` (adapters, LayerNorms, head; see adapters.py) naming the
  base model directory it was trained on; Houlsby adapters are non-linear and cannot be merged into
  the base weights, so transformers cannot load these.

The head's tensor names are transformers' own (``classifier``, ``qa_outputs``; tasks.py uses them), so
the only mapping needed here is the encoder's, which convert/hf.py owns.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..adapters import AdapterSet, install, load_adapter, save_adapter
from ..convert import hf
from ..convert.checkpoint import FORMAT, load_pretrained, save_pretrained
from ..data.tokenizers import AutoTokenizer
from ..errors import BertforgeError
from ..files import atomic_path, write_json
from ..tasks import TaskConfig, TaskModel, build_task_model

# task -> transformers class suffix
HF_CLASS = {
    "classify": "ForSequenceClassification",
    "pair": "ForSequenceClassification",
    "ner": "ForTokenClassification",
    "qa": "ForQuestionAnswering",
    "choice": "ForMultipleChoice",
}
_POOLED = ("classify", "pair", "choice")
# Model types whose transformers ForSequenceClassification/ForMultipleChoice is pooler -> dropout ->
# linear, as ours is (RoBERTa, ELECTRA, DistilBERT and RoFormer put a differently named or shaped
# classification head there).
_POOLER_HEAD_TYPES = ("bert", "albert")


def hf_incompatibility(model: TaskModel) -> str | None:
    """Why transformers has no class for this task model; None when it has one."""
    t, c = model.task, model.encoder.config
    if t.crf:
        return "a CRF layer"
    if t.layer_mix:
        return "a scalar mix of layers"
    if t.task in _POOLED:
        if t.pooling != "cls":
            return f"{t.pooling} pooling"
        if c.model_type not in _POOLER_HEAD_TYPES:
            return f"a {c.model_type} sequence-classification head on the pooler"
        if model.encoder.pooler is None:
            return "a classifier on [CLS] without a pooler"
    return hf.hf_incompatibility(_encoder_config(model), ())


def _encoder_config(model: TaskModel):
    # Token-level heads never read the pooler; transformers builds those models without one.
    c = model.encoder.config
    return c if model.task.task in _POOLED else c.replace(add_pooler=False)


def _atomic_save(tensors: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def save_task_model(model: TaskModel, tok, directory: str | Path, adapters: AdapterSet | None = None,
                    base: str | Path | None = None) -> str:
    """Write ``model`` (with ``tok``) to ``directory``; returns which layout was written: "transformers",
    "bertforge" (and why transformers cannot hold it) or "adapter"."""

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(d)
    model.task.save(d / "task.json")
    if adapters is not None:
        if base is None:
            raise BertforgeError("saving an adapter model needs the base model directory it was trained on")
        save_adapter(d / "adapter.safetensors", adapters, head=model.head_modules(),
                     meta={"base": str(Path(base).resolve())})
        return "adapter"
    why = hf_incompatibility(model)
    if why is not None:
        save_pretrained(model.encoder, d)
        _atomic_save({k: v.detach().cpu().contiguous() for k, v in model.head_modules().state_dict().items()},
                     d / "head.safetensors")
        return f"bertforge ({why} has no transformers class)"
    config = _encoder_config(model)
    layout = hf.LAYOUTS[config.model_type]
    state = model.encoder.state_dict()
    tensors = hf.split_qkv(hf.encoder_names(config, layout), state, prefix=f"{layout.prefixes[0]}.")
    tensors |= {k: v.detach().cpu().contiguous() for k, v in model.head_modules().state_dict().items()}
    data = hf.config_to_hf(config, ())
    data["architectures"] = [layout.class_prefix + HF_CLASS[model.task.task]]
    if model.task.labels:
        data["id2label"] = {str(i): label for i, label in enumerate(model.task.labels)}
        data["label2id"] = {label: i for i, label in enumerate(model.task.labels)}
    data["bertforge"] = {"format": FORMAT, "layout": "hf", "config": config.to_dict()}
    (d / "head.safetensors").unlink(missing_ok=True)
    _atomic_save(tensors, d / "model.safetensors")
    write_json(d / "config.json", data)
    return "transformers"


class _DropHeadNote(logging.Filter):
    """The checkpoint loader notes tensors it does not use; in a task directory those are the head's,
    which we load next, so the note would only confuse."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "no bertforge part uses" not in record.getMessage()


@contextlib.contextmanager
def _quiet_head_note():
    logger, note = logging.getLogger("bertforge"), _DropHeadNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def is_task_directory(directory: str | Path) -> bool:
    return (Path(directory) / "task.json").is_file()


def load_task_model(directory: str | Path, base: str | Path | None = None) -> tuple[TaskModel, object]:
    """A fine-tuned directory -> (task model in eval mode, its tokenizer). ``base`` overrides the base
    model directory an adapter directory names."""
    d = Path(directory)
    if not is_task_directory(d):
        raise BertforgeError(f"{d}: no task.json; this is not a fine-tuned model directory (bertforge finetune writes one)")
    task = TaskConfig.load(d / "task.json")
    tok = AutoTokenizer.from_pretrained(d)
    if (d / "adapter.safetensors").is_file():
        with safe_open(str(d / "adapter.safetensors"), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        base_dir = Path(base or meta.get("base", ""))
        if not (base_dir / "config.json").is_file():
            raise BertforgeError(f"{d}: the adapters were trained on base model {base_dir}, which is not there; "
                                 "pass the base model directory (--base)")
        model = build_task_model(load_pretrained(base_dir, "model"), task)
        adapters, _ = load_adapter(d / "adapter.safetensors", model.encoder, head=model.head_modules())
        install(model.encoder, adapters)
        return model.eval(), tok
    with _quiet_head_note():
        encoder = load_pretrained(d, "model")
    model = build_task_model(encoder, task)
    if (d / "head.safetensors").is_file():
        head = load_file(d / "head.safetensors")
    else:
        wanted = model.head_modules().state_dict()
        head = {k: v for k, v in load_file(d / "model.safetensors").items() if k in wanted}
    try:
        model.head_modules().load_state_dict(head)
    except RuntimeError as exc:
        raise BertforgeError(f"{d}: the head weights do not match task.json ({str(exc).splitlines()[0]})") from None
    return model.eval(), tok


@torch.no_grad()
def transformers_logits(directory: str | Path, batch: dict) -> dict:
    """Reference outputs of transformers' AutoModelFor... on ``batch`` (tests and the benchmark compare
    with ours; transformers is a test dependency)."""
    import transformers

    task = TaskConfig.load(Path(directory) / "task.json").task
    cls = getattr(transformers, "AutoModel" + HF_CLASS[task])
    model = cls.from_pretrained(str(directory)).eval()
    out = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return {k: v for k, v in out.items() if k.endswith("logits")}
