"""`bertforge` command line: parse, validate, route. The library does the work.

Each subcommand lives in ``bertforge/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch, transformers-free model code,
tokenizers) happen inside ``run`` so that ``bertforge --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import BertforgeError
from .runtime import tune_allocator

# name -> module; a module that does not exist (yet) is simply not offered.
COMMANDS = {
    "info": "bertforge.commands.info",
    "recipes": "bertforge.commands.recipes",
    "tokenizer": "bertforge.commands.tokenizer",
    "corpus": "bertforge.commands.corpus",
    "pretrain": "bertforge.commands.pretrain",
    "finetune": "bertforge.commands.finetune",
    "evaluate": "bertforge.commands.evaluate",
    "predict": "bertforge.commands.predict",
    "distill": "bertforge.commands.distill",
    "export": "bertforge.commands.export",
    "serve": "bertforge.commands.serve",
    "arena": "bertforge.commands.arena",
    "demo": "bertforge.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertforge",
        description="Pretrain, fine-tune, compress and serve BERT-family encoders "
        "(BERT, RoBERTa, ALBERT, ELECTRA, SpanBERT, DistilBERT, NEZHA, MacBERT, RoFormer, WoBERT).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    tune_allocator()
    try:
        return int(args._run(args) or 0)
    except BertforgeError as exc:
        print(f"bertforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bertforge info | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
