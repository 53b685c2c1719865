"""Distillation runs: a smaller student from a teacher, on the one training loop (train.Trainer).

Two kinds, both students initialised "by taking one layer out of two" of the teacher (Sanh et al., 2019,
sec. 3; ``student_layers`` picks the indices, or name them, e.g. DistilBERT's 0, 2, 4, 7, 9, 11):

- pretraining distillation (``distill_pretrain``): the ``distilbert`` recipe over a corpus store, i.e.
  objectives.DistillationObjective's triple loss (soft-target KL + MLM + hidden-state cosine), with the
  student's depth chosen here. The run directory is a pretraining run (``final/`` loads with
  bertforge.AutoModel and transformers); the chosen layers and loss weights are kept in its config.json
  under "distill", so ``resume=True`` rebuilds the same student.
- task distillation (``distill_task``): a fine-tuned teacher (classify / pair) -> a student whose encoder
  is every other teacher layer and whose head is a copy of the teacher's, trained on the task's training
  data with ``TaskDistillationObjective``: soft targets from the teacher's logits at temperature T,
  scaled by T^2, plus the hard-label cross-entropy with a weight (Hinton et al., 2015, sec. 2). The
  student is written like any fine-tuned model (finetune/store.py), so ``bertforge evaluate``/``predict``
  /``serve``/``export`` and transformers' AutoModelForSequenceClassification read it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import require
from .errors import BertforgeError
from .files import write_json
from .tasks import TaskModel

# What the soft-target loss compares per task: one logit vector per sequence.
DISTILLABLE_TASKS = ("classify", "pair")


def student_layers(depth: int, num_layers: int | None = None, layers: Sequence[int] | None = None) -> list[int]:
    """The teacher layer indices the student copies: ``layers`` as given, else the first ``num_layers`` of
    0, 2, 4, ... (default: all of them, half the depth rounded up)."""
    if layers is not None:
        layers = [int(i) for i in layers]
        if num_layers is not None and num_layers != len(layers):
            raise BertforgeError(f"--student-layers {num_layers} but --layers names {len(layers)} layers {layers}")
        if not layers or any(not 0 <= i < depth for i in layers):
            raise BertforgeError(f"student layers={layers}: each must be a teacher layer index in 0..{depth - 1}")
        return layers
    every_other = list(range(0, depth, 2))
    n = len(every_other) if num_layers is None else num_layers
    if not 0 < n <= len(every_other):
        raise BertforgeError(
            f"--student-layers {n}: a {depth}-layer teacher gives 1 to {len(every_other)} layers taking every "
            f"other layer (0, 2, 4, ...); name other layers with --layers, e.g. --layers 0,2,4,7,9,11"
        )
    return every_other[:n]


def parse_layers(text: str | None) -> list[int] | None:
    """"0,2,4,7" -> [0, 2, 4, 7]; None -> None."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BertforgeError(f"--layers {text!r}: expected comma-separated layer indices, e.g. 0,2,4,7,9,11") from None


