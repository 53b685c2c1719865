"""`bertforge distill`: a smaller student from a teacher, by pretraining distillation or task distillation."""

from __future__ import annotations

import argparse

from . import given_flags, non_negative, positive
from .finetune import GROUP_BY_LENGTH_HELP

HELP = "distil a teacher into a smaller student (DistilBERT pretraining distillation, or a fine-tuned task)"
DESCRIPTION = """Make a student with fewer layers from a teacher: its layers are copies of every other
teacher layer (0, 2, 4, ...; --student-layers N takes the first N of them, --layers names them, e.g.
DistilBERT's 0,2,4,7,9,11), embeddings and pooler are copied, and it trains on the one training loop.

Pretraining distillation (--corpus STORE): DistilBERT's triple loss over a corpus store, soft-target KL
against the teacher's MLM distribution at temperature T (x T^2) + MLM + cosine of the hidden states
(weights --alpha-ce 5, --alpha-mlm 2, --alpha-cos 1, T=2 as the paper). Settings as `bertforge pretrain
--recipe distilbert` (--set train./data. keys); RUN_DIR/final is the student, loadable by transformers.

Task distillation (--task, --train): a fine-tuned teacher (classify or pair) -> a student with a copy of
its head, trained on the training data with soft-target KL against the teacher's logits at temperature
T (x T^2) plus the gold labels' cross-entropy weighted by --hard-weight. With --eval the best student is
kept in OUT/best and the teacher is scored too; OUT/distill.json holds sizes, scores and settings.

examples:
  bertforge distill --teacher runs/bert/final --student-layers 6 --corpus pd.store --out runs/distil \\
      --set max_steps=20000 batch_size=64
  bertforge distill --task classify --teacher runs/sentiment/best --train chinese-sentiment \\
      --eval chinese-sentiment:validation --student-layers 6 --out runs/sentiment-student
  bertforge distill --resume runs/distil --set max_steps=40000
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", metavar="DIR", help="teacher: a checkpoint with an MLM head, or a fine-tuned model")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--student-layers", type=positive, metavar="N", help="student depth: the first N of teacher layers "
                   "0, 2, 4, ... (default: all of them, half the teacher's depth)")
    p.add_argument("--layers", metavar="I,J,...", help="teacher layers the student copies, e.g. 0,2,4,7,9,11")
    p.add_argument("--temperature", type=float, help="softmax temperature of the soft targets (default 2)")
    g = p.add_argument_group("pretraining distillation")
    g.add_argument("--corpus", metavar="STORE", help="corpus store directory (`bertforge corpus build`)")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer the store was built with "
                   "(default: the store's tokenizer/ copy)")
    g.add_argument("--alpha-ce", type=float, help="weight of the soft-target loss (default 5)")
    g.add_argument("--alpha-mlm", type=float, help="weight of the MLM loss (default 2)")
    g.add_argument("--alpha-cos", type=float, help="weight of the hidden-state cosine loss (default 1)")
    g.add_argument("--config", metavar="FILE.yaml", help="settings file (train:, data: or flat keys)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a pretraining distillation run")
    t = p.add_argument_group("task distillation")
    t.add_argument("--task", choices=("classify", "pair"), help="the fine-tuned teacher's task")
    t.add_argument("--train", help="training data: a file or a named dataset (as `bertforge finetune`)")
    t.add_argument("--eval", help="evaluation data: keep the best student in OUT/best and score the teacher")
    # No argparse defaults in this group (TASK_DEFAULTS): a task flag given to pretraining distillation must be
    # told from one left out, to refuse it instead of ignoring it.
    t.add_argument("--soft-weight", type=float, help="weight of the soft-target KL (default 1)")
    t.add_argument("--hard-weight", type=float, help="weight of the gold-label cross-entropy (default 0.5)")
    t.add_argument("--epochs", type=float, help="training epochs (default 3)")
    t.add_argument("--batch-size", type=positive, help="examples per batch (default 32)")
    t.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None, help=GROUP_BY_LENGTH_HELP)
    t.add_argument("--lr", type=float, help="peak learning rate (default 5e-5)")
    t.add_argument("--eval-every", type=non_negative, help="evaluate every N steps (default: every epoch)")
    t.add_argument("--patience", type=non_negative, help="stop after N evaluations without improvement (default 0 = never)")
    t.add_argument("--limit", type=positive, help="use only the first N training examples")
    t.add_argument("--eval-limit", type=positive, help="use only the first N evaluation examples")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override settings, e.g. lr=3e-4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


TASK_DEFAULTS = {"soft_weight": 1.0, "hard_weight": 0.5, "epochs": 3.0, "batch_size": 32, "lr": 5e-5, "eval_every": 0,
                 "patience": 0}
TASK_ONLY = ("task", "train", "eval", *TASK_DEFAULTS, "group_by_length", "limit", "eval_limit")
PRETRAINING_ONLY = ("corpus", "tokenizer", "alpha_ce", "alpha_mlm", "alpha_cos", "config", "resume")


def _refuse(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    from ..errors import BertforgeError

    given = given_flags(args, names)
    if given:
        raise BertforgeError(f"{', '.join(given)}: {why}; drop {'it' if len(given) == 1 else 'them'}")


def run(args: argparse.Namespace) -> int:
    import json

    from ..distill import distill_pretrain, distill_task, parse_layers
    from ..errors import BertforgeError

    layers = parse_layers(args.layers)
    # The loss flags have no argparse defaults (the functions have them): --resume must tell a flag given from
    # one left out.
    loss = {k: getattr(args, k) for k in ("temperature", "alpha_ce", "alpha_mlm", "alpha_cos")
            if getattr(args, k) is not None}
    if args.task or args.train:
        missing = [f"--{n}" for n in ("task", "teacher", "train", "out") if not getattr(args, n)]
        if missing:
            raise BertforgeError(f"task distillation needs --task, --teacher, --train and --out (missing "
                                 f"{', '.join(missing)})")
        _refuse(args, PRETRAINING_ONLY, "pretraining distillation's (--corpus), not task distillation's")
        args = argparse.Namespace(**{**vars(args), **{k: v for k, v in TASK_DEFAULTS.items()
                                                       if getattr(args, k) is None}})
        from ..train.config import TrainConfig

        train = TrainConfig.from_dict({"lr": args.lr, "warmup_ratio": 0.1, "keep_last": 1, "log_every": 10},
                                      source="distill defaults").with_overrides(args.set)
        summary = distill_task(args.teacher, args.train, args.out, task=args.task, num_layers=args.student_layers,
                               layers=layers, eval_spec=args.eval, soft_weight=args.soft_weight,
                               hard_weight=args.hard_weight, train=train, epochs=args.epochs,
                               batch_size=args.batch_size, eval_every=args.eval_every, patience=args.patience,
                               limit=args.limit, eval_limit=args.eval_limit, progress=not args.no_progress,
                               group_by_length=args.group_by_length,
                               **{k: v for k, v in loss.items() if k == "temperature"})
        print(json.dumps(summary, ensure_ascii=False))
        return 0

    from ..pretrain import make_spec, spec_from_run
    from .pretrain import refuse_resume_flags

    _refuse(args, TASK_ONLY, "task distillation's (--task, --train); pretraining distillation takes its "
            "settings from --set (e.g. lr=3e-4 batch_size=64 max_steps=20000)")

    if args.resume:
        refuse_resume_flags(args, ("teacher", "corpus", "out", "config", "tokenizer", "student_layers", "layers",
                                   "temperature", "alpha_ce", "alpha_mlm", "alpha_cos"))
        spec = spec_from_run(args.resume, args.set)
        result = distill_pretrain(spec, args.resume, resume=True, progress_bar=not args.no_progress)
        run_dir = args.resume
    else:
        missing = [f"--{n}" for n in ("teacher", "corpus", "out") if not getattr(args, n)]
        if missing:
            raise BertforgeError(f"missing {', '.join(missing)} (pretraining distillation; or --task and --train "
                                 "for task distillation, or --resume RUN_DIR)")
        spec = make_spec("distilbert", args.corpus, None, args.config, args.set, tokenizer=args.tokenizer or "",
                         teacher=args.teacher)
        result = distill_pretrain(spec, args.out, layers, args.student_layers, **loss,
                                  progress_bar=not args.no_progress)
        run_dir = args.out
    where = (f"not finished: continue with bertforge distill --resume {run_dir}" if result.stopped_by == "interrupted"
             else f"student in {run_dir}/final")
    print(f"stopped by {result.stopped_by} at step {result.step} ({result.tokens:,} tokens, "
          f"{result.elapsed / 60:.1f} min); {where}")
    if result.eval_metrics:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items()))
    return 130 if result.stopped_by == "interrupted" else 0
