// Model: one GGUF embedding model with its llama.cpp context (and, for a
// jina-v4 base model, its task adapters and multi-vector projectors), and the
// embed pipeline (tokenize, task/role prefix, batching, pooling, L2,
// Matryoshka truncation, per-token vectors). Plain C++; knows nothing of Python.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/imatrix.hpp"
#include "engine/output.hpp"

struct llama_model;
struct llama_adapter_lora;
struct llama_context;
struct llama_vocab;

namespace jv4 {

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
  // it turns it on) and the KV cache's element type (none: f16)
  std::optional<bool> flash_attn;
  std::optional<std::string> kv_cache_type;
};

// the KV cache types a context accepts, by name ("f16", "bf16", "q8_0", ...)
const std::vector<std::string>& kv_cache_types();

// Counters that embed() advances as its decodes finish. Written by the
// thread computing, read by any other (the binding polls them to drive a
// progress bar), so reading costs the engine nothing but relaxed stores.
struct Progress {
  std::atomic<uint64_t> texts{0};         // texts whose vectors are written
  std::atomic<uint64_t> tokens{0};        // tokens decoded so far
  std::atomic<uint64_t> tokens_total{0};  // tokens of the call (known after tokenization)
};

// What embed() is asked for, after validation.
struct Request {
  std::string prefix;  // added in front of every text ("" for none)
  std::string task;    // jina-v4 task ("" for other models)
  int dim = 0;         // output width
  bool truncate = true;
  bool multivector = false;  // also per-token vectors (MultiOutput)
};

// Per-token (multi-vector) output of one call: the vectors of text i are rows
// offsets[i] .. offsets[i+1] of data (width floats a row), input order.
struct MultiOutput {
  int width = 0;
  std::vector<float> data;
  std::vector<int64_t> offsets;
};

class Model {
 public:
  Model(const std::string& path, const ModelOptions& opts);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  int n_embd() const { return n_embd_; }
  int max_length() const { return max_length_; }
  int batch_tokens() const { return batch_tokens_; }
  int n_threads() const { return n_threads_; }
  bool is_jina_v4() const { return jina_v4_; }
  const std::string& task() const { return task_; }  // "" when unknown / not jina-v4
  const std::string& pooling() const { return pooling_; }
  // Unicode normalisation the model's reference tokenizer applies before
  // tokenizing ("NFC" for the Qwen2 vocabulary, "" for none); tokenize() and
  // embed() expect text already normalised so.
  const std::string& normalization() const { return normalization_; }
  const std::string& path() const { return path_; }
  std::vector<int> dims() const;  // allowed `dim` values
  const std::map<std::string, std::string>& info() const { return info_; }
  // tasks with a loaded adapter / a multi-vector projector (in jina::tasks() order)
  std::vector<std::string> adapter_tasks() const;
  std::vector<std::string> projector_tasks() const;
  // a jina-v4 base model (from `jv4 convert`): tasks come from adapters
  bool is_base() const { return base_; }

  // Validates task/role/dim (std::invalid_argument naming the allowed values).
  // No task: the file's own; no dim: the full width.
  Request resolve(const std::optional<std::string>& task, const std::string& role,
                  std::optional<int> dim, bool truncate, bool multivector = false) const;

  // Token ids of prefix + text, exactly as embed() feeds them (before truncation).
  std::vector<int32_t> tokenize(std::string_view text, const std::string& prefix) const;

  // The first `limit` tokens of prefix + text: the head of tokenize()'s
  // result, computed from a head of the text where that is provably the same
  // (see truncation.hpp), so a 10 MB text costs what its kept tokens cost.
  // `cancel` is polled between the heads it tries.
  std::vector<int32_t> tokenize_head(std::string_view text, const std::string& prefix, size_t limit,
                                     const std::atomic<bool>* cancel = nullptr) const;

  // Embeds texts into out[texts.size() * req.dim] (row-major, input order).
  // `cancel` is polled between and inside decodes; when set, throws Cancelled.
  // `progress` (optional) is advanced after each decode.
  // With req.multivector, `multi` (required) receives every token's projected,
  // L2-normalised vector from the same decodes.
  void embed(const std::vector<std::string_view>& texts, const Request& req, float* out,
             const std::atomic<bool>* cancel, Progress* progress = nullptr, MultiOutput* multi = nullptr);

  // Runs embed()'s forward pass over texts and adds llama.cpp's importance-
  // matrix statistics of every weight product to `stats` (calibration for
  // quantize(..., imatrix)). Slower than embed: the graph is split at each
  // observed product.
  void imatrix(const std::vector<std::string_view>& texts, const Request& req, ImatrixStats& stats,
               const std::atomic<bool>* cancel, Progress* progress = nullptr);

 private:
  void ensure_context(int n_ctx_needed);
  void free_context();
  std::vector<std::vector<int32_t>> tokenize_all(const std::vector<std::string_view>& texts, const Request& req,
                                                 const std::atomic<bool>* cancel) const;
  // the decodes of tokenized texts, outputs to `out` (and `multi`); mu_ held
  void decode_all(const std::vector<std::vector<int32_t>>& toks, const Request& req, float* out,
                  const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi);
  ImatrixStats* eval_data_ = nullptr;  // set while imatrix() runs: contexts observe weight products

  std::string path_;
  llama_model* model_ = nullptr;
  const llama_vocab* vocab_ = nullptr;
  llama_context* ctx_ = nullptr;
  int ctx_size_ = 0;
  int n_embd_ = 0;
  int n_ctx_train_ = 0;
  int max_length_ = 0;
  int batch_tokens_ = 0;
  bool repack_ = false;
  bool f16_as_bf16_ = false;
  std::optional<bool> flash_attn_;
  int kv_type_ = -1;  // ggml_type of the KV cache; -1: llama.cpp's default (f16)
  std::string kv_cache_type_name() const;  // its name in kv_cache_types()
  std::string load_mode_;
  int n_seq_max_ = 0;
  int n_threads_ = 0;
  bool jina_v4_ = false;
  bool causal_ = true;
  std::string task_;
  std::string pooling_;  // "mean", "cls" or "last"
  Pooling pool_ = Pooling::Mean;
  bool base_ = false;
  std::map<std::string, llama_adapter_lora*> adapters_;
  std::map<std::string, Projector> projectors_;
  void load_adapters(const ModelOptions& opts);
  void resolve_task(const std::optional<std::string>& task_in, Request& req) const;
  std::string tokenizer_pre_;
  // tokenize_head may cut texts at piece boundaries (Qwen2's pre-tokenizer,
  // checked at load); `reserved_`: code points of special tokens, sorted
  bool head_cut_ = false;
  std::vector<uint32_t> reserved_;
  void init_head_cut();
  std::string normalization_;
  std::map<std::string, std::string> info_;
  std::mutex mu_;  // guards ctx_ (one decode at a time)
  // read by llama.cpp's abort callback during a decode
  std::atomic<const std::atomic<bool>*> cancel_{nullptr};
};

}  // namespace jv4
