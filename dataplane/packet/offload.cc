#include "dataplane/packet/offload.h"

#include <algorithm>
#include <cstring>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/ipv4.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpPsh = 0x08;
constexpr uint8_t kTcpAck = 0x10;
constexpr uint8_t kTcpCwr = 0x80;
constexpr size_t kTcpMinHeaderLen = 20;
constexpr size_t kUdpHeaderLen = 8;
constexpr size_t kTcpChecksumOffset = 16;
constexpr size_t kUdpChecksumOffset = 6;

uint16_t LoadLe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (uint16_t{p[1]} << 8)); }
void StoreLe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// The IP and transport headers of a packet the offload code handles.
struct Layout {
  uint8_t version = 0;
  uint8_t protocol = 0;
  size_t ip_header_len = 0;
  size_t header_len = 0;  // IP + TCP/UDP
  size_t len = 0;         // the IP packet's own length (link padding cut off)
};

// IPv4 without fragmentation, or IPv6 whose next header is the transport (no extension
// headers: the kernel's TSO never produces them for a TUN device), carrying TCP or UDP.
bool ParseLayout(const uint8_t* ip, size_t len, Layout* out) {
  if (len < kIpv4HeaderLen) return false;
  const uint8_t version = ip[0] >> 4;
  if (version == 4) {
    const size_t ihl = size_t{ip[0] & 0x0Fu} * 4;
    const size_t total = LoadBe16(ip + 2);
    if (ihl < kIpv4HeaderLen || total < ihl || total > len) return false;
    if ((LoadBe16(ip + 6) & 0x3FFF) != 0) return false;  // a fragment
    out->ip_header_len = ihl;
    out->protocol = ip[9];
    out->len = total;
  } else if (version == 6) {
    if (len < kIpv6HeaderLen) return false;
    const size_t total = kIpv6HeaderLen + LoadBe16(ip + 4);
    if (total > len) return false;
    out->ip_header_len = kIpv6HeaderLen;
    out->protocol = ip[6];
    out->len = total;
  } else {
    return false;
  }
  out->version = version;
  size_t l4 = 0;
  if (out->protocol == kIpProtoTcp) {
    if (out->len < out->ip_header_len + kTcpMinHeaderLen) return false;
    l4 = static_cast<size_t>(ip[out->ip_header_len + 12] >> 4) * 4;
    if (l4 < kTcpMinHeaderLen) return false;
  } else if (out->protocol == kIpProtoUdp) {
    l4 = kUdpHeaderLen;
  } else {
    return false;
  }
  out->header_len = out->ip_header_len + l4;
  return out->header_len <= out->len;
}

// The pseudo-header sum (RFC 793, RFC 8200 section 8.1) for a transport segment of `l4_len`.
uint32_t PseudoHeaderSum(const uint8_t* ip, uint8_t version, uint8_t protocol, size_t l4_len) {
  uint32_t sum = 0;
  if (version == 4) {
    sum = ChecksumAdd(ip + 12, 8);
  } else {
    sum = ChecksumAdd(ip + 8, 32);
  }
  return sum + protocol + static_cast<uint32_t>(l4_len);
}

// Writes the checksum of the transport segment of `ip` (checksum field included in the sum,
// so it must be zero or the partial value the caller wants summed).
void StoreTransportChecksum(uint8_t* ip, const Layout& l, size_t len) {
  const size_t l4_len = len - l.ip_header_len;
  uint8_t* l4 = ip + l.ip_header_len;
  const size_t field = l.protocol == kIpProtoTcp ? kTcpChecksumOffset : kUdpChecksumOffset;
  StoreBe16(l4 + field, 0);
  uint16_t sum =
      ChecksumFinish(ChecksumAdd(l4, l4_len, PseudoHeaderSum(ip, l.version, l.protocol, l4_len)));
  // UDP sends a computed 0 as all ones (0 means "no checksum"); for TCP they are the same.
  if (sum == 0) sum = 0xFFFF;
  StoreBe16(l4 + field, sum);
}

void StoreIpv4HeaderChecksum(uint8_t* ip, size_t ihl) {
  StoreBe16(ip + 10, 0);
  StoreBe16(ip + 10, InternetChecksum(ip, ihl));
}

bool TransportChecksumValid(const uint8_t* ip, const Layout& l) {
  const size_t l4_len = l.len - l.ip_header_len;
  return ChecksumFinish(ChecksumAdd(ip + l.ip_header_len, l4_len,
                                    PseudoHeaderSum(ip, l.version, l.protocol, l4_len))) == 0;
}

