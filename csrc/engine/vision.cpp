// Vision (vision.hpp): llama.cpp's mtmd over a Qwen2.5-VL mmproj.
#include "engine/vision.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <utility>

#include "engine/errors.hpp"
#include "engine/gguf_file.hpp"
#include "engine/jina.hpp"
#include "engine/logging.hpp"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
#include "mtmd.h"

namespace jv4 {
namespace {

constexpr const char* kProjectorType = "qwen2.5vl_merger";

// Every key a jv4 mmproj may hold, with its type. clip's loader reads keys
// with typed getters that abort on another type, so a file is held to this
// table before clip sees it; keys outside it are refused too.
const std::map<std::string, gguf_type>& mmproj_keys() {
  static const std::map<std::string, gguf_type> keys = {
      {"general.architecture", GGUF_TYPE_STRING},
      {"general.type", GGUF_TYPE_STRING},
      {"general.name", GGUF_TYPE_STRING},
      {"general.description", GGUF_TYPE_STRING},
      {"general.file_type", GGUF_TYPE_UINT32},
      {"general.quantization_version", GGUF_TYPE_UINT32},
      {"general.alignment", GGUF_TYPE_UINT32},
      {"clip.projector_type", GGUF_TYPE_STRING},
      {"clip.has_vision_encoder", GGUF_TYPE_BOOL},
      {"clip.has_audio_encoder", GGUF_TYPE_BOOL},
      {"clip.use_silu", GGUF_TYPE_BOOL},
      {"clip.use_gelu", GGUF_TYPE_BOOL},
      {"clip.vision.embedding_length", GGUF_TYPE_UINT32},
      {"clip.vision.feed_forward_length", GGUF_TYPE_UINT32},
      {"clip.vision.block_count", GGUF_TYPE_UINT32},
      {"clip.vision.attention.head_count", GGUF_TYPE_UINT32},
      {"clip.vision.attention.layer_norm_epsilon", GGUF_TYPE_FLOAT32},
      {"clip.vision.projection_dim", GGUF_TYPE_UINT32},
      {"clip.vision.image_size", GGUF_TYPE_UINT32},
      {"clip.vision.patch_size", GGUF_TYPE_UINT32},
      {"clip.vision.spatial_merge_size", GGUF_TYPE_UINT32},
      {"clip.vision.window_size", GGUF_TYPE_UINT32},
      {"clip.vision.n_wa_pattern", GGUF_TYPE_UINT32},
      {"clip.vision.image_mean", GGUF_TYPE_ARRAY},
      {"clip.vision.image_std", GGUF_TYPE_ARRAY},
      {"clip.vision.image_min_pixels", GGUF_TYPE_UINT32},
      {"clip.vision.image_max_pixels", GGUF_TYPE_UINT32},
  };
  return keys;
}

const char* type_name(gguf_type t) { return gguf_type_name(t); }

class Header {
 public:
  Header(const gguf_context* g, const std::string& path) : g_(g), path_(path) {}
  [[noreturn]] void fail(const std::string& what) const {
    throw ModelLoadError(path_ + ": " + what + " (a vision tower written by `jv4 convert` is expected)");
  }
  int64_t id(const std::string& key, bool required) const {
    const int64_t i = gguf_find_key(g_, key.c_str());
    if (i < 0 && required) fail("the mmproj has no " + key);
    return i;
  }
  std::optional<int64_t> u32(const std::string& key, int64_t lo, int64_t hi, bool required = true) const {
    const int64_t i = id(key, required);
    if (i < 0) return std::nullopt;
    const int64_t v = gguf_get_val_u32(g_, i);  // type checked against the table
    if (v < lo || v > hi) {
      fail(key + " = " + std::to_string(v) + " (must be " + std::to_string(lo) + ".." + std::to_string(hi) + ")");
    }
    return v;
  }
  std::vector<float> floats(const std::string& key) const {
    const int64_t i = id(key, true);
    if (gguf_get_arr_type(g_, i) != GGUF_TYPE_FLOAT32) fail(key + " must be an array of float32");
    const size_t n = gguf_get_arr_n(g_, i);
    const float* d = static_cast<const float*>(gguf_get_arr_data(g_, i));
    return std::vector<float>(d, d + n);
  }

