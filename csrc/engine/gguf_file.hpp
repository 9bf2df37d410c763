// GGUF files through ggml's gguf reader: deleters for std::unique_ptr over
// its contexts, and a small file read whole - metadata and tensor data -
// freed when it goes out of scope (projector and imatrix files).
#pragma once
#include <string>

#include "ggml.h"
#include "gguf.h"

namespace jv4 {

struct GgufFree {
  void operator()(gguf_context* g) const { gguf_free(g); }
};
struct GgmlFree {
  void operator()(ggml_context* c) const { ggml_free(c); }
};


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
