// The load decisions (load_policy.hpp). Measurements behind each default are
// in docs/benchmarks.md; the sections are named beside each rule.
#include "engine/load_policy.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <utility>

#include "ggml.h"
#include "llama.h"

namespace jv4 {
namespace {

// KV cache element types llama.cpp's CPU attention takes (its own list for
// --cache-type-k/-v); the quantized ones need flash attention for V.
const std::vector<std::pair<std::string, ggml_type>>& kv_type_table() {
  static const std::vector<std::pair<std::string, ggml_type>> table = {
      {"f32", GGML_TYPE_F32},   {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16},
      {"q8_0", GGML_TYPE_Q8_0}, {"q5_1", GGML_TYPE_Q5_1}, {"q5_0", GGML_TYPE_Q5_0},
      {"q4_1", GGML_TYPE_Q4_1}, {"q4_0", GGML_TYPE_Q4_0}, {"iq4_nl", GGML_TYPE_IQ4_NL},
  };
  return table;
}


}  // namespace

void check_options(const ModelOptions& opts) {
  for (auto [name, v] : {std::pair{"n_threads", opts.n_threads}, std::pair{"max_length", opts.max_length},
                         std::pair{"batch_tokens", opts.batch_tokens}}) {
    if (v && *v < 1) {
      throw std::invalid_argument(std::string(name) + " must be >= 1 (or None), got " + std::to_string(*v));
    }
  }
  for (auto [name, v] : {std::pair{"image_min_tokens", opts.image_min_tokens},
                         std::pair{"image_max_tokens", opts.image_max_tokens}}) {
    if (v && (*v < 1 || *v > kMaxImageTokens)) {
      throw std::invalid_argument(std::string(name) + " must be 1.." + std::to_string(kMaxImageTokens) +
                                  " (or None), got " + std::to_string(*v));
    }
  }
  if (opts.image_min_tokens && opts.image_max_tokens && *opts.image_min_tokens > *opts.image_max_tokens) {
    throw std::invalid_argument("image_min_tokens (" + std::to_string(*opts.image_min_tokens) +
                                ") must not exceed image_max_tokens (" + std::to_string(*opts.image_max_tokens) + ")");
  }
  if ((opts.image_min_tokens || opts.image_max_tokens) && !opts.mmproj) {
    throw std::invalid_argument("image_min_tokens / image_max_tokens apply to a model loaded with its vision "
                                "tower (mmproj=)");
  }
  if (opts.batch_wait_ms && !(*opts.batch_wait_ms >= 0.0 && *opts.batch_wait_ms <= kMaxBatchWaitMs)) {
    char got[32];
    std::snprintf(got, sizeof got, "%g", *opts.batch_wait_ms);
    throw std::invalid_argument("batch_wait_ms must be 0.." + std::to_string(static_cast<int>(kMaxBatchWaitMs)) +
                                " (or None), got " + got);
  }
  if (opts.n_gpu_layers && *opts.n_gpu_layers < 0) {
    throw std::invalid_argument("n_gpu_layers must be >= 0 (0: CPU only) or None for all layers, got " +
                                std::to_string(*opts.n_gpu_layers));
  }
  if (opts.kv_cache_type) {
    const int type = kv_cache_type_of(*opts.kv_cache_type);
    if (ggml_is_quantized(static_cast<ggml_type>(type)) && opts.flash_attn == false) {
      throw std::invalid_argument("kv_cache_type='" + *opts.kv_cache_type +
                                  "' is quantized, which llama.cpp supports only with flash attention: "
                                  "use flash_attn=True or None");
    }
  }
}

const std::vector<std::string>& kv_cache_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, type] : kv_type_table()) out.push_back(name);
    return out;
  }();
  return names;
}

int kv_cache_type_of(const std::string& name) {
  std::string allowed;
  for (const auto& [n, type] : kv_type_table()) {
    if (n == name) return type;
    allowed += (allowed.empty() ? "" : ", ") + n;
  }
  throw std::invalid_argument("kv_cache_type must be one of " + allowed +
                              " (or None: the default, see the docs), got '" + name + "'");
}

