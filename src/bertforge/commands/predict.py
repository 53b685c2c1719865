"""bertforge predict: run a pipeline over texts given on the command line or in a file."""

from __future__ import annotations

import argparse

from . import add_fast_path_arguments, positive

HELP = "run inference: fill-mask, feature extraction, classification, NER, question answering"
DESCRIPTION = """Run a pipeline on MODEL_DIR and print one JSON result per input line (formats: docs/finetuning.md).

Inputs are TEXT arguments or --input FILE with one input per line: plain text, or a JSON object
({"text": ..., "text_pair": ...} for pair classification, {"question": ..., "context": ...} for QA).
A line that cannot be used (empty, bad JSON) prints {"error": ..., "line": N} and the run goes on.
The task defaults to the fine-tuned directory's own; fill-mask and feature-extraction work on any
checkpoint (fill-mask needs a masked-LM head).

Example:
  bertforge predict --model runs/msra/best "张三住在北京"
  bertforge predict --model models/zh-tiny --task fill-mask "北京是[MASK][MASK]的首都"
  bertforge predict --model runs/cmrc/best --input questions.jsonl --output answers.jsonl
"""

TASKS = ("fill-mask", "feature-extraction", "text-classification", "token-classification", "question-answering")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("texts", nargs="*", help="inputs (or use --input)")
    p.add_argument("--task", choices=TASKS, help="pipeline (default: the fine-tuned directory's task)")
    p.add_argument("--input", help="file with one input per line")
    p.add_argument("--output", help="write results here instead of standard output")
    p.add_argument("--top-k", type=positive, help="candidates per mask / labels per text / answers per question")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="feature-extraction pooling")
    p.add_argument("--base", help="base model directory of an adapter model, if it moved")
    p.add_argument("--batch-size", type=positive, default=32, help="inputs per forward (default: 32)")
    add_fast_path_arguments(p)


def _parse(line: str):
    """A JSON object when the line is one, else the text itself."""
    import json

    stripped = line.strip()
    if stripped.startswith("{"):
        return json.loads(stripped)
    return line.rstrip("\n")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from ..errors import BertforgeError
    from ..files import atomic_path, read_text
    from ..finetune.run import say
    from ..inference.pipelines import InputError, pipeline

    if bool(args.texts) == bool(args.input):
        raise BertforgeError("give the inputs as TEXT arguments or with --input FILE (one of the two)")
    pipe = pipeline(args.task, args.model, base=args.base, pooling=args.pooling, batch_size=args.batch_size,
                    precision=args.precision, compile=args.compile)
    if args.top_k is not None and pipe.task in ("feature-extraction", "token-classification"):
        raise BertforgeError(f"--top-k: {pipe.task} has no candidates to rank; leave it out")
    options = {} if args.top_k is None else {"top_k": args.top_k}
    if args.input:
        lines = read_text(args.input).splitlines()
        if not lines:
            raise BertforgeError(f"{args.input}: the file is empty; expected one input per line")

        def where(n: int) -> str:
            return f"{args.input}:{n}"
    else:
        lines = args.texts

        def where(n: int) -> str:
            return f"argument {n}"
    # --output is written under a temporary name and renamed when complete (removed if the run fails).
    errors = 0
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            out = stack.enter_context(open(stack.enter_context(atomic_path(args.output)), "w", encoding="utf-8"))
        # Chunks of many batches: the pipeline sorts a chunk by length (less padding) and writes results back in
        # input order; a chunk's results are written before the next is read.
        step = args.batch_size * 32
        for start in range(0, len(lines), step):
            chunk = list(enumerate(lines[start:start + step], start=start + 1))
            items, results = [], {}
            for n, line in chunk:
                try:
                    items.append((n, _parse(line)))
                except json.JSONDecodeError as exc:
                    results[n] = {"error": f"{where(n)}: invalid JSON ({exc.msg})", "line": n}
            try:
                results |= dict(zip([n for n, _ in items], pipe([item for _, item in items], **options)))
            except BertforgeError:
                for n, item in items:  # the batch was refused: run its inputs one by one to name the bad lines
                    try:
                        results[n] = pipe([item], **options)[0]
                    except InputError as exc:
                        results[n] = {"error": f"{where(n)}: {exc.problem}", "line": n}
                    except BertforgeError as exc:
                        results[n] = {"error": f"{where(n)}: {exc}", "line": n}
            for n, _ in chunk:
                errors += "error" in results[n] if isinstance(results[n], dict) else 0
                out.write(json.dumps(results[n], ensure_ascii=False) + "\n")
    if errors:
        say(f"{errors} of {len(lines)} inputs could not be used (their lines say why)")
    return 1 if errors == len(lines) else 0
