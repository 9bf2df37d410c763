"""Attention settings: Model(flash_attn=..., kv_cache_type=...) against
transformers' forward pass, on texts long enough to be decoded in several
chunks against the KV cache (so the cache's element type is read back)."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from conftest import build_has, cosines
from corpus import CORPUS

pytestmark = pytest.mark.numerics

# long texts: 40 corpus entries joined, each well over batch_tokens=64
LONG = ["\n".join(CORPUS[i:i + 40]) for i in range(0, 64, 16)]


@pytest.fixture(scope="module")
def long_ref(reference):
    return reference(LONG, "Query: ")


def test_long_texts_really_span_several_decodes(make_gguf):
    m = jv4.Model(make_gguf(), batch_tokens=64)
    assert min(len(m.tokenize(t)) for t in LONG) > 3 * 64


@pytest.mark.parametrize("flash_attn", [None, True, False])
def test_flash_attention_on_and_off_match_the_reference(make_gguf, long_ref, flash_attn):
    m = jv4.Model(make_gguf(), batch_tokens=64, flash_attn=flash_attn)
    assert m.info["flash_attn"] == {None: "auto", True: "on", False: "off"}[flash_attn]
    assert m.info["kv_cache_type"] == "f16"
    assert cosines(m.embed(LONG), long_ref).min() > 0.99999  # measured 0.99999999 (F16 KV cache)


# measured min cos (tiny model, AVX-512 build): f32 and f16 0.99999999, bf16
# 0.9999992, q8_0 0.99999, q5_1 0.9995, q4_0 0.998
@pytest.mark.parametrize("kv, bound", [("f32", 0.99999), ("f16", 0.99999), ("bf16", 0.9999), ("q8_0", 0.9999),
                                       ("q4_0", 0.995)])
def test_kv_cache_types_match_the_reference_within_their_precision(make_gguf, long_ref, kv, bound):
    m = jv4.Model(make_gguf(), batch_tokens=64, kv_cache_type=kv)
    assert m.info["kv_cache_type"] == kv
    got = m.embed(LONG)
    assert np.isfinite(got).all()
    assert cosines(got, long_ref).min() > bound


def test_kv_cache_types_are_listed():
    assert {"f32", "f16", "bf16", "q8_0", "q4_0"} <= set(jv4.KV_CACHE_TYPES)


def test_bad_attention_settings_are_refused_clearly(make_gguf):
    path = make_gguf()
    with pytest.raises(ValueError, match=r"kv_cache_type must be one of f32, f16, bf16, q8_0.*got 'fp8'"):
        jv4.Model(path, kv_cache_type="fp8")
    with pytest.raises(ValueError, match=r"quantized, which llama.cpp supports only with flash attention"):
        jv4.Model(path, kv_cache_type="q8_0", flash_attn=False)
    with pytest.raises(TypeError, match=r"kv_cache_type must be a str or None, got int; allowed: f32, f16"):
        jv4.Model(path, kv_cache_type=16)
    with pytest.raises(TypeError, match=r"flash_attn must be True, False or None, got str"):
        jv4.Model(path, flash_attn="on")
    # a refused setting leaves nothing half-made: the same file loads afterwards
    m = jv4.Model(path, kv_cache_type="bf16", flash_attn=False)
    assert m.embed("ok").shape == (m.n_embd,)


def test_cli_passes_the_attention_settings(make_gguf, tmp_path):
    import subprocess
    import sys

    path = make_gguf()
    out = tmp_path / "v.npy"
    proc = subprocess.run([sys.executable, "-m", "jv4", "embed", "-m", str(path), "--batch-tokens", "64",
                           "--no-flash-attn", "--kv-cache-type", "bf16", "-o", str(out), "-q", *LONG[:2]],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    api = jv4.Model(path, batch_tokens=64, flash_attn=False, kv_cache_type="bf16").embed(LONG[:2])
    np.testing.assert_array_equal(np.load(out), api)
    bad = subprocess.run([sys.executable, "-m", "jv4", "embed", "-m", str(path), "--kv-cache-type", "fp8", "x"],
                         capture_output=True, timeout=300)
    assert bad.returncode == 2 and b"invalid choice: 'fp8'" in bad.stderr


def test_default_cache_type_follows_the_weights_and_the_build(make_gguf, long_ref):
    # bf16 (flash attention's BF16 dot products) where the build's CPU code
    # has AVX512-BF16 and the weights are not full precision; f16 for F32
    # weights, F16 kept F16, flash attention off, and other builds.
    bf16 = "bf16" if build_has("AVX512_BF16") else "f16"
    assert jv4.Model(make_gguf(dtype="F32")).info["kv_cache_type"] == "f16"
    assert jv4.Model(make_gguf(dtype="F16"), f16_as_bf16=False).info["kv_cache_type"] == "f16"
    assert jv4.Model(make_gguf(dtype="F16")).info["kv_cache_type"] == bf16
    assert jv4.Model(make_gguf(dtype="BF16"), flash_attn=False).info["kv_cache_type"] == "f16"
    assert jv4.Model(make_gguf(dtype="BF16"), kv_cache_type="f32").info["kv_cache_type"] == "f32"
    m = jv4.Model(make_gguf(dtype="BF16"), batch_tokens=64)
    assert m.info["kv_cache_type"] == bf16
    f16 = jv4.Model(make_gguf(dtype="BF16"), batch_tokens=64, kv_cache_type="f16")
    got, want = m.embed(LONG), f16.embed(LONG)
    # the BF16 weights' own distance to the F32 reference dominates: measured
    # 0.9999925 (bf16 cache) and 0.9999930 (f16 cache); each other 0.999999+
    assert cosines(got, long_ref).min() > 0.99999 and cosines(want, long_ref).min() > 0.99999
    assert cosines(got, want).min() > 0.999995
