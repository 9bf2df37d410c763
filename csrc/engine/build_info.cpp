// build_info(): facts compiled in by CMakeLists.txt plus what ggml reports.
#include "engine/build_info.hpp"

#include "engine/logging.hpp"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

extern "C" int jv4_bf16_amx_active(void);  // patch 0005 (repack.cpp)

namespace jv4 {

BuildInfo build_info() {
  init_backend();
  BuildInfo b;
  b.version = JV4_VERSION;
  b.llama_cpp_version = JV4_LLAMA_CPP_VERSION;
  b.llama_cpp_commit = JV4_LLAMA_CPP_COMMIT;
  b.llama_cpp_date = JV4_LLAMA_CPP_DATE;
  b.llama_cpp_source = JV4_LLAMA_CPP_SOURCE;
  {
    const std::string list = JV4_LLAMA_CPP_PATCHES;  // comma-separated file names
    size_t start = 0;
    while (start < list.size()) {
      size_t end = list.find(',', start);
      if (end == std::string::npos) end = list.size();
      if (end > start) b.llama_cpp_patches.push_back(list.substr(start, end - start));
      start = end + 1;
    }
  }
  b.cpu_baseline = JV4_CPU_BASELINE;
  for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
    b.backends.emplace_back(ggml_backend_reg_name(ggml_backend_reg_get(i)));
  }
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t dev = ggml_backend_dev_get(i);
    b.devices.emplace_back(std::string(ggml_backend_dev_name(dev)) + ": " +
                           ggml_backend_dev_description(dev));
  }
  // ggml_cpu_has_* report what ggml-cpu was compiled with (not the host CPU).
  struct Feature { const char* name; int (*has)(); };
  static const Feature features[] = {
      {"SSE3", ggml_cpu_has_sse3},           {"SSSE3", ggml_cpu_has_ssse3},
      {"AVX", ggml_cpu_has_avx},             {"AVX_VNNI", ggml_cpu_has_avx_vnni},
      {"AVX2", ggml_cpu_has_avx2},           {"BMI2", ggml_cpu_has_bmi2},
      {"F16C", ggml_cpu_has_f16c},           {"FMA", ggml_cpu_has_fma},
      {"AVX512", ggml_cpu_has_avx512},       {"AVX512_VBMI", ggml_cpu_has_avx512_vbmi},
      {"AVX512_VNNI", ggml_cpu_has_avx512_vnni}, {"AVX512_BF16", ggml_cpu_has_avx512_bf16},
      {"AMX_INT8", ggml_cpu_has_amx_int8},   {"NEON", ggml_cpu_has_neon},
      {"ARM_FMA", ggml_cpu_has_arm_fma},     {"FP16_VA", ggml_cpu_has_fp16_va},
      {"DOTPROD", ggml_cpu_has_dotprod},     {"MATMUL_INT8", ggml_cpu_has_matmul_int8},
      {"SVE", ggml_cpu_has_sve},             {"SME", ggml_cpu_has_sme},
      {"RISCV_V", ggml_cpu_has_riscv_v},     {"VSX", ggml_cpu_has_vsx},
      {"WASM_SIMD", ggml_cpu_has_wasm_simd}, {"LLAMAFILE", ggml_cpu_has_llamafile},
  };
  for (const auto& f : features) {
    if (f.has()) b.cpu_features.emplace_back(f.name);
  }
  b.bf16_amx = jv4_bf16_amx_active() != 0;
  b.system_info = llama_print_system_info();
  return b;
}

}  // namespace jv4
