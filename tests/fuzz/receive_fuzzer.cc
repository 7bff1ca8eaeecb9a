// Fuzz target for the receive path: Decapsulate (the parser every packet from the underlay
// goes through), the TunnelTable demux behind it, and a re-encapsulation round trip.
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

#include "dataplane/packet/checksum.h"
#include "dataplane/packet/encap.h"
#include "dataplane/tunnel_table.h"

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

struct FuzzTunnel {
  const char* name;
  TunnelMatch match;
};

// One tunnel of every shape: keyless and keyed GRE (key 0 included, which is not keyless),
// IPIP, and each wildcard position, so that every step of the lookup order can win.
const FuzzTunnel kTunnels[] = {
    {"gre", {kIpProtoGre, false, kSelf, kPeer, 0}},
    {"gre-key42", {kIpProtoGre, true, kSelf, kPeer, 42}},
    {"gre-key0", {kIpProtoGre, true, kSelf, kPeer, 0}},
    {"gre-key7-any-local", {kIpProtoGre, true, 0, kPeer, 7}},
    {"gre-any-local-from-other", {kIpProtoGre, false, 0, kOther, 0}},
    {"gre-any-remote", {kIpProtoGre, false, kSelf, 0, 0}},
    {"gre-key99-wildcard", {kIpProtoGre, true, 0, 0, 99}},
    {"ipip", {kIpProtoIpip, false, kSelf, kPeer, 0}},
    {"ipip-any-local-from-other", {kIpProtoIpip, false, 0, kOther, 0}},
    {"ipip-wildcard", {kIpProtoIpip, false, 0, 0, 0}},
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
  return m.protocol == d.protocol && m.has_key == d.has_key && (!m.has_key || m.key == d.key) &&
         (m.local == 0 || m.local == d.outer_dst) && (m.remote == 0 || m.remote == d.outer_src);
}

// ip_tunnel_lookup's preference: both addresses, remote only, local only, neither.
int Rank(const TunnelMatch& m) {
  if (m.local != 0 && m.remote != 0) return 0;
  if (m.remote != 0) return 1;
  if (m.local != 0) return 2;
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
  FUZZ_CHECK(m.protocol == d.protocol);
  FUZZ_CHECK(m.has_key == d.has_key);
  FUZZ_CHECK(!m.has_key || m.key == d.key);
  FUZZ_CHECK(m.local == d.outer_dst || m.local == 0);
  FUZZ_CHECK(m.remote == d.outer_src || m.remote == 0);
}

uint8_t InnerEcnOf(const uint8_t* inner) {
  return (inner[0] >> 4) == 4 ? inner[1] & kEcnMask : (inner[1] >> 4) & kEcnMask;
}

// Wraps the decapsulated inner packet again and parses the result: the same inner bytes and
// the same header fields must come back.
void CheckRoundTrip(const Decapsulated& d, const EncapParams& p, uint32_t sequence) {
  const uint8_t version = d.inner[0] >> 4;
  const size_t header_len = EncapHeaderLen(p);
  // Exactly the headroom Encapsulate may use, so ASan catches a write in front of it.
  std::vector<uint8_t> buf(header_len + d.inner_len);
  std::memcpy(buf.data() + header_len, d.inner, d.inner_len);
  const EncapResult e = Encapsulate(p, buf.data() + header_len, d.inner_len, 0x1234, sequence);
  if (p.kind == EncapKind::kIpip && version == 6) {
    FUZZ_CHECK(e.packet == nullptr && e.drop == DropReason::kUnsupportedProtocol);
    return;
  }
  if (header_len + d.inner_len > 0xFFFF) {
    FUZZ_CHECK(e.packet == nullptr && e.drop == DropReason::kTooBig);
    return;
  }
  FUZZ_CHECK(e.packet == buf.data());
  FUZZ_CHECK(e.len == buf.size());
  FUZZ_CHECK(InternetChecksum(e.packet, kIpv4HeaderLen) == 0);
  // RFC 6040: the inner ECN field is copied out, CE sent as ECT(0).
  const uint8_t inner_ecn = InnerEcnOf(d.inner);
  FUZZ_CHECK((e.packet[1] & kEcnMask) == (inner_ecn == kEcnCe ? kEcnEct0 : inner_ecn));

  Decapsulated again;
  DropReason reason = DropReason::kCount;
  FUZZ_CHECK(Decapsulate(e.packet, e.len, &again, &reason));
  FUZZ_CHECK(again.outer_src == p.local);
  FUZZ_CHECK(again.outer_dst == p.remote);
  FUZZ_CHECK(again.protocol == (p.kind == EncapKind::kGre ? kIpProtoGre : kIpProtoIpip));
  FUZZ_CHECK(again.has_key == (p.kind == EncapKind::kGre && p.has_key));
  FUZZ_CHECK(again.key == (again.has_key ? p.key : 0));
  FUZZ_CHECK(again.has_sequence == (p.kind == EncapKind::kGre && p.sequence));
  FUZZ_CHECK(again.sequence == (again.has_sequence ? sequence : 0));
  FUZZ_CHECK(again.inner_type == (version == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6));
  FUZZ_CHECK(again.inner == e.packet + header_len);
  FUZZ_CHECK(again.inner_len == d.inner_len);
  FUZZ_CHECK(std::memcmp(again.inner, d.inner, d.inner_len) == 0);
}

