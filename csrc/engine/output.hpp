// The output stage: from per-token hidden states to what embed() returns.
// Pure arithmetic on arrays (no llama.cpp), so it can be tested alone:
// pooling (mean / first / last token), L2 normalisation, Matryoshka
// truncation, and per-token (multi-vector) output through a projector.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace jv4 {

enum class Pooling { Mean, Cls, Last };

// "mean", "cls", "last"; std::invalid_argument otherwise.
Pooling parse_pooling(const std::string& name);
const char* pooling_name(Pooling p);

// Whether the token at `pos` of a text of `len` tokens feeds its pooled vector.
bool pooled_token(Pooling p, int pos, int len);

// acc[k] += hidden[k] for k < n (accumulated in double).
void accumulate_row(double* acc, const float* hidden, int n);

// The pooled vector of one text from the sum `acc` of its pooled tokens'
// hidden states (n_embd wide): mean (or the one token), L2-normalise, keep the
// first `dim` values and normalise again (Matryoshka); written to out[dim].
// A text of no tokens gives zeros. std::runtime_error naming `index` when the
// values are not finite (damaged weights): never a NaN vector.
void finish_pooled(const double* acc, int n_embd, size_t n_pooled, Pooling p, int dim, float* out,
                   size_t index);

// A linear map applied to every token: jina-v4's multi-vector projector,
// weight row-major (n_out x n_in), bias n_out.
struct Projector {
  int n_in = 0;
  int n_out = 0;
  std::vector<float> weight;
  std::vector<float> bias;
};

// out[n_out] = normalise(weight * hidden + bias); std::runtime_error naming
// `index` (the text) when the result is not finite.
void project_token(const Projector& p, const float* hidden, float* out, size_t index);

}  // namespace jv4
