#include "dataplane/uring_engine.h"

#include <liburing.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataplane/cpu_affinity.h"
#include "dataplane/engine_support.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/offload.h"
#include "dataplane/tunnel_datapath.h"
#include "dataplane/tunnel_table.h"

namespace tunnelagent::dataplane {
namespace {

struct TunnelRuntime;

enum class OpKind : uint8_t {
  kDeviceRead,
  kSocketSend,
  kSegmentSend,
  kSocketRecv,
  kDeviceWrite,
  kCoalescedWrite,
  kMultishotRecv,
  kFouRecv,
  kRingDeviceWrite,
  kWake,
  kTimer,
  kCancel
};

// What an SQE's user_data points at: the operation's kind, then what it needs.
struct Operation {
  OpKind op = OpKind::kDeviceRead;
};

struct Slot;

// Segments of a super-packet read from a device with offloads, on their way out: one per
// send (raw IP), or a run of them sent as one UDP GSO send (fou).
struct SegmentOp : Operation {
  Slot* slot = nullptr;
  uint16_t first = 0;  // in the batch's prepared segments
  uint16_t count = 0;
  msghdr msg{};
  iovec iov{};
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];
};

// Where a slot splits a super-packet: segments of up to this many, in this much memory (a
// 64 KiB packet split at the smallest MSS that fits the count, each segment with its headroom
// and 64-byte alignment). Allocated the first time a slot reads a super-packet.
constexpr size_t kMaxSegmentsInFlight = 128;
constexpr size_t kSegmentArenaBytes = 65536 + kMaxSegmentsInFlight * (kDeviceHeadroom + 128 + 64);
struct SegmentBatch {
  std::unique_ptr<uint8_t[]> memory{new uint8_t[kSegmentArenaBytes]};
  Segment segments[kMaxSegmentsInFlight];
  // The segments PrepareTransmit took, and what it made of them.
  uint8_t* frames[kMaxSegmentsInFlight];
  size_t lens[kMaxSegmentsInFlight];
  EncapResult packets[kMaxSegmentsInFlight];
  iovec iovs[kMaxSegmentsInFlight];
  SegmentOp ops[kMaxSegmentsInFlight];
  uint32_t pending = 0;  // sends in flight
};

// A coalesced packet (Coalescer) being written to its device.
struct CoalescedWrite : Operation {
  TunnelRuntime* tunnel = nullptr;
  int buffer = -1;
  uint32_t segments = 0;
  size_t inner_bytes = 0;
};

// Receive buffers start this far into their memory, so a virtio-net header fits in front of a
// packet whatever headers precede it (none, for ip6tnl over IPv6).
constexpr size_t kReceiveHeadroom = 16;
static_assert(kReceiveHeadroom >= kVirtioNetHeaderLen);

// Coalescing on receive: flows open at once, and buffers (open flows plus writes in flight).
constexpr size_t kCoalescerFlows = 16;
constexpr size_t kCoalescerBuffers = 48;

struct ProvidedRing;

// The one multishot receive of a socket with a provided-buffer ring.
struct MultishotOp : Operation {
  ProvidedRing* ring = nullptr;
};

// A ring buffer's packet being written to its device; the buffer goes back to the ring after.
struct RingWrite : Operation {
  ProvidedRing* ring = nullptr;
  uint16_t buffer_id = 0;
  TunnelRuntime* tunnel = nullptr;
  uint32_t inner_len = 0;
};

// Receive on an IPv4 underlay socket: one multishot recv that the kernel keeps going, its
// packets landing in buffers it takes from a ring the engine refills (a provided-buffer
// ring, registered by hand: liburing 2.3 has no io_uring_setup_buf_ring). One poll entry per
// socket instead of one per receive in flight, so a packet's arrival wakes one receive, not
// all of them.
struct ProvidedRing {
  const ReceiveSocket* socket = nullptr;
  uint16_t group = 0;
  io_uring_buf_ring* ring = nullptr;
  size_t ring_bytes = 0;
  unsigned entries = 0;
  size_t buffer_bytes = 0;  // each buffer's packet room, after kReceiveHeadroom
  std::unique_ptr<uint8_t[]> memory;
  std::vector<RingWrite> writes;  // by buffer id
  MultishotOp receive;
  uint8_t* buffer(uint16_t id) const {
    return memory.get() + size_t{id} * (kReceiveHeadroom + buffer_bytes) + kReceiveHeadroom;
  }
  ~ProvidedRing() {
    if (ring != nullptr) munmap(ring, ring_bytes);
  }
};

// One buffer and the one operation it is part of at any time. Its address is the SQE's
// user_data, so a completion leads straight back to its buffer and tunnel.
struct Slot : Operation {
  TunnelRuntime* tunnel = nullptr;  // transmit: the owner; receive: the device written to
  uint8_t* buffer = nullptr;
  uint32_t capacity = 0;
  uint32_t inner_len = 0;                 // what the tunnel's counters count
  const ReceiveSocket* socket = nullptr;  // receive slots: the socket they receive on
  uint8_t* frame = nullptr;               // transmit: the frame read from the device
  msghdr msg{};
  iovec iov{};
  ReceiveAddress from{};                                   // IPv6 receives: the source
  alignas(cmsghdr) uint8_t control[kReceiveControlBytes];  // IPv6 receives: address, class
  std::unique_ptr<SegmentBatch> batch;                     // transmit with offloads
  FouSocket* fou = nullptr;                                // fou receives: the socket
};

// The receives kept in flight on a fou port's socket, each with a buffer for what UDP GRO
// brings at once.
struct FouReceiver {
  FouSocket* socket = nullptr;
  std::unique_ptr<uint8_t[]> memory;
  std::vector<Slot> slots;
};

struct TunnelRuntime {
  std::unique_ptr<TunnelDatapath> path;
  std::unique_ptr<uint8_t[]> memory;
  std::vector<Slot> slots;
  uint32_t inflight = 0;
  int device_file = -1;                    // the device's registered file; -1: none
  std::unique_ptr<EngineCommand> removal;  // set while the tunnel is being removed
  uint16_t fou_port = 0;                   // the fou port it receives on (0: none)
  absl::Time next_tick = absl::InfinitePast();
};

// Housekeeping (keepalives, path MTU refresh) runs at most this often, and at least this
// often (so a new tunnel's first keepalive is not late).
constexpr absl::Duration kTickResolution = absl::Milliseconds(50);

}  // namespace

