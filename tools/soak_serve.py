"""Soak jv4 serve: many requests from many clients; none lost, every vector
right, memory flat.

    python tools/soak_serve.py --requests 100000 --clients 32   # the long run
    python tools/soak_serve.py --requests 1500 --clients 16     # what the suite runs

Starts `jv4 serve --batch-invariant` on the tiny test model (or --model) and
drives it from --clients threads, each with its own keep-alive session.
Requests are drawn (seeded) from a pool of shapes: one query, a few texts,
texts longer than a decode, float or base64, a Matryoshka `dimensions`, and
a share of bad requests (malformed JSON, an unknown task, an empty input)
that must get their 400. Every good response's vectors must be the bytes a
local Model(batch_invariant=True) gives each text alone. The server's
resident memory (/proc/PID/status) is read after a warm-up (the first 5 % of
requests) and at the end: growth over --max-growth (a fraction) fails. Prints
a JSON summary; exit status 1 on any lost request, wrong status, mismatch or
growth.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model", help="a GGUF (default: the tiny test model, generated)")
    ap.add_argument("--max-growth", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import requests

    import jv4

    tmp = tempfile.TemporaryDirectory(prefix="jv4-soak-serve-")
    model = a.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        import modelgen as mg

        vocab = mg.Vocab()
        model = str(Path(tmp.name) / "jina-embeddings-v4-text-retrieval-F32.gguf")
        mg.write_gguf(Path(model), mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab)
    mid = Path(model).stem
    local = jv4.Model(model, batch_invariant=True)
    dims = [d for d in local.dims if d <= local.n_embd][:3]

    rng = random.Random(a.seed)
    words = "the of a page image query passage vector model text token decode batch".split()
    pool = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + f" {i}" for i in range(200)]
    pool += [" ".join(rng.choice(words) for _ in range(rng.randint(150, 400))) + f" long {i}" for i in range(10)]
    want: dict = {}

    def expected(text: str, dim) -> bytes:
        key = (text, dim)
        if key not in want:
            want[key] = local.embed(text, dim=dim).astype("<f4").tobytes()
        return want[key]

    shapes = []
    for _ in range(400):
        kind = rng.random()
        if kind < 0.08:
            shapes.append(("bad", rng.choice([b"{nope", {"model": mid, "input": "x", "task": "summarize"},
                                              {"model": mid, "input": []}])))
            continue
        n = 1 if kind < 0.6 else rng.randint(2, 8)
        texts = [rng.choice(pool) for _ in range(n)]
        dim = rng.choice([None, *dims])
        enc = rng.choice(["float", "base64"])
        for t in texts:
            expected(t, dim)
        body = {"model": mid, "input": texts if n > 1 or rng.random() < 0.5 else texts[0], "encoding_format": enc}
        if dim is not None:
            body["dimensions"] = dim
        shapes.append(("ok", (body, texts, dim, enc)))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "jv4", "serve", model, "--port", str(port), "--batch-invariant",
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary = {"requests": a.requests, "clients": a.clients, "done": 0, "lost": 0, "wrong_status": 0,
               "mismatches": 0, "errors": []}
    lock = threading.Lock()
    nxt = [0]
    warm = max(1, a.requests // 20)
    rss = {}
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise RuntimeError("jv4 serve did not come up: " + proc.stderr.read()[-2000:])

        def client(k: int) -> None:
            session = requests.Session()
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                    if i == warm:
                        rss["warm"] = rss_kb(proc.pid)
                if i >= a.requests:
                    return
                kind, spec = shapes[i % len(shapes)]
                try:
                    data = spec if kind == "bad" and isinstance(spec, bytes) else json.dumps(
                        spec if kind == "bad" else spec[0])
                    r = session.post(url + "/v1/embeddings", data=data, timeout=300)
                except Exception as e:  # noqa: BLE001 - a lost request
                    with lock:
                        summary["lost"] += 1
                        summary["errors"].append(repr(e)[:200])
                    continue
                ok = True
                if kind == "bad":
                    ok = r.status_code == 400 and "error" in r.json()
                    if not ok:
                        with lock:
                            summary["wrong_status"] += 1
                else:
                    body, texts, dim, enc = spec
                    if r.status_code != 200:
                        ok = False
                        with lock:
                            summary["wrong_status"] += 1
                            summary["errors"].append(r.text[:200])
                    else:
                        for d, t in zip(r.json()["data"], texts):
                            got = (base64.b64decode(d["embedding"]) if enc == "base64"
                                   else np.asarray(d["embedding"], "<f4").tobytes())
                            if got != expected(t, dim):
                                ok = False
                        if not ok:
                            with lock:
                                summary["mismatches"] += 1
                with lock:
                    summary["done"] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        rss["end"] = rss_kb(proc.pid)
        metrics = requests.get(url + "/metrics", timeout=10).text
        summary["engine"] = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                             if line.startswith(("jv4_engine_calls_total", "jv4_engine_groups_total"))}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()
    summary["rss_kb"] = rss
    growth = (rss["end"] - rss["warm"]) / rss["warm"] if rss.get("warm") else 0.0
    summary["rss_growth"] = round(growth, 4)
    summary["errors"] = summary["errors"][:5]
    print(json.dumps(summary, indent=1))
    bad = (summary["done"] != a.requests or summary["lost"] or summary["wrong_status"] or summary["mismatches"]
           or growth > a.max_growth)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
