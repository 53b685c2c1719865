"""Run every benchmark, one after another, each in its own process; each writes its own
benchmarks/results/<name>.json and its own section of docs/PERFORMANCE.md.

    .venv/bin/python benchmarks/run_all.py                 # all of them
    .venv/bin/python benchmarks/run_all.py --only fast_paths encoder_latency

Separate processes keep one benchmark's threads, caches and imports from colouring the next one's numbers.
A failing benchmark is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Cheapest first, so a short session still gets most sections; serving and fine-tuning take longest.
BENCHMARKS = ["fast_paths", "encoder_latency", "masking", "corpus_build", "pretrain_throughput", "serving",
              "finetune_eval"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        script = HERE / f"{name}.py"
        if not script.is_file():
            print(f"== {name}: {script} missing, skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
