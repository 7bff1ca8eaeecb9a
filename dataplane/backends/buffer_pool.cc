#include "dataplane/backends/buffer_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace tunnelagent::dataplane {
namespace {

size_t PageSize() {
  const long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<size_t>(page) : 4096;
}

unsigned RoundUpToPowerOfTwo(unsigned n) {
  unsigned p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

DeviceBufferPool::~DeviceBufferPool() {
  // The kernel holds its own references to the ring's pages while it is registered, so the
  // mapping can go whether or not the io_uring ring is gone yet.
  if (buf_ring_ != nullptr) munmap(buf_ring_, ring_bytes_);
  if (memory_ != nullptr) munmap(memory_, memory_bytes_);
}

bool DeviceBufferPool::Register(io_uring* ring, uint16_t group, unsigned min_buffers,
                                unsigned max_buffers, size_t buffer_bytes, size_t read_offset) {
  if (registered_ || max_buffers == 0 || read_offset >= buffer_bytes) return false;
  const size_t page = PageSize();
  entries_ = RoundUpToPowerOfTwo(std::min(max_buffers, kMaxEntries));
  min_buffers_ = std::clamp(min_buffers, 1u, entries_);
  buffer_bytes_ = buffer_bytes;
  read_offset_ = read_offset;
  stride_ = (buffer_bytes + page - 1) / page * page;
  group_ = group;
  ring_ = ring;

  ring_bytes_ = (entries_ * sizeof(io_uring_buf) + page - 1) / page * page;
  void* mapped =
      mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mapped == MAP_FAILED) return false;
  buf_ring_ = static_cast<io_uring_buf_ring*>(mapped);
  // Address space for every buffer the ring may hold, reserved without backing: a page is
  // resident only once a packet was read into it.
  memory_bytes_ = size_t{entries_} * stride_;
  void* memory = mmap(nullptr, memory_bytes_, PROT_READ | PROT_WRITE,
                      MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) return false;
  memory_ = static_cast<uint8_t*>(memory);

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(buf_ring_);
  reg.ring_entries = entries_;
  reg.bgid = group;
  if (io_uring_register_buf_ring(ring, &reg, 0) != 0) return false;  // an older kernel
  registered_ = true;
  io_uring_buf_ring_init(buf_ring_);
  // Spare ids are taken from the back: the lowest first, so the buffers used stay together.
  spare_.reserve(entries_);
  for (unsigned id = entries_; id-- > min_buffers_;) spare_.push_back(static_cast<uint16_t>(id));
  for (unsigned id = 0; id < min_buffers_; ++id) Provide(static_cast<uint16_t>(id));
  target_ = min_buffers_;
  return true;
}

void DeviceBufferPool::Provide(uint16_t id) {
  io_uring_buf_ring_add(buf_ring_, buffer(id) + read_offset_,
                        static_cast<unsigned>(stride_ - read_offset_), id,
                        io_uring_buf_ring_mask(entries_), 0);
  io_uring_buf_ring_advance(buf_ring_, 1);
  ++stats_.provided;
  stats_.high_water = std::max(stats_.high_water, stats_.provided + stats_.in_use);
}

void DeviceBufferPool::Took(uint16_t id) {
  (void)id;
  --stats_.provided;
  ++stats_.in_use;
  period_peak_ = std::max(period_peak_, stats_.in_use);
}

bool DeviceBufferPool::Recycle(uint16_t id) {
  --stats_.in_use;
  if (stats_.in_use + stats_.provided >= target_) {
    // More out than the traffic needs: the buffer rests, and its pages with it. MADV_DONTNEED
    // on private anonymous memory: the next read into it finds zeroed pages, faulted in anew.
    madvise(buffer(id), stride_, MADV_DONTNEED);
    spare_.push_back(id);
    ++stats_.shrunk;
    return false;
  }
  Provide(id);
  return true;
}

unsigned DeviceBufferPool::Grow() {
  const unsigned out = stats_.in_use + stats_.provided;
  const unsigned add = std::min<unsigned>(std::max(out, 1u), static_cast<unsigned>(spare_.size()));
  for (unsigned i = 0; i < add; ++i) {
    Provide(spare_.back());
    spare_.pop_back();
  }
  if (add > 0) ++stats_.grown;
  // What was just needed is kept at least until the period's end says otherwise.
  target_ = std::max(target_, out + add);
  return add;
}

void DeviceBufferPool::Tick(absl::Time now) {
  if (now < period_end_) return;
  period_end_ = now + kShrinkPeriod;
  target_ = std::max(min_buffers_, std::min(entries_, 2 * period_peak_));
  period_peak_ = stats_.in_use;
}

}  // namespace tunnelagent::dataplane
