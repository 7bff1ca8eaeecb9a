#include "dataplane/packet/encap.h"

#include <cstring>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"

namespace tunnelagent::dataplane {
namespace {

constexpr size_t kMaxIpv4TotalLen = 0xFFFF;
constexpr size_t kMaxIpv6PayloadLen = 0xFFFF;
constexpr size_t kIpv4TtlOffset = 8;
constexpr size_t kIpv6HopLimitOffset = 7;
constexpr uint8_t kIpProtoDestinationOptions = 60;
constexpr uint8_t kTlvTunnelEncapLimit = 4;  // RFC 2473 section 5.1
constexpr uint8_t kTlvPadN = 1;
constexpr uint16_t kIpv4FlagDontFragment = 0x4000;
// What the kernel uses for a TTL it cannot inherit (sysctl_ip_default_ttl) and for the
// keepalive it builds (Cisco's keepalives carry 255).
constexpr uint8_t kDefaultTtl = 64;
constexpr uint8_t kKeepaliveTtl = 255;

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

// Which outer protocol a mode and payload version use: 47 for GRE, else 4 or 41 by what is
// carried.
uint8_t OuterProtocol(TunnelMode mode, uint8_t inner_version) {
  if (IsGreMode(mode)) return kIpProtoGre;
  if (mode == TunnelMode::kIpip) return kIpProtoIpip;
  if (mode == TunnelMode::kSit) return kIpProtoIpv6;
  return inner_version == 4 ? kIpProtoIpip : kIpProtoIpv6;  // ip6tnl
}

bool ModeCarries(TunnelMode mode, uint8_t version) {
  switch (mode) {
    case TunnelMode::kIpip:
      return version == 4;
    case TunnelMode::kSit:
      return version == 6;
    default:
      return version == 4 || version == 6;
  }
}

// The auto flow label (ip6_make_flowlabel): a hash of the inner flow, so ECMP in the underlay
// keeps each inner flow on one path and spreads different ones.
uint32_t FlowLabel(const uint8_t* ip, uint8_t version) {
  const uint8_t* addresses = version == 4 ? ip + 12 : ip + 8;
  const size_t len = version == 4 ? 8 : 32;
  uint32_t hash = 2166136261u;  // FNV-1a
  for (size_t i = 0; i < len; ++i) hash = (hash ^ addresses[i]) * 16777619u;
  hash ^= version == 4 ? ip[9] : ip[6];
  hash = (hash >> 20) ^ hash;
  return hash & 0xFFFFF;
}

struct OuterFields {
  uint8_t protocol = 0;
  uint8_t tos = 0;
  uint8_t ttl = 0;
  bool dont_fragment = false;
  uint32_t flow_label = 0;
};

size_t IpHeaderLen(TunnelMode mode) {
  return IsIpv6UnderlayMode(mode) ? kIpv6HeaderLen + kEncapLimitOptionLen : kIpv4HeaderLen;
}

// Writes the outer IP header(s) at `outer` for a packet of `header_len + payload_len` bytes.
// False when that is more than the outer header can describe.
bool WriteOuterIp(const EncapParams& p, const OuterFields& f, uint8_t* outer, size_t header_len,
                  size_t payload_len, uint16_t ip_id) {
  if (IsIpv6UnderlayMode(p.mode)) {
    const size_t ipv6_payload = header_len - kIpv6HeaderLen + payload_len;
    if (ipv6_payload > kMaxIpv6PayloadLen) return false;
    StoreBe32(outer, (uint32_t{6} << 28) | (uint32_t{f.tos} << 20) | f.flow_label);
    StoreBe16(outer + 4, static_cast<uint16_t>(ipv6_payload));
    outer[6] = kIpProtoDestinationOptions;
    outer[7] = f.ttl;
    std::memcpy(outer + 8, p.local.data(), 16);
    std::memcpy(outer + 24, p.remote.data(), 16);
    uint8_t* option = outer + kIpv6HeaderLen;
    option[0] = f.protocol;
    option[1] = 0;  // length in 8-byte units beyond the first 8
    option[2] = kTlvTunnelEncapLimit;
    option[3] = 1;
    option[4] = p.encap_limit;
    option[5] = kTlvPadN;
    option[6] = 1;
    option[7] = 0;
    return true;
  }
  if (header_len + payload_len > kMaxIpv4TotalLen) return false;
  Ipv4Header ip;
  ip.tos = f.tos;
  ip.total_len = static_cast<uint16_t>(header_len + payload_len);
  ip.id = ip_id;
  ip.dont_fragment = f.dont_fragment;
  ip.ttl = f.ttl;
  ip.protocol = f.protocol;
  ip.src = p.local.v4();
  ip.dst = p.remote.v4();
  WriteIpv4Header(ip, outer);
  return true;
}

void WriteGre(const EncapParams& p, uint16_t protocol, uint32_t sequence, uint8_t* at,
              size_t payload_len) {
  GreHeader gre;
  gre.has_checksum = p.checksum;
  gre.has_key = p.has_key;
  gre.key = p.key;
  gre.has_sequence = p.sequence;
  gre.sequence = sequence;
  gre.protocol = protocol;
  WriteGreHeader(gre, at, payload_len);
}

// Applies RFC 6040 decapsulation to the IP packet at `ip` (version 4 or 6): false when the
// outer CE cannot be passed on (not-ECT inner packet).
bool DecapsulateEcn(uint8_t outer_tos, uint8_t* ip, uint8_t version) {
  if ((outer_tos & kEcnMask) != kEcnCe) return true;  // only an outer CE changes anything
  const uint8_t inner_ecn = InnerEcn(ip, version);
  // The sender cannot react to a congestion mark, so dropping is the only signal left.
  if (inner_ecn == kEcnNotEct) return false;
  if (inner_ecn != kEcnCe) {
    if (version == 4) {
      SetIpv4Ce(ip);
    } else {
      SetIpv6Ce(ip);
    }
  }
  return true;
}

// What follows the outer IP header(s), for either underlay family.
bool DecodeTunnelPayload(bool ipv6_underlay, uint8_t protocol, uint8_t outer_tos, uint8_t* payload,
                         size_t payload_len, Decapsulated* d, DropReason* reason) {
  d->protocol = protocol;
  uint8_t* inner = nullptr;
  size_t available = 0;
  if (protocol == kIpProtoGre) {
    GreHeader gre;
    size_t gre_len = 0;
    if (!ParseGreHeader(payload, payload_len, &gre, &gre_len, reason)) return false;
    d->has_checksum = gre.has_checksum;
    d->has_key = gre.has_key;
    d->key = gre.key;
    d->has_sequence = gre.has_sequence;
    d->sequence = gre.sequence;
    d->inner_type = gre.protocol;
    // ip_gre and gretap are separate receive tables in the kernel, chosen by this field.
    const bool ethernet = gre.protocol == kEtherTypeTransparentBridging;
    d->mode = ipv6_underlay ? (ethernet ? TunnelMode::kIp6gretap : TunnelMode::kIp6gre)
                            : (ethernet ? TunnelMode::kGretap : TunnelMode::kGre);
    inner = payload + gre_len;
    available = payload_len - gre_len;
  } else if (protocol == kIpProtoIpip || protocol == kIpProtoIpv6) {
    d->inner_type = protocol == kIpProtoIpip ? kEtherTypeIpv4 : kEtherTypeIpv6;
    d->mode = ipv6_underlay              ? TunnelMode::kIp6tnl
              : protocol == kIpProtoIpip ? TunnelMode::kIpip
                                         : TunnelMode::kSit;
    inner = payload;
    available = payload_len;
  } else {
    *reason = DropReason::kUnsupportedProtocol;
    return false;
  }

  d->inner = inner;
  if (available == 0) {
    // Nothing inside: the tunnel's own keepalive, returned by the peer. The caller decides.
    d->inner_len = 0;
    return true;
  }

  if (d->inner_type == kEtherTypeTransparentBridging) {
    if (available < kEthernetHeaderLen) {
      *reason = DropReason::kBadInnerPacket;
      return false;
    }
    d->inner_len = available;  // a frame says nothing of its own length; padding stays
    const int ip_offset = InnerIpOffset(d->mode, inner, available);
    if (ip_offset > 0) {
      uint8_t* ip = inner + ip_offset;
      const uint8_t version = IpVersion(ip, available - ip_offset);
      size_t ip_len = 0;
      // The kernel marks IP inside frames too (skb->protocol after eth_type_trans).
      if (TrimInner(ip, available - ip_offset, version, &ip_len) &&
          !DecapsulateEcn(outer_tos, ip, version)) {
        *reason = DropReason::kEcnError;
        return false;
      }
    }
    return true;
  }

  uint8_t expected_version = 0;
  if (d->inner_type == kEtherTypeIpv4) {
    expected_version = 4;
  } else if (d->inner_type == kEtherTypeIpv6) {
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
  if (!DecapsulateEcn(outer_tos, inner, version)) {
    *reason = DropReason::kEcnError;
    return false;
  }
  d->inner_len = inner_len;
  return true;
}

// A received tunnel packet from `src` to `dst`, its payload as DecodeTunnelPayload takes it:
// *out is only written when it decodes.
bool DecodeFrom(bool ipv6_underlay, uint8_t protocol, uint8_t outer_tos, uint8_t* payload,
                size_t len, const OuterAddress& src, const OuterAddress& dst, Decapsulated* out,
                DropReason* reason) {
  Decapsulated d;
  d.outer_src = src;
  d.outer_dst = dst;
  if (!DecodeTunnelPayload(ipv6_underlay, protocol, outer_tos, payload, len, &d, reason)) {
    return false;
  }
  *out = d;
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
    case DropReason::kGreSequence:
      return "gre_sequence";
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
    case DropReason::kLoop:
      return "loop";
    case DropReason::kIcmpRejected:
      return "icmp_rejected";
    case DropReason::kNoPeer:
      return "no_peer";
    case DropReason::kUnknownPeer:
      return "unknown_peer";
    case DropReason::kSpoofedSource:
      return "spoofed_source";
    case DropReason::kCount:
      break;
  }
  return "unknown";
}

size_t EncapIpUdpLen(const EncapParams& p) {
  return IpHeaderLen(p.mode) + (p.fou() ? kUdpHeaderLen : 0);
}

uint32_t InnerFlowHash(const uint8_t* inner, size_t len) {
  const uint8_t version = IpVersion(inner, len);
  size_t header = 0;
  uint8_t protocol = 0;
  if (version == 4 && len >= kIpv4HeaderLen) {
    header = size_t{inner[0] & 0x0Fu} * 4;
    protocol = inner[9];
    if ((LoadBe16(inner + 6) & 0x3FFF) != 0) protocol = 0;  // a fragment: no ports
  } else if (version == 6 && len >= kIpv6HeaderLen) {
    header = kIpv6HeaderLen;
    protocol = inner[6];
  } else {
    return 0;
  }
  uint32_t hash = FlowLabel(inner, version) * 2654435761u;
  if ((protocol == 6 || protocol == 17) && header + 4 <= len) hash ^= LoadBe32(inner + header);
  hash ^= hash >> 15;
  hash *= 2246822519u;
  return hash ^ (hash >> 13);
}

size_t EncapHeaderLen(const EncapParams& p) {
  size_t len = EncapIpUdpLen(p);
  if (IsGreMode(p.mode)) {
    GreHeader h;
    h.has_checksum = p.checksum;
    h.has_key = p.has_key;
    h.has_sequence = p.sequence;
    len += GreHeaderLen(h);
  }
  return len;
}

int InnerIpOffset(TunnelMode mode, const uint8_t* payload, size_t len) {
  if (!IsEthernetMode(mode)) return 0;
  if (len < kEthernetHeaderLen) return -1;
  const uint16_t ether_type = LoadBe16(payload + 12);
  if (ether_type != kEtherTypeIpv4 && ether_type != kEtherTypeIpv6) return -1;
  if (IpVersion(payload + kEthernetHeaderLen, len - kEthernetHeaderLen) !=
      (ether_type == kEtherTypeIpv4 ? 4 : 6)) {
    return -1;
  }
  return static_cast<int>(kEthernetHeaderLen);
}

EncapResult Encapsulate(const EncapParams& p, uint8_t* inner, size_t inner_len, uint16_t ip_id,
                        uint32_t sequence) {
  EncapResult result;
  if (inner_len == 0) {
    result.drop = DropReason::kBadInnerPacket;
    return result;
  }

  // What is carried, and the IP packet whose fields the outer header inherits.
  uint16_t ether_type = kEtherTypeTransparentBridging;
  uint8_t inner_version = 0;
  const uint8_t* ip = nullptr;
  if (IsEthernetMode(p.mode)) {
    if (inner_len < kEthernetHeaderLen) {
      result.drop = DropReason::kBadInnerPacket;
      return result;
    }
    const int offset = InnerIpOffset(p.mode, inner, inner_len);
    if (offset > 0) {
      const uint8_t version = IpVersion(inner + offset, inner_len - offset);
      const size_t min_len = version == 4 ? kIpv4HeaderLen : kIpv6HeaderLen;
      if (inner_len - offset >= min_len) {
        ip = inner + offset;
        inner_version = version;
      }
    }
  } else {
    inner_version = IpVersion(inner, inner_len);
    if (!ModeCarries(p.mode, inner_version)) {
      result.drop = DropReason::kUnsupportedProtocol;
      return result;
    }
    if (inner_version == 4) {
      const size_t header_len = size_t{inner[0] & 0x0Fu} * 4;
      if (inner_len < kIpv4HeaderLen || header_len < kIpv4HeaderLen || header_len > inner_len) {
        result.drop = DropReason::kBadInnerPacket;
        return result;
      }
      ether_type = kEtherTypeIpv4;
    } else {
      if (inner_len < kIpv6HeaderLen) {
        result.drop = DropReason::kBadInnerPacket;
        return result;
      }
      ether_type = kEtherTypeIpv6;
    }
    ip = inner;
  }

  OuterFields f;
  f.protocol = p.fou() ? kIpProtoUdpOuter : OuterProtocol(p.mode, inner_version);
  uint8_t inner_tos = 0;
  if (ip != nullptr) {
    inner_tos = inner_version == 4 ? ip[1] : static_cast<uint8_t>(LoadBe16(ip) >> 4);
    f.flow_label = FlowLabel(ip, inner_version);
  }
  // Only the ECN bits are always inherited: copying DSCP would leak the inner QoS class into
  // the underlay, which the kernel does only when asked to ("tos inherit").
  const uint8_t dscp = (p.inherit_tos ? inner_tos : p.tos) & static_cast<uint8_t>(~kEcnMask);
  f.tos = dscp | EncapsulateEcn(ip != nullptr ? inner_tos & kEcnMask : kEcnNotEct);
  if (p.ttl != 0) {
    f.ttl = p.ttl;
  } else if (ip != nullptr) {
    f.ttl = inner_version == 4 ? ip[kIpv4TtlOffset] : ip[kIpv6HopLimitOffset];
  } else {
    f.ttl = kDefaultTtl;
  }
  const bool inner_df =
      ip != nullptr && inner_version == 4 && (LoadBe16(ip + 6) & kIpv4FlagDontFragment) != 0;
  f.dont_fragment = p.pmtudisc || (inner_df && !p.ignore_df);

  const size_t header_len = EncapHeaderLen(p);
  uint8_t* outer = inner - header_len;
  if (!WriteOuterIp(p, f, outer, header_len, inner_len, ip_id)) {
    result.drop = DropReason::kTooBig;
    return result;
  }
  if (p.fou()) {
    // Checksum 0: none, which UDP over IPv4 allows (RFC 768) and RFC 8086 section 3.4 permits
    // for GRE-in-UDP; a UDP socket sending the same payload writes its own header instead.
    uint8_t* udp = outer + IpHeaderLen(p.mode);
    const uint16_t sport =
        p.udp_sport != 0
            ? p.udp_sport
            : FlowSourcePort(ip != nullptr ? InnerFlowHash(ip, inner + inner_len - ip) : 0);
    StoreBe16(udp, sport);
    StoreBe16(udp + 2, p.udp_dport);
    StoreBe16(udp + 4, static_cast<uint16_t>(header_len - IpHeaderLen(p.mode) + inner_len));
    StoreBe16(udp + 6, 0);
  }
  if (IsGreMode(p.mode)) WriteGre(p, ether_type, sequence, outer + EncapIpUdpLen(p), inner_len);
  result.packet = outer;
  result.len = header_len + inner_len;
  return result;
}

EncapResult EncapsulateEmpty(const EncapParams& params, uint8_t* payload_end, uint32_t sequence) {
  // What comes home through the peer is the tunnel's plain packet, never UDP-wrapped.
  EncapParams p = params;
  p.udp_dport = 0;
  EncapResult result;
  OuterFields f;
  const bool ipv6 = IsIpv6UnderlayMode(p.mode);
  f.protocol = OuterProtocol(p.mode, ipv6 ? 6 : 4);
  f.tos = p.tos & static_cast<uint8_t>(~kEcnMask);
  f.ttl = p.ttl != 0 ? p.ttl : ipv6 ? kDefaultTtl : kKeepaliveTtl;
  f.dont_fragment = p.pmtudisc;
  const size_t header_len = EncapHeaderLen(p);
  uint8_t* outer = payload_end - header_len;
  WriteOuterIp(p, f, outer, header_len, 0, 0);
  if (IsGreMode(p.mode)) WriteGre(p, 0, sequence, outer + IpHeaderLen(p.mode), 0);
  result.packet = outer;
  result.len = header_len;
  return result;
}

LoopCheck::LoopCheck(const EncapParams& p)
    : ipv6_(IsIpv6UnderlayMode(p.mode)),
      any_local_(p.local.is_zero()),
      fou_port_(p.udp_dport),
      local_(p.local),
      remote_(p.remote) {
  ip_at_ = IsEthernetMode(p.mode) ? kEthernetHeaderLen : 0;
  first_protocol_at_ = ip_at_ + (ipv6_ ? 6 : 9);
  min_len_ = ip_at_ + (ipv6_ ? kIpv6HeaderLen : kIpv4HeaderLen);
  if (p.fou()) {
    Add(protocols_, kIpProtoUdpOuter);
  } else if (p.mode == TunnelMode::kIp6tnl) {
    Add(protocols_, kIpProtoIpip);
    Add(protocols_, kIpProtoIpv6);
  } else {
    Add(protocols_, OuterProtocol(p.mode, ipv6_ ? 6 : 4));
  }
  first_protocols_ = protocols_;
  if (ipv6_) Add(first_protocols_, kIpProtoDestinationOptions);
}

bool LoopCheck::Matches(const uint8_t* frame, size_t len, const OuterAddress& remote) const {
  if (ip_at_ != 0 && LoadBe16(frame + 12) != (ipv6_ ? kEtherTypeIpv6 : kEtherTypeIpv4)) {
    return false;
  }
  const uint8_t* ip = frame + ip_at_;
  const size_t ip_len = len - ip_at_;
  if (ipv6_) {
    if (IpVersion(ip, ip_len) != 6) return false;
    uint8_t next = ip[6];
    if (next == kIpProtoDestinationOptions) {
      if (ip_len < kIpv6HeaderLen + kEncapLimitOptionLen) return false;
      next = ip[kIpv6HeaderLen];
    }
    return Has(protocols_, next) && std::memcmp(ip + 24, remote.data(), 16) == 0 &&
           (any_local_ || std::memcmp(ip + 8, local_.data(), 16) == 0);
  }
  if (IpVersion(ip, ip_len) != 4 || !Has(protocols_, ip[9]) || LoadBe32(ip + 16) != remote.v4() ||
      (!any_local_ && LoadBe32(ip + 12) != local_.v4())) {
    return false;
  }
  if (fou_port_ == 0) return true;
  // Encap fou: the kernel's UDP socket sent it, so it is UDP to the fou port. A fragment past
  // the first has no UDP header: from the local address to the remote is enough (only a loop
  // brings UDP to the remote back into the tunnel's device).
  if ((LoadBe16(ip + 6) & 0x1FFF) != 0) return true;
  const size_t header_len = size_t{ip[0] & 0x0Fu} * 4;
  return header_len >= kIpv4HeaderLen && ip_len >= header_len + kUdpHeaderLen &&
         LoadBe16(ip + header_len + 2) == fou_port_;
}

bool Decapsulate(uint8_t* packet, size_t len, Decapsulated* out, DropReason* reason) {
  Ipv4Header ip;
  if (!ParseIpv4Header(packet, len, &ip, reason)) return false;
  // Raw sockets see packets after reassembly, so a fragment here is malformed or hostile.
  if (ip.more_fragments || ip.fragment_offset != 0) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  // Bytes past total_len are link-layer padding, not part of the tunnel payload.
  return DecodeFrom(false, ip.protocol, ip.tos, packet + ip.header_len,
                    ip.total_len - ip.header_len, OuterAddress(ip.src), OuterAddress(ip.dst), out,
                    reason);
}

bool DecapsulateUdpPayload(uint8_t* payload, size_t len, uint8_t protocol, const OuterAddress& src,
                           const OuterAddress& dst, uint8_t tos, Decapsulated* out,
                           DropReason* reason) {
  return DecodeFrom(false, protocol, tos, payload, len, src, dst, out, reason);
}

bool DecapsulateIpv6(uint8_t* payload, size_t len, uint8_t next_header, const OuterAddress& src,
                     const OuterAddress& dst, uint8_t traffic_class, Decapsulated* out,
                     DropReason* reason) {
  return DecodeFrom(true, next_header, traffic_class, payload, len, src, dst, out, reason);
}

}  // namespace tunnelagent::dataplane
