// What a receive on an underlay socket brought, read into a packet: the raw IP sockets' packets
// (with the outer header over IPv4; the addresses and traffic class as ancillary data over
// IPv6) and the fou sockets' UDP payloads (one or several datagrams of one flow with UDP GRO).
// Pure parsing of the buffers and msghdr a backend filled: no system call.
#ifndef TUNNELAGENT_DATAPLANE_CORE_RECEIVE_H_
#define TUNNELAGENT_DATAPLANE_CORE_RECEIVE_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet/outer_address.h"

namespace tunnelagent::dataplane {

// One of the raw sockets tunnel packets arrive on.
struct ReceiveSocket {
  int fd = -1;
  bool ipv6 = false;
  uint8_t protocol = 0;
};

// Receive buffers start this far into their memory, so a virtio-net header fits in front of a
// packet whatever headers precede it (none, for ip6tnl over IPv6).
inline constexpr size_t kReceiveHeadroom = 16;
static_assert(kReceiveHeadroom >= kVirtioNetHeaderLen);

// Room for the ancillary data an IPv6 receive asks for (packet info and traffic class), and
// for the source address.
inline constexpr size_t kReceiveControlBytes = 128;
using ReceiveAddress = sockaddr_in6;

// Parses a packet `len` bytes long received on `socket` (with `msg`'s name and control data,
// for IPv6). The caller has checked it was not truncated.
bool DecodeReceived(const ReceiveSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                    Decapsulated* out, DropReason* reason);

// Room for the ancillary data a fou receive asks for (packet info, TOS, the GRO segment size).
inline constexpr size_t kFouControlBytes = 128;

// Parses a fou receive's name and control data: false when something needed is missing.
bool ParseFouReceive(const msghdr& msg, OuterAddress* source, OuterAddress* destination,
                     uint8_t* tos, size_t* gso_size);

// What a fou receive on a port carrying `protocol` brought, cut into its datagrams (UDP_GRO:
// all of `gso_size` bytes but the last) and decapsulated; calls `deliver(Decapsulated&)` for
// each that decapsulates and `drop(DropReason)` for each that does not, after `received()`
// for every datagram. `msg` is the receive's, with its source, control data and flags: a
// receive the buffer cut short (MSG_TRUNC) counts as one packet too big.
template <typename Received, typename Deliver, typename Drop>
void ForEachFouDatagram(uint8_t protocol, uint8_t* data, size_t len, const msghdr& msg,
                        Received&& received, Deliver&& deliver, Drop&& drop) {
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    received();
    drop(DropReason::kTooBig);
    return;
  }
  OuterAddress source;
  OuterAddress destination;
  uint8_t tos = 0;
  size_t gso_size = 0;
  if (!ParseFouReceive(msg, &source, &destination, &tos, &gso_size)) {
    received();
    drop(DropReason::kBadOuterHeader);
    return;
  }
  if (gso_size == 0 || gso_size > len) gso_size = len;
  size_t offset = 0;
  do {  // an empty datagram is one packet too
    received();
    const size_t n = std::min(gso_size, len - offset);
    Decapsulated packet;
    DropReason reason = DropReason::kCount;
    if (!DecapsulateUdpPayload(data + offset, n, protocol, source, destination, tos, &packet,
                               &reason)) {
      drop(reason);
    } else {
      deliver(packet);
    }
    offset += n;
  } while (offset < len);
}

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_RECEIVE_H_
