// The io_uring backend's worker: its operations (each SQE's user_data is one of them, so a
// completion leads straight back to its buffer and tunnel), its buffers and its loop. Split over
// uring_engine.cc (the loop, commands, tunnels), uring_transmit.cc and uring_receive.cc.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_URING_WORKER_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_URING_WORKER_H_

#include <liburing.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "dataplane/backends/buffer_pool.h"
#include "dataplane/backends/uring_ring.h"
#include "dataplane/backends/worker.h"
#include "dataplane/underlay/fou.h"

namespace tunnelagent::dataplane {

// What an operation the worker submitted was, for its completion.
enum class OpKind : uint8_t {
  kDeviceRead,
  kSend,
  kSegmentSend,
  kSocketReceive,
  kDeviceWrite,
  kCoalescedWrite,
  kMultishotReceive,
  kProvidedWrite,
  kFouReceive,
  kWake,
  kTimer,
  kCancel
};

// What an SQE's user_data points at: the operation's kind, then what it needs.
struct Operation {
  OpKind op = OpKind::kDeviceRead;
};

struct TransmitBuffer;

// Segments of a super-packet on their way out: one per send (raw IP), or a run of them sent
// as one UDP GSO send (fou).
struct SegmentSend : Operation {
  TransmitBuffer* owner = nullptr;
  uint16_t first = 0;  // in the batch's prepared segments
  uint16_t count = 0;
  msghdr msg{};
  iovec iov{};
  // Raw and multipoint fou sends: the destination, the send's own copy (a multipoint tunnel's
  // peer may be removed before the send completes).
  sockaddr_in6 destination{};
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];
};

// Where a transmit buffer splits a super-packet (allocated the first time it reads one).
struct SegmentSends {
  SegmentBatch batch;
  iovec iovs[kMaxSegments];
  SegmentSend sends[kMaxSegments];
  uint32_t pending = 0;  // sends in flight
};

// One of a tunnel's device reads: read into, wrapped in place and sent, read again. Its
// address is the SQE's user_data, so a completion leads straight back to it. With the worker's
// shared buffers (UringTunnel::shared) it holds one only from the read's completion to the end
// of its send (`buffer`, `shared_id`); otherwise `buffer` is the tunnel's own, for good.
struct TransmitBuffer : Operation {
  TunnelDatapath* tunnel = nullptr;
  uint8_t* buffer = nullptr;
  int32_t shared_id = -1;    // the shared buffer held; -1: none
  uint8_t* frame = nullptr;  // the frame read from the device (buffer + kDeviceHeadroom)
  uint32_t inner_len = 0;    // what the tunnel's counters count
  uint64_t peer = 0;         // EncapResult::peer of the packet being sent
  msghdr msg{};
  iovec iov{};
  // Raw and multipoint fou sends: the destination, the send's own copy (a multipoint
  // tunnel's peer may be removed before the send completes).
  sockaddr_in6 destination{};
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];  // fou sends: TOS and TTL
  // With offloads, while a super-packet is split and sent: lent by the worker (33 KiB each,
  // so not one per read of every tunnel).
  std::unique_ptr<SegmentSends> segments;
};

// A receive buffer of an underlay socket (raw or fou): received into, its packet written to a
// device, received into again.
struct ReceiveBuffer : Operation {
  const ReceiveSocket* socket = nullptr;  // raw receives
  FouSocket* fou = nullptr;               // fou receives
  TunnelDatapath* tunnel = nullptr;       // the device being written to
  uint8_t* buffer = nullptr;
  uint32_t capacity = 0;
  uint32_t inner_len = 0;
  msghdr msg{};
  iovec iov{};
  ReceiveAddress from{};                                   // IPv6 and fou: the source
  alignas(cmsghdr) uint8_t control[kReceiveControlBytes];  // IPv6 and fou: address, class
};
static_assert(kReceiveControlBytes >= kFouControlBytes);

