// Model: loading, jina-v4 task detection and adapters, and embed() - a
// driver over the pure stages: tokenize, plan the decodes (batch_plan.hpp:
// length-sorted, packed, long texts chunked against the KV cache), decode
// with pooling NONE so llama.cpp returns every token's final hidden state,
// and hand each to the output stage (output.hpp: pooling, L2, Matryoshka,
// per-token projection). The KV cache is cleared before each decode group,
// so a text's vector never depends on its batch. A base model from
// `jv4 convert` gets the call's task adapter set before its decodes.
#include "engine/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "engine/batch_plan.hpp"
#include "engine/errors.hpp"
#include "engine/gguf_check.hpp"
#include "engine/jina.hpp"
#include "engine/load_policy.hpp"
#include "engine/logging.hpp"
#include "engine/projector.hpp"
#include "engine/truncation.hpp"
#include "engine/vision.hpp"
#include "unicode.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "llama.h"

namespace jv4 {
namespace {

constexpr int kMaxSeqPerBatch = 256;      // llama.cpp's LLAMA_MAX_SEQ
constexpr int kCtxGranule = 256;
constexpr size_t kHeadMinBytes = 16 * 1024;  // smallest text head tokenize_head tries

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

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (int d : v) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return out;
}

bool abort_cb(void* data) {
  auto* flag = static_cast<std::atomic<const std::atomic<bool>*>*>(data);
  const std::atomic<bool>* c = flag->load(std::memory_order_relaxed);
  return c != nullptr && c->load(std::memory_order_relaxed);
}

// GPU (discrete or integrated) devices this build sees.
int count_gpus() {
  int n = 0;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    const auto type = ggml_backend_dev_type(ggml_backend_dev_get(i));
    if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) ++n;
  }
  return n;
}

struct BatchHolder {
  llama_batch b;
  explicit BatchHolder(int n) : b(llama_batch_init(n, 0, 1)) {}
  ~BatchHolder() { llama_batch_free(b); }
};

}  // namespace

// The file is checked before llama.cpp sees it, so that common mistakes get a
// precise message (and never reach an assertion inside ggml).
static void precheck_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw FileNotFound("no such file: " + path);
  if (fs::is_directory(path, ec)) throw ModelLoadError(path + ": is a directory, not a GGUF file");
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  if (!f || !f.read(magic, 4) || std::memcmp(magic, "GGUF", 4) != 0) {
    throw ModelLoadError(path + ": not a GGUF file (bad magic)");
  }
}

namespace {

// The tensor types of a GGUF, from its header alone (no data read).
FileFacts read_file_facts(const std::string& path) {
  FileFacts f;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) return f;  // the loader reports what is wrong
  for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) f.tensor_types.push_back(gguf_get_tensor_type(g, i));
  gguf_free(g);
  return f;
}

BuildFacts build_facts() {
  BuildFacts b;
#if defined(__x86_64__) || defined(_M_X64)
  b.x86 = true;
#endif
  b.avx512_vnni = ggml_cpu_has_avx512_vnni() != 0;  // the build's CPU code, where jv4's kernels live
  b.avx512_bf16 = ggml_cpu_has_avx512_bf16() != 0;
  b.n_gpus = count_gpus();
  return b;
}

// Thread-local switches of jv4's loader patches, set for one load only.
struct LoaderSwitches {
  explicit LoaderSwitches(bool f16_as_bf16) {
    llama_jv4_set_f16_as_bf16(f16_as_bf16);  // patch 0008
    llama_jv4_set_no_lm_head(true);          // patch 0009: jv4 never computes logits
  }
  ~LoaderSwitches() {
    llama_jv4_set_f16_as_bf16(false);
    llama_jv4_set_no_lm_head(false);
  }
};

}  // namespace

Model::Model(const std::string& path, const ModelOptions& opts) : path_(path), flash_attn_(opts.flash_attn) {
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
    kv_cache_type_ = decide_kv_cache_type(policy_, build, opts, llama_model_ftype(model_));
    batch_invariant_ = opts.batch_invariant.value_or(false);
    const ContextPolicy ctx = decide_context(opts, n_ctx_train_, static_cast<int>(std::thread::hardware_concurrency()));
    max_length_ = ctx.max_length;
    batch_tokens_ = ctx.batch_tokens;
    n_threads_ = ctx.n_threads;
    ensure_context(batch_tokens_);
    causal_ = llama_get_causal_attn(ctx_);
    if (!causal_ && batch_tokens_ < max_length_) {
      // Non-causal attention needs a whole text inside one physical batch.
      batch_tokens_ = max_length_;
      free_context();
      ensure_context(batch_tokens_);
    }
    load_adapters(opts);
    load_vision(opts);
    coalesce_ = opts.coalesce.value_or(false);
    batch_wait_ms_ = opts.batch_wait_ms.value_or(kDefaultBatchWaitMs);
    gather_info(opts);
    compute_ = std::thread([this] { compute_loop(); });
  } catch (...) {
    vision_.reset();
    free_context();
    llama_model_free(model_);
    model_ = nullptr;
    throw;
  }
}

