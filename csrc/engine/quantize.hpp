// Quantize a GGUF model with llama.cpp's own quantizer.
#pragma once
#include <string>
#include <vector>

namespace jv4 {

// Type names accepted by quantize(), in a stable order.
const std::vector<std::string>& quantize_types();

// Writes `dst` from `src` with weights of `type` (e.g. "Q8_0").
// Throws std::invalid_argument for an unknown type, FileNotFound for a
// missing src, std::runtime_error when llama.cpp fails.
void quantize(const std::string& src, const std::string& dst, const std::string& type,
              int n_threads);

}  // namespace jv4
