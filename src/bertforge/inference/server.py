"""The HTTP service: FastAPI app factory and uvicorn runner. Parse, validate, batch, route.

Endpoints (each present when the served model can do the task; ``GET /v1/info`` lists what it can):

    POST /v1/fill-mask   {"inputs": str | [str], "top_k": 5}
    POST /v1/embed       {"inputs": str | [str]}
    POST /v1/classify    {"inputs": str | {"text", "text_pair"} | [...], "top_k": null}
    POST /v1/ner         {"inputs": str | [str]}
    POST /v1/qa          {"inputs": {"question", "context"} | [...], "top_k": 1}
    -> {"results": [one result per input, in order]}

    GET /healthz, GET /metrics (Prometheus text), GET /v1/info, GET / (web demo), GET /docs (OpenAPI)

Every input becomes one item of the task's ``MicroBatcher``; the batch function calls the pipeline on a
list of inputs (the pipelines own tokenization, the forward and decoding). Requests are checked before
they reach the queue: body size, JSON, types, counts, lengths, NUL bytes, lone surrogates, the mask
token. Everything a client can get wrong is a 4xx with a message that says what to change; a 500 means
a bug here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import BertforgeError
from ..runtime import model_thread
from .batching import BatcherMetrics, MicroBatcher, QueueFull, ShuttingDown
from .pipelines import input_size

log = logging.getLogger("bertforge.server")
STATIC = Path(__file__).parent / "static"
_DISCARD_LIMIT = 64 * 1024 * 1024  # bytes of an oversized body read and dropped before answering 413


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching knobs of one server. The defaults suit a base-size model on a few CPU cores."""

    # Inputs (texts or QA pairs) in one request; more -> 413.
    max_inputs: int = 32
    # Characters in one text (QA: question and context each); more -> 413.
    max_chars: int = 10_000
    # Bytes of one request body; more -> 413 before any parsing.
    max_body_bytes: int = 512 * 1024
    # Items one forward takes at most, and how long the first waits for company (seconds).
    max_batch: int = 32
    max_wait: float = 0.005
    # Items waiting across a task's queue; a request that does not fit -> 503 with Retry-After.
    max_queue: int = 256
    # When set, /v1/* endpoints (except /v1/info) need this key in X-API-Key or "Authorization: Bearer".
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.max_inputs > self.max_queue:
            raise BertforgeError(f"serve: max_inputs={self.max_inputs} exceeds max_queue={self.max_queue}: such a request could never run")


# ---- request schemas ------------------------------------------------------------------------------
Texts = StrictStr | list[StrictStr]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FillMaskRequest(_Request):
    inputs: Texts = Field(description="text(s), each with at least one mask token", examples=["Paris is the [MASK] of France."])
    top_k: StrictInt = Field(5, ge=1, le=100, description="candidates per mask")


class EmbedRequest(_Request):
    inputs: Texts = Field(description="text(s) to embed", examples=["A sentence to embed."])


class TextPair(_Request):
    text: StrictStr
    text_pair: StrictStr


class ClassifyRequest(_Request):
    inputs: StrictStr | TextPair | list[StrictStr | TextPair] = Field(
        description="text(s) to classify; {text, text_pair} objects for a sentence-pair model (see /v1/info)",
        examples=["What a lovely day."],
    )
    top_k: StrictInt | None = Field(None, ge=1, le=1000, description="labels to return per text (default: all)")


class NerRequest(_Request):
    inputs: Texts = Field(description="text(s) to tag", examples=["Ada Lovelace was born in London."])


class QAPair(_Request):
    question: StrictStr
    context: StrictStr


class QARequest(_Request):
    inputs: QAPair | list[QAPair] = Field(
        description="question/context pair(s)",
        examples=[{"question": "Where was Ada born?", "context": "Ada Lovelace was born in London."}],
    )
    top_k: StrictInt = Field(1, ge=1, le=20, description="answers per question")


class Results(BaseModel):
    results: list[Any] = Field(description="one result per input, in input order")


