// The jina-embeddings-v4 rules (engine/jina.hpp) as module attributes and
// functions, so the Python facade reads them instead of restating them.
#include <pybind11/stl.h>

#include "bindings/common.hpp"
#include "engine/jina.hpp"

namespace jv4py {

void register_jina(py::module_& m) {
  m.attr("TASKS") = py::tuple(py::cast(jv4::jina::tasks()));
  m.attr("ROLES") = py::tuple(py::cast(jv4::jina::roles()));
  m.attr("MATRYOSHKA_DIMS") = py::tuple(py::cast(jv4::jina::trained_dims()));
  m.def("jina_official_repo", &jv4::jina::official_repo, py::arg("task"),
        "The official GGUF repository of a task.");
  m.def("jina_prefix", &jv4::jina::prefix, py::arg("task"), py::arg("role"),
        "The text put before a text of this task and role (ValueError for others).");
}

}  // namespace jv4py
