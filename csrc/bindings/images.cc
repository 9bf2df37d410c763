// jv4._core's image helpers: the engine's image decode stage (images.hpp),
// bound alone so the facade can ask which formats the engine reads and the
// tests can check decoding without a model.
#include <pybind11/numpy.h>

#include <cstring>
#include <string>

#include "bindings/common.hpp"
#include "engine/images.hpp"
#include "engine/vision.hpp"

namespace jv4py {

void register_images(py::module_& m) {
  m.def(
      "image_format",
      [](py::bytes data) {
        const std::string_view v = data;
        const std::string f = jv4::sniff_image_format(reinterpret_cast<const uint8_t*>(v.data()), v.size());
        return py::make_tuple(f, jv4::decodes_natively(f));
      },
      py::arg("data"),
      "(format, decoded by the engine): the format an encoded image's first bytes announce ('' when "
      "unknown) and whether jv4's built-in decoder reads it");
  m.def(
      "decode_image",
      [](py::bytes data, const std::string& name) {
        const std::string_view v = data;
        jv4::ImageInput in;
        in.data = reinterpret_cast<const uint8_t*>(v.data());
        in.size = v.size();
        in.name = name;
        jv4::RgbImage img;
        {
          py::gil_scoped_release release;
          img = jv4::decode_image(in);
        }
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(img.height), static_cast<py::ssize_t>(img.width),
                                  static_cast<py::ssize_t>(3)});
        std::memcpy(out.mutable_data(), img.pixels.data(), img.pixels.size());
        return out;
      },
      py::arg("data"), py::arg("name") = "image",
      "the engine's decoding of an encoded image: height x width x 3 uint8 (alpha composited over white); "
      "ValueError naming `name` when it is not an image jv4 embeds");
  m.attr("MAX_IMAGE_PIXELS") = jv4::kMaxImagePixels;
  // the one window size the pinned clip's Qwen2.5-VL graph runs (vision.hpp): jv4 convert refuses others
  m.attr("QWEN25VL_WINDOW_SIZE") = jv4::kQwen25VLWindowSize;
}

}  // namespace jv4py
