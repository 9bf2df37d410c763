#include "engine/gguf_check.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/errors.hpp"
#include "engine/gguf_file.hpp"
#include "ggml.h"
#include "gguf.h"

namespace jv4 {
namespace {

class Meta {
 public:
  Meta(const gguf_context* g, std::string path) : g_(g), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& what) const { throw ModelLoadError(path_ + ": " + what); }

  // A numeric scalar of any GGUF number type (never calls a getter of the
  // wrong type: those assert).
  std::optional<double> number(const std::string& key) const {
    const int64_t id = gguf_find_key(g_, key.c_str());
    if (id < 0) return std::nullopt;
    switch (gguf_get_kv_type(g_, id)) {
      case GGUF_TYPE_UINT8: return gguf_get_val_u8(g_, id);
      case GGUF_TYPE_INT8: return gguf_get_val_i8(g_, id);
      case GGUF_TYPE_UINT16: return gguf_get_val_u16(g_, id);
      case GGUF_TYPE_INT16: return gguf_get_val_i16(g_, id);
      case GGUF_TYPE_UINT32: return gguf_get_val_u32(g_, id);
      case GGUF_TYPE_INT32: return gguf_get_val_i32(g_, id);
      case GGUF_TYPE_UINT64: return static_cast<double>(gguf_get_val_u64(g_, id));
      case GGUF_TYPE_INT64: return static_cast<double>(gguf_get_val_i64(g_, id));
      case GGUF_TYPE_FLOAT32: return gguf_get_val_f32(g_, id);
      case GGUF_TYPE_FLOAT64: return gguf_get_val_f64(g_, id);
      default: fail("metadata " + key + " must be a number");
    }
  }

  // Integer elements of an array (or one scalar as a one-element array).
  std::optional<std::vector<int64_t>> ints(const std::string& key) const {
    const int64_t id = gguf_find_key(g_, key.c_str());
    if (id < 0) return std::nullopt;
    if (gguf_get_kv_type(g_, id) != GGUF_TYPE_ARRAY) {
      const double v = *number(key);
      return std::vector<int64_t>{static_cast<int64_t>(v)};
    }
    const size_t n = gguf_get_arr_n(g_, id);
    const void* data = gguf_get_arr_data(g_, id);
    std::vector<int64_t> out(n);
    switch (gguf_get_arr_type(g_, id)) {
      case GGUF_TYPE_INT32:
        for (size_t i = 0; i < n; ++i) out[i] = static_cast<const int32_t*>(data)[i];
        break;
      case GGUF_TYPE_UINT32:
        for (size_t i = 0; i < n; ++i) out[i] = static_cast<const uint32_t*>(data)[i];
        break;
      default:
        fail("metadata " + key + " must be an array of 32-bit integers");
    }
    return out;
  }

 private:
  const gguf_context* g_;
  std::string path_;
};

std::string num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

void check_gguf(const std::string& path) {
  ggml_context* meta_ctx = nullptr;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/&meta_ctx};
  std::unique_ptr<gguf_context, GgufFree> g(gguf_init_from_file(path.c_str(), gp));
  std::unique_ptr<ggml_context, GgmlFree> tensors(meta_ctx);
  if (!g) return;  // unparseable: llama.cpp's loader reports it
  const Meta m(g.get(), path);

  const int64_t arch_id = gguf_find_key(g.get(), "general.architecture");
  if (arch_id < 0 || gguf_get_kv_type(g.get(), arch_id) != GGUF_TYPE_STRING) return;  // the loader says so
  const std::string arch = gguf_get_val_str(g.get(), arch_id);
  const std::string a = arch + ".";

  // Normalisation epsilons: ggml's norm kernels assert eps >= 0 while computing.
  for (const char* k : {"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"}) {
    if (auto v = m.number(a + k); v && !(std::isfinite(*v) && *v >= 0)) {
      m.fail("metadata " + a + k + " = " + num(*v) + " (must be a finite number >= 0)");
    }
  }
  // RoPE: a base or scale of 0, negative or not finite makes every vector NaN.
  for (const char* k : {"rope.freq_base", "rope.freq_scale", "rope.scaling.factor"}) {
    if (auto v = m.number(a + k); v && !(std::isfinite(*v) && *v > 0)) {
      m.fail("metadata " + a + k + " = " + num(*v) + " (must be a finite number > 0)");
    }
  }

