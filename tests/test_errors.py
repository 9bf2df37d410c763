"""Bad input gets a clear Python exception, never a crash, and the model
keeps working afterwards. Each case runs in a fresh subprocess so that a
segfault or abort would show up as a signal exit, not a lost test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelgen import VOCAB_GGUF

HERE = Path(__file__).resolve().parent


def run_case(model: Path, body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import sys, re, numpy as np, jv4
        GOOD = sys.argv[1]
        m = jv4.Model(GOOD)
        def expect(exc, pattern, fn, *a, **k):
            try:
                fn(*a, **k)
            except exc as e:
                assert re.search(pattern, str(e)), f"{type(e).__name__}: {e!r} !~ {pattern!r}"
            else:
                raise AssertionError(f"no {exc.__name__} raised")
    """) + textwrap.dedent(body) + textwrap.dedent("""
        # the model (and a fresh one) still work afterwards
        assert m.embed(["still works"]).shape == (1, m.n_embd)
        assert jv4.Model(GOOD).embed("again").shape == (m.n_embd,)
        print("OK")
    """)
    return subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True,
                          text=True, timeout=300)


def check(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("OK")


@pytest.fixture(scope="module")
def good(make_gguf) -> Path:
    return make_gguf("qwen2", "retrieval", "F32")


CASES = {
    "non_str_item_names_index": 'expect(TypeError, r"texts\\[1\\] must be str, got int", m.embed, ["a", 3])',
    "none_item": 'expect(TypeError, r"texts\\[0\\] must be str, got NoneType", m.embed, [None])',
    "bytes_texts": 'expect(TypeError, r"str or a sequence of str", m.embed, b"abc")',
    "non_sequence": 'expect(TypeError, r"str or a sequence of str", m.embed, 42)',
    "lone_surrogate": 'expect(ValueError, r"texts\\[1\\].*UTF-8", m.embed, ["ok", "bad \\ud800 text"])',
    "tokenize_non_str": 'expect(TypeError, r"text must be str", m.tokenize, 5)',
    "unknown_task": 'expect(ValueError, r"one of .retrieval., .text-matching., .code.", m.embed, ["a"], task="qa")',
    "unknown_role": 'expect(ValueError, r"one of .query., .passage.", m.embed, ["a"], role="doc")',
    "unknown_dim": 'expect(ValueError, r"dim must be one of 128, 256", m.embed, ["a"], dim=64)',
    "bool_dim": 'expect(TypeError, r"dim must be an int", m.embed, ["a"], dim=True)',
    "float_dim": 'expect(TypeError, r"dim must be an int", m.embed, ["a"], dim=128.0)',
    "negative_dim": 'expect(ValueError, r"dim must be >= 1", m.embed, ["a"], dim=-1)',
    "bad_n_threads": 'expect(ValueError, r"n_threads must be >= 1", jv4.Model, GOOD, n_threads=0)',
    "bad_batch_tokens": 'expect(ValueError, r"batch_tokens must be >= 1", jv4.Model, GOOD, batch_tokens=-5)',
    "missing_path": 'expect(FileNotFoundError, r"no such file: .*nope\\.gguf", jv4.Model, "/nonexistent/nope.gguf")',
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_call_raises_clearly(good, case):
    check(run_case(good, CASES[case]))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def bad_file(tmp: Path, good: Path, kind: str) -> Path:
    """Writes only the one bad file a test needs: copies of the model are
    hundreds of MB, and nine of them per test filled CI's disk once."""
    if kind == "directory":
        return tmp
    if kind == "vocab_only":
        return VOCAB_GGUF
    if kind == "empty":
        return _write(tmp / "empty.gguf", b"")
    if kind == "text_file":
        return _write(tmp / "notes.gguf", b"this is not a model\n" * 10)
    with open(good, "rb") as f:
        if kind == "header_only":
            return _write(tmp / "header.gguf", f.read(16))
        if kind == "truncated_metadata":
            return _write(tmp / "meta.gguf", f.read(5000))
    data = bytearray(good.read_bytes())
    if kind == "truncated_half":
        return _write(tmp / "half.gguf", bytes(data[: len(data) // 2]))
    if kind == "corrupt_key_length":
        data[24:32] = b"\xff" * 8  # first key length: absurd
        return _write(tmp / "kv.gguf", bytes(data))
    if kind == "corrupt_tensor_count":
        data[8:16] = (10**12).to_bytes(8, "little")  # tensor count
        return _write(tmp / "count.gguf", bytes(data))
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["directory", "empty", "text_file", "header_only", "truncated_half",
                                  "truncated_metadata", "corrupt_key_length", "corrupt_tensor_count",
                                  "vocab_only"])
def test_bad_model_file_raises_model_load_error_naming_the_file(good, tmp_path, kind):
    path = bad_file(tmp_path, good, kind)
    body = f"""
        p = {str(path)!r}
        expect(jv4.ModelLoadError, re.escape(p), jv4.Model, p)
        assert issubclass(jv4.ModelLoadError, RuntimeError)
    """
    check(run_case(good, body))


def test_gpu_placement_arguments_are_checked(load, make_gguf):
    import jv4

    path = make_gguf()
    gpus = [d for d in jv4.build_info()["devices"] if not d.startswith("CPU")]
    with pytest.raises(ValueError, match=rf"main_gpu={len(gpus)} but this build sees {len(gpus)} GPU device\(s\)"):
        jv4.Model(path, main_gpu=len(gpus))
    with pytest.raises(ValueError, match="n_gpu_layers must be >= 0"):
        jv4.Model(path, n_gpu_layers=-2)
    with pytest.raises(TypeError, match="n_gpu_layers must be an int or None"):
        jv4.Model(path, n_gpu_layers="all")
    cpu_only = jv4.Model(path, n_gpu_layers=0)
    assert cpu_only.info["n_gpu_layers"] == 0 and load().info["n_gpu_layers"] == -1
    assert (cpu_only.embed(["on the CPU"]) == load().embed(["on the CPU"])).all()