// A coalesced packet (Coalescer) being written to its device.
struct CoalescedWrite : Operation {
  TunnelDatapath* tunnel = nullptr;
  Coalescer::Flushed flow;
};

struct MultishotReceiver;

// A provided buffer's packet being written to its device; the buffer goes back after.
struct ProvidedWrite : Operation {
  MultishotReceiver* receiver = nullptr;
  uint16_t buffer_id = 0;
  TunnelDatapath* tunnel = nullptr;
  uint32_t inner_len = 0;
};

// Receive on an IPv4 underlay socket: one multishot recv that the kernel keeps going, its
// packets landing in provided buffers. One poll entry per socket instead of one per receive in
// flight, so a packet's arrival wakes one receive, not all of them.
struct MultishotReceiver : Operation {
  const ReceiveSocket* socket = nullptr;
  ProvidedBuffers buffers;
  std::vector<ProvidedWrite> writes;  // by buffer id
};

// The device read buffers a worker's tunnels share, for the tunnels of one read offset (with
// or without a virtio-net header), and the reads that found them all taken.
struct SharedReadBuffers {
  DeviceBufferPool pool;
  // Reads that completed with ENOBUFS, armed again in order as buffers come back (a read armed
  // holds no buffer until a packet is there, so re-arming costs no buffer of anyone's).
  std::deque<TransmitBuffer*> waiting;
};

// The io_uring backend's state of one tunnel (TunnelDatapath::backend).
struct UringTunnel {
  SharedReadBuffers* shared = nullptr;  // null: the reads use `memory`
  std::unique_ptr<uint8_t[]> memory;
  std::vector<TransmitBuffer> buffers;
  uint32_t inflight = 0;
  int device_file = -1;                    // the device's registered file; -1: none
  std::unique_ptr<EngineCommand> removal;  // set while the tunnel is being removed
};

inline UringTunnel& StateOf(const TunnelDatapath& tunnel) { return *tunnel.backend<UringTunnel>(); }

// Buffer group ids of the shared device read buffers (SharedReadBuffers), apart from those of
// the receive sockets' provided buffers (0 up): this one without, the next with a virtio-net
// header.
inline constexpr uint16_t kSharedReadGroup = 0x100;
// Receives kept in flight on a fou port's socket, each with room for what UDP GRO brings.
inline constexpr unsigned kFouReceives = 16;
// Coalescer buffers: open flows plus writes in flight.
inline constexpr size_t kCoalescerBuffers = 48;

class UringWorker final : public Worker {
 public:
  explicit UringWorker(const EngineOptions& options) : Worker(options, kCoalescerBuffers) {}
  ~UringWorker() override { StopThread(); }

 private:
  absl::Status SetUpOnThread() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  void Run() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // Cancels everything still in flight and waits for it, so that when the engine is gone no
  // operation holds a device or buffer (io_uring_queue_exit alone would let the kernel finish
  // the cancellation in the background, keeping devices alive a little longer). A ring that is
  // gone cannot be asked; its queue_exit is all there is.
  void Shutdown(bool ring_usable) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // Every SQE goes through here: its operation, and the count Shutdown waits on.
  void Submit(io_uring_sqe* sqe, Operation* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    io_uring_sqe_set_data(sqe, op);
    ++inflight_;
  }
  // The same for an operation on a tunnel's device or buffers, which removal waits on.
  void Submit(io_uring_sqe* sqe, Operation* op, TunnelDatapath& tunnel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    Submit(sqe, op);
    ++StateOf(tunnel).inflight;
  }

