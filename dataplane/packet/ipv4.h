// IPv4 header codec (RFC 791) for the outer headers the dataplane builds and parses.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_IPV4_H_
#define TUNNELAGENT_DATAPLANE_PACKET_IPV4_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"

namespace tunnelagent::dataplane {

inline constexpr size_t kIpv4HeaderLen = 20;  // without options
inline constexpr size_t kIpv6HeaderLen = 40;
inline constexpr uint8_t kIpProtoIpip = 4;
inline constexpr uint8_t kIpProtoIpv6 = 41;
inline constexpr uint8_t kIpProtoGre = 47;

// ECN field values (RFC 3168), the low two bits of TOS / traffic class.
inline constexpr uint8_t kEcnMask = 0x03;
inline constexpr uint8_t kEcnNotEct = 0x00;
inline constexpr uint8_t kEcnEct1 = 0x01;
inline constexpr uint8_t kEcnEct0 = 0x02;
inline constexpr uint8_t kEcnCe = 0x03;

struct Ipv4Header {
  uint8_t header_len = kIpv4HeaderLen;  // bytes (IHL * 4)
  uint8_t tos = 0;
  uint16_t total_len = 0;
  uint16_t id = 0;
  bool dont_fragment = false;
  bool more_fragments = false;
  uint16_t fragment_offset = 0;  // in 8-byte units
  uint8_t ttl = 0;
  uint8_t protocol = 0;
  uint16_t checksum = 0;
  uint32_t src = 0;  // host byte order
  uint32_t dst = 0;
};

// Writes a 20-byte header (no options) with a correct checksum; `h.header_len` and
// `h.checksum` are ignored.
void WriteIpv4Header(const Ipv4Header& h, uint8_t* out);

// Parses and validates the header at `data` (version 4, IHL >= 5, IHL and total length within
// `len`). The checksum is not verified: the kernel did before handing the packet to a raw socket.
// Returns false and sets *reason (kTruncated or kBadOuterHeader) when invalid.
bool ParseIpv4Header(const uint8_t* data, size_t len, Ipv4Header* out, DropReason* reason);

// The version nibble of an IP packet (4 or 6), or 0 when `len` is 0.
inline uint8_t IpVersion(const uint8_t* data, size_t len) { return len ? data[0] >> 4 : 0; }

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_IPV4_H_
