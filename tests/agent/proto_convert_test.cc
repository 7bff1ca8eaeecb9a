#include "agent/proto_convert.h"

#include <iterator>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "dataplane/tunnel_counters.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::HasSubstr;
using ::testing::StartsWith;

template <typename Message = v1::Tunnel>
Message TextProto(const std::string& text) {
  Message t;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &t)) << text;
  return t;
}

void ExpectProtoEq(const v1::Tunnel& want, const v1::Tunnel& got) {
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(want, got))
      << "want:\n"
      << want.DebugString() << "got:\n"
      << got.DebugString();
}

IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }
IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }

constexpr char kFull[] = R"pb(
  name: "gre1"
  mode: TUNNEL_MODE_GRE
  local: "198.51.100.1"
  remote: "203.0.113.7"
  key: 42
  mtu: 1400
  addresses: "10.0.0.1/30"
  addresses: "fd00::1/64"
  routes: "10.2.0.0/16"
  routes: "fd01::/48"
)pb";

TEST(SpecFromProtoTest, AllFields) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "gre1");
  EXPECT_EQ(spec->mode, TunnelMode::kGre);
  EXPECT_EQ(spec->local, A("198.51.100.1"));
  EXPECT_EQ(spec->remote, A("203.0.113.7"));
  EXPECT_EQ(spec->key, 42u);
  EXPECT_EQ(spec->mtu, 1400u);
  EXPECT_THAT(spec->addresses, ::testing::ElementsAre(P("10.0.0.1/30"), P("fd00::1/64")));
  EXPECT_THAT(spec->routes, ::testing::ElementsAre(P("10.2.0.0/16"), P("fd01::/48")));
}

TEST(SpecFromProtoTest, RoundTripsThroughSpecToProto) {
  const v1::Tunnel in = TextProto(kFull);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  v1::Tunnel out = SpecToProto(*spec);
  EXPECT_EQ(out.etag(), ComputeEtag(*spec));
  out.clear_etag();
  ExpectProtoEq(in, out);
}

TEST(ComputeEtagTest, FollowsDesiredFieldsOnly) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::string etag = ComputeEtag(*spec);
  EXPECT_EQ(etag.size(), 16u);

  TunnelSpec later = *spec;
  later.create_time = absl::Now();
  later.update_time = absl::Now();
  EXPECT_EQ(ComputeEtag(later), etag) << "times are not desired fields";

  TunnelSpec changed = *spec;
  changed.mtu = 1300;
  EXPECT_NE(ComputeEtag(changed), etag);
  changed = *spec;
  changed.labels["owner"] = "controller";
  EXPECT_NE(ComputeEtag(changed), etag);

  // Label order cannot matter: the map is serialised deterministically.
  TunnelSpec a = *spec, b = *spec;
  a.labels = {{"a", "1"}, {"b", "2"}};
  b.labels.insert({"b", "2"});
  b.labels.insert({"a", "1"});
  EXPECT_EQ(ComputeEtag(a), ComputeEtag(b));
}

TEST(SpecFromProtoTest, LabelsAndStoredTimesRoundTrip) {
  v1::Tunnel in = TextProto(kFull);
  (*in.mutable_labels())["owner"] = "fleet";
  in.mutable_status()->mutable_create_time()->set_seconds(1700000000);
  in.mutable_status()->mutable_update_time()->set_seconds(1700000100);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->labels.at("owner"), "fleet");
  EXPECT_EQ(spec->create_time, absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(spec->update_time, absl::FromUnixSeconds(1700000100));
  v1::Tunnel out = SpecToProto(*spec);
  EXPECT_EQ(out.labels().at("owner"), "fleet");
  EXPECT_EQ(out.status().create_time().seconds(), 1700000000);
  EXPECT_EQ(out.status().update_time().seconds(), 1700000100);
}

constexpr char kOptions[] = R"pb(
  name: "gre2"
  mode: TUNNEL_MODE_GRE
  remote: "203.0.113.7"
  key: 1
  input_key: 0
  output_key: 4294967295
  checksum: true
  input_checksum: true
  output_checksum: true
  sequence: true
  input_sequence: true
  output_sequence: true
  ttl: 0
  tos: 255
  inherit_tos: true
  pmtudisc: false
  ignore_df: true
  keepalive {
    interval { seconds: 2 nanos: 500000000 }
    retries: 7
  }
  encap { type: ENCAP_TYPE_FOU sport: 5000 dport: 6000 }
)pb";

