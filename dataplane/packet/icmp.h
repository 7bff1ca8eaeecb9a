// The ICMP errors a tunnel sends back to the sender of a packet it cannot carry whole, and
// IPv4 fragmentation of outer packets: what the kernel's ip_tunnel_xmit / ip6_tnl_xmit do when
// a packet is larger than the path. And the other way round: reading the "fragmentation
// needed" / "packet too big" errors the underlay sends about the tunnel's own packets, and
// whether the packet such an error quotes could really be one of ours.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_ICMP_H_
#define TUNNELAGENT_DATAPLANE_PACKET_ICMP_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"

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

// ICMP destination unreachable, host unreachable (type 3 code 1), from `src` to the sender of
// `original`, under the same rules and with the same quote as WriteIcmpFragmentationNeeded:
// what a router answers when it has no route for the destination (a multipoint tunnel with no
// peer for it).
size_t WriteIcmpHostUnreachable(const uint8_t* original, size_t len, uint32_t src, uint8_t* out,
                                size_t capacity);

// The same for IPv6: ICMPv6 destination unreachable, address unreachable (type 1 code 3, RFC
// 4443 section 3.1), under WriteIcmpv6PacketTooBig's rules.
size_t WriteIcmpv6AddressUnreachable(const uint8_t* original, size_t len, const OuterAddress& src,
                                     uint8_t* out, size_t capacity);

// The least path MTU an error may lower an underlay path to: IPv4's is the kernel's
// ip_rt_min_pmtu default (512 + 20 + 20), IPv6's the least MTU of any IPv6 link.
inline constexpr uint32_t kIpv4MinPathMtu = 552;

// What an ICMP "fragmentation needed" (type 3 code 4) or ICMPv6 "packet too big" (type 2)
// reports, and the start of the packet it quotes: pointers into the caller's buffer.
struct TooBigReport {
  bool ipv6 = false;
  uint32_t mtu = 0;  // the next-hop MTU it reports
  // The quoted packet's outer header: addresses, protocol (IPv6: behind one destination-options
  // header, where tunnels carry the encapsulation limit), DF (IPv4; always for IPv6), and its
  // whole length as that header gives it (not what the quote holds).
  OuterAddress quoted_src;
  OuterAddress quoted_dst;
  uint8_t quoted_protocol = 0;
  bool quoted_dont_fragment = false;
  uint32_t quoted_len = 0;
  // What of the quoted packet follows its IP header(s): GRE, UDP or an inner IP header.
  const uint8_t* transport = nullptr;
  size_t transport_len = 0;
};

// Parses an IPv4 packet as a raw ICMP socket delivers it (IP header first). False unless it
// is a whole, checksum-correct ICMP "fragmentation needed" quoting at least a complete IPv4
// header of an unfragmented (or first-fragment) packet.
bool ParseIcmpFragmentationNeeded(const uint8_t* packet, size_t len, TooBigReport* out);

// The same for an ICMPv6 message as a raw ICMPv6 socket delivers it (no IPv6 header; the
// kernel has verified its checksum): a packet too big quoting at least a whole IPv6 header.
bool ParseIcmpv6PacketTooBig(const uint8_t* message, size_t len, TooBigReport* out);

// What a tunnel's own outer packets look like, for telling whether an error quotes one.
struct OwnPacketPattern {
  TunnelMode mode = TunnelMode::kGre;
  OuterAddress source;  // the local address, or the source the route gives when it has none
  OuterAddress remote;
  // GRE: the header as sent (its C, K and S bits), with the output key.
  bool checksum = false;
  bool has_key = false;
  uint32_t key = 0;
  bool sequence = false;
  // Foo-over-UDP (IPv4): the destination port, and the source ports the tunnel's sockets are
  // bound to (`udp_sport_count` of them at `udp_sports`).
  uint16_t udp_dport = 0;
  const uint16_t* udp_sports = nullptr;
  size_t udp_sport_count = 0;
};

enum class QuoteVerdict : uint8_t {
  kOtherFlow,  // not to this tunnel's remote over its protocol: another tunnel's, or none
  kRejected,   // to its remote over its protocol, but not a packet it sends (or too short a
               // quote to tell, or an MTU no path can have): counted, never believed
  kOurs,       // could be ours: *sequence is the quoted GRE sequence number when it sends them
};

// Whether `report` quotes one of the tunnel's packets: to `remote` over the tunnel's protocol
// (GRE 47, IPIP 4, IPv6 41, or UDP to the fou port), and then from `source`, with DF (IPv4),
// longer than the MTU reported, that MTU at least the family's least (kIpv4MinPathMtu,
// kIpv6MinMtu), and for GRE the tunnel's flags and key, all inside the quote; fou also its
// source port. The sequence number is for the caller to check against what it sent.
QuoteVerdict CheckTooBigQuote(const OwnPacketPattern& pattern, const TooBigReport& report,
                              uint32_t* sequence);

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
