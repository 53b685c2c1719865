"""bertforge arena: pretrain recipes for equal CPU time, fine-tune them alike, compare."""

from __future__ import annotations

import argparse

HELP = "which recipe for my budget? pretrain variants for equal CPU time, fine-tune alike, compare"
DESCRIPTION = """Pretrain each recipe (or ablation variant) at one size for the same CPU time on the same corpus
store, fine-tune each on the same tasks with the same settings, and write OUT/report.md: parameters,
tokens seen, held-out MLM loss, each task's score, batch-1 latency, the direction of each paper's claim
(with a noise estimate), and plots (score against pretraining time; loss curves).

--budget-minutes is turned into a step count per variant by timing a few steps of that variant first;
the plan is kept in OUT/arena.json, so the run is deterministic given --seed from then on. Rerunning the
same command resumes a killed arena: finished variants and tasks are skipped, an interrupted pretraining
run continues from its last checkpoint. Variants and tasks may be added to a finished arena.

Variants: every recipe name, plus ablations (bert-dynamic, bert-no-nsp, roberta-wwm-ext-char, macbert-mask,
albert-unshared, albert-e/8, albert-e/4, albert-e/1, random-init); `claims` = every variant the claims
compare. --list shows them. Tasks: chinese-sentiment, msra-ner, cmrc2018, ocnli (these two read
--data-dir), rotten-tomatoes.

examples:
  bertforge arena --corpus pd.store --out arena-zh --budget-minutes 2 --recipes claims \\
      --tasks chinese-sentiment,msra-ner,cmrc2018 --data-dir ../shared/data
  bertforge arena --corpus wiki.store --out arena-en --budget-minutes 2 --recipes bert,roberta,electra \\
      --tasks rotten-tomatoes
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", metavar="STORE", help="corpus store directory (`bertforge corpus build`)")
    p.add_argument("--out", metavar="DIR", help="arena directory (created, or resumed when it exists)")
    p.add_argument("--recipes", default="bert,roberta,electra", help="comma-separated recipes/variants, or claims")
    p.add_argument("--tasks", default="chinese-sentiment", help="comma-separated tasks")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, default=0.0, help="pretraining CPU minutes per variant")
    budget.add_argument("--budget-steps", type=int, default=0, help="pretraining steps per variant (no calibration)")
    p.add_argument("--size", default="tiny", help="model size for every variant (default: tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="pretraining settings for every variant (as in `bertforge pretrain --set`)")
    p.add_argument("--lr", type=float, default=5e-4, help="pretraining lr of AdamW recipes (default 5e-4)")
    p.add_argument("--lamb-lr", type=float, default=2e-3, help="pretraining lr of LAMB recipes (default 2e-3)")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning lr (default 5e-4)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every task's example budgets")
    p.add_argument("--data-dir", default="", help="directory holding cmrc2018/ and ocnli/ (e.g. ../shared/data)")
    p.add_argument("--calibration-steps", type=int, default=8, help="steps timed per variant (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines only)")
    p.add_argument("--list", action="store_true", help="list the variants, tasks and claims, then exit")


def run(args: argparse.Namespace) -> int:
    from ..arena import CLAIMS, TASKS, VARIANTS, ArenaSettings, expand_variants, run_arena
    from ..errors import BertforgeError

    if args.list:
        print("variants:")
        for name, v in VARIANTS.items():
            print(f"  {name:22s} {v.recipe:16s} {v.summary}")
        print("tasks:")
        for name, t in TASKS.items():
            print(f"  {name:22s} {t.task:9s} {t.metric}")
        print("claims:")
        for c in CLAIMS:
            print(f"  {c.better} vs {c.worse}: {c.paper}: {c.text}")
        return 0
    if not args.corpus or not args.out:
        raise BertforgeError("--corpus STORE and --out DIR are required (or --list)")
    settings = ArenaSettings(
        corpus=args.corpus, variants=tuple(expand_variants([x.strip() for x in args.recipes.split(",") if x.strip()])),
        tasks=tuple(x.strip() for x in args.tasks.split(",") if x.strip()), budget_minutes=args.budget_minutes,
        budget_steps=args.budget_steps, size=args.size, seed=args.seed, pretrain_settings=tuple(args.assignments),
        lr=args.lr, lamb_lr=args.lamb_lr, finetune_lr=args.finetune_lr, scale=args.scale, data_dir=args.data_dir,
        calibration_steps=args.calibration_steps)
    run_arena(args.out, settings, progress=not args.no_progress, say=lambda m: print(m, flush=True))
    print(f"report: {args.out}/report.md")
    return 0
