"""LangChain: jv4 as a langchain-core ``Embeddings`` (``pip install "jv4[langchain]"``).

    >>> from jv4.langchain import JinaV4Embeddings
    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> store = InMemoryVectorStore(JinaV4Embeddings(task="retrieval", dim=512))
    >>> store.add_texts(["GGUF is a file format for models", "Paris is in France"])
    >>> store.similarity_search("what is a gguf file?", k=1)

``embed_documents`` embeds with the passage role, ``embed_query`` with the
query role (the jina-v4 prefixes ``Passage: `` / ``Query: ``); the async
variants (langchain-core's ``aembed_*``) run in a worker thread, so the event
loop keeps running while the engine works (it releases the GIL).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

try:
    from langchain_core.embeddings import Embeddings
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('jv4.langchain needs langchain-core: pip install "jv4[langchain]"') from e

from . import _core
from .hub import DEFAULT_QUANT
from ._model import Model
from .embedder import Embedder

__all__ = ["JinaV4Embeddings"]


class JinaV4Embeddings(Embeddings):
    """langchain-core ``Embeddings`` over a jv4 model.

    Parameters
    ----------
    model: None (default) for the official GGUF of ``task`` at ``quant``
        (fetched on first use, through ``jv4.Embedder``); a GGUF path or Hub
        name ``"owner/name[:QUANT]"``; or an already loaded ``jv4.Model`` /
        ``jv4.Embedder`` (used as it is, not closed by ``close()``).
    task: the jina-v4 task (``"retrieval"``, ``"text-matching"``, ``"code"``).
        Default None: ``"retrieval"`` for the official models, a file's own
        task for a jina-v4 GGUF; a model that is not jina-v4 has no prefixes
        (both methods embed the text as it is).
    dim: Matryoshka width (default: the full width).
    quant: the official GGUF's quantization when ``model`` is None.
    batch_size: texts per engine call in ``embed_documents`` (default: all
        at once); the vectors change only by the small batch-composition
        effect measured in docs/usage.md.
    model_kwargs: passed to ``jv4.Model`` (``n_threads``, ``max_length`` ...).
    """

    def __init__(self, model: Union[None, str, os.PathLike, Model, Embedder] = None, *,
                 task: Optional[str] = None, dim: Optional[int] = None, quant: str = DEFAULT_QUANT,
                 batch_size: Optional[int] = None, **model_kwargs: Any) -> None:
        _core.check_task(task, or_none=True)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self._owned = not isinstance(model, (Model, Embedder))
        if isinstance(model, (Model, Embedder)):
            if model_kwargs:
                raise TypeError(f"model keyword arguments ({', '.join(sorted(model_kwargs))}) apply when "
                                "jv4 loads the model, not to an already loaded one")
            self.client: Union[Model, Embedder] = model
        elif model is None:
            self.client = Embedder(quant, **model_kwargs)
        else:
            self.client = Model(model, **model_kwargs)
        if isinstance(self.client, Embedder) and task is None:
            task = _core.DEFAULT_TASK
        jina = isinstance(self.client, Embedder) or self.client.info["jina_v4"]
        if dim is not None and isinstance(self.client, Model) and dim not in self.client.dims:
            raise ValueError(f"dim must be one of {self.client.dims} for this model (got {dim!r})")
        self.task = task
        self.dim = dim
        self.batch_size = batch_size
        self._roles = ("passage", "query") if jina else ("query", "query")  # documents, queries

    def _embed(self, texts: list, role: str):
        return self.client.embed(texts, task=self.task, role=role, dim=self.dim)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts`` as passages (the documents of a store)."""
        texts = list(texts)
        step = self.batch_size or max(1, len(texts))
        out: list = []
        for s in range(0, len(texts), step):
            out.extend(self._embed(texts[s:s + step], self._roles[0]).tolist())
        return out

    def embed_query(self, text: str) -> list[float]:
        """The vector of ``text`` as a query."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._embed([text], self._roles[1])[0].tolist()

    def close(self) -> None:
        """Free the model if this object loaded it."""
        if self._owned:
            self.client.close()

    def __enter__(self) -> "JinaV4Embeddings":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JinaV4Embeddings(client={self.client!r}, task={self.task!r}, dim={self.dim!r})"
