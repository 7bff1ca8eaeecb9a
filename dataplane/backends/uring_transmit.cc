// The io_uring worker's transmit path (see uring_worker.h).
#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "dataplane/backends/uring_worker.h"

namespace tunnelagent::dataplane {

SharedReadBuffers* UringWorker::SharedBuffersFor(const TunnelDatapath& tunnel) {
  if (shared_reads_unavailable_ || options_.device_buffers_max == 0) return nullptr;
  std::unique_ptr<SharedReadBuffers>& shared = shared_reads_[tunnel.vnet_header()];
  if (!shared) {
    auto made = std::make_unique<SharedReadBuffers>();
    // Group ids apart from the receive sockets' (0 up); one buffer size for every tunnel: only
    // the pages a packet fills become resident.
    const auto group = static_cast<uint16_t>(kSharedReadGroup + tunnel.vnet_header());
    if (!made->pool.Register(ring_.get(), group, options_.device_buffers,
                             options_.device_buffers_max, kMaxDeviceBufferBytes,
                             tunnel.read_offset())) {
      shared_reads_unavailable_ = true;  // an older kernel: every tunnel keeps its own
      return nullptr;
    }
    shared = std::move(made);
  }
  // Every read of the tunnel must fit any buffer (true for any MTU the engine accepts).
  if (tunnel.read_offset() != shared->pool.read_offset() ||
      tunnel.buffer_bytes() > shared->pool.buffer_bytes()) {
    return nullptr;
  }
  return shared.get();
}

void UringWorker::ReleaseDeviceBuffer(TransmitBuffer* b) {
  if (b->segments && b->segments->pending == 0) spare_segments_.push_back(std::move(b->segments));
  if (b->shared_id < 0) return;
  SharedReadBuffers& shared = *StateOf(*b->tunnel).shared;
  const auto id = static_cast<uint16_t>(b->shared_id);
  b->shared_id = -1;
  b->buffer = nullptr;
  shared.pool.Recycle(id);
  ArmWaitingReads(shared, shared.pool.stats().provided);
}

void UringWorker::ArmWaitingReads(SharedReadBuffers& shared, unsigned ready) {
  while (ready > 0 && !shared.waiting.empty()) {
    TransmitBuffer* next = shared.waiting.front();
    shared.waiting.pop_front();
    if (StateOf(*next->tunnel).removal) continue;
    ArmDeviceRead(next);
    --ready;
  }
}

void UringWorker::WaitForDeviceBuffer(TransmitBuffer* b) {
  core_.counters().device_read_waits.Add();
  SharedReadBuffers& shared = *StateOf(*b->tunnel).shared;
  shared.waiting.push_back(b);
  // Buffers came back since the read failed, or the pool may grow: the waiting try again now;
  // otherwise when a buffer comes back (ReleaseDeviceBuffer).
  unsigned ready = shared.pool.stats().provided;
  if (ready == 0) ready = shared.pool.Grow();
  ArmWaitingReads(shared, ready);
}

void UringWorker::ArmDeviceRead(TransmitBuffer* b) {
  ReleaseDeviceBuffer(b);
  if (reads_paused_) return;  // the buffer rests; removal does not wait for it
  b->op = OpKind::kDeviceRead;
  TunnelDatapath& tunnel = *b->tunnel;
  io_uring_sqe* sqe = ring_.NextSqe();
  if (SharedReadBuffers* shared = StateOf(tunnel).shared; shared != nullptr) {
    // No buffer yet: the kernel picks one from the ring when a packet is there to copy.
    io_uring_prep_read(sqe, tunnel.device_fd(), nullptr, static_cast<unsigned>(tunnel.read_bytes()),
                       0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = shared->pool.group();
  } else {
    io_uring_prep_read(sqe, tunnel.device_fd(), b->buffer + tunnel.read_offset(),
                       static_cast<unsigned>(tunnel.read_bytes()), 0);
  }
  UringRing::UseFile(sqe, StateOf(tunnel).device_file);
  Submit(sqe, b, tunnel);
}

void UringWorker::CompleteDeviceRead(TransmitBuffer* b, int res, unsigned flags) {
  TunnelDatapath& tunnel = *b->tunnel;
  UringTunnel& state = StateOf(tunnel);
  if (state.shared != nullptr && (flags & IORING_CQE_F_BUFFER) != 0) {
    const auto id = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    if (state.shared->pool.Owns(id)) {
      state.shared->pool.Took(id);
      b->shared_id = id;
      b->buffer = state.shared->pool.buffer(id);
    }
  }
  // A tunnel being removed gives its buffer back before it may be freed.
  if (state.removal) ReleaseDeviceBuffer(b);
  if (Settled(tunnel)) return;
  if (res <= 0) {
    if (res == -ENOBUFS && state.shared != nullptr) return WaitForDeviceBuffer(b);
    if (res == 0 || res == -EAGAIN || res == -EINTR) return ArmDeviceRead(b);
    // Cancelled on purpose (a pause for a hot upgrade, the worker stopping): no packet lost.
    if (res == -ECANCELED) return ReleaseDeviceBuffer(b);
    tunnel.counters().tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
    // A device that answers EBADF/EBADFD/EINVAL/EFAULT will answer so forever: park this
    // read rather than spin on it (counted above; removal still accounts for it).
    if (res == -EBADF || res == -EBADFD || res == -EINVAL || res == -EFAULT) {
      return ReleaseDeviceBuffer(b);
    }
    return ArmDeviceRead(b);
  }
  if (b->buffer == nullptr) {
    // A shared read that names no buffer of ours: nothing to take; counted, read again.
    tunnel.counters().tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
    return ArmDeviceRead(b);
  }
  b->frame = b->buffer + kDeviceHeadroom;
  EncapResult out;
  PacketCore::DeviceFrame read;
  switch (core_.TakeDeviceRead(tunnel, b->frame, static_cast<size_t>(res), &out, &read)) {
    case PacketCore::DeviceVerdict::kDone:
      return ArmDeviceRead(b);
    case PacketCore::DeviceVerdict::kSuperPacket:
      return TransmitSuperPacket(b, read);
    case PacketCore::DeviceVerdict::kSend:
      break;
  }
  b->op = OpKind::kSend;
  b->inner_len = static_cast<uint32_t>(read.len);
  b->peer = out.peer;
  int fd = io_.send_fd(tunnel.ipv6_underlay());
  int file = send_files_[tunnel.ipv6_underlay()];
  if (tunnel.fou()) {
    // Through the tunnel's UDP sender: the payload after the IP and UDP headers. A multipoint
    // tunnel's sender is not connected: the send names the peer, from the buffer's own copy.
    const TunnelDatapath::FouPayload p = tunnel.FouPayloadOf(out);
    fd = p.sender;
    file = -1;
    b->iov = p.payload;
    b->msg.msg_control = b->control;
    b->msg.msg_controllen = WriteFouControl(b->control, p.tos, p.ttl, 0);
    b->msg.msg_name = nullptr;
    b->msg.msg_namelen = 0;
    if (p.destination != nullptr) {
      std::memcpy(&b->destination, p.destination, p.destination_len);
      b->msg.msg_name = &b->destination;
      b->msg.msg_namelen = p.destination_len;
    }
  } else {
    b->iov.iov_base = out.packet;
    b->iov.iov_len = out.len;
    std::memcpy(&b->destination, out.destination, out.destination_len);
    b->msg.msg_namelen = out.destination_len;
  }
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_sendmsg(sqe, fd, &b->msg, 0);
  UringRing::UseFile(sqe, file);
  Submit(sqe, b, tunnel);
}

void UringWorker::CompleteSend(TransmitBuffer* b, int res) {
  TunnelDatapath& tunnel = *b->tunnel;
  --StateOf(tunnel).inflight;
  tunnel.TransmitDone(b->frame, b->inner_len, res, b->peer);
  ReleaseDeviceBuffer(b);
  if (Settled(tunnel, /*counted=*/true)) return;
  ArmDeviceRead(b);
}

void UringWorker::TransmitSuperPacket(TransmitBuffer* b, const PacketCore::DeviceFrame& read) {
  TunnelDatapath& tunnel = *b->tunnel;
  if (!b->segments) {
    if (spare_segments_.empty()) {
      b->segments = std::make_unique<SegmentSends>();
    } else {
      b->segments = std::move(spare_segments_.back());
      spare_segments_.pop_back();
    }
  }
  SegmentSends& s = *b->segments;
  size_t next = 0;
  size_t made = 0;
  size_t prepared = core_.PrepareSegments(tunnel, read, b->frame, &next, s.batch, &made);
  if (next < read.segments) {
    while (made != 0) {
      core_.SendPreparedNow(tunnel, s.batch, prepared);
      prepared = core_.PrepareSegments(tunnel, read, b->frame, &next, s.batch, &made);
    }
    return ArmDeviceRead(b);
  }
  s.pending = 0;
  const int file = tunnel.fou() ? -1 : send_files_[tunnel.ipv6_underlay()];
  for (size_t first = 0; first < prepared;) {
    SegmentSend& op = s.sends[s.pending++];
    op.op = OpKind::kSegmentSend;
    op.owner = b;
    op.first = static_cast<uint16_t>(first);
    op.msg = msghdr{};
    int fd = io_.send_fd(tunnel.ipv6_underlay());
    if (tunnel.fou()) {
      // Runs of equal-sized payloads of one sender as one UDP GSO send.
      uint16_t gso_size = 0;
      const size_t n = tunnel.NextFouRun(s.batch.packets + first, prepared - first, s.iovs + first,
                                         &fd, &gso_size);
      const TunnelDatapath::FouPayload head = tunnel.FouPayloadOf(s.batch.packets[first]);
      op.count = static_cast<uint16_t>(n);
      op.msg.msg_iov = &s.iovs[first];
      op.msg.msg_iovlen = n;
      op.msg.msg_control = op.control;
      op.msg.msg_controllen = WriteFouControl(op.control, head.tos, head.ttl, gso_size);
      if (head.destination != nullptr) {  // multipoint: the run's peer, the send's own copy
        std::memcpy(&op.destination, head.destination, head.destination_len);
        op.msg.msg_name = &op.destination;
        op.msg.msg_namelen = head.destination_len;
      }
    } else {
      op.count = 1;
      const EncapResult& packet = s.batch.packets[first];
      op.iov.iov_base = packet.packet;
      op.iov.iov_len = packet.len;
      std::memcpy(&op.destination, packet.destination, packet.destination_len);
      op.msg.msg_name = &op.destination;
      op.msg.msg_namelen = packet.destination_len;
      op.msg.msg_control = tunnel.send_control();
      op.msg.msg_controllen = tunnel.send_control_len();
      op.msg.msg_iov = &op.iov;
      op.msg.msg_iovlen = 1;
    }
    first += op.count;
    io_uring_sqe* sqe = ring_.NextSqe();
    io_uring_prep_sendmsg(sqe, fd, &op.msg, 0);
    UringRing::UseFile(sqe, file);
    Submit(sqe, &op, tunnel);
  }
  if (s.pending == 0) ArmDeviceRead(b);
}

void UringWorker::CompleteSegmentSend(SegmentSend* op, int res) {
  TransmitBuffer* b = op->owner;
  TunnelDatapath& tunnel = *b->tunnel;
  --StateOf(tunnel).inflight;
  SegmentBatch& batch = b->segments->batch;
  if (res == -EIO && op->count > 1) tunnel.DisableFouGso();  // counted below
  for (size_t i = op->first; i < size_t{op->first} + op->count; ++i) {
    tunnel.TransmitDone(batch.frames[i], batch.lens[i], res >= 0 ? 1 : res, batch.packets[i].peer);
  }
  const bool last = --b->segments->pending == 0;
  if (last) ReleaseDeviceBuffer(b);
  if (Settled(tunnel, /*counted=*/true)) return;
  if (last) ArmDeviceRead(b);
}

}  // namespace tunnelagent::dataplane
