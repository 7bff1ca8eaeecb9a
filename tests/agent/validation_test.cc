#include "agent/validation.h"

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/peer_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::HasSubstr;
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

TunnelSpec Ip6gre() {
  TunnelSpec s;
  s.name = "ip6gre1";
  s.mode = TunnelMode::kIp6gre;
  s.local = A("2001:db8::1");
  s.remote = A("2001:db8::2");
  s.addresses = {P("10.4.0.1/30"), P("fd04::1/64")};
  return s;
}

TunnelSpec Ip6tnl() {
  TunnelSpec s = Ip6gre();
  s.name = "ip6tnl1";
  s.mode = TunnelMode::kIp6tnl;
  return s;
}

TunnelSpec Sit() {
  TunnelSpec s;
  s.name = "sit1";
  s.mode = TunnelMode::kSit;
  s.remote = A("203.0.113.9");
  s.addresses = {P("fd05::1/64")};
  return s;
}

TunnelSpec Gretap() {
  TunnelSpec s = Gre();
  s.name = "gretap1";
  s.mode = TunnelMode::kGretap;
  return s;
}

TunnelSpec Ip6gretap() {
  TunnelSpec s = Ip6gre();
  s.name = "ip6gretap1";
  s.mode = TunnelMode::kIp6gretap;
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
        GoodCase{"Gretap", Gretap}, GoodCase{"Sit", Sit}, GoodCase{"Ip6gre", Ip6gre},
        GoodCase{"Ip6gretap", Ip6gretap}, GoodCase{"Ip6tnl", Ip6tnl},
        GoodCase{"Ip6greLocalAny", With(Ip6gre, [](TunnelSpec& s) { s.local = A("::"); })},
        GoodCase{"GreAllOptions", With(Gre,
                                       [](TunnelSpec& s) {
                                         s.key = 1;
                                         s.input_key = 2;
                                         s.output_key = 3;
                                         s.checksum = s.input_checksum = s.output_checksum = true;
                                         s.sequence = s.input_sequence = s.output_sequence = true;
                                         s.ttl = 255;
                                         s.tos = 255;
                                         s.inherit_tos = true;
                                         s.keepalive = {absl::Hours(1), 255};
                                       })},
        GoodCase{"Ip6gretapKeys", With(Ip6gretap,
                                       [](TunnelSpec& s) {
                                         s.input_key = 0;
                                         s.output_checksum = true;
                                         s.input_sequence = true;
                                       })},
        GoodCase{"TtlInheritWithNopmtudisc", With(Ipip,
                                                  [](TunnelSpec& s) {
                                                    s.ttl = 0;
                                                    s.pmtudisc = false;
                                                  })},
        GoodCase{"DefaultTtlWithNopmtudisc", With(Sit, [](TunnelSpec& s) { s.pmtudisc = false; })},
        GoodCase{"IgnoreDf", With(Gretap,
                                  [](TunnelSpec& s) {
                                    s.pmtudisc = false;
                                    s.ignore_df = true;
                                  })},
        GoodCase{"Ip6tnlFixedHopLimit", With(Ip6tnl, [](TunnelSpec& s) { s.ttl = 1; })},
        GoodCase{"KeepaliveMin",
                 With(Ipip, [](TunnelSpec& s) { s.keepalive.interval = absl::Milliseconds(100); })},
        GoodCase{"KeepaliveIp6tnl",
                 With(Ip6tnl, [](TunnelSpec& s) { s.keepalive.interval = absl::Seconds(10); })},
        GoodCase{"KeepaliveOffWithRetries",
                 With(Gretap, [](TunnelSpec& s) { s.keepalive.retries = 5; })},
        GoodCase{"SitMtuMin", With(Sit, [](TunnelSpec& s) { s.mtu = 1280; })},
        GoodCase{"Ip6greMtuMax", With(Ip6gre, [](TunnelSpec& s) { s.mtu = 65535 - 52; })},
        GoodCase{"GreAllOutputOptionsMtuMax", With(Gre,
                                                   [](TunnelSpec& s) {
                                                     s.output_key = 1;
                                                     s.output_checksum = true;
                                                     s.sequence = true;
                                                     s.mtu = 65535 - 36;
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
    GreOptions, InvalidSpecTest,
    ::testing::Values(
        Case{"SitKey", With(Sit, [](TunnelSpec& s) { s.key = 1; }), kInvalid,
             "tunnel.key: sit tunnels have no GRE header"},
        Case{"IpipInputKey", With(Ipip, [](TunnelSpec& s) { s.input_key = 1; }), kInvalid,
             "tunnel.input_key: ipip"},
        Case{"Ip6tnlOutputKey", With(Ip6tnl, [](TunnelSpec& s) { s.output_key = 0; }), kInvalid,
             "tunnel.output_key: ip6tnl"},
        Case{"IpipChecksum", With(Ipip, [](TunnelSpec& s) { s.checksum = true; }), kInvalid,
             "tunnel.checksum: "},
        Case{"IpipInputChecksum", With(Ipip, [](TunnelSpec& s) { s.input_checksum = true; }),
             kInvalid, "tunnel.input_checksum: "},
        Case{"SitOutputChecksum", With(Sit, [](TunnelSpec& s) { s.output_checksum = true; }),
             kInvalid, "tunnel.output_checksum: "},
        Case{"Ip6tnlSequence", With(Ip6tnl, [](TunnelSpec& s) { s.sequence = true; }), kInvalid,
             "tunnel.sequence: "},
        Case{"IpipInputSequence", With(Ipip, [](TunnelSpec& s) { s.input_sequence = true; }),
             kInvalid, "tunnel.input_sequence: "},
        Case{"IpipOutputSequence", With(Ipip, [](TunnelSpec& s) { s.output_sequence = true; }),
             kInvalid, "tunnel.output_sequence: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    OuterHeader, InvalidSpecTest,
    ::testing::Values(
        Case{"FixedTtlWithNopmtudisc",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.ttl = 64;
                    s.pmtudisc = false;
                  }),
             kInvalid, "tunnel.ttl: ttl and nopmtudisc are incompatible"},
        Case{"TtlOneWithNopmtudisc",
             With(Ipip,
                  [](TunnelSpec& s) {
                    s.ttl = 1;
                    s.pmtudisc = false;
                  }),
             kInvalid, "tunnel.ttl: ttl and nopmtudisc are incompatible"},
        Case{"NopmtudiscIp6gre", With(Ip6gre, [](TunnelSpec& s) { s.pmtudisc = false; }), kInvalid,
             "tunnel.pmtudisc: cannot be turned off for ip6gre"},
        Case{"NopmtudiscIp6tnl", With(Ip6tnl, [](TunnelSpec& s) { s.pmtudisc = false; }), kInvalid,
             "tunnel.pmtudisc: "},
        Case{"IgnoreDfWithPmtudisc", With(Gre, [](TunnelSpec& s) { s.ignore_df = true; }), kInvalid,
             "tunnel.ignore_df: ignore_df and pmtudisc are incompatible"},
        Case{"IgnoreDfIp6gretap", With(Ip6gretap, [](TunnelSpec& s) { s.ignore_df = true; }),
             kInvalid, "tunnel.ignore_df: ip6gretap tunnels have no DF bit"}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    Keepalive, InvalidSpecTest,
    ::testing::Values(
        Case{"IntervalTooShort",
             With(Gre, [](TunnelSpec& s) { s.keepalive.interval = absl::Milliseconds(99); }),
             kInvalid, "tunnel.keepalive.interval: 99ms is out of range 100ms..1h"},
        Case{"IntervalTooLong",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.keepalive.interval = absl::Hours(1) + absl::Nanoseconds(1);
                  }),
             kInvalid, "tunnel.keepalive.interval: "},
        Case{"IntervalNegative",
             With(Gre, [](TunnelSpec& s) { s.keepalive.interval = -absl::Seconds(1); }), kInvalid,
             "tunnel.keepalive.interval: "},
        Case{"RetriesTooMany",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.keepalive = {absl::Seconds(10), 256};
                  }),
             kInvalid, "tunnel.keepalive.retries: 256 is out of range 0..255"},
        Case{"Gretap",
             With(Gretap, [](TunnelSpec& s) { s.keepalive.interval = absl::Seconds(10); }),
             kInvalid, "tunnel.keepalive: gretap tunnels cannot send keepalives"},
        Case{"Sit", With(Sit, [](TunnelSpec& s) { s.keepalive.interval = absl::Seconds(10); }),
             kInvalid, "tunnel.keepalive: sit "},
        Case{"Ip6gretap",
             With(Ip6gretap, [](TunnelSpec& s) { s.keepalive.interval = absl::Seconds(10); }),
             kInvalid, "tunnel.keepalive: ip6gretap "}),
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
             kInvalid, "tunnel.local: "},
        Case{"Ip6greRemoteV4", With(Ip6gre, [](TunnelSpec& s) { s.remote = A("203.0.113.7"); }),
             kInvalid,
             "tunnel.remote: 203.0.113.7 is not an IPv6 address (ip6gre tunnels run over IPv6)"},
        Case{"Ip6tnlLocalV4", With(Ip6tnl, [](TunnelSpec& s) { s.local = A("198.51.100.1"); }),
             kInvalid, "tunnel.local: "},
        Case{"Ip6gretapLocalV4Any", With(Ip6gretap, [](TunnelSpec& s) { s.local = A("0.0.0.0"); }),
             kInvalid, "tunnel.local: "},
        Case{"SitRemoteV6", With(Sit, [](TunnelSpec& s) { s.remote = A("2001:db8::2"); }), kInvalid,
             "tunnel.remote: 2001:db8::2 is not an IPv4 address"},
        Case{"GretapRemoteV6", With(Gretap, [](TunnelSpec& s) { s.remote = A("2001:db8::2"); }),
             kInvalid, "tunnel.remote: "},
        Case{"Ip6greRemoteMulticast", With(Ip6gre, [](TunnelSpec& s) { s.remote = A("ff02::1"); }),
             kInvalid, "tunnel.remote: "}),
    CaseName<Case>);

