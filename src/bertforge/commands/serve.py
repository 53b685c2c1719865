"""`bertforge serve`: HTTP inference with dynamic micro-batching and a web demo."""

from __future__ import annotations

import argparse

from . import add_fast_path_arguments, port, positive

HELP = "serve a model over HTTP (FastAPI + uvicorn) with dynamic batching, metrics and a web demo"
DESCRIPTION = """Serve MODEL_DIR over HTTP. Endpoints, each present when the model can do the task:
/v1/fill-mask, /v1/embed, /v1/classify, /v1/ner, /v1/qa; plus /v1/info, /healthz, /metrics
(Prometheus), /docs (OpenAPI) and a web demo at /. Concurrent requests are gathered for up to
--max-wait-ms or --max-batch items, grouped by length and run as one forward each; when --max-queue
items are already waiting, new requests get 503 with Retry-After. Requests with more than --max-inputs
inputs or a text longer than --max-chars characters get 413.

Binds 127.0.0.1 unless --host says otherwise. Set an API key (required in the X-API-Key header) with
the BERTFORGE_API_KEY environment variable or --api-key-file. SIGINT/SIGTERM stop accepting, finish
in-flight requests and exit.

examples:
  bertforge serve runs/ner-model
  BERTFORGE_API_KEY=s3cret bertforge serve runs/minilm --host 0.0.0.0 --port 8080 --tasks embed
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port (default: 8000)")
    p.add_argument("--tasks", help="comma-separated subset of the tasks the model can do (default: all)")
    p.add_argument("--api-key-file", help="file holding the API key (else $BERTFORGE_API_KEY, else no key)")
    p.add_argument("--max-batch", type=positive, default=32, help="items per forward at most (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a forward waits for company (default: 5)")
    p.add_argument("--max-queue", type=positive, default=256, help="items waiting per task before 503 (default: 256)")
    p.add_argument("--max-inputs", type=positive, default=32, help="inputs per request (default: 32)")
    p.add_argument("--max-chars", type=positive, default=10_000, help="characters per text (default: 10000)")
    p.add_argument("--threads", type=positive, help="torch intra-op threads (default: torch's choice)")
    add_fast_path_arguments(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import os
    import sys
    from pathlib import Path

    import torch

    from ..errors import BertforgeError
    from ..inference.server import ServeSettings, create_app_from_dir, listen, serve

    api_key = os.environ.get("BERTFORGE_API_KEY") or None
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise BertforgeError(f"--api-key-file {args.api_key_file}: {exc.strerror}") from None
        if not api_key:
            raise BertforgeError(f"--api-key-file {args.api_key_file}: the file is empty")
    if args.max_batch > args.max_queue:
        raise BertforgeError(f"--max-batch={args.max_batch} exceeds --max-queue={args.max_queue}")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ServeSettings(
        max_inputs=args.max_inputs, max_chars=args.max_chars, max_batch=args.max_batch,
        max_wait=args.max_wait_ms / 1000, max_queue=args.max_queue, api_key=api_key,
    )
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    sockets = listen(args.host, args.port)  # before loading the model: a port in use fails at once
    try:
        app = create_app_from_dir(args.model, settings=settings, tasks=tasks, precision=args.precision,
                                  compile=args.compile)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        public = not ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a host name
        public = args.host != "localhost"
    if public and api_key is None:
        print(f"bertforge: warning: serving on {args.host} without an API key; anyone who can reach it can use it",
              file=sys.stderr)
    info = app.state.bertforge.info
    port = sockets[0].getsockname()[1]  # --port 0: the one the system chose
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"bertforge: serving {info['model']} ({', '.join(info['tasks'])}) on http://{host}:{port}/", file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level=args.log_level, sockets=sockets)
    return 0
