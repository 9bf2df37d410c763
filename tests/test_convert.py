"""jv4 convert: a synthetic jina-embeddings-v4 checkpoint (ckptgen) converted
to base + per-task LoRA + projectors, compared with transformers' forward pass
of the same weights with the task's LoRA merged by plain arithmetic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import ckptgen as cg
from conftest import cosines

import jv4
from jv4 import _core
from jv4.checkpoint import ConversionError

TEXTS = ["What is a GGUF file?", "The quick brown fox jumps over the lazy dog.",
         "def add(a, b):\n    return a + b", "Ünïcödé — 東京 🚀", "x"]


@pytest.fixture(scope="session")
def ckpt(vocab, tmp_path_factory):
    return cg.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "nested", vocab, layout="nested")


@pytest.fixture(scope="session")
def ref(ckpt, ref_tokenizer):
    return cg.Reference(ckpt, ref_tokenizer)


@pytest.fixture(scope="session")
def converted(ckpt, tmp_path_factory):
    """converted(outtype="f32", merge=None) -> output folder (cached)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("converted")

    def make(outtype="f32", merge=None):
        key = (outtype, merge)
        if key not in cache:
            out = root / f"{outtype}-{merge or 'base'}"
            jv4.convert(ckpt.root, out, outtype=outtype, merge=merge)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def base_f32(converted):
    return jv4.Model(converted("f32"))


def prefix(task, role):
    return _core.jina_prefix(task, role)


# --- acceptance 1: fidelity -----------------------------------------------------
@pytest.mark.parametrize("task", jv4.TASKS)
@pytest.mark.parametrize("role", jv4.ROLES)
@pytest.mark.parametrize("dim", [None, 128])
@pytest.mark.numerics
def test_f32_base_plus_adapter_matches_reference(base_f32, ref, task, role, dim):
    got = base_f32.embed(TEXTS, task=task, role=role, dim=dim)
    want = ref.single(task, TEXTS, prefix(task, role), dim)
    assert got.shape == want.shape
    assert cosines(got, want).min() >= 0.99999


@pytest.mark.parametrize("task", jv4.TASKS)
@pytest.mark.parametrize("role", jv4.ROLES)
@pytest.mark.parametrize("dim", [None, 256])
@pytest.mark.numerics
def test_f16_base_plus_adapter_matches_reference(converted, ref, task, role, dim):
    model = jv4.Model(converted("f16"))
    got = model.embed(TEXTS, task=task, role=role, dim=dim)
    assert cosines(got, ref.single(task, TEXTS, prefix(task, role), dim)).min() >= 0.9999


def test_adapters_matter(base_f32):
    """The tasks' vectors differ (so the adapter really is applied per task)."""
    v = {t: base_f32.embed(TEXTS, task=t, role="query") for t in jv4.TASKS}
    assert cosines(v["retrieval"], v["code"]).max() < 0.99
    assert cosines(v["retrieval"], v["text-matching"]).max() < 0.99


@pytest.mark.parametrize("task", jv4.TASKS)
@pytest.mark.numerics
def test_multivector_matches_reference_token_by_token(base_f32, ref, task):
    mv = base_f32.embed_multivector(TEXTS, task=task, role="passage")
    assert len(mv) == len(TEXTS) and mv.width == 128
    for i, text in enumerate(TEXTS):
        want = ref.multi(task, text, prefix(task, "passage"))
        assert mv[i].shape == want.shape  # every token kept, the prefix's too
        assert cosines(mv[i], want).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(mv[i], axis=1), 1.0, rtol=1e-5)
    # the single vectors of the same forward pass are embed()'s
    np.testing.assert_allclose(mv.pooled, base_f32.embed(TEXTS, task=task, role="passage"), atol=1e-6)


@pytest.mark.numerics
def test_multivector_over_several_decodes_and_chunks(converted, ref):
    """Texts longer than one decode (chunked against the KV cache) and many
    texts packed together keep every token's vector."""
    model = jv4.Model(converted("f32"), batch_tokens=16)
    long = " ".join(f"word{i}" for i in range(40))
    texts = [long, "short", long[:50], "mid length text here"] * 3
    mv = model.embed_multivector(texts, task="retrieval", role="query")
    assert mv.data.flags.c_contiguous and mv.offsets.dtype == np.int64
    for i, t in enumerate(texts):
        want = ref.multi("retrieval", t, "Query: ")
        assert mv[i].shape == want.shape
        assert cosines(mv[i], want).min() >= 0.9999