INSTANTIATE_TEST_SUITE_P(
    KeyAndMtu, InvalidSpecTest,
    ::testing::Values(
        Case{"IpipKey", With(Ipip, [](TunnelSpec& s) { s.key = 1; }), kInvalid, "tunnel.key: "},
        Case{"GreOutputOptionsMtuAboveMax",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.output_key = 1;
                    s.output_checksum = true;
                    s.output_sequence = true;
                    s.mtu = 65535 - 36 + 1;
                  }),
             kInvalid, "tunnel.mtu: 65500 is out of range 68..65499"},
        // Input options do not grow what is sent.
        Case{"GreInputOptionsMtuAboveMax",
             With(Gre,
                  [](TunnelSpec& s) {
                    s.input_key = 1;
                    s.input_checksum = true;
                    s.mtu = 65535 - 24 + 1;
                  }),
             kInvalid, "tunnel.mtu: 65512 is out of range 68..65511"},
        Case{"SitMtuBelowIpv6Min", With(Sit, [](TunnelSpec& s) { s.mtu = 1279; }), kInvalid,
             "tunnel.mtu: 1279 is out of range 1280..65515"},
        Case{"Ip6gretapMtuAboveMax", With(Ip6gretap, [](TunnelSpec& s) { s.mtu = 65535 - 66 + 1; }),
             kInvalid, "tunnel.mtu: 65470 is out of range 68..65469"},
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

