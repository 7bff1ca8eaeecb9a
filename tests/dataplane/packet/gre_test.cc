#include "dataplane/packet/gre.h"

#include <ostream>
#include <string>

#include "gtest/gtest.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane {
namespace {

using test::Bytes;
using test::Hex;
using test::Packet;
using test::ToHex;

// The golden GRE packets start after their 20-byte outer IPv4 header.
constexpr size_t kGreOffset = 20;

Bytes GreOf(const char* golden) {
  const Bytes all = Hex(golden);
  return Bytes(all.begin() + kGreOffset, all.end());
}

GreHeader MakeHeader(bool csum, bool key, bool seq, uint16_t proto = kEtherTypeIpv4) {
  GreHeader h;
  h.has_checksum = csum;
  h.has_key = key;
  h.key = key ? (csum ? 42 : 0x0a0b0c0d) : 0;
  h.has_sequence = seq;
  h.sequence = seq ? 7 : 0;
  h.protocol = proto;
  return h;
}

struct GreCase {
  std::string name;
  GreHeader header;
  Bytes packet;  // GRE header followed by the payload
  size_t header_len;
};
void PrintTo(const GreCase& c, std::ostream* os) { *os << c.name; }

std::vector<GreCase> GoldenCases() {
  return {
      {"Plain", MakeHeader(false, false, false), GreOf(test::kGre), 4},
      {"Key", MakeHeader(false, true, false), GreOf(test::kGreKey), 8},
      {"Checksum", MakeHeader(true, false, false), GreOf(test::kGreCsum), 8},
      {"ChecksumKeySequence", MakeHeader(true, true, true), GreOf(test::kGreCsumKeySeq), 16},
      {"Ipv6Payload", MakeHeader(false, false, false, kEtherTypeIpv6), GreOf(test::kGreIpv6), 4},
  };
}

class GreGoldenTest : public ::testing::TestWithParam<GreCase> {};

TEST_P(GreGoldenTest, WritesExactBytes) {
  const GreCase& c = GetParam();
  EXPECT_EQ(GreHeaderLen(c.header), c.header_len);
  // Payload in place, header area filled with garbage that must all be overwritten.
  Bytes buf = c.packet;
  std::fill(buf.begin(), buf.begin() + c.header_len, 0xAA);
  EXPECT_EQ(WriteGreHeader(c.header, buf.data(), buf.size() - c.header_len), c.header_len);
  EXPECT_EQ(ToHex(buf), ToHex(c.packet));
}

TEST_P(GreGoldenTest, ParsesFields) {
  const GreCase& c = GetParam();
  GreHeader h;
  size_t header_len = 0;
  DropReason reason = DropReason::kCount;
  ASSERT_TRUE(ParseGreHeader(c.packet.data(), c.packet.size(), &h, &header_len, &reason))
      << DropReasonName(reason);
  EXPECT_EQ(header_len, c.header_len);
  EXPECT_EQ(h.has_checksum, c.header.has_checksum);
  EXPECT_EQ(h.has_key, c.header.has_key);
  EXPECT_EQ(h.key, c.header.key);
  EXPECT_EQ(h.has_sequence, c.header.has_sequence);
  EXPECT_EQ(h.sequence, c.header.sequence);
  EXPECT_EQ(h.protocol, c.header.protocol);
  if (h.has_checksum) {
    EXPECT_EQ(h.checksum, c.packet[4] << 8 | c.packet[5]);
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, GreGoldenTest, ::testing::ValuesIn(GoldenCases()),
                         [](const ::testing::TestParamInfo<GreCase>& info) {
                           return info.param.name;
                         });

TEST(GreTest, ChecksumMatchesIndependentComputation) {
  // Odd payload length: the checksum pads the last byte, as RFC 1071 does.
  Bytes buf = {0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe};
  GreHeader h = MakeHeader(true, false, false);
  ASSERT_EQ(WriteGreHeader(h, buf.data(), 3), 8u);
  Bytes zeroed = buf;
  zeroed[4] = zeroed[5] = 0;
  EXPECT_EQ(buf[4] << 8 | buf[5], test::RefChecksum(zeroed.data(), zeroed.size()));
  EXPECT_EQ(test::RefChecksum(buf.data(), buf.size()), 0);
}

struct RejectCase {
  std::string name;
  Bytes packet;
  DropReason reason;
};
void PrintTo(const RejectCase& c, std::ostream* os) { *os << c.name; }

class GreRejectTest : public ::testing::TestWithParam<RejectCase> {};

TEST_P(GreRejectTest, Rejects) {
  const RejectCase& c = GetParam();
  GreHeader h;
  size_t header_len = 0;
  DropReason reason = DropReason::kCount;
  EXPECT_FALSE(ParseGreHeader(c.packet.data(), c.packet.size(), &h, &header_len, &reason));
  EXPECT_EQ(reason, c.reason) << DropReasonName(reason);
}

const DropReason kTrunc = DropReason::kTruncated;

INSTANTIATE_TEST_SUITE_P(
    Table, GreRejectTest,
    ::testing::Values(
        RejectCase{"Empty", Bytes{}, kTrunc},
        RejectCase{"BaseHeaderCutAt2", Packet(GreOf(test::kGre)).Truncate(2), kTrunc},
        RejectCase{"BaseHeaderCutAt3", Packet(GreOf(test::kGre)).Truncate(3), kTrunc},
        RejectCase{"Version1", Packet(GreOf(test::kGre)).Set16(0, 0x0001), DropReason::kGreVersion},
        RejectCase{"Version7", Packet(GreOf(test::kGre)).Set16(0, 0x0007), DropReason::kGreVersion},
        // PPTP's enhanced GRE (version 1 with key and ack bits).
        RejectCase{"Pptp", Packet(GreOf(test::kGreKey)).Set16(0, 0x3081).Set16(2, 0x880b),
                   DropReason::kGreVersion},
        RejectCase{"Routing", Packet(GreOf(test::kGre)).Set16(0, 0x4000), DropReason::kGreRouting},
        RejectCase{"RoutingWithChecksum", Packet(GreOf(test::kGreCsum)).Set16(0, 0xc000),
                   DropReason::kGreRouting},
        // Only the base header: the key word the flags announce is missing.
        RejectCase{"KeyCutAt4", Packet(GreOf(test::kGreKey)).Truncate(4), kTrunc},
        RejectCase{"KeyCutAt7", Packet(GreOf(test::kGreKey)).Truncate(7), kTrunc},
        RejectCase{"AllOptionsCutAt4", Packet(GreOf(test::kGreCsumKeySeq)).Truncate(4), kTrunc},
        RejectCase{"AllOptionsCutAt8", Packet(GreOf(test::kGreCsumKeySeq)).Truncate(8), kTrunc},
        RejectCase{"AllOptionsCutAt12", Packet(GreOf(test::kGreCsumKeySeq)).Truncate(12), kTrunc},
        RejectCase{"AllOptionsCutAt15", Packet(GreOf(test::kGreCsumKeySeq)).Truncate(15), kTrunc},
        RejectCase{"SequenceCutAt6", Packet(GreOf(test::kGre)).Set16(0, 0x1000).Truncate(6),
                   kTrunc},
        RejectCase{"ChecksumFieldWrong", Packet(GreOf(test::kGreCsum)).Set16(4, 0x77fe),
                   DropReason::kGreChecksum},
        RejectCase{"PayloadCorrupted", Packet(GreOf(test::kGreCsum)).Set8(30, 0x00),
                   DropReason::kGreChecksum},
        RejectCase{"KeyCorruptedUnderChecksum", Packet(GreOf(test::kGreCsumKeySeq)).Set8(11, 43),
                   DropReason::kGreChecksum},
        // Payload cut short: the checksum covers what arrived, so it no longer verifies.
        RejectCase{"ChecksummedPayloadTruncated", Packet(GreOf(test::kGreCsum)).Truncate(40),
                   DropReason::kGreChecksum}),
    [](const ::testing::TestParamInfo<RejectCase>& info) { return info.param.name; });

TEST(GreTest, IgnoresReservedFlagBitsLikeTheKernel) {
  // Strict source route (0x0800) and recursion control (0x0700) are RFC 1701 leftovers.
  const Bytes p = Packet(GreOf(test::kGre)).Set16(0, 0x0f00);
  GreHeader h;
  size_t header_len = 0;
  DropReason reason;
  ASSERT_TRUE(ParseGreHeader(p.data(), p.size(), &h, &header_len, &reason));
  EXPECT_EQ(header_len, 4u);
  EXPECT_FALSE(h.has_checksum || h.has_key || h.has_sequence);
}

TEST(GreTest, HeaderWithoutPayloadParses) {
  const Bytes p = Packet(GreOf(test::kGreKey)).Truncate(8);
  GreHeader h;
  size_t header_len = 0;
  DropReason reason;
  ASSERT_TRUE(ParseGreHeader(p.data(), p.size(), &h, &header_len, &reason));
  EXPECT_EQ(header_len, 8u);
  EXPECT_EQ(h.key, 0x0a0b0c0du);
}

TEST(GreTest, HeaderLenCountsEachOption) {
  EXPECT_EQ(GreHeaderLen(MakeHeader(false, false, false)), 4u);
  EXPECT_EQ(GreHeaderLen(MakeHeader(true, false, false)), 8u);
  EXPECT_EQ(GreHeaderLen(MakeHeader(false, true, false)), 8u);
  EXPECT_EQ(GreHeaderLen(MakeHeader(false, false, true)), 8u);
  EXPECT_EQ(GreHeaderLen(MakeHeader(true, true, true)), kGreMaxHeaderLen);
}

}  // namespace
}  // namespace tunnelagent::dataplane
