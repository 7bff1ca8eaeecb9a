#include "agent/work_queue.h"

#include <algorithm>
#include <utility>

namespace tunnelagent::agent {

BoundedWorkQueue::BoundedWorkQueue(int threads, size_t max_queued) : max_queued_(max_queued) {
  threads = std::max(threads, 1);
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

BoundedWorkQueue::~BoundedWorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

bool BoundedWorkQueue::TrySubmit(std::function<void()> work) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= max_queued_) return false;
  queue_.push_back(std::move(work));
  return true;
}

size_t BoundedWorkQueue::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

bool BoundedWorkQueue::HasWorkOrStopping() const { return stopping_ || !queue_.empty(); }

void BoundedWorkQueue::Loop() {
  for (;;) {
    std::function<void()> work;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &BoundedWorkQueue::HasWorkOrStopping));
      // Work already accepted is run even when stopping: each item finishes a call.
      if (queue_.empty()) return;
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

}  // namespace tunnelagent::agent
