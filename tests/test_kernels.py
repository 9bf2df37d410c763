"""jv4's CPU kernel patches to llama.cpp (patches/llama.cpp/: 0002-0006).

The tinyBLAS changes (horizontal sums, accumulator zeroing) are exercised by
every fidelity test in test_embed.py: F32, F16 and BF16 matrices all go
through them on an AVX-512 build. The vectorised fp32 -> bf16 conversion is
checked here on its own, for every one of the 2^32 float bit patterns, against
llama.cpp's scalar rounding rule (ggml_compute_fp32_to_bf16 in ggml-impl.h,
which the patch leaves alone)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.source

ROOT = Path(__file__).resolve().parents[1]
GGML = ROOT / "vendor" / "llama.cpp" / "ggml" / "src"

KERNELS = ROOT / "patches" / "llama.cpp" / "files" / "ggml" / "src" / "ggml-cpu"


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


# Shared by the kernel harnesses below: includes, a random source, and the
# check of one result against its exact value (equal where every sum is exact
# in fp32, otherwise within 1e-5 of the sum of the terms' magnitudes).
_HARNESS_COMMON = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>
static uint64_t rng = 88172645463325252ull;
static uint32_t rnd() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t) rng; }
static int bad = 0;
static double worst = 0;
static void check(double got, double ref, double mag, bool exact, const char * what, int i, int j) {
    const double err = fabs(got - ref) / (mag > 0 ? mag : 1);
    if (err > worst) worst = err;
    if ((exact && got != ref) || !(err <= 1e-5)) {
        if (bad++ < 5) printf("%s [%d, %d]: %.9g, exact %.9g\n", what, i, j, got, ref);
    }
}
// a GEMM's result S and the one-token path's G at (token t, row c)
static void check_both(const std::vector<float> & S, const std::vector<float> & G, size_t bs, int t, int c,
                       double ref, double mag, bool exact, const char * shape) {
    char what[160];
    for (int which = 0; which < 2; which++) {
        snprintf(what, sizeof what, "%s, %s: token, row", shape, which ? "one token" : "gemm");
        check((which ? G : S)[(size_t) t * bs + c], ref, mag, exact, what, t, c);
    }
}
// the columns of a row-major result past nc (stride bs) must still be NaN
static void check_untouched(const std::vector<float> & s, int nr, int nc, size_t bs) {
    for (int t = 0; t < nr; t++)
        for (int c = nc; c < (int) bs; c++)
            if (s[(size_t) t * bs + c] == s[(size_t) t * bs + c] && bad++ < 5) printf("wrote outside the tile\n");
}
static int finish() {
    printf("mismatches %d\n", bad);
    return bad != 0;
}
"""


def _run_harness(tmp_path: Path, name: str, harness: str, kernel: str, flags: list, envs=({},)) -> list:
    """Compile one harness around a kernel (its #include) and require no
    mismatch, once with each of `envs` added to the environment; the outputs."""
    program = tmp_path / f"{name}.cpp"
    program.write_text(_HARNESS_COMMON + harness.replace("KERNEL", kernel, 1))
    exe = tmp_path / name
    subprocess.run(["c++", "-O2", "-std=c++17", *flags, "-o", str(exe), str(program)], check=True)
    outs = []
    for env in envs:
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        assert out.returncode == 0, (env, out.stdout)
        assert "mismatches 0" in out.stdout, (env, out.stdout)
        outs.append(out.stdout)
    return outs


def _kernel_source(name: str, marker: str) -> str:
    """An #include of one of jv4's kernel sources (patches/llama.cpp/files/),
    compiled as it is - the same file the build copies into llama.cpp."""
    path = KERNELS / name
    assert marker in path.read_text(encoding="utf-8"), f"{name} lost {marker}"
    vendored = GGML / "ggml-cpu" / name
    assert vendored.read_bytes() == path.read_bytes(), f"the vendored tree's {name} is stale: fetch again"
    return f'#include "{path.as_posix()}"'


