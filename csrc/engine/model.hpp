// Model: one GGUF embedding model loaded with what it needs (for a jina-v4
// base model, its task adapters and multi-vector projectors; for images, its
// vision tower), the facts it states, and the calls it serves. A call is
// checked by the request policy (request.hpp), tokenized on the calling
// thread (tokenizer.hpp), queued by the scheduler (scheduler.hpp) for the
// model's compute thread, and decoded there by the executor (executor.hpp).
// Plain C++; knows nothing of Python.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/executor.hpp"
#include "engine/images.hpp"
#include "engine/imatrix.hpp"
#include "engine/load_policy.hpp"
#include "engine/model_info.hpp"
#include "engine/options.hpp"
#include "engine/request.hpp"
#include "engine/scheduler.hpp"
#include "engine/tokenizer.hpp"

struct llama_model;
struct llama_adapter_lora;

namespace jv4 {

class Vision;

class Model {
 public:
  Model(const std::string& path, const ModelOptions& opts);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelInfo& info() const { return info_; }
  const RequestFacts& request_facts() const { return facts_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  int n_embd() const { return info_.n_embd; }
  int max_length() const { return info_.max_length; }
  int batch_tokens() const { return executor_->batch_tokens(); }
  int n_threads() const { return info_.n_threads; }
  bool is_jina_v4() const { return info_.jina_v4; }
  bool is_base() const { return info_.base; }
  bool has_vision() const { return vision_ != nullptr; }
  const std::string& path() const { return path_; }
  std::vector<int> dims() const { return allowed_dims(facts_); }  // allowed `dim` values
  // tasks with a loaded adapter / a multi-vector projector (in jina::tasks() order)
  const std::vector<std::string>& adapter_tasks() const { return facts_.adapters; }
  const std::vector<std::string>& projector_tasks() const { return facts_.projectors; }
  ComputeStats stats() const { return scheduler_->stats(); }

  // request.hpp's checks against this model (BadArgument naming the argument).
  Request resolve(const std::optional<std::string>& task, const std::string& role, std::optional<int> dim,
                  bool truncate, bool multivector = false) const {
    return resolve_request(facts_, task, role, dim, truncate, multivector);
  }
  Request resolve_images(const std::optional<std::string>& task, std::optional<int> dim, bool multivector) const {
    return resolve_image_request(facts_, task, dim, multivector);
  }

  // Embeds texts into out[texts.size() * req.dim] (row-major, input order).
  // Safe to call from many threads at once: the texts are tokenized on the
  // calling thread, then the call queues for the model's compute thread,
  // which runs concurrent calls of one task in shared decodes where they fit
  // one (options coalesce, batch_wait_ms). Each call gets its own rows,
  // errors and cancellation. `cancel` is polled while queued, between and
  // inside decodes (inside only when the call runs alone); when set, throws
  // Cancelled. `progress` (optional) is advanced after each decode. With
  // req.multivector, `multi` (required) receives every token's projected,
  // L2-normalised vector from the same decodes.
  void embed(const std::vector<std::string_view>& texts, const Request& req, float* out,
             const std::atomic<bool>* cancel, Progress* progress = nullptr, MultiOutput* multi = nullptr);

  // Runs embed()'s forward pass over texts and adds llama.cpp's importance-
  // matrix statistics of every weight product to `stats` (calibration for
  // quantize(..., imatrix)). Slower than embed: the graph is split at each
  // observed product.
  void imatrix(const std::vector<std::string_view>& texts, const Request& req, ImatrixStats& stats,
               const std::atomic<bool>* cancel, Progress* progress = nullptr);

  // Embeds images, each in the jina-v4 image prompt, into out[images.size() *
  // req.dim]: the mean of the last hidden states over <|vision_start|>, the
  // image's tokens and <|vision_end|> (the reference's span), L2, Matryoshka.
  // With req.multivector, `multi` gets every prompt token's projected vector.
  // Progress counts images. One image is decoded at a time, the KV cache
  // cleared before each, so an image's vector does not depend on its call.
  void embed_images(const std::vector<ImageInput>& images, const Request& req, float* out,
                    const std::atomic<bool>* cancel, Progress* progress = nullptr, MultiOutput* multi = nullptr);

 private:
  struct Call;
  void run_group(const std::vector<Scheduler::Job*>& group);
  // queues work that runs alone on the compute thread (n_images: for stats)
  void run_alone(size_t n_images, const std::atomic<bool>* cancel, const std::function<void()>& work);
  void embed_images_now(const std::vector<ImageInput>& images, const Request& req, float* out,
                        const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi);
  void prepare_multi(const Request& req, MultiOutput* multi, size_t n) const;
  // the sequences of a call's tokenized texts, outputs to out / multi
  void append_texts(std::vector<Sequence>& seqs, const std::vector<std::vector<int32_t>>& toks, const Request& req,
                    float* out, Progress* progress, MultiOutput* multi, std::exception_ptr* error) const;
  void read_model_facts();
  void load_adapters(const ModelOptions& opts);
  void load_vision(const ModelOptions& opts, const BuildFacts& build);
  void gather_info(const ModelOptions& opts);

  std::string path_;
  llama_model* model_ = nullptr;
  LoadPolicy policy_;
  ModelInfo info_;
  RequestFacts facts_;
  Pooling pool_ = Pooling::Mean;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::map<std::string, llama_adapter_lora*> adapters_;
  std::map<std::string, Projector> projectors_;
  std::unique_ptr<Vision> vision_;
  std::string tower_attention_;  // decide_tower_attention's answer, with vision_
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Scheduler> scheduler_;  // last: its thread runs calls on the rest
};

}  // namespace jv4