// encap fou: GRE-in-UDP and IPv4/IPv6 in UDP over IPv4 underlays.
INSTANTIATE_TEST_SUITE_P(
    Fou, ValidSpecTest,
    ::testing::Values(GoodCase{"GreDefaultPort",
                               With(Gre, [](TunnelSpec& s) { s.fou.enabled = true; })},
                      GoodCase{"GretapFixedSourcePort", With(Gretap,
                                                             [](TunnelSpec& s) {
                                                               s.fou.enabled = true;
                                                               s.fou.sport = 5000;
                                                             })},
                      GoodCase{"IpipWithPort", With(Ipip,
                                                    [](TunnelSpec& s) {
                                                      s.fou.enabled = true;
                                                      s.fou.dport = 5555;
                                                    })},
                      GoodCase{"GreFouMtuMax", With(Gre,
                                                    [](TunnelSpec& s) {
                                                      s.fou.enabled = true;
                                                      s.mtu = 65535 - 32;
                                                    })}),
    CaseName<GoodCase>);

INSTANTIATE_TEST_SUITE_P(
    Fou, InvalidSpecTest,
    ::testing::Values(Case{"PortsWithoutType", With(Gre, [](TunnelSpec& s) { s.fou.dport = 4754; }),
                           kInvalid, "tunnel.encap: sport and dport need type ENCAP_TYPE_FOU"},
                      Case{"Ipv6Underlay",
                           With(Ip6gre, [](TunnelSpec& s) { s.fou.enabled = true; }), kInvalid,
                           "tunnel.encap: fou over an IPv6 underlay is not supported"},
                      Case{"IpipNeedsAPort",
                           With(Ipip, [](TunnelSpec& s) { s.fou.enabled = true; }), kInvalid,
                           "tunnel.encap.dport: is required for ipip"},
                      Case{"SourcePortIsTheReceivePort",
                           With(Gre,
                                [](TunnelSpec& s) {
                                  s.fou.enabled = true;
                                  s.fou.sport = 4754;
                                }),
                           kInvalid, "tunnel.encap.sport: 4754 is the port fou receives on"},
                      Case{"NoPmtudisc",
                           With(Gre,
                                [](TunnelSpec& s) {
                                  s.fou.enabled = true;
                                  s.pmtudisc = false;
                                }),
                           kInvalid, "tunnel.pmtudisc: encap fou needs pmtudisc"},
                      Case{"MtuOverTheLimit",
                           With(Gre,
                                [](TunnelSpec& s) {
                                  s.fou.enabled = true;
                                  s.mtu = 65535 - 31;
                                }),
                           kInvalid, "tunnel.mtu: "}),
    CaseName<Case>);

