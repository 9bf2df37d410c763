// Helpers shared by the binding files: log forwarding and running blocking
// engine work off the GIL while still answering Ctrl-C.
#pragma once
#include <pybind11/pybind11.h>

#include <atomic>
#include <functional>

namespace jv4py {

namespace py = pybind11;

// Sends queued llama.cpp log lines to logging.getLogger("jv4"). Needs the GIL.
void flush_logs();

// Runs `work` on a helper thread with the GIL released. Every 50 ms the
// calling thread checks for signals; on KeyboardInterrupt it sets `cancel`,
// waits for the work to stop and re-raises. Exceptions thrown by `work` are
// re-thrown here, on the caller's thread. Logs are flushed either way.
void run_blocking(const std::function<void()>& work, std::atomic<bool>& cancel);

void register_info(py::module_& m);
void register_model(py::module_& m);

}  // namespace jv4py
