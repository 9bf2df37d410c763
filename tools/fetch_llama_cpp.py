#!/usr/bin/env python3
"""Fill vendor/llama.cpp/ from the pinned llama-cpp-python source distribution.

The pin (package, version, sha256, llama.cpp commit) lives in
vendor/llama.cpp.lock. The archive is fetched with pip by name and version,
its sha256 is checked against the lock, and only the parts of llama.cpp that
jv4's build, tests and benchmarks need are extracted. CMakeLists.txt runs this
script when vendor/llama.cpp/ is missing or stale; it can also be run by hand:

    python tools/fetch_llama_cpp.py            # fetch if needed
    python tools/fetch_llama_cpp.py --force    # fetch again
    python tools/fetch_llama_cpp.py --archive path/to/sdist.tar.gz

Only the standard library is used, so it runs inside pip's isolated build
environment too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "vendor" / "llama.cpp.lock"
DEST = ROOT / "vendor" / "llama.cpp"
STAMP_NAME = ".jv4-fetched"

# Paths inside llama.cpp that are kept; everything else in the archive is dropped.
KEEP_PREFIXES = (
    "CMakeLists.txt",
    "LICENSE",
    "licenses/",
    "cmake/",
    "include/",
    "src/",
    "ggml/",
    # common + third-party headers + the two tools are for the benchmarks
    "common/",
    "vendor/",
    "tools/CMakeLists.txt",
    "tools/server/",
    "tools/llama-bench/",
    "tools/mtmd/",  # llama-server links it
    "tools/ui/",    # llama-server links it (built without web assets)
    "scripts/ui-assets.cmake",
    "models/ggml-vocab-qwen2.gguf",  # also matches the .inp/.out test vectors
)


# Source patches applied after extraction: (path, exact text, replacement).
# Each text must occur exactly once, or the fetch fails loudly. Keep them few
# and explain each; they are part of the pin (a change re-extracts).
_SKIP_LM_HEAD = (
    '    cb(cur, "result_norm", -1);\n    res->t_embd = cur;\n',
    '    cb(cur, "result_norm", -1);\n    res->t_embd = cur;\n'
    '    if (cparams.embeddings) {  // jv4 patch: embeddings need no lm_head\n'
    '        ggml_build_forward_expand(gf, cur);\n'
    '        return;\n'
    '    }\n',
)


def _insert_before(path: str, anchor: str, text: str) -> tuple:
    return (path, anchor, text + anchor)


# CPU kernels. The vector code is behind `#if defined(__AVX512F__)`; other
# builds compile llama.cpp's own loops (the zeroing change is plain C++).
# Measured on the mini BF16 model, llama-bench pp512, 5 alternating runs:
# 1323 -> 1423 and 1333 -> 1388 tok/s medians (docs/benchmarks.md, "CPU
# kernel patches"); F16 unchanged.
_SGEMM = "ggml/src/ggml-cpu/llamafile/sgemm.cpp"

_KERNEL_PATCHES = (
    # tinyBLAS: one shuffle tree for the horizontal sums of a 4-row tile, and
    # accumulators zeroed one by one (`= {}` became a rep stos per tile).
    _insert_before(_SGEMM, (
        'template <int KN, typename D, typename V, typename TA, typename TB, typename TC>\n'
        'class tinyBLAS {'
    ), (
        '#if defined(__AVX512F__)\n'
        '// jv4 patch: the horizontal sums of four accumulators at once, as four\n'
        '// contiguous floats (one tree of shuffles instead of four).\n'
        'static inline __m128 jv4_hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {\n'
        '    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));\n'
        '    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));\n'
        '    const __m512 s = _mm512_add_ps(\n'
        '        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),\n'
        '        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));\n'
        '    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),\n'
        '        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));\n'
        '    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));\n'
        '}\n'
        '#endif\n'
        '\n'
    )),
    (_SGEMM, (
        '    template <int RM, int RN>\n'
        '    inline void gemm_bloc(int64_t ii, int64_t jj) {\n'
        '        D Cv[RN][RM] = {};\n'
        '        for (int64_t l = 0; l < k; l += KN) {'
    ),
     (
        '    template <int RM, int RN>\n'
        '    inline void gemm_bloc(int64_t ii, int64_t jj) {\n'
        '        // jv4 patch: zero the accumulators register by register (`= {}` made\n'
        '        // GCC clear a stack copy with rep stos on every tile)\n'
        '        D Cv[RN][RM];\n'
        '        for (int64_t j = 0; j < RN; ++j)\n'
        '            for (int64_t i = 0; i < RM; ++i)\n'
        '                Cv[j][i] = D{};\n'
        '        for (int64_t l = 0; l < k; l += KN) {'
    )),
    _insert_before(_SGEMM, (
        '        for (int64_t j = 0; j < RN; ++j)\n'
        '            for (int64_t i = 0; i < RM; ++i)\n'
        '                C[ldc * (jj + j) + (ii + i)] = hsum(Cv[j][i]);\n'
        '    }\n'
        '\n'
        '    template <int RM, int RN, int BM>\n'
        '    NOINLINE void gemm(int64_t m, int64_t n, int64_t BN) {\n'
        '        GGML_ASSERT(m % (RM * BM) == 0);'
    ), (
        '#if defined(__AVX512F__)\n'
        '        if constexpr (RM == 4 && std::is_same_v<D, __m512> && std::is_same_v<TC, float>) {\n'
        '            for (int64_t j = 0; j < RN; ++j)\n'
        '                _mm_storeu_ps(C + ldc * (jj + j) + ii, jv4_hsum4(Cv[j][0], Cv[j][1], Cv[j][2], Cv[j][3]));\n'
        '            return;\n'
        '        }\n'
        '#endif\n'
    )),
    # fp32 -> bf16 of the activations before every BF16 matmul was a scalar
    # loop (3 % of a BF16 forward pass); 16 at a time, bit-identical
    # (tests/test_kernels.py checks all 2^32 inputs against the scalar rule).
    ("ggml/src/ggml-cpu/ggml-cpu.c", (
        'void ggml_cpu_fp32_to_bf16(const float * x, ggml_bf16_t * y, int64_t n) {\n'
        '    int64_t i = 0;\n'
        '    for (; i < n; ++i) {'
    ),
     (
        'void ggml_cpu_fp32_to_bf16(const float * x, ggml_bf16_t * y, int64_t n) {\n'
        '    int64_t i = 0;\n'
        '#if defined(__AVX512F__)\n'
        '    // jv4 patch: 16 at a time, bit for bit the scalar rounding below\n'
        '    // (round to nearest even; a NaN stays a quiet NaN)\n'
        '    for (; i + 15 < n; i += 16) {\n'
        '        const __m512i u = _mm512_loadu_si512((const void *)(x + i));\n'
        '        const __m512i hi = _mm512_srli_epi32(u, 16);\n'
        '        const __mmask16 nan = _mm512_cmpgt_epu32_mask(\n'
        '            _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));\n'
        '        const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff),\n'
        '                                              _mm512_and_si512(hi, _mm512_set1_epi32(1)));\n'
        '        const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);\n'
        '        const __m512i r = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(hi, _mm512_set1_epi32(64)));\n'
        '        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(r));\n'
        '    }\n'
        '#endif\n'
        '    for (; i < n; ++i) {'
    )),
)
# A model file is untrusted input. In the loader's files a failed check
# (GGML_ASSERT / GGML_ABORT on what the file says: a token listed twice, a
# layer count out of range, expert counts that disagree, a RoPE width the
# qwen2 graph does not support) aborted the whole process. Here it throws:
# llama_model_load and llama_init_from_model catch it and the load fails
# with the check's text (jv4.ModelLoadError). Found by tools/fuzz_gguf.py;
# tests/test_fuzz.py loads such files. Checks that fire later, inside ggml's
# compute threads, cannot throw: jv4 refuses those files before loading
# (csrc/engine/gguf_check.cpp).
_CHECKS_THROW = (
    '// jv4 patch: in this file a failed check throws instead of aborting the\n'
    '// process; the model load catches it and fails with this text.\n'
    '#include <cstdio>\n'
    '#include <stdexcept>\n'
    '#include <string>\n'
    '#ifndef JV4_CHECK_TEXT\n'
    '#define JV4_CHECK_TEXT  // once per translation unit (llama.cpp may build unity files)\n'
    'template <typename... A>\n'
    'static std::string jv4_check_text(const char * file, int line, const char * fmt, A... args) {\n'
    '    char buf[1024];\n'
    '    int n = std::snprintf(buf, sizeof(buf), "%s:%d: ", file, line);\n'
    '    if (n < 0 || n >= (int) sizeof(buf)) n = 0;\n'
    '    if constexpr (sizeof...(A) == 0) { std::snprintf(buf + n, sizeof(buf) - n, "%s", fmt); }\n'
    '    else { std::snprintf(buf + n, sizeof(buf) - n, fmt, args...); }\n'
    '    return buf;\n'
    '}\n'
    '#endif\n'
    '#undef GGML_ABORT\n'
    '#define GGML_ABORT(...) throw std::runtime_error(jv4_check_text(__FILE__, __LINE__, __VA_ARGS__))\n'
    '#undef GGML_ASSERT\n'
    '#define GGML_ASSERT(x) do { if (!(x)) GGML_ABORT("GGML_ASSERT(%s) failed", #x); } while (0)\n'
    '\n'
)
_LOADER_CHECKS = (
    _insert_before("src/llama-vocab.cpp", "struct naive_trie {\n", _CHECKS_THROW),
    _insert_before("src/llama-model-loader.cpp", "static const size_t kiB = 1024;\n", _CHECKS_THROW),
    _insert_before("src/llama-model.cpp",
                   "static llama_model * llama_model_mapping(llm_arch arch, const llama_model_params & params) {\n",
                   _CHECKS_THROW),
    _insert_before("src/models/qwen2.cpp", "void llama_model_qwen2::load_arch_hparams(llama_model_loader & ml) {\n",
                   _CHECKS_THROW),
    _insert_before("src/models/qwen2vl.cpp",
                   "void llama_model_qwen2vl::load_arch_hparams(llama_model_loader & ml) {\n", _CHECKS_THROW),
)

# F16 weights as BF16. On x86 with AVX512-BF16, llama.cpp's F16 matmul
# converts F16 to fp32 inside its inner loop and ran at 0.57 x the BF16 rate
# (v4 shape, docs/benchmarks.md); a BF16 copy of the same weights runs the
# BF16 kernels. While jv4 sets the thread-local switch around a model load
# that reads the file (not one that maps it: mapped pages are the file's
# bytes), 2-D F16 weights are created as BF16 tensors (same size and strides)
# and converted in place as they are read, rounding to nearest even - the
# values transformers' bf16 reference computes with. Lazily read tensors,
# and tensors a GPU receives through pinned-memory uploads, keep F16.
# tests/test_f16.py checks the result bit for bit against a BF16 file of the
# same rounded values.
_LOADER = "src/llama-model-loader.cpp"
_F16_AS_BF16 = (
    ("include/llama.h",
     '    // Load a model from a file\n'
     '    // If the file is split into multiple parts, the file name must follow this pattern: <name>-%05d-of-%05d.gguf\n',
     '    // jv4 patch: while set on the calling thread, a model load that reads (does\n'
     '    // not map) its file keeps 2-D F16 weights as BF16, converted while read\n'
     '    LLAMA_API void llama_jv4_set_f16_as_bf16(bool on);\n'
     '\n'
     '    // Load a model from a file\n'
     '    // If the file is split into multiple parts, the file name must follow this pattern: <name>-%05d-of-%05d.gguf\n'),
    _insert_before(_LOADER, "namespace GGUFMeta {\n", (
        '// jv4 patch: F16 weights held as BF16 (see llama_jv4_set_f16_as_bf16)\n'
        '#include "ggml-cpu.h"\n'
        'static thread_local bool jv4_f16_as_bf16 = false;\n'
        'void llama_jv4_set_f16_as_bf16(bool on) { jv4_f16_as_bf16 = on; }\n'
        '// in place: n F16 values become n BF16 values (both 2 bytes), through\n'
        '// ggml-cpu\'s vectorised conversions (round to nearest even, as the scalar rule)\n'
        'static void jv4_f16_to_bf16_in_place(void * data, int64_t n) {\n'
        '    float tmp[4096];\n'
        '    for (int64_t i = 0; i < n; i += 4096) {\n'
        '        const int64_t m = n - i < 4096 ? n - i : 4096;\n'
        '        ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) data + i, tmp, m);\n'
        '        ggml_cpu_fp32_to_bf16(tmp, (ggml_bf16_t *) data + i, m);\n'
        '    }\n'
        '}\n'
        '\n'
    )),
    (_LOADER,
     '    ggml_tensor t_meta = *cur;\n'
     '    if (flags & TENSOR_ALLOW_RESHAPE) {\n',
     '    ggml_tensor t_meta = *cur;\n'
     '    if (jv4_f16_as_bf16 && !use_mmap && !is_lazy && t_meta.type == GGML_TYPE_F16 && ggml_n_dims(&t_meta) >= 2) {\n'
     '        t_meta.type = GGML_TYPE_BF16;  // jv4 patch: same size and strides, converted while read\n'
     '    }\n'
     '    if (flags & TENSOR_ALLOW_RESHAPE) {\n'),
    (_LOADER,
     '            if (ggml_backend_buffer_is_host(cur->buffer)) {\n'
     '                file->seek(weight->offs, SEEK_SET);\n'
     '                file->read_raw(cur->data, n_size);\n',
     '            // jv4 patch: an F16 weight created as BF16 is converted as it is read\n'
     '            const bool jv4_convert = cur->type == GGML_TYPE_BF16 && weight->tensor->type == GGML_TYPE_F16;\n'
     '            if (jv4_convert && !ggml_backend_buffer_is_host(cur->buffer) && upload_backend) {\n'
     '                throw std::runtime_error(format("%s: F16 as BF16 is not supported for pinned uploads", ggml_get_name(cur)));\n'
     '            }\n'
     '            if (ggml_backend_buffer_is_host(cur->buffer)) {\n'
     '                file->seek(weight->offs, SEEK_SET);\n'
     '                file->read_raw(cur->data, n_size);\n'
     '                if (jv4_convert) jv4_f16_to_bf16_in_place(cur->data, ggml_nelements(cur));\n'),
    (_LOADER,
     '                    file->read_raw(read_buf.data(), n_size);\n'
     '                    ggml_backend_tensor_set(cur, read_buf.data(), 0, n_size);\n',
     '                    file->read_raw(read_buf.data(), n_size);\n'
     '                    if (jv4_convert) jv4_f16_to_bf16_in_place(read_buf.data(), ggml_nelements(cur));  // jv4 patch\n'
     '                    ggml_backend_tensor_set(cur, read_buf.data(), 0, n_size);\n'),
)

# Q8_0 weights for AVX512-VNNI. On x86 llama.cpp multiplies Q8_0 weights in
# llamafile's tinyBLAS (256-bit, per 32-quant block a sign trick, one dot
# product and a scale product) and ran at 0.49 x Q4_K_M's rate on the v4
# shape. Here Q8_0 weights are repacked at load, 16 rows interleaved four
# quants at a time and offset by 128 as unsigned bytes, so one 512-bit
# vpdpbusd multiplies four quants of 16 rows by four quants of one token; the
# offset comes back out exactly (each accumulator starts at -128 x the sum of
# that token's quants in the block). Same 544 bytes per 16 blocks as the file,
# scales kept fp16. Only in builds whose CPU code has AVX512-VNNI (other
# levels keep tinyBLAS). tests/test_kernels.py compiles the kernel block on
# its own and checks it against exact integer arithmetic; tests/test_embed.py
# compares repacked and unrepacked Q8_0 models.
_REPACK = "ggml/src/ggml-cpu/repack.cpp"
_Q8_0_VNNI_KERNEL = r"""
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define JV4_Q8_0_VNNI 1
// jv4 patch: Q8_0 weights for AVX512-VNNI (see jv4's tools/fetch_llama_cpp.py)
// jv4-q8_0-vnni kernel begin
// 16 rows of one 32-quant block: qs[g*64 + r*4 + i] = row r's quant 4g+i,
// plus 128 as an unsigned byte; d[r] = row r's scale.
static block_q8_0x16 jv4_make_block_q8_0x16_vnni(const block_q8_0 * in) {
    block_q8_0x16 out;
    for (int r = 0; r < 16; r++) {
        out.d[r] = in[r].d;
        for (int q = 0; q < QK8_0; q++) {
            out.qs[(q / 4) * 64 + r * 4 + q % 4] = (int8_t) ((uint8_t) in[r].qs[q] ^ 0x80);
        }
    }
    return out;
}

