"""jv4.Embedder: the three jina-embeddings-v4 tasks behind one object.

Each call names its task; the Embedder routes it to the model serving that
task, loading the model on first use. Today a model is one official GGUF per
task (the LoRA adapter merged in); several tasks mapped to the same file
share one loaded model, which is how a single base model serving every task
will plug in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from . import _core
from ._model import Model, ModelSpec, local_path, run_embed
from .encode import EncodeQueryDocument
from .encode import encode as st_encode
from .hub import DEFAULT_QUANT, HubRef, parse_model_ref
from .precision import check_precision

__all__ = ["Embedder"]


class Embedder(EncodeQueryDocument):
    """Embeddings for every jina-embeddings-v4 task, one model per task loaded
    when first used.

    Parameters
    ----------
    quant: the quantization of the official GGUFs to use (``"Q4_K_M"``,
        ``"Q8_0"``, ``"F16"`` ...), for the tasks ``models`` does not map.
    models: ``{task: path or Hub name}`` overriding where a task's model comes
        from (local files for offline use). Tasks it leaves out use
        ``jinaai/jina-embeddings-v4-text-<task>-GGUF:<quant>``.
    revision, cache_dir, token: passed to huggingface_hub for Hub names.
    model_kwargs: passed to each ``jv4.Model`` (``n_threads``, ``max_length``,
        ``batch_tokens``, ``repack``).

    Only the tasks used take memory; ``close()`` (or leaving a ``with`` block)
    frees them. Thread-safe.
    """

    def __init__(self, quant: str = DEFAULT_QUANT, *, models: Optional[Mapping[str, ModelSpec]] = None,
                 revision: Optional[str] = None, cache_dir: Union[str, os.PathLike, None] = None,
                 token: Union[str, bool, None] = None, **model_kwargs: Any) -> None:
        if not isinstance(quant, str) or not quant:
            raise TypeError(f"quant must be a str such as 'Q4_K_M', got {quant!r}")
        models = dict(models or {})
        unknown = [t for t in models if t not in _core.TASKS]
        if unknown:
            raise ValueError(f"models= keys must be tasks, one of {', '.join(map(repr, _core.TASKS))} "
                             f"(got {', '.join(map(repr, unknown))})")
        self.quant = quant
        self._sources: dict[str, ModelSpec] = {
            t: models.get(t, f"{_core.jina_official_repo(t)}:{quant}") for t in _core.TASKS}
        self._hub = {"revision": revision, "cache_dir": cache_dir, "token": token}
        self._model_kwargs = model_kwargs
        self._lock = threading.Lock()
        self._by_task: dict[str, Model] = {}
        self._by_path: dict[str, Model] = {}
        self._closed = False

    # --- routing -----------------------------------------------------------
    def source(self, task: str) -> ModelSpec:
        """Where the model of ``task`` comes from (path or Hub name)."""
        return self._sources[self._check_task(task)]

    @property
    def loaded_tasks(self) -> list:
        """Tasks whose model is loaded now."""
        with self._lock:
            return [t for t in _core.TASKS if t in self._by_task]

    def loaded_models(self) -> list:
        """The models loaded so far (each once, however many tasks map to it)."""
        with self._lock:
            return list(self._by_path.values())

    def model(self, task: str = _core.DEFAULT_TASK) -> Model:
        """The loaded ``jv4.Model`` serving ``task`` (loaded now if it is not yet)."""
        task = self._check_task(task)
        with self._lock:
            if self._closed:
                raise ValueError("this jv4.Embedder was closed")
            m = self._by_task.get(task)
            if m is not None:
                return m
            spec = self._sources[task]
            path = local_path(spec, **(self._hub if _is_hub(spec) else {}))
            m = self._by_path.get(os.path.realpath(path))
            if m is None:
                m = Model(path, **self._model_kwargs)
                self._by_path[os.path.realpath(path)] = m
            self._by_task[task] = m
            return m

    def close(self) -> None:
        """Free every loaded model; later calls raise ValueError."""
        with self._lock:
            models = list(self._by_path.values())
            self._by_task.clear()
            self._by_path.clear()
            self._closed = True
        for m in models:
            m.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"jv4.Embedder(quant={self.quant!r}, loaded={self.loaded_tasks})"

    # --- work --------------------------------------------------------------
    def embed(self, texts: Union[str, Sequence[str]], task: str = _core.DEFAULT_TASK, role: str = "query",
              dim: Optional[int] = None, *, truncate: bool = True, precision: str = "float32",
              ranges: Optional[np.ndarray] = None, calibration_embeddings: Optional[np.ndarray] = None,
              show_progress: bool = False) -> np.ndarray:
        """``Model.embed`` on the model of ``task`` (same arguments and result)."""
        check_precision(precision)
        model = self.model(task)
        return run_embed(lambda hook: model.embed_float32(texts, task, role, dim, truncate=truncate,
                                                          progress=hook),
                         texts, precision, ranges, calibration_embeddings, show_progress)

    def encode(self, inputs: Any = None, prompt_name: Optional[str] = None, prompt: Optional[str] = None,
               batch_size: int = 32, show_progress_bar: Optional[bool] = None, *, task: str = _core.DEFAULT_TASK,
               **kwargs: Any) -> Any:
        """sentence-transformers' ``encode`` on the model of ``task`` (default
        ``"retrieval"``); see ``Model.encode`` and ``jv4.encode``."""
        model = self.model(task)
        return st_encode(lambda texts, role, hook: model.embed_float32(texts, task, role, progress=hook),
                         task, inputs, prompt_name, prompt, batch_size, show_progress_bar, **kwargs)

    def embed_images(self, images: Any, task: str = _core.DEFAULT_TASK, dim: Optional[int] = None, *,
                     precision: str = "float32", ranges: Optional[np.ndarray] = None,
                     calibration_embeddings: Optional[np.ndarray] = None, show_progress: bool = False) -> np.ndarray:
        """``Model.embed_images`` on the model of ``task``. Images need a model
        with its vision tower: map the task to a folder ``jv4 convert`` wrote
        (``models={task: folder}``); the official text GGUFs have none."""
        return self.model(task).embed_images(images, task, dim, precision=precision, ranges=ranges,
                                             calibration_embeddings=calibration_embeddings,
                                             show_progress=show_progress)

    def embed_images_multivector(self, images: Any, task: str = _core.DEFAULT_TASK, dim: Optional[int] = None, *,
                                 show_progress: bool = False):
        """``Model.embed_images_multivector`` on the model of ``task``."""
        return self.model(task).embed_images_multivector(images, task, dim, show_progress=show_progress)

    def embed_float32(self, texts, task: str = _core.DEFAULT_TASK, role: str = "query",
                      dim: Optional[int] = None, *, truncate: bool = True, progress=None) -> np.ndarray:
        """``Model.embed_float32`` on the model of ``task``."""
        return self.model(task).embed_float32(texts, task, role, dim, truncate=truncate,
                                              progress=progress)

    @staticmethod
    def _check_task(task: Any) -> str:
        _core.check_task(task)
        return task


def _is_hub(spec: ModelSpec) -> bool:
    return isinstance(parse_model_ref(spec), HubRef)
