#include "dataplane/engine_support.h"

#include <linux/filter.h>
#include <linux/icmp.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/receive_steering.h"

namespace tunnelagent::dataplane {

absl::Status CheckEngineTunnel(const EngineTunnel& tunnel) {
  if (tunnel.device_fd < 0 || tunnel.mtu == 0 || tunnel.mtu > 65535 || !tunnel.counters) {
    return absl::InvalidArgumentError("engine tunnel needs a device, an MTU and counters");
  }
  return absl::OkStatus();
}

bool KernelHasIpv6() {
  const int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno != EAFNOSUPPORT;
  close(fd);
  return true;
}

namespace {

// SO_RCVBUF or SO_SNDBUF (`receive`) of `bytes`: beyond net.core.[rw]mem_max with the FORCE
// option where CAP_NET_ADMIN allows, else as far as the limit lets.
void SetSocketBuffer(int fd, bool receive, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &bytes, sizeof bytes) !=
      0) {
    setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUF : SO_SNDBUF, &bytes, sizeof bytes);
  }
}

}  // namespace

absl::StatusOr<int> OpenUnderlaySocket(int family, int protocol, int buffer_bytes,
                                       absl::string_view what) {
  int fd = socket(family, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("raw ", what, " socket"));
  SetSocketBuffer(fd, /*receive=*/true, buffer_bytes);
  SetSocketBuffer(fd, /*receive=*/false, buffer_bytes);
  if (family == AF_INET && protocol != IPPROTO_RAW) {
    // The kernel hands every ICMP error quoting a packet of this protocol to this socket and,
    // unless it opts out, writes the MTU into its PMTU cache for the remote, forged or not.
    // The engine judges those errors itself (TooBigReader); the host's cache stays clean of
    // what reaches it only through this socket.
    const int omit = IP_PMTUDISC_OMIT;
    setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &omit, sizeof omit);
  }
  if (family == AF_INET6 && protocol != IPPROTO_RAW) {
    const int on = 1;
    if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on) != 0 ||
        setsockopt(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, &on, sizeof on) != 0) {
      const int err = errno;
      close(fd);
      return ErrnoStatus(err, absl::StrCat("raw ", what, " socket options"));
    }
  }
  return fd;
}