# ---- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One endpoint: its request schema, the pipeline call options a request carries, and the pipeline
    task it needs."""

    name: str  # URL segment: /v1/<name>
    pipeline_task: str
    schema: type[_Request]
    summary: str
    options: Callable[[Any], dict] = lambda req: {}


TASKS = {
    t.name: t
    for t in (
        Task("fill-mask", "fill-mask", FillMaskRequest, "Most likely tokens for each mask token",
             lambda r: {"top_k": r.top_k}),
        Task("embed", "feature-extraction", EmbedRequest, "One sentence vector per text"),
        Task("classify", "text-classification", ClassifyRequest, "Label scores per text",
             lambda r: {"top_k": r.top_k}),
        Task("ner", "token-classification", NerRequest, "Named entities with character offsets"),
        Task("qa", "question-answering", QARequest, "Answer span(s) in the context", lambda r: {"top_k": r.top_k}),
    )
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _check_text(text: str, where: str, limit: int) -> None:
    if not text.strip():
        raise HTTPError(422, f"{where} is empty; send non-blank text")
    if len(text) > limit:
        raise HTTPError(413, f"{where} has {len(text):,} characters; the limit is {limit:,} per text")
    if "\x00" in text:
        raise HTTPError(422, f"{where} contains a NUL character (\\u0000 at index {text.index(chr(0))}); remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" sent as a JSON escape
        raise HTTPError(422, f"{where} contains an unpaired UTF-16 surrogate at index {exc.start}; send valid Unicode") from None


def _inputs(task: Task, req: Any, settings: ServeSettings, mask_token: str | None) -> list[Any]:
    """The request's pipeline inputs, each checked; raises HTTPError with the first problem found."""
    raw = req.inputs if isinstance(req.inputs, list) else [req.inputs]
    if not raw:
        raise HTTPError(422, "inputs is an empty list; send at least one input")
    if len(raw) > settings.max_inputs:
        raise HTTPError(413, f"inputs has {len(raw)} items; the limit is {settings.max_inputs} per request")
    items: list[Any] = []
    for i, value in enumerate(raw):
        where = f"inputs[{i}]"
        if isinstance(value, (QAPair, TextPair)):
            fields = value.model_dump()
            for key, text in fields.items():
                _check_text(text, f"{where}.{key}", settings.max_chars)
            items.append(fields)
            continue
        _check_text(value, where, settings.max_chars)
        if task.name == "fill-mask" and mask_token and mask_token not in value:
            raise HTTPError(422, f"{where} has no mask token; put {mask_token} where a word should be predicted")
        items.append(value)
    return items


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    """Pipeline results may hold numpy or torch scalars and arrays; JSON needs plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(type(v) in _PLAIN for v in value):  # e.g. an embedding: 384 floats, no call per element
            return list(value)
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _batch_function(pipeline: Any) -> Callable[[list[Any]], list[Any]]:
    """items: [(input, options), ...] -> results. One pipeline call per distinct options (requests that
    differ only in top_k etc. still share a forward when their options agree, which is the common case)."""

    def run(items: list[tuple[Any, tuple]]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(i)
        for options, index in groups.items():
            with torch.inference_mode():
                out = pipeline([items[i][0] for i in index], **dict(options))
            for i, r in zip(index, out):
                results[i] = _jsonable(r)
        return results

    return run


# ---- the edge: metrics, body limit and UTF-8, before FastAPI parses anything ----------------------
class _Edge:
    """ASGI middleware. Counts every response by path and status and times it; buffers a POST body up to
    ``limit`` bytes (413 beyond, keeping nothing past the limit) and rejects bodies that are not UTF-8
    (400), then replays the body to the app. Plain ASGI rather than BaseHTTPMiddleware: no extra task
    per request."""

    def __init__(self, app: Any, limit: int, requests: Counter, latency: Histogram, paths: set[str], api_key: str | None):
        self.app, self.limit, self.requests, self.latency, self.paths = app, limit, requests, latency, paths
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = 500

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"].startswith("/v1/") and scope["path"] != "/v1/info" \
                    and not self._authorized(scope):
                await _plain_error(send_observed, 401, "missing or wrong API key; send it in the X-API-Key header",
                                   [(b"www-authenticate", b"Bearer")])
            elif scope["method"] == "POST":
                await self._post(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        finally:
            self.requests.labels(path, str(status)).inc()
            self.latency.labels(path).observe(time.perf_counter() - start)

    def _authorized(self, scope: dict) -> bool:
        """Checked before the body is read: an unauthenticated client gets nothing parsed for it."""
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if not given and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return secrets.compare_digest(given, self.api_key.encode())

    async def _post(self, scope: dict, receive: Callable, send: Callable) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > _DISCARD_LIMIT:
            return await _plain_error(send, 413, f"request body is {int(declared):,} bytes; the limit is {self.limit:,}")
        # Read on past the limit (discarding) up to _DISCARD_LIMIT: a server that answers while the
        # client is still sending closes a socket with unread data, and the client sees a reset, not 413.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.limit:
                chunks.append(chunk)
            elif size > _DISCARD_LIMIT:
                break
            more = message.get("more_body", False)
        if size > self.limit:
            return await _plain_error(send, 413, f"request body is {size:,}+ bytes; the limit is {self.limit:,}")
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return await _plain_error(send, 400, f"request body is not valid UTF-8 (bad byte at offset {exc.start}); send UTF-8 JSON")
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _plain_error(send: Callable, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# ---- the app ---------------------------------------------------------------------------------------
@dataclass
class _State:
    settings: ServeSettings
    pipelines: dict[str, Any]
    info: dict[str, Any]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)


def create_app(
    pipelines: Mapping[str, Any],
    *,
    settings: ServeSettings | None = None,
    model_name: str = "model",
    mask_token: str | None = None,
    labels: Mapping[str, list[str]] | None = None,
    classify_pairs: bool = False,
) -> FastAPI:
    """An app serving ``pipelines``: endpoint name ("fill-mask", "embed", "classify", "ner", "qa") ->
    a callable ``pipeline(list_of_inputs, **options) -> list_of_results``. ``mask_token`` lets fill-mask
    requests without one be refused up front; ``labels`` (task -> label names) and ``classify_pairs``
    (the classifier reads text pairs) are shown in /v1/info for clients and the web demo. The pipelines run
    in ``runtime.model_thread()``; build them there too (``model_thread().submit(build).result()``), as
    ``create_app_from_dir`` does: torch work started from a second thread costs every operator a wake-up."""
    settings = settings or ServeSettings()
    unknown = sorted(set(pipelines) - set(TASKS))
    if unknown:
        raise BertforgeError(f"serve: unknown task {unknown[0]!r}; valid tasks: {', '.join(TASKS)}")
    state = _State(
        settings,
        dict(pipelines),
        {
            "model": model_name,
            "tasks": [t for t in TASKS if t in pipelines],
            "mask_token": mask_token,
            "labels": dict(labels or {}),
            "classify_pairs": classify_pairs,
            "limits": {"max_inputs": settings.max_inputs, "max_chars": settings.max_chars,
                       "max_body_bytes": settings.max_body_bytes},
            "api_key_required": settings.api_key is not None,
        },
    )
    batch_metrics = BatcherMetrics(state.registry)
    requests = Counter("bertforge_http_requests", "HTTP requests by path and status", ["path", "status"], registry=state.registry)
    latency = Histogram(
        "bertforge_http_request_seconds", "HTTP request latency by path", ["path"], registry=state.registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    known_paths = {f"/v1/{t}" for t in TASKS} | {"/v1/info", "/healthz", "/metrics", "/"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One thread runs every model call: forwards never compete for the cores (torch parallelises
        # inside each), and the event loop stays free to accept, validate and refuse requests. The
        # process's model thread, which also loaded the model (runtime.model_thread: one OpenMP team).
        executor = model_thread()
        for name, pipeline in state.pipelines.items():
            batcher = MicroBatcher(
                _batch_function(pipeline), executor=executor, name=name, cost=lambda item: input_size(item[0]),
                max_batch=settings.max_batch, max_wait=settings.max_wait, max_queue=settings.max_queue,
                metrics=batch_metrics,
            )
            batcher.start()
            state.batchers[name] = batcher
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; finish anything still queued.
        await asyncio.gather(*(b.close() for b in state.batchers.values()))

    app = FastAPI(
        title="bertforge",
        version="1",
        summary=f"BERT-family inference for {model_name}: {', '.join(state.info['tasks']) or 'no tasks'}",
        lifespan=lifespan,
    )
    app.state.bertforge = state

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The default handler echoes the offending input, which can be huge or not encodable (a lone
        # surrogate); say where and what instead.
        errors, messages = [], []
        for e in exc.errors():
            loc, msg = list(e.get("loc", ())), e.get("msg", "")
            if e.get("type") == "json_invalid":
                msg = f"malformed JSON at character {loc[-1]}: {(e.get('ctx') or {}).get('error', msg)}"
                loc = ["body"]
            errors.append({"loc": loc, "msg": msg, "type": e.get("type", "")})
            messages.append(f"{'.'.join(map(str, loc[1:])) or 'body'}: {msg}")
        summary = "; ".join(messages[:5])
        return JSONResponse({"detail": errors, "message": summary}, status_code=422)

    app.add_middleware(_Edge, limit=settings.max_body_bytes, requests=requests, latency=latency, paths=known_paths,
                       api_key=settings.api_key)

    async def run_task(task: Task, req: Any) -> dict:
        items = _inputs(task, req, settings, mask_token)
        options = tuple(sorted(task.options(req).items()))
        try:
            results = await state.batchers[task.name].submit([(item, options) for item in items])
        except QueueFull as exc:
            raise HTTPError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown as exc:
            raise HTTPError(503, str(exc), {"Retry-After": "5", "Connection": "close"}) from None
        except BertforgeError as exc:  # the pipeline refused an input (e.g. too many masks)
            raise HTTPError(422, str(exc)) from None
        except Exception:  # a bug: log it whole, tell the client only that it happened
            log.exception("%s failed on a batch", task.name)
            raise HTTPError(500, f"internal error in {task.name}; the server log has the details") from None
        return {"results": results}

    for task in TASKS.values():
        if task.name in pipelines:
            _add_route(app, task, run_task)

    @app.post("/v1/{name}", include_in_schema=False)
    async def unavailable(name: str) -> None:
        served = ", ".join(state.info["tasks"]) or "none"
        if name in TASKS:
            raise HTTPError(404, f"{model_name} does not serve {name!r} (no {TASKS[name].pipeline_task} head); it serves: {served}")
        raise HTTPError(404, f"no endpoint /v1/{name}; endpoints: {', '.join('/v1/' + t for t in state.info['tasks'])}")

    @app.get("/v1/info", summary="What the served model can do, its labels and the request limits")
    async def info() -> dict:
        return state.info

    @app.get("/healthz", summary="Liveness: 200 while the server runs, with queue depths")
    async def healthz() -> dict:
        return {"status": "ok", "tasks": state.info["tasks"], "queue": {n: b.depth for n, b in state.batchers.items()}}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_route(app: FastAPI, task: Task, run_task: Callable) -> None:
    async def endpoint(req):
        return await run_task(task, req)

    # Set, not written, annotations: FastAPI reads the body schema from them and ``task.schema`` is
    # only known here.
    endpoint.__annotations__ = {"req": task.schema, "return": dict}
    app.post(f"/v1/{task.name}", summary=task.summary, response_model=Results, name=task.name)(endpoint)


# ---- from a model directory --------------------------------------------------------------------------
def load_pipelines(model_dir: str | Path, tasks: list[str] | None = None,
                   precision: str = "fp32", compile: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipelines a model directory supports, sharing one copy of its weights, and what /v1/info
    shows about them: (endpoint name -> pipeline, {"mask_token", "labels"}). ``precision``: "fp32",
    "bf16" or "int8" weights; ``compile``: torch.compile the encoder for every shape before serving
    (inference/fast.py).

    A fine-tuned directory serves its own task plus "embed" from its encoder; a pretrained one serves
    "embed", and "fill-mask" when it has a masked-LM head. ``tasks`` picks a subset."""
    from ..auto import AutoModelForMaskedLM
    from ..data.tokenizers import AutoTokenizer
    from ..finetune.store import is_task_directory, load_task_model
    from . import pipelines as P
    from .fast import prepare

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BertforgeError(f"{model_dir}: no config.json; expected a model directory")
    available: dict[str, Callable[[], Any]] = {}
    meta: dict[str, Any] = {"mask_token": None, "labels": {}, "classify_pairs": False}
    if is_task_directory(model_dir):
        model, tok = load_task_model(model_dir)
        model = prepare(model, precision, inplace=True, compile=compile)
        kind = model.task.task
        own = {"classify": ("classify", P.TextClassification), "pair": ("classify", P.TextClassification),
               "ner": ("ner", P.TokenClassification), "qa": ("qa", P.QuestionAnswering)}.get(kind)
        if own is None:
            raise BertforgeError(f"{model_dir}: task {kind!r} has no HTTP endpoint; served tasks are classify, pair, ner, qa")
        name, cls = own
        available[name] = lambda: cls(model, tok)
        if model.task.labels:
            meta["labels"][name] = list(model.task.labels)
        meta["classify_pairs"] = kind == "pair"
        encoder = model.encoder
    else:
        mlm = prepare(AutoModelForMaskedLM.from_pretrained(model_dir), precision, inplace=True, compile=compile)
        tok = AutoTokenizer.from_pretrained(model_dir)
        if mlm.mlm is not None:
            available["fill-mask"] = lambda: P.FillMask(mlm, tok)
            meta["mask_token"] = tok.mask_token
        encoder = mlm.encoder
    available["embed"] = lambda: P.FeatureExtraction(encoder, tok)
    chosen = list(available) if tasks is None else tasks
    for t in chosen:
        if t not in available:
            raise BertforgeError(f"--tasks {t}: {model_dir} can serve {', '.join(available)}")
    return {t: available[t]() for t in TASKS if t in chosen}, meta


