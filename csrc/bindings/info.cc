// build_info() and quantize().
#include <pybind11/stl.h>

#include <atomic>
#include <optional>
#include <stdexcept>
#include <string>

#include "bindings/common.hpp"
#include "engine/build_info.hpp"
#include "engine/model.hpp"
#include "engine/quantize.hpp"

namespace jv4py {

void register_info(py::module_& m) {
  m.def("build_info", [] {
    jv4::BuildInfo b = jv4::build_info();
    flush_logs();
    py::dict llama;
    llama["version"] = b.llama_cpp_version;
    llama["commit"] = b.llama_cpp_commit;
    llama["date"] = b.llama_cpp_date;
    llama["source"] = b.llama_cpp_source;
    llama["patches"] = b.llama_cpp_patches;
    py::dict d;
    d["version"] = b.version;
    d["llama_cpp"] = llama;
    d["backends"] = b.backends;
    d["devices"] = b.devices;
    d["cpu_baseline"] = b.cpu_baseline;
    d["cpu_features"] = b.cpu_features;
    d["bf16_amx"] = b.bf16_amx;
    d["system_info"] = b.system_info;
    return d;
  });

  m.def("quantize_types", [] { return jv4::quantize_types(); });
  m.def("imatrix_types", [] { return jv4::imatrix_types(); });
  m.def("mmproj_quantize_types", [] { return jv4::mmproj_quantize_types(); });
  m.def("kv_cache_types", [] { return jv4::kv_cache_types(); });

  m.def(
      "quantize",
      [](const std::string& src, const std::string& dst, const std::string& type,
         std::optional<int> n_threads, std::optional<std::string> imatrix) {
        if (n_threads && *n_threads < 1) {
          throw std::invalid_argument("n_threads must be >= 1 (or None), got " + std::to_string(*n_threads));
        }
        std::atomic<bool> cancel{false};  // llama's quantizer cannot be stopped midway
        run_blocking([&] { jv4::quantize(src, dst, type, n_threads.value_or(0), imatrix); }, cancel);
      },
      py::arg("src"), py::arg("dst"), py::arg("type"), py::arg("n_threads") = py::none(),
      py::arg("imatrix") = py::none());
}

}  // namespace jv4py
