"""The HTTP service on loopback: endpoints, limits, bad input (never a 5xx), API key, metrics, load,
overload and graceful shutdown. Pipelines here are deterministic fakes whose every result names its
input, so a mixed-up batch cannot go unnoticed; tests/test_server_real.py runs the real pipelines."""

import hashlib
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bertforge.inference.server import ServerThread, ServeSettings, create_app


def h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class Fake:
    """pipeline(inputs, **options) -> results, recording batch sizes; optional sleep per call."""

    def __init__(self, fn, delay: float = 0.0):
        self.fn, self.delay, self.batches = fn, delay, []

    def __call__(self, inputs, **options):
        self.batches.append(len(inputs))
        if self.delay:
            time.sleep(self.delay)
        return [self.fn(x, **options) for x in inputs]


def fill_mask(text, top_k=5):
    return [{"token_str": f"w{(h(text) + i) % 997}", "score": 1 / (i + 2), "sequence": text} for i in range(top_k)]


def classify(text, top_k=None):
    p = (h(text) % 1000) / 1000
    return sorted([{"label": "pos", "score": p}, {"label": "neg", "score": 1 - p}], key=lambda r: -r["score"])[:top_k]


def ner(text):
    out, at = [], 0
    for word in text.split():
        start = text.index(word, at)
        at = start + len(word)
        if word[0].isupper():
            out.append({"entity_group": "PER", "word": word, "start": start, "end": at, "score": 0.9})
    return out


def qa(pair, top_k=1):
    last = pair["context"].split()[-1]
    start = pair["context"].rindex(last)
    return {"answer": last, "start": start, "end": start + len(last), "score": 0.5}


def embed(text):
    return [float(len(text)), (h(text) % 100) / 100, 0.0, 1.0]


def fakes(delay=0.0):
    return {"fill-mask": Fake(fill_mask, delay), "classify": Fake(classify, delay), "ner": Fake(ner, delay),
            "qa": Fake(qa, delay), "embed": Fake(embed, delay)}


@pytest.fixture(scope="module")
def server():
    pipes = fakes()
    app = create_app(pipes, mask_token="[MASK]", model_name="fake", settings=ServeSettings(max_inputs=8, max_chars=1000))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client, pipes


def test_every_endpoint_answers_each_input_in_order(server):
    c, _ = server
    texts = ["Ada met [MASK] in London.", "the [MASK] sat", "Bob [MASK] Carol"]
    r = c.post("/v1/fill-mask", json={"inputs": texts, "top_k": 2})
    assert r.status_code == 200 and r.json()["results"] == [fill_mask(t, 2) for t in texts]
    assert c.post("/v1/fill-mask", json={"inputs": texts[0]}).json()["results"] == [fill_mask(texts[0])]
    assert c.post("/v1/classify", json={"inputs": ["good", "bad"], "top_k": 1}).json()["results"] == [classify("good", 1), classify("bad", 1)]
    assert c.post("/v1/ner", json={"inputs": "Ada met Bob"}).json()["results"] == [ner("Ada met Bob")]
    pair = {"question": "Where?", "context": "Ada lives in London"}
    assert c.post("/v1/qa", json={"inputs": [pair, pair]}).json()["results"] == [qa(pair)] * 2
    assert c.post("/v1/embed", json={"inputs": "x y"}).json()["results"] == [embed("x y")]


def test_info_health_openapi_and_page(server):
    c, _ = server
    info = c.get("/v1/info").json()
    assert info["tasks"] == ["fill-mask", "embed", "classify", "ner", "qa"]
    assert info["mask_token"] == "[MASK]" and info["limits"]["max_inputs"] == 8
    assert c.get("/healthz").json()["status"] == "ok"
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/fill-mask", "/v1/embed", "/v1/classify", "/v1/ner", "/v1/qa", "/healthz", "/metrics"} <= set(paths)
    assert c.get("/docs").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert c.get("/static/app.js").status_code == 200