TEST(SpecFromProtoTest, EveryOption) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kOptions));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->key, 1u);
  EXPECT_EQ(spec->input_key, 0u);
  EXPECT_EQ(spec->output_key, 4294967295u);
  EXPECT_TRUE(spec->checksum && spec->input_checksum && spec->output_checksum);
  EXPECT_TRUE(spec->sequence && spec->input_sequence && spec->output_sequence);
  ASSERT_TRUE(spec->ttl.has_value());
  EXPECT_EQ(*spec->ttl, 0);
  EXPECT_EQ(spec->tos, 255);
  EXPECT_TRUE(spec->inherit_tos);
  EXPECT_FALSE(spec->pmtudisc);
  EXPECT_TRUE(spec->ignore_df);
  EXPECT_EQ(spec->keepalive.interval, absl::Milliseconds(2500));
  EXPECT_EQ(spec->keepalive.retries, 7u);
  EXPECT_TRUE(spec->fou.enabled);
  EXPECT_EQ(spec->fou.sport, 5000);
  EXPECT_EQ(spec->fou.dport, 6000);
}

TEST(SpecFromProtoTest, EncapPortsAndTypeAreChecked) {
  for (const char* bad : {R"pb(encap { type: ENCAP_TYPE_FOU sport: 65536 })pb",
                          R"pb(encap { type: ENCAP_TYPE_FOU dport: 70000 })pb"}) {
    v1::Tunnel in = TextProto(kFull);
    in.MergeFrom(TextProto(bad));
    absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(spec.status().message()), ::testing::HasSubstr("tunnel.encap."));
  }
  v1::Tunnel unknown = TextProto(kFull);
  unknown.mutable_encap()->set_type(static_cast<v1::EncapType>(9));
  EXPECT_THAT(std::string(SpecFromProto(unknown).status().message()),
              ::testing::HasSubstr("tunnel.encap.type: unknown value 9"));
  // No encap: the field stays unset, so etags of tunnels from before it are unchanged.
  absl::StatusOr<TunnelSpec> plain = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(SpecToProto(*plain).has_encap());
}

TEST(SpecFromProtoTest, EveryOptionRoundTrips) {
  const v1::Tunnel in = TextProto(kOptions);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  v1::Tunnel out = SpecToProto(*spec);
  out.clear_etag();
  ExpectProtoEq(in, out);
}

TEST(SpecFromProtoTest, UnsetOptionsKeepTheirDefaultsAndStayUnset) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->input_key.has_value());
  EXPECT_FALSE(spec->output_key.has_value());
  EXPECT_FALSE(spec->ttl.has_value());
  EXPECT_TRUE(spec->pmtudisc);
  EXPECT_FALSE(spec->keepalive.enabled());
  const v1::Tunnel out = SpecToProto(*spec);
  EXPECT_FALSE(out.has_input_key());
  EXPECT_FALSE(out.has_output_key());
  EXPECT_FALSE(out.has_ttl());
  EXPECT_FALSE(out.has_pmtudisc()) << "pmtudisc on is the default: left unset";
  EXPECT_FALSE(out.has_keepalive());
}

TEST(SpecFromProtoTest, ExplicitPmtudiscOnIsTheDefault) {
  v1::Tunnel in = TextProto(kFull);
  in.set_pmtudisc(true);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->pmtudisc);
}

TEST(SpecFromProtoTest, KeepaliveRetriesWithoutIntervalRoundTrip) {
  v1::Tunnel in = TextProto(kFull);
  in.mutable_keepalive()->set_retries(5);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->keepalive.enabled());
  v1::Tunnel out = SpecToProto(*spec);
  EXPECT_EQ(out.keepalive().retries(), 5u);
  EXPECT_EQ(out.keepalive().interval().seconds(), 0);
}

// A tunnel that sets none of the options fingerprints as it did before they existed, so an
// upgrade does not invalidate the etags clients hold.
TEST(ComputeEtagTest, UnchangedForTunnelsWithoutOptions) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(spec.ok()) << spec.status();
  // FNV-1a of kFull's serialization (fields 1-8 only), as the previous version computed it.
  EXPECT_EQ(ComputeEtag(*spec), "ac1101b957dae049");
}

