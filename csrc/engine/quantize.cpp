// quantize(): a thin, validated wrapper over llama_model_quantize.
#include "engine/quantize.hpp"

#include <filesystem>
#include <map>
#include <stdexcept>
#include <utility>

#include "engine/errors.hpp"
#include "engine/imatrix.hpp"
#include "engine/logging.hpp"
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

}  // namespace

const std::vector<std::string>& quantize_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& e : table()) n.push_back(e.name);
    return n;
  }();
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
    std::string allowed;
    for (const auto& n : quantize_types()) allowed += (allowed.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown quantization type '" + type + "'; allowed: " + allowed);
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
