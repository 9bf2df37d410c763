"""``encode``: the sentence-transformers calling convention over jv4.

Code and evaluation harnesses written for ``SentenceTransformer.encode`` run
unchanged against ``jv4.Model`` and ``jv4.Embedder``. Each argument keeps the
meaning it has in sentence-transformers (6.x):

- ``prompt_name``: ``"query"`` or ``"passage"``, the jina-v4 role; its prompt
  is the task's prefix (``Query: `` / ``Passage: ``; ``text-matching`` uses
  ``Query: `` for both). Default: ``"query"``, the reference's default role.
  ``prompt``: a prompt string instead of a name; for jina-v4 models it must
  be one of the task's prefixes (the engine adds the prefix itself), for
  other models it is put before each text.
- The sentence embedding is the model's own: mean pooling and L2
  normalisation, as the reference computes it. Then, as sentence-transformers
  does: ``truncate_dim`` keeps the first values (any width, not only the
  Matryoshka ones), ``normalize_embeddings=True`` L2-normalises again (default
  False: a truncated vector keeps a norm below 1), and ``precision``
  quantizes the whole call's vectors together (``jv4.quantize_embeddings``).
- ``batch_size``: texts per engine call (the engine packs each call's texts
  into decodes by tokens; the vectors change only by the small
  batch-composition effect measured in docs/usage.md).
- ``show_progress_bar``: one bar for the call; None shows it when the ``jv4``
  logger is at INFO or DEBUG.
- ``convert_to_numpy`` / ``convert_to_tensor``: a numpy array (default), a
  torch tensor, or (both False) a list of torch tensors, one a text. An
  empty input gives ``np.array([])``; a single string gives one vector.
- ``task=``: the jina-v4 task, as with jina-v4's own sentence-transformers
  model.

Refused, naming the argument: ``output_value`` other than
``"sentence_embedding"`` (per-token vectors need the multi-vector model,
which the GGUFs do not carry), ``device`` (placement is chosen when the model
is loaded: ``n_gpu_layers``, ``main_gpu``), ``pool`` / ``chunk_size`` (one
model already uses every core; see ``jv4.ray`` for several processes or
machines), and any other keyword.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np

from . import _core
from .precision import check_precision, quantize_embeddings
from .progress import Bar

__all__ = ["encode", "prompts_of", "EncodeQueryDocument"]

# (texts, role, progress hook) -> float32 (n, width) vectors of the full width
EmbedFn = Callable[[list, str, Optional[Callable[[int, int, int], None]]], np.ndarray]

_REFUSED = {
    "device": "placement is chosen when the model is loaded (Model(n_gpu_layers=, main_gpu=))",
    "pool": "jv4 runs one model over every core in-process; for several processes or machines use jv4.ray",
    "chunk_size": "jv4 runs one model over every core in-process; for several processes or machines use jv4.ray",
}


def prompts_of(task: Optional[str]) -> dict:
    """The prompts of a jina-v4 task by role name; {} for models without
    prefixes (task None)."""
    if task is None:
        return {}
    return {role: _core.jina_prefix(task, role) for role in _core.ROLES}


def _role_of(task: Optional[str], prompt_name: Optional[str], prompt: Optional[str]) -> tuple:
    """(role, text to put before each text) from prompt_name / prompt."""
    prompts = prompts_of(task)
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str or None, got {type(prompt).__name__}")
        if task is None:
            return "query", prompt  # a model without prefixes: the prompt is text
        for role in (prompt_name, *_core.ROLES):  # the named role first, if it fits
            if role in prompts and prompts[role] == prompt:
                return role, ""
        raise ValueError(f"prompt={prompt!r} is not a prompt of task {task!r}: the engine adds the task's "
                         f"prefix itself; use prompt_name= (one of {', '.join(map(repr, prompts))}) or "
                         f"prompt= one of {sorted(set(prompts.values()))!r}")
    if prompt_name is None:
        return "query", ""
    if not isinstance(prompt_name, str) or prompt_name not in prompts:
        raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts "
                         f"{list(prompts)!r}" + ("" if prompts else " (it has none: it adds no prefix)"))
    return prompt_name, ""


def _as_texts(inputs: Any) -> tuple:
    """(list of str, single?) as sentence-transformers reads its input."""
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    elif not isinstance(inputs, list):
        if not hasattr(inputs, "__iter__"):
            raise TypeError(f"inputs must be a str or a sequence of str, got {type(inputs).__name__}")
        inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, str):
            raise TypeError(f"inputs[{i}] must be a str (jv4 embeds text), got {type(t).__name__}")
    return inputs, False


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch comes with the test extra
        raise ImportError("convert_to_tensor=True / convert_to_numpy=False give torch tensors: "
                          "install torch, or keep convert_to_numpy=True") from e
    return torch


def encode(embed: EmbedFn, task: Optional[str], inputs: Any = None, prompt_name: Optional[str] = None,
           prompt: Optional[str] = None, batch_size: int = 32, show_progress_bar: Optional[bool] = None,
           output_value: Optional[str] = "sentence_embedding", precision: str = "float32",
           convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: Any = None,
           normalize_embeddings: bool = False, truncate_dim: Optional[int] = None, pool: Any = None,
           chunk_size: Optional[int] = None, **kwargs: Any) -> Any:
    """sentence-transformers' ``encode`` over ``embed`` (see the module text)."""
    if "sentences" in kwargs:  # sentence-transformers' older name of `inputs`
        if inputs is not None:
            raise TypeError("give inputs= or sentences=, not both")
        inputs = kwargs.pop("sentences")
    if kwargs:
        raise TypeError(f"encode() got keyword arguments jv4 does not take: {', '.join(sorted(kwargs))}")
    if inputs is None:
        raise TypeError("encode() needs inputs (a str or a list of str)")
    for name, value in (("device", device), ("pool", pool), ("chunk_size", chunk_size)):
        if value is not None:
            raise ValueError(f"{name}={value!r} is not supported: {_REFUSED[name]}")
    if output_value != "sentence_embedding":
        raise ValueError(f"output_value={output_value!r} is not supported: jv4 gives 'sentence_embedding' "
                         "(per-token vectors need the multi-vector model, which the GGUFs do not carry)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer))
                                     or truncate_dim <= 0):
        raise ValueError(f"truncate_dim must be a positive int or None, got {truncate_dim!r}")
    check_precision(precision)
    role, text_prompt = _role_of(task, prompt_name, prompt)
    texts, single = _as_texts(inputs)
    if text_prompt:
        texts = [text_prompt + t for t in texts]
    if show_progress_bar is None:
        show_progress_bar = logging.getLogger("jv4").getEffectiveLevel() in (logging.INFO, logging.DEBUG)

    bar = Bar(len(texts), desc="encode") if show_progress_bar and texts else None
    try:
        parts = [embed(texts[s:s + int(batch_size)], role, bar.hook(s) if bar else None)
                 for s in range(0, len(texts), int(batch_size))]
    finally:
        if bar is not None:
            bar.close()

    if not parts:
        out: np.ndarray = np.array([])
    else:
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if truncate_dim is not None:
            out = out[:, :int(truncate_dim)]
        if normalize_embeddings:  # torch.nn.functional.normalize: x / max(|x|, 1e-12)
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if precision != "float32":
            out = quantize_embeddings(out, precision)
        out = np.ascontiguousarray(out)

    if convert_to_tensor:
        result: Any = _torch().as_tensor(out)
    elif convert_to_numpy:
        result = out
    else:
        torch = _torch()
        result = [torch.from_numpy(row) for row in out]
    return result[0] if single else result


class EncodeQueryDocument:
    """sentence-transformers' ``encode_query`` / ``encode_document`` for a
    class with an ``encode`` (jv4.Model, jv4.Embedder)."""

    def encode_query(self, inputs: Any = None, prompt_name: Optional[str] = None, **kwargs: Any) -> Any:
        """``encode`` with the query prompt unless a prompt is given."""
        return self.encode(inputs, _named(prompt_name, kwargs, "query"), **kwargs)

    def encode_document(self, inputs: Any = None, prompt_name: Optional[str] = None, **kwargs: Any) -> Any:
        """``encode`` with the passage prompt unless a prompt is given."""
        return self.encode(inputs, _named(prompt_name, kwargs, "passage"), **kwargs)


def _named(prompt_name: Optional[str], kwargs: dict, role: str) -> Optional[str]:
    return role if prompt_name is None and kwargs.get("prompt") is None else prompt_name
