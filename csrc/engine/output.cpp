#include "engine/output.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace jv4 {
namespace {

[[noreturn]] void non_finite(size_t index) {
  // NaN/inf weights (a damaged download) or metadata that make the forward
  // pass diverge: an error, never a silent NaN vector
  throw std::runtime_error("the model computed non-finite values (NaN or infinity) for the text at index " +
                           std::to_string(index) + "; the model file's weights or metadata are damaged");
}

}  // namespace

Pooling parse_pooling(const std::string& name) {
  if (name == "mean") return Pooling::Mean;
  if (name == "cls") return Pooling::Cls;
  if (name == "last") return Pooling::Last;
  throw std::invalid_argument("pooling must be one of 'mean', 'cls', 'last' (got '" + name + "')");
}

const char* pooling_name(Pooling p) {
  switch (p) {
    case Pooling::Mean: return "mean";
    case Pooling::Cls: return "cls";
    case Pooling::Last: return "last";
  }
  return "mean";
}

bool pooled_token(Pooling p, int pos, int len) {
  switch (p) {
    case Pooling::Mean: return true;
    case Pooling::Cls: return pos == 0;
    case Pooling::Last: return pos == len - 1;
  }
  return true;
}

void accumulate_row(double* acc, const float* hidden, int n) {
  for (int k = 0; k < n; ++k) acc[k] += hidden[k];
}

void finish_pooled(const double* acc, int n_embd, size_t n_pooled, Pooling p, int dim, float* out,
                   size_t index) {
  if (dim < 1 || dim > n_embd) throw std::invalid_argument("finish_pooled: dim out of range");
  if (n_pooled == 0) {
    std::fill(out, out + dim, 0.0f);
    return;
  }
  // mean (the 1/n factor cancels in the normalisation but is kept for clarity)
  const double scale = p == Pooling::Mean ? 1.0 / static_cast<double>(n_pooled) : 1.0;
  double ss = 0.0;
  for (int k = 0; k < n_embd; ++k) {
    const double v = acc[k] * scale;
    ss += v * v;
  }
  if (!std::isfinite(ss)) non_finite(index);
  const double inv = scale / std::max(std::sqrt(ss), 1e-12);
  double ss2 = 0.0;
  for (int k = 0; k < dim; ++k) {
    const double v = acc[k] * inv;
    ss2 += v * v;
  }
  // Matryoshka: slice the normalised vector, then normalise again
  const double inv2 = dim < n_embd ? inv / std::max(std::sqrt(ss2), 1e-12) : inv;
  for (int k = 0; k < dim; ++k) out[k] = static_cast<float>(acc[k] * inv2);
}

void project_token(const Projector& p, const float* hidden, float* out, size_t index) {
  double ss = 0.0;
  for (int o = 0; o < p.n_out; ++o) {
    const float* w = p.weight.data() + static_cast<size_t>(o) * static_cast<size_t>(p.n_in);
    // 16 independent partial sums: the compiler vectorises this without
    // reassociating the sums (no fast-math needed)
    float part[16] = {0};
    int k = 0;
    for (; k + 16 <= p.n_in; k += 16) {
      for (int j = 0; j < 16; ++j) part[j] += w[k + j] * hidden[k + j];
    }
    float s = 0.0f;
    for (int j = 0; j < 16; ++j) s += part[j];
    for (; k < p.n_in; ++k) s += w[k] * hidden[k];
    s += p.bias[static_cast<size_t>(o)];
    out[o] = s;
    ss += static_cast<double>(s) * s;
  }
  if (!std::isfinite(ss)) non_finite(index);
  const float inv = static_cast<float>(1.0 / std::max(std::sqrt(ss), 1e-12));
  for (int o = 0; o < p.n_out; ++o) out[o] *= inv;
}

}  // namespace jv4
