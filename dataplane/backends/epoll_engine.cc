#include "dataplane/backends/epoll_engine.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backends/worker.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {
namespace {

// Packets read from one device, or received from one socket, per wakeup. Level-triggered
// epoll comes back for the rest, after the other ready sources had their turn.
constexpr unsigned kBatch = 64;
// Largest device buffer: headroom, a 64 KiB packet (a tap frame: its Ethernet header too) and
// the overflow margin. The worker's tunnels share one batch of them: nothing per tunnel.
constexpr size_t kMaxDeviceBuffer = kMaxDeviceBufferBytes;
constexpr int kMaxEvents = 256;
// Room for a batch of reads, or a round of a super-packet's segments.
constexpr size_t kMaxQueued = std::max<size_t>(kBatch, kMaxSegments);

// What an epoll event's data.ptr points at.
struct Source {
  enum class Kind : uint8_t { kWake, kSocket, kDevice, kFou };
  Kind kind;
  const ReceiveSocket* socket = nullptr;  // kSocket
  TunnelDatapath* tunnel = nullptr;       // kDevice
  FouSocket* fou = nullptr;               // kFou: a fou port's socket
};

// The epoll backend's state of one tunnel (TunnelDatapath::backend).
struct EpollTunnel {
  Source source{Source::Kind::kDevice};  // the epoll cookie
  int saved_flags = 0;  // the device fd's file status flags before the engine set O_NONBLOCK
  bool parked = false;  // out of the epoll set after a permanent device error
};

}  // namespace

class EpollWorker final : public Worker {
 public:
  explicit EpollWorker(const EngineOptions& options)
      : Worker(options, kCoalescerFlows), rx_batch_(std::min(options.socket_receives, kBatch)) {}

  ~EpollWorker() override {
    StopThread();
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

 private:
  absl::Status SetUpOnThread() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
    if (absl::Status s = Watch(mailbox_.fd(), &wake_source_); !s.ok()) return s;
    socket_sources_.resize(sockets_.size());
    for (size_t i = 0; i < sockets_.size(); ++i) {
      socket_sources_[i] = Source{Source::Kind::kSocket, &sockets_[i]};
      if (!receiving_requested()) continue;  // watched once asked (StartReceiving)
      if (absl::Status s = Watch(sockets_[i].fd, &socket_sources_[i]); !s.ok()) return s;
      receiving_ = true;
    }
    // Receive buffers are shared by every socket (they are served one after the other), the
    // transmit pool by every device.
    const size_t stride = kReceiveHeadroom + options_.receive_buffer_bytes;
    rx_memory_.reset(new uint8_t[size_t{rx_batch_} * stride]);
    rx_iov_.resize(rx_batch_);
    rx_msgs_.resize(rx_batch_);
    rx_from_.resize(rx_batch_);
    rx_control_.reset(new uint8_t[size_t{rx_batch_} * kReceiveControlBytes]);
    for (unsigned i = 0; i < rx_batch_; ++i) {
      rx_iov_[i].iov_base = rx_memory_.get() + size_t{i} * stride + kReceiveHeadroom;
      rx_iov_[i].iov_len = options_.receive_buffer_bytes;
    }
    tx_memory_.reset(new uint8_t[kBatch * kMaxDeviceBuffer]);
    return absl::OkStatus();
  }

