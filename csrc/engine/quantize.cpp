// quantize(): a thin, validated wrapper over llama_model_quantize for text
// models; an mmproj (the vision tower) is written here, tensor by tensor.
#include "engine/quantize.hpp"

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <utility>

#include "engine/errors.hpp"
#include "engine/gguf_file.hpp"
#include "engine/imatrix.hpp"
#include "engine/logging.hpp"
#include "engine/vision.hpp"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

namespace jv4 {
namespace {

struct Type {
  const char* name;
  llama_ftype ftype;
  bool needs_imatrix;  // llama.cpp refuses it without one (its tensor_requires_imatrix)
};

const std::vector<Type>& table() {
  static const std::vector<Type> t = {
      {"F32", LLAMA_FTYPE_ALL_F32, false},         {"F16", LLAMA_FTYPE_MOSTLY_F16, false},
      {"BF16", LLAMA_FTYPE_MOSTLY_BF16, false},    {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0, false},
      {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K, false},    {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M, false},
      {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S, false}, {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0, false},
      {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1, false},    {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M, false},
      {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S, false}, {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0, false},
      {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1, false},    {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L, false},
      {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M, false}, {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S, false},
      {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K, false},
      {"IQ4_XS", LLAMA_FTYPE_MOSTLY_IQ4_XS, false}, {"IQ4_NL", LLAMA_FTYPE_MOSTLY_IQ4_NL, false},
      {"IQ3_M", LLAMA_FTYPE_MOSTLY_IQ3_M, false},  {"IQ3_S", LLAMA_FTYPE_MOSTLY_IQ3_S, false},
      {"IQ3_XS", LLAMA_FTYPE_MOSTLY_IQ3_XS, false},
      // these need an importance matrix
      {"IQ3_XXS", LLAMA_FTYPE_MOSTLY_IQ3_XXS, true}, {"IQ2_M", LLAMA_FTYPE_MOSTLY_IQ2_M, true},
      {"IQ2_S", LLAMA_FTYPE_MOSTLY_IQ2_S, true},     {"IQ2_XS", LLAMA_FTYPE_MOSTLY_IQ2_XS, true},
      {"IQ2_XXS", LLAMA_FTYPE_MOSTLY_IQ2_XXS, true}, {"IQ1_M", LLAMA_FTYPE_MOSTLY_IQ1_M, true},
      {"IQ1_S", LLAMA_FTYPE_MOSTLY_IQ1_S, true},     {"Q2_K_S", LLAMA_FTYPE_MOSTLY_Q2_K_S, true},
  };
  return t;
}

// {name, type, general.file_type (llama_ftype)} of what an mmproj is written in
struct MmprojType {
  const char* name;
  ggml_type type;
  uint32_t ftype;
};
const std::vector<MmprojType>& mmproj_table() {
  static const std::vector<MmprojType> t = {
      {"F32", GGML_TYPE_F32, LLAMA_FTYPE_ALL_F32},
      {"F16", GGML_TYPE_F16, LLAMA_FTYPE_MOSTLY_F16},
      {"BF16", GGML_TYPE_BF16, LLAMA_FTYPE_MOSTLY_BF16},
      {"Q8_0", GGML_TYPE_Q8_0, LLAMA_FTYPE_MOSTLY_Q8_0},
  };
  return t;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

bool is_mmproj(const std::string& path) {
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/nullptr};
  std::unique_ptr<gguf_context, GgufFree> g(gguf_init_from_file(path.c_str(), gp));
  if (!g) {
    take_thread_errors();  // llama.cpp's loader says what is wrong with it
    return false;
  }
  const int64_t a = gguf_find_key(g.get(), "general.architecture");
  return a >= 0 && gguf_get_kv_type(g.get(), a) == GGUF_TYPE_STRING &&
         std::strcmp(gguf_get_val_str(g.get(), a), "clip") == 0;
}

// The type a tensor of an mmproj is written in when the file is asked for `want`.
ggml_type mmproj_tensor_type(const std::string& name, const ggml_tensor* t, ggml_type want) {
  if (ggml_n_dims(t) < 2) return t->type;  // norms and biases: F32 (check_mmproj)
  if (mmproj_is_conv(name)) return want == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
  if (t->ne[0] % ggml_blck_size(want) != 0) return GGML_TYPE_F16;
  return want;
}

// The FFN width an mmproj is written with for `want`. v4's tower FFN is 3420
// wide, so ffn_down's rows (3420 values) do not fill Q8_0's 32-value blocks.
// For a block type the FFN is widened with zeros to the next whole block:
// ffn_gate and ffn_up gain zero rows and zero biases, whose outputs are
// silu(0) * 0 = 0, and ffn_down gains zero columns that only those zeros
// meet. The same function, every FFN matrix in the asked type (and gate/up's
// rows, 3424, a multiple of the VNNI kernel's 16).
int64_t mmproj_ffn_width(int64_t n_ff, ggml_type want) {
  const int64_t blk = ggml_blck_size(want);
  return blk > 1 ? GGML_PAD(n_ff, blk) : n_ff;
}

bool ends_with(const std::string& s, const char* tail) {
  const size_t n = std::strlen(tail);
  return s.size() >= n && s.compare(s.size() - n, n, tail) == 0;
}

// The shape a tensor of an mmproj is written with when its FFN is `ffp` wide.
std::array<int64_t, GGML_MAX_DIMS> mmproj_tensor_shape(const std::string& name, const ggml_tensor* t, int64_t ffp) {
  std::array<int64_t, GGML_MAX_DIMS> ne;
  for (int d = 0; d < GGML_MAX_DIMS; ++d) ne[d] = t->ne[d];
  if (name.rfind("v.blk.", 0) != 0) return ne;
  if (ends_with(name, ".ffn_gate.weight") || ends_with(name, ".ffn_up.weight")) ne[1] = ffp;  // rows
  if (ends_with(name, ".ffn_gate.bias") || ends_with(name, ".ffn_up.bias") || ends_with(name, ".ffn_down.weight")) {
    ne[0] = ffp;
  }
  return ne;
}

void quantize_mmproj(const std::string& src, const std::string& dst, const MmprojType& type) {
  const MmprojFacts facts = check_mmproj(src, 0);  // the tower's own checks: names, shapes, types, sizes
  const int64_t ffp = mmproj_ffn_width(facts.n_ff, type.type);
  ggml_context* meta_ctx = nullptr;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/&meta_ctx};
  std::unique_ptr<gguf_context, GgufFree> in(gguf_init_from_file(src.c_str(), gp));
  std::unique_ptr<ggml_context, GgmlFree> meta(meta_ctx);
  if (!in) throw ModelLoadError(src + ": not a readable GGUF file");
  std::unique_ptr<gguf_context, GgufFree> out(gguf_init_empty());
  gguf_set_kv(out.get(), in.get());
  gguf_set_val_u32(out.get(), "general.file_type", type.ftype);
  gguf_set_val_u32(out.get(), "clip.vision.feed_forward_length", static_cast<uint32_t>(ffp));
  const int64_t n = gguf_get_n_tensors(in.get());
  // the written tensors' shapes (the widened FFN's) in a context of their own
  ggml_init_params sp{static_cast<size_t>(n) * ggml_tensor_overhead(), nullptr, /*no_alloc=*/true};
  std::unique_ptr<ggml_context, GgmlFree> shapes(ggml_init(sp));
  std::vector<ggml_tensor*> tensors, written;
  for (int64_t i = 0; i < n; ++i) {
    ggml_tensor* t = ggml_get_tensor(meta.get(), gguf_get_tensor_name(in.get(), i));
    const auto ne = mmproj_tensor_shape(t->name, t, ffp);
    ggml_tensor* w = ggml_new_tensor(shapes.get(), t->type, ggml_n_dims(t), ne.data());
    ggml_set_name(w, t->name);
    tensors.push_back(t);
    written.push_back(w);
    gguf_add_tensor(out.get(), w);
    gguf_set_tensor_type(out.get(), w->name, mmproj_tensor_type(w->name, w, type.type));
  }

