"""Concurrent callers: in process (threads on one jv4.Model) and over HTTP
(jv4 serve against the pinned llama-server, the model card's command).

    python bench/concurrency.py --shape mini --dtype F16
    python bench/concurrency.py --shape mini --dtype F16 --clients 1,8,32 --http-only

Workloads: short queries (the corpus' texts, one a request / call) and
~500-token passages. For each number of concurrent clients, every client
sends one text at a time until the workload is done; reported: texts/s,
tokens/s and p50/p99 latency of a text, beside the same texts in one batched
in-process call (the ceiling) and one text alone (the floor on latency).

In process: jv4.Model with coalesce off (calls one by one, today's default)
and on (concurrent calls share decodes). Over HTTP: jv4 serve (coalescing on)
and llama-server from the vendored tree (bench/build_tools.py) with
`--embedding --pooling mean -ub 8192`, the same file and threads, the prefix
added by the client as the model card tells llama-server users to. Every
server runs as its own process, one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))  # bench/corpus.py before tests/corpus.py

LLAMA_SERVER = ROOT / "build" / "llama-tools" / "bin" / "llama-server"


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def drive(n_clients: int, texts: list, send) -> dict:
    """n_clients threads, each sending one text at a time from a shared list."""
    lock = threading.Lock()
    nxt = [0]
    lat: list = []
    errors: list = []
    start = threading.Barrier(n_clients + 1)

    def client():
        start.wait()
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(texts):
                return
            t = time.perf_counter()
            try:
                send(texts[i])
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(repr(e))
                continue
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": n_clients, "texts": len(lat), "errors": len(errors), "first_error": errors[:1],
            "texts_per_s": len(lat) / wall, "p50_ms": 1000 * _pct(lat, 50), "p99_ms": 1000 * _pct(lat, 99)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc, what: str) -> None:
    import requests

    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} (its log: bench/results/)")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


def http_rows(name: str, cmd: list, port: int, body, workloads: dict, clients: list) -> list:
    import requests

    # the server's log to a file: an unread pipe fills and stalls the server
    log = open(HERE / "results" / f"concurrency-{name.replace(' ', '-')}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    local = threading.local()
    rows = []
    try:
        _wait_up(url, proc, name)

        def send(text):
            s = getattr(local, "s", None)
            if s is None:
                s = local.s = requests.Session()
            r = s.post(url + "/v1/embeddings", data=json.dumps(body(text)),
                       headers={"Content-Type": "application/json"}, timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            n = len(r.json()["data"])
            assert n == 1, n

        for wl, texts in workloads.items():
            send(texts[0])  # warm
            for n in clients:
                row = drive(n, texts, send)
                row.update(engine=name, workload=wl)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="mini", choices=["tiny", "mini", "v4"])
    ap.add_argument("--dtype", default="F16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--queries", type=int, default=256, help="short queries a run")
    ap.add_argument("--passages", type=int, default=32, help="~500-token passages a run (0: none)")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--http-only", action="store_true")
    ap.add_argument("--in-process-only", action="store_true")
    ap.add_argument("--out", help="JSON results file (default bench/results/concurrency-SHAPE-DTYPE.json)")
    a = ap.parse_args()

    import jv4
    from corpus import docstring_passages, fixed_length
    from run import make_model

    model, _ = make_model(a.shape, a.dtype)
    clients = [int(x) for x in a.clients.split(",")]
    # short queries: the first sentence of each docstring paragraph (about 10-25 tokens)
    queries = [p.split(". ")[0][:160] for p in docstring_passages(300)]
    queries = (queries * (a.queries // len(queries) + 1))[:a.queries]
    workloads = {"query": queries}
    if a.passages:
        m = jv4.Model(model, n_threads=a.threads)
        workloads["passage"] = fixed_length(lambda t: m.tokenize(t, role="passage"), 500, a.passages)
        m.close()
    rows: list = []
    info = {"model": str(model), "shape": a.shape, "dtype": a.dtype, "threads": a.threads,
            "build": {k: jv4.build_info()[k] for k in ("dispatch", "cpu_baseline", "backends")},
            "batch_wait_ms": a.batch_wait_ms}
    print(json.dumps(info), flush=True)

    if not a.http_only:
        for coalesce in (False, True):
            m = jv4.Model(model, n_threads=a.threads, coalesce=coalesce, batch_wait_ms=a.batch_wait_ms)
            role = {"query": "query", "passage": "passage"}
            for wl, texts in workloads.items():
                m.embed(texts[:4], role=role[wl])  # warm
                if not coalesce:
                    t = time.perf_counter()
                    m.embed(texts, role=role[wl])
                    wall = time.perf_counter() - t
                    row = {"engine": "jv4 one call", "workload": wl, "clients": 0, "texts": len(texts),
                           "texts_per_s": len(texts) / wall}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    alone = []
                    for x in texts[:20]:
                        t = time.perf_counter()
                        m.embed(x, role=role[wl])
                        alone.append(time.perf_counter() - t)
                    row = {"engine": "jv4 one text alone", "workload": wl, "clients": 1,
                           "p50_ms": 1000 * statistics.median(alone)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for n in clients:
                    st0 = m.stats()
                    row = drive(n, texts, lambda x, r=role[wl]: m.embed(x, role=r))
                    row.update(engine=f"jv4 threads, coalesce {'on' if coalesce else 'off'}", workload=wl)
                    st = m.stats()
                    row["calls_per_group"] = (st["calls"] - st0["calls"]) / max(1, st["groups"] - st0["groups"])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            m.close()

    if not a.in_process_only:
        port = _free_port()
        cmd = [sys.executable, "-m", "jv4", "serve", str(model), "--port", str(port), "--threads", str(a.threads),
               "--log-level", "warning", "--batch-wait-ms", str(a.batch_wait_ms)]
        mid = Path(model).stem
        # per workload: the role in jv4's request, the prefix by hand for llama-server
        for wl, texts in workloads.items():
            role = "query" if wl == "query" else "passage"
            rows += http_rows("jv4 serve", cmd, port,
                              lambda t, r=role: {"model": mid, "input": t, "role": r}, {wl: texts}, clients)
            if LLAMA_SERVER.exists():
                lport = _free_port()
                lcmd = [str(LLAMA_SERVER), "-m", str(model), "--embedding", "--pooling", "mean", "-ub", "8192", "-c", "8192",
                        "-t", str(a.threads), "-tb", str(a.threads), "--host", "127.0.0.1", "--port", str(lport)]
                prefix = "Query: " if wl == "query" else "Passage: "
                rows += http_rows("llama-server", lcmd, lport, lambda t, p=prefix: {"input": p + t}, {wl: texts},
                                  clients)
            else:
                print(f"(no {LLAMA_SERVER}: python bench/build_tools.py builds it)", flush=True)

    out = Path(a.out) if a.out else HERE / "results" / f"concurrency-{a.shape}-{a.dtype}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print_table(rows)
    return 0


def print_table(rows: list) -> None:
    print("\n| workload | engine | clients | texts/s | p50 ms | p99 ms | calls/group |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        f = lambda k, fmt: (fmt % r[k]) if k in r else ""  # noqa: E731
        rate = "%.2f" if r.get("texts_per_s", 99) < 10 else "%.1f"  # the v4 shape runs a few texts/s
        print(f"| {r['workload']} | {r['engine']} | {r.get('clients', '')} | {f('texts_per_s', rate)} | "
              f"{f('p50_ms', '%.0f')} | {f('p99_ms', '%.0f')} | {f('calls_per_group', '%.1f')} |")


if __name__ == "__main__":
    sys.exit(main())
