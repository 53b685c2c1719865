"""`bertforge pretrain`: pretrain (or continue pretraining) any recipe of the family on a corpus store."""

from __future__ import annotations

import argparse

from . import given_flags

HELP = "pretrain a recipe (bert, roberta, albert, electra, spanbert, macbert, ...) on a corpus store"
DESCRIPTION = """Pretrain a BERT-family model with a recipe's real objectives on a corpus store made by
`bertforge corpus build`. One training loop serves every recipe: AdamW or LAMB, warmup + decay, gradient
accumulation and clipping, bf16 autocast, periodic held-out evaluation, atomic checkpoints with exact
resume, and a final model directory that transformers loads. Runs under torchrun unchanged (DDP).

Settings come from the recipe, then --config FILE.yaml, then --set key=value (model., train. and data.
keys; a bare key is found in whichever section has it). recipe. keys change the recipe itself for an
ablation: recipe.dynamic, recipe.mask_unit, recipe.corruption, recipe.builder, recipe.objectives,
recipe.ngram_probs. `bertforge recipes` lists the recipes.

examples:
  bertforge pretrain --recipe roberta-wwm-ext --corpus pd.store --out runs/rwe --size tiny --set max_minutes=10
  bertforge pretrain --recipe albert --corpus wiki.store --out runs/albert --set embedding_size=64 lr=1e-3
  bertforge pretrain --recipe bert --corpus pd.store --out runs/no-nsp \
      --set recipe.builder=doc-sentences recipe.objectives=mlm recipe.dynamic=true   # BERT without NSP
  bertforge pretrain --recipe bert --corpus med.store --init ./bert-base-chinese --out runs/med   # continue
  bertforge pretrain --resume runs/rwe                                                         # exact resume
  bertforge pretrain --resume runs/rwe --set max_steps=20000                                   # extend a run
  torchrun --nproc_per_node 2 -m bertforge pretrain --recipe bert --corpus pd.store --out runs/ddp
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe name (see `bertforge recipes`)")
    p.add_argument("--corpus", metavar="STORE", help="corpus store directory (`bertforge corpus build`)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--size", help="tiny, mini, small, base or large (default: tiny; not with distilbert, whose "
                   "student is every other layer of the teacher)")
    p.add_argument("--tokenizer", metavar="DIR", default="",
                   help="tokenizer the store was built with (default: the store's tokenizer/ copy or --init's)")
    p.add_argument("--init", metavar="DIR", default="", help="continue pretraining this checkpoint directory")
    p.add_argument("--teacher", metavar="DIR", default="", help="distilbert: the teacher checkpoint directory")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file (model:, train:, data: or flat keys)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override settings, e.g. lr=3e-4")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its last complete checkpoint (--set may change train./data. "
                        "settings, e.g. max_steps to extend it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def refuse_resume_flags(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """A resumed run is rebuilt from its config.json: a flag that would change it is refused, not ignored."""
    from ..errors import BertforgeError

    given = given_flags(args, names)
    if given:
        raise BertforgeError(f"--resume takes the run's own settings from {args.resume}/config.json; drop "
                             f"{', '.join(given)} (only --set may change train. and data. settings)")


def run(args: argparse.Namespace) -> int:
    from ..errors import BertforgeError
    from ..pretrain import make_spec, pretrain, spec_from_run

    if args.resume:
        refuse_resume_flags(args, ("recipe", "corpus", "out", "size", "config", "tokenizer", "init", "teacher"))
        spec = spec_from_run(args.resume, args.set)
        result = pretrain(spec, args.resume, resume=True, progress_bar=not args.no_progress)
        run_dir = args.resume
    else:
        missing = [f"--{n}" for n in ("recipe", "corpus", "out") if not getattr(args, n)]
        if missing:
            raise BertforgeError(f"missing {', '.join(missing)} (or pass --resume RUN_DIR)")
        spec = make_spec(args.recipe, args.corpus, args.size, args.config, args.set,
                         tokenizer=args.tokenizer, init=args.init, teacher=args.teacher)
        result = pretrain(spec, args.out, progress_bar=not args.no_progress)
        run_dir = args.out
    print(f"stopped by {result.stopped_by} at step {result.step} ({result.tokens:,} tokens, "
          f"{result.elapsed / 60:.1f} min); run directory {run_dir}")
    if result.eval_metrics:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items()))
    return 130 if result.stopped_by == "interrupted" else 0
