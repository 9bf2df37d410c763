"""Ray Data: embed a dataset on every CPU of a cluster (``pip install "jv4[ray]"``).

    >>> import ray, jv4.ray
    >>> ds = ray.data.read_parquet("passages/")
    >>> out = jv4.ray.embed_dataset(ds, "jinaai/jina-embeddings-v4-text-retrieval-GGUF:Q4_K_M",
    ...                             text_column="text", role="passage", dim=512)
    >>> out.write_parquet("vectors/")

``embed_dataset`` maps the dataset's batches through a pool of Ray actors,
each holding one ``jv4.Model`` loaded once, with as many engine threads as
CPUs it reserves. ``EmbedBatches`` is that callable class, for use in your
own ``Dataset.map_batches`` pipelines. The vector column is a fixed-size list
(one value a dimension, float32 or the ``precision``'s integer type), so
Parquet files stay readable by any Arrow/Parquet reader. Ray Data does not
keep row order unless ``DataContext.execution_options.preserve_order`` is
set; every other column is kept, so join on an id column.

Each actor resolves the model itself: a local path must exist on every node
(shared storage), a Hub name is looked up in each node's huggingface_hub
cache and downloaded there when missing.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import numpy as np

try:
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('jv4.ray needs Ray Data: pip install "jv4[ray]"') from e

from . import _core
from .hub import DEFAULT_QUANT
from ._model import Model, opt_int
from .precision import check_precision, quantize_embeddings

__all__ = ["EmbedBatches", "embed_dataset", "default_layout"]

ModelSpec = Union[str, os.PathLike, None]


def _model_spec(model: Any, task: Optional[str]) -> str:
    if isinstance(model, Model):
        return model.path  # a loaded model cannot travel; its file can
    if model is None:
        return f"{_core.jina_official_repo(task or _core.DEFAULT_TASK)}:{DEFAULT_QUANT}"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a GGUF path, a Hub name 'owner/name[:QUANT]', a jv4.Model or None, "
                        f"got {type(model).__name__}")
    return os.fspath(model)


def _check_request(task, role, dim, precision, ranges) -> None:
    """The arguments checked in the driver, before any actor starts."""
    _core.check_task(task, or_none=True)
    _core.check_role(role)
    opt_int("dim", dim)
    check_precision(precision)
    if precision in ("int8", "uint8") and ranges is None:
        raise ValueError(f"precision={precision!r} needs ranges= (jv4.calibration_ranges of a sample): "
                         "ranges taken from each batch would give codes that do not compare across batches")


class EmbedBatches:
    """A callable class for ``Dataset.map_batches``: adds ``output_column``
    (the vectors of ``text_column``) to each batch.

        ds.map_batches(jv4.ray.EmbedBatches, fn_constructor_kwargs={"model": path},
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                       batch_format="pyarrow")

    Batches may be pyarrow Tables (the vectors become a fixed-size list
    column), dicts of numpy arrays (a 2-D array: Ray's tensor column) or
    pandas DataFrames (a column of 1-D arrays). ``n_threads`` defaults to the
    CPUs Ray assigned to the actor (``num_cpus``). Other keyword arguments
    go to ``jv4.Model``.
    """

    def __init__(self, model: Any = None, *, text_column: str = "text", output_column: str = "embedding",
                 task: Optional[str] = None, role: str = "passage", dim: Optional[int] = None,
                 precision: str = "float32", ranges: Optional[np.ndarray] = None,
                 n_threads: Optional[int] = None, **model_kwargs: Any) -> None:
        _check_request(task, role, dim, precision, ranges)
        if n_threads is None:
            n_threads = _assigned_cpus()
        self.model = Model(_model_spec(model, task), n_threads=n_threads, **model_kwargs)
        self.text_column, self.output_column = text_column, output_column
        self.task, self.role, self.dim = task, role, dim
        self.precision = precision
        self.ranges = None if ranges is None else np.asarray(ranges)

    def embed(self, texts: list) -> np.ndarray:
        vecs = self.model.embed(texts, task=self.task, role=self.role, dim=self.dim)
        if self.precision != "float32":
            vecs = quantize_embeddings(vecs, self.precision, ranges=self.ranges)
        return vecs

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, pa.Table):
            texts = batch.column(self._column(batch.column_names)).to_pylist()
            vecs = self.embed(_texts(texts, self.text_column))
            values = pa.array(vecs.reshape(-1), type=pa.from_numpy_dtype(vecs.dtype))
            column = pa.FixedSizeListArray.from_arrays(values, vecs.shape[1])
            return batch.append_column(self.output_column, column)
        if isinstance(batch, dict):
            texts = list(batch[self._column(list(batch))])
            batch = dict(batch)
            batch[self.output_column] = self.embed(_texts(texts, self.text_column))
            return batch
        if type(batch).__name__ == "DataFrame":  # pandas
            texts = batch[self._column(list(batch.columns))].tolist()
            vecs = self.embed(_texts(texts, self.text_column))
            out = batch.copy()
            out[self.output_column] = list(vecs)
            return out
        raise TypeError(f"batches must be pyarrow Tables, dicts of numpy arrays or pandas DataFrames, "
                        f"got {type(batch).__name__}")

    def _column(self, names: list) -> str:
        if self.text_column not in names:
            raise KeyError(f"text column {self.text_column!r} is not in the dataset (columns: {names})")
        if self.output_column in names:
            raise ValueError(f"output column {self.output_column!r} already exists; choose output_column=")
        return self.text_column


def _texts(values: list, column: str) -> list:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"column {column!r}: row {i} of the batch is {type(v).__name__}, not a str")
    return values


def _assigned_cpus() -> Optional[int]:
    """CPUs Ray reserved for the current actor or task (None outside Ray)."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker
        return None
    return max(1, math.floor(cpus)) if cpus else None


def default_layout(cluster_cpus: int, threads_per_actor: Optional[int] = None,
                   node_cpus: Optional[int] = None) -> tuple:
    """(actors, threads per actor) for a cluster of ``cluster_cpus`` CPUs
    whose largest node has ``node_cpus`` (default: the same): actors of up to
    4 threads and at most half a node, as many as fit. Half a node, so that
    an actor never takes a whole node: the read and write tasks around the
    pool need a CPU too (measured on 2 cores in docs/benchmarks.md: 2 actors
    x 1 thread run as fast as 1 x 2)."""
    cluster_cpus = max(1, int(cluster_cpus))
    node_cpus = max(1, int(node_cpus or cluster_cpus))
    threads = threads_per_actor or min(4, max(1, node_cpus // 2))
    return max(1, cluster_cpus // threads), threads


def _node_cpus() -> int:
    return int(max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1))


def embed_dataset(ds: "ray.data.Dataset", model: Any = None, *, text_column: str = "text",
                  output_column: str = "embedding", task: Optional[str] = None, role: str = "passage",
                  dim: Optional[int] = None, precision: str = "float32", ranges: Optional[np.ndarray] = None,
                  actors: Optional[int] = None, threads_per_actor: Optional[int] = None,
                  batch_size: int = 256, **model_kwargs: Any) -> "ray.data.Dataset":
    """``ds`` with a vector column ``output_column`` for ``text_column``
    (lazy, as Ray Data is: write it, iterate it or ``materialize()`` it).

    ``model``: a GGUF path, a Hub name, a ``jv4.Model`` (its file is used) or
    None for the official GGUF of ``task`` (``jv4.hub.DEFAULT_QUANT``). ``actors`` and
    ``threads_per_actor`` default to ``default_layout`` of the cluster's CPUs
    (each actor reserves its threads' CPUs, one less if that is a whole node);
    ``batch_size`` is texts per batch. ``precision`` int8/uint8 needs
    ``ranges=`` (one calibration for the whole dataset).
    """
    _check_request(task, role, dim, precision, ranges)
    threads_per_actor = opt_int("threads_per_actor", threads_per_actor)
    actors = opt_int("actors", actors)
    batch_size = opt_int("batch_size", batch_size)
    if not ray.is_initialized():
        ray.init()
    node_cpus = _node_cpus()
    if threads_per_actor is not None and threads_per_actor > node_cpus:
        raise ValueError(f"threads_per_actor={threads_per_actor}: no node of this cluster has that many "
                         f"CPUs (the largest has {node_cpus})")
    n_actors, threads = default_layout(int(ray.cluster_resources().get("CPU", 1)), threads_per_actor, node_cpus)
    # an actor that reserved a whole node would leave the tasks reading and
    # writing its batches no CPU there (a deadlock): it reserves one less and
    # still runs `threads` engine threads
    reserve = threads if threads < node_cpus or node_cpus == 1 else node_cpus - 1
    return ds.map_batches(
        EmbedBatches,
        fn_constructor_kwargs=dict(model=_model_spec(model, task), text_column=text_column,
                                   output_column=output_column, task=task, role=role, dim=dim,
                                   precision=precision, ranges=ranges, n_threads=threads, **model_kwargs),
        # from one actor up: a pool that had to start whole could hold every
        # CPU while the read tasks feeding it wait for one (a deadlock seen on
        # 2 CPUs with read_parquet and 2 actors)
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors or n_actors),
        num_cpus=reserve,
        batch_size=batch_size,
        batch_format="pyarrow",
    )