static inline int32_t jv4_load_i32(const int8_t * p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

// -128 x the sum of each token's quants in one block_q8_0x4 (4 tokens,
// 8-quant interleave: byte j belongs to token (j % 32) / 8)
static inline __m128i jv4_q8_0x4_offsets(const block_q8_0x4 * a) {
    const __m512i k128 = _mm512_set1_epi8((char) 0x80);
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, _mm512_loadu_si512((const void *) a->qs));
    s = _mm512_dpbusd_epi32(s, k128, _mm512_loadu_si512((const void *) (a->qs + 64)));
    // lane i holds part of token (i % 8) / 2: fold lanes i + 8, then 2t + 1
    s = _mm512_add_epi32(s, _mm512_shuffle_i64x2(s, s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
    const __m256i t = _mm512_cvtepi64_epi32(s);  // lanes 0, 2, 4, 6: tokens 0..3
    return _mm_sub_epi32(_mm_setzero_si128(), _mm256_castsi256_si128(t));
}

// NG groups of 4 tokens against 16 weight rows, all nb blocks.
template <int NG>
static inline void jv4_q8_0_vnni_tile(int nb, const block_q8_0x16 * GGML_RESTRICT w,
                                      const block_q8_0x4 * GGML_RESTRICT a, const int32_t * GGML_RESTRICT off,
                                      float * GGML_RESTRICT s, size_t bs) {
    __m512 sum[NG * 4];
    for (int i = 0; i < NG * 4; i++) {
        sum[i] = _mm512_setzero_ps();
    }
    for (int l = 0; l < nb; l++) {
        __m512i wq[8];
        for (int g = 0; g < 8; g++) {
            wq[g] = _mm512_loadu_si512((const void *) (w[l].qs + 64 * g));
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) w[l].d));
        for (int h = 0; h < NG; h++) {
            const block_q8_0x4 * ab = a + (size_t) h * nb + l;
            for (int t = 0; t < 4; t++) {
                __m512i acc = _mm512_set1_epi32(off[((size_t) h * nb + l) * 4 + t]);
                for (int g = 0; g < 8; g++) {
                    const int32_t q = jv4_load_i32(ab->qs + (g / 2) * 32 + t * 8 + (g % 2) * 4);
                    acc = _mm512_dpbusd_epi32(acc, wq[g], _mm512_set1_epi32(q));
                }
                const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(GGML_CPU_FP16_TO_FP32(ab->d[t])));
                sum[h * 4 + t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), d, sum[h * 4 + t]);
            }
        }
    }
    for (int h = 0; h < NG; h++) {
        for (int t = 0; t < 4; t++) {
            _mm512_storeu_ps(s + (size_t) (h * 4 + t) * bs, sum[h * 4 + t]);
        }
    }
}

