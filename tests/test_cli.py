"""The `jv4` command: inputs, outputs, errors, progress and Ctrl-C, each
compared with the Python API."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import jv4
from conftest import cosines, hub_env
from corpus import CORPUS

LINES = [t for t in CORPUS if t and "\n" not in t and "\r" not in t][:40]
JV4 = [sys.executable, "-m", "jv4"]


def run(args, *, input=None, env=None, timeout=300):
    return subprocess.run(JV4 + [str(a) for a in args], input=input, capture_output=True,
                          env=env, timeout=timeout)


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def one_error_line(proc) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jv4: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def model_path(make_gguf) -> Path:
    return make_gguf()


@pytest.fixture(scope="module")
def api(model_path):
    return jv4.Model(model_path)


@pytest.fixture()
def lines_file(tmp_path) -> Path:
    p = tmp_path / "texts.txt"
    p.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return p


@pytest.mark.smoke
def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / ("jv4.exe" if os.name == "nt" else "jv4")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"jv4 {jv4.__version__}"


def test_text_file_to_npy_equals_the_api(model_path, api, lines_file, tmp_path):
    out = tmp_path / "v.npy"
    ok(run(["embed", "-m", model_path, "-i", lines_file, "-o", out, "--role", "passage", "--dim", 128]))
    got = np.load(out)
    assert got.dtype == np.float32 and np.array_equal(got, api.embed(LINES, role="passage", dim=128))
    assert sorted(os.listdir(tmp_path)) == ["texts.txt", "v.npy"]  # no temporary file left


def test_text_file_in_chunks_to_npy(model_path, api, lines_file, tmp_path):
    out = tmp_path / "v.npy"
    ok(run(["embed", "-m", model_path, "-i", lines_file, "-o", out, "--chunk", 7]))
    # chunks of 7 batch differently from one call: equal up to batch invariance
    assert cosines(np.load(out), api.embed(LINES)).min() >= 0.99999


def test_jsonl_in_jsonl_out_keeps_fields_and_order(model_path, api, tmp_path):
    src = tmp_path / "docs.jsonl"
    rows = [{"id": i, "body": t, "meta": {"n": len(t)}} for i, t in enumerate(LINES[:15])]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    ok(run(["embed", "-m", model_path, "-i", src, "--field", "body", "-o", out, "--task", "retrieval",
            "--role", "passage"]))
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want = api.embed([r["body"] for r in rows], role="passage")
    assert [{k: v for k, v in g.items() if k != "embedding"} for g in got] == rows
    assert np.array_equal(np.array([g["embedding"] for g in got], np.float32), want)


@pytest.mark.smoke
def test_texts_as_arguments_print_json_lines(model_path, api):
    out = ok(run(["embed", "-m", model_path, "first text", "second text", "--dim", 256]))
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["text"] for g in got] == ["first text", "second text"]
    assert np.array_equal(np.array([g["embedding"] for g in got], np.float32),
                          api.embed(["first text", "second text"], dim=256))


def test_stdin_lines_with_binary_precision(model_path, api, tmp_path):
    out = tmp_path / "b.npy"
    ok(run(["embed", "-m", model_path, "-i", "-", "-o", out, "--precision", "ubinary"],
           input=("\n".join(LINES) + "\n").encode()))
    got = np.load(out)
    assert got.dtype == np.uint8 and np.array_equal(got, api.embed(LINES, precision="ubinary"))


def test_int8_uses_ranges_of_the_whole_input(model_path, api, lines_file, tmp_path):
    out, ranges = tmp_path / "q.npy", tmp_path / "ranges.npy"
    ok(run(["embed", "-m", model_path, "-i", lines_file, "-o", out, "--precision", "int8", "--chunk", 5,
            "--save-ranges", ranges]))
    floats = np.concatenate([api.embed(LINES[i:i + 5]) for i in range(0, len(LINES), 5)])
    assert np.array_equal(np.load(ranges), jv4.calibration_ranges(floats))
    assert np.array_equal(np.load(out), jv4.quantize_embeddings(floats, "int8"))
    # and with those ranges given back, one text is quantized the same way
    single = ok(run(["embed", "-m", model_path, LINES[0], "--precision", "int8", "--ranges", ranges]))
    assert json.loads(single)["embedding"] == jv4.quantize_embeddings(
        api.embed(LINES[0]), "int8", ranges=np.load(ranges)).tolist()


def test_default_model_is_the_official_one_of_the_task(hf_cache, make_gguf):
    env = hub_env({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)})
    for task in ("retrieval", "code"):
        args = ["embed", "--quant", "F16", "a short text"] + (["--task", task] if task != "retrieval" else [])
        got = json.loads(ok(run(args, env=env)))["embedding"]
        want = jv4.Model(make_gguf(task=task, dtype="F16")).embed("a short text", task=task)
        assert np.array_equal(np.array(got, np.float32), want)


def test_user_mistakes_are_one_line_and_exit_2(model_path, hf_cache, tmp_path):
    assert "unrecognized arguments: --nope" in one_error_line(run(["embed", "-m", model_path, "x", "--nope"]))
    assert "invalid int value" in one_error_line(run(["embed", "-m", model_path, "x", "--dim", "abc"]))
    assert "dim must be one of 128, 256" in one_error_line(run(["embed", "-m", model_path, "x", "--dim", 100]))
    assert "no such file" in one_error_line(run(["embed", "-m", tmp_path / "missing.gguf", "x"]))
    assert "nothing to embed" in one_error_line(run(["embed", "-m", model_path]))
    assert "--field applies to JSON Lines" in one_error_line(run(["embed", "-m", model_path, "x", "--field", "b"]))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff utf-8\n")
    assert "line 2 is not valid UTF-8" in one_error_line(run(["embed", "-m", model_path, "-i", bad]))
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "a"}\n{"title": "b"}\n', encoding="utf-8")
    assert "line 2 has no field 'text'" in one_error_line(run(["embed", "-m", model_path, "-i", jl]))
    assert ".npy or .jsonl" in one_error_line(run(["embed", "-m", model_path, "x", "-o", tmp_path / "v.csv"]))
    env = hub_env({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)})
    line = one_error_line(run(["embed", "-m", "jinaai/jina-embeddings-v4-text-code-GGUF:Q2_K", "x"], env=env))
    assert "Q2_K" in line and "F16, F32" in line
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*partial*"))


def test_info_without_and_with_a_model(model_path):
    assert json.loads(ok(run(["info"])))["version"] == jv4.__version__
    facts = json.loads(ok(run(["info", model_path])))
    import gguf

    reader = gguf.GGUFReader(str(model_path))
    assert facts["architecture"] == "qwen2" and facts["task"] == "retrieval" and facts["jina_v4"] is True
    assert facts["n_embd"] == 256 and facts["dims"] == [128, 256]
    assert facts["n_params"] == sum(int(t.n_elements) for t in reader.tensors)
    assert facts["file_type"] == "all F32"
    assert facts["file_bytes"] == model_path.stat().st_size
    assert facts["n_ctx_train"] == int(reader.fields["qwen2.context_length"].parts[-1][0])


def test_quantize_command(model_path, tmp_path):
    dst = tmp_path / "q8.gguf"
    ok(run(["quantize", model_path, dst, "Q8_0"]))
    assert jv4.Model(dst).info["file_type"] == "Q8_0"
    assert "invalid choice" in one_error_line(run(["quantize", model_path, dst, "Q9"]))


def _run_on_pty(args) -> tuple[int, str]:
    """Runs the command with stderr on a pseudo-terminal; returns (rc, what the terminal got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(JV4 + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=drain)
    t.start()
    rc = proc.wait(timeout=300)
    t.join(timeout=10)
    os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_not_when_piped(model_path, tmp_path):
    src = tmp_path / "many.txt"
    src.write_text("\n".join((LINES * 50)[:2000]) + "\n", encoding="utf-8")
    rc, tty = _run_on_pty(["embed", "-m", model_path, "-i", src, "-o", tmp_path / "a.npy"])
    assert rc == 0 and "2000/2000" in tty and "tok/s" in tty
    piped = run(["embed", "-m", model_path, "-i", src, "-o", tmp_path / "b.npy"])
    assert piped.returncode == 0 and "tok/s" not in piped.stderr.decode()
    assert piped.stderr.decode().strip() == f"wrote {tmp_path / 'b.npy'}: 2000 x 256 float32"


def test_ctrl_c_exits_130_and_leaves_no_output_file(model_path, tmp_path):
    src = tmp_path / "huge.txt"
    src.write_text("\n".join((LINES * 3000)[:100000]) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    # SIGINT back to its default in the child: a shell running this suite in
    # the background (`cmd &`) hands its children SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(JV4 + ["embed", "-m", str(model_path), "-i", str(src), "-o", str(out),
                                   "--batch-tokens", "64"], stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".v.npy.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "interrupted" in err.decode()
    assert not out.exists() and not list(tmp_path.glob(".v.npy.partial-*"))