class UringEngine::Impl {
 public:
  explicit Impl(const UringEngineOptions& options)
      : options_(options), heartbeat_(options.worker) {}

  ~Impl() {
    if (thread_.joinable()) {
      mailbox_.Stop().IgnoreError();
      thread_.join();
    }
    rings_.clear();  // the ring is gone (queue_exit), their memory can go
    CloseReceiveSockets(sockets_);
  }

  absl::Status Start() {
    if (absl::Status s = mailbox_.Open(0); !s.ok()) return s;
    // Send sockets for every tunnel, and the rare paths' resources.
    if (absl::Status s = io_.Open(options_.socket_buffer_bytes); !s.ok()) return s;
    io_.set_path_mtu_expiry(options_.path_mtu_expiry);
    if (absl::Status s = too_big_.Open(); !s.ok()) return s;
    // Raw sockets of a protocol see every packet of that protocol addressed to this host.
    absl::StatusOr<std::vector<ReceiveSocket>> sockets =
        OpenReceiveSockets(options_.socket_buffer_bytes, options_.worker, options_.workers);
    if (!sockets.ok()) return sockets.status();
    sockets_ = std::move(*sockets);

    // GRE and IPIP over IPv4 carry most traffic; the other sockets get a quarter of the depth.
    std::vector<const ReceiveSocket*> owners;
    for (const ReceiveSocket& socket : sockets_) {
      const bool main = !socket.ipv6 && socket.protocol != kIpProtoIpv6;
      const unsigned depth =
          main ? options_.socket_receives : std::max(1u, options_.socket_receives / 4);
      for (unsigned i = 0; i < depth; ++i) owners.push_back(&socket);
    }
    const size_t stride = kReceiveHeadroom + options_.receive_buffer_bytes;
    rx_memory_.reset(new uint8_t[owners.size() * stride]);
    rx_slots_.resize(owners.size());
    for (size_t i = 0; i < rx_slots_.size(); ++i) {
      Slot& slot = rx_slots_[i];
      slot.op = OpKind::kSocketRecv;
      slot.buffer = rx_memory_.get() + i * stride + kReceiveHeadroom;
      slot.capacity = options_.receive_buffer_bytes;
      slot.socket = owners[i];
      slot.iov.iov_base = slot.buffer;
      slot.iov.iov_len = slot.capacity;
      slot.msg.msg_iov = &slot.iov;
      slot.msg.msg_iovlen = 1;
    }

    std::promise<absl::Status> ready;
    std::future<absl::Status> ready_future = ready.get_future();
    thread_ = std::thread([this, &ready] { Run(&ready); });
    absl::Status status = ready_future.get();
    if (!status.ok()) thread_.join();
    return status;
  }

  const DataplaneCounters& counters() const { return counters_; }
  CommandMailbox& mailbox() { return mailbox_; }
  const WorkerHeartbeat& heartbeat() const { return heartbeat_; }

 private:
  // Sets up the ring on the thread that will submit to it: SINGLE_ISSUER and DEFER_TASKRUN
  // (completion work runs when this thread waits, not as interrupts) where the kernel has them,
  // plainer setups where it does not.
  absl::Status SetUpRing() {
    const unsigned preferred[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int ret = -EINVAL;
    for (unsigned flags : preferred) {
      io_uring_params params{};
      params.flags = flags | IORING_SETUP_CQSIZE;
      params.cq_entries = options_.ring_entries * 8;
      ret = io_uring_queue_init_params(options_.ring_entries, &ring_, &params);
      if (ret == 0) return absl::OkStatus();
      if (ret != -EINVAL) break;
    }
    return ErrnoStatus(-ret, "io_uring_queue_init");
  }

  // Every operation the engine submits must be known to the kernel (io_uring_register's probe):
  // an old kernel or a filter that knows fewer is a reason to fall back, not to fail later.
  absl::Status CheckOpcodes() {
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (probe == nullptr) return absl::FailedPreconditionError("io_uring: cannot probe opcodes");
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
    return status;
  }

  // Registered files: operations name a file by its index in the ring's table, so the kernel
  // does not look the descriptor up and take a reference on the file for each one. The
  // underlay sockets are registered at start and each device as its tunnel is added; without
  // a table (before Linux 5.19's sparse tables) every operation names its descriptor.
  static constexpr unsigned kFixedFileSlots = 8192;

  void RegisterFiles() {
    // The kernel refuses a table larger than RLIMIT_NOFILE; what does not fit goes unregistered.
    rlimit files{};
    unsigned slots = kFixedFileSlots;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < slots) {
      slots = static_cast<unsigned>(files.rlim_cur);
    }
    if (slots == 0 || io_uring_register_files_sparse(&ring_, slots) != 0) return;
    for (int i = static_cast<int>(slots) - 1; i >= 0; --i) free_files_.push_back(i);
    for (const bool ipv6 : {false, true}) send_files_[ipv6] = RegisterFile(io_.send_fd(ipv6));
    for (const ReceiveSocket& socket : sockets_) socket_files_.push_back(RegisterFile(socket.fd));
  }