  namespace fs = std::filesystem;
  const fs::path part = fs::path(dst).concat(".partial");
  try {
    std::ifstream fin(src, std::ios::binary);
    std::ofstream fout(part, std::ios::binary | std::ios::trunc);
    if (!fin) throw std::runtime_error("cannot read " + src);
    if (!fout) throw std::runtime_error("cannot write " + part.string());
    std::vector<uint8_t> header(gguf_get_meta_size(out.get()));
    gguf_get_meta_data(out.get(), header.data());
    fout.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
    const size_t align = gguf_get_alignment(out.get());
    const size_t data_in = gguf_get_data_offset(in.get());
    std::vector<uint8_t> raw, packed;
    std::vector<float> values;
    for (int64_t i = 0; i < n; ++i) {
      const ggml_tensor* t = tensors[i];
      raw.resize(ggml_nbytes(t));
      fin.seekg(static_cast<std::streamoff>(data_in + gguf_get_tensor_offset(in.get(), i)));
      fin.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
      if (!fin) throw ModelLoadError(src + ": truncated: cannot read tensor " + std::string(t->name));
      const ggml_tensor* w = written[i];
      const ggml_type to = gguf_get_tensor_type(out.get(), i);
      const std::vector<uint8_t>* bytes = &raw;
      if (to != t->type || !ggml_are_same_shape(t, w)) {
        // as floats, each source row at the start of a written row (zeros past it)
        const int64_t rows = ggml_nrows(t), per_row = t->ne[0];
        const int64_t out_rows = ggml_nrows(w), out_per_row = w->ne[0];
        const size_t row_bytes = ggml_row_size(t->type, per_row);
        values.assign(static_cast<size_t>(out_rows * out_per_row), 0.0f);
        for (int64_t r = 0; r < rows; ++r) {
          const uint8_t* from = raw.data() + r * row_bytes;
          float* into = values.data() + r * out_per_row;
          if (t->type == GGML_TYPE_F32) {
            std::memcpy(into, from, row_bytes);
          } else {
            ggml_get_type_traits(t->type)->to_float(from, into, per_row);
          }
        }
        packed.resize(ggml_row_size(to, out_per_row) * static_cast<size_t>(out_rows));
        if (to == GGML_TYPE_F32) {
          std::memcpy(packed.data(), values.data(), packed.size());
        } else {
          ggml_quantize_chunk(to, values.data(), packed.data(), 0, out_rows, out_per_row, nullptr);
        }
        bytes = &packed;
      }
      if (bytes->size() != gguf_get_tensor_size(out.get(), i)) {
        throw std::runtime_error("internal: " + std::string(t->name) + " came out " + std::to_string(bytes->size()) +
                                 " bytes, expected " + std::to_string(gguf_get_tensor_size(out.get(), i)));
      }
      fout.write(reinterpret_cast<const char*>(bytes->data()), static_cast<std::streamsize>(bytes->size()));
      const size_t pad = GGML_PAD(bytes->size(), align) - bytes->size();
      static const char zeros[64] = {};
      for (size_t left = pad; left > 0; left -= std::min<size_t>(left, sizeof zeros)) {
        fout.write(zeros, static_cast<std::streamsize>(std::min<size_t>(left, sizeof zeros)));
      }
    }
    fout.close();
    if (!fout) throw std::runtime_error("writing " + part.string() + " failed (disk full?)");
    fs::rename(part, dst);
  } catch (...) {
    std::error_code ignore;
    fs::remove(part, ignore);  // no half-written output left behind
    throw;
  }
}

}  // namespace