// nr tokens (a multiple of 4, as block_q8_0x4) x nc weight rows (a multiple of 16)
static void jv4_gemm_q8_0_16x4_vnni(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx,
                                    const void * GGML_RESTRICT vy, int nr, int nc) {
    const int nb = n / QK8_0;
    const int ngroups = nr / 4;
    const block_q8_0x16 * w = (const block_q8_0x16 *) vx;
    const block_q8_0x4 * a = (const block_q8_0x4 *) vy;
    // tokens in slices of 64 groups: their offsets fit a bounded buffer and
    // their activations stay in cache while every weight row passes by
    enum { SLICE = 64 };
    static thread_local std::vector<int32_t> off;
    off.resize((size_t) SLICE * nb * 4);
    for (int y0 = 0; y0 < ngroups; y0 += SLICE) {
        const int y1 = ngroups - y0 < SLICE ? ngroups : y0 + SLICE;
        for (int y = y0; y < y1; y++) {
            for (int l = 0; l < nb; l++) {
                _mm_storeu_si128((__m128i *) (off.data() + ((size_t) (y - y0) * nb + l) * 4),
                                 jv4_q8_0x4_offsets(a + (size_t) y * nb + l));
            }
        }
        for (int x = 0; x < nc / 16; x++) {
            const block_q8_0x16 * wx = w + (size_t) x * nb;
            int y = y0;
            for (; y + 2 <= y1; y += 2) {
                jv4_q8_0_vnni_tile<2>(nb, wx, a + (size_t) y * nb, off.data() + (size_t) (y - y0) * nb * 4,
                                      s + (size_t) y * 4 * bs + x * 16, bs);
            }
            for (; y < y1; y++) {
                jv4_q8_0_vnni_tile<1>(nb, wx, a + (size_t) y * nb, off.data() + (size_t) (y - y0) * nb * 4,
                                      s + (size_t) y * 4 * bs + x * 16, bs);
            }
        }
    }
}

// one token (plain block_q8_0 row) x nc weight rows
static void jv4_gemv_q8_0_16x4_vnni(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx,
                                    const void * GGML_RESTRICT vy, int nr, int nc) {
    (void) bs;
    (void) nr;
    const int nb = n / QK8_0;
    const block_q8_0x16 * w = (const block_q8_0x16 *) vx;
    const block_q8_0 * a = (const block_q8_0 *) vy;
    for (int x = 0; x < nc / 16; x++) {
        const block_q8_0x16 * wx = w + (size_t) x * nb;
        __m512 sum = _mm512_setzero_ps();
        for (int l = 0; l < nb; l++) {
            int32_t sa = 0;
            for (int q = 0; q < QK8_0; q++) {
                sa += a[l].qs[q];
            }
            __m512i acc = _mm512_set1_epi32(-128 * sa);
            for (int g = 0; g < 8; g++) {
                acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512((const void *) (wx[l].qs + 64 * g)),
                                          _mm512_set1_epi32(jv4_load_i32(a[l].qs + 4 * g)));
            }
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) wx[l].d));
            const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(GGML_CPU_FP16_TO_FP32(a[l].d)));
            sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), d, sum);
        }
        _mm512_storeu_ps(s + x * 16, sum);
    }
}
// jv4-q8_0-vnni kernel end

static int jv4_repack_q8_0_16x4_vnni(struct ggml_tensor * t, const void * GGML_RESTRICT data, size_t data_size) {
    GGML_ASSERT(t->type == GGML_TYPE_Q8_0);
    const int64_t nrow = ggml_nrows(t);
    const int64_t nblocks = t->ne[0] / QK8_0;
    GGML_ASSERT(data_size == nrow * nblocks * sizeof(block_q8_0));
    if (t->ne[1] % 16 != 0) {
        return -1;
    }
    block_q8_0x16 * dst = (block_q8_0x16 *) t->data;
    const block_q8_0 * src = (const block_q8_0 *) data;
    block_q8_0 rows[16];
    for (int64_t b = 0; b < nrow; b += 16) {
        for (int64_t x = 0; x < nblocks; x++) {
            for (int r = 0; r < 16; r++) {
                rows[r] = src[x + r * nblocks];
            }
            *dst++ = jv4_make_block_q8_0x16_vnni(rows);
        }
        src += 16 * nblocks;
    }
    return 0;
}

