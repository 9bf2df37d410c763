"""The load policy alone (csrc/engine/load_policy.cpp through
jv4._core._stages): what the file holds, what the build offers and the
options in; repack, F16-as-BF16, read or map, GPU layers and the KV cache
type out. Each row is a rule docs/usage.md states (Model's docstring,
"Weight repacking by type", "Long texts"), written here from the docs, not
from the code's output."""

from __future__ import annotations

import pytest

from jv4 import _core

AVX512 = dict(x86=True, avx512_vnni=True, avx512_bf16=True, avx2=True, n_gpus=0)   # this machine's build
AVX2 = dict(x86=True, avx512_vnni=False, avx512_bf16=False, avx2=True, n_gpus=0)    # x86-64-v3
SSE = dict(x86=True, avx512_vnni=False, avx512_bf16=False, avx2=False, n_gpus=0)    # x86-64-v2
ARM = dict(x86=False, avx512_vnni=False, avx512_bf16=False, n_gpus=0)
GPU = dict(AVX512, n_gpus=1)

Q4_K_M = (["Q4_K", "Q6_K", "F32"], "Q4_K - Medium")
Q2_K = (["Q2_K", "Q3_K", "F32"], "Q2_K - Medium")
Q4_0 = (["Q4_0", "Q6_K", "F32"], "Q4_0")
Q8_0 = (["Q8_0", "F32"], "Q8_0")
BF16 = (["BF16", "F32"], "BF16")
F16 = (["F16", "F32"], "F16")
F32 = (["F32"], "all F32")

# (file, build, options) -> (repack, f16_as_bf16, load_mode, kv_cache_type)
TABLE = [
    # Q4_K / Q2_K: measured slower repacked on x86, so not repacked; mapped
    (Q4_K_M, AVX512, {}, (False, False, "mmap", "bf16")),
    (Q4_K_M, AVX2, {}, (False, False, "mmap", "f16")),
    (Q2_K, AVX2, {}, (False, False, "mmap", "f16")),
    # other architectures keep llama.cpp's default (repack on, read: repacked weights are copies)
    (Q4_K_M, ARM, {}, (True, False, "read", "f16")),
    (Q4_K_M, AVX512, {"repack": True}, (True, False, "read", "bf16")),
    # Q4_0 repacks everywhere
    (Q4_0, AVX2, {}, (True, False, "read", "f16")),
    (Q4_0, AVX2, {"repack": False}, (False, False, "mmap", "f16")),
    # Q8_0: repacked where the build has AVX512-VNNI or AVX2 (jv4's kernels), so read
    (Q8_0, AVX512, {}, (True, False, "read", "bf16")),
    (Q8_0, AVX2, {}, (True, False, "read", "f16")),
    (Q8_0, SSE, {}, (True, False, "mmap", "f16")),
    # BF16: repacked only with AVX512-BF16
    (BF16, AVX512, {}, (True, False, "read", "bf16")),
    (BF16, AVX2, {}, (True, False, "mmap", "f16")),
    # F16: held as BF16 (read, repacked as BF16) with AVX512-BF16 on the CPU
    (F16, AVX512, {}, (True, True, "read", "bf16")),
    (F16, AVX512, {"f16_as_bf16": False}, (True, False, "mmap", "f16")),
    (F16, AVX2, {}, (True, False, "mmap", "f16")),
    (F16, AVX2, {"f16_as_bf16": True}, (True, True, "read", "f16")),
    (F16, GPU, {}, (True, False, "mmap", "f16")),
    # batch_invariant: llama.cpp's repacked layouts off (their GEMM and GEMV round
    # differently); jv4's Q8_0 and BF16 ones (the same arithmetic per output for one
    # row and for several) stay, on x86
    (Q8_0, AVX512, {"batch_invariant": True}, (True, False, "read", "bf16")),
    (Q8_0, AVX512, {"batch_invariant": True, "repack": True}, (True, False, "read", "bf16")),
    (Q8_0, AVX512, {"batch_invariant": True, "repack": False}, (False, False, "mmap", "bf16")),
    (Q8_0, ARM, {"batch_invariant": True}, (False, False, "mmap", "f16")),
    (Q4_0, AVX2, {"batch_invariant": True}, (False, False, "mmap", "f16")),
    (Q4_0, AVX512, {"batch_invariant": True}, (False, False, "mmap", "bf16")),
    (F16, AVX512, {"batch_invariant": True}, (True, True, "read", "bf16")),
    (BF16, AVX512, {"batch_invariant": True}, (True, False, "read", "bf16")),
    (F16, GPU, {"n_gpu_layers": 0}, (True, True, "read", "bf16")),
    # F32 weights: full precision, so the cache stays f16
    (F32, AVX512, {}, (True, False, "mmap", "f16")),
    # the KV cache: flash attention off, or a type given, decide it
    (Q8_0, AVX512, {"flash_attn": False}, (True, False, "read", "f16")),
    (Q8_0, AVX512, {"flash_attn": True}, (True, False, "read", "bf16")),
    (Q8_0, AVX512, {"kv_cache_type": "q8_0"}, (True, False, "read", "q8_0")),
    (F32, AVX512, {"kv_cache_type": "bf16"}, (True, False, "mmap", "bf16")),
    (Q8_0, GPU, {}, (True, False, "read", "f16")),
]


