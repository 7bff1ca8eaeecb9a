#include "dataplane/backends/uring_ring.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {

absl::Status UringRing::SetUp(unsigned entries) {
  const unsigned preferred[] = {
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int ret = -EINVAL;
  for (unsigned flags : preferred) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_CQSIZE;
    params.cq_entries = entries * 8;
    ret = io_uring_queue_init_params(entries, &ring_, &params);
    if (ret == 0 || ret != -EINVAL) break;
  }
  if (ret != 0) return ErrnoStatus(-ret, "io_uring_queue_init");
  live_ = true;
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  if (probe == nullptr) {
    Exit();
    return absl::FailedPreconditionError("io_uring: cannot probe opcodes");
  }
  const struct {
    int op;
    const char* name;
  } needed[] = {{IORING_OP_READ, "read"},
                {IORING_OP_WRITE, "write"},
                {IORING_OP_SENDMSG, "sendmsg"},
                {IORING_OP_RECV, "recv"},
                {IORING_OP_RECVMSG, "recvmsg"},
                {IORING_OP_TIMEOUT, "timeout"},
                {IORING_OP_ASYNC_CANCEL, "async_cancel"}};
  absl::Status status;
  for (const auto& n : needed) {
    if (!io_uring_opcode_supported(probe, n.op)) {
      status = absl::FailedPreconditionError(
          absl::StrCat("io_uring: the kernel does not support the ", n.name, " operation"));
      break;
    }
  }
  io_uring_free_probe(probe);
  if (!status.ok()) Exit();
  return status;
}

void UringRing::Exit() {
  if (!live_) return;
  io_uring_queue_exit(&ring_);
  live_ = false;
}

io_uring_sqe* UringRing::NextSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // The submission queue is full: hand what is there to the kernel and go on.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void UringRing::RegisterFileTable() {
  // The kernel refuses a table larger than RLIMIT_NOFILE; what does not fit goes unregistered.
  rlimit files{};
  unsigned slots = kFixedFileSlots;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < slots) {
    slots = static_cast<unsigned>(files.rlim_cur);
  }
  if (slots == 0 || io_uring_register_files_sparse(&ring_, slots) != 0) return;
  for (int i = static_cast<int>(slots) - 1; i >= 0; --i) free_files_.push_back(i);
}

int UringRing::RegisterFile(int fd) {
  if (fd < 0 || free_files_.empty()) return -1;
  const int index = free_files_.back();
  if (io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &fd, 1) != 1) {
    return -1;
  }
  free_files_.pop_back();
  return index;
}

void UringRing::UnregisterFile(int index) {
  if (index < 0 || !live_) return;
  int none = -1;
  io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &none, 1);
  free_files_.push_back(index);
}

ProvidedBuffers::~ProvidedBuffers() {
  if (ring_ != nullptr) munmap(ring_, ring_bytes_);
}

bool ProvidedBuffers::Register(io_uring* ring, uint16_t group, unsigned entries,
                               size_t buffer_bytes) {
  group_ = group;
  entries_ = entries;
  buffer_bytes_ = buffer_bytes;
  ring_bytes_ = entries * sizeof(io_uring_buf);
  void* mapped =
      mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mapped == MAP_FAILED) return false;
  ring_ = static_cast<io_uring_buf_ring*>(mapped);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(mapped);
  reg.ring_entries = entries;
  reg.bgid = group;
  if (io_uring_register_buf_ring(ring, &reg, 0) != 0) return false;  // older kernel
  io_uring_buf_ring_init(ring_);
  memory_.reset(new uint8_t[entries * (kReceiveHeadroom + buffer_bytes)]);
  for (unsigned id = 0; id < entries; ++id) {
    io_uring_buf_ring_add(ring_, buffer(static_cast<uint16_t>(id)),
                          static_cast<unsigned>(buffer_bytes), static_cast<uint16_t>(id),
                          io_uring_buf_ring_mask(entries), static_cast<int>(id));
  }
  io_uring_buf_ring_advance(ring_, static_cast<int>(entries));
  return true;
}

void ProvidedBuffers::Recycle(uint16_t id) {
  io_uring_buf_ring_add(ring_, buffer(id), static_cast<unsigned>(buffer_bytes_), id,
                        io_uring_buf_ring_mask(entries_), 0);
  io_uring_buf_ring_advance(ring_, 1);
}

}  // namespace tunnelagent::dataplane