void CheckRoundTrips(const Decapsulated& d) {
  // As received (the tunnel sending back to its peer), keyless, every GRE option, and IPIP
  // (which refuses IPv6) with the TTL inherited from the inner packet.
  EncapParams same;
  same.kind = d.protocol == kIpProtoGre ? EncapKind::kGre : EncapKind::kIpip;
  same.local = d.outer_dst;
  same.remote = d.outer_src;
  same.has_key = d.has_key;
  same.key = d.key;
  same.sequence = d.has_sequence;
  CheckRoundTrip(d, same, d.sequence);

  EncapParams plain;
  plain.local = d.outer_src;
  plain.remote = d.outer_dst;
  CheckRoundTrip(d, plain, 0);

  EncapParams all = plain;
  all.has_key = true;
  all.key = d.key ^ 0xA5A5A5A5u;
  all.checksum = true;
  all.sequence = true;
  all.dont_fragment = false;
  CheckRoundTrip(d, all, d.sequence + 1);

  EncapParams ipip = plain;
  ipip.kind = EncapKind::kIpip;
  ipip.ttl = 0;
  CheckRoundTrip(d, ipip, 0);
}

bool SameDecapsulated(const Decapsulated& a, const Decapsulated& b) {
  return a.outer_src == b.outer_src && a.outer_dst == b.outer_dst && a.protocol == b.protocol &&
         a.has_key == b.has_key && a.key == b.key && a.has_sequence == b.has_sequence &&
         a.sequence == b.sequence && a.inner_type == b.inner_type && a.inner == b.inner &&
         a.inner_len == b.inner_len;
}

void CheckReceive(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes: Decapsulate writes ECN marks in place, and ASan sees any
  // read past the end.
  std::vector<uint8_t> buf(data, data + size);
  uint8_t* const begin = buf.data();
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  if (!Decapsulate(begin, size, &d, &reason)) {
    FUZZ_CHECK(reason < DropReason::kCount && DropReasonName(reason) != "unknown");
    FUZZ_CHECK(size == 0 || std::memcmp(begin, data, size) == 0);  // rejected: untouched
    return;
  }

  FUZZ_CHECK(d.protocol == kIpProtoGre || d.protocol == kIpProtoIpip);
  FUZZ_CHECK(d.inner != nullptr && d.inner_len > 0);
  FUZZ_CHECK(d.inner >= begin && d.inner <= begin + size);
  FUZZ_CHECK(d.inner_len <= static_cast<size_t>(begin + size - d.inner));
  FUZZ_CHECK(d.protocol == kIpProtoGre || (!d.has_key && !d.has_sequence));
  FUZZ_CHECK(d.has_key || d.key == 0);
  FUZZ_CHECK(d.has_sequence || d.sequence == 0);

  const size_t offset = static_cast<size_t>(d.inner - begin);
  const uint8_t* const original = data + offset;  // the inner packet as received
  const uint8_t version = d.inner[0] >> 4;
  FUZZ_CHECK(version == 4 || version == 6);
  FUZZ_CHECK(d.inner_type == (version == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6));
  FUZZ_CHECK(d.protocol == kIpProtoGre || version == 4);
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
  const bool outer_ce = (data[1] & kEcnMask) == kEcnCe;
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
  const size_t outer_ihl = size_t{data[0] & 0x0Fu} * 4;
  const bool gre_checksum = d.protocol == kIpProtoGre && (data[outer_ihl] & 0x80) != 0;
  Decapsulated twice;
  if (version == 6 && gre_checksum && ecn_after != ecn_before) {
    FUZZ_CHECK(!Decapsulate(begin, size, &twice, &reason));
    FUZZ_CHECK(reason == DropReason::kGreChecksum);
  } else {
    FUZZ_CHECK(Decapsulate(begin, size, &twice, &reason));
    FUZZ_CHECK(SameDecapsulated(d, twice));
  }
  FUZZ_CHECK(buf == once);

  CheckLookup(d);
  CheckRoundTrips(d);
}

}  // namespace
}  // namespace tunnelagent::dataplane

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tunnelagent::dataplane::CheckReceive(data, size);
  return 0;
}
