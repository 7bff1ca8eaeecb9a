#include "agent/validation.h"

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using dataplane::TunnelSpec;
using ::testing::StartsWith;

IpAddress A(const std::string& text) {
  absl::StatusOr<IpAddress> a = IpAddress::Parse(text);
  EXPECT_TRUE(a.ok()) << text;
  return a.value_or(IpAddress());
}

IpPrefix P(const std::string& text) {
  absl::StatusOr<IpPrefix> p = IpPrefix::Parse(text);
  EXPECT_TRUE(p.ok()) << text;
  return p.value_or(IpPrefix());
}

// A valid GRE tunnel; each case changes one thing.
TunnelSpec Gre() {
  TunnelSpec s;
  s.name = "gre1";
  s.mode = TunnelMode::kGre;
  s.remote = A("203.0.113.7");
  s.addresses = {P("10.0.0.1/30"), P("fd00::1/64")};
  s.routes = {P("10.2.0.0/16"), P("fd01::/48")};
  return s;
}

TunnelSpec Ipip() {
  TunnelSpec s;
  s.name = "ipip1";
  s.mode = TunnelMode::kIpip;
  s.remote = A("203.0.113.8");
  s.addresses = {P("10.1.0.1/30")};
  s.routes = {P("10.3.0.0/16")};
  return s;
}

struct Case {
  std::string test_name;
  std::function<TunnelSpec()> make;
  absl::StatusCode want_code;
  std::string want_prefix;  // the start of the message
};

struct GoodCase {
  std::string test_name;
  std::function<TunnelSpec()> make;
};

template <typename F>
std::function<TunnelSpec()> With(TunnelSpec (*base)(), F change) {
  return [base, change] {
    TunnelSpec s = base();
    change(s);
    return s;
  };
}

template <typename C>
std::string CaseName(const ::testing::TestParamInfo<C>& info) {
  return info.param.test_name;
}

class ValidSpecTest : public ::testing::TestWithParam<GoodCase> {};

TEST_P(ValidSpecTest, Passes) {
  const absl::Status s = ValidateSpec(GetParam().make());
  EXPECT_TRUE(s.ok()) << s;
}

// The boundaries of each rule, from the accepting side.
INSTANTIATE_TEST_SUITE_P(
    Table, ValidSpecTest,
    ::testing::Values(
        GoodCase{"Gre", Gre}, GoodCase{"Ipip", Ipip},
        GoodCase{"GreNoAddressesOrRoutes", With(Gre,
                                                [](TunnelSpec& s) {
                                                  s.addresses.clear();
                                                  s.routes.clear();
                                                })},
        GoodCase{"LocalV4", With(Gre, [](TunnelSpec& s) { s.local = A("198.51.100.1"); })},
        GoodCase{"LocalZeroIsAny", With(Gre, [](TunnelSpec& s) { s.local = A("0.0.0.0"); })},
        GoodCase{"GreKeyZero", With(Gre, [](TunnelSpec& s) { s.key = 0; })},
        GoodCase{"GreKeyMax", With(Gre, [](TunnelSpec& s) { s.key = 0xFFFFFFFF; })},
        GoodCase{"MtuMin", With(Gre, [](TunnelSpec& s) { s.mtu = 68; })},
        GoodCase{"GreMtuMax", With(Gre, [](TunnelSpec& s) { s.mtu = 65535 - 24; })},
        GoodCase{"GreKeyMtuMax", With(Gre,
                                      [](TunnelSpec& s) {
                                        s.key = 1;
                                        s.mtu = 65535 - 28;
                                      })},
        GoodCase{"IpipMtuMax", With(Ipip, [](TunnelSpec& s) { s.mtu = 65535 - 20; })},
        GoodCase{"Name15Bytes", With(Gre, [](TunnelSpec& s) { s.name = "abcdefghijklmno"; })},
        GoodCase{"NamePunctuation", With(Gre, [](TunnelSpec& s) { s.name = "gre-1_a.b@c"; })},
        GoodCase{"NameOneChar", With(Gre, [](TunnelSpec& s) { s.name = "g"; })},
        GoodCase{"DefaultRoutes", With(Gre,
                                       [](TunnelSpec& s) {
                                         s.routes = {P("0.0.0.0/0"), P("::/0")};
                                       })},
        GoodCase{"HostRoute", With(Gre, [](TunnelSpec& s) { s.routes = {P("10.9.9.9/32")}; })},
        GoodCase{"AddressHostBitsAllowed",
                 With(Gre, [](TunnelSpec& s) { s.addresses = {P("10.0.0.1/8")}; })},
        GoodCase{"SameAddressDifferentFamily",
                 With(Gre,
                      [](TunnelSpec& s) {
                        s.addresses = {P("10.0.0.1/30"), P("::a00:1/64")};
                      })},
        GoodCase{"OverlappingRoutesDifferentLength",
                 With(Gre,
                      [](TunnelSpec& s) {
                        s.routes = {P("10.0.0.0/8"), P("10.0.0.0/16")};
                      })}),
    CaseName<GoodCase>);

