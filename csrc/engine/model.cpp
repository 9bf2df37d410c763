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
#include "engine/logging.hpp"
#include "engine/projector.hpp"
#include "engine/truncation.hpp"
#include "unicode.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "llama.h"

namespace jv4 {
namespace {

constexpr int kDefaultMaxLength = 32768;  // the reference's max_length
constexpr int kDefaultBatchTokens = 512;
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

// Importance-matrix statistics, as llama.cpp's imatrix tool gathers them:
// for every matrix product with a model weight, the sum over tokens of each
// input activation squared, and the number of tokens.
bool imatrix_cb(ggml_tensor* t, bool ask, void* data) {
  if (t->op != GGML_OP_MUL_MAT) return ask ? false : true;
  const ggml_tensor* w = t->src[0];
  const ggml_tensor* x = t->src[1];
  const char* name = w != nullptr ? ggml_get_name(w) : "";
  const size_t len = std::strlen(name);
  const bool weight = len > 7 && std::strcmp(name + len - 7, ".weight") == 0;
  if (ask) return weight && x != nullptr && x->type == GGML_TYPE_F32;
  if (!weight || x == nullptr || x->type != GGML_TYPE_F32 || !ggml_backend_buffer_is_host(x->buffer)) return true;
  auto& stats = *static_cast<ImatrixStats*>(data);
  auto& e = stats[name];
  if (e.sums.empty()) e.sums.assign(static_cast<size_t>(x->ne[0]), 0.0);
  if (e.sums.size() != static_cast<size_t>(x->ne[0])) return true;  // a differently shaped use: not counted
  for (int64_t i3 = 0; i3 < x->ne[3]; ++i3) {
    for (int64_t i2 = 0; i2 < x->ne[2]; ++i2) {
      for (int64_t r = 0; r < x->ne[1]; ++r) {
        const auto* row = reinterpret_cast<const float*>(static_cast<const char*>(x->data) + r * x->nb[1] +
                                                         i2 * x->nb[2] + i3 * x->nb[3]);
        for (int64_t j = 0; j < x->ne[0]; ++j) e.sums[static_cast<size_t>(j)] += static_cast<double>(row[j]) * row[j];
        e.count += 1;
      }
    }
  }
  return true;
}


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

struct WeightTypes {
  bool repackable = false;         // some tensor has a CPU repacked layout (x86: Q4_0, IQ4_NL, Q4_K, Q2_K;
                                   // Q8_0 with AVX512-VNNI; BF16 with AVX512-BF16)
  bool repack_is_slower = false;   // ...and it is one measured slower repacked
  bool f16_matrix = false;         // some 2-D tensor is F16
};

// Tensor types from the GGUF header alone (no data read). Measured on an
// AMD EPYC (Zen 4), mini shape, llama-bench pp512, 2 threads, repack on / off:
// Q4_K_M 1313 / 2072 tok/s (AVX-512 build), 1054 / 1104 (AVX2 build);
// Q2_K 1128 / 1958 and 928 / 958; Q4_0 1416 / 1030 and 922 / 742.
// So on x86 Q4_K and Q2_K run unrepacked by default, everything else as
// llama.cpp decides (docs/benchmarks.md, "Weight repacking by type"). Other
// architectures have other repacked kernels, not measured here: their
// default stays llama.cpp's.
WeightTypes scan_weight_types(const std::string& path) {
  WeightTypes wt;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) return wt;  // the loader below reports what is wrong
  for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
    if (gguf_get_tensor_type(g, i) == GGML_TYPE_F16) wt.f16_matrix = true;  // (the loader checks shapes)
    switch (gguf_get_tensor_type(g, i)) {
      case GGML_TYPE_Q4_K:
      case GGML_TYPE_Q2_K:
#if defined(__x86_64__) || defined(_M_X64)
        wt.repack_is_slower = true;
#endif
        wt.repackable = true;
        break;
      case GGML_TYPE_Q4_0:
      case GGML_TYPE_IQ4_NL:
        wt.repackable = true;
        break;
      case GGML_TYPE_Q8_0:
        // jv4's fetch-time patch "Q8_0 weights for AVX512-VNNI" repacks these
        // where the build's CPU code has AVX512-VNNI (tools/fetch_llama_cpp.py)
        if (ggml_cpu_has_avx512_vnni()) wt.repackable = true;
        break;
      case GGML_TYPE_BF16:
        // ...and "BF16 weights for AVX512-BF16" these (F16 ones too, when held
        // as BF16: see Model::Model)
        if (ggml_cpu_has_avx512_bf16()) wt.repackable = true;
        break;
      default:
        break;
    }
  }
  gguf_free(g);
  return wt;
}

}  // namespace

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