 private:
  const gguf_context* g_;
  const std::string& path_;
};

}  // namespace

bool mmproj_is_conv(const std::string& tensor_name) { return tensor_name.rfind("v.patch_embd", 0) == 0; }

MmprojFacts check_mmproj(const std::string& path, int n_embd_text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw FileNotFound("no such file: " + path);
  if (fs::is_directory(path, ec)) throw ModelLoadError(path + ": is a directory, not an mmproj GGUF file");
  const uintmax_t file_size = fs::file_size(path, ec);
  ggml_context* meta = nullptr;
  gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/&meta};
  std::unique_ptr<gguf_context, GgufFree> g(gguf_init_from_file(path.c_str(), gp));
  std::unique_ptr<ggml_context, GgmlFree> tensors(meta);
  if (!g) {
    const std::string why = take_thread_errors();
    throw ModelLoadError(path + ": not a readable GGUF file" + (why.empty() ? "" : ": " + why));
  }
  const Header h(g.get(), path);
  {
    const int64_t a = gguf_find_key(g.get(), "general.architecture");
    const std::string arch = a >= 0 && gguf_get_kv_type(g.get(), a) == GGUF_TYPE_STRING ? gguf_get_val_str(g.get(), a) : "";
    if (arch != "clip") h.fail("general.architecture is '" + arch + "', not 'clip': not an mmproj file");
  }
  // every key known, with its type
  for (int64_t i = 0; i < gguf_get_n_kv(g.get()); ++i) {
    const std::string key = gguf_get_key(g.get(), i);
    const auto it = mmproj_keys().find(key);
    if (it == mmproj_keys().end()) {
      if (key.rfind("general.", 0) == 0 && gguf_get_kv_type(g.get(), i) == GGUF_TYPE_STRING) continue;
      h.fail("unexpected metadata key " + key);
    }
    if (gguf_get_kv_type(g.get(), i) != it->second) {
      h.fail("metadata " + key + " is a " + type_name(gguf_get_kv_type(g.get(), i)) + ", not a " +
             type_name(it->second));
    }
  }
  MmprojFacts f;
  f.projector_type = gguf_get_val_str(g.get(), h.id("clip.projector_type", true));
  if (f.projector_type != kProjectorType) {
    h.fail("clip.projector_type is '" + f.projector_type + "'; jv4 embeds images with jina-embeddings-v4's "
           "vision tower, '" + kProjectorType + "'");
  }
  if (!gguf_get_val_bool(g.get(), h.id("clip.has_vision_encoder", true))) h.fail("clip.has_vision_encoder is false");
  if (const int64_t a = h.id("clip.has_audio_encoder", false); a >= 0 && gguf_get_val_bool(g.get(), a)) {
    h.fail("clip.has_audio_encoder is true");
  }
  f.n_embd = static_cast<int>(*h.u32("clip.vision.embedding_length", 1, 16384));
  f.n_head = static_cast<int>(*h.u32("clip.vision.attention.head_count", 1, 1024));
  f.n_ff = static_cast<int>(*h.u32("clip.vision.feed_forward_length", 1, 1 << 17));
  f.n_layer = static_cast<int>(*h.u32("clip.vision.block_count", 1, 512));
  f.patch_size = static_cast<int>(*h.u32("clip.vision.patch_size", 1, 1024));
  h.u32("clip.vision.image_size", 1, 1 << 20);
  f.projection_dim = static_cast<int>(*h.u32("clip.vision.projection_dim", 1, 1 << 20));
  if (n_embd_text > 0 && f.projection_dim != n_embd_text) {
    h.fail("clip.vision.projection_dim = " + std::to_string(f.projection_dim) + " does not match the text "
           "model's width " + std::to_string(n_embd_text) + ": this mmproj belongs to another model");
  }
  if (f.n_embd % f.n_head != 0 || (f.n_embd / f.n_head) % 4 != 0) {
    h.fail("clip.vision.attention.head_count = " + std::to_string(f.n_head) + " must divide "
           "embedding_length = " + std::to_string(f.n_embd) + " into heads of a multiple of 4");
  }
  f.merge = static_cast<int>(h.u32("clip.vision.spatial_merge_size", 2, 2, false).value_or(2));
  h.u32("clip.vision.n_wa_pattern", 1, f.n_layer);
  const int unit = f.patch_size * f.merge;
  if (auto w = h.u32("clip.vision.window_size", unit, 1 << 16, false); w && *w % unit != 0) {
    h.fail("clip.vision.window_size = " + std::to_string(*w) + " is not a multiple of patch_size x merge = " +
           std::to_string(unit));
  } else if (w && *w != kQwen25VLWindowSize) {
    h.fail("clip.vision.window_size = " + std::to_string(*w) + ": llama.cpp's Qwen2.5-VL graph attends in " +
           "windows of " + std::to_string(kQwen25VLWindowSize) + " pixels whatever the file says, so this " +
           "tower's vectors would be wrong");
  }
  {
    const float eps = gguf_get_val_f32(g.get(), h.id("clip.vision.attention.layer_norm_epsilon", true));
    if (!std::isfinite(eps) || eps <= 0) h.fail("clip.vision.attention.layer_norm_epsilon must be finite and > 0");
  }
  for (const char* key : {"clip.vision.image_mean", "clip.vision.image_std"}) {
    const std::vector<float> v = h.floats(key);
    if (v.size() != 3) h.fail(std::string(key) + " must hold 3 values (R, G, B), has " + std::to_string(v.size()));
    for (float x : v) {
      if (!std::isfinite(x) || (std::string(key).find("std") != std::string::npos && x <= 0)) {
        h.fail(std::string(key) + " holds " + std::to_string(x));
      }
    }
  }
  f.min_pixels = h.u32("clip.vision.image_min_pixels", 1, INT32_MAX, false);
  f.max_pixels = h.u32("clip.vision.image_max_pixels", 1, INT32_MAX, false);
  if (f.min_pixels && f.max_pixels && *f.min_pixels > *f.max_pixels) {
    h.fail("clip.vision.image_min_pixels is larger than image_max_pixels");
  }

