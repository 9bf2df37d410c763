"""jv4: in-process embeddings for jina-embeddings-v4 GGUF models.

The work happens in the compiled module ``jv4._core`` (a statically linked
llama.cpp); this facade gives it a typed, documented Python surface.

    >>> import jv4
    >>> emb = jv4.Embedder("Q4_K_M")       # official GGUFs, fetched on first use
    >>> q = emb.embed(["what is a GGUF file?"], task="retrieval", role="query", dim=512)
    >>> p = emb.embed(passages, task="retrieval", role="passage", dim=512)
    >>> scores = q @ p.T

    >>> m = jv4.Model("jina-embeddings-v4-text-code-Q8_0.gguf")   # or a Hub name
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from ._load import core as _core  # the compiled engine (one of several builds in a wheel)
from ._load import dispatch as _dispatch
from ._core import ArgumentError, ModelLoadError
from ._model import Model, opt_int
from .embedder import Embedder
from .multivector import MultiVectors, maxsim
from .hub import ModelNotFoundError
from .precision import PRECISIONS, calibration_ranges, quantize_embeddings

__version__: str = _core.__version__

# llama.cpp's log lines arrive on this logger (its INFO narrative as DEBUG).
# A library adds no output of its own: configure logging to see them.
logging.getLogger("jv4").addHandler(logging.NullHandler())

__all__ = [
    "Model",
    "Embedder",
    "ModelLoadError",
    "ArgumentError",
    "ModelNotFoundError",
    "PRECISIONS",
    "quantize_embeddings",
    "calibration_ranges",
    "TASKS",
    "ROLES",
    "DEFAULT_TASK",
    "MATRYOSHKA_DIMS",
    "build_info",
    "quantize",
    "QUANT_TYPES",
    "IMATRIX_TYPES",
    "MMPROJ_QUANT_TYPES",
    "KV_CACHE_TYPES",
    "imatrix",
    "convert",
    "MultiVectors",
    "maxsim",
    "__version__",
]

# the jina-v4 rules, as compiled into the engine
TASKS: tuple = _core.TASKS
ROLES: tuple = _core.ROLES
#: the task of a call that names none where a model serves several ("retrieval")
DEFAULT_TASK: str = _core.DEFAULT_TASK
MATRYOSHKA_DIMS: tuple = _core.MATRYOSHKA_DIMS
QUANT_TYPES: tuple = tuple(_core.quantize_types())
# the types llama.cpp quantizes only with an importance matrix
IMATRIX_TYPES: tuple = tuple(_core.imatrix_types())
#: the types ``quantize`` writes an mmproj (the vision tower) in: those the tower takes
MMPROJ_QUANT_TYPES: tuple = tuple(_core.mmproj_quantize_types())
#: KV cache element types ``Model(kv_cache_type=...)`` accepts (default: see ``Model``)
KV_CACHE_TYPES: tuple = tuple(_core.kv_cache_types())


def build_info() -> dict:
    """What this build can do: ``version``, ``llama_cpp`` (version, commit,
    date, source), ``backends``, ``devices``, ``cpu_baseline``,
    ``cpu_features`` (instruction sets compiled into ggml) and
    ``system_info`` (llama.cpp's own summary), and ``dispatch``: which
    compiled build was loaded (``loaded``, ``level``, ``available``,
    ``supported`` by this CPU, and the ``reason``)."""
    info = _core.build_info()
    info["dispatch"] = dict(_dispatch)
    return info


def convert(checkpoint: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
            outtype: str = "f16", merge: Optional[str] = None, vision: bool = True) -> dict:
    """Convert the jina-embeddings-v4 Hugging Face checkpoint folder
    ``checkpoint`` into ``out_dir``: one base GGUF, a LoRA GGUF per task,
    the multi-vector projectors (or, with ``merge=TASK``, one merged
    single-task GGUF and the projectors) and the vision tower as an mmproj
    GGUF for ``embed_images`` (``vision=False``: text only). ``jv4.Model(out_dir)`` loads the
    result. What each file holds: ``help(jv4.checkpoint)``;
    needs ``pip install 'jv4[convert]'``."""
    from .checkpoint import convert as _convert

    return _convert(checkpoint, out_dir, outtype=outtype, merge=merge, vision=vision)


def quantize(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], type: str,
             *, n_threads: Optional[int] = None, imatrix: Union[str, os.PathLike, None] = None) -> None:
    """Write ``dst``: the GGUF ``src`` with its weights quantized to ``type``
    (one of ``QUANT_TYPES``, e.g. ``"Q8_0"``, ``"Q4_K_M"``, ``"IQ2_XXS"``) by
    llama.cpp's own quantizer. ``imatrix``: an importance matrix file
    (``jv4.imatrix``, or llama.cpp's GGUF imatrix) weighting the rounding;
    the types in ``IMATRIX_TYPES`` refuse to run without one.

    An mmproj ``src`` (the vision tower) is checked as ``Model(mmproj=)``
    checks it and written in one of ``MMPROJ_QUANT_TYPES`` (no imatrix):
    its matrices in ``type``; for ``"Q8_0"`` the FFN widened with zeros to
    whole 32-value blocks (v4: 3420 -> 3424; the same function), other
    matrices whose rows are not a multiple of 32 values and the patch
    convolution (F32/F16 kernels only) F16; norms and biases stay F32."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a str, one of {', '.join(QUANT_TYPES)}")
    if imatrix is not None and not isinstance(imatrix, (str, os.PathLike)):
        raise TypeError(f"imatrix must be a path or None, got {imatrix.__class__.__name__}")
    _core.quantize(os.fspath(src), os.fspath(dst), type, opt_int("n_threads", n_threads),
                   None if imatrix is None else os.fspath(imatrix))


def imatrix(model: Union["Model", str, os.PathLike], texts, path: Union[str, os.PathLike], *,
            task: Optional[str] = None, role: str = "passage", show_progress: bool = False) -> dict:
    """llama.cpp's importance matrix of ``model`` (a ``jv4.Model`` or what
    ``jv4.Model`` takes) over calibration ``texts``, written to ``path``;
    see ``Model.imatrix``. Use it with ``quantize(..., imatrix=path)``."""
    m = model if isinstance(model, Model) else Model(model)
    return m.imatrix(texts, path, task, role, show_progress=show_progress)
