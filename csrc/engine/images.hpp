// Images in: the decode stage of image input. An image arrives encoded (the
// bytes of a PNG, JPEG, BMP, GIF, ... file, decoded here with stb_image) or
// as RGB pixels (a decoded array from Python), and leaves as 8-bit RGB rows,
// checked: a file that does not decode, a zero-sized image, an extreme
// aspect ratio or more pixels than the decompression-bomb limit is an
// std::invalid_argument naming the image. Pure: no model, no llama.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace jv4 {

// One image as handed to the engine. The data is not owned.
struct ImageInput {
  enum class Kind { Encoded, Rgb };
  Kind kind = Kind::Encoded;
  const uint8_t* data = nullptr;
  size_t size = 0;             // bytes of data
  uint32_t width = 0, height = 0;  // Rgb: the pixel grid (size == width * height * 3)
  std::string name;            // how errors name it ("image 2 (page.png)")
};

// 8-bit RGB pixels, row-major.
struct RgbImage {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // width * height * 3
};

// The limits every image is held to.
inline constexpr uint64_t kMaxImagePixels = 178956970;  // Pillow's decompression-bomb error threshold
inline constexpr double kMaxAspectRatio = 200.0;        // the Qwen2-VL processor refuses more

// Throws std::invalid_argument("<name>: ...") when width x height is not an
// image jv4 embeds (zero, too many pixels, aspect ratio over 200).
void check_image_size(uint32_t width, uint32_t height, const std::string& name);

// The pixels of `in`, decoded and checked.
RgbImage decode_image(const ImageInput& in);

// The format an encoded image's first bytes announce ("png", "jpeg", "gif",
// "bmp", "webp", "tiff", ...), "" when unknown; and whether stb_image
// decodes it.
std::string sniff_image_format(const uint8_t* data, size_t size);
bool decodes_natively(const std::string& format);

}  // namespace jv4