// What the loaded model says of itself: sizes, vocabulary, whether it is a
// jina-v4 model (and which task), pooling, normalisation.
void Model::read_model_facts() {
  vocab_ = llama_model_get_vocab(model_);
  if (vocab_ == nullptr || llama_vocab_n_tokens(vocab_) <= 0) {
    throw ModelLoadError(path_ + ": the model has no vocabulary");
  }
  if (llama_model_has_encoder(model_) && llama_model_has_decoder(model_)) {
    throw ModelLoadError(path_ + ": encoder-decoder models are not supported for embeddings");
  }
  n_embd_ = llama_model_n_embd_out(model_);
  if (n_embd_ <= 0) n_embd_ = llama_model_n_embd(model_);
  n_ctx_train_ = llama_model_n_ctx_train(model_);

  // read once, kept in info_ (gather_info fills the rest)
  const std::string& arch = info_.architecture = meta(model_, "general.architecture");
  const std::string& name = info_.name = meta(model_, "general.name");
  const std::string& basename = info_.basename = meta(model_, "general.basename");
  const std::string file = std::filesystem::path(path_).filename().string();
  for (const std::string* s : {&name, &basename, &file}) {
    if (jina::is_jina_v4_name(*s)) jina_v4_ = true;
  }
  // Qwen2's reference tokenizer normalises text to Unicode NFC first (the
  // normalizer of its tokenizer.json); llama.cpp's does not, so the caller
  // does it for this family. Other families keep what llama.cpp does.
  tokenizer_pre_ = meta(model_, "tokenizer.ggml.pre");
  normalization_ = tokenizer_pre_ == "qwen2" ? "NFC" : "";
  init_head_cut();
  if (jina_v4_) {
    // metadata first, the file name only as a fallback
    for (const std::string* s : {&name, &basename, &file}) {
      task_ = jina::task_from_name(*s);
      if (!task_.empty()) break;
    }
    pooling_ = "mean";
  } else {
    const std::string pt = meta(model_, arch + ".pooling_type");
    if (pt == "2") pooling_ = "cls";
    else if (pt == "3") pooling_ = "last";
    else if (pt == "4") throw ModelLoadError(path_ + ": reranker (rank pooling) models are not supported");
    else pooling_ = "mean";
  }
  pool_ = parse_pooling(pooling_);
  base_ = jina_v4_ && meta(model_, jina::kGgufBase) == "true";
}

void Model::gather_info(const ModelOptions& opts) {
  ModelInfo& i = info_;
  i.path = path_;  // (architecture, name, basename: read_model_facts)
  char desc[256];
  llama_model_desc(model_, desc, sizeof(desc));
  i.description = desc;
  if (!task_.empty()) i.task = task_;
  i.pooling = pooling_;
  i.tokenizer_pre = tokenizer_pre_;
  i.truncation = head_cut_ ? "head" : "whole text";
  i.normalization = normalization_;
  i.jina_v4 = jina_v4_;
  i.base = base_;
  i.adapters = adapter_tasks();
  i.projector = opts.projector;
  i.n_embd = n_embd_;
  i.n_layer = llama_model_n_layer(model_);
  i.n_head = llama_model_n_head(model_);
  i.n_vocab = llama_vocab_n_tokens(vocab_);
  i.n_ctx_train = n_ctx_train_;
  i.n_params = static_cast<int64_t>(llama_model_n_params(model_));
  i.size_bytes = static_cast<int64_t>(llama_model_size(model_));
  i.file_type = llama_ftype_name(llama_model_ftype(model_));
  i.causal = causal_;
  i.n_threads = n_threads_;
  i.max_length = max_length_;
  i.batch_tokens = batch_tokens_;
  i.repack = policy_.repack;
  i.f16_as_bf16 = policy_.f16_as_bf16;
  i.load_mode = policy_.load_mode();
  i.n_gpu_layers = policy_.n_gpu_layers;
  i.main_gpu = policy_.main_gpu;
  i.flash_attn = !flash_attn_ ? "auto" : *flash_attn_ ? "on" : "off";
  i.kv_cache_type = kv_cache_type_;
  i.coalesce = coalesce_;
  i.batch_wait_ms = batch_wait_ms_;
  i.batch_invariant = batch_invariant_;
  if (vision_) {
    i.mmproj = opts.mmproj;
    i.image_min_tokens = vision_->min_tokens();
    i.image_max_tokens = vision_->max_tokens();
  }
}

