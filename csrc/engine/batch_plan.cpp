#include "engine/batch_plan.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace jv4 {

Plan plan_decodes(const std::vector<size_t>& n_tokens, int batch_tokens, int max_seqs) {
  if (batch_tokens < 1 || max_seqs < 1) {
    throw std::invalid_argument("plan_decodes: batch_tokens and max_seqs must be >= 1 (got " +
                                std::to_string(batch_tokens) + ", " + std::to_string(max_seqs) + ")");
  }
  Plan plan;
  const size_t n = n_tokens.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  // longest first: a context that must grow grows once, at the start
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return n_tokens[a] > n_tokens[b]; });
  if (n > 0) plan.longest = static_cast<int>(n_tokens[order[0]]);
  const size_t B = static_cast<size_t>(batch_tokens);

  size_t i = 0;
  while (i < n) {
    const size_t text = order[i];
    const size_t len = n_tokens[text];
    if (len == 0) {
      plan.empty.push_back(text);
      ++i;
      continue;
    }
    if (len > B) {  // alone, in chunks against the KV cache
      for (size_t start = 0; start < len; start += B) {
        const size_t end = std::min(len, start + B);
        Decode d;
        d.clear = start == 0;
        d.spans.push_back({text, 0, static_cast<int>(start), static_cast<int>(end), end == len});
        plan.decodes.push_back(std::move(d));
      }
      ++i;
      continue;
    }
    Decode d;  // several whole texts, one sequence each
    size_t used = 0;
    while (i < n && d.spans.size() < static_cast<size_t>(max_seqs)) {
      const size_t t = order[i];
      const size_t l = n_tokens[t];
      if (l == 0 || used + l > B) break;
      d.spans.push_back({t, static_cast<int>(d.spans.size()), 0, static_cast<int>(l), true});
      used += l;
      ++i;
    }
    plan.decodes.push_back(std::move(d));
  }
  return plan;
}

Plan plan_segmented(const std::vector<std::vector<size_t>>& segments, int batch_tokens) {
  if (batch_tokens < 1) {
    throw std::invalid_argument("plan_segmented: batch_tokens must be >= 1 (got " + std::to_string(batch_tokens) + ")");
  }
  Plan plan;
  const size_t B = static_cast<size_t>(batch_tokens);
  for (size_t seq = 0; seq < segments.size(); ++seq) {
    const size_t len = std::accumulate(segments[seq].begin(), segments[seq].end(), size_t{0});
    plan.longest = std::max(plan.longest, static_cast<int>(len));
    if (len == 0) {
      plan.empty.push_back(seq);
      continue;
    }
    bool first = true;
    size_t at = 0;  // the segment's first position
    for (size_t n : segments[seq]) {
      for (size_t start = 0; start < n; start += B) {
        const size_t end = std::min(n, start + B);
        Decode d;
        d.clear = first;
        first = false;
        d.spans.push_back({seq, 0, static_cast<int>(at + start), static_cast<int>(at + end), at + end == len});
        plan.decodes.push_back(std::move(d));
      }
      at += n;
    }
  }
  return plan;
}

}  // namespace jv4
