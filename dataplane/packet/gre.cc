#include "dataplane/packet/gre.h"

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"

namespace tunnelagent::dataplane {

size_t GreHeaderLen(const GreHeader& h) {
  return kGreBaseHeaderLen + (h.has_checksum ? 4 : 0) + (h.has_key ? 4 : 0) +
         (h.has_sequence ? 4 : 0);
}

size_t WriteGreHeader(const GreHeader& h, uint8_t* out, size_t payload_len) {
  uint16_t flags = 0;  // version 0, reserved bits 0 (RFC 2784 section 2.2)
  if (h.has_checksum) flags |= kGreFlagChecksum;
  if (h.has_key) flags |= kGreFlagKey;
  if (h.has_sequence) flags |= kGreFlagSequence;
  StoreBe16(out, flags);
  StoreBe16(out + 2, h.protocol);
  uint8_t* option = out + kGreBaseHeaderLen;
  uint8_t* checksum_field = nullptr;
  // The optional fields appear in the order checksum, key, sequence (RFC 2890 section 2).
  if (h.has_checksum) {
    checksum_field = option;
    StoreBe32(option, 0);  // checksum and Reserved1, both zero while summing
    option += 4;
  }
  if (h.has_key) {
    StoreBe32(option, h.key);
    option += 4;
  }
  if (h.has_sequence) {
    StoreBe32(option, h.sequence);
    option += 4;
  }
  const size_t header_len = static_cast<size_t>(option - out);
  if (checksum_field != nullptr) {
    StoreBe16(checksum_field, InternetChecksum(out, header_len + payload_len));
  }
  return header_len;
}

bool ParseGreHeader(const uint8_t* data, size_t len, GreHeader* out, size_t* header_len,
                    DropReason* reason) {
  if (len < kGreBaseHeaderLen) {
    *reason = DropReason::kTruncated;
    return false;
  }
  const uint16_t flags = LoadBe16(data);
  // Version 1 is PPTP's enhanced GRE, which gre_demux hands to another handler; not ours.
  if ((flags & kGreVersionMask) != 0) {
    *reason = DropReason::kGreVersion;
    return false;
  }
  if ((flags & kGreFlagRouting) != 0) {
    *reason = DropReason::kGreRouting;
    return false;
  }
  // Other reserved flag bits (strict source route, recursion control) are ignored, as the
  // kernel does, so RFC 1701 senders still interoperate.
  GreHeader h;
  h.has_checksum = (flags & kGreFlagChecksum) != 0;
  h.has_key = (flags & kGreFlagKey) != 0;
  h.has_sequence = (flags & kGreFlagSequence) != 0;
  h.protocol = LoadBe16(data + 2);
  const size_t hlen = GreHeaderLen(h);
  if (hlen > len) {
    *reason = DropReason::kTruncated;
    return false;
  }
  const uint8_t* option = data + kGreBaseHeaderLen;
  if (h.has_checksum) {
    // A correct checksum makes the whole region sum to 0xFFFF, whose complement is 0.
    if (InternetChecksum(data, len) != 0) {
      *reason = DropReason::kGreChecksum;
      return false;
    }
    h.checksum = LoadBe16(option);
    option += 4;
  }
  if (h.has_key) {
    h.key = LoadBe32(option);
    option += 4;
  }
  if (h.has_sequence) {
    h.sequence = LoadBe32(option);
  }
  *out = h;
  *header_len = hlen;
  return true;
}

}  // namespace tunnelagent::dataplane