bool ExpectedProtocol(uint8_t gso_type, const Layout& l) {
  switch (gso_type & static_cast<uint8_t>(~kGsoEcn)) {
    case kGsoTcpv4:
      return l.version == 4 && l.protocol == kIpProtoTcp;
    case kGsoTcpv6:
      return l.version == 6 && l.protocol == kIpProtoTcp;
    case kGsoUdpL4:
      return l.protocol == kIpProtoUdp;
    default:
      return false;
  }
}

}  // namespace

VirtioNetHeader ReadVirtioNetHeader(const uint8_t* in) {
  VirtioNetHeader h;
  h.flags = in[0];
  h.gso_type = in[1];
  h.hdr_len = LoadLe16(in + 2);
  h.gso_size = LoadLe16(in + 4);
  h.csum_start = LoadLe16(in + 6);
  h.csum_offset = LoadLe16(in + 8);
  return h;
}

void WriteVirtioNetHeader(const VirtioNetHeader& h, uint8_t* out) {
  out[0] = h.flags;
  out[1] = h.gso_type;
  StoreLe16(out + 2, h.hdr_len);
  StoreLe16(out + 4, h.gso_size);
  StoreLe16(out + 6, h.csum_start);
  StoreLe16(out + 8, h.csum_offset);
}

bool CompleteChecksum(uint8_t* packet, size_t len, uint16_t csum_start, uint16_t csum_offset) {
  if (size_t{csum_start} + csum_offset + 2 > len) return false;
  uint8_t* field = packet + csum_start + csum_offset;
  uint16_t sum = ChecksumFinish(ChecksumAdd(packet + csum_start, len - csum_start));
  if (sum == 0) sum = 0xFFFF;  // as skb_checksum_help (CSUM_MANGLED_0)
  StoreBe16(field, sum);
  return true;
}

size_t CountSegments(const VirtioNetHeader& h, const uint8_t* packet, size_t len,
                     DropReason* reason) {
  Layout l;
  if (!ParseLayout(packet, len, &l)) {
    *reason = DropReason::kBadInnerPacket;
    return 0;
  }
  if (!ExpectedProtocol(h.gso_type, l) || h.gso_size == 0) {
    *reason = DropReason::kUnsupportedProtocol;
    return 0;
  }
  const size_t payload = l.len - l.header_len;
  return payload == 0 ? 1 : (payload + h.gso_size - 1) / h.gso_size;
}

size_t SegmentSuperPacket(const VirtioNetHeader& h, const uint8_t* packet, size_t len, size_t first,
                          const SegmentArena& arena) {
  Layout l;
  if (!ParseLayout(packet, len, &l) || h.gso_size == 0) return 0;
  const size_t payload = l.len - l.header_len;
  const size_t count = payload == 0 ? 1 : (payload + h.gso_size - 1) / h.gso_size;
  const bool tcp = l.protocol == kIpProtoTcp;
  const uint8_t* l4_in = packet + l.ip_header_len;
  const uint32_t first_sequence = tcp ? LoadBe32(l4_in + 4) : 0;
  const uint16_t first_id = l.version == 4 ? LoadBe16(packet + 4) : 0;
  size_t offset = 0;
  size_t n = 0;
  for (size_t i = first; i < count && n < arena.max_segments; ++i) {
    const size_t start = i * h.gso_size;
    const size_t chunk = std::min<size_t>(h.gso_size, payload - std::min(payload, start));
    const size_t seg_len = l.header_len + chunk;
    if (offset + arena.headroom + seg_len > arena.bytes) break;
    uint8_t* out = arena.data + offset + arena.headroom;
    std::memcpy(out, packet, l.header_len);
    std::memcpy(out + l.header_len, packet + l.header_len + start, chunk);
    if (l.version == 4) {
      StoreBe16(out + 2, static_cast<uint16_t>(seg_len));
      StoreBe16(out + 4, static_cast<uint16_t>(first_id + i));
      StoreIpv4HeaderChecksum(out, l.ip_header_len);
    } else {
      StoreBe16(out + 4, static_cast<uint16_t>(seg_len - kIpv6HeaderLen));
    }
    uint8_t* l4 = out + l.ip_header_len;
    if (tcp) {
      StoreBe32(l4 + 4, first_sequence + static_cast<uint32_t>(start));
      if (i + 1 < count) l4[13] &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
      if (i > 0) l4[13] &= static_cast<uint8_t>(~kTcpCwr);
    } else {
      StoreBe16(l4 + 4, static_cast<uint16_t>(kUdpHeaderLen + chunk));
    }
    StoreTransportChecksum(out, l, seg_len);
    arena.segments[n++] = Segment{out, seg_len};
    offset = (offset + arena.headroom + seg_len + 63) & ~size_t{63};
  }
  return n;
}

