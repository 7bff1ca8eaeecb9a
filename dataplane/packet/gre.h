// GRE header codec: RFC 2784 (checksum) with RFC 2890 (key, sequence number).
#ifndef TUNNELAGENT_DATAPLANE_PACKET_GRE_H_
#define TUNNELAGENT_DATAPLANE_PACKET_GRE_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"

namespace tunnelagent::dataplane {

// GRE protocol types (EtherTypes).
inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86DD;
inline constexpr uint16_t kEtherTypeTransparentBridging = 0x6558;  // gretap

// Flag bits of the first 16-bit word.
inline constexpr uint16_t kGreFlagChecksum = 0x8000;
inline constexpr uint16_t kGreFlagRouting = 0x4000;
inline constexpr uint16_t kGreFlagKey = 0x2000;
inline constexpr uint16_t kGreFlagSequence = 0x1000;
inline constexpr uint16_t kGreVersionMask = 0x0007;

inline constexpr size_t kGreBaseHeaderLen = 4;
inline constexpr size_t kGreMaxHeaderLen = 16;  // with checksum, key and sequence

struct GreHeader {
  bool has_checksum = false;
  bool has_key = false;
  bool has_sequence = false;
  uint16_t protocol = 0;
  uint16_t checksum = 0;  // as received; computed on write
  uint32_t key = 0;
  uint32_t sequence = 0;
};

// 4, plus 4 for each of checksum, key and sequence.
size_t GreHeaderLen(const GreHeader& h);

// Writes the header at `out`, followed in memory by `payload_len` bytes of payload that are
// already in place. With has_checksum the checksum covers the header and that payload.
// Returns the header length.
size_t WriteGreHeader(const GreHeader& h, uint8_t* out, size_t payload_len);

// Parses the GRE header at the start of `data` (header and payload: `len` bytes) with the
// kernel's receive rules (gre_parse_header): version must be 0 (kGreVersion), routing bit
// clear (kGreRouting), header within `len` (kTruncated), and when the checksum bit is set the
// checksum over header and payload must verify (kGreChecksum).
// On success fills *out and *header_len.
bool ParseGreHeader(const uint8_t* data, size_t len, GreHeader* out, size_t* header_len,
                    DropReason* reason);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_GRE_H_
