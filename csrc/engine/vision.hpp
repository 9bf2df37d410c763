// Vision: the jina-v4 vision tower (a Qwen2.5-VL mmproj GGUF written by
// `jv4 convert`) run by llama.cpp's mtmd/clip, beside the text model it
// feeds. It checks the mmproj against what its loader and graph assume
// (check_mmproj), preprocesses an image (mtmd's Pillow-compatible smart
// resize within the image budget), tokenizes the jina-v4 image prompt around
// it, and encodes the image into rows of the text model's input width. The
// decodes of those rows are the Model's (model_images.cpp).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/images.hpp"

struct llama_model;
struct mtmd_context;
struct mtmd_input_chunks;

namespace jv4 {

// The attention window (pixels) of the pinned clip's Qwen2.5-VL graph: it
// never reads clip.vision.window_size for this projector and always uses
// 112 (clip.cpp), so an mmproj that says another is refused rather than
// computed with the wrong windows. (The converter refuses it too.)
inline constexpr int kQwen25VLWindowSize = 112;

// What an mmproj file says of itself, after check_mmproj.
struct MmprojFacts {
  std::string projector_type;  // "qwen2.5vl_merger"
  int n_embd = 0, n_layer = 0, n_head = 0, n_ff = 0, patch_size = 0, merge = 2;
  int projection_dim = 0;      // the text model's input width it feeds
  // the checkpoint's pixel budget (clip.vision.image_min/max_pixels, written
  // by `jv4 convert` from preprocessor_config.json); none when absent
  std::optional<int64_t> min_pixels, max_pixels;
  std::vector<int> matrix_types;  // ggml types of the weight matrices but the patch convolution
};

// Reads and checks an mmproj header (and its tensors' names, shapes and
// types) without loading it: ModelLoadError("<path>: ...") naming the key or
// tensor. `n_embd_text`: the text model's width the projection must match
// (0: any width, for a file read alone, as quantize does).
MmprojFacts check_mmproj(const std::string& path, int n_embd_text);

// Whether an mmproj tensor (by name) is the patch embedding's convolution,
// which runs on F32 or F16 kernels only.
bool mmproj_is_conv(const std::string& tensor_name);

// One image's prompt, tokenized: text tokens before the image (ending with
// <|vision_start|>), the image's rows, text tokens after (starting with
// <|vision_end|>), and the image's M-RoPE grid.
struct ImagePrompt {
  std::vector<int32_t> before, after;
  int n_image = 0;          // rows the image becomes
  int grid_x = 0, grid_y = 0;  // merged-token grid (columns, rows)
  int n_pos = 0;            // positions the image advances (max(grid_x, grid_y))
  mtmd_input_chunks* chunks = nullptr;  // owned
  size_t image_chunk = 0;
  ImagePrompt() = default;
  ImagePrompt(ImagePrompt&& o) noexcept;
  ImagePrompt& operator=(ImagePrompt&&) = delete;
  ImagePrompt(const ImagePrompt&) = delete;
  ~ImagePrompt();
};

class Vision {
 public:
  // min/max_tokens: the image budget in merged tokens (none: the file's
  // pixel budget, else llama.cpp's 8..4096); f16_as_bf16 / repack: how the
  // tower's matrices are held on the CPU (LoadPolicy's tower_* decisions);
  // attn_bf16: flash attention over BF16 K and V (decide_tower_attention).
  // `facts`: check_mmproj(mmproj, n_embd_text)'s answer for this file.
  Vision(const std::string& mmproj, MmprojFacts facts, const llama_model* text, int n_threads,
         std::optional<int> min_tokens, std::optional<int> max_tokens, bool use_gpu, bool f16_as_bf16,
         bool repack, bool attn_bf16);
  ~Vision();
  Vision(const Vision&) = delete;
  Vision& operator=(const Vision&) = delete;

  const MmprojFacts& facts() const { return facts_; }
  int min_tokens() const { return min_tokens_; }
  int max_tokens() const { return max_tokens_; }

  // The jina-v4 image prompt around `img` (preprocessed within the budget).
  ImagePrompt tokenize(const RgbImage& img, const std::string& name) const;
  // Runs the vision tower: n_image rows of n_embd_text floats (valid until
  // the next encode).
  const float* encode(const ImagePrompt& p, const std::string& name);
  // Section-major M-RoPE positions (t, y, x, 0) of the image's rows from
  // position pos0: 4 * n_image values.
  void positions(const ImagePrompt& p, int pos0, std::vector<int32_t>& out) const;

 private:
  MmprojFacts facts_;
  mtmd_context* ctx_ = nullptr;
  int min_tokens_ = 0, max_tokens_ = 0;
  std::string path_;
};

}  // namespace jv4
