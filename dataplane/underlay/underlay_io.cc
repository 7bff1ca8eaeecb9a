#include "dataplane/underlay/underlay_io.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dataplane/errno_status.h"
#include "dataplane/tun/tun_device.h"
#include "dataplane/underlay/fou.h"
#include "dataplane/underlay/sockets.h"

namespace tunnelagent::dataplane {

UnderlayIo::~UnderlayIo() {
  for (int fd : {send4_, send6_, probe4_, probe6_, route_netlink_}) {
    if (fd >= 0) close(fd);
  }
}

absl::Status UnderlayIo::Open(int buffer_bytes) {
  buffer_bytes_ = buffer_bytes;
  // IPPROTO_RAW implies IP_HDRINCL (IPV6_HDRINCL for IPv6): the engine writes whole outer
  // headers; for IPv4 the kernel fills in the ID and, when 0, the source.
  absl::StatusOr<int> fd = OpenUnderlaySocket(AF_INET, IPPROTO_RAW, buffer_bytes, "send");
  if (!fd.ok()) return fd.status();
  send4_ = *fd;
  if (KernelHasIpv6()) {  // a kernel without IPv6 still carries the IPv4 modes
    fd = OpenUnderlaySocket(AF_INET6, IPPROTO_RAW, buffer_bytes, "IPv6 send");
    if (!fd.ok()) return fd.status();
    send6_ = *fd;
  }
  probe4_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (probe4_ < 0) return ErrnoStatus(errno, "route probe socket");
  if (send6_ >= 0) probe6_ = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  route_netlink_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (route_netlink_ < 0) return ErrnoStatus(errno, "route netlink socket");
  return absl::OkStatus();
}

bool UnderlayIo::RouteMtu(bool ipv6, const OuterAddress& remote, uint32_t* mtu) {
  const size_t address_len = ipv6 ? 16 : 4;
  struct {
    nlmsghdr header;
    rtmsg route;
    alignas(NLMSG_ALIGNTO) uint8_t attributes[RTA_SPACE(16)];
  } request{};
  const uint32_t sequence = ++route_request_;
  request.header.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg)) + RTA_SPACE(address_len);
  request.header.nlmsg_type = RTM_GETROUTE;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = sequence;
  request.route.rtm_family = ipv6 ? AF_INET6 : AF_INET;
  request.route.rtm_dst_len = ipv6 ? 128 : 32;
  request.route.rtm_flags = RTM_F_FIB_MATCH;
  auto* destination = reinterpret_cast<rtattr*>(request.attributes);
  destination->rta_type = RTA_DST;
  destination->rta_len = static_cast<unsigned short>(RTA_LENGTH(address_len));
  std::memcpy(RTA_DATA(destination), remote.data(), address_len);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(route_netlink_, &request, request.header.nlmsg_len, 0,
             reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    return false;
  }
  // rtnetlink answers inside the send, so the answer is queued by now: never wait for it.
  // Answers to earlier requests (none are left unread, but a reply is matched by number).
  alignas(nlmsghdr) uint8_t reply[8192];
  for (int attempt = 0; attempt < 4; ++attempt) {
    const ssize_t n = recv(route_netlink_, reply, sizeof reply, MSG_DONTWAIT);
    if (n < 0) return false;
    int left = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(reply); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != sequence) continue;
      if (h->nlmsg_type != RTM_NEWROUTE || h->nlmsg_len < NLMSG_LENGTH(sizeof(rtmsg))) {
        return false;  // NLMSG_ERROR: no route
      }
      const auto* route = static_cast<const rtmsg*>(NLMSG_DATA(h));
      if (route->rtm_type != RTN_UNICAST && route->rtm_type != RTN_LOCAL) return false;
      uint32_t metric = 0;
      uint32_t device = 0;  // the least of the devices' MTUs
      auto take_device = [&](int ifindex) {
        ifreq request{};
        request.ifr_ifindex = ifindex;
        if (ioctl(probe4_, SIOCGIFNAME, &request) != 0 ||
            ioctl(probe4_, SIOCGIFMTU, &request) != 0 || request.ifr_mtu <= 0) {
          return;
        }
        const auto value = static_cast<uint32_t>(request.ifr_mtu);
        if (device == 0 || value < device) device = value;
      };
      int attributes_len = static_cast<int>(RTM_PAYLOAD(h));
      for (auto* a = RTM_RTA(route); RTA_OK(a, attributes_len); a = RTA_NEXT(a, attributes_len)) {
        if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) >= sizeof(int)) {
          int ifindex = 0;
          std::memcpy(&ifindex, RTA_DATA(a), sizeof ifindex);
          take_device(ifindex);
        } else if (a->rta_type == RTA_MULTIPATH) {
          int hops_len = static_cast<int>(RTA_PAYLOAD(a));
          auto* hop = static_cast<rtnexthop*>(RTA_DATA(a));
          while (RTNH_OK(hop, hops_len)) {
            take_device(hop->rtnh_ifindex);
            hops_len -= RTNH_ALIGN(hop->rtnh_len);
            hop = RTNH_NEXT(hop);
          }
        } else if (a->rta_type == RTA_METRICS) {
          int metrics_len = static_cast<int>(RTA_PAYLOAD(a));
          for (auto* m = static_cast<rtattr*>(RTA_DATA(a)); RTA_OK(m, metrics_len);
               m = RTA_NEXT(m, metrics_len)) {
            if (m->rta_type == RTAX_MTU && RTA_PAYLOAD(m) >= sizeof(uint32_t)) {
              std::memcpy(&metric, RTA_DATA(m), sizeof metric);
            }
          }
        }
      }
      if (device == 0) return false;
      // A raw send larger than the device's MTU fails whatever the route says.
      *mtu = metric != 0 ? std::min(metric, device) : device;
      return true;
    }
  }
  return false;
}

