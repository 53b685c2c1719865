"""What int8 costs in task score: fine-tuned models exported to ONNX, quantized, and scored with
`bertforge evaluate` beside the PyTorch fp32 model on the same test data.

    .venv/bin/python benchmarks/int8_accuracy.py --case NAME MODEL_DIR DATA_SPEC [--case ...]

e.g. with the fine-tuned models that `benchmarks/finetune_eval.py --work W` leaves behind:

    --case minilm-rotten-tomatoes W/rt/best rotten-tomatoes:test \\
    --case tiny-chinese-sentiment W/chinese-sentiment/pretrained/best chinese-sentiment:test \\
    --case tiny-msra-ner W/msra-ner/pretrained/best msra-ner:test

For each case: `bertforge export --quantize int8` (ONNX fp32 + ONNX Runtime int8), then `bertforge evaluate
--onnx model.onnx model.int8.onnx --torch-int8` (the command users run), and the time of each scoring pass.
Writes benchmarks/results/int8_accuracy.json and the <!-- int8-accuracy --> section of docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _docs import write_marked

ROOT = Path(__file__).resolve().parents[1]
BF = [sys.executable, "-m", "bertforge"]


def run_case(name: str, model: str, data: str, work: Path) -> dict:
    out = work / name
    subprocess.run(BF + ["export", model, "-o", str(out), "--quantize", "int8"], check=True, cwd=ROOT)
    started = time.monotonic()
    proc = subprocess.run(BF + ["evaluate", "--model", model, "--data", data, "--onnx", str(out / "model.onnx"),
                                str(out / "model.int8.onnx"), "--torch-int8"], check=True, cwd=ROOT,
                          capture_output=True, text=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    export = json.loads((out / "export.json").read_text())
    rename = {str(out / "model.onnx"): "ONNX Runtime fp32", str(out / "model.int8.onnx"): "ONNX Runtime int8",
              "torch-int8": "PyTorch int8 (torch.ao)"}
    return {"model": model, "data": data, "pytorch": report["pytorch"], "export": export,
            "variants": {rename[k]: v for k, v in report["variants"].items()},
            "evaluate_seconds": round(time.monotonic() - started, 1)}


def markdown(results: dict) -> str:
    lines = ["| case | test examples | metric | PyTorch fp32 | ONNX Runtime fp32 | ONNX Runtime int8 | PyTorch int8 (torch.ao) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, r in results["cases"].items():
        metrics = [k for k in ("accuracy", "macro_f1", "f1", "exact_match") if k in r["pytorch"]]
        for k in metrics:
            cells = [f"{r['pytorch'][k]:.4f}"]
            for v in ("ONNX Runtime fp32", "ONNX Runtime int8", "PyTorch int8 (torch.ao)"):
                got = r["variants"][v]
                cells.append(f"{got['metrics'][k]:.4f} ({got['change'][k]:+.4f})")
            lines.append(f"| {name} | {int(r['pytorch']['examples'])} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs=3, action="append", metavar=("NAME", "MODEL_DIR", "DATA"), required=True)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bertforge-int8-"))
    results = {"date": time.strftime("%Y-%m-%d"), "cases": {}}
    for name, model, data in args.case:
        results["cases"][name] = run_case(name, model, data, work)
        print(json.dumps({name: results["cases"][name]["variants"]}, ensure_ascii=False), flush=True)
    out = ROOT / "benchmarks" / "results" / "int8_accuracy.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    doc = ROOT / "docs" / "serving.md"
    body = ("Measured with `benchmarks/int8_accuracy.py` "
            f"({results['date']}; raw numbers in benchmarks/results/int8_accuracy.json), each cell the score "
            "and its change against PyTorch fp32:\n\n" + markdown(results))
    write_marked(doc, "<!-- int8-accuracy -->", "<!-- /int8-accuracy -->", body)
    print(f"wrote {out} and {doc}")


if __name__ == "__main__":
    main()
