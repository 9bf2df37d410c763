// Exception types of the engine. The binding layer maps them to Python:
// std::invalid_argument -> ValueError, FileNotFound -> FileNotFoundError,
// ModelLoadError -> jv4.ModelLoadError, Cancelled -> KeyboardInterrupt,
// std::runtime_error -> RuntimeError.
#pragma once
#include <stdexcept>
#include <string>

namespace jv4 {

struct FileNotFound : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The file exists but is not a model jv4 can run (not GGUF, truncated, vocab-only...).
struct ModelLoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A computation was stopped on request (Ctrl-C); the model stays usable.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("cancelled") {}
};

}  // namespace jv4