_Q8_0_HARNESS = r"""
// jv4's Q8_0 kernels (AVX512-VNNI, AVX2), compiled alone, against exact integer sums;
// MAKE16, GEMM and GEMV name the kernel's repacking, gemm and gemv
#define QK8_0 32
#define GGML_RESTRICT __restrict__
typedef uint16_t ggml_half;
typedef struct { ggml_half d; int8_t qs[QK8_0]; } block_q8_0;
template <int N> struct blk { ggml_half d[N]; int8_t qs[QK8_0 * N]; };
typedef blk<4> block_q8_0x4;
typedef blk<16> block_q8_0x16;
static inline float GGML_CPU_FP16_TO_FP32(ggml_half h) { return _cvtsh_ss(h); }
KERNEL
int main() {
    // (quants per row, weight rows, tokens): one block; v4's widths; more than
    // one 64-group slice of tokens; token counts that are not a multiple of 8;
    // row counts that are not a multiple of 16 (the rows past the last block
    // of 16 stay plain: Qwen2.5-VL's vision FFN has 3420), none whole
    const int shapes[][3] = {{32, 16, 4}, {64, 32, 8}, {2048, 48, 12}, {11008, 32, 4}, {256, 16, 260}, {96, 64, 20},
                             {64, 36, 8}, {96, 12, 20}, {128, 3420, 8}};
    for (auto & sh : shapes) {
        const int n = sh[0], nc = sh[1], nr = sh[2], nb = n / QK8_0;
        for (int unit = 0; unit < 2; unit++) {  // unit: every scale 1.0, so results are exact integers
            std::vector<block_q8_0> W((size_t) nc * nb), A((size_t) nr * nb);
            for (auto & b : W) {
                const bool extremes = rnd() % 8 == 0;  // -128 and 127 (a file may hold -128)
                b.d = _cvtss_sh(unit ? 1.0f : (float) (rnd() % 1000 + 1) / 4096.0f, 0);
                for (int q = 0; q < QK8_0; q++) b.qs[q] = extremes ? (rnd() & 1 ? 127 : -128) : (int8_t) (rnd() % 255 - 127);
            }
            for (auto & b : A) {
                const bool extremes = rnd() % 8 == 0;
                b.d = _cvtss_sh(unit ? 1.0f : (float) (rnd() % 1000 + 1) / 4096.0f, 0);
                for (int q = 0; q < QK8_0; q++) b.qs[q] = extremes ? (rnd() & 1 ? 127 : -127) : (int8_t) (rnd() % 255 - 127);
            }
            // the repacked matrix: blocks of 16 rows, then the rest as they are (same bytes as the file)
            std::vector<block_q8_0> Wraw((size_t) nc * nb);
            block_q8_0x16 * Wr = (block_q8_0x16 *) Wraw.data();
            for (int x = 0; x < nc / 16; x++) for (int l = 0; l < nb; l++) {
                block_q8_0 rows[16];
                for (int r = 0; r < 16; r++) rows[r] = W[(size_t) (x * 16 + r) * nb + l];
                Wr[(size_t) x * nb + l] = MAKE16(rows);
            }
            memcpy((void *) (Wr + (size_t) nc / 16 * nb), W.data() + (size_t) (nc - nc % 16) * nb,
                   (size_t) (nc % 16) * nb * sizeof(block_q8_0));
            // activations as llama.cpp hands them over: 4 tokens, 8-quant interleave
            std::vector<block_q8_0x4> Ar((size_t) nr / 4 * nb);
            for (int y = 0; y < nr / 4; y++) for (int l = 0; l < nb; l++) {
                block_q8_0x4 & o = Ar[(size_t) y * nb + l];
                for (int t = 0; t < 4; t++) o.d[t] = A[(size_t) (y * 4 + t) * nb + l].d;
                for (int j = 0; j < 128; j++) o.qs[j] = A[(size_t) (y * 4 + (j % 32) / 8) * nb + l].qs[(j / 32) * 8 + j % 8];
            }
            const size_t bs = nc + 3;  // a row stride wider than the tile
            std::vector<float> S((size_t) nr * bs, NAN), G((size_t) nr * bs, NAN);
            GEMM(n, S.data(), bs, Wr, Ar.data(), nr, nc);
            for (int t = 0; t < nr; t++)
                GEMV(n, G.data() + (size_t) t * bs, 0, Wr, A.data() + (size_t) t * nb, 1, nc);
            char shape[64];
            snprintf(shape, sizeof shape, "n=%d nc=%d nr=%d unit=%d", n, nc, nr, unit);
            for (int t = 0; t < nr; t++) for (int c = 0; c < nc; c++) {
                double ref = 0, mag = 0;
                for (int l = 0; l < nb; l++) {
                    long isum = 0;
                    const block_q8_0 & w = W[(size_t) c * nb + l];
                    const block_q8_0 & a = A[(size_t) t * nb + l];
                    for (int q = 0; q < QK8_0; q++) isum += (long) w.qs[q] * a.qs[q];
                    const double sc = (double) _cvtsh_ss(w.d) * _cvtsh_ss(a.d);
                    ref += sc * isum;
                    mag += fabs(sc * isum);
                }
                check_both(S, G, bs, t, c, ref, mag, unit, shape);
                // a token among others and alone: the same bits (batch invariance)
                if (memcmp(&S[(size_t) t * bs + c], &G[(size_t) t * bs + c], sizeof(float)) != 0 && bad++ < 5)
                    printf("%s: gemm and one token differ at token %d, row %d\n", shape, t, c);
            }
            check_untouched(S, nr, nc, bs);
            printf("%s: worst relative error so far %.3g\n", shape, worst);
        }
    }
    return finish();
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler (c++)")
@pytest.mark.skipif(not all(_cpu_has(f) for f in ("avx512f", "avx512bw", "avx512_vnni", "f16c")),
                    reason="needs a CPU with AVX512-VNNI to run the kernel")
def test_q8_0_vnni_kernel_matches_exact_integer_arithmetic(tmp_path):
    # The patch "Q8_0 weights for AVX512-VNNI": repacking, gemm (tokens four
    # at a time) and gemv (one token), against the dot products of the
    # original Q8_0 blocks summed exactly. With unit scales the results are
    # integers and must be equal; otherwise within float rounding (1e-5 of
    # the sum of the terms' magnitudes; measured <= 2e-7). Rows past the last
    # block of 16 included; gemm and one token give the same bits.
    kernel = _q8_0_kernel("jv4-q8_0-vnni.inc", "_mm512_dpbusd_epi32", "vnni")
    _run_harness(tmp_path, "q8_0_vnni", _Q8_0_HARNESS, kernel,
                 ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma"])


def _q8_0_kernel(name: str, marker: str, suffix: str) -> str:
    _kernel_source("jv4-q8_0-rows.inc", "jv4_dot32_i8")  # the shared rows, checked fresh too
    return "\n".join([_kernel_source(name, marker), f"#define MAKE16 jv4_make_block_q8_0x16_{suffix}",
                      f"#define GEMM jv4_gemm_q8_0_16x4_{suffix}", f"#define GEMV jv4_gemv_q8_0_16x4_{suffix}"])


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler (c++)")
@pytest.mark.skipif(not all(_cpu_has(f) for f in ("avx2", "fma", "f16c")),
                    reason="needs a CPU with AVX2, FMA and F16C to run the kernel")
def test_q8_0_avx2_kernel_matches_exact_integer_arithmetic(tmp_path):
    # The patch "Q8_0 weights for AVX2" (x86-64-v3, compiled here without
    # any AVX-512 switch, as that level's module is): the same shapes,
    # references and bit equality of gemm and one token as the VNNI kernel's.
    kernel = _q8_0_kernel("jv4-q8_0-avx2.inc", "_mm256_maddubs_epi16", "avx2")
    _run_harness(tmp_path, "q8_0_avx2", _Q8_0_HARNESS, kernel, ["-mavx2", "-mfma", "-mf16c"])


_BF16_HARNESS = r"""
// jv4's BF16 AVX512-BF16 kernel, compiled alone, against double-precision sums
#define GGML_RESTRICT __restrict__
typedef struct { uint16_t bits; } ggml_bf16_t;
KERNEL
static ggml_bf16_t bf16_of(float f) { uint32_t u; memcpy(&u, &f, 4); ggml_bf16_t b; b.bits = (uint16_t) (u >> 16); return b; }
static double value(ggml_bf16_t b) { uint32_t u = (uint32_t) b.bits << 16; float f; memcpy(&f, &u, 4); return f; }
int main() {
    // (columns, weight rows, tokens): one column pair; v4's widths; token
    // counts that leave every tail (12, 4, 1 at a time); 16-row remainders;
    // row counts that leave rows past the last block of 16 (the vision
    // tower's 3420), with column counts that are not a multiple of 32
    const int shapes[][3] = {{2, 16, 1}, {64, 32, 12}, {2048, 48, 13}, {11008, 32, 4}, {256, 16, 29}, {96, 80, 20},
                             {1280, 44, 13}, {3420, 28, 5}, {18, 7, 3}, {2, 1, 1}};
    for (auto & sh : shapes) {
        const int n = sh[0], nc = sh[1], nr = sh[2];
        for (int ints = 0; ints < 2; ints++) {  // ints: small integers, every sum exact in fp32
            std::vector<ggml_bf16_t> W((size_t) nc * n), A((size_t) nr * n), Wr((size_t) nc * n);
            for (auto & v : W) v = bf16_of(ints ? (float) ((int) (rnd() % 17) - 8) : ((float) (rnd() % 20001) - 10000.0f) / 3333.0f);
            for (auto & v : A) v = bf16_of(ints ? (float) ((int) (rnd() % 17) - 8) : ((float) (rnd() % 20001) - 10000.0f) / 777.0f);
            jv4_repack_bf16_16x2(W.data(), Wr.data(), nc, n);
            const size_t bs = nc + 3;  // a row stride wider than the tile
            std::vector<float> S((size_t) nr * bs, NAN), G((size_t) nr * bs, NAN);
            jv4_gemm_bf16_16x2(n, S.data(), bs, Wr.data(), A.data(), nr, nc);
            for (int t = 0; t < nr; t++)  // one token at a time, as llama.cpp's gemv
                jv4_gemm_bf16_16x2(n, G.data() + (size_t) t * bs, 0, Wr.data(), A.data() + (size_t) t * n, 1, nc);
            char shape[64];
            snprintf(shape, sizeof shape, "n=%d nc=%d nr=%d ints=%d", n, nc, nr, ints);
            for (int t = 0; t < nr; t++) for (int c = 0; c < nc; c++) {
                double ref = 0, mag = 0;
                for (int q = 0; q < n; q++) {
                    const double prod = value(W[(size_t) c * n + q]) * value(A[(size_t) t * n + q]);
                    ref += prod;
                    mag += fabs(prod);
                }
                check_both(S, G, bs, t, c, ref, mag, ints, shape);
            }
            check_untouched(S, nr, nc, bs);
            // a token's result does not depend on the tokens beside it (batch invariance)
            for (int t = 0; t < nr; t++)
                if (memcmp(&S[(size_t) t * bs], &G[(size_t) t * bs], nc * sizeof(float)) != 0 && bad++ < 5)
                    printf("%s: token %d differs between the GEMM and one token alone\n", shape, t);
            printf("%s: worst relative error so far %.3g\n", shape, worst);
        }
    }
#if defined(JV4_BF16_AMX)
    printf("amx %s\n", jv4_amx_on() ? "on" : "off");
#endif
    return finish();
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler (c++)")
@pytest.mark.skipif(not all(_cpu_has(f) for f in ("avx512f", "avx512bw", "avx512_bf16")),
                    reason="needs a CPU with AVX512-BF16 to run the kernel")
def test_bf16_dot_product_kernel_matches_exact_sums(tmp_path):
    # The patch "BF16 weights for AVX512-BF16": repacking and the tiled
    # vdpbf16ps GEMM (12, 4 and 1 tokens at a time; 32- and 16-row blocks)
    # against the same dot products summed in double precision. Small
    # integer values make every sum exact, so the results must be equal;
    # otherwise within float rounding (1e-5 of the sum of the terms'
    # magnitudes).
    # Where the CPU has AMX-BF16 the tile path runs by default; it runs as
    # well with JV4_BF16_AMX=0 (vdpbf16ps alone), and both must hold. Either
    # way a token's result is the same bits in the GEMM and alone.
    kernel = _kernel_source("jv4-bf16-dp.inc", "_mm512_dpbf16_ps")
    outs = _run_harness(tmp_path, "bf16_dp", _BF16_HARNESS, kernel,
                        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"],
                        envs=({}, {"JV4_BF16_AMX": "0"}))
    if sys.platform == "linux" and _cpu_has("amx_bf16") and _cpu_has("amx_tile"):
        assert "amx on" in outs[0], outs[0][-300:]
    assert "amx on" not in outs[1]


_FA_DP_HARNESS = r"""
// flash attention's BF16 helpers, compiled alone, against double-precision sums
typedef struct { uint16_t bits; } ggml_bf16_t;
KERNEL
static ggml_bf16_t bf16_of(float f) { uint32_t u; memcpy(&u, &f, 4); ggml_bf16_t b; b.bits = (uint16_t) (u >> 16); return b; }
static ggml_bf16_t bf16_rne(float f) { uint32_t u; memcpy(&u, &f, 4); ggml_bf16_t b; b.bits = (uint16_t) ((u + 0x7fff + ((u >> 16) & 1)) >> 16); return b; }
static double value(ggml_bf16_t b) { uint32_t u = (uint32_t) b.bits << 16; float f; memcpy(&f, &u, 4); return f; }
static float draw(int ints, float scale) { return ints ? (float) ((int) (rnd() % 17) - 8) : ((float) (rnd() % 20001) - 10000.0f) / scale; }
int main() {
    const int NQ = 64, KV = 64, HEADS = 2;            // llama.cpp's tile sizes
    const int widths[] = {128, 80};                   // v4's text head width, its vision tower's
    const int tiles[] = {64, 48, 37, 1};              // full, 16-row multiple, ragged, one key
    for (int D : widths) {
    const size_t nb1 = (size_t) HEADS * D * 2;        // rows of one head in a cache of two
    for (int kv_tile : tiles) {
        for (int ints = 0; ints < 2; ints++) {
            std::vector<ggml_bf16_t> Q((size_t) NQ * D), K((size_t) kv_tile * HEADS * D), V((size_t) kv_tile * HEADS * D);
            for (auto & x : Q) x = bf16_of(draw(ints, 5000.0f));
            for (auto & x : K) x = bf16_of(draw(ints, 5000.0f));
            for (auto & x : V) x = bf16_of(draw(ints, 5000.0f));
            const char * k0 = (const char *) K.data() + D * 2;  // the second head
            const char * v0 = (const char *) V.data() + D * 2;
            std::vector<int32_t> kp((size_t) D / 2 * KV, 0x7fc07fc0), vp((size_t) KV / 2 * D, 0x7fc07fc0);  // NaN pairs
            std::vector<float> kq((size_t) NQ * KV, NAN);
            jv4_fa_dp_pack_k(kp.data(), k0, nb1, D, kv_tile, KV);
            jv4_fa_dp_qk(kq.data(), Q.data(), kp.data(), NQ, D, KV);
            char what[64];
            snprintf(what, sizeof what, "QK D=%d kv_tile=%d ints=%d query, key", D, kv_tile, ints);
            for (int q = 0; q < NQ; q++) for (int t = 0; t < KV; t++) {
                double ref = 0, mag = 0;
                for (int d = 0; t < kv_tile && d < D; d++) {
                    const double prod = value(Q[(size_t) q * D + d]) * value(*(const ggml_bf16_t *) (k0 + t * nb1 + d * 2));
                    ref += prod;
                    mag += fabs(prod);
                }
                check(kq[(size_t) q * KV + t], ref, mag, ints, what, q, t);
            }
            // softmax weights (any floats here; every key, padded ones included)
            std::vector<float> P((size_t) NQ * KV), vkq((size_t) NQ * D), vkq0;
            for (auto & x : P) x = ints ? (float) (rnd() % 9) : (float) (rnd() % 100001) / 100000.0f;
            for (auto & x : vkq) x = draw(ints, 100.0f);
            vkq0 = vkq;
            std::vector<float> pb = P;
            jv4_fa_dp_rows_to_bf16(pb.data(), NQ, KV);
            jv4_fa_dp_pack_v(vp.data(), v0, nb1, D, kv_tile, KV);
            jv4_fa_dp_pv(vkq.data(), pb.data(), vp.data(), NQ, D, KV);
            snprintf(what, sizeof what, "PV D=%d kv_tile=%d ints=%d query, column", D, kv_tile, ints);
            for (int q = 0; q < NQ; q++) {
                for (int t = 0; t < KV; t++) {
                    const ggml_bf16_t h = ((const ggml_bf16_t *) (pb.data() + (size_t) q * KV))[t];
                    if (h.bits != bf16_rne(P[(size_t) q * KV + t]).bits && bad++ < 5) printf("P rounding q=%d t=%d\n", q, t);
                }
                for (int d = 0; d < D; d++) {
                    double ref = vkq0[(size_t) q * D + d], mag = fabs(ref);
                    for (int t = 0; t < kv_tile; t++) {
                        const double prod = value(bf16_rne(P[(size_t) q * KV + t])) * value(*(const ggml_bf16_t *) (v0 + t * nb1 + d * 2));
                        ref += prod;
                        mag += fabs(prod);
                    }
                    check(vkq[(size_t) q * D + d], ref, mag, ints, what, q, d);
                }
            }
            printf("D=%d kv_tile=%d ints=%d worst relative error so far %.3g\n", D, kv_tile, ints, worst);
        }
    }
    }
    return finish();
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler (c++)")
@pytest.mark.skipif(not all(_cpu_has(f) for f in ("avx512f", "avx512bw", "avx512_bf16")),
                    reason="needs a CPU with AVX512-BF16 to run the kernel")
def test_flash_attention_bf16_helpers_match_exact_sums(tmp_path):
    # Flash attention's BF16 path, at head widths 128 (text) and 80 (the
    # vision tower: 32-value K blocks plus a 16-value rest, 64-column V
    # steps plus a 16-column rest): K packed by column pairs and Q x K^T, the
    # softmax weights rounded to BF16 (nearest even), V packed by row pairs
    # and P x V added to the output, for full, 16-multiple, ragged and
    # one-key tiles of one head in a two-head cache (keys past the tile must
    # count as zero even where the scratch held NaNs). Integer values: exact;
    # otherwise within 1e-5 of the sum of the terms' magnitudes.
    kernel = _kernel_source("jv4-flash-attn-tiled.inc", "JV4_FA_DP")
    _run_harness(tmp_path, "fa_dp", _FA_DP_HARNESS, kernel,
                 ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"])
