// Device read buffers shared by every tunnel of one io_uring worker, sized by traffic rather
// than by the number of tunnels.
//
// The buffers sit in a kernel provided-buffer ring. A device read is submitted without a
// buffer (IOSQE_BUFFER_SELECT): while the device is empty the read waits in the kernel's poll
// and holds none, and the kernel takes one from the ring only when a packet is there to copy.
// So an idle tunnel pins no packet memory, however many reads it keeps in flight, and what is
// resident follows the packets in flight, not the tunnels.
//
// The ring starts with a few buffers and grows (doubling, up to its size) when a read finds it
// empty; it shrinks back by holding buffers back as they return once the traffic of the last
// period needed fewer, and the pages of a held-back buffer go back to the kernel. Every buffer
// has its own pages (their size rounded up to a page), so giving one back touches no other.
//
// Owned and used by one worker's thread only.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_BUFFER_POOL_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_BUFFER_POOL_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace tunnelagent::dataplane {

class DeviceBufferPool {
 public:
  // The largest ring the kernel takes (its entries are 16-bit buffer ids).
  static constexpr unsigned kMaxEntries = 32768;
  // How long the traffic is watched before the target the ring shrinks to follows it.
  static constexpr absl::Duration kShrinkPeriod = absl::Seconds(1);

  struct Stats {
    unsigned in_use = 0;      // taken by a completed read, not yet given back
    unsigned provided = 0;    // in the ring, for reads to take
    unsigned high_water = 0;  // the most ever in use and in the ring at once
    uint64_t grown = 0;       // times the ring found empty was given more buffers
    uint64_t shrunk = 0;      // buffers held back, their pages given back to the kernel
  };

  DeviceBufferPool() = default;
  ~DeviceBufferPool();
  DeviceBufferPool(const DeviceBufferPool&) = delete;
  DeviceBufferPool& operator=(const DeviceBufferPool&) = delete;

  // Registers a ring of `max_buffers` entries (rounded up to a power of two, at most
  // kMaxEntries) in buffer group `group`, `min_buffers` of them provided from the start. Each
  // buffer has `buffer_bytes`; reads land `read_offset` into it and may fill the rest. False
  // when the kernel has no provided-buffer rings (before Linux 5.19) or the memory cannot be
  // mapped: the caller keeps buffers of its own.
  bool Register(io_uring* ring, uint16_t group, unsigned min_buffers, unsigned max_buffers,
                size_t buffer_bytes, size_t read_offset);

  uint16_t group() const { return group_; }
  size_t buffer_bytes() const { return buffer_bytes_; }
  size_t read_offset() const { return read_offset_; }
  // The start of buffer `id`; the read's data is read_offset() into it.
  uint8_t* buffer(uint16_t id) const { return memory_ + size_t{id} * stride_; }
  // Whether `id` is one of this pool's buffers (a completion's buffer id is checked before use).
  bool Owns(uint16_t id) const { return id < entries_; }

  // A read completed into buffer `id` (IORING_CQE_F_BUFFER): it is the reader's until Recycle.
  void Took(uint16_t id);
  // Buffer `id` comes back: into the ring, or held back (its pages given to the kernel) when
  // more buffers are out than the target. True when it went into the ring.
  bool Recycle(uint16_t id);
  // A read found the ring empty: the ring gets as many buffers again as it had, up to its
  // size. Returns how many were added (0: at the cap, the read waits for one to come back).
  unsigned Grow();
  // Housekeeping: once a period, the target follows twice the most buffers in use during it
  // (never below the starting count).
  void Tick(absl::Time now);

  const Stats& stats() const { return stats_; }
  unsigned min_buffers() const { return min_buffers_; }
  unsigned entries() const { return entries_; }

 private:
  void Provide(uint16_t id);

  io_uring* ring_ = nullptr;
  io_uring_buf_ring* buf_ring_ = nullptr;
  size_t ring_bytes_ = 0;
  uint8_t* memory_ = nullptr;  // entries_ buffers of stride_ bytes, mapped without reserve
  size_t memory_bytes_ = 0;
  size_t stride_ = 0;
  size_t buffer_bytes_ = 0;
  size_t read_offset_ = 0;
  uint16_t group_ = 0;
  bool registered_ = false;
  unsigned entries_ = 0;
  unsigned min_buffers_ = 0;
  unsigned target_ = 0;       // in use + provided that recycling aims at
  unsigned period_peak_ = 0;  // most in use during the current period
  absl::Time period_end_ = absl::InfinitePast();
  std::vector<uint16_t> spare_;  // neither in the ring nor in use: no resident pages
  Stats stats_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_BUFFER_POOL_H_
