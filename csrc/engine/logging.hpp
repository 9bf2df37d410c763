// llama.cpp/ggml log capture. Lines are queued here (thread-safe) instead of
// going to stderr; the binding layer drains them into Python's `logging`
// under the "jv4" logger whenever it holds the GIL. Lines logged at ERROR
// level are also kept per thread so that failures can quote them.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace jv4 {

enum class LogLevel { Debug = 10, Info = 20, Warning = 30, Error = 40 };

struct LogRecord {
  LogLevel level;
  std::string message;
};

// Installs the capture (idempotent) and initialises the llama backend once.
void init_backend();

// Removes and returns every queued record.
std::vector<LogRecord> drain_logs();

// Error lines logged on the calling thread since the last call; clears them.
std::string take_thread_errors();

}  // namespace jv4