BAD = [
    ("malformed JSON", "/v1/classify", b'{"inputs": ', 422, "malformed JSON"),
    ("not JSON at all", "/v1/classify", b"hello", 422, "malformed JSON"),
    ("JSON but not an object", "/v1/classify", b'["a"]', 422, "valid dictionary"),
    ("number for text", "/v1/classify", b'{"inputs": 5}', 422, "valid string"),
    ("list of numbers", "/v1/classify", b'{"inputs": [1, 2]}', 422, "valid string"),
    ("null", "/v1/classify", b'{"inputs": null}', 422, "inputs"),
    ("missing field", "/v1/classify", b"{}", 422, "Field required"),
    ("unknown field", "/v1/classify", b'{"inputs": "a", "topk": 3}', 422, "Extra inputs"),
    ("wrong option type", "/v1/fill-mask", b'{"inputs": "a [MASK]", "top_k": "3"}', 422, "valid integer"),
    ("option out of range", "/v1/fill-mask", b'{"inputs": "a [MASK]", "top_k": 0}', 422, "greater than or equal"),
    ("empty string", "/v1/classify", b'{"inputs": ""}', 422, "is empty"),
    ("blank string", "/v1/ner", b'{"inputs": ["ok", "   \\n"]}', 422, "inputs[1] is empty"),
    ("empty list", "/v1/embed", b'{"inputs": []}', 422, "empty list"),
    ("too many texts", "/v1/embed", json.dumps({"inputs": ["a"] * 9}).encode(), 413, "limit is 8"),
    ("text too long", "/v1/classify", json.dumps({"inputs": "a" * 1001}).encode(), 413, "limit is 1,000"),
    ("1 MB of text", "/v1/classify", json.dumps({"inputs": "a" * 1_000_000}).encode(), 413, "the limit is"),
    ("invalid UTF-8", "/v1/classify", b'{"inputs": "caf\xe9"}', 400, "not valid UTF-8"),
    ("lone surrogate", "/v1/classify", b'{"inputs": "a\\ud800b"}', 422, "surrogate"),
    ("surrogate echoed", "/v1/classify", b'{"inputs": {"x": "\\udfff"}}', 422, "valid string"),
    ("NUL byte", "/v1/classify", b'{"inputs": "a\\u0000b"}', 422, "NUL"),
    ("no mask token", "/v1/fill-mask", b'{"inputs": "no mask here"}', 422, "no mask token"),
    ("QA without context", "/v1/qa", b'{"inputs": {"question": "q"}}', 422, "context"),
    ("QA empty question", "/v1/qa", b'{"inputs": {"question": "", "context": "c"}}', 422, "question is empty"),
    ("unknown endpoint", "/v1/translate", b'{"inputs": "a"}', 404, "no endpoint"),
    ("GET on POST endpoint", "/v1/classify", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name,path,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_useful_4xx(server, name, path, body, status, message):
    c, _ = server
    if body is None:
        r = c.get(path)
    else:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.text
    assert c.get("/healthz").status_code == 200


def test_chunked_body_over_the_limit(server):
    c, _ = server

    def chunks():
        for _ in range(40):
            yield b"x" * 32768

    r = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.text


def test_pipeline_errors_are_4xx_or_isolated_500():
    from bertforge.errors import BertforgeError

    def picky(texts, **_):
        for t in texts:
            if "bad" in t:
                raise BertforgeError(f"cannot handle {t!r}")
            if "bug" in t:
                raise RuntimeError("a bug")
        return [t.upper() for t in texts]

    with ServerThread(create_app({"classify": picky})) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/classify", json={"inputs": "bad one"})
        assert r.status_code == 422 and "cannot handle" in r.text
        r = c.post("/v1/classify", json={"inputs": "a bug"})
        assert r.status_code == 500 and "a bug" not in r.text  # no internals leak
        assert c.post("/v1/classify", json={"inputs": "fine"}).json()["results"] == ["FINE"]


def test_unserved_task_and_api_key():
    app = create_app({"embed": Fake(embed)}, settings=ServeSettings(api_key="s3cret"), model_name="tiny")
    with ServerThread(app) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/embed", json={"inputs": "x"})
        assert r.status_code == 401 and "API key" in r.text and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/embed", content=b"{not json").status_code == 401  # nothing parsed before the key
        assert c.post("/v1/embed", json={"inputs": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/embed", json={"inputs": "x"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.post("/v1/ner", json={"inputs": "x"}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 404 and "does not serve 'ner'" in r.text and "embed" in r.text
        assert c.get("/v1/info").json()["api_key_required"] is True
        assert c.get("/healthz").status_code == 200


def test_metrics_are_prometheus_text(server):
    c, _ = server
    c.post("/v1/embed", json={"inputs": ["a", "b"]})
    c.post("/v1/embed", json={"inputs": 5})
    r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("bertforge_http_requests_total", "bertforge_http_request_seconds_bucket", "bertforge_batch_size_bucket",
                 "bertforge_queue_depth", "bertforge_forward_seconds_count", "bertforge_queue_wait_seconds_count"):
        assert name in text
    assert 'bertforge_http_requests_total{path="/v1/embed",status="422"}' in text
    assert 'bertforge_queue_depth{task="embed"} 0.0' in text


class Clients:
    """Keep-alive http.client connections, one per thread: far less client overhead than httpx, so a
    load test measures the server rather than the client sharing its cores."""

    def __init__(self, url: str):
        self.host, self.port = url.rsplit("//", 1)[1].split(":")
        self.local = threading.local()

    def post(self, path: str, body: dict) -> tuple[int, dict, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read())


@pytest.mark.slow
def test_load_2000_requests_at_concurrency_32_each_gets_its_own_answer():
    pipes = fakes(delay=0.002)
    app = create_app(pipes, mask_token="[MASK]", settings=ServeSettings(max_batch=16, max_queue=256))
    n, concurrency = 2000, 32
    texts = [f"request {i} about [MASK] number {i * 7919 % 10007}" + " pad" * (i % 13) for i in range(n)]

    def one(clients, i):
        endpoint = ("fill-mask", "classify")[i % 2]
        t = time.perf_counter()
        status, _, body = clients.post(f"/v1/{endpoint}", {"inputs": texts[i]})
        latency = time.perf_counter() - t
        expected = fill_mask(texts[i]) if endpoint == "fill-mask" else classify(texts[i])
        return latency, None if status == 200 and body["results"] == [expected] else (i, status, body)

    with ServerThread(app) as url:
        clients = Clients(url)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(lambda i: one(clients, i), range(n)))
        elapsed = time.perf_counter() - start
        assert httpx.get(f"{url}/healthz").status_code == 200
    failures = [f for _, f in outcomes if f]
    assert not failures, failures[:5]
    latencies = sorted(t for t, _ in outcomes)
    p50, p99 = latencies[n // 2], latencies[int(0.99 * n)]
    print(f"\nload: {n} requests at concurrency {concurrency}: {n / elapsed:.0f} req/s, "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    batches = pipes["fill-mask"].batches + pipes["classify"].batches
    assert sum(batches) == n and max(batches) > 1  # batched, and every input ran exactly once


@pytest.mark.slow
def test_overload_gets_fast_503s_then_recovers():
    delay, burst = 0.5, 120
    app = create_app({"classify": Fake(classify, delay)}, settings=ServeSettings(max_batch=4, max_queue=8, max_inputs=4))

    def one(clients, i):
        t = time.perf_counter()
        status, headers, body = clients.post("/v1/classify", {"inputs": [f"text {i}"] * 2})
        return status, time.perf_counter() - t, headers.get("retry-after"), body

    with ServerThread(app) as url:
        clients = Clients(url)
        with ThreadPoolExecutor(burst) as pool:
            outcomes = list(pool.map(lambda i: one(clients, i), range(burst)))
        assert httpx.get(f"{url}/healthz").json()["queue"] == {"classify": 0}
        r = httpx.post(f"{url}/v1/classify", json={"inputs": "after"})
        assert r.status_code == 200 and r.json()["results"] == [classify("after")]
    statuses = [o[0] for o in outcomes]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 4
    rejected = [o for o in outcomes if o[0] == 503]
    assert all(int(retry) >= 1 and "queue full" in body["detail"] for _, _, retry, body in rejected)
    # Waiting out the whole burst would take burst * 2 / 4 * delay = 30 s; refusals come at the door.
    backlog = burst * 2 / 4 * delay
    assert max(t for _, t, _, _ in rejected) < backlog / 6


@pytest.mark.slow
def test_graceful_shutdown_finishes_in_flight_requests():
    fake = Fake(classify, delay=0.6)
    # A long gathering window, so the three requests share one forward that is surely running at stop().
    server = ServerThread(create_app({"classify": fake}, settings=ServeSettings(max_wait=0.5)))
    url = server.__enter__()
    results = {}

    def request(i):
        results[i] = httpx.post(f"{url}/v1/classify", json={"inputs": f"slow {i}"}, timeout=20)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while not fake.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.batches == [3]
    server.stop()  # what SIGTERM does: stop accepting, finish what is in flight
    for t in threads:
        t.join(timeout=20)
    assert not server.thread.is_alive()
    assert {i: r.status_code for i, r in results.items()} == {0: 200, 1: 200, 2: 200}
    assert [r.json()["results"] for r in results.values()] == [[classify(f"slow {i}")] for i in results]
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/classify", json={"inputs": "late"}, timeout=2)


def test_serve_command_refuses_a_port_in_use_in_one_line_before_announcing(tmp_path, capsys):
    """The port is bound before the model loads and before "serving ... on" is printed: a port in use is one
    line naming it (it was the announcement, then uvicorn's log line and exit code 3)."""
    import socket

    from bertforge.cli import main
    from bertforge.inference.server import listen
    from taskkit import model_dir

    model = model_dir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(model), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err == f"bertforge: error: --port {port}: 127.0.0.1 port {port} is already in use (another server?); choose another --port\n"
    sockets = listen("127.0.0.1", 0)  # the port is free again once its holder closed
    try:
        assert len(sockets) == 1 and sockets[0].getsockname()[1] > 0
    finally:
        sockets[0].close()
    assert main(["serve", str(model), "--host", "nosuch.invalid"]) == 2
    assert "--host nosuch.invalid: cannot resolve it" in capsys.readouterr().err