absl::Status SteerReceiveSocket(const ReceiveSocket& socket, unsigned worker, unsigned workers) {
  if (workers <= 1) return absl::OkStatus();
  std::vector<sock_filter> program =
      SteeringProgram(socket.ipv6 ? SteeringSocket::kIpv6 : SteeringSocket::kIpv4, socket.protocol,
                      worker, workers);
  sock_fprog fprog{static_cast<unsigned short>(program.size()), program.data()};
  if (setsockopt(socket.fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) != 0) {
    return ErrnoStatus(errno, "receive steering filter");
  }
  // What queued between socket() and the filter came unfiltered, to every worker: only
  // worker 0 keeps it, so nothing is handled twice (the agent has no tunnels yet then).
  if (worker != 0) {
    uint8_t byte;
    while (recv(socket.fd, &byte, sizeof byte, MSG_DONTWAIT | MSG_TRUNC) >= 0) {
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ReceiveSocket>> OpenReceiveSockets(int buffer_bytes, unsigned worker,
                                                              unsigned workers) {
  std::vector<ReceiveSocket> sockets;
  for (const bool ipv6 : {false, true}) {
    if (ipv6 && !KernelHasIpv6()) break;  // the IPv4 modes still work
    for (const uint8_t protocol : {kIpProtoGre, kIpProtoIpip, kIpProtoIpv6}) {
      absl::StatusOr<int> fd =
          OpenUnderlaySocket(ipv6 ? AF_INET6 : AF_INET, protocol, buffer_bytes,
                             absl::StrCat(ipv6 ? "IPv6 " : "IPv4 ", "protocol ", protocol));
      if (!fd.ok()) {
        CloseReceiveSockets(sockets);
        return fd.status();
      }
      sockets.push_back(ReceiveSocket{*fd, ipv6, protocol});
      if (absl::Status s = SteerReceiveSocket(sockets.back(), worker, workers); !s.ok()) {
        CloseReceiveSockets(sockets);
        return s;
      }
    }
  }
  return sockets;
}

void CloseReceiveSockets(std::vector<ReceiveSocket>& sockets) {
  for (ReceiveSocket& s : sockets) {
    if (s.fd >= 0) close(s.fd);
    s.fd = -1;
  }
  sockets.clear();
}

bool DecodeReceived(const ReceiveSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                    Decapsulated* out, DropReason* reason) {
  if (!socket.ipv6) return Decapsulate(data, len, out, reason);
  OuterAddress source;
  OuterAddress destination;
  uint8_t traffic_class = 0;
  bool have_destination = false;
  if (msg.msg_name == nullptr || msg.msg_namelen < sizeof(sockaddr_in6)) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  const auto* from = static_cast<const sockaddr_in6*>(msg.msg_name);
  source = OuterAddress::FromIpv6(reinterpret_cast<const uint8_t*>(&from->sin6_addr));
  for (const cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&msg), const_cast<cmsghdr*>(c))) {
    if (c->cmsg_level != IPPROTO_IPV6) continue;
    if (c->cmsg_type == IPV6_PKTINFO && c->cmsg_len >= CMSG_LEN(sizeof(in6_pktinfo))) {
      in6_pktinfo info;
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      destination = OuterAddress::FromIpv6(reinterpret_cast<const uint8_t*>(&info.ipi6_addr));
      have_destination = true;
    } else if (c->cmsg_type == IPV6_TCLASS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int value = 0;
      std::memcpy(&value, CMSG_DATA(c), sizeof value);
      traffic_class = static_cast<uint8_t>(value);
    }
  }
  if (!have_destination) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  return DecapsulateIpv6(data, len, socket.protocol, source, destination, traffic_class, out,
                         reason);
}

FouPorts::~FouPorts() {
  for (auto& s : sockets_) {
    if (s->fd >= 0) close(s->fd);
  }
}

FouSocket* FouPorts::Find(uint16_t port) {
  for (auto& s : sockets_) {
    if (s->port == port) return s.get();
  }
  return nullptr;
}

void FouPorts::Release(uint16_t port) {
  if (FouSocket* s = Find(port); s != nullptr && s->users > 0) --s->users;
}

absl::StatusOr<FouSocket*> FouPorts::Acquire(uint16_t port, uint8_t protocol, int buffer_bytes,
                                             bool shared, bool* opened) {
  *opened = false;
  if (FouSocket* s = Find(port); s != nullptr) {
    if (s->users > 0 && s->protocol != protocol) {
      return absl::FailedPreconditionError(
          absl::StrCat("fou port ", port, " already carries protocol ", s->protocol,
                       " for other tunnels (one port carries one protocol)"));
    }
    s->protocol = protocol;
    ++s->users;
    return s;
  }
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoStatus(errno, "fou receive socket");
  const int on = 1;
  SetSocketBuffer(fd, /*receive=*/true, buffer_bytes);
  // UDP_GRO is an optimisation (Linux 5.0): without it every datagram comes on its own.
  setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on);
  // Each worker binds its own socket to the port; the kernel picks one per 4-tuple, and the
  // sender's per-flow source ports make that a per-inner-flow spread.
  if (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, "fou receive socket SO_REUSEPORT");
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on) != 0 ||
      setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &on, sizeof on) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    const int err = errno;
    close(fd);
    if (err == EADDRINUSE) {
      return absl::FailedPreconditionError(
          absl::StrCat("fou port ", port, " is in use by another socket on this host"));
    }
    return ErrnoStatus(err, absl::StrCat("fou receive socket on port ", port));
  }
  auto s = std::make_unique<FouSocket>();
  s->fd = fd;
  s->port = port;
  s->protocol = protocol;
  s->users = 1;
  sockets_.push_back(std::move(s));
  *opened = true;
  return sockets_.back().get();
}

uint8_t FouProtocol(TunnelMode mode) {
  if (IsGreMode(mode)) return kIpProtoGre;
  return mode == TunnelMode::kSit ? kIpProtoIpv6 : kIpProtoIpip;
}

