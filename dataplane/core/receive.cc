#include "dataplane/core/receive.h"

#include <netinet/udp.h>

#include <cstring>

namespace tunnelagent::dataplane {

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

}  // namespace tunnelagent::dataplane
