// jv4._core.Model: type conversion only; the work is in engine/model.cpp.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "bindings/common.hpp"
#include "engine/errors.hpp"
#include "engine/model.hpp"

namespace jv4py {
namespace {

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

// Copies the texts out of Python objects (with the GIL), checking each item.
std::vector<std::string> collect_texts(py::handle texts) {
  std::vector<std::string> out;
  if (PyBytes_Check(texts.ptr()) || PyByteArray_Check(texts.ptr())) {
    throw jv4::TypeErrorAt("texts must be a str or a sequence of str, got " + type_name(texts.ptr()) +
                           " (decode bytes first)");
  }
  PyObject* seq = PySequence_Fast(texts.ptr(), "texts must be a str or a sequence of str");
  if (seq == nullptr) throw py::error_already_set();
  py::object guard = py::reinterpret_steal<py::object>(seq);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    if (!PyUnicode_Check(item)) {
      throw jv4::TypeErrorAt("texts[" + std::to_string(i) + "] must be str, got " + type_name(item));
    }
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item, &size);
    if (data == nullptr) {
      PyErr_Clear();
      throw std::invalid_argument("texts[" + std::to_string(i) +
                                  "] cannot be encoded as UTF-8 (it contains a lone surrogate)");
    }
    out.emplace_back(data, static_cast<size_t>(size));
  }
  return out;
}

}  // namespace

void register_model(py::module_& m) {
  py::class_<jv4::Model>(m, "Model")
      .def(py::init([](const std::string& path, int n_threads, int max_length, int batch_tokens) {
             jv4::ModelOptions opts{n_threads, max_length, batch_tokens};
             std::unique_ptr<jv4::Model> model;
             std::atomic<bool> cancel{false};
             run_blocking([&] { model = std::make_unique<jv4::Model>(path, opts); }, cancel);
             return model;
           }),
           py::arg("path"), py::arg("n_threads") = 0, py::arg("max_length") = 0,
           py::arg("batch_tokens") = 0)
      .def_property_readonly("n_embd", &jv4::Model::n_embd)
      .def_property_readonly("task", [](const jv4::Model& self) -> py::object {
        if (self.task().empty()) return py::none();
        return py::str(self.task());
      })
      .def_property_readonly("is_jina_v4", &jv4::Model::is_jina_v4)
      .def_property_readonly("pooling", &jv4::Model::pooling)
      .def_property_readonly("max_length", &jv4::Model::max_length)
      .def_property_readonly("batch_tokens", &jv4::Model::batch_tokens)
      .def_property_readonly("n_threads", &jv4::Model::n_threads)
      .def_property_readonly("path", &jv4::Model::path)
      .def_property_readonly("dims", &jv4::Model::dims)
      .def_property_readonly("info", &jv4::Model::info)
      .def("tokenize",
           [](const jv4::Model& self, py::handle text, const std::string& task,
              const std::string& role, bool add_prefix) {
             if (!PyUnicode_Check(text.ptr())) {
               throw jv4::TypeErrorAt("text must be str, got " + type_name(text.ptr()));
             }
             std::vector<std::string> one = collect_texts(py::make_tuple(text));
             jv4::Request req = self.resolve(task, role, 0, true);
             std::vector<int32_t> ids;
             {
               py::gil_scoped_release release;
               ids = self.tokenize(one[0], add_prefix ? req.prefix : std::string());
             }
             py::array_t<int32_t> arr(static_cast<py::ssize_t>(ids.size()));
             std::copy(ids.begin(), ids.end(), arr.mutable_data());
             return arr;
           },
           py::arg("text"), py::arg("task") = "", py::arg("role") = "query",
           py::arg("add_prefix") = true)
      .def("embed",
           [](jv4::Model& self, py::handle texts, const std::string& task, const std::string& role,
              int dim, bool truncate) {
             jv4::Request req = self.resolve(task, role, dim, truncate);
             const bool single = PyUnicode_Check(texts.ptr());
             std::vector<std::string> items =
                 single ? collect_texts(py::make_tuple(texts)) : collect_texts(texts);
             // One C-contiguous float32 result, written in place by the engine.
             py::array_t<float> out =
                 single ? py::array_t<float>(static_cast<py::ssize_t>(req.dim))
                        : py::array_t<float>({static_cast<py::ssize_t>(items.size()),
                                              static_cast<py::ssize_t>(req.dim)});
             float* data = out.mutable_data();
             std::atomic<bool> cancel{false};
             run_blocking([&] { self.embed(items, req, data, &cancel); }, cancel);
             return out;
           },
           py::arg("texts"), py::arg("task") = "", py::arg("role") = "query", py::arg("dim") = 0,
           py::arg("truncate") = true);
}

}  // namespace jv4py
