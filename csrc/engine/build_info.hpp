// What this build of jv4 can do: versions, backends, compiled-in CPU features.
#pragma once
#include <string>
#include <vector>

namespace jv4 {

struct BuildInfo {
  std::string version;
  std::string llama_cpp_version;
  std::string llama_cpp_commit;
  std::string llama_cpp_date;
  std::string llama_cpp_source;
  std::vector<std::string> llama_cpp_patches;  // applied at fetch, in order (patches/llama.cpp/series)
  std::string cpu_baseline;
  std::vector<std::string> backends;
  std::vector<std::string> devices;
  std::vector<std::string> cpu_features;
  bool bf16_amx = false;  // jv4's BF16 kernel runs on AMX tiles in this process (patch 0005)
  std::string system_info;
};

BuildInfo build_info();

}  // namespace jv4