  absl::Status Watch(int fd, Source* source) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = source;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
      return ErrnoStatus(errno, "epoll_ctl");
    }
    return absl::OkStatus();
  }

  void Run() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    epoll_event events[kMaxEvents];
    std::string why = "the engine was stopped";
    while (!stopping_) {
      // The timeout brings the thread back here at least every tick.
      const int n = epoll_wait(epoll_fd_, events, kMaxEvents,
                               static_cast<int>(absl::ToInt64Milliseconds(kTickResolution)));
      const int err = errno;
      Beat();
      if (n < 0) {
        if (err == EINTR) continue;
        core_.counters().drops[static_cast<int>(DropReason::kSocketError)].Add();
        if (err == EBADF || err == EINVAL || err == EFAULT) {
          // The epoll descriptor is gone or is something else now: it will refuse forever.
          // End the worker and say why (Health) rather than spin.
          why = absl::StrCat("epoll_wait: ", ErrnoText(err));
          break;
        }
        continue;
      }
      // Commands last: a removal frees a tunnel that a later event of this batch may name.
      bool wake = false;
      for (int i = 0; i < n; ++i) {
        const Source* source = static_cast<const Source*>(events[i].data.ptr);
        switch (source->kind) {
          case Source::Kind::kWake:
            wake = true;
            break;
          case Source::Kind::kSocket:
            ReceiveBatch(*source->socket);
            break;
          case Source::Kind::kDevice:
            TransmitBatch(*source->tunnel, events[i].events);
            break;
          case Source::Kind::kFou:
            ReceiveFou(*source->fou);
            break;
        }
      }
      if (wake) {
        uint64_t value;
        (void)!read(mailbox_.fd(), &value, sizeof value);
        RunCommands([this](std::unique_ptr<EngineCommand> command) {
          role_.Assume();  // RunQueued calls back at once, on this thread
          command->done.set_value(Remove(command->name));
        });
        if (!receiving_ && receiving_requested() && !reading_paused()) {
          for (size_t i = 0; i < sockets_.size(); ++i) {
            Watch(sockets_[i].fd, &socket_sources_[i]).IgnoreError();
          }
          receiving_ = true;
        }
        if (pause_requested() && !reading_paused()) PauseReads();
      }
      Housekeeping();
    }
    core_.ForEachTunnel([this](TunnelDatapath& tunnel) {
      role_.Assume();  // ForEachTunnel calls back at once, on this thread
      Release(tunnel);
    });
    Finish(std::move(why));
  }

  // Transmit: frames the host routed into a device, read, wrapped and sent in one batch.
  void TransmitBatch(TunnelDatapath& tunnel, uint32_t events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    unsigned count = 0;
    for (unsigned i = 0; i < kBatch; ++i) {
      uint8_t* buffer = tx_memory_.get() + size_t{count} * kMaxDeviceBuffer;
      const ssize_t res =
          read(tunnel.device_fd(), buffer + tunnel.read_offset(), tunnel.read_bytes());
      if (res < 0) {
        const int err = errno;
        if (err == EAGAIN || err == EINTR) {
          // Nothing to read while epoll reports an error or hang-up: the device is gone.
          if (i == 0 && err == EAGAIN && (events & (EPOLLERR | EPOLLHUP))) Park(tunnel);
          break;
        }
        tunnel.counters().tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
        // A device that answers so once answers so forever: stop watching it rather than spin
        // (counted above; removal still works).
        if (err == EBADF || err == EBADFD || err == EINVAL || err == EFAULT || err == EIO) {
          Park(tunnel);
        }
        break;
      }
      if (res == 0) break;
      uint8_t* frame = buffer + kDeviceHeadroom;
      EncapResult out;
      PacketCore::DeviceFrame read;
      switch (core_.TakeDeviceRead(tunnel, frame, static_cast<size_t>(res), &out, &read)) {
        case PacketCore::DeviceVerdict::kDone:
          continue;
        case PacketCore::DeviceVerdict::kSuperPacket:
          SendQueued(tunnel, count);  // what was read before it leaves before it
          count = 0;
          TransmitSuperPacket(tunnel, read, frame);
          continue;
        case PacketCore::DeviceVerdict::kSend:
          break;
      }
      if (tunnel.fou()) {
        tunnel.SendNow(frame, read.len, out);  // through the tunnel's UDP sender
        continue;
      }
      Queue(tunnel, count++, frame, read.len, out);
    }
    SendQueued(tunnel, count);
  }

  // Splits a super-packet and sends its segments, a round of sendmmsg at a time.
  void TransmitSuperPacket(TunnelDatapath& tunnel, const PacketCore::DeviceFrame& read,
                           uint8_t* frame) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    size_t next = 0;
    size_t made = 0;
    do {
      const size_t prepared = core_.PrepareSegments(tunnel, read, frame, &next, segments_, &made);
      if (tunnel.fou()) {
        core_.SendPreparedNow(tunnel, segments_, prepared);  // as UDP GSO sends
        continue;
      }
      for (size_t i = 0; i < prepared; ++i) {
        Queue(tunnel, static_cast<unsigned>(i), segments_.frames[i], segments_.lens[i],
              segments_.packets[i]);
      }
      SendQueued(tunnel, static_cast<unsigned>(prepared));
    } while (made != 0);
  }

  void Queue(const TunnelDatapath& tunnel, unsigned index, uint8_t* frame, size_t len,
             const EncapResult& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    tx_frame_[index] = frame;
    tx_inner_len_[index] = static_cast<uint32_t>(len);
    tx_iov_[index].iov_base = out.packet;
    tx_iov_[index].iov_len = out.len;
    tx_peer_[index] = out.peer;
    msghdr& msg = tx_msgs_[index].msg_hdr;
    msg = msghdr{};
    // The packet's own destination (a multipoint tunnel's peer), valid through this batch:
    // peers change only between batches, when the commands run.
    msg.msg_name = const_cast<sockaddr*>(out.destination);
    msg.msg_namelen = out.destination_len;
    msg.msg_control = tunnel.send_control();
    msg.msg_controllen = tunnel.send_control_len();
    msg.msg_iov = &tx_iov_[index];
    msg.msg_iovlen = 1;
  }

  // Sends the first `count` queued packets with as few sendmmsg calls as the socket allows.
  void SendQueued(TunnelDatapath& tunnel, unsigned count) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    const int fd = io_.send_fd(tunnel.ipv6_underlay());
    unsigned sent = 0;
    while (sent < count) {
      const int res = sendmmsg(fd, &tx_msgs_[sent], count - sent, 0);
      if (res > 0) {
        for (int i = 0; i < res; ++i) {
          tunnel.TransmitDone(tx_frame_[sent + i], tx_inner_len_[sent + i],
                              static_cast<int>(tx_iov_[sent + i].iov_len), tx_peer_[sent + i]);
        }
        sent += static_cast<unsigned>(res);
        continue;
      }
      if (res < 0 && errno == EINTR) continue;
      // The first unsent packet was refused (EMSGSIZE when larger than the underlay path
      // allows: raw IP_HDRINCL sends never fragment). The core deals with it; go on.
      tunnel.TransmitDone(tx_frame_[sent], tx_inner_len_[sent], res < 0 ? -errno : -EIO,
                          tx_peer_[sent]);
      ++sent;
    }
  }

  // Receive: a batch from the underlay, each packet written to its tunnel's device.
  void ReceiveBatch(const ReceiveSocket& socket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    for (unsigned i = 0; i < rx_batch_; ++i) {
      msghdr& msg = rx_msgs_[i].msg_hdr;
      msg = msghdr{};
      msg.msg_iov = &rx_iov_[i];
      msg.msg_iovlen = 1;
      if (socket.ipv6) {
        // IPv6 raw sockets give no header: addresses and traffic class come alongside.
        msg.msg_name = &rx_from_[i];
        msg.msg_namelen = sizeof rx_from_[i];
        msg.msg_control = rx_control_.get() + size_t{i} * kReceiveControlBytes;
        msg.msg_controllen = kReceiveControlBytes;
      }
      rx_msgs_[i].msg_len = 0;
    }
    // MSG_TRUNC: msg_len is the datagram's real length, so a packet larger than the buffer is
    // seen as such instead of being passed on cut short.
    const int n =
        recvmmsg(socket.fd, rx_msgs_.data(), rx_batch_, MSG_DONTWAIT | MSG_TRUNC, nullptr);
    if (n < 0) return core_.ReceiveFailed(-errno);
    for (int i = 0; i < n; ++i) {
      PacketCore::Delivery d;
      if (!core_.TakeDatagram(socket, static_cast<uint8_t*>(rx_iov_[i].iov_base),
                              rx_msgs_[i].msg_len, options_.receive_buffer_bytes,
                              rx_msgs_[i].msg_hdr, &d)) {
        continue;
      }
      const ssize_t res = write(d.tunnel->device_fd(), d.data, d.len);
      d.tunnel->DeviceWriteDone(d.inner_len, res >= 0 ? static_cast<int>(res) : -errno);
    }
    core_.FlushCoalesced();
  }

  // Fou: what a port's socket has, up to a batch of receives (each up to 64 KiB of datagrams
  // with UDP GRO).
  void ReceiveFou(const FouSocket& socket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    uint8_t* buffer = rx_memory_.get() + kReceiveHeadroom;
    for (unsigned i = 0; i < rx_batch_; ++i) {
      iovec iov{buffer, options_.receive_buffer_bytes};
      sockaddr_in from{};
      alignas(cmsghdr) uint8_t control[kFouControlBytes];
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t n = recvmsg(socket.fd, &msg, MSG_DONTWAIT);
      if (n < 0) {
        core_.ReceiveFailed(-errno);
        break;
      }
      core_.TakeFouDatagrams(socket.protocol, buffer, static_cast<size_t>(n), msg);
    }
    core_.FlushCoalesced();
  }

  void WriteCoalesced(TunnelDatapath& tunnel, const Coalescer::Flushed& f) override {
    role_.Assume();  // the core calls it from this worker's loop
    const ssize_t res = write(tunnel.device_fd(), f.data, f.len);
    core_.CoalescedDone(tunnel, f, res >= 0 ? static_cast<int>(res) : -errno);
  }

  absl::Status AttachTunnel(TunnelDatapath& tunnel) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    auto state = std::make_unique<EpollTunnel>();
    state->source.tunnel = &tunnel;
    // Reads must not block the one thread: the device (or the queue of it, with several
    // workers) is this worker's alone while it runs. A worker that does not read the device
    // shares the fd of the one that does, and leaves its flags alone.
    const bool reads = tunnel.config().read_device;
    state->parked = !reads;
    if (reads) {
      const int flags = fcntl(tunnel.device_fd(), F_GETFL);
      if (flags < 0) return ErrnoStatus(errno, absl::StrCat("fcntl ", tunnel.name()));
      state->saved_flags = flags;
      if ((flags & O_NONBLOCK) == 0 &&
          fcntl(tunnel.device_fd(), F_SETFL, flags | O_NONBLOCK) != 0) {
        return ErrnoStatus(errno, absl::StrCat("fcntl ", tunnel.name()));
      }
    }
    tunnel.set_backend(state.get());
    EpollTunnel* raw = state.get();
    tunnels_.push_back(std::move(state));
    absl::Status status;
    if (tunnel.fou()) {
      bool opened = false;
      absl::StatusOr<FouSocket*> port = AcquireFouPort(tunnel, &opened);
      if (!port.ok()) {
        status = port.status();
      } else if (opened) {
        fou_sources_.push_back(std::make_unique<Source>(Source{Source::Kind::kFou}));
        fou_sources_.back()->fou = *port;
        status = Watch((*port)->fd, fou_sources_.back().get());
      }
      if (!status.ok() && port.ok()) ReleaseFouPort(tunnel);
    }
    if (status.ok() && reads) {
      status = Watch(tunnel.device_fd(), &raw->source);
      if (!status.ok()) ReleaseFouPort(tunnel);
    }
    if (!status.ok()) Release(tunnel);
    return status;
  }

  // Synchronous: the thread is the only user of the device fd, so once it is out of the epoll
  // set and the tunnel is gone, nothing touches the device any more.
  absl::Status Remove(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    TunnelDatapath* tunnel = core_.FindTunnel(name);
    if (tunnel == nullptr) return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
    ReleaseFouPort(*tunnel);
    Release(*tunnel);
    core_.EraseTunnel(tunnel);
    return absl::OkStatus();
  }

  // A pause (Worker::RequestPause): every device and socket leaves the epoll set. Reads are
  // synchronous here, so none is in flight once this returns.
  void PauseReads() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    for (const ReceiveSocket& socket : sockets_) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, socket.fd, nullptr);
    }
    for (const auto& source : fou_sources_) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, source->fou->fd, nullptr);
    }
    core_.ForEachTunnel([this](TunnelDatapath& tunnel) {
      role_.Assume();  // ForEachTunnel calls back at once, on this thread
      if (tunnel.backend<EpollTunnel>() != nullptr) Park(tunnel);
    });
    MarkReadingPaused();
  }

  void Park(TunnelDatapath& tunnel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    EpollTunnel* state = tunnel.backend<EpollTunnel>();
    if (state->parked) return;
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, tunnel.device_fd(), nullptr);
    state->parked = true;
  }

  // Out of the epoll set, with the flags it came with, and its state freed.
  void Release(TunnelDatapath& tunnel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    EpollTunnel* state = tunnel.backend<EpollTunnel>();
    if (state == nullptr) return;
    Park(tunnel);
    if (tunnel.config().read_device) fcntl(tunnel.device_fd(), F_SETFL, state->saved_flags);
    tunnel.set_backend(nullptr);
    tunnels_.erase(std::find_if(tunnels_.begin(), tunnels_.end(),
                                [state](const auto& t) { return t.get() == state; }));
  }

  const unsigned rx_batch_;
  int epoll_fd_ = -1;
  std::vector<Source> socket_sources_ ABSL_GUARDED_BY(role_);
  bool receiving_ ABSL_GUARDED_BY(role_) = false;  // the sockets are in the epoll set
  Source wake_source_ ABSL_GUARDED_BY(role_) = {Source::Kind::kWake};
  std::vector<std::unique_ptr<EpollTunnel>> tunnels_ ABSL_GUARDED_BY(role_);
  std::vector<std::unique_ptr<Source>> fou_sources_ ABSL_GUARDED_BY(role_);

  // Owned by the worker's thread once it runs.
  std::unique_ptr<uint8_t[]> rx_memory_ ABSL_GUARDED_BY(role_);
  std::vector<iovec> rx_iov_ ABSL_GUARDED_BY(role_);
  std::vector<mmsghdr> rx_msgs_ ABSL_GUARDED_BY(role_);
  std::vector<ReceiveAddress> rx_from_ ABSL_GUARDED_BY(role_);
  std::unique_ptr<uint8_t[]> rx_control_ ABSL_GUARDED_BY(role_);
  std::unique_ptr<uint8_t[]> tx_memory_ ABSL_GUARDED_BY(role_);
  uint8_t* tx_frame_[kMaxQueued] ABSL_GUARDED_BY(role_);
  uint32_t tx_inner_len_[kMaxQueued] ABSL_GUARDED_BY(role_);
  uint64_t tx_peer_[kMaxQueued] ABSL_GUARDED_BY(role_);
  iovec tx_iov_[kMaxQueued] ABSL_GUARDED_BY(role_);
  mmsghdr tx_msgs_[kMaxQueued] ABSL_GUARDED_BY(role_);
  SegmentBatch segments_ ABSL_GUARDED_BY(role_);
};

absl::StatusOr<std::unique_ptr<EpollEngine>> EpollEngine::Start(const EngineOptions& options) {
  if (options.socket_receives == 0 || options.receive_buffer_bytes < 2048) {
    return absl::InvalidArgumentError("epoll engine: receive batch and buffers too small");
  }
  auto worker = std::make_unique<EpollWorker>(options);
  if (absl::Status status = worker->Start(EFD_NONBLOCK); !status.ok()) return status;
  return std::unique_ptr<EpollEngine>(new EpollEngine(std::move(worker)));
}

EpollEngine::EpollEngine(std::unique_ptr<Worker> worker) : WorkerEngine(std::move(worker)) {}
EpollEngine::~EpollEngine() = default;

}  // namespace tunnelagent::dataplane
