#include "agent/tunnel_fields.h"

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/proto_convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }
IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }

TunnelSpec Base() {
  TunnelSpec spec;
  spec.name = "gre1";
  spec.mode = TunnelMode::kGre;
  spec.local = A("198.18.0.1");
  spec.remote = A("198.18.0.2");
  spec.addresses = {P("10.0.0.1/30")};
  spec.routes = {P("10.2.0.0/16")};
  return spec;
}

// For every settable field, a change of it alone. A row added to the table without one here
// fails CoversEveryRow, so every row is exercised below.
const std::map<std::string, std::function<void(TunnelSpec&)>>& Changes() {
  static const auto* changes = new std::map<std::string, std::function<void(TunnelSpec&)>>{
      {"mode", [](TunnelSpec& s) { s.mode = TunnelMode::kGretap; }},
      {"local", [](TunnelSpec& s) { s.local = A("198.18.0.3"); }},
      {"remote", [](TunnelSpec& s) { s.remote = A("198.18.0.4"); }},
      {"key", [](TunnelSpec& s) { s.key = 7; }},
      {"mtu", [](TunnelSpec& s) { s.mtu = 1400; }},
      {"addresses", [](TunnelSpec& s) { s.addresses.push_back(P("fd00::1/64")); }},
      {"routes",
       [](TunnelSpec& s) {
         s.routes = {P("10.3.0.0/16"), P("fd01::/48")};
       }},
      {"labels", [](TunnelSpec& s) { s.labels["owner"] = "fleet"; }},
      {"input_key", [](TunnelSpec& s) { s.input_key = 8; }},
      {"output_key", [](TunnelSpec& s) { s.output_key = 9; }},
      {"checksum", [](TunnelSpec& s) { s.checksum = true; }},
      {"input_checksum", [](TunnelSpec& s) { s.input_checksum = true; }},
      {"output_checksum", [](TunnelSpec& s) { s.output_checksum = true; }},
      {"sequence", [](TunnelSpec& s) { s.sequence = true; }},
      {"input_sequence", [](TunnelSpec& s) { s.input_sequence = true; }},
      {"output_sequence", [](TunnelSpec& s) { s.output_sequence = true; }},
      {"ttl", [](TunnelSpec& s) { s.ttl = 64; }},
      {"tos", [](TunnelSpec& s) { s.tos = 0x20; }},
      {"inherit_tos", [](TunnelSpec& s) { s.inherit_tos = true; }},
      {"pmtudisc", [](TunnelSpec& s) { s.pmtudisc = false; }},
      {"ignore_df", [](TunnelSpec& s) { s.ignore_df = true; }},
      {"multipoint", [](TunnelSpec& s) { s.multipoint = true; }},
      {"keepalive",
       [](TunnelSpec& s) {
         s.keepalive.interval = absl::Seconds(10);
         s.keepalive.retries = 4;
       }},
      {"encap",
       [](TunnelSpec& s) {
         s.fou.enabled = true;
         s.fou.sport = 5000;
         s.fou.dport = 6000;
       }},
  };
  return *changes;
}

// The table is the API's list of settable fields: every field of Tunnel but the name (the
// key), the etag (a precondition) and the status (output only), in declaration order.
TEST(TunnelFieldsTest, CoversEveryClientSettableFieldOfTunnel) {
  const google::protobuf::Descriptor* tunnel = v1::Tunnel::descriptor();
  std::vector<std::string> settable;
  for (int i = 0; i < tunnel->field_count(); ++i) {
    const std::string& name = tunnel->field(i)->name();
    if (name != "name" && name != "etag" && name != "status") settable.push_back(name);
  }
  std::vector<std::string> rows;
  for (const TunnelField& field : TunnelFields()) rows.push_back(field.name);
  EXPECT_EQ(rows, settable);
  EXPECT_EQ(UpdatableFields(), settable);
  for (const char* not_settable : {"name", "etag", "status", "nope", ""}) {
    EXPECT_EQ(FindTunnelField(not_settable), nullptr) << not_settable;
  }
}

TEST(TunnelFieldsTest, CoversEveryRow) {
  std::set<std::string> rows;
  for (const TunnelField& field : TunnelFields()) rows.insert(field.name);
  std::set<std::string> changed;
  for (const auto& [name, change] : Changes()) changed.insert(name);
  EXPECT_EQ(rows, changed);
}

class TunnelFieldRowTest : public ::testing::TestWithParam<TunnelField> {};

