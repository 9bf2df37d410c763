"""Images: a synthetic jina-embeddings-v4 checkpoint with a small but complete
Qwen2.5-VL vision tower (ckptgen) converted by jv4 convert, its images
embedded by jv4 and compared with transformers' Qwen2_5_VLModel fed by
transformers' Qwen2-VL image processor (ckptgen.ImageReference): the span
mean of the jina-v4 image prompt, per task, and the multi-vector output."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import ckptgen as cg
from conftest import build_has

import jv4
from jv4.checkpoint import ConversionError

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("torch")

# (width, height): no resize (multiples of 28), both sides resized, a tall
# strip, one over the budget's max (downscaled), one under its min (upscaled)
SIZES = [(224, 224), (300, 180), (57, 400), (640, 480), (30, 20)]


def picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB picture: smooth colour waves plus noise."""
    rng = np.random.default_rng(seed + 7 * w + h)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    v = 0.5 + 0.4 * np.sin(6 * x + 3 * y + np.arange(3)) + 0.1 * rng.standard_normal((h, w, 3))
    return (255 * np.clip(v, 0, 1)).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(vocab, tmp_path_factory):
    return cg.write_checkpoint(tmp_path_factory.mktemp("img-ckpt") / "nested", vocab, layout="nested")


@pytest.fixture(scope="module")
def folders(ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("img-out")
    return {t: (root / t, jv4.convert(ckpt.root, root / t, outtype=t)) for t in ("f32", "f16")}


@pytest.fixture(scope="module")
def model(folders):
    return jv4.Model(folders["f32"][0])


@pytest.fixture(scope="module")
def ref(ckpt, vocab):
    return cg.ImageReference(ckpt, vocab)


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- conversion ------------------------------------------------------------------
def test_convert_writes_an_mmproj_llama_cpp_loads(folders, model):
    folder, manifest = folders["f32"]
    assert manifest["mmproj"] == "jina-embeddings-v4-mmproj-F32.gguf"
    on_disk = json.loads((folder / "jv4.json").read_text())
    assert on_disk["vision"]["min_pixels"] == cg.PREPROCESSOR["min_pixels"]
    assert on_disk["vision"]["max_pixels"] == cg.PREPROCESSOR["max_pixels"]
    import gguf

    r = gguf.GGUFReader(str(folder / manifest["mmproj"]))
    names = {t.name for t in r.tensors}
    depth = cg.VISION["depth"]
    assert len(names) == 2 + 16 * depth + 1 + 4  # patch x2, per block, post_ln, merger
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.post_ln.weight", "mm.0.weight",
            "mm.2.weight"} <= names
    field = r.fields["clip.projector_type"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2.5vl_merger"
    field = r.fields["clip.vision.n_wa_pattern"]
    assert int(field.parts[field.data[0]][0]) == 2  # fullatt_block_indexes [1, 3]
    # the budget from preprocessor_config.json, in tokens of 28 x 28 pixels
    info = model.info
    assert (info["image_min_tokens"], info["image_max_tokens"]) == (16, 256)
    assert info["mmproj"].endswith(manifest["mmproj"]) and model.has_vision


def test_convert_no_vision_keeps_the_text_output(ckpt, tmp_path):
    m = jv4.convert(ckpt.root, tmp_path / "out", outtype="f32", vision=False)
    assert "mmproj" not in m and "vision" not in m
    assert not list((tmp_path / "out").glob("*mmproj*"))
    model = jv4.Model(tmp_path / "out")
    assert not model.has_vision
    with pytest.raises(ValueError, match="without its vision tower"):
        model.embed_images(picture(56, 56))


def test_convert_flat_layout_visual_prefix(vocab, ref, tmp_path):
    # checkpoints save the tower as visual.* (older transformers) or model.visual.*
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, layout="flat", seed=5)
    jv4.convert(ck.root, tmp_path / "out", outtype="f32")
    m = jv4.Model(tmp_path / "out")
    r = cg.ImageReference(ck, vocab)
    img = PIL.fromarray(picture(300, 180))
    assert cos(m.embed_images(img, task="code"), r.single("code", img)) >= 0.9999


