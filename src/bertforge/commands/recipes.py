"""`bertforge recipes`: list the pretraining recipes, what each changes and the paper's settings."""

from __future__ import annotations

import argparse
import json

HELP = "list pretraining recipes: what each changes vs BERT and the paper's original hyper-parameters"
DESCRIPTION = """List every pretraining recipe bertforge knows (a row of data in bertforge/recipes.py):
its masking, sequence builder, objectives, optimizer defaults and the paper's original settings.

examples:
  bertforge recipes
  bertforge recipes albert --size tiny     # one recipe in full, with its architecture at that size
  bertforge recipes --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one recipe in full")
    p.add_argument("--size", default="base", help="size for the architecture shown with NAME (default: base)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..recipes import RECIPES, model_config, recipe

    if args.name:
        r = recipe(args.name)
        cfg = model_config(args.name, args.size, vocab_size=30522)
        data = {"name": args.name, **asdict(r), "architecture": cfg.to_dict()}
        if args.json:
            print(json.dumps(data, indent=2, default=str))
            return 0
        for key, value in data.items():
            print(f"{key:>12}: {value}")
        return 0
    if args.json:
        print(json.dumps({n: asdict(r) for n, r in RECIPES.items()}, indent=2, default=str))
        return 0
    width = max(map(len, RECIPES))
    for name, r in RECIPES.items():
        masking = r.mask_unit + ("/dynamic" if r.dynamic else f"/static x{r.dupe_factor}")
        print(f"{name:<{width}}  {r.summary}")
        print(f"{'':<{width}}  masking {masking}, corruption {r.corruption}, builder {r.builder}, "
              f"objectives {'+'.join(r.objectives)}, optimizer {r.optim.get('optimizer')} lr {r.optim.get('lr')}")
        print(f"{'':<{width}}  paper: {r.paper}")
    return 0
