// Quantize a GGUF model with llama.cpp's own quantizer.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace jv4 {

// Type names accepted by quantize(), in a stable order.
const std::vector<std::string>& quantize_types();
// Those that need an importance matrix (llama.cpp refuses them without one).
const std::vector<std::string>& imatrix_types();

// Writes `dst` from `src` with weights of `type` (e.g. "Q8_0"), weighting
// the rounding by `imatrix` (an importance matrix file, load_imatrix()) when
// given. Throws std::invalid_argument for an unknown type or a type that
// needs an imatrix without one, FileNotFound for a missing file,
// ModelLoadError for a bad imatrix file, std::runtime_error when llama.cpp
// fails.
void quantize(const std::string& src, const std::string& dst, const std::string& type,
              int n_threads, const std::optional<std::string>& imatrix = std::nullopt);

}  // namespace jv4