def test_bf16_checkpoint_is_read_exactly(vocab, ref_tokenizer, tmp_path):
    """A BF16 checkpoint (the real one is BF16): values widened exactly."""
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, layout="flat", dtype="BF16", seed=3)
    jv4.convert(ck.root, tmp_path / "out", outtype="f32")
    model = jv4.Model(tmp_path / "out")
    r = cg.Reference(ck, ref_tokenizer)
    for task in jv4.TASKS:
        got = model.embed(TEXTS, task=task, role="query")
        assert cosines(got, r.single(task, TEXTS, "Query: ")).min() >= 0.99999


def test_flat_layout_with_default_adapter_names(vocab, ref_tokenizer, tmp_path):
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, layout="flat", seed=5)
    jv4.convert(ck.root, tmp_path / "out", outtype="f32")
    model = jv4.Model(tmp_path / "out")
    r = cg.Reference(ck, ref_tokenizer)
    got = model.embed_multivector(TEXTS[:2], task="code", role="query")
    assert cosines(got[1], r.multi("code", TEXTS[1], "Query: ")).min() >= 0.9999


@pytest.mark.parametrize("outtype,bound", [("bf16", 0.999), ("q8_0", 0.99)])
@pytest.mark.numerics
def test_lower_outtypes_load_and_stay_close(converted, ref, outtype, bound):
    model = jv4.Model(converted(outtype))
    assert model.info["file_type"] == outtype.upper()  # llama.cpp's name of the weight type
    for task in jv4.TASKS:
        got = model.embed(TEXTS, task=task, role="passage")
        assert cosines(got, ref.single(task, TEXTS, prefix(task, "passage"))).min() >= bound


# --- acceptance 2: switching ------------------------------------------------------
@pytest.fixture(scope="session")
def merged(converted):
    return {t: jv4.Model(converted("f32", t)) for t in jv4.TASKS}


@pytest.mark.numerics
def test_merged_model_agrees_with_base_plus_adapter(base_f32, merged, ref):
    for task, m in merged.items():
        assert m.task == task and m.tasks == [task]
        for role in jv4.ROLES:
            a = m.embed(TEXTS, role=role)
            b = base_f32.embed(TEXTS, task=task, role=role)
            assert cosines(a, b).min() >= 0.9999
            assert cosines(a, ref.single(task, TEXTS, prefix(task, role))).min() >= 0.99999


def test_interleaved_tasks_from_several_threads(converted, merged):
    model = jv4.Model(converted("f32"), n_threads=1)
    want = {t: merged[t].embed(TEXTS, role="passage") for t in jv4.TASKS}
    # interleaved in one thread
    for task in ["code", "retrieval", "code", "text-matching", "retrieval", "text-matching"]:
        assert cosines(model.embed(TEXTS, task=task, role="passage"), want[task]).min() >= 0.9999
    # and from four threads at once
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(12):
                task = jv4.TASKS[int(rng.integers(3))]
                got = model.embed(TEXTS, task=task, role="passage")
                if cosines(got, want[task]).min() < 0.9999:
                    errors.append(task)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_projector_next_to_a_merged_official_style_file(converted, base_f32):
    folder = converted("f32", "code")
    manifest = json.loads((folder / "jv4.json").read_text())
    m = jv4.Model(folder / manifest["merged"], projector=folder / manifest["projector"])
    assert m.multivector_tasks == list(jv4.TASKS)
    a = m.embed_multivector(TEXTS, role="query")
    b = base_f32.embed_multivector(TEXTS, task="code", role="query")
    assert np.array_equal(a.offsets, b.offsets)
    assert cosines(a.data, b.data).min() >= 0.9999