TEST(ComputeEtagTest, CoversEveryOption) {
  absl::StatusOr<TunnelSpec> base = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(base.ok()) << base.status();
  const std::string etag = ComputeEtag(*base);
  using Change = void (*)(TunnelSpec&);
  const Change changes[] = {
      [](TunnelSpec& s) { s.input_key = 42; },
      [](TunnelSpec& s) { s.output_key = 42; },
      [](TunnelSpec& s) { s.checksum = true; },
      [](TunnelSpec& s) { s.input_checksum = true; },
      [](TunnelSpec& s) { s.output_checksum = true; },
      [](TunnelSpec& s) { s.sequence = true; },
      [](TunnelSpec& s) { s.input_sequence = true; },
      [](TunnelSpec& s) { s.output_sequence = true; },
      [](TunnelSpec& s) { s.ttl = 0; },
      [](TunnelSpec& s) { s.ttl = 64; },
      [](TunnelSpec& s) { s.tos = 8; },
      [](TunnelSpec& s) { s.inherit_tos = true; },
      [](TunnelSpec& s) { s.pmtudisc = false; },
      [](TunnelSpec& s) { s.ignore_df = true; },
      [](TunnelSpec& s) { s.keepalive.interval = absl::Seconds(10); },
      [](TunnelSpec& s) { s.keepalive.retries = 2; },
  };
  std::set<std::string> seen = {etag};
  for (size_t i = 0; i < std::size(changes); ++i) {
    TunnelSpec changed = *base;
    changes[i](changed);
    EXPECT_TRUE(seen.insert(ComputeEtag(changed)).second) << "change " << i;
  }
}

TEST(SpecFromProtoTest, MinimalFieldsLeaveDefaults) {
  absl::StatusOr<TunnelSpec> spec =
      SpecFromProto(TextProto(R"pb(name: "t" mode: TUNNEL_MODE_IPIP)pb"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->local.family(), IpAddress::Family::kNone);
  // An empty remote is left for ValidateSpec to report as required.
  EXPECT_EQ(spec->remote.family(), IpAddress::Family::kNone);
  EXPECT_FALSE(spec->key.has_value());
  EXPECT_EQ(spec->mtu, 0u);
  EXPECT_TRUE(spec->addresses.empty());
  EXPECT_TRUE(spec->routes.empty());
}

TEST(SpecFromProtoTest, KeyZeroIsPresent) {
  absl::StatusOr<TunnelSpec> spec =
      SpecFromProto(TextProto(R"pb(name: "t" mode: TUNNEL_MODE_GRE remote: "192.0.2.1" key: 0)pb"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(spec->key.has_value());
  EXPECT_EQ(*spec->key, 0u);
  EXPECT_TRUE(SpecToProto(*spec).has_key());
}

TEST(SpecFromProtoTest, StatusIsIgnored) {
  v1::Tunnel in = TextProto(kFull);
  in.mutable_status()->set_state(v1::OPER_STATE_ERROR);
  in.mutable_status()->set_mtu(9000);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(in);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->mtu, 1400u);
  EXPECT_FALSE(SpecToProto(*spec).has_status());
}

TEST(SpecFromProtoTest, AddressesComeBackCanonical) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(R"pb(
    name: "t"
    mode: TUNNEL_MODE_GRE
    local: "FD00:0:0::0001"
    remote: "192.0.2.1"
    addresses: "10.0.0.1"
    addresses: "FD00:0::1/64"
    routes: "fd01:0::/48"
  )pb"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::Tunnel out = SpecToProto(*spec);
  EXPECT_EQ(out.local(), "fd00::1");
  // A bare address is a host prefix, as iproute2 takes it.
  EXPECT_THAT(out.addresses(), ::testing::ElementsAre("10.0.0.1/32", "fd00::1/64"));
  EXPECT_THAT(out.routes(), ::testing::ElementsAre("fd01::/48"));
}

struct ModeCase {
  v1::TunnelMode proto;
  TunnelMode domain;
};

class ModeMappingTest : public ::testing::TestWithParam<ModeCase> {};

TEST_P(ModeMappingTest, BothWays) {
  v1::Tunnel t;
  t.set_name("t");
  t.set_mode(GetParam().proto);
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(t);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->mode, GetParam().domain);
  EXPECT_EQ(ModeToProto(GetParam().domain), GetParam().proto);
}

INSTANTIATE_TEST_SUITE_P(AllModes, ModeMappingTest,
                         ::testing::Values(ModeCase{v1::TUNNEL_MODE_GRE, TunnelMode::kGre},
                                           ModeCase{v1::TUNNEL_MODE_GRETAP, TunnelMode::kGretap},
                                           ModeCase{v1::TUNNEL_MODE_IPIP, TunnelMode::kIpip},
                                           ModeCase{v1::TUNNEL_MODE_SIT, TunnelMode::kSit},
                                           ModeCase{v1::TUNNEL_MODE_IP6GRE, TunnelMode::kIp6gre},
                                           ModeCase{v1::TUNNEL_MODE_IP6GRETAP,
                                                    TunnelMode::kIp6gretap},
                                           ModeCase{v1::TUNNEL_MODE_IP6TNL, TunnelMode::kIp6tnl}),
                         [](const ::testing::TestParamInfo<ModeCase>& info) {
                           return v1::TunnelMode_Name(info.param.proto);
                         });

