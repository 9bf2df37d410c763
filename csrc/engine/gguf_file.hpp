// A small GGUF file read whole - metadata and tensor data - through ggml's
// gguf reader, freed when it goes out of scope (projector and imatrix files).
#pragma once
#include <string>

#include "ggml.h"
#include "gguf.h"

namespace jv4 {

struct GgufFile {
  gguf_context* meta = nullptr;  // null when the file is not readable GGUF
  ggml_context* data = nullptr;  // its tensors, with their data
  explicit GgufFile(const std::string& path) {
    gguf_init_params gp{/*no_alloc=*/false, /*ctx=*/&data};
    meta = gguf_init_from_file(path.c_str(), gp);
  }
  ~GgufFile() {
    if (meta != nullptr) gguf_free(meta);
    if (data != nullptr) ggml_free(data);
  }
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
};

}  // namespace jv4
