"""Model.encode / Embedder.encode against a real SentenceTransformer holding
the same weights (transformers' Qwen2Model, the same Qwen2 tokenizer, mean
pooling, L2 normalisation, the jina-v4 prompts): each argument must mean what
it means there."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from corpus import CORPUS

pytestmark = pytest.mark.numerics

TEXTS = CORPUS[:24]
PROMPTS = {"query": "Query: ", "passage": "Passage: "}


@pytest.fixture(scope="module")
def st_model(hf_model, ref_tokenizer, tmp_path_factory):
    """sentence-transformers over the reference weights, as jina-v4's own
    sentence-transformers model is laid out (prompts by role name)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("st-reference")
    hf_model.save_pretrained(folder)
    tok = PreTrainedTokenizerFast(tokenizer_object=ref_tokenizer, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    transformer = Transformer(str(folder))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=PROMPTS, device="cpu")


@pytest.fixture(scope="module")
def model(load):
    return load()


def close(got, want, atol=2e-4):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got.astype(np.float64) - want).max() <= atol


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_prompt_name_is_the_role(model, st_model, prompt_name):
    close(model.encode(TEXTS, prompt_name=prompt_name),
          st_model.encode(TEXTS, prompt_name=prompt_name, task="retrieval"))


def test_prompt_string_and_encode_query_document(model, st_model):
    close(model.encode(TEXTS, prompt="Passage: "), st_model.encode(TEXTS, prompt="Passage: "))
    close(model.encode_query(TEXTS), st_model.encode_query(TEXTS))
    close(model.encode_document(TEXTS), st_model.encode_document(TEXTS, prompt_name="passage"))
    # no prompt named: the reference's default role, query
    close(model.encode(TEXTS), st_model.encode(TEXTS, prompt_name="query"))


