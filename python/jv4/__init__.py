"""jv4: in-process embeddings for jina-embeddings-v4 GGUF models.

The work happens in the compiled module ``jv4._core`` (a statically linked
llama.cpp); this facade gives it a typed, documented Python surface.

    >>> import jv4
    >>> m = jv4.Model("jina-embeddings-v4-text-retrieval-Q4_K_M.gguf")
    >>> q = m.embed(["what is a GGUF file?"], role="query", dim=512)
    >>> p = m.embed(passages, role="passage", dim=512)
    >>> scores = q @ p.T
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from . import _core
from ._core import ModelLoadError

__version__: str = _core.__version__

# llama.cpp's log lines arrive on this logger (its INFO narrative as DEBUG).
# A library adds no output of its own: configure logging to see them.
logging.getLogger("jv4").addHandler(logging.NullHandler())

__all__ = [
    "Model",
    "ModelLoadError",
    "TASKS",
    "ROLES",
    "MATRYOSHKA_DIMS",
    "build_info",
    "quantize",
    "QUANT_TYPES",
    "__version__",
]

TASKS = ("retrieval", "text-matching", "code")
ROLES = ("query", "passage")
MATRYOSHKA_DIMS = (128, 256, 512, 1024, 2048)
QUANT_TYPES: tuple = tuple(_core.quantize_types())

_INT_INFO = {"n_embd", "n_layer", "n_head", "n_vocab", "n_ctx_train", "n_params", "size_bytes"}
_BOOL_INFO = {"jina_v4", "causal", "repack"}


def build_info() -> dict:
    """What this build can do: ``version``, ``llama_cpp`` (version, commit,
    date, source), ``backends``, ``devices``, ``cpu_baseline``,
    ``cpu_features`` (instruction sets compiled into ggml) and
    ``system_info`` (llama.cpp's own summary)."""
    return _core.build_info()


def _opt_int(name: str, value: Optional[int], *, allow_zero: bool = False) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    value = int(value)
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be >= 1 (or None), got {value}")
    return value


def quantize(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], type: str,
             *, n_threads: Optional[int] = None) -> None:
    """Write ``dst``: the GGUF ``src`` with its weights quantized to ``type``
    (one of ``QUANT_TYPES``, e.g. ``"Q8_0"``, ``"Q4_K_M"``) by llama.cpp's
    own quantizer."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a str, one of {', '.join(QUANT_TYPES)}")
    _core.quantize(os.fspath(src), os.fspath(dst), type, _opt_int("n_threads", n_threads))


class Model:
    """A GGUF embedding model loaded once (memory-mapped) for many ``embed`` calls.

    Parameters
    ----------
    path: the GGUF file.
    n_threads: CPU threads for the forward pass (default: all cores).
    max_length: token limit per text, prefix included (default 32768, capped by
        the model's trained context; a larger value is a ValueError).
    batch_tokens: token budget of one decode (default 512). Texts are packed
        into decodes up to this many tokens; longer texts span several.
    repack: let llama.cpp re-lay quantized weights for its CPU kernels
        (True/False). Default None: on x86, off for files holding Q4_K or
        Q2_K weights (faster unrepacked, measured); llama.cpp's default
        otherwise.
        When weights are repacked the file is read rather than memory-mapped,
        so that they are held once. ``info["repack"]`` and
        ``info["load_mode"]`` say what was chosen.

    Calls are thread-safe (one forward pass at a time per Model) and run
    without the GIL. A bad file raises FileNotFoundError or ModelLoadError.
    """

    def __init__(self, path: Union[str, os.PathLike], *, n_threads: Optional[int] = None,
                 max_length: Optional[int] = None, batch_tokens: Optional[int] = None,
                 repack: Optional[bool] = None) -> None:
        if repack is not None and not isinstance(repack, (bool, np.bool_)):
            raise TypeError(f"repack must be True, False or None, got {type(repack).__name__}")
        self._core = _core.Model(
            os.fspath(path),
            _opt_int("n_threads", n_threads),
            _opt_int("max_length", max_length),
            _opt_int("batch_tokens", batch_tokens),
            -1 if repack is None else int(bool(repack)),
        )

    # --- facts -----------------------------------------------------------
    @property
    def n_embd(self) -> int:
        """Width of the full embedding."""
        return self._core.n_embd

    @property
    def task(self) -> Optional[str]:
        """The jina-v4 task this file was merged for (from its metadata or file
        name); None for other models or when it cannot be told."""
        return self._core.task

    @property
    def dims(self) -> list:
        """Allowed ``dim`` values: the trained Matryoshka dims up to the width
        for jina-v4 models, any of 1..n_embd for other models."""
        return self._core.dims

    @property
    def max_length(self) -> int:
        return self._core.max_length

    @property
    def info(self) -> dict:
        """Facts read from the GGUF (architecture, name, sizes, pooling...)."""
        out: dict = {}
        for k, v in self._core.info.items():
            if k in _INT_INFO:
                out[k] = int(v)
            elif k in _BOOL_INFO:
                out[k] = v == "1"
            else:
                out[k] = v or None if k in ("task",) else v
        return out

    def __repr__(self) -> str:
        return (f"jv4.Model({self._core.path!r}, task={self.task!r}, n_embd={self.n_embd}, "
                f"pooling={self._core.pooling!r})")

    # --- work --------------------------------------------------------------
    def embed(self, texts: Union[str, Sequence[str]], task: Optional[str] = None,
              role: str = "query", dim: Optional[int] = None, *,
              truncate: bool = True) -> np.ndarray:
        """Embed ``texts`` into L2-normalised float32 vectors.

        A list of n strings gives a C-contiguous ``(n, dim)`` array (``(0, dim)``
        for an empty list); a single string gives ``(dim,)``.

        ``task`` (``"retrieval"``, ``"text-matching"``, ``"code"``; default: the
        file's task) and ``role`` (``"query"`` or ``"passage"``) choose the
        jina-v4 prefix (``Query: `` / ``Passage: ``). ``dim`` truncates to a
        Matryoshka width (see ``dims``) and normalises again. Texts over
        ``max_length`` tokens are cut on the right, or raise ValueError with
        ``truncate=False``. For non-jina models no prefix is added, ``task``
        must stay None and ``role`` "query".
        """
        return self._core.embed(texts, _task_arg(task), _role_arg(role),
                                _opt_int("dim", dim), bool(truncate))

    def tokenize(self, text: str, task: Optional[str] = None, role: str = "query", *,
                 add_prefix: bool = True) -> np.ndarray:
        """Token ids (int32) that ``embed`` feeds the model for ``text``:
        the task/role prefix plus the text, before truncation."""
        return self._core.tokenize(text, _task_arg(task), _role_arg(role), bool(add_prefix))


def _task_arg(task: Any) -> str:
    if task is None:
        return ""
    if not isinstance(task, str):
        raise TypeError(f"task must be a str or None (one of {', '.join(TASKS)}), got {type(task).__name__}")
    if task == "":
        raise ValueError(f"task must be one of {', '.join(repr(t) for t in TASKS)} (or None), got ''")
    return task


def _role_arg(role: Any) -> str:
    if not isinstance(role, str):
        raise TypeError(f"role must be a str ('query' or 'passage'), got {type(role).__name__}")
    if role == "":
        raise ValueError("role must be one of 'query', 'passage' (got '')")
    return role
