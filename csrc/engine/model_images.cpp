// Model's image input: the vision tower's rows decoded by the text model in
// the jina-v4 image prompt, pooled over the reference's span. Per image:
// decode the prompt's text before the image (ending in <|vision_start|>),
// run the vision tower (mtmd), decode its rows with M-RoPE positions (t, y, x
// per row: 4 position streams), decode the text after (from
// <|vision_end|>), with the KV cache holding the sequence between the three
// and the call's task adapter active throughout, as for text.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/errors.hpp"
#include "engine/jina.hpp"
#include "engine/logging.hpp"
#include "engine/model.hpp"
#include "engine/output.hpp"
#include "engine/projector.hpp"
#include "engine/vision.hpp"
#include "llama.h"

namespace jv4 {

void Model::load_vision(const ModelOptions& opts) {
  if (!opts.mmproj) return;
  if (!jina_v4_) {
    throw ModelLoadError(path_ + ": image input (mmproj=) is for jina-embeddings-v4 models; this file is not one");
  }
  const bool gpu = !policy_.cpu_only;  // the tower goes where the text model's layers go
  vision_ = std::make_unique<Vision>(*opts.mmproj, model_, llama_model_n_embd_inp(model_), n_threads_,
                                     opts.image_min_tokens, opts.image_max_tokens, gpu);
}

Request Model::resolve_images(const std::optional<std::string>& task, std::optional<int> dim, bool multivector) const {
  if (!vision_) {
    throw std::invalid_argument(path_ + " was loaded without its vision tower: load the folder `jv4 convert` "
                                "wrote (it holds the mmproj) or pass mmproj=");
  }
  // images take no prefix: the task picks the adapter (and projector) only
  Request req = resolve(task, "query", dim, true, multivector);
  req.prefix.clear();
  return req;
}

namespace {

// A llama_batch over caller-owned arrays (embedding rows with 4 position
// streams have no llama_batch_init).
struct EmbdBatch {
  std::vector<int32_t> pos;
  std::vector<int32_t> n_seq;
  llama_seq_id seq0 = 0;
  std::vector<llama_seq_id*> seq;
  std::vector<int8_t> logits;
  llama_batch view(const float* embd, int n) {
    n_seq.assign(static_cast<size_t>(n), 1);
    seq.assign(static_cast<size_t>(n) + 1, &seq0);
    seq[static_cast<size_t>(n)] = nullptr;
    logits.resize(static_cast<size_t>(n));
    llama_batch b{};
    b.n_tokens = n;
    b.token = nullptr;
    b.embd = const_cast<float*>(embd);
    b.pos = pos.data();
    b.n_seq_id = n_seq.data();
    b.seq_id = seq.data();
    b.logits = logits.data();
    return b;
  }
};

}  // namespace

void Model::embed_images(const std::vector<ImageInput>& images, const Request& req, float* out,
                         const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  // on the compute thread, alone (images do not share decodes)
  Call call;
  call.shape.text = false;
  call.shape.n_texts = images.size();  // counted as images (stats)
  call.cancel = cancel;
  call.alone = [&] { embed_images_now(images, req, out, cancel, progress, multi); };
  run(call);
}

void Model::embed_images_now(const std::vector<ImageInput>& images, const Request& req, float* out,
                             const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  if (!vision_) throw std::invalid_argument(path_ + " was loaded without its vision tower");
  const Projector* proj = req.multivector ? &projectors_.at(req.task) : nullptr;
  if (req.multivector) {
    if (multi == nullptr) throw std::invalid_argument("embed_images: multi-vector output needs a MultiOutput");
    multi->width = proj->n_out;
    multi->data.clear();
    multi->offsets.assign(images.size() + 1, 0);
  }
  if (images.empty()) return;
  const int dim = req.dim;
  const size_t width = static_cast<size_t>(n_embd_);
  const int n_inp = llama_model_n_embd_inp(model_);

  std::lock_guard<std::mutex> lock(mu_);
  struct CancelScope {
    std::atomic<const std::atomic<bool>*>& slot;
    CancelScope(std::atomic<const std::atomic<bool>*>& s, const std::atomic<bool>* c) : slot(s) { slot = c; }
    ~CancelScope() { slot = nullptr; }
  } cancel_scope(cancel_, cancel);
  const int base_ctx = batch_tokens_;
  struct Restore {  // a context grown for a big image gives its memory back
    Model& m;
    int base;
    ~Restore() {
      try {
        if (m.ctx_ != nullptr) llama_memory_clear(llama_get_memory(m.ctx_), true);
        if (m.ctx_size_ > std::max(base, 256)) {
          m.free_context();
          m.ensure_context(base);
        }
      } catch (...) {  // the next call creates it again
      }
    }
  } restore{*this, base_ctx};

  std::vector<double> acc(width);
  std::vector<int32_t> pos4;
  EmbdBatch eb;
  llama_batch tb = llama_batch_init(batch_tokens_, 0, 1);
  struct BatchFree {
    llama_batch& b;
    ~BatchFree() { llama_batch_free(b); }
  } tb_free{tb};

  auto check_rc = [&](int rc) {
    if (rc == 2 || (cancel && cancel->load())) throw Cancelled();
    if (rc != 0) {
      const std::string why = take_thread_errors();
      throw std::runtime_error("llama_decode failed (code " + std::to_string(rc) + ")" + (why.empty() ? "" : ": " + why));
    }
  };

  for (size_t i = 0; i < images.size(); ++i) {
    if (cancel && cancel->load()) throw Cancelled();
    const ImageInput& in = images[i];
    ImagePrompt pr = [&] {
      const RgbImage rgb = decode_image(in);  // freed once preprocessed
      return vision_->tokenize(rgb, in.name);
    }();
    const int nb = static_cast<int>(pr.before.size()), na = static_cast<int>(pr.after.size());
    const int n_tok = nb + pr.n_image + na;
    if (progress != nullptr) progress->tokens_total.fetch_add(static_cast<uint64_t>(n_tok), std::memory_order_relaxed);
    // the pooled span: <|vision_start|> (last before), the image, <|vision_end|> (first after)
    const int span_begin = nb - 1, span_end = nb + pr.n_image;  // inclusive
    float* multi_rows = nullptr;
    if (proj != nullptr) {
      multi->offsets[i + 1] = multi->offsets[i] + n_tok;
      multi->data.resize(static_cast<size_t>(multi->offsets[i + 1]) * static_cast<size_t>(proj->n_out));
      multi_rows = multi->data.data() + static_cast<size_t>(multi->offsets[i]) * static_cast<size_t>(proj->n_out);
    }
    ensure_context(n_tok);
    set_task_adapter(req);
    llama_memory_clear(llama_get_memory(ctx_), true);
    std::fill(acc.begin(), acc.end(), 0.0);

    // the outputs of one decode: prompt positions k0 .. k0 + n - 1
    auto take = [&](int k0, int n, const int8_t* wanted) {
      for (int j = 0; j < n; ++j) {
        if (!wanted[j]) continue;
        const float* e = llama_get_embeddings_ith(ctx_, j);
        if (e == nullptr) throw std::runtime_error("llama.cpp returned no embedding for a token");
        const int k = k0 + j;
        if (k >= span_begin && k <= span_end) accumulate_row(acc.data(), e, n_embd_);
        if (proj != nullptr) project_token(*proj, e, multi_rows + static_cast<size_t>(k) * proj->n_out, i);
      }
    };
    auto decode_text = [&](const std::vector<int32_t>& toks, int k0, int pos0) {
      for (int off = 0; off < static_cast<int>(toks.size()); off += batch_tokens_) {
        const int n = std::min(batch_tokens_, static_cast<int>(toks.size()) - off);
        tb.n_tokens = n;
        for (int j = 0; j < n; ++j) {
          const int k = k0 + off + j;
          tb.token[j] = toks[static_cast<size_t>(off + j)];
          tb.pos[j] = pos0 + off + j;
          tb.n_seq_id[j] = 1;
          tb.seq_id[j][0] = 0;
          tb.logits[j] = proj != nullptr || (k >= span_begin && k <= span_end);
        }
        check_rc(llama_decode(ctx_, tb));
        take(k0 + off, n, tb.logits);
      }
    };

    decode_text(pr.before, 0, 0);
    if (cancel && cancel->load()) throw Cancelled();
    const float* rows = vision_->encode(pr, in.name);
    if (cancel && cancel->load()) throw Cancelled();
    std::vector<int32_t> all_pos;
    vision_->positions(pr, nb, all_pos);
    const int n_img = pr.n_image;
    for (int off = 0; off < n_img; off += batch_tokens_) {
      const int n = std::min(batch_tokens_, n_img - off);
      eb.pos.resize(4 * static_cast<size_t>(n));
      for (int s = 0; s < 4; ++s) {
        for (int r = 0; r < n; ++r) eb.pos[static_cast<size_t>(s * n + r)] = all_pos[static_cast<size_t>(s * n_img + off + r)];
      }
      llama_batch b = eb.view(rows + static_cast<size_t>(off) * static_cast<size_t>(n_inp), n);
      std::fill(eb.logits.begin(), eb.logits.end(), int8_t{1});
      check_rc(llama_decode(ctx_, b));
      take(nb + off, n, eb.logits.data());
    }
    decode_text(pr.after, nb + n_img, nb + pr.n_pos);

    finish_pooled(acc.data(), n_embd_, static_cast<size_t>(span_end - span_begin + 1), Pooling::Mean, dim,
                  out + i * static_cast<size_t>(dim), i);
    if (progress != nullptr) {
      progress->tokens.fetch_add(static_cast<uint64_t>(n_tok), std::memory_order_relaxed);
      progress->texts.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

}  // namespace jv4
