#include "dataplane/packet/checksum.h"

#include <ostream>
#include <string>

#include "gtest/gtest.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane {
namespace {

using test::Bytes;
using test::Hex;

struct ChecksumCase {
  std::string name;
  Bytes data;
  uint16_t checksum;
};
void PrintTo(const ChecksumCase& c, std::ostream* os) { *os << c.name; }

class ChecksumVectorTest : public ::testing::TestWithParam<ChecksumCase> {};

TEST_P(ChecksumVectorTest, MatchesKnownValue) {
  const ChecksumCase& c = GetParam();
  EXPECT_EQ(InternetChecksum(c.data.data(), c.data.size()), c.checksum);
  EXPECT_EQ(ChecksumFinish(ChecksumAdd(c.data.data(), c.data.size())), c.checksum);
}

INSTANTIATE_TEST_SUITE_P(
    Vectors, ChecksumVectorTest,
    ::testing::Values(
        // RFC 1071 section 3: the words sum to 0x2ddf0, fold to 0xddf2, complement 0x220d.
        ChecksumCase{"Rfc1071Example", Hex("00 01 f2 03 f4 f5 f6 f7"), 0x220d},
        // The IPv4 header example of RFC 1071's common illustration (checksum field zeroed).
        ChecksumCase{"Ipv4HeaderZeroedField",
                     Hex("45 00 00 73 00 00 40 00 40 11 00 00 c0 a8 00 01 c0 a8 00 c7"), 0xb861},
        ChecksumCase{"Ipv4HeaderWithItsChecksumSumsToZero",
                     Hex("45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7"), 0x0000},
        ChecksumCase{"Empty", Bytes{}, 0xffff},
        // An odd tail is padded with a zero byte on the right: 0xab00.
        ChecksumCase{"OddLength", Hex("ab"), 0x54ff},
        ChecksumCase{"OddLengthAfterWords", Hex("00 01 f2 03 f4"), 0x19fa},
        ChecksumCase{"AllOnes", Hex("ff ff ff ff"), 0x0000},
        ChecksumCase{"CarryWrapsAround", Hex("ff ff 00 01"), 0xfffe}),
    [](const ::testing::TestParamInfo<ChecksumCase>& info) { return info.param.name; });

TEST(ChecksumTest, AddChainsOverEvenSplits) {
  const Bytes data = Hex("00 01 f2 03 f4 f5 f6 f7 12");
  for (size_t split = 0; split <= data.size(); split += 2) {
    const uint32_t sum =
        ChecksumAdd(data.data() + split, data.size() - split, ChecksumAdd(data.data(), split));
    EXPECT_EQ(ChecksumFinish(sum), InternetChecksum(data.data(), data.size())) << split;
  }
}

TEST(ChecksumTest, FinishFoldsCarries) {
  EXPECT_EQ(ChecksumFinish(0x0002ddf0), 0x220d);
  EXPECT_EQ(ChecksumFinish(0xffffffff), 0x0000);
  EXPECT_EQ(ChecksumFinish(0), 0xffff);
}

// A maximum-size packet of 0xff bytes stresses carry handling far beyond 16 bits.
TEST(ChecksumTest, LargeBuffersMatchReference) {
  for (size_t len : {65535u, 65536u, 1501u}) {
    Bytes ones(len, 0xff);
    EXPECT_EQ(InternetChecksum(ones.data(), ones.size()),
              test::RefChecksum(ones.data(), ones.size()))
        << len;
    Bytes pattern(len);
    for (size_t i = 0; i < len; ++i) pattern[i] = static_cast<uint8_t>(i * 131 + 7);
    EXPECT_EQ(InternetChecksum(pattern.data(), pattern.size()),
              test::RefChecksum(pattern.data(), pattern.size()))
        << len;
  }
}

TEST(ChecksumTest, UnalignedStartGivesSameResult) {
  Bytes buf = Hex("00 00 01 f2 03 f4 f5 f6 f7");
  EXPECT_EQ(InternetChecksum(buf.data() + 1, buf.size() - 1), 0x220d);
}

// The bulk loop takes 32 and 8 bytes at a time and the tail 2 and 1: every length from 0 to
// past two bulk rounds, at every start alignment, with a running sum carried in, against the
// word-by-word reference.
TEST(ChecksumTest, EveryLengthAndAlignmentMatchesReference) {
  Bytes buf(160);
  uint32_t seed = 12345;
  for (uint8_t& b : buf) {
    seed = seed * 1103515245u + 12345u;
    b = static_cast<uint8_t>(seed >> 16);
  }
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t len = 0; offset + len <= 80; ++len) {
      const uint8_t* data = buf.data() + offset;
      ASSERT_EQ(InternetChecksum(data, len), test::RefChecksum(data, len)) << offset << "+" << len;
      // A carried-in sum is a prefix: its 16-bit words come first (the prefix must be even).
      const uint32_t prefix = ChecksumAdd(buf.data() + 100, 10);
      Bytes joined(buf.begin() + 100, buf.begin() + 110);
      joined.insert(joined.end(), data, data + len);
      ASSERT_EQ(ChecksumFinish(ChecksumAdd(data, len, prefix)),
                test::RefChecksum(joined.data(), joined.size()))
          << offset << "+" << len;
    }
  }
}

// A carried-in sum near the top of 32 bits must wrap, not overflow.
TEST(ChecksumTest, LargeCarriedInSumWraps) {
  const Bytes ones(64, 0xff);
  EXPECT_EQ(ChecksumFinish(ChecksumAdd(ones.data(), ones.size(), 0xfffffffeu)),
            ChecksumFinish(0xfffffffeu));
}

}  // namespace
}  // namespace tunnelagent::dataplane
