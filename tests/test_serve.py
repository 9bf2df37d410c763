"""jv4 serve against independent clients: the official OpenAI Python client
and plain requests, compared with Model.embed in process; bad requests get
OpenAI-shaped errors with the right status and the server keeps serving;
SIGTERM lets requests in flight finish."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")

import ckptgen as cg  # noqa: E402
import jv4  # noqa: E402
from conftest import cosines, hub_env, repo_of  # noqa: E402
from corpus import CORPUS  # noqa: E402

KEY = "sk-test-jv4"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str | None, *args: str, env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "jv4", "serve", *([model] if model else []),
                                      "--port", str(self.port), "--log-level", "warning", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("jv4 serve exited: " + self.proc.stderr.read()[-3000:])
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("jv4 serve did not come up")
            time.sleep(0.2)

    def post(self, body, key: str | None = KEY, **kw):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        kw.setdefault("timeout", 120)
        return requests.post(self.url + "/v1/embeddings", data=data, headers=headers, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def folder(vocab, tmp_path_factory):
    ckpt = cg.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "nested", vocab, layout="nested")
    out = tmp_path_factory.mktemp("served") / "jv4-test"
    jv4.convert(ckpt.root, out, outtype="f32", vision=False)
    return out


@pytest.fixture(scope="module")
def local(folder):
    return jv4.Model(folder)


@pytest.fixture(scope="module")
def server(folder):
    s = Server(str(folder), "--api-key", KEY, "--max-batch-texts", "64", "--max-request-bytes", str(2**20))
    yield s
    assert s.stop() in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


TEXTS = [t for t in CORPUS if t][:6]  # an empty string is a 400, as from OpenAI


@pytest.mark.parametrize("encoding", [None, "float", "base64"])  # None: the client's default (base64)
def test_openai_client_gets_the_vectors_of_model_embed(client, local, encoding):
    kw = {} if encoding is None else {"encoding_format": encoding}
    r = client.embeddings.create(model="jv4-test", input=TEXTS, **kw)
    if encoding == "base64":  # asked for explicitly, the client hands the strings back as they came
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in r.data])
    else:  # floats, or base64 the client asked for itself and decoded
        got = np.array([d.embedding for d in r.data], np.float32)
    want = local.embed(TEXTS, task="retrieval", role="query")
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    assert cosines(got, want).min() >= 0.99999
    want_tokens = sum(len(local.tokenize(t, task="retrieval", role="query")) for t in TEXTS)
    assert r.usage.prompt_tokens == r.usage.total_tokens == want_tokens


@pytest.mark.parametrize("task", jv4.TASKS)
@pytest.mark.parametrize("role", jv4.ROLES)
def test_each_task_role_and_dimension(client, local, task, role):
    dim = 128
    r = client.embeddings.create(model="jv4-test", input=TEXTS[:3], dimensions=dim,
                                 extra_body={"task": task, "role": role})
    got = np.array([d.embedding for d in r.data], np.float32)
    assert got.shape == (3, dim)
    assert cosines(got, local.embed(TEXTS[:3], task=task, role=role, dim=dim)).min() >= 0.99999


def test_a_plain_requests_client_single_string_and_precision(server, local):
    r = server.post({"model": "jv4-test", "input": "one text", "task": "code", "role": "passage"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "jv4-test" and len(body["data"]) == 1
    got = np.array(body["data"][0]["embedding"], np.float32)
    assert cosines(got[None], local.embed(["one text"], task="code", role="passage")).min() >= 0.99999
    r = server.post({"model": "jv4-test", "input": TEXTS, "precision": "binary", "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), np.int8) for d in r.json()["data"]])
    np.testing.assert_array_equal(got, local.embed(TEXTS, task="retrieval", precision="binary"))


def test_langchain_openai_embeddings(server, local):
    """LangChain's OpenAIEmbeddings as its docs tell users of other servers to set it up
    (check_embedding_ctx_length=False: raw text, not OpenAI's token ids); jv4's task and
    role through model_kwargs' extra_body."""
    lco = pytest.importorskip("langchain_openai")
    common = dict(model="jv4-test", base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                  check_embedding_ctx_length=False)
    docs = lco.OpenAIEmbeddings(**common, model_kwargs={"extra_body": {"task": "code", "role": "passage"}})
    got = np.array(docs.embed_documents(TEXTS), np.float32)
    assert cosines(got, local.embed(TEXTS, task="code", role="passage")).min() >= 0.99999
    queries = lco.OpenAIEmbeddings(**common, dimensions=256, chunk_size=2)  # 3 requests of <= 2 texts
    got = np.array(queries.embed_documents(TEXTS[:5]), np.float32)
    assert got.shape == (5, 256)
    assert cosines(got, local.embed(TEXTS[:5], task="retrieval", role="query", dim=256)).min() >= 0.99999
    one = np.array(queries.embed_query(TEXTS[0]), np.float32)
    assert cosines(one[None], got[:1]).min() >= 0.99999


def test_multivector_output(server, local):
    for encoding in ("float", "base64"):
        r = server.post({"model": "jv4-test", "input": TEXTS[:3], "multivector": True, "task": "code",
                         "encoding_format": encoding})
        assert r.status_code == 200, r.text
        want = local.embed_multivector(TEXTS[:3], task="code")
        for d, w in zip(r.json()["data"], want):
            if encoding == "base64":
                got = np.frombuffer(base64.b64decode(d["embedding"]), np.float32).reshape(d["shape"])
            else:
                got = np.array(d["embedding"], np.float32)
            assert got.shape == w.shape
            assert cosines(got, w).min() >= 0.99999


def _error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({"model": "jv4-test"}, 400, "'input' is required"),
    ({"model": "jv4-test", "input": 5}, 400, "string or a list of strings"),
    ({"model": "jv4-test", "input": ["a", 5]}, 400, "item 1 is a int"),
    ({"model": "jv4-test", "input": []}, 400, "empty list"),
    ({"model": "jv4-test", "input": ""}, 400, "empty string"),
    ({"model": "jv4-test", "input": [[1, 2, 3]]}, 400, "token ids"),
    ({"model": "jv4-test", "input": [1, 2, 3]}, 400, "token ids"),
    ({"model": 7, "input": "x"}, 400, "'model' must be a string"),
    ({"model": "text-embedding-3-small", "input": "x"}, 404, "not served here"),
    ({"model": "jina-embeddings-v3", "input": "x"}, 404, "not served here"),
    ({"model": "jinaai/jina-embeddings-v4-text-code-GGUF", "input": "x", "task": "retrieval"}, 400,
     "serves the task 'code'"),
    ({"model": "jv4-test", "input": "x", "task": "summarize"}, 400, "'task' must be one of"),
    ({"model": "jv4-test", "input": "x", "role": "document"}, 400, "'role' must be one of"),
    ({"model": "jv4-test", "input": "x", "dimensions": 7}, 400, "dim"),
    ({"model": "jv4-test", "input": "x", "dimensions": "128"}, 400, "'dimensions' must be an integer"),
    ({"model": "jv4-test", "input": "x", "encoding_format": "hex"}, 400, "'encoding_format' must be one of"),
    ({"model": "jv4-test", "input": "x", "precision": "int4"}, 400, "'precision' must be one of"),
    ({"model": "jv4-test", "input": "x", "multivector": "yes"}, 400, "'multivector' must be true or false"),
    ({"model": "jv4-test", "input": ["x"] * 10_000}, 400, "more than this server's limit of 64"),
    (b"x" * (10 * 2**20), 413, "over this server's limit"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, needle):
    err = _error(server.post(body), status)
    assert needle in err["message"], err
    assert server.post({"model": "jv4-test", "input": "still here"}).status_code == 200


def test_the_model_cards_request_and_the_names_v4_users_send(server, local):
    # the model card's curl (as sent to llama-server) names no model; Jina's
    # API and the Hub name jina-embeddings-v4; the official GGUF repositories
    # each serve their task: every one of them is the served base here
    for task in jv4.TASKS:
        want = local.embed(TEXTS[:3], task=task)
        for body in ({"task": task}, {"model": "jina-embeddings-v4", "task": task},
                     {"model": "jinaai/jina-embeddings-v4", "task": task}, {"model": repo_of(task)}):
            r = server.post({**body, "input": TEXTS[:3]})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            assert cosines(got, want).min() >= 0.99999, (task, body)
            assert r.json()["model"] == body.get("model", "jv4-test")
    r = server.post({"input": ["Query: what is a page index?"]})  # the card's body, verbatim in shape
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_a_merged_model_answers_to_its_own_task_names_only(make_gguf):
    s = Server(str(make_gguf(task="code", dtype="F32")))
    try:
        ids = [m["id"] for m in requests.get(s.url + "/v1/models", timeout=10).json()["data"]]
        assert ids[-2:] == ["jina-embeddings-v4", repo_of("code")] and len(ids) == 4, ids  # file name, stem, ...
        assert s.post({"model": repo_of("code"), "input": "x"}, key=None).status_code == 200
        assert s.post({"input": "x"}, key=None).status_code == 200
        for other in (repo_of("retrieval"), "jinaai/jina-embeddings-v4"):
            assert _error(s.post({"model": other, "input": "x"}, key=None), 404)["code"] == "model_not_found"
    finally:
        s.stop()


def test_the_engine_names_the_field_it_refused(server):
    # the engine's refusal carries the argument's name (jv4.ArgumentError.param),
    # which the server reports as the request's field
    err = _error(server.post({"model": "jv4-test", "input": "x", "dimensions": 7}), 400)
    assert err["param"] == "dimensions" and "dim must be one of" in err["message"]
    err = _error(server.post({"model": "jv4-test", "input": "x", "dimensions": 128, "multivector": True}), 400)
    assert err["param"] == "dimensions" and "multi-vectors are 128 wide" in err["message"]


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_a_missing_or_wrong_key_is_401(server, key):
    err = _error(server.post({"model": "jv4-test", "input": "x"}, key=key), 401)
    assert err["code"] == "invalid_api_key"
    assert requests.get(server.url + "/v1/models", timeout=10).status_code == 401


def test_clients_that_disconnect_mid_request(server):
    # a body cut short, then a client that gives up while its texts are embedded
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 5000\r\n\r\n{\"input\": [")
    with pytest.raises(requests.exceptions.Timeout):
        server.post({"model": "jv4-test", "input": ["word " * 200 + str(i) for i in range(64)]}, timeout=0.05)
    assert server.post({"model": "jv4-test", "input": "still here"}).status_code == 200


def test_models_health_and_metrics(server):
    models = requests.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["jv4-test", "jina-embeddings-v4", "jinaai/jina-embeddings-v4",
                                                 *[repo_of(t) for t in jv4.TASKS]] and models["object"] == "list"
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"

    def value(text, name):
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    before = requests.get(server.url + "/metrics", timeout=10).text
    assert server.post({"model": "jv4-test", "input": TEXTS}).status_code == 200
    after = requests.get(server.url + "/metrics", timeout=10).text
    assert value(after, "jv4_texts_total") - value(before, "jv4_texts_total") == len(TEXTS)
    assert value(after, "jv4_engine_calls_total") - value(before, "jv4_engine_calls_total") == 1
    assert value(after, 'jv4_requests_total{endpoint="embeddings",status="200"}') - \
        value(before, 'jv4_requests_total{endpoint="embeddings",status="200"}') == 1
    for name in ("jv4_tokens_total", "jv4_engine_queue_seconds_total", "jv4_engine_compute_seconds_total",
                 "jv4_request_seconds_count", 'jv4_engine_group_calls_bucket{le="+Inf"}'):
        value(after, name)


def test_concurrent_clients_share_decodes_and_each_gets_its_own_vector(server, local):
    texts = [t for t in CORPUS if t][:48]
    want = local.embed(texts, task="retrieval")
    got: dict = {}
    start = threading.Barrier(16)

    def work(k):
        start.wait()
        for i in range(k, len(texts), 16):
            r = server.post({"model": "jv4-test", "input": texts[i]})
            got[i] = np.array(r.json()["data"][0]["embedding"], np.float32)

    metrics = lambda: requests.get(server.url + "/metrics", timeout=10).text  # noqa: E731
    calls0, groups0 = _engine_counts(metrics())
    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls1, groups1 = _engine_counts(metrics())
    assert sorted(got) == list(range(len(texts)))
    assert cosines(np.stack([got[i] for i in range(len(texts))]), want).min() >= 0.99999
    assert calls1 - calls0 == len(texts)
    assert groups1 - groups0 < calls1 - calls0  # requests shared decodes


def _engine_counts(text):
    vals = {}
    for line in text.splitlines():
        if line.startswith(("jv4_engine_calls_total ", "jv4_engine_groups_total ")):
            name, v = line.split()
            vals[name] = float(v)
    return vals["jv4_engine_calls_total"], vals["jv4_engine_groups_total"]


def test_batch_invariant_server_under_load_gives_the_bytes_of_a_text_alone(folder):
    s = Server(str(folder), "--batch-invariant")
    try:
        local = jv4.Model(folder, batch_invariant=True)
        texts = [t for t in CORPUS if t][:40] + ["word " * 80 + str(i) for i in range(8)]
        want = [local.embed(t, task="code").astype("<f4").tobytes() for t in texts]
        got: dict = {}

        def work(k):
            for i in range(k, len(texts), 12):
                for _ in range(2):
                    r = s.post({"model": "jv4-test", "input": texts[i], "task": "code",
                                "encoding_format": "base64"}, key=None)
                    got.setdefault(i, []).append(base64.b64decode(r.json()["data"][0]["embedding"]))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(len(texts)))
        for i, blobs in got.items():
            assert all(b == want[i] for b in blobs), i
        calls, groups = _engine_counts(requests.get(s.url + "/metrics", timeout=10).text)
        assert groups < calls  # they did share decodes
    finally:
        s.stop()


