#include "dataplane/epoll_engine.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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

// Packets read from one device, or received from one socket, per wakeup. Level-triggered
// epoll comes back for the rest, after the other ready sources had their turn.
constexpr unsigned kBatch = 64;
// Largest device buffer: headroom, a 64 KiB packet and the overflow margin.
constexpr size_t kMaxDeviceBuffer = DeviceBufferBytes(65535);
constexpr int kMaxEvents = 256;
// Receive buffers start this far into their memory, so a virtio-net header fits in front of a
// packet whatever headers precede it.
constexpr size_t kReceiveHeadroom = 16;
// Splitting super-packets: segments per sendmmsg round, and the memory they are made in.
constexpr size_t kMaxSegments = 128;
constexpr size_t kSegmentArenaBytes = 65536 + kMaxSegments * (kDeviceHeadroom + 128 + 64);
// Coalescing on receive: flows open at once (their buffers are written before the next batch).
constexpr size_t kCoalescerFlows = 16;

// What an epoll event's data.ptr points at.
enum class SourceKind : uint8_t { kWake, kSocket, kDevice, kFou };

struct TunnelRuntime;

struct Source {
  SourceKind kind;
  const ReceiveSocket* socket = nullptr;  // kSocket
  TunnelRuntime* tunnel = nullptr;        // kDevice: the tunnel
  FouSocket* fou = nullptr;               // kFou: a fou port's socket
};

struct TunnelRuntime {
  Source source{SourceKind::kDevice};  // the epoll cookie
  std::unique_ptr<TunnelDatapath> path;
  int saved_flags = 0;     // the device fd's file status flags before the engine set O_NONBLOCK
  uint32_t read_size = 0;  // bytes asked of each device read
  bool parked = false;     // out of the epoll set after a permanent device error
  uint16_t fou_port = 0;   // the fou port it receives on (0: none)
  absl::Time next_tick = absl::InfinitePast();
};

// Housekeeping (keepalives, path MTU refresh) runs at most this often.
constexpr absl::Duration kTickResolution = absl::Milliseconds(50);

}  // namespace

class EpollEngine::Impl {
 public:
  explicit Impl(const UringEngineOptions& options)
      : options_(options),
        rx_batch_(std::min(options.socket_receives, kBatch)),
        heartbeat_(options.worker) {}

  ~Impl() {
    if (thread_.joinable()) {
      mailbox_.Stop().IgnoreError();
      thread_.join();
    }
    if (epoll_fd_ >= 0) close(epoll_fd_);
    CloseReceiveSockets(sockets_);
  }

  absl::Status Start() {
    if (absl::Status s = mailbox_.Open(EFD_NONBLOCK); !s.ok()) return s;
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
    // As in the io_uring engine: IPPROTO_RAW (IP_HDRINCL) sockets send for every tunnel, one
    // raw socket per family and protocol receives everything of that protocol addressed to us.
    if (absl::Status s = io_.Open(options_.socket_buffer_bytes); !s.ok()) return s;
    io_.set_path_mtu_expiry(options_.path_mtu_expiry);
    if (absl::Status s = too_big_.Open(); !s.ok()) return s;
    absl::StatusOr<std::vector<ReceiveSocket>> sockets =
        OpenReceiveSockets(options_.socket_buffer_bytes, options_.worker, options_.workers);
    if (!sockets.ok()) return sockets.status();
    sockets_ = std::move(*sockets);
    socket_sources_.resize(sockets_.size());

    if (absl::Status s = Watch(mailbox_.fd(), &wake_source_); !s.ok()) return s;
    for (size_t i = 0; i < sockets_.size(); ++i) {
      socket_sources_[i] = Source{SourceKind::kSocket, &sockets_[i]};
      if (absl::Status s = Watch(sockets_[i].fd, &socket_sources_[i]); !s.ok()) return s;
    }

    // Receive buffers are shared by both sockets (they are served one after the other), the
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
    // Room for a batch of reads, or a round of a super-packet's segments.
    tx_frame_.resize(std::max<size_t>(kBatch, kMaxSegments));
    tx_inner_len_.resize(std::max<size_t>(kBatch, kMaxSegments));
    tx_iov_.resize(std::max<size_t>(kBatch, kMaxSegments));
    tx_msgs_.resize(std::max<size_t>(kBatch, kMaxSegments));

    // The thread names and pins itself before it moves a packet; an error ends it at once.
    std::promise<absl::Status> ready;
    std::future<absl::Status> ready_future = ready.get_future();
    thread_ = std::thread([this, &ready] {
      absl::Status status =
          SetUpWorkerThread(options_.worker, WorkerCpu(options_.cpus, options_.worker));
      const bool ok = status.ok();
      ready.set_value(std::move(status));
      if (ok) Run();
    });
    absl::Status status = ready_future.get();
    if (!status.ok()) thread_.join();
    return status;
  }

