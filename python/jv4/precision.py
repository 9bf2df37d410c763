"""Output precisions: float32 vectors to float16, int8/uint8 or packed bits.

The meanings are sentence-transformers' ``quantize_embeddings`` (6.x), so
vectors from jv4 can go where vectors from sentence-transformers went:

- ``int8`` / ``uint8``: per dimension, the range [min, max] is cut into 255
  steps; a value becomes ``clip(floor((x - min) / step), 0, 255)`` (minus 128
  for int8). The ranges come from ``ranges=`` (a ``(2, dim)`` array of minima
  and maxima), else from ``calibration_embeddings=``, else from the vectors
  being quantized - then the result depends on what else is in the call, and
  a single vector cannot be quantized. Use ``calibration_ranges`` once on a
  sample of the corpus and pass its result to every call.
- ``binary`` / ``ubinary``: one bit a value (``x > 0``), packed 8 to a byte,
  so ``dim / 8`` bytes a vector; ``binary`` stores each byte minus 128 as int8.
- ``float16``: a plain IEEE half-precision cast (jv4's own addition; not in
  sentence-transformers).

Computed with numpy on the float32 result, after Matryoshka truncation and
normalisation; its cost against the forward pass is in docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["PRECISIONS", "quantize_embeddings", "calibration_ranges", "output_dtype", "output_width"]

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")

_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
           "binary": np.int8, "ubinary": np.uint8}


def check_precision(precision) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)} "
                         f"(got {precision!r})")
    return precision


def output_dtype(precision: str) -> np.dtype:
    return np.dtype(_DTYPES[check_precision(precision)])


def output_width(precision: str, dim: int) -> int:
    """Values a vector of width ``dim`` takes in ``precision`` (bytes for the bit kinds)."""
    return (dim + 7) // 8 if check_precision(precision).endswith("binary") else dim


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """The ``(2, dim)`` per-dimension minima and maxima of float vectors, to
    pass as ``ranges=`` so that int8/uint8 codes stay comparable across calls."""
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"calibration needs a non-empty (n, dim) array of vectors, got shape {e.shape}")
    return np.vstack((e.min(axis=0), e.max(axis=0)))


def quantize_embeddings(embeddings: np.ndarray, precision: str, *, ranges: Optional[np.ndarray] = None,
                        calibration_embeddings: Optional[np.ndarray] = None) -> np.ndarray:
    """``embeddings`` (float, ``(n, dim)`` or ``(dim,)``) in ``precision``."""
    check_precision(precision)
    e = np.asarray(embeddings)
    if e.dtype.kind != "f":
        raise TypeError(f"embeddings to quantize must be float, got {e.dtype}")
    single = e.ndim == 1
    if single:
        e = e[None, :]
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (n, dim) or (dim,), got shape {np.asarray(embeddings).shape}")
    dim = e.shape[1]

    if precision == "float32":
        out = e.astype(np.float32, copy=False)
    elif precision == "float16":
        out = e.astype(np.float16)
    elif precision.endswith("int8"):
        if ranges is None:
            if calibration_embeddings is not None:
                ranges = calibration_ranges(calibration_embeddings)
            elif e.shape[0] == 0:
                return np.zeros((0, dim), _DTYPES[precision])
            elif e.shape[0] == 1:
                raise ValueError(f"{precision} needs ranges= or calibration_embeddings= to quantize a "
                                 "single vector (its own minimum and maximum are not a range); "
                                 "see jv4.calibration_ranges")
            else:
                ranges = calibration_ranges(e)
        r = np.asarray(ranges)
        if r.shape != (2, dim):
            raise ValueError(f"ranges must have shape (2, {dim}) (minima, maxima), got {r.shape}")
        r = r.astype(np.float32, copy=False)
        starts = r[0, :]
        steps = (r[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((e - starts) / steps), 0, 255)
        out = q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    else:
        bits = np.packbits(e > 0, axis=-1)
        out = bits if precision == "ubinary" else (bits - 128).astype(np.int8)
    return out[0] if single else out
