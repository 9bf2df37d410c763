// The scheduler: the cross-call queue in front of one model's compute
// thread. Calls from any thread queue oldest first; the compute thread takes
// the oldest and, where coalescing is on, every later call that shares a
// decode with it (pick_group, coalesce.hpp: pure), optionally waiting
// batch_wait_ms for company, and hands the group to the model's runner. A
// caller waits for its call; a call still queued when its cancel flag is set
// is withdrawn (Cancelled) without running. It knows nothing of llama.cpp or
// of what a call computes: tests/test_scheduler.py drives it alone
// (jv4._core._stages.SchedulerProbe).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/coalesce.hpp"

namespace jv4 {

// What the compute thread has done since the model loaded (Model::stats):
// for monitoring (jv4 serve's /metrics) and for tests that check calls
// really shared decodes. A snapshot; counters only grow.
struct ComputeStats {
  uint64_t calls = 0;   // calls run (withdrawn while queued: not counted)
  uint64_t groups = 0;  // runs of the compute thread: a call alone, or calls sharing decodes
  uint64_t texts = 0, tokens = 0, images = 0;
  double queue_seconds = 0;    // summed over calls: queued until their group started
  double compute_seconds = 0;  // summed over groups: the group's run
  // calls per group: group_sizes[i] counts groups of <= kGroupSizeBounds[i]
  // calls and more than the bound before it (the last counts the rest)
  static constexpr int kGroupSizeBounds[] = {1, 2, 4, 8, 16, 32, 64, 128};
  std::vector<uint64_t> group_sizes = std::vector<uint64_t>(std::size(kGroupSizeBounds) + 1, 0);
};

class Scheduler {
 public:
  // A queued call. The runner's own call types derive from it.
  struct Job {
    QueuedCall shape;  // what grouping needs (shape.text: false runs alone; counted as images)
    const std::atomic<bool>* cancel = nullptr;  // polled while queued
    std::exception_ptr error;                   // set by the runner: rethrown to the caller
    virtual ~Job() = default;

   private:
    friend class Scheduler;
    std::chrono::steady_clock::time_point queued_at;
    bool running = false, done = false;
  };
  // Runs a group on the compute thread: group[0] is the oldest; a group of
  // several is text jobs of one task that fit one decode together. Errors go
  // to each job's `error` (an exception escaping goes to every job's).
  using Runner = std::function<void(const std::vector<Job*>& group)>;

  struct Limits {
    int batch_tokens = 1;  // tokens of one decode
    int max_seqs = 1;      // texts of one decode
    bool coalesce = false;
    double batch_wait_ms = 0.0;  // how long the oldest call waits for company
  };

  Scheduler(Runner runner, Limits limits);
  ~Scheduler();  // stop(): the compute thread ends once the queue is empty
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `job` and waits for it: rethrows job.error; Cancelled when its
  // flag is set while it is still queued; std::runtime_error once stopping.
  void run(Job& job);
  ComputeStats stats() const;
  void stop();

 private:
  void loop();
  std::vector<QueuedCall> shapes() const;  // under mu_
  Runner runner_;
  Limits limits_;
  mutable std::mutex mu_;
  std::condition_variable queued_cv_;  // a job queued or withdrawn, or stop
  std::condition_variable done_cv_;    // jobs finished
  std::deque<Job*> queue_;
  bool stop_ = false;
  ComputeStats stats_;
  std::thread thread_;  // last: started once the rest is ready
};

}  // namespace jv4
