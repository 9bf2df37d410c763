// Tokenizer (see tokenizer.hpp).
#include "engine/tokenizer.hpp"

#include <algorithm>
#include <stdexcept>

#include "engine/errors.hpp"
#include "engine/truncation.hpp"
#include "llama.h"
#include "unicode.h"

namespace jv4 {
namespace {

constexpr size_t kHeadMinBytes = 16 * 1024;  // smallest text head tokenize_head tries

}  // namespace

Tokenizer::Tokenizer(const llama_vocab* vocab, const std::string& pre, bool add_special)
    : vocab_(vocab), add_special_(add_special) {
  // Qwen2's reference tokenizer normalises text to Unicode NFC first (the
  // normalizer of its tokenizer.json); llama.cpp's does not, so the caller
  // does it for this family. Other families keep what llama.cpp does.
  normalization_ = pre == "qwen2" ? "NFC" : "";
  // Cutting at piece boundaries is proven for Qwen2's pre-tokenizer only
  // (truncation.hpp); other vocabularies tokenize the whole text.
  head_cut_ = pre == "qwen2";
  reserved_.clear();
  if (!head_cut_) return;
  const int32_t n = llama_vocab_n_tokens(vocab_);
  for (int32_t id = 0; id < n; ++id) {
    const llama_token_attr attr = llama_vocab_get_attr(vocab_, id);
    if ((attr & (LLAMA_TOKEN_ATTR_NORMAL | LLAMA_TOKEN_ATTR_BYTE)) != 0 || attr == LLAMA_TOKEN_ATTR_UNDEFINED) continue;
    const char* t = llama_vocab_get_text(vocab_, id);
    if (t == nullptr) continue;
    const std::vector<uint32_t> cpts = code_points(t);
    reserved_.insert(reserved_.end(), cpts.begin(), cpts.end());
    // a special token ending in a letter or digit could end exactly at a cut
    // and (with rstrip) take text after it: no cuts for such a vocabulary
    if (!cpts.empty()) {
      const unicode_cpt_flags f = unicode_cpt_flags_from_cpt(cpts.back());
      if (f.is_letter || f.is_number) head_cut_ = false;
    }
  }
  std::sort(reserved_.begin(), reserved_.end());
  reserved_.erase(std::unique(reserved_.begin(), reserved_.end()), reserved_.end());
}

std::vector<int32_t> Tokenizer::tokenize(std::string_view text, const std::string& prefix) const {
  std::string full;
  full.reserve(prefix.size() + text.size());
  full.append(prefix).append(text);
  if (full.size() > static_cast<size_t>(INT32_MAX) / 2) {
    throw std::invalid_argument("text too long to tokenize (" + std::to_string(full.size()) + " bytes)");
  }
  const int32_t len = static_cast<int32_t>(full.size());
  std::vector<int32_t> out(static_cast<size_t>(len) + 8);
  // jina-v4's reference tokenizer adds no BOS/EOS whatever the GGUF says;
  // other models get the special tokens their GGUF asks for. parse_special
  // like the reference tokenizer, which matches special-token text.
  const bool add_special = add_special_;
  int32_t n = llama_tokenize(vocab_, full.data(), len, out.data(), static_cast<int32_t>(out.size()),
                             add_special, /*parse_special=*/true);
  if (n < 0) {
    out.resize(static_cast<size_t>(-n));
    n = llama_tokenize(vocab_, full.data(), len, out.data(), static_cast<int32_t>(out.size()),
                       add_special, true);
    if (n < 0) throw std::runtime_error("tokenization failed");
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::vector<int32_t> Tokenizer::tokenize_head(std::string_view text, const std::string& prefix, size_t limit,
                                          const std::atomic<bool>* cancel) const {
  auto keep = [&](std::vector<int32_t> toks) {
    if (toks.size() > limit) toks.resize(limit);
    return toks;
  };
  // Heads start at 16 bytes a kept token (Qwen2 averages about 4 on prose)
  // and double until one holds more than `limit` tokens.
  size_t head = std::max<size_t>(kHeadMinBytes, limit * 16);
  while (head_cut_ && head < text.size() / 2) {
    if (cancel && cancel->load()) throw Cancelled();
    const size_t cut = find_piece_boundary(text, head, 2 * head, reserved_);
    if (cut != std::string_view::npos) {
      // exact: every piece before `cut` tokenizes as in the whole text
      std::vector<int32_t> toks = tokenize(text.substr(0, cut), prefix);
      if (toks.size() > limit) return keep(std::move(toks));
      head = 2 * cut;
      continue;
    }
    // No piece boundary in [head, 2 head): one "word" (a run of letters,
    // spaces or symbols) longer than `head` bytes, merged by BPE as a whole.
    // A cut inside it changes tokens near the cut only; keep the head when
    // cutting at 2 head and 4 head gives the same first `limit` tokens, both
    // with room to spare.
    const size_t a = utf8_floor(text, 2 * head), b = utf8_floor(text, 4 * head);
    if (b >= text.size()) break;
    std::vector<int32_t> ta = tokenize(text.substr(0, a), prefix);
    if (cancel && cancel->load()) throw Cancelled();
    std::vector<int32_t> tb = tokenize(text.substr(0, b), prefix);
    const size_t spare = limit + std::max<size_t>(64, limit / 4);
    if (ta.size() > spare && tb.size() > spare &&
        std::equal(ta.begin(), ta.begin() + static_cast<std::ptrdiff_t>(limit), tb.begin())) {
      return keep(std::move(ta));
    }
    head = 4 * head;
  }
  return keep(tokenize(text, prefix));
}

std::vector<std::vector<int32_t>> Tokenizer::tokenize_all(const std::vector<std::string_view>& texts,
                                                          const std::string& prefix, bool truncate, int max_length,
                                                          const std::atomic<bool>* cancel) const {
  std::vector<std::vector<int32_t>> toks(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    if (cancel && cancel->load()) throw Cancelled();
    // truncating: only the kept head is tokenized; not truncating: the
    // whole text, so that the error can say how long it is
    toks[i] = truncate ? tokenize_head(texts[i], prefix, static_cast<size_t>(max_length), cancel)
                           : tokenize(texts[i], prefix);
    if (static_cast<int>(toks[i].size()) > max_length) {
      if (!truncate) {
        throw std::invalid_argument("text at index " + std::to_string(i) + " has " +
                                    std::to_string(toks[i].size()) +
                                    " tokens, more than max_length=" + std::to_string(max_length) +
                                    " (pass truncate=True to cut it on the right)");
      }
      toks[i].resize(static_cast<size_t>(max_length));
    }
  }
  return toks;
}

}  // namespace jv4
