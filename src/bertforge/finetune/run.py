"""One fine-tuning run on the project's training loop: data -> task model -> Trainer -> best model.

``finetune(...)`` reads and checks everything before the first step (tokenizer against model, eval labels
against training labels, rows to skip or truncate, each reported with where it happened), trains with
``train.Trainer`` on shuffled epochs, evaluates the task metric on the whole eval set every epoch (or
every N steps), keeps the best model in ``OUT/best`` (store.py: loadable by transformers' matching
AutoModelFor... class whenever it can be) and stops early after ``patience`` evaluations without
improvement. ``OUT`` also holds the loop's checkpoints, metrics.jsonl, report.md and finetune.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..adapters import AdapterSet, install, train_only_adapters
from ..convert.checkpoint import load_pretrained
from ..data.collate import group_by_length
from ..data.tokenizers import AutoTokenizer
from ..errors import BertforgeError
from ..files import write_json
from ..features import layerwise_lr_groups
from ..metrics import TASK_METRIC
from ..modeling import Encoder
from ..taskdata import TaskData, load
from ..tasks import TaskConfig, TaskObjective, build_task_model, full_tag_set
from ..train import TrainConfig, Trainer
from .encode import check_tokenizer, collate, encode_qa, encode_texts, encode_tokens
from .evaluate import check_labels, evaluate, require_labels
from .store import save_task_model


class EpochStream:
    """Shuffled mini-batches of the training features, epoch after epoch (the step budget ends the run).

    Each batch also carries ``rows`` (where its examples came from), so a failure names them.
    The position (epoch, index) is the whole state: epoch e's order is a permutation seeded by seed + e.

    ``group_by_length``: batches of examples of similar length (data.collate.group_by_length), grouped in
    units of an optimizer step (``step_batches`` micro-batches): random batches of 32 on real task data are
    43-55% padding, grouped ones 2-3%."""

    def __init__(self, features: list[dict], rows: list[str], batch_size: int, pad_id: int, seed: int,
                 group_by_length: bool = False, step_batches: int = 1):
        self.features, self.rows = features, rows
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.group_unit = batch_size * step_batches if group_by_length else 0  # 0: random batches
        self.lengths = np.array([len(f["input_ids"]) for f in features]) if group_by_length else None
        self.epoch = self.index = 0

    def order(self, epoch: int) -> list[int]:
        """The epoch's feature indices; its batches are consecutive slices of ``batch_size``."""
        order = torch.randperm(len(self.features), generator=torch.Generator().manual_seed(self.seed + epoch)).numpy()
        if self.group_unit:
            rng = np.random.default_rng([self.seed, epoch])
            order = group_by_length(order, self.lengths[order], self.group_unit, rng)
        return order.tolist()

    def __iter__(self):
        n = len(self.features)
        while True:
            order = self.order(self.epoch)
            while self.index < n:
                take = order[self.index:self.index + self.batch_size]
                self.index += len(take)
                batch = collate([self.features[i] for i in take], self.pad_id)
                batch["rows"] = [self.rows[i] for i in take]
                yield batch
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "group_by_length": self.group_unit}

    def load_state_dict(self, state: dict) -> None:
        unit = int(state.get("group_by_length", 0))  # a checkpoint from before grouping: random batches
        if unit != self.group_unit:
            how = f"batched by length in steps of {unit} examples" if unit else "took random batches"
            flag = "--group-by-length and the same batch size and grad_accum" if unit else "--no-group-by-length"
            raise BertforgeError(f"the checkpoint's run {how}; resume it with {flag} to get the same batches")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class RowsObjective(TaskObjective):
    """TaskObjective that names the rows of a batch whose forward fails."""

    def forward(self, batch: dict):
        try:
            return super().forward(batch)
        except Exception as exc:
            rows = batch.get("rows") or []
            if hasattr(exc, "add_note"):  # Python >= 3.11; the traceback then ends with the rows
                exc.add_note(f"bertforge: the failing batch holds {len(rows)} rows: {', '.join(rows[:8])}"
                             + (", ..." if len(rows) > 8 else ""))
            raise


