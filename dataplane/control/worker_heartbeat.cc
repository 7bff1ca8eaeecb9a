#include "dataplane/control/worker_heartbeat.h"

#include <time.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tunnelagent::dataplane {
namespace {

int64_t MonotonicNanos() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

}  // namespace

// Alive from the start: the thread beats from its first time round the loop.
WorkerHeartbeat::WorkerHeartbeat(unsigned worker)
    : worker_(worker), last_beat_nanos_(MonotonicNanos()) {}

void WorkerHeartbeat::Stopped(std::string why) {
  absl::MutexLock lock(&mu_);
  why_ = std::move(why);
  stopped_.store(true, std::memory_order_release);
}

absl::Status WorkerHeartbeat::Health(absl::Duration stall) const {
  if (stopped_.load(std::memory_order_acquire)) {
    absl::MutexLock lock(&mu_);
    return absl::UnavailableError(absl::StrCat("dataplane worker ", worker_, " stopped: ", why_));
  }
  // The beat is the coarse clock (up to a tick behind this one): a worker can look a tick
  // older than it is, never younger.
  const absl::Duration idle =
      absl::Nanoseconds(MonotonicNanos() - last_beat_nanos_.load(std::memory_order_relaxed));
  if (idle > stall) {
    return absl::UnavailableError(
        absl::StrFormat("dataplane worker %u (thread dataplane-%u) has not run for %.1f s", worker_,
                        worker_ % 100000, absl::ToDoubleSeconds(idle)));
  }
  return absl::OkStatus();
}

}  // namespace tunnelagent::dataplane