  void ArmWake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_read(sqe, mailbox_.fd(), &wake_value_, sizeof wake_value_, 0);
    Submit(sqe, &wake_op_);
  }

  void ArmTimer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    io_uring_sqe* sqe = ring_.NextSqe();
    timer_spec_.tv_sec = 0;
    timer_spec_.tv_nsec = absl::ToInt64Nanoseconds(kTickResolution);
    io_uring_prep_timeout(sqe, &timer_spec_, 0, 0);
    Submit(sqe, &timer_op_);
  }

  void Complete(Operation* op, int res, unsigned flags) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // A pause (Worker::RequestPause): the reads of every device and socket are cancelled and
  // none is armed again; completions still run, so a read that took a packet before its
  // cancellation still sends or delivers it. Reading counts as paused once nothing but the
  // wake and the timer is in flight.
  void PauseReads() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // Cancels the tunnel's device reads in flight (for a pause or its removal).
  void CancelDeviceReads(UringTunnel& tunnel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  void CancelReadsByDescriptor() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  void CheckPaused() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    if (reads_paused_ && !reading_paused() && inflight_ <= 2) MarkReadingPaused();
  }

  // ---- Transmit ---------------------------------------------------------------------------

  void ArmDeviceRead(TransmitBuffer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // A frame the host routed into the device (`flags`: the CQE's, naming a shared buffer taken).
  void CompleteDeviceRead(TransmitBuffer* b, int res, unsigned flags)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // The shared buffers for `tunnel`'s reads, made (and registered) with its first tunnel of
  // that read offset; null when the tunnel keeps its own (the kernel has no buffer rings, or
  // device_buffers_max is 0).
  SharedReadBuffers* SharedBuffersFor(const TunnelDatapath& tunnel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // A read gives back the shared buffer it holds, if any (a read waiting for one is armed
  // again), and the segment sends it borrowed once none is in flight.
  void ReleaseDeviceBuffer(TransmitBuffer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // A read found every shared buffer taken: the pool grows if it may, and the read waits for
  // a buffer (counted).
  void WaitForDeviceBuffer(TransmitBuffer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // Arms up to `ready` of the reads waiting for `shared`'s buffers, the longest waiting first.
  // A read of a tunnel being removed is dropped: its removal does not wait for it.
  void ArmWaitingReads(SharedReadBuffers& shared, unsigned ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteSend(TransmitBuffer* b, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // A super-packet: split and each segment (or fou run) sent as its own operation; the buffer
  // reads again when the last completes. One that splits into more segments than a round
  // holds (an MSS of a few hundred bytes) is sent at once, a round at a time, so that its
  // segments still leave in order.
  void TransmitSuperPacket(TransmitBuffer* b, const PacketCore::DeviceFrame& read)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteSegmentSend(SegmentSend* op, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // ---- Receive ----------------------------------------------------------------------------

  void SetUpReceives() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  std::vector<ReceiveBuffer> MakeReceiveBuffers(size_t count, std::unique_ptr<uint8_t[]>* memory)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  bool HasMultishot(const ReceiveSocket* socket) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    return std::any_of(multishot_.begin(), multishot_.end(),
                       [socket](const auto& r) { return r->socket == socket; });
  }

  int SocketFile(const ReceiveSocket* socket) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    const size_t i = static_cast<size_t>(socket - sockets_.data());
    return i < socket_files_.size() ? socket_files_[i] : -1;
  }

  void ArmReceive(ReceiveBuffer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  static void ResetReceiveMessage(ReceiveBuffer* b) {
    b->msg.msg_name = &b->from;
    b->msg.msg_namelen = sizeof b->from;
    b->msg.msg_control = b->control;
    b->msg.msg_controllen = sizeof b->control;
    b->msg.msg_flags = 0;
  }

  void CompleteReceive(ReceiveBuffer* b, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void WriteToDevice(const PacketCore::Delivery& d, Operation* op)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteDeviceWrite(ReceiveBuffer* b, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void ArmMultishot(MultishotReceiver* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteMultishot(MultishotReceiver* r, int res, unsigned flags)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteProvidedWrite(ProvidedWrite* write, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // Fou: receives on a port's socket, kept in flight from when the first tunnel uses it.
  void StartFouReceives(FouSocket* socket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void ArmFouReceive(ReceiveBuffer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteFouReceive(ReceiveBuffer* b, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // Called by the core (which runs on this thread only).
  void WriteCoalesced(TunnelDatapath& tunnel, const Coalescer::Flushed& f) override;

  void CompleteCoalescedWrite(CoalescedWrite* op, int res) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // ---- Housekeeping and commands ----------------------------------------------------------

  void CompleteTimer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  void CompleteWake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  absl::Status AttachTunnel(TunnelDatapath& tunnel) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // Removal is asynchronous inside the worker: the tunnel stops matching at once, its pending
  // device reads are cancelled, and the caller is answered when the last operation that
  // touches its device or buffers has completed.
  void BeginRemoval(std::unique_ptr<EngineCommand> command) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  // After an operation on the tunnel completed: true when the tunnel is being removed, and
  // then, once nothing of it is in flight, finishes the removal. `counted`: the caller has
  // taken the operation off the tunnel's in-flight count already.
  bool Settled(TunnelDatapath& tunnel, bool counted = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  UringRing ring_ ABSL_GUARDED_BY(role_);
  int send_files_[2] ABSL_GUARDED_BY(role_) = {-1, -1};   // IPv4, IPv6 raw send sockets
  std::vector<int> socket_files_ ABSL_GUARDED_BY(role_);  // parallel to sockets_
  std::vector<std::unique_ptr<UringTunnel>> tunnels_ ABSL_GUARDED_BY(role_);
  // Device read buffers by read offset: [0] devices without, [1] with a virtio-net header.
  std::unique_ptr<SharedReadBuffers> shared_reads_[2] ABSL_GUARDED_BY(role_);
  bool shared_reads_unavailable_ ABSL_GUARDED_BY(role_) = false;  // no buffer rings here
  // SegmentSends no read holds, for the next super-packet: as many as were ever split at once.
  std::vector<std::unique_ptr<SegmentSends>> spare_segments_ ABSL_GUARDED_BY(role_);

  // Owned by the worker's thread once it runs.
  std::unique_ptr<uint8_t[]> raw_memory_ ABSL_GUARDED_BY(role_);
  std::vector<ReceiveBuffer> raw_receives_ ABSL_GUARDED_BY(role_);
  std::vector<std::unique_ptr<MultishotReceiver>> multishot_ ABSL_GUARDED_BY(role_);
  std::vector<std::unique_ptr<std::unique_ptr<uint8_t[]>>> fou_memory_ ABSL_GUARDED_BY(role_);
  std::vector<std::vector<ReceiveBuffer>> fou_receives_ ABSL_GUARDED_BY(role_);
  std::vector<CoalescedWrite> coalesced_writes_ ABSL_GUARDED_BY(role_) =
      std::vector<CoalescedWrite>(kCoalescerBuffers);
  Operation wake_op_ ABSL_GUARDED_BY(role_) = {OpKind::kWake};
  Operation timer_op_ ABSL_GUARDED_BY(role_) = {OpKind::kTimer};
  Operation cancel_op_ ABSL_GUARDED_BY(role_) = {OpKind::kCancel};
  __kernel_timespec timer_spec_ ABSL_GUARDED_BY(role_) = {};
  uint64_t wake_value_ ABSL_GUARDED_BY(role_) = 0;
  bool reads_paused_ ABSL_GUARDED_BY(role_) = false;  // PauseReads: no read is armed again
  bool receiving_ ABSL_GUARDED_BY(role_) = false;     // SetUpReceives ran
  Operation pause_cancel_op_ ABSL_GUARDED_BY(role_) = {OpKind::kCancel};
  bool pause_by_descriptor_ ABSL_GUARDED_BY(role_) = false;
  uint64_t inflight_ ABSL_GUARDED_BY(role_) =
      0;  // operations submitted and not yet completed, all kinds
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_URING_WORKER_H_
