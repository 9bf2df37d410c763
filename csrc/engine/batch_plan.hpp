// The batch planner: which tokens of which texts go into each decode.
// Pure (token counts in, a plan out; no llama.cpp), so it can be tested alone.
//
// Texts are taken longest first (stable, so equal lengths keep input order)
// and packed into decodes of at most `batch_tokens` tokens and `max_seqs`
// texts. A text longer than `batch_tokens` is decoded alone in chunks that
// attend to the earlier chunks through the KV cache. Every span remembers the
// text's index in the caller's order, so outputs land where they belong.
#pragma once
#include <cstddef>
#include <vector>

namespace jv4 {

struct Span {
  size_t text = 0;   // index of the text in the caller's order
  int seq = 0;       // sequence id inside the decode (0 .. max_seqs-1)
  int begin = 0;     // first token of the text in this decode
  int end = 0;       // one past the last
  bool last = false; // the text's final tokens: its outputs can be finished
};

struct Decode {
  bool clear = true;        // clear the KV cache before this decode
  std::vector<Span> spans;  // in the order their tokens are laid out
  int n_tokens() const {
    int n = 0;
    for (const Span& s : spans) n += s.end - s.begin;
    return n;
  }
};

struct Plan {
  std::vector<size_t> empty;     // texts with no token: nothing to decode
  std::vector<Decode> decodes;
  int longest = 0;               // most tokens of one text (sizes the context)
};

// std::invalid_argument when batch_tokens < 1 or max_seqs < 1.
Plan plan_decodes(const std::vector<size_t>& n_tokens, int batch_tokens, int max_seqs);

// The plan of sequences made of segments that cannot share a decode (an
// image prompt: text tokens, the image's embedding rows, text tokens): each
// sequence alone, in input order, the cache cleared before it; each segment
// in chunks of at most `batch_tokens`, so no decode crosses a segment's
// boundary. segments[i]: the lengths of sequence i's segments; spans count
// positions from the sequence's start. std::invalid_argument when
// batch_tokens < 1.
Plan plan_segmented(const std::vector<std::vector<size_t>>& segments, int batch_tokens);

}  // namespace jv4
