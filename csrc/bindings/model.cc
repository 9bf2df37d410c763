// jv4._core.Model: type conversion only; the work is in engine/model.cpp.
#include <pybind11/numpy.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/common.hpp"
#include "engine/errors.hpp"
#include "engine/model.hpp"

namespace jv4py {
namespace {

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

// The texts of a call as UTF-8 views into the Python str objects, without
// copying them (a list of 10 MB texts must not be duplicated). `owner`, a
// tuple of the items, keeps every str - and the UTF-8 buffer it caches -
// alive and unchanged while the engine reads the views with the GIL
// released, even if another thread edits the caller's list meanwhile.
struct Texts {
  py::object owner;
  std::vector<std::string_view> views;
};

// Checks each item (with the GIL) and takes its UTF-8 view.
Texts collect_texts(py::handle texts) {
  Texts out;
  if (PyBytes_Check(texts.ptr()) || PyByteArray_Check(texts.ptr())) {
    throw py::type_error("texts must be a str or a sequence of str, got " + type_name(texts.ptr()) +
                           " (decode bytes first)");
  }
  PyObject* tup = PySequence_Tuple(texts.ptr());  // any iterable, as before
  if (tup == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
    PyErr_Clear();
    throw py::type_error("texts must be a str or a sequence of str, got " + type_name(texts.ptr()));
  }
  out.owner = py::reinterpret_steal<py::object>(tup);
  const Py_ssize_t n = PyTuple_GET_SIZE(tup);
  out.views.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyTuple_GET_ITEM(tup, i);
    if (!PyUnicode_Check(item)) {
      throw py::type_error("texts[" + std::to_string(i) + "] must be str, got " + type_name(item));
    }
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item, &size);
    if (data == nullptr) {
      PyErr_Clear();
      throw std::invalid_argument("texts[" + std::to_string(i) +
                                  "] cannot be encoded as UTF-8 (it contains a lone surrogate)");
    }
    out.views.emplace_back(data, static_cast<size_t>(size));
  }
  return out;
}

// The images of a call, each an ImageInput viewing memory that `owner`
// keeps alive: ("encoded", name, bytes) or ("rgb", name, C-contiguous
// uint8 HxWx3 array), as python/jv4/images.py prepares them.
struct Images {
  py::list owner;
  std::vector<jv4::ImageInput> items;
};

Images collect_images(py::handle images) {
  Images out;
  for (py::handle item : images) {
    auto t = py::reinterpret_borrow<py::tuple>(item);
    if (t.size() != 3) throw py::type_error("internal: an image must be (kind, name, data)");
    const std::string kind = t[0].cast<std::string>();
    jv4::ImageInput in;
    in.name = t[1].cast<std::string>();
    if (kind == "encoded") {
      if (!PyBytes_Check(t[2].ptr())) throw py::type_error("internal: encoded image data must be bytes");
      char* data = nullptr;
      Py_ssize_t size = 0;
      PyBytes_AsStringAndSize(t[2].ptr(), &data, &size);
      in.kind = jv4::ImageInput::Kind::Encoded;
      in.data = reinterpret_cast<const uint8_t*>(data);
      in.size = static_cast<size_t>(size);
    } else if (kind == "rgb") {
      auto arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(t[2]);
      if (!arr || arr.ndim() != 3 || arr.shape(2) != 3) {
        throw std::invalid_argument(in.name + ": pixels must be a height x width x 3 uint8 array");
      }
      in.kind = jv4::ImageInput::Kind::Rgb;
      in.height = static_cast<uint32_t>(arr.shape(0));
      in.width = static_cast<uint32_t>(arr.shape(1));
      in.data = arr.data();
      in.size = static_cast<size_t>(arr.size());
      out.owner.append(arr);
    } else {
      throw py::type_error("internal: unknown image kind " + kind);
    }
    out.owner.append(t);
    out.items.push_back(std::move(in));
  }
  return out;
}

// hands a MultiOutput's buffers to numpy without copying them
py::tuple multi_arrays(std::unique_ptr<jv4::MultiOutput> multi, py::ssize_t n) {
  const auto rows = static_cast<py::ssize_t>(multi->offsets.back());
  const auto width = static_cast<py::ssize_t>(multi->width);
  float* tok = multi->data.data();
  int64_t* off = multi->offsets.data();
  py::capsule owner(multi.release(), [](void* p) { delete static_cast<jv4::MultiOutput*>(p); });
  py::array_t<float> tokens({rows, width}, tok, owner);
  py::array_t<int64_t> offsets({n + 1}, off, owner);
  return py::make_tuple(tokens, offsets);
}

// The engine model plus the thread that runs its work.
struct PyModel {
  std::unique_ptr<jv4::Model> model;
  std::unique_ptr<Worker> worker = std::make_unique<Worker>();
  ~PyModel() {
    // join the worker before the model goes: no job may outlive it
    py::gil_scoped_release release;
    worker.reset();
    model.reset();
  }
};

}  // namespace

