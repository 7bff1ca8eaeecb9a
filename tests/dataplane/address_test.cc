#include "dataplane/address.h"

#include <string>

#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

using Family = IpAddress::Family;

struct ParseCase {
  std::string text;
  Family family;
  std::string canonical;
};

class AddressParseTest : public ::testing::TestWithParam<ParseCase> {};

TEST_P(AddressParseTest, ParsesAndPrintsCanonically) {
  const ParseCase& c = GetParam();
  absl::StatusOr<IpAddress> a = IpAddress::Parse(c.text);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->family(), c.family);
  EXPECT_EQ(a->ToString(), c.canonical);
  // The canonical text parses back to the same address.
  EXPECT_EQ(*IpAddress::Parse(a->ToString()), *a);
}

INSTANTIATE_TEST_SUITE_P(
    Valid, AddressParseTest,
    ::testing::Values(ParseCase{"198.18.0.1", Family::kV4, "198.18.0.1"},
                      ParseCase{"0.0.0.0", Family::kV4, "0.0.0.0"},
                      ParseCase{"255.255.255.255", Family::kV4, "255.255.255.255"},
                      ParseCase{"::", Family::kV6, "::"}, ParseCase{"::1", Family::kV6, "::1"},
                      ParseCase{"2001:DB8:0:0:0:0:0:1", Family::kV6, "2001:db8::1"},
                      ParseCase{"2001:db8:0:0:1:0:0:1", Family::kV6, "2001:db8::1:0:0:1"},
                      ParseCase{"fe80::0001", Family::kV6, "fe80::1"},
                      ParseCase{"::ffff:192.0.2.1", Family::kV6, "::ffff:192.0.2.1"}));

class AddressRejectTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AddressRejectTest, IsInvalidArgument) {
  absl::StatusOr<IpAddress> a = IpAddress::Parse(GetParam());
  ASSERT_FALSE(a.ok()) << a->ToString();
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Invalid, AddressRejectTest,
                         ::testing::Values("", " ", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4",
                                           " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "01.2.3.4",
                                           "0x1.2.3.4", "1.2.3.4/32", "localhost", "::1::2",
                                           "2001:db8::g", "fe80::1%eth0", "[::1]",
                                           "1:2:3:4:5:6:7:8:9", std::string("1.2.3.4\0junk", 12),
                                           std::string(100, '1')));

TEST(AddressTest, V4UsesHostOrder) {
  const IpAddress a = IpAddress::V4(0xC6120001);
  EXPECT_TRUE(a.is_v4());
  EXPECT_FALSE(a.is_v6());
  EXPECT_EQ(a.v4(), 0xC6120001u);
  EXPECT_EQ(a.ToString(), "198.18.0.1");
  EXPECT_EQ(a.bytes()[0], 198);
  EXPECT_EQ(a.bytes()[3], 1);
  EXPECT_EQ(a.bit_length(), 32);
  EXPECT_EQ(a, *IpAddress::Parse("198.18.0.1"));
}

TEST(AddressTest, V6KeepsNetworkOrderBytes) {
  std::array<uint8_t, 16> bytes{};
  bytes[0] = 0x20;
  bytes[1] = 0x01;
  bytes[2] = 0x0d;
  bytes[3] = 0xb8;
  bytes[15] = 0x01;
  const IpAddress a = IpAddress::V6(bytes);
  EXPECT_TRUE(a.is_v6());
  EXPECT_EQ(a.bit_length(), 128);
  EXPECT_EQ(a.ToString(), "2001:db8::1");
  EXPECT_EQ(a, *IpAddress::Parse("2001:db8::1"));
}

