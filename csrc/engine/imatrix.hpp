// Importance matrices in llama.cpp's GGUF format (what its imatrix tool
// writes and its quantizer reads): per weight, `<name>.in_sum2` (F32,
// [n_in, 1]: the sum over tokens of each input activation squared) and
// `<name>.counts` (F32, [1, 1]: how many tokens), with general.type =
// "imatrix", imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

struct ggml_tensor;

namespace jv4 {

struct ImatrixEntry {
  std::vector<double> sums;
  int64_t count = 0;
};
using ImatrixStats = std::map<std::string, ImatrixEntry>;

// llama.cpp's eval callback (cb_eval) gathering the statistics into the
// ImatrixStats that `data` points to; Model::imatrix sets it on its context.
bool imatrix_observe(ggml_tensor* t, bool ask, void* data);

// std::runtime_error when the file cannot be written (nothing left behind).
void save_imatrix(const std::string& path, const ImatrixStats& stats, const std::vector<std::string>& datasets,
                  uint32_t chunk_count, uint32_t chunk_size);

// Per weight name, the mean squared activation of each input column (sums /
// count; 1 where a weight saw no token), as the quantizer wants them.
// ModelLoadError naming what is wrong when the file is not such a file.
std::map<std::string, std::vector<float>> load_imatrix(const std::string& path);

}  // namespace jv4