Model::~Model() {
  stop_compute();
  vision_.reset();
  free_context();
  if (model_ != nullptr) llama_model_free(model_);
}

void Model::free_context() {
  if (ctx_ != nullptr) llama_free(ctx_);
  ctx_ = nullptr;
  ctx_size_ = 0;
}

void Model::ensure_context(int n_ctx_needed) {
  int size = std::max(n_ctx_needed, batch_tokens_);
  size = (size + kCtxGranule - 1) / kCtxGranule * kCtxGranule;
  if (ctx_ != nullptr && ctx_size_ >= size) return;
  free_context();
  // llama.cpp sizes its output buffer by max(n_outputs, n_seq_max) and
  // asserts that this fits n_batch: keep n_seq_max <= batch_tokens.
  n_seq_max_ = std::min(kMaxSeqPerBatch, batch_tokens_);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(size);
  cp.n_batch = static_cast<uint32_t>(batch_tokens_);
  cp.n_ubatch = static_cast<uint32_t>(batch_tokens_);
  cp.n_seq_max = static_cast<uint32_t>(n_seq_max_);
  cp.n_threads = n_threads_;
  cp.n_threads_batch = n_threads_;
  cp.embeddings = true;
  cp.pooling_type = LLAMA_POOLING_TYPE_NONE;  // per-token outputs; pooled here
  cp.kv_unified = true;
  if (flash_attn_) cp.flash_attn_type = *flash_attn_ ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = static_cast<ggml_type>(kv_cache_type_of(kv_cache_type_));
  cp.type_v = cp.type_k;
  cp.no_perf = true;
  cp.abort_callback = abort_cb;
  cp.abort_callback_data = &cancel_;
  if (eval_data_ != nullptr) {  // imatrix(): observe the weight products
    cp.cb_eval = imatrix_observe;
    cp.cb_eval_user_data = eval_data_;
  }
  take_thread_errors();
  ctx_ = llama_init_from_model(model_, cp);
  if (ctx_ != nullptr && batch_invariant_) llama_set_cpu_use_ref(ctx_, true);  // patch 0011
  if (ctx_ == nullptr) {
    std::string why = take_thread_errors();
    throw ModelLoadError(path_ + ": cannot create a context of " + std::to_string(size) +
                         " tokens" + (why.empty() ? "" : ": " + why));
  }
  ctx_size_ = size;
}

std::vector<int> Model::dims() const {
  std::vector<int> out;
  if (jina_v4_) {
    for (int d : jina::trained_dims()) {
      if (d <= n_embd_) out.push_back(d);
    }
  } else {
    for (int d = 1; d <= n_embd_; ++d) out.push_back(d);
  }
  return out;
}

namespace {

std::string quoted(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "'" : ", '") + x + "'";
  return out.empty() ? "none" : out;
}

std::string adapter_meta(const llama_adapter_lora* a, const char* key) {
  char buf[256];
  const int n = llama_adapter_meta_val_str(a, key, buf, sizeof(buf));
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(std::min<int>(n, sizeof(buf) - 1)));
}

}  // namespace

void Model::load_adapters(const ModelOptions& opts) {
  if (!opts.adapters.empty() && !base_) {
    throw ModelLoadError(path_ + ": task adapters go with a jina-embeddings-v4 base model written by "
                         "`jv4 convert` (this file is " +
                         (jina_v4_ ? std::string("a merged single-task model") : std::string("not one")) + ")");
  }
  for (const auto& [task_given, file] : opts.adapters) {
    precheck_file(file);
    take_thread_errors();
    llama_adapter_lora* a = llama_adapter_lora_init(model_, file.c_str());
    if (a == nullptr) {
      std::string why = take_thread_errors();
      throw ModelLoadError(file + ": cannot load it as a LoRA adapter of " + path_ + (why.empty() ? "" : ": " + why));
    }
    const std::string task = adapter_meta(a, jina::kGgufTask);
    if (task.empty() || std::find(jina::tasks().begin(), jina::tasks().end(), task) == jina::tasks().end()) {
      throw ModelLoadError(file + ": not a jina-embeddings-v4 task adapter (its " + jina::kGgufTask + " is '" + task +
                           "'; allowed: " + jina::quoted_tasks() + ")");
    }
    if (task_given && *task_given != task) {
      throw ModelLoadError(file + ": is the adapter of task '" + task + "', given for task '" + *task_given + "'");
    }
    if (adapters_.count(task)) throw ModelLoadError(file + ": a second adapter for task '" + task + "'");
    adapters_[task] = a;
  }
  if (opts.projector) {
    if (!jina_v4_) throw ModelLoadError(path_ + ": multi-vector projectors apply to jina-embeddings-v4 models only");
    projectors_ = load_projectors(*opts.projector, n_embd_);
  }
}

