#include "dataplane/backends/uring_engine.h"

#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backends/uring_worker.h"
#include "dataplane/errno_status.h"

// Linux 6.6's cancellation by opcode; liburing's own copy of the header may predate it.
#ifndef IORING_ASYNC_CANCEL_OP
#define IORING_ASYNC_CANCEL_OP (1U << 5)
#endif

namespace tunnelagent::dataplane {

absl::Status UringWorker::SetUpOnThread() {
  if (absl::Status s = ring_.SetUp(options_.ring_entries); !s.ok()) return s;
  ring_.RegisterFileTable();
  for (const bool ipv6 : {false, true}) send_files_[ipv6] = ring_.RegisterFile(io_.send_fd(ipv6));
  for (const ReceiveSocket& socket : sockets_)
    socket_files_.push_back(ring_.RegisterFile(socket.fd));
  ArmWake();
  ArmTimer();
  if (receiving_requested()) {
    SetUpReceives();
    receiving_ = true;
  }
  // The first io_uring_enter, before anyone relies on the engine: a seccomp profile may allow
  // io_uring_setup and still refuse io_uring_enter, which would leave every command unanswered.
  if (int ret = io_uring_submit(ring_.get()); ret < 0) {
    ring_.Exit();
    return ErrnoStatus(-ret, "io_uring_enter");
  }
  return absl::OkStatus();
}

void UringWorker::Run() {
  std::string why = "the engine was stopped";
  bool ring_usable = true;
  while (!stopping_) {
    // The timer's completion brings the thread back here at least every tick.
    const int ret = io_uring_submit_and_wait(ring_.get(), 1);
    Beat();
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      // Nothing sensible can go on without a ring; counted so it shows.
      core_.counters().drops[static_cast<int>(DropReason::kSocketError)].Add();
      // EBADF, EBADFD, EOPNOTSUPP: the ring itself is no more; it will refuse forever. End
      // the worker and say why (Health) rather than spin. Others are counted, and go on.
      if (ret == -EBADF || ret == -EBADFD || ret == -EOPNOTSUPP) {
        why = absl::StrCat("io_uring_enter: ", ErrnoText(-ret));
        ring_usable = false;
        break;
      }
      continue;
    }
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      ++seen;
      Complete(static_cast<Operation*>(io_uring_cqe_get_data(cqe)), cqe->res, cqe->flags);
    }
    io_uring_cq_advance(ring_.get(), seen);
    // What this batch of receives coalesced goes to the devices with the next submission.
    core_.FlushCoalesced();
    CheckPaused();
  }
  Shutdown(ring_usable);
  Finish(std::move(why));
}

void UringWorker::Shutdown(bool ring_usable) {
  if (ring_usable) {
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY);
    Submit(sqe, &cancel_op_);
  }
  for (int rounds = 0; ring_usable && inflight_ > 0 && rounds < 100; ++rounds) {
    __kernel_timespec timeout{0, 20'000'000};
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(ring_.get(), &cqe, 1, &timeout, nullptr);
    unsigned head;
    unsigned seen = 0;
    unsigned finished = 0;  // a multishot's CQEs with F_MORE leave it in flight
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      ++seen;
      if ((cqe->flags & IORING_CQE_F_MORE) == 0) ++finished;
    }
    io_uring_cq_advance(ring_.get(), seen);
    inflight_ -= std::min<uint64_t>(finished, inflight_);
  }
  ring_.Exit();
  core_.ForEachTunnel([](TunnelDatapath& tunnel) {
    UringTunnel& state = StateOf(tunnel);
    if (state.removal) state.removal->done.set_value(absl::OkStatus());
  });
  tunnels_.clear();
}