@pytest.mark.parametrize("truncate_dim", [None, 64, 100, 128])
@pytest.mark.parametrize("normalize", [False, True])
def test_truncate_dim_and_normalize_embeddings(model, st_model, truncate_dim, normalize):
    got = model.encode(TEXTS, prompt_name="passage", truncate_dim=truncate_dim, normalize_embeddings=normalize)
    want = st_model.encode(TEXTS, prompt_name="passage", truncate_dim=truncate_dim,
                           normalize_embeddings=normalize)
    close(got, want)
    norms = np.linalg.norm(got, axis=1)
    if normalize or truncate_dim is None:
        assert np.allclose(norms, 1, atol=1e-5)
    else:  # sentence-transformers does not normalise a truncated vector unless asked
        assert (norms < 0.999).all()


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_after_truncation_like_sentence_transformers(model, st_model, precision):
    kw = dict(prompt_name="passage", truncate_dim=128, normalize_embeddings=True, precision=precision)
    got = model.encode(TEXTS, **kw)
    want = st_model.encode(TEXTS, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    # exact: sentence-transformers' quantizer on jv4's float vectors of the
    # same call (truncated, normalised again) gives the same codes ...
    from sentence_transformers import quantize_embeddings as st_quantize

    floats = model.encode(TEXTS, **{**kw, "precision": "float32"})
    assert np.array_equal(got, st_quantize(floats, precision))
    # ... and against sentence-transformers' own floats (which differ by ~1e-4,
    # a few hundredths of an int8 step) only values on a bucket's edge move
    if precision.endswith("binary"):
        differ = np.unpackbits((got ^ want).view(np.uint8)).sum()
        assert differ <= 0.01 * got.size * 8, differ
    else:
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.05, (diff > 0).mean()


def test_output_shapes_and_conversions(model, st_model):
    import torch

    one = model.encode("just one text", prompt_name="query")
    close(one, st_model.encode("just one text", prompt_name="query"))
    assert one.shape == (model.n_embd,)
    empty, st_empty = model.encode([]), st_model.encode([])
    assert empty.shape == st_empty.shape == (0,)
    t = model.encode(TEXTS[:3], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (3, model.n_embd)
    rows = model.encode(TEXTS[:3], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 3 and all(isinstance(r, torch.Tensor) for r in rows)
    assert np.array_equal(torch.stack(rows).numpy(), t.numpy())
    # numpy arrays and tuples as input; sentences= (the older keyword)
    assert np.array_equal(model.encode(np.array(TEXTS[:3])), t.numpy())
    assert np.array_equal(model.encode(sentences=tuple(TEXTS[:3])), t.numpy())


def test_batch_size_does_not_change_vectors(model):
    """batch_size is texts per engine call: the vectors stay those of one
    embed call (up to the float rounding of a different packing, as in
    test_embed's batch-composition test)."""
    base = model.encode(TEXTS, batch_size=32)
    np.testing.assert_array_equal(base, model.embed(TEXTS, role="query"))
    for bs in (1, 5, 1000):
        close(model.encode(TEXTS, batch_size=bs), base.astype(np.float64), atol=1e-4)


def test_progress_bar(model, capsys):
    model.encode(TEXTS, batch_size=5, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "encode" in err and f"{len(TEXTS)}/{len(TEXTS)}" in err


def test_task_argument(make_gguf):
    with jv4.Embedder(models={t: make_gguf(task=t) for t in jv4.TASKS}) as emb:
        for task in jv4.TASKS:
            for role in jv4.ROLES:
                got = emb.encode(TEXTS[:6], task=task, prompt_name=role)
                want = emb.embed(TEXTS[:6], task=task, role=role)
                assert np.array_equal(got, want), (task, role)
        # text-matching is symmetric: its only prompt is "Query: "
        assert np.array_equal(emb.encode(TEXTS[:4], task="text-matching", prompt="Query: ", prompt_name="passage"),
                              emb.embed(TEXTS[:4], task="text-matching", role="passage"))
        with pytest.raises(ValueError, match="not a prompt of task 'text-matching'"):
            emb.encode(TEXTS[:2], task="text-matching", prompt="Passage: ")
        with pytest.raises(ValueError, match="task must be one of"):
            emb.encode(TEXTS[:2], task="qa")


def test_models_without_prompts(vocab, weights, st_model, tmp_path):
    """A non-jina model has no prompts: prompt_name is refused as
    sentence-transformers refuses an unknown one; prompt= is text."""
    import modelgen as mg

    path = tmp_path / "tiny-qwen2-embedder.gguf"
    mg.write_gguf(path, weights, mg.TINY, vocab, name="tiny-qwen2-embedder")
    m = jv4.Model(path)
    assert m.task is None and m.info["jina_v4"] is False
    with pytest.raises(ValueError, match="prompt_name 'query' is not one of this model's prompts"):
        m.encode(TEXTS[:2], prompt_name="query")
    close(m.encode(TEXTS[:4], prompt="Passage: "), st_model.encode(TEXTS[:4], prompt="Passage: "))
    close(m.encode(TEXTS[:4]), st_model.encode(TEXTS[:4]))  # no prompt at all


@pytest.mark.parametrize("kwargs,error,words", [
    ({"output_value": "token_embeddings"}, ValueError, "output_value='token_embeddings' is not supported"),
    ({"output_value": None}, ValueError, "output_value=None is not supported"),
    ({"device": "cuda"}, ValueError, "device='cuda' is not supported"),
    ({"pool": {}}, ValueError, "pool={} is not supported"),
    ({"chunk_size": 8}, ValueError, "chunk_size=8 is not supported"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"truncate_dim": 0}, ValueError, "truncate_dim must be a positive int"),
    ({"precision": "int4"}, ValueError, "precision must be one of"),
    ({"prompt_name": "document"}, ValueError, r"prompt_name 'document' is not one of this model's prompts \['query', 'passage'\]"),
    ({"prompt": "Represent this: "}, ValueError, "not a prompt of task 'retrieval'"),
    ({"max_seq_length": 8}, TypeError, "keyword arguments jv4 does not take: max_seq_length"),
    ({"task": 3}, TypeError, "task must be a str"),
])
def test_unsupported_arguments_raise_naming_them(model, kwargs, error, words):
    with pytest.raises(error, match=words):
        model.encode(TEXTS[:2], **kwargs)


def test_bad_inputs(model):
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a str"):
        model.encode(["a", 3])
    with pytest.raises(TypeError, match="needs inputs"):
        model.encode()
