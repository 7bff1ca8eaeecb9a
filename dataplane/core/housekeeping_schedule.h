// When each tunnel's housekeeping (keepalives, path MTU refresh, sequence marks) is next due,
// so that a worker's tick visits the tunnels that are due instead of all of them: with 10,000
// tunnels, mostly idle, a tick every 50 ms walking every one of them costs the packet path a
// share of its CPU that grows with the number of tunnels.
//
// A min-heap of (time, tunnel id). A tunnel whose time moves is scheduled again and its old
// entry stays behind: the caller drops entries whose time is no longer the tunnel's, and those
// of tunnels that are gone. A tunnel has at most one entry more than it has times set, and the
// time is only ever brought forward once between two of its ticks, so the heap stays within a
// small multiple of the number of tunnels.
#ifndef TUNNELAGENT_DATAPLANE_CORE_HOUSEKEEPING_SCHEDULE_H_
#define TUNNELAGENT_DATAPLANE_CORE_HOUSEKEEPING_SCHEDULE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace tunnelagent::dataplane {

class HousekeepingSchedule {
 public:
  struct Entry {
    absl::Time when;
    uint64_t tunnel = 0;
  };

  // Nothing is kept for a time that never comes (InfiniteFuture): a tunnel with nothing to do
  // until its traffic asks for it leaves no entry behind each time it goes idle.
  void Schedule(uint64_t tunnel, absl::Time when) {
    if (when == absl::InfiniteFuture()) return;
    heap_.push_back({when, tunnel});
    std::push_heap(heap_.begin(), heap_.end(), Later);
  }

  // Takes out every entry due at `now` (when <= now), earliest first, into `due` (cleared
  // first; the caller keeps it, so that a tick allocates nothing once warm). What is
  // scheduled while the caller goes through them waits for the next call.
  void TakeDue(absl::Time now, std::vector<Entry>& due) {
    due.clear();
    while (!heap_.empty() && heap_.front().when <= now) {
      std::pop_heap(heap_.begin(), heap_.end(), Later);
      due.push_back(heap_.back());
      heap_.pop_back();
    }
  }

  // When the earliest entry is due; InfiniteFuture when there is none.
  absl::Time next() const { return heap_.empty() ? absl::InfiniteFuture() : heap_.front().when; }

  void Clear() { heap_.clear(); }
  size_t size() const { return heap_.size(); }

 private:
  // std::push_heap keeps the largest first: "larger" here is the earlier time.
  static bool Later(const Entry& a, const Entry& b) { return a.when > b.when; }

  std::vector<Entry> heap_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_HOUSEKEEPING_SCHEDULE_H_