template <> int repack<block_q8_0, 8, 16>(struct ggml_tensor * t, const void * data, size_t data_size) {
    return jv4_repack_q8_0_16x4_vnni(t, data, data_size);
}

template <> void gemv<block_q8_0, 8, 16, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    jv4_gemv_q8_0_16x4_vnni(n, s, bs, vx, vy, nr, nc);
}

template <> void gemm<block_q8_0, 8, 16, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    jv4_gemm_q8_0_16x4_vnni(n, s, bs, vx, vy, nr, nc);
}
#endif  // jv4 patch: Q8_0 weights for AVX512-VNNI
"""
_Q8_0_VNNI = (
    (_REPACK, '#include "repack.h"\n', '#include "repack.h"\n'
     '#include <vector>  // jv4 patch: Q8_0 VNNI kernel offsets\n'),
    (_REPACK,
     'template <> void gemm<block_q8_0, 8, 4, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {\n'
     '    ggml_gemm_q8_0_4x8_q8_0(n, s, bs, vx, vy, nr, nc);\n'
     '}\n',
     'template <> void gemm<block_q8_0, 8, 4, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {\n'
     '    ggml_gemm_q8_0_4x8_q8_0(n, s, bs, vx, vy, nr, nc);\n'
     '}\n' + _Q8_0_VNNI_KERNEL),
    (_REPACK,
     '    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 4, GGML_TYPE_Q8_0> q8_0_4x8_q8_0;\n',
     '    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 4, GGML_TYPE_Q8_0> q8_0_4x8_q8_0;\n'
     '#if defined(JV4_Q8_0_VNNI)\n'
     '    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 16, GGML_TYPE_Q8_0> jv4_q8_0_16x4_vnni;  // jv4 patch\n'
     '#endif\n'),
    (_REPACK,
     '    } else if (cur->type == GGML_TYPE_Q8_0) {\n',
     '    } else if (cur->type == GGML_TYPE_Q8_0) {\n'
     '#if defined(JV4_Q8_0_VNNI)\n'
     '        if (cur->ne[1] % 16 == 0) {\n'
     '            return &jv4_q8_0_16x4_vnni;  // jv4 patch: Q8_0 weights for AVX512-VNNI\n'
     '        }\n'
     '#endif\n'),
)

# BF16 weights for AVX512-BF16 (and F16 weights, which jv4 holds as BF16 on
# such CPUs). llama.cpp multiplied BF16 weights in llamafile's tinyBLAS: one
# accumulator per (weight row, token), rows read in place, a horizontal sum
# per result. On the v4 shape it ran a 512-token text at 0.78 x transformers
# bf16 (torch's GEMM). Here BF16 matrices (rows a multiple of 16) are
# repacked at load, 16 rows interleaved by pairs of columns, so one 512-bit
# vdpbf16ps multiplies a pair of columns of 16 rows by the same pair of one
# token (broadcast): 12 tokens x 32 rows a tile, results stored as they are,
# no horizontal sums. Same bytes as the file; the activations are the BF16
# rows llama.cpp already makes. The products are exact in fp32 as before;
# only the order of the sums differs. Only in builds whose CPU code has
# AVX512-BF16 (other levels keep tinyBLAS). tests/test_kernels.py compiles the
# kernel block on its own against double-precision sums; tests/test_quantize.py
# compares repacked and unrepacked BF16 and F16 models.
_BF16_DP_KERNEL = r"""
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define JV4_BF16_DP 1
// jv4 patch: BF16 weights for AVX512-BF16 (see jv4's tools/fetch_llama_cpp.py)
// jv4-bf16-dp kernel begin
// 16 rows of k columns interleaved by column pairs: for row block b and pair
// p, out[(b * k/2 + p) * 32 + 2 * r + i] = in[(16 * b + r) * k + 2 * p + i].
static void jv4_repack_bf16_16x2(const ggml_bf16_t * GGML_RESTRICT in, ggml_bf16_t * GGML_RESTRICT out,
                                 int64_t nrow, int64_t k) {
    for (int64_t b = 0; b < nrow / 16; b++) {
        const ggml_bf16_t * src = in + b * 16 * k;
        ggml_bf16_t * dst = out + b * 16 * k;
        for (int64_t p = 0; p < k / 2; p++) {
            for (int r = 0; r < 16; r++) {
                memcpy(dst + (p * 16 + r) * 2, src + r * k + 2 * p, 2 * sizeof(ggml_bf16_t));
            }
        }
    }
}

static inline int32_t jv4_load_pair(const ggml_bf16_t * p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

// NT tokens x NW blocks of 16 rows, all kp column pairs; the loops over
// tokens and blocks are unrolled so the accumulators stay in registers
// (GCC at -O2 kept them on the stack: 0.37 x the rate)
#if defined(__GNUC__)
#define JV4_UNROLL _Pragma("GCC unroll 16")
#else
#define JV4_UNROLL
#endif
template <int NT, int NW>
static inline void jv4_bf16_dp_tile(int64_t kp, const ggml_bf16_t * GGML_RESTRICT w, size_t wstride,
                                    const ggml_bf16_t * GGML_RESTRICT a, size_t astride,
                                    float * GGML_RESTRICT s, size_t bs) {
    __m512 acc[NT][NW];
    JV4_UNROLL
    for (int t = 0; t < NT; t++) {
        JV4_UNROLL
        for (int j = 0; j < NW; j++) {
            acc[t][j] = _mm512_setzero_ps();
        }
    }
    for (int64_t p = 0; p < kp; p++) {
        __m512bh wv[NW];
        JV4_UNROLL
        for (int j = 0; j < NW; j++) {
            wv[j] = (__m512bh) _mm512_loadu_si512((const void *) (w + j * wstride + p * 32));
        }
        JV4_UNROLL
        for (int t = 0; t < NT; t++) {
            const __m512bh b = (__m512bh) _mm512_set1_epi32(jv4_load_pair(a + t * astride + 2 * p));
            JV4_UNROLL
            for (int j = 0; j < NW; j++) {
                acc[t][j] = _mm512_dpbf16_ps(acc[t][j], wv[j], b);
            }
        }
    }
    JV4_UNROLL
    for (int t = 0; t < NT; t++) {
        JV4_UNROLL
        for (int j = 0; j < NW; j++) {
            _mm512_storeu_ps(s + t * bs + j * 16, acc[t][j]);
        }
    }
}

template <int NW>
static inline void jv4_bf16_dp_rows(int64_t kp, const ggml_bf16_t * w, size_t wstride, const ggml_bf16_t * a,
                                    size_t astride, float * s, size_t bs, int nr) {
    int y = 0;
    for (; y + 12 <= nr; y += 12) {
        jv4_bf16_dp_tile<12, NW>(kp, w, wstride, a + y * astride, astride, s + y * bs, bs);
    }
    for (; y + 4 <= nr; y += 4) {
        jv4_bf16_dp_tile<4, NW>(kp, w, wstride, a + y * astride, astride, s + y * bs, bs);
    }
    for (; y < nr; y++) {
        jv4_bf16_dp_tile<1, NW>(kp, w, wstride, a + y * astride, astride, s + y * bs, bs);
    }
}

// nr tokens (BF16 rows of n) x nc weight rows (a multiple of 16, repacked)
static void jv4_gemm_bf16_16x2(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx,
                               const void * GGML_RESTRICT vy, int nr, int nc) {
    const int64_t kp = n / 2;
    const size_t wstride = (size_t) kp * 32;  // one block of 16 rows
    const ggml_bf16_t * w = (const ggml_bf16_t *) vx;
    const ggml_bf16_t * a = (const ggml_bf16_t *) vy;
    int x = 0;
    for (; x + 32 <= nc; x += 32) {
        jv4_bf16_dp_rows<2>(kp, w + (x / 16) * wstride, wstride, a, n, s + x, bs, nr);
    }
    for (; x < nc; x += 16) {
        jv4_bf16_dp_rows<1>(kp, w + (x / 16) * wstride, wstride, a, n, s + x, bs, nr);
    }
}
// jv4-bf16-dp kernel end

}  // namespace ggml::cpu::repack (the activations' conversion is a global template)
template <> void ggml_quantize_mat_t<2, GGML_TYPE_BF16>(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t nrow, int64_t n_per_row) {
    ggml_cpu_fp32_to_bf16(x, (ggml_bf16_t *) vy, nrow * n_per_row);  // rows are contiguous on both sides
}
namespace ggml::cpu::repack {

template <> int repack<ggml_bf16_t, 2, 16>(struct ggml_tensor * t, const void * data, size_t data_size) {
    GGML_ASSERT(t->type == GGML_TYPE_BF16);
    const int64_t nrow = ggml_nrows(t);
    GGML_ASSERT(data_size == (size_t) nrow * t->ne[0] * sizeof(ggml_bf16_t));
    if (t->ne[1] % 16 != 0 || t->ne[0] % 2 != 0) {
        return -1;
    }
    jv4_repack_bf16_16x2((const ggml_bf16_t *) data, (ggml_bf16_t *) t->data, nrow, t->ne[0]);
    return 0;
}

template <> void gemv<ggml_bf16_t, 2, 16, GGML_TYPE_BF16>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    jv4_gemm_bf16_16x2(n, s, bs, vx, vy, 1, nc);
    GGML_UNUSED(nr);
}

