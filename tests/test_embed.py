"""embed(): jina-v4 semantics against the transformers reference."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from conftest import cosines
from corpus import CORPUS

pytestmark = pytest.mark.numerics

PREFIX = {
    ("retrieval", "query"): "Query: ",
    ("retrieval", "passage"): "Passage: ",
    ("text-matching", "query"): "Query: ",
    ("text-matching", "passage"): "Query: ",
    ("code", "query"): "Query: ",
    ("code", "passage"): "Passage: ",
}
THRESHOLD = {"F32": 0.99999, "F16": 0.9999, "BF16": 0.999, "Q8_0": 0.999}


@pytest.mark.parametrize("arch", ["qwen2", "qwen2vl"])
@pytest.mark.parametrize("task,role", sorted(PREFIX))
@pytest.mark.parametrize("dim", [None, 128])
@pytest.mark.smoke
def test_f32_matches_reference_for_every_task_role_and_dim(load, reference, arch, task, role, dim):
    m = load(arch, task, "F32")
    got = m.embed(CORPUS, role=role, dim=dim)
    want = reference(CORPUS, PREFIX[task, role], dim=dim)
    assert got.shape == (len(CORPUS), dim or m.n_embd)
    c = cosines(got, want)
    assert c.min() >= THRESHOLD["F32"], (c.min(), CORPUS[int(c.argmin())])
    # L2-normalised output, also after Matryoshka truncation
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "qwen2vl"])
@pytest.mark.parametrize("dtype", ["F16", "BF16", "Q8_0"])
@pytest.mark.parametrize("role", ["query", "passage"])
@pytest.mark.parametrize("dim", [None, 128])
def test_lower_precision_stays_close_to_reference(load, reference, arch, dtype, role, dim):
    m = load(arch, "retrieval", dtype)
    got = m.embed(CORPUS, role=role, dim=dim)
    want = reference(CORPUS, PREFIX["retrieval", role], dim=dim)
    c = cosines(got, want)
    assert c.min() >= THRESHOLD[dtype], (dtype, c.min(), CORPUS[int(c.argmin())])


def test_explicit_task_equal_to_the_files_task_is_accepted(load):
    m = load("qwen2", "code", "F32")
    assert m.task == "code"
    np.testing.assert_array_equal(m.embed(["x = 1"], task="code"), m.embed(["x = 1"]))


def test_task_contradicting_the_file_names_the_file_to_load(load):
    m = load("qwen2", "retrieval", "F32")
    with pytest.raises(ValueError, match=r"jina-embeddings-v4-text-code-F32-qwen2\.gguf"):
        m.embed(["x"], task="code")


def test_unknown_task_role_and_dim_list_the_allowed_values(load):
    m = load()
    with pytest.raises(ValueError, match="'retrieval', 'text-matching', 'code'"):
        m.embed(["x"], task="search")
    with pytest.raises(ValueError, match="'query', 'passage'"):
        m.embed(["x"], role="document")
    with pytest.raises(ValueError, match=r"dim must be one of 128, 256"):
        m.embed(["x"], dim=100)
    with pytest.raises(ValueError, match=r"dim must be one of 128, 256"):
        m.embed(["x"], dim=512)  # a trained dim, but above this model's width
    assert m.dims == [128, 256]


def test_output_shapes_and_layout(load):
    m = load()
    many = m.embed(["a", "b", "c"])
    assert many.shape == (3, 256) and many.dtype == np.float32 and many.flags.c_contiguous
    one = m.embed("a")
    assert one.shape == (256,) and one.dtype == np.float32
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    empty = m.embed([], dim=128)
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    assert m.embed(("a", "b")).shape == (2, 256)  # any sequence


def test_tokenize_matches_reference_tokenizer_on_the_corpus(load, ref_tokenizer):
    m = load()
    for text in CORPUS:
        want = ref_tokenizer.encode(text, add_special_tokens=False).ids
        got = m.tokenize(text, add_prefix=False)
        assert got.dtype == np.int32
        assert got.tolist() == want, text


def test_tokenize_with_prefix_is_what_embed_feeds(load, ref_tokenizer):
    m = load("qwen2", "code", "F32")
    for role, prefix in (("query", "Query: "), ("passage", "Passage: ")):
        want = ref_tokenizer.encode(prefix + "def f(): pass", add_special_tokens=False).ids
        assert m.tokenize("def f(): pass", role=role).tolist() == want


def _llama_cpp_vectors():
    from modelgen import VOCAB_GGUF

    inp = VOCAB_GGUF.with_suffix(".gguf.inp").read_text(encoding="utf-8")
    out = VOCAB_GGUF.with_suffix(".gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    ids = [[int(x) for x in line.split()] for line in out.split("\n")[: len(texts)]]
    return list(zip(texts, ids))


def test_tokenize_reproduces_llama_cpp_qwen2_test_vectors(load, ref_tokenizer):
    m = load()
    vectors = _llama_cpp_vectors()
    assert len(vectors) >= 40
    for text, ids in vectors:
        assert m.tokenize(text, add_prefix=False).tolist() == ids, repr(text)
        assert ref_tokenizer.encode(text, add_special_tokens=False).ids == ids, repr(text)


def test_vector_does_not_depend_on_the_rest_of_the_batch(load):
    m = load("qwen2", "retrieval", "F32", batch_tokens=256)
    texts = CORPUS[:60]
    together = m.embed(texts)
    alone = np.stack([m.embed(t) for t in texts])
    reversed_ = m.embed(texts[::-1])[::-1]
    assert cosines(together, alone).min() >= 0.99999
    assert cosines(together, reversed_).min() >= 0.99999


def test_batch_token_budget_does_not_change_vectors(make_gguf):
    path = make_gguf("qwen2vl", "retrieval", "F32")
    a = jv4.Model(path, batch_tokens=64).embed(CORPUS)
    b = jv4.Model(path, batch_tokens=2048).embed(CORPUS)
    assert cosines(a, b).min() >= 0.99999


def _long_text(ref_tokenizer, n_tokens: int) -> str:
    words = ("retrieval embedding vector passage query model token context batch "
             "Wörter 単語 كلمات शब्द ").split()
    text, i = [], 0
    while True:
        text.append(words[i % len(words)] + str(i % 97))
        i += 1
        if i % 200 == 0 and len(ref_tokenizer.encode(" ".join(text)).ids) >= n_tokens:
            return " ".join(text)


@pytest.mark.parametrize("arch", ["qwen2", "qwen2vl"])
def test_long_text_spanning_many_physical_batches_matches_reference(make_gguf, reference,
                                                                   ref_tokenizer, arch):
    text = _long_text(ref_tokenizer, 10_000)
    n = len(ref_tokenizer.encode("Passage: " + text).ids)
    assert n >= 10_000
    m = jv4.Model(make_gguf(arch, "retrieval", "F32"), batch_tokens=512)
    assert n > 512 * 10
    got = m.embed([text, "short one"], role="passage")
    want = reference([text, "short one"], "Passage: ")
    assert cosines(got, want).min() >= 0.99999


def test_long_text_is_truncated_on_the_right_like_the_reference(make_gguf, reference, ref_tokenizer):
    text = _long_text(ref_tokenizer, 300)
    m = jv4.Model(make_gguf(), max_length=64, batch_tokens=32)
    got = m.embed([text, "tiny"])
    want = reference([text, "tiny"], "Query: ", max_length=64)
    assert cosines(got, want).min() >= 0.99999
    # and it differs from the untruncated reference
    assert cosines(got[:1], reference([text], "Query: "))[0] < 0.9999


def test_truncate_false_names_the_index_and_token_count(make_gguf, ref_tokenizer):
    text = _long_text(ref_tokenizer, 300)
    n = len(ref_tokenizer.encode("Query: " + text).ids)
    m = jv4.Model(make_gguf(), max_length=64)
    with pytest.raises(ValueError, match=rf"index 2 has {n} tokens, more than max_length=64"):
        m.embed(["a", "b", text], truncate=False)
    assert m.embed(["a"]).shape == (1, 256)  # still works


def test_max_length_defaults_to_32768_capped_by_trained_context(load, make_gguf):
    assert load().max_length == 32768
    with pytest.raises(ValueError, match="trained context"):
        jv4.Model(make_gguf(), max_length=40_000)


def test_info_reports_gguf_facts(load):
    info = load("qwen2vl", "text-matching", "F16").info
    assert info["architecture"] == "qwen2vl"
    assert info["task"] == "text-matching"
    assert info["n_embd"] == 256 and info["n_layer"] == 2 and info["n_vocab"] == 151936
    assert info["pooling"] == "mean" and info["jina_v4"] is True


def test_text_matching_uses_query_prefix_for_both_roles(load):
    m = load("qwen2", "text-matching", "F32")
    np.testing.assert_array_equal(m.embed(["same"], role="query"), m.embed(["same"], role="passage"))
    r = load("qwen2", "retrieval", "F32")
    assert cosines(r.embed(["same"], role="query"), r.embed(["same"], role="passage"))[0] < 0.9999


@pytest.mark.parametrize("pooling", [None, 3])
def test_other_gguf_models_use_their_own_pooling_and_no_prefix(vocab, weights, model_dir, hf_model,
                                                              ref_tokenizer, pooling):
    import modelgen as mg

    path = model_dir / f"tiny-qwen2-embedder-{pooling}.gguf"
    mg.write_gguf(path, weights, mg.TINY, vocab, name="tiny-qwen2-embedder", pooling=pooling)
    m = jv4.Model(path)
    assert m.task is None and m.info["jina_v4"] is False
    assert m.info["pooling"] == ("last" if pooling == 3 else "mean")
    texts = CORPUS[3:40]
    got = m.embed(texts, dim=100)  # any dim up to the width
    ids = [ref_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]  # no prefix
    want = mg.reference_embed(hf_model, ids, dim=100, pooling="last" if pooling == 3 else "mean")
    assert cosines(got, want).min() >= 0.99999
    # a text of no tokens (no prefix, no BOS here) gives zeros and leaves the
    # other texts' decodes as they are without it
    assert len(m.tokenize("")) == 0
    with_empty = m.embed(["", *texts[:6]])
    assert not with_empty[0].any()
    assert with_empty[1:].tobytes() == m.embed(texts[:6]).tobytes()
    with pytest.raises(ValueError, match="only to jina-embeddings-v4"):
        m.embed(["x"], task="retrieval")
    with pytest.raises(ValueError, match="only to jina-embeddings-v4"):
        m.embed(["x"], role="passage")
    with pytest.raises(ValueError, match=r"dim must be one of 1\.\.256"):
        m.embed(["x"], dim=257)