  const DataplaneCounters& counters() const { return counters_; }
  CommandMailbox& mailbox() { return mailbox_; }
  const WorkerHeartbeat& heartbeat() const { return heartbeat_; }

 private:
  absl::Status Watch(int fd, Source* source) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = source;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
      return ErrnoStatus(errno, "epoll_ctl");
    }
    return absl::OkStatus();
  }

  void Run() {
    epoll_event events[kMaxEvents];
    std::string why = "the engine was stopped";
    while (!stopping_) {
      // The timeout brings the thread back here at least every tick.
      int n = epoll_wait(epoll_fd_, events, kMaxEvents,
                         static_cast<int>(absl::ToInt64Milliseconds(kTickResolution)));
      const int err = errno;
      clock_.Update();
      heartbeat_.Beat(clock_.monotonic_nanos());
      if (n < 0) {
        if (err == EINTR) continue;
        counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
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
        Source* source = static_cast<Source*>(events[i].data.ptr);
        switch (source->kind) {
          case SourceKind::kWake:
            wake = true;
            break;
          case SourceKind::kSocket:
            ReceiveBatch(*source->socket);
            break;
          case SourceKind::kDevice:
            TransmitBatch(source->tunnel, events[i].events);
            break;
          case SourceKind::kFou:
            ReceiveFou(*source->fou);
            break;
        }
      }
      if (wake) RunCommands();
      Tick();
    }
    heartbeat_.Stopped(std::move(why));
    Shutdown();
  }

  void Shutdown() {
    for (auto& [name, tunnel] : tunnels_) Release(tunnel.get());
    by_remote_.Clear();
    tunnels_.clear();
    by_match_.Clear();
    mailbox_.Close();
    if (stop_command_) stop_command_->done.set_value(absl::OkStatus());
  }

  void Tick() {
    const absl::Time now = absl::Now();
    if (now < next_tick_) return;
    next_tick_ = now + kTickResolution;
    // Errors about the tunnels' packets: rare, read with plain calls, a bounded number a tick.
    too_big_.Read(kTooBigReadsPerTick, [this](const TooBigReport& report) {
      by_remote_.Dispatch(report, counters_, options_.worker == 0);
    });
    for (auto& [name, tunnel] : tunnels_) {
      if (now >= tunnel->next_tick) tunnel->next_tick = tunnel->path->Tick(now);
    }
  }

  // Transmit: packets the host routed into a device, read, wrapped and sent in one batch.
  void TransmitBatch(TunnelRuntime* tunnel, uint32_t events) {
    TunnelDatapath& path = *tunnel->path;
    TunnelCounters& counters = path.counters();
    const int device_fd = path.config().device_fd;
    const size_t header = path.vnet_header() ? kVirtioNetHeaderLen : 0;
    unsigned count = 0;
    for (unsigned i = 0; i < kBatch; ++i) {
      uint8_t* buffer = tx_memory_.get() + size_t{count} * kMaxDeviceBuffer;
      uint8_t* frame = buffer + kDeviceHeadroom;
      // With offloads the virtio-net header comes first, just before where the packet belongs.
      ssize_t res = read(device_fd, frame - header, tunnel->read_size + header);
      if (res < 0) {
        const int err = errno;
        if (err == EAGAIN || err == EINTR) {
          // Nothing to read while epoll reports an error or hang-up: the device is gone.
          if (i == 0 && err == EAGAIN && (events & (EPOLLERR | EPOLLHUP))) Park(tunnel);
          break;
        }
        counters.tx_drops[static_cast<int>(DropReason::kDeviceError)].Add();
        // A device that answers so once answers so forever: stop watching it rather than spin
        // (counted above; removal still works).
        if (err == EBADF || err == EBADFD || err == EINVAL || err == EFAULT || err == EIO) {
          Park(tunnel);
        }
        break;
      }
      if (res == 0) break;
      size_t len = static_cast<size_t>(res);
      if (len >= tunnel->read_size + header) {
        counters.tx_drops[static_cast<int>(DropReason::kTooBig)].Add();
        continue;
      }
      if (header != 0) {
        if (len < header) {
          counters.tx_drops[static_cast<int>(DropReason::kBadInnerPacket)].Add();
          continue;
        }
        len -= header;
        const VirtioNetHeader vnet = ReadVirtioNetHeader(frame - header);
        size_t segments = 0;
        const TunnelDatapath::DeviceRead kind =
            path.TakeVirtioNetHeader(vnet, frame, len, &segments);
        if (kind == TunnelDatapath::DeviceRead::kDropped) continue;
        if (kind == TunnelDatapath::DeviceRead::kSuperPacket) {
          // What was read before it leaves before it.
          SendQueued(path, count);
          count = 0;
          TransmitSuperPacket(path, vnet, frame, len);
          continue;
        }
      }
      EncapResult out;
      if (!path.PrepareTransmit(frame, len, &out)) continue;
      if (path.fou()) {
        path.SendNow(frame, len, out);  // through the tunnel's UDP socket
        continue;
      }
      Queue(path, count++, frame, len, out);
    }
    SendQueued(path, count);
  }

  // Splits a super-packet and sends its segments, a round of sendmmsg at a time.
  void TransmitSuperPacket(TunnelDatapath& path, const VirtioNetHeader& vnet, uint8_t* frame,
                           size_t len) {
    SegmentArena arena;
    arena.data = segment_memory_.get();
    arena.bytes = kSegmentArenaBytes;
    arena.headroom = kDeviceHeadroom;
    arena.segments = segments_.data();
    arena.max_segments = kMaxSegments;
    size_t first = 0;
    while (size_t made = SegmentSuperPacket(vnet, frame, len, first, arena)) {
      first += made;
      unsigned count = 0;
      for (size_t i = 0; i < made; ++i) {
        EncapResult out;
        if (!path.PrepareTransmit(segments_[i].data, segments_[i].len, &out)) continue;
        if (path.fou()) {
          fou_frames_[count] = segments_[i].data;
          fou_lens_[count] = segments_[i].len;
          fou_packets_[count++] = out;
          continue;
        }
        Queue(path, count++, segments_[i].data, segments_[i].len, out);
      }
      if (path.fou()) {
        path.SendFouNow(fou_frames_, fou_lens_, fou_packets_, count);  // as UDP GSO sends
      } else {
        SendQueued(path, count);
      }
    }
  }

  void Queue(const TunnelDatapath& path, unsigned index, uint8_t* frame, size_t len,
             const EncapResult& out) {
    tx_frame_[index] = frame;
    tx_inner_len_[index] = static_cast<uint32_t>(len);
    tx_iov_[index].iov_base = out.packet;
    tx_iov_[index].iov_len = out.len;
    msghdr& msg = tx_msgs_[index].msg_hdr;
    msg = msghdr{};
    msg.msg_name = const_cast<sockaddr*>(path.destination());
    msg.msg_namelen = path.destination_len();
    msg.msg_iov = &tx_iov_[index];
    msg.msg_iovlen = 1;
  }

  // Sends the first `count` queued packets with as few sendmmsg calls as the socket allows.
  void SendQueued(TunnelDatapath& path, unsigned count) {
    unsigned sent = 0;
    while (sent < count) {
      int res = sendmmsg(path.send_fd(), &tx_msgs_[sent], count - sent, 0);
      if (res > 0) {
        for (int i = 0; i < res; ++i) {
          path.TransmitDone(tx_frame_[sent + i], tx_inner_len_[sent + i],
                            static_cast<int>(tx_iov_[sent + i].iov_len));
        }
        sent += static_cast<unsigned>(res);
        continue;
      }
      if (res < 0 && errno == EINTR) continue;
      // The first unsent packet was refused (EMSGSIZE when larger than the underlay path
      // allows: raw IP_HDRINCL sends never fragment). The datapath deals with it; go on.
      path.TransmitDone(tx_frame_[sent], tx_inner_len_[sent], res < 0 ? -errno : -EIO);
      ++sent;
    }
  }

  // Receive: a batch from the underlay, each packet delivered to its tunnel's device.
  void ReceiveBatch(const ReceiveSocket& socket) {
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
    int n = recvmmsg(socket.fd, rx_msgs_.data(), rx_batch_, MSG_DONTWAIT | MSG_TRUNC, nullptr);
    if (n < 0) {
      // ICMP errors queued on the socket surface here (ENOPROTOOPT, ECONNREFUSED, ...), as
      // does ENOBUFS under memory pressure: count and keep receiving.
      if (errno != EINTR && errno != EAGAIN) {
        counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
      }
      return;
    }
    for (int i = 0; i < n; ++i) {
      counters_.rx_packets.Add();
      const size_t len = rx_msgs_[i].msg_len;
      if (len > options_.receive_buffer_bytes || (rx_msgs_[i].msg_hdr.msg_flags & MSG_TRUNC)) {
        counters_.drops[static_cast<int>(DropReason::kTooBig)].Add();
        continue;
      }
      Decapsulated packet;
      DropReason reason;
      if (!DecodeReceived(socket, static_cast<uint8_t*>(rx_iov_[i].iov_base), len,
                          rx_msgs_[i].msg_hdr, &packet, &reason)) {
        counters_.drops[static_cast<int>(reason)].Add();
        continue;
      }
      TunnelRuntime* tunnel = Admit(packet);
      if (tunnel == nullptr) continue;
      TunnelDatapath& path = *tunnel->path;
      uint8_t* data = packet.inner;
      size_t data_len = packet.inner_len;
      if (path.vnet_header()) {
        // On its own, behind an empty virtio-net header (in room the outer headers, or the
        // receive headroom, leave).
        data -= kVirtioNetHeaderLen;
        std::memset(data, 0, kVirtioNetHeaderLen);
        data_len += kVirtioNetHeaderLen;
      }
      ssize_t res = write(path.config().device_fd, data, data_len);
      path.DeliverDone(packet.inner_len, res >= 0 ? static_cast<int>(res) : -errno);
    }
    FlushCoalesced();
  }

  // AdmitReceived on this engine's table and coalescer.
  TunnelRuntime* Admit(const Decapsulated& packet) {
    return AdmitReceived(by_match_, coalescer_, counters_, packet, [this] { FlushCoalesced(); });
  }

  // Fou: what a port's socket has, up to a batch of receives (each up to 64 KiB of datagrams
  // with UDP GRO), each datagram written to its tunnel's device or coalesced.
  void ReceiveFou(const FouSocket& socket) {
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
        if (errno != EAGAIN && errno != EINTR) {
          counters_.drops[static_cast<int>(DropReason::kSocketError)].Add();
        }
        break;
      }
      ForEachFouDatagram(socket, buffer, static_cast<size_t>(n), msg, counters_,
                         [this](Decapsulated& packet) {
                           if (TunnelRuntime* tunnel = Admit(packet)) {
                             tunnel->path->DeliverNow(packet);
                           }
                         });
    }
    FlushCoalesced();
  }

  // Writes every flow the receives coalesced to its device.
  void FlushCoalesced() {
    coalescer_.Flush([this](const Coalescer::Flushed& f) {
      const TunnelDatapath& path = *static_cast<const TunnelRuntime*>(f.owner)->path;
      ssize_t res = write(path.config().device_fd, f.data, f.len);
      static_cast<const TunnelRuntime*>(f.owner)->path->DeliverDone(
          f.inner_bytes, res >= 0 ? static_cast<int>(res) : -errno, f.segments);
      coalescer_.Release(f.buffer);
    });
  }

  void RunCommands() {
    uint64_t value;
    (void)!read(mailbox_.fd(), &value, sizeof value);
    std::deque<std::unique_ptr<EngineCommand>> commands = mailbox_.TakeAll();
    for (auto& command : commands) {
      switch (command->kind) {
        case EngineCommand::Kind::kAdd:
          command->done.set_value(Add(command->tunnel));
          break;
        case EngineCommand::Kind::kRemove:
          command->done.set_value(Remove(command->name));
          break;
        case EngineCommand::Kind::kStop:
          stopping_ = true;
          stop_command_ = std::move(command);
          break;
      }
    }
  }

  absl::Status Add(const EngineTunnel& config) {
    absl::StatusOr<std::unique_ptr<TunnelDatapath>> path =
        NewTunnelDatapath(config, tunnels_, by_match_, &io_, &clock_, options_.worker);
    if (!path.ok()) return path.status();
    auto tunnel = std::make_unique<TunnelRuntime>();
    tunnel->source.tunnel = tunnel.get();
    tunnel->path = std::move(*path);
    // The io_uring engine's buffer size: the largest frame and enough beyond it to tell a
    // frame that overflows the MTU from one that fits exactly.
    // With offloads, a read can be a 64 KiB super-packet.
    const size_t capacity =
        DeviceBufferBytes(config.vnet_header ? 65535 : tunnel->path->max_frame());
    tunnel->read_size = static_cast<uint32_t>(capacity - kDeviceHeadroom);
    // Reads must not block the one thread: the device (or the queue of it, with several
    // workers) is this engine's alone while it runs. A worker that does not read the device
    // shares the fd of the one that does, and leaves its flags alone.
    tunnel->parked = !config.read_device;
    if (config.read_device) {
      const int flags = fcntl(config.device_fd, F_GETFL);
      if (flags < 0) return ErrnoStatus(errno, absl::StrCat("fcntl ", config.name));
      tunnel->saved_flags = flags;
      if ((flags & O_NONBLOCK) == 0 && fcntl(config.device_fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        return ErrnoStatus(errno, absl::StrCat("fcntl ", config.name));
      }
    }
    if (tunnel->path->fou()) {
      bool opened = false;
      absl::StatusOr<FouSocket*> port =
          fou_ports_.Acquire(config.encap.udp_dport, FouProtocol(config.encap.mode),
                             options_.socket_buffer_bytes, options_.workers > 1, &opened);
      if (!port.ok()) {
        Release(tunnel.get());
        return port.status();
      }
      if (opened) {
        fou_sources_.push_back(std::make_unique<Source>(Source{SourceKind::kFou}));
        fou_sources_.back()->fou = *port;
        if (absl::Status s = Watch((*port)->fd, fou_sources_.back().get()); !s.ok()) {
          fou_ports_.Release(config.encap.udp_dport);
          Release(tunnel.get());
          return s;
        }
      }
      tunnel->fou_port = config.encap.udp_dport;
    }
    if (config.read_device) {
      if (absl::Status s = Watch(config.device_fd, &tunnel->source); !s.ok()) {
        if (tunnel->fou_port != 0) fou_ports_.Release(tunnel->fou_port);
        Release(tunnel.get());
        return s;
      }
    }
    by_match_.Insert(tunnel->path->match(), tunnel.get());
    by_remote_.Insert(config.encap.remote, tunnel.get());
    tunnels_[config.name] = std::move(tunnel);
    return absl::OkStatus();
  }

  // Synchronous: the thread is the only user of the device fd, so once it is out of the epoll
  // set and the tunnel is gone, nothing touches the device any more.
  absl::Status Remove(const std::string& name) {
    auto it = tunnels_.find(name);
    if (it == tunnels_.end()) {
      return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
    }
    by_match_.Erase(it->second->path->match());
    by_remote_.Erase(it->second->path->config().encap.remote, it->second.get());
    coalescer_.Discard(it->second.get());
    if (it->second->fou_port != 0) fou_ports_.Release(it->second->fou_port);
    Release(it->second.get());
    tunnels_.erase(it);
    return absl::OkStatus();
  }

  void Park(TunnelRuntime* tunnel) {
    if (tunnel->parked) return;
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, tunnel->path->config().device_fd, nullptr);
    tunnel->parked = true;
  }

  // Out of the epoll set, with the flags it came with.
  void Release(TunnelRuntime* tunnel) {
    Park(tunnel);
    if (!tunnel->path->config().read_device) return;
    fcntl(tunnel->path->config().device_fd, F_SETFL, tunnel->saved_flags);
  }

  const UringEngineOptions options_;
  const unsigned rx_batch_;
  std::thread thread_;
  // Written by the thread every time round its loop; the heartbeat is read from any thread.
  WorkerClock clock_;
  WorkerHeartbeat heartbeat_;

  int epoll_fd_ = -1;
  UnderlayIo io_;
  std::vector<ReceiveSocket> sockets_;
  std::vector<Source> socket_sources_;
  Source wake_source_{SourceKind::kWake};
  absl::Time next_tick_ = absl::InfinitePast();

  // Owned by the engine thread once it runs.
  std::unique_ptr<uint8_t[]> rx_memory_;
  std::vector<iovec> rx_iov_;
  std::vector<mmsghdr> rx_msgs_;
  std::vector<ReceiveAddress> rx_from_;
  std::unique_ptr<uint8_t[]> rx_control_;
  std::vector<uint8_t*> tx_frame_ = std::vector<uint8_t*>(kBatch);
  std::unique_ptr<uint8_t[]> tx_memory_;
  std::vector<uint32_t> tx_inner_len_;
  std::vector<iovec> tx_iov_;
  std::vector<mmsghdr> tx_msgs_;
  std::unique_ptr<uint8_t[]> segment_memory_{new uint8_t[kSegmentArenaBytes]};
  std::vector<Segment> segments_ = std::vector<Segment>(kMaxSegments);
  Coalescer coalescer_{kCoalescerFlows, kCoalescerFlows};
  FouPorts fou_ports_;
  std::vector<std::unique_ptr<Source>> fou_sources_;
  uint8_t* fou_frames_[kMaxSegments];
  size_t fou_lens_[kMaxSegments];
  EncapResult fou_packets_[kMaxSegments];
  bool stopping_ = false;
  std::unique_ptr<EngineCommand> stop_command_;
  absl::flat_hash_map<std::string, std::unique_ptr<TunnelRuntime>> tunnels_;
  TunnelTable<TunnelRuntime> by_match_;
  TooBigReader too_big_;
  TunnelsByRemote<TunnelRuntime> by_remote_;

  DataplaneCounters counters_;

  CommandMailbox mailbox_;
};

absl::StatusOr<std::unique_ptr<EpollEngine>> EpollEngine::Start(const UringEngineOptions& options) {
  if (options.socket_receives == 0 || options.receive_buffer_bytes < 2048) {
    return absl::InvalidArgumentError("epoll engine: receive batch and buffers too small");
  }
  auto impl = std::make_unique<Impl>(options);
  absl::Status status = impl->Start();
  if (!status.ok()) return status;
  return std::unique_ptr<EpollEngine>(new EpollEngine(std::move(impl)));
}

EpollEngine::EpollEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EpollEngine::~EpollEngine() = default;

absl::Status EpollEngine::AddTunnel(const EngineTunnel& tunnel) {
  return impl_->mailbox().AddTunnel(tunnel);
}

absl::Status EpollEngine::RemoveTunnel(const std::string& name) {
  return impl_->mailbox().RemoveTunnel(name);
}

const DataplaneCounters& EpollEngine::counters() const { return impl_->counters(); }

absl::Status EpollEngine::Health(absl::Duration stall) const {
  return impl_->heartbeat().Health(stall);
}

}  // namespace tunnelagent::dataplane
