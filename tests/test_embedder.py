"""jv4.Embedder: one object routing each task to its model, loaded lazily."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import jv4
from corpus import CORPUS


@pytest.fixture()
def task_files(make_gguf):
    return {t: make_gguf(task=t) for t in jv4.TASKS}


def test_each_task_goes_to_its_file_with_bit_identical_vectors(task_files):
    texts = CORPUS[:12]
    with jv4.Embedder(models=task_files) as emb:
        for task, path in task_files.items():
            ref = jv4.Model(path)
            for role in jv4.ROLES:
                for dim in (None, 128):
                    got = emb.embed(texts, task=task, role=role, dim=dim)
                    want = ref.embed(texts, task=task, role=role, dim=dim)
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert np.array_equal(got, want), (task, role, dim)
            assert emb.model(task).path == str(path)


def test_models_load_on_first_use_only(task_files, tmp_path):
    broken = tmp_path / "broken-jina-embeddings-v4-text-code.gguf"
    broken.write_bytes(b"not a model")
    models = dict(task_files, code=broken)
    emb = jv4.Embedder(models=models)
    assert emb.loaded_tasks == []
    emb.embed(["x"], task="text-matching")
    assert emb.loaded_tasks == ["text-matching"]
    emb.embed(["y"], task="retrieval", role="passage")
    assert emb.loaded_tasks == ["retrieval", "text-matching"]
    # the code model was never needed, so its broken file was never opened
    with pytest.raises(jv4.ModelLoadError, match="not a GGUF"):
        emb.embed(["z"], task="code")
    assert emb.loaded_tasks == ["retrieval", "text-matching"]


def test_tasks_mapped_to_one_file_share_one_loaded_model(make_gguf):
    path = make_gguf(task="retrieval")
    emb = jv4.Embedder(models={"retrieval": path, "code": str(path)})
    assert emb.model("retrieval") is emb.model("code")
    # the file is the retrieval model: a code call says which file to load instead
    with pytest.raises(ValueError, match="does not match this file"):
        emb.embed(["x"], task="code")


def test_unmapped_tasks_default_to_the_official_repos_at_the_quant():
    emb = jv4.Embedder("Q8_0", models={"code": "local.gguf"})
    assert emb.source("retrieval") == "jinaai/jina-embeddings-v4-text-retrieval-GGUF:Q8_0"
    assert emb.source("text-matching") == "jinaai/jina-embeddings-v4-text-matching-GGUF:Q8_0"
    assert emb.source("code") == "local.gguf"


def test_close_frees_models_and_later_calls_raise(task_files):
    emb = jv4.Embedder(models=task_files)
    emb.embed(["x"], task="retrieval")
    model = emb.model("retrieval")
    emb.close()
    assert emb.loaded_tasks == []
    with pytest.raises(ValueError, match="closed"):
        model.embed(["x"])
    with pytest.raises(ValueError, match="closed"):
        emb.embed(["x"], task="retrieval")


def test_bad_arguments_name_the_allowed_values(task_files):
    emb = jv4.Embedder(models=task_files)
    with pytest.raises(ValueError, match="task must be one of 'retrieval', 'text-matching', 'code'"):
        emb.embed(["x"], task="search")
    with pytest.raises(ValueError, match="models= keys must be tasks"):
        jv4.Embedder(models={"qa": "x.gguf"})
    with pytest.raises(ValueError, match="precision must be one of"):
        emb.embed(["x"], precision="int4")
    assert emb.loaded_tasks == []  # nothing was loaded for calls refused up front


def test_concurrent_first_use_loads_once(task_files):
    emb = jv4.Embedder(models=task_files)
    seen = []

    def work():
        seen.append(emb.model("code"))
        emb.embed(["x", "y"], task="code")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is seen[0] for m in seen)
