"""jv4.quantize over llama.cpp's quantizer, and quantized models running on
this machine's default build (the AMX SIGILL trap must not come back)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jv4
from conftest import cosines


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "Q6_K", "Q5_K_M", "Q3_K_M", "F16"])
def test_quantized_models_load_and_embed_in_a_subprocess(make_gguf, tmp_path, qtype):
    # a subprocess, so that a SIGILL/SIGSEGV shows up as a signal, not a lost run
    src = make_gguf("qwen2", "retrieval", "F32")
    dst = tmp_path / f"m-{qtype}.gguf"
    code = textwrap.dedent(f"""
        import jv4, numpy as np
        jv4.quantize({str(src)!r}, {str(dst)!r}, {qtype!r})
        m = jv4.Model({str(dst)!r})
        e = m.embed(["hello world", "quantized weights", "x" * 50] * 20)
        assert e.shape == (60, m.n_embd) and np.isfinite(e).all()
        print(m.info["description"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert dst.stat().st_size < src.stat().st_size


def test_quantized_model_is_close_to_the_float_model(load):
    f32 = load("qwen2", "retrieval", "F32")
    q8 = load("qwen2", "retrieval", "Q8_0")
    texts = ["a sentence to compare", "another one, longer than the first one"]
    assert cosines(f32.embed(texts), q8.embed(texts)).min() > 0.99


def test_quantize_rejects_an_unknown_type_listing_the_allowed_ones(make_gguf, tmp_path):
    with pytest.raises(ValueError, match=r"unknown quantization type 'Q9_9'.*Q8_0.*Q4_K_M"):
        jv4.quantize(make_gguf(), tmp_path / "x.gguf", "Q9_9")


def test_quantize_missing_source_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        jv4.quantize(tmp_path / "no-such.gguf", tmp_path / "x.gguf", "Q8_0")


def test_quantize_garbage_source_raises_and_leaves_no_output(tmp_path):
    src = tmp_path / "garbage.gguf"
    src.write_bytes(b"GGUF" + b"\x00" * 64)
    dst = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="garbage.gguf"):
        jv4.quantize(src, dst, "Q8_0")
    assert not dst.exists()


def test_quantize_types_cover_the_official_release_types():
    for t in ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"):
        assert t in jv4.QUANT_TYPES
