#include "dataplane/packet/encap.h"

#include <ostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane {
namespace {

using test::Bytes;
using test::Hex;
using test::Packet;
using test::ToHex;

constexpr size_t kOuter = kIpv4HeaderLen;  // offset of the GRE header / IPIP inner packet

// An inner packet laid out as the engine does: headroom in front, then the packet.
class Frame {
 public:
  explicit Frame(const Bytes& inner, size_t headroom = kMaxEncapHeadroom)
      : storage_(headroom, 0xEE), headroom_(headroom), len_(inner.size()) {
    storage_.insert(storage_.end(), inner.begin(), inner.end());
  }
  uint8_t* inner() { return storage_.data() + headroom_; }
  size_t inner_len() const { return len_; }
  const uint8_t* front() const { return storage_.data(); }

 private:
  Bytes storage_;
  size_t headroom_;
  size_t len_;
};

EncapParams Gre() {
  EncapParams p;
  p.mode = TunnelMode::kGre;
  p.ttl = 64;
  p.local = test::kLocal;
  p.remote = test::kRemote;
  return p;
}
EncapParams GreKey() {
  EncapParams p = Gre();
  p.has_key = true;
  p.key = 0x0a0b0c0d;
  return p;
}
EncapParams GreCsum() {
  EncapParams p = Gre();
  p.checksum = true;
  return p;
}
EncapParams GreCsumKeySeq() {
  EncapParams p = GreCsum();
  p.has_key = true;
  p.key = 42;
  p.sequence = true;
  return p;
}
EncapParams Ipip() {
  EncapParams p = Gre();
  p.mode = TunnelMode::kIpip;
  return p;
}
EncapParams InheritTtlNoDf(EncapParams p) {
  p.ttl = 0;
  p.pmtudisc = false;
  return p;
}
// nopmtudisc and ignore-df: no DF even though the inner packet has it.
EncapParams NoDf(EncapParams p) {
  p.pmtudisc = false;
  p.ignore_df = true;
  return p;
}
EncapParams Ttl(EncapParams p, uint8_t ttl) {
  p.ttl = ttl;
  return p;
}

// An outer golden packet whose inner packet is replaced, with outer TOS and TTL given and the
// outer lengths and checksums fixed up: for cases derived from the golden ones.
Bytes Rewrap(const char* golden, size_t gre_len, const Bytes& inner, uint8_t tos, uint8_t ttl) {
  Packet p(golden);
  p.ReplaceTail(kOuter + gre_len, inner).Set8(1, tos).Set8(8, ttl).FixIpv4TotalLen(0);
  if (gre_len >= 8 && (p.bytes()[kOuter] & 0x80)) p.FixGreChecksum(kOuter);
  return p.FixIpv4Checksum(0);
}

// ---- DropReasonName, EncapHeaderLen ---------------------------------------------------------

TEST(DropReasonTest, NamesAreDistinctMetricLabels) {
  std::set<std::string> names;
  for (int i = 0; i < kDropReasonCount; ++i) {
    const std::string name(DropReasonName(static_cast<DropReason>(i)));
    EXPECT_NE(name, "unknown") << i;
    EXPECT_EQ(name.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string::npos) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(kDropReasonCount));
  EXPECT_EQ(DropReasonName(DropReason::kTruncated), "truncated");
  EXPECT_EQ(DropReasonName(DropReason::kBadOuterHeader), "bad_outer_header");
  EXPECT_EQ(DropReasonName(DropReason::kGreChecksum), "gre_checksum");
  EXPECT_EQ(DropReasonName(DropReason::kEcnError), "ecn_error");
  EXPECT_EQ(DropReasonName(DropReason::kSocketError), "socket_error");
  EXPECT_EQ(DropReasonName(DropReason::kCount), "unknown");
}

TEST(EncapTest, HeaderLen) {
  EXPECT_EQ(EncapHeaderLen(Gre()), 24u);
  EXPECT_EQ(EncapHeaderLen(GreKey()), 28u);
  EXPECT_EQ(EncapHeaderLen(GreCsum()), 28u);
  EXPECT_EQ(EncapHeaderLen(GreCsumKeySeq()), 36u);
  EXPECT_EQ(EncapHeaderLen(Ipip()), 20u);
  EXPECT_EQ(kMaxEncapHeadroom, 64u);  // ip6gre with every option
  // Options that only GRE has do not change IPIP's header.
  EncapParams ipip_with_options = GreCsumKeySeq();
  ipip_with_options.mode = TunnelMode::kIpip;
  EXPECT_EQ(EncapHeaderLen(ipip_with_options), 20u);
}

// ---- Encapsulate ----------------------------------------------------------------------------

struct EncapCase {
  std::string name;
  EncapParams params;
  Bytes inner;
  uint16_t ip_id;
  uint32_t sequence;
  Bytes expected;
};
void PrintTo(const EncapCase& c, std::ostream* os) { *os << c.name; }

class EncapGoldenTest : public ::testing::TestWithParam<EncapCase> {};

TEST_P(EncapGoldenTest, WritesExactBytes) {
  const EncapCase& c = GetParam();
  Frame frame(c.inner);
  const EncapResult r =
      Encapsulate(c.params, frame.inner(), frame.inner_len(), c.ip_id, c.sequence);
  ASSERT_NE(r.packet, nullptr) << DropReasonName(r.drop);
  EXPECT_EQ(r.drop, DropReason::kCount);
  EXPECT_EQ(r.packet, frame.inner() - EncapHeaderLen(c.params));
  EXPECT_EQ(ToHex(r.packet, r.len), ToHex(c.expected));
  // Nothing in front of the outer header is touched.
  for (const uint8_t* b = frame.front(); b < r.packet; ++b) EXPECT_EQ(*b, 0xEE);
}

const Bytes kTtl17Inner = Packet(test::kInnerIcmp).Set8(8, 17).FixIpv4Checksum(0);
// DSCP EF (46 << 2) with ECT(0): only the ECN bits may reach the outer header.
const Bytes kDscpInner = Packet(test::kInnerIcmp).Set8(1, 0xb8 | kEcnEct0).FixIpv4Checksum(0);
const Bytes kIpv6Ect0 = Packet(test::kInnerIcmp6).Set8(1, 0x20);
const Bytes kIpv6Ce = Packet(test::kInnerIcmp6).Set8(1, 0x30);

INSTANTIATE_TEST_SUITE_P(
    Golden, EncapGoldenTest,
    ::testing::Values(
        EncapCase{"Gre", Gre(), Hex(test::kInnerIcmp), 0x0102, 0, Hex(test::kGre)},
        EncapCase{"GreKey", GreKey(), Hex(test::kInnerIcmp), 0x0102, 0, Hex(test::kGreKey)},
        EncapCase{"GreChecksum", GreCsum(), Hex(test::kInnerIcmp), 0x0102, 0, Hex(test::kGreCsum)},
        EncapCase{"GreChecksumKeySequence", GreCsumKeySeq(), Hex(test::kInnerIcmp), 0x0102, 7,
                  Hex(test::kGreCsumKeySeq)},
        EncapCase{"Ipip", Ipip(), Hex(test::kInnerIcmp), 0x0102, 0, Hex(test::kIpip)},
        EncapCase{"GreIpv6InheritsHopLimit", InheritTtlNoDf(Gre()), Hex(test::kInnerIcmp6), 0, 0,
                  Hex(test::kGreIpv6)},
        EncapCase{"GreIpv4InheritsTtl", Ttl(Gre(), 0), kTtl17Inner, 0x0102, 0,
                  Rewrap(test::kGre, 4, kTtl17Inner, 0, 17)},
        EncapCase{"IpipFixedTtl", Ttl(Ipip(), 255), Hex(test::kInnerIcmp), 0x0102, 0,
                  Packet(test::kIpip).Set8(8, 255).FixIpv4Checksum(0)},
        EncapCase{"NoDontFragment", NoDf(Gre()), Hex(test::kInnerIcmp), 0x0102, 0,
                  Packet(test::kGre).Set16(6, 0).FixIpv4Checksum(0)},
        // RFC 6040 / INET_ECN_encapsulate: ECT copied, CE sent as ECT(0), DSCP not copied.
        EncapCase{"EcnEct1Copied", Gre(), Hex(test::kInnerIcmpEct1), 0x0102, 0,
                  Rewrap(test::kGre, 4, Hex(test::kInnerIcmpEct1), kEcnEct1, 64)},
        EncapCase{"EcnEct0Copied", Gre(), Hex(test::kInnerIcmpEct0), 0x0102, 0,
                  Rewrap(test::kGre, 4, Hex(test::kInnerIcmpEct0), kEcnEct0, 64)},
        EncapCase{"EcnCeSentAsEct0", Gre(), Hex(test::kInnerIcmpCe), 0x0102, 0,
                  Rewrap(test::kGre, 4, Hex(test::kInnerIcmpCe), kEcnEct0, 64)},
        EncapCase{"EcnCeSentAsEct0OverIpip", Ipip(), Hex(test::kInnerIcmpCe), 0x0102, 0,
                  Rewrap(test::kIpip, 0, Hex(test::kInnerIcmpCe), kEcnEct0, 64)},
        EncapCase{"DscpNotCopied", GreCsum(), kDscpInner, 0x0102, 0,
                  Rewrap(test::kGreCsum, 8, kDscpInner, kEcnEct0, 64)},
        EncapCase{"Ipv6EcnEct0Copied", InheritTtlNoDf(Gre()), kIpv6Ect0, 0, 0,
                  Rewrap(test::kGreIpv6, 4, kIpv6Ect0, kEcnEct0, 0x37)},
        EncapCase{"Ipv6EcnCeSentAsEct0", InheritTtlNoDf(Gre()), kIpv6Ce, 0, 0,
                  Rewrap(test::kGreIpv6, 4, kIpv6Ce, kEcnEct0, 0x37)}),
    [](const ::testing::TestParamInfo<EncapCase>& info) { return info.param.name; });

struct EncapRejectCase {
  std::string name;
  EncapParams params;
  Bytes inner;
  DropReason reason;
};
void PrintTo(const EncapRejectCase& c, std::ostream* os) { *os << c.name; }

class EncapRejectTest : public ::testing::TestWithParam<EncapRejectCase> {};

TEST_P(EncapRejectTest, Rejects) {
  const EncapRejectCase& c = GetParam();
  Frame frame(c.inner);
  const EncapResult r = Encapsulate(c.params, frame.inner(), frame.inner_len(), 1, 1);
  EXPECT_EQ(r.packet, nullptr);
  EXPECT_EQ(r.len, 0u);
  EXPECT_EQ(r.drop, c.reason) << DropReasonName(r.drop);
}

INSTANTIATE_TEST_SUITE_P(
    Table, EncapRejectTest,
    ::testing::Values(
        EncapRejectCase{"Empty", Gre(), Bytes{}, DropReason::kBadInnerPacket},
        EncapRejectCase{"Ipv4ShorterThanHeader", Gre(), Packet(test::kInnerIcmp).Truncate(19),
                        DropReason::kBadInnerPacket},
        EncapRejectCase{"Ipv4IhlFour", Gre(), Packet(test::kInnerIcmp).Set8(0, 0x44),
                        DropReason::kBadInnerPacket},
        EncapRejectCase{"Ipv4OptionsBeyondData", Ipip(), Packet(test::kInnerIcmp).Set8(0, 0x4f),
                        DropReason::kBadInnerPacket},
        EncapRejectCase{"Ipv6ShorterThanHeader", Gre(), Packet(test::kInnerIcmp6).Truncate(39),
                        DropReason::kBadInnerPacket},
        EncapRejectCase{"Ipv6OverIpip", Ipip(), Hex(test::kInnerIcmp6),
                        DropReason::kUnsupportedProtocol},
        EncapRejectCase{"Version5", Gre(), Packet(test::kInnerIcmp).Set8(0, 0x55),
                        DropReason::kUnsupportedProtocol},
        EncapRejectCase{"Version0", Gre(), Packet(test::kInnerIcmp).Set8(0, 0x05),
                        DropReason::kUnsupportedProtocol},
        // One byte more than an outer IPv4 total length can express.
        EncapRejectCase{"TooBigForGre", Gre(), Packet(test::kInnerIcmp).Truncate(65535 - 24 + 1),
                        DropReason::kTooBig},
        EncapRejectCase{"TooBigForGreWithOptions", GreCsumKeySeq(),
                        Packet(test::kInnerIcmp).Truncate(65535 - 36 + 1), DropReason::kTooBig},
        EncapRejectCase{"TooBigForIpip", Ipip(), Packet(test::kInnerIcmp).Truncate(65535 - 20 + 1),
                        DropReason::kTooBig}),
    [](const ::testing::TestParamInfo<EncapRejectCase>& info) { return info.param.name; });

TEST(EncapTest, LargestPacketFits) {
  Frame frame(Packet(test::kInnerIcmp).Truncate(65535 - 24));
  const EncapResult r = Encapsulate(Gre(), frame.inner(), frame.inner_len(), 0, 0);
  ASSERT_NE(r.packet, nullptr) << DropReasonName(r.drop);
  EXPECT_EQ(r.len, 65535u);
  EXPECT_EQ(r.packet[2], 0xff);
  EXPECT_EQ(r.packet[3], 0xff);
}

TEST(EncapTest, NeedsOnlyItsOwnHeadroom) {
  Frame frame(Hex(test::kInnerIcmp), /*headroom=*/20);
  const EncapResult r = Encapsulate(Ipip(), frame.inner(), frame.inner_len(), 0x0102, 0);
  ASSERT_NE(r.packet, nullptr);
  EXPECT_EQ(r.packet, frame.front());
  EXPECT_EQ(ToHex(r.packet, r.len), ToHex(Hex(test::kIpip)));
}

// ---- Decapsulate ----------------------------------------------------------------------------

struct DecapCase {
  std::string name;
  Bytes packet;
  uint8_t protocol;
  uint16_t inner_type;
  bool has_key;
  uint32_t key;
  bool has_sequence;
  uint32_t sequence;
  Bytes inner;  // expected, after trimming and ECN
};
void PrintTo(const DecapCase& c, std::ostream* os) { *os << c.name; }

class DecapGoldenTest : public ::testing::TestWithParam<DecapCase> {};

TEST_P(DecapGoldenTest, Parses) {
  const DecapCase& c = GetParam();
  Bytes buf = c.packet;
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  ASSERT_TRUE(Decapsulate(buf.data(), buf.size(), &d, &reason)) << DropReasonName(reason);
  EXPECT_EQ(reason, DropReason::kCount);
  EXPECT_EQ(d.outer_src, test::kLocal);
  EXPECT_EQ(d.outer_dst, test::kRemote);
  EXPECT_EQ(d.protocol, c.protocol);
  EXPECT_EQ(d.inner_type, c.inner_type);
  EXPECT_EQ(d.has_key, c.has_key);
  EXPECT_EQ(d.key, c.key);
  EXPECT_EQ(d.has_sequence, c.has_sequence);
  EXPECT_EQ(d.sequence, c.sequence);
  ASSERT_GE(d.inner, buf.data());
  ASSERT_LE(d.inner + d.inner_len, buf.data() + buf.size());
  EXPECT_EQ(ToHex(d.inner, d.inner_len), ToHex(c.inner));
}

DecapCase Gre4(std::string name, Bytes packet, Bytes inner) {
  return {std::move(name), std::move(packet), kIpProtoGre, kEtherTypeIpv4, false, 0, false, 0,
          std::move(inner)};
}
DecapCase Ipip4(std::string name, Bytes packet, Bytes inner) {
  return {std::move(name), std::move(packet), kIpProtoIpip, kEtherTypeIpv4, false, 0, false, 0,
          std::move(inner)};
}
DecapCase Gre6(std::string name, Bytes packet, Bytes inner) {
  return {std::move(name), std::move(packet), kIpProtoGre, kEtherTypeIpv6, false, 0, false, 0,
          std::move(inner)};
}

const Bytes kPad4 = {0xde, 0xad, 0xbe, 0xef};

// The golden packet with a 4-byte option (IHL 6) in its outer header.
Bytes WithOuterOptions(const char* golden) {
  const Bytes g = Hex(golden);
  return Packet(Bytes(g.begin(), g.begin() + kOuter))
      .Set8(0, 0x46)
      .Append({1, 1, 1, 0})  // NOP, NOP, NOP, end of options
      .Append(Bytes(g.begin() + kOuter, g.end()))
      .FixIpv4TotalLen(0)
      .FixIpv4Checksum(0);
}
// Outer CE over the golden inner packet with the given ECN.
Bytes GreCe(const char* inner) { return Rewrap(test::kGre, 4, Hex(inner), kEcnCe, 64); }

std::vector<DecapCase> DecapCases() {
  std::vector<DecapCase> cases = {
      Gre4("Gre", Hex(test::kGre), Hex(test::kInnerIcmp)),
      {"GreKey", Hex(test::kGreKey), kIpProtoGre, kEtherTypeIpv4, true, 0x0a0b0c0d, false, 0,
       Hex(test::kInnerIcmp)},
      Gre4("GreChecksum", Hex(test::kGreCsum), Hex(test::kInnerIcmp)),
      {"GreChecksumKeySequence", Hex(test::kGreCsumKeySeq), kIpProtoGre, kEtherTypeIpv4, true, 42,
       true, 7, Hex(test::kInnerIcmp)},
      Ipip4("Ipip", Hex(test::kIpip), Hex(test::kInnerIcmp)),
      Gre6("GreIpv6", Hex(test::kGreIpv6), Hex(test::kInnerIcmp6)),
      // Bytes past the outer total length (Ethernet padding) are not part of the packet.
      Gre4("OuterTrailingBytesIgnored", Packet(test::kGre).Append(kPad4), Hex(test::kInnerIcmp)),
      // The GRE checksum covers only up to the outer total length, not the padding.
      Gre4("OuterTrailingBytesOutsideGreChecksum", Packet(test::kGreCsum).Append(kPad4),
           Hex(test::kInnerIcmp)),
      // Bytes inside the outer packet but past the inner total length are trimmed.
      Gre4("InnerTrimmedToItsTotalLength",
           Packet(test::kGre).Append(kPad4).FixIpv4TotalLen(0).FixIpv4Checksum(0),
           Hex(test::kInnerIcmp)),
      Ipip4("IpipInnerTrimmed",
            Packet(test::kIpip).Append(kPad4).FixIpv4TotalLen(0).FixIpv4Checksum(0),
            Hex(test::kInnerIcmp)),
      Gre6("Ipv6InnerTrimmed",
           Packet(test::kGreIpv6).Append(kPad4).FixIpv4TotalLen(0).FixIpv4Checksum(0),
           Hex(test::kInnerIcmp6)),
      // An outer header with options (IHL 6): the GRE header follows them.
      Gre4("OuterOptions", WithOuterOptions(test::kGre), Hex(test::kInnerIcmp)),
      // DF set or not, the outer packet is whole; only fragments are refused.
      Gre4("OuterWithoutDf", Packet(test::kGre).Set16(6, 0).FixIpv4Checksum(0),
           Hex(test::kInnerIcmp)),
      // RFC 6040 section 4.2: outer CE marks an ECT inner packet CE; IPv4 checksum fixed.
      Gre4("EcnCeOverEct0", GreCe(test::kInnerIcmpEct0), Hex(test::kInnerIcmpCe)),
      Gre4("EcnCeOverEct1", GreCe(test::kInnerIcmpEct1), Hex(test::kInnerIcmpCe)),
      Gre4("EcnCeOverCe", GreCe(test::kInnerIcmpCe), Hex(test::kInnerIcmpCe)),
      Ipip4("EcnCeOverEct0Ipip", Rewrap(test::kIpip, 0, Hex(test::kInnerIcmpEct0), kEcnCe, 64),
            Hex(test::kInnerIcmpCe)),
      Gre6("EcnCeOverIpv6Ect0", Rewrap(test::kGreIpv6, 4, kIpv6Ect0, kEcnCe, 64), kIpv6Ce),
      Gre6("EcnCeOverIpv6Ect1",
           Rewrap(test::kGreIpv6, 4, Packet(test::kInnerIcmp6).Set8(1, 0x10), kEcnCe, 64), kIpv6Ce),
      // The rest of the traffic class (DSCP) survives the CE mark.
      Gre6("EcnCeKeepsIpv6Dscp",
           Rewrap(test::kGreIpv6, 4, Packet(test::kInnerIcmp6).Set8(0, 0x6b).Set8(1, 0xa0), kEcnCe,
                  64),
           Packet(test::kInnerIcmp6).Set8(0, 0x6b).Set8(1, 0xb0)),
      // Outer ECT over a not-ECT inner packet is accepted unchanged (the kernel only logs it).
      Gre4("EcnEct0OverNotEct", Rewrap(test::kGre, 4, Hex(test::kInnerIcmp), kEcnEct0, 64),
           Hex(test::kInnerIcmp)),
      Gre4("EcnEct1OverEct0", Rewrap(test::kGre, 4, Hex(test::kInnerIcmpEct0), kEcnEct1, 64),
           Hex(test::kInnerIcmpEct0)),
      // Only the outer ECN bits matter; DSCP on the outer header is not copied inward.
      Gre4("OuterDscpIgnored", Rewrap(test::kGre, 4, Hex(test::kInnerIcmp), 0xb8, 64),
           Hex(test::kInnerIcmp)),
  };
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Golden, DecapGoldenTest, ::testing::ValuesIn(DecapCases()),
                         [](const ::testing::TestParamInfo<DecapCase>& info) {
                           return info.param.name;
                         });

TEST(DecapTest, CeMarkUpdatesAChecksumThatWasWrongByTheSameDelta) {
  // A corrupt inner checksum stays corrupt: the update is incremental, not a recomputation.
  Bytes buf = Rewrap(test::kGre, 4, Packet(test::kInnerIcmpEct0).Set16(10, 0x1111), kEcnCe, 64);
  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(Decapsulate(buf.data(), buf.size(), &d, &reason));
  EXPECT_EQ(d.inner[1], kEcnCe);
  EXPECT_EQ(d.inner[10] << 8 | d.inner[11], 0x1111 - 1);
}

struct DecapRejectCase {
  std::string name;
  Bytes packet;
  DropReason reason;
};
void PrintTo(const DecapRejectCase& c, std::ostream* os) { *os << c.name; }

class DecapRejectTest : public ::testing::TestWithParam<DecapRejectCase> {};

TEST_P(DecapRejectTest, Rejects) {
  const DecapRejectCase& c = GetParam();
  Bytes buf = c.packet;
  Decapsulated d;
  d.key = 0x5a5a5a5a;
  DropReason reason = DropReason::kCount;
  EXPECT_FALSE(Decapsulate(buf.data(), buf.size(), &d, &reason));
  EXPECT_EQ(reason, c.reason) << DropReasonName(reason);
  EXPECT_EQ(d.key, 0x5a5a5a5au) << "output written on failure";
  EXPECT_EQ(ToHex(buf), ToHex(c.packet)) << "packet modified on failure";
}

// Cuts the GRE packet of a golden packet to `gre_len` bytes, keeping the outer header
// consistent, so that the GRE layer (not the IPv4 layer) sees the truncation.
Bytes CutGre(const char* golden, size_t gre_len) {
  return Packet(golden).Truncate(kOuter + gre_len).FixIpv4TotalLen(0).FixIpv4Checksum(0);
}
// Replaces the inner packet of a golden GRE (4-byte header) packet.
Bytes GreWith(const Bytes& inner) { return Rewrap(test::kGre, 4, inner, 0, 64); }
Bytes GreType(uint16_t type, const Bytes& inner) {
  return Packet(GreWith(inner)).Set16(kOuter + 2, type);
}

constexpr DropReason kTrunc = DropReason::kTruncated;
constexpr DropReason kOuterBad = DropReason::kBadOuterHeader;
constexpr DropReason kInnerBad = DropReason::kBadInnerPacket;
constexpr DropReason kUnsupported = DropReason::kUnsupportedProtocol;

std::vector<DecapRejectCase> RejectCases() {
  return {
      // Outer IPv4.
      {"Empty", Bytes{}, kTrunc},
      {"OuterCutAt19", Packet(test::kGre).Truncate(19), kTrunc},
      {"OuterVersion6", Packet(test::kGre).Set8(0, 0x65), kOuterBad},
      {"OuterIhl4", Packet(test::kGre).Set8(0, 0x44), kOuterBad},
      {"OuterOptionsBeyondData", Packet(test::kGre).Truncate(22).Set8(0, 0x46), kTrunc},
      {"OuterTotalLenBeyondData", Packet(test::kGre).Truncate(0x3b), kTrunc},
      {"OuterTotalLenBelowIhl", Packet(test::kGre).Set16(2, 16), kOuterBad},
      {"OuterMoreFragments", Packet(test::kGre).Set16(6, 0x2000).FixIpv4Checksum(0), kOuterBad},
      {"OuterLastFragment", Packet(test::kGre).Set16(6, 0x0001).FixIpv4Checksum(0), kOuterBad},
      {"OuterDfAndOffset", Packet(test::kGre).Set16(6, 0x4100).FixIpv4Checksum(0), kOuterBad},
      // sit carries IPv6 only.
      {"SitCarryingIpv4", Packet(test::kIpip).Set8(9, kIpProtoIpv6).FixIpv4Checksum(0), kInnerBad},
      {"OuterProtocolUdp", Packet(test::kGre).Set8(9, 17).FixIpv4Checksum(0), kUnsupported},
      // GRE header.
      {"GreVersion1", Packet(test::kGre).Set16(kOuter, 0x0001), DropReason::kGreVersion},
      {"GreRouting", Packet(test::kGre).Set16(kOuter, 0x4000), DropReason::kGreRouting},
      {"GreBadChecksum", Packet(test::kGreCsum).Set16(kOuter + 4, 0x1234),
       DropReason::kGreChecksum},
      {"GreChecksumOverCorruptInner", Packet(test::kGreCsum).Set8(kOuter + 8 + 30, 0),
       DropReason::kGreChecksum},
      // Truncated at each GRE field boundary: base header, checksum, key, sequence.
      {"GreCutAt0", CutGre(test::kGre, 0), kTrunc},
      {"GreCutAt2", CutGre(test::kGre, 2), kTrunc},
      {"GreCutAt3", CutGre(test::kGre, 3), kTrunc},
      {"GreAllOptionsCutAt4", CutGre(test::kGreCsumKeySeq, 4), kTrunc},
      {"GreAllOptionsCutAt6", CutGre(test::kGreCsumKeySeq, 6), kTrunc},
      {"GreAllOptionsCutAt8", CutGre(test::kGreCsumKeySeq, 8), kTrunc},
      {"GreAllOptionsCutAt12", CutGre(test::kGreCsumKeySeq, 12), kTrunc},
      {"GreAllOptionsCutAt15", CutGre(test::kGreCsumKeySeq, 15), kTrunc},
      {"GreKeyCutAt4", CutGre(test::kGreKey, 4), kTrunc},
      {"GreKeyCutAt7", CutGre(test::kGreKey, 7), kTrunc},
      // GRE header complete, nothing or too little behind it.
      {"GreInnerCutAt1", CutGre(test::kGreKey, 9), kInnerBad},
      {"GreInnerCutAt19", CutGre(test::kGre, 4 + 19), kInnerBad},
      {"GreInnerCutBeforeItsTotalLength", CutGre(test::kGre, 4 + 35), kInnerBad},
      // Payload type against inner version.
      // gretap: a frame needs at least its 14-byte Ethernet header.
      {"GretapShorterThanEthernetHeader",
       GreType(kEtherTypeTransparentBridging, Packet(test::kInnerIcmp).Truncate(13)), kInnerBad},
      {"GreUnknownType", GreType(0x88be, Hex(test::kInnerIcmp)), kUnsupported},
      {"GreIpv4TypeOverIpv6", GreType(kEtherTypeIpv4, Hex(test::kInnerIcmp6)), kInnerBad},
      {"GreIpv6TypeOverIpv4", GreType(kEtherTypeIpv6, Hex(test::kInnerIcmp)), kInnerBad},
      {"GreInnerVersion5", GreWith(Packet(test::kInnerIcmp).Set8(0, 0x55)), kInnerBad},
      // Inner IPv4 header.
      {"InnerIhl4", GreWith(Packet(test::kInnerIcmp).Set8(0, 0x44)), kInnerBad},
      {"InnerOptionsBeyondData", GreWith(Packet(test::kInnerIcmp).Set8(0, 0x4f)), kInnerBad},
      {"InnerTotalLenBelowIhl", GreWith(Packet(test::kInnerIcmp).Set16(2, 19)), kInnerBad},
      {"InnerTotalLenBeyondData", GreWith(Packet(test::kInnerIcmp).Set16(2, 37)), kInnerBad},
      // Inner IPv6 header.
      {"InnerIpv6CutAt39", GreWith(Packet(test::kInnerIcmp6).Truncate(39)), kInnerBad},
      {"InnerIpv6PayloadBeyondData", GreWith(Packet(test::kInnerIcmp6).Set16(4, 17)), kInnerBad},
      // IPIP carries IPv4 only (protocol 4); IPv6 would be protocol 41.
      {"IpipWithIpv6Inside", Rewrap(test::kIpip, 0, Hex(test::kInnerIcmp6), 0, 64), kInnerBad},
      {"IpipInnerCutAt19", CutGre(test::kIpip, 19), kInnerBad},
      {"IpipInnerCutAt1", CutGre(test::kIpip, 1), kInnerBad},
      // RFC 6040: CE cannot be passed to a sender that does not do ECN.
      {"EcnCeOverNotEct", GreCe(test::kInnerIcmp), DropReason::kEcnError},
      {"EcnCeOverNotEctIpip", Rewrap(test::kIpip, 0, Hex(test::kInnerIcmp), kEcnCe, 64),
       DropReason::kEcnError},
      {"EcnCeOverNotEctIpv6", Rewrap(test::kGreIpv6, 4, Hex(test::kInnerIcmp6), kEcnCe, 64),
       DropReason::kEcnError},
  };
}

INSTANTIATE_TEST_SUITE_P(Table, DecapRejectTest, ::testing::ValuesIn(RejectCases()),
                         [](const ::testing::TestParamInfo<DecapRejectCase>& info) {
                           return info.param.name;
                         });

// ---- Round trip -----------------------------------------------------------------------------

struct RoundTripCase {
  std::string name;
  EncapParams params;
  Bytes inner;
};
void PrintTo(const RoundTripCase& c, std::ostream* os) { *os << c.name; }

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTripTest, DecapsulateUndoesEncapsulate) {
  const RoundTripCase& c = GetParam();
  constexpr uint32_t kSequence = 0xfffffffe;
  Frame frame(c.inner);
  const EncapResult r = Encapsulate(c.params, frame.inner(), frame.inner_len(), 0x4242, kSequence);
  ASSERT_NE(r.packet, nullptr) << DropReasonName(r.drop);
  EXPECT_EQ(test::RefChecksum(r.packet, kIpv4HeaderLen), 0) << "outer header checksum";

  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(Decapsulate(r.packet, r.len, &d, &reason)) << DropReasonName(reason);
  EXPECT_EQ(d.outer_src, c.params.local);
  EXPECT_EQ(d.outer_dst, c.params.remote);
  EXPECT_EQ(d.protocol, c.params.mode == TunnelMode::kGre ? kIpProtoGre : kIpProtoIpip);
  EXPECT_EQ(d.mode, c.params.mode);
  EXPECT_EQ(d.inner_type, c.inner[0] >> 4 == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6);
  EXPECT_EQ(d.has_key, c.params.has_key);
  EXPECT_EQ(d.key, c.params.has_key ? c.params.key : 0);
  EXPECT_EQ(d.has_sequence, c.params.sequence);
  EXPECT_EQ(d.sequence, c.params.sequence ? kSequence : 0);
  EXPECT_EQ(d.inner, frame.inner());
  EXPECT_EQ(ToHex(d.inner, d.inner_len), ToHex(c.inner));
}

