#include "dataplane/underlay/sockets.h"

#include <linux/filter.h>
#include <linux/icmp.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/receive_steering.h"

namespace tunnelagent::dataplane {

bool KernelHasIpv6() {
  const int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno != EAFNOSUPPORT;
  close(fd);
  return true;
}

// SO_RCVBUF or SO_SNDBUF (`receive`) of `bytes`: beyond net.core.[rw]mem_max with the FORCE
// option where CAP_NET_ADMIN allows, else as far as the limit lets.
void SetSocketBuffer(int fd, bool receive, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &bytes, sizeof bytes) !=
      0) {
    setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUF : SO_SNDBUF, &bytes, sizeof bytes);
  }
}

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

namespace {

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

}  // namespace

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
}  // namespace tunnelagent::dataplane