Coalescer::Coalescer(size_t flows, size_t buffers)
    : max_flows_(std::max<size_t>(flows, 1)),
      open_(new Flow[max_flows_]),
      free_(new int[std::max(buffers, max_flows_)]),
      buffers_(std::max(buffers, max_flows_)),
      memory_(new uint8_t[buffers_ * kBufferBytes]) {
  for (size_t i = 0; i < buffers_; ++i) free_[free_count_++] = static_cast<int>(buffers_ - 1 - i);
}

void Coalescer::Release(int buffer) {
  if (buffer >= 0 && static_cast<size_t>(buffer) < buffers_) free_[free_count_++] = buffer;
}

void Coalescer::Discard(const void* owner) {
  size_t kept = 0;
  for (size_t i = 0; i < open_count_; ++i) {
    if (open_[i].owner == owner) {
      Release(open_[i].buffer);
    } else {
      open_[kept++] = open_[i];
    }
  }
  open_count_ = kept;
}

bool Coalescer::Matches(const Flow& f, const uint8_t* ip, uint8_t protocol,
                        size_t ip_header_len) const {
  const uint8_t* p = memory_.get() + size_t(f.buffer) * kBufferBytes + kVirtioNetHeaderLen;
  if ((ip[0] >> 4) != f.version || protocol != f.protocol) return false;
  // Addresses, then ports.
  const bool same_addresses =
      f.version == 4 ? std::memcmp(p + 12, ip + 12, 8) == 0 : std::memcmp(p + 8, ip + 8, 32) == 0;
  return same_addresses && std::memcmp(p + f.ip_header_len, ip + ip_header_len, 4) == 0;
}

bool Coalescer::CanMerge(const Flow& f, const uint8_t* ip, size_t header_len,
                         size_t payload) const {
  if (f.closed || !f.mergeable || header_len != f.header_len || payload > f.gso_size ||
      f.len + payload > kMaxPacket ||
      (f.protocol == kIpProtoUdp && f.segments >= kMaxUdpSegments)) {
    return false;
  }
  const uint8_t* p = memory_.get() + size_t(f.buffer) * kBufferBytes + kVirtioNetHeaderLen;
  if (f.version == 4) {
    // TOS, TTL and DF as the first segment's; IDs are not compared (the kernel accepts both
    // incrementing and fixed ones).
    if (p[1] != ip[1] || p[8] != ip[8] || (p[6] & 0x40) != (ip[6] & 0x40)) return false;
  } else if (std::memcmp(p, ip, 4) != 0 || p[7] != ip[7]) {
    return false;  // traffic class, flow label, hop limit
  }
  if (f.protocol == kIpProtoUdp) return true;  // datagrams have no order of their own to check
  const uint8_t* th = p + f.ip_header_len;
  const uint8_t* seg = ip + f.ip_header_len;
  if (LoadBe32(seg + 4) != f.next_sequence) return false;
  // Acknowledgment, window and every option byte (timestamps included) as the flow's.
  return std::memcmp(th + 8, seg + 8, 4) == 0 && std::memcmp(th + 14, seg + 14, 2) == 0 &&
         std::memcmp(th + kTcpMinHeaderLen, seg + kTcpMinHeaderLen,
                     header_len - f.ip_header_len - kTcpMinHeaderLen) == 0;
}