@pytest.mark.parametrize("edit, message", [
    (lambda st: st.pop("model.visual.blocks.1.attn.qkv.bias"), "lacks 1 vision tensor"),
    (lambda st: st.__setitem__("model.visual.merger.mlp.2.bias", np.zeros(7, np.float32)), "wrong shape"),
    (lambda st: st.__setitem__("model.visual.extra.weight", np.zeros(3, np.float32)), "unknown role"),
])
def test_convert_refuses_a_vision_tower_that_does_not_fit(vocab, tmp_path, edit, message):
    from safetensors.numpy import load_file, save_file

    ck = cg.write_checkpoint(tmp_path / "ck", vocab, seed=9)
    for f in ck.root.glob("model-*.safetensors"):
        st = load_file(str(f))
        if any(k.startswith("model.visual.merger") for k in st):
            edit(st)
            save_file(st, str(f))
    with pytest.raises(ConversionError, match=message):
        jv4.convert(ck.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_missing_image_settings(vocab, tmp_path):
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, seed=11)
    (ck.root / "preprocessor_config.json").unlink()
    with pytest.raises(ConversionError, match="preprocessor_config.json"):
        jv4.convert(ck.root, tmp_path / "out")
    cfg = json.loads((ck.root / "config.json").read_text())
    cfg["vision_config"]["fullatt_block_indexes"] = [0, 3]
    (ck.root / "config.json").write_text(json.dumps(cfg))
    (ck.root / "preprocessor_config.json").write_text(json.dumps(cg.PREPROCESSOR))
    with pytest.raises(ConversionError, match="fullatt_block_indexes"):
        jv4.convert(ck.root, tmp_path / "out")


# --- the reference ---------------------------------------------------------------
@pytest.mark.parametrize("task", cg.TASKS)
@pytest.mark.numerics
@pytest.mark.smoke
def test_single_vectors_match_transformers_f32(model, ref, task):
    imgs = [PIL.fromarray(picture(w, h)) for w, h in SIZES]
    got = model.embed_images(imgs, task=task)
    assert got.shape == (len(SIZES), model.n_embd) and got.dtype == np.float32
    for (w, h), img, g in zip(SIZES, imgs, got):
        c = cos(g, ref.single(task, img))
        assert c >= 0.9999, f"{w}x{h} {task}: cos {c}"
    # Matryoshka: the first dims of the same vector, normalised again
    d = model.dims[0]
    cut = model.embed_images(imgs[:2], task=task, dim=d)
    for img, g in zip(imgs[:2], cut):
        assert cos(g, ref.single(task, img, dim=d)) >= 0.9999
        assert abs(np.linalg.norm(g) - 1) < 1e-5


@pytest.mark.numerics
def test_single_vectors_match_transformers_f16(folders, ref):
    m = jv4.Model(folders["f16"][0])
    imgs = [PIL.fromarray(picture(w, h)) for w, h in SIZES[:3]]
    for task in cg.TASKS:
        for img, g in zip(imgs, m.embed_images(imgs, task=task)):
            assert cos(g, ref.single(task, img)) >= 0.999


@pytest.mark.numerics
def test_the_f16_tower_held_as_bf16_and_repacked_keeps_the_f32_towers_vectors(folders, model):
    # The F32 text model with the F16 file's tower: held as BF16 and repacked
    # (the default where the build's CPU code has AVX512-BF16, asked for here
    # so that every build runs it) and kept F16 unrepacked, each against the
    # F32 tower; images with edge windows of every kind (SIZES)
    mm16 = folders["f16"][0] / folders["f16"][1]["mmproj"]
    imgs = [picture(w, h) for w, h in SIZES]
    for f16_as_bf16, repack in ((True, True), (False, False)):
        m = jv4.Model(folders["f32"][0], mmproj=mm16, f16_as_bf16=f16_as_bf16, repack=repack)
        assert (m.info["image_f16_as_bf16"], m.info["image_repack"]) == (f16_as_bf16, repack)
        # the tower held as BF16 attends over BF16 K and V too (the text cache's rule)
        bf16 = f16_as_bf16 and build_has("AVX512_BF16")
        assert m.info["image_attention"] == ("bf16" if bf16 else "f16")
        for task in cg.TASKS:
            got, want = m.embed_images(imgs, task=task), model.embed_images(imgs, task=task)
            for (w, h), g, r in zip(SIZES, got, want):
                assert cos(g, r) >= 0.9999, f"{w}x{h} {task} f16_as_bf16={f16_as_bf16}: cos {cos(g, r)}"


# --- the tower quantized (jv4.quantize on an mmproj) ------------------------------
def _gguf_tensors(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def _field(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]]


