// The jina-embeddings-v4 rules (engine/jina.hpp) as module attributes and
// functions, so the Python facade reads them instead of restating them.
#include <pybind11/stl.h>

#include "bindings/common.hpp"
#include "engine/jina.hpp"

namespace jv4py {

void register_jina(py::module_& m) {
  m.attr("TASKS") = py::tuple(py::cast(jv4::jina::tasks()));
  m.attr("ROLES") = py::tuple(py::cast(jv4::jina::roles()));
  m.attr("DEFAULT_TASK") = jv4::jina::kDefaultTask;
  m.attr("MATRYOSHKA_DIMS") = py::tuple(py::cast(jv4::jina::trained_dims()));
  py::dict keys;  // the GGUF keys of `jv4 convert`'s files, for python/jv4/checkpoint.py
  for (const auto& [name, key] : jv4::jina::gguf_keys()) keys[py::str(name)] = key;
  m.attr("GGUF_KEYS") = keys;
  m.def(
      "check_task",
      [](py::handle task, const std::string& name, bool or_none) {
        if (task.is_none() && or_none) return;
        if (!py::isinstance<py::str>(task)) throw std::invalid_argument(jv4::jina::bad_task(py::repr(task), name, or_none));
        jv4::jina::check_task(task.cast<std::string>(), name, or_none);
      },
      py::arg("task"), py::arg("name") = "task", py::arg("or_none") = false,
      "ValueError naming the allowed tasks unless `task` is one (or None, with or_none)");
  m.def(
      "check_role",
      [](py::handle role) {
        // (a non-str is checked by its repr, which is never a role)
        jv4::jina::check_role(py::isinstance<py::str>(role) ? role.cast<std::string>() : std::string(py::repr(role)));
      },
      py::arg("role"), "ValueError naming the allowed roles unless `role` is one");
  m.def("jina_official_repo", &jv4::jina::official_repo, py::arg("task"),
        "The official GGUF repository of a task.");
  m.def("jina_prefix", &jv4::jina::prefix, py::arg("task"), py::arg("role"),
        "The text put before a text of this task and role (ValueError for others).");
}

}  // namespace jv4py
