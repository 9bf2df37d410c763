"""F16 files held as BF16 (patch patches/llama.cpp/0008-f16-as-bf16.patch): the
converted model is bit for bit a BF16 file of the same values rounded the
same way, stays within the F16 bound of the reference, and the switch is
per load (the opt-out keeps F16, memory-mapped)."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
import modelgen as mg
from conftest import build_has, cosines
from corpus import CORPUS

pytestmark = pytest.mark.numerics

TEXTS = CORPUS[:12]


@pytest.fixture(scope="module")
def bf16_of_f16(vocab, weights, model_dir):
    """The test weights rounded to F16 and then to BF16 (nearest even), as a
    BF16 file written by the gguf package: what the patched loader must hold."""
    def make(arch):
        rounded = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in weights.items()}
        path = model_dir / f"bf16-of-f16-{arch}.gguf"
        if not path.exists():
            mg.write_gguf(path, rounded, mg.TINY, vocab, arch=arch, dtype="BF16")
        return path
    return make


@pytest.mark.parametrize("arch", ["qwen2", "qwen2vl"])
def test_converted_f16_is_bitwise_the_bf16_file_of_the_rounded_values(make_gguf, bf16_of_f16, arch):
    conv = jv4.Model(make_gguf(arch=arch, dtype="F16"), f16_as_bf16=True)
    assert conv.info["f16_as_bf16"] is True and conv.info["load_mode"] == "read"
    bf16 = jv4.Model(bf16_of_f16(arch))
    assert bf16.info["f16_as_bf16"] is False  # no F16 matrix in it
    got = conv.embed(TEXTS, role="passage")
    want = bf16.embed(TEXTS, role="passage")
    assert np.array_equal(got, want)


def test_opt_out_keeps_f16_mapped_and_both_stay_within_the_f16_bound(make_gguf, reference):
    path = make_gguf(dtype="F16")
    keep = jv4.Model(path, f16_as_bf16=False)
    conv = jv4.Model(path, f16_as_bf16=True)
    assert keep.info["f16_as_bf16"] is False and keep.info["load_mode"] == "mmap"
    ref = reference(TEXTS, "Passage: ")
    a, b = keep.embed(TEXTS, role="passage"), conv.embed(TEXTS, role="passage")
    assert not np.array_equal(a, b)  # the switch changes the weights the kernels see
    assert cosines(a, ref).min() >= 0.9999
    assert cosines(b, ref).min() >= 0.9999


def test_default_follows_the_build(make_gguf):
    m = jv4.Model(make_gguf(dtype="F16"))
    assert m.info["f16_as_bf16"] is build_has("AVX512_BF16")
    assert jv4.Model(make_gguf(dtype="F32")).info["f16_as_bf16"] is False
    with pytest.raises(TypeError, match="f16_as_bf16 must be True, False or None"):
        jv4.Model(make_gguf(dtype="F16"), f16_as_bf16="yes")
