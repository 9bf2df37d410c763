// Exception types of the engine. The binding layer maps them to Python:
// BadArgument -> jv4.ArgumentError (a ValueError with .param),
// std::invalid_argument -> ValueError, FileNotFound -> FileNotFoundError,
// ModelLoadError -> jv4.ModelLoadError, Cancelled -> KeyboardInterrupt,
// std::runtime_error -> RuntimeError.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>

namespace jv4 {

// A call's argument that is not allowed, naming it: `param` is the
// argument's name ("task", "role", "dim", "multivector", "images", ...), so
// a caller (the server) can point at the field without reading the message.
struct BadArgument : std::invalid_argument {
  BadArgument(std::string param_, const std::string& what) : std::invalid_argument(what), param(std::move(param_)) {}
  std::string param;
};

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
