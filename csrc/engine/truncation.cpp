#include "engine/truncation.hpp"

#include <algorithm>

#include "unicode.h"  // llama.cpp's own code point tables: the ones its regex uses

namespace jv4 {
namespace {

// Decodes the UTF-8 character at `pos` and advances `pos` past it; invalid
// bytes (the bindings only pass valid text) decode as one U+FFFD each.
uint32_t next_cpt(std::string_view s, size_t& pos) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(pos);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || pos + static_cast<size_t>(len) > s.size()) {
    ++pos;
    return 0xFFFD;
  }
  uint32_t cpt = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int i = 1; i < len; ++i) {
    if ((b(pos + i) & 0xC0) != 0x80) {
      ++pos;
      return 0xFFFD;
    }
    cpt = (cpt << 6) | (b(pos + i) & 0x3F);
  }
  pos += static_cast<size_t>(len);
  return cpt;
}

}  // namespace

std::vector<uint32_t> code_points(std::string_view text) {
  std::vector<uint32_t> out;
  for (size_t pos = 0; pos < text.size();) out.push_back(next_cpt(text, pos));
  return out;
}

size_t utf8_floor(std::string_view text, size_t pos) {
  if (pos >= text.size()) return text.size();
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

size_t find_piece_boundary(std::string_view text, size_t from, size_t to,
                           const std::vector<uint32_t>& reserved) {
  to = std::min(to, text.size());
  size_t pos = utf8_floor(text, from);
  bool prev_word = false;  // the character before `pos` is \p{L} or \p{N}
  bool have_prev = false;
  while (pos < to) {
    const size_t at = pos;
    const uint32_t cpt = next_cpt(text, pos);
    const unicode_cpt_flags f = unicode_cpt_flags_from_cpt(cpt);
    const bool word = f.is_letter || f.is_number;
    if (have_prev && prev_word && !word && !std::binary_search(reserved.begin(), reserved.end(), cpt)) {
      return at;
    }
    prev_word = word;
    have_prev = true;
  }
  return std::string_view::npos;
}

}  // namespace jv4
