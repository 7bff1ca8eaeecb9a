#include "dataplane/underlay/fou.h"

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/encap.h"
#include "dataplane/underlay/sockets.h"

namespace tunnelagent::dataplane {

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

absl::StatusOr<int> OpenFouSendSocket(const OuterAddress& local, uint16_t sport,
                                      const OuterAddress* remote, uint16_t dport,
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
  if (remote != nullptr) std::memcpy(&to.sin_addr, remote->data(), 4);
  to.sin_port = htons(dport);
  // Unconnected (a multipoint tunnel's), the socket has no ICMP errors queued on it (no
  // IP_RECVERR): a send refused as too big is refused for its size alone.
  if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      (remote != nullptr && connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0)) {
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

size_t WriteFouControl(uint8_t* control, uint8_t tos, uint8_t ttl, uint16_t gso_size) {
  msghdr msg{};
  msg.msg_control = control;
  msg.msg_controllen = kFouSendControlBytes;
  std::memset(control, 0, kFouSendControlBytes);
  size_t used = 0;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  const int tos_value = tos;
  const int ttl_value = ttl;
  for (const auto& [type, value] : {std::pair<int, int>{IP_TOS, tos_value}, {IP_TTL, ttl_value}}) {
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &value, sizeof value);
    used += CMSG_SPACE(sizeof(int));
    msg.msg_controllen = used;
    c = reinterpret_cast<cmsghdr*>(control + used);
  }
  if (gso_size != 0) {
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    std::memcpy(CMSG_DATA(c), &gso_size, sizeof gso_size);
    used += CMSG_SPACE(sizeof(uint16_t));
  }
  return used;
}

}  // namespace tunnelagent::dataplane