void Model::set_task_adapter(const Request& req) {
  if (!base_) return;
  // the call's task: its adapter for every decode of the call (one task per call)
  llama_adapter_lora* a = adapters_.at(req.task);
  float scale = 1.0f;  // llama.cpp applies the file's alpha / rank itself
  if (llama_set_adapters_lora(ctx_, &a, 1, &scale) != 0) {
    throw std::runtime_error("cannot set the '" + req.task + "' adapter: " + take_thread_errors());
  }
}

std::vector<std::string> Model::adapter_tasks() const {
  std::vector<std::string> out;  // in the reference's task order
  for (const std::string& t : jina::tasks()) {
    if (adapters_.count(t)) out.push_back(t);
  }
  return out;
}

std::vector<std::string> Model::projector_tasks() const {
  std::vector<std::string> out;
  for (const std::string& t : jina::tasks()) {
    if (projectors_.count(t)) out.push_back(t);
  }
  return out;
}

void Model::resolve_task(const std::optional<std::string>& task_in, Request& req) const {
  if (task_in) jina::check_task(*task_in);
  if (base_) {
    const std::vector<std::string> have = adapter_tasks();
    if (have.empty()) {
      throw std::invalid_argument(path_ + " is the jina-embeddings-v4 base model without its task adapters; "
                                  "load the folder `jv4 convert` wrote (jv4.Model(folder)) or pass adapters=");
    }
    if (!task_in) {
      if (have.size() != 1) {
        throw std::invalid_argument("this model serves several tasks; pass task= one of " + quoted(have));
      }
      req.task = have[0];
    } else if (!adapters_.count(*task_in)) {
      throw std::invalid_argument("no adapter for task='" + *task_in + "' was loaded (loaded: " + quoted(have) + ")");
    } else {
      req.task = *task_in;
    }
    return;
  }
  if (!task_in) {
    if (task_.empty()) {
      throw std::invalid_argument(
          path_ + ": cannot tell which jina-embeddings-v4 task this file was merged for "
          "(neither general.name nor the file name says); pass task= one of " + jina::quoted_tasks());
    }
    req.task = task_;
    return;
  }
  if (!task_.empty() && *task_in != task_) {
    std::string file = std::filesystem::path(path_).filename().string();
    std::string want_tag = "text-" + jina::name_tag(*task_in);
    std::string have_tag = "text-" + jina::name_tag(task_);
    std::string suggestion;
    size_t at = jina::lower_dashed(file).find(have_tag);
    if (at != std::string::npos) {
      suggestion = file.substr(0, at) + want_tag + file.substr(at + have_tag.size());
    } else {
      suggestion = "jina-embeddings-v4-" + want_tag + "-<quant>.gguf";
    }
    throw std::invalid_argument("task='" + *task_in + "' does not match this file: " + path_ +
                                " is the jina-embeddings-v4 '" + task_ + "' model; load " + suggestion +
                                " for task='" + *task_in + "' (or pass task=None)");
  }
  req.task = *task_in;
}

Request Model::resolve(const std::optional<std::string>& task_in, const std::string& role,
                       std::optional<int> dim, bool truncate, bool multivector) const {
  Request req;
  req.truncate = truncate;
  req.multivector = multivector;
  jina::check_role(role);
  if (jina_v4_) {
    resolve_task(task_in, req);
    req.prefix = jina::prefix(req.task, role);
  } else {
    if (task_in) {
      throw std::invalid_argument("task applies only to jina-embeddings-v4 models; " + path_ +
                                  " is not one (no prefix is added): leave task=None");
    }
    if (role != "query") {
      throw std::invalid_argument("role applies only to jina-embeddings-v4 models; " + path_ +
                                  " is not one (no prefix is added): leave role='query'");
    }
  }
  if (multivector) {
    if (!jina_v4_) {
      throw std::invalid_argument("multi-vector output is a jina-embeddings-v4 feature; " + path_ + " is not one");
    }
    if (projectors_.empty()) {
      throw std::invalid_argument("multi-vector output needs the projector file `jv4 convert` writes "
                                  "(*-projector.gguf): load the converted folder or pass projector=");
    }
    if (!projectors_.count(req.task)) {
      throw std::invalid_argument("the projector file has no projector for task='" + req.task +
                                  "' (it has " + quoted(projector_tasks()) + ")");
    }
  }
  if (!dim) {
    req.dim = n_embd_;
  } else {
    std::vector<int> allowed = dims();
    if (!std::binary_search(allowed.begin(), allowed.end(), *dim)) {
      std::string list = jina_v4_ ? join_ints(allowed)
                                  : "1.." + std::to_string(n_embd_);
      throw std::invalid_argument("dim must be one of " + list + " (or None for " +
                                  std::to_string(n_embd_) + "); got " + std::to_string(*dim));
    }
    req.dim = *dim;
  }
  return req;
}

