// A few threads of the agent's own that run queued work in order, with a bounded queue: work
// that would wait beyond it is refused at once rather than piling up. The API runs its
// changes here, so gRPC's callback threads never wait on the kernel.
#ifndef TUNNELAGENT_AGENT_WORK_QUEUE_H_
#define TUNNELAGENT_AGENT_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tunnelagent::agent {

class BoundedWorkQueue {
 public:
  // `threads` run the work (at least one); at most `max_queued` wait for a thread.
  BoundedWorkQueue(int threads, size_t max_queued);
  BoundedWorkQueue(const BoundedWorkQueue&) = delete;
  BoundedWorkQueue& operator=(const BoundedWorkQueue&) = delete;
  // Runs what is queued, then joins the threads.
  ~BoundedWorkQueue();

  // Queues `work`; false (and `work` dropped unrun) when max_queued already wait.
  bool TrySubmit(std::function<void()> work);

  // Work queued and not yet taken by a thread.
  size_t queued() const;
  size_t max_queued() const { return max_queued_; }

 private:
  void Loop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_WORK_QUEUE_H_