  // the tensors: exactly the set the qwen2vl graph reads, with their shapes
  struct Want {
    std::vector<int64_t> ne;
    bool matrix;  // a weight matrix (any float or Q8_0 type); else F32
  };
  std::map<std::string, Want> want;
  const int64_t e = f.n_embd, ff = f.n_ff, m4 = e * f.merge * f.merge, p = f.patch_size;
  want["v.patch_embd.weight"] = {{p, p, 3, e}, true};
  want["v.patch_embd.weight.1"] = {{p, p, 3, e}, true};
  for (int i = 0; i < f.n_layer; ++i) {
    const std::string b = "v.blk." + std::to_string(i) + ".";
    want[b + "ln1.weight"] = {{e}, false};
    want[b + "ln2.weight"] = {{e}, false};
    for (const char* qkv : {"attn_q", "attn_k", "attn_v", "attn_out"}) {
      want[b + qkv + ".weight"] = {{e, e}, true};
      want[b + qkv + ".bias"] = {{e}, false};
    }
    want[b + "ffn_gate.weight"] = {{e, ff}, true};
    want[b + "ffn_gate.bias"] = {{ff}, false};
    want[b + "ffn_up.weight"] = {{e, ff}, true};
    want[b + "ffn_up.bias"] = {{ff}, false};
    want[b + "ffn_down.weight"] = {{ff, e}, true};
    want[b + "ffn_down.bias"] = {{e}, false};
  }
  want["v.post_ln.weight"] = {{e}, false};
  want["mm.0.weight"] = {{m4, m4}, true};
  want["mm.0.bias"] = {{m4}, false};
  want["mm.2.weight"] = {{m4, f.projection_dim}, true};
  want["mm.2.bias"] = {{f.projection_dim}, false};

  const size_t data_offset = gguf_get_data_offset(g.get());
  for (int64_t i = 0; i < gguf_get_n_tensors(g.get()); ++i) {
    const std::string name = gguf_get_tensor_name(g.get(), i);
    const auto it = want.find(name);
    if (it == want.end()) h.fail("unexpected tensor " + name);
    const ggml_tensor* t = ggml_get_tensor(meta, name.c_str());
    if (t == nullptr) h.fail("tensor " + name + " is not readable");
    std::vector<int64_t> ne;
    for (int d = 0; d < GGML_MAX_DIMS; ++d) ne.push_back(t->ne[d]);
    std::vector<int64_t> expect = it->second.ne;
    expect.resize(GGML_MAX_DIMS, 1);
    if (ne != expect) {
      std::string got, exp;
      for (int d = 0; d < GGML_MAX_DIMS; ++d) {
        got += (d ? "," : "") + std::to_string(ne[d]);
        exp += (d ? "," : "") + std::to_string(expect[d]);
      }
      h.fail("tensor " + name + " has shape [" + got + "], expected [" + exp + "]");
    }
    const ggml_type ty = t->type;
    const bool conv = mmproj_is_conv(name);
    const bool ok = !it->second.matrix ? ty == GGML_TYPE_F32
                    : conv             ? (ty == GGML_TYPE_F32 || ty == GGML_TYPE_F16)
                                       : (ty == GGML_TYPE_F32 || ty == GGML_TYPE_F16 || ty == GGML_TYPE_BF16 ||
                                          ty == GGML_TYPE_Q8_0);
    if (!ok) h.fail("tensor " + name + " has type " + ggml_type_name(ty) + ", which jv4's vision tower does not take");
    if (it->second.matrix && !conv) f.matrix_types.push_back(static_cast<int>(ty));
    const uint64_t end = data_offset + gguf_get_tensor_offset(g.get(), i) + gguf_get_tensor_size(g.get(), i);
    if (ec || end > file_size) h.fail("truncated: tensor " + name + "'s data ends past the end of the file");
    want.erase(it);
  }
  if (!want.empty()) h.fail("the mmproj lacks tensor " + want.begin()->first);
  return f;
}

