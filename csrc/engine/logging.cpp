// Log capture for llama.cpp/ggml: see logging.hpp.
#include "engine/logging.hpp"

#include <deque>
#include <mutex>

#include "ggml.h"
#include "llama.h"
#include "mtmd.h"

namespace jv4 {
namespace {

constexpr size_t kMaxQueued = 4096;  // bounded: an unread queue must not grow forever

std::mutex g_mu;
std::deque<LogRecord> g_queue;
thread_local std::string t_partial;
thread_local LogLevel t_partial_level = LogLevel::Info;
thread_local std::string t_errors;

LogLevel map_level(ggml_log_level level, LogLevel cont) {
  switch (level) {
    case GGML_LOG_LEVEL_ERROR: return LogLevel::Error;
    case GGML_LOG_LEVEL_WARN: return LogLevel::Warning;
    // llama.cpp's INFO is a model-loading narrative: DEBUG for Python users.
    case GGML_LOG_LEVEL_INFO: return LogLevel::Debug;
    case GGML_LOG_LEVEL_CONT: return cont;
    default: return LogLevel::Debug;
  }
}

void on_log(ggml_log_level level, const char* text, void*) {
  if (text == nullptr) return;
  LogLevel lv = map_level(level, t_partial_level);
  if (level != GGML_LOG_LEVEL_CONT) t_partial_level = lv;
  t_partial += text;
  size_t nl;
  while ((nl = t_partial.find('\n')) != std::string::npos) {
    std::string line = t_partial.substr(0, nl);
    t_partial.erase(0, nl + 1);
    if (line.empty()) continue;
    LogLevel line_level = t_partial_level;
    // jv4 asks for per-token outputs (pooling NONE) and pools itself, so
    // llama.cpp's note that this differs from the model's pooling is expected.
    if (line_level == LogLevel::Warning && line.find("pooling_type") != std::string::npos &&
        line.find("was specified") != std::string::npos) {
      line_level = LogLevel::Debug;
    }
    if (line_level == LogLevel::Error) {
      if (!t_errors.empty()) t_errors += "; ";
      t_errors += line;
    }
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_queue.size() >= kMaxQueued) g_queue.pop_front();
    g_queue.push_back({line_level, std::move(line)});
  }
}

}  // namespace

void init_backend() {
  static std::once_flag once;
  std::call_once(once, [] {
    llama_log_set(on_log, nullptr);
    mtmd_log_set(on_log, nullptr);  // clip and mtmd (the vision tower) log on their own
    llama_backend_init();
  });
}

std::vector<LogRecord> drain_logs() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<LogRecord> out(std::make_move_iterator(g_queue.begin()),
                             std::make_move_iterator(g_queue.end()));
  g_queue.clear();
  return out;
}

std::string take_thread_errors() {
  std::string out;
  out.swap(t_errors);
  return out;
}

}  // namespace jv4
