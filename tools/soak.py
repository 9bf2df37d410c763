"""Soak and stress: many embed calls from several threads on one model, with
Ctrl-C sprinkled in; every vector checked against a single-threaded run.

    python tools/soak.py --calls 100000 --threads 4     # the long run
    python tools/soak.py --calls 1500                   # what the suite runs

One shared `jv4.Model` (the tiny test model, a small token budget so that
long texts span several decodes, max_length 192 so that some are truncated)
serves `--threads` Python threads plus the main thread. Calls are drawn
(seeded) from a pool of call shapes: an empty list, an empty string, one
text, a few texts, texts longer than a decode, texts longer than max_length,
and, rarely, thousands of texts at once. Each shape's vectors were computed
first by a separate single-threaded model, call by call; every soak result
must be bit-identical to its shape's (the same texts in the same call give
the same vectors whatever the thread count - docs/usage.md).

A timer thread sends SIGINT to the process now and then: the main thread's
call in flight raises KeyboardInterrupt (counted), the other threads' calls
must be unaffected, and the model keeps working. Resident memory is read
after a warm-up (the first 5 % of calls) and at the end, every thread idle
both times: the peak RSS and the bytes malloc holds must each grow under
1 %; RSS, its file-backed (the mmapped model) and anonymous parts, and the
anonymous part after malloc_trim are reported too. Prints a JSON summary; exit status 1 on any mismatch, error or
growth over the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Mallinfo2(__import__("ctypes").Structure):
    _fields_ = [(name, __import__("ctypes").c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def memory() -> dict:
    """Resident memory: all of it, then split into file-backed pages (the
    mmapped model: rows of the embedding table are paged in as new tokens
    come, which is not memory the process holds) and anonymous memory;
    glibc's bytes in use (mallinfo2: every arena, plus mmapped blocks); and
    anonymous RSS after malloc_trim(0) hands free heap pages back to the OS.
    A leak grows the heap in use; the peak (VmHWM, since the start) grows
    when a later call needs more memory than any before it."""
    import ctypes
    out = {"peak_rss_kb": rss_kb("VmHWM"), "rss_kb": rss_kb(), "rss_file_kb": rss_kb("RssFile"),
           "rss_anon_kb": rss_kb("RssAnon")}
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        mi = libc.mallinfo2()
        out["heap_in_use_kb"] = (mi.uordblks + mi.hblkhd) // 1024
        libc.malloc_trim(0)
        out["rss_anon_trimmed_kb"] = rss_kb("RssAnon")
    except (OSError, AttributeError):  # not glibc
        pass
    return out


def call_shapes(rng: random.Random, corpus: list) -> list:
    """The pool of calls, each (name, list of texts)."""
    def text(words: int) -> str:
        return " ".join(rng.choice(corpus).split()[:1] + [rng.choice(corpus) for _ in range(words // 8)])[: words * 6]

    shapes = [("empty call", []), ("empty text", [""]), ("empty among others", ["a", "", "b c"])]
    for i in range(40):
        shapes.append((f"one text {i}", [rng.choice(corpus)]))
    for i in range(40):
        shapes.append((f"a few texts {i}", [rng.choice(corpus) for _ in range(rng.randrange(2, 12))]))
    for i in range(15):
        shapes.append((f"over a decode {i}", [text(rng.randrange(150, 600)) for _ in range(rng.randrange(1, 4))]))
    for i in range(10):
        shapes.append((f"over max_length {i}", [text(rng.randrange(600, 2000)), rng.choice(corpus)]))
    for i in range(3):
        shapes.append((f"thousands {i}", [rng.choice(corpus) for _ in range(rng.randrange(1000, 3000))]))
    return shapes


# how often each kind of call is drawn: mostly the short calls a service
# makes, enough long ones to keep decodes split and texts truncated, and the
# rare bulk call (it costs as much as a thousand others)
WEIGHTS = {"empty": 0.04, "one text": 0.45, "a few texts": 0.36, "over a decode": 0.08,
           "over max_length": 0.0695, "thousands": 0.0005}


def pick(rng: random.Random, shapes: list) -> int:
    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    return rng.choice([i for i, (name, _) in enumerate(shapes) if name.startswith(kind)])


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=4, help="Python threads besides the main thread")
    ap.add_argument("--n-threads", type=int, default=2, help="the model's compute threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interrupt-every", type=float, default=0.5, help="mean seconds between SIGINTs (0: none)")
    ap.add_argument("--max-growth", type=float, default=0.01, help="allowed RSS growth after warm-up")
    ap.add_argument("--model", type=Path, help="a GGUF to use instead of the tiny test model")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    import jv4
    from corpus import CORPUS

    rng = random.Random(args.seed)
    shapes = call_shapes(rng, list(CORPUS))
    with tempfile.TemporaryDirectory(prefix="jv4-soak-") as d:
        path = args.model
        if path is None:
            import modelgen as mg
            vocab = mg.Vocab()
            path = mg.write_gguf(Path(d) / "jina-embeddings-v4-text-retrieval-F32.gguf",
                                 mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab)
        opts = dict(batch_tokens=128, max_length=192)

        t0 = time.monotonic()
        ref_model = jv4.Model(path, n_threads=1, **opts)
        reference = [ref_model.embed(texts) for _, texts in shapes]
        ref_model.close()
        t_ref = time.monotonic() - t0

        model = jv4.Model(path, n_threads=args.n_threads, **opts)
        lock = threading.Lock()
        stats = {"calls": 0, "mismatches": [], "errors": [], "interrupted": 0, "vectors": 0,
                 "interrupted_between_calls": 0}

        def record(i: int, got: np.ndarray) -> None:
            want = reference[i]
            with lock:
                stats["calls"] += 1
                stats["vectors"] += len(got)
                if got.shape != want.shape or not np.array_equal(got, want):
                    stats["mismatches"].append(shapes[i][0])

        def storm(n_calls: int, seed: int) -> None:
            """n_calls calls from all threads, SIGINTs flying; returns when all are done."""
            todo = iter(range(n_calls))

            def next_call(r: random.Random):
                with lock:
                    n = next(todo, None)
                return None if n is None else pick(r, shapes)

            def worker(k: int) -> None:
                r = random.Random(seed + k)
                while (i := next_call(r)) is not None:
                    try:
                        record(i, model.embed(shapes[i][1]))
                    except Exception as e:  # noqa: BLE001 - reported, then the soak fails
                        with lock:
                            stats["errors"].append(f"{shapes[i][0]}: {type(e).__name__}: {e}")

            stop = threading.Event()

            def interrupter() -> None:
                r = random.Random(seed + 99)
                while not stop.wait(r.expovariate(1 / args.interrupt_every)):
                    os.kill(os.getpid(), signal.SIGINT)

            threads = [threading.Thread(target=worker, args=(1 + k,)) for k in range(args.threads)]
            for t in threads:
                t.start()
            if args.interrupt_every > 0:
                threading.Thread(target=interrupter, daemon=True).start()
            r = random.Random(seed)
            # The main thread embeds too: a SIGINT raises KeyboardInterrupt in
            # it, inside embed (the call is cancelled) or between calls; both
            # are counted and the loop goes on.
            while True:
                try:
                    i = next_call(r)
                    if i is None:
                        break
                    try:
                        got = model.embed(shapes[i][1])
                    except KeyboardInterrupt:
                        with lock:
                            stats["interrupted"] += 1
                            stats["calls"] += 1
                        continue
                    record(i, got)
                except KeyboardInterrupt:
                    with lock:
                        stats["interrupted_between_calls"] += 1
            stop.set()
            for t in threads:
                while t.is_alive():
                    try:
                        t.join()
                    except KeyboardInterrupt:
                        with lock:
                            stats["interrupted_between_calls"] += 1

        old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
        t1 = time.monotonic()
        # warm-up (5 %), then memory read with every thread idle; the rest,
        # then memory read the same way
        warm_calls = max(1, args.calls // 20)
        def settle() -> None:  # a SIGINT still in flight lands here
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                stats["interrupted_between_calls"] += 1

        storm(warm_calls, args.seed + 1000)
        settle()
        mem = {"warm": memory()}
        storm(args.calls - warm_calls, args.seed + 2000)
        settle()
        signal.signal(signal.SIGINT, old_handler)
        elapsed = time.monotonic() - t1
        # after the storm: the model still gives the reference vectors
        after = all(np.array_equal(model.embed(texts), want) for (_, texts), want in zip(shapes[:20], reference))
        mem["end"] = memory()
        model.close()

    warm, end = mem["warm"], mem["end"]
    growth = {k: round((end[k] - warm[k]) / warm[k], 5) for k in end if warm.get(k)}
    # the criteria: the peak RSS after warm-up against the peak at the end
    # (the measure), and the bytes malloc holds (a leak's measure)
    keys = ["peak_rss_kb"] + (["heap_in_use_kb"] if "heap_in_use_kb" in growth else [])
    summary = {
        "calls": stats["calls"], "vectors": stats["vectors"], "threads": args.threads + 1,
        "model_threads": args.n_threads, "seconds": round(elapsed, 1), "reference_seconds": round(t_ref, 1),
        "interrupted": stats["interrupted"], "interrupted_between_calls": stats["interrupted_between_calls"],
        "mismatches": len(stats["mismatches"]), "mismatch_examples": stats["mismatches"][:5],
        "errors": stats["errors"][:5], "model_ok_after": after,
        "memory_after_warmup_mb": {k[:-3]: round(v / 1024, 1) for k, v in warm.items()},
        "memory_end_mb": {k[:-3]: round(v / 1024, 1) for k, v in end.items()},
        "growth": {k[:-3]: v for k, v in growth.items()}, "growth_judged": [k[:-3] for k in keys],
    }
    print(json.dumps(summary, indent=1))
    # under tools/sanitize.sh ASan's quarantine grows RSS by design; LeakSanitizer
    # judges leaks there instead
    growth_ok = all(growth[k] < args.max_growth for k in keys) or os.environ.get("JV4_SANITIZED") == "1"
    ok = not stats["mismatches"] and not stats["errors"] and after and growth_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