// Multipoint: no remote, IP modes, no keepalive of its own, a local address over IPv6.
TunnelSpec Multipoint(TunnelSpec (*make)()) {
  TunnelSpec spec = make();
  spec.remote = IpAddress();
  spec.multipoint = true;
  return spec;
}

INSTANTIATE_TEST_SUITE_P(Multipoint, ValidSpecTest,
                         ::testing::Values(GoodCase{"Gre", [] { return Multipoint(Gre); }},
                                           GoodCase{"Ipip", [] { return Multipoint(Ipip); }},
                                           GoodCase{"Sit", [] { return Multipoint(Sit); }},
                                           GoodCase{"Ip6gre", [] { return Multipoint(Ip6gre); }},
                                           GoodCase{"Ip6tnl", [] { return Multipoint(Ip6tnl); }},
                                           GoodCase{"GreFou",
                                                    [] {
                                                      TunnelSpec s = Multipoint(Gre);
                                                      s.fou.enabled = true;
                                                      return s;
                                                    }},
                                           GoodCase{"IpipFou",
                                                    [] {
                                                      TunnelSpec s = Multipoint(Ipip);
                                                      s.fou.enabled = true;
                                                      s.fou.dport = 5555;
                                                      return s;
                                                    }}),
                         [](const auto& info) { return info.param.test_name; });

