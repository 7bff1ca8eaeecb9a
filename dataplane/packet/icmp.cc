#include "dataplane/packet/icmp.h"

#include <algorithm>
#include <cstring>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/gre.h"
#include "dataplane/packet/ipv4.h"

namespace tunnelagent::dataplane {
namespace {

constexpr size_t kIcmpHeaderLen = 8;
constexpr size_t kUdpHeaderBytes = 8;
constexpr size_t kIpv4MinErrorQuote = 576;  // RFC 1812: the whole error within 576 bytes
constexpr uint8_t kIcmpDestUnreachable = 3;
constexpr uint8_t kIcmpFragmentationNeeded = 4;
constexpr uint8_t kIcmpHostUnreachable = 1;
constexpr uint8_t kIcmpv6DestUnreachable = 1;
constexpr uint8_t kIcmpv6AddressUnreachable = 3;
constexpr uint8_t kIcmpv6PacketTooBig = 2;
constexpr uint8_t kIcmpTtl = 64;
constexpr uint16_t kFlagMoreFragments = 0x2000;
constexpr uint16_t kFragmentOffsetMask = 0x1FFF;

bool IsIcmpv4Error(uint8_t type) {
  // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
  return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

bool IsUnicastIpv4(uint32_t a) {
  return a != 0 && a != 0xFFFFFFFFu && (a >> 28) != 0xE;  // not any, broadcast, 224/4
}

constexpr uint8_t kIpProtoUdp = 17;
constexpr uint8_t kIpProtoDestinationOptions = 60;
constexpr uint16_t kFlagDontFragment = 0x4000;

// The outer protocol(s) a mode's packets carry (ip6tnl: IPv4 or IPv6 inside).
bool IsOuterProtocolOf(TunnelMode mode, uint8_t protocol) {
  if (IsGreMode(mode)) return protocol == kIpProtoGre;
  switch (mode) {
    case TunnelMode::kIpip:
      return protocol == kIpProtoIpip;
    case TunnelMode::kSit:
      return protocol == kIpProtoIpv6;
    case TunnelMode::kIp6tnl:
      return protocol == kIpProtoIpip || protocol == kIpProtoIpv6;
    default:
      return false;
  }
}

}  // namespace

namespace {

// An ICMP error of `type`/`code` (the four bytes after the checksum: `rest`) from `src` to the
// sender of the IPv4 packet `original`, under RFC 1122's and RFC 1812's rules (see
// WriteIcmpFragmentationNeeded).
size_t WriteIcmpv4Error(const uint8_t* original, size_t len, uint32_t src, uint8_t type,
                        uint8_t code, uint32_t rest, uint8_t* out, size_t capacity) {
  if (len < kIpv4HeaderLen || (original[0] >> 4) != 4) return 0;
  const size_t header_len = size_t{original[0] & 0x0Fu} * 4;
  if (header_len < kIpv4HeaderLen || header_len > len) return 0;
  if ((LoadBe16(original + 6) & kFragmentOffsetMask) != 0) return 0;
  const uint32_t sender = LoadBe32(original + 12);
  const uint32_t destination = LoadBe32(original + 16);
  if (!IsUnicastIpv4(sender) || !IsUnicastIpv4(destination)) return 0;
  if (original[9] == kIpProtoIcmp &&
      (len < header_len + 1 || IsIcmpv4Error(original[header_len]))) {
    return 0;
  }
  const size_t quote = std::min(
      {len, size_t{LoadBe16(original + 2)}, kIpv4MinErrorQuote - kIpv4HeaderLen - kIcmpHeaderLen});
  const size_t total = kIpv4HeaderLen + kIcmpHeaderLen + quote;
  if (total > capacity) return 0;

  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(total);
  ip.ttl = kIcmpTtl;
  ip.protocol = kIpProtoIcmp;
  ip.src = src;
  ip.dst = sender;
  WriteIpv4Header(ip, out);
  uint8_t* icmp = out + kIpv4HeaderLen;
  icmp[0] = type;
  icmp[1] = code;
  StoreBe16(icmp + 2, 0);
  StoreBe32(icmp + 4, rest);
  std::memcpy(icmp + kIcmpHeaderLen, original, quote);
  StoreBe16(icmp + 2, InternetChecksum(icmp, kIcmpHeaderLen + quote));
  return total;
}

// The same for IPv6 (RFC 4443 section 2.4: see WriteIcmpv6PacketTooBig).
size_t WriteIcmpv6Error(const uint8_t* original, size_t len, const OuterAddress& src, uint8_t type,
                        uint8_t code, uint32_t rest, uint8_t* out, size_t capacity) {
  if (len < kIpv6HeaderLen || (original[0] >> 4) != 6) return 0;
  const uint8_t* sender = original + 8;
  OuterAddress sender_address = OuterAddress::FromIpv6(sender);
  if (sender_address.is_zero() || sender[0] == 0xFF) return 0;
  // An ICMPv6 error (types below 128) directly after the header is never answered.
  if (original[6] == kIpProtoIcmpv6 && (len <= kIpv6HeaderLen || original[kIpv6HeaderLen] < 128)) {
    return 0;
  }
  const size_t quote = std::min(len, kIpv6MinMtu - kIpv6HeaderLen - kIcmpHeaderLen);
  const size_t total = kIpv6HeaderLen + kIcmpHeaderLen + quote;
  if (total > capacity) return 0;

  StoreBe32(out, uint32_t{6} << 28);
  StoreBe16(out + 4, static_cast<uint16_t>(kIcmpHeaderLen + quote));
  out[6] = kIpProtoIcmpv6;
  out[7] = kIcmpTtl;
  std::memcpy(out + 8, src.data(), 16);
  std::memcpy(out + 24, sender, 16);
  uint8_t* icmp = out + kIpv6HeaderLen;
  icmp[0] = type;
  icmp[1] = code;
  StoreBe16(icmp + 2, 0);
  StoreBe32(icmp + 4, rest);
  std::memcpy(icmp + kIcmpHeaderLen, original, quote);
  // The checksum covers the pseudo-header: addresses, upper-layer length and next header.
  const size_t icmp_len = kIcmpHeaderLen + quote;
  uint32_t sum = ChecksumAdd(out + 8, 32);
  sum += static_cast<uint32_t>(icmp_len >> 16) + static_cast<uint32_t>(icmp_len & 0xFFFF);
  sum += kIpProtoIcmpv6;
  sum = ChecksumAdd(icmp, icmp_len, sum);
  StoreBe16(icmp + 2, ChecksumFinish(sum));
  return total;
}

}  // namespace

size_t WriteIcmpFragmentationNeeded(const uint8_t* original, size_t len, uint32_t src, uint16_t mtu,
                                    uint8_t* out, size_t capacity) {
  // The next-hop MTU in the low half; the high half unused (RFC 1191).
  return WriteIcmpv4Error(original, len, src, kIcmpDestUnreachable, kIcmpFragmentationNeeded, mtu,
                          out, capacity);
}

size_t WriteIcmpHostUnreachable(const uint8_t* original, size_t len, uint32_t src, uint8_t* out,
                                size_t capacity) {
  return WriteIcmpv4Error(original, len, src, kIcmpDestUnreachable, kIcmpHostUnreachable, 0, out,
                          capacity);
}

size_t WriteIcmpv6PacketTooBig(const uint8_t* original, size_t len, const OuterAddress& src,
                               uint32_t mtu, uint8_t* out, size_t capacity) {
  return WriteIcmpv6Error(original, len, src, kIcmpv6PacketTooBig, 0, std::max(mtu, kIpv6MinMtu),
                          out, capacity);
}

size_t WriteIcmpv6AddressUnreachable(const uint8_t* original, size_t len, const OuterAddress& src,
                                     uint8_t* out, size_t capacity) {
  return WriteIcmpv6Error(original, len, src, kIcmpv6DestUnreachable, kIcmpv6AddressUnreachable, 0,
                          out, capacity);
}

bool ParseIcmpFragmentationNeeded(const uint8_t* packet, size_t len, TooBigReport* out) {
  if (len < kIpv4HeaderLen || (packet[0] >> 4) != 4) return false;
  const size_t header_len = size_t{packet[0] & 0x0Fu} * 4;
  if (header_len < kIpv4HeaderLen || header_len + kIcmpHeaderLen > len) return false;
  if (packet[9] != kIpProtoIcmp || (LoadBe16(packet + 6) & kFragmentOffsetMask) != 0) return false;
  // What the header says, less what the socket's buffer cut off: raw sockets hand whole packets.
  const size_t total = std::min<size_t>(LoadBe16(packet + 2), len);
  if (total < header_len + kIcmpHeaderLen) return false;
  const uint8_t* icmp = packet + header_len;
  const size_t icmp_len = total - header_len;
  if (icmp[0] != kIcmpDestUnreachable || icmp[1] != kIcmpFragmentationNeeded) return false;
  // Raw sockets see the message before the kernel's ICMP layer has checked it.
  if (InternetChecksum(icmp, icmp_len) != 0) return false;
  const uint8_t* quote = icmp + kIcmpHeaderLen;
  const size_t quote_len = icmp_len - kIcmpHeaderLen;
  if (quote_len < kIpv4HeaderLen || (quote[0] >> 4) != 4) return false;
  const size_t quoted_header = size_t{quote[0] & 0x0Fu} * 4;
  if (quoted_header < kIpv4HeaderLen || quoted_header > quote_len) return false;
  const uint16_t fragment = LoadBe16(quote + 6);
  if ((fragment & kFragmentOffsetMask) != 0) return false;  // no transport header to see
  out->ipv6 = false;
  out->mtu = LoadBe16(icmp + 6);
  out->quoted_src = OuterAddress::FromIpv4Bytes(quote + 12);
  out->quoted_dst = OuterAddress::FromIpv4Bytes(quote + 16);
  out->quoted_protocol = quote[9];
  out->quoted_dont_fragment = (fragment & kFlagDontFragment) != 0;
  out->quoted_len = LoadBe16(quote + 2);
  out->transport = quote + quoted_header;
  out->transport_len = quote_len - quoted_header;
  return true;
}

bool ParseIcmpv6PacketTooBig(const uint8_t* message, size_t len, TooBigReport* out) {
  if (len < kIcmpHeaderLen + kIpv6HeaderLen) return false;
  if (message[0] != kIcmpv6PacketTooBig || message[1] != 0) return false;
  const uint8_t* quote = message + kIcmpHeaderLen;
  size_t quote_len = len - kIcmpHeaderLen;
  if ((quote[0] >> 4) != 6) return false;
  out->ipv6 = true;
  out->mtu = LoadBe32(message + 4);
  out->quoted_src = OuterAddress::FromIpv6(quote + 8);
  out->quoted_dst = OuterAddress::FromIpv6(quote + 24);
  out->quoted_dont_fragment = true;  // IPv6 routers never fragment
  out->quoted_len = kIpv6HeaderLen + LoadBe16(quote + 4);
  uint8_t next = quote[6];
  size_t at = kIpv6HeaderLen;
  // Through the destination-options header ip6_tunnel puts first (the encapsulation limit).
  if (next == kIpProtoDestinationOptions) {
    if (quote_len < at + 8) return false;
    const size_t options = (size_t{quote[at + 1]} + 1) * 8;
    if (quote_len < at + options) return false;
    next = quote[at];
    at += options;
  }
  out->quoted_protocol = next;
  out->transport = quote + at;
  out->transport_len = quote_len - at;
  return true;
}

QuoteVerdict CheckTooBigQuote(const OwnPacketPattern& pattern, const TooBigReport& report,
                              uint32_t* sequence) {
  const bool ipv6 = IsIpv6UnderlayMode(pattern.mode);
  const bool fou = pattern.udp_dport != 0;
  if (report.ipv6 != ipv6 || report.quoted_dst != pattern.remote) return QuoteVerdict::kOtherFlow;
  const uint8_t* t = report.transport;
  if (fou) {
    if (report.quoted_protocol != kIpProtoUdp) return QuoteVerdict::kOtherFlow;
    // A UDP error to another port is about another socket's traffic.
    if (report.transport_len < 4 || LoadBe16(t + 2) != pattern.udp_dport) {
      return report.transport_len < 4 ? QuoteVerdict::kRejected : QuoteVerdict::kOtherFlow;
    }
  } else if (!IsOuterProtocolOf(pattern.mode, report.quoted_protocol)) {
    return QuoteVerdict::kOtherFlow;
  }
  // From here it names this tunnel's flow: whatever fails is a forgery (or a quote too short
  // to prove otherwise), and is counted.
  if (report.quoted_src != pattern.source || !report.quoted_dont_fragment) {
    return QuoteVerdict::kRejected;
  }
  const uint32_t floor = ipv6 ? kIpv6MinMtu : kIpv4MinPathMtu;
  if (report.mtu < floor || report.mtu >= report.quoted_len) return QuoteVerdict::kRejected;
  if (fou) {
    const uint16_t sport = LoadBe16(t);
    bool bound = false;
    for (size_t i = 0; i < pattern.udp_sport_count; ++i) bound |= pattern.udp_sports[i] == sport;
    if (!bound) return QuoteVerdict::kRejected;
    t += kUdpHeaderBytes;
  }
  if (!IsGreMode(pattern.mode)) return QuoteVerdict::kOurs;
  const size_t gre_at = static_cast<size_t>(t - report.transport);
  const size_t gre_len =
      4 + (pattern.checksum ? 4 : 0) + (pattern.has_key ? 4 : 0) + (pattern.sequence ? 4 : 0);
  if (report.transport_len < gre_at + gre_len) return QuoteVerdict::kRejected;
  const uint16_t flags = LoadBe16(t);
  const uint16_t expected = (pattern.checksum ? kGreFlagChecksum : 0) |
                            (pattern.has_key ? kGreFlagKey : 0) |
                            (pattern.sequence ? kGreFlagSequence : 0);
  // The flag bits that shape the header, and the version: all as we send them.
  constexpr uint16_t kShape =
      kGreFlagChecksum | kGreFlagRouting | kGreFlagKey | kGreFlagSequence | kGreVersionMask;
  if ((flags & kShape) != expected) return QuoteVerdict::kRejected;
  size_t at = 4 + (pattern.checksum ? 4 : 0);
  if (pattern.has_key) {
    if (LoadBe32(t + at) != pattern.key) return QuoteVerdict::kRejected;
    at += 4;
  }
  if (pattern.sequence) *sequence = LoadBe32(t + at);
  return QuoteVerdict::kOurs;
}

size_t FragmentIpv4(const uint8_t* packet, size_t len, size_t mtu, uint16_t id, uint8_t* out,
                    size_t capacity, Fragment* fragments, size_t max_fragments) {
  if (len < kIpv4HeaderLen || (packet[0] >> 4) != 4) return 0;
  const size_t header_len = size_t{packet[0] & 0x0Fu} * 4;
  const size_t total_len = LoadBe16(packet + 2);
  if (header_len != kIpv4HeaderLen || total_len != len) return 0;
  const uint16_t frag = LoadBe16(packet + 6);
  if ((frag & (kFlagMoreFragments | kFragmentOffsetMask)) != 0) return 0;
  if (mtu < header_len + 8) return 0;
  // Every fragment but the last carries a multiple of 8 bytes (RFC 791).
  const size_t chunk = (mtu - header_len) & ~size_t{7};
  const uint8_t* data = packet + header_len;
  const size_t data_len = len - header_len;

  size_t count = 0;
  size_t used = 0;
  for (size_t offset = 0; offset < data_len; offset += chunk) {
    const size_t piece = std::min(chunk, data_len - offset);
    if (count == max_fragments || used + header_len + piece > capacity) return 0;
    uint8_t* f = out + used;
    std::memcpy(f, packet, header_len);
    std::memcpy(f + header_len, data + offset, piece);
    StoreBe16(f + 2, static_cast<uint16_t>(header_len + piece));
    StoreBe16(f + 4, id);
    uint16_t frag_field = static_cast<uint16_t>(offset / 8);
    if (offset + piece < data_len) frag_field |= kFlagMoreFragments;
    StoreBe16(f + 6, frag_field);
    StoreBe16(f + 10, 0);
    StoreBe16(f + 10, InternetChecksum(f, header_len));
    fragments[count++] = Fragment{f, header_len + piece};
    used += header_len + piece;
  }
  return count;
}

}  // namespace tunnelagent::dataplane