LoadPolicy decide_load(const FileFacts& file, const BuildFacts& build, const ModelOptions& opts) {
  check_options(opts);
  if (opts.main_gpu && (*opts.main_gpu < 0 || *opts.main_gpu >= build.n_gpus)) {
    throw std::invalid_argument("main_gpu=" + std::to_string(*opts.main_gpu) + " but this build sees " +
                                std::to_string(build.n_gpus) + " GPU device(s)" +
                                (build.n_gpus ? " (0.." + std::to_string(build.n_gpus - 1) + ")" : std::string()));
  }
  LoadPolicy p;
  p.n_gpu_layers = opts.n_gpu_layers.value_or(-1);  // everything on the accelerator a build has
  p.main_gpu = opts.main_gpu;
  p.cpu_only = build.n_gpus == 0 || p.n_gpu_layers == 0;

  // Which tensor types have a CPU repacked layout, and whether that layout was
  // measured slower. AMD EPYC (Zen 4), mini shape, llama-bench pp512, 2
  // threads, repack on / off: Q4_K_M 1313 / 2072 tok/s (AVX-512 build), 1054 /
  // 1104 (AVX2); Q2_K 1128 / 1958 and 928 / 958; Q4_0 1416 / 1030 and 922 /
  // 742. So on x86 Q4_K and Q2_K run unrepacked by default, everything else as
  // llama.cpp decides ("Weight repacking by type"). Other architectures have
  // other repacked kernels, not measured here: their default stays llama.cpp's.
  bool repackable = false, repack_is_slower = false, f16_matrix = false;
  // batch_invariant keeps repacking only where every repacked kernel is one
  // of jv4's (patches 0004, 0005): their one-row and several-row paths do
  // the same arithmetic for each output, in the same order. llama.cpp's own
  // repacked GEMM and GEMV (Q4_0, IQ4_NL, Q4_K, Q2_K, ... and every type off
  // x86) round differently, so a file holding one of those loads unrepacked.
  bool only_invariant_repacks = build.x86;
  for (int t : file.tensor_types) {
    switch (static_cast<ggml_type>(t)) {
      case GGML_TYPE_F32:
      case GGML_TYPE_F16:
      case GGML_TYPE_BF16:
      case GGML_TYPE_Q8_0:
        break;
      default:
        only_invariant_repacks = false;
    }
    switch (static_cast<ggml_type>(t)) {
      case GGML_TYPE_F16:
        f16_matrix = true;  // (the loader checks shapes)
        break;
      case GGML_TYPE_Q4_K:
      case GGML_TYPE_Q2_K:
        if (build.x86) repack_is_slower = true;
        repackable = true;
        break;
      case GGML_TYPE_Q4_0:
      case GGML_TYPE_IQ4_NL:
        repackable = true;
        break;
      case GGML_TYPE_Q8_0:
        if (build.avx512_vnni || build.avx2) repackable = true;  // patches 0004 (VNNI), 0015 (AVX2)
        break;
      case GGML_TYPE_BF16:
        if (build.avx512_bf16) repackable = true;  // patch 0005
        break;
      default:
        break;
    }
  }
  // F16 matrices as BF16 (patch 0008): where the CPU code has AVX512-BF16 the
  // BF16 kernels ran the v4 shape 1.45 x faster than F16's. Only for
  // CPU-held weights; the file is then read, not mapped (a converted tensor
  // is a copy), and the BF16 copies are repacked like BF16 weights.
  p.f16_as_bf16 = f16_matrix && opts.f16_as_bf16.value_or(build.avx512_bf16 && p.cpu_only);
  if (p.f16_as_bf16) {
    p.mmap = false;
    if (build.avx512_bf16) repackable = true;
  }
  // The vision tower (patch 0013): its matrices are F32, F16, BF16 or Q8_0
  // (vision.cpp), so its repacked kernels on x86 are jv4's (0004, 0005), the
  // ones the text weights use; off x86 unmeasured, so off. F16 as BF16 by
  // the same rule as the text weights. Images run alone, never batched, so
  // batch_invariant does not concern them. With a GPU the tower goes there.
  p.tower_f16_as_bf16 = p.cpu_only && opts.f16_as_bf16.value_or(build.avx512_bf16);
  p.tower_repack = p.cpu_only && opts.repack.value_or(build.x86);
  // batch_invariant: llama.cpp's repacked GEMM (several rows) and GEMV (one)
  // round differently, so their layouts stay off (above)
  const bool invariant = opts.batch_invariant.value_or(false);
  if (invariant && !only_invariant_repacks && opts.repack.value_or(false)) {
    throw std::invalid_argument("batch_invariant=True needs repack off for this file (llama.cpp's repacked "
                                "kernels for its weight types round differently for one row and for several; "
                                "jv4's F16/BF16/Q8_0 ones do not); leave repack unset or pass repack=False");
  }
  p.repack = invariant && !only_invariant_repacks ? false : opts.repack.value_or(!repack_is_slower);
  // Repacked weights are copies: under mmap the file's pages of the same
  // tensors (read once to repack them) stay in the process too, e.g. v4
  // Q4_K_M peaked at file + 1.4 GiB instead of file + 0.2. Read instead.
  if (p.repack && repackable) p.mmap = false;
  return p;
}

