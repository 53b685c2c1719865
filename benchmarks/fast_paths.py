"""Fast paths side by side: measured matmul peaks, BERT-base batch-1 inference (bertforge fp32/bf16/int8 vs
transformers eager/sdpa vs ONNX Runtime), and the padding left by packing.

Every system is timed in the same process, round-robin (one call of each per round), so load from other
processes hits all of them alike; we report medians, the interquartile range, ratios to transformers
eager fp32, and model-FLOPs utilisation against the measured peak of the precision used. Writes
benchmarks/results/fast_paths.json and the <!-- fast_paths --> section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _docs import cpu_ticks, machine_note, steal_share, write_marked

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fast_paths.json"
DOC = ROOT / "docs" / "PERFORMANCE.md"


def stats(times: list[float]) -> dict:
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": med * 1e3, "iqr_ms": (q3 - q1) * 1e3, "runs": len(times),
            "times_ms": [round(t * 1e3, 3) for t in times]}  # per round, in round order (for paired ratios)


def paired_peak_ratio(times_ms: list[float], peak_ms: list[float], flops: float) -> float:
    """Median over rounds of (a system's time) / (the time ``flops`` take at the bf16 matmul peak timed in the
    same round). The host's speed wanders by 2x within minutes here; a ratio taken within each round cancels
    most of that, where the ratio of two medians taken over different moments does not."""
    return float(np.median([t / (flops * p / (2 * PEAK_N**3)) for t, p in zip(times_ms, peak_ms)]))


def round_robin(calls: dict[str, callable], rounds: int, warmup: int, pause: float = 0.2) -> dict[str, dict[str, float]]:
    """One call of each system per round, ``pause`` seconds of idle after each call (untimed): ONNX Runtime's
    thread pool keeps spinning after a call returns, and the system timed next would pay for it (measured:
    a BERT-base forward at 12 tokens took 133 ms right after an ONNX Runtime call, 74 ms after a 50 ms pause)."""
    for _ in range(warmup):
        for f in calls.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            time.sleep(pause)
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {k: stats(v) for k, v in times.items()}


PEAK_N = 2048


def peak_calls() -> dict[str, callable]:
    """A 2048^3 matmul in fp32 and in bf16 (oneDNN's AMX kernels here), to time *beside* a workload."""
    a32, b32 = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    return {"matmul peak fp32": lambda: a32 @ b32, "matmul peak bf16": lambda: a16 @ b16}


def pop_peaks(res: dict[str, dict[str, float]]) -> dict[str, float]:
    """GFLOP/s of the peak matmuls timed in a round-robin (removed from ``res``)."""
    return {p: 2 * PEAK_N**3 / (res.pop(f"matmul peak {p}")["median_ms"] / 1e3) / 1e9 for p in ("fp32", "bf16")}


def matmul_peak(rounds: int) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul, fp32 and bf16, alone. On this VM it wanders between runs (bf16 330-975
    GFLOP/s measured within an hour), so every workload below also times the same matmuls in its own
    round-robin and computes its MFU against *those* medians, taken at the same moments as the workload."""
    return pop_peaks(round_robin(peak_calls(), rounds, 2))


def memory_bandwidth(rounds: int) -> float:
    """GB/s of reading a 1 GiB fp32 tensor (a sum): what streaming weights from DRAM can reach. At batch 1
    and a few tokens, a forward is bound by reading every weight once, not by matmul throughput."""
    x = torch.ones(2**28)
    res = round_robin({"sum": lambda: x.sum()}, rounds, 2)
    return x.numel() * 4 / (res["sum"]["median_ms"] / 1e3) / 1e9


def amx_check() -> str:
    """The oneDNN implementation a bf16 linear runs, from ONEDNN_VERBOSE=1."""
    code = ("import torch\nx=torch.randn(64,768,dtype=torch.bfloat16)\nl=torch.nn.Linear(768,768).bfloat16()\n"
            "with torch.no_grad(): l(x)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True, timeout=120).stdout
    impls = sorted(set(re.findall(r"(brg[a-z_]*:[a-z0-9_]+|gemm:[a-z0-9_]+)", out)))
    return ", ".join(impls) or "none seen"


def encoder_flops(config, length: int) -> float:
    """Forward FLOPs of one sequence: 2 x (weights touched per token) x tokens + attention's 2 x 2 L^2 H."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_layers
    per_token = 2 * n * (4 * h * h + 2 * h * i)
    return per_token * length + n * 4 * length * length * h


def token_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The nn.Linear layers applied to every token (all but the pooler, which sees [CLS] only)."""
    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "pooler" not in n]


def gemms_alone(model: torch.nn.Module, length: int, packed: bool):
    """A call running only the GEMMs of a batch-1 forward of ``model`` (each per-token linear once, in
    order, with its own weights and bias, on a [length, in] input of the weights' dtype) and nothing else:
    the time oneDNN's GEMMs at these shapes need, a floor for any implementation built on them. ``packed``:
    with the weights pre-packed for oneDNN (inference.fast.PackedLinear: what prepare() runs, and the
    kernels inductor uses after freezing); else F.linear on plain weights."""
    from bertforge.inference.fast import PackedLinear

    linears = [PackedLinear.from_linear(m) if packed else m for m in token_linears(model)]
    dtype = linears[0].weight.dtype
    inputs = [torch.randn(length, m.in_features, dtype=dtype) for m in linears]
    if packed:
        return lambda: [m(x) for m, x in zip(linears, inputs)]
    return lambda: [torch.nn.functional.linear(x, m.weight, m.bias) for m, x in zip(linears, inputs)]


def inference(rounds: int, warmup: int, lengths: tuple[int, ...], compile: bool = True) -> dict:
    import transformers

    from bertforge.config import PRESETS
    from bertforge.export import OnnxRuntimeModel, export_onnx
    from bertforge.inference.fast import prepare
    from bertforge.modeling import Encoder

    config = PRESETS["bert-base"]
    torch.manual_seed(0)
    ours = Encoder(config).eval()
    tmp = Path(tempfile.mkdtemp(prefix="bf-fast-"))
    ours.save_pretrained(tmp / "model")
    theirs = {impl: transformers.AutoModel.from_pretrained(tmp / "model", attn_implementation=impl).eval()
              for impl in ("eager", "sdpa")}
    onnx = OnnxRuntimeModel(export_onnx(ours, tmp / "model.onnx"), num_threads=torch.get_num_threads())
    # prepare(): what pipelines and the server run (fp32 and bf16 with PackedLinear, int8 torch.ao dynamic)
    variants = {"bertforge fp32": prepare(ours, "fp32"), "bertforge bf16": prepare(ours, "bf16"),
                "bertforge int8": prepare(ours, "int8")}
    if compile:  # torch.compile with weight freezing (inference/fast.prepare(compile=True)): the dynamic-shape
        # graphs pipelines and the server use (compiled inside prepare), and one graph per shape (static)
        t = time.perf_counter()
        variants["bertforge bf16 compiled"] = prepare(ours, "bf16", compile=True)
        dynamic_compile_s = time.perf_counter() - t
        variants |= {"bertforge fp32 compiled static": prepare(ours, "fp32", compile=True, dynamic=False),
                     "bertforge bf16 compiled static": prepare(ours, "bf16", compile=True, dynamic=False)}
    # bytes a batch-1 forward must read at least once: every encoder weight (the word-embedding table is
    # only gathered from, a row per token)
    weight_params = sum(p.numel() for n, p in ours.named_parameters() if "word" not in n)
    linears = token_linears(ours)
    out = {"weight_params": weight_params, "linears": len(linears),
           "linear_params": sum(m.weight.numel() for m in linears)}
    for length in lengths:
        ids = torch.randint(1000, 20000, (1, length))
        mask, types = torch.ones_like(ids), torch.zeros_like(ids)
        compile_s = {}
        with torch.inference_mode():
            for name, m in variants.items():
                if "static" in name:  # the first call of a shape compiles it: timed apart
                    t = time.perf_counter()
                    m(ids, mask, types)
                    compile_s[name] = time.perf_counter() - t
        calls = {name: (lambda m=m: m(ids, mask, types)) for name, m in variants.items()}
        calls.update({f"transformers {k} fp32": (lambda m=m: m(input_ids=ids, attention_mask=mask,
                                                                token_type_ids=types)) for k, m in theirs.items()})
        calls["onnxruntime fp32"] = lambda: onnx(ids, mask, types)
        calls["bf16 GEMMs alone"] = gemms_alone(variants["bertforge bf16"], length, False)
        calls["bf16 GEMMs alone packed"] = gemms_alone(variants["bertforge bf16"], length, True)
        calls |= peak_calls()
        with torch.inference_mode():
            res = round_robin(calls, rounds, warmup)
        flops = encoder_flops(config, length)
        peak_ms = res["matmul peak bf16"]["times_ms"]
        out[f"peak_{length}"] = pop_peaks(res)
        gemms = {k: res.pop(f"bf16 GEMMs alone{s}") for k, s in (("via F.linear", ""), ("pre-packed", " packed"))}
        out[f"gemms_alone_ms_{length}"] = {k: v["median_ms"] for k, v in gemms.items()}
        out[f"gemms_alone_x_peak_{length}"] = {k: paired_peak_ratio(v["times_ms"], peak_ms, flops)
                                               for k, v in gemms.items()}
        base = res["transformers eager fp32"]["median_ms"]
        for name, v in res.items():
            v["vs_transformers_eager"] = v["median_ms"] / base
            v["gflops"] = flops / (v["median_ms"] / 1e3) / 1e9
            if "bf16" in name:
                v["x_bf16_peak_time"] = paired_peak_ratio(v["times_ms"], peak_ms, flops)
            if name in compile_s:
                v["compile_s"] = compile_s[name]
            elif name == "bertforge bf16 compiled":
                v["compile_s"] = dynamic_compile_s  # both graphs, every shape, compiled once in prepare
        out[str(length)] = res
    return out


def training(rounds: int, warmup: int, sizes: tuple[str, ...] = ("tiny", "small"), batch: int = 32) -> dict:
    """Non-padding tokens/s of one MLM training step (forward, backward, AdamW) on the same 32 sequences of
    realistic lengths: transformers BertForMaskedLM (eager, sdpa) padded to the longest; bertforge padded
    fp32, packed fp32 and packed bf16 autocast."""
    import transformers

    from bertforge.data.packing import best_fit
    from bertforge.heads import PretrainingModel
    from bertforge.objectives.mlm import MLMObjective
    from bertforge.recipes import model_config

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(60), 0.7, batch).astype(np.int64), 8, 128)
    seqs = [rng.integers(1000, 30000, n) for n in lengths]
    chosen = [rng.random(n) < 0.15 for n in lengths]
    width = -(-int(lengths.max()) // 8) * 8
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (s, c) in enumerate(zip(seqs, chosen)):
        ids[i, :len(s)], mask[i, :len(s)] = torch.from_numpy(s), 1
        labels[i, :len(s)][torch.from_numpy(c)] = torch.from_numpy(s[c])
    row, offset = best_fit(lengths, 128)
    rows = int(row.max()) + 1
    pids, pnum, plab = torch.zeros(rows, 128, dtype=torch.long), torch.zeros(rows, 128, dtype=torch.long), \
        torch.full((rows, 128), -100)
    for i, (r, o) in enumerate(zip(row, offset)):
        n = int(lengths[i])
        pids[r, o:o + n], pnum[r, o:o + n], plab[r, o:o + n] = ids[i, :n], int((row[:i] == r).sum()) + 1, labels[i, :n]
    padded = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "mlm_labels": labels}
    packed = {"input_ids": pids, "attention_mask": pnum, "token_type_ids": torch.zeros_like(pids), "mlm_labels": plab}
    real = int(lengths.sum())
    out = {"padding_padded": 1 - real / ids.numel(), "padding_packed": 1 - real / pids.numel()}
    for size in sizes:
        config = model_config("bert", size, 30522)
        torch.manual_seed(0)
        ours = MLMObjective(PretrainingModel(config, heads=("mlm",))).train()
        hf_config = transformers.BertConfig(vocab_size=30522, hidden_size=config.hidden_size,
                                            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                                            intermediate_size=config.intermediate_size)
        theirs = {impl: transformers.BertForMaskedLM._from_config(hf_config, attn_implementation=impl).train()
                  for impl in ("eager", "sdpa")}

        def step(model, call, bf16=False):
            # the fused kernel: what bertforge's build_optimizer and transformers' Trainer (adamw_torch_fused) use
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

            def run():
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = call(model)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return run

        calls = {f"transformers {k} fp32 padded": step(m, lambda m: m(input_ids=ids, attention_mask=mask,
                                                                        labels=labels).loss)
                 for k, m in theirs.items()}
        calls["bertforge fp32 padded"] = step(ours, lambda m: m(padded)[0])
        calls["bertforge fp32 packed"] = step(ours, lambda m: m(packed)[0])
        calls["bertforge bf16 packed"] = step(ours, lambda m: m(packed)[0], bf16=True)
        calls |= peak_calls()
        res = round_robin(calls, rounds, warmup)
        peak_ms = {p: res[f"matmul peak {p}"]["times_ms"] for p in ("fp32", "bf16")}
        out[f"peak_{size}"] = pop_peaks(res)
        # model FLOPs of the step: 3 x forward (forward + 2 x backward) on the real tokens, MLM head included
        flops = 3 * (sum(encoder_flops(config, int(n)) for n in lengths)
                     + 2 * sum(int(c.sum()) for c in chosen) * config.hidden_size * 30522)
        for name, v in res.items():  # MFU against its own precision's peak, taken within each round
            v["mfu_per_round"] = 1 / paired_peak_ratio(v["times_ms"], peak_ms["bf16" if "bf16" in name else "fp32"],
                                                       flops)
        base = res["transformers eager fp32 padded"]["median_ms"]
        for v in res.values():
            v["tokens_per_s"] = real / (v["median_ms"] / 1e3)
            v["vs_transformers_eager"] = base / v["median_ms"]
            v["gflops"] = flops / (v["median_ms"] / 1e3) / 1e9
        out[size] = res
    return out


def padding(seed: int = 0) -> dict:
    """Padding share of batches of realistic variable-length sequences (lognormal lengths, median ~60
    tokens, capped at 128): padded to the longest per batch of 32 vs packed by best fit."""
    from bertforge.data.packing import best_fit

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(60), 0.7, 50_000).astype(np.int64), 8, 128)
    batches = lengths[: len(lengths) // 32 * 32].reshape(-1, 32)
    padded = 1 - batches.sum() / (batches.max(1) * 32).sum()
    row, _ = best_fit(lengths, 128)
    packed = 1 - lengths.sum() / ((row.max() + 1) * 128)
    return {"padded_to_longest": float(padded), "packed": float(packed), "sequences": len(lengths)}


def markdown(r: dict) -> str:
    peak = r["peak_gflops"]
    lines = [
        "## Fast paths (benchmarks/fast_paths.py)",
        "",
        f"Run {r['date']}, {r['threads']} threads, 1-minute load average {r['load']} on {r['cores']} cores when "
        "it started" + (" (other jobs were running: absolute times are noisy; systems were interleaved round-robin, "
                        "so the ratios hold)." if r["load"] > 1.5 else " (no other jobs in this VM).")
        + machine_note(r.get("steal"))
        + " Every system is timed in the same process, round-robin, with a short untimed pause before each call "
        "(ONNX Runtime's thread pool spins after a call and would slow whatever runs next).",
        "",
        f"- Matmul peak (2048^3) measured alone at the start: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} "
        f"GFLOP/s. It wanders on this VM (bf16 330-975 GFLOP/s within an hour), so each table below times the "
        "same matmuls in its own round-robin, beside the workload, and its MFU uses those. Memory read "
        f"bandwidth (sum of 1 GiB): {r['memory_gbps']:.1f} GB/s.",
        "- glibc malloc tuned as the CLI does (`bertforge.runtime.tune_allocator`: no mmap/munmap per big "
        "tensor), for every system in this process: " + ("yes." if r.get("allocator_tuned") else "no."),
        f"- AMX: with `ONEDNN_VERBOSE=1` a bf16 nn.Linear runs oneDNN `{r['amx']}` (this oneDNN names the "
        "AMX ISA avx10_1_512_amx; older builds say avx512_core_amx).",
        "- Using the fast paths: `--set pack=true` packs pretraining rows (MLM-style recipes; data/packing.py); "
        "`--set precision=bf16` trains under bf16 autocast; `bertforge.inference.fast.prepare(model, 'fp32' | "
        "'bf16' | 'int8')` and `bucketed(...)` for inference (sorted by length, batched, returned in input order); "
        "prepare lays each linear's weight out for oneDNN once (PackedLinear: bf16 always, fp32 up to 64 rows), "
        "as inductor does after freezing, without compiling.",
        "- `compiled` rows: `prepare(model, precision, compile=True)`, torch.compile (inductor) with weight "
        "freezing (weights folded and pre-packed for oneDNN once). `compiled`: dynamic shapes, what `--compile` "
        "gives pipelines and the server (both graphs compiled once inside prepare, for every shape); `compiled "
        "static`: `dynamic=False`, one graph per shape, compiled at its first call (fixed-shape jobs). Compile "
        "time reported apart.",
        "- Training rows: every system steps with the fused AdamW kernel (bertforge's optimizer; transformers' "
        "Trainer default), dropout 0.1 as in BERT; bertforge trains with its CPU dropout mask "
        "(modeling.dropout) and eager attention (the CPU flash-attention backward is slower).",
        f"- Padding, realistic lengths (lognormal, median 60, max 128): padded to the longest of a batch of 32 "
        f"{r['padding']['padded_to_longest']:.1%}, packed (data/packing.py) {r['padding']['packed']:.2%}.",
        "",
    ]
    tr = r["training"]
    lines += [f"### MLM training step, 32 sequences of realistic length (padding: {tr['padding_padded']:.0%} padded "
              f"to the longest, {tr['padding_packed']:.1%} packed)", "",
              "| size | system | median ms | IQR ms | non-padding tok/s | speedup vs transformers eager | MFU | "
              "MFU per round |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in ("tiny", "small"):
        for name, v in tr.get(size, {}).items():
            p = tr[f"peak_{size}"]["bf16"] if "bf16" in name else tr[f"peak_{size}"]["fp32"]
            per_round = f"{v['mfu_per_round']:.0%}" if "mfu_per_round" in v else "-"
            lines.append(f"| {size} | {name} | {v['median_ms']:.0f} | {v['iqr_ms']:.0f} | {v['tokens_per_s']:,.0f} | "
                         f"{v['vs_transformers_eager']:.2f}x | {v['gflops'] / p:.0%} | {per_round} |")
    lines.append("")
    lines.append("MFU against the 2048^3 matmul of the system's precision timed in the same round-robin: " + "; ".join(
        f"{size} fp32 {tr[f'peak_{size}']['fp32']:.0f}, bf16 {tr[f'peak_{size}']['bf16']:.0f} GFLOP/s"
        for size in ("tiny", "small") if f"peak_{size}" in tr) + ". MFU per round: the step's FLOPs over its "
        "time, over the peak timed in the same round, the median over rounds (steadier while the host's speed "
        "wanders).")
    lines.append("")
    weight_mb = 2 * r["inference"]["weight_params"] / 1e6
    for length, res in r["inference"].items():
        if not length.isdigit():
            continue
        peak = r["inference"][f"peak_{length}"]
        gemm_count = r["inference"].get("linears", 0)
        gemm_flops = 2 * r["inference"].get("linear_params", 0) * int(length)  # FLOPs of the GEMMs alone
        flops = res["transformers eager fp32"]["gflops"] * res["transformers eager fp32"]["median_ms"] / 1e3
        compute_ms, memory_ms = 1e3 * flops / peak["bf16"], weight_mb / 1e3 / r["memory_gbps"] * 1e3
        lines += [f"### BERT-base inference, batch 1, length {length} (median of {next(iter(res.values()))['runs']} runs)",
                  "", f"{flops:.1f} GFLOP a forward: {compute_ms:.1f} ms at the measured bf16 matmul peak "
                  f"({1e3 * flops / peak['fp32']:.1f} ms at the fp32 peak). Reading the {weight_mb:.0f} MB of bf16 "
                  f"encoder weights once takes {memory_ms:.1f} ms at the measured {r['memory_gbps']:.0f} GB/s, so no "
                  f"bf16 forward can take less than {max(compute_ms, memory_ms):.1f} ms "
                  f"({'compute' if compute_ms >= memory_ms else 'memory'} bound); the target allows 1.5x the "
                  f"matmul-peak time, {1.5 * compute_ms:.1f} ms. Matmul peak timed in this round-robin: fp32 "
                  f"{peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s."
                  + (f" The forward's {gemm_count} per-token GEMMs alone (bf16, the model's own weights, nothing "
                     "else, timed in the same round-robin) take " + " and ".join(
                         f"{ms:.1f} ms {kind} ({gemm_flops / ms / 1e6:.0f} GFLOP/s, "
                         f"{gemm_flops / ms / 1e6 / peak['bf16']:.0%} of the 2048^3 rate)" for kind, ms in gemm_ms.items())
                     + ": the floor for an implementation built on oneDNN's GEMMs at these shapes."
                     if (gemm_ms := r["inference"].get(f"gemms_alone_ms_{length}")) else ""), "",
                  "| system | median ms | IQR ms | vs transformers eager fp32 | vs ONNX Runtime fp32 | GFLOP/s | "
                  "MFU (own precision peak) | x bf16 peak time, per round | compile s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ort = res["onnxruntime fp32"]["median_ms"]
        for name, v in res.items():
            p = peak["bf16"] if "bf16" in name else peak["fp32"]
            mfu = f"{v['gflops'] / p:.0%}" if "int8" not in name else "n/a"
            paired = f"{v['x_bf16_peak_time']:.2f}x" if "x_bf16_peak_time" in v else "-"
            compiled = f"{v['compile_s']:.0f}" if "compile_s" in v else "-"
            lines.append(f"| {name} | {v['median_ms']:.1f} | {v['iqr_ms']:.1f} | {v['vs_transformers_eager']:.2f}x "
                         f"| {v['median_ms'] / ort:.2f}x | {v['gflops']:.0f} | {mfu} | {paired} | {compiled} |")
        lines += ["", "x bf16 peak time, per round: in each round, the system's time over the time this forward's "
                  "FLOPs take at the 2048^3 bf16 rate timed in that round; the median over rounds (the target: "
                  "at most 1.5x)." + (" The GEMMs alone, the same way: " + ", ".join(
                      f"{kind} {x:.2f}x" for kind, x in gx.items()) + "."
                      if (gx := r["inference"].get(f"gemms_alone_x_peak_{length}")) else ""), ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    write_marked(DOC, "<!-- fast_paths -->", "<!-- /fast_paths -->", text, "# Performance\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: one per usable core)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    args = parser.parse_args()
    from bertforge.inference.fast import set_threads
    from bertforge.runtime import tune_allocator

    threads = set_threads(args.threads or None)
    tuned = tune_allocator()  # as the CLI does (bertforge/runtime.py); transformers, in this process, gets it too
    ticks = cpu_ticks()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "threads": threads, "cores": os.cpu_count(),
        "load": round(os.getloadavg()[0], 1), "torch": torch.__version__,
        "peak_gflops": matmul_peak(args.rounds), "memory_gbps": memory_bandwidth(args.rounds), "amx": amx_check(),
        "allocator_tuned": tuned, "padding": padding(),
        "inference": inference(args.rounds, args.warmup, (128, 12), compile=args.compile),
        "training": training(max(3, args.rounds // 2), 1),
        "steal": steal_share(ticks),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    text = markdown(result)
    write_section(text)
    print(text)


if __name__ == "__main__":
    main()