void Model::init_head_cut() {
  // Cutting at piece boundaries is proven for Qwen2's pre-tokenizer only
  // (truncation.hpp); other vocabularies tokenize the whole text.
  head_cut_ = tokenizer_pre_ == "qwen2";
  reserved_.clear();
  if (!head_cut_) return;
  const int32_t n = llama_vocab_n_tokens(vocab_);
  for (int32_t id = 0; id < n; ++id) {
    const llama_token_attr attr = llama_vocab_get_attr(vocab_, id);
    if ((attr & (LLAMA_TOKEN_ATTR_NORMAL | LLAMA_TOKEN_ATTR_BYTE)) != 0 || attr == LLAMA_TOKEN_ATTR_UNDEFINED) continue;
    const char* t = llama_vocab_get_text(vocab_, id);
    if (t == nullptr) continue;
    const std::vector<uint32_t> cpts = code_points(t);
    reserved_.insert(reserved_.end(), cpts.begin(), cpts.end());
    // a special token ending in a letter or digit could end exactly at a cut
    // and (with rstrip) take text after it: no cuts for such a vocabulary
    if (!cpts.empty()) {
      const unicode_cpt_flags f = unicode_cpt_flags_from_cpt(cpts.back());
      if (f.is_letter || f.is_number) head_cut_ = false;
    }
  }
  std::sort(reserved_.begin(), reserved_.end());
  reserved_.erase(std::unique(reserved_.begin(), reserved_.end()), reserved_.end());
}