Coalescer::Verdict Coalescer::Add(const void* owner, const uint8_t* ip, size_t len, bool udp) {
  Layout l;
  if (!ParseLayout(ip, len, &l) || (l.protocol != kIpProtoTcp && !udp)) return Verdict::kDeliver;
  const bool tcp = l.protocol == kIpProtoTcp;
  // The newest open flow of this connection, if any.
  Flow* flow = nullptr;
  for (size_t i = open_count_; i-- > 0;) {
    if (open_[i].owner == owner && Matches(open_[i], ip, l.protocol, l.ip_header_len)) {
      flow = &open_[i];
      break;
    }
  }
  const uint8_t* th = ip + l.ip_header_len;
  const uint8_t flags = tcp ? th[13] : 0;
  const size_t payload = l.len - l.header_len;
  bool candidate = payload > 0 && (l.version == 6 || l.ip_header_len == kIpv4HeaderLen);
  if (tcp) {
    candidate = candidate && (flags & static_cast<uint8_t>(~kTcpPsh)) == kTcpAck;
  } else {
    // A UDP length that disagrees with the IP header's, or no checksum (IPv4's 0), leaves the
    // datagram as it is, for the host to judge.
    candidate = candidate && LoadBe16(th + 4) == l.len - l.ip_header_len &&
                LoadBe16(th + kUdpChecksumOffset) != 0;
  }
  candidate = candidate && TransportChecksumValid(ip, l);
  if (flow != nullptr && candidate && CanMerge(*flow, ip, l.header_len, payload)) {
    uint8_t* p = packet_of(*flow);
    std::memcpy(p + flow->len, ip + l.header_len, payload);
    flow->len += payload;
    flow->next_sequence += static_cast<uint32_t>(payload);
    ++flow->segments;
    flow->inner_bytes += l.len;
    if ((flags & kTcpPsh) != 0) {
      p[flow->ip_header_len + 13] |= kTcpPsh;
      flow->closed = true;
    }
    if (payload < flow->gso_size) flow->closed = true;
    return Verdict::kTaken;
  }
  if (flow == nullptr && !candidate) return Verdict::kDeliver;
  // A new flow: either a segment that can start one, or a packet of a connection with a flow
  // open that must not overtake it.
  if (open_count_ == max_flows_ || free_count_ == 0) {
    return flow != nullptr ? Verdict::kFlushThenDeliver : Verdict::kDeliver;
  }
  if (flow != nullptr) flow->closed = true;
  Flow& f = open_[open_count_++];
  f = Flow{};
  f.owner = owner;
  f.buffer = free_[--free_count_];
  f.version = l.version;
  f.protocol = l.protocol;
  f.ip_header_len = static_cast<uint16_t>(l.ip_header_len);
  f.header_len = static_cast<uint16_t>(l.header_len);
  f.gso_size = static_cast<uint16_t>(payload);
  f.next_sequence = tcp ? LoadBe32(th + 4) + static_cast<uint32_t>(payload) : 0;
  f.segments = 1;
  f.len = l.len;
  f.inner_bytes = l.len;
  f.mergeable = candidate;
  f.closed = !candidate || (flags & kTcpPsh) != 0;
  std::memcpy(packet_of(f), ip, l.len);
  return Verdict::kTaken;
}

Coalescer::Flushed Coalescer::Finish(Flow& f) {
  uint8_t* header = buffer_of(f.buffer);
  uint8_t* p = header + kVirtioNetHeaderLen;
  VirtioNetHeader vnet;
  if (f.segments > 1) {
    const bool tcp = f.protocol == kIpProtoTcp;
    const size_t l4_len = f.len - f.ip_header_len;
    if (f.version == 4) {
      StoreBe16(p + 2, static_cast<uint16_t>(f.len));
      StoreIpv4HeaderChecksum(p, f.ip_header_len);
    } else {
      StoreBe16(p + 4, static_cast<uint16_t>(f.len - kIpv6HeaderLen));
    }
    // UDP: the length of the whole, which the kernel's segmentation replaces with each
    // datagram's (adjusting the checksum from one to the other).
    if (!tcp) StoreBe16(p + f.ip_header_len + 4, static_cast<uint16_t>(l4_len));
    // The kernel finishes the checksum (NEEDS_CSUM): the field holds the pseudo-header sum,
    // folded and not complemented, as a device with checksum offload expects it.
    const size_t field = tcp ? kTcpChecksumOffset : kUdpChecksumOffset;
    const uint32_t pseudo = PseudoHeaderSum(p, f.version, f.protocol, l4_len);
    StoreBe16(p + f.ip_header_len + field, static_cast<uint16_t>(~ChecksumFinish(pseudo)));
    vnet.flags = kVirtioNetFlagNeedsCsum;
    vnet.gso_type = !tcp ? kGsoUdpL4 : f.version == 4 ? kGsoTcpv4 : kGsoTcpv6;
    vnet.hdr_len = f.header_len;
    vnet.gso_size = f.gso_size;
    vnet.csum_start = f.ip_header_len;
    vnet.csum_offset = static_cast<uint16_t>(field);
  }
  // A single segment goes as it came, its checksum untouched for the kernel to verify.
  WriteVirtioNetHeader(vnet, header);
  Flushed out;
  out.owner = f.owner;
  out.data = header;
  out.len = kVirtioNetHeaderLen + f.len;
  out.segments = f.segments;
  out.inner_bytes = f.inner_bytes;
  out.buffer = f.buffer;
  return out;
}

}  // namespace tunnelagent::dataplane
