// What loading a model needs before and around llama.cpp's loader: the file
// checked for the common mistakes first (a precise message, never an
// assertion inside ggml), the header's tensor types and this build's CPU
// features for the load policy (load_policy.hpp), jv4's loader switches, and
// a jina-v4 task adapter loaded and checked.
#pragma once
#include <optional>
#include <string>
#include <utility>

#include "engine/load_policy.hpp"

struct llama_model;
struct llama_adapter_lora;

namespace jv4 {

// FileNotFound / ModelLoadError("<path>: ...") unless `path` is a GGUF file.
void precheck_file(const std::string& path);
// The tensor types of a GGUF, from its header alone (no data read).
FileFacts read_file_facts(const std::string& path);
// The CPU code this build carries and the GPUs it sees.
BuildFacts build_facts();

// Thread-local switches of jv4's loader patches, set for one load only.
struct LoaderSwitches {
  explicit LoaderSwitches(bool f16_as_bf16);
  ~LoaderSwitches();
  LoaderSwitches(const LoaderSwitches&) = delete;
  LoaderSwitches& operator=(const LoaderSwitches&) = delete;
};

// (task, adapter): the LoRA file loaded onto `model`, ModelLoadError unless
// it is a jina-v4 task adapter (of task_given, when given).
std::pair<std::string, llama_adapter_lora*> load_task_adapter(llama_model* model, const std::string& model_path,
                                                              const std::string& file,
                                                              const std::optional<std::string>& task_given);

}  // namespace jv4
