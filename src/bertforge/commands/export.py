"""`bertforge export`: a model directory -> ONNX (dynamic batch and sequence axes), verified, optionally int8."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model to ONNX (verified against PyTorch) and optionally int8-quantize it"
DESCRIPTION = """Export a model directory to ONNX with dynamic batch and sequence axes. The exported graph
is run with ONNX Runtime at several batch sizes and lengths (with padding) and compared with PyTorch;
a difference above --atol is an error. --quantize int8 adds ONNX Runtime's dynamic int8 quantization
(int8 weights, activations quantized at run time) and reports its size, its speed-up and how far its
outputs move. The output directory also gets the model's config and tokenizer files, so ONNX Runtime
needs nothing else to run it; `bertforge evaluate --model MODEL_DIR --onnx OUT/model.onnx` scores it beside
the PyTorch model (serve, predict and evaluate --model load PyTorch weights, not ONNX).

What is exported (--head): "task" = a fine-tuned directory's model with its head (logits; start/end
logits for QA); "encoder" = the bare encoder (last_hidden_state, pooler_output); "mlm" = encoder +
masked-LM head (mlm_logits); "auto" = task for a fine-tuned directory, else mlm when the checkpoint has
an MLM head, else the encoder. Load the result with bertforge.export.OnnxRuntimeModel(path,
like=torch_model) to run pipelines or evaluation on it.

examples:
  bertforge export runs/ner-model --output exported/ner-model --quantize int8
  bertforge export runs/minilm --output exported/minilm --head encoder
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (bertforge or transformers layout)")
    p.add_argument("--output", "-o", required=True, help="directory to write model.onnx (and model.int8.onnx) into")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--head", choices=["auto", "task", "encoder", "mlm"], default="auto", help="what to export (default: auto)")
    p.add_argument("--quantize", choices=["int8"], help="also write an int8 dynamically quantized model")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 7 to 20 with torch 2.13 (default: 17)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |ONNX - PyTorch| accepted (default: 1e-4)")


def run(args: argparse.Namespace) -> int:
    import json
    import shutil

    import torch

    from ..errors import BertforgeError
    from ..export import QUANTIZE_MIN_OPSET, opset_range

    low, high = opset_range()
    if not low <= args.opset <= high:
        raise BertforgeError(f"--opset {args.opset}: torch {torch.__version__.split('+')[0]}'s ONNX exporter writes "
                             f"opsets {low} to {high}")
    if args.quantize == "int8" and args.opset < QUANTIZE_MIN_OPSET:
        raise BertforgeError(f"--opset {args.opset}: --quantize int8 needs opset {QUANTIZE_MIN_OPSET} or higher "
                             "(ONNX Runtime's quantizer cannot infer the shapes of older graphs)")
    source, out = Path(args.model), Path(args.output)
    if not source.is_dir():
        raise BertforgeError(f"{source}: not a model directory")
    if out.exists() and not out.is_dir():
        raise BertforgeError(f"--output {out}: exists and is not a directory")
    if out.resolve() == source.resolve():
        raise BertforgeError(f"--output {out}: is the model directory itself; choose a new directory")
    model, head = _load(source, args.head)
    # the outermost directory this export creates (out or a missing parent of it)
    created = next((d for d in reversed([out, *out.parents]) if not d.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export(args, model, head, source, out)
    except BaseException:
        if created is not None:  # a failed or interrupted export leaves no directory that looks like an export
            shutil.rmtree(created, ignore_errors=True)
        raise


def _export(args: argparse.Namespace, model, head: str, source: Path, out: Path) -> int:
    """Copy the config and tokenizer files, write model.onnx (verified) and --quantize's file, export.json."""
    import shutil
    import time

    import torch

    from ..errors import BertforgeError
    from ..export import OnnxRuntimeModel, export_onnx, output_tensors, quantize_onnx, sample_inputs, verify_onnx
    from ..files import atomic_path, write_json

    for f in source.iterdir():  # config and tokenizer files: everything but the weights
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt", ".onnx", ".h5", ".msgpack"):
            shutil.copy2(f, out / f.name)

    fp32 = out / "model.onnx"
    with atomic_path(fp32) as tmp:  # under its name only once verified: a failed check leaves no model.onnx
        export_onnx(model, tmp, opset=args.opset, about={"source": str(source.resolve()), "head": head})
        try:
            diff = verify_onnx(model, tmp, atol=args.atol)
        except BertforgeError as exc:  # name the file the user asked for, not the temporary one
            raise BertforgeError(str(exc).replace(str(tmp), str(fp32))) from None
    report: dict = {"exported_from": {"model": str(source.resolve()), "head": head, "opset": args.opset},
                    "model.onnx": {"bytes": fp32.stat().st_size, "max_abs_diff_vs_pytorch": diff}}
    print(f"wrote {fp32} ({fp32.stat().st_size / 2**20:.1f} MiB), max |ONNX - PyTorch| = {diff:.2e} (atol {args.atol:g})")
    if args.quantize == "int8":
        int8 = quantize_onnx(fp32, out / "model.int8.onnx")
        inputs = sample_inputs(model, 8, 128)
        runners = {"fp32": OnnxRuntimeModel(fp32), "int8": OnnxRuntimeModel(int8)}
        outputs, seconds = {}, {}
        for name, runner in runners.items():
            runner(**inputs)  # warm-up
            start = time.perf_counter()
            for _ in range(5):
                outputs[name] = runner(**inputs)
            seconds[name] = (time.perf_counter() - start) / 5
        first = output_tensors(outputs["fp32"])[0][1], output_tensors(outputs["int8"])[0][1]
        cos = torch.nn.functional.cosine_similarity(first[0].flatten(0, -2), first[1].flatten(0, -2), dim=-1)
        report["model.int8.onnx"] = {
            "bytes": int8.stat().st_size, "speedup_vs_fp32": seconds["fp32"] / seconds["int8"],
            "mean_cosine_vs_fp32": cos.mean().item(), "min_cosine_vs_fp32": cos.min().item(),
        }
        print(f"wrote {int8} ({int8.stat().st_size / 2**20:.1f} MiB, {fp32.stat().st_size / int8.stat().st_size:.1f}x smaller), "
              f"{seconds['fp32'] / seconds['int8']:.2f}x the fp32 speed on 8x128 tokens, output cosine vs fp32 "
              f"mean {cos.mean():.4f} min {cos.min():.4f}; run `bertforge evaluate` for the task-score change")
    write_json(out / "export.json", report, ensure_ascii=True)
    return 0


def _load(source, head: str):
    """(model, what it is: "task", "encoder" or "mlm") for --head."""
    from ..auto import AutoModel, AutoModelForMaskedLM
    from ..errors import BertforgeError
    from ..finetune.store import is_task_directory, load_task_model

    if head in ("auto", "task") and is_task_directory(source):
        return load_task_model(source)[0], "task"
    if head == "task":
        raise BertforgeError(f"{source}: --head task needs a fine-tuned directory (with task.json)")
    if head == "encoder":
        return AutoModel.from_pretrained(source), "encoder"
    model = AutoModelForMaskedLM.from_pretrained(source)
    if model.mlm is None:
        if head == "mlm":
            raise BertforgeError(f"--head mlm: {source} has no masked-LM head (use --head encoder)")
        return model.encoder, "encoder"
    return model, "mlm"