class LayerwiseAdamW(torch.optim.AdamW):
    """AdamW over groups carrying ``lr_scale`` (features.layerwise_lr_groups): the loop sets one lr for
    every group from the schedule; each step applies lr x lr_scale."""

    def step(self, closure=None):
        for g in self.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
        try:
            return super().step(closure)
        finally:
            for g in self.param_groups:
                g["lr"] = g["lr"] / g["lr_scale"]


class FinetuneTrainer(Trainer):
    """``train.Trainer`` with fine-tuning's evaluation: the task metric over the whole eval set, the best
    model saved when it improves, and early stopping (the step budget is cut to the current step, so the
    loop ends through its normal path: final checkpoint, report, export)."""

    def __init__(self, *args, task_eval, metric: str, patience: int, on_best, best: float = -math.inf, **kwargs):
        super().__init__(*args, **kwargs)
        self.task_eval, self.metric, self.patience, self.on_best = task_eval, metric, patience, on_best
        self.best, self.best_step, self.stale, self.early_stopped = best, None, 0, False
        self.history: list[dict] = []

    def evaluate(self) -> dict[str, float]:
        metrics = self.task_eval()
        record = {**metrics, "step": self.step, "elapsed": round(self.elapsed, 3)}
        self.history.append(record)
        self.log.write({**record, "kind": "eval", "tokens": self.tokens})
        if metrics[self.metric] > self.best:
            self.best, self.best_step, self.stale = metrics[self.metric], self.step, 0
            self.on_best(record)
        else:
            self.stale += 1
            if self.patience and self.stale >= self.patience and not self.early_stopped:
                self.early_stopped = True
                self.config = dataclasses.replace(self.config, max_steps=self.step)
        return metrics


def encode_for_training(task: TaskConfig, tok, data: TaskData, skips) -> tuple[list[dict], list[str]]:
    """Training features with labels, and the source row of each."""
    ids = {label: i for i, label in enumerate(task.labels)}
    if task.task in ("classify", "pair"):
        features = encode_texts(tok, data.examples, ids, task.max_length, skips)
        return features, [ex.source for ex in data.examples]
    if task.task == "ner":
        features = encode_tokens(tok, data.examples, ids, task.max_length, skips)
    else:
        features = encode_qa(tok, data.examples, task, skips, train=True)
    return features, [data.examples[f["example"]].source for f in features]


def load_base(model_dir: str | Path, tokenizer: str | Path | None, random_init: bool) -> tuple[Encoder, object]:
    """The encoder to fine-tune and its tokenizer. ``random_init``: the same architecture, fresh weights."""
    tok = AutoTokenizer.from_pretrained(tokenizer or model_dir)
    if random_init:
        from ..convert.checkpoint import read_config

        encoder = Encoder(read_config(model_dir).config)
    else:
        encoder = load_pretrained(model_dir, "model")
    check_tokenizer(tok, encoder.config, str(tokenizer or model_dir))
    return encoder, tok


def say(message: str) -> None:
    print(f"bertforge: {message}", file=sys.stderr)


# Length-grouped batches by default only for runs of at least this many optimizer steps. Grouping changes
# which examples share a batch, and where labels go with length (chinese-sentiment: 73% of the longest
# tenth of reviews positive, 27% of the second shortest) the batches lean to one label. Measured on
# chinese-sentiment, the tiny pretrained model, 5 seeds: 300 examples x 2 epochs (20 steps) stayed at the
# majority class in 4 of 5 runs with grouped batches (test accuracy 0.52) and learnt in 5 of 5 with random
# ones (0.61-0.62); at 63 steps (1,000 examples) 0.657 grouped / 0.664 random, at 188 steps (3,000,
# 3 seeds) 0.764 / 0.757. A run this short takes seconds to minutes, so grouping saves little there.
AUTO_GROUP_MIN_STEPS = 100


