// Encapsulation and decapsulation of whole packets for every tunnel mode: GRE (RFC 2784, RFC
// 2890) and Ethernet over GRE, IPv4 in IPv4 (RFC 2003), IPv6 in IPv4 (sit), and the IPv6-underlay
// modes with their RFC 2473 encapsulation-limit option.
// Pure functions on caller-owned buffers: no allocation, no system calls.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_
#define TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_

#include <sys/socket.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/gre.h"
#include "dataplane/packet/ipv4.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"

namespace tunnelagent::dataplane {

inline constexpr size_t kEthernetHeaderLen = 14;
// The destination-options header ip6_tunnel adds: the tunnel encapsulation limit (RFC 2473
// section 5.1) padded to 8 bytes.
inline constexpr size_t kEncapLimitOptionLen = 8;
inline constexpr uint8_t kDefaultEncapLimit = 4;  // IPV6_DEFAULT_TNL_ENCAP_LIMIT
inline constexpr size_t kUdpHeaderLen = 8;
inline constexpr uint8_t kIpProtoUdpOuter = 17;
// GRE-in-UDP's port (RFC 8086 section 3.2).
inline constexpr uint16_t kGreInUdpPort = 4754;

// Room to leave in front of an inner packet for the largest outer headers (ip6gre with every
// GRE option; GRE-in-UDP over IPv4 is shorter).
inline constexpr size_t kMaxEncapHeadroom =
    kIpv6HeaderLen + kEncapLimitOptionLen + kGreMaxHeaderLen;
static_assert(kMaxEncapHeadroom >= kIpv4HeaderLen + kUdpHeaderLen + kGreMaxHeaderLen);

// How a tunnel wraps what it sends (ip_tunnel_xmit's and ip6_tnl_xmit's parameters).
struct EncapParams {
  TunnelMode mode = TunnelMode::kGre;
  // IPv4: 0 lets the kernel fill in the source (raw(7)); IPv6 needs a real one.
  OuterAddress local;
  OuterAddress remote;
  bool has_key = false;
  uint32_t key = 0;       // output key
  bool checksum = false;  // GRE C bit
  bool sequence = false;  // GRE S bit; the caller passes the number to Encapsulate
  uint8_t ttl = 0;        // TTL / hop limit; 0 = inherit the inner packet's (64 if not IP)
  uint8_t tos = 0;        // DSCP bits of the outer TOS / traffic class
  bool inherit_tos = false;
  bool pmtudisc = true;    // IPv4 underlay: DF on every outer packet
  bool ignore_df = false;  // IPv4 underlay: never copy an inner DF to the outer header
  uint8_t encap_limit = kDefaultEncapLimit;  // IPv6 underlay
  // Foo-over-UDP (ip link ... encap fou, RFC 8086 for GRE): 0 = none; else the IPv4 underlay
  // packet carries a UDP header to this port in front of the GRE header (gre, gretap) or of the
  // inner packet itself (ipip, sit).
  uint16_t udp_dport = 0;
  uint16_t udp_sport = 0;  // 0: from a hash of the inner flow (encap-sport auto)
  bool fou() const { return udp_dport != 0; }
};

// Outer header bytes for these parameters: 20 (IPv4) or 48 (IPv6 with the encapsulation-limit
// option), plus 8 for a UDP header (fou), plus the GRE header for GRE modes.
size_t EncapHeaderLen(const EncapParams& p);

// Of those, the IP and UDP headers (for fou: what a UDP socket writes itself).
size_t EncapIpUdpLen(const EncapParams& p);

// A hash of the inner packet's flow (addresses, protocol and, for TCP and UDP, ports), for
// spreading flows over UDP source ports. 0 when `inner` is not an IP packet.
uint32_t InnerFlowHash(const uint8_t* inner, size_t len);

// The UDP source port fou uses for a flow of `hash` with encap-sport auto: in 49152..65535,
// the dynamic range (RFC 6335), as udp_flow_src_port keeps to the local port range.
inline uint16_t FlowSourcePort(uint32_t hash) {
  return static_cast<uint16_t>(49152 + (hash ^ (hash >> 16)) % 16384);
}

struct EncapResult {
  uint8_t* packet = nullptr;  // start of the outer packet (inside the headroom)
  size_t len = 0;
  DropReason drop = DropReason::kCount;  // set when packet is null
  // Set by the tunnel's datapath, not by Encapsulate: where a raw send goes (sendmsg's
  // msg_name; valid until the next change of the tunnel's peers, so a send that outlives the
  // current batch copies it), and which of a multipoint tunnel's peers it is for, to hand back
  // to TunnelDatapath::TransmitDone (0: the tunnel's one remote).
  const sockaddr* destination = nullptr;
  socklen_t destination_len = 0;
  uint64_t peer = 0;
};

// Where the IP packet inside what a device carries starts: 0 for IP modes, 14 for Ethernet
// modes when the frame carries IPv4 or IPv6 (untagged); -1 when there is no IP packet.
int InnerIpOffset(TunnelMode mode, const uint8_t* payload, size_t len);

// Wraps what the device carries (an IP packet, or an Ethernet frame for gretap and ip6gretap)
// at `inner` (inner_len bytes; at least EncapHeaderLen(p) writable bytes must precede it).
// What a mode carries: gre and ip6gre IPv4 and IPv6 (protocol 0x0800/0x86DD), ipip IPv4, sit
// IPv6, ip6tnl both (next header 4/41), the tap modes frames of at least 14 bytes;
// kUnsupportedProtocol otherwise, kBadInnerPacket when shorter than its header.
// Outer header as the kernel writes it: TTL fixed or inherited; DSCP fixed or inherited;
// ECN per RFC 6040 (copied, CE sent as ECT(0)); IPv4 DF = pmtudisc, or the inner IPv4 DF unless
// ignore_df; IPv6 flow label from a hash of the inner addresses (auto_flowlabels); `ip_id` 0
// lets the kernel pick the IPv4 ID.
EncapResult Encapsulate(const EncapParams& p, uint8_t* inner, size_t inner_len, uint16_t ip_id,
                        uint32_t sequence);

// Writes, ending at `payload_end`, the outer headers of `p` for an empty payload, and returns
// the packet: what the tunnel sends when it has nothing to carry (a keepalive coming home).
// The GRE protocol type is 0 and the IPv4 TTL / IPv6 hop limit 255 / 64 unless `p.ttl` is set.
EncapResult EncapsulateEmpty(const EncapParams& p, uint8_t* payload_end, uint32_t sequence);

// The kernel's dead-loop check (ip_tunnel_xmit drops a packet whose route leads back into the
// tunnel's own device), made on what the device gives instead of on the route: a route to the
// remote through the tunnel (added by someone else) hands every outer packet the tunnel sends
// back to its own device, and wrapping it again would go round until the path MTU ran out.
// Such a packet is recognisable: IP of the underlay's family, to the remote, of the outer
// protocol (47, 4 or 41; ip6tnl 4 or 41, behind the encapsulation-limit option or not; UDP to
// the fou port for encap fou), from the tunnel's local address (from any when it has none).
// Ethernet modes see it as a frame of that IP packet (which needs a neighbour entry for the
// remote on the tap device; the kernel checks those modes too).
class LoopCheck {
 public:
  LoopCheck() = default;  // matches nothing
  explicit LoopCheck(const EncapParams& p);

