// The peers of one multipoint tunnel on one worker: the table the packet path looks them up in
// (by inner destination on send, by outer source on receive), the handles that name a peer to
// the completion of a send in flight, and the schedule of their housekeeping.
//
// A send in flight (an io_uring sendmsg) names its peer by handle, never by pointer: a peer
// removed before the send completes is simply not found (its slot's generation moved on), so
// nothing points at freed peer state. The destination address the send uses is the backend's
// own copy (EncapResult::destination is copied into the transmit buffer).
//
// Housekeeping visits only the peers that are due (HousekeepingSchedule by handle): an idle
// peer without keepalives is not due at all, so a tick costs nothing for thousands of them.
//
// Owned and used by the worker's thread only; lookups allocate nothing and take no lock.
#ifndef TUNNELAGENT_DATAPLANE_CORE_MULTIPOINT_PEERS_H_
#define TUNNELAGENT_DATAPLANE_CORE_MULTIPOINT_PEERS_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dataplane/core/housekeeping_schedule.h"
#include "dataplane/core/peer_path.h"
#include "dataplane/core/peer_table.h"

namespace tunnelagent::dataplane {

class MultipointPeers {
 public:
  const BasicPeerTable<PeerPath>& table() const { return table_; }
  size_t size() const { return table_.size(); }

  // Adds `path` (a new id) or puts it in the place of the peer of its id, with `allowed`; the
  // handle is assigned here (kept on a replacement). As BasicPeerTable::Add and Replace: a
  // refusal changes nothing.
  absl::Status Upsert(PeerPath path, AllowedPrefixes allowed) {
    if (PeerPath* old = table_.Find(path.id); old != nullptr) {
      path.handle = old->handle;
      return table_.Replace(path, std::move(allowed));
    }
    uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.push_back({});
    }
    path.handle = Handle(slot, slots_[slot].generation);
    if (absl::Status status = table_.Add(path, std::move(allowed)); !status.ok()) {
      free_.push_back(slot);
      return status;
    }
    slots_[slot].path = table_.Find(path.id);
    return absl::OkStatus();
  }

  void ShrinkToFit() { table_.ShrinkToFit(); }

  // False when there was no such peer. Its handle finds nothing from here on.
  bool Remove(uint32_t id) {
    PeerPath* path = table_.Find(id);
    if (path == nullptr) return false;
    const uint32_t slot = SlotOf(path->handle);
    slots_[slot].path = nullptr;
    ++slots_[slot].generation;
    free_.push_back(slot);
    return table_.Remove(id).ok();
  }

  // The peer a send in flight was prepared for; null when it has gone since.
  PeerPath* ByHandle(uint64_t handle) const {
    const uint32_t slot = SlotOf(handle);
    if (slot >= slots_.size()) return nullptr;
    const Slot& s = slots_[slot];
    return s.generation == GenerationOf(handle) ? s.path : nullptr;
  }

  // `path` is due for housekeeping at `when` (its next_tick). A peer due never (idle, no
  // keepalive) has no entry: nothing in the schedule waits for it.
  void Schedule(PeerPath& path, absl::Time when) {
    path.next_tick = when;
    schedule_.Schedule(path.handle, when);
  }
  // Calls `tick(PeerPath&)` for each peer due at `now` (entries of peers gone, or whose time
  // has moved, are dropped); `tick` returns when that peer is next due.
  template <typename Tick>
  void TickDue(absl::Time now, Tick&& tick) {
    schedule_.TakeDue(now, due_);
    for (const HousekeepingSchedule::Entry& entry : due_) {
      PeerPath* path = ByHandle(entry.tunnel);
      if (path == nullptr || entry.when != path->next_tick) continue;
      Schedule(*path, tick(*path));
    }
  }
  // When the earliest peer is due; InfiniteFuture when none is.
  absl::Time next_due() const { return schedule_.next(); }

 private:
  struct Slot {
    PeerPath* path = nullptr;
    uint32_t generation = 1;  // never 0, so that no handle is 0
  };
  static uint64_t Handle(uint32_t slot, uint32_t generation) {
    return uint64_t{generation} << 32 | slot;
  }
  static uint32_t SlotOf(uint64_t handle) { return static_cast<uint32_t>(handle); }
  static uint32_t GenerationOf(uint64_t handle) { return static_cast<uint32_t>(handle >> 32); }

  BasicPeerTable<PeerPath> table_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  HousekeepingSchedule schedule_;
  std::vector<HousekeepingSchedule::Entry> due_;  // kept: a tick allocates nothing once warm
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_MULTIPOINT_PEERS_H_
