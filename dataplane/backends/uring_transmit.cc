// The io_uring worker's transmit path (see uring_worker.h).
#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>
#include <vector>

#include "dataplane/backends/uring_worker.h"

namespace tunnelagent::dataplane {

void UringWorker::ArmDeviceRead(TransmitBuffer* b) {
  b->op = OpKind::kDeviceRead;
  TunnelDatapath& tunnel = *b->tunnel;
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_read(sqe, tunnel.device_fd(), b->buffer + tunnel.read_offset(),
                     static_cast<unsigned>(tunnel.read_bytes()), 0);
  UringRing::UseFile(sqe, StateOf(tunnel).device_file);
  Submit(sqe, b, tunnel);
}

void UringWorker::CompleteDeviceRead(TransmitBuffer* b, int res) {
  TunnelDatapath& tunnel = *b->tunnel;
  if (Settled(tunnel)) return;
  if (res <= 0) {
    if (res == 0 || res == -EAGAIN || res == -EINTR) return ArmDeviceRead(b);
    tunnel.counters().tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
    // A device that answers EBADF/EBADFD/EINVAL/EFAULT will answer so forever: park this
    // buffer rather than spin on it (counted above; removal still accounts for it).
    if (res == -EBADF || res == -EBADFD || res == -EINVAL || res == -EFAULT) return;
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
  int fd = io_.send_fd(tunnel.ipv6_underlay());
  int file = send_files_[tunnel.ipv6_underlay()];
  if (tunnel.fou()) {
    // Through the tunnel's connected UDP sender: the payload after the IP and UDP headers.
    const TunnelDatapath::FouPayload p = tunnel.FouPayloadOf(out);
    fd = p.sender;
    file = -1;
    b->iov = p.payload;
    b->msg.msg_control = b->control;
    b->msg.msg_controllen = WriteFouControl(b->control, p.tos, p.ttl, 0);
  } else {
    b->iov.iov_base = out.packet;
    b->iov.iov_len = out.len;
  }
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_sendmsg(sqe, fd, &b->msg, 0);
  UringRing::UseFile(sqe, file);
  Submit(sqe, b, tunnel);
}

void UringWorker::CompleteSend(TransmitBuffer* b, int res) {
  TunnelDatapath& tunnel = *b->tunnel;
  --StateOf(tunnel).inflight;
  tunnel.TransmitDone(b->frame, b->inner_len, res);
  if (Settled(tunnel, /*counted=*/true)) return;
  ArmDeviceRead(b);
}

void UringWorker::TransmitSuperPacket(TransmitBuffer* b, const PacketCore::DeviceFrame& read) {
  TunnelDatapath& tunnel = *b->tunnel;
  if (!b->segments) b->segments = std::make_unique<SegmentSends>();
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
    } else {
      op.count = 1;
      op.iov.iov_base = s.batch.packets[first].packet;
      op.iov.iov_len = s.batch.packets[first].len;
      op.msg.msg_name = const_cast<sockaddr*>(tunnel.destination());
      op.msg.msg_namelen = tunnel.destination_len();
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
    tunnel.TransmitDone(batch.frames[i], batch.lens[i], res >= 0 ? 1 : res);
  }
  const bool last = --b->segments->pending == 0;
  if (Settled(tunnel, /*counted=*/true)) return;
  if (last) ArmDeviceRead(b);
}

}  // namespace tunnelagent::dataplane