def _decide(file, build, options):
    types, file_type = file
    return _core._stages.load_policy(types, options=_core.ModelOptions(**options), file_type=file_type, **build)


@pytest.mark.parametrize("file, build, options, expected", TABLE)
def test_decisions(file, build, options, expected):
    got = _decide(file, build, options)
    assert (got["repack"], got["f16_as_bf16"], got["load_mode"], got["kv_cache_type"]) == expected


# The vision tower (an mmproj; its matrices F32, F16, BF16 or Q8_0): F16 held as
# BF16 by the text weights' rule, repacked on x86 (jv4's kernels) unless
# repack=False, both only when it runs on the CPU (docs/usage.md, "Images").
# (build, options) -> (tower_f16_as_bf16, tower_repack), whatever the text file holds
TOWER = [
    (AVX512, {}, (True, True)),
    (AVX512, {"f16_as_bf16": False}, (False, True)),
    (AVX512, {"repack": False}, (True, False)),
    (AVX512, {"batch_invariant": True}, (True, True)),
    (AVX2, {}, (False, True)),
    (AVX2, {"f16_as_bf16": True}, (True, True)),
    (ARM, {}, (False, False)),
    (ARM, {"repack": True}, (False, True)),
    (GPU, {}, (False, False)),
    (GPU, {"n_gpu_layers": 0}, (True, True)),
]


@pytest.mark.parametrize("build, options, expected", TOWER)
@pytest.mark.parametrize("file", [F32, Q4_K_M], ids=["F32", "Q4_K_M"])
def test_tower_decisions(file, build, options, expected):
    got = _decide(file, build, options)
    assert (got["tower_f16_as_bf16"], got["tower_repack"]) == expected


# The tower's flash attention over BF16 K and V by the text cache's rule: on
# an AVX512-BF16 CPU, all on the CPU, unless the tower is full precision (a
# matrix in F32, or F16 kept as F16) (docs/usage.md, "Images").
# (tower matrix types, build, options) -> tower_attention
TOWER_ATTENTION = [
    (["Q8_0", "F16"], AVX512, {}, "bf16"),          # jv4 quantize's Q8_0 tower (ffn_down F16, held as BF16)
    (["Q8_0", "F16"], AVX512, {"f16_as_bf16": False}, "f16"),
    (["F16"], AVX512, {}, "bf16"),                  # held as BF16
    (["F16"], AVX512, {"f16_as_bf16": False}, "f16"),
    (["BF16"], AVX512, {}, "bf16"),
    (["Q8_0"], AVX512, {}, "bf16"),
    (["F32"], AVX512, {}, "f16"),                   # full precision: clip's F16 K and V
    (["Q8_0", "F32"], AVX512, {}, "f16"),
    (["Q8_0"], AVX2, {}, "f16"),                    # no vdpbf16ps
    (["BF16"], ARM, {}, "f16"),
    (["Q8_0"], GPU, {}, "f16"),                     # the tower on the GPU
    (["Q8_0"], GPU, {"n_gpu_layers": 0}, "bf16"),
]


