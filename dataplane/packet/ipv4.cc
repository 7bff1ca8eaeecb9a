#include "dataplane/packet/ipv4.h"

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint16_t kFlagDontFragment = 0x4000;
constexpr uint16_t kFlagMoreFragments = 0x2000;
constexpr uint16_t kFragmentOffsetMask = 0x1FFF;

}  // namespace

void WriteIpv4Header(const Ipv4Header& h, uint8_t* out) {
  out[0] = 0x45;  // version 4, IHL 5: the dataplane never sends options
  out[1] = h.tos;
  StoreBe16(out + 2, h.total_len);
  StoreBe16(out + 4, h.id);
  uint16_t frag = h.fragment_offset & kFragmentOffsetMask;
  if (h.dont_fragment) frag |= kFlagDontFragment;
  if (h.more_fragments) frag |= kFlagMoreFragments;
  StoreBe16(out + 6, frag);
  out[8] = h.ttl;
  out[9] = h.protocol;
  StoreBe16(out + 10, 0);
  StoreBe32(out + 12, h.src);
  StoreBe32(out + 16, h.dst);
  StoreBe16(out + 10, InternetChecksum(out, kIpv4HeaderLen));
}

bool ParseIpv4Header(const uint8_t* data, size_t len, Ipv4Header* out, DropReason* reason) {
  // Like ip_rcv_core: data shorter than what the header claims is "truncated"; a header that
  // contradicts itself is a header error.
  if (len < kIpv4HeaderLen) {
    *reason = DropReason::kTruncated;
    return false;
  }
  const uint8_t version = data[0] >> 4;
  const size_t header_len = size_t{data[0] & 0x0Fu} * 4;
  if (version != 4 || header_len < kIpv4HeaderLen) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  if (header_len > len) {
    *reason = DropReason::kTruncated;
    return false;
  }
  const uint16_t total_len = LoadBe16(data + 2);
  if (total_len < header_len) {
    *reason = DropReason::kBadOuterHeader;
    return false;
  }
  if (total_len > len) {
    *reason = DropReason::kTruncated;
    return false;
  }
  const uint16_t frag = LoadBe16(data + 6);
  out->header_len = static_cast<uint8_t>(header_len);
  out->tos = data[1];
  out->total_len = total_len;
  out->id = LoadBe16(data + 4);
  out->dont_fragment = (frag & kFlagDontFragment) != 0;
  out->more_fragments = (frag & kFlagMoreFragments) != 0;
  out->fragment_offset = frag & kFragmentOffsetMask;
  out->ttl = data[8];
  out->protocol = data[9];
  out->checksum = LoadBe16(data + 10);
  out->src = LoadBe32(data + 12);
  out->dst = LoadBe32(data + 16);
  return true;
}

}  // namespace tunnelagent::dataplane