bool UnderlayIo::ProbeRoute(bool ipv6, const OuterAddress& remote, uint32_t* mtu,
                            OuterAddress* source) {
  const int fd = ipv6 ? probe6_ : probe4_;
  if (fd < 0) return false;
  // Connecting a UDP socket sends nothing: it looks the route up and keeps it, so the kernel
  // can say what it would use. The port is irrelevant but must not be 0.
  socklen_t len = 0;
  sockaddr_in6 address = UnderlayAddress(ipv6, remote, &len);
  address.sin6_port = htons(9);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), len) != 0) return false;
  if (!RouteMtu(ipv6, remote, mtu)) {
    // A route the FIB cannot name a device for (through a nexthop object): the socket's view,
    // which includes the kernel's cached PMTU for the remote, is all there is.
    int value = 0;
    socklen_t value_len = sizeof value;
    if (getsockopt(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MTU : IP_MTU, &value,
                   &value_len) != 0 ||
        value <= 0) {
      return false;
    }
    *mtu = static_cast<uint32_t>(value);
  }
  sockaddr_in6 local{};
  socklen_t local_len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) return false;
  if (ipv6) {
    *source = OuterAddress::FromIpv6(reinterpret_cast<const uint8_t*>(&local.sin6_addr));
  } else {
    *source = OuterAddress::FromIpv4Bytes(
        reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr));
  }
  return true;
}

int UnderlayIo::SendUnderlay(bool ipv6, const OuterAddress& destination, const uint8_t* packet,
                             size_t len) {
  const int fd = send_fd(ipv6);
  if (fd < 0) return EAFNOSUPPORT;
  socklen_t address_len = 0;
  sockaddr_in6 address = UnderlayAddress(ipv6, destination, &address_len);
  if (sendto(fd, packet, len, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&address), address_len) <
      0) {
    return errno;
  }
  return 0;
}

uint16_t UnderlayIo::RandomFragmentId() {
  uint16_t id = 0;
  if (getrandom(&id, sizeof id, 0) != sizeof id) id = 0;
  return id;
}

absl::StatusOr<FouSender> UnderlayIo::OpenFouSender(const EncapParams& encap, bool connected) {
  absl::StatusOr<int> fd =
      OpenFouSendSocket(encap.local, encap.udp_sport, connected ? &encap.remote : nullptr,
                        encap.udp_dport, buffer_bytes_);
  if (!fd.ok()) return fd.status();
  FouSender sender;
  sender.handle = *fd;
  // Its source port, which an error about its packets must quote.
  sockaddr_in bound{};
  socklen_t bound_len = sizeof bound;
  if (getsockname(*fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) == 0) {
    sender.port = ntohs(bound.sin_port);
  }
  return sender;
}

void UnderlayIo::CloseFouSender(int handle) {
  if (handle >= 0) close(handle);
}

int UnderlayIo::SendFou(int sender, const sockaddr* destination, socklen_t destination_len,
                        const iovec* payloads, size_t count, uint8_t tos, uint8_t ttl,
                        uint16_t gso_size) {
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr*>(destination);
  msg.msg_namelen = destination != nullptr ? destination_len : 0;
  msg.msg_iov = const_cast<iovec*>(payloads);
  msg.msg_iovlen = count;
  msg.msg_control = control;
  msg.msg_controllen = WriteFouControl(control, tos, ttl, gso_size);
  const ssize_t sent = sendmsg(sender, &msg, MSG_DONTWAIT);
  return sent >= 0 ? static_cast<int>(sent) : -errno;
}

int UnderlayIo::WriteDevice(int device_fd, bool vnet_header, const uint8_t* packet, size_t len) {
  return WriteTunPacket(device_fd, vnet_header, packet, len);
}

}  // namespace tunnelagent::dataplane
