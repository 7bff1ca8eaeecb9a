#include "dataplane/packet/encap.h"

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"

namespace tunnelagent::dataplane {
namespace {

constexpr size_t kMaxIpv4TotalLen = 0xFFFF;
constexpr size_t kIpv4TtlOffset = 8;
constexpr size_t kIpv6HopLimitOffset = 7;

uint8_t InnerEcn(const uint8_t* inner, uint8_t version) {
  if (version == 4) return inner[1] & kEcnMask;
  // The traffic class straddles bytes 0 and 1; its ECN bits are bits 4-5 of byte 1.
  return (inner[1] >> 4) & kEcnMask;
}

// INET_ECN_encapsulate: copy the inner ECN field, but send CE as ECT(0) so that a congestion
// mark made before the tunnel is not mistaken for one made inside it (RFC 6040 section 4.1).
uint8_t EncapsulateEcn(uint8_t inner_ecn) { return inner_ecn == kEcnCe ? kEcnEct0 : inner_ecn; }

// Marks an ECT IPv4 packet CE and updates its header checksum incrementally (RFC 1624 eqn. 3)
// rather than recomputing it, so a header that arrived with a bad checksum still fails the
// check downstream instead of being silently repaired.
void SetIpv4Ce(uint8_t* ip) {
  const uint16_t old_word = LoadBe16(ip);
  ip[1] |= kEcnCe;
  const uint16_t new_word = LoadBe16(ip);
  uint32_t sum = static_cast<uint16_t>(~LoadBe16(ip + 10));
  sum += static_cast<uint16_t>(~old_word);
  sum += new_word;
  StoreBe16(ip + 10, ChecksumFinish(sum));
}

void SetIpv6Ce(uint8_t* ip) { ip[1] |= kEcnCe << 4; }

// Validates the inner packet against its own header and returns its length with link-layer
// padding or trailing garbage cut off.
bool TrimInner(const uint8_t* inner, size_t available, uint8_t version, size_t* inner_len) {
  if (version == 4) {
    if (available < kIpv4HeaderLen) return false;
    const size_t header_len = size_t{inner[0] & 0x0Fu} * 4;
    const size_t total_len = LoadBe16(inner + 2);
    if (header_len < kIpv4HeaderLen || header_len > available || total_len < header_len ||
        total_len > available) {
      return false;
    }
    *inner_len = total_len;
    return true;
  }
  // IPv6; a jumbogram (payload length 0 with a hop-by-hop option) cannot fit in IPv4 anyway.
  if (available < kIpv6HeaderLen) return false;
  const size_t total_len = kIpv6HeaderLen + LoadBe16(inner + 4);
  if (total_len > available) return false;
  *inner_len = total_len;
  return true;
}

}  // namespace

absl::string_view DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kTruncated:
      return "truncated";
    case DropReason::kBadOuterHeader:
      return "bad_outer_header";
    case DropReason::kGreVersion:
      return "gre_version";
    case DropReason::kGreRouting:
      return "gre_routing";
    case DropReason::kGreChecksum:
      return "gre_checksum";
    case DropReason::kUnsupportedProtocol:
      return "unsupported_protocol";
    case DropReason::kBadInnerPacket:
      return "bad_inner_packet";
    case DropReason::kEcnError:
      return "ecn_error";
    case DropReason::kNoTunnel:
      return "no_tunnel";
    case DropReason::kTooBig:
      return "too_big";
    case DropReason::kSendError:
      return "send_error";
    case DropReason::kDeviceError:
      return "device_error";
    case DropReason::kSocketError:
      return "socket_error";
    case DropReason::kCount:
      break;
  }
  return "unknown";
}

size_t EncapHeaderLen(const EncapParams& p) {
  if (p.kind == EncapKind::kIpip) return kIpv4HeaderLen;
  GreHeader h;
  h.has_checksum = p.checksum;
  h.has_key = p.has_key;
  h.has_sequence = p.sequence;
  return kIpv4HeaderLen + GreHeaderLen(h);
}