bool ParseFouReceive(const msghdr& msg, OuterAddress* source, OuterAddress* destination,
                     uint8_t* tos, size_t* gso_size) {
  if (msg.msg_name == nullptr || msg.msg_namelen < sizeof(sockaddr_in)) return false;
  const auto* from = static_cast<const sockaddr_in*>(msg.msg_name);
  *source = OuterAddress::FromIpv4Bytes(reinterpret_cast<const uint8_t*>(&from->sin_addr));
  bool have_destination = false;
  *gso_size = 0;
  for (const cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&msg), const_cast<cmsghdr*>(c))) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
        c->cmsg_len >= CMSG_LEN(sizeof(in_pktinfo))) {
      in_pktinfo info;
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      *destination = OuterAddress::FromIpv4Bytes(reinterpret_cast<const uint8_t*>(&info.ipi_addr));
      have_destination = true;
    } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS &&
               c->cmsg_len >= CMSG_LEN(1)) {
      *tos = *CMSG_DATA(c);
    } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO &&
               c->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int value = 0;
      std::memcpy(&value, CMSG_DATA(c), sizeof value);
      *gso_size = value > 0 ? static_cast<size_t>(value) : 0;
    }
  }
  return have_destination;
}

absl::StatusOr<int> OpenFouSendSocket(const OuterAddress& local, uint16_t sport,
                                      const OuterAddress& remote, uint16_t dport,
                                      int buffer_bytes) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoStatus(errno, "fou send socket");
  const int on = 1;
  // Tunnels with the same fixed source port share it; the fou receive socket does not take
  // part, so a source port that is a receive port fails to bind instead of stealing packets.
  if (sport != 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
  }
  SetSocketBuffer(fd, /*receive=*/false, buffer_bytes);
  // DF on every packet, sizes checked against the device alone: the path MTU is the
  // datapath's (from the route and the errors it believed), never the kernel's PMTU cache,
  // which any forged "fragmentation needed" naming the flow lowers.
  const int pmtu = IP_PMTUDISC_PROBE;
  sockaddr_in from{};
  from.sin_family = AF_INET;
  std::memcpy(&from.sin_addr, local.data(), 4);
  from.sin_port = htons(sport);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  std::memcpy(&to.sin_addr, remote.data(), 4);
  to.sin_port = htons(dport);
  if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    const int err = errno;
    close(fd);
    if (err == EADDRINUSE) {
      return absl::FailedPreconditionError(absl::StrCat(
          "fou source port ", sport, " is in use (a fou receive port, or another socket)"));
    }
    return ErrnoStatus(err, "fou send socket");
  }
  return fd;
}

TooBigReader::~TooBigReader() {
  for (int fd : {fd4_, fd6_}) {
    if (fd >= 0) close(fd);
  }
}

absl::Status TooBigReader::Open() {
  // Raw ICMP sockets get a copy of every ICMP message for this host; the kernel's filters let
  // only the one type through (ICMP_FILTER's bits are the types to drop).
  fd4_ = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_ICMP);
  if (fd4_ < 0) return ErrnoStatus(errno, "raw ICMP socket");
  icmp_filter filter{~(uint32_t{1} << ICMP_DEST_UNREACH)};
  if (setsockopt(fd4_, SOL_RAW, ICMP_FILTER, &filter, sizeof filter) != 0) {
    return ErrnoStatus(errno, "raw ICMP socket filter");
  }
  SetSocketBuffer(fd4_, /*receive=*/true, kSocketBufferBytes);
  if (KernelHasIpv6()) {
    fd6_ = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_ICMPV6);
    if (fd6_ < 0) return ErrnoStatus(errno, "raw ICMPv6 socket");
    icmp6_filter filter6;
    ICMP6_FILTER_SETBLOCKALL(&filter6);
    ICMP6_FILTER_SETPASS(ICMP6_PACKET_TOO_BIG, &filter6);
    if (setsockopt(fd6_, IPPROTO_ICMPV6, ICMP6_FILTER, &filter6, sizeof filter6) != 0) {
      return ErrnoStatus(errno, "raw ICMPv6 socket filter");
    }
    SetSocketBuffer(fd6_, /*receive=*/true, kSocketBufferBytes);
  }
  return absl::OkStatus();
}

