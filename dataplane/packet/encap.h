// Encapsulation and decapsulation of whole packets over an IPv4 underlay.
// Pure functions on caller-owned buffers: no allocation, no system calls.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_
#define TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/gre.h"
#include "dataplane/packet/ipv4.h"

namespace tunnelagent::dataplane {

// Room to leave in front of an inner packet for the largest outer headers.
inline constexpr size_t kMaxEncapHeadroom = kIpv4HeaderLen + kGreMaxHeaderLen;

enum class EncapKind : uint8_t { kGre, kIpip };

// How a tunnel wraps what it sends (ip_tunnel_xmit's parameters).
struct EncapParams {
  EncapKind kind = EncapKind::kGre;
  uint32_t local = 0;  // host order; 0 lets the kernel fill in the source (raw(7))
  uint32_t remote = 0;
  bool has_key = false;
  uint32_t key = 0;           // output key
  bool checksum = false;      // GRE C bit
  bool sequence = false;      // GRE S bit; the caller passes the number to Encapsulate
  uint8_t ttl = 64;           // 0 = inherit the inner packet's TTL / hop limit
  bool dont_fragment = true;  // pmtudisc: DF on every outer packet, as the kernel's default
};

// Outer header bytes for these parameters (20 + GRE header, or 20 for IPIP).
size_t EncapHeaderLen(const EncapParams& p);

struct EncapResult {
  uint8_t* packet = nullptr;  // start of the outer packet (inside the headroom)
  size_t len = 0;
  DropReason drop = DropReason::kCount;  // set when packet is null
};

// Wraps the IP packet at `inner` (inner_len bytes; at least EncapHeaderLen(p) writable bytes
// must precede it). The payload type comes from the inner version nibble: IPv4 or IPv6 for
// GRE, IPv4 only for IPIP (kUnsupportedProtocol otherwise; kBadInnerPacket when the packet is
// shorter than its header). The outer ECN field follows RFC 6040 (copied from the inner
// packet, CE sent as ECT(0)), TOS otherwise 0; `ip_id` 0 lets the kernel pick one.
EncapResult Encapsulate(const EncapParams& p, uint8_t* inner, size_t inner_len, uint16_t ip_id,
                        uint32_t sequence);

// What a received packet says about itself; pointers into the caller's buffer.
struct Decapsulated {
  uint32_t outer_src = 0;  // host order
  uint32_t outer_dst = 0;
  uint8_t protocol = 0;  // kIpProtoGre or kIpProtoIpip
  bool has_key = false;
  uint32_t key = 0;
  bool has_sequence = false;
  uint32_t sequence = 0;
  uint16_t inner_type = 0;  // EtherType of the payload
  uint8_t* inner = nullptr;
  size_t inner_len = 0;
};

// Parses an IPv4 packet as a raw socket delivers it (outer header included), GRE or IPIP by
// its protocol field, and validates the inner IP packet: version agrees with the payload type,
// header complete, inner length trimmed to the inner header's own length. Applies RFC 6040 ECN
// decapsulation in place (outer CE marks an ECT inner packet CE, fixing the IPv4 checksum;
// over a not-ECT inner packet it is kEcnError). Does not look up tunnels.
bool Decapsulate(uint8_t* packet, size_t len, Decapsulated* out, DropReason* reason);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_ENCAP_H_