@pytest.mark.parametrize("qtype", ["Q8_0", "BF16", "F16"])
def test_quantize_writes_the_mmproj_as_gguf_py_quantizes_it(folders, tmp_path, qtype):
    # gguf-py's own quantizers (gguf.quants, a numpy implementation written
    # to match ggml's) on the F32 file's values are the reference: the same
    # bytes per tensor, the same keys, general.file_type set
    import gguf

    src = folders["f32"][0] / folders["f32"][1]["mmproj"]
    dst = tmp_path / f"mmproj-{qtype}.gguf"
    jv4.quantize(src, dst, qtype)
    assert not list(tmp_path.glob("*.partial"))
    r_in, t_in = _gguf_tensors(src)
    r_out, t_out = _gguf_tensors(dst)
    T = gguf.GGMLQuantizationType
    assert int(_field(r_out, "general.file_type")[0]) == {"Q8_0": 7, "BF16": 32, "F16": 1}[qtype]
    assert set(r_in.fields) == set(r_out.fields)
    for key in r_in.fields:
        if key not in ("general.file_type", "GGUF.tensor_count", "GGUF.kv_count"):
            assert [bytes(p) for p in r_in.fields[key].parts] == [bytes(p) for p in r_out.fields[key].parts], key
    assert list(t_in) == list(t_out)
    for name, t in t_in.items():
        values = np.asarray(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        if values.ndim == 1:
            want = T.F32  # norms and biases
        elif name.startswith("v.patch_embd"):
            want = T.F16  # the convolution runs on F32/F16 kernels
        else:
            want = T[qtype]
        got = t_out[name]
        assert got.tensor_type == want, name
        ref = np.ascontiguousarray(values) if want == T.F32 else gguf.quants.quantize(values, want)
        assert np.asarray(got.data).tobytes() == np.asarray(ref).tobytes(), name


def test_quantize_an_mmproj_refuses_what_the_tower_cannot_take(folders, tmp_path):
    src = folders["f32"][0] / folders["f32"][1]["mmproj"]
    with pytest.raises(ValueError, match=r"is an mmproj .* can be written as F32, F16, BF16, Q8_0, not Q4_K_M"):
        jv4.quantize(src, tmp_path / "q4.gguf", "Q4_K_M")
    (tmp_path / "m.imatrix").write_bytes(b"")
    with pytest.raises(ValueError, match="takes no importance matrix"):
        jv4.quantize(src, tmp_path / "q8.gguf", "Q8_0", imatrix=tmp_path / "m.imatrix")
    # a damaged tower is refused by the tower's own checks, and nothing is written
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import fuzz_gguf as fz

    g = fz.parse(src.read_bytes())
    g.find("clip.vision.block_count").value = 3
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(fz.serialize(g))
    with pytest.raises(jv4.ModelLoadError, match="bad.gguf: .*unexpected tensor v.blk.3"):
        jv4.quantize(bad, tmp_path / "bad-q8.gguf", "Q8_0")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(src.read_bytes()[:-1000])
    with pytest.raises(jv4.ModelLoadError, match="truncated"):
        jv4.quantize(truncated, tmp_path / "t-q8.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "m.imatrix", "truncated.gguf"]
    # the command: one error line, exit 2; and the same file written as the function writes it
    import subprocess

    cmd = [sys.executable, "-m", "jv4", "quantize", str(src)]
    run = subprocess.run(cmd + [str(tmp_path / "q4.gguf"), "Q4_K_M"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("jv4: error: ") and "F32, F16, BF16, Q8_0" in run.stderr
    run = subprocess.run(cmd + [str(tmp_path / "cli.gguf"), "Q8_0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    jv4.quantize(src, tmp_path / "api.gguf", "Q8_0")
    assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "api.gguf").read_bytes()


@pytest.mark.numerics
def test_the_q8_0_tower_is_close_to_the_f32_tower(folders, model, tmp_path):
    # The F32 text model with the F32 file's tower quantized to Q8_0 by
    # jv4.quantize, repacked for jv4's VNNI kernel (where the build has it)
    # and not, against the F32 tower; docs/usage.md quotes what this measures
    src = folders["f32"][0] / folders["f32"][1]["mmproj"]
    q8 = tmp_path / "mmproj-Q8_0.gguf"
    jv4.quantize(src, q8, "Q8_0")
    imgs = [picture(w, h) for w, h in SIZES]
    worst = 1.0
    for repack in (True, False):
        m = jv4.Model(folders["f32"][0], mmproj=q8, repack=repack)
        assert m.info["image_repack"] == repack
        for task in cg.TASKS:
            got, want = m.embed_images(imgs, task=task), model.embed_images(imgs, task=task)
            for (w, h), g, r in zip(SIZES, got, want):
                worst = min(worst, cos(g, r))
                assert cos(g, r) >= 0.999, f"{w}x{h} {task} repack={repack}: cos {cos(g, r)}"
    print(f"Q8_0 tower against the F32 tower: worst cos {worst:.6f}")


@pytest.mark.numerics
def test_a_q8_0_tower_widens_an_ffn_q8_0_blocks_do_not_fill(vocab, tmp_path, monkeypatch):
    # v4's FFN is 3420 wide: ffn_down's rows (3420 values) are not a multiple
    # of Q8_0's 32-value blocks. jv4.quantize widens the FFN with zeros to
    # the next whole block (zero rows and biases in gate/up, zero columns in
    # down: the same function) and writes all of it Q8_0; the same here with
    # 136 -> 160, each tensor against gguf-py's quantizer on the zero-padded
    # F32 values, the vectors against the F32 tower. v4's heads are 80 wide,
    # a multiple of 16 but not of 32 (the BF16 attention's K packing and V
    # columns have a rest): 48 here.
    import gguf

    monkeypatch.setitem(cg.VISION, "intermediate_size", 136)
    monkeypatch.setitem(cg.VISION, "hidden_size", 96)
    ck = cg.write_checkpoint(tmp_path / "ckpt", vocab, layout="nested")
    folder = tmp_path / "f32"
    files = jv4.convert(ck.root, folder, outtype="f32")
    q8 = tmp_path / "mmproj-Q8_0.gguf"
    jv4.quantize(folder / files["mmproj"], q8, "Q8_0")
    r, t = _gguf_tensors(q8)
    _, t32 = _gguf_tensors(folder / files["mmproj"])
    T = gguf.GGMLQuantizationType
    assert int(_field(r, "clip.vision.feed_forward_length")[0]) == 160
    for name in ("v.blk.0.ffn_gate.weight", "v.blk.0.ffn_up.weight", "v.blk.1.ffn_down.weight",
                 "v.blk.0.ffn_gate.bias", "v.blk.2.ffn_up.bias", "v.blk.0.attn_q.weight", "v.blk.0.ffn_down.bias"):
        src = np.asarray(t32[name].data, dtype=np.float32).reshape([int(x) for x in reversed(t32[name].shape)])
        shape = {"ffn_gate.weight": (160, 96), "ffn_up.weight": (160, 96), "ffn_down.weight": (96, 160),
                 "ffn_gate.bias": (160,), "ffn_up.bias": (160,)}.get(name.split(".", 3)[3], src.shape)
        padded = np.zeros(shape, np.float32)
        padded[tuple(slice(0, n) for n in src.shape)] = src
        want = T.F32 if padded.ndim == 1 else T.Q8_0
        assert t[name].tensor_type == want, name
        ref = padded if want == T.F32 else gguf.quants.quantize(padded, want)
        assert np.asarray(t[name].data).tobytes() == np.asarray(ref).tobytes(), name
    # jv4 convert --outtype q8_0 writes the same tower (the rule is stated twice: C++ and Python)
    conv = jv4.convert(ck.root, tmp_path / "q8", outtype="q8_0")
    rc, tc = _gguf_tensors(tmp_path / "q8" / conv["mmproj"])
    assert int(_field(rc, "clip.vision.feed_forward_length")[0]) == 160
    assert list(tc) == list(t)
    for name in t:
        assert (tc[name].tensor_type, np.asarray(tc[name].data).tobytes()) == \
            (t[name].tensor_type, np.asarray(t[name].data).tobytes()), name
    imgs = [picture(w, h) for w, h in SIZES[:3]]
    f32 = jv4.Model(folder)
    m = jv4.Model(folder, mmproj=q8)
    assert f32.info["image_attention"] == "f16"
    assert m.info["image_attention"] == ("bf16" if build_has("AVX512_BF16") else "f16")
    for g, r in zip(m.embed_images(imgs, task="retrieval"), f32.embed_images(imgs, task="retrieval")):
        assert cos(g, r) >= 0.999


@pytest.mark.numerics
def test_multivectors_match_transformers_per_token(model, ref):
    imgs = [PIL.fromarray(picture(w, h)) for w, h in SIZES[:3]]
    mv = model.embed_images_multivector(imgs, task="retrieval")
    assert len(mv) == 3
    single = model.embed_images(imgs, task="retrieval")
    np.testing.assert_allclose(mv.pooled, single, atol=1e-6)
    for img, toks in zip(imgs, mv):
        want = ref.multi("retrieval", img)
        assert toks.shape == want.shape  # every prompt token, image tokens included
        per = (toks.astype(np.float64) * want).sum(1)
        assert per.min() >= 0.999, per.min()


def test_texts_and_images_share_the_space(model):
    q = model.embed("a chart of colour waves", task="retrieval", role="query")
    pages = model.embed_images([picture(224, 224), picture(300, 180)], task="retrieval")
    scores = pages @ q  # the retrieval score: one row per page
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert pages.shape[1] == q.shape[0] == model.n_embd


# --- inputs ----------------------------------------------------------------------
def test_path_bytes_pil_and_numpy_give_the_same_vector(model, tmp_path):
    arr = picture(300, 180)
    data = png(arr)
    path = tmp_path / "page.png"
    path.write_bytes(data)
    ways = [str(path), path, data, bytearray(data), PIL.fromarray(arr), arr]
    out = [model.embed_images(x, task="retrieval") for x in ways]
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])
    # RGBA: alpha over white, as transformers' convert_to_rgb; file and PIL agree
    rgba = np.dstack([arr, (np.arange(180 * 300) % 256).astype(np.uint8).reshape(180, 300)])
    a = model.embed_images(png(rgba), task="retrieval")
    b = model.embed_images(PIL.fromarray(rgba, "RGBA"), task="retrieval")
    np.testing.assert_array_equal(a, b)


def test_a_batch_equals_each_image_alone(model):
    arrs = [picture(w, h, seed=3) for w, h in SIZES]
    batch = model.embed_images(arrs, task="text-matching")
    for a, row in zip(arrs, batch):
        assert cos(model.embed_images(a, task="text-matching"), row) >= 0.99999


def test_webp_needs_pillow_and_decodes_with_it(model, monkeypatch):
    arr = picture(120, 90)
    buf = io.BytesIO()
    PIL.fromarray(arr).save(buf, format="WEBP", lossless=True)
    webp = buf.getvalue()
    assert jv4._core.image_format(webp) == ("webp", False)
    np.testing.assert_array_equal(model.embed_images(webp, task="code"), model.embed_images(arr, task="code"))
    import builtins

    real = builtins.__import__

    def no_pil(name, *a, **k):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ValueError, match=r"webp.*jv4\[images\]"):
        model.embed_images(webp, task="code")


def png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize("make, message", [
    (lambda: png(picture(64, 64))[:200], r"image 0 .*(cannot decode|not a readable)"),
    (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, r"image 0 .*(not a readable|cannot decode)"),
    (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 300, r"image 0 .*(not a readable|cannot decode)"),
    (lambda: _jpeg(picture(64, 64))[:300], r"image 0 .*(cannot decode|not a readable)"),
    (lambda: b"", "empty"),
    (lambda: np.zeros((0, 0, 3), np.uint8), "empty"),
    (lambda: png(np.zeros((1, 100000, 3), np.uint8)), "aspect ratio"),
    (lambda: png_header_only(100000, 100000), "limit"),
    (lambda: np.zeros((10, 10), np.uint8), "height x width x 3"),
    (lambda: np.zeros((10, 10, 3), np.float32), "height x width x 3"),
])
def test_bad_images_raise_clear_errors(model, make, message):
    with pytest.raises(ValueError, match=message):
        model.embed_images(make(), task="retrieval")
    # and the model still works
    assert np.isfinite(model.embed_images(picture(40, 40), task="retrieval")).all()


def _jpeg(arr):
    buf = io.BytesIO()
    PIL.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_bad_arguments(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        model.embed_images(str(tmp_path / "missing.png"))
    with pytest.raises(TypeError, match="must be a path"):
        model.embed_images([picture(40, 40), 3.5])
    with pytest.raises(ValueError, match="dim must be one of"):
        model.embed_images(picture(40, 40), task="retrieval", dim=5)
    with pytest.raises(ValueError, match="task"):
        model.embed_images(picture(40, 40), task="nope")
    assert model.embed_images([], task="retrieval").shape == (0, model.n_embd)


def test_mmproj_of_another_model_is_refused(folders, vocab, tmp_path):
    import modelgen as mg

    other = mg.Shape(hidden=128, layers=1, heads=2, kv_heads=1, ffn=128)
    path = mg.write_gguf(tmp_path / "other.gguf", mg.random_weights(other, vocab.size, 1), other, vocab,
                         arch="qwen2vl", name="jina-embeddings-v4-text-retrieval")
    mmproj = folders["f32"][0] / folders["f32"][1]["mmproj"]
    with pytest.raises(jv4.ModelLoadError, match="projection_dim = 256 does not match the text model's width 128"):
        jv4.Model(path, mmproj=mmproj)
    # a qwen2 (1-D RoPE) text model cannot place an image's rows
    flat = mg.write_gguf(tmp_path / "flat.gguf", mg.random_weights(mg.TINY, vocab.size, 1), mg.TINY, vocab,
                         arch="qwen2", name="jina-embeddings-v4-text-retrieval")
    with pytest.raises(jv4.ModelLoadError, match="M-RoPE"):
        jv4.Model(flat, mmproj=mmproj)
    # the text model given where the mmproj goes
    with pytest.raises(jv4.ModelLoadError, match="not 'clip'"):
        jv4.Model(flat, mmproj=flat)


def test_mmproj_with_another_window_size_is_refused(folders, tmp_path):
    # the pinned clip attends in 112-pixel windows whatever the file says
    # (tools/fuzz_gguf.py reads and writes GGUF key by key)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import fuzz_gguf as fz

    folder, files = folders["f32"]
    g = fz.parse((folder / files["mmproj"]).read_bytes())
    assert g.find("clip.vision.window_size").value == jv4._core.QWEN25VL_WINDOW_SIZE
    g.find("clip.vision.window_size").value = 56
    other = tmp_path / "mmproj-56.gguf"
    other.write_bytes(fz.serialize(g))
    with pytest.raises(jv4.ModelLoadError, match="window_size = 56: .* windows of 112 pixels"):
        jv4.Model(folder / files["base"], mmproj=other)


def test_a_vocabulary_without_the_image_prompts_control_tokens_is_refused(tmp_path):
    # Qwen2's first 1000 tokens and its three control tokens: no <|vision_start|>
    import modelgen as mg

    small = mg.Vocab().head(1000)
    assert "<|im_start|>" in small.tokens and "<|vision_start|>" not in small.tokens
    shape = mg.Shape(hidden=64, layers=1, heads=2, kv_heads=1, ffn=128, ctx=4096)
    ck = cg.write_checkpoint(tmp_path / "ck", small, shape=shape, pad_vocab=0, rank=2)
    files = jv4.convert(ck.root, tmp_path / "out", outtype="f16", merge="retrieval")
    with pytest.raises(jv4.ModelLoadError, match=r"vocabulary lacks <\|vision_start\|> as a control token"):
        jv4.Model(tmp_path / "out" / files["merged"], mmproj=tmp_path / "out" / files["mmproj"])


def test_convert_refuses_what_the_engine_would_compute_otherwise(vocab, tmp_path):
    ck = cg.write_checkpoint(tmp_path / "ck", vocab, seed=12)
    good = json.loads((ck.root / "config.json").read_text())

    def refused(edit, message):
        cfg = json.loads(json.dumps(good))
        edit(cfg)
        (ck.root / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConversionError, match=message):
            jv4.convert(ck.root, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    refused(lambda c: c["vision_config"].__setitem__("window_size", 56), "window_size 56: .* windows of 112 pixels")
    refused(lambda c: c["vision_config"].pop("num_heads"), r"lacks num_heads; .*--no-vision")
    refused(lambda c: c.__setitem__("matryoshka_dims", [64, 128, 256]), r"matryoshka_dims \[64, 128, 256\] differ")


@pytest.mark.numerics
def test_image_budget_option(folders, ref):
    folder = folders["f32"][0]
    small = jv4.Model(folder, image_max_tokens=20)
    assert small.info["image_max_tokens"] == 20
    mv = small.embed_images_multivector(picture(640, 480), task="retrieval")
    assert len(mv[0]) - 11 <= 20  # the image's tokens within the budget (+ 11 prompt tokens)
    with pytest.raises(ValueError, match="image_min_tokens"):
        jv4.Model(folder, image_min_tokens=30, image_max_tokens=20)
    with pytest.raises(ValueError, match="mmproj"):
        jv4.Model(folder / "jina-embeddings-v4-base-F32.gguf", image_max_tokens=20)


# --- concurrency and memory ------------------------------------------------------
def test_mixed_text_and_image_calls_from_threads(model):
    texts = [["what is this page about?"], ["Passage text " * 20, "short"]]
    images = [[picture(224, 224)], [picture(57, 400), picture(30, 20)]]
    want_t = [model.embed(t, task="retrieval") for t in texts]
    want_i = [model.embed_images(i, task="retrieval") for i in images]
    errors: list = []

    def work(k):
        try:
            for r in range(6):
                j = (k + r) % 2
                if (k + r) % 3:
                    np.testing.assert_array_equal(model.embed_images(images[j], task="retrieval"), want_i[j])
                else:
                    np.testing.assert_array_equal(model.embed(texts[j], task="retrieval"), want_t[j])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_does_not_grow_over_1000_image_calls(model):
    img = png(picture(60, 40))
    for _ in range(100):  # warm: allocator pools, contexts
        model.embed_images(img, task="retrieval")
    before = _rss_mb()
    for _ in range(1000):
        model.embed_images(img, task="retrieval")
    grown = _rss_mb() - before
    assert grown < 8, f"RSS grew {grown:.1f} MB over 1000 image calls"


def test_progress_counts_images(model):
    seen = []
    model._m.embed_images([("rgb", "a", picture(40, 40)), ("rgb", "b", picture(50, 30))], "retrieval", None,
                          False, lambda n, tok, total: seen.append(n))
    assert seen and seen[-1] == 2


# --- the command and the Embedder --------------------------------------------------
def test_cli_embeds_images_and_jsonl_image_fields(folders, model, tmp_path):
    import subprocess
    import sys

    folder = folders["f32"][0]
    paths = []
    for k, (w, h) in enumerate(SIZES[:2]):
        p = tmp_path / f"p{k}.png"
        p.write_bytes(png(picture(w, h)))
        paths.append(str(p))
    want = model.embed_images(paths, task="code")
    run = subprocess.run([sys.executable, "-m", "jv4", "embed", "-m", str(folder), "--task", "code", "-q",
                          "--image", *paths, "-o", str(tmp_path / "out.npy")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)
    # JSON Lines: an "image" field holds a path; texts and images may mix
    lines = [{"image": paths[0]}, {"text": "a page about waves"}, {"image": paths[1], "id": 7}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run = subprocess.run([sys.executable, "-m", "jv4", "embed", "-m", str(folder), "--task", "code", "-q",
                          "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[2]["id"] == 7
    np.testing.assert_allclose([rows[0]["embedding"], rows[2]["embedding"]], want, atol=1e-6)
    np.testing.assert_allclose(rows[1]["embedding"], model.embed("a page about waves", task="code"), atol=1e-6)
    # images without a vision tower: one line, exit 2
    run = subprocess.run([sys.executable, "-m", "jv4", "embed", "--image", paths[0]], capture_output=True, text=True)
    assert run.returncode == 2 and "vision tower" in run.stderr


def test_embedder_routes_images(folders):
    emb = jv4.Embedder(models={t: folders["f32"][0] for t in cg.TASKS})
    a = emb.embed_images(picture(224, 224), task="text-matching")
    b = emb.model("text-matching").embed_images(picture(224, 224), task="text-matching")
    np.testing.assert_array_equal(a, b)
    assert len(emb.embed_images_multivector([picture(60, 60)], task="code")) == 1
    emb.close()


def test_ctrl_c_interrupts_an_image_call_and_the_model_still_works(folders):
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, signal, sys, threading, time, numpy as np, jv4
        m = jv4.Model(sys.argv[1])
        img = (np.arange(400 * 300 * 3) % 251).astype(np.uint8).reshape(300, 400, 3)
        before = m.embed_images(img, task="retrieval")
        sent = {}
        def interrupt():
            sent["t"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(1.0, interrupt).start()
        try:
            m.embed_images([img] * 5000, task="retrieval")   # minutes of work
        except KeyboardInterrupt:
            latency = time.monotonic() - sent["t"]
        else:
            raise SystemExit("embed_images finished without being interrupted")
        np.testing.assert_array_equal(m.embed_images(img, task="retrieval"), before)
        print(f"LATENCY {latency:.3f}")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(folders["f32"][0])], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split("LATENCY")[1]) < 1.5