TooBigReader::Got TooBigReader::Next(bool ipv6, TooBigReport* report) {
  const int fd = ipv6 ? fd6_ : fd4_;
  if (fd < 0) return Got::kNothing;
  // MSG_TRUNC: a message longer than the buffer shows as such and is not parsed cut short.
  const ssize_t n = recv(fd, buffer_.get(), kMessageBytes, MSG_DONTWAIT | MSG_TRUNC);
  if (n < 0) return errno == EINTR ? Got::kOther : Got::kNothing;
  if (static_cast<size_t>(n) > kMessageBytes) return Got::kOther;
  const size_t len = static_cast<size_t>(n);
  const bool parsed = ipv6 ? ParseIcmpv6PacketTooBig(buffer_.get(), len, report)
                           : ParseIcmpFragmentationNeeded(buffer_.get(), len, report);
  return parsed ? Got::kReport : Got::kOther;
}

namespace {

int64_t MonotonicNanos() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

}  // namespace

// Alive from the start: the thread beats from its first time round the loop.
WorkerHeartbeat::WorkerHeartbeat(unsigned worker)
    : worker_(worker), last_beat_nanos_(MonotonicNanos()) {}

void WorkerHeartbeat::Stopped(std::string why) {
  absl::MutexLock lock(&mu_);
  why_ = std::move(why);
  stopped_.store(true, std::memory_order_release);
}

absl::Status WorkerHeartbeat::Health(absl::Duration stall) const {
  if (stopped_.load(std::memory_order_acquire)) {
    absl::MutexLock lock(&mu_);
    return absl::UnavailableError(absl::StrCat("dataplane worker ", worker_, " stopped: ", why_));
  }
  // The beat is the coarse clock (up to a tick behind this one): a worker can look a tick
  // older than it is, never younger.
  const absl::Duration idle =
      absl::Nanoseconds(MonotonicNanos() - last_beat_nanos_.load(std::memory_order_relaxed));
  if (idle > stall) {
    return absl::UnavailableError(
        absl::StrFormat("dataplane worker %u (thread dataplane-%u) has not run for %.1f s", worker_,
                        worker_ % 100000, absl::ToDoubleSeconds(idle)));
  }
  return absl::OkStatus();
}

CommandMailbox::~CommandMailbox() {
  if (fd_ >= 0) close(fd_);
}

absl::Status CommandMailbox::Open(int eventfd_flags) {
  fd_ = eventfd(0, EFD_CLOEXEC | eventfd_flags);
  if (fd_ < 0) return ErrnoStatus(errno, "eventfd");
  return absl::OkStatus();
}

absl::Status CommandMailbox::Call(std::unique_ptr<EngineCommand> command) {
  std::future<absl::Status> done = command->done.get_future();
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("the dataplane has stopped");
    queue_.push_back(std::move(command));
  }
  uint64_t one = 1;
  // A full eventfd counter still wakes the reader; nothing to do on failure.
  (void)!write(fd_, &one, sizeof one);
  return done.get();
}

absl::Status CommandMailbox::AddTunnel(const EngineTunnel& tunnel) {
  if (absl::Status status = CheckEngineTunnel(tunnel); !status.ok()) return status;
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kAdd;
  command->tunnel = tunnel;
  return Call(std::move(command));
}

absl::Status CommandMailbox::RemoveTunnel(const std::string& name) {
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kRemove;
  command->name = name;
  return Call(std::move(command));
}

absl::Status CommandMailbox::Stop() {
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kStop;
  return Call(std::move(command));
}

std::deque<std::unique_ptr<EngineCommand>> CommandMailbox::TakeAll() {
  std::deque<std::unique_ptr<EngineCommand>> commands;
  absl::MutexLock lock(&mu_);
  commands.swap(queue_);
  return commands;
}

void CommandMailbox::Close() {
  std::deque<std::unique_ptr<EngineCommand>> late;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    late.swap(queue_);
  }
  for (auto& command : late) {
    command->done.set_value(absl::UnavailableError("the dataplane has stopped"));
  }
}

}  // namespace tunnelagent::dataplane
