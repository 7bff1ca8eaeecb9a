// The ICMP errors a tunnel sends back to the sender of a packet it cannot carry whole, and
// IPv4 fragmentation of outer packets: what the kernel's ip_tunnel_xmit / ip6_tnl_xmit do when
// a packet is larger than the path.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_ICMP_H_
#define TUNNELAGENT_DATAPLANE_PACKET_ICMP_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/outer_address.h"

namespace tunnelagent::dataplane {

inline constexpr uint8_t kIpProtoIcmp = 1;
inline constexpr uint8_t kIpProtoIcmpv6 = 58;
// The smallest MTU IPv6 links have (RFC 8200), and so the least a packet-too-big may report.
inline constexpr uint32_t kIpv6MinMtu = 1280;

// Writes at `out` (room for `capacity` bytes) an IPv4 packet from `src` to the sender of the
// IPv4 packet `original`: ICMP destination unreachable, fragmentation needed (type 3 code 4,
// RFC 1191) with the next-hop MTU `mtu`, quoting as much of the original as fits in 576 bytes
// (RFC 1812 section 4.3.2.3). Returns its length, or 0 when no error may be sent about the
// original (RFC 1122 section 3.2.2: not about an ICMP error, a non-initial fragment, or a
// packet to or from a multicast, broadcast or unspecified address) or it is malformed.
size_t WriteIcmpFragmentationNeeded(const uint8_t* original, size_t len, uint32_t src, uint16_t mtu,
                                    uint8_t* out, size_t capacity);

// The same for IPv6: ICMPv6 packet too big (type 2, RFC 4443) from `src` to the sender of
// `original` with `mtu` (at least 1280), quoting as much as fits in 1280 bytes. 0 when the
// original is an ICMPv6 error or comes from an unspecified or multicast address.
size_t WriteIcmpv6PacketTooBig(const uint8_t* original, size_t len, const OuterAddress& src,
                               uint32_t mtu, uint8_t* out, size_t capacity);

// One fragment written by FragmentIpv4.
struct Fragment {
  uint8_t* data = nullptr;
  size_t len = 0;
};

// Splits the IPv4 packet `packet` (a header without options, as the tunnels write them) into
// fragments of at most `mtu` bytes with identification `id`, DF clear, written one after the
// other into `out` (room for `capacity` bytes), each described in `fragments` (room for
// `max_fragments`). Returns how many, or 0 when `mtu` leaves no room for 8 bytes of data, the
// packet is not a whole unfragmented IPv4 packet, or the room runs out.
size_t FragmentIpv4(const uint8_t* packet, size_t len, size_t mtu, uint16_t id, uint8_t* out,
                    size_t capacity, Fragment* fragments, size_t max_fragments);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_ICMP_H_
