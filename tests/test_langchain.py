"""jv4.langchain: langchain-core's Embeddings interface, and its in-memory
vector store on top."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import jv4
from corpus import CORPUS

pytest.importorskip("langchain_core", reason="the langchain extra: pip install '.[langchain]' (in the test extra)")
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from jv4.langchain import JinaV4Embeddings  # noqa: E402

DOCS = CORPUS[:40]


@pytest.fixture(scope="module")
def task_files(make_gguf):
    return {t: make_gguf(task=t) for t in jv4.TASKS}


@pytest.mark.parametrize("task", ["retrieval", "code", "text-matching"])
@pytest.mark.parametrize("dim", [None, 128])
def test_documents_are_passages_and_queries_are_queries(task_files, task, dim):
    emb = JinaV4Embeddings(task_files[task], task=task, dim=dim)
    assert isinstance(emb, Embeddings)
    model = jv4.Model(task_files[task])
    docs = emb.embed_documents(DOCS)
    assert isinstance(docs, list) and isinstance(docs[0], list) and isinstance(docs[0][0], float)
    assert np.array_equal(np.array(docs, np.float32), model.embed(DOCS, task=task, role="passage", dim=dim))
    q = emb.embed_query("how do I read a GGUF file?")
    assert np.array_equal(np.array(q, np.float32),
                          model.embed("how do I read a GGUF file?", task=task, role="query", dim=dim))


def test_async_variants_run_off_the_event_loop(task_files):
    emb = JinaV4Embeddings(task_files["retrieval"])
    model = jv4.Model(task_files["retrieval"])
    texts = DOCS * 25  # long enough that the loop gets to tick meanwhile
    loop_thread = []
    engine_threads = set()
    original = emb.client.embed

    def spy(*a, **k):
        engine_threads.add(threading.get_ident())
        return original(*a, **k)

    emb.client.embed = spy

    async def main():
        loop_thread.append(threading.get_ident())
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        docs, q = await asyncio.gather(emb.aembed_documents(texts), emb.aembed_query("a query"))
        t.cancel()
        return docs, q, ticks

    start = time.perf_counter()
    docs, q, ticks = asyncio.run(main())
    assert time.perf_counter() - start > 0.05 and ticks >= 5  # the loop ran while embedding
    assert loop_thread[0] not in engine_threads
    assert np.array_equal(np.array(docs, np.float32), model.embed(texts, role="passage"))
    assert np.array_equal(np.array(q, np.float32), model.embed("a query", role="query"))


def test_in_memory_vector_store_finds_the_expected_document(task_files):
    emb = JinaV4Embeddings(task_files["retrieval"], dim=128)
    store = InMemoryVectorStore(emb)
    ids = store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)])
    assert len(ids) == len(DOCS)
    model = jv4.Model(task_files["retrieval"])
    passages = model.embed(DOCS, role="passage", dim=128)
    for query in ["Hello world", DOCS[7], "tokenizer of a byte-level BPE"]:
        # the expected hit: the best cosine over the same vectors, computed here
        want = int(np.argmax(passages @ model.embed(query, role="query", dim=128)))
        hit = store.similarity_search(query, k=1)[0]
        assert hit.metadata["i"] == want and hit.page_content == DOCS[want]
    # text-matching is symmetric: a document's own text finds it
    sym = InMemoryVectorStore(JinaV4Embeddings(task_files["text-matching"], task="text-matching"))
    sym.add_texts(DOCS[3:20])
    assert sym.similarity_search(DOCS[11], k=1)[0].page_content == DOCS[11]


def test_loaded_models_and_the_official_default(task_files):
    model = jv4.Model(task_files["code"])
    emb = JinaV4Embeddings(model)  # task None: the file's own task
    assert np.array_equal(np.array(emb.embed_documents(DOCS[:3]), np.float32),
                          model.embed(DOCS[:3], task="code", role="passage"))
    emb.close()  # not ours: the model stays open
    model.embed("still open")
    with jv4.Embedder(models=task_files) as router:
        e = JinaV4Embeddings(router, task="code")
        assert np.array_equal(np.array(e.embed_query("q"), np.float32),
                              jv4.Model(task_files["code"]).embed("q", role="query"))
    official = JinaV4Embeddings(quant="Q8_0")  # nothing loaded until first use
    assert official.client.source("retrieval") == "jinaai/jina-embeddings-v4-text-retrieval-GGUF:Q8_0"
    assert official.task == "retrieval"


def test_bad_arguments(task_files):
    with pytest.raises(ValueError, match="task must be one of"):
        JinaV4Embeddings(task_files["retrieval"], task="qa")
    with pytest.raises(ValueError, match=r"dim must be one of \[128, 256\]"):
        JinaV4Embeddings(task_files["retrieval"], dim=100)
    with pytest.raises(TypeError, match="apply when jv4 loads the model"):
        JinaV4Embeddings(jv4.Model(task_files["retrieval"]), n_threads=2)
    with pytest.raises(TypeError, match="text must be a str"):
        JinaV4Embeddings(task_files["retrieval"]).embed_query(["a list"])
