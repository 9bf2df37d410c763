// The executor: one model's llama.cpp context and the one driver of every
// decode. It runs sequences - a text (its tokens), or an image prompt (text
// tokens, the vision tower's embedding rows with their M-RoPE positions,
// text tokens) - by a plan (batch_plan.hpp), with llama.cpp's pooling off so
// every output token's last hidden state comes back, and hands each to the
// output stage (output.hpp: pooling over the sequence's pooled positions,
// L2, Matryoshka, per-token projection). It owns what every call needs
// around its decodes: the context's size (grown for a long sequence, given
// back after the call), the task adapter, the cancel flag llama.cpp polls,
// progress counters and each sequence's error. Plain C++ over llama.cpp.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/imatrix.hpp"
#include "engine/output.hpp"

struct llama_model;
struct llama_adapter_lora;
struct llama_context;

namespace jv4 {

// Counters a call advances as its decodes finish. Written by the compute
// thread, read by any other (the binding polls them for a progress bar).
struct Progress {
  std::atomic<uint64_t> texts{0};         // texts (images) whose vectors are written
  std::atomic<uint64_t> tokens{0};        // tokens decoded so far
  std::atomic<uint64_t> tokens_total{0};  // tokens of the call (known after tokenization)
};

// Per-token (multi-vector) output of one call: the vectors of input i are
// rows offsets[i] .. offsets[i+1] of data (width floats a row), input order.
struct MultiOutput {
  int width = 0;
  std::vector<float> data;
  std::vector<int64_t> offsets;
};

// A run of one sequence's positions decoded the same way: tokens, or rows of
// the model's input width with 4 M-RoPE position streams (t, y, x, z).
struct Segment {
  const int32_t* tokens = nullptr;  // n token ids at positions pos0 .. pos0 + n - 1 (n may be 0)
  const float* rows = nullptr;      // or n embedding rows (a rows segment: rows != nullptr)
  const int32_t* pos4 = nullptr;    // with rows: 4 x n positions, stream by stream
  int n = 0;
  int pos0 = 0;
};

// One sequence and where its outputs go.
struct Sequence {
  std::vector<Segment> segments;
  int pool_begin = 0, pool_end = 0;  // pooled positions [begin, end) of the sequence
  Pooling pool = Pooling::Mean;
  float* out = nullptr;  // its vector, dim wide
  int dim = 0;
  MultiOutput* multi = nullptr;  // its per-token rows from multi->offsets[index]; null for none
  size_t index = 0;              // its index in its call (messages, rows)
  Progress* progress = nullptr;
  std::exception_ptr* error = nullptr;  // the first error of its call
};

struct ExecutorConfig {
  llama_model* model = nullptr;
  std::string path;  // messages
  int n_embd = 0, n_embd_inp = 0;
  int batch_tokens = 0, n_threads = 0;  // as the context policy decided (load_policy.hpp)
  std::optional<bool> flash_attn;
  int kv_type = 0;  // ggml_type of the KV cache
  bool batch_invariant = false;  // patch 0011's reference kernels
  const std::map<std::string, llama_adapter_lora*>* adapters = nullptr;  // a base model's, by task
  const std::map<std::string, Projector>* projectors = nullptr;          // multi-vector, by task
};

class Executor {
 public:
  explicit Executor(ExecutorConfig cfg);  // creates the context (ModelLoadError when it cannot)
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  int batch_tokens() const { return cfg_.batch_tokens; }
  int max_seqs() const { return n_seq_max_; }
  bool causal() const;

  // One call's hold on the context: one decode at a time, the call's cancel
  // flag polled inside llama.cpp's decodes, its task's adapter; on leaving,
  // the cache cleared and a context grown for a long sequence given back.
  class Session {
   public:
    Session(Executor& ex, const std::string& task, const std::atomic<bool>* cancel);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    // Decodes `seqs` (all single-segment: packed, text by text; otherwise
    // each alone, segment by segment) and writes every output. Cancelled
    // when the flag is set; a sequence's output error goes to its `error`.
    void run(const std::vector<Sequence>& seqs);

   private:
    Executor& ex_;
    std::lock_guard<std::mutex> lock_;
    std::string task_;
    const std::atomic<bool>* cancel_;
  };

  // While it lives, the context observes every weight product into `stats`
  // (imatrix: llama.cpp splits the graph at each; slow).
  class Observe {
   public:
    Observe(Executor& ex, ImatrixStats* stats);
    ~Observe();

   private:
    Executor& ex_;
  };

 private:
  void ensure(int n_ctx_needed, const std::string& task);
  void create(int size);
  void free_context();
  void set_adapter(const std::string& task);

  ExecutorConfig cfg_;
  llama_context* ctx_ = nullptr;
  int ctx_size_ = 0;
  int n_seq_max_ = 0;
  ImatrixStats* eval_data_ = nullptr;
  std::mutex mu_;  // one session at a time
  // read by llama.cpp's abort callback during a decode
  std::atomic<const std::atomic<bool>*> cancel_{nullptr};
};

}  // namespace jv4
