"""Runtime behaviour: threads, Ctrl-C, logging, memory."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import jv4
from corpus import CORPUS


def test_concurrent_embed_calls_on_one_model_give_the_same_results(load):
    m = load()
    chunks = [CORPUS[i::4] for i in range(4)]
    expected = [m.embed(c) for c in chunks]
    results: dict = {}
    errors: list = []

    def work(i):
        try:
            for _ in range(3):
                results.setdefault(i, []).append(m.embed(chunks[i]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        for got in results[i]:
            np.testing.assert_allclose(got, expected[i], atol=1e-6)


def test_embed_releases_the_gil(load):
    m = load()
    texts = [" ".join(CORPUS)] * 2
    done = threading.Event()
    ticks = 0

    def embed():
        m.embed(texts * 4)
        done.set()

    t = threading.Thread(target=embed)
    t.start()
    while not done.is_set():
        ticks += 1
    t.join()
    # with the GIL held by embed, this loop could not have run
    assert ticks > 10_000


def _script(model, body):
    # SIGINT at its default in the child (a suite started in the background
    # by a shell passes it on ignored, and Python then has no Ctrl-C handler)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body), str(model)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_interrupts_a_long_embed_and_the_model_still_works(make_gguf):
    proc = _script(make_gguf(), """
        import os, signal, sys, threading, time, numpy as np, jv4
        m = jv4.Model(sys.argv[1], batch_tokens=128)
        before = m.embed(["probe text", "another probe"])
        texts = ["word " * 400 + str(i) for i in range(5000)]   # minutes of work
        sent = {}
        def interrupt():
            sent["t"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(1.0, interrupt).start()
        t0 = time.monotonic()
        try:
            m.embed(texts)
        except KeyboardInterrupt:
            latency = time.monotonic() - sent["t"]
        else:
            raise SystemExit("embed finished without being interrupted")
        after = m.embed(["probe text", "another probe"])
        assert np.allclose(before, after, atol=1e-6)
        print(f"LATENCY {latency:.3f}")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latency = float(proc.stdout.split("LATENCY")[1])
    assert latency < 1.5, latency


def test_llama_cpp_logging_stays_off_stderr(make_gguf):
    proc = _script(make_gguf(), """
        import sys, jv4
        m = jv4.Model(sys.argv[1])
        m.embed(["quiet please"] * 3)
        jv4.build_info()
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_llama_cpp_log_lines_reach_python_logging(make_gguf, caplog):
    with caplog.at_level(logging.DEBUG, logger="jv4"):
        jv4.Model(make_gguf())
    records = [r for r in caplog.records if r.name == "jv4"]
    assert records, "no llama.cpp log lines forwarded"
    assert any("llama" in r.getMessage() or "load" in r.getMessage() for r in records)


def test_the_pooling_override_note_is_not_a_warning(make_gguf, caplog):
    """llama.cpp's note that jv4 pools itself (pooling_type differs from the
    model's) is expected, so it is DEBUG, not a WARNING on every load."""
    with caplog.at_level(logging.DEBUG, logger="jv4"):
        jv4.Model(make_gguf()).embed(["a text"])
    records = [r for r in caplog.records if r.name == "jv4"]
    assert any("pooling_type" in r.getMessage() and r.levelno == logging.DEBUG for r in records)
    # (llama.cpp's own notes on the vocabulary, e.g. a control-looking token,
    # stay warnings: they are about the file)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING and "pooling" in r.getMessage()] == []


@pytest.mark.skipif(__import__("os").environ.get("JV4_SANITIZED") == "1",
                    reason="under tools/sanitize.sh ASan's quarantine keeps freed memory (up to 256 MB) by "
                           "design; LeakSanitizer judges leaks in that run")
def test_repeated_calls_do_not_grow_memory(make_gguf):
    proc = _script(make_gguf(), """
        import sys, gc, ctypes, jv4
        try:  # glibc keeps freed memory in its arenas; hand it back before measuring
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            _trim = lambda _: None
        def rss_kb():
            gc.collect()
            _trim(0)
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        m = jv4.Model(sys.argv[1])
        for _ in range(200):
            m.embed(["warm up the allocator", "two"])
        start = rss_kb()
        for i in range(3000):
            m.embed([f"text number {i}", "a second, somewhat longer text to embed"], dim=128)
            m.tokenize("tokenize as well")
        for _ in range(20):
            try:
                m.embed(["x", 1])
            except TypeError:
                pass
        calls = rss_kb() - start
        for _ in range(3):
            jv4.Model(sys.argv[1]).embed(["load and drop"])
        # two equal windows of load/free cycles: a leak grows both; a one-off
        # jump (seen under load: ~20 MB once, from a new thread arena or
        # OpenMP pool) grows only one
        windows = []
        for _ in range(2):
            start = rss_kb()
            for _ in range(15):
                jv4.Model(sys.argv[1]).embed(["load and drop"])
            windows.append(rss_kb() - start)
        print("GROWTH", calls, min(windows), max(windows))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls, loads, other = map(int, proc.stdout.split("GROWTH")[1].split())
    assert calls < 8 * 1024, f"{calls} KiB growth over 3000 embed calls"
    assert loads < 4 * 1024, f"{loads} and {other} KiB growth over two windows of 15 load/free cycles"


def test_closing_or_dropping_a_model_while_another_thread_embeds(make_gguf):
    """close() / del while another thread is inside embed: that call finishes
    with the right vectors, later calls raise ValueError, the process lives
    on (checked in a child process, so a crash would show as its exit code)."""
    proc = _script(make_gguf(), """
        import gc, sys, threading, time, numpy as np, jv4
        texts = ["word " * 60 + str(i) for i in range(600)]
        want = jv4.Model(sys.argv[1]).embed(texts[:5])
        for how in ("close", "del", "embedder"):
            if how == "embedder":
                holder = jv4.Embedder(models={"retrieval": sys.argv[1]})
                run = lambda: holder.embed(texts, task="retrieval")
            else:
                holder = jv4.Model(sys.argv[1])
                run = lambda: holder.embed(texts)
            out = {}
            def work():
                try:
                    out["v"] = run()
                except Exception as e:  # a clean exception is allowed too
                    out["e"] = e
            t = threading.Thread(target=work)
            t.start()
            time.sleep(0.3)
            assert t.is_alive(), "the call ended before the close: make it longer"
            if how == "del":
                del holder, run
                gc.collect()
            else:
                holder.close()
            t.join(120)
            assert not t.is_alive()
            if "v" in out:
                assert np.abs(out["v"][:5] - want).max() < 1e-4, how
            else:
                assert isinstance(out["e"], ValueError), (how, out["e"])
            if how != "del":
                try:
                    holder.embed(texts[:1])
                except ValueError as e:
                    assert "closed" in str(e)
                else:
                    raise AssertionError("a closed model still embeds")
            print(how, "finished" if "v" in out else f"raised {out['e']}")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 3, proc.stdout
