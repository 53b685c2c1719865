"""bertforge evaluate: score a fine-tuned model on labelled data."""

from __future__ import annotations

import argparse

from . import positive

HELP = "score a fine-tuned model: accuracy/macro-F1, entity P/R/F1 (seqeval), QA EM/F1"
DESCRIPTION = """Evaluate a fine-tuned directory (bertforge finetune's OUT/best) on labelled data in the formats
finetune reads, or on a named dataset (default split: test). Prints the metrics as JSON:
classification accuracy and macro-F1; NER entity-level precision, recall and F1 (seqeval, per type
too); QA exact match and F1 (Chinese: CMRC 2018 rules, character F1 after removing punctuation and
spaces, max over the reference answers). Gold labels the model never saw in training are an error.

--onnx FILE... also scores exported ONNX models of the same fine-tuned model (`bertforge export`, e.g. the
fp32 model.onnx and the int8 model.int8.onnx) and --torch-int8 PyTorch's dynamic int8 quantization; the
output then holds every variant's metrics and each one's change against the PyTorch fp32 model, so the
accuracy cost of quantization is measured on your data.

Example:
  bertforge evaluate --model runs/msra/best --data msra-ner:test
  bertforge evaluate --model runs/sent/best --data chinese-sentiment:test \
      --onnx exported/sent/model.onnx exported/sent/model.int8.onnx --torch-int8
  bertforge evaluate --model runs/cmrc/best --data ../shared/data/cmrc2018/cmrc2018_dev.json --predictions p.jsonl
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="fine-tuned model directory")
    p.add_argument("--data", required=True, help="a file or NAME[:split] (default split: test)")
    p.add_argument("--base", help="base model directory of an adapter model, if it moved")
    p.add_argument("--limit", type=positive, help="score only the first N examples")
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--predictions", help="also write one JSON prediction per line to this file (PyTorch model)")
    p.add_argument("--onnx", nargs="+", metavar="FILE", default=[],
                   help="also score these ONNX exports of the model and report the change against PyTorch")
    p.add_argument("--torch-int8", action="store_true",
                   help="also score PyTorch dynamic int8 quantization and report the change")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..files import write_text
    from ..finetune.evaluate import evaluate
    from ..finetune.run import say
    from ..finetune.store import load_task_model
    from ..taskdata import load

    model, tok = load_task_model(args.model, args.base)
    data = load(args.data, model.task.task, "test", args.limit)
    metrics, predictions, skips = evaluate(model, tok, data, args.batch_size, progress="evaluate")
    for line in data.skips.lines() + skips.lines():
        say(f"{args.data}: {line}")
    if args.predictions:
        write_text(args.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    if not args.onnx and not args.torch_int8:
        print(json.dumps(metrics, ensure_ascii=False))
        return 0
    from ..errors import BertforgeError
    from ..export import OnnxRuntimeModel, export_mismatch, quantize_torch

    variants = {name: OnnxRuntimeModel(name, like=model) for name in args.onnx}
    for name, runner in variants.items():  # before any scoring: a wrong file failed deep inside evaluation
        problem = export_mismatch(runner, model)
        if problem:
            raise BertforgeError(f"--onnx {name}: {problem}; evaluate --onnx needs an export of --model {args.model} "
                                 f"(bertforge export {args.model} --output DIR)")
    if args.torch_int8:
        variants["torch-int8"] = quantize_torch(model)
    report = {"pytorch": metrics, "variants": {}}
    for name, other in variants.items():
        got, _, _ = evaluate(other, tok, data, args.batch_size, progress=f"evaluate {Path(name).name}")
        change = {k: got[k] - metrics[k] for k in metrics if k != "examples" and isinstance(metrics[k], float)}
        report["variants"][name] = {"metrics": got, "change": change}
    print(json.dumps(report, ensure_ascii=False))
    return 0