INSTANTIATE_TEST_SUITE_P(Multipoint, InvalidSpecTest,
                         ::testing::Values(Case{"WithRemote",
                                                [] {
                                                  TunnelSpec s = Multipoint(Gre);
                                                  s.remote = A("203.0.113.7");
                                                  return s;
                                                },
                                                kInvalid, "tunnel.remote: must be empty"},
                                           Case{"Gretap", [] { return Multipoint(Gretap); },
                                                kInvalid, "tunnel.multipoint: "},
                                           Case{"Keepalive",
                                                [] {
                                                  TunnelSpec s = Multipoint(Gre);
                                                  s.keepalive.interval = absl::Seconds(1);
                                                  return s;
                                                },
                                                kInvalid, "tunnel.keepalive: "},
                                           Case{"SequenceNumbers",
                                                [] {
                                                  TunnelSpec s = Multipoint(Gre);
                                                  s.fou.enabled = true;
                                                  s.sequence = true;
                                                  return s;
                                                },
                                                kInvalid, "tunnel.sequence: "},
                                           Case{"Ip6greWithoutLocal",
                                                [] {
                                                  TunnelSpec s = Multipoint(Ip6gre);
                                                  s.local = IpAddress();
                                                  return s;
                                                },
                                                kInvalid, "tunnel.local: required"}),
                         [](const auto& info) { return info.param.test_name; });

TEST(ValidatePeerTest, ChecksEachField) {
  const TunnelSpec tunnel = Multipoint(Gre);
  PeerSpec good;
  good.name = "node-1.a_b";
  good.underlay = A("198.51.100.2");
  good.key = 7;
  good.allowed_prefixes = {P("100.65.1.0/24"), P("fd00:1::/64")};
  good.keepalive.interval = absl::Seconds(1);
  EXPECT_TRUE(ValidatePeer(good, tunnel).ok());
  auto fails = [&](void (*change)(PeerSpec&), const TunnelSpec& t, absl::string_view prefix) {
    PeerSpec p = good;
    change(p);
    const absl::Status s = ValidatePeer(p, t);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << prefix;
    EXPECT_THAT(std::string(s.message()), StartsWith(std::string(prefix)));
  };
  fails([](PeerSpec& p) { p.name = ""; }, tunnel, "peer.name: required");
  fails([](PeerSpec& p) { p.name = std::string(64, 'a'); }, tunnel, "peer.name: ");
  fails([](PeerSpec& p) { p.name = "a/b"; }, tunnel, "peer.name: ");
  fails([](PeerSpec& p) { p.underlay = IpAddress(); }, tunnel, "peer.underlay: required");
  fails([](PeerSpec& p) { p.underlay = A("2001:db8::1"); }, tunnel, "peer.underlay: ");
  fails([](PeerSpec& p) { p.underlay = A("224.0.0.1"); }, tunnel, "peer.underlay: ");
  fails([](PeerSpec& p) { p.allowed_prefixes = {P("100.65.1.1/24")}; }, tunnel,
        "peer.allowed_prefixes[0]: ");
  fails(
      [](PeerSpec& p) {
        p.allowed_prefixes = {P("10.0.0.0/8"), P("10.0.0.0/8")};
      },
      tunnel, "peer.allowed_prefixes[1]: ");
  fails([](PeerSpec& p) { p.keepalive.interval = absl::Milliseconds(1); }, tunnel,
        "peer.keepalive.interval: ");
  fails([](PeerSpec& p) { p.labels = {{"bad key", "v"}}; }, tunnel, "peer.labels: ");
  // What the tunnel's mode carries: ipip has no key and no IPv6 inside.
  fails([](PeerSpec& p) { p.allowed_prefixes = {}; }, Multipoint(Ipip), "peer.key: ");
  fails([](PeerSpec& p) { p.key.reset(); }, Multipoint(Ipip), "peer.allowed_prefixes[1]: ");
}

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