void UringWorker::Complete(Operation* op, int res, unsigned flags) {
  --inflight_;
  switch (op->op) {
    case OpKind::kDeviceRead:
      return CompleteDeviceRead(static_cast<TransmitBuffer*>(op), res, flags);
    case OpKind::kSend:
      return CompleteSend(static_cast<TransmitBuffer*>(op), res);
    case OpKind::kSegmentSend:
      return CompleteSegmentSend(static_cast<SegmentSend*>(op), res);
    case OpKind::kSocketReceive:
      return CompleteReceive(static_cast<ReceiveBuffer*>(op), res);
    case OpKind::kDeviceWrite:
      return CompleteDeviceWrite(static_cast<ReceiveBuffer*>(op), res);
    case OpKind::kCoalescedWrite:
      return CompleteCoalescedWrite(static_cast<CoalescedWrite*>(op), res);
    case OpKind::kMultishotReceive:
      return CompleteMultishot(static_cast<MultishotReceiver*>(op), res, flags);
    case OpKind::kProvidedWrite:
      return CompleteProvidedWrite(static_cast<ProvidedWrite*>(op), res);
    case OpKind::kFouReceive:
      return CompleteFouReceive(static_cast<ReceiveBuffer*>(op), res);
    case OpKind::kWake:
      return CompleteWake();
    case OpKind::kTimer:
      return CompleteTimer();
    case OpKind::kCancel:
      // A kernel without cancellation by operation (before 6.6): by descriptor instead.
      if (op == &pause_cancel_op_ && res == -EINVAL && !pause_by_descriptor_) {
        pause_by_descriptor_ = true;
        CancelReadsByDescriptor();
      }
      return;  // the cancelled operations complete on their own
  }
}

void UringWorker::CompleteTimer() {
  if (stopping_) return;
  Housekeeping();
  const absl::Time now = absl::Now();
  uint64_t in_use = 0;
  uint64_t ready = 0;
  uint64_t waiting = 0;
  for (const auto& shared : shared_reads_) {
    if (!shared) continue;
    shared->pool.Tick(now);
    in_use += shared->pool.stats().in_use;
    ready += shared->pool.stats().provided;
    waiting += shared->waiting.size();
  }
  core_.counters().device_buffers_in_use.Set(in_use);
  core_.counters().device_buffers_ready.Set(ready);
  core_.counters().device_reads_waiting.Set(waiting);
  ArmTimer();
}

void UringWorker::CancelDeviceReads(UringTunnel& tunnel) {
  // One by one, by their user_data: the kernel finds each in its cancellation hash. A
  // cancellation by descriptor or by operation scans every request in flight for each one it
  // finds: with thousands of tunnels (eight reads each) removing them all, or pausing, held
  // the ring for seconds. A buffer between its read and its send has no read in flight (the
  // lookup finds nothing) and is not armed again (reads_paused_, or the tunnel's removal).
  for (TransmitBuffer& b : tunnel.buffers) {
    if (b.op != OpKind::kDeviceRead) continue;
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uintptr_t>(static_cast<Operation*>(&b)), 0);
    Submit(sqe, &cancel_op_);
  }
}

void UringWorker::PauseReads() {
  reads_paused_ = true;
  for (const std::unique_ptr<UringTunnel>& tunnel : tunnels_) CancelDeviceReads(*tunnel);
  // The sockets' receives and receive-messages by operation: few, and scanned once the device
  // reads are gone. Writes and sends go on.
  for (const uint8_t opcode : {IORING_OP_RECV, IORING_OP_RECVMSG}) {
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_OP | IORING_ASYNC_CANCEL_ALL);
    sqe->len = opcode;
    Submit(sqe, &pause_cancel_op_);
  }
}

void UringWorker::CancelReadsByDescriptor() {
  // By descriptor: the cancellation matches the file, registered or not.
  auto cancel = [this](int fd) {
    role_.Assume();  // called below, on this thread
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    Submit(sqe, &cancel_op_);
  };
  for (const ReceiveSocket& socket : sockets_) cancel(socket.fd);
  core_.ForEachTunnel([&](TunnelDatapath& tunnel) { cancel(tunnel.device_fd()); });
  for (const std::vector<ReceiveBuffer>& port : fou_receives_) {
    if (!port.empty()) cancel(port.front().fou->fd);
  }
}

void UringWorker::CompleteWake() {
  if (!receiving_ && receiving_requested() && !reads_paused_) {
    SetUpReceives();
    receiving_ = true;
  }
  if (pause_requested() && !reads_paused_) PauseReads();
  RunCommands([this](std::unique_ptr<EngineCommand> command) {
    role_.Assume();  // RunQueued calls back at once, on this thread
    BeginRemoval(std::move(command));
  });
  if (!stopping_) ArmWake();
}

