"""jv4.quantize over llama.cpp's quantizer, and quantized models running on
this machine's default build (the AMX SIGILL trap must not come back)."""

from __future__ import annotations

import logging
import platform
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jv4
from conftest import build_has, cosines
from corpus import CORPUS

pytestmark = pytest.mark.numerics


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


# the build feature each type's x86 repacked layout needs (Q8_0, BF16: jv4's
# patches 0004 "Q8_0 weights for AVX512-VNNI", 0015 "Q8_0 weights for AVX2"
# (with FMA and F16C, which every x86-64-v3 build has) and 0005 "BF16 weights
# for AVX512-BF16"; F16 is held as BF16 where the build has AVX512-BF16)
_REPACK_FEATURE = {"Q4_K_M": "AVX2", "Q4_0": "AVX2", "Q8_0": "AVX2", "BF16": "AVX512_BF16",
                   "F16": "AVX512_BF16"}


def _read_when_repacked(qtype: str) -> bool:
    """Whether repack=True makes jv4 read (not map) a file of this type: Q4_K
    and Q4_0 always (scanned as repackable); Q8_0, BF16 and F16 only where the
    build's CPU code has the feature their layout needs (elsewhere nothing
    repacks them)."""
    return qtype in ("Q4_K_M", "Q4_0") or build_has(_REPACK_FEATURE[qtype])


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q4_0", "Q8_0", "BF16", "F16"])
def test_repacked_and_plain_weights_give_the_same_vectors(make_gguf, reference, tmp_path,
                                                          caplog, qtype):
    # Q4_K, Q4_0, (AVX512-VNNI builds) Q8_0 and (AVX512-BF16 builds) BF16 and
    # F16 held as BF16 have CPU repacked layouts; the two kernels must agree
    # with each other and with the float reference.
    # 41 texts: the repacked kernels take tokens four at a time, the rest one
    # by one (both paths run).
    dst = tmp_path / f"r-{qtype}.gguf"
    jv4.quantize(make_gguf("qwen2", "retrieval", "F32"), dst, qtype)
    texts = CORPUS[:41]
    ref = reference(texts, "Query: ")
    with caplog.at_level(logging.DEBUG, logger="jv4"):
        on = jv4.Model(dst, repack=True)
    has_layout = build_has(_REPACK_FEATURE[qtype])
    if has_layout:
        assert "CPU_REPACK" in caplog.text, "repack=True did not repack"
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="jv4"):
        off = jv4.Model(dst, repack=False)
    assert "CPU_REPACK model buffer" not in caplog.text
    read = "read" if _read_when_repacked(qtype) else "mmap"
    # an F16 file held as BF16 is read whether or not it is repacked
    off_read = "read" if qtype == "F16" and build_has("AVX512_BF16") else "mmap"
    assert (on.info["repack"], on.info["load_mode"]) == (True, read)
    assert (off.info["repack"], off.info["load_mode"]) == (False, off_read)
    a, b = on.embed(texts), off.embed(texts)
    if qtype in ("BF16", "F16"):
        # the same exact products, summed in another order
        assert cosines(a, b).min() > 0.999999
        assert cosines(a, ref).min() > 0.9999 and cosines(b, ref).min() > 0.9999
        return
    assert cosines(a, b).min() > 0.9999  # measured 0.99999 (Q4_K_M), 0.999998 (Q4_0), 0.999996 (Q8_0)
    assert cosines(a, ref).min() > 0.95 and cosines(b, ref).min() > 0.95  # measured 0.975-0.984; Q8_0 0.9998


def test_repacking_by_default_only_where_it_measured_faster(make_gguf, tmp_path):
    src = make_gguf("qwen2", "retrieval", "F32")
    chosen = {}
    for qtype in ("Q4_K_M", "Q4_0", "Q8_0", "BF16"):
        dst = tmp_path / f"d-{qtype}.gguf"
        jv4.quantize(src, dst, qtype)
        info = jv4.Model(dst).info
        chosen[qtype] = (info["repack"], info["load_mode"])
    # x86: Q4_K faster unrepacked; elsewhere llama.cpp's default (repacked,
    # so read). Q4_0: repacked (and read, so held once). Q8_0: repacked (so
    # read) where the build's CPU code has AVX512-VNNI or AVX2; elsewhere no
    # repacked layout is used for it and it stays memory-mapped. BF16
    # likewise with AVX512-BF16.
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    q4k = (False, "mmap") if x86 else (True, "read")
    q8 = "read" if build_has("AVX2") else "mmap"
    bf16 = "read" if build_has("AVX512_BF16") else "mmap"
    assert chosen == {"Q4_K_M": q4k, "Q4_0": (True, "read"), "Q8_0": (True, q8), "BF16": (True, bf16)}


def test_repack_must_be_a_bool_or_none(make_gguf):
    with pytest.raises(TypeError, match="repack must be True, False or None, got str"):
        jv4.Model(make_gguf(), repack="yes")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "BF16", "F16"])
def test_read_weights_are_held_once(make_gguf, tmp_path, caplog, qtype):
    # The test model ties its lm_head to token_embd (as v4 does). llama.cpp
    # makes the lm_head a second tensor when its buffer type differs from
    # token_embd's (repacked weights), which, read rather than mapped, was a
    # second copy of the embeddings; jv4 never computes logits and loads none
    # (patch 0009 "No tied lm_head copy"). What llama.cpp allocates for
    # weights must be no more than the file holds.
    if not _read_when_repacked(qtype):
        pytest.skip(f"{qtype} is repacked (so read, not mapped) only where the build's CPU code has "
                    f"{_REPACK_FEATURE[qtype]}")
    dst = tmp_path / f"once-{qtype}.gguf"
    jv4.quantize(make_gguf("qwen2", "retrieval", "F32"), dst, qtype)
    with caplog.at_level(logging.DEBUG, logger="jv4"):
        m = jv4.Model(dst, repack=True)
    assert m.info["load_mode"] == "read"
    sizes = [float(x) for x in re.findall(r"model buffer size =\s+([0-9.]+) MiB", caplog.text)]
    assert sizes, "llama.cpp's buffer sizes were not logged"
    assert sum(sizes) <= dst.stat().st_size / 2**20 + 0.1, (sizes, dst.stat().st_size / 2**20)
    assert np.isfinite(m.embed(CORPUS[:8])).all()