std::vector<int32_t> Model::tokenize(std::string_view text, const std::string& prefix) const {
  std::string full;
  full.reserve(prefix.size() + text.size());
  full.append(prefix).append(text);
  if (full.size() > static_cast<size_t>(INT32_MAX) / 2) {
    throw std::invalid_argument("text too long to tokenize (" + std::to_string(full.size()) + " bytes)");
  }
  const int32_t len = static_cast<int32_t>(full.size());
  std::vector<int32_t> out(static_cast<size_t>(len) + 8);
  // jina-v4's reference tokenizer adds no BOS/EOS whatever the GGUF says;
  // other models get the special tokens their GGUF asks for. parse_special
  // like the reference tokenizer, which matches special-token text.
  const bool add_special = !jina_v4_;
  int32_t n = llama_tokenize(vocab_, full.data(), len, out.data(), static_cast<int32_t>(out.size()),
                             add_special, /*parse_special=*/true);
  if (n < 0) {
    out.resize(static_cast<size_t>(-n));
    n = llama_tokenize(vocab_, full.data(), len, out.data(), static_cast<int32_t>(out.size()),
                       add_special, true);
    if (n < 0) throw std::runtime_error("tokenization failed");
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::vector<int32_t> Model::tokenize_head(std::string_view text, const std::string& prefix, size_t limit,
                                          const std::atomic<bool>* cancel) const {
  auto keep = [&](std::vector<int32_t> toks) {
    if (toks.size() > limit) toks.resize(limit);
    return toks;
  };
  // Heads start at 16 bytes a kept token (Qwen2 averages about 4 on prose)
  // and double until one holds more than `limit` tokens.
  size_t head = std::max<size_t>(kHeadMinBytes, limit * 16);
  while (head_cut_ && head < text.size() / 2) {
    if (cancel && cancel->load()) throw Cancelled();
    const size_t cut = find_piece_boundary(text, head, 2 * head, reserved_);
    if (cut != std::string_view::npos) {
      // exact: every piece before `cut` tokenizes as in the whole text
      std::vector<int32_t> toks = tokenize(text.substr(0, cut), prefix);
      if (toks.size() > limit) return keep(std::move(toks));
      head = 2 * cut;
      continue;
    }
    // No piece boundary in [head, 2 head): one "word" (a run of letters,
    // spaces or symbols) longer than `head` bytes, merged by BPE as a whole.
    // A cut inside it changes tokens near the cut only; keep the head when
    // cutting at 2 head and 4 head gives the same first `limit` tokens, both
    // with room to spare.
    const size_t a = utf8_floor(text, 2 * head), b = utf8_floor(text, 4 * head);
    if (b >= text.size()) break;
    std::vector<int32_t> ta = tokenize(text.substr(0, a), prefix);
    if (cancel && cancel->load()) throw Cancelled();
    std::vector<int32_t> tb = tokenize(text.substr(0, b), prefix);
    const size_t spare = limit + std::max<size_t>(64, limit / 4);
    if (ta.size() > spare && tb.size() > spare &&
        std::equal(ta.begin(), ta.begin() + static_cast<std::ptrdiff_t>(limit), tb.begin())) {
      return keep(std::move(ta));
    }
    head = 4 * head;
  }
  return keep(tokenize(text, prefix));
}

std::vector<std::vector<int32_t>> Model::tokenize_all(const std::vector<std::string_view>& texts,
                                                      const Request& req, const std::atomic<bool>* cancel) const {
  std::vector<std::vector<int32_t>> toks(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    if (cancel && cancel->load()) throw Cancelled();
    // truncating: only the kept head is tokenized; not truncating: the
    // whole text, so that the error can say how long it is
    toks[i] = req.truncate ? tokenize_head(texts[i], req.prefix, static_cast<size_t>(max_length_), cancel)
                           : tokenize(texts[i], req.prefix);
    if (static_cast<int>(toks[i].size()) > max_length_) {
      if (!req.truncate) {
        throw std::invalid_argument("text at index " + std::to_string(i) + " has " +
                                    std::to_string(toks[i].size()) +
                                    " tokens, more than max_length=" + std::to_string(max_length_) +
                                    " (pass truncate=True to cut it on the right)");
      }
      toks[i].resize(static_cast<size_t>(max_length_));
    }
  }
  return toks;
}

void Model::embed(const std::vector<std::string_view>& texts, const Request& req, float* out,
                  const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  if (req.multivector) {
    if (multi == nullptr) throw std::invalid_argument("embed: multi-vector output needs a MultiOutput");
    multi->width = projectors_.at(req.task).n_out;
    multi->data.clear();
    multi->offsets.assign(texts.size() + 1, 0);
  }
  if (texts.empty()) return;
  // 1. tokenize on the calling thread (the vocabulary is read-only)
  const std::vector<std::vector<int32_t>> toks = tokenize_all(texts, req, cancel);
  // 2. queue for the compute thread, which may share decodes with other calls
  Call call;
  call.shape.task = req.task;
  call.shape.n_texts = toks.size();
  for (const auto& t : toks) call.shape.n_tokens += t.size();
  call.toks = &toks;
  call.req = req;
  call.out = out;
  call.progress = progress;
  call.multi = req.multivector ? multi : nullptr;
  call.cancel = cancel;
  run(call);
}

void Model::imatrix(const std::vector<std::string_view>& texts, const Request& req, ImatrixStats& stats,
                    const std::atomic<bool>* cancel, Progress* progress) {
  if (texts.empty()) return;
  const std::vector<std::vector<int32_t>> toks = tokenize_all(texts, req, cancel);
  std::vector<float> out(texts.size() * static_cast<size_t>(req.dim));
  Call call;
  call.shape.text = false;
  call.cancel = cancel;
  call.alone = [&] {
    // on the compute thread, which alone touches the context (decode_all
    // takes mu_ itself)
    // a context whose every weight product is observed (llama.cpp splits the
    // graph at each: slow, for calibration only); the usual one afterwards
    struct Observe {
      Model& m;
      Observe(Model& model, ImatrixStats* s) : m(model) {
        m.free_context();
        m.eval_data_ = s;
      }
      ~Observe() {
        m.free_context();
        m.eval_data_ = nullptr;
        try {
          m.ensure_context(m.batch_tokens_);
        } catch (...) {  // the next call creates it again
        }
      }
    } observe(*this, &stats);
    decode_call(toks, req, out.data(), cancel, progress, nullptr);
  };
  run(call);
}

// ---- the compute thread ----------------------------------------------------

void Model::run(Call& call) {
  std::unique_lock<std::mutex> lock(q_mu_);
  if (stop_) throw std::runtime_error("the model is being closed");
  call.queued_at = std::chrono::steady_clock::now();
  queue_.push_back(&call);
  q_cv_.notify_all();
  while (!call.done) {
    done_cv_.wait_for(lock, std::chrono::milliseconds(20));
    if (!call.done && !call.running && call.cancel != nullptr && call.cancel->load()) {
      // still queued: withdraw it
      queue_.erase(std::find(queue_.begin(), queue_.end(), &call));
      q_cv_.notify_all();
      throw Cancelled();
    }
  }
  lock.unlock();
  if (call.error) std::rethrow_exception(call.error);
}

void Model::compute_loop() {
  std::unique_lock<std::mutex> lock(q_mu_);
  auto shapes = [&] {
    std::vector<QueuedCall> out;
    out.reserve(queue_.size());
    for (const Call* c : queue_) out.push_back(c->shape);
    return out;
  };
  for (;;) {
    q_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    if (coalesce_ && batch_wait_ms_ > 0 && !stop_) {
      // the oldest call waits (from when it was queued) for others to join
      const auto deadline = queue_.front()->queued_at +
                            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                std::chrono::duration<double, std::milli>(batch_wait_ms_));
      while (!stop_ && !queue_.empty() && std::chrono::steady_clock::now() < deadline &&
             group_has_room(shapes(), batch_tokens_, n_seq_max_)) {
        q_cv_.wait_until(lock, deadline);
      }
      if (queue_.empty()) continue;  // withdrawn while waiting
    }
    const std::vector<size_t> picked = pick_group(shapes(), batch_tokens_, n_seq_max_, coalesce_);
    std::vector<Call*> group;
    for (size_t i : picked) group.push_back(queue_[i]);
    for (auto it = picked.rbegin(); it != picked.rend(); ++it) {
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));
    }
    const auto started = std::chrono::steady_clock::now();
    for (Call* c : group) {
      c->running = true;
      stats_.queue_seconds += std::chrono::duration<double>(started - c->queued_at).count();
    }
    lock.unlock();
    run_group(group);
    const auto ended = std::chrono::steady_clock::now();
    lock.lock();
    stats_.calls += group.size();
    stats_.groups += 1;
    for (const Call* c : group) {
      (c->shape.text ? stats_.texts : stats_.images) += c->shape.n_texts;
      stats_.tokens += c->shape.n_tokens;
    }
    stats_.compute_seconds += std::chrono::duration<double>(ended - started).count();
    size_t bucket = 0;
    while (bucket < std::size(ComputeStats::kGroupSizeBounds) &&
           group.size() > static_cast<size_t>(ComputeStats::kGroupSizeBounds[bucket])) {
      ++bucket;
    }
    stats_.group_sizes[bucket] += 1;
    for (Call* c : group) c->done = true;
    done_cv_.notify_all();
  }
}

