"""Options cross into the engine by name (jv4._core.ModelOptions, one field
each), so the order of the fields decides nothing: each option set alone
comes back in Model.info and moves nothing else."""

from __future__ import annotations

import random

import pytest

import jv4
from jv4 import _core
from conftest import build_has

# option -> (value to set, what info reports for it), on the F16 test model
SET = {
    "n_threads": (1, 1),
    "max_length": (64, 64),
    "batch_tokens": (128, 128),
    "repack": (False, False),
    "n_gpu_layers": (0, 0),
    "f16_as_bf16": (False, False),
    "flash_attn": (False, "off"),
    "kv_cache_type": ("f32", "f32"),
    "coalesce": (True, True),
    "batch_wait_ms": (5.0, 5.0),
    "batch_invariant": (True, True),
}
# options that need other files, or a GPU, checked below (the image options: tests/test_images.py)
ELSEWHERE = {"adapters", "projector", "main_gpu", "mmproj", "image_min_tokens", "image_max_tokens"}


def _fields():
    return [name for name, attr in vars(_core.ModelOptions).items() if isinstance(attr, property)]


def test_every_option_is_covered():
    assert set(_fields()) == set(SET) | ELSEWHERE


def test_unknown_or_mistyped_options_are_refused_by_name():
    with pytest.raises(TypeError, match="ModelOptions has no option 'n_thread'"):
        _core.ModelOptions(n_thread=2)
    with pytest.raises(TypeError, match="ModelOptions has no option '__class__'"):
        _core.ModelOptions(__class__=2)
    with pytest.raises(TypeError):
        _core.ModelOptions(n_threads="two")


@pytest.mark.parametrize("option", sorted(SET))
def test_each_option_alone_is_read_back_through_info(make_gguf, option):
    path = str(make_gguf(dtype="F16"))
    default = jv4.Model(path).info
    value, reported = SET[option]
    got = jv4.Model(path, **{option: value}).info
    assert got[option] == reported
    if option == "f16_as_bf16" and not build_has("AVX512_BF16"):
        assert default[option] is False  # it was off already
    else:
        assert default[option] != reported, f"pick a value for {option} that is not its default"
    # nothing else moved, but what the option itself decides
    follows = {"f16_as_bf16": {"load_mode", "kv_cache_type"}, "repack": {"load_mode"},
               "flash_attn": {"kv_cache_type"}, "batch_invariant": {"repack", "load_mode"},
               "n_gpu_layers": {"f16_as_bf16", "load_mode", "kv_cache_type"}}.get(option, set())
    moved = {k for k in default if default[k] != got[k]} - {option} - follows
    assert moved == set()


def test_keyword_order_changes_nothing(make_gguf):
    path = str(make_gguf(dtype="F16"))
    items = [(k, v) for k, (v, _) in SET.items()]
    infos = []
    for seed in range(3):
        random.Random(seed).shuffle(items)
        m = _core.Model(path, _core.ModelOptions(**dict(items)))
        infos.append(jv4._model.info_dict(m.info))
    assert infos[0] == infos[1] == infos[2]
    assert all(infos[0][k] == reported for k, (_, reported) in SET.items())


def test_main_gpu_is_checked_against_the_devices(make_gguf):
    path = str(make_gguf(dtype="F16"))
    n_gpus = sum(not d.startswith("CPU") for d in jv4.build_info()["devices"])
    if n_gpus == 0:
        with pytest.raises(ValueError, match=r"main_gpu=0 but this build sees 0 GPU device\(s\)"):
            jv4.Model(path, main_gpu=0)
    else:
        assert jv4.Model(path, main_gpu=0).info["main_gpu"] == 0


def test_adapters_and_projector_are_read_back(tmp_path, vocab):
    import ckptgen as cg

    ckpt = cg.write_checkpoint(tmp_path / "ckpt", vocab, layout="nested")
    out = tmp_path / "out"
    jv4.convert(ckpt.root, out, outtype="f32")
    from jv4.checkpoint import read_manifest

    files = read_manifest(out)
    base = jv4.Model(files["base"]).info
    assert (base["adapters"], base["projector"]) == ([], None)
    got = jv4.Model(files["base"], adapters={"code": files["adapters"]["code"]}).info
    assert (got["adapters"], got["projector"]) == (["code"], None)
    got = jv4.Model(files["base"], projector=files["projector"]).info
    assert (got["adapters"], got["projector"]) == ([], files["projector"])