def task_trainer(objective, model, tok, save, features: list[dict], rows: list[str], out: Path, config: TrainConfig,
                 *, epochs: float, batch_size: int, eval_every: int, eval_data: TaskData | None, patience: int,
                 group_by_length: bool | None, resume: bool, run_info: dict, progress: bool
                 ) -> tuple[Trainer, dict[str, str]]:
    """The loop of a task-model run (fine-tuning, task distillation): ``epochs`` over ``features`` in batches of
    ``batch_size`` (EpochStream), of similar lengths if ``group_by_length`` (None: when the run has at least
    AUTO_GROUP_MIN_STEPS steps; the choice is recorded in ``run_info["batches"]``). With ``eval_data``: the
    task metric of ``model`` every ``eval_every`` steps (0: once an epoch), the best model saved by
    ``save(directory) -> layout name`` to OUT/best beside its eval.json, early stopping after ``patience``
    evaluations without a gain, and the best so far read back on resume. Returns the trainer and the dict
    that records what ``save`` returned for "best" and "final"."""
    steps_per_epoch = math.ceil(len(features) / batch_size)
    config = dataclasses.replace(config, max_steps=max(1, math.ceil(epochs * steps_per_epoch)),
                                 eval_every=eval_every or steps_per_epoch)
    chosen = "by the caller"
    if group_by_length is None:
        group_by_length = config.max_steps >= AUTO_GROUP_MIN_STEPS
        chosen = f"auto: {config.max_steps} steps, grouped from {AUTO_GROUP_MIN_STEPS}"
    run_info = {**run_info, "batches": {"group_by_length": group_by_length, "chosen": chosen}}
    layout: dict[str, str] = {}
    stream = EpochStream(features, rows, batch_size, tok.pad_token_id, config.seed, group_by_length, config.grad_accum)
    kwargs = dict(resume=resume, run_info=run_info, progress_bar=progress,
                  export_fn=lambda d: layout.__setitem__("final", save(d)))
    if eval_data is None:
        return Trainer(objective, stream, None, config, out, **kwargs), layout
    metric = TASK_METRIC[model.task.task]
    best_file = out / "best" / "eval.json"

    def on_best(record: dict) -> None:
        layout["best"] = save(out / "best")
        write_json(best_file, record, ensure_ascii=True)

    def task_eval() -> dict[str, float]:
        return evaluate(model, tok, eval_data, batch_size=max(32, batch_size), progress="eval" if progress else None)[0]

    best = json.loads(best_file.read_text())[metric] if resume and best_file.is_file() else -math.inf
    trainer = FinetuneTrainer(objective, stream, None, config, out, task_eval=task_eval, metric=metric,
                              patience=patience, on_best=on_best, best=best, **kwargs)
    return trainer, layout