class InvalidSpecTest : public ::testing::TestWithParam<Case> {};

TEST_P(InvalidSpecTest, FailsNamingTheField) {
  const absl::Status s = ValidateSpec(GetParam().make());
  EXPECT_EQ(s.code(), GetParam().want_code) << s;
  EXPECT_THAT(std::string(s.message()), StartsWith(GetParam().want_prefix));
}

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kUnimplemented = absl::StatusCode::kUnimplemented;

INSTANTIATE_TEST_SUITE_P(
    Names, InvalidSpecTest,
    ::testing::Values(
        Case{"Empty", With(Gre, [](TunnelSpec& s) { s.name = ""; }), kInvalid,
             "tunnel.name: required"},
        Case{"Long", With(Gre, [](TunnelSpec& s) { s.name = "abcdefghijklmnop"; }), kInvalid,
             "tunnel.name: "},
        Case{"Dot", With(Gre, [](TunnelSpec& s) { s.name = "."; }), kInvalid, "tunnel.name: "},
        Case{"DotDot", With(Gre, [](TunnelSpec& s) { s.name = ".."; }), kInvalid, "tunnel.name: "},
        Case{"Slash", With(Gre, [](TunnelSpec& s) { s.name = "gre/1"; }), kInvalid,
             "tunnel.name: "},
        Case{"Colon", With(Gre, [](TunnelSpec& s) { s.name = "gre:1"; }), kInvalid,
             "tunnel.name: "},
        Case{"Space", With(Gre, [](TunnelSpec& s) { s.name = "gre 1"; }), kInvalid,
             "tunnel.name: "},
        Case{"Tab", With(Gre, [](TunnelSpec& s) { s.name = "gre\t1"; }), kInvalid, "tunnel.name: "},
        Case{"Nul", With(Gre, [](TunnelSpec& s) { s.name = std::string("gre\0001", 5); }), kInvalid,
             "tunnel.name: "},
        Case{"Del", With(Gre, [](TunnelSpec& s) { s.name = "gre\x7f"; }), kInvalid,
             "tunnel.name: "},
        Case{"NonAscii", With(Gre, [](TunnelSpec& s) { s.name = "gr\xc3\xa9"; }), kInvalid,
             "tunnel.name: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    Modes, InvalidSpecTest,
    ::testing::Values(Case{"Gretap", With(Gre, [](TunnelSpec& s) { s.mode = TunnelMode::kGretap; }),
                           kUnimplemented,
                           "tunnel.mode: gretap is not implemented yet (gre and ipip are)"},
                      Case{"Sit", With(Gre, [](TunnelSpec& s) { s.mode = TunnelMode::kSit; }),
                           kUnimplemented, "tunnel.mode: sit "},
                      Case{"Ip6gre", With(Gre, [](TunnelSpec& s) { s.mode = TunnelMode::kIp6gre; }),
                           kUnimplemented, "tunnel.mode: ip6gre "},
                      Case{"Ip6gretap",
                           With(Gre, [](TunnelSpec& s) { s.mode = TunnelMode::kIp6gretap; }),
                           kUnimplemented, "tunnel.mode: ip6gretap "},
                      Case{"Ip6tnl", With(Gre, [](TunnelSpec& s) { s.mode = TunnelMode::kIp6tnl; }),
                           kUnimplemented, "tunnel.mode: ip6tnl "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    Endpoints, InvalidSpecTest,
    ::testing::Values(
        Case{"RemoteMissing", With(Gre, [](TunnelSpec& s) { s.remote = IpAddress(); }), kInvalid,
             "tunnel.remote: required"},
        Case{"RemoteMissingIpip", With(Ipip, [](TunnelSpec& s) { s.remote = IpAddress(); }),
             kInvalid, "tunnel.remote: required"},
        Case{"RemoteZero", With(Gre, [](TunnelSpec& s) { s.remote = A("0.0.0.0"); }), kInvalid,
             "tunnel.remote: "},
        Case{"RemoteV6", With(Gre, [](TunnelSpec& s) { s.remote = A("2001:db8::1"); }), kInvalid,
             "tunnel.remote: "},
        Case{"RemoteMulticast", With(Gre, [](TunnelSpec& s) { s.remote = A("239.1.1.1"); }),
             kInvalid, "tunnel.remote: "},
        Case{"RemoteBroadcast", With(Ipip, [](TunnelSpec& s) { s.remote = A("255.255.255.255"); }),
             kInvalid, "tunnel.remote: "},
        Case{"LocalV6", With(Gre, [](TunnelSpec& s) { s.local = A("2001:db8::1"); }), kInvalid,
             "tunnel.local: "},
        Case{"LocalV6Any", With(Gre, [](TunnelSpec& s) { s.local = A("::"); }), kInvalid,
             "tunnel.local: "},
        Case{"LocalMulticast", With(Ipip, [](TunnelSpec& s) { s.local = A("224.0.0.1"); }),
             kInvalid, "tunnel.local: "},
        Case{"LocalBroadcast", With(Gre, [](TunnelSpec& s) { s.local = A("255.255.255.255"); }),
             kInvalid, "tunnel.local: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    KeyAndMtu, InvalidSpecTest,
    ::testing::Values(
        Case{"IpipKey", With(Ipip, [](TunnelSpec& s) { s.key = 1; }), kInvalid, "tunnel.key: "},
        Case{"IpipKeyZero", With(Ipip, [](TunnelSpec& s) { s.key = 0; }), kInvalid, "tunnel.key: "},
        Case{"MtuBelowMin", With(Gre, [](TunnelSpec& s) { s.mtu = 67; }), kInvalid,
             "tunnel.mtu: 67 is out of range 68..65511"},
        Case{"MtuOne", With(Ipip, [](TunnelSpec& s) { s.mtu = 1; }), kInvalid, "tunnel.mtu: "},
        Case{"GreMtuAboveMax", With(Gre, [](TunnelSpec& s) { s.mtu = 65535 - 24 + 1; }), kInvalid,
             "tunnel.mtu: "},
        Case{"GreKeyMtuAboveMax",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.key = 7;
                    s.mtu = 65535 - 28 + 1;
                  }),
             kInvalid, "tunnel.mtu: 65508 is out of range 68..65507"},
        Case{"IpipMtuAboveMax", With(Ipip, [](TunnelSpec& s) { s.mtu = 65535 - 20 + 1; }), kInvalid,
             "tunnel.mtu: "},
        Case{"MtuHuge", With(Gre, [](TunnelSpec& s) { s.mtu = 0xFFFFFFFF; }), kInvalid,
             "tunnel.mtu: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    Addresses, InvalidSpecTest,
    ::testing::Values(
        Case{"V6OnIpip", With(Ipip, [](TunnelSpec& s) { s.addresses.push_back(P("fd00::1/64")); }),
             kInvalid, "tunnel.addresses[1]: "},
        Case{"Unspecified", With(Gre, [](TunnelSpec& s) { s.addresses[0] = P("0.0.0.0/8"); }),
             kInvalid, "tunnel.addresses[0]: "},
        Case{"UnspecifiedV6", With(Gre, [](TunnelSpec& s) { s.addresses[1] = P("::/64"); }),
             kInvalid, "tunnel.addresses[1]: "},
        Case{"Multicast", With(Gre, [](TunnelSpec& s) { s.addresses[0] = P("224.0.0.5/24"); }),
             kInvalid, "tunnel.addresses[0]: "},
        Case{"MulticastV6", With(Gre, [](TunnelSpec& s) { s.addresses[1] = P("ff02::1/64"); }),
             kInvalid, "tunnel.addresses[1]: "},
        Case{"Duplicate", With(Gre, [](TunnelSpec& s) { s.addresses.push_back(P("10.0.0.1/30")); }),
             kInvalid, "tunnel.addresses[2]: 10.0.0.1 duplicates tunnel.addresses[0]"},
        Case{"DuplicateOtherLength",
             With(Gre, [](TunnelSpec& s) { s.addresses.push_back(P("fd00::1/128")); }), kInvalid,
             "tunnel.addresses[2]: "},
        Case{"FamilyNone", With(Gre, [](TunnelSpec& s) { s.addresses[0] = IpPrefix(); }), kInvalid,
             "tunnel.addresses[0]: "},
        Case{"LengthOutOfRange",
             With(Gre, [](TunnelSpec& s) { s.addresses[0] = IpPrefix(A("10.0.0.1"), 33); }),
             kInvalid, "tunnel.addresses[0]: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    Routes, InvalidSpecTest,
    ::testing::Values(
        Case{"HostBits", With(Gre, [](TunnelSpec& s) { s.routes[0] = P("10.2.0.1/16"); }), kInvalid,
             "tunnel.routes[0]: 10.2.0.1/16 has host bits set (did you mean 10.2.0.0/16?)"},
        Case{"HostBitsV6", With(Gre, [](TunnelSpec& s) { s.routes[1] = P("fd01::1/48"); }),
             kInvalid, "tunnel.routes[1]: "},
        Case{"V6OnIpip", With(Ipip, [](TunnelSpec& s) { s.routes.push_back(P("fd01::/48")); }),
             kInvalid, "tunnel.routes[1]: "},
        Case{"Duplicate", With(Gre, [](TunnelSpec& s) { s.routes.push_back(P("fd01::/48")); }),
             kInvalid, "tunnel.routes[2]: fd01::/48 duplicates tunnel.routes[1]"},
        Case{"FamilyNone", With(Gre, [](TunnelSpec& s) { s.routes[0] = IpPrefix(); }), kInvalid,
             "tunnel.routes[0]: "}),
    CaseName<Case>);

TEST(ValidateSpecTest, NameIsCheckedBeforeMode) {
  TunnelSpec s = Gre();
  s.name = "";
  s.mode = TunnelMode::kSit;
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateDeviceNameTest, UsesTheGivenField) {
  const absl::Status s = ValidateDeviceName("a/b", "name");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("name: "));
  EXPECT_TRUE(ValidateDeviceName("gre1", "name").ok());
}

TEST(ValidateDeviceNameTest, EscapesControlBytesInTheMessage) {
  const absl::Status s = ValidateDeviceName("a\nb");
  EXPECT_THAT(std::string(s.message()), ::testing::Not(::testing::HasSubstr("\n")));
}

}  // namespace
}  // namespace tunnelagent::agent