namespace {
template <typename Row>
std::vector<std::string> names_of(const std::vector<Row>& rows) {
  std::vector<std::string> n;
  for (const auto& e : rows) n.push_back(e.name);
  return n;
}
}  // namespace

const std::vector<std::string>& mmproj_quantize_types() {
  static const std::vector<std::string> names = names_of(mmproj_table());
  return names;
}

const std::vector<std::string>& quantize_types() {
  static const std::vector<std::string> names = names_of(table());
  return names;
}

const std::vector<std::string>& imatrix_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& e : table()) {
      if (e.needs_imatrix) n.push_back(e.name);
    }
    return n;
  }();
  return names;
}

void quantize(const std::string& src, const std::string& dst, const std::string& type, int n_threads,
              const std::optional<std::string>& imatrix) {
  const Type* found = nullptr;
  for (const auto& e : table()) {
    if (e.name == type) found = &e;
  }
  if (found == nullptr) {
    throw std::invalid_argument("unknown quantization type '" + type + "'; allowed: " + joined(quantize_types()));
  }
  if (found->needs_imatrix && !imatrix) {
    throw std::invalid_argument(type + " needs an importance matrix: compute one with jv4.imatrix (`jv4 imatrix`) "
                                "and pass imatrix= (--imatrix FILE)");
  }
  std::error_code ec;
  if (!std::filesystem::exists(src, ec)) throw FileNotFound("no such file: " + src);
  if (std::filesystem::is_directory(src, ec)) {
    throw ModelLoadError(src + ": is a directory, not a GGUF file");
  }
  if (std::filesystem::exists(dst, ec) && std::filesystem::equivalent(src, dst, ec)) {
    throw std::invalid_argument("quantize: src and dst are the same file (" + src + ")");
  }
  init_backend();
  if (is_mmproj(src)) {
    const MmprojType* to = nullptr;
    for (const auto& e : mmproj_table()) {
      if (e.name == type) to = &e;
    }
    if (to == nullptr) {
      throw std::invalid_argument(src + " is an mmproj (the vision tower): it can be written as " +
                                  joined(mmproj_quantize_types()) + ", not " + type);
    }
    if (imatrix) throw std::invalid_argument(src + " is an mmproj (the vision tower): it takes no importance matrix");
    quantize_mmproj(src, dst, *to);
    return;
  }
  // the importance matrix, as the quantizer wants it: {name, values, count}, null-terminated
  std::map<std::string, std::vector<float>> values;
  std::vector<llama_model_imatrix_data> entries;
  if (imatrix) {
    values = load_imatrix(*imatrix);
    for (const auto& [name, v] : values) entries.push_back({name.c_str(), v.data(), v.size()});
    entries.push_back({nullptr, nullptr, 0});
  }
  take_thread_errors();
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = found->ftype;
  params.nthread = n_threads;
  params.imatrix = imatrix ? entries.data() : nullptr;
  uint32_t rc = llama_model_quantize(src.c_str(), dst.c_str(), &params);
  if (rc != 0) {
    std::string why = take_thread_errors();
    std::error_code ignore;
    std::filesystem::remove(dst, ignore);  // no half-written output left behind
    throw std::runtime_error("quantizing " + src + " to " + type + " failed" +
                             (why.empty() ? std::string() : ": " + why));
  }
}

}  // namespace jv4
