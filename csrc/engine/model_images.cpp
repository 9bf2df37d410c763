// Model's image input: each image turned into one sequence of the jina-v4
// image prompt - the text before the image (ending in <|vision_start|>), the
// vision tower's rows (mtmd) with their M-RoPE positions (t, y, x per row:
// 4 position streams), the text after (from <|vision_end|>) - pooled over
// the reference's span and decoded by the executor like any text, with the
// call's task adapter.
#include <stdexcept>
#include <string>

#include "engine/errors.hpp"
#include "engine/model.hpp"
#include "engine/vision.hpp"
#include "llama.h"

namespace jv4 {

void Model::load_vision(const ModelOptions& opts, const BuildFacts& build) {
  if (!opts.mmproj) return;
  if (!info_.jina_v4) {
    throw ModelLoadError(path_ + ": image input (mmproj=) is for jina-embeddings-v4 models; this file is not one");
  }
  const bool gpu = !policy_.cpu_only;  // the tower goes where the text model's layers go
  MmprojFacts facts = check_mmproj(*opts.mmproj, llama_model_n_embd_inp(model_));
  tower_attention_ = decide_tower_attention(policy_, build, facts.matrix_types);
  vision_ = std::make_unique<Vision>(*opts.mmproj, std::move(facts), model_, info_.n_threads, opts.image_min_tokens,
                                     opts.image_max_tokens, gpu, policy_.tower_f16_as_bf16, policy_.tower_repack,
                                     tower_attention_ == "bf16");
}

void Model::embed_images(const std::vector<ImageInput>& images, const Request& req, float* out,
                         const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  // on the compute thread, alone (images do not share decodes)
  run_alone(images.size(), cancel, [&] { embed_images_now(images, req, out, cancel, progress, multi); });
}

void Model::embed_images_now(const std::vector<ImageInput>& images, const Request& req, float* out,
                             const std::atomic<bool>* cancel, Progress* progress, MultiOutput* multi) {
  if (!vision_) throw std::invalid_argument(path_ + " was loaded without its vision tower");
  prepare_multi(req, multi, images.size());
  if (images.empty()) return;
  Executor::Session session(*executor_, req.task, cancel);
  std::exception_ptr error;
  std::vector<int32_t> pos4;
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
    if (req.multivector) {
      multi->offsets[i + 1] = multi->offsets[i] + n_tok;
      multi->data.resize(static_cast<size_t>(multi->offsets[i + 1]) * static_cast<size_t>(multi->width));
    }
    const float* rows = vision_->encode(pr, in.name);
    if (cancel && cancel->load()) throw Cancelled();
    vision_->positions(pr, nb, pos4);
    Sequence s;
    s.segments = {Segment{pr.before.data(), nullptr, nullptr, nb, 0},
                  Segment{nullptr, rows, pos4.data(), pr.n_image, 0},
                  Segment{pr.after.data(), nullptr, nullptr, na, nb + pr.n_pos}};
    // the pooled span: <|vision_start|> (last before), the image, <|vision_end|> (first after)
    s.pool_begin = nb - 1;
    s.pool_end = nb + pr.n_image + 1;
    s.out = out + i * static_cast<size_t>(req.dim);
    s.dim = req.dim;
    s.multi = req.multivector ? multi : nullptr;
    s.index = i;
    s.progress = progress;
    s.error = &error;
    session.run({s});
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace jv4
