// Model: one GGUF embedding model with its llama.cpp context (and, for a
// jina-v4 base model, its task adapters and multi-vector projectors), and the
// embed pipeline (tokenize, task/role prefix, batching, pooling, L2,
// Matryoshka truncation, per-token vectors). Plain C++; knows nothing of Python.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "engine/coalesce.hpp"
#include "engine/images.hpp"
#include "engine/imatrix.hpp"
#include "engine/load_policy.hpp"
#include "engine/options.hpp"
#include "engine/output.hpp"

struct llama_model;
struct llama_adapter_lora;
struct llama_context;
struct llama_vocab;

namespace jv4 {

class Vision;

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
  // cross-call batching (coalesce.hpp): on/off and the oldest call's wait
  bool coalesce = false;
  double batch_wait_ms = 0.0;
  bool batch_invariant = false;
  // image input: the vision tower loaded and its image budget (merged tokens)
  std::optional<std::string> mmproj;
  std::optional<int> image_min_tokens, image_max_tokens;
};

// Counters that embed() advances as its decodes finish. Written by the
// thread computing, read by any other (the binding polls them to drive a
// progress bar), so reading costs the engine nothing but relaxed stores.
struct Progress {
  std::atomic<uint64_t> texts{0};         // texts whose vectors are written
  std::atomic<uint64_t> tokens{0};        // tokens decoded so far
  std::atomic<uint64_t> tokens_total{0};  // tokens of the call (known after tokenization)
};

// What embed() is asked for, after validation.
// What the compute thread has done since the model loaded (Model::stats):
// for monitoring (jv4 serve's /metrics) and for tests that check calls
// really shared decodes. A snapshot; counters only grow.
struct ComputeStats {
  uint64_t calls = 0;   // embed / embed_images / imatrix calls run (cancelled while queued: not counted)
  uint64_t groups = 0;  // runs of the compute thread: a call alone, or calls sharing decodes
  uint64_t texts = 0, tokens = 0, images = 0;
  double queue_seconds = 0;    // summed over calls: queued until their group started
  double compute_seconds = 0;  // summed over groups: the group's run
  // calls per group: group_sizes[i] counts groups of <= kGroupSizeBounds[i]
  // calls and more than the bound before it (the last counts the rest)
  static constexpr int kGroupSizeBounds[] = {1, 2, 4, 8, 16, 32, 64, 128};
  std::vector<uint64_t> group_sizes = std::vector<uint64_t>(std::size(kGroupSizeBounds) + 1, 0);
};

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
  const ModelInfo& info() const { return info_; }
  ComputeStats stats() const;
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
  // Safe to call from many threads at once: the texts are tokenized on the
  // calling thread, then the call queues for the model's compute thread,
  // which runs concurrent calls of one task in shared decodes where they fit
  // one (coalesce.hpp; options coalesce, batch_wait_ms). Each call gets its
  // own rows, errors and cancellation.
  // `cancel` is polled while queued, between and inside decodes (inside only
  // when the call runs alone); when set, throws Cancelled.
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

  // Image input (a vision tower loaded with options.mmproj).
  bool has_vision() const { return vision_ != nullptr; }
  // Validates an image call's task/dim like resolve() (no role: images take
  // no prefix) and that a vision tower is loaded.
  Request resolve_images(const std::optional<std::string>& task, std::optional<int> dim, bool multivector) const;
  // Embeds images, each in the jina-v4 image prompt, into out[images.size() *
  // req.dim]: the mean of the last hidden states over <|vision_start|>, the
  // image's tokens and <|vision_end|> (the reference's span), L2, Matryoshka.
  // With req.multivector, `multi` gets every prompt token's projected vector.
  // Progress counts images. One image is decoded at a time; the KV cache is
  // cleared before each, so an image's vector does not depend on its call.
  void embed_images(const std::vector<ImageInput>& images, const Request& req, float* out,
                    const std::atomic<bool>* cancel, Progress* progress = nullptr, MultiOutput* multi = nullptr);

 private:
  void ensure_context(int n_ctx_needed);
  void free_context();

  // The compute thread: every decode of this model runs on it (ggml's OpenMP
  // team belongs to the thread that computes: one thread, one team). Calls
  // queue oldest first; run() submits one and waits for it.
  struct Call {
    QueuedCall shape;
    std::function<void()> alone;  // a call that is not a text embed
    // a text embed
    const std::vector<std::vector<int32_t>>* toks = nullptr;
    Request req;
    float* out = nullptr;
    Progress* progress = nullptr;
    MultiOutput* multi = nullptr;
    const std::atomic<bool>* cancel = nullptr;
    std::chrono::steady_clock::time_point queued_at;
    bool running = false, done = false;
    std::exception_ptr error;
  };
  void run(Call& call);
  ComputeStats stats_;  // under q_mu_
  void compute_loop();
  void run_group(const std::vector<Call*>& group);
  mutable std::mutex q_mu_;
  std::condition_variable q_cv_;     // a call queued or withdrawn, or stop
  std::condition_variable done_cv_;  // calls finished
  std::deque<Call*> queue_;
  bool stop_ = false;
  std::thread compute_;
  bool coalesce_ = false;
  bool batch_invariant_ = false;  // patch 0011's reference kernels on every context
  double batch_wait_ms_ = 0.0;
  void stop_compute();

  std::vector<std::vector<int32_t>> tokenize_all(const std::vector<std::string_view>& texts, const Request& req,
                                                 const std::atomic<bool>* cancel) const;
  // Where one text's outputs go: its vector (dim wide), its per-token rows
  // (multi, rows from multi->offsets[index]), its call's progress and error.
  struct Target {
    float* out = nullptr;
    int dim = 0;
    MultiOutput* multi = nullptr;
    size_t index = 0;  // the text's index in its call (messages, rows)
    Progress* progress = nullptr;
    std::exception_ptr* error = nullptr;  // the first error of the text's call
  };
  // the decodes of tokenized texts (one task), outputs to their targets; on
  // the compute thread
  void decode_all(const std::vector<const std::vector<int32_t>*>& toks, const std::vector<Target>& targets,
                  const Request& req, const std::atomic<bool>* cancel);
  // decode_all for the texts of one call
  void decode_call(const std::vector<std::vector<int32_t>>& toks, const Request& req, float* out,
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
  LoadPolicy policy_;
  std::optional<bool> flash_attn_;
  std::string kv_cache_type_;  // one of kv_cache_types()
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
  std::unique_ptr<Vision> vision_;
  void load_vision(const ModelOptions& opts);
  void embed_images_now(const std::vector<ImageInput>& images, const Request& req, float* out,
                        const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi);
  void set_task_adapter(const Request& req);
  void read_model_facts();
  void gather_info(const ModelOptions& opts);
  void load_adapters(const ModelOptions& opts);
  void resolve_task(const std::optional<std::string>& task_in, Request& req) const;
  std::string tokenizer_pre_;
  // tokenize_head may cut texts at piece boundaries (Qwen2's pre-tokenizer,
  // checked at load); `reserved_`: code points of special tokens, sorted
  bool head_cut_ = false;
  std::vector<uint32_t> reserved_;
  void init_head_cut();
  std::string normalization_;
  ModelInfo info_;
  std::mutex mu_;  // guards ctx_ (one decode at a time)
  // read by llama.cpp's abort callback during a decode
  std::atomic<const std::atomic<bool>*> cancel_{nullptr};
};

}  // namespace jv4
