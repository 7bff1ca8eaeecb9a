// The io_uring worker's receive path (see uring_worker.h).
#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>
#include <vector>

#include "dataplane/backends/uring_worker.h"

namespace tunnelagent::dataplane {

void UringWorker::SetUpReceives() {
  // GRE and IPIP over IPv4 carry most traffic; the other sockets get a quarter of the depth.
  // IPv4 sockets take a multishot receive into provided buffers where the kernel has them.
  uint16_t group = 0;
  std::vector<const ReceiveSocket*> owners;
  for (const ReceiveSocket& socket : sockets_) {
    const bool main = !socket.ipv6 && socket.protocol != kIpProtoIpv6;
    if (!socket.ipv6) {
      auto receiver = std::make_unique<MultishotReceiver>();
      receiver->op = OpKind::kMultishotReceive;
      receiver->socket = &socket;
      if (receiver->buffers.Register(ring_.get(), group++, main ? 256 : 32,
                                     options_.receive_buffer_bytes)) {
        receiver->writes.resize(receiver->buffers.entries());
        for (unsigned id = 0; id < receiver->writes.size(); ++id) {
          receiver->writes[id].op = OpKind::kProvidedWrite;
          receiver->writes[id].receiver = receiver.get();
          receiver->writes[id].buffer_id = static_cast<uint16_t>(id);
        }
        multishot_.push_back(std::move(receiver));
        ArmMultishot(multishot_.back().get());
      }
    }
    const unsigned depth =
        main ? options_.socket_receives : std::max(1u, options_.socket_receives / 4);
    for (unsigned i = 0; i < depth; ++i) owners.push_back(&socket);
  }
  raw_receives_ = MakeReceiveBuffers(owners.size(), &raw_memory_);
  for (size_t i = 0; i < owners.size(); ++i) {
    raw_receives_[i].socket = owners[i];
    if (!HasMultishot(owners[i])) ArmReceive(&raw_receives_[i]);
  }
}

std::vector<ReceiveBuffer> UringWorker::MakeReceiveBuffers(size_t count,
                                                           std::unique_ptr<uint8_t[]>* memory) {
  const size_t stride = kReceiveHeadroom + options_.receive_buffer_bytes;
  memory->reset(new uint8_t[count * stride]);
  std::vector<ReceiveBuffer> buffers(count);
  for (size_t i = 0; i < count; ++i) {
    ReceiveBuffer& b = buffers[i];
    b.buffer = memory->get() + i * stride + kReceiveHeadroom;
    b.capacity = options_.receive_buffer_bytes;
    b.iov.iov_base = b.buffer;
    b.iov.iov_len = b.capacity;
    b.msg.msg_iov = &b.iov;
    b.msg.msg_iovlen = 1;
  }
  return buffers;
}

void UringWorker::ArmReceive(ReceiveBuffer* b) {
  if (reads_paused_) return;
  b->op = OpKind::kSocketReceive;
  b->tunnel = nullptr;
  io_uring_sqe* sqe = ring_.NextSqe();
  // MSG_TRUNC: the result is the datagram's real length, so a packet larger than the buffer
  // is seen as such instead of being passed on cut short.
  if (b->socket->ipv6) {
    // IPv6 raw sockets give no header: the addresses and traffic class come as ancillary data.
    ResetReceiveMessage(b);
    io_uring_prep_recvmsg(sqe, b->socket->fd, &b->msg, MSG_TRUNC);
  } else {
    io_uring_prep_recv(sqe, b->socket->fd, b->buffer, b->capacity, MSG_TRUNC);
  }
  UringRing::UseFile(sqe, SocketFile(b->socket));
  Submit(sqe, b);
}

void UringWorker::CompleteReceive(ReceiveBuffer* b, int res) {
  if (stopping_) return;
  if (res < 0) {
    core_.ReceiveFailed(res);
    return ArmReceive(b);
  }
  PacketCore::Delivery d;
  if (!core_.TakeDatagram(*b->socket, b->buffer, static_cast<size_t>(res), b->capacity, b->msg,
                          &d)) {
    return ArmReceive(b);
  }
  b->op = OpKind::kDeviceWrite;
  b->tunnel = d.tunnel;
  b->inner_len = d.inner_len;
  WriteToDevice(d, b);
}

void UringWorker::WriteToDevice(const PacketCore::Delivery& d, Operation* op) {
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_write(sqe, d.tunnel->device_fd(), d.data, static_cast<unsigned>(d.len), 0);
  UringRing::UseFile(sqe, StateOf(*d.tunnel).device_file);
  Submit(sqe, op, *d.tunnel);
}

void UringWorker::CompleteDeviceWrite(ReceiveBuffer* b, int res) {
  TunnelDatapath& tunnel = *b->tunnel;
  --StateOf(tunnel).inflight;
  tunnel.DeviceWriteDone(b->inner_len, res);
  Settled(tunnel, /*counted=*/true);
  ArmReceive(b);
}

void UringWorker::ArmMultishot(MultishotReceiver* r) {
  if (reads_paused_) return;
  io_uring_sqe* sqe = ring_.NextSqe();
  // MSG_TRUNC: the result is the datagram's real length, so a packet larger than the buffer
  // is seen as such.
  io_uring_prep_recv_multishot(sqe, r->socket->fd, nullptr, 0, MSG_TRUNC);
  UringRing::UseFile(sqe, SocketFile(r->socket));
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = r->buffers.group();
  Submit(sqe, r);
}

void UringWorker::CompleteMultishot(MultishotReceiver* r, int res, unsigned flags) {
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  if (more) ++inflight_;  // the receive goes on
  const bool has_buffer = (flags & IORING_CQE_F_BUFFER) != 0;
  const auto id = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
  if (stopping_) {
    if (has_buffer) r->buffers.Recycle(id);
    return;
  }
  if (res == -EINVAL || res == -EOPNOTSUPP) {
    // A kernel without multishot receives: this socket goes back to receives one by one.
    for (ReceiveBuffer& b : raw_receives_) {
      if (b.socket == r->socket) ArmReceive(&b);
    }
    return;
  }
  if (res < 0) {
    // ENOBUFS: every buffer is taken (writes in flight); the packets wait in the socket's
    // buffer until the receive is armed again.
    if (res != -ENOBUFS) core_.ReceiveFailed(res);
  } else if (has_buffer) {
    const msghdr none{};
    PacketCore::Delivery d;
    if (core_.TakeDatagram(*r->socket, r->buffers.buffer(id), static_cast<size_t>(res),
                           r->buffers.buffer_bytes(), none, &d)) {
      ProvidedWrite& write = r->writes[id];
      write.tunnel = d.tunnel;
      write.inner_len = d.inner_len;
      WriteToDevice(d, &write);
    } else {
      r->buffers.Recycle(id);
    }
  }
  if (!more) ArmMultishot(r);
}

void UringWorker::CompleteProvidedWrite(ProvidedWrite* write, int res) {
  TunnelDatapath& tunnel = *write->tunnel;
  --StateOf(tunnel).inflight;
  tunnel.DeviceWriteDone(write->inner_len, res);
  write->receiver->buffers.Recycle(write->buffer_id);
  Settled(tunnel, /*counted=*/true);
}

void UringWorker::StartFouReceives(FouSocket* socket) {
  auto memory = std::make_unique<std::unique_ptr<uint8_t[]>>();
  fou_receives_.push_back(MakeReceiveBuffers(kFouReceives, memory.get()));
  fou_memory_.push_back(std::move(memory));
  for (ReceiveBuffer& b : fou_receives_.back()) {
    b.fou = socket;
    ArmFouReceive(&b);
  }
}

void UringWorker::ArmFouReceive(ReceiveBuffer* b) {
  if (reads_paused_) return;
  b->op = OpKind::kFouReceive;
  ResetReceiveMessage(b);
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_recvmsg(sqe, b->fou->fd, &b->msg, 0);
  Submit(sqe, b);
}

void UringWorker::CompleteFouReceive(ReceiveBuffer* b, int res) {
  if (stopping_) return;
  if (res < 0) {
    core_.ReceiveFailed(res);
  } else {
    core_.TakeFouDatagrams(b->fou->protocol, b->buffer, static_cast<size_t>(res), b->msg);
  }
  ArmFouReceive(b);
}

void UringWorker::WriteCoalesced(TunnelDatapath& tunnel, const Coalescer::Flushed& f) {
  role_.Assume();  // the core calls it from this worker's loop
  CoalescedWrite& op = coalesced_writes_[static_cast<size_t>(f.buffer)];
  op.op = OpKind::kCoalescedWrite;
  op.tunnel = &tunnel;
  op.flow = f;
  io_uring_sqe* sqe = ring_.NextSqe();
  io_uring_prep_write(sqe, tunnel.device_fd(), f.data, static_cast<unsigned>(f.len), 0);
  UringRing::UseFile(sqe, StateOf(tunnel).device_file);
  Submit(sqe, &op, tunnel);
}

void UringWorker::CompleteCoalescedWrite(CoalescedWrite* op, int res) {
  TunnelDatapath& tunnel = *op->tunnel;
  --StateOf(tunnel).inflight;
  core_.CoalescedDone(tunnel, op->flow, res);
  Settled(tunnel, /*counted=*/true);
}

}  // namespace tunnelagent::dataplane