std::string decide_kv_cache_type(const LoadPolicy& load, const BuildFacts& build, const ModelOptions& opts,
                                 int llama_file_type) {
  if (opts.kv_cache_type) return *opts.kv_cache_type;
  if (opts.flash_attn != false && load.cpu_only && build.avx512_bf16) {
    // A BF16 KV cache where flash attention multiplies it with BF16 dot
    // products (patch 0006), unless the weights are full precision: v4 F16 at
    // 8192 tokens a text ran 1.23 x faster, cosine to the reference unchanged
    // to 1e-6 ("Long texts").
    const auto ft = static_cast<llama_ftype>(llama_file_type & ~LLAMA_FTYPE_GUESSED);
    const bool full_precision = ft == LLAMA_FTYPE_ALL_F32 || (ft == LLAMA_FTYPE_MOSTLY_F16 && !load.f16_as_bf16);
    if (!full_precision) return "bf16";
  }
  return "f16";  // llama.cpp's default
}

std::string decide_tower_attention(const LoadPolicy& load, const BuildFacts& build,
                                   const std::vector<int>& tower_matrix_types) {
  if (!load.cpu_only || !build.avx512_bf16 || tower_matrix_types.empty()) return "f16";
  for (int t : tower_matrix_types) {
    const auto ty = static_cast<ggml_type>(t);
    if (ty == GGML_TYPE_F32 || (ty == GGML_TYPE_F16 && !load.tower_f16_as_bf16)) return "f16";
  }
  // BF16 or Q8_0 matrices, or F16 ones held as BF16: measured on the v4
  // page, the Q8_0 tower's attention ran at a third of the text model's
  // BF16 rate in F32 (docs/benchmarks.md, "Page images")
  return "bf16";
}

ContextPolicy decide_context(const ModelOptions& opts, int n_ctx_train, int hardware_threads) {
  ContextPolicy c;
  const int cap = n_ctx_train > 0 ? n_ctx_train : kDefaultMaxLength;
  if (opts.max_length && *opts.max_length > cap) {
    throw std::invalid_argument("max_length=" + std::to_string(*opts.max_length) +
                                " is above the model's trained context (" + std::to_string(cap) + " tokens)");
  }
  c.max_length = opts.max_length.value_or(std::min(kDefaultMaxLength, cap));
  c.batch_tokens = opts.batch_tokens.value_or(kDefaultBatchTokens);
  c.n_threads = opts.n_threads.value_or(std::max(1, hardware_threads));
  return c;
}

}  // namespace jv4