struct BadCase {
  std::string test_name;
  std::string text_proto;
  std::string want_prefix;
};

class SpecFromProtoErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(SpecFromProtoErrorTest, NamesTheField) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(GetParam().text_proto));
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()), StartsWith(GetParam().want_prefix));
}

INSTANTIATE_TEST_SUITE_P(
    Table, SpecFromProtoErrorTest,
    ::testing::Values(
        BadCase{"ModeUnspecified", R"pb(name: "t" remote: "192.0.2.1")pb", "tunnel.mode: required"},
        BadCase{"BadLocal", R"pb(name: "t" mode: TUNNEL_MODE_GRE local: "1.2.3")pb",
                "tunnel.local: \"1.2.3\" is not an IP address"},
        BadCase{"BadRemote", R"pb(name: "t" mode: TUNNEL_MODE_GRE remote: "1.2.3")pb",
                "tunnel.remote: \"1.2.3\" is not an IP address"},
        BadCase{"RemoteWithSpace", R"pb(name: "t" mode: TUNNEL_MODE_GRE remote: " 1.2.3.4")pb",
                "tunnel.remote: "},
        BadCase{"RemoteIsPrefix", R"pb(name: "t" mode: TUNNEL_MODE_GRE remote: "1.2.3.4/32")pb",
                "tunnel.remote: "},
        BadCase{"SecondAddress",
                R"pb(name: "t"
                     mode: TUNNEL_MODE_GRE
                     addresses: "10.0.0.1/30"
                     addresses: "10.0.0.2/33")pb",
                "tunnel.addresses[1]: \"10.0.0.2/33\""},
        BadCase{"EmptyAddress", R"pb(name: "t" mode: TUNNEL_MODE_GRE addresses: "")pb",
                "tunnel.addresses[0]: "},
        BadCase{"FirstRoute", R"pb(name: "t" mode: TUNNEL_MODE_GRE routes: "10.0.0.0/")pb",
                "tunnel.routes[0]: \"10.0.0.0/\""},
        BadCase{"TtlAboveByte", R"pb(name: "t" mode: TUNNEL_MODE_GRE ttl: 256)pb",
                "tunnel.ttl: 256 is out of range 0..255"},
        BadCase{"TosAboveByte", R"pb(name: "t" mode: TUNNEL_MODE_GRE tos: 256)pb",
                "tunnel.tos: 256 is out of range 0..255"},
        BadCase{"KeepaliveMixedSigns",
                R"pb(name: "t"
                     mode: TUNNEL_MODE_GRE
                     keepalive { interval { seconds: 1 nanos: -5 } })pb",
                "tunnel.keepalive.interval: "},
        BadCase{"KeepaliveNanosOutOfRange",
                R"pb(name: "t"
                     mode: TUNNEL_MODE_GRE
                     keepalive { interval { nanos: 1000000000 } })pb",
                "tunnel.keepalive.interval: "}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return info.param.test_name; });

TEST(SpecFromProtoTest, UnknownModeNumberIsInvalid) {
  v1::Tunnel t;
  t.set_name("t");
  // A value from a newer API version that this build does not know.
  t.set_mode(static_cast<v1::TunnelMode>(42));
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(t);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()), StartsWith("tunnel.mode: "));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("42"));
}

TEST(SpecFromProtoTest, ControlBytesInErrorsAreEscaped) {
  v1::Tunnel t;
  t.set_name("t");
  t.set_mode(v1::TUNNEL_MODE_GRE);
  t.set_remote("1.2.3.4\n\x1b[31m");
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(t);
  ASSERT_FALSE(spec.ok());
  EXPECT_FALSE(absl::StrContains(spec.status().message(), "\n"));
  EXPECT_FALSE(absl::StrContains(spec.status().message(), "\x1b"));
}

