// jv4._core: the compiled module. Gathers the binding files and maps engine
// exceptions to Python ones.
#include <pybind11/pybind11.h>

#include <cstring>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "bindings/common.hpp"
#include "engine/errors.hpp"
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

Worker::Worker() : thread_([this] { loop(); }) {}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop_ = true;
  }
  queued_.notify_all();
  thread_.join();
}

std::shared_ptr<Worker::Job> Worker::submit(std::function<void()> work) {
  auto job = std::make_shared<Job>();
  job->work = std::move(work);
  {
    std::lock_guard<std::mutex> lock(mu);
    queue_.push_back(job);
  }
  queued_.notify_one();
  return job;
}

void Worker::loop() {
  std::unique_lock<std::mutex> lock(mu);
  for (;;) {
    queued_.wait(lock, [this] { return stop_ || !queue_.empty(); });
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
  }
  flush_logs();
  if (interrupt) throw *interrupt;
  if (error) std::rethrow_exception(error);
  if (tick) tick();
}

}  // namespace jv4py

// The module's name: `_core` for a source build, `_core_<level>` for each of
// the per-level builds of a wheel (CMake's JV4_MODULE_NAME).
#ifndef JV4_MODULE_NAME
#define JV4_MODULE_NAME _core
#endif

PYBIND11_MODULE(JV4_MODULE_NAME, m) {
  namespace py = pybind11;
  m.doc() = "jv4 native core (private; import jv4 instead)";
  m.attr("__version__") = JV4_VERSION;

  static py::exception<jv4::ModelLoadError> model_load_error(m, "ModelLoadError", PyExc_RuntimeError);
  // Messages can quote a model file's bytes (a key, a token), which need not
  // be UTF-8: decoded with replacement, so the error stays the error it is
  // (not a UnicodeDecodeError about its message).
  static auto set_error = [](PyObject* type, const char* what) {
    PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
    if (msg == nullptr) {
      PyErr_Clear();
      PyErr_SetString(type, "(undecodable message)");
      return;
    }
    PyErr_SetObject(type, msg);
    Py_DECREF(msg);
  };
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const jv4::ModelLoadError& e) {
      set_error(model_load_error.ptr(), e.what());
    } catch (const jv4::FileNotFound& e) {
      set_error(PyExc_FileNotFoundError, e.what());
    } catch (const jv4::TypeErrorAt& e) {
      set_error(PyExc_TypeError, e.what());
    } catch (const jv4::Cancelled& e) {
      set_error(PyExc_KeyboardInterrupt, e.what());
    } catch (const py::builtin_exception&) {
      throw;  // pybind11's own (value_error, ...): its translator
    } catch (const std::invalid_argument& e) {
      set_error(PyExc_ValueError, e.what());
    } catch (const std::runtime_error& e) {
      set_error(PyExc_RuntimeError, e.what());
    }
  });

  jv4py::register_info(m);
  jv4py::register_options(m);
  jv4py::register_model(m);
  jv4py::register_jina(m);
  jv4py::register_stages(m);
}
