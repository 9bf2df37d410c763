// jv4._core: the compiled module. Gathers the binding files and maps engine
// exceptions to Python ones (the runtime they share is runtime.cc).
#include <pybind11/pybind11.h>

#include <cstring>
#include <exception>

#include "bindings/common.hpp"
#include "engine/errors.hpp"

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
  // a call's argument refused (engine/errors.hpp BadArgument): a ValueError
  // whose .param names the argument ("task", "role", "dim", ...)
  static py::exception<jv4::BadArgument> argument_error(m, "ArgumentError", PyExc_ValueError);
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
    } catch (const jv4::Cancelled& e) {
      set_error(PyExc_KeyboardInterrupt, e.what());
    } catch (const jv4::BadArgument& e) {
      set_error(argument_error.ptr(), e.what());
      PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
      PyErr_Fetch(&type, &value, &tb);
      PyErr_NormalizeException(&type, &value, &tb);
      if (value != nullptr) {
        PyObject* param = PyUnicode_FromString(e.param.c_str());
        if (param == nullptr || PyObject_SetAttrString(value, "param", param) != 0) PyErr_Clear();
        Py_XDECREF(param);
      }
      PyErr_Restore(type, value, tb);
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
  jv4py::register_images(m);
}
