// Loading helpers (see loader.hpp).
#include "engine/loader.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/errors.hpp"
#include "engine/jina.hpp"
#include "engine/logging.hpp"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "llama.h"

namespace jv4 {
namespace {

std::string adapter_meta(const llama_adapter_lora* a, const char* key) {
  char buf[256];
  const int n = llama_adapter_meta_val_str(a, key, buf, sizeof(buf));
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(std::min<int>(n, sizeof(buf) - 1)));
}

// GPU (discrete or integrated) devices this build sees.
int count_gpus() {
  int n = 0;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    const auto type = ggml_backend_dev_type(ggml_backend_dev_get(i));
    if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) ++n;
  }
  return n;
}

}  // namespace

void precheck_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw FileNotFound("no such file: " + path);
  if (fs::is_directory(path, ec)) throw ModelLoadError(path + ": is a directory, not a GGUF file");
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  if (!f || !f.read(magic, 4) || std::memcmp(magic, "GGUF", 4) != 0) {
    throw ModelLoadError(path + ": not a GGUF file (bad magic)");
  }
}

FileFacts read_file_facts(const std::string& path) {
  FileFacts f;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) return f;  // the loader reports what is wrong
  for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) f.tensor_types.push_back(gguf_get_tensor_type(g, i));
  gguf_free(g);
  return f;
}

BuildFacts build_facts() {
  BuildFacts b;
#if defined(__x86_64__) || defined(_M_X64)
  b.x86 = true;
#endif
  b.avx512_vnni = ggml_cpu_has_avx512_vnni() != 0;  // the build's CPU code, where jv4's kernels live
  b.avx512_bf16 = ggml_cpu_has_avx512_bf16() != 0;
  b.avx2 = ggml_cpu_has_avx2() != 0 && ggml_cpu_has_fma() != 0 && ggml_cpu_has_f16c() != 0;
  b.n_gpus = count_gpus();
  return b;
}

LoaderSwitches::LoaderSwitches(bool f16_as_bf16) {
  llama_jv4_set_f16_as_bf16(f16_as_bf16);  // patch 0008
  llama_jv4_set_no_lm_head(true);          // patch 0009: jv4 never computes logits
}

LoaderSwitches::~LoaderSwitches() {
  llama_jv4_set_f16_as_bf16(false);
  llama_jv4_set_no_lm_head(false);
}

std::pair<std::string, llama_adapter_lora*> load_task_adapter(llama_model* model, const std::string& model_path,
                                                              const std::string& file,
                                                              const std::optional<std::string>& task_given) {
  precheck_file(file);
  take_thread_errors();
  llama_adapter_lora* a = llama_adapter_lora_init(model, file.c_str());
  if (a == nullptr) {
    std::string why = take_thread_errors();
    throw ModelLoadError(file + ": cannot load it as a LoRA adapter of " + model_path + (why.empty() ? "" : ": " + why));
  }
  const std::string task = adapter_meta(a, jina::kGgufTask);
  if (task.empty() || std::find(jina::tasks().begin(), jina::tasks().end(), task) == jina::tasks().end()) {
    throw ModelLoadError(file + ": not a jina-embeddings-v4 task adapter (its " + jina::kGgufTask + " is '" + task +
                         "'; allowed: " + jina::quoted_tasks() + ")");
  }
  if (task_given && *task_given != task) {
    throw ModelLoadError(file + ": is the adapter of task '" + task + "', given for task '" + *task_given + "'");
  }
  return {task, a};
}

}  // namespace jv4
