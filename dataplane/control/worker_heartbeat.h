// Whether a dataplane worker's thread is running, for PacketEngine::Health.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_WORKER_HEARTBEAT_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_WORKER_HEARTBEAT_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnelagent::dataplane {

// The thread beats every time round its loop (which wakes at least every tick, traffic or
// not) and says why when it ends. Read from any thread: an atomic, and a short lock for the
// reason once the thread has ended.
class WorkerHeartbeat {
 public:
  explicit WorkerHeartbeat(unsigned worker);

  // The worker's thread, with its clock's coarse CLOCK_MONOTONIC reading.
  void Beat(int64_t monotonic_nanos) {
    last_beat_nanos_.store(monotonic_nanos, std::memory_order_relaxed);
  }
  // The worker's thread as it leaves its loop for good.
  void Stopped(std::string why);

  // OK, or UNAVAILABLE: "dataplane worker N stopped: <why>", or "dataplane worker N (thread
  // dataplane-N) has not run for 3.2 s" when the last beat is older than `stall`.
  absl::Status Health(absl::Duration stall) const;

 private:
  const unsigned worker_;
  std::atomic<int64_t> last_beat_nanos_;
  std::atomic<bool> stopped_{false};
  mutable absl::Mutex mu_;
  std::string why_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_WORKER_HEARTBEAT_H_