const std::vector<std::string>& kv_cache_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, type] : kv_type_table()) out.push_back(name);
    return out;
  }();
  return names;
}

std::string Model::kv_cache_type_name() const {
  for (const auto& [name, type] : kv_type_table()) {
    if (type == kv_type_) return name;
  }
  return "f16";  // llama.cpp's default
}

Model::Model(const std::string& path, const ModelOptions& opts) : path_(path) {
  for (auto [name, v] : {std::pair{"n_threads", opts.n_threads}, std::pair{"max_length", opts.max_length},
                         std::pair{"batch_tokens", opts.batch_tokens}}) {
    if (v && *v < 1) {
      throw std::invalid_argument(std::string(name) + " must be >= 1 (or None), got " + std::to_string(*v));
    }
  }
  if (opts.n_gpu_layers && *opts.n_gpu_layers < 0) {
    throw std::invalid_argument("n_gpu_layers must be >= 0 (0: CPU only) or None for all layers, got " +
                                std::to_string(*opts.n_gpu_layers));
  }
  flash_attn_ = opts.flash_attn;
  if (opts.kv_cache_type) {
    std::string allowed;
    for (const auto& [name, type] : kv_type_table()) {
      if (name == *opts.kv_cache_type) kv_type_ = type;
      allowed += (allowed.empty() ? "" : ", ") + name;
    }
    if (kv_type_ < 0) {
      throw std::invalid_argument("kv_cache_type must be one of " + allowed + " (or None: the default, see the docs), got '" +
                                  *opts.kv_cache_type + "'");
    }
    if (ggml_is_quantized(static_cast<ggml_type>(kv_type_)) && flash_attn_ == false) {
      throw std::invalid_argument("kv_cache_type='" + *opts.kv_cache_type +
                                  "' is quantized, which llama.cpp supports only with flash attention: "
                                  "use flash_attn=True or None");
    }
  }
  precheck_file(path);
  init_backend();
  take_thread_errors();
  check_gguf(path);
  take_thread_errors();

  llama_model_params mp = llama_model_default_params();
  mp.load_mode = LLAMA_LOAD_MODE_MMAP;  // weights stay in the page cache, shared
  // Everything on the accelerator when the build has one (a build or a
  // machine without one simply runs on the CPU).
  mp.n_gpu_layers = opts.n_gpu_layers.value_or(-1);
  const int n_gpus = count_gpus();
  if (opts.main_gpu) {
    if (*opts.main_gpu < 0 || *opts.main_gpu >= n_gpus) {
      throw std::invalid_argument("main_gpu=" + std::to_string(*opts.main_gpu) + " but this build sees " +
                                  std::to_string(n_gpus) + " GPU device(s)" +
                                  (n_gpus ? " (0.." + std::to_string(n_gpus - 1) + ")" : std::string()));
    }
    mp.main_gpu = *opts.main_gpu;
    mp.split_mode = LLAMA_SPLIT_MODE_NONE;  // the whole model on that one GPU
  }
  WeightTypes wt = scan_weight_types(path);
  take_thread_errors();  // a bad header is reported by the loader below
  // F16 matrices as BF16 (fetch-time patch "F16 weights as BF16"): where the
  // CPU code has AVX512-BF16 the BF16 kernels ran the v4 shape 1.45 x faster
  // than F16's (docs/benchmarks.md). Only for CPU-held weights; the file is
  // then read, not mapped (a converted tensor is a copy).
  const bool cpu_only = n_gpus == 0 || mp.n_gpu_layers == 0;
  const bool bf16_kernels = ggml_cpu_has_avx512_bf16() != 0;  // the build's CPU code (jv4's BF16 patches)
  f16_as_bf16_ = wt.f16_matrix && opts.f16_as_bf16.value_or(bf16_kernels && cpu_only);
  if (f16_as_bf16_) {
    mp.load_mode = LLAMA_LOAD_MODE_NONE;
    if (bf16_kernels) wt.repackable = true;  // held as BF16, so repacked as BF16
  }
  repack_ = opts.repack.value_or(!wt.repack_is_slower);
  mp.use_extra_bufts = repack_;
  if (repack_ && wt.repackable) {
    // Repacked weights are copies: under mmap the file's pages of the same
    // tensors (read once to repack them) stay in the process too, e.g. v4
    // Q4_K_M peaked at file + 1.4 GiB instead of file + 0.2. Read instead.
    mp.load_mode = LLAMA_LOAD_MODE_NONE;
  }
  load_mode_ = mp.load_mode == LLAMA_LOAD_MODE_MMAP ? "mmap" : "read";
  struct F16Switch {  // thread-local in the loader: set for this load only
    explicit F16Switch(bool on) { llama_jv4_set_f16_as_bf16(on); }
    ~F16Switch() { llama_jv4_set_f16_as_bf16(false); }
  } f16_switch(f16_as_bf16_);
  struct NoLmHead {  // thread-local in the loader: no tied lm_head copy (jv4 never computes logits)
    NoLmHead() { llama_jv4_set_no_lm_head(true); }
    ~NoLmHead() { llama_jv4_set_no_lm_head(false); }
  } no_lm_head;
  model_ = llama_model_load_from_file(path.c_str(), mp);
  if (model_ == nullptr) {
    std::string why = take_thread_errors();
    throw ModelLoadError(path + ": cannot load model" + (why.empty() ? "" : ": " + why));
  }
  try {
    vocab_ = llama_model_get_vocab(model_);
    if (vocab_ == nullptr || llama_vocab_n_tokens(vocab_) <= 0) {
      throw ModelLoadError(path + ": the model has no vocabulary");
    }
    if (llama_model_has_encoder(model_) && llama_model_has_decoder(model_)) {
      throw ModelLoadError(path + ": encoder-decoder models are not supported for embeddings");
    }
    n_embd_ = llama_model_n_embd_out(model_);
    if (n_embd_ <= 0) n_embd_ = llama_model_n_embd(model_);
    n_ctx_train_ = llama_model_n_ctx_train(model_);
    if (!opts.kv_cache_type && flash_attn_ != false && cpu_only && bf16_kernels) {
      // A BF16 KV cache where flash attention multiplies it with BF16 dot
      // products (fetch-time patch), unless the weights are full precision
      // (F32, or F16 kept as F16): v4 F16 at 8192 tokens a text ran 1.23 x
      // faster, cosine to the reference unchanged to 1e-6 (docs/benchmarks.md).
      const llama_ftype ft = llama_model_ftype(model_);
      const bool full_precision = ft == LLAMA_FTYPE_ALL_F32 || (ft == LLAMA_FTYPE_MOSTLY_F16 && !f16_as_bf16_);
      if (!full_precision) kv_type_ = GGML_TYPE_BF16;
    }

    const std::string arch = meta(model_, "general.architecture");
    const std::string name = meta(model_, "general.name");
    const std::string basename = meta(model_, "general.basename");
    const std::string file = std::filesystem::path(path).filename().string();
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
      else if (pt == "4") throw ModelLoadError(path + ": reranker (rank pooling) models are not supported");
      else pooling_ = "mean";
    }
    pool_ = parse_pooling(pooling_);
    base_ = jina_v4_ && meta(model_, "jina_v4.base") == "true";

    int cap = n_ctx_train_ > 0 ? n_ctx_train_ : kDefaultMaxLength;
    if (opts.max_length) {
      if (*opts.max_length > cap) {
        throw std::invalid_argument("max_length=" + std::to_string(*opts.max_length) +
                                    " is above the model's trained context (" +
                                    std::to_string(cap) + " tokens)");
      }
      max_length_ = *opts.max_length;
    } else {
      max_length_ = std::min(kDefaultMaxLength, cap);
    }
    batch_tokens_ = opts.batch_tokens.value_or(kDefaultBatchTokens);
    n_threads_ = opts.n_threads.value_or(std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
    ensure_context(batch_tokens_);
    causal_ = llama_get_causal_attn(ctx_);
    if (!causal_ && batch_tokens_ < max_length_) {
      // Non-causal attention needs a whole text inside one physical batch.
      batch_tokens_ = max_length_;
      free_context();
      ensure_context(batch_tokens_);
    }

    load_adapters(opts);

    char desc[256];
    llama_model_desc(model_, desc, sizeof(desc));
    info_ = {
        {"path", path},
        {"architecture", arch},
        {"name", name},
        {"basename", basename},
        {"description", desc},
        {"task", task_},
        {"pooling", pooling_},
        {"tokenizer_pre", tokenizer_pre_},
        {"truncation", head_cut_ ? "head" : "whole text"},
        {"normalization", normalization_},
        {"jina_v4", jina_v4_ ? "1" : "0"},
        {"n_embd", std::to_string(n_embd_)},
        {"n_layer", std::to_string(llama_model_n_layer(model_))},
        {"n_head", std::to_string(llama_model_n_head(model_))},
        {"n_vocab", std::to_string(llama_vocab_n_tokens(vocab_))},
        {"n_ctx_train", std::to_string(n_ctx_train_)},
        {"n_params", std::to_string(llama_model_n_params(model_))},
        {"size_bytes", std::to_string(llama_model_size(model_))},
        {"causal", causal_ ? "1" : "0"},
        {"repack", repack_ ? "1" : "0"},
        {"f16_as_bf16", f16_as_bf16_ ? "1" : "0"},
        {"flash_attn", !flash_attn_ ? "auto" : *flash_attn_ ? "on" : "off"},
        {"kv_cache_type", kv_cache_type_name()},
        {"load_mode", load_mode_},
        {"file_type", llama_ftype_name(llama_model_ftype(model_))},
        {"n_gpu_layers", std::to_string(mp.n_gpu_layers)},
        {"base", base_ ? "1" : "0"},
        {"projector", opts.projector.value_or("")},
    };
    std::string tasks;
    for (const std::string& t : adapter_tasks()) tasks += (tasks.empty() ? "" : ",") + t;
    info_["adapters"] = tasks;
  } catch (...) {
    free_context();
    llama_model_free(model_);
    model_ = nullptr;
    throw;
  }
}