TEST(AddressTest, DefaultIsFamilyNone) {
  const IpAddress a;
  EXPECT_EQ(a.family(), Family::kNone);
  EXPECT_EQ(a.bit_length(), 0);
  EXPECT_EQ(a.ToString(), "");
  EXPECT_TRUE(a.is_unspecified());
  EXPECT_FALSE(a.is_multicast());
  // Same bytes, different family: 0.0.0.0 and :: are not "no address".
  EXPECT_NE(a, *IpAddress::Parse("0.0.0.0"));
  EXPECT_NE(*IpAddress::Parse("0.0.0.0"), *IpAddress::Parse("::"));
}

struct PropertyCase {
  std::string text;
  bool unspecified;
  bool multicast;
};

class AddressPropertyTest : public ::testing::TestWithParam<PropertyCase> {};

TEST_P(AddressPropertyTest, Classifies) {
  const PropertyCase& c = GetParam();
  const IpAddress a = *IpAddress::Parse(c.text);
  EXPECT_EQ(a.is_unspecified(), c.unspecified);
  EXPECT_EQ(a.is_multicast(), c.multicast);
}

INSTANTIATE_TEST_SUITE_P(
    Table, AddressPropertyTest,
    ::testing::Values(PropertyCase{"0.0.0.0", true, false}, PropertyCase{"0.0.0.1", false, false},
                      PropertyCase{"::", true, false}, PropertyCase{"::1", false, false},
                      PropertyCase{"224.0.0.1", false, true},
                      PropertyCase{"239.255.255.255", false, true},
                      PropertyCase{"223.255.255.255", false, false},
                      PropertyCase{"240.0.0.1", false, false}, PropertyCase{"ff02::1", false, true},
                      PropertyCase{"fe80::1", false, false},
                      // IPv4-mapped multicast is still an IPv6 address.
                      PropertyCase{"::ffff:224.0.0.1", false, false}));

// ---- IpPrefix -------------------------------------------------------------------------------

struct PrefixCase {
  std::string text;
  std::string address;
  int length;
  bool is_network;
  std::string network;
};

class PrefixParseTest : public ::testing::TestWithParam<PrefixCase> {};

TEST_P(PrefixParseTest, Parses) {
  const PrefixCase& c = GetParam();
  absl::StatusOr<IpPrefix> p = IpPrefix::Parse(c.text);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->address().ToString(), c.address);
  EXPECT_EQ(p->length(), c.length);
  EXPECT_EQ(p->is_network(), c.is_network);
  EXPECT_EQ(p->Network().ToString(), c.network);
  EXPECT_TRUE(p->Network().is_network());
  EXPECT_EQ(p->ToString(), c.address + "/" + std::to_string(c.length));
}

INSTANTIATE_TEST_SUITE_P(
    Valid, PrefixParseTest,
    ::testing::Values(PrefixCase{"10.0.0.0/24", "10.0.0.0", 24, true, "10.0.0.0/24"},
                      PrefixCase{"10.0.0.1/24", "10.0.0.1", 24, false, "10.0.0.0/24"},
                      PrefixCase{"10.0.0.1", "10.0.0.1", 32, true, "10.0.0.1/32"},
                      PrefixCase{"0.0.0.0/0", "0.0.0.0", 0, true, "0.0.0.0/0"},
                      PrefixCase{"192.0.2.255/0", "192.0.2.255", 0, false, "0.0.0.0/0"},
                      PrefixCase{"172.31.255.255/12", "172.31.255.255", 12, false, "172.16.0.0/12"},
                      PrefixCase{"198.18.0.129/25", "198.18.0.129", 25, false, "198.18.0.128/25"},
                      PrefixCase{"2001:db8::/32", "2001:db8::", 32, true, "2001:db8::/32"},
                      PrefixCase{"2001:db8::1/64", "2001:db8::1", 64, false, "2001:db8::/64"},
                      PrefixCase{"2001:db8:ffff::/35", "2001:db8:ffff::", 35, false,
                                 "2001:db8:e000::/35"},
                      PrefixCase{"2001:db8::1", "2001:db8::1", 128, true, "2001:db8::1/128"},
                      PrefixCase{"::/0", "::", 0, true, "::/0"},
                      PrefixCase{"fe80::1/127", "fe80::1", 127, false, "fe80::/127"}));

class PrefixRejectTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixRejectTest, IsInvalidArgument) {
  absl::StatusOr<IpPrefix> p = IpPrefix::Parse(GetParam());
  ASSERT_FALSE(p.ok()) << p->ToString();
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Invalid, PrefixRejectTest,
                         ::testing::Values("", "/24", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1",
                                           "10.0.0.0/+8", "10.0.0.0/ 8", "10.0.0.0/8 ",
                                           " 10.0.0.0/8", "10.0.0.0/08", "10.0.0.0/0x8",
                                           "10.0.0.0/1a", "10.0.0.0/24/1", "10.0.0.0//24",
                                           "10.0.0.0/4294967304", "::/129", "2001:db8::/1280",
                                           "10.0.0/8", "10.0.0.0/255.0.0.0", "not-an-address/8"));

struct OverlapCase {
  std::string a;
  std::string b;
  bool overlaps;
};

class PrefixOverlapTest : public ::testing::TestWithParam<OverlapCase> {};

TEST_P(PrefixOverlapTest, IsSymmetric) {
  const OverlapCase& c = GetParam();
  const IpPrefix a = *IpPrefix::Parse(c.a);
  const IpPrefix b = *IpPrefix::Parse(c.b);
  EXPECT_EQ(a.Overlaps(b), c.overlaps);
  EXPECT_EQ(b.Overlaps(a), c.overlaps);
}

INSTANTIATE_TEST_SUITE_P(
    Table, PrefixOverlapTest,
    ::testing::Values(OverlapCase{"10.0.0.0/8", "10.1.0.0/16", true},
                      OverlapCase{"10.0.0.0/24", "10.0.0.0/24", true},
                      OverlapCase{"10.0.0.0/24", "10.0.1.0/24", false},
                      OverlapCase{"10.0.0.0/25", "10.0.0.128/25", false},
                      OverlapCase{"0.0.0.0/0", "203.0.113.7/32", true},
                      OverlapCase{"10.0.0.1", "10.0.0.1", true},
                      OverlapCase{"10.0.0.1", "10.0.0.2", false},
                      // Host bits of an interface address do not hide the overlap.
                      OverlapCase{"10.0.0.1/24", "10.0.0.200/32", true},
                      OverlapCase{"10.0.0.1/23", "10.0.1.5/24", true},
                      OverlapCase{"0.0.0.0/0", "::/0", false},
                      OverlapCase{"::ffff:10.0.0.0/104", "10.0.0.0/8", false},
                      OverlapCase{"::/0", "2001:db8::/32", true},
                      OverlapCase{"2001:db8::/32", "2001:db9::/32", false},
                      OverlapCase{"2001:db8::/31", "2001:db9::/32", true},
                      OverlapCase{"2001:db8::1/128", "2001:db8::/127", true},
                      OverlapCase{"2001:db8::2/128", "2001:db8::/127", false}));

TEST(PrefixTest, DefaultPrefixOverlapsNothing) {
  const IpPrefix none;
  EXPECT_FALSE(none.Overlaps(none));
  EXPECT_FALSE(none.Overlaps(*IpPrefix::Parse("0.0.0.0/0")));
  EXPECT_EQ(none.ToString(), "");
}

TEST(PrefixTest, Equality) {
  EXPECT_EQ(*IpPrefix::Parse("10.0.0.1"), IpPrefix(IpAddress::V4(0x0A000001), 32));
  EXPECT_FALSE(*IpPrefix::Parse("10.0.0.1/24") == *IpPrefix::Parse("10.0.0.0/24"));
  EXPECT_FALSE(*IpPrefix::Parse("10.0.0.0/24") == *IpPrefix::Parse("10.0.0.0/25"));
}

}  // namespace
}  // namespace tunnelagent::dataplane
