// quantize(): a thin, validated wrapper over llama_model_quantize.
#include "engine/quantize.hpp"

#include <filesystem>
#include <stdexcept>
#include <utility>

#include "engine/errors.hpp"
#include "engine/logging.hpp"
#include "llama.h"

namespace jv4 {
namespace {

// Types that need no importance matrix.
const std::vector<std::pair<std::string, llama_ftype>>& table() {
  static const std::vector<std::pair<std::string, llama_ftype>> t = {
      {"F32", LLAMA_FTYPE_ALL_F32},        {"F16", LLAMA_FTYPE_MOSTLY_F16},
      {"BF16", LLAMA_FTYPE_MOSTLY_BF16},   {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
      {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},   {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
      {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S}, {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
      {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},   {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},
      {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S}, {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},
      {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},   {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L},
      {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M}, {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S},
      {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},
  };
  return t;
}

}  // namespace

const std::vector<std::string>& quantize_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& e : table()) n.push_back(e.first);
    return n;
  }();
  return names;
}

void quantize(const std::string& src, const std::string& dst, const std::string& type,
              int n_threads) {
  const llama_ftype* ftype = nullptr;
  for (const auto& e : table()) {
    if (e.first == type) ftype = &e.second;
  }
  if (ftype == nullptr) {
    std::string allowed;
    for (const auto& n : quantize_types()) allowed += (allowed.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown quantization type '" + type + "'; allowed: " + allowed);
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
  take_thread_errors();
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = *ftype;
  params.nthread = n_threads;
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
