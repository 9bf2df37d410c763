"""jv4's fetch-time CPU kernel patches (tools/fetch_llama_cpp.py, _KERNEL_PATCHES).

The tinyBLAS changes (horizontal sums, accumulator zeroing) are exercised by
every fidelity test in test_embed.py: F32, F16 and BF16 matrices all go
through them on an AVX-512 build. The vectorised fp32 -> bf16 conversion is
checked here on its own, for every one of the 2^32 float bit patterns, against
llama.cpp's scalar rounding rule (ggml_compute_fp32_to_bf16 in ggml-impl.h,
which the patch leaves alone)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GGML = ROOT / "vendor" / "llama.cpp" / "ggml" / "src"

sys.path.insert(0, str(ROOT / "tools"))
import fetch_llama_cpp  # noqa: E402


def _c_function(source: str, signature: str) -> str:
    """The text of one top-level C function, from its signature to the first
    closing brace in column 0."""
    start = source.index(signature)
    end = source.index("\n}\n", start) + 3
    return source[start:end]


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def test_every_patch_is_applied_to_the_vendored_tree():
    for rel, _old, new in fetch_llama_cpp.PATCHES:
        assert new in (ROOT / "vendor" / "llama.cpp" / rel).read_text(encoding="utf-8"), rel


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
@pytest.mark.skipif(not _cpu_has("avx512f"), reason="needs a CPU with AVX-512F to run the patched loop")
def test_vectorised_fp32_to_bf16_is_bit_identical_to_the_scalar_rule(tmp_path):
    impl = (GGML / "ggml-impl.h").read_text(encoding="utf-8")
    cpu = (GGML / "ggml-cpu" / "ggml-cpu.c").read_text(encoding="utf-8")
    scalar = _c_function(impl, "static inline ggml_bf16_t ggml_compute_fp32_to_bf16(float s) {")
    patched = _c_function(cpu, "void ggml_cpu_fp32_to_bf16(const float * x, ggml_bf16_t * y, int64_t n) {")
    assert "_mm512_" in patched, "the vectorised loop is missing from the vendored tree"
    assert re.search(r"\(u\.i \+ \(0x7fff", scalar), "ggml's scalar rounding rule changed; review the patch"

    program = tmp_path / "bf16.c"
    program.write_text(f"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef struct {{ uint16_t bits; }} ggml_bf16_t;
{scalar}
#define GGML_FP32_TO_BF16(x) ggml_compute_fp32_to_bf16(x)
{patched}
enum {{ N = 4096 + 7 }};  /* a whole number of vectors plus a scalar tail */
int main(void) {{
    static uint32_t bits[N];
    static float x[N];
    static ggml_bf16_t y[N];
    unsigned long long bad = 0, checked = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += N) {{
        int n = (int)((1ull << 32) - base < N ? (1ull << 32) - base : N);
        for (int k = 0; k < n; k++) bits[k] = (uint32_t)(base + k);
        memcpy(x, bits, sizeof(uint32_t) * n);
        ggml_cpu_fp32_to_bf16(x, y, n);
        for (int k = 0; k < n; k++) {{
            checked++;
            if (y[k].bits != ggml_compute_fp32_to_bf16(x[k]).bits) {{
                if (bad++ < 5) printf("0x%08x -> 0x%04x, scalar 0x%04x\\n", bits[k], y[k].bits,
                                      ggml_compute_fp32_to_bf16(x[k]).bits);
            }}
        }}
    }}
    printf("checked %llu mismatches %llu\\n", checked, bad);
    return bad != 0;
}}
""")
    exe = tmp_path / "bf16"
    subprocess.run(["cc", "-O2", "-mavx512f", "-o", str(exe), str(program)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout
    assert "checked 4294967296 mismatches 0" in out.stdout
