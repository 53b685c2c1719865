"""bertforge finetune: train a task head (and the encoder, or adapters) on labelled data."""

from __future__ import annotations

import argparse

from . import non_negative, positive

HELP = "fine-tune a model for classification, sentence pairs, NER or extractive QA"
DESCRIPTION = """Fine-tune MODEL_DIR (any local checkpoint directory) on a task and keep the best model.

Data (--train, --eval): CSV/TSV/JSONL with text[, text_b], label columns (classify, pair); CoNLL, a token
and a tag per line with a blank line between sentences (ner); SQuAD v1 JSON (qa); or a named dataset:
rotten-tomatoes, chinese-sentiment (classify), msra-ner (ner), optionally NAME:train|validation|test.
Rows that cannot be used are skipped and reported with their file and line.

The task metric (accuracy, entity F1, QA F1) is measured on --eval every epoch (or --eval-every steps);
the best model goes to OUT/best, loadable by transformers' matching AutoModelFor... class whenever
transformers has one (a CRF, a scalar mix, mean pooling or adapters keep bertforge's layout), and
training stops after --patience evaluations without improvement. OUT also holds checkpoints,
metrics.jsonl, report.md and finetune.json (the summary).

Example:
  bertforge finetune --task ner --model models/zh-tiny --train msra-ner --eval msra-ner:validation \\
      --crf --epochs 2 --out runs/msra
  bertforge finetune --task classify --model minilm --train reviews.csv --eval dev.csv --adapter 64 --out runs/a
"""


GROUP_BY_LENGTH_HELP = ("batch examples of similar length: padding 2-3%% instead of 43-55%% on real task data, about "
                        "half the compute; --no-group-by-length: plain random batches. Default: grouped when the run "
                        "has at least 100 optimizer steps (in shorter runs, batches that lean to one label, where "
                        "labels go with length, kept a small model from learning; docs/finetuning.md)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=("classify", "pair", "ner", "qa"))
    p.add_argument("--model", required=True, help="checkpoint directory to start from")
    p.add_argument("--train", required=True, help="training data: a file or a named dataset")
    p.add_argument("--eval", help="evaluation data (default: none, keep the final model)")
    p.add_argument("--out", required=True, help="run directory; the best model is written to OUT/best")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None, help=GROUP_BY_LENGTH_HELP)
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--eval-every", type=non_negative, default=0, help="evaluate every N steps (default: every epoch)")
    p.add_argument("--patience", type=non_negative, default=3, help="stop after N evaluations without improvement (0 = never)")
    p.add_argument("--max-length", type=positive, help="tokens per sequence (default 128; qa 256)")
    p.add_argument("--doc-stride", type=non_negative, help="qa: tokens of overlap between context windows (default 32)")
    p.add_argument("--max-answer-length", type=positive, help="qa: longest answer in tokens (default 30)")
    p.add_argument("--pooling", choices=("cls", "mean"), help="sentence vector for classification (default cls)")
    p.add_argument("--layer-mix", action="store_true", help="feed the head a learned scalar mix of all layers")
    p.add_argument("--crf", action="store_true", help="ner: add a CRF layer (constrained Viterbi decoding)")
    p.add_argument("--frozen", action="store_true", help="frozen encoder: train only the head (feature mode)")
    p.add_argument("--adapter", type=non_negative, default=0, metavar="M",
                   help="train Houlsby bottleneck adapters of size M instead of the encoder")
    p.add_argument("--llrd", type=float, default=1.0, help="layer-wise lr decay factor (e.g. 0.9; 1 = off)")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (a baseline)")
    p.add_argument("--limit", type=positive, help="use only the first N training examples")
    p.add_argument("--eval-limit", type=positive, help="use only the first N evaluation examples")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    p.add_argument("--config", help="YAML file of training-loop settings (TrainConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training-loop setting")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json

    from ..finetune.run import finetune, say
    from ..train.config import TrainConfig, read_yaml_mapping

    base = {"lr": args.lr, "warmup_ratio": 0.1, "keep_last": 1, "log_every": 10}
    if args.config:
        base |= read_yaml_mapping(args.config)
    train = TrainConfig.from_dict(base, source=args.config or "finetune defaults").with_overrides(args.set)
    options = {"pooling": args.pooling, "layer_mix": args.layer_mix or None, "crf": args.crf or None,
               "frozen": args.frozen or None, "max_length": args.max_length or (256 if args.task == "qa" else None),
               "doc_stride": args.doc_stride, "max_answer_length": args.max_answer_length}
    summary = finetune(
        args.task, args.model, args.train, args.out, eval_spec=args.eval, tokenizer=args.tokenizer,
        options={k: v for k, v in options.items() if v is not None}, train=train, epochs=args.epochs,
        batch_size=args.batch_size, eval_every=args.eval_every, patience=args.patience, adapter=args.adapter,
        llrd=args.llrd, random_init=args.random_init, limit=args.limit, eval_limit=args.eval_limit,
        resume=args.resume, progress=not args.quiet, group_by_length=args.group_by_length,
    )
    if "best" in summary:
        say(f"best {summary['metric']} {summary['best']:.4f} at step {summary['best_step']} "
            f"({summary['stopped_by']}, {summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    for name, where in summary["saved"].items():
        say(f"{name} model: {where}")
    print(json.dumps({k: v for k, v in summary.items() if k != "evaluations"}, ensure_ascii=False))
    return 0
