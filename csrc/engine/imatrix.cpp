#include "engine/imatrix.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "engine/errors.hpp"
#include "engine/gguf_file.hpp"
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

namespace jv4 {

// Importance-matrix statistics, as llama.cpp's imatrix tool gathers them:
// for every matrix product with a model weight, the sum over tokens of each
// input activation squared, and the number of tokens.
bool imatrix_observe(ggml_tensor* t, bool ask, void* data) {
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

void save_imatrix(const std::string& path, const ImatrixStats& stats, const std::vector<std::string>& datasets,
                  uint32_t chunk_count, uint32_t chunk_size) {
  // every tensor: its object and header, its data padded to ggml's alignment
  auto padded = [](size_t bytes) { return (bytes + GGML_MEM_ALIGN - 1) / GGML_MEM_ALIGN * GGML_MEM_ALIGN; };
  size_t need = 1024;
  for (const auto& [name, e] : stats) {
    need += 2 * ggml_tensor_overhead() + padded(e.sums.size() * sizeof(float)) + padded(sizeof(float));
  }
  ggml_init_params ip{/*mem_size=*/need, /*mem_buffer=*/nullptr, /*no_alloc=*/false};
  ggml_context* ctx = ggml_init(ip);
  gguf_context* g = gguf_init_empty();
  struct Free {
    ggml_context* c;
    gguf_context* g;
    ~Free() {
      gguf_free(g);
      ggml_free(c);
    }
  } guard{ctx, g};
  gguf_set_val_str(g, "general.type", "imatrix");
  std::vector<const char*> names;
  for (const auto& d : datasets) names.push_back(d.c_str());
  gguf_set_arr_str(g, "imatrix.datasets", names.data(), names.size());
  gguf_set_val_u32(g, "imatrix.chunk_count", chunk_count);
  gguf_set_val_u32(g, "imatrix.chunk_size", chunk_size);
  for (const auto& [name, e] : stats) {
    if (e.sums.empty()) continue;
    ggml_tensor* sums = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, static_cast<int64_t>(e.sums.size()), 1);
    ggml_tensor* counts = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, 1);
    ggml_set_name(sums, (name + ".in_sum2").c_str());
    ggml_set_name(counts, (name + ".counts").c_str());
    auto* s = static_cast<float*>(sums->data);
    for (size_t j = 0; j < e.sums.size(); ++j) s[j] = static_cast<float>(e.sums[j]);
    *static_cast<float*>(counts->data) = static_cast<float>(e.count);
    gguf_add_tensor(g, sums);
    gguf_add_tensor(g, counts);
  }
  const std::string tmp = path + ".partial";
  if (!gguf_write_to_file(g, tmp.c_str(), /*only_meta=*/false)) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw std::runtime_error("cannot write the importance matrix to " + path);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw std::runtime_error("cannot write the importance matrix to " + path + ": " + ec.message());
  }
}

std::map<std::string, std::vector<float>> load_imatrix(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw FileNotFound("no such importance matrix file: " + path);
  const GgufFile file(path);
  if (file.meta == nullptr) {
    throw ModelLoadError(path + ": not an importance matrix in llama.cpp's GGUF format (the legacy .dat "
                         "format is not read; convert it with llama.cpp's llama-imatrix --in-file)");
  }
  ggml_context* data = file.data;
  std::map<std::string, std::pair<ggml_tensor*, ggml_tensor*>> pairs;
  for (ggml_tensor* t = ggml_get_first_tensor(data); t != nullptr; t = ggml_get_next_tensor(data, t)) {
    std::string name = ggml_get_name(t);
    for (const char* suffix : {".in_sum2", ".counts"}) {
      const size_t n = std::strlen(suffix);
      if (name.size() > n && name.compare(name.size() - n, n, suffix) == 0) {
        auto& p = pairs[name.substr(0, name.size() - n)];
        (suffix[1] == 'i' ? p.first : p.second) = t;
      }
    }
  }
  if (pairs.empty()) throw ModelLoadError(path + ": holds no importance matrix entries (<name>.in_sum2 / .counts)");
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, p] : pairs) {
    const ggml_tensor* sums = p.first;
    const ggml_tensor* counts = p.second;
    if (sums == nullptr || counts == nullptr) {
      throw ModelLoadError(path + ": " + name + " has " + (sums ? ".in_sum2 without .counts" : ".counts without .in_sum2"));
    }
    if (sums->type != GGML_TYPE_F32 || counts->type != GGML_TYPE_F32 || ggml_nelements(counts) != sums->ne[1]) {
      throw ModelLoadError(path + ": " + name + ": .in_sum2 must be F32 [n, m] and .counts F32 with m values");
    }
    std::vector<float>& e = out[name];
    e.resize(static_cast<size_t>(ggml_nelements(sums)));
    const auto* s = static_cast<const float*>(sums->data);
    const auto* c = static_cast<const float*>(counts->data);
    for (int64_t m = 0; m < sums->ne[1]; ++m) {
      for (int64_t j = 0; j < sums->ne[0]; ++j) {
        const size_t k = static_cast<size_t>(m * sums->ne[0] + j);
        e[k] = c[m] > 0.0f ? s[k] / c[m] : 1.0f;  // a weight that saw no token: no preference
        if (!std::isfinite(e[k]) || e[k] < 0.0f) {
          throw ModelLoadError(path + ": " + name + " holds a negative, NaN or infinite value");
        }
      }
    }
  }
  return out;
}

}  // namespace jv4
