// Fuzz target for the receive path: Decapsulate and DecapsulateIpv6 (the parsers every packet
// from the underlay goes through, for every mode), the TunnelTable demux behind them, and a
// re-encapsulation round trip. An input whose first byte has version nibble 6 is taken as what
// an IPv6 raw socket delivers: byte 1 picks the next header (47, 4 or 41), byte 2 is the traffic
// class, the rest the payload; anything else is an IPv4 packet with its header.
//
// Built two ways: with clang and libFuzzer under ASan+UBSan (`make fuzz`, target
// receive_fuzzer), and with the default compiler as receive_fuzzer_corpus_test, which replays
// the seed corpus in tests/fuzz/receive_corpus/ (made by make_corpus.py) under `make test`.
// A broken invariant aborts with a message naming it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/core/tunnel_table.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/offload.h"

namespace tunnelagent::dataplane {
namespace {

#define FUZZ_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "receive_fuzzer: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                                  \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

// Addresses the seed corpus uses: packets come from kPeer to kSelf.
constexpr uint32_t kPeer = 0xCB007101;   // 203.0.113.1
constexpr uint32_t kSelf = 0xCB007102;   // 203.0.113.2
constexpr uint32_t kOther = 0xCB007103;  // 203.0.113.3
// 2001:db8::1 and 2001:db8::2 for the IPv6 underlay.
const OuterAddress kPeer6 = [] {
  const uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return OuterAddress::FromIpv6(a);
}();
const OuterAddress kSelf6 = [] {
  const uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  return OuterAddress::FromIpv6(a);
}();

struct FuzzTunnel {
  const char* name;
  TunnelMatch match;
};

// One tunnel of every shape: keyless and keyed GRE (key 0 included, which is not keyless),
// IPIP, each wildcard position, so that every step of the lookup order can win, and the other
// modes (whose tables are separate, like the kernel's).
const FuzzTunnel kTunnels[] = {
    {"gre", {TunnelMode::kGre, false, kSelf, kPeer, 0}},
    {"gre-key42", {TunnelMode::kGre, true, kSelf, kPeer, 42}},
    {"gre-key0", {TunnelMode::kGre, true, kSelf, kPeer, 0}},
    {"gre-key7-any-local", {TunnelMode::kGre, true, 0, kPeer, 7}},
    {"gre-any-local-from-other", {TunnelMode::kGre, false, 0, kOther, 0}},
    {"gre-any-remote", {TunnelMode::kGre, false, kSelf, 0, 0}},
    {"gre-key99-wildcard", {TunnelMode::kGre, true, 0, 0, 99}},
    {"gretap", {TunnelMode::kGretap, false, kSelf, kPeer, 0}},
    {"gretap-key42", {TunnelMode::kGretap, true, kSelf, kPeer, 42}},
    {"ipip", {TunnelMode::kIpip, false, kSelf, kPeer, 0}},
    {"ipip-any-local-from-other", {TunnelMode::kIpip, false, 0, kOther, 0}},
    {"ipip-wildcard", {TunnelMode::kIpip, false, 0, 0, 0}},
    {"sit", {TunnelMode::kSit, false, kSelf, kPeer, 0}},
    {"ip6gre", {TunnelMode::kIp6gre, false, kSelf6, kPeer6, 0}},
    {"ip6gre-key42", {TunnelMode::kIp6gre, true, kSelf6, kPeer6, 42}},
    {"ip6gretap-any", {TunnelMode::kIp6gretap, false, {}, {}, 0}},
    {"ip6tnl", {TunnelMode::kIp6tnl, false, kSelf6, kPeer6, 0}},
};

const TunnelTable<const FuzzTunnel>& Table() {
  static const auto* table = [] {
    auto* t = new TunnelTable<const FuzzTunnel>;
    for (const FuzzTunnel& tunnel : kTunnels) FUZZ_CHECK(t->Insert(tunnel.match, &tunnel));
    return t;
  }();
  return *table;
}

bool Matches(const TunnelMatch& m, const Decapsulated& d) {
  return m.mode == d.mode && m.has_key == d.has_key && (!m.has_key || m.key == d.key) &&
         (m.local.is_zero() || m.local == d.outer_dst) &&
         (m.remote.is_zero() || m.remote == d.outer_src);
}

// ip_tunnel_lookup's preference: both addresses, remote only, local only, neither.
int Rank(const TunnelMatch& m) {
  if (!m.local.is_zero() && !m.remote.is_zero()) return 0;
  if (!m.remote.is_zero()) return 1;
  if (!m.local.is_zero()) return 2;
  return 3;
}

// Brute force over the few tunnels: the best-ranked match, or null.
const FuzzTunnel* ExpectedTunnel(const Decapsulated& d) {
  const FuzzTunnel* best = nullptr;
  for (const FuzzTunnel& t : kTunnels) {
    if (Matches(t.match, d) && (best == nullptr || Rank(t.match) < Rank(best->match))) best = &t;
  }
  return best;
}

void CheckLookup(const Decapsulated& d) {
  const FuzzTunnel* found = Table().Lookup(d);
  FUZZ_CHECK(found == ExpectedTunnel(d));
  if (found == nullptr) return;
  const TunnelMatch& m = found->match;
  FUZZ_CHECK(m.mode == d.mode);
  FUZZ_CHECK(m.has_key == d.has_key);
  FUZZ_CHECK(!m.has_key || m.key == d.key);
  FUZZ_CHECK(m.local == d.outer_dst || m.local.is_zero());
  FUZZ_CHECK(m.remote == d.outer_src || m.remote.is_zero());
}

uint8_t InnerEcnOf(const uint8_t* inner) {
  return (inner[0] >> 4) == 4 ? inner[1] & kEcnMask : (inner[1] >> 4) & kEcnMask;
}

// Parses what Encapsulate wrote, as the receiving side's socket would deliver it.
bool Reparse(const EncapParams& p, uint8_t* packet, size_t len, Decapsulated* out,
             DropReason* reason) {
  if (!IsIpv6UnderlayMode(p.mode)) return Decapsulate(packet, len, out, reason);
  constexpr size_t kIpv6Headers = kIpv6HeaderLen + kEncapLimitOptionLen;
  FUZZ_CHECK(len >= kIpv6Headers);
  FUZZ_CHECK(packet[6] == 60);  // the encapsulation-limit option comes first
  const uint8_t traffic_class = static_cast<uint8_t>(((packet[0] << 4) | (packet[1] >> 4)));
  return DecapsulateIpv6(packet + kIpv6Headers, len - kIpv6Headers, packet[kIpv6HeaderLen],
                         OuterAddress::FromIpv6(packet + 8), OuterAddress::FromIpv6(packet + 24),
                         traffic_class, out, reason);
}

// Wraps the decapsulated payload again and parses the result: the same inner bytes and the
// same header fields must come back.
void CheckRoundTrip(const Decapsulated& d, const EncapParams& p, uint32_t sequence) {
  const bool ethernet = IsEthernetMode(p.mode);
  const uint8_t version = ethernet ? 0 : d.inner[0] >> 4;
  const size_t header_len = EncapHeaderLen(p);
  // Exactly the headroom Encapsulate may use, so ASan catches a write in front of it.
  std::vector<uint8_t> buf(header_len + d.inner_len);
  std::memcpy(buf.data() + header_len, d.inner, d.inner_len);
  const EncapResult e = Encapsulate(p, buf.data() + header_len, d.inner_len, 0x1234, sequence);
  if ((p.mode == TunnelMode::kIpip && version == 6) ||
      (p.mode == TunnelMode::kSit && version == 4)) {
    FUZZ_CHECK(e.packet == nullptr && e.drop == DropReason::kUnsupportedProtocol);
    return;
  }
  const size_t limit = IsIpv6UnderlayMode(p.mode) ? 0xFFFF + kIpv6HeaderLen : 0xFFFF;
  if (header_len + d.inner_len > limit) {
    FUZZ_CHECK(e.packet == nullptr && e.drop == DropReason::kTooBig);
    return;
  }
  FUZZ_CHECK(e.packet == buf.data());
  FUZZ_CHECK(e.len == buf.size());
  if (!IsIpv6UnderlayMode(p.mode)) {
    FUZZ_CHECK(InternetChecksum(e.packet, kIpv4HeaderLen) == 0);
    if (!ethernet) {
      // RFC 6040: the inner ECN field is copied out, CE sent as ECT(0).
      const uint8_t inner_ecn = InnerEcnOf(d.inner);
      FUZZ_CHECK((e.packet[1] & kEcnMask) == (inner_ecn == kEcnCe ? kEcnEct0 : inner_ecn));
    }
  }

  Decapsulated again;
  DropReason reason = DropReason::kCount;
  FUZZ_CHECK(Reparse(p, e.packet, e.len, &again, &reason));
  FUZZ_CHECK(again.mode == p.mode);
  FUZZ_CHECK(again.outer_src == p.local);
  FUZZ_CHECK(again.outer_dst == p.remote);
  FUZZ_CHECK(again.has_key == (IsGreMode(p.mode) && p.has_key));
  FUZZ_CHECK(again.key == (again.has_key ? p.key : 0));
  FUZZ_CHECK(again.has_sequence == (IsGreMode(p.mode) && p.sequence));
  FUZZ_CHECK(again.sequence == (again.has_sequence ? sequence : 0));
  FUZZ_CHECK(again.inner_type == (ethernet       ? kEtherTypeTransparentBridging
                                  : version == 4 ? kEtherTypeIpv4
                                                 : kEtherTypeIpv6));
  FUZZ_CHECK(again.inner == e.packet + header_len);
  FUZZ_CHECK(again.inner_len == d.inner_len);
  FUZZ_CHECK(std::memcmp(again.inner, d.inner, d.inner_len) == 0);
}

void CheckRoundTrips(const Decapsulated& d) {
  if (d.inner_len == 0) return;  // an empty payload is never sent through Encapsulate
  const bool ipv6 = IsIpv6UnderlayMode(d.mode);
  // As received (the tunnel sending back to its peer), keyless, every GRE option, and the
  // modes of the other family and payload with the TTL inherited from the inner packet.
  EncapParams same;
  same.mode = d.mode;
  same.local = d.outer_dst;
  same.remote = d.outer_src;
  same.has_key = d.has_key;
  same.key = d.key;
  same.sequence = d.has_sequence;
  CheckRoundTrip(d, same, d.sequence);

  EncapParams plain;
  plain.mode = d.mode;
  plain.local = d.outer_src;
  plain.remote = d.outer_dst;
  CheckRoundTrip(d, plain, 0);

  if (IsGreMode(d.mode)) {
    EncapParams all = plain;
    all.has_key = true;
    all.key = d.key ^ 0xA5A5A5A5u;
    all.checksum = true;
    all.sequence = true;
    all.pmtudisc = false;
    all.inherit_tos = true;
    CheckRoundTrip(d, all, d.sequence + 1);
  }
  if (IsEthernetMode(d.mode)) return;

  EncapParams other = plain;
  other.ttl = 0;
  other.local = ipv6 ? OuterAddress(kPeer) : kPeer6;
  other.remote = ipv6 ? OuterAddress(kSelf) : kSelf6;
  other.mode = ipv6 ? TunnelMode::kIpip : TunnelMode::kIp6tnl;
  CheckRoundTrip(d, other, 0);
  other.mode = ipv6 ? TunnelMode::kSit : TunnelMode::kIp6gre;
  CheckRoundTrip(d, other, 0);
}

bool SameDecapsulated(const Decapsulated& a, const Decapsulated& b) {
  return a.mode == b.mode && a.outer_src == b.outer_src && a.outer_dst == b.outer_dst &&
         a.protocol == b.protocol && a.has_checksum == b.has_checksum && a.has_key == b.has_key &&
         a.key == b.key && a.has_sequence == b.has_sequence && a.sequence == b.sequence &&
         a.inner_type == b.inner_type && a.inner == b.inner && a.inner_len == b.inner_len;
}

// The TUN offload code on whatever IP packet was received: coalescing it (twice, as if it came
// again; TCP, and UDP too for half the inputs), and splitting it as if it were a super-packet the
// device handed over, with segment sizes and checksum offsets taken from its own bytes. Every
// output stays inside its buffer (ASan) and accounts for every input byte.
void CheckOffload(const uint8_t* ip, size_t len) {
  static Coalescer* coalescer = new Coalescer(4, 8);
  int owner = 0;
  size_t taken = 0;
  // UDP coalescing on or off, by a bit of the packet (the last byte's lowest).
  const bool udp = len > 0 && (ip[len - 1] & 1) != 0;
  for (int i = 0; i < 2; ++i) {
    const Coalescer::Verdict v = coalescer->Add(&owner, ip, len, udp);
    if (v == Coalescer::Verdict::kTaken) ++taken;
  }
  size_t segments = 0;
  coalescer->Flush([&](const Coalescer::Flushed& f) {
    FUZZ_CHECK(f.owner == &owner);
    FUZZ_CHECK(f.len > kVirtioNetHeaderLen && f.len <= Coalescer::kBufferBytes);
    FUZZ_CHECK(f.segments >= 1);
    if (f.segments == 1) {
      // A packet on its own is written as it came.
      FUZZ_CHECK(f.len - kVirtioNetHeaderLen <= len);
      FUZZ_CHECK(std::memcmp(f.data + kVirtioNetHeaderLen, ip, f.len - kVirtioNetHeaderLen) == 0);
    }
    segments += f.segments;
    coalescer->Release(f.buffer);
  });
  FUZZ_CHECK(segments == taken);
  FUZZ_CHECK(coalescer->free_buffers() == 8 && coalescer->open_flows() == 0);

  if (len < 2) return;
  VirtioNetHeader h;
  const uint8_t types[] = {kGsoTcpv4, kGsoTcpv6, kGsoUdpL4, kGsoNone, kGsoUdp};
  h.gso_type = types[ip[len - 1] % 5];
  h.gso_size = static_cast<uint16_t>(1 + (size_t{ip[len - 2]} * 7) % 1500);
  DropReason reason = DropReason::kCount;
  const size_t count = CountSegments(h, ip, len, &reason);
  if (count == 0) {
    FUZZ_CHECK(reason == DropReason::kBadInnerPacket || reason == DropReason::kUnsupportedProtocol);
  } else {
    static std::vector<uint8_t>* memory = new std::vector<uint8_t>(96 * 1024);
    Segment out[64];
    SegmentArena arena{memory->data(), memory->size(), 64, out, 64};
    size_t first = 0;
    for (int round = 0; round < 4 && first < count; ++round) {
      const size_t made = SegmentSuperPacket(h, ip, len, first, arena);
      FUZZ_CHECK(made > 0 && first + made <= count);
      for (size_t i = 0; i < made; ++i) {
        FUZZ_CHECK(out[i].data >= memory->data() + 64);
        FUZZ_CHECK(out[i].data + out[i].len <= memory->data() + memory->size());
        FUZZ_CHECK(out[i].len <= len);
      }
      first += made;
    }
  }
  std::vector<uint8_t> copy(ip, ip + len);
  const uint16_t start = static_cast<uint16_t>(ip[0] % 64);
  const uint16_t offset = static_cast<uint16_t>(ip[1] % 32);
  FUZZ_CHECK(CompleteChecksum(copy.data(), copy.size(), start, offset) ==
             (size_t{start} + offset + 2 <= len));
}

void CheckReceive(const uint8_t* data, size_t size) {
  // As an IPv6 raw socket delivers: a three-byte preamble, then the payload.
  const bool ipv6 = size >= 3 && (data[0] >> 4) == 6;
  const uint8_t next_header = !ipv6              ? 0
                              : data[1] % 3 == 0 ? kIpProtoGre
                              : data[1] % 3 == 1 ? kIpProtoIpip
                                                 : kIpProtoIpv6;
  const uint8_t traffic_class = ipv6 ? data[2] : 0;
  if (ipv6) {
    data += 3;
    size -= 3;
  }
  // A copy of exactly `size` bytes: decapsulation writes ECN marks in place, and ASan sees any
  // read past the end.
  std::vector<uint8_t> buf(data, data + size);
  uint8_t* const begin = buf.data();
  auto decapsulate = [&](Decapsulated* out, DropReason* why) {
    return ipv6 ? DecapsulateIpv6(begin, size, next_header, kPeer6, kSelf6, traffic_class, out, why)
                : Decapsulate(begin, size, out, why);
  };
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  if (!decapsulate(&d, &reason)) {
    FUZZ_CHECK(reason < DropReason::kCount && DropReasonName(reason) != "unknown");
    FUZZ_CHECK(size == 0 || std::memcmp(begin, data, size) == 0);  // rejected: untouched
    return;
  }

  FUZZ_CHECK(d.protocol == kIpProtoGre || d.protocol == kIpProtoIpip || d.protocol == kIpProtoIpv6);
  FUZZ_CHECK(IsIpv6UnderlayMode(d.mode) == ipv6);
  FUZZ_CHECK(IsGreMode(d.mode) == (d.protocol == kIpProtoGre));
  FUZZ_CHECK(d.inner != nullptr || size == 0);  // an empty buffer may have no address
  FUZZ_CHECK(d.inner >= begin && d.inner <= begin + size);
  FUZZ_CHECK(d.inner_len <= static_cast<size_t>(begin + size - d.inner));
  FUZZ_CHECK(d.protocol == kIpProtoGre || (!d.has_key && !d.has_sequence && !d.has_checksum));
  FUZZ_CHECK(d.has_key || d.key == 0);
  FUZZ_CHECK(d.has_sequence || d.sequence == 0);
  const uint8_t outer_tos = ipv6 ? traffic_class : data[1];
  const bool outer_ce = (outer_tos & kEcnMask) == kEcnCe;

  const size_t offset = static_cast<size_t>(d.inner - begin);
  if (d.inner_len == 0) {
    // A keepalive coming home: nothing inside, nothing changed.
    FUZZ_CHECK(!ipv6 || offset == size);
    FUZZ_CHECK(size == 0 || std::memcmp(begin, data, size) == 0);
    CheckLookup(d);
    return;
  }
  const uint8_t* const original = data + offset;  // the payload as received
  if (d.inner_type == kEtherTypeTransparentBridging) {
    FUZZ_CHECK(IsEthernetMode(d.mode));
    FUZZ_CHECK(d.inner_len >= kEthernetHeaderLen);
    FUZZ_CHECK(offset + d.inner_len == (ipv6 ? size : size_t{data[2]} << 8 | data[3]));
    // Only an IP packet inside the frame may be marked; everything else is as received.
    const int ip = InnerIpOffset(d.mode, d.inner, d.inner_len);
    for (size_t i = 0; i < size; ++i) {
      const bool may_change = ip > 0 && i >= offset + ip && i < offset + ip + 12;
      if (!may_change) FUZZ_CHECK(begin[i] == data[i]);
    }
    CheckLookup(d);
    CheckRoundTrips(d);
    return;
  }
  FUZZ_CHECK(!IsEthernetMode(d.mode));
  const uint8_t version = d.inner[0] >> 4;
  FUZZ_CHECK(version == 4 || version == 6);
  FUZZ_CHECK(d.inner_type == (version == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6));
  FUZZ_CHECK(d.mode != TunnelMode::kIpip || version == 4);
  FUZZ_CHECK(d.mode != TunnelMode::kSit || version == 6);
  if (version == 4) {
    const size_t ihl = size_t{d.inner[0] & 0x0Fu} * 4;
    FUZZ_CHECK(ihl >= kIpv4HeaderLen && ihl <= d.inner_len);
    FUZZ_CHECK(d.inner_len == (size_t{d.inner[2]} << 8 | d.inner[3]));
  } else {
    FUZZ_CHECK(d.inner_len >= kIpv6HeaderLen);
    FUZZ_CHECK(d.inner_len == kIpv6HeaderLen + (size_t{d.inner[4]} << 8 | d.inner[5]));
  }

  // Only the inner ECN field (and, for IPv4, the header checksum that covers it) may change,
  // and only as RFC 6040 says: an outer CE marks an ECT inner packet CE.
  for (size_t i = 0; i < size; ++i) {
    const bool ecn_byte = i == offset + 1;
    const bool checksum_byte = version == 4 && (i == offset + 10 || i == offset + 11);
    if (!ecn_byte && !checksum_byte) FUZZ_CHECK(begin[i] == data[i]);
  }
  const uint8_t ecn_before = InnerEcnOf(original);
  const uint8_t ecn_after = InnerEcnOf(d.inner);
  FUZZ_CHECK(!outer_ce || ecn_before != kEcnNotEct);  // that combination is dropped
  FUZZ_CHECK(ecn_after == (outer_ce ? kEcnCe : ecn_before));
  const uint8_t non_ecn_mask = version == 4 ? static_cast<uint8_t>(~kEcnMask) : 0xCF;
  FUZZ_CHECK((d.inner[1] & non_ecn_mask) == (original[1] & non_ecn_mask));
  if (version == 4) {
    const size_t ihl = size_t{d.inner[0] & 0x0Fu} * 4;
    // The incremental update keeps a correct inner checksum correct.
    if (InternetChecksum(original, ihl) == 0) FUZZ_CHECK(InternetChecksum(d.inner, ihl) == 0);
    if (ecn_after == ecn_before) {
      FUZZ_CHECK(std::memcmp(d.inner + 10, original + 10, 2) == 0);
    }
  }

  // Decapsulating the result again changes nothing: marking CE is idempotent. Except that a
  // GRE checksum covers the inner packet: the IPv4 checksum update keeps the sum (so the GRE
  // checksum too) right, but an IPv6 packet has no checksum to compensate, so re-parsing the
  // marked buffer of a checksummed GRE packet fails its GRE checksum, as it should.
  const std::vector<uint8_t> once(buf);
  Decapsulated twice;
  if (version == 6 && d.has_checksum && ecn_after != ecn_before) {
    FUZZ_CHECK(!decapsulate(&twice, &reason));
    FUZZ_CHECK(reason == DropReason::kGreChecksum);
  } else {
    FUZZ_CHECK(decapsulate(&twice, &reason));
    FUZZ_CHECK(SameDecapsulated(d, twice));
  }
  FUZZ_CHECK(buf == once);

  CheckLookup(d);
  CheckRoundTrips(d);
  CheckOffload(d.inner, d.inner_len);
}

}  // namespace
}  // namespace tunnelagent::dataplane

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tunnelagent::dataplane::CheckReceive(data, size);
  return 0;
}