absl::Status UringWorker::AttachTunnel(TunnelDatapath& tunnel) {
  auto state = std::make_unique<UringTunnel>();
  // A worker that does not read the device only writes to it, from its receive buffers.
  const unsigned depth = tunnel.config().read_device ? options_.device_reads_per_tunnel : 0;
  if (depth > 0) state->shared = SharedBuffersFor(tunnel);
  // Without shared buffers, each read has one of the tunnel's own.
  const size_t capacity = state->shared == nullptr ? tunnel.buffer_bytes() : 0;
  if (capacity > 0) state->memory.reset(new uint8_t[capacity * depth]);
  state->buffers.resize(depth);
  for (unsigned i = 0; i < depth; ++i) {
    TransmitBuffer& b = state->buffers[i];
    b.tunnel = &tunnel;
    b.buffer = capacity > 0 ? state->memory.get() + i * capacity : nullptr;
    // Raw sends name the remote (each packet's, copied in as it is sent); fou sends name it
    // only for a multipoint tunnel (set as each is sent), a point-to-point one's senders are
    // connected.
    if (!tunnel.fou()) {
      b.msg.msg_name = &b.destination;
      b.msg.msg_control = tunnel.send_control();
      b.msg.msg_controllen = tunnel.send_control_len();
    }
    b.msg.msg_iov = &b.iov;
    b.msg.msg_iovlen = 1;
  }
  if (tunnel.fou()) {
    bool opened = false;
    absl::StatusOr<FouSocket*> port = AcquireFouPort(tunnel, &opened);
    if (!port.ok()) return port.status();
    if (opened) StartFouReceives(*port);
  }
  state->device_file = ring_.RegisterFile(tunnel.device_fd());
  tunnel.set_backend(state.get());
  UringTunnel& raw = *state;
  tunnels_.push_back(std::move(state));
  for (TransmitBuffer& b : raw.buffers) ArmDeviceRead(&b);
  return absl::OkStatus();
}

void UringWorker::BeginRemoval(std::unique_ptr<EngineCommand> command) {
  TunnelDatapath* tunnel = core_.FindTunnel(command->name);
  if (tunnel == nullptr || tunnel->unlinked()) {
    command->done.set_value(
        absl::NotFoundError(absl::StrCat("tunnel ", command->name, " not found")));
    return;
  }
  core_.UnlinkTunnel(tunnel);
  StateOf(*tunnel).removal = std::move(command);
  // Its device's writes end on their own; its reads wait for packets, so they are cancelled.
  CancelDeviceReads(StateOf(*tunnel));
  Settled(*tunnel, /*counted=*/true);
}

bool UringWorker::Settled(TunnelDatapath& tunnel, bool counted) {
  UringTunnel& state = StateOf(tunnel);
  if (!counted) --state.inflight;
  if (!state.removal) return false;
  if (state.inflight != 0) return true;
  std::unique_ptr<EngineCommand> command = std::move(state.removal);
  if (state.shared != nullptr) {
    // Its reads waiting for a buffer are no operation in flight: they go with it.
    std::deque<TransmitBuffer*>& waiting = state.shared->waiting;
    waiting.erase(
        std::remove_if(waiting.begin(), waiting.end(),
                       [&tunnel](const TransmitBuffer* b) { return b->tunnel == &tunnel; }),
        waiting.end());
  }
  ReleaseFouPort(tunnel);
  ring_.UnregisterFile(state.device_file);
  tunnels_.erase(std::find_if(tunnels_.begin(), tunnels_.end(),
                              [&state](const auto& t) { return t.get() == &state; }));
  core_.EraseTunnel(&tunnel);  // frees the tunnel
  command->done.set_value(absl::OkStatus());
  return true;
}

absl::StatusOr<std::unique_ptr<UringEngine>> UringEngine::Start(const EngineOptions& options) {
  if (options.ring_entries == 0 || options.device_reads_per_tunnel == 0 ||
      options.socket_receives == 0 || options.receive_buffer_bytes < 2048) {
    return absl::InvalidArgumentError("io_uring engine: ring, queue depths and buffers too small");
  }
  auto worker = std::make_unique<UringWorker>(options);
  if (absl::Status status = worker->Start(0); !status.ok()) return status;
  return std::unique_ptr<UringEngine>(new UringEngine(std::move(worker)));
}

UringEngine::UringEngine(std::unique_ptr<Worker> worker) : WorkerEngine(std::move(worker)) {}
UringEngine::~UringEngine() = default;

}  // namespace tunnelagent::dataplane
