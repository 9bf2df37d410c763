"""Fixtures: synthetic jina-v4-style GGUF models built on the fly, and the
transformers reference holding the same weights (see modelgen.py)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import modelgen as mg  # noqa: E402

TASK_TAGS = {"retrieval": "retrieval", "text-matching": "matching", "code": "code"}


@pytest.fixture(scope="session")
def vocab() -> mg.Vocab:
    return mg.Vocab()


@pytest.fixture(scope="session")
def weights(vocab):
    return mg.random_weights(mg.TINY, vocab.size, seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_gguf(vocab, weights, model_dir):
    """make_gguf(arch="qwen2", task="retrieval", dtype="F32") -> path.
    F32/F16 are written directly; quantized types come from jv4.quantize."""
    import jv4

    @functools.lru_cache(maxsize=None)
    def make(arch: str = "qwen2", task: str = "retrieval", dtype: str = "F32") -> Path:
        name = f"jina-embeddings-v4-text-{TASK_TAGS[task]}"
        path = model_dir / f"{name}-{dtype}-{arch}.gguf"
        if dtype in ("F32", "F16"):
            mg.write_gguf(path, weights, mg.TINY, vocab, arch=arch, name=name, dtype=dtype)
        else:
            jv4.quantize(make(arch, task, "F32"), path, dtype)
        return path

    return make


@pytest.fixture(scope="session")
def load(make_gguf):
    """load(arch, task, dtype, **opts) -> jv4.Model (cached per arguments)."""
    import jv4

    @functools.lru_cache(maxsize=None)
    def _load(arch="qwen2", task="retrieval", dtype="F32", **opts):
        return jv4.Model(make_gguf(arch, task, dtype), **opts)

    return _load


@pytest.fixture(scope="session")
def ref_tokenizer(vocab):
    return vocab.reference_tokenizer()


@pytest.fixture(scope="session")
def hf_model(weights, vocab):
    return mg.reference_model(weights, mg.TINY, vocab.size)


@pytest.fixture(scope="session")
def reference(hf_model, ref_tokenizer):
    """reference(texts, prefix, dim=None, max_length=None) -> (n, dim) array:
    the jina-v4 reference semantics on transformers' Qwen2Model."""
    cache: dict = {}

    def ref(texts, prefix: str, dim=None, max_length=None):
        ids = []
        for t in texts:
            key = (t, prefix, max_length)
            if key not in cache:
                tok = ref_tokenizer.encode(prefix + t, add_special_tokens=False).ids
                if max_length is not None:
                    tok = tok[:max_length]
                cache[key] = mg.reference_embed(hf_model, [tok])[0].astype(np.float64)
            ids.append(cache[key])
        full = np.stack(ids)
        if dim is not None:
            full = full[:, :dim]
            full /= np.linalg.norm(full, axis=1, keepdims=True)
        return full

    return ref


def build_has(feature: str) -> bool:
    """Whether the loaded jv4 module's CPU code has `feature` (a name of
    jv4.build_info()["cpu_features"], e.g. "AVX512_BF16")."""
    import jv4

    return feature in jv4.build_info()["cpu_features"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --- a Hugging Face cache holding the official repo names -------------------
HUB_QUANTS = ("F32", "F16")


def repo_of(task: str) -> str:
    return f"jinaai/jina-embeddings-v4-text-{TASK_TAGS[task]}-GGUF"


def file_of(task: str, quant: str) -> str:
    return f"jina-embeddings-v4-text-{TASK_TAGS[task]}-{quant}.gguf"


@pytest.fixture(scope="session")
def hf_cache(make_gguf, tmp_path_factory) -> Path:
    """A Hugging Face cache holding, per task, the official repo name with two
    quants (F32, F16) of the tiny synthetic model."""
    import jv4
    from hubstub import write_hf_cache

    cache = tmp_path_factory.mktemp("hf-cache")
    for task in jv4.TASKS:
        write_hf_cache(cache, repo_of(task), {file_of(task, q): make_gguf(task=task, dtype=q) for q in HUB_QUANTS})
    return cache


def hub_env(extra: dict) -> dict:
    """This process's environment without any HF_* setting, plus `extra`
    (and loopback exempt from proxies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(extra)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env