def finetune(
    task: str,
    model_dir: str | Path,
    train_spec: str,
    out: str | Path,
    *,
    eval_spec: str | None = None,
    tokenizer: str | Path | None = None,
    options: dict | None = None,
    train: TrainConfig | None = None,
    epochs: float = 3.0,
    batch_size: int = 32,
    eval_every: int = 0,
    patience: int = 3,
    adapter: int = 0,
    llrd: float = 1.0,
    random_init: bool = False,
    limit: int | None = None,
    eval_limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    group_by_length: bool | None = None,
) -> dict:
    """Fine-tune; returns the summary also written to OUT/finetune.json. ``group_by_length``: batches of
    similar lengths (see EpochStream; about half the compute on real data), False: plain random batches,
    None: grouped when the run has at least AUTO_GROUP_MIN_STEPS optimizer steps (see there)."""
    out = Path(out)
    encoder, tok = load_base(model_dir, tokenizer, random_init)
    train_data = load(train_spec, task, "train", limit)
    if not train_data.examples:
        raise BertforgeError(f"{train_spec}: no usable training examples")
    eval_data = load(eval_spec, task, "validation", eval_limit) if eval_spec else None
    labels = train_data.labels()
    task_cfg = TaskConfig(task, labels=full_tag_set(labels) if task == "ner" else tuple(labels), **(options or {}))
    model = build_task_model(encoder, task_cfg)
    adapters = None
    if adapter:
        if task_cfg.frozen:
            raise BertforgeError("adapters and a frozen encoder exclude each other: adapters train inside the encoder")
        adapters = AdapterSet(encoder, adapter)
        install(encoder, adapters)
        train_only_adapters(model, encoder)
    if eval_data is not None:
        require_labels(eval_data)  # before training, not at the first evaluation
        check_labels(model, eval_data)
    skips = train_data.skips
    features, rows = encode_for_training(task_cfg, tok, train_data, skips)
    if not features:
        raise BertforgeError(f"{train_spec}: no training example left after encoding")
    for line in skips.lines():
        say(f"train data: {line}")
    if eval_data is not None:
        for line in eval_data.skips.lines():
            say(f"eval data: {line}")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    run_info = {"finetune": {"task": task_cfg.task, "model": str(model_dir), "train": train_spec, "eval": eval_spec,
                             "random_init": random_init, "adapter": adapter, "llrd": llrd, "epochs": epochs,
                             "batch_size": batch_size,
                             "examples": len(train_data.examples), "features": len(features),
                             "trainable_parameters": trainable, "parameters": total}}
    base_dir = Path(model_dir)

    def save(directory: Path) -> str:
        return save_task_model(model, tok, directory, adapters, base_dir if adapters is not None else None)

    trainer, layout = task_trainer(
        RowsObjective(model), model, tok, save, features, rows, out, train or TrainConfig(), epochs=epochs,
        batch_size=batch_size, eval_every=eval_every, eval_data=eval_data, patience=patience,
        group_by_length=group_by_length, resume=resume, run_info=run_info, progress=progress)
    metric = TASK_METRIC[task]
    if llrd != 1.0:
        if config.optimizer != "adamw":
            raise BertforgeError("layer-wise lr decay is implemented for optimizer=adamw")
        groups = layerwise_lr_groups(model, encoder, llrd, config.weight_decay)
        for g in groups:
            g.pop("adapt", None)
        trainer.optimizer = LayerwiseAdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    started = time.monotonic()
    result = trainer.train()
    summary = {
        "task": task_cfg.task, "metric": metric, "stopped_by": "early_stopping" if getattr(trainer, "early_stopped", False)
        else result.stopped_by, "examples": len(train_data.examples), "steps": result.step, "train_seconds": round(result.elapsed, 2),
        "wall_seconds": round(time.monotonic() - started, 2), "trainable_parameters": trainable, "parameters": total,
        "skipped": {reason: n for reason, n in skips.counts.items()},
    }
    if isinstance(trainer, FinetuneTrainer):
        summary |= {"best": trainer.best, "best_step": trainer.best_step, "evaluations": trainer.history}
    summary["saved"] = {k: f"{out / k} ({v})" for k, v in layout.items()}
    write_json(out / "finetune.json", summary)
    return summary



def finetune_and_test(task: str, model_dir: str | Path, train_spec: str, test_spec: str, out: str | Path, *,
                      eval_spec: str | None = None, n_train: int | None = None, n_eval: int | None = None,
                      n_test: int | None = None, epochs: float = 2.0, batch_size: int = 32, lr: float = 5e-4,
                      options: dict | None = None, random_init: bool = False, tokenizer: str | Path | None = None,
                      seed: int = 0, patience: int = 2, progress: bool = False) -> dict:
    """Fine-tune with model selection on ``eval_spec`` (when given), then score the selected model on the
    first ``n_test`` examples of ``test_spec``: the protocol of the fine-tuning benchmark and the arena."""
    from .store import load_task_model

    out = Path(out)
    summary = finetune(
        task, model_dir, train_spec, out, eval_spec=eval_spec, tokenizer=tokenizer, options=options,
        train=TrainConfig(lr=lr, warmup_ratio=0.1, keep_last=1, save_every_steps=0, log_every=50, seed=seed),
        epochs=epochs, batch_size=batch_size, patience=patience, random_init=random_init, limit=n_train,
        eval_limit=n_eval if eval_spec else None, progress=progress,
    )
    # Without a validation split (OCNLI, CMRC) there is no model selection: the final model is scored.
    model, tok = load_task_model(out / ("best" if eval_spec else "final"))
    data = load(test_spec, task, "test", n_test)
    started = time.monotonic()
    metrics, _, _ = evaluate(model, tok, data, batch_size=64)
    return {
        "train_examples": summary.get("examples", n_train), "test_examples": len(data.examples),
        "metrics": {k: v for k, v in metrics.items() if k != "examples"},
        "finetune_seconds": summary["wall_seconds"], "steps": summary["steps"],
        "seconds_per_step": summary["train_seconds"] / max(summary["steps"], 1),
        "eval_seconds": round(time.monotonic() - started, 2), "stopped_by": summary["stopped_by"],
        "parameters": summary["parameters"],
    }