void Model::run_group(const std::vector<Call*>& group) {
  Call& lead = *group.front();
  if (lead.alone) {
    try {
      lead.alone();
    } catch (...) {
      lead.error = std::current_exception();
    }
    return;
  }
  std::vector<const std::vector<int32_t>*> toks;
  std::vector<Target> targets;
  for (Call* c : group) {
    const size_t n = c->toks->size();
    if (c->progress != nullptr) c->progress->tokens_total.store(c->shape.n_tokens, std::memory_order_relaxed);
    if (c->multi != nullptr) {
      const int width = projectors_.at(c->req.task).n_out;
      for (size_t i = 0; i < n; ++i) {
        c->multi->offsets[i + 1] = c->multi->offsets[i] + static_cast<int64_t>((*c->toks)[i].size());
      }
      c->multi->data.assign(c->shape.n_tokens * static_cast<size_t>(width), 0.0f);
    }
    for (size_t i = 0; i < n; ++i) {
      toks.push_back(&(*c->toks)[i]);
      targets.push_back(Target{c->out + i * static_cast<size_t>(c->req.dim), c->req.dim, c->multi, i, c->progress,
                               &c->error});
    }
  }
  // alone, the call's own flag also aborts a running decode; shared decodes
  // (one each: the group fits one) run to their end and cancelled callers
  // get Cancelled below
  const std::atomic<bool>* cancel = group.size() == 1 ? lead.cancel : nullptr;
  try {
    decode_all(toks, targets, lead.req, cancel);
  } catch (...) {
    for (Call* c : group) {
      if (!c->error) c->error = std::current_exception();
    }
  }
  for (Call* c : group) {
    if (!c->error && c->cancel != nullptr && c->cancel->load()) c->error = std::make_exception_ptr(Cancelled());
  }
}

ComputeStats Model::stats() const {
  std::lock_guard<std::mutex> lock(q_mu_);
  return stats_;
}

void Model::stop_compute() {
  {
    std::lock_guard<std::mutex> lock(q_mu_);
    stop_ = true;
  }
  q_cv_.notify_all();
  if (compute_.joinable()) compute_.join();
}

// ---- decodes ---------------------------------------------------------------

void Model::decode_call(const std::vector<std::vector<int32_t>>& toks, const Request& req, float* out,
                        const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  std::vector<const std::vector<int32_t>*> ptrs;
  std::vector<Target> targets;
  std::exception_ptr error;
  uint64_t total = 0;
  for (size_t i = 0; i < toks.size(); ++i) {
    ptrs.push_back(&toks[i]);
    targets.push_back(Target{out + i * static_cast<size_t>(req.dim), req.dim, multi, i, progress, &error});
    total += toks[i].size();
  }
  if (progress != nullptr) progress->tokens_total.store(total, std::memory_order_relaxed);
  decode_all(ptrs, targets, req, cancel);
  if (error) std::rethrow_exception(error);
}

