#include "dataplane/packet/ipv4.h"

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

struct WriteCase {
  std::string name;
  Ipv4Header header;
  Bytes expected;
};
void PrintTo(const WriteCase& c, std::ostream* os) { *os << c.name; }

class Ipv4WriteTest : public ::testing::TestWithParam<WriteCase> {};

TEST_P(Ipv4WriteTest, WritesExactBytes) {
  const WriteCase& c = GetParam();
  Bytes out(kIpv4HeaderLen, 0xAA);
  WriteIpv4Header(c.header, out.data());
  EXPECT_EQ(ToHex(out), ToHex(c.expected));
}

Ipv4Header GreOuter() {
  Ipv4Header h;
  h.total_len = 0x3c;
  h.id = 0x0102;
  h.dont_fragment = true;
  h.ttl = 64;
  h.protocol = kIpProtoGre;
  h.src = test::kLocal;
  h.dst = test::kRemote;
  return h;
}

Ipv4Header Fragment() {
  Ipv4Header h = GreOuter();
  h.dont_fragment = false;
  h.more_fragments = true;
  h.fragment_offset = 0x1abc;
  h.tos = 0xb9;
  // Ignored by the writer: it always writes a 20-byte header and computes the checksum.
  h.header_len = 24;
  h.checksum = 0xdead;
  return h;
}

INSTANTIATE_TEST_SUITE_P(
    Headers, Ipv4WriteTest,
    ::testing::Values(
        WriteCase{"GreOuter", GreOuter(), Packet(test::kGre).Truncate(20)},
        WriteCase{
            "FragmentFieldsAndTos", Fragment(),
            Packet(test::kGre).Truncate(20).Set8(1, 0xb9).Set16(6, 0x3abc).FixIpv4Checksum(0)}),
    [](const ::testing::TestParamInfo<WriteCase>& info) { return info.param.name; });

TEST(Ipv4ParseTest, ParsesEveryField) {
  const Bytes p = Packet(test::kGre).Set8(1, 0xb9).Set16(6, 0x3abc).FixIpv4Checksum(0);
  Ipv4Header h;
  DropReason reason = DropReason::kCount;
  ASSERT_TRUE(ParseIpv4Header(p.data(), p.size(), &h, &reason));
  EXPECT_EQ(h.header_len, 20);
  EXPECT_EQ(h.tos, 0xb9);
  EXPECT_EQ(h.total_len, 0x3c);
  EXPECT_EQ(h.id, 0x0102);
  EXPECT_FALSE(h.dont_fragment);
  EXPECT_TRUE(h.more_fragments);
  EXPECT_EQ(h.fragment_offset, 0x1abc);
  EXPECT_EQ(h.ttl, 64);
  EXPECT_EQ(h.protocol, kIpProtoGre);
  EXPECT_EQ(h.checksum, p[10] << 8 | p[11]);
  EXPECT_EQ(h.src, test::kLocal);
  EXPECT_EQ(h.dst, test::kRemote);
  EXPECT_EQ(reason, DropReason::kCount);  // untouched on success
}

TEST(Ipv4ParseTest, WriteThenParseRoundTrips) {
  Ipv4Header in = GreOuter();
  in.tos = 0x02;
  in.total_len = 1500;
  Bytes buf(1500);
  WriteIpv4Header(in, buf.data());
  Ipv4Header out;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(buf.data(), buf.size(), &out, &reason));
  EXPECT_EQ(out.tos, in.tos);
  EXPECT_EQ(out.total_len, in.total_len);
  EXPECT_EQ(out.id, in.id);
  EXPECT_EQ(out.dont_fragment, in.dont_fragment);
  EXPECT_EQ(out.ttl, in.ttl);
  EXPECT_EQ(out.src, in.src);
  EXPECT_EQ(out.dst, in.dst);
  EXPECT_EQ(test::RefChecksum(buf.data(), kIpv4HeaderLen), 0);
}

struct ParseCase {
  std::string name;
  Bytes packet;
  bool ok;
  DropReason reason;       // when !ok
  uint8_t header_len = 0;  // when ok
  uint16_t total_len = 0;  // when ok
};
void PrintTo(const ParseCase& c, std::ostream* os) { *os << c.name; }

class Ipv4ParseTableTest : public ::testing::TestWithParam<ParseCase> {};

TEST_P(Ipv4ParseTableTest, Validates) {
  const ParseCase& c = GetParam();
  Ipv4Header h;
  DropReason reason = DropReason::kCount;
  ASSERT_EQ(ParseIpv4Header(c.packet.data(), c.packet.size(), &h, &reason), c.ok);
  if (c.ok) {
    EXPECT_EQ(h.header_len, c.header_len);
    EXPECT_EQ(h.total_len, c.total_len);
  } else {
    EXPECT_EQ(reason, c.reason) << DropReasonName(reason);
  }
}

const DropReason kTrunc = DropReason::kTruncated;
const DropReason kBad = DropReason::kBadOuterHeader;

INSTANTIATE_TEST_SUITE_P(
    Table, Ipv4ParseTableTest,
    ::testing::Values(
        ParseCase{"Valid", Packet(test::kGre), true, {}, 20, 0x3c},
        // Link-layer padding beyond total_len is not an error; total_len stays authoritative.
        ParseCase{"TrailingBytes", Packet(test::kGre).Append({0, 0, 0, 0}), true, {}, 20, 0x3c},
        ParseCase{
            "WithOptions",
            Packet(test::kGre).Truncate(20).Set8(0, 0x46).Append({1, 1, 1, 0}).FixIpv4TotalLen(0),
            true,
            {},
            24,
            24},
        ParseCase{
            "HeaderOnly", Packet(test::kGre).Truncate(20).FixIpv4TotalLen(0), true, {}, 20, 20},
        ParseCase{"Empty", Bytes{}, false, kTrunc},
        ParseCase{"NineteenBytes", Packet(test::kGre).Truncate(19), false, kTrunc},
        ParseCase{"Version6", Packet(test::kGre).Set8(0, 0x65), false, kBad},
        ParseCase{"Version0", Packet(test::kGre).Set8(0, 0x05), false, kBad},
        ParseCase{"IhlFour", Packet(test::kGre).Set8(0, 0x44), false, kBad},
        ParseCase{"IhlZero", Packet(test::kGre).Set8(0, 0x40), false, kBad},
        ParseCase{"OptionsBeyondData", Packet(test::kGre).Truncate(20).Set8(0, 0x46), false,
                  kTrunc},
        ParseCase{"MaximumIhlBeyondData", Packet(test::kGre).Set8(0, 0x4f).Truncate(40), false,
                  kTrunc},
        ParseCase{"TotalLenShorterThanHeader", Packet(test::kGre).Set16(2, 19), false, kBad},
        ParseCase{"TotalLenZero", Packet(test::kGre).Set16(2, 0), false, kBad},
        ParseCase{"TotalLenBeyondData", Packet(test::kGre).Truncate(0x3b), false, kTrunc},
        ParseCase{"TotalLenMaximum", Packet(test::kGre).Set16(2, 0xffff), false, kTrunc}),
    [](const ::testing::TestParamInfo<ParseCase>& info) { return info.param.name; });

TEST(Ipv4Test, IpVersion) {
  const uint8_t v4[] = {0x45};
  const uint8_t v6[] = {0x60};
  EXPECT_EQ(IpVersion(v4, 1), 4);
  EXPECT_EQ(IpVersion(v6, 1), 6);
  EXPECT_EQ(IpVersion(v4, 0), 0);
}

}  // namespace
}  // namespace tunnelagent::dataplane
