// Image decoding and checks (images.hpp). stb_image's declarations only: its
// implementation is compiled once, into llama.cpp's mtmd-helper.cpp.
#include "engine/images.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "stb/stb_image.h"

namespace jv4 {

void check_image_size(uint32_t width, uint32_t height, const std::string& name) {
  if (width == 0 || height == 0) {
    throw std::invalid_argument(name + ": the image is empty (" + std::to_string(width) + "x" +
                                std::to_string(height) + " pixels)");
  }
  const uint64_t pixels = static_cast<uint64_t>(width) * height;
  if (pixels > kMaxImagePixels) {
    throw std::invalid_argument(name + ": " + std::to_string(width) + "x" + std::to_string(height) +
                                " pixels is more than the limit of " + std::to_string(kMaxImagePixels) +
                                " (a decompression bomb, or a scan to downsize first)");
  }
  const double ratio = static_cast<double>(std::max(width, height)) / std::min(width, height);
  if (ratio > kMaxAspectRatio) {
    throw std::invalid_argument(name + ": " + std::to_string(width) + "x" + std::to_string(height) +
                                " pixels has an aspect ratio over 200, which the model's image "
                                "processor does not take (crop or split it)");
  }
}

std::string sniff_image_format(const uint8_t* d, size_t n) {
  auto starts = [&](const char* magic, size_t len, size_t at = 0) {
    return n >= at + len && std::memcmp(d + at, magic, len) == 0;
  };
  if (starts("\x89PNG\r\n\x1a\n", 8)) return "png";
  if (starts("\xff\xd8\xff", 3)) return "jpeg";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "gif";
  if (starts("BM", 2)) return "bmp";
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "webp";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "tiff";
  if (starts("ftypavif", 8, 4) || starts("ftypheic", 8, 4) || starts("ftypmif1", 8, 4)) return "heif/avif";
  if (starts("8BPS", 4)) return "psd";
  if (n >= 2 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6') return "pnm";
  if (starts("#?RADIANCE", 10) || starts("#?RGBE", 6)) return "hdr";
  if (starts("\0\0\1\0", 4)) return "ico";
  return "";
}

bool decodes_natively(const std::string& format) {
  // stb_image's formats (TGA has no magic: tried when nothing else matched)
  return format == "png" || format == "jpeg" || format == "gif" || format == "bmp" || format == "psd" ||
         format == "pnm" || format == "hdr" || format.empty();
}

namespace {

struct StbFree {
  void operator()(stbi_uc* p) const { stbi_image_free(p); }
};

// PIL's rounding division by 255 (ImagingAlphaComposite's DIV255)
inline uint8_t div255(uint32_t v) {
  v += 0x80;
  return static_cast<uint8_t>((v + (v >> 8)) >> 8);
}

}  // namespace

RgbImage decode_image(const ImageInput& in) {
  RgbImage out;
  if (in.kind == ImageInput::Kind::Rgb) {
    check_image_size(in.width, in.height, in.name);
    const size_t want = static_cast<size_t>(in.width) * in.height * 3;
    if (in.size != want || in.data == nullptr) {
      throw std::invalid_argument(in.name + ": " + std::to_string(in.size) + " bytes of pixels for " +
                                  std::to_string(in.width) + "x" + std::to_string(in.height) + " RGB (want " +
                                  std::to_string(want) + ")");
    }
    out.width = in.width;
    out.height = in.height;
    out.pixels.assign(in.data, in.data + want);
    return out;
  }
  if (in.size == 0 || in.data == nullptr) throw std::invalid_argument(in.name + ": empty (0 bytes), not an image");
  if (in.size > static_cast<size_t>(INT_MAX)) {
    throw std::invalid_argument(in.name + ": " + std::to_string(in.size) + " bytes is more than an image file may hold here (2 GiB)");
  }
  const std::string format = sniff_image_format(in.data, in.size);
  if (!decodes_natively(format)) {
    throw std::invalid_argument(in.name + ": a " + format + " file, which jv4's built-in decoder does not read "
                                "(PNG, JPEG, GIF, BMP, PSD, PNM, HDR, TGA); install Pillow (pip install "
                                "'jv4[images]') or pass decoded pixels");
  }
  // sizes read from the header where stb_image would refuse big ones with a
  // vaguer message (its "too large"), and truncation it would pass over
  auto be32 = [&](size_t at) {
    return static_cast<uint32_t>(in.data[at]) << 24 | static_cast<uint32_t>(in.data[at + 1]) << 16 |
           static_cast<uint32_t>(in.data[at + 2]) << 8 | in.data[at + 3];
  };
  if (format == "png" && in.size >= 24 && std::memcmp(in.data + 12, "IHDR", 4) == 0) {
    check_image_size(be32(16), be32(20), in.name);
  }
  if (format == "jpeg") {
    // stb_image decodes a cut JPEG without complaint (grey below the cut):
    // a file with no end-of-image marker is refused as truncated
    bool eoi = false;
    for (size_t i = in.size; i >= 2 && !eoi; --i) eoi = in.data[i - 2] == 0xff && in.data[i - 1] == 0xd9;
    if (!eoi) throw std::invalid_argument(in.name + ": cannot decode the jpeg data: truncated (no end-of-image marker)");
  }
  const int len = static_cast<int>(in.size);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(in.data, len, &w, &h, &comp)) {
    const char* why = stbi_failure_reason();
    throw std::invalid_argument(in.name + ": not a readable image" + (format.empty() ? "" : " (" + format + ")") +
                                ": " + (why ? why : "unknown format"));
  }
  if (w < 0 || h < 0) throw std::invalid_argument(in.name + ": the image header gives a negative size");
  check_image_size(static_cast<uint32_t>(w), static_cast<uint32_t>(h), in.name);
  // alpha is composited over white, as transformers' convert_to_rgb does
  const bool alpha = comp == 2 || comp == 4;
  const int channels = alpha ? 4 : 3;
  int w2 = 0, h2 = 0, c2 = 0;
  std::unique_ptr<stbi_uc, StbFree> px(stbi_load_from_memory(in.data, len, &w2, &h2, &c2, channels));
  if (!px) {
    const char* why = stbi_failure_reason();
    throw std::invalid_argument(in.name + ": cannot decode the " + (format.empty() ? "image" : format) +
                                " data: " + (why ? why : "corrupt or truncated"));
  }
  if (w2 != w || h2 != h) throw std::invalid_argument(in.name + ": the image decodes to another size than its header says");
  out.width = static_cast<uint32_t>(w);
  out.height = static_cast<uint32_t>(h);
  const size_t n = static_cast<size_t>(w) * static_cast<size_t>(h);
  out.pixels.resize(n * 3);
  const stbi_uc* src = px.get();
  if (!alpha) {
    std::memcpy(out.pixels.data(), src, n * 3);
  } else {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t a = src[4 * i + 3];
      for (int c = 0; c < 3; ++c) out.pixels[3 * i + c] = div255(src[4 * i + c] * a + 255u * (255u - a));
    }
  }
  return out;
}

}  // namespace jv4
