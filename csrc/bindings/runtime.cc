// The bindings' runtime (declared in common.hpp): llama.cpp's log lines to
// Python's logging, the per-model worker thread, and run_blocking, which runs
// engine work off the GIL while answering Ctrl-C and driving progress.
#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "bindings/common.hpp"
#include "engine/logging.hpp"

namespace jv4py {

void flush_logs() {
  auto records = jv4::drain_logs();
  if (records.empty()) return;
  // Keep any pending Python error intact while logging.
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  try {
    py::object logger = py::module_::import("logging").attr("getLogger")("jv4");
    for (auto& r : records) {
      logger.attr("log")(static_cast<int>(r.level), "%s", r.message);
    }
  } catch (py::error_already_set&) {
    // logging itself failed (interpreter shutting down): drop the lines
  }
  PyErr_Restore(type, value, tb);
}

static bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

Worker::Worker() = default;

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop_ = true;
  }
  queued_.notify_all();
  for (std::thread& t : threads_) t.join();
}

std::shared_ptr<Worker::Job> Worker::submit(std::function<void()> work) {
  auto job = std::make_shared<Job>();
  job->work = std::move(work);
  {
    std::lock_guard<std::mutex> lock(mu);
    queue_.push_back(job);
    if (idle_ < queue_.size() && threads_.size() < kMaxThreads) threads_.emplace_back([this] { loop(); });
  }
  queued_.notify_one();
  return job;
}

void Worker::loop() {
  std::unique_lock<std::mutex> lock(mu);
  for (;;) {
    ++idle_;
    queued_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stop requested and nothing left
    auto job = queue_.front();
    queue_.pop_front();
    lock.unlock();
    try {
      job->work();
    } catch (...) {
      job->error = std::current_exception();
    }
    lock.lock();
    job->done = true;
    cv.notify_all();
  }
}

void run_blocking(const std::function<void()>& work, std::atomic<bool>& cancel, Worker* worker,
                  const std::function<void()>& tick) {
  std::optional<py::error_already_set> interrupt;
  std::exception_ptr error;
  std::unique_ptr<Worker> own;
  {
    py::gil_scoped_release release;
    // The interpreter finalizing (the main thread left, e.g. by an uncaught
    // KeyboardInterrupt, while this thread waits): taking the GIL now would
    // end this thread by pthread_exit inside a destructor, which aborts the
    // process. So never take it again: wait here until the process exits.
    auto park_if_finalizing = [&release] {
      if (!interpreter_finalizing()) return;
      release.disarm();
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    };
    if (worker == nullptr) {
      own = std::make_unique<Worker>();
      worker = own.get();
    }
    auto job = worker->submit(work);
    std::unique_lock<std::mutex> lock(worker->mu);
    while (!job->done) {
      worker->cv.wait_for(lock, std::chrono::milliseconds(50));
      if (job->done || interrupt) continue;
      lock.unlock();
      park_if_finalizing();
      {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {
          interrupt.emplace();  // takes the pending exception (KeyboardInterrupt)
          cancel.store(true);
        } else if (tick) {
          try {
            tick();
          } catch (py::error_already_set& e) {
            interrupt.emplace(std::move(e));
            cancel.store(true);
          }
        }
      }
      lock.lock();
    }
    lock.unlock();
    error = job->error;
    own.reset();
    park_if_finalizing();
  }
  flush_logs();
  if (interrupt) throw *interrupt;
  if (error) std::rethrow_exception(error);
  if (tick) tick();
}

py::dict stats_dict(const jv4::ComputeStats& st) {
  py::dict d;
  d["calls"] = st.calls;
  d["groups"] = st.groups;
  d["texts"] = st.texts;
  d["tokens"] = st.tokens;
  d["images"] = st.images;
  d["queue_seconds"] = st.queue_seconds;
  d["compute_seconds"] = st.compute_seconds;
  py::list bounds;
  for (int b : jv4::ComputeStats::kGroupSizeBounds) bounds.append(b);
  bounds.append(py::none());
  d["group_size_bounds"] = bounds;
  d["group_sizes"] = st.group_sizes;
  return d;
}

std::function<void()> progress_tick(const std::optional<py::function>& callback, jv4::Progress& progress) {
  if (!callback) return nullptr;
  return [&callback, &progress, last_texts = ~uint64_t{0}, last_tokens = ~uint64_t{0}]() mutable {
    const uint64_t texts = progress.texts.load(std::memory_order_relaxed);
    const uint64_t tokens = progress.tokens.load(std::memory_order_relaxed);
    if (texts == last_texts && tokens == last_tokens) return;
    last_texts = texts;
    last_tokens = tokens;
    (*callback)(texts, tokens, progress.tokens_total.load(std::memory_order_relaxed));
  };
}

}  // namespace jv4py