// One engine call on the model's worker: `work(cancel, progress)` runs off the
// GIL, Ctrl-C sets `cancel`, and `progress` (null without a callback) drives
// the callback from the calling thread.
template <typename Work>
void call_engine(PyModel& s, const std::optional<py::function>& progress, Work&& work) {
  std::atomic<bool> cancel{false};
  jv4::Progress counters;
  jv4::Progress* counted = progress ? &counters : nullptr;
  run_blocking([&] { work(&cancel, counted); }, cancel, s.worker.get(), progress_tick(progress, counters));
}

void register_model(py::module_& m) {
  using M = PyModel;
  py::class_<M>(m, "Model")
      .def(py::init([](const std::string& path, const jv4::ModelOptions& options) {
             auto self = std::make_unique<M>();
             std::atomic<bool> cancel{false};
             run_blocking([&] { self->model = std::make_unique<jv4::Model>(path, options); }, cancel,
                          self->worker.get());
             return self;
           }),
           py::arg("path"), py::arg_v("options", jv4::ModelOptions(), "ModelOptions()"))
      .def_property_readonly("n_embd", [](const M& s) { return s.model->n_embd(); })
      .def_property_readonly("task", [](const M& s) { return s.model->info().task; })
      .def_property_readonly("is_jina_v4", [](const M& s) { return s.model->is_jina_v4(); })
      .def_property_readonly("is_base", [](const M& s) { return s.model->is_base(); })
      .def_property_readonly("adapter_tasks", [](const M& s) { return s.model->adapter_tasks(); })
      .def_property_readonly("projector_tasks", [](const M& s) { return s.model->projector_tasks(); })
      .def_property_readonly("pooling", [](const M& s) { return s.model->info().pooling; })
      .def_property_readonly("normalization", [](const M& s) -> std::optional<std::string> {
        const std::string& n = s.model->info().normalization;
        if (n.empty()) return std::nullopt;
        return n;
      })
      .def_property_readonly("max_length", [](const M& s) { return s.model->max_length(); })
      .def_property_readonly("batch_tokens", [](const M& s) { return s.model->batch_tokens(); })
      .def_property_readonly("n_threads", [](const M& s) { return s.model->n_threads(); })
      .def_property_readonly("path", [](const M& s) { return s.model->path(); })
      .def_property_readonly("dims", [](const M& s) { return s.model->dims(); })
      .def_property_readonly("info", [](const M& s) -> jv4::ModelInfo { return s.model->info(); })  // a copy
      .def(
          "stats",
          [](const M& s) { return stats_dict(s.model->stats()); },
          "what the compute thread has done since the model loaded: calls, groups (runs, a call alone or "
          "calls sharing decodes), texts, tokens, images, queue_seconds and compute_seconds (sums), "
          "group_sizes (groups by calls per group, upper bounds in group_size_bounds; None: the rest)")
      .def("tokenize",
           [](const M& s, py::handle text, std::optional<std::string> task, const std::string& role,
              bool add_prefix, std::optional<int> max_length) {
             if (!PyUnicode_Check(text.ptr())) {
               throw py::type_error("text must be str, got " + type_name(text.ptr()));
             }
             if (max_length && *max_length < 1) {
               throw std::invalid_argument("max_length must be >= 1 or None, got " +
                                           std::to_string(*max_length));
             }
             Texts one = collect_texts(py::make_tuple(text));
             jv4::Request req = s.model->resolve(task, role, std::nullopt, true);
             const std::string prefix = add_prefix ? req.prefix : std::string();
             std::vector<int32_t> ids;
             {
               py::gil_scoped_release release;
               const jv4::Tokenizer& tok = s.model->tokenizer();
               ids = max_length ? tok.tokenize_head(one.views[0], prefix, static_cast<size_t>(*max_length))
                                : tok.tokenize(one.views[0], prefix);
             }
             py::array_t<int32_t> arr(static_cast<py::ssize_t>(ids.size()));
             std::copy(ids.begin(), ids.end(), arr.mutable_data());
             return arr;
           },
           py::arg("text"), py::arg("task") = py::none(), py::arg("role") = "query",
           py::arg("add_prefix") = true, py::arg("max_length") = py::none())
      .def(
          "check_request",
          [](const M& s, std::optional<std::string> task, const std::string& role, std::optional<int> dim,
             bool multivector, bool images) {
            const jv4::Request req = images ? s.model->resolve_images(task, dim, multivector)
                                            : s.model->resolve(task, role, dim, true, multivector);
            py::dict d;
            d["task"] = req.task.empty() ? py::object(py::none()) : py::object(py::str(req.task));
            d["prefix"] = req.prefix;
            d["dim"] = req.dim;
            return d;
          },
          py::arg("task") = py::none(), py::arg("role") = "query", py::arg("dim") = py::none(),
          py::arg("multivector") = false, py::arg("images") = false,
          "the request policy's answer for a call with these arguments ({task, prefix, dim}), or "
          "jv4.ArgumentError (a ValueError) naming the argument in .param - as the call itself would")
      .def("embed",
           [](M& s, py::handle texts, std::optional<std::string> task, const std::string& role,
              std::optional<int> dim, bool truncate, std::optional<py::function> progress) {
             jv4::Request req = s.model->resolve(task, role, dim, truncate);
             const bool single = PyUnicode_Check(texts.ptr());
             Texts items = single ? collect_texts(py::make_tuple(texts)) : collect_texts(texts);
             // One C-contiguous float32 result, written in place by the engine.
             py::array_t<float> out =
                 single ? py::array_t<float>(static_cast<py::ssize_t>(req.dim))
                        : py::array_t<float>({static_cast<py::ssize_t>(items.views.size()),
                                              static_cast<py::ssize_t>(req.dim)});
             float* data = out.mutable_data();
             call_engine(s, progress, [&](const std::atomic<bool>* cancel, jv4::Progress* counted) {
               s.model->embed(items.views, req, data, cancel, counted);
             });
             return out;
           },
           py::arg("texts"), py::arg("task") = py::none(), py::arg("role") = "query",
           py::arg("dim") = py::none(), py::arg("truncate") = true,
           py::arg("progress") = py::none())
      .def("imatrix",
           [](M& s, py::handle texts, const std::string& path, std::optional<std::string> task,
              const std::string& role, std::vector<std::string> datasets, std::optional<py::function> progress) {
             jv4::Request req = s.model->resolve(task, role, std::nullopt, true);
             Texts items = collect_texts(texts);
             if (items.views.empty()) throw std::invalid_argument("imatrix needs at least one calibration text");
             jv4::ImatrixStats stats;
             call_engine(s, progress, [&](const std::atomic<bool>* cancel, jv4::Progress* counted) {
               s.model->imatrix(items.views, req, stats, cancel, counted);
               const uint32_t n = static_cast<uint32_t>(items.views.size());
               jv4::save_imatrix(path, stats, datasets, n, static_cast<uint32_t>(s.model->batch_tokens()));
             });
             py::dict out;  // weight -> tokens seen
             for (const auto& [name, e] : stats) out[py::str(name)] = e.count;
             return out;
           },
           py::arg("texts"), py::arg("path"), py::arg("task") = py::none(), py::arg("role") = "passage",
           py::arg("datasets") = std::vector<std::string>(), py::arg("progress") = py::none(),
           "llama.cpp's importance matrix of the texts (embed's forward pass), written to path; returns "
           "{weight: tokens seen}")
      .def("embed_multivector",
           [](M& s, py::handle texts, std::optional<std::string> task, const std::string& role,
              std::optional<int> dim, bool truncate, std::optional<py::function> progress) {
             jv4::Request req = s.model->resolve(task, role, dim, truncate, /*multivector=*/true);
             Texts items = collect_texts(texts);
             const auto n = static_cast<py::ssize_t>(items.views.size());
             py::array_t<float> pooled({n, static_cast<py::ssize_t>(req.dim)});
             float* data = pooled.mutable_data();
             auto multi = std::make_unique<jv4::MultiOutput>();
             call_engine(s, progress, [&](const std::atomic<bool>* cancel, jv4::Progress* counted) {
               s.model->embed(items.views, req, data, cancel, counted, multi.get());
             });
             py::tuple tokens = multi_arrays(std::move(multi), n);
             return py::make_tuple(pooled, py::object(tokens[0]), py::object(tokens[1]));
           },
           py::arg("texts"), py::arg("task") = py::none(), py::arg("role") = "query",
           py::arg("dim") = py::none(), py::arg("truncate") = true,
           py::arg("progress") = py::none(),
           "(pooled (n, dim), token vectors (total, width), offsets (n + 1,)): one call's single and "
           "per-token vectors from the same decodes")
      .def_property_readonly("has_vision", [](const M& s) { return s.model->has_vision(); })
      .def("embed_images",
           [](M& s, py::handle images, std::optional<std::string> task, std::optional<int> dim,
              bool multivector, std::optional<py::function> progress) -> py::tuple {
             jv4::Request req = s.model->resolve_images(task, dim, multivector);
             Images items = collect_images(images);
             const auto n = static_cast<py::ssize_t>(items.items.size());
             py::array_t<float> pooled({n, static_cast<py::ssize_t>(req.dim)});
             float* data = pooled.mutable_data();
             auto multi = multivector ? std::make_unique<jv4::MultiOutput>() : nullptr;
             call_engine(s, progress, [&](const std::atomic<bool>* cancel, jv4::Progress* counted) {
               s.model->embed_images(items.items, req, data, cancel, counted, multi.get());
             });
             if (!multivector) return py::make_tuple(pooled);
             py::tuple tokens = multi_arrays(std::move(multi), n);
             return py::make_tuple(pooled, py::object(tokens[0]), py::object(tokens[1]));
           },
           py::arg("images"), py::arg("task") = py::none(), py::arg("dim") = py::none(),
           py::arg("multivector") = false, py::arg("progress") = py::none(),
           "images: [(\"encoded\", name, bytes) | (\"rgb\", name, uint8 HxWx3)]; returns (pooled (n, dim),) or, "
           "with multivector, (pooled, token vectors (total, width), offsets (n + 1,))");
}

}  // namespace jv4py
