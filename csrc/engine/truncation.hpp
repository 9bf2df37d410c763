// Truncation without tokenizing what is thrown away.
//
// embed() keeps the first max_length tokens of a text. Tokenizing a 10 MB
// text to keep 512 tokens took 17 s; these helpers let the engine tokenize a
// head of the text instead, cut where the result is provably the same as the
// head of the whole text's tokens.
//
// Why a cut can be exact: a byte-level BPE tokenizer first splits the text
// into pieces with its pre-tokenizer regex and then merges within each piece
// only, so the tokens of every piece that ends before the cut do not depend
// on the text after it. For Qwen2's regex
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
//   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// a piece ends between a letter or digit and a following character that is
// neither: no alternative runs from \p{L}/\p{N} into such a character (a
// letter run stops at the first non-letter, digits are single pieces), and
// the one lookahead, (?!\S) after whitespace, never looks past a letter. The
// special-token pass (parse_special) runs first; a cut at a character that
// occurs in no special token cannot split one. Pure functions: no llama.cpp
// state, testable alone.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace jv4 {

// The code points of UTF-8 text; an invalid byte reads as one U+FFFD.
std::vector<uint32_t> code_points(std::string_view text);

// The largest UTF-8 character boundary <= pos in `text` (pos > size: size).
size_t utf8_floor(std::string_view text, size_t pos);

// The first byte offset P in [from, to) at which Qwen2's pre-tokenizer surely
// starts a new piece: the character before P is a letter or digit (\p{L},
// \p{N}), the one at P is neither and is not in `reserved` (the code points
// of the vocabulary's special tokens, sorted). std::string_view::npos if none.
size_t find_piece_boundary(std::string_view text, size_t from, size_t to,
                           const std::vector<uint32_t>& reserved);

}  // namespace jv4
