#include "engine/scheduler.hpp"

#include <algorithm>
#include <stdexcept>

#include "engine/errors.hpp"

namespace jv4 {

Scheduler::Scheduler(Runner runner, Limits limits) : runner_(std::move(runner)), limits_(limits) {
  if (limits_.batch_tokens < 1 || limits_.max_seqs < 1) {
    throw std::invalid_argument("Scheduler: batch_tokens and max_seqs must be >= 1");
  }
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  queued_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::run(Job& job) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stop_) throw std::runtime_error("the model is being closed");
  job.queued_at = std::chrono::steady_clock::now();
  job.running = job.done = false;
  queue_.push_back(&job);
  queued_cv_.notify_all();
  while (!job.done) {
    done_cv_.wait_for(lock, std::chrono::milliseconds(20));
    if (!job.done && !job.running && job.cancel != nullptr && job.cancel->load()) {
      // still queued: withdraw it
      queue_.erase(std::find(queue_.begin(), queue_.end(), &job));
      queued_cv_.notify_all();
      throw Cancelled();
    }
  }
  lock.unlock();
  if (job.error) std::rethrow_exception(job.error);
}

std::vector<QueuedCall> Scheduler::shapes() const {
  std::vector<QueuedCall> out;
  out.reserve(queue_.size());
  for (const Job* j : queue_) out.push_back(j->shape);
  return out;
}

ComputeStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Scheduler::loop() {
  const int tokens = limits_.batch_tokens, seqs = limits_.max_seqs;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    queued_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    if (limits_.coalesce && limits_.batch_wait_ms > 0 && !stop_) {
      // the oldest call waits (from when it was queued) for others to join
      const auto deadline = queue_.front()->queued_at +
                            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                std::chrono::duration<double, std::milli>(limits_.batch_wait_ms));
      while (!stop_ && !queue_.empty() && std::chrono::steady_clock::now() < deadline &&
             group_has_room(shapes(), tokens, seqs)) {
        queued_cv_.wait_until(lock, deadline);
      }
      if (queue_.empty()) continue;  // withdrawn while waiting
    }
    const std::vector<size_t> picked = pick_group(shapes(), tokens, seqs, limits_.coalesce);
    std::vector<Job*> group;
    for (size_t i : picked) group.push_back(queue_[i]);
    for (auto it = picked.rbegin(); it != picked.rend(); ++it) {
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));
    }
    const auto started = std::chrono::steady_clock::now();
    for (Job* j : group) {
      j->running = true;
      stats_.queue_seconds += std::chrono::duration<double>(started - j->queued_at).count();
    }
    lock.unlock();
    try {
      runner_(group);
    } catch (...) {
      for (Job* j : group) {
        if (!j->error) j->error = std::current_exception();
      }
    }
    const auto ended = std::chrono::steady_clock::now();
    lock.lock();
    stats_.calls += group.size();
    stats_.groups += 1;
    for (const Job* j : group) {
      (j->shape.text ? stats_.texts : stats_.images) += j->shape.n_texts;
      stats_.tokens += j->shape.n_tokens;
    }
    stats_.compute_seconds += std::chrono::duration<double>(ended - started).count();
    size_t bucket = 0;
    while (bucket < std::size(ComputeStats::kGroupSizeBounds) &&
           group.size() > static_cast<size_t>(ComputeStats::kGroupSizeBounds[bucket])) {
      ++bucket;
    }
    stats_.group_sizes[bucket] += 1;
    for (Job* j : group) j->done = true;
    done_cv_.notify_all();
  }
}

}  // namespace jv4