@pytest.mark.parametrize("tower, build, options, expected", TOWER_ATTENTION)
def test_tower_attention(tower, build, options, expected):
    types, file_type = Q8_0
    got = _core._stages.load_policy(types, options=_core.ModelOptions(**options), file_type=file_type,
                                    tower_types=tower, **build)
    assert got["tower_attention"] == expected


def test_gpu_layers_and_the_main_gpu():
    got = _decide(Q4_K_M, GPU, {})
    assert (got["n_gpu_layers"], got["main_gpu"], got["cpu_only"]) == (-1, None, False)
    got = _decide(Q4_K_M, dict(GPU, n_gpus=2), {"main_gpu": 1, "n_gpu_layers": 10})
    assert (got["n_gpu_layers"], got["main_gpu"], got["cpu_only"]) == (10, 1, False)
    assert _decide(Q4_K_M, AVX512, {"n_gpu_layers": 5})["cpu_only"] is True  # no GPU to put them on


@pytest.mark.parametrize("build, options, message", [
    (AVX512, {"main_gpu": 0}, r"main_gpu=0 but this build sees 0 GPU device\(s\)"),
    (dict(GPU, n_gpus=2), {"main_gpu": 2}, r"main_gpu=2 but this build sees 2 GPU device\(s\) \(0\.\.1\)"),
    (AVX512, {"n_gpu_layers": -1}, r"n_gpu_layers must be >= 0 \(0: CPU only\) or None"),
    (AVX512, {"n_threads": 0}, r"n_threads must be >= 1"),
    (AVX512, {"batch_tokens": 0}, r"batch_tokens must be >= 1"),
    (AVX512, {"kv_cache_type": "q9"}, r"kv_cache_type must be one of f32, f16, bf16, q8_0, .* got 'q9'"),
    (AVX512, {"kv_cache_type": "q4_0", "flash_attn": False}, r"quantized, which llama.cpp supports only with flash"),
    (AVX512, {"batch_invariant": True, "repack": True}, r"batch_invariant=True needs repack off"),
    (AVX512, {"batch_wait_ms": -1.0}, r"batch_wait_ms must be 0\.\.1000 \(or None\), got -1"),
    (AVX512, {"batch_wait_ms": 1000.5}, r"batch_wait_ms must be 0\.\.1000 \(or None\), got 1000\.5"),
    (AVX512, {"batch_wait_ms": float("nan")}, r"batch_wait_ms must be 0\.\.1000 \(or None\), got nan"),
])
def test_bad_options_are_refused_naming_the_allowed_values(build, options, message):
    with pytest.raises(ValueError, match=message):
        _decide(Q4_K_M, build, options)


@pytest.mark.parametrize("options, n_ctx_train, threads, expected", [
    ({}, 128000, 16, (32768, 512, 16)),       # the reference's 32768, under the trained context
    ({}, 4096, 2, (4096, 512, 2)),            # capped by it
    ({}, 0, 0, (32768, 512, 1)),              # unknown context, unknown thread count
    ({"max_length": 100, "batch_tokens": 64, "n_threads": 3}, 4096, 8, (100, 64, 3)),
])
def test_context_sizes(options, n_ctx_train, threads, expected):
    assert _core._stages.context_policy(_core.ModelOptions(**options), n_ctx_train, threads) == expected


def test_max_length_above_the_trained_context_is_refused():
    with pytest.raises(ValueError, match=r"max_length=5000 is above the model's trained context \(4096 tokens\)"):
        _core._stages.context_policy(_core.ModelOptions(max_length=5000), 4096, 2)
