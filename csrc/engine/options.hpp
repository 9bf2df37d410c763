// The options of a Model, by name. Filled field by field (the binding sets
// each by its name; nothing depends on their order) and read by the load
// policy (load_policy.hpp). Every field: none = the default the docs give.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace jv4 {

// the largest image budget an option may ask for (merged tokens a image):
// 16384 tokens is a 12.8 MP page; the vision tower's window mask alone then
// takes (4 x 16384)^2 floats (16 GiB), so the cap is a guard, not a target
inline constexpr int kMaxImageTokens = 16384;

// cross-call batching: how long the oldest waiting call waits for others to
// share its decode (ms; 0: no wait, calls queued meanwhile still share)
inline constexpr double kDefaultBatchWaitMs = 0.0;
// the longest text (tokens; capped by the trained context) and the token
// budget of one decode, where the options give none
inline constexpr int kDefaultMaxLength = 32768;  // the reference's max_length
inline constexpr int kDefaultBatchTokens = 512;
inline constexpr double kMaxBatchWaitMs = 1000.0;

struct ModelOptions {
  std::optional<int> n_threads;     // none: all cores
  std::optional<int> max_length;    // none: 32768 capped by the trained context
  std::optional<int> batch_tokens;  // none: default token budget per decode
  std::optional<bool> repack;       // CPU weight repacking; none: by weight type
  std::optional<int> n_gpu_layers;  // layers placed on the GPU; none: all (0: CPU only)
  std::optional<int> main_gpu;      // the GPU holding the model; none: split over all GPUs
  // jina-v4 task adapters over a base model from `jv4 convert`: (task, LoRA
  // GGUF); no task: the one the file names (a given task must agree with it)
  std::vector<std::pair<std::optional<std::string>, std::string>> adapters;
  std::optional<std::string> projector;  // multi-vector projector GGUF
  // hold F16 matrices as BF16 (converted once while the file is read);
  // none: on where ggml's CPU code has AVX512-BF16 and nothing goes to a GPU
  std::optional<bool> f16_as_bf16;
  // attention: flash attention on / off (none: llama.cpp decides; on the CPU
  // it turns it on) and the KV cache's element type (none: see
  // decide_kv_cache_type)
  std::optional<bool> flash_attn;
  std::optional<std::string> kv_cache_type;
  // image input: the vision tower (an mmproj GGUF from `jv4 convert`) and the
  // image budget in merged tokens (none: the file's, from the checkpoint)
  std::optional<std::string> mmproj;
  std::optional<int> image_min_tokens;
  std::optional<int> image_max_tokens;
  // cross-call batching (coalesce.hpp): concurrent embed() calls of one task
  // share decodes (none: off, so that a text's vector never depends on other
  // callers' traffic; jv4 serve turns it on), the oldest waiting up to
  // batch_wait_ms for company (none: kDefaultBatchWaitMs)
  std::optional<bool> coalesce;
  std::optional<double> batch_wait_ms;
  // one kernel path for every batch size (patch 0011's reference kernels,
  // repack off): a text's vector is the same bytes whatever shares its
  // decode (none: off)
  std::optional<bool> batch_invariant;
};

// the KV cache types a context accepts, by name ("f16", "bf16", "q8_0", ...)
const std::vector<std::string>& kv_cache_types();
// the ggml_type of one of them; std::invalid_argument listing them otherwise
int kv_cache_type_of(const std::string& name);

}  // namespace jv4