void Model::decode_all(const std::vector<const std::vector<int32_t>*>& toks, const std::vector<Target>& targets,
                       const Request& req, const std::atomic<bool>* cancel) {
  const size_t n = toks.size();
  bool any_multi = false;
  for (const Target& t : targets) any_multi = any_multi || t.multi != nullptr;
  const Projector* proj = any_multi ? &projectors_.at(req.task) : nullptr;
  std::vector<size_t> lens(n);
  for (size_t i = 0; i < n; ++i) lens[i] = toks[i]->size();
  // a text's outputs; the first error of its call is kept, later ones dropped
  auto finish = [&](const Target& t, const double* acc, size_t n_pooled) {
    try {
      finish_pooled(acc, n_embd_, n_pooled, pool_, t.dim, t.out, t.index);
    } catch (...) {
      if (!*t.error) *t.error = std::current_exception();
    }
    if (t.progress != nullptr) t.progress->texts.fetch_add(1, std::memory_order_relaxed);
  };

  // 2. which tokens go into which decode
  const Plan plan = plan_decodes(lens, batch_tokens_, n_seq_max_);

  std::lock_guard<std::mutex> lock(mu_);
  struct CancelScope {
    std::atomic<const std::atomic<bool>*>& slot;
    CancelScope(std::atomic<const std::atomic<bool>*>& s, const std::atomic<bool>* c) : slot(s) { slot = c; }
    ~CancelScope() { slot = nullptr; }
  } cancel_scope(cancel_, cancel);

  const int base_ctx = batch_tokens_;
  ensure_context(plan.longest);
  set_task_adapter(req);
  BatchHolder holder(batch_tokens_);
  llama_batch& batch = holder.b;
  llama_memory_t mem = llama_get_memory(ctx_);

  // 3. decode, handing every output token to the output stage
  std::vector<double> acc(std::min(static_cast<size_t>(n_seq_max_), n) * static_cast<size_t>(n_embd_));
  auto acc_row = [&](int seq) { return acc.data() + static_cast<size_t>(seq) * static_cast<size_t>(n_embd_); };
  // tokens pooled: all of them for mean, the one for cls / last
  auto n_pooled = [&](size_t len) { return pool_ == Pooling::Mean ? len : std::min<size_t>(len, 1); };

  for (size_t text : plan.empty) finish(targets[text], nullptr, 0);
  for (const Decode& d : plan.decodes) {
    if (cancel && cancel->load()) throw Cancelled();
    if (d.clear) llama_memory_clear(mem, true);
    batch.n_tokens = 0;
    for (const Span& sp : d.spans) {
      if (sp.begin == 0) std::fill(acc_row(sp.seq), acc_row(sp.seq) + n_embd_, 0.0);
      const int len = static_cast<int>(lens[sp.text]);
      const bool per_token = targets[sp.text].multi != nullptr;
      for (int p = sp.begin; p < sp.end; ++p) {
        const int j = batch.n_tokens++;
        batch.token[j] = (*toks[sp.text])[static_cast<size_t>(p)];
        batch.pos[j] = p;
        batch.n_seq_id[j] = 1;
        batch.seq_id[j][0] = sp.seq;
        batch.logits[j] = per_token || pooled_token(pool_, p, len);
      }
    }
    const int rc = llama_decode(ctx_, batch);
    if (rc == 2 || (cancel && cancel->load())) throw Cancelled();
    if (rc != 0) {
      std::string why = take_thread_errors();
      throw std::runtime_error("llama_decode failed (code " + std::to_string(rc) + ")" +
                               (why.empty() ? "" : ": " + why));
    }
    int j = 0;
    for (const Span& sp : d.spans) {
      const Target& t = targets[sp.text];
      const int len = static_cast<int>(lens[sp.text]);
      for (int p = sp.begin; p < sp.end; ++p, ++j) {
        if (!batch.logits[j]) continue;
        const float* e = llama_get_embeddings_ith(ctx_, j);
        if (e == nullptr) throw std::runtime_error("llama.cpp returned no embedding for a token");
        if (pooled_token(pool_, p, len)) accumulate_row(acc_row(sp.seq), e, n_embd_);
        if (t.multi != nullptr) {
          const size_t row = static_cast<size_t>(t.multi->offsets[t.index]) + static_cast<size_t>(p);
          project_token(*proj, e, t.multi->data.data() + row * static_cast<size_t>(proj->n_out), t.index);
        }
      }
      if (t.progress != nullptr) {
        t.progress->tokens.fetch_add(static_cast<uint64_t>(sp.end - sp.begin), std::memory_order_relaxed);
      }
      if (sp.last) finish(t, acc_row(sp.seq), n_pooled(lens[sp.text]));
    }
  }
  llama_memory_clear(mem, true);
  // A context grown for long texts gives its memory back after the call.
  if (ctx_size_ > std::max(base_ctx, kCtxGranule)) {
    free_context();
    ensure_context(base_ctx);
  }
}

}  // namespace jv4