# --- acceptance 4: refused checkpoints, nothing written ----------------------------
def _edit_adapters(root: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    path = root / "adapters" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _edit_base(root: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    for path in sorted(root.glob("*.safetensors")):
        tensors = load_file(str(path))
        if edit(tensors):
            save_file(tensors, str(path))


@pytest.mark.parametrize("damage,message", [
    ("unknown_adapter_key", "adapter key(s) match no known layout"),
    ("missing_projector", "no multi_vector_projector"),
    ("wrong_shape", "wrong shape"),
    ("wrong_adapter_shape", "wrong adapter tensors"),
    ("unpaired_adapter", "without its pair"),
    ("unknown_base_key", "unknown role"),
])
def test_bad_checkpoint_is_refused_naming_the_problem(vocab, tmp_path, damage, message):
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, seed=7)
    root = ck.root
    if damage == "unknown_adapter_key":
        _edit_adapters(root, lambda t: t.update({"base_model.model.model.language_model.layers.0.mlp.gate_proj."
                                                 "lora_A.summarization.weight": np.zeros((8, 256), np.float32)}))
    elif damage == "missing_projector":
        _edit_base(root, lambda t: [t.pop(k) for k in list(t) if k.startswith("multi_vector_projector")])
    elif damage == "wrong_shape":
        def cut(t):
            k = "model.language_model.layers.1.mlp.up_proj.weight"
            if k in t:
                t[k] = t[k][:-1]
                return True
        _edit_base(root, cut)
    elif damage == "wrong_adapter_shape":
        k = "base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_B.code.weight"
        _edit_adapters(root, lambda t: t.update({k: np.ones((7, 8), np.float32)}))
    elif damage == "unpaired_adapter":
        k = "base_model.model.model.language_model.layers.0.self_attn.o_proj.lora_B.retrieval.weight"
        _edit_adapters(root, lambda t: t.pop(k))
    elif damage == "unknown_base_key":
        added = []

        def extra(t):
            if not added:
                t["model.language_model.layers.0.mlp.extra.weight"] = np.zeros(4, np.float32)
                added.append(1)
                return True
        _edit_base(root, extra)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=re.escape(message)) as info:
        jv4.convert(root, out, outtype="f16")
    print(info.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no partial folder either


def test_output_folder_must_be_new_or_empty(ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not an empty folder"):
        jv4.convert(ckpt.root, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="outtype must be one of f32, f16, bf16, q8_0"):
        jv4.convert(ckpt.root, tmp_path / "new", outtype="q4_k")
    with pytest.raises(ValueError, match="merge must be one of"):
        jv4.convert(ckpt.root, tmp_path / "new", merge="summarize")


# --- loading errors --------------------------------------------------------------
def test_base_model_needs_a_task_and_its_adapters(converted):
    folder = converted("f32")
    manifest = json.loads((folder / "jv4.json").read_text())
    base = folder / manifest["base"]
    alone = jv4.Model(base)
    assert alone.info["base"] is True and alone.tasks == []
    with pytest.raises(ValueError, match="without its task adapters"):
        alone.embed("x", task="retrieval")
    two = jv4.Model(base, adapters=[folder / manifest["adapters"]["code"], folder / manifest["adapters"]["retrieval"]])
    assert two.tasks == ["retrieval", "code"]
    with pytest.raises(ValueError, match="serves several tasks; pass task= one of 'retrieval', 'code'"):
        two.embed("x")
    with pytest.raises(ValueError, match="no adapter for task='text-matching' was loaded"):
        two.embed("x", task="text-matching")
    one = jv4.Model(base, adapters={"code": folder / manifest["adapters"]["code"]})
    assert one.embed("x").shape == (256,)  # the only task is the default
    with pytest.raises(ValueError, match="multi-vector output needs the projector file"):
        one.embed_multivector("x")
    with pytest.raises(jv4.ModelLoadError, match="is the adapter of task 'code', given for task 'retrieval'"):
        jv4.Model(base, adapters={"retrieval": folder / manifest["adapters"]["code"]})
    with pytest.raises(jv4.ModelLoadError, match="a second adapter for task 'code'"):
        jv4.Model(base, adapters=[folder / manifest["adapters"]["code"]] * 2)
    with pytest.raises(ValueError, match="adapter task must be one of 'retrieval', 'text-matching', 'code'"):
        jv4.Model(base, adapters={"summary": folder / manifest["adapters"]["code"]})
    with pytest.raises(TypeError, match="adapters must be"):
        jv4.Model(base, adapters=3)
    with pytest.raises(jv4.ModelLoadError, match="not a jina-embeddings-v4 task adapter|cannot load it as a LoRA"):
        jv4.Model(base, adapters=[base])


def test_adapters_are_refused_on_a_merged_model(converted):
    folder = converted("f32")
    adapter = folder / json.loads((folder / "jv4.json").read_text())["adapters"]["code"]
    merged_folder = converted("f32", "code")
    merged = merged_folder / json.loads((merged_folder / "jv4.json").read_text())["merged"]
    with pytest.raises(jv4.ModelLoadError, match="go with a jina-embeddings-v4 base model"):
        jv4.Model(merged, adapters=[adapter])


# --- the command ---------------------------------------------------------------------
def test_cli_convert_then_embed(ckpt, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "jv4", "convert", str(ckpt.root), str(out), "--outtype", "f16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "jina-embeddings-v4-base-F16.gguf", "jina-embeddings-v4-lora-retrieval.gguf",
        "jina-embeddings-v4-lora-text-matching.gguf", "jina-embeddings-v4-lora-code.gguf",
        "jina-embeddings-v4-projector.gguf", "jina-embeddings-v4-mmproj-F16.gguf", "jv4.json"])
    r = subprocess.run([sys.executable, "-m", "jv4", "embed", "-m", str(out), "--task", "code", "hello"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout.splitlines()[0])["embedding"]) == 256
    r = subprocess.run([sys.executable, "-m", "jv4", "convert", str(ckpt.root), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not an empty folder" in r.stderr
