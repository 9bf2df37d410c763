// Model: loading (file checks, the load policy, llama.cpp's loader with
// jv4's switches), what the file says of itself, task adapters and
// projectors, and the calls: each checked (request.hpp), tokenized
// (tokenizer.hpp), queued (scheduler.hpp) and decoded (executor.hpp) as
// sequences; images in model_images.cpp.
#include "engine/model.hpp"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <thread>

#include "engine/errors.hpp"
#include "engine/gguf_check.hpp"
#include "engine/jina.hpp"
#include "engine/loader.hpp"
#include "engine/logging.hpp"
#include "engine/projector.hpp"
#include "engine/vision.hpp"
#include "llama.h"

namespace jv4 {
namespace {

std::string meta(const llama_model* m, const std::string& key) {
  char buf[512];
  int n = llama_model_meta_val_str(m, key.c_str(), buf, sizeof(buf));
  if (n < 0) return "";
  if (static_cast<size_t>(n) < sizeof(buf)) return std::string(buf, static_cast<size_t>(n));
  std::string big(static_cast<size_t>(n) + 1, '\0');
  llama_model_meta_val_str(m, key.c_str(), big.data(), big.size());
  big.resize(static_cast<size_t>(n));
  return big;
}

}  // namespace
Model::Model(const std::string& path, const ModelOptions& opts) : path_(path) {
  check_options(opts);
  precheck_file(path);
  init_backend();
  take_thread_errors();
  check_gguf(path);
  take_thread_errors();
  const BuildFacts build = build_facts();
  policy_ = decide_load(read_file_facts(path), build, opts);
  take_thread_errors();  // a bad header is reported by the loader below

  llama_model_params mp = llama_model_default_params();
  mp.load_mode = policy_.mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;  // mapped: pages shared
  mp.n_gpu_layers = policy_.n_gpu_layers;
  if (policy_.main_gpu) {
    mp.main_gpu = *policy_.main_gpu;
    mp.split_mode = LLAMA_SPLIT_MODE_NONE;  // the whole model on that one GPU
  }
  mp.use_extra_bufts = policy_.repack;
  {
    LoaderSwitches switches(policy_.f16_as_bf16);
    model_ = llama_model_load_from_file(path.c_str(), mp);
  }
  if (model_ == nullptr) {
    std::string why = take_thread_errors();
    throw ModelLoadError(path + ": cannot load model" + (why.empty() ? "" : ": " + why));
  }
  try {
    read_model_facts();
    info_.kv_cache_type = decide_kv_cache_type(policy_, build, opts, llama_model_ftype(model_));
    const ContextPolicy ctx =
        decide_context(opts, info_.n_ctx_train, static_cast<int>(std::thread::hardware_concurrency()));
    info_.max_length = ctx.max_length;
    info_.n_threads = ctx.n_threads;
    info_.coalesce = opts.coalesce.value_or(false);
    info_.batch_wait_ms = opts.batch_wait_ms.value_or(kDefaultBatchWaitMs);
    info_.batch_invariant = opts.batch_invariant.value_or(false);
    ExecutorConfig cfg;
    cfg.model = model_;
    cfg.path = path_;
    cfg.n_embd = info_.n_embd;
    cfg.n_embd_inp = llama_model_n_embd_inp(model_);
    cfg.batch_tokens = ctx.batch_tokens;
    cfg.n_threads = ctx.n_threads;
    cfg.flash_attn = opts.flash_attn;
    cfg.kv_type = kv_cache_type_of(info_.kv_cache_type);
    cfg.batch_invariant = info_.batch_invariant;
    cfg.adapters = &adapters_;
    cfg.projectors = &projectors_;
    executor_ = std::make_unique<Executor>(cfg);
    info_.causal = executor_->causal();
    if (!info_.causal && cfg.batch_tokens < info_.max_length) {
      // Non-causal attention needs a whole text inside one physical batch.
      cfg.batch_tokens = info_.max_length;
      executor_.reset();
      executor_ = std::make_unique<Executor>(cfg);
    }
    load_adapters(opts);
    load_vision(opts, build);
    gather_info(opts);
    scheduler_ = std::make_unique<Scheduler>(
        [this](const std::vector<Scheduler::Job*>& group) { run_group(group); },
        Scheduler::Limits{executor_->batch_tokens(), executor_->max_seqs(), info_.coalesce, info_.batch_wait_ms});
  } catch (...) {
    executor_.reset();
    vision_.reset();
    llama_model_free(model_);
    model_ = nullptr;
    throw;
  }
}

Model::~Model() {
  scheduler_.reset();  // its thread ends once the queue is empty
  vision_.reset();
  executor_.reset();
  if (model_ != nullptr) llama_model_free(model_);
}

// What the loaded model says of itself: sizes, vocabulary, whether it is a
// jina-v4 model (and which task), pooling, normalisation.
void Model::read_model_facts() {
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  if (vocab == nullptr || llama_vocab_n_tokens(vocab) <= 0) {
    throw ModelLoadError(path_ + ": the model has no vocabulary");
  }
  if (llama_model_has_encoder(model_) && llama_model_has_decoder(model_)) {
    throw ModelLoadError(path_ + ": encoder-decoder models are not supported for embeddings");
  }
  ModelInfo& i = info_;
  i.n_embd = llama_model_n_embd_out(model_);
  if (i.n_embd <= 0) i.n_embd = llama_model_n_embd(model_);
  i.n_ctx_train = llama_model_n_ctx_train(model_);

  // read once, kept in info_ (gather_info fills the rest)
  const std::string& arch = i.architecture = meta(model_, "general.architecture");
  const std::string& name = i.name = meta(model_, "general.name");
  const std::string& basename = i.basename = meta(model_, "general.basename");
  const std::string file = std::filesystem::path(path_).filename().string();
  for (const std::string* s : {&name, &basename, &file}) {
    if (jina::is_jina_v4_name(*s)) i.jina_v4 = true;
  }
  // jina-v4's reference tokenizer adds no BOS/EOS whatever the GGUF says;
  // other models get the special tokens their GGUF asks for
  i.tokenizer_pre = meta(model_, "tokenizer.ggml.pre");
  tokenizer_ = std::make_unique<Tokenizer>(vocab, i.tokenizer_pre, /*add_special=*/!i.jina_v4);
  i.normalization = tokenizer_->normalization();
  i.truncation = tokenizer_->head_cut() ? "head" : "whole text";
  i.n_vocab = llama_vocab_n_tokens(vocab);
  if (i.jina_v4) {
    // metadata first, the file name only as a fallback
    for (const std::string* s : {&name, &basename, &file}) {
      facts_.task = jina::task_from_name(*s);
      if (!facts_.task.empty()) break;
    }
    i.pooling = "mean";
  } else {
    const std::string pt = meta(model_, arch + ".pooling_type");
    if (pt == "2") i.pooling = "cls";
    else if (pt == "3") i.pooling = "last";
    else if (pt == "4") throw ModelLoadError(path_ + ": reranker (rank pooling) models are not supported");
    else i.pooling = "mean";
  }
  pool_ = parse_pooling(i.pooling);
  i.base = i.jina_v4 && meta(model_, jina::kGgufBase) == "true";
  if (!facts_.task.empty()) i.task = facts_.task;
}

void Model::gather_info(const ModelOptions& opts) {
  ModelInfo& i = info_;  // (the file's facts: read_model_facts)
  i.path = path_;
  char desc[256];
  llama_model_desc(model_, desc, sizeof(desc));
  i.description = desc;
  i.adapters = facts_.adapters;
  i.projector = opts.projector;
  i.n_layer = llama_model_n_layer(model_);
  i.n_head = llama_model_n_head(model_);
  i.n_params = static_cast<int64_t>(llama_model_n_params(model_));
  i.size_bytes = static_cast<int64_t>(llama_model_size(model_));
  i.file_type = llama_ftype_name(llama_model_ftype(model_));
  i.batch_tokens = executor_->batch_tokens();
  i.repack = policy_.repack;
  i.f16_as_bf16 = policy_.f16_as_bf16;
  i.load_mode = policy_.load_mode();
  i.n_gpu_layers = policy_.n_gpu_layers;
  i.main_gpu = policy_.main_gpu;
  i.flash_attn = !opts.flash_attn ? "auto" : *opts.flash_attn ? "on" : "off";
  if (vision_) {
    i.mmproj = opts.mmproj;
    i.image_min_tokens = vision_->min_tokens();
    i.image_max_tokens = vision_->max_tokens();
    i.image_f16_as_bf16 = policy_.tower_f16_as_bf16;
    i.image_repack = policy_.tower_repack;
    i.image_attention = tower_attention_;
  }
  // what the request policy checks calls against
  facts_.path = path_;
  facts_.jina_v4 = i.jina_v4;
  facts_.base = i.base;
  facts_.n_embd = i.n_embd;
  facts_.vision = vision_ != nullptr;
}

void Model::load_adapters(const ModelOptions& opts) {
  if (!opts.adapters.empty() && !info_.base) {
    throw ModelLoadError(path_ + ": task adapters go with a jina-embeddings-v4 base model written by "
                         "`jv4 convert` (this file is " +
                         (info_.jina_v4 ? std::string("a merged single-task model") : std::string("not one")) + ")");
  }
  for (const auto& [task_given, file] : opts.adapters) {
    auto [task, a] = load_task_adapter(model_, path_, file, task_given);
    if (adapters_.count(task)) throw ModelLoadError(file + ": a second adapter for task '" + task + "'");
    adapters_[task] = a;
  }
  if (opts.projector) {
    if (!info_.jina_v4) {
      throw ModelLoadError(path_ + ": multi-vector projectors apply to jina-embeddings-v4 models only");
    }
    projectors_ = load_projectors(*opts.projector, info_.n_embd);
  }
  for (const std::string& t : jina::tasks()) {  // in the reference's task order
    if (adapters_.count(t)) facts_.adapters.push_back(t);
    if (projectors_.count(t)) facts_.projectors.push_back(t);
  }
}

// ---- calls -------------------------------------------------------------------

// A queued call: a text embed, or work that runs alone (images, imatrix).
struct Model::Call : Scheduler::Job {
  std::function<void()> alone;
  const std::vector<std::vector<int32_t>>* toks = nullptr;
  Request req;
  float* out = nullptr;
  Progress* progress = nullptr;
  MultiOutput* multi = nullptr;
};

void Model::prepare_multi(const Request& req, MultiOutput* multi, size_t n) const {
  if (!req.multivector) return;
  if (multi == nullptr) throw std::invalid_argument("multi-vector output needs a MultiOutput");
  multi->width = projectors_.at(req.task).n_out;
  multi->data.clear();
  multi->offsets.assign(n + 1, 0);
}

void Model::append_texts(std::vector<Sequence>& seqs, const std::vector<std::vector<int32_t>>& toks,
                         const Request& req, float* out, Progress* progress, MultiOutput* multi,
                         std::exception_ptr* error) const {
  uint64_t total = 0;
  for (const auto& t : toks) total += t.size();
  if (progress != nullptr) progress->tokens_total.store(total, std::memory_order_relaxed);
  if (multi != nullptr) {
    for (size_t i = 0; i < toks.size(); ++i) {
      multi->offsets[i + 1] = multi->offsets[i] + static_cast<int64_t>(toks[i].size());
    }
    multi->data.assign(total * static_cast<size_t>(multi->width), 0.0f);
  }
  for (size_t i = 0; i < toks.size(); ++i) {
    const int len = static_cast<int>(toks[i].size());
    Sequence s;
    s.segments.push_back(Segment{toks[i].data(), nullptr, nullptr, len, 0});
    // the pooled tokens: every one (mean), the first (cls) or the last
    s.pool = pool_;
    s.pool_begin = pool_ == Pooling::Last ? std::max(len - 1, 0) : 0;
    s.pool_end = pool_ == Pooling::Cls ? std::min(len, 1) : len;
    s.out = out + i * static_cast<size_t>(req.dim);
    s.dim = req.dim;
    s.multi = multi;
    s.index = i;
    s.progress = progress;
    s.error = error;
    seqs.push_back(std::move(s));
  }
}

void Model::embed(const std::vector<std::string_view>& texts, const Request& req, float* out,
                  const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  prepare_multi(req, multi, texts.size());
  if (texts.empty()) return;
  // tokenized on the calling thread (the vocabulary is read-only), then
  // queued for the compute thread, which may share decodes with other calls
  const std::vector<std::vector<int32_t>> toks =
      tokenizer_->tokenize_all(texts, req.prefix, req.truncate, info_.max_length, cancel);
  Call call;
  call.shape.task = req.task;
  call.shape.n_texts = toks.size();
  for (const auto& t : toks) call.shape.n_tokens += t.size();
  call.cancel = cancel;
  call.toks = &toks;
  call.req = req;
  call.out = out;
  call.progress = progress;
  call.multi = req.multivector ? multi : nullptr;
  scheduler_->run(call);
}

void Model::imatrix(const std::vector<std::string_view>& texts, const Request& req, ImatrixStats& stats,
                    const std::atomic<bool>* cancel, Progress* progress) {
  if (texts.empty()) return;
  const std::vector<std::vector<int32_t>> toks =
      tokenizer_->tokenize_all(texts, req.prefix, req.truncate, info_.max_length, cancel);
  std::vector<float> out(texts.size() * static_cast<size_t>(req.dim));
  run_alone(0, cancel, [&] {
    // a context whose every weight product is observed, the usual one after
    Executor::Observe observe(*executor_, &stats);
    std::exception_ptr error;
    std::vector<Sequence> seqs;
    append_texts(seqs, toks, req, out.data(), progress, nullptr, &error);
    Executor::Session(*executor_, req.task, cancel).run(seqs);
    if (error) std::rethrow_exception(error);
  });
}

void Model::run_alone(size_t n_images, const std::atomic<bool>* cancel, const std::function<void()>& work) {
  Call call;
  call.shape.text = false;
  call.shape.n_texts = n_images;
  call.cancel = cancel;
  call.alone = work;
  scheduler_->run(call);
}

// On the compute thread: a call that runs alone, or text calls of one task
// sharing decodes, each with its own rows, errors and Ctrl-C.
void Model::run_group(const std::vector<Scheduler::Job*>& group) {
  Call& lead = static_cast<Call&>(*group.front());
  if (lead.alone) {
    lead.alone();  // (an exception goes to the call's error)
    return;
  }
  std::vector<Sequence> seqs;
  for (Scheduler::Job* j : group) {
    Call& c = static_cast<Call&>(*j);
    append_texts(seqs, *c.toks, c.req, c.out, c.progress, c.multi, &c.error);
  }
  // alone, the call's own flag also aborts a running decode; shared decodes
  // (one each: the group fits one) run to their end and cancelled callers
  // get Cancelled below
  Executor::Session(*executor_, lead.req.task, group.size() == 1 ? lead.cancel : nullptr).run(seqs);
  for (Scheduler::Job* c : group) {
    if (!c->error && c->cancel != nullptr && c->cancel->load()) c->error = std::make_exception_ptr(Cancelled());
  }
}

}  // namespace jv4