Model::~Model() {
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
  if (kv_type_ >= 0) {
    cp.type_k = static_cast<ggml_type>(kv_type_);
    cp.type_v = static_cast<ggml_type>(kv_type_);
  }
  cp.no_perf = true;
  cp.abort_callback = abort_cb;
  cp.abort_callback_data = &cancel_;
  if (eval_data_ != nullptr) {  // imatrix(): observe the weight products
    cp.cb_eval = imatrix_cb;
    cp.cb_eval_user_data = eval_data_;
  }
  take_thread_errors();
  ctx_ = llama_init_from_model(model_, cp);
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
    const std::string task = adapter_meta(a, "jina_v4.task");
    if (task.empty() || std::find(jina::tasks().begin(), jina::tasks().end(), task) == jina::tasks().end()) {
      throw ModelLoadError(file + ": not a jina-embeddings-v4 task adapter (its jina_v4.task is '" + task +
                           "'; allowed: " + quoted(jina::tasks()) + ")");
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
          "(neither general.name nor the file name says); pass task= one of "
          "'retrieval', 'text-matching', 'code'");
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
  // 1. tokenize (outside the lock: the vocabulary is read-only)
  const std::vector<std::vector<int32_t>> toks = tokenize_all(texts, req, cancel);
  std::lock_guard<std::mutex> lock(mu_);
  decode_all(toks, req, out, cancel, progress, multi);
}

