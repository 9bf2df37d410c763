"""Importance matrices: jv4.imatrix's statistics against transformers' own
activations (forward hooks on every linear), the file in llama.cpp's GGUF
imatrix layout (read back with the gguf package), and quantization with
it: the types llama.cpp quantizes only with an imatrix work end to end, and
the types it allows both ways come out closer to the F32 model with one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jv4
from conftest import cosines
from corpus import CORPUS

pytestmark = pytest.mark.numerics

CALIBRATION = CORPUS[:30]
HELD_OUT = CORPUS[30:]
LINEARS = {  # GGUF name -> transformers module
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@pytest.fixture(scope="module")
def f32(make_gguf):
    return make_gguf(dtype="F32")


@pytest.fixture(scope="module")
def imatrix_file(f32, tmp_path_factory):
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    seen = jv4.imatrix(f32, CALIBRATION, path, role="passage")
    assert set(seen) == {f"blk.{i}.{g}.weight" for i in range(2) for g in LINEARS}
    return path


def read_imatrix(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    t = {x.name: np.array(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    return r, t


def test_sums_of_squares_match_transformers_activations(imatrix_file, hf_model, ref_tokenizer):
    """in_sum2[j] = sum over calibration tokens of (input column j)^2 of each
    weight, counts = tokens: computed here from hooks on transformers' linears."""
    import torch

    sums: dict = {}
    hooks = []
    for i, layer in enumerate(hf_model.layers):
        for g, module in LINEARS.items():
            lin = layer.get_submodule(module)

            def hook(_m, inputs, _out, key=f"blk.{i}.{g}.weight"):
                x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
                s, n = sums.get(key, (0.0, 0))
                sums[key] = (s + (x * x).sum(0).numpy(), n + x.shape[0])
            hooks.append(lin.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for text in CALIBRATION:
                ids = ref_tokenizer.encode("Passage: " + text, add_special_tokens=False).ids
                hf_model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    _, t = read_imatrix(imatrix_file)
    for key, (want, n) in sums.items():
        assert t[key + ".counts"][0] == n
        np.testing.assert_allclose(t[key + ".in_sum2"], want, rtol=2e-3, atol=1e-4)


def test_file_is_llama_cpp_imatrix_gguf(imatrix_file):
    r, t = read_imatrix(imatrix_file)
    f = r.fields
    assert bytes(f["general.type"].parts[-1]).decode() == "imatrix"
    assert f["imatrix.chunk_count"].parts[-1][0] == len(CALIBRATION)
    assert "imatrix.chunk_size" in f and "imatrix.datasets" in f
    # one matrix a weight: [n_in, 1] and [1, 1], which GGUF stores without the trailing 1
    for x in r.tensors:
        assert x.tensor_type.name == "F32"
        if x.name.endswith(".in_sum2"):
            assert [int(d) for d in x.shape] == [256 if "ffn_down" not in x.name else 512]
        else:
            assert x.name.endswith(".counts") and [int(d) for d in x.shape] == [1]


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ1_S"])
def test_types_that_need_an_imatrix(f32, imatrix_file, tmp_path, qtype, reference):
    out = tmp_path / f"m-{qtype}.gguf"
    with pytest.raises(ValueError, match=f"{qtype} needs an importance matrix: .*imatrix="):
        jv4.quantize(f32, out, qtype)
    assert not out.exists()
    jv4.quantize(f32, out, qtype, imatrix=imatrix_file)
    m = jv4.Model(out)
    got = m.embed(HELD_OUT, role="passage")
    cos = cosines(got, reference(HELD_OUT, "Passage: "))
    print(f"{qtype} with imatrix: cosine to the F32 reference mean {cos.mean():.4f}, min {cos.min():.4f}")
    assert np.isfinite(got).all()
    assert cos.mean() > 0.5  # 1-2 bit weights drift far on a tiny random model; recorded in docs/benchmarks.md


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K_M", "IQ3_S"])
def test_imatrix_brings_types_that_allow_both_closer(f32, imatrix_file, tmp_path, qtype, reference):
    ref = reference(HELD_OUT, "Passage: ")
    cos = {}
    for label, im in (("without", None), ("with", imatrix_file)):
        out = tmp_path / f"m-{qtype}-{label}.gguf"
        jv4.quantize(f32, out, qtype, imatrix=im)
        cos[label] = float(cosines(jv4.Model(out).embed(HELD_OUT, role="passage"), ref).mean())
    print(qtype, cos)
    assert cos["with"] > cos["without"]


def test_bad_imatrix_files_are_refused(f32, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(jv4.ModelLoadError, match="not an importance matrix in llama.cpp's GGUF format"):
        jv4.quantize(f32, tmp_path / "x.gguf", "Q4_K_M", imatrix=bad)
    with pytest.raises(FileNotFoundError):
        jv4.quantize(f32, tmp_path / "x.gguf", "Q4_K_M", imatrix=tmp_path / "missing.gguf")
    with pytest.raises(jv4.ModelLoadError, match="holds no importance matrix entries"):
        jv4.quantize(f32, tmp_path / "x.gguf", "Q4_K_M", imatrix=f32)  # a model is not an imatrix
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(TypeError, match="texts must be a list"):
        jv4.imatrix(f32, "one text", tmp_path / "i.gguf")
    with pytest.raises(ValueError, match="at least one calibration text"):
        jv4.imatrix(f32, [], tmp_path / "i.gguf")


def test_cli_imatrix_then_quantize(f32, tmp_path):
    calib = tmp_path / "calib.txt"
    lines = [t.replace("\n", " ") for t in CALIBRATION]
    calib.write_text("\n".join(lines) + "\n\n")  # blank lines are skipped
    im = tmp_path / "im.gguf"
    run = [sys.executable, "-m", "jv4"]
    r = subprocess.run(run + ["imatrix", str(f32), "-i", str(calib), "-o", str(im)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"14 weights, {sum(1 for x in lines if x.strip())} texts" in r.stderr
    r = subprocess.run(run + ["quantize", str(f32), str(tmp_path / "q.gguf"), "IQ2_XXS"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "IQ2_XXS needs an importance matrix" in r.stderr
    r = subprocess.run(run + ["quantize", str(f32), str(tmp_path / "q.gguf"), "IQ2_XXS", "--imatrix", str(im)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert jv4.Model(tmp_path / "q.gguf").info["file_type"].startswith("IQ2_XXS")


def test_imatrix_of_a_deep_model_is_written(tmp_path):
    """280 weights (40 layers): the file's tensor context once overflowed
    (an abort) on the v4 shape's 252; run in a child so that a regression
    fails this test instead of ending the suite."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import jv4, modelgen as mg\n"
        "vocab = mg.Vocab().head(1000)\n"
        "shape = mg.Shape(hidden=256, layers=40, heads=4, kv_heads=2, ffn=512)\n"
        "p = mg.write_gguf(sys.argv[2] + '/m.gguf', mg.random_weights(shape, vocab.size), shape, vocab)\n"
        "print(len(jv4.imatrix(p, ['hello world', 'more text'], sys.argv[2] + '/im.gguf')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "280"
    import gguf

    assert len(gguf.GGUFReader(str(tmp_path / "im.gguf")).tensors) == 560
