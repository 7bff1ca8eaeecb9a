#include "dataplane/packet/icmp.h"

#include <algorithm>
#include <cstring>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/ipv4.h"

namespace tunnelagent::dataplane {
namespace {

constexpr size_t kIcmpHeaderLen = 8;
constexpr size_t kIpv4MinErrorQuote = 576;  // RFC 1812: the whole error within 576 bytes
constexpr uint8_t kIcmpDestUnreachable = 3;
constexpr uint8_t kIcmpFragmentationNeeded = 4;
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

}  // namespace

size_t WriteIcmpFragmentationNeeded(const uint8_t* original, size_t len, uint32_t src, uint16_t mtu,
                                    uint8_t* out, size_t capacity) {
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
  icmp[0] = kIcmpDestUnreachable;
  icmp[1] = kIcmpFragmentationNeeded;
  StoreBe16(icmp + 2, 0);
  StoreBe16(icmp + 4, 0);  // unused
  StoreBe16(icmp + 6, mtu);
  std::memcpy(icmp + kIcmpHeaderLen, original, quote);
  StoreBe16(icmp + 2, InternetChecksum(icmp, kIcmpHeaderLen + quote));
  return total;
}

size_t WriteIcmpv6PacketTooBig(const uint8_t* original, size_t len, const OuterAddress& src,
                               uint32_t mtu, uint8_t* out, size_t capacity) {
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
  icmp[0] = kIcmpv6PacketTooBig;
  icmp[1] = 0;
  StoreBe16(icmp + 2, 0);
  StoreBe32(icmp + 4, std::max(mtu, kIpv6MinMtu));
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