EncapResult Encapsulate(const EncapParams& p, uint8_t* inner, size_t inner_len, uint16_t ip_id,
                        uint32_t sequence) {
  EncapResult result;
  const uint8_t version = IpVersion(inner, inner_len);
  if (inner_len == 0) {
    result.drop = DropReason::kBadInnerPacket;
    return result;
  }
  uint16_t ether_type = 0;
  if (version == 4) {
    const size_t header_len = size_t{inner[0] & 0x0Fu} * 4;
    if (inner_len < kIpv4HeaderLen || header_len < kIpv4HeaderLen || header_len > inner_len) {
      result.drop = DropReason::kBadInnerPacket;
      return result;
    }
    ether_type = kEtherTypeIpv4;
  } else if (version == 6 && p.kind == EncapKind::kGre) {
    if (inner_len < kIpv6HeaderLen) {
      result.drop = DropReason::kBadInnerPacket;
      return result;
    }
    ether_type = kEtherTypeIpv6;
  } else {
    result.drop = DropReason::kUnsupportedProtocol;
    return result;
  }

  const size_t header_len = EncapHeaderLen(p);
  if (header_len + inner_len > kMaxIpv4TotalLen) {
    result.drop = DropReason::kTooBig;
    return result;
  }
  uint8_t* outer = inner - header_len;

  if (p.kind == EncapKind::kGre) {
    GreHeader gre;
    gre.has_checksum = p.checksum;
    gre.has_key = p.has_key;
    gre.key = p.key;
    gre.has_sequence = p.sequence;
    gre.sequence = sequence;
    gre.protocol = ether_type;
    WriteGreHeader(gre, outer + kIpv4HeaderLen, inner_len);
  }

  Ipv4Header ip;
  // Only the ECN bits are inherited: copying DSCP would leak the inner QoS class into the
  // underlay, which the kernel does only when asked to ("tos inherit").
  ip.tos = EncapsulateEcn(InnerEcn(inner, version));
  ip.total_len = static_cast<uint16_t>(header_len + inner_len);
  ip.id = ip_id;
  ip.dont_fragment = p.dont_fragment;
  ip.ttl = p.ttl != 0 ? p.ttl : version == 4 ? inner[kIpv4TtlOffset] : inner[kIpv6HopLimitOffset];
  ip.protocol = p.kind == EncapKind::kGre ? kIpProtoGre : kIpProtoIpip;
  ip.src = p.local;
  ip.dst = p.remote;
  WriteIpv4Header(ip, outer);

  result.packet = outer;
  result.len = header_len + inner_len;
  return result;
}

bool Decapsulate(uint8_t* packet, size_t len, Decapsulated* out, DropReason* reason) {
  Ipv4Header ip;
  if (!ParseIpv4Header(packet, len, &ip, reason)) return false;
  // Raw sockets see packets after reassembly, so a fragment here is malformed or hostile.
  if (ip.more_fragments || ip.fragment_offset != 0) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  uint8_t* payload = packet + ip.header_len;
  // Bytes past total_len are link-layer padding, not part of the tunnel payload.
  const size_t payload_len = ip.total_len - ip.header_len;

  Decapsulated d;
  d.outer_src = ip.src;
  d.outer_dst = ip.dst;
  d.protocol = ip.protocol;
  uint8_t* inner = nullptr;
  size_t available = 0;
  if (ip.protocol == kIpProtoGre) {
    GreHeader gre;
    size_t gre_len = 0;
    if (!ParseGreHeader(payload, payload_len, &gre, &gre_len, reason)) return false;
    d.has_key = gre.has_key;
    d.key = gre.key;
    d.has_sequence = gre.has_sequence;
    d.sequence = gre.sequence;
    d.inner_type = gre.protocol;
    inner = payload + gre_len;
    available = payload_len - gre_len;
  } else if (ip.protocol == kIpProtoIpip) {
    d.inner_type = kEtherTypeIpv4;
    inner = payload;
    available = payload_len;
  } else {
    *reason = DropReason::kUnsupportedProtocol;
    return false;
  }

  uint8_t expected_version = 0;
  if (d.inner_type == kEtherTypeIpv4) {
    expected_version = 4;
  } else if (d.inner_type == kEtherTypeIpv6) {
    expected_version = 6;
  } else {
    *reason = DropReason::kUnsupportedProtocol;
    return false;
  }
  const uint8_t version = IpVersion(inner, available);
  size_t inner_len = 0;
  if (version != expected_version || !TrimInner(inner, available, version, &inner_len)) {
    *reason = DropReason::kBadInnerPacket;
    return false;
  }

  // RFC 6040 section 4.2: only an outer CE changes the inner packet.
  if ((ip.tos & kEcnMask) == kEcnCe) {
    const uint8_t inner_ecn = InnerEcn(inner, version);
    if (inner_ecn == kEcnNotEct) {
      // The sender cannot react to a congestion mark, so dropping is the only signal left.
      *reason = DropReason::kEcnError;
      return false;
    }
    if (inner_ecn != kEcnCe) {
      if (version == 4) {
        SetIpv4Ce(inner);
      } else {
        SetIpv6Ce(inner);
      }
    }
  }

  d.inner = inner;
  d.inner_len = inner_len;
  *out = d;
  return true;
}

}  // namespace tunnelagent::dataplane