TEST(SpecToProtoTest, UnspecifiedLocalIsEmpty) {
  TunnelSpec spec;
  spec.name = "t";
  spec.mode = TunnelMode::kIpip;
  spec.remote = A("192.0.2.1");
  const v1::Tunnel out = SpecToProto(spec);
  EXPECT_EQ(out.local(), "");
  EXPECT_EQ(out.remote(), "192.0.2.1");
  EXPECT_EQ(out.mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_FALSE(out.has_key());
  EXPECT_FALSE(out.has_status());
}

TEST(TunnelToProtoTest, FillsStatus) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kFull));
  ASSERT_TRUE(spec.ok()) << spec.status();
  TunnelStatus status;
  status.state = OperState::kError;
  status.reason = "device vanished";
  status.ifindex = 17;
  status.mtu = 1400;
  status.counters = {1, 2, 3, 4, 5, 6};

  v1::Tunnel want = TextProto(kFull);
  *want.mutable_status() = TextProto<v1::TunnelStatus>(R"pb(
    state: OPER_STATE_ERROR
    reason: "device vanished"
    ifindex: 17
    mtu: 1400
    counters { tx_packets: 1 tx_bytes: 2 rx_packets: 3 rx_bytes: 4 tx_dropped: 5 rx_dropped: 6 }
  )pb");
  want.set_etag(ComputeEtag(*spec));
  ExpectProtoEq(want, TunnelToProto(*spec, status));
}

TEST(TunnelToProtoTest, FillsPathMtuAndKeepalive) {
  absl::StatusOr<TunnelSpec> spec = SpecFromProto(TextProto(kOptions));
  ASSERT_TRUE(spec.ok()) << spec.status();
  TunnelStatus status;
  status.state = OperState::kDown;
  status.path_mtu = 1436;
  KeepaliveSnapshot k;
  k.peer_alive = false;
  k.sent = 10;
  k.replies = 7;
  k.answered = 3;
  k.last_reply = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
  status.keepalive = k;
  const v1::TunnelStatus got = TunnelToProto(*spec, status).status();
  EXPECT_EQ(got.path_mtu(), 1436u);
  ASSERT_TRUE(got.has_keepalive());
  EXPECT_FALSE(got.keepalive().peer_alive());
  EXPECT_EQ(got.keepalive().sent(), 10u);
  EXPECT_EQ(got.keepalive().replies(), 7u);
  EXPECT_EQ(got.keepalive().answered(), 3u);
  EXPECT_EQ(got.keepalive().last_reply_time().seconds(), 1700000000);
  EXPECT_EQ(got.keepalive().last_reply_time().nanos(), 250000000);

  status.keepalive->last_reply = absl::InfinitePast();
  EXPECT_FALSE(TunnelToProto(*spec, status).status().keepalive().has_last_reply_time());
  status.keepalive.reset();
  EXPECT_FALSE(TunnelToProto(*spec, status).status().has_keepalive());
}

TEST(TunnelToProtoTest, MapsEveryOperState) {
  const TunnelSpec spec;
  const struct {
    OperState domain;
    v1::OperState proto;
  } cases[] = {{OperState::kUp, v1::OPER_STATE_UP},
               {OperState::kDown, v1::OPER_STATE_DOWN},
               {OperState::kError, v1::OPER_STATE_ERROR}};
  for (const auto& c : cases) {
    TunnelStatus status;
    status.state = c.domain;
    EXPECT_EQ(TunnelToProto(spec, status).status().state(), c.proto);
  }
}

// Every counter of the API's TunnelCounters and KeepaliveStatus is copied from the one counter
// list (tunnel_counters.h), each from its own sum.
TEST(TunnelToProtoTest, EveryCounterOfTheListReachesItsApiField) {
  TunnelStatus status;
  KeepaliveSnapshot& keepalive = status.keepalive.emplace();
  uint64_t next = 1;
#define SET(member, api_field, ...) status.counters.api_field = next++;
  TUNNEL_TRAFFIC_COUNTERS(SET)
  TUNNEL_DROP_COUNTERS(SET)
#undef SET
#define SET(member, api_field, ...) keepalive.api_field = next++;
  TUNNEL_KEEPALIVE_COUNTERS(SET)
#undef SET
  const v1::Tunnel tunnel = TunnelToProto(TunnelSpec{}, status);
  std::set<uint64_t> seen;
  // Through the descriptor: a counter the API has and the list lacks stays 0 and shows.
  const v1::TunnelCounters& counters = tunnel.status().counters();
  for (int i = 0; i < counters.GetDescriptor()->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = counters.GetDescriptor()->field(i);
    const uint64_t value = counters.GetReflection()->GetUInt64(counters, field);
    EXPECT_NE(value, 0u) << field->name();
    seen.insert(value);
  }
  const v1::KeepaliveStatus& k = tunnel.status().keepalive();
  for (uint64_t value : {k.sent(), k.replies(), k.answered()}) {
    EXPECT_NE(value, 0u);
    seen.insert(value);
  }
  EXPECT_EQ(seen.size(), next - 1) << "each field from its own counter";
}

}  // namespace
}  // namespace tunnelagent::agent
