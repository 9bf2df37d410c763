// ModelInfo: what a loaded model is and how it was loaded, typed, for
// Model::info() and, field by field, the binding.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace jv4 {

// What a loaded model is and how it was loaded (Model::info()): typed, and
// handed to Python field by field by the binding.
struct ModelInfo {
  std::string path, architecture, name, basename, description;
  std::optional<std::string> task;  // jina-v4 task of a merged file; none otherwise
  std::string pooling, tokenizer_pre, truncation, normalization;
  bool jina_v4 = false, base = false;
  std::vector<std::string> adapters;      // tasks with a loaded adapter
  std::optional<std::string> projector;   // the projector file
  int n_embd = 0, n_layer = 0, n_head = 0, n_vocab = 0, n_ctx_train = 0;
  int64_t n_params = 0, size_bytes = 0;
  std::string file_type;
  bool causal = true;
  // the options as they came out (load_policy.hpp)
  int n_threads = 0, max_length = 0, batch_tokens = 0;
  bool repack = false, f16_as_bf16 = false;
  std::string load_mode;  // "mmap" or "read"
  int n_gpu_layers = -1;  // -1: all
  std::optional<int> main_gpu;
  std::string flash_attn;     // "auto", "on", "off"
  std::string kv_cache_type;  // the type in use
  // cross-call batching (scheduler.hpp): on/off and the oldest call's wait
  bool coalesce = false;
  double batch_wait_ms = 0.0;
  bool batch_invariant = false;
  // image input: the vision tower loaded and its image budget (merged tokens)
  std::optional<std::string> mmproj;
  std::optional<int> image_min_tokens, image_max_tokens;
  std::optional<bool> image_f16_as_bf16, image_repack;  // how the tower's matrices are held
  std::optional<std::string> image_attention;  // the tower's flash-attention K/V type: "bf16" or "f16"
};

}  // namespace jv4