void Model::imatrix(const std::vector<std::string_view>& texts, const Request& req, ImatrixStats& stats,
                    const std::atomic<bool>* cancel, Progress* progress) {
  if (texts.empty()) return;
  const std::vector<std::vector<int32_t>> toks = tokenize_all(texts, req, cancel);
  std::vector<float> out(texts.size() * static_cast<size_t>(req.dim));
  std::lock_guard<std::mutex> lock(mu_);
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
  decode_all(toks, req, out.data(), cancel, progress, nullptr);
}

void Model::decode_all(const std::vector<std::vector<int32_t>>& toks, const Request& req, float* out,
                       const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  const size_t n = toks.size();
  const int dim = req.dim;
  const Projector* proj = req.multivector ? &projectors_.at(req.task) : nullptr;
  std::vector<size_t> lens(n);
  for (size_t i = 0; i < n; ++i) lens[i] = toks[i].size();
  uint64_t total = 0;
  for (size_t l : lens) total += l;
  if (progress != nullptr) progress->tokens_total.store(total, std::memory_order_relaxed);
  auto advance = [&](uint64_t n_texts, uint64_t n_tokens) {
    if (progress == nullptr) return;
    progress->tokens.fetch_add(n_tokens, std::memory_order_relaxed);
    progress->texts.fetch_add(n_texts, std::memory_order_relaxed);
  };
  if (multi != nullptr && proj != nullptr) {
    for (size_t i = 0; i < n; ++i) multi->offsets[i + 1] = multi->offsets[i] + static_cast<int64_t>(lens[i]);
    multi->data.assign(static_cast<size_t>(total) * static_cast<size_t>(proj->n_out), 0.0f);
  }

  // 2. which tokens go into which decode
  const Plan plan = plan_decodes(lens, batch_tokens_, n_seq_max_);

  struct CancelScope {
    std::atomic<const std::atomic<bool>*>& slot;
    CancelScope(std::atomic<const std::atomic<bool>*>& s, const std::atomic<bool>* c) : slot(s) { slot = c; }
    ~CancelScope() { slot = nullptr; }
  } cancel_scope(cancel_, cancel);

  const int base_ctx = batch_tokens_;
  ensure_context(plan.longest);
  if (base_) {
    // the call's task: its adapter for every decode of the call (one task per call)
    llama_adapter_lora* a = adapters_.at(req.task);
    float scale = 1.0f;  // llama.cpp applies the file's alpha / rank itself
    if (llama_set_adapters_lora(ctx_, &a, 1, &scale) != 0) {
      throw std::runtime_error("cannot set the '" + req.task + "' adapter: " + take_thread_errors());
    }
  }
  BatchHolder holder(batch_tokens_);
  llama_batch& batch = holder.b;
  llama_memory_t mem = llama_get_memory(ctx_);

  // 3. decode, handing every output token to the output stage
  std::vector<double> acc(std::min(static_cast<size_t>(n_seq_max_), n) * static_cast<size_t>(n_embd_));
  auto acc_row = [&](int seq) { return acc.data() + static_cast<size_t>(seq) * static_cast<size_t>(n_embd_); };
  // tokens pooled: all of them for mean, the one for cls / last
  auto n_pooled = [&](size_t len) { return pool_ == Pooling::Mean ? len : std::min<size_t>(len, 1); };

  for (size_t text : plan.empty) {
    finish_pooled(nullptr, n_embd_, 0, pool_, dim, out + text * static_cast<size_t>(dim), text);
    advance(1, 0);
  }
  for (const Decode& d : plan.decodes) {
    if (cancel && cancel->load()) throw Cancelled();
    if (d.clear) llama_memory_clear(mem, true);
    batch.n_tokens = 0;
    for (const Span& sp : d.spans) {
      if (sp.begin == 0) std::fill(acc_row(sp.seq), acc_row(sp.seq) + n_embd_, 0.0);
      const int len = static_cast<int>(lens[sp.text]);
      for (int p = sp.begin; p < sp.end; ++p) {
        const int j = batch.n_tokens++;
        batch.token[j] = toks[sp.text][static_cast<size_t>(p)];
        batch.pos[j] = p;
        batch.n_seq_id[j] = 1;
        batch.seq_id[j][0] = sp.seq;
        batch.logits[j] = proj != nullptr || pooled_token(pool_, p, len);
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
      const int len = static_cast<int>(lens[sp.text]);
      for (int p = sp.begin; p < sp.end; ++p, ++j) {
        if (!batch.logits[j]) continue;
        const float* e = llama_get_embeddings_ith(ctx_, j);
        if (e == nullptr) throw std::runtime_error("llama.cpp returned no embedding for a token");
        if (pooled_token(pool_, p, len)) accumulate_row(acc_row(sp.seq), e, n_embd_);
        if (proj != nullptr) {
          const size_t row = static_cast<size_t>(multi->offsets[sp.text]) + static_cast<size_t>(p);
          project_token(*proj, e, multi->data.data() + row * static_cast<size_t>(proj->n_out), sp.text);
        }
      }
      if (sp.last) {
        finish_pooled(acc_row(sp.seq), n_embd_, n_pooled(lens[sp.text]), pool_, dim,
                      out + sp.text * static_cast<size_t>(dim), sp.text);
      }
    }
    uint64_t finished = 0;
    for (const Span& sp : d.spans) finished += sp.last ? 1 : 0;
    advance(finished, static_cast<uint64_t>(d.n_tokens()));
  }
  llama_memory_clear(mem, true);
  // A context grown for long texts gives its memory back after the call.
  if (ctx_size_ > std::max(base_ctx, kCtxGranule)) {
    free_context();
    ensure_context(base_ctx);
  }
}

}  // namespace jv4
