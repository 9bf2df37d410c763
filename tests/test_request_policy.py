"""The request policy alone (csrc/engine/request.cpp through
jv4._core._stages.resolve_request): a model's facts and a call's arguments
in; the task, the prefix and the width out, or jv4.ArgumentError naming the
argument. Each row is a rule docs/usage.md and the reference state (the
task/role prefixes of jina-embeddings-v4's model card, its Matryoshka
widths, one task per merged file, a base serving its adapters' tasks),
written here from those, not from the code's output."""

from __future__ import annotations

import pytest

import jv4
from jv4 import _core

resolve = _core._stages.resolve_request
MATRYOSHKA = [128, 256, 512, 1024, 2048]

# what a model is: (jina_v4, base, its file's task, adapters, projectors, n_embd, vision)
MERGED = dict(path="m/jina-embeddings-v4-text-code-F16.gguf", jina_v4=True, base=False, task_of_file="code",
              adapters=[], projectors=["code"], n_embd=2048, vision=False)
UNKNOWN = dict(MERGED, path="m/model.gguf", task_of_file="", projectors=[])
BASE = dict(path="f/jina-embeddings-v4-base-F16.gguf", jina_v4=True, base=True, task_of_file="",
            adapters=["retrieval", "text-matching", "code"], projectors=["retrieval", "text-matching", "code"],
            n_embd=2048, vision=True)
BASE_ONE = dict(BASE, adapters=["retrieval"], projectors=[], vision=False)
BASE_NONE = dict(BASE, adapters=[])
OTHER = dict(path="m/bge.gguf", jina_v4=False, base=False, task_of_file="", adapters=[], projectors=[],
             n_embd=384, vision=False)
SMALL = dict(MERGED, n_embd=256)

CALL = dict(task=None, role="query", dim=None, multivector=False, images=False)

# (model, call) -> (task, prefix, dim)
TABLE = [
    # a merged file: its own task; the model card's prefixes
    (MERGED, {}, ("code", "Query: ", 2048)),
    (MERGED, {"role": "passage"}, ("code", "Passage: ", 2048)),
    (MERGED, {"task": "code", "dim": 128}, ("code", "Query: ", 128)),
    (MERGED, {"multivector": True}, ("code", "Query: ", 2048)),
    # a base: the asked task's adapter; text-matching is symmetric ("Query: " for both roles)
    (BASE, {"task": "retrieval", "role": "passage"}, ("retrieval", "Passage: ", 2048)),
    (BASE, {"task": "text-matching", "role": "passage"}, ("text-matching", "Query: ", 2048)),
    (BASE, {"task": "code", "dim": 512, "multivector": True}, ("code", "Query: ", 512)),
    # a base with one adapter serves that task without being told
    (BASE_ONE, {}, ("retrieval", "Query: ", 2048)),
    # images: no prefix whatever the role would be; the task picks the adapter
    (BASE, {"task": "code", "images": True}, ("code", "", 2048)),
    (BASE, {"task": "retrieval", "images": True, "multivector": True, "dim": 256}, ("retrieval", "", 256)),
    # another model family: no task, no prefix, any width up to its own
    (OTHER, {}, ("", "", 384)),
    (OTHER, {"dim": 7}, ("", "", 7)),
]


@pytest.mark.parametrize("model, call, expected", TABLE)
def test_table(model, call, expected):
    task, prefix, dim, _ = resolve(**model, **{**CALL, **call})
    assert (task, prefix, dim) == expected


def test_allowed_widths():
    assert resolve(**MERGED, **CALL)[3] == MATRYOSHKA
    assert resolve(**SMALL, **CALL)[3] == [128, 256]  # the trained widths up to the model's
    assert resolve(**OTHER, **CALL)[3] == list(range(1, 385))


# (model, call) -> (param, words of the message)
REFUSED = [
    (MERGED, {"task": "summarize"}, "task", "task must be one of 'retrieval', 'text-matching', 'code'"),
    (MERGED, {"role": "document"}, "role", "role must be one of 'query', 'passage'"),
    (MERGED, {"task": "retrieval"}, "task", "load jina-embeddings-v4-text-retrieval-F16.gguf for task='retrieval'"),
    (UNKNOWN, {}, "task", "cannot tell which jina-embeddings-v4 task"),
    (BASE, {}, "task", "this model serves several tasks"),
    (BASE_ONE, {"task": "code"}, "task", "no adapter for task='code' was loaded (loaded: 'retrieval')"),
    (BASE_NONE, {"task": "code"}, "task", "base model without its task adapters"),
    (MERGED, {"dim": 100}, "dim", "dim must be one of 128, 256, 512, 1024, 2048"),
    (SMALL, {"dim": 512}, "dim", "dim must be one of 128, 256 (or None for 256)"),
    (OTHER, {"dim": 385}, "dim", "dim must be one of 1..384"),
    (OTHER, {"task": "code"}, "task", "task applies only to jina-embeddings-v4 models"),
    (OTHER, {"role": "passage"}, "role", "role applies only to jina-embeddings-v4 models"),
    (OTHER, {"multivector": True}, "multivector", "multi-vector output is a jina-embeddings-v4 feature"),
    (UNKNOWN, {"task": "code", "multivector": True}, "multivector", "needs the projector file"),
    (MERGED, {"multivector": True, "task": "code", "dim": 128, "role": "passage"}, None, None),  # allowed
    (BASE_ONE, {"multivector": True}, "multivector", "needs the projector file"),
    (MERGED, {"images": True}, "images", "loaded without its vision tower"),
]


@pytest.mark.parametrize("model, call, param, words", REFUSED)
def test_refusals_name_the_argument(model, call, param, words):
    if param is None:
        resolve(**model, **{**CALL, **call})
        return
    with pytest.raises(jv4.ArgumentError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        resolve(**model, **{**CALL, **call})
    assert e.value.param == param
    assert isinstance(e.value, ValueError)  # what callers catch


def test_a_model_answers_with_the_same_policy(make_gguf):
    m = jv4.Model(make_gguf(task="code"))
    assert m.check_request() == {"task": "code", "prefix": "Query: ", "dim": m.n_embd}
    assert m.check_request(role="passage", dim=None)["prefix"] == "Passage: "
    with pytest.raises(jv4.ArgumentError, match="load jina-embeddings-v4-text-retrieval") as e:
        m.check_request("retrieval")
    assert e.value.param == "task"
    # the call itself raises the same
    with pytest.raises(jv4.ArgumentError) as e2:
        m.embed(["x"], task="retrieval")
    assert str(e2.value) == str(e.value) and e2.value.param == "task"