std::vector<RoundTripCase> RoundTripCases() {
  // A 1400-byte IPv4 packet with an odd-length payload and a pattern, so checksums cover
  // more than the golden vectors do.
  Packet big(test::kInnerIcmp);
  big.Truncate(20);
  for (int i = 0; i < 1381; ++i) big.Append({static_cast<uint8_t>(i * 7)});
  big.FixIpv4TotalLen(0).FixIpv4Checksum(0);
  const Bytes big4 = big;

  std::vector<RoundTripCase> cases;
  const std::pair<std::string, EncapParams> params[] = {
      {"Gre", Gre()},
      {"GreKey", GreKey()},
      {"GreChecksum", GreCsum()},
      {"GreAll", GreCsumKeySeq()},
      {"GreInheritTtl", InheritTtlNoDf(GreCsumKeySeq())},
      {"Ipip", Ipip()},
  };
  for (const auto& [name, p] : params) {
    cases.push_back({name + "Icmp", p, Hex(test::kInnerIcmp)});
    cases.push_back({name + "Ect1", p, Hex(test::kInnerIcmpEct1)});
    cases.push_back({name + "Big", p, big4});
    if (p.mode == TunnelMode::kGre) cases.push_back({name + "Ipv6", p, Hex(test::kInnerIcmp6)});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, RoundTripTest, ::testing::ValuesIn(RoundTripCases()),
                         [](const ::testing::TestParamInfo<RoundTripCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace tunnelagent::dataplane

namespace tunnelagent::dataplane {
namespace {

// Foo-over-UDP (encap fou): the UDP header between the outer IPv4 header and the GRE header
// (RFC 8086) or the inner packet (ipip, sit), checksum 0 (none: allowed over IPv4).
TEST(FouTest, GreInUdpExactBytes) {
  EncapParams p = Gre();
  p.udp_dport = kGreInUdpPort;
  p.udp_sport = 5000;
  EXPECT_EQ(EncapHeaderLen(p), 32u);
  EXPECT_EQ(EncapIpUdpLen(p), 28u);
  Frame f(test::Hex(test::kInnerIcmp));
  EncapResult r = Encapsulate(p, f.inner(), f.inner_len(), 0x0102, 0);
  ASSERT_NE(r.packet, nullptr);
  EXPECT_EQ(test::ToHex(r.packet, r.len),
            test::ToHex(test::Hex(std::string("45 00 00 44 01 02 40 00 40 11 c1 a2 cb 00 71 01 "
                                              "cb 00 71 02"
                                              "13 88 12 92 00 30 00 00"
                                              "00 00 08 00") +
                                  test::kInnerIcmp)));
}

TEST(FouTest, IpipInUdpTakesItsSourcePortFromTheFlow) {
  EncapParams p = Gre();
  p.mode = TunnelMode::kIpip;
  p.udp_dport = 5555;
  const test::Bytes inner = test::Hex(test::kInnerIcmp);
  Frame f(inner);
  EncapResult r = Encapsulate(p, f.inner(), f.inner_len(), 0x0102, 0);
  ASSERT_NE(r.packet, nullptr);
  ASSERT_EQ(r.len, 28 + inner.size());
  EXPECT_EQ(test::ToHex(r.packet, 20),
            "45 00 00 40 01 02 40 00 40 11 c1 a6 cb 00 71 01 cb 00 71 02");
  const uint16_t sport = static_cast<uint16_t>(r.packet[20] << 8 | r.packet[21]);
  EXPECT_GE(sport, 49152);
  EXPECT_EQ(sport, FlowSourcePort(InnerFlowHash(inner.data(), inner.size())));
  EXPECT_EQ(test::ToHex(r.packet + 22, 6), "15 b3 00 2c 00 00");
  EXPECT_EQ(test::ToHex(r.packet + 28, inner.size()), test::ToHex(inner));
  // Another flow (other ports) may take another port; the same flow always the same.
  Frame again(inner);
  EncapResult r2 = Encapsulate(p, again.inner(), again.inner_len(), 0x0102, 0);
  EXPECT_EQ(test::ToHex(r2.packet, r2.len), test::ToHex(r.packet, r.len));
}

TEST(FouTest, FlowHashSeesPorts) {
  test::Bytes a = test::Hex(test::kInnerIcmp);
  a[9] = 17;  // as UDP: the ports are the bytes after the header
  test::Bytes b = a;
  b[21] ^= 1;  // another source port
  EXPECT_NE(InnerFlowHash(a.data(), a.size()), InnerFlowHash(b.data(), b.size()));
  EXPECT_EQ(InnerFlowHash(a.data(), a.size()), InnerFlowHash(a.data(), a.size()));
  EXPECT_EQ(InnerFlowHash(a.data(), 3), 0u);
}

TEST(FouTest, UdpPayloadsDecapsulate) {
  const test::Bytes inner = test::Hex(test::kInnerIcmp);
  test::Bytes gre = test::Hex("00 00 08 00");
  gre.insert(gre.end(), inner.begin(), inner.end());
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  ASSERT_TRUE(DecapsulateUdpPayload(gre.data(), gre.size(), kIpProtoGre, test::kRemote,
                                    test::kLocal, 0, &d, &reason));
  EXPECT_EQ(d.mode, TunnelMode::kGre);
  EXPECT_EQ(d.outer_src, OuterAddress(test::kRemote));
  EXPECT_EQ(d.outer_dst, OuterAddress(test::kLocal));
  EXPECT_EQ(test::ToHex(d.inner, d.inner_len), test::ToHex(inner));
  test::Bytes ipip = inner;
  ASSERT_TRUE(DecapsulateUdpPayload(ipip.data(), ipip.size(), kIpProtoIpip, test::kRemote,
                                    test::kLocal, 0, &d, &reason));
  EXPECT_EQ(d.mode, TunnelMode::kIpip);
  EXPECT_FALSE(DecapsulateUdpPayload(gre.data(), 3, kIpProtoGre, test::kRemote, test::kLocal, 0, &d,
                                     &reason));
  EXPECT_EQ(reason, DropReason::kTruncated);
  EXPECT_FALSE(DecapsulateUdpPayload(gre.data(), gre.size(), 99, test::kRemote, test::kLocal, 0, &d,
                                     &reason));
  EXPECT_EQ(reason, DropReason::kUnsupportedProtocol);
  // IPv6 inside an ipip port: the version contradicts the protocol.
  test::Bytes v6 = test::Hex(test::kInnerIcmp6);
  EXPECT_FALSE(DecapsulateUdpPayload(v6.data(), v6.size(), kIpProtoIpip, test::kRemote,
                                     test::kLocal, 0, &d, &reason));
  EXPECT_EQ(reason, DropReason::kBadInnerPacket);
}

}  // namespace
}  // namespace tunnelagent::dataplane

namespace tunnelagent::dataplane {
namespace {

// ---- Loop check -----------------------------------------------------------------------------

const OuterAddress kLocal6 =
    OuterAddress::FromIpv6(test::Hex("20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01").data());
const OuterAddress kRemote6 =
    OuterAddress::FromIpv6(test::Hex("20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02").data());

struct LoopCase {
  std::string name;
  EncapParams params;
  Bytes inner;  // what the device gave: an IP packet, or a frame in Ethernet modes
};
void PrintTo(const LoopCase& c, std::ostream* os) { *os << c.name; }

class LoopCheckTest : public ::testing::TestWithParam<LoopCase> {
 protected:
  // The tunnel's own outer packet for `inner`, as the host would hand it back to the device: the
  // IP packet itself, or (Ethernet modes) in a frame of the underlay's EtherType.
  static Bytes OwnOuterPacket(const LoopCase& c) {
    Frame frame(c.inner);
    const EncapResult r = Encapsulate(c.params, frame.inner(), frame.inner_len(), 0, 1);
    EXPECT_NE(r.packet, nullptr) << DropReasonName(r.drop);
    if (r.packet == nullptr) return {};
    Bytes looped(r.packet, r.packet + r.len);
    if (IsEthernetMode(c.params.mode)) {
      Bytes header = test::Hex("02 00 00 00 00 01 02 00 00 00 00 02 08 00");
      if (IsIpv6UnderlayMode(c.params.mode)) header[13] = 0xdd, header[12] = 0x86;
      looped.insert(looped.begin(), header.begin(), header.end());
    }
    return looped;
  }
  static size_t IpAt(const LoopCase& c) { return IsEthernetMode(c.params.mode) ? 14 : 0; }
  static bool Ipv6(const LoopCase& c) { return IsIpv6UnderlayMode(c.params.mode); }
};

TEST_P(LoopCheckTest, FindsItsOwnOuterPacket) {
  const LoopCase& c = GetParam();
  const LoopCheck check(c.params);
  const Bytes looped = OwnOuterPacket(c);
  ASSERT_FALSE(looped.empty());
  EXPECT_TRUE(check.IsOwnOuterPacket(looped.data(), looped.size()));
  // Round again: what the tunnel makes of its own packet (where the mode carries one) is
  // still its own packet.
  if (SupportsKeepalive(c.params.mode) && !c.params.fou()) {
    const Bytes twice = OwnOuterPacket({c.name, c.params, looped});
    ASSERT_FALSE(twice.empty());
    EXPECT_TRUE(check.IsOwnOuterPacket(twice.data(), twice.size()));
  }
  // A default-made check matches nothing.
  EXPECT_FALSE(LoopCheck().IsOwnOuterPacket(looped.data(), looped.size()));
}

TEST_P(LoopCheckTest, OrdinaryTrafficIsNotALoop) {
  const LoopCase& c = GetParam();
  const LoopCheck check(c.params);
  EXPECT_FALSE(check.IsOwnOuterPacket(c.inner.data(), c.inner.size()));
  const Bytes looped = OwnOuterPacket(c);
  ASSERT_FALSE(looped.empty());
  const size_t ip = IpAt(c);
  const size_t dst = ip + (Ipv6(c) ? 24 + 15 : 19);  // last byte of the destination
  const size_t src = ip + (Ipv6(c) ? 8 + 15 : 15);   // last byte of the source
  // To another address than the remote.
  Bytes other_dst = looped;
  other_dst[dst] ^= 0x40;
  EXPECT_FALSE(check.IsOwnOuterPacket(other_dst.data(), other_dst.size()));
  // From another address than the local one: ours only when the tunnel has no local address.
  Bytes other_src = looped;
  other_src[src] ^= 0x40;
  EXPECT_EQ(check.IsOwnOuterPacket(other_src.data(), other_src.size()), c.params.local.is_zero());
  // Of another protocol: the next header after the encapsulation-limit option over IPv6.
  Bytes other_protocol = looped;
  other_protocol[ip + (Ipv6(c) ? kIpv6HeaderLen : 9)] = 6;  // TCP
  EXPECT_FALSE(check.IsOwnOuterPacket(other_protocol.data(), other_protocol.size()));
  // Of the other IP version.
  Bytes other_version = looped;
  other_version[ip] = static_cast<uint8_t>((Ipv6(c) ? 0x40 : 0x60) | (other_version[ip] & 0x0f));
  EXPECT_FALSE(check.IsOwnOuterPacket(other_version.data(), other_version.size()));
  // Cut inside the IP header.
  EXPECT_FALSE(check.IsOwnOuterPacket(looped.data(), ip + (Ipv6(c) ? 39 : 19)));
  EXPECT_FALSE(check.IsOwnOuterPacket(looped.data(), 0));
  if (IsEthernetMode(c.params.mode)) {
    Bytes other_type = looped;
    other_type[12] = 0x88;  // not IP
    EXPECT_FALSE(check.IsOwnOuterPacket(other_type.data(), other_type.size()));
  }
  if (c.params.fou()) {
    Bytes other_port = looped;
    other_port[ip + kIpv4HeaderLen + 3] ^= 1;
    EXPECT_FALSE(check.IsOwnOuterPacket(other_port.data(), other_port.size()));
    EXPECT_FALSE(check.IsOwnOuterPacket(looped.data(), ip + kIpv4HeaderLen + 3));
  }
}

// A looped fou packet the kernel's UDP socket fragmented: the fragments after the first carry
// no UDP header, and are the tunnel's own all the same.
TEST(LoopCheckTest, FouFragmentsPastTheFirstAreFoundByAddressesAndProtocol) {
  EncapParams p = GreKey();
  p.udp_dport = kGreInUdpPort;
  Bytes fragment(kIpv4HeaderLen + 8, 0);
  fragment[0] = 0x45;
  fragment[3] = static_cast<uint8_t>(fragment.size());
  fragment[6] = 0x00;
  fragment[7] = 0xb9;  // offset 185 x 8 bytes: no UDP header here
  fragment[8] = 64;
  fragment[9] = kIpProtoUdpOuter;
  StoreBe32(fragment.data() + 12, p.local.v4());
  StoreBe32(fragment.data() + 16, p.remote.v4());
  const LoopCheck check(p);
  EXPECT_TRUE(check.IsOwnOuterPacket(fragment.data(), fragment.size()));
  fragment[19] ^= 0x40;  // to another address
  EXPECT_FALSE(check.IsOwnOuterPacket(fragment.data(), fragment.size()));
  fragment[19] ^= 0x40;
  fragment[7] = 0;  // the first fragment: its UDP header (all zero here) names no fou port
  EXPECT_FALSE(check.IsOwnOuterPacket(fragment.data(), fragment.size()));
}

std::vector<LoopCase> LoopCases() {
  const Bytes icmp = Hex(test::kInnerIcmp);
  const Bytes icmp6 = Hex(test::kInnerIcmp6);
  Bytes frame = test::Hex("02 00 00 00 00 0a 02 00 00 00 00 0b 08 00");
  frame.insert(frame.end(), icmp.begin(), icmp.end());
  auto with = [](EncapParams p, TunnelMode mode) {
    p.mode = mode;
    return p;
  };
  auto over_ipv6 = [&](TunnelMode mode) {
    EncapParams p = Gre();
    p.mode = mode;
    p.local = kLocal6;
    p.remote = kRemote6;
    return p;
  };
  EncapParams any_local = Gre();
  any_local.local = OuterAddress();
  EncapParams any_local6 = over_ipv6(TunnelMode::kIp6gre);
  any_local6.local = OuterAddress();
  EncapParams fou = GreKey();
  fou.udp_dport = kGreInUdpPort;
  EncapParams fou_ipip = with(Gre(), TunnelMode::kIpip);
  fou_ipip.udp_dport = 5555;
  return {
      {"Gre", Gre(), icmp},
      {"GreIpv6Inside", Gre(), icmp6},
      {"GreAllOptions", GreCsumKeySeq(), icmp},
      {"GreAnyLocal", any_local, icmp},
      {"Gretap", with(Gre(), TunnelMode::kGretap), frame},
      {"Ipip", Ipip(), icmp},
      {"Sit", with(Gre(), TunnelMode::kSit), icmp6},
      {"FouGre", fou, icmp},
      {"FouIpip", fou_ipip, icmp},
      {"Ip6gre", over_ipv6(TunnelMode::kIp6gre), icmp},
      {"Ip6greAnyLocal", any_local6, icmp6},
      {"Ip6gretap", over_ipv6(TunnelMode::kIp6gretap), frame},
      {"Ip6tnlIpv4Inside", over_ipv6(TunnelMode::kIp6tnl), icmp},
      {"Ip6tnlIpv6Inside", over_ipv6(TunnelMode::kIp6tnl), icmp6},
  };
}

INSTANTIATE_TEST_SUITE_P(Modes, LoopCheckTest, ::testing::ValuesIn(LoopCases()),
                         [](const ::testing::TestParamInfo<LoopCase>& info) {
                           return info.param.name;
                         });

// The next header may also come without the encapsulation-limit option in front of it.
TEST(LoopCheckTest, Ipv6WithoutTheEncapsulationLimitOption) {
  EncapParams p = Gre();
  p.mode = TunnelMode::kIp6gre;
  p.local = kLocal6;
  p.remote = kRemote6;
  Bytes packet(kIpv6HeaderLen + 4, 0);
  packet[0] = 0x60;
  packet[5] = 4;
  packet[6] = kIpProtoGre;
  packet[7] = 64;
  std::copy(kLocal6.bytes.begin(), kLocal6.bytes.end(), packet.begin() + 8);
  std::copy(kRemote6.bytes.begin(), kRemote6.bytes.end(), packet.begin() + 24);
  EXPECT_TRUE(LoopCheck(p).IsOwnOuterPacket(packet.data(), packet.size()));
  packet[6] = kIpProtoIpip;
  EXPECT_FALSE(LoopCheck(p).IsOwnOuterPacket(packet.data(), packet.size()));
}

}  // namespace
}  // namespace tunnelagent::dataplane
