// How a model is loaded, as a pure stage: (what the file holds, what the
// build can do, the caller's options) -> decisions. No llama.cpp calls, no
// I/O; Model::Model gathers the facts, asks here and carries the answer out.
// tests/test_load_policy.py checks it alone, as a table of inputs and
// decisions (jv4._core._stages.load_policy).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "engine/options.hpp"

namespace jv4 {

// Read from the GGUF header (no tensor data).
struct FileFacts {
  std::vector<int> tensor_types;  // ggml_type of every tensor
};

// What this build and machine offer. The CPU features are those ggml's CPU
// code was compiled with (jv4's kernel patches exist only there), not the host's.
struct BuildFacts {
  bool x86 = false;          // llama.cpp's x86 repack kernels (measured: some are slower)
  bool avx512_vnni = false;  // patch 0004: Q8_0 repacked for vpdpbusd
  bool avx2 = false;         // AVX2 + FMA + F16C; patch 0015: Q8_0 repacked for vpmaddubsw without VNNI
  bool avx512_bf16 = false;  // patches 0005/0006/0008: BF16 GEMM, BF16 attention, F16 held as BF16
  int n_gpus = 0;            // GPU devices the build sees
};

struct LoadPolicy {
  int n_gpu_layers = -1;         // llama.cpp's value: -1 all layers
  std::optional<int> main_gpu;   // the whole model on this GPU (no split)
  bool cpu_only = true;          // no layer goes to a GPU
  bool f16_as_bf16 = false;      // F16 matrices held as BF16 (patch 0008)
  bool repack = false;           // llama.cpp's CPU repacked layouts allowed
  bool mmap = true;              // map the file; false: read it (repacked or converted weights are copies)
  // the vision tower (an mmproj, read, never mapped): its F16 matrices held as
  // BF16 and its matrices in the CPU's repacked layouts (patch 0013)
  bool tower_f16_as_bf16 = false;
  bool tower_repack = false;
  std::string load_mode() const { return mmap ? "mmap" : "read"; }
};

// Checks the options that need no facts (std::invalid_argument naming the
// allowed values): counts >= 1, a known KV cache type, a quantized one only
// with flash attention possible.
void check_options(const ModelOptions& opts);

// Checks the options (as check_options, and main_gpu against the GPUs the
// build sees) and decides the load.
LoadPolicy decide_load(const FileFacts& file, const BuildFacts& build, const ModelOptions& opts);

// The KV cache type by name (one of kv_cache_types()), once the loaded
// model's llama_ftype is known: the option when given, else "bf16" where the
// flash-attention BF16 path runs (AVX512-BF16, all on the CPU, flash
// attention not off) and the weights are not full precision (F32, or F16
// kept as F16), else llama.cpp's default "f16".
std::string decide_kv_cache_type(const LoadPolicy& load, const BuildFacts& build, const ModelOptions& opts,
                                 int llama_file_type);

// The vision tower's flash-attention K and V type (patch 0014), once its
// matrices' ggml types are known (the patch convolution's aside): "bf16" by
// the rule of the text model's cache (decide_kv_cache_type), i.e. where the
// CPU code has AVX512-BF16, all on the CPU, and the tower is not full
// precision (a matrix in F32, or in F16 not held as BF16); else "f16", clip's own.
std::string decide_tower_attention(const LoadPolicy& load, const BuildFacts& build,
                                   const std::vector<int>& tower_matrix_types);

// The context sizes: max_length (the option, at most the trained context;
// default 32768 capped by it), batch_tokens and n_threads (default: every
// hardware thread). std::invalid_argument for a max_length past the cap.
struct ContextPolicy {
  int max_length = 0;
  int batch_tokens = 0;
  int n_threads = 0;
};
ContextPolicy decide_context(const ModelOptions& opts, int n_ctx_train, int hardware_threads);

}  // namespace jv4