// Each row compares its field and only it.
TEST_P(TunnelFieldRowTest, ComparesItsFieldOnly) {
  const TunnelField& field = GetParam();
  const TunnelSpec a = Base();
  TunnelSpec b = a;
  Changes().at(field.name)(b);
  EXPECT_TRUE(field.equal(a, a));
  EXPECT_FALSE(field.equal(a, b));
  EXPECT_FALSE(field.equal(b, a));
  EXPECT_THAT(ChangedFields(a, b), ElementsAre(field.name));
}

// Each row copies its field, and only it, both ways (set and back to the default).
TEST_P(TunnelFieldRowTest, CopiesItsFieldOnly) {
  const TunnelField& field = GetParam();
  const TunnelSpec a = Base();
  TunnelSpec b = a;
  Changes().at(field.name)(b);
  // `to` differs from `from` in every other field: a copy that took more would show.
  TunnelSpec to = a;
  for (const auto& [other, change] : Changes()) {
    if (other != field.name) change(to);
  }
  const TunnelSpec before = to;
  field.copy(b, to);
  EXPECT_TRUE(field.equal(to, b));
  EXPECT_THAT(ChangedFields(before, to), ElementsAre(field.name));
  field.copy(a, to);
  EXPECT_TRUE(field.equal(to, a));
  EXPECT_THAT(ChangedFields(before, to), IsEmpty());
}

// The API side: copying the field between messages gives what copying it between specs gives,
// presence included (an unset optional or message field in the patch becomes unset).
TEST_P(TunnelFieldRowTest, CopiesItsProtoFieldOnly) {
  const TunnelField& field = GetParam();
  const TunnelSpec a = Base();
  TunnelSpec b = a;
  Changes().at(field.name)(b);
  for (const auto& [from, into] : {std::pair<TunnelSpec, TunnelSpec>{b, a}, {a, b}}) {
    v1::Tunnel merged = SpecToProto(into);
    field.copy_proto(SpecToProto(from), merged);
    absl::StatusOr<TunnelSpec> got = SpecFromProto(merged);
    ASSERT_TRUE(got.ok()) << got.status();
    TunnelSpec want = into;
    field.copy(from, want);
    EXPECT_THAT(ChangedFields(*got, want), IsEmpty()) << field.name;
    EXPECT_TRUE(field.equal(*got, from));
  }
}

// What a change does to a running tunnel: the rules Update and Apply follow.
TEST_P(TunnelFieldRowTest, EffectDecidesRecreationAndDataplane) {
  const TunnelField& field = GetParam();
  const TunnelSpec a = Base();
  TunnelSpec b = a;
  Changes().at(field.name)(b);
  EXPECT_EQ(NeedsNewDevice(a, b), field.effect == FieldEffect::kRecreate);
  EXPECT_EQ(EncapsulationChanged(a, b), field.effect == FieldEffect::kDataplane);
  EXPECT_FALSE(NeedsNewDevice(a, a));
  EXPECT_FALSE(EncapsulationChanged(b, b));
}

INSTANTIATE_TEST_SUITE_P(AllRows, TunnelFieldRowTest, ::testing::ValuesIn(TunnelFields()),
                         [](const ::testing::TestParamInfo<TunnelField>& info) {
                           return std::string(info.param.name);
                         });

TEST(TunnelFieldsTest, OnlyTheModeMakesANewDeviceAndOnlyDeviceFieldsChangeInPlace) {
  std::vector<std::string> recreate, in_place;
  for (const TunnelField& field : TunnelFields()) {
    if (field.effect == FieldEffect::kRecreate) recreate.push_back(field.name);
    if (field.effect == FieldEffect::kInPlace) in_place.push_back(field.name);
  }
  EXPECT_THAT(recreate, ElementsAre("mode"));
  EXPECT_THAT(in_place, ElementsAre("mtu", "addresses", "routes", "labels"));
}

// "Any" local address is the same receive match however it is spelled.
TEST(TunnelFieldsTest, AnyLocalAddressIsEqualInEitherSpelling) {
  TunnelSpec a = Base();
  TunnelSpec b = a;
  a.local = IpAddress();
  b.local = A("0.0.0.0");
  EXPECT_TRUE(FindTunnelField("local")->equal(a, b));
  EXPECT_THAT(ChangedFields(a, b), IsEmpty());
}

}  // namespace
}  // namespace tunnelagent::agent
