// Helpers shared by the binding files: log forwarding and running blocking
// engine work off the GIL while still answering Ctrl-C.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "engine/model.hpp"

namespace jv4py {

namespace py = pybind11;

// Sends queued llama.cpp log lines to logging.getLogger("jv4"). Needs the GIL.
void flush_logs();

// The threads that run a Model's calls off the GIL: a pool that grows by one
// thread whenever a call arrives and none is idle (up to kMaxThreads; beyond,
// calls wait their turn), so calls from many Python threads reach the engine
// together - where they tokenize in parallel and queue for the model's one
// compute thread (engine/model.hpp), which shares decodes between them.
class Worker {
 public:
  struct Job {
    std::function<void()> work;
    std::exception_ptr error;
    bool done = false;
  };
  Worker();
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  std::shared_ptr<Job> submit(std::function<void()> work);
  std::mutex mu;
  std::condition_variable cv;  // signalled when a job finishes

 private:
  void loop();
  static constexpr size_t kMaxThreads = 512;
  std::deque<std::shared_ptr<Job>> queue_;
  std::condition_variable queued_;
  bool stop_ = false;
  size_t idle_ = 0;
  std::vector<std::thread> threads_;
};

// Runs `work` on `worker` (or a one-off thread when null) with the GIL
// released. Every 50 ms the calling thread checks for signals; on
// KeyboardInterrupt it sets `cancel`, waits for the work to stop and
// re-raises. Exceptions thrown by `work` are re-thrown here, on the caller's
// thread. Logs are flushed either way.
// `tick` (optional) is called with the GIL on each of those wake-ups and once
// after the work succeeded: the place to report progress from Python. If it
// raises, the work is cancelled and its exception re-raised.
void run_blocking(const std::function<void()>& work, std::atomic<bool>& cancel,
                  Worker* worker = nullptr, const std::function<void()>& tick = nullptr);

// Calls `callback(texts_done, tokens_done, tokens_total)` when the engine's
// counters moved since the last call; a tick for run_blocking (null without
// a callback).
std::function<void()> progress_tick(const std::optional<py::function>& callback, jv4::Progress& progress);

// A scheduler's counters (engine/scheduler.hpp) as the dict Model.stats() returns.
py::dict stats_dict(const jv4::ComputeStats& st);

void register_info(py::module_& m);
void register_options(py::module_& m);
void register_model(py::module_& m);
void register_jina(py::module_& m);
void register_stages(py::module_& m);
void register_images(py::module_& m);

}  // namespace jv4py