TEST(ValidateSpecTest, AddressesAndRoutesPerTunnelAreBounded) {
  const TunnelLimits saved = CurrentTunnelLimits();
  SetTunnelLimits({/*max_addresses=*/3, /*max_routes=*/2});
  TunnelSpec s = Gre();
  s.addresses = {P("10.0.0.1/32"), P("10.0.0.2/32"), P("10.0.0.3/32")};
  s.routes = {P("10.2.0.0/16"), P("10.3.0.0/16")};
  EXPECT_TRUE(ValidateSpec(s).ok()) << ValidateSpec(s);
  s.addresses.push_back(P("10.0.0.4/32"));
  absl::Status status = ValidateSpec(s);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "tunnel.addresses: 4 addresses, at most 3 per tunnel (--max_addresses_per_tunnel)");
  s.addresses.pop_back();
  s.routes.push_back(P("10.4.0.0/16"));
  status = ValidateSpec(s);
  EXPECT_EQ(status.message(),
            "tunnel.routes: 3 routes, at most 2 per tunnel (--max_routes_per_tunnel)");
  SetTunnelLimits(saved);
  // The defaults: a request of 50,000 addresses is refused at once, before the quadratic
  // duplicate check.
  s.addresses.assign(50'000, P("10.0.0.1/32"));
  s.routes.clear();
  const absl::Time start = absl::Now();
  EXPECT_THAT(std::string(ValidateSpec(s).message()), HasSubstr("at most 256 per tunnel"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST(ValidateSpecTest, LabelsPerTunnelAreBoundedAsConfigured) {
  const TunnelLimits saved = CurrentTunnelLimits();
  TunnelLimits limits = saved;
  limits.max_labels = 2;
  limits.max_label_key_length = 4;
  limits.max_label_value_length = 5;
  SetTunnelLimits(limits);
  TunnelSpec s = Gre();
  s.labels = {{"team", "blue"}, {"site", "paris"}};
  const absl::Status fits = ValidateSpec(s);
  s.labels["rack"] = "r1";
  const absl::Status too_many = ValidateSpec(s);
  s.labels = {{"owner", "x"}};
  const absl::Status long_key = ValidateSpec(s);
  s.labels = {{"team", "purple"}};
  const absl::Status long_value = ValidateSpec(s);
  SetTunnelLimits(saved);
  const absl::Status default_fits = ValidateSpec(s);

  EXPECT_TRUE(fits.ok()) << fits;
  EXPECT_EQ(too_many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_many.message(),
            "tunnel.labels: 3 labels, at most 2 per tunnel (--max_labels_per_tunnel)");
  EXPECT_EQ(long_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(long_key.message()), HasSubstr("must be 1-4 characters"));
  EXPECT_THAT(std::string(long_key.message()), HasSubstr("--max_label_key_length"));
  EXPECT_EQ(long_value.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(long_value.message()), HasSubstr("tunnel.labels[team]"));
  EXPECT_THAT(std::string(long_value.message()), HasSubstr("--max_label_value_length"));
  EXPECT_TRUE(default_fits.ok()) << default_fits;
}

TEST(ValidateSpecTest, TheWorkOfOneApplyIsBounded) {
  const TunnelLimits saved = CurrentTunnelLimits();
  TunnelLimits limits = saved;
  limits.max_apply_prefixes = 4;
  SetTunnelLimits(limits);
  std::vector<TunnelSpec> tunnels(2, Gre());
  tunnels[0].addresses = {P("10.0.0.1/30"), P("10.0.1.1/30")};
  tunnels[0].routes.clear();
  tunnels[1].addresses.clear();
  tunnels[1].routes = {P("10.2.0.0/16"), P("10.3.0.0/16")};
  const absl::Status fits = CheckApplyWork(tunnels);
  tunnels[1].routes.push_back(P("10.4.0.0/16"));
  const absl::Status too_much = CheckApplyWork(tunnels);
  SetTunnelLimits(saved);
  EXPECT_TRUE(fits.ok()) << fits;
  EXPECT_EQ(too_much.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_much.message()),
              HasSubstr("5 addresses and routes in all, at most 4 in one ApplyTunnels "
                        "(--max_prefixes_per_apply)"));
}

TEST(ValidateSpecTest, AHugeBadValueIsQuotedByItsFirstBytesAndItsLength) {
  const std::string name(3'000'000, 'n');
  const absl::Status s = ValidateDeviceName(name);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 200u);
  EXPECT_THAT(std::string(s.message()), HasSubstr("... (3000000 bytes)"));
  EXPECT_EQ(QuoteValue("gre1"), "\"gre1\"");
}

}  // namespace
}  // namespace tunnelagent::agent