  // Attention shape: the graph divides by these and asserts their relations.
  const auto n_embd = m.number(a + "embedding_length");
  const auto heads = m.ints(a + "attention.head_count");
  const auto heads_kv = m.ints(a + "attention.head_count_kv");
  if (heads) {
    for (int64_t h : *heads) {
      if (h < 0 || h > (1 << 20)) m.fail("metadata " + a + "attention.head_count has " + std::to_string(h));
    }
  }
  if (heads_kv) {
    for (int64_t h : *heads_kv) {
      if (h < 0 || h > (1 << 20)) m.fail("metadata " + a + "attention.head_count_kv has " + std::to_string(h));
    }
  }
  const bool qwen = arch == "qwen2" || arch == "qwen2vl";
  if (qwen && n_embd && heads && heads->size() == 1) {
    const int64_t e = static_cast<int64_t>(*n_embd), h = (*heads)[0];
    if (h <= 0 || e <= 0 || e % h != 0) {
      m.fail("metadata " + a + "attention.head_count = " + std::to_string(h) + " does not divide " + a +
             "embedding_length = " + std::to_string(e));
    }
    if (heads_kv && heads_kv->size() == 1) {
      const int64_t kv = (*heads_kv)[0];
      if (kv <= 0 || h % kv != 0) {
        m.fail("metadata " + a + "attention.head_count_kv = " + std::to_string(kv) + " does not divide " + a +
               "attention.head_count = " + std::to_string(h));
      }
    }
    // the qwen2 / qwen2vl graphs assert that RoPE covers the whole head
    const int64_t head_dim = e / h;
    for (const char* k : {"rope.dimension_count", "attention.key_length", "attention.value_length"}) {
      if (auto v = m.number(a + k); v && *v != static_cast<double>(head_dim)) {
        m.fail("metadata " + a + k + " = " + num(*v) + " (this architecture needs the head width, " +
               std::to_string(head_dim) + ")");
      }
    }
    if (auto s = m.ints(a + "rope.dimension_sections")) {
      int64_t sum = 0;
      for (int64_t x : *s) {
        if (x < 0 || x > head_dim) m.fail("metadata " + a + "rope.dimension_sections has " + std::to_string(x));
        sum += x;
      }
      if (s->size() > 4 || sum > head_dim / 2) {
        m.fail("metadata " + a + "rope.dimension_sections add up to " + std::to_string(sum) +
               " rotary pairs, more than the head's " + std::to_string(head_dim / 2));
      }
    }
  }

  // Tensors: data must be 32-byte aligned in the mapped file (ggml asserts
  // it), and 1-D tensors (norms, biases) are added to or multiplied with
  // float32 activations, which ggml's CPU kernels do only with float32.
  const size_t data_offset = gguf_get_data_offset(g.get());
  for (int64_t i = 0; i < gguf_get_n_tensors(g.get()); ++i) {
    const std::string name = gguf_get_tensor_name(g.get(), i);
    if ((data_offset + gguf_get_tensor_offset(g.get(), i)) % 32 != 0) {
      m.fail("tensor " + name + ": data at file offset " +
             std::to_string(data_offset + gguf_get_tensor_offset(g.get(), i)) + " is not 32-byte aligned");
    }
    const ggml_tensor* t = tensors ? ggml_get_tensor(tensors.get(), name.c_str()) : nullptr;
    if (t != nullptr && ggml_n_dims(t) == 1 && t->type != GGML_TYPE_F32) {
      m.fail("tensor " + name + " is one-dimensional and of type " + ggml_type_name(t->type) +
             " (norm and bias tensors must be F32)");
    }
  }

  // Vocabulary: llama.cpp aborts on a token string that occurs twice.
  const int64_t tok_id = gguf_find_key(g.get(), "tokenizer.ggml.tokens");
  if (tok_id >= 0 && gguf_get_kv_type(g.get(), tok_id) == GGUF_TYPE_ARRAY &&
      gguf_get_arr_type(g.get(), tok_id) == GGUF_TYPE_STRING) {
    const size_t n = gguf_get_arr_n(g.get(), tok_id);
    std::unordered_map<std::string_view, size_t> seen;
    seen.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string_view s = gguf_get_arr_str(g.get(), tok_id, i);
      auto [it, fresh] = seen.emplace(s, i);
      if (!fresh) {
        m.fail("tokenizer.ggml.tokens has the token \"" + std::string(s.substr(0, 40)) + "\" twice (ids " +
               std::to_string(it->second) + " and " + std::to_string(i) + ")");
      }
    }
  }
}

}  // namespace jv4
