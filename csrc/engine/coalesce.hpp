// Cross-call batching, the pure part: which waiting embed() calls share the
// next decodes. Concurrent calls on one Model queue up (oldest first); the
// model's compute thread takes the oldest and, with it, every later call of
// the same task that still fits one decode beside it, and runs them as one
// call of today's planner (batch_plan.hpp). A call that alone needs more than
// one decode (long texts, big lists) runs alone, as it always did.
//
// Pure (sizes in, indices out), so it can be tested alone.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace jv4 {

struct QueuedCall {
  bool text = true;    // a text call (images and calibration run alone)
  std::string task;    // the adapter its decodes need ("" without tasks)
  size_t n_tokens = 0; // all its texts' tokens
  size_t n_texts = 0;
};

// Indices into `queue` (oldest first) of the calls that run next: always
// queue[0]; then, in queue order, each later text call of queue[0]'s task
// while the group's tokens stay <= batch_tokens and its texts <= max_seqs.
// Calls that do not fit are skipped, not waited for: a later, smaller one
// may still join. With coalesce=false, or when queue[0] alone exceeds a
// decode or is not a text call, the group is queue[0] alone.
// std::invalid_argument for an empty queue or limits < 1.
std::vector<size_t> pick_group(const std::vector<QueuedCall>& queue, int batch_tokens, int max_seqs,
                               bool coalesce = true);

// Whether the oldest call should wait for company: only a text call that
// fits a decode with room to spare, and only while the group pick_group
// would form is not yet full (tokens or texts at the limit).
bool group_has_room(const std::vector<QueuedCall>& queue, int batch_tokens, int max_seqs);

}  // namespace jv4
