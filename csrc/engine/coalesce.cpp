#include "engine/coalesce.hpp"

#include <stdexcept>

namespace jv4 {

namespace {

void check(const std::vector<QueuedCall>& queue, int batch_tokens, int max_seqs) {
  if (queue.empty()) throw std::invalid_argument("pick_group: the queue is empty");
  if (batch_tokens < 1 || max_seqs < 1) {
    throw std::invalid_argument("pick_group: batch_tokens and max_seqs must be >= 1");
  }
}

bool fits_alone(const QueuedCall& c, int batch_tokens, int max_seqs) {
  return c.text && c.n_tokens <= static_cast<size_t>(batch_tokens) && c.n_texts <= static_cast<size_t>(max_seqs);
}

}  // namespace

std::vector<size_t> pick_group(const std::vector<QueuedCall>& queue, int batch_tokens, int max_seqs,
                               bool coalesce) {
  check(queue, batch_tokens, max_seqs);
  std::vector<size_t> group{0};
  const QueuedCall& lead = queue[0];
  if (!coalesce || !fits_alone(lead, batch_tokens, max_seqs)) return group;
  size_t tokens = lead.n_tokens, texts = lead.n_texts;
  for (size_t i = 1; i < queue.size(); ++i) {
    const QueuedCall& c = queue[i];
    if (!c.text || c.task != lead.task) continue;
    if (tokens + c.n_tokens > static_cast<size_t>(batch_tokens) || texts + c.n_texts > static_cast<size_t>(max_seqs)) {
      continue;
    }
    tokens += c.n_tokens;
    texts += c.n_texts;
    group.push_back(i);
  }
  return group;
}

bool group_has_room(const std::vector<QueuedCall>& queue, int batch_tokens, int max_seqs) {
  check(queue, batch_tokens, max_seqs);
  if (!fits_alone(queue[0], batch_tokens, max_seqs)) return false;
  size_t tokens = 0, texts = 0;
  for (size_t i : pick_group(queue, batch_tokens, max_seqs)) {
    tokens += queue[i].n_tokens;
    texts += queue[i].n_texts;
  }
  return tokens < static_cast<size_t>(batch_tokens) && texts < static_cast<size_t>(max_seqs);
}

}  // namespace jv4
