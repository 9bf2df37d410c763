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

// The types an mmproj (the vision tower, general.architecture "clip") can be
// written in: those jv4's tower takes.
const std::vector<std::string>& mmproj_quantize_types();

// Writes `dst` from `src` with weights of `type` (e.g. "Q8_0"), weighting
// the rounding by `imatrix` (an importance matrix file, load_imatrix()) when
// given. Throws std::invalid_argument for an unknown type or a type that
// needs an imatrix without one, FileNotFound for a missing file,
// ModelLoadError for a bad imatrix file, std::runtime_error when llama.cpp
// fails. An mmproj `src` is checked as the tower's loader checks it
// (ModelLoadError) and its matrices written in `type` (one of
// mmproj_quantize_types(); no imatrix): a Q8_0 matrix needs rows of a
// multiple of 32 values, so others (and the patch convolution, which runs on
// F32/F16 kernels only) become F16; norms and biases stay F32.
void quantize(const std::string& src, const std::string& dst, const std::string& type,
              int n_threads, const std::optional<std::string>& imatrix = std::nullopt);

}  // namespace jv4