def test_sigterm_lets_requests_in_flight_finish(folder):
    s = Server(str(folder))
    texts = ["word " * 100 + str(i) for i in range(300)]
    out = {}

    def long_request():
        out["r"] = s.post({"model": "jv4-test", "input": texts}, key=None)

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert out["r"].status_code == 200 and len(out["r"].json()["data"]) == len(texts)
    # uvicorn shuts down gracefully, then ends the process by the signal it got
    assert s.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Traceback" not in s.proc.stderr.read()
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=5)


def test_a_model_that_cannot_load_ends_the_server_with_its_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    proc = subprocess.run([sys.executable, "-m", "jv4", "serve", str(bad), "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "jv4: error:" in proc.stderr and "bad.gguf" in proc.stderr


def test_503_while_loading(folder):
    """In process, with a load held back: /health and /v1/embeddings say 503."""
    from starlette.testclient import TestClient

    from jv4 import server as srv

    gate = threading.Event()

    class Slow(srv.Served):
        def load(self):
            gate.wait(60)
            super().load()

    served = Slow(str(folder), "Q4_K_M", None, {})
    with TestClient(srv.build_app(served, srv.ServerOptions())) as c:
        assert c.get("/health").status_code == 503
        r = c.post("/v1/embeddings", json={"model": "jv4-test", "input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        gate.set()
        served.loaded.wait(60)
        assert c.get("/health").status_code == 200
        assert c.post("/v1/embeddings", json={"model": "jv4-test", "input": "x"}).status_code == 200


def test_serve_without_the_extra_names_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_uvicorn(name, *a, **kw):
        if name == "uvicorn":
            raise ImportError("no uvicorn")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    from jv4.cli import main

    assert main(["serve", "x.gguf"]) == 2


@pytest.mark.long
def test_short_soak_loses_nothing_and_holds_memory():
    """tools/soak_serve.py, shortened (the long run, 10^5 requests, is in
    docs/benchmarks.md): every request answered, every vector the bytes of
    the text alone, bad requests their 400, server memory flat."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "tools" / "soak_serve.py"), "--requests", "1500",
                           "--clients", "16", "--max-growth", "0.05"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert out["done"] == 1500 and out["lost"] == out["wrong_status"] == out["mismatches"] == 0, out
    assert out["engine"]["jv4_engine_groups_total"] < out["engine"]["jv4_engine_calls_total"], out


def test_the_three_official_models_by_name(hf_cache, make_gguf):
    """No MODEL: the official repositories from the Hugging Face cache, each
    loaded on its first request; a repository's name serves its own task."""
    env = hub_env({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)})
    s = Server(None, "--quant", "F32", env=env)
    try:
        ids = [m["id"] for m in requests.get(s.url + "/v1/models", timeout=10).json()["data"]]
        assert ids == ["jina-embeddings-v4", *[repo_of(t) for t in jv4.TASKS]]
        for task in jv4.TASKS:
            want = jv4.Model(make_gguf(task=task, dtype="F32")).embed(TEXTS[:2], role="passage")
            for body in ({"model": "jina-embeddings-v4", "task": task}, {"model": repo_of(task)}):
                r = s.post({**body, "input": TEXTS[:2], "role": "passage"}, key=None)
                assert r.status_code == 200, r.text
                got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
                assert cosines(got, want).min() >= 0.99999, (task, body)
        err = _error(s.post({"model": repo_of("code"), "input": "x", "task": "retrieval"}, key=None), 400)
        assert "serves the task 'code'" in err["message"]
    finally:
        s.stop()