template <> void gemm<ggml_bf16_t, 2, 16, GGML_TYPE_BF16>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    jv4_gemm_bf16_16x2(n, s, bs, vx, vy, nr, nc);
}
#endif  // jv4 patch: BF16 weights for AVX512-BF16
"""
_BF16_DP = (
    (_REPACK,
     '#endif  // jv4 patch: Q8_0 weights for AVX512-VNNI\n',
     '#endif  // jv4 patch: Q8_0 weights for AVX512-VNNI\n' + _BF16_DP_KERNEL),
    (_REPACK,
     '    // instance for Q4\n',
     '#if defined(JV4_BF16_DP)\n'
     '    // jv4 patch: BF16 weights for AVX512-BF16\n'
     '    static const ggml::cpu::repack::tensor_traits<ggml_bf16_t, 2, 16, GGML_TYPE_BF16> jv4_bf16_16x2;\n'
     '    if (cur->type == GGML_TYPE_BF16) {\n'
     '        return cur->ne[1] % 16 == 0 && cur->ne[0] % 2 == 0 ? &jv4_bf16_16x2 : nullptr;\n'
     '    }\n'
     '#endif\n'
     '    // instance for Q4\n'),
)

# No tied lm_head copy. A Qwen2 file without output.weight (v4's: tied to the
# token embeddings) gets a second tensor over token_embd for the lm_head. Under
# mmap both share the file's pages; when weights are read (repacked or F16 as
# BF16) and the lm_head's buffer type differs from token_embd's (Q8_0 repacked
# for AVX512-VNNI), it was a second copy: v4 Q8_0 held file + 330 MiB more.
# jv4 never computes logits (embeddings mode skips the lm_head, above), so
# while jv4 sets this thread-local switch around its loads, the duplicate is
# not created. tests/test_quantize.py checks the resident size.
_NO_TIED_LM_HEAD = (
    ("include/llama.h",
     '    LLAMA_API void llama_model_free(struct llama_model * model);\n',
     '    LLAMA_API void llama_model_free(struct llama_model * model);\n'
     '\n'
     '    // jv4 patch: while set on the calling thread, a model load does not make\n'
     '    // the lm_head a copy of the token embeddings (embeddings need no lm_head)\n'
     '    LLAMA_API void llama_jv4_set_no_lm_head(bool on);\n'
     '    LLAMA_API bool llama_jv4_no_lm_head(void);\n'),
    _insert_before("src/llama-model.cpp", "void llama_model_free(llama_model * model) {\n", (
        '// jv4 patch: see llama_jv4_set_no_lm_head\n'
        'static thread_local bool jv4_no_lm_head = false;\n'
        'void llama_jv4_set_no_lm_head(bool on) { jv4_no_lm_head = on; }\n'
        'bool llama_jv4_no_lm_head(void) { return jv4_no_lm_head; }\n'
        '\n'
    )),
) + tuple(
    (f"src/models/{arch}.cpp",
     '    // if output is NULL, init from the input tok embed\n'
     '    if (output == NULL) {\n',
     '    // if output is NULL, init from the input tok embed\n'
     '    if (output == NULL && !llama_jv4_no_lm_head()) {  // jv4 patch: not for an embedder\n')
    for arch in ("qwen2", "qwen2vl"))

# Flash attention's tiled CPU path (prompts of 64+ tokens, F16/F32 KV cache):
# three of its loops were scalar and took 46 % of the function on a long text
# (perf, mini shape, 8192 tokens): the transposed F16 -> F32 packing of each
# K tile (table lookups, strided stores), the mask conversion (per element,
# with a compare), and the row maximum. On AVX-512 the K tile is converted and
# transposed 16 x 16 in registers; the mask goes through ggml's vector
# conversion and its skip test stops at the first visible key; the maximum is
# 16 lanes at a time. Same values (exact conversions, same products);
# tests/test_attention.py compares chunked long texts with transformers.
_OPS = "ggml/src/ggml-cpu/ops.cpp"

# A BF16 KV cache multiplied with vdpbf16ps in flash attention's tiled path
# (part of _FA_TILED below): Q and the softmax weights are rounded to BF16
# (the reference's own bf16 attention does the same), K and V stay as cached;
# 64 multiply-adds per instruction where the F32 path has 32 (perf: the F32
# path's FMAs were the whole of attention on long texts after the patches
# above). Sums and the softmax stay F32. Only a BF16 cache takes it;
# tests/test_kernels.py checks the helpers against double-precision sums and
# tests/test_attention.py the whole path against transformers.
_FA_DP_HELPERS = r"""#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define JV4_FA_DP 1
// jv4-fa-dp kernel begin
// K tile as column pairs: kp[p * KV + t] = elements (2p, 2p + 1) of key t,
// zero for keys past kv_tile (rows of BF16, nbk1 bytes apart)
static void jv4_fa_dp_pack_k(int32_t * kp, const char * k0, size_t nbk1, int64_t DK, int kv_tile, int KV) {
    int t = 0;
    for (; t + 16 <= kv_tile; t += 16) {
        for (int64_t d0 = 0; d0 < DK; d0 += 32) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                r[i] = _mm512_castsi512_ps(_mm512_loadu_si512((const void *) (k0 + (t + i) * nbk1 + d0 * 2)));
            }
            jv4_transpose_16x16(r);
            for (int j = 0; j < 16; j++) {
                _mm512_storeu_ps((float *) (kp + (d0 / 2 + j) * KV + t), r[j]);
            }
        }
    }
    for (; t < KV; t++) {
        for (int64_t p = 0; p < DK / 2; p++) {
            int32_t pair = 0;
            if (t < kv_tile) {
                memcpy(&pair, k0 + t * nbk1 + p * 4, 4);
            }
            kp[p * KV + t] = pair;
        }
    }
}

