// The io_uring backend's ring and what is registered with it: the ring itself (set up on the
// worker's thread with the flags the kernel has), the registered files table (operations name
// a file by index, so the kernel does not look the descriptor up for each), and the
// provided-buffer rings of multishot receives.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_URING_RING_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_URING_RING_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "dataplane/core/receive.h"

namespace tunnelagent::dataplane {

class UringRing {
 public:
  UringRing() = default;
  ~UringRing() { Exit(); }
  UringRing(const UringRing&) = delete;
  UringRing& operator=(const UringRing&) = delete;

  // Sets up the ring on the thread that will submit to it: SINGLE_ISSUER and DEFER_TASKRUN
  // (completion work runs when this thread waits, not as interrupts) where the kernel has
  // them, plainer setups where it does not. Then checks every operation the backend submits
  // is known to the kernel: an old kernel or a filter that knows fewer is a reason to fall
  // back, not to fail later.
  absl::Status SetUp(unsigned entries);
  // The ring's queue_exit (idempotent); nothing may be submitted after.
  void Exit();
  io_uring* get() { return &ring_; }

  // The next submission entry; hands what is queued to the kernel when the queue is full.
  io_uring_sqe* NextSqe();

  // Registered files: a sparse table as large as RLIMIT_NOFILE allows (up to 8192); without
  // one (before Linux 5.19) every operation names its descriptor.
  void RegisterFileTable();
  // The index `fd` is registered at, or -1 when there is no room (the operation then names
  // the descriptor itself).
  int RegisterFile(int fd);
  void UnregisterFile(int index);
  // After io_uring_prep_*(sqe, fd, ...): the same operation on registered file `index`.
  static void UseFile(io_uring_sqe* sqe, int index) {
    if (index < 0) return;
    sqe->fd = index;
    sqe->flags |= IOSQE_FIXED_FILE;
  }

 private:
  static constexpr unsigned kFixedFileSlots = 8192;
  io_uring ring_{};
  bool live_ = false;
  std::vector<int> free_files_;
};

// The buffers a multishot receive on one socket lands in: a provided-buffer ring the worker
// refills (registered by hand: liburing 2.3 has no io_uring_setup_buf_ring).
class ProvidedBuffers {
 public:
  ~ProvidedBuffers();
  // False when the kernel has no provided-buffer rings (before 5.19): the socket keeps its
  // receives in flight one by one.
  bool Register(io_uring* ring, uint16_t group, unsigned entries, size_t buffer_bytes);
  uint16_t group() const { return group_; }
  unsigned entries() const { return entries_; }
  size_t buffer_bytes() const { return buffer_bytes_; }
  // A buffer's packet room, with kReceiveHeadroom free before it.
  uint8_t* buffer(uint16_t id) const {
    return memory_.get() + size_t{id} * (kReceiveHeadroom + buffer_bytes_) + kReceiveHeadroom;
  }
  // Gives buffer `id` back to the kernel.
  void Recycle(uint16_t id);

 private:
  io_uring_buf_ring* ring_ = nullptr;
  size_t ring_bytes_ = 0;
  uint16_t group_ = 0;
  unsigned entries_ = 0;
  size_t buffer_bytes_ = 0;
  std::unique_ptr<uint8_t[]> memory_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_URING_RING_H_
