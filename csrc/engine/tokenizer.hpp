// Text to token ids, as the reference tokenizes: llama.cpp's tokenizer over
// the model's vocabulary (special-token text parsed, BOS/EOS only where the
// file asks for them), the jina-v4 prefix in front, and truncation that
// tokenizes only the kept head of a long text (truncation.hpp). Callers
// normalise text first (normalization()). Read-only after construction:
// safe from many threads at once.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

struct llama_vocab;

namespace jv4 {

class Tokenizer {
 public:
  // `pre`: the vocabulary's pre-tokenizer (tokenizer.ggml.pre); add_special:
  // BOS/EOS as the file asks (false for jina-v4, whose reference adds none).
  Tokenizer(const llama_vocab* vocab, const std::string& pre, bool add_special);

  // Unicode normalisation the reference tokenizer applies first ("NFC" for
  // Qwen2's vocabulary, "" for none).
  const std::string& normalization() const { return normalization_; }
  // Whether tokenize_head cuts long texts at proven piece boundaries (Qwen2's
  // pre-tokenizer, and no special token that could run into a cut).
  bool head_cut() const { return head_cut_; }

  // Token ids of prefix + text.
  std::vector<int32_t> tokenize(std::string_view text, const std::string& prefix) const;
  // The first `limit` tokens of prefix + text: the head of tokenize()'s
  // result, computed from a head of the text where that is provably the same,
  // so a 10 MB text costs what its kept tokens cost. `cancel` is polled
  // between the heads it tries.
  std::vector<int32_t> tokenize_head(std::string_view text, const std::string& prefix, size_t limit,
                                     const std::atomic<bool>* cancel = nullptr) const;
  // A call's texts: each cut to max_length tokens (truncate), or
  // std::invalid_argument naming the first longer one.
  std::vector<std::vector<int32_t>> tokenize_all(const std::vector<std::string_view>& texts, const std::string& prefix,
                                                 bool truncate, int max_length, const std::atomic<bool>* cancel) const;

 private:
  const llama_vocab* vocab_;
  bool add_special_;
  std::string normalization_;
  bool head_cut_ = false;
  std::vector<uint32_t> reserved_;  // code points of special tokens, sorted
};

}  // namespace jv4