ImagePrompt::ImagePrompt(ImagePrompt&& o) noexcept
    : before(std::move(o.before)), after(std::move(o.after)), n_image(o.n_image), grid_x(o.grid_x),
      grid_y(o.grid_y), n_pos(o.n_pos), chunks(o.chunks), image_chunk(o.image_chunk) {
  o.chunks = nullptr;
}

ImagePrompt::~ImagePrompt() {
  if (chunks != nullptr) mtmd_input_chunks_free(chunks);
}

namespace {

// Each control token of the image prompt must be one control token of the
// text model's vocabulary (jina.hpp).
void check_prompt_tokens(const std::string& mmproj, const llama_model* text) {
  const llama_vocab* vocab = llama_model_get_vocab(text);
  for (const char* piece : jina::kImagePromptTokens) {
    llama_token ids[4];
    const int n = llama_tokenize(vocab, piece, static_cast<int32_t>(std::strlen(piece)), ids, 4,
                                 /*add_special=*/false, /*parse_special=*/true);
    if (n != 1 || (llama_vocab_get_attr(vocab, ids[0]) & LLAMA_TOKEN_ATTR_CONTROL) == 0) {
      throw ModelLoadError(mmproj + ": the text model's vocabulary lacks " + piece + " as a control token, so " +
                           "jina-v4's image prompt would be read as plain text (its tokenizer is not Qwen2.5-VL's; " +
                           "convert the checkpoint with its own tokenizer.json)");
    }
  }
}

}  // namespace

Vision::Vision(const std::string& mmproj, MmprojFacts facts, const llama_model* text, int n_threads,
               std::optional<int> min_tokens, std::optional<int> max_tokens, bool use_gpu, bool f16_as_bf16,
               bool repack, bool attn_bf16)
    : facts_(std::move(facts)), path_(mmproj) {
  if (llama_model_rope_type(text) != LLAMA_ROPE_TYPE_MROPE) {
    throw ModelLoadError(mmproj + ": images need the text model with M-RoPE positions (llama.cpp "
                         "architecture qwen2vl, as `jv4 convert` writes it); this text model has another");
  }
  check_prompt_tokens(mmproj, text);
  const int area = facts_.patch_size * facts_.merge * facts_.patch_size * facts_.merge;  // pixels a token
  // the budget: options, else the file's pixels (rounded to whole tokens), else llama.cpp's
  min_tokens_ = min_tokens.value_or(facts_.min_pixels ? static_cast<int>((*facts_.min_pixels + area - 1) / area) : 8);
  max_tokens_ = max_tokens.value_or(facts_.max_pixels ? static_cast<int>(*facts_.max_pixels / area) : 4096);
  min_tokens_ = std::max(min_tokens_, 1);
  if (max_tokens_ < min_tokens_) {
    throw std::invalid_argument("image_max_tokens (" + std::to_string(max_tokens_) + ") is below image_min_tokens (" +
                                std::to_string(min_tokens_) + ")");
  }
  mtmd_context_params p = mtmd_context_params_default();
  p.use_gpu = use_gpu;
  p.print_timings = false;
  p.n_threads = n_threads;
  p.warmup = false;
  p.image_min_tokens = min_tokens_;
  p.image_max_tokens = max_tokens_;
  p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
  p.jv4_f16_as_bf16 = f16_as_bf16;  // patch 0013
  p.jv4_repack_weights = repack;
  p.jv4_attn_bf16 = attn_bf16;  // patch 0014
  take_thread_errors();
  ctx_ = mtmd_init_from_file(mmproj.c_str(), text, p);
  if (ctx_ == nullptr) {
    const std::string why = take_thread_errors();
    throw ModelLoadError(mmproj + ": cannot load the vision tower" + (why.empty() ? "" : ": " + why));
  }
  if (!mtmd_support_vision(ctx_) || !mtmd_decode_use_mrope(ctx_) || mtmd_decode_use_non_causal(ctx_, nullptr)) {
    mtmd_free(ctx_);
    ctx_ = nullptr;
    throw ModelLoadError(mmproj + ": llama.cpp does not run this vision tower as jina-embeddings-v4's");
  }
}