// V tile as row pairs: vp[u * DV + d] = (V[2u][d], V[2u + 1][d]), zero past kv_tile
static void jv4_fa_dp_pack_v(int32_t * vp, const char * v0, size_t nbv1, int64_t DV, int kv_tile, int KV) {
    for (int u = 0; u < KV / 2; u++) {
        for (int64_t d = 0; d < DV; d += 16) {
            __m512i lo = _mm512_setzero_si512();
            __m512i hi = _mm512_setzero_si512();
            if (2 * u < kv_tile) {
                lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (v0 + (2 * u) * nbv1 + d * 2)));
            }
            if (2 * u + 1 < kv_tile) {
                hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (v0 + (2 * u + 1) * nbv1 + d * 2)));
            }
            _mm512_storeu_si512((void *) (vp + u * DV + d), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

static inline int32_t jv4_fa_dp_pair(const void * p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

// kq[q][t] = sum over d of Q[q][d] K[t][d] for nq (a multiple of 4) BF16 rows
// of Q and KV (a multiple of 64) keys packed by jv4_fa_dp_pack_k
static void jv4_fa_dp_qk(float * kq, const ggml_bf16_t * qb, const int32_t * kp, int nq, int64_t DK, int KV) {
    for (int q0 = 0; q0 < nq; q0 += 4) {
        for (int j = 0; j < KV; j += 64) {
            __m512 acc[4][4];
            for (int i = 0; i < 4; i++) {
                for (int r = 0; r < 4; r++) {
                    acc[i][r] = _mm512_setzero_ps();
                }
            }
            for (int64_t p = 0; p < DK / 2; p++) {
                __m512bh kv[4];
                for (int r = 0; r < 4; r++) {
                    kv[r] = (__m512bh) _mm512_loadu_si512((const void *) (kp + p * KV + j + 16 * r));
                }
                for (int i = 0; i < 4; i++) {
                    const __m512bh b = (__m512bh) _mm512_set1_epi32(jv4_fa_dp_pair(qb + (q0 + i) * DK + 2 * p));
                    for (int r = 0; r < 4; r++) {
                        acc[i][r] = _mm512_dpbf16_ps(acc[i][r], kv[r], b);
                    }
                }
            }
            for (int i = 0; i < 4; i++) {
                for (int r = 0; r < 4; r++) {
                    _mm512_storeu_ps(kq + (q0 + i) * KV + j + 16 * r, acc[i][r]);
                }
            }
        }
    }
}

// each of nq rows of kq (KV floats, KV a multiple of 32) rounded to BF16 in
// place: the row's KV BF16 values start where its floats did
static void jv4_fa_dp_rows_to_bf16(float * kq, int nq, int KV) {
    for (int q = 0; q < nq; q++) {
        float * row = kq + q * KV;
        for (int i = 0; i < KV; i += 32) {
            const __m512 a = _mm512_loadu_ps(row + i);
            const __m512 b = _mm512_loadu_ps(row + i + 16);
            _mm512_storeu_si512((void *) ((ggml_bf16_t *) row + i), (__m512i) _mm512_cvtne2ps_pbh(b, a));
        }
    }
}

// vkq[q][d] += sum over t of P[q][t] V[t][d]: P as BF16 rows made by
// jv4_fa_dp_rows_to_bf16 (row stride KV floats), V packed by jv4_fa_dp_pack_v,
// nq a multiple of 4, DV of 64
static void jv4_fa_dp_pv(float * vkq, const float * kq, const int32_t * vp, int nq, int64_t DV, int KV) {
    for (int q0 = 0; q0 < nq; q0 += 4) {
        for (int64_t d0 = 0; d0 < DV; d0 += 64) {
            __m512 acc[4][4];
            for (int i = 0; i < 4; i++) {
                for (int r = 0; r < 4; r++) {
                    acc[i][r] = _mm512_loadu_ps(vkq + (q0 + i) * DV + d0 + 16 * r);
                }
            }
            for (int u = 0; u < KV / 2; u++) {
                __m512bh vv[4];
                for (int r = 0; r < 4; r++) {
                    vv[r] = (__m512bh) _mm512_loadu_si512((const void *) (vp + u * DV + d0 + 16 * r));
                }
                for (int i = 0; i < 4; i++) {
                    const __m512bh b = (__m512bh) _mm512_set1_epi32(
                        jv4_fa_dp_pair((const ggml_bf16_t *) (kq + (q0 + i) * KV) + 2 * u));
                    for (int r = 0; r < 4; r++) {
                        acc[i][r] = _mm512_dpbf16_ps(acc[i][r], vv[r], b);
                    }
                }
            }
            for (int i = 0; i < 4; i++) {
                for (int r = 0; r < 4; r++) {
                    _mm512_storeu_ps(vkq + (q0 + i) * DV + d0 + 16 * r, acc[i][r]);
                }
            }
        }
    }
}
// jv4-fa-dp kernel end
#endif

"""
_FA_TILED = (
    _insert_before(_OPS, "static void ggml_compute_forward_flash_attn_ext_tiled(\n", (
        '#if defined(__AVX512F__)\n'
        '// jv4 patch: 16 rows of 16 floats become 16 columns (r[j] = element j of every row)\n'
        'static inline void jv4_transpose_16x16(__m512 r[16]) {\n'
        '    __m512 t[16];\n'
        '    for (int i = 0; i < 8; i++) {\n'
        '        t[2 * i]     = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);\n'
        '        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);\n'
        '    }\n'
        '    __m512 u[16];\n'
        '    for (int g = 0; g < 4; g++) {\n'
        '        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);\n'
        '        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);\n'
        '        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));\n'
        '        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));\n'
        '        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));\n'
        '        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));\n'
        '    }\n'
        '    for (int e = 0; e < 4; e++) {\n'
        '        const __m512 x0 = _mm512_shuffle_f32x4(u[e], u[4 + e], _MM_SHUFFLE(1, 0, 1, 0));\n'
        '        const __m512 x1 = _mm512_shuffle_f32x4(u[e], u[4 + e], _MM_SHUFFLE(3, 2, 3, 2));\n'
        '        const __m512 y0 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], _MM_SHUFFLE(1, 0, 1, 0));\n'
        '        const __m512 y1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], _MM_SHUFFLE(3, 2, 3, 2));\n'
        '        r[e]      = _mm512_shuffle_f32x4(x0, y0, _MM_SHUFFLE(2, 0, 2, 0));\n'
        '        r[4 + e]  = _mm512_shuffle_f32x4(x0, y0, _MM_SHUFFLE(3, 1, 3, 1));\n'
        '        r[8 + e]  = _mm512_shuffle_f32x4(x1, y1, _MM_SHUFFLE(2, 0, 2, 0));\n'
        '        r[12 + e] = _mm512_shuffle_f32x4(x1, y1, _MM_SHUFFLE(3, 1, 3, 1));\n'
        '    }\n'
        '}\n'
        '#endif\n'
        '\n'
        + _FA_DP_HELPERS
    )),
    (_OPS,
     '                    for (int tk = 0; tk < kv_tile; tk++) {\n'
     '                        mask32[tq * KV_TILE_SZ + tk] = slope * GGML_CPU_FP16_TO_FP32(mp_row[ic + tk]);\n'
     '                        if (mask32[tq * KV_TILE_SZ + tk] != -INFINITY) {\n'
     '                            can_skip = false;\n'
     '                        }\n'
     '                    }\n',
     '                    // jv4 patch: ggml\'s vector conversion; the skip test stops at the first visible key\n'
     '                    float * m_row = mask32 + tq * KV_TILE_SZ;\n'
     '                    ggml_cpu_fp16_to_fp32(mp_row + ic, m_row, kv_tile);\n'
     '                    if (slope != 1.0f) {\n'
     '                        ggml_vec_scale_f32(kv_tile, m_row, slope);\n'
     '                    }\n'
     '                    for (int tk = 0; can_skip && tk < kv_tile; tk++) {\n'
     '                        if (m_row[tk] != -INFINITY) {\n'
     '                            can_skip = false;\n'
     '                        }\n'
     '                    }\n'),
    (_OPS,
     '            // Zero-pad the last tile so the GEMM always operates on KV_TILE_SZ columns\n'
     '            for (int tk = 0; tk < kv_tile; tk++) {\n',
     '            // Zero-pad the last tile so the GEMM always operates on KV_TILE_SZ columns\n'
     '            int tk_done = jv4_dp ? kv_tile : 0;  // the BF16 path packs its own tile\n'
     '#if defined(__AVX512F__)\n'
     '            // jv4 patch: F16 / BF16 rows 16 at a time, converted and transposed in registers\n'
     '            if ((kv_type == GGML_TYPE_F16 || kv_type == GGML_TYPE_BF16) && DK % 16 == 0) {\n'
     '                for (; tk_done + 16 <= kv_tile; tk_done += 16) {\n'
     '                    const uint16_t * rows[16];\n'
     '                    for (int t = 0; t < 16; t++) {\n'
     '                        rows[t] = (const uint16_t *)((const char *)k->data + (ic + tk_done + t)*nbk1 + ik2*nbk2 + ik3*nbk3);\n'
     '                    }\n'
     '                    for (int64_t d0 = 0; d0 < DK; d0 += 16) {\n'
     '                        __m512 r[16];\n'
     '                        for (int t = 0; t < 16; t++) {\n'
     '                            const __m256i h = _mm256_loadu_si256((const __m256i *)(rows[t] + d0));\n'
     '                            r[t] = kv_type == GGML_TYPE_F16 ? _mm512_cvtph_ps(h)\n'
     '                                 : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));\n'
     '                        }\n'
     '                        jv4_transpose_16x16(r);\n'
     '                        for (int j = 0; j < 16; j++) {\n'
     '                            _mm512_storeu_ps(K_f32 + (d0 + j) * KV_TILE_SZ + tk_done, r[j]);\n'
     '                        }\n'
     '                    }\n'
     '                }\n'
     '            }\n'
     '#endif\n'
     '            for (int tk = tk_done; tk < kv_tile; tk++) {\n'),
    (_OPS,
     '                float tile_max;\n'
     '                ggml_vec_max_f32(KV_TILE_SZ, &tile_max, kq_row);\n',
     '                float tile_max;\n'
     '#if defined(__AVX512F__)\n'
     '                if (KV_TILE_SZ % 16 == 0) {  // jv4 patch: 16 lanes at a time\n'
     '                    __m512 mx = _mm512_loadu_ps(kq_row);\n'
     '                    for (int i = 16; i < KV_TILE_SZ; i += 16) {\n'
     '                        mx = _mm512_max_ps(mx, _mm512_loadu_ps(kq_row + i));\n'
     '                    }\n'
     '                    tile_max = _mm512_reduce_max_ps(mx);\n'
     '                } else\n'
     '#endif\n'
     '                ggml_vec_max_f32(KV_TILE_SZ, &tile_max, kq_row);\n'),
    # a BF16 KV cache takes the tiled path too (its values widen exactly to
    # F32); it took llama.cpp's one-row-at-a-time path, 0.70 x the F16 cache's
    # rate already at 512 tokens a text (v4 shape, bench/long.py)
    (_OPS,
     '                                kv_is_f32_or_f16 &&\n'
     '                                k->type == v->type &&\n',
     '                                (kv_is_f32_or_f16 || k->type == GGML_TYPE_BF16) &&  // jv4 patch: BF16 too\n'
     '                                k->type == v->type &&\n'),
    (_OPS,
     '                        K_f32[dk * KV_TILE_SZ + tk] = GGML_CPU_FP16_TO_FP32(k_f16[dk]);\n'
     '                    }\n'
     '                } else {\n',
     '                        K_f32[dk * KV_TILE_SZ + tk] = GGML_CPU_FP16_TO_FP32(k_f16[dk]);\n'
     '                    }\n'
     '                } else if (kv_type == GGML_TYPE_BF16) {  // jv4 patch\n'
     '                    const ggml_bf16_t * k_bf16 = (const ggml_bf16_t *)k_data;\n'
     '                    for (int64_t dk = 0; dk < DK; dk++) {\n'
     '                        K_f32[dk * KV_TILE_SZ + tk] = GGML_BF16_TO_FP32(k_bf16[dk]);\n'
     '                    }\n'
     '                } else {\n'),
    (_OPS,
     '                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *)v_data, V32 + tk * DV, DV);\n'
     '                } else {\n',
     '                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *)v_data, V32 + tk * DV, DV);\n'
     '                } else if (kv_type == GGML_TYPE_BF16) {  // jv4 patch\n'
     '                    ggml_cpu_bf16_to_fp32((const ggml_bf16_t *)v_data, V32 + tk * DV, DV);\n'
     '                } else {\n'),    # the BF16 dot-product path (helpers above)
    (_OPS,
     '    GGML_ASSERT(k->type == v->type);\n'
     '    const ggml_type kv_type = k->type;\n',
     '    GGML_ASSERT(k->type == v->type);\n'
     '    const ggml_type kv_type = k->type;\n'
     '#if defined(JV4_FA_DP)\n'
     '    // jv4 patch: a BF16 cache multiplies with vdpbf16ps (Q and softmax weights rounded to BF16)\n'
     '    const bool jv4_dp = kv_type == GGML_TYPE_BF16 && DK % 32 == 0 && DV % 64 == 0 &&\n'
     '                        ggml_fa_tile_config::KV % 64 == 0 && ggml_fa_tile_config::Q % 4 == 0;\n'
     '#else\n'
     '    const bool jv4_dp = false;\n'
     '#endif\n'),
    (_OPS,
     '            for (int tq = tile_rows; tq < Q_TILE_SZ; tq++) {\n'
     '                memset(Q_f32 + tq * DK, 0, DK * sizeof(float));\n'
     '            }\n'
     '        }\n',
     '            for (int tq = tile_rows; tq < Q_TILE_SZ; tq++) {\n'
     '                memset(Q_f32 + tq * DK, 0, DK * sizeof(float));\n'
     '            }\n'
     '        }\n'
     '#if defined(JV4_FA_DP)\n'
     '        if (jv4_dp) {  // jv4 patch: the Q tile as BF16 rows\n'
     '            ggml_bf16_t * Q_bf = (ggml_bf16_t *)Q_q;\n'
     '            for (int tq = 0; tq < tile_rows; tq++) {\n'
     '                const float * pq = (const float *) ((char *) q->data + ((iq1 + tq)*nbq1 + iq2*nbq2 + iq3*nbq3));\n'
     '                ggml_cpu_fp32_to_bf16(pq, Q_bf + tq * DK, DK);\n'
     '            }\n'
     '            memset(Q_bf + tile_rows * DK, 0, (Q_TILE_SZ - tile_rows) * DK * sizeof(ggml_bf16_t));\n'
     '        }\n'
     '#endif\n'),
    (_OPS,
     '            memset(KQ, 0, Q_TILE_SZ * KV_TILE_SZ * sizeof(float));\n'
     '            simd_gemm(KQ, (const float *)Q_q, K_f32, Q_TILE_SZ, DK, KV_TILE_SZ);\n',
     '#if defined(JV4_FA_DP)\n'
     '            if (jv4_dp) {  // jv4 patch\n'
     '                const char * k0 = (const char *)k->data + ic*nbk1 + ik2*nbk2 + ik3*nbk3;\n'
     '                jv4_fa_dp_pack_k((int32_t *)K_f32, k0, nbk1, DK, kv_tile, KV_TILE_SZ);\n'
     '                jv4_fa_dp_qk(KQ, (const ggml_bf16_t *)Q_q, (const int32_t *)K_f32, Q_TILE_SZ, DK, KV_TILE_SZ);\n'
     '            } else\n'
     '#endif\n'
     '            {\n'
     '            memset(KQ, 0, Q_TILE_SZ * KV_TILE_SZ * sizeof(float));\n'
     '            simd_gemm(KQ, (const float *)Q_q, K_f32, Q_TILE_SZ, DK, KV_TILE_SZ);\n'
     '            }\n'),
    (_OPS,
     '            // Pack V tile to contiguous F32, zero-padded\n'
     '            for (int tk = 0; tk < kv_tile; tk++) {\n',
     '            // Pack V tile to contiguous F32, zero-padded\n'
     '            for (int tk = 0; !jv4_dp && tk < kv_tile; tk++) {  // jv4 patch: not for the BF16 path\n'),
    (_OPS,
     '            simd_gemm(VKQ32, KQ, V32, Q_TILE_SZ, KV_TILE_SZ, DV);\n'
     '        }\n',
     '#if defined(JV4_FA_DP)\n'
     '            if (jv4_dp) {  // jv4 patch\n'
     '                const char * v0 = (const char *)v->data + ic*nbv1 + iv2*nbv2 + iv3*nbv3;\n'
     '                jv4_fa_dp_rows_to_bf16(KQ, Q_TILE_SZ, KV_TILE_SZ);\n'
     '                jv4_fa_dp_pack_v((int32_t *)V32, v0, nbv1, DV, kv_tile, KV_TILE_SZ);\n'
     '                jv4_fa_dp_pv(VKQ32, KQ, (const int32_t *)V32, Q_TILE_SZ, DV, KV_TILE_SZ);\n'
     '            } else\n'
     '#endif\n'
     '            simd_gemm(VKQ32, KQ, V32, Q_TILE_SZ, KV_TILE_SZ, DV);\n'
     '        }\n'),
)

PATCHES = (
    # In embeddings mode llama.cpp still multiplies every output token by the
    # lm_head (vocab 151936 x hidden) and keeps a logits buffer of
    # n_vocab x n_outputs floats. An embedder never reads logits: skip both.
    ("src/models/qwen2.cpp",) + _SKIP_LM_HEAD,
    ("src/models/qwen2vl.cpp",) + _SKIP_LM_HEAD,
    ("src/llama-context.cpp",
     "    bool has_logits     = true;\n",
     "    bool has_logits     = !cparams.embeddings;  // jv4 patch: no logits buffer for embedders\n"),
) + _KERNEL_PATCHES + _Q8_0_VNNI + _BF16_DP + _FA_TILED + _LOADER_CHECKS + _F16_AS_BF16 + _NO_TIED_LM_HEAD


class FetchError(RuntimeError):
    pass


def extraction_digest(patches: tuple) -> str:
    """Identifies what an extraction holds: the patches and the kept paths."""
    return hashlib.sha256(repr((patches, KEEP_PREFIXES)).encode()).hexdigest()[:16]


def apply_patches(root: Path, patches: tuple) -> None:
    for rel, old, new in patches:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise FetchError(f"patch for {rel} does not apply ({text.count(old)} matches); "
                             "the pinned llama.cpp and PATCHES in tools/fetch_llama_cpp.py disagree")
        path.write_text(text.replace(old, new), encoding="utf-8")


def read_lock(path: Path = LOCK) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FetchError(f"{path}: malformed line {line!r}")
        fields[key.strip()] = value.strip()
    for key in ("package", "version", "archive", "sha256", "llama_cpp_commit"):
        if key not in fields:
            raise FetchError(f"{path}: missing field {key!r}")
    return fields


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(archive: Path, expected: str) -> None:
    actual = sha256_of(archive)
    if actual != expected:
        raise FetchError(
            f"sha256 checksum mismatch for {archive}:\n"
            f"  expected {expected} (vendor/llama.cpp.lock)\n"
            f"  got      {actual}\n"
            "The archive is corrupt or not the pinned release; delete it and fetch again."
        )


def pip_download(lock: dict[str, str], into: Path) -> Path:
    """Download the sdist with pip, by name and version."""
    spec = f"{lock['package']}=={lock['version']}"
    # -I: ignore PYTHONPATH, so that inside pip's isolated build environment the
    # interpreter's own pip is found again.
    cmd = [
        sys.executable, "-I", "-m", "pip", "download",
        "--no-deps", "--no-binary", lock["package"],
        "--disable-pip-version-check", "-d", str(into), spec,
    ]
    print(f"jv4: fetching {spec} with pip", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    archive = into / lock["archive"]
    if proc.returncode != 0 or not archive.is_file():
        raise FetchError(
            f"pip could not download {spec} (exit {proc.returncode}).\n"
            f"{proc.stdout[-3000:]}\n"
            "Download it yourself and pass it with --archive "
            "(or set JV4_LLAMA_CPP_ARCHIVE for the build)."
        )
    return archive


def extract(archive: Path, lock: dict[str, str], dest: Path, patches: tuple) -> None:
    prefix = f"{lock['archive'].removesuffix('.tar.gz')}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        kept = 0
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not rel or not rel.startswith(KEEP_PREFIXES):
                    continue
                if not (m.isfile() or m.isdir()):
                    continue  # no links or devices from an archive
                m.name = rel
                members.append(m)
                kept += m.isfile()
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python without extraction filters (< 3.9.17): check names ourselves
                for m in members:
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise FetchError(f"{archive}: unsafe member name {m.name!r}")
                tar.extractall(tmp, members=members)
        if kept == 0 or not (tmp / "CMakeLists.txt").is_file():
            raise FetchError(f"{archive} does not carry llama.cpp under {prefix}")
        apply_patches(tmp, patches)
        (tmp / STAMP_NAME).write_text(
            f"{lock['package']}=={lock['version']}\nsha256={lock['sha256']}\n"
            f"llama_cpp_commit={lock['llama_cpp_commit']}\npatches={extraction_digest(patches)}\n",
            encoding="utf-8",
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        print(f"jv4: extracted {kept} llama.cpp files into {dest}", file=sys.stderr)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_current(dest: Path, lock: dict[str, str], patches: tuple) -> bool:
    stamp = dest / STAMP_NAME
    if not stamp.is_file():
        return False
    text = stamp.read_text(encoding="utf-8")
    return f"sha256={lock['sha256']}" in text and f"patches={extraction_digest(patches)}" in text


def fetch(*, dest: Path = DEST, archive: Path | None = None, force: bool = False,
          lock_path: Path = LOCK, patched: bool = True) -> Path:
    lock = read_lock(lock_path)
    patches = PATCHES if patched else ()
    if not force and archive is None and is_current(dest, lock, patches):
        return dest
    if archive is None:
        env_archive = os.environ.get("JV4_LLAMA_CPP_ARCHIVE")
        archive = Path(env_archive) if env_archive else None
    if archive is None:
        cached = DEST.parent / lock["archive"]  # kept in vendor/, ignored by git
        if not cached.is_file():
            with tempfile.TemporaryDirectory() as d:
                got = pip_download(lock, Path(d))
                verify(got, lock["sha256"])
                shutil.copyfile(got, cached)
        archive = cached
    if not archive.is_file():
        raise FetchError(f"archive not found: {archive}")
    verify(archive, lock["sha256"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    extract(archive, lock, dest, patches)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="use this sdist instead of downloading")
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--lock", type=Path, default=LOCK)
    ap.add_argument("--force", action="store_true", help="extract again even if current")
    ap.add_argument("--no-patches", action="store_true",
                    help="upstream sources as released (for benchmarking peers), not for jv4")
    args = ap.parse_args(argv)
    try:
        fetch(dest=args.dest, archive=args.archive, force=args.force, lock_path=args.lock,
              patched=not args.no_patches)
    except FetchError as e:
        print(f"jv4: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
