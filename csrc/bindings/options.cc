// jv4._core.ModelOptions and jv4._core.ModelInfo: the engine's option and
// fact structs, field by field by name. ModelOptions(**kwargs) sets each
// keyword on the field of that name (pybind11 converts and checks its type),
// so the order of the fields matters nowhere.
#include <pybind11/stl.h>

#include <string>

#include "bindings/common.hpp"
#include "engine/model.hpp"
#include "engine/options.hpp"

namespace jv4py {

void register_options(py::module_& m) {
  using O = jv4::ModelOptions;
  py::class_<O>(m, "ModelOptions", "A Model's options by name; None everywhere means the documented default.")
      .def(py::init([](const py::kwargs& kwargs) {
             O opts;
             py::object self = py::cast(&opts, py::return_value_policy::reference);
             py::object type = py::type::of(self);
             for (const auto& [key, value] : kwargs) {
               const std::string name = py::str(key);
               const bool field = py::hasattr(type, name.c_str()) && name[0] != '_' &&
                                  PyObject_TypeCheck(type.attr(name.c_str()).ptr(), &PyProperty_Type);
               if (!field) throw py::type_error("ModelOptions has no option '" + name + "'");
               self.attr(name.c_str()) = value;
             }
             return opts;
           }),
           "ModelOptions(**options): each keyword sets the option of that name")
      .def_readwrite("n_threads", &O::n_threads)
      .def_readwrite("max_length", &O::max_length)
      .def_readwrite("batch_tokens", &O::batch_tokens)
      .def_readwrite("repack", &O::repack)
      .def_readwrite("n_gpu_layers", &O::n_gpu_layers)
      .def_readwrite("main_gpu", &O::main_gpu)
      .def_readwrite("adapters", &O::adapters)
      .def_readwrite("projector", &O::projector)
      .def_readwrite("f16_as_bf16", &O::f16_as_bf16)
      .def_readwrite("flash_attn", &O::flash_attn)
      .def_readwrite("kv_cache_type", &O::kv_cache_type)
      .def_readwrite("mmproj", &O::mmproj)
      .def_readwrite("image_min_tokens", &O::image_min_tokens)
      .def_readwrite("image_max_tokens", &O::image_max_tokens)
      .def_readwrite("coalesce", &O::coalesce)
      .def_readwrite("batch_wait_ms", &O::batch_wait_ms)
      .def_readwrite("batch_invariant", &O::batch_invariant);

  using I = jv4::ModelInfo;
  py::class_<I>(m, "ModelInfo", "What a loaded model is and how it was loaded (Model.info).")
      .def_readonly("path", &I::path)
      .def_readonly("architecture", &I::architecture)
      .def_readonly("name", &I::name)
      .def_readonly("basename", &I::basename)
      .def_readonly("description", &I::description)
      .def_readonly("task", &I::task)
      .def_readonly("pooling", &I::pooling)
      .def_readonly("tokenizer_pre", &I::tokenizer_pre)
      .def_readonly("truncation", &I::truncation)
      .def_readonly("normalization", &I::normalization)
      .def_readonly("jina_v4", &I::jina_v4)
      .def_readonly("base", &I::base)
      .def_readonly("adapters", &I::adapters)
      .def_readonly("projector", &I::projector)
      .def_readonly("n_embd", &I::n_embd)
      .def_readonly("n_layer", &I::n_layer)
      .def_readonly("n_head", &I::n_head)
      .def_readonly("n_vocab", &I::n_vocab)
      .def_readonly("n_ctx_train", &I::n_ctx_train)
      .def_readonly("n_params", &I::n_params)
      .def_readonly("size_bytes", &I::size_bytes)
      .def_readonly("file_type", &I::file_type)
      .def_readonly("causal", &I::causal)
      .def_readonly("n_threads", &I::n_threads)
      .def_readonly("max_length", &I::max_length)
      .def_readonly("batch_tokens", &I::batch_tokens)
      .def_readonly("repack", &I::repack)
      .def_readonly("f16_as_bf16", &I::f16_as_bf16)
      .def_readonly("load_mode", &I::load_mode)
      .def_readonly("n_gpu_layers", &I::n_gpu_layers)
      .def_readonly("main_gpu", &I::main_gpu)
      .def_readonly("flash_attn", &I::flash_attn)
      .def_readonly("kv_cache_type", &I::kv_cache_type)
      .def_readonly("mmproj", &I::mmproj)
      .def_readonly("image_min_tokens", &I::image_min_tokens)
      .def_readonly("image_max_tokens", &I::image_max_tokens)
      .def_readonly("image_f16_as_bf16", &I::image_f16_as_bf16)
      .def_readonly("image_repack", &I::image_repack)
      .def_readonly("image_attention", &I::image_attention)
      .def_readonly("coalesce", &I::coalesce)
      .def_readonly("batch_wait_ms", &I::batch_wait_ms)
      .def_readonly("batch_invariant", &I::batch_invariant);
  // the defaults the options take when left None (options.hpp), for the
  // facade's and the command's help texts
  m.attr("DEFAULT_MAX_LENGTH") = jv4::kDefaultMaxLength;
  m.attr("DEFAULT_BATCH_TOKENS") = jv4::kDefaultBatchTokens;
}

}  // namespace jv4py