  // Per packet: the common frame leaves at the protocol byte; a few more compares otherwise.
  bool IsOwnOuterPacket(const uint8_t* frame, size_t len) const {
    return IsOwnOuterPacketTo(frame, len, remote_);
  }
  // The same for the outer packets sent to `remote` rather than to the tunnel's: one check
  // serves every peer of a multipoint tunnel (made from the tunnel's parameters, whose remote
  // is none).
  bool IsOwnOuterPacketTo(const uint8_t* frame, size_t len, const OuterAddress& remote) const {
    if (len < min_len_) return false;
    const uint8_t first = frame[first_protocol_at_];
    if ((first_protocols_[first >> 6] & (uint64_t{1} << (first & 63))) == 0) return false;
    return Matches(frame, len, remote);
  }

 private:
  static bool Has(const std::array<uint64_t, 4>& set, uint8_t protocol) {
    return (set[protocol >> 6] & (uint64_t{1} << (protocol & 63))) != 0;
  }
  static void Add(std::array<uint64_t, 4>& set, uint8_t protocol) {
    set[protocol >> 6] |= uint64_t{1} << (protocol & 63);
  }
  bool Matches(const uint8_t* frame, size_t len, const OuterAddress& remote) const;

  size_t min_len_ = SIZE_MAX;
  size_t ip_at_ = 0;  // 14 in Ethernet modes
  // IPv4 protocol / IPv6 first next header, and what may be there: the outer protocols, and
  // over IPv6 the destination-options header that carries the encapsulation limit.
  size_t first_protocol_at_ = 0;
  std::array<uint64_t, 4> first_protocols_{};
  std::array<uint64_t, 4> protocols_{};  // the outer protocols themselves
  bool ipv6_ = false;
  bool any_local_ = false;
  uint16_t fou_port_ = 0;
  OuterAddress local_;
  OuterAddress remote_;
};

// What a received packet says about itself; pointers into the caller's buffer.
struct Decapsulated {
  TunnelMode mode = TunnelMode::kGre;  // the kind of tunnel it is for (ip_gre vs gretap, ...)
  OuterAddress outer_src;
  OuterAddress outer_dst;
  uint8_t protocol = 0;  // outer IPv4 protocol / IPv6 next header: 47, 4 or 41
  bool has_checksum = false;
  bool has_key = false;
  uint32_t key = 0;
  bool has_sequence = false;
  uint32_t sequence = 0;
  uint16_t inner_type = 0;  // EtherType of the payload
  uint8_t* inner = nullptr;
  // 0 for an empty payload: no packet to deliver, but the reply to a keepalive.
  size_t inner_len = 0;
};

// Parses an IPv4 packet as a raw socket delivers it (outer header included), GRE, IPIP or
// sit by its protocol field, and validates what it carries: an inner IP packet's version agrees
// with the payload type, its header is complete, its length is trimmed to the inner header's
// own length; an Ethernet frame has its 14-byte header. Applies RFC 6040 ECN decapsulation in
// place (outer CE marks an ECT inner IP packet CE, fixing the IPv4 checksum; over a not-ECT one
// it is kEcnError). Does not look up tunnels or check keys and sequence numbers.
bool Decapsulate(uint8_t* packet, size_t len, Decapsulated* out, DropReason* reason);

// The same for a packet that arrived over IPv6: raw IPv6 sockets deliver what follows the IPv6
// header and its extension headers, so the caller passes what the socket reported alongside:
// the next header (the socket's protocol), source, destination and traffic class.
bool DecapsulateIpv6(uint8_t* payload, size_t len, uint8_t next_header, const OuterAddress& src,
                     const OuterAddress& dst, uint8_t traffic_class, Decapsulated* out,
                     DropReason* reason);

// The same for the payload of a UDP datagram that arrived on a fou port for `protocol` (47:
// GRE, 4: IPv4, 41: IPv6), from `src` to `dst` (IPv4) with outer TOS `tos`.
bool DecapsulateUdpPayload(uint8_t* payload, size_t len, uint8_t protocol, const OuterAddress& src,
                           const OuterAddress& dst, uint8_t tos, Decapsulated* out,
                           DropReason* reason);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_
