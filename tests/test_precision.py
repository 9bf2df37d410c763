"""embed(precision=...) against sentence-transformers' quantize_embeddings
on the same float vectors."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from corpus import CORPUS

st_quantize = pytest.importorskip("sentence_transformers").quantize_embeddings

ST_KINDS = ("float32", "int8", "uint8", "binary", "ubinary")


@pytest.fixture(scope="module")
def model(load):
    return load()


@pytest.mark.parametrize("dim", [None, 128])
@pytest.mark.parametrize("precision", ST_KINDS)
def test_each_precision_equals_sentence_transformers(model, precision, dim):
    texts = CORPUS[:110]
    floats = model.embed(texts, role="passage", dim=dim)
    got = model.embed(texts, role="passage", dim=dim, precision=precision)
    want = st_quantize(floats, precision)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    if precision.endswith("binary"):
        assert got.shape == (len(texts), floats.shape[1] // 8)  # packed: dim/8 bytes a vector


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int_kinds_with_ranges_or_calibration_equal_sentence_transformers(model, precision):
    corpus = model.embed(CORPUS[:100], role="passage")
    queries = CORPUS[100:110]
    floats = model.embed(queries)
    ranges = jv4.calibration_ranges(corpus)
    assert np.array_equal(model.embed(queries, precision=precision, ranges=ranges),
                          st_quantize(floats, precision, ranges=ranges))
    assert np.array_equal(model.embed(queries, precision=precision, calibration_embeddings=corpus),
                          st_quantize(floats, precision, calibration_embeddings=corpus))
    # with fixed ranges a text gets the same code whatever else is in the call
    one = model.embed(queries[3], precision=precision, ranges=ranges)
    assert one.shape == (floats.shape[1],)
    alone = model.embed(queries[3])  # (equal to floats[3] up to batch-shape rounding)
    assert np.array_equal(one, st_quantize(alone[None, :], precision, ranges=ranges)[0])


def test_int_kinds_without_ranges_depend_on_the_call(model):
    a = model.embed(CORPUS[:50], precision="int8")
    b = model.embed(CORPUS[:10], precision="int8")
    assert not np.array_equal(a[:10], b)  # documented: calibrated on the call's own vectors
    with pytest.raises(ValueError, match="ranges= or calibration_embeddings= to quantize a single vector"):
        model.embed("one text", precision="int8")


def test_float16_is_the_ieee_half_cast(model):
    floats = model.embed(CORPUS[:20], dim=256)
    got = model.embed(CORPUS[:20], dim=256, precision="float16")
    assert got.dtype == np.float16 and np.array_equal(got, floats.astype(np.float16))


def test_single_text_binary_and_bad_precision(model):
    floats = model.embed("a text")
    assert np.array_equal(model.embed("a text", precision="ubinary"), np.packbits(floats > 0))
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'float16', 'int8'"):
        model.embed(["x"], precision="int4")
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 256\)"):
        model.embed(["x", "y"], precision="uint8", ranges=np.zeros((2, 128), np.float32))