def create_app_from_dir(model_dir: str | Path, *, settings: ServeSettings | None = None, tasks: list[str] | None = None,
                        precision: str = "fp32", compile: bool = False) -> FastAPI:
    """``create_app`` over the pipelines of a model directory (see ``load_pipelines``), loaded in the model
    thread that will run them."""
    pipelines, meta = model_thread().submit(load_pipelines, model_dir, tasks, precision, compile).result()
    return create_app(pipelines, settings=settings, model_name=Path(model_dir).resolve().name, **meta)


# ---- running -----------------------------------------------------------------------------------------
def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to host:port, one per address the host resolves to, as uvicorn (asyncio's create_server)
    would bind them. Binding first, before the server starts, makes a port in use a one-line error instead of
    uvicorn's log line after the server has announced itself; the server starts listening on them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BertforgeError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            # proto is IPPROTO_TCP here, which asyncio needs to set TCP_NODELAY on the connections
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL:  # e.g. IPv6 disabled; asyncio skips such addresses too
                    continue
                if exc.errno == errno.EADDRINUSE:
                    raise BertforgeError(f"--port {port}: {address[0]} port {port} is already in use "
                                         "(another server?); choose another --port") from None
                raise BertforgeError(f"--port {port}: cannot listen on {address[0]} port {port} ({exc.strerror})") from None
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise BertforgeError(f"--host {host}: not an address of this machine; cannot listen on it")
    return sockets


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", graceful_timeout: float = 30.0,
          sockets: list[socket.socket] | None = None) -> None:
    """Run until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (up to
    ``graceful_timeout`` seconds), drain the batch queues and exit. ``sockets``: from ``listen(host, port)``
    (bound here when not given)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=graceful_timeout))
    try:
        server.run(sockets=sockets if sockets is not None else listen(host, port))
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on (uvicorn.run swallows it too)
        pass
    if not server.started:  # the application's startup failed; uvicorn has logged why
        raise BertforgeError("the server did not start; the log above says why")


class ServerThread:
    """``with ServerThread(app) as url:`` runs uvicorn in a background thread on a free loopback port
    (tests, benchmarks). Leaving the block shuts it down gracefully."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_timeout: float = 10.0):
        import uvicorn

        # Port 0: the OS picks a free port; uvicorn binds it (its sockets get TCP_NODELAY from asyncio,
        # which a socket made here with proto 0 would not, costing a 40 ms delayed ACK per response).
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=graceful_timeout, backlog=2048)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="bertforge-server")
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
