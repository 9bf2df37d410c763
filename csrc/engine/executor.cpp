// The executor (see executor.hpp): the one decode driver. A plan says which
// positions of which sequences go into each decode (batch_plan.hpp); the
// cache is cleared where a plan starts a sequence afresh, so a sequence's
// vector never depends on its neighbours in the batch.
#include "engine/executor.hpp"

#include <algorithm>
#include <stdexcept>

#include "engine/batch_plan.hpp"
#include "engine/errors.hpp"
#include "engine/logging.hpp"
#include "ggml.h"
#include "llama.h"

namespace jv4 {
namespace {

constexpr int kMaxSeqPerBatch = 256;  // llama.cpp's LLAMA_MAX_SEQ
constexpr int kCtxGranule = 256;      // context sizes are multiples of it

bool abort_cb(void* data) {
  auto* flag = static_cast<std::atomic<const std::atomic<bool>*>*>(data);
  const std::atomic<bool>* c = flag->load(std::memory_order_relaxed);
  return c != nullptr && c->load(std::memory_order_relaxed);
}

// A token batch (llama_batch_init's arrays) and a view over embedding rows
// with 4 position streams (which llama_batch_init has no form for).
struct Batches {
  llama_batch tokens;
  std::vector<int32_t> pos;
  std::vector<int32_t> n_seq;
  llama_seq_id seq0 = 0;
  std::vector<llama_seq_id*> seq;
  std::vector<int8_t> wanted;
  explicit Batches(int n) : tokens(llama_batch_init(n, 0, 1)) {}
  ~Batches() { llama_batch_free(tokens); }
  llama_batch rows(const float* embd, int n) {
    n_seq.assign(static_cast<size_t>(n), 1);
    seq.assign(static_cast<size_t>(n) + 1, &seq0);
    seq[static_cast<size_t>(n)] = nullptr;
    wanted.assign(static_cast<size_t>(n), 0);
    llama_batch b{};
    b.n_tokens = n;
    b.embd = const_cast<float*>(embd);
    b.pos = pos.data();
    b.n_seq_id = n_seq.data();
    b.seq_id = seq.data();
    b.logits = wanted.data();
    return b;
  }
};

// The segment of `s` holding position p, and p's offset in it.
std::pair<const Segment*, int> locate(const Sequence& s, int p) {
  for (const Segment& seg : s.segments) {
    if (p < seg.n) return {&seg, p};
    p -= seg.n;
  }
  throw std::logic_error("executor: a plan reached past its sequence");
}

}  // namespace

Executor::Executor(ExecutorConfig cfg) : cfg_(std::move(cfg)) {
  // llama.cpp sizes its output buffer by max(n_outputs, n_seq_max) and
  // asserts that this fits n_batch: keep n_seq_max <= batch_tokens.
  n_seq_max_ = std::min(kMaxSeqPerBatch, cfg_.batch_tokens);
  create(cfg_.batch_tokens);
}

Executor::~Executor() { free_context(); }

bool Executor::causal() const { return llama_get_causal_attn(ctx_); }

void Executor::free_context() {
  if (ctx_ != nullptr) llama_free(ctx_);
  ctx_ = nullptr;
  ctx_size_ = 0;
}

void Executor::create(int n_ctx_needed) {
  int size = std::max(n_ctx_needed, cfg_.batch_tokens);
  size = (size + kCtxGranule - 1) / kCtxGranule * kCtxGranule;
  if (ctx_ != nullptr && ctx_size_ >= size) return;
  free_context();
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(size);
  cp.n_batch = static_cast<uint32_t>(cfg_.batch_tokens);
  cp.n_ubatch = static_cast<uint32_t>(cfg_.batch_tokens);
  cp.n_seq_max = static_cast<uint32_t>(n_seq_max_);
  cp.n_threads = cfg_.n_threads;
  cp.n_threads_batch = cfg_.n_threads;
  cp.embeddings = true;
  cp.pooling_type = LLAMA_POOLING_TYPE_NONE;  // per-token outputs; pooled here
  cp.kv_unified = true;
  if (cfg_.flash_attn) {
    cp.flash_attn_type = *cfg_.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  }
  cp.type_k = static_cast<ggml_type>(cfg_.kv_type);
  cp.type_v = cp.type_k;
  cp.no_perf = true;
  cp.abort_callback = abort_cb;
  cp.abort_callback_data = &cancel_;
  if (eval_data_ != nullptr) {  // imatrix(): observe the weight products
    cp.cb_eval = imatrix_observe;
    cp.cb_eval_user_data = eval_data_;
  }
  take_thread_errors();
  ctx_ = llama_init_from_model(cfg_.model, cp);
  if (ctx_ != nullptr && cfg_.batch_invariant) llama_set_cpu_use_ref(ctx_, true);  // patch 0011
  if (ctx_ == nullptr) {
    const std::string why = take_thread_errors();
    throw ModelLoadError(cfg_.path + ": cannot create a context of " + std::to_string(size) + " tokens" +
                         (why.empty() ? "" : ": " + why));
  }
  ctx_size_ = size;
}

void Executor::set_adapter(const std::string& task) {
  if (cfg_.adapters == nullptr || cfg_.adapters->empty() || task.empty()) return;
  // the call's task: its adapter for every decode of the call (one task per call)
  llama_adapter_lora* a = cfg_.adapters->at(task);
  float scale = 1.0f;  // llama.cpp applies the file's alpha / rank itself
  if (llama_set_adapters_lora(ctx_, &a, 1, &scale) != 0) {
    throw std::runtime_error("cannot set the '" + task + "' adapter: " + take_thread_errors());
  }
}

void Executor::ensure(int n_ctx_needed, const std::string& task) {
  create(n_ctx_needed);
  set_adapter(task);
}

Executor::Session::Session(Executor& ex, const std::string& task, const std::atomic<bool>* cancel)
    : ex_(ex), lock_(ex.mu_), task_(task), cancel_(cancel) {
  ex_.cancel_ = cancel;
}

Executor::Session::~Session() {
  ex_.cancel_ = nullptr;
  try {
    if (ex_.ctx_ != nullptr) llama_memory_clear(llama_get_memory(ex_.ctx_), true);
    // a context grown for a long sequence gives its memory back after the call
    if (ex_.ctx_size_ > std::max(ex_.cfg_.batch_tokens, kCtxGranule)) {
      ex_.free_context();
      ex_.create(ex_.cfg_.batch_tokens);
    }
  } catch (...) {  // the next call creates it again
  }
}

void Executor::Session::run(const std::vector<Sequence>& seqs) {
  Executor& ex = ex_;
  const int n_embd = ex.cfg_.n_embd;
  const size_t n = seqs.size();
  bool segmented = false, any_multi = false;
  for (const Sequence& s : seqs) {
    segmented = segmented || s.segments.size() != 1 || s.segments[0].rows != nullptr;
    any_multi = any_multi || s.multi != nullptr;
  }
  const Projector* proj = any_multi ? &ex.cfg_.projectors->at(task_) : nullptr;
  // which positions go into which decode: texts packed; segmented sequences alone
  Plan plan;
  if (segmented) {
    std::vector<std::vector<size_t>> segs(n);
    for (size_t i = 0; i < n; ++i) {
      for (const Segment& g : seqs[i].segments) segs[i].push_back(static_cast<size_t>(g.n));
    }
    plan = plan_segmented(segs, ex.cfg_.batch_tokens);
  } else {
    std::vector<size_t> lens(n);
    for (size_t i = 0; i < n; ++i) lens[i] = static_cast<size_t>(seqs[i].segments[0].n);
    plan = plan_decodes(lens, ex.cfg_.batch_tokens, ex.n_seq_max_);
  }

  // a sequence's outputs; the first error of its call is kept, later ones dropped
  auto finish = [&](const Sequence& s, const double* acc) {
    try {
      finish_pooled(acc, n_embd, acc == nullptr ? 0 : static_cast<size_t>(s.pool_end - s.pool_begin), s.pool, s.dim,
                    s.out, s.index);
    } catch (...) {
      if (!*s.error) *s.error = std::current_exception();
    }
    if (s.progress != nullptr) s.progress->texts.fetch_add(1, std::memory_order_relaxed);
  };
  for (size_t i : plan.empty) finish(seqs[i], nullptr);
  if (plan.decodes.empty()) return;

  ex.ensure(plan.longest, task_);
  llama_memory_t mem = llama_get_memory(ex.ctx_);
  Batches batches(ex.cfg_.batch_tokens);
  std::vector<double> acc((segmented ? 1 : std::min(static_cast<size_t>(ex.n_seq_max_), n)) *
                          static_cast<size_t>(n_embd));
  auto acc_row = [&](int slot) { return acc.data() + static_cast<size_t>(slot) * static_cast<size_t>(n_embd); };
  auto pooled = [](const Sequence& s, int p) { return p >= s.pool_begin && p < s.pool_end; };

  for (const Decode& d : plan.decodes) {
    if (cancel_ && cancel_->load()) throw Cancelled();
    if (d.clear) llama_memory_clear(mem, true);
    // every span of a decode reads the same kind of segment (plans keep rows alone)
    const Sequence& first = seqs[d.spans[0].text];
    const auto [seg0, off0] = locate(first, d.spans[0].begin);
    llama_batch batch;
    int8_t* wanted = nullptr;
    if (seg0->rows == nullptr) {
      batch = batches.tokens;
      batch.n_tokens = 0;
      for (const Span& sp : d.spans) {
        const Sequence& s = seqs[sp.text];
        if (sp.begin == 0) std::fill(acc_row(sp.seq), acc_row(sp.seq) + n_embd, 0.0);
        const auto [seg, off] = locate(s, sp.begin);
        for (int p = sp.begin, k = off; p < sp.end; ++p, ++k) {
          const int j = batch.n_tokens++;
          batch.token[j] = seg->tokens[k];
          batch.pos[j] = seg->pos0 + k;
          batch.n_seq_id[j] = 1;
          batch.seq_id[j][0] = sp.seq;
          batch.logits[j] = s.multi != nullptr || pooled(s, p);
        }
      }
      wanted = batch.logits;
    } else {
      const Span& sp = d.spans[0];
      const int rows = sp.end - sp.begin;
      if (sp.begin == 0) std::fill(acc_row(sp.seq), acc_row(sp.seq) + n_embd, 0.0);
      batches.pos.resize(4 * static_cast<size_t>(rows));
      for (int st = 0; st < 4; ++st) {
        for (int r = 0; r < rows; ++r) {
          batches.pos[static_cast<size_t>(st * rows + r)] = seg0->pos4[static_cast<size_t>(st * seg0->n + off0 + r)];
        }
      }
      batch = batches.rows(seg0->rows + static_cast<size_t>(off0) * static_cast<size_t>(ex.cfg_.n_embd_inp), rows);
      for (int r = 0; r < rows; ++r) batches.wanted[static_cast<size_t>(r)] = first.multi != nullptr || pooled(first, sp.begin + r);
      wanted = batches.wanted.data();
    }
    const int rc = llama_decode(ex.ctx_, batch);
    if (rc == 2 || (cancel_ && cancel_->load())) throw Cancelled();
    if (rc != 0) {
      const std::string why = take_thread_errors();
      throw std::runtime_error("llama_decode failed (code " + std::to_string(rc) + ")" + (why.empty() ? "" : ": " + why));
    }
    int j = 0;
    for (const Span& sp : d.spans) {
      const Sequence& s = seqs[sp.text];
      for (int p = sp.begin; p < sp.end; ++p, ++j) {
        if (!wanted[j]) continue;
        const float* e = llama_get_embeddings_ith(ex.ctx_, j);
        if (e == nullptr) throw std::runtime_error("llama.cpp returned no embedding for a token");
        if (pooled(s, p)) accumulate_row(acc_row(sp.seq), e, n_embd);
        if (s.multi != nullptr) {
          const size_t row = static_cast<size_t>(s.multi->offsets[s.index]) + static_cast<size_t>(p);
          project_token(*proj, e, s.multi->data.data() + row * static_cast<size_t>(proj->n_out), s.index);
        }
      }
      if (s.progress != nullptr) {
        s.progress->tokens.fetch_add(static_cast<uint64_t>(sp.end - sp.begin), std::memory_order_relaxed);
      }
      if (sp.last) finish(s, acc_row(sp.seq));
    }
  }
}

Executor::Observe::Observe(Executor& ex, ImatrixStats* stats) : ex_(ex) {
  ex_.free_context();
  ex_.eval_data_ = stats;
}

Executor::Observe::~Observe() {
  ex_.free_context();
  ex_.eval_data_ = nullptr;
  try {
    ex_.create(ex_.cfg_.batch_tokens);
  } catch (...) {  // the next call creates it again
  }
}

}  // namespace jv4