Vision::~Vision() {
  if (ctx_ != nullptr) mtmd_free(ctx_);
}

ImagePrompt Vision::tokenize(const RgbImage& img, const std::string& name) const {
  struct BitmapFree {
    void operator()(mtmd_bitmap* b) const { mtmd_bitmap_free(b); }
  };
  std::unique_ptr<mtmd_bitmap, BitmapFree> bmp(mtmd_bitmap_init(img.width, img.height, img.pixels.data()));
  const std::string text = std::string(jina::kImagePromptBefore) + mtmd_default_marker() + jina::kImagePromptAfter;
  mtmd_input_text in{text.c_str(), text.size(), /*add_special=*/false, /*parse_special=*/true};
  ImagePrompt out;
  out.chunks = mtmd_input_chunks_init();
  const mtmd_bitmap* bitmaps[1] = {bmp.get()};
  take_thread_errors();
  const int32_t rc = mtmd_tokenize(ctx_, out.chunks, &in, bitmaps, 1);
  if (rc != 0) {
    const std::string why = take_thread_errors();
    throw std::invalid_argument(name + ": cannot prepare the image (" + std::to_string(img.width) + "x" +
                                std::to_string(img.height) + ")" + (why.empty() ? "" : ": " + why));
  }
  const size_t n = mtmd_input_chunks_size(out.chunks);
  int images = 0;
  for (size_t i = 0; i < n; ++i) {
    const mtmd_input_chunk* c = mtmd_input_chunks_get(out.chunks, i);
    if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_IMAGE) {
      ++images;
      out.image_chunk = i;
      const mtmd_image_tokens* it = mtmd_input_chunk_get_tokens_image(c);
      out.n_image = static_cast<int>(mtmd_image_tokens_get_n_tokens(it));
      out.n_pos = static_cast<int>(mtmd_input_chunk_get_n_pos(c));
      // the grid, from the positions of the last row (x, y relative to pos 0)
      const mtmd_decoder_pos last = mtmd_image_tokens_get_decoder_pos(it, 0, static_cast<size_t>(out.n_image - 1));
      out.grid_x = static_cast<int>(last.x) + 1;
      out.grid_y = static_cast<int>(last.y) + 1;
      continue;
    }
    if (mtmd_input_chunk_get_type(c) != MTMD_INPUT_CHUNK_TYPE_TEXT) throw std::runtime_error("mtmd: unexpected chunk");
    size_t nt = 0;
    const llama_token* t = mtmd_input_chunk_get_tokens_text(c, &nt);
    std::vector<int32_t>& dst = images == 0 ? out.before : out.after;
    dst.insert(dst.end(), t, t + nt);
  }
  if (images != 1 || out.n_image <= 0 || out.before.empty() || out.after.empty()) {
    throw std::runtime_error("mtmd tokenized the image prompt unexpectedly");
  }
  return out;
}

const float* Vision::encode(const ImagePrompt& p, const std::string& name) {
  take_thread_errors();
  const mtmd_input_chunk* c = mtmd_input_chunks_get(p.chunks, p.image_chunk);
  if (mtmd_encode_chunk(ctx_, c) != 0) {
    const std::string why = take_thread_errors();
    throw std::runtime_error(name + ": the vision tower failed" + (why.empty() ? "" : ": " + why));
  }
  return mtmd_get_output_embd(ctx_);
}

void Vision::positions(const ImagePrompt& p, int pos0, std::vector<int32_t>& out) const {
  const mtmd_image_tokens* it = mtmd_input_chunk_get_tokens_image(mtmd_input_chunks_get(p.chunks, p.image_chunk));
  const size_t n = static_cast<size_t>(p.n_image);
  out.assign(4 * n, 0);
  for (size_t i = 0; i < n; ++i) {
    const mtmd_decoder_pos d = mtmd_image_tokens_get_decoder_pos(it, pos0, i);
    out[i] = static_cast<int32_t>(d.t);
    out[i + n] = static_cast<int32_t>(d.y);
    out[i + 2 * n] = static_cast<int32_t>(d.x);
    out[i + 3 * n] = static_cast<int32_t>(d.z);
  }
}

}  // namespace jv4