  int RegisterFile(int fd) {
    if (fd < 0 || free_files_.empty()) return -1;
    const int index = free_files_.back();
    if (io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &fd, 1) != 1) {
      return -1;
    }
    free_files_.pop_back();
    return index;
  }

  void UnregisterFile(int index) {
    if (index < 0) return;
    int none = -1;
    io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &none, 1);
    free_files_.push_back(index);
  }

  // After io_uring_prep_*(sqe, fd, ...): the same operation on registered file `index`.
  static void UseFile(io_uring_sqe* sqe, int index) {
    if (index < 0) return;
    sqe->fd = index;
    sqe->flags |= IOSQE_FIXED_FILE;
  }

  int SocketFile(const ReceiveSocket* socket) const {
    const size_t i = static_cast<size_t>(socket - sockets_.data());
    return i < socket_files_.size() ? socket_files_[i] : -1;
  }

  void Run(std::promise<absl::Status>* ready) {
    // First, so the ring and buffers are set up (and first touched) on the worker's own CPU.
    absl::Status status =
        SetUpWorkerThread(options_.worker, WorkerCpu(options_.cpus, options_.worker));
    if (!status.ok()) {
      ready->set_value(status);
      return;
    }
    status = SetUpRing();
    if (!status.ok()) {
      ready->set_value(status);
      return;
    }
    if (absl::Status s = CheckOpcodes(); !s.ok()) {
      io_uring_queue_exit(&ring_);
      ready->set_value(s);
      return;
    }
    RegisterFiles();
    wake_slot_.op = OpKind::kWake;
    ArmWake();
    timer_slot_.op = OpKind::kTimer;
    ArmTimer();
    SetUpProvidedRings();
    for (Slot& slot : rx_slots_) {
      if (!HasRing(slot.socket)) ArmReceive(&slot);
    }
    // The first io_uring_enter, before anyone relies on the engine: a seccomp profile may allow
    // io_uring_setup and still refuse io_uring_enter, which would leave every command unanswered.
    if (int ret = io_uring_submit(&ring_); ret < 0) {
      io_uring_queue_exit(&ring_);
      ready->set_value(ErrnoStatus(-ret, "io_uring_enter"));
      return;
    }
    ready->set_value(absl::OkStatus());

    std::string why = "the engine was stopped";
    bool ring_usable = true;
    while (!stopping_) {
      // The timer's completion brings the thread back here at least every tick.
      int ret = io_uring_submit_and_wait(&ring_, 1);
      clock_.Update();
      heartbeat_.Beat(clock_.monotonic_nanos());
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
        // Nothing sensible can go on without a ring; counted so it shows.
        counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
        if (RingIsGone(-ret)) {
          // It will refuse forever: end the worker and say why (Health) rather than spin.
          why = absl::StrCat("io_uring_enter: ", ErrnoText(-ret));
          ring_usable = false;
          break;
        }
        continue;
      }
      unsigned head;
      unsigned seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        Complete(static_cast<Operation*>(io_uring_cqe_get_data(cqe)), cqe->res, cqe->flags);
      }
      io_uring_cq_advance(&ring_, seen);
      // What this batch of receives coalesced goes to the devices with the next submission.
      FlushCoalesced();
    }
    heartbeat_.Stopped(std::move(why));
    Shutdown(ring_usable);
  }

  // What io_uring_enter says when the ring itself is no more: its descriptor closed or made
  // something else. Other errors (EFAULT, ENOMEM) are counted and the loop goes on.
  static bool RingIsGone(int err) { return err == EBADF || err == EBADFD || err == EOPNOTSUPP; }

  // Cancels everything still in flight and waits for it, so that when the engine is gone no
  // operation holds a device or buffer (io_uring_queue_exit alone would let the kernel finish
  // the cancellation in the background, keeping devices alive a little longer). A ring that is
  // gone cannot be asked; its queue_exit is all there is.
  void Shutdown(bool ring_usable) {
    if (ring_usable) {
      io_uring_sqe* sqe = NextSqe();
      io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data(sqe, &cancel_slot_);
      ++inflight_total_;
    }
    for (int rounds = 0; ring_usable && inflight_total_ > 0 && rounds < 100; ++rounds) {
      __kernel_timespec timeout{0, 20'000'000};
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &timeout, nullptr);
      unsigned head;
      unsigned seen = 0;
      unsigned finished = 0;  // a multishot's CQEs with F_MORE leave it in flight
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        if ((cqe->flags & IORING_CQE_F_MORE) == 0) ++finished;
      }
      io_uring_cq_advance(&ring_, seen);
      inflight_total_ -= std::min<uint64_t>(finished, inflight_total_);
    }
    io_uring_queue_exit(&ring_);
    for (auto& [name, tunnel] : tunnels_) {
      if (tunnel->removal) tunnel->removal->done.set_value(absl::OkStatus());
    }
    by_remote_.Clear();
    tunnels_.clear();
    by_match_.Clear();
    mailbox_.Close();
    if (stop_command_) stop_command_->done.set_value(absl::OkStatus());
  }

  io_uring_sqe* NextSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {
      // The submission queue is full: hand what is there to the kernel and go on.
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  void ArmWake() {
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_read(sqe, mailbox_.fd(), &wake_value_, sizeof wake_value_, 0);
    io_uring_sqe_set_data(sqe, &wake_slot_);
    ++inflight_total_;
  }

  void ArmTimer() {
    io_uring_sqe* sqe = NextSqe();
    timer_spec_.tv_sec = 0;
    timer_spec_.tv_nsec = absl::ToInt64Nanoseconds(kTickResolution);
    io_uring_prep_timeout(sqe, &timer_spec_, 0, 0);
    io_uring_sqe_set_data(sqe, &timer_slot_);
    ++inflight_total_;
  }

  void ArmReceive(Slot* slot) {
    slot->op = OpKind::kSocketRecv;
    slot->tunnel = nullptr;
    io_uring_sqe* sqe = NextSqe();
    // MSG_TRUNC: the result is the datagram's real length, so a packet larger than the buffer
    // is seen as such instead of being passed on cut short.
    if (slot->socket->ipv6) {
      // IPv6 raw sockets give no header: the addresses and traffic class come as ancillary data.
      slot->msg.msg_name = &slot->from;
      slot->msg.msg_namelen = sizeof slot->from;
      slot->msg.msg_control = slot->control;
      slot->msg.msg_controllen = sizeof slot->control;
      slot->msg.msg_flags = 0;
      io_uring_prep_recvmsg(sqe, slot->socket->fd, &slot->msg, MSG_TRUNC);
    } else {
      io_uring_prep_recv(sqe, slot->socket->fd, slot->buffer, slot->capacity, MSG_TRUNC);
    }
    UseFile(sqe, SocketFile(slot->socket));
    io_uring_sqe_set_data(sqe, slot);
    ++inflight_total_;
  }

  void ArmDeviceRead(Slot* slot) {
    slot->op = OpKind::kDeviceRead;
    io_uring_sqe* sqe = NextSqe();
    // With offloads the virtio-net header comes first, just before where the packet belongs.
    const size_t header = slot->tunnel->path->vnet_header() ? kVirtioNetHeaderLen : 0;
    io_uring_prep_read(sqe, slot->tunnel->path->config().device_fd,
                       slot->buffer + kDeviceHeadroom - header,
                       static_cast<unsigned>(slot->capacity - kDeviceHeadroom + header), 0);
    UseFile(sqe, slot->tunnel->device_file);
    io_uring_sqe_set_data(sqe, slot);
    ++inflight_total_;
    ++slot->tunnel->inflight;
  }

  void Complete(Operation* op, int res, unsigned flags) {
    --inflight_total_;
    switch (op->op) {
      case OpKind::kFouRecv:
        return CompleteFouReceive(static_cast<Slot*>(op), res);
      case OpKind::kMultishotRecv:
        return CompleteMultishot(static_cast<MultishotOp*>(op)->ring, res, flags);
      case OpKind::kRingDeviceWrite:
        return CompleteRingWrite(static_cast<RingWrite*>(op), res);
      case OpKind::kDeviceRead:
        return CompleteDeviceRead(static_cast<Slot*>(op), res);
      case OpKind::kSocketSend:
        return CompleteSend(static_cast<Slot*>(op), res);
      case OpKind::kSegmentSend:
        return CompleteSegmentSend(static_cast<SegmentOp*>(op), res);
      case OpKind::kSocketRecv:
        return CompleteReceive(static_cast<Slot*>(op), res);
      case OpKind::kDeviceWrite:
        return CompleteDeviceWrite(static_cast<Slot*>(op), res);
      case OpKind::kCoalescedWrite:
        return CompleteCoalescedWrite(static_cast<CoalescedWrite*>(op), res);
      case OpKind::kWake:
        return CompleteWake();
      case OpKind::kTimer:
        return CompleteTimer();
      case OpKind::kCancel:
        return;  // the cancelled operations complete on their own
    }
  }

  // Transmit, first half: a packet the host routed into the device.
  void CompleteDeviceRead(Slot* slot, int res) {
    TunnelRuntime* tunnel = slot->tunnel;
    --tunnel->inflight;
    if (tunnel->removal) return MaybeFinishRemoval(tunnel);
    TunnelCounters& counters = tunnel->path->counters();
    if (res <= 0) {
      if (res == 0 || res == -EAGAIN || res == -EINTR) return ArmDeviceRead(slot);
      counters.tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
      // A device that answers EBADF/EBADFD/EINVAL/EFAULT will answer so forever: park this
      // buffer rather than spin on it (counted above; removal still accounts for it).
      if (res == -EBADF || res == -EBADFD || res == -EINVAL || res == -EFAULT) return;
      return ArmDeviceRead(slot);
    }
    TunnelDatapath& path = *tunnel->path;
    const size_t header = path.vnet_header() ? kVirtioNetHeaderLen : 0;
    size_t len = static_cast<size_t>(res);
    if (len >= slot->capacity - kDeviceHeadroom + header) {
      // Filled the buffer: larger than the MTU the buffers were sized for, possibly cut.
      counters.tx_drops[static_cast<int>(DropReason::kTooBig)].Add();
      return ArmDeviceRead(slot);
    }
    slot->frame = slot->buffer + kDeviceHeadroom;
    if (header != 0) {
      if (len < header) {
        counters.tx_drops[static_cast<int>(DropReason::kBadInnerPacket)].Add();
        return ArmDeviceRead(slot);
      }
      len -= header;
      const VirtioNetHeader vnet = ReadVirtioNetHeader(slot->frame - header);
      size_t segments = 0;
      switch (path.TakeVirtioNetHeader(vnet, slot->frame, len, &segments)) {
        case TunnelDatapath::DeviceRead::kDropped:
          return ArmDeviceRead(slot);
        case TunnelDatapath::DeviceRead::kSuperPacket:
          return TransmitSuperPacket(slot, vnet, len, segments);
        case TunnelDatapath::DeviceRead::kPacket:
          break;
      }
    }
    EncapResult out;
    if (!path.PrepareTransmit(slot->frame, len, &out)) return ArmDeviceRead(slot);
    slot->op = OpKind::kSocketSend;
    slot->inner_len = static_cast<uint32_t>(len);
    int fd = path.send_fd();
    int file = send_files_[path.ipv6_underlay()];
    if (path.fou()) {
      // Through the tunnel's connected UDP socket: the payload after the IP and UDP headers.
      fd = path.FouSendFd(out);
      file = -1;
      slot->iov.iov_base = out.packet + path.fou_header_len();
      slot->iov.iov_len = out.len - path.fou_header_len();
      slot->msg.msg_control = slot->control;
      slot->msg.msg_controllen = WriteFouControl(slot->control, out.packet[1], out.packet[8], 0);
    } else {
      slot->iov.iov_base = out.packet;
      slot->iov.iov_len = out.len;
    }
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_sendmsg(sqe, fd, &slot->msg, 0);
    UseFile(sqe, file);
    io_uring_sqe_set_data(sqe, slot);
    ++inflight_total_;
    ++tunnel->inflight;
  }

  // Transmit of a super-packet: split into the slot's segment arena and each segment sent as
  // its own operation; the slot reads again when the last one completes. One that splits into
  // more segments than the arena holds (an MSS of a few hundred bytes) is sent synchronously,
  // a round of segments at a time, so that its segments still leave in order.
  void TransmitSuperPacket(Slot* slot, const VirtioNetHeader& vnet, size_t len, size_t count) {
    TunnelRuntime* tunnel = slot->tunnel;
    TunnelDatapath& path = *tunnel->path;
    if (!slot->batch) slot->batch = std::make_unique<SegmentBatch>();
    SegmentBatch& batch = *slot->batch;
    SegmentArena arena;
    arena.data = batch.memory.get();
    arena.bytes = kSegmentArenaBytes;
    arena.headroom = kDeviceHeadroom;
    arena.segments = batch.segments;
    arena.max_segments = kMaxSegmentsInFlight;
    size_t made = SegmentSuperPacket(vnet, slot->frame, len, 0, arena);
    if (made < count) {
      for (size_t first = 0; made != 0;) {
        const size_t prepared = PrepareSegments(path, batch, made);
        if (path.fou()) {
          path.SendFouNow(batch.frames, batch.lens, batch.packets, prepared);
        } else {
          for (size_t i = 0; i < prepared; ++i) {
            path.SendNow(batch.frames[i], batch.lens[i], batch.packets[i]);
          }
        }
        first += made;
        made = first < count ? SegmentSuperPacket(vnet, slot->frame, len, first, arena) : 0;
      }
      return ArmDeviceRead(slot);
    }
    batch.pending = 0;
    const size_t prepared = PrepareSegments(path, batch, made);
    for (size_t first = 0; first < prepared;) {
      SegmentOp& op = batch.ops[batch.pending++];
      op.op = OpKind::kSegmentSend;
      op.slot = slot;
      op.first = static_cast<uint16_t>(first);
      op.msg = msghdr{};
      int fd = path.send_fd();
      if (path.fou()) {
        // Runs of equal-sized payloads of one socket as one UDP GSO send.
        uint16_t gso_size = 0;
        const size_t n = path.NextFouRun(batch.packets + first, prepared - first,
                                         batch.iovs + first, &fd, &gso_size);
        op.count = static_cast<uint16_t>(n);
        op.msg.msg_iov = &batch.iovs[first];
        op.msg.msg_iovlen = n;
        op.msg.msg_control = op.control;
        op.msg.msg_controllen = WriteFouControl(op.control, batch.packets[first].packet[1],
                                                batch.packets[first].packet[8], gso_size);
      } else {
        op.count = 1;
        op.iov.iov_base = batch.packets[first].packet;
        op.iov.iov_len = batch.packets[first].len;
        op.msg.msg_name = const_cast<sockaddr*>(path.destination());
        op.msg.msg_namelen = path.destination_len();
        op.msg.msg_iov = &op.iov;
        op.msg.msg_iovlen = 1;
      }
      first += op.count;
      io_uring_sqe* sqe = NextSqe();
      io_uring_prep_sendmsg(sqe, fd, &op.msg, 0);
      if (!path.fou()) UseFile(sqe, send_files_[path.ipv6_underlay()]);
      io_uring_sqe_set_data(sqe, static_cast<Operation*>(&op));
      ++inflight_total_;
      ++tunnel->inflight;
    }
    if (batch.pending == 0) ArmDeviceRead(slot);
  }

  // PrepareTransmit on the first `made` segments of the batch; those it takes go to the
  // batch's frames, lens and packets, in order. Returns how many it took.
  static size_t PrepareSegments(TunnelDatapath& path, SegmentBatch& batch, size_t made) {
    size_t prepared = 0;
    for (size_t i = 0; i < made; ++i) {
      if (path.PrepareTransmit(batch.segments[i].data, batch.segments[i].len,
                               &batch.packets[prepared])) {
        batch.frames[prepared] = batch.segments[i].data;
        batch.lens[prepared++] = batch.segments[i].len;
      }
    }
    return prepared;
  }

  void CompleteSegmentSend(SegmentOp* op, int res) {
    Slot* slot = op->slot;
    TunnelRuntime* tunnel = slot->tunnel;
    --tunnel->inflight;
    SegmentBatch& batch = *slot->batch;
    if (res == -EIO && op->count > 1) tunnel->path->DisableFouGso();  // counted below
    for (size_t i = op->first; i < size_t{op->first} + op->count; ++i) {
      tunnel->path->TransmitDone(batch.frames[i], batch.lens[i], res >= 0 ? 1 : res);
    }
    const bool last = --slot->batch->pending == 0;
    if (tunnel->removal) return MaybeFinishRemoval(tunnel);
    if (last) ArmDeviceRead(slot);
  }

  // Transmit, second half.
  void CompleteSend(Slot* slot, int res) {
    TunnelRuntime* tunnel = slot->tunnel;
    --tunnel->inflight;
    tunnel->path->TransmitDone(slot->frame, slot->inner_len, res);
    if (tunnel->removal) return MaybeFinishRemoval(tunnel);
    ArmDeviceRead(slot);
  }

  // Receive, first half: a packet from the underlay.
  void CompleteReceive(Slot* slot, int res) {
    if (stopping_) return;
    if (res < 0) {
      CountReceiveError(res);
      return ArmReceive(slot);
    }
    slot->op = OpKind::kDeviceWrite;
    if (!Deliver(*slot->socket, slot->buffer, res, slot->capacity, slot->msg, slot, &slot->tunnel,
                 &slot->inner_len)) {
      ArmReceive(slot);
    }
  }

  // What every receive does with a packet of `res` bytes in `buffer` (of `capacity`): count,
  // decode, match, check, and then coalesce it, or write it to its tunnel's device as `write`
  // (whose tunnel and inner length are set through the pointers). False: done with the
  // buffer (dropped and counted, a keepalive, or coalesced); true: the write is in flight.
  bool Deliver(const ReceiveSocket& socket, uint8_t* buffer, int res, size_t capacity,
               const msghdr& msg, Operation* write, TunnelRuntime** write_tunnel,
               uint32_t* write_len) {
    counters_.rx_packets.Add();
    if (static_cast<size_t>(res) > capacity) {
      counters_.drops[static_cast<int>(DropReason::kTooBig)].Add();
      return false;
    }
    Decapsulated packet;
    DropReason reason;
    if (!DecodeReceived(socket, buffer, static_cast<size_t>(res), msg, &packet, &reason)) {
      counters_.drops[static_cast<int>(reason)].Add();
      return false;
    }
    TunnelRuntime* tunnel = Admit(packet);
    if (tunnel == nullptr) return false;
    uint8_t* data = packet.inner;
    size_t len = packet.inner_len;
    if (tunnel->path->vnet_header()) {
      // On its own, behind an empty virtio-net header (in room the outer headers, or the
      // receive headroom, leave).
      data -= kVirtioNetHeaderLen;
      std::memset(data, 0, kVirtioNetHeaderLen);
      len += kVirtioNetHeaderLen;
    }
    *write_tunnel = tunnel;
    *write_len = static_cast<uint32_t>(packet.inner_len);
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_write(sqe, tunnel->path->config().device_fd, data, static_cast<unsigned>(len), 0);
    UseFile(sqe, tunnel->device_file);
    io_uring_sqe_set_data(sqe, write);
    ++inflight_total_;
    ++tunnel->inflight;
    return true;
  }

  // Fou: receives on a port's socket, kept in flight from when the first tunnel uses it.
  void StartFouReceiver(FouSocket* socket) {
    constexpr unsigned kFouReceives = 16;
    auto receiver = std::make_unique<FouReceiver>();
    receiver->socket = socket;
    const size_t stride = kReceiveHeadroom + options_.receive_buffer_bytes;
    receiver->memory.reset(new uint8_t[kFouReceives * stride]);
    receiver->slots.resize(kFouReceives);
    for (unsigned i = 0; i < kFouReceives; ++i) {
      Slot& slot = receiver->slots[i];
      slot.fou = socket;
      slot.buffer = receiver->memory.get() + i * stride + kReceiveHeadroom;
      slot.capacity = options_.receive_buffer_bytes;
      slot.iov.iov_base = slot.buffer;
      slot.iov.iov_len = slot.capacity;
      slot.msg.msg_iov = &slot.iov;
      slot.msg.msg_iovlen = 1;
      ArmFouReceive(&slot);
    }
    fou_receivers_.push_back(std::move(receiver));
  }

  void ArmFouReceive(Slot* slot) {
    slot->op = OpKind::kFouRecv;
    slot->msg.msg_name = &slot->from;
    slot->msg.msg_namelen = sizeof slot->from;
    slot->msg.msg_control = slot->control;
    slot->msg.msg_controllen = sizeof slot->control;
    slot->msg.msg_flags = 0;
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_recvmsg(sqe, slot->fou->fd, &slot->msg, 0);
    io_uring_sqe_set_data(sqe, static_cast<Operation*>(slot));
    ++inflight_total_;
  }

  void CompleteFouReceive(Slot* slot, int res) {
    if (stopping_) return;
    if (res < 0) {
      CountReceiveError(res);
      return ArmFouReceive(slot);
    }
    // Several datagrams at once (UDP GRO): each written now, or coalesced, before the buffer
    // goes back to a receive.
    ForEachFouDatagram(*slot->fou, slot->buffer, static_cast<size_t>(res), slot->msg, counters_,
                       [this](Decapsulated& packet) {
                         if (TunnelRuntime* tunnel = Admit(packet))
                           tunnel->path->DeliverNow(packet);
                       });
    ArmFouReceive(slot);
  }

  // AdmitReceived on this engine's table and coalescer.
  TunnelRuntime* Admit(const Decapsulated& packet) {
    return AdmitReceived(by_match_, coalescer_, counters_, packet, [this] { FlushCoalesced(); });
  }

  // A failed receive: ICMP errors queued on the socket surface here (ENOPROTOOPT,
  // ECONNREFUSED, ...), as does ENOBUFS under memory pressure. Counted; receiving goes on.
  void CountReceiveError(int res) {
    if (res != -EINTR && res != -EAGAIN) {
      counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
    }
  }

  bool HasRing(const ReceiveSocket* socket) const {
    for (const auto& ring : rings_) {
      if (ring->socket == socket) return true;
    }
    return false;
  }

  // A provided-buffer ring and a multishot receive for each IPv4 socket, where the kernel has
  // them (5.19 and 6.0); elsewhere the sockets keep their receives in flight one by one.
  void SetUpProvidedRings() {
    uint16_t group = 0;
    for (const ReceiveSocket& socket : sockets_) {
      if (socket.ipv6) continue;  // recvmsg for the addresses: they keep their slots
      const bool main = socket.protocol != kIpProtoIpv6;
      auto ring = std::make_unique<ProvidedRing>();
      ring->socket = &socket;
      ring->group = group++;
      ring->entries = main ? 256 : 32;
      ring->buffer_bytes = options_.receive_buffer_bytes;
      ring->ring_bytes = ring->entries * sizeof(io_uring_buf);
      void* mapped = mmap(nullptr, ring->ring_bytes, PROT_READ | PROT_WRITE,
                          MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
      if (mapped == MAP_FAILED) return;
      ring->ring = static_cast<io_uring_buf_ring*>(mapped);
      io_uring_buf_reg reg{};
      reg.ring_addr = reinterpret_cast<uint64_t>(mapped);
      reg.ring_entries = ring->entries;
      reg.bgid = ring->group;
      if (io_uring_register_buf_ring(&ring_, &reg, 0) != 0) return;  // older kernel: slots
      io_uring_buf_ring_init(ring->ring);
      ring->memory.reset(new uint8_t[ring->entries * (kReceiveHeadroom + ring->buffer_bytes)]);
      ring->writes.resize(ring->entries);
      for (unsigned id = 0; id < ring->entries; ++id) {
        RingWrite& w = ring->writes[id];
        w.op = OpKind::kRingDeviceWrite;
        w.ring = ring.get();
        w.buffer_id = static_cast<uint16_t>(id);
        io_uring_buf_ring_add(ring->ring, ring->buffer(static_cast<uint16_t>(id)),
                              static_cast<unsigned>(ring->buffer_bytes), static_cast<uint16_t>(id),
                              io_uring_buf_ring_mask(ring->entries), static_cast<int>(id));
      }
      io_uring_buf_ring_advance(ring->ring, static_cast<int>(ring->entries));
      ring->receive.op = OpKind::kMultishotRecv;
      ring->receive.ring = ring.get();
      ProvidedRing* raw = ring.get();
      rings_.push_back(std::move(ring));
      ArmMultishot(raw);
    }
  }

  void ArmMultishot(ProvidedRing* ring) {
    io_uring_sqe* sqe = NextSqe();
    // MSG_TRUNC: the result is the datagram's real length, so a packet larger than the buffer
    // is seen as such.
    io_uring_prep_recv_multishot(sqe, ring->socket->fd, nullptr, 0, MSG_TRUNC);
    UseFile(sqe, SocketFile(ring->socket));
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = ring->group;
    io_uring_sqe_set_data(sqe, static_cast<Operation*>(&ring->receive));
    ++inflight_total_;
  }

  void Recycle(ProvidedRing* ring, uint16_t id) {
    io_uring_buf_ring_add(ring->ring, ring->buffer(id), static_cast<unsigned>(ring->buffer_bytes),
                          id, io_uring_buf_ring_mask(ring->entries), 0);
    io_uring_buf_ring_advance(ring->ring, 1);
  }

  void CompleteMultishot(ProvidedRing* ring, int res, unsigned flags) {
    const bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (more) ++inflight_total_;  // the receive goes on
    if (stopping_) {
      if ((flags & IORING_CQE_F_BUFFER) != 0) Recycle(ring, flags >> IORING_CQE_BUFFER_SHIFT);
      return;
    }
    if (res == -EINVAL || res == -EOPNOTSUPP) {
      // A kernel without multishot receives: this socket goes back to receives one by one.
      for (Slot& slot : rx_slots_) {
        if (slot.socket == ring->socket) ArmReceive(&slot);
      }
      return;
    }
    if (res < 0) {
      // ENOBUFS: every buffer is taken (writes in flight); the packets wait in the socket's
      // buffer until the receive is armed again. Other errors as for single receives.
      if (res != -ENOBUFS && res != -EINTR && res != -EAGAIN) {
        counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
      }
    } else if ((flags & IORING_CQE_F_BUFFER) != 0) {
      const uint16_t id = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      RingWrite& write = ring->writes[id];
      msghdr none{};
      if (!Deliver(*ring->socket, ring->buffer(id), res, ring->buffer_bytes, none, &write,
                   &write.tunnel, &write.inner_len)) {
        Recycle(ring, id);
      }
    }
    if (!more) ArmMultishot(ring);
  }

  void CompleteRingWrite(RingWrite* write, int res) {
    TunnelRuntime* tunnel = write->tunnel;
    --tunnel->inflight;
    tunnel->path->DeliverDone(write->inner_len, res);
    Recycle(write->ring, write->buffer_id);
    if (tunnel->removal) MaybeFinishRemoval(tunnel);
  }

  // Receive, second half.
  void CompleteDeviceWrite(Slot* slot, int res) {
    TunnelRuntime* tunnel = slot->tunnel;
    --tunnel->inflight;
    tunnel->path->DeliverDone(slot->inner_len, res);
    if (tunnel->removal) MaybeFinishRemoval(tunnel);
    ArmReceive(slot);
  }

  // Writes every flow the receives coalesced to its device.
  void FlushCoalesced() {
    if (coalescer_.open_flows() == 0) return;
    coalescer_.Flush([this](const Coalescer::Flushed& f) {
      auto* tunnel = static_cast<TunnelRuntime*>(const_cast<void*>(f.owner));
      CoalescedWrite& op = coalesced_writes_[static_cast<size_t>(f.buffer)];
      op.op = OpKind::kCoalescedWrite;
      op.tunnel = tunnel;
      op.buffer = f.buffer;
      op.segments = f.segments;
      op.inner_bytes = f.inner_bytes;
      io_uring_sqe* sqe = NextSqe();
      io_uring_prep_write(sqe, tunnel->path->config().device_fd, f.data,
                          static_cast<unsigned>(f.len), 0);
      UseFile(sqe, tunnel->device_file);
      io_uring_sqe_set_data(sqe, static_cast<Operation*>(&op));
      ++inflight_total_;
      ++tunnel->inflight;
    });
  }

  void CompleteCoalescedWrite(CoalescedWrite* op, int res) {
    TunnelRuntime* tunnel = op->tunnel;
    --tunnel->inflight;
    tunnel->path->DeliverDone(op->inner_bytes, res, op->segments);
    coalescer_.Release(op->buffer);
    if (tunnel->removal) MaybeFinishRemoval(tunnel);
  }

  void CompleteTimer() {
    if (stopping_) return;
    const absl::Time now = absl::Now();
    // Errors about the tunnels' packets: rare, read with plain calls, a bounded number a tick.
    too_big_.Read(kTooBigReadsPerTick, [this](const TooBigReport& report) {
      by_remote_.Dispatch(report, counters_, options_.worker == 0);
    });
    for (auto& [name, tunnel] : tunnels_) {
      if (tunnel->removal || now < tunnel->next_tick) continue;
      tunnel->next_tick = tunnel->path->Tick(now);
    }
    ArmTimer();
  }

  void CompleteWake() {
    std::deque<std::unique_ptr<EngineCommand>> commands = mailbox_.TakeAll();
    for (auto& command : commands) {
      switch (command->kind) {
        case EngineCommand::Kind::kAdd:
          command->done.set_value(Add(command->tunnel));
          break;
        case EngineCommand::Kind::kRemove:
          BeginRemoval(std::move(command));
          break;
        case EngineCommand::Kind::kStop:
          stopping_ = true;
          stop_command_ = std::move(command);
          break;
      }
    }
    if (!stopping_) ArmWake();
  }

  absl::Status Add(const EngineTunnel& config) {
    absl::StatusOr<std::unique_ptr<TunnelDatapath>> path =
        NewTunnelDatapath(config, tunnels_, by_match_, &io_, &clock_, options_.worker);
    if (!path.ok()) return path.status();
    auto tunnel = std::make_unique<TunnelRuntime>();
    tunnel->path = std::move(*path);
    // Room for the headroom, a frame of the device's largest, and enough beyond it to tell a
    // frame that overflows the MTU from one that fits exactly.
    // With offloads, a read can be a 64 KiB super-packet.
    const size_t capacity =
        DeviceBufferBytes(config.vnet_header ? 65535 : tunnel->path->max_frame());
    // A worker that does not read the device only writes to it, from its receive buffers.
    const unsigned depth = config.read_device ? options_.device_reads_per_tunnel : 0;
    tunnel->memory.reset(new uint8_t[capacity * depth]);
    tunnel->slots.resize(depth);
    for (unsigned i = 0; i < depth; ++i) {
      Slot& slot = tunnel->slots[i];
      slot.tunnel = tunnel.get();
      slot.buffer = tunnel->memory.get() + i * capacity;
      slot.capacity = static_cast<uint32_t>(capacity);
      slot.msg.msg_name = const_cast<sockaddr*>(tunnel->path->destination());
      slot.msg.msg_namelen = tunnel->path->destination_len();
      slot.msg.msg_iov = &slot.iov;
      slot.msg.msg_iovlen = 1;
    }
    if (tunnel->path->fou()) {
      for (Slot& slot : tunnel->slots) {
        slot.msg.msg_name = nullptr;  // connected UDP sockets
        slot.msg.msg_namelen = 0;
      }
      bool opened = false;
      absl::StatusOr<FouSocket*> port =
          fou_ports_.Acquire(config.encap.udp_dport, FouProtocol(config.encap.mode),
                             options_.socket_buffer_bytes, options_.workers > 1, &opened);
      if (!port.ok()) return port.status();
      if (opened) StartFouReceiver(*port);
      tunnel->fou_port = config.encap.udp_dport;
    }
    TunnelRuntime* raw = tunnel.get();
    raw->device_file = RegisterFile(config.device_fd);
    by_match_.Insert(raw->path->match(), raw);
    by_remote_.Insert(config.encap.remote, raw);
    tunnels_[config.name] = std::move(tunnel);
    for (Slot& slot : raw->slots) ArmDeviceRead(&slot);
    return absl::OkStatus();
  }

  // Removal is asynchronous inside the engine: the tunnel stops matching at once, its pending
  // device reads are cancelled, and the caller is answered when the last operation that
  // touches its device or buffers has completed.
  void BeginRemoval(std::unique_ptr<EngineCommand> command) {
    auto it = tunnels_.find(command->name);
    if (it == tunnels_.end() || it->second->removal) {
      command->done.set_value(
          absl::NotFoundError(absl::StrCat("tunnel ", command->name, " not found")));
      return;
    }
    TunnelRuntime* tunnel = it->second.get();
    by_match_.Erase(tunnel->path->match());
    by_remote_.Erase(tunnel->path->config().encap.remote, tunnel);
    coalescer_.Discard(tunnel);
    tunnel->removal = std::move(command);
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_cancel_fd(sqe, tunnel->path->config().device_fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, &cancel_slot_);
    ++inflight_total_;
    MaybeFinishRemoval(tunnel);
  }

  void MaybeFinishRemoval(TunnelRuntime* tunnel) {
    if (tunnel->inflight != 0) return;
    std::unique_ptr<EngineCommand> command = std::move(tunnel->removal);
    if (tunnel->fou_port != 0) fou_ports_.Release(tunnel->fou_port);
    UnregisterFile(tunnel->device_file);
    tunnels_.erase(tunnel->path->config().name);  // frees the tunnel and its buffers
    command->done.set_value(absl::OkStatus());
  }

  const UringEngineOptions options_;
  io_uring ring_{};
  std::thread thread_;
  // Written by the thread every time round its loop; the heartbeat is read from any thread.
  WorkerClock clock_;
  WorkerHeartbeat heartbeat_;

  UnderlayIo io_;
  std::vector<ReceiveSocket> sockets_;
  // Registered files (RegisterFiles): free table indices, and those of the sockets.
  std::vector<int> free_files_;
  int send_files_[2] = {-1, -1};   // IPv4, IPv6 raw send sockets
  std::vector<int> socket_files_;  // parallel to sockets_

  // Owned by the engine thread once it runs.
  std::unique_ptr<uint8_t[]> rx_memory_;
  std::vector<Slot> rx_slots_;
  std::vector<std::unique_ptr<ProvidedRing>> rings_;
  FouPorts fou_ports_;
  std::vector<std::unique_ptr<FouReceiver>> fou_receivers_;
  Slot wake_slot_;
  Slot timer_slot_;
  __kernel_timespec timer_spec_{};
  Slot cancel_slot_ = [] {
    Slot slot;
    slot.op = OpKind::kCancel;
    return slot;
  }();
  uint64_t wake_value_ = 0;
  // Operations submitted and not yet completed, all kinds.
  uint64_t inflight_total_ = 0;
  bool stopping_ = false;
  std::unique_ptr<EngineCommand> stop_command_;
  absl::flat_hash_map<std::string, std::unique_ptr<TunnelRuntime>> tunnels_;
  TunnelTable<TunnelRuntime> by_match_;
  TooBigReader too_big_;
  TunnelsByRemote<TunnelRuntime> by_remote_;
  Coalescer coalescer_{kCoalescerFlows, kCoalescerBuffers};
  std::vector<CoalescedWrite> coalesced_writes_ = std::vector<CoalescedWrite>(kCoalescerBuffers);

  DataplaneCounters counters_;

  CommandMailbox mailbox_;
};

absl::StatusOr<std::unique_ptr<UringEngine>> UringEngine::Start(const UringEngineOptions& options) {
  if (options.ring_entries == 0 || options.device_reads_per_tunnel == 0 ||
      options.socket_receives == 0 || options.receive_buffer_bytes < 2048) {
    return absl::InvalidArgumentError("io_uring engine: ring, queue depths and buffers too small");
  }
  auto impl = std::make_unique<Impl>(options);
  absl::Status status = impl->Start();
  if (!status.ok()) return status;
  return std::unique_ptr<UringEngine>(new UringEngine(std::move(impl)));
}

UringEngine::UringEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UringEngine::~UringEngine() = default;

absl::Status UringEngine::AddTunnel(const EngineTunnel& tunnel) {
  return impl_->mailbox().AddTunnel(tunnel);
}

absl::Status UringEngine::RemoveTunnel(const std::string& name) {
  return impl_->mailbox().RemoveTunnel(name);
}

const DataplaneCounters& UringEngine::counters() const { return impl_->counters(); }

absl::Status UringEngine::Health(absl::Duration stall) const {
  return impl_->heartbeat().Health(stall);
}

}  // namespace tunnelagent::dataplane