def student_encoder(encoder: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of ``encoder`` (embeddings, pooler) keeping only teacher ``layers``, in that order."""
    from .heads import PretrainingModel
    from .objectives.distill import student_from_teacher

    # student_from_teacher copies sublayer by sublayer (cross-layer sharing included) and checks shapes; it
    # takes a PretrainingModel, so the encoder goes into a head-less one (its own fresh encoder is dropped).
    shell = PretrainingModel(encoder.config.replace(num_layers=1), heads=())
    shell.config, shell.encoder = encoder.config, encoder
    return student_from_teacher(shell, layers=list(layers)).encoder


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- pretraining distillation -----------------------------------------------------------------------
def distill_pretrain(spec, run_dir: str | Path, layers: Sequence[int] | None = None, num_layers: int | None = None,
                     *, temperature: float = 2.0, alpha_ce: float = 5.0, alpha_mlm: float = 2.0,
                     alpha_cos: float = 1.0, resume: bool = False, progress_bar: bool = True):
    """Pretraining distillation of ``spec.teacher`` (a PretrainSpec of the distilbert recipe, from
    pretrain.make_spec) into a student of the chosen teacher layers; returns the loop's TrainResult.
    With ``resume=True`` the layers and loss weights come from RUN_DIR/config.json (the arguments are not
    used). `bertforge pretrain --recipe distilbert` runs this too, with the defaults."""
    from .auto import AutoModelForMaskedLM
    from .data.tokenizers import AutoTokenizer
    from .objectives import DistillationObjective, student_from_teacher
    from .pretrain import build_streams, data_config, exporter, load_tokenizer, open_corpus, train_config, world_size
    from .train.checkpoint import seed_everything
    from .train.loop import Trainer

    if spec.recipe != "distilbert":
        raise BertforgeError(f"pretraining distillation runs the distilbert recipe, not {spec.recipe!r}")
    if not spec.teacher:
        raise BertforgeError("pretraining distillation needs --teacher DIR (a checkpoint with an MLM head)")
    # What the student and the loss are; a resumed run keeps what it recorded.
    settings = {"temperature": temperature, "alpha_ce": alpha_ce, "alpha_mlm": alpha_mlm, "alpha_cos": alpha_cos,
                **(settings_from_run(run_dir) if resume else {})}
    weights = SimpleNamespace(**settings)
    require(weights, ("temperature",), lambda v: v > 0, "a number > 0")
    require(weights, ("alpha_ce", "alpha_mlm", "alpha_cos"), lambda v: v >= 0, "a number >= 0")
    store = open_corpus(spec)
    tokenizer = load_tokenizer(spec, store)
    if (Path(spec.teacher) / "tokenizer_config.json").is_file() or (Path(spec.teacher) / "vocab.txt").is_file():
        # The teacher's logits index its own vocabulary: the store must be encoded with the same tokenizer.
        store.check_tokenizer(AutoTokenizer.from_pretrained(spec.teacher))
    tcfg = train_config(spec)
    batch_size = data_config(spec).batch_size
    if batch_size % world_size():
        raise BertforgeError(f"batch_size={batch_size} cannot be split evenly over {world_size()} processes; "
                             f"use a multiple of {world_size()}")
    seed_everything(tcfg.seed)  # the same student weights in every run and on every rank
    teacher = AutoModelForMaskedLM.from_pretrained(spec.teacher, heads=("mlm",))
    if teacher.config.vocab_size < int(store.vocab_size):
        raise BertforgeError(f"teacher {spec.teacher} has {teacher.config.vocab_size} embedding rows but the store "
                             f"{spec.corpus} has a vocabulary of {store.vocab_size}")
    if "layers" not in settings:
        settings = {"teacher_layers": teacher.config.num_layers,
                    "layers": student_layers(teacher.config.num_layers, num_layers, layers), **settings}
    student = student_from_teacher(teacher, layers=settings["layers"])
    objective = DistillationObjective(teacher, student, settings["temperature"], settings["alpha_ce"],
                                      settings["alpha_mlm"], settings["alpha_cos"])
    train_stream, eval_factory = build_streams(spec, store, tokenizer, tcfg.seed, tcfg.eval_batches, tcfg.grad_accum)
    trainer = Trainer(objective, train_stream, eval_factory, tcfg, run_dir, resume=resume,
                      export_fn=exporter(objective, tokenizer, spec), progress_bar=progress_bar,
                      run_info={"pretrain": spec.to_dict(), "model": student.config.to_dict(), "distill": settings})
    return trainer.train()


def settings_from_run(run_dir: str | Path) -> dict:
    """The "distill" section of a distillation run's config.json (layers, temperature, loss weights). A run
    of `bertforge pretrain --recipe distilbert` by an older version recorded none: it used the defaults,
    so {} (distill_pretrain's defaults) stands for them."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise BertforgeError(f"{path} does not exist: {run_dir} is not a bertforge distillation run") from None
    except json.JSONDecodeError as exc:
        raise BertforgeError(f"{path}: not valid JSON ({exc})") from None
    if "distill" in config:
        return config["distill"]
    if config.get("pretrain", {}).get("recipe") == "distilbert":
        return {}
    raise BertforgeError(f"{path}: no distillation settings; was it made by `bertforge distill`?")


# ---- task distillation ------------------------------------------------------------------------------
class TaskDistillationObjective(nn.Module):
    """Student task model trained against a frozen fine-tuned teacher (sequence classification).

        L = soft_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + hard_weight * CE(z_s, y)

    z_t, z_s: teacher and student logits [B, C]; the KL is averaged over the batch ("batchmean"); the T^2
    keeps the soft term's gradients the same size as T changes (Hinton et al., 2015, sec. 2). Batches
    without ``labels`` train on the soft term alone (unlabelled transfer data). ``.model`` is the student.
    Metrics: soft_loss, hard_loss and accuracy (with labels), agreement (student argmax == teacher argmax).
    """

    name = "task-distill"

    def __init__(self, teacher: TaskModel, student: TaskModel, temperature: float = 2.0, soft_weight: float = 1.0,
                 hard_weight: float = 0.5):
        super().__init__()
        for role, m in (("teacher", teacher), ("student", student)):
            if m.task.task not in DISTILLABLE_TASKS:
                raise BertforgeError(f"task distillation supports {', '.join(DISTILLABLE_TASKS)}; the {role} is a "
                                     f"{m.task.task!r} model")
        if teacher.task.labels != student.task.labels:
            raise BertforgeError(f"teacher labels {list(teacher.task.labels)} != student labels "
                                 f"{list(student.task.labels)}")
        if not temperature > 0 or min(soft_weight, hard_weight) < 0 or soft_weight + hard_weight == 0:
            raise BertforgeError(f"task distillation: temperature={temperature} must be > 0 and the weights "
                                 f"(soft {soft_weight}, hard {hard_weight}) >= 0, not both 0")
        self.student = student
        # Registered so .to(device) moves it; frozen, so the optimizer (parameters requiring grad) skips it.
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.soft_weight, self.hard_weight = temperature, soft_weight, hard_weight

    def train(self, mode: bool = True) -> "TaskDistillationObjective":
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout stays off
        return self

    @property
    def model(self) -> TaskModel:
        return self.student

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.student(batch)
        s_logits = out["logits"].float()  # [B, C]
        with torch.no_grad():
            t_logits = self.teacher({k: v for k, v in batch.items() if k != "labels"})["logits"].float()  # [B, C]
        t = self.temperature
        soft = F.kl_div(F.log_softmax(s_logits / t, -1), F.log_softmax(t_logits / t, -1),
                        reduction="batchmean", log_target=True) * t * t
        loss = self.soft_weight * soft
        metrics = {"soft_loss": float(soft.detach()),
                   "agreement": float((s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean())}
        if "labels" in batch:  # SequenceClassifier's cross-entropy against the gold labels
            loss = loss + self.hard_weight * out["loss"]
            metrics["hard_loss"] = float(out["loss"].detach())
            metrics["accuracy"] = float((s_logits.argmax(-1) == batch["labels"]).float().mean())
        return loss, metrics


def task_student(teacher: TaskModel, num_layers: int | None = None, layers: Sequence[int] | None = None) -> TaskModel:
    """The student task model: the chosen teacher layers (default every other one) and a copy of the head.
    A frozen-encoder teacher gives a student whose encoder trains (the point of distilling it)."""
    from .tasks import build_task_model

    if teacher.task.layer_mix:
        raise BertforgeError("task distillation of a layer-mix teacher is not supported: its scalar mix weighs "
                             "every teacher layer; fine-tune the teacher without --layer-mix")
    chosen = student_layers(teacher.encoder.config.num_layers, num_layers, layers)
    student = build_task_model(student_encoder(teacher.encoder, chosen), dataclasses.replace(teacher.task, frozen=False))
    student.head_modules().load_state_dict(teacher.head_modules().state_dict())
    return student


def distill_task(
    teacher_dir: str | Path,
    train_spec: str,
    out: str | Path,
    *,
    task: str | None = None,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    eval_spec: str | None = None,
    temperature: float = 2.0,
    soft_weight: float = 1.0,
    hard_weight: float = 0.5,
    train=None,
    epochs: float = 3.0,
    batch_size: int = 32,
    eval_every: int = 0,
    patience: int = 0,
    limit: int | None = None,
    eval_limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    group_by_length: bool | None = None,
) -> dict:
    """Distil the fine-tuned model in ``teacher_dir`` into a student on ``train_spec`` (a file or named
    dataset, as `bertforge finetune --train` takes). OUT/final is the last student, OUT/best the best on
    ``eval_spec`` when given (with the teacher's score there in the summary). Returns the summary, also
    written to OUT/distill.json. ``group_by_length``: batches of similar lengths (finetune.run.EpochStream; None:
    for runs of at least finetune.run.AUTO_GROUP_MIN_STEPS steps)."""
    from .finetune.evaluate import check_labels, evaluate, require_labels
    from .finetune.run import encode_for_training, say, task_trainer
    from .finetune.store import load_task_model, save_task_model
    from .metrics import TASK_METRIC
    from .taskdata import load
    from .train import TrainConfig

    out = Path(out)
    teacher, tok = load_task_model(teacher_dir)
    if task is not None and task != teacher.task.task:
        raise BertforgeError(f"--task {task}: the teacher in {teacher_dir} is a {teacher.task.task!r} model")
    if teacher.task.task not in DISTILLABLE_TASKS:
        raise BertforgeError(f"{teacher_dir}: task distillation supports {', '.join(DISTILLABLE_TASKS)} models; this "
                             f"teacher is a {teacher.task.task!r} model")
    if resume:
        layers, num_layers = settings_from_run(out)["layers"], None
    chosen = student_layers(teacher.encoder.config.num_layers, num_layers, layers)
    student = task_student(teacher, layers=chosen)
    train_data = load(train_spec, teacher.task.task, "train", limit)
    if not train_data.examples:
        raise BertforgeError(f"{train_spec}: no usable training examples")
    check_labels(teacher, train_data)  # a label the teacher never learnt has no soft target to match
    eval_data = load(eval_spec, teacher.task.task, "validation", eval_limit) if eval_spec else None
    if eval_data is not None:
        require_labels(eval_data)
        check_labels(teacher, eval_data)
    features, rows = encode_for_training(student.task, tok, train_data, train_data.skips)
    if not features:
        raise BertforgeError(f"{train_spec}: no training example left after encoding")
    if len({"labels" in f for f in features}) > 1:
        raise BertforgeError(f"{train_spec}: some rows have a label and some do not; distil on one kind or the other")
    for line in train_data.skips.lines():
        say(f"train data: {line}")

    objective = TaskDistillationObjective(teacher, student, temperature, soft_weight, hard_weight)
    settings = {"teacher": str(teacher_dir), "teacher_layers": teacher.encoder.config.num_layers, "layers": chosen,
                "temperature": temperature, "soft_weight": soft_weight, "hard_weight": hard_weight}
    sizes = {"teacher_parameters": count_parameters(teacher), "student_parameters": count_parameters(student)}
    run_info = {"distill": settings, "task_distill": {"task": teacher.task.task, "train": train_spec, "eval": eval_spec,
                                                      "epochs": epochs, "batch_size": batch_size,
                                                      "examples": len(train_data.examples), **sizes}}
    trainer, layout = task_trainer(
        objective, student, tok, lambda d: save_task_model(student, tok, d), features, rows, out,
        train or TrainConfig(), epochs=epochs, batch_size=batch_size, eval_every=eval_every, eval_data=eval_data,
        patience=patience, group_by_length=group_by_length, resume=resume, run_info=run_info, progress=progress)
    metric = TASK_METRIC[teacher.task.task]
    result = trainer.train()
    summary = {"task": teacher.task.task, "metric": metric, **settings, **sizes,
               "size_ratio": round(sizes["student_parameters"] / sizes["teacher_parameters"], 4),
               "steps": result.step, "stopped_by": result.stopped_by, "train_seconds": round(result.elapsed, 2)}
    if eval_data is not None:
        teacher_score = evaluate(teacher, tok, eval_data, batch_size=max(32, batch_size))[0][metric]
        summary |= {"best": trainer.best, "best_step": trainer.best_step, "teacher_score": teacher_score,
                    "retained": round(trainer.best / teacher_score, 4) if teacher_score else None}
    summary["saved"] = {k: f"{out / k} ({v})" for k, v in layout.items()}
    write_json(out / "distill.json", summary)
    return summary
