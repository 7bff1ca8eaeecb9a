// Why the dataplane did not deliver a packet. Every drop is counted under one of these.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_DROP_REASON_H_
#define TUNNELAGENT_DATAPLANE_PACKET_DROP_REASON_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace tunnelagent::dataplane {

enum class DropReason : uint8_t {
  kTruncated,            // shorter than its headers say
  kBadOuterHeader,       // outer IPv4 header invalid (version, IHL, length, fragment)
  kGreVersion,           // GRE version other than 0
  kGreRouting,           // GRE routing bit set (RFC 1701 source routing, obsolete)
  kGreChecksum,          // GRE checksum wrong, or absent where the tunnel requires one
  kGreSequence,          // GRE sequence number absent where required, or behind the last one
  kUnsupportedProtocol,  // payload type the tunnel cannot carry (e.g. IPv6 into IPIP)
  kBadInnerPacket,       // inner packet malformed or its version contradicts the header
  kEcnError,             // outer CE over a not-ECT inner packet (RFC 6040: drop)
  kNoTunnel,             // no tunnel matches outer source, destination and key
  kTooBig,               // larger than the tunnel can carry (buffer or EMSGSIZE)
  kSendError,            // the underlay socket refused the packet
  kDeviceError,          // the tunnel device failed a read or refused a write
  kSocketError,          // an error reported on the underlay socket (e.g. ICMP unreachable)
  kLoop,  // read from the device, but it is this tunnel's own outer packet: the route to the
          // remote leads back into the tunnel (the kernel's "dead loop")
  kIcmpRejected,   // an ICMP "fragmentation needed" / "packet too big" naming the tunnel's
                   // flow whose quote is not a packet it sent (wrong source, key, GRE flags,
                   // a sequence number not sent lately, no DF) or whose MTU is below the least
                   // a path may have: not believed, the path MTU stays as it was
  kNoPeer,         // multipoint, sent: no peer's allowed prefixes hold the inner destination
                   // (answered with ICMP destination unreachable)
  kUnknownPeer,    // multipoint, received: the outer source is no peer's underlay address
  kSpoofedSource,  // multipoint, received: the inner source is not one the peer may send from
  kCount,
};

inline constexpr int kDropReasonCount = static_cast<int>(DropReason::kCount);

// Metric label value: "truncated", "bad_outer_header", ...
absl::string_view DropReasonName(DropReason reason);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_DROP_REASON_H_
