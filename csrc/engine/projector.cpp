#include "engine/projector.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/errors.hpp"
#include "engine/gguf_file.hpp"
#include "engine/jina.hpp"

namespace jv4 {

std::map<std::string, Projector> load_projectors(const std::string& path, int n_embd) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw FileNotFound("no such projector file: " + path);
  const GgufFile file(path);
  if (file.meta == nullptr) throw ModelLoadError(path + ": not a readable GGUF file (projector)");
  ggml_context* data = file.data;
  std::map<std::string, Projector> out;
  for (const std::string& task : jina::tasks()) {
    const std::string wn = jina::gguf_key(jina::kGgufProjectorWeight, task);
    const std::string bn = jina::gguf_key(jina::kGgufProjectorBias, task);
    ggml_tensor* w = ggml_get_tensor(data, wn.c_str());
    ggml_tensor* b = ggml_get_tensor(data, bn.c_str());
    if (w == nullptr && b == nullptr) continue;
    if (w == nullptr || b == nullptr) {
      throw ModelLoadError(path + ": projector for '" + task + "' needs both " + wn + " and " + bn);
    }
    if (w->type != GGML_TYPE_F32 || b->type != GGML_TYPE_F32) {
      throw ModelLoadError(path + ": projector tensors must be F32 (" + wn + " is " + ggml_type_name(w->type) +
                           ", " + bn + " is " + ggml_type_name(b->type) + ")");
    }
    if (ggml_n_dims(w) != 2 || w->ne[0] != n_embd || ggml_n_dims(b) != 1 || b->ne[0] != w->ne[1] ||
        w->ne[1] < 1) {
      throw ModelLoadError(path + ": " + wn + " must be [" + std::to_string(n_embd) + ", out] with " + bn +
                           " [out] for this model (got [" + std::to_string(w->ne[0]) + ", " +
                           std::to_string(w->ne[1]) + "] and [" + std::to_string(b->ne[0]) + "])");
    }
    Projector p;
    p.n_in = n_embd;
    p.n_out = static_cast<int>(w->ne[1]);
    p.weight.resize(static_cast<size_t>(ggml_nelements(w)));
    p.bias.resize(static_cast<size_t>(ggml_nelements(b)));
    std::memcpy(p.weight.data(), w->data, p.weight.size() * sizeof(float));
    std::memcpy(p.bias.data(), b->data, p.bias.size() * sizeof(float));
    for (const auto* v : {&p.weight, &p.bias}) {
      for (float x : *v) {
        if (!std::isfinite(x)) throw ModelLoadError(path + ": projector for '" + task + "' holds NaN or infinity");
      }
    }
    out.emplace(task, std::move(p));
  }
  if (out.empty()) {
    throw ModelLoadError(path + ": holds no multi-vector projector (tensors " +
                         jina::gguf_key(jina::kGgufProjectorWeight, "<task>") + " / " +
                         jina::gguf_key(jina::kGgufProjectorBias, "<task>") + ")");
  }
  return out;
}

}  // namespace jv4
