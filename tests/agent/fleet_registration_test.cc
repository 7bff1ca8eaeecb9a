// The node's registration in a fleet on etcd: its flags, and the registration itself against a
// real etcd (tests/common/etcd/etcd_cluster.h), killed and restarted under it.
#include "agent/fleet_registration.h"

#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/etcd/client.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::agent {
namespace {

using ::tunnelagent::testing::Eventually;
using ::tunnelagent::testing::MustConnect;

// ---- Names, capabilities, metrics ------------------------------------------------------------

TEST(FleetNames, KeyIsTheContract) {
  EXPECT_EQ(fleet::NodeKey("prod", "n1"), "/tunnel-agent/prod/nodes/n1");
}

TEST(FleetNames, FleetNameIsAKeySegment) {
  for (const std::string& good :
       {std::string("prod"), std::string("a"), std::string("eu-west_1.b"), std::string(63, 'x')}) {
    EXPECT_TRUE(fleet::ValidateFleetName(good).ok()) << good;
  }
  for (const std::string& bad :
       {std::string(), std::string(64, 'x'), std::string("Prod"), std::string("a/b"),
        std::string("a b"), std::string("."), std::string(".."), std::string("a:b")}) {
    absl::Status status = fleet::ValidateFleetName(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(absl::StrContains(fleet::ValidateFleetName("a/b").message(), "'/'"))
      << fleet::ValidateFleetName("a/b");
}

TEST(FleetNames, NodeNameAllowsWhatHostNamesHave) {
  EXPECT_TRUE(fleet::ValidateNodeName("Node-1.example.com").ok());
  EXPECT_TRUE(fleet::ValidateNodeName(std::string(253, 'n')).ok());
  EXPECT_FALSE(fleet::ValidateNodeName(std::string(254, 'n')).ok());
  EXPECT_FALSE(fleet::ValidateNodeName("").ok());
  EXPECT_FALSE(fleet::ValidateNodeName("n/1").ok());
  EXPECT_FALSE(fleet::ValidateNodeName("..").ok());
}

TEST(FleetCapabilities, FromAgentInfo) {
  v1::AgentInfo info;
  info.add_supported_modes(v1::TUNNEL_MODE_GRE);
  info.add_supported_modes(v1::TUNNEL_MODE_IP6GRETAP);
  info.add_features("fou");
  info.add_features("multipoint");
  info.set_max_peers_per_tunnel(16384);
  info.set_max_tunnels(4096);
  v1::Capabilities got = CapabilitiesOf(info);
  EXPECT_EQ(std::vector<std::string>(got.modes().begin(), got.modes().end()),
            (std::vector<std::string>{"gre", "ip6gretap"}));
  EXPECT_EQ(std::vector<std::string>(got.features().begin(), got.features().end()),
            (std::vector<std::string>{"fou", "multipoint"}));
  EXPECT_EQ(got.max_peers_per_tunnel(), 16384u);
  EXPECT_EQ(got.max_tunnels(), 4096u);
}

// The three series, exported before anything happened (0), as every agent has them.
TEST(FleetMetricsTest, ExportedAtZeroFromStart) {
  FleetMetrics metrics;
  std::vector<prometheus::MetricFamily> families = metrics.Collect();
  ASSERT_EQ(families.size(), 3u);
  EXPECT_EQ(families[0].name, "tunnelagent_fleet_registered");
  EXPECT_EQ(families[0].type, prometheus::MetricType::Gauge);
  EXPECT_EQ(families[1].name, "tunnelagent_fleet_etcd_errors_total");
  EXPECT_EQ(families[1].type, prometheus::MetricType::Counter);
  EXPECT_EQ(families[2].name, "tunnelagent_fleet_registrations_total");
  EXPECT_EQ(families[2].type, prometheus::MetricType::Counter);
  for (const prometheus::MetricFamily& family : families) {
    ASSERT_EQ(family.metric.size(), 1u) << family.name;
  }
  EXPECT_EQ(families[0].metric[0].gauge.value, 0);
  EXPECT_EQ(families[1].metric[0].counter.value, 0);

  metrics.RegisteredUntil(absl::Now() + absl::Seconds(10));
  metrics.AddEtcdError();
  metrics.AddRegistration();
  families = metrics.Collect();
  EXPECT_EQ(families[0].metric[0].gauge.value, 1);
  EXPECT_EQ(families[1].metric[0].counter.value, 1);
  EXPECT_EQ(families[2].metric[0].counter.value, 1);
  // Registered means "the lease was renewed less than a TTL ago": once past, 0 by itself.
  metrics.RegisteredUntil(absl::Now() - absl::Milliseconds(1));
  EXPECT_FALSE(metrics.registered());
}

// ---- Flags -----------------------------------------------------------------------------------

class FleetFlagsTest : public ::testing::Test {
 protected:
  // A complete, valid set.
  static FleetFlags Valid() {
    FleetFlags flags;
    flags.etcd = "127.0.0.1:2379,http://198.18.0.100:2379";
    flags.fleet = "prod";
    flags.node = "n1";
    flags.underlay = "198.18.0.1";
    flags.advertise_prefixes = "10.244.1.0/24, fd00:1::/64";
    flags.grpc_listen = "198.18.0.1:50051";
    return flags;
  }

  // The error FleetOptionsFromFlags gives; fails the test when it succeeds.
  static std::string ErrorOf(const FleetFlags& flags) {
    absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(flags);
    EXPECT_FALSE(got.ok()) << "accepted";
    if (got.ok()) return "";
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
    return std::string(got.status().message());
  }

  std::string WriteFile(const std::string& name, const std::string& content) {
    const std::string path =
        absl::StrCat(::testing::TempDir(), "/fleet_flags_", getpid(), "_", name);
    std::ofstream(path) << content;
    files_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& path : files_) unlink(path.c_str());
  }

 private:
  std::vector<std::string> files_;
};

TEST_F(FleetFlagsTest, OffWithoutEtcd) {
  FleetFlags flags;
  flags.node = "n1";
  flags.grpc_listen = "unix:/run/tunnel-agent/agent.sock";
  absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_value());
}

TEST_F(FleetFlagsTest, AFleetFlagWithoutEtcdIsAnError) {
  FleetFlags flags;
  flags.node = "n1";
  flags.underlay = "198.18.0.1";
  EXPECT_EQ(ErrorOf(flags),
            "--fleet_underlay needs --fleet_etcd (the etcd endpoints to register with)");
  flags.underlay.clear();
  flags.etcd_password_file = "/nonexistent";
  EXPECT_TRUE(absl::StartsWith(ErrorOf(flags), "--fleet_etcd_password_file needs --fleet_etcd"));
}

TEST_F(FleetFlagsTest, ValidSetMakesTheRegistration) {
  absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(Valid());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  const FleetRegistrationOptions& options = **got;
  EXPECT_EQ(options.key, "/tunnel-agent/prod/nodes/n1");
  EXPECT_EQ(options.etcd.endpoints,
            (std::vector<std::string>{"127.0.0.1:2379", "http://198.18.0.100:2379"}));
  EXPECT_EQ(options.lease_ttl, absl::Seconds(15));
  EXPECT_EQ(options.etcd.call_timeout, absl::Seconds(5));
  EXPECT_EQ(options.max_retry, absl::Seconds(5));
  const v1::NodeRegistration& r = options.registration;
  EXPECT_EQ(r.node(), "n1");
  EXPECT_EQ(std::vector<std::string>(r.underlay().begin(), r.underlay().end()),
            (std::vector<std::string>{"198.18.0.1"}));
  EXPECT_EQ(std::vector<std::string>(r.advertise_prefixes().begin(), r.advertise_prefixes().end()),
            (std::vector<std::string>{"10.244.1.0/24", "fd00:1::/64"}));
  EXPECT_EQ(r.agent_endpoint(), "198.18.0.1:50051");  // from --grpc_listen
  EXPECT_TRUE(options.etcd.username.empty());
}

TEST_F(FleetFlagsTest, RequiredFlags) {
  FleetFlags flags = Valid();
  flags.fleet.clear();
  EXPECT_TRUE(absl::StartsWith(ErrorOf(flags), "--fleet is required with --fleet_etcd"));
  flags = Valid();
  flags.underlay.clear();
  EXPECT_TRUE(absl::StartsWith(ErrorOf(flags), "--fleet_underlay is required with --fleet_etcd"));
}

TEST_F(FleetFlagsTest, BadValuesNameTheFlag) {
  struct Case {
    void (*set)(FleetFlags&);
    const char* want;  // the start of the message
  };
  const Case cases[] = {
      {[](FleetFlags& f) { f.etcd = "127.0.0.1:2379,,x:1"; }, "--fleet_etcd=127.0.0.1:2379,,x:1: "},
      {[](FleetFlags& f) { f.etcd = "ftp://x:1"; }, "--fleet_etcd=ftp://x:1: "},
      {[](FleetFlags& f) { f.fleet = "Prod"; }, "--fleet=Prod: fleet name \"Prod\": 'P'"},
      {[](FleetFlags& f) { f.fleet = std::string(64, 'a'); }, "--fleet=aaaa"},
      {[](FleetFlags& f) { f.node = "a/b"; }, "--node_name=a/b: node name"},
      {[](FleetFlags& f) { f.underlay = "198.18.0.300"; },
       "--fleet_underlay=198.18.0.300: \"198.18.0.300\" is not an IP address"},
      {[](FleetFlags& f) { f.underlay = "198.18.0.1,198.18.0.1"; },
       "--fleet_underlay=198.18.0.1,198.18.0.1: 198.18.0.1 is listed twice"},
      {[](FleetFlags& f) { f.underlay = "0.0.0.0"; }, "--fleet_underlay=0.0.0.0: 0.0.0.0 cannot"},
      {[](FleetFlags& f) { f.underlay = "198.18.0.1,"; },
       "--fleet_underlay=198.18.0.1,: an empty entry"},
      {[](FleetFlags& f) { f.advertise_prefixes = "10.244.1.1/24"; },
       "--advertise_prefixes=10.244.1.1/24: 10.244.1.1/24 has host bits set (the prefix is "
       "10.244.1.0/24)"},
      {[](FleetFlags& f) { f.advertise_prefixes = "10.244.1.0/33"; },
       "--advertise_prefixes=10.244.1.0/33: \"10.244.1.0/33\" is not a CIDR prefix"},
      {[](FleetFlags& f) { f.lease_ttl = absl::Seconds(1); },
       "--fleet_lease_ttl=1s: want 2s to 1h"},
      {[](FleetFlags& f) { f.lease_ttl = absl::Hours(2); }, "--fleet_lease_ttl=2h: want 2s to 1h"},
      {[](FleetFlags& f) { f.lease_ttl = absl::Milliseconds(2500); },
       "--fleet_lease_ttl=2.5s: want whole seconds"},
      {[](FleetFlags& f) { f.agent_endpoint = "nope"; }, "--fleet_agent_endpoint=nope: want"},
      {[](FleetFlags& f) { f.agent_endpoint = "0.0.0.0:50051"; },
       "--fleet_agent_endpoint=0.0.0.0:50051: a wildcard"},
      {[](FleetFlags& f) { f.agent_endpoint = "unix:relative.sock"; },
       "--fleet_agent_endpoint=unix:relative.sock: want unix:/ABSOLUTE/PATH"},
      {[](FleetFlags& f) { f.agent_endpoint = "198.18.0.1:70000"; },
       "--fleet_agent_endpoint=198.18.0.1:70000: want"},
      {[](FleetFlags& f) { f.etcd_cert = "/c.pem"; },
       "--fleet_etcd_cert and --fleet_etcd_key go together"},
      {[](FleetFlags& f) { f.etcd_ca = "/nonexistent/ca.pem"; },
       "--fleet_etcd_ca=/nonexistent/ca.pem: cannot be read"},
      {[](FleetFlags& f) { f.etcd_user = "node-n1"; },
       "--fleet_etcd_user and --fleet_etcd_password_file go together"},
      {[](FleetFlags& f) {
         f.etcd_user = "node-n1";
         f.etcd_password_file = "/nonexistent/pw";
       },
       "--fleet_etcd_password_file=/nonexistent/pw: cannot be read"},
  };
  for (const Case& c : cases) {
    FleetFlags flags = Valid();
    c.set(flags);
    const std::string error = ErrorOf(flags);
    EXPECT_TRUE(absl::StartsWith(error, c.want)) << "got: " << error << "\nwant: " << c.want;
  }
}

TEST_F(FleetFlagsTest, AgentEndpointDerivedOnlyWhereOthersCanDialIt) {
  FleetFlags flags = Valid();
  flags.grpc_listen = "[fd00::1]:50051";
  absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->registration.agent_endpoint(), "[fd00::1]:50051");

  for (const char* listen : {"0.0.0.0:50051", "[::]:50051", ":50051"}) {
    flags.grpc_listen = listen;
    EXPECT_TRUE(absl::StrContains(ErrorOf(flags), "listens on every address")) << listen;
  }
  for (const char* listen : {"127.0.0.1:50051", "[::1]:50051", "localhost:50051"}) {
    flags.grpc_listen = listen;
    EXPECT_TRUE(absl::StrContains(ErrorOf(flags), "is loopback")) << listen;
  }
  flags.grpc_listen = "unix:/run/tunnel-agent/agent.sock";
  EXPECT_TRUE(absl::StartsWith(ErrorOf(flags),
                               "--fleet_agent_endpoint is required with --fleet_etcd: "
                               "--grpc_listen=unix:/run/tunnel-agent/agent.sock is a unix socket"));
  // Given, it wins, whatever --grpc_listen is.
  flags.agent_endpoint = "unix:/run/tunnel-agent/agent.sock";
  got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->registration.agent_endpoint(), "unix:/run/tunnel-agent/agent.sock");
  flags.agent_endpoint = "node1.example.com:50051";
  got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->registration.agent_endpoint(), "node1.example.com:50051");
}

TEST_F(FleetFlagsTest, ShortTtlShortensRetriesAndCalls) {
  FleetFlags flags = Valid();
  flags.lease_ttl = absl::Seconds(2);
  absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->lease_ttl, absl::Seconds(2));
  EXPECT_EQ((*got)->max_retry, absl::Seconds(2) / 3);
  EXPECT_EQ((*got)->etcd.call_timeout, absl::Seconds(1));
}

TEST_F(FleetFlagsTest, CredentialsAndTls) {
  FleetFlags flags = Valid();
  flags.etcd_user = "node-n1";
  flags.etcd_password_file = WriteFile("pw", "s3cret\n");
  flags.etcd_ca = WriteFile("ca.pem", "x");
  flags.etcd_cert = WriteFile("cert.pem", "x");
  flags.etcd_key = WriteFile("key.pem", "x");
  absl::StatusOr<std::optional<FleetRegistrationOptions>> got = FleetOptionsFromFlags(flags);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->etcd.username, "node-n1");
  EXPECT_EQ((*got)->etcd.password, "s3cret");  // the line's newline is not the password's
  EXPECT_EQ((*got)->etcd.ca_file, flags.etcd_ca);
  EXPECT_EQ((*got)->etcd.cert_file, flags.etcd_cert);
  EXPECT_EQ((*got)->etcd.key_file, flags.etcd_key);

  flags.etcd_password_file = WriteFile("empty", "\n");
  EXPECT_TRUE(absl::StrContains(ErrorOf(flags), "is empty"));
}

// ---- Against a real etcd ---------------------------------------------------------------------

constexpr absl::Duration kTtl = absl::Seconds(2);

class FleetRegistrationTest : public ::tunnelagent::testing::EtcdTest {
 protected:
  void SetUp() override {
    EtcdTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    reader_ = MustConnect(cluster());
    ASSERT_NE(reader_, nullptr);
  }

  FleetRegistrationOptions Options() {
    FleetRegistrationOptions options;
    options.etcd.endpoints = cluster().endpoints();
    options.etcd.call_timeout = absl::Seconds(1);
    options.key = fleet::NodeKey("f", "n1");
    v1::NodeRegistration& r = options.registration;
    r.set_node("n1");
    r.add_underlay("198.18.0.1");
    r.add_advertise_prefixes("10.244.1.0/24");
    r.set_agent_endpoint("198.18.0.1:50051");
    r.set_version("0.1.0");
    r.mutable_capabilities()->add_modes("gre");
    r.mutable_capabilities()->add_features("multipoint");
    r.mutable_capabilities()->set_max_peers_per_tunnel(16384);
    options.lease_ttl = kTtl;
    options.max_retry = kTtl / 3;
    return options;
  }

  // The key as etcd has it now; nullopt when absent (or unreadable: a test failure).
  std::optional<etcd::KeyValue> Read() {
    absl::StatusOr<etcd::RangeResult> got = reader_->Get(fleet::NodeKey("f", "n1"));
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok() || got->kvs.empty()) return std::nullopt;
    return got->kvs.front();
  }
  // Whether the key is there bound to `lease` (any lease but 0 for -1).
  bool HeldBy(int64_t lease) {
    std::optional<etcd::KeyValue> kv = Read();
    return kv.has_value() && (lease == -1 ? kv->lease != 0 : kv->lease == lease);
  }
  bool WaitRegistered(const FleetRegistration& registration, const FleetMetrics& metrics,
                      absl::Duration timeout = absl::Seconds(5)) {
    return Eventually(
        [&] {
          return metrics.registered() && registration.lease() != 0 && HeldBy(registration.lease());
        },
        timeout);
  }

  std::unique_ptr<etcd::Client> reader_;
};

TEST_F(FleetRegistrationTest, RegistersTheNodeAsJsonBoundToALease) {
  auto metrics = std::make_shared<FleetMetrics>();
  const absl::Time before = absl::Now();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));

  std::optional<etcd::KeyValue> kv = Read();
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, registration->lease());
  // protobuf's JSON mapping: lowerCamelCase names.
  for (const char* field :
       {"\"node\":\"n1\"", "\"underlay\":[\"198.18.0.1\"]",
        "\"advertisePrefixes\":[\"10.244.1.0/24\"]", "\"agentEndpoint\":\"198.18.0.1:50051\"",
        "\"version\":\"0.1.0\"", "\"maxPeersPerTunnel\":16384", "\"registeredAt\":\""}) {
    EXPECT_TRUE(absl::StrContains(kv->value, field)) << field << " not in " << kv->value;
  }
  v1::NodeRegistration parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(kv->value, &parsed).ok()) << kv->value;
  v1::NodeRegistration want = Options().registration;
  *want.mutable_registered_at() = parsed.registered_at();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, want))
      << parsed.DebugString();
  const absl::Time registered_at = absl::FromUnixNanos(
      google::protobuf::util::TimeUtil::TimestampToNanoseconds(parsed.registered_at()));
  EXPECT_GE(registered_at, before - absl::Seconds(1));
  EXPECT_LE(registered_at, absl::Now());

  // The lease is the TTL asked for.
  absl::StatusOr<absl::Duration> ttl = reader_->KeepAliveOnce(kv->lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, kTtl);
  // Renewed: still there well past the TTL.
  absl::SleepFor(kTtl * 2);
  EXPECT_TRUE(HeldBy(registration->lease()));
  EXPECT_TRUE(metrics->registered());
  EXPECT_EQ(metrics->registrations(), 1u);
  EXPECT_EQ(metrics->etcd_errors(), 0u);
}

// What a killed agent amounts to: nobody renews, nobody revokes.
TEST_F(FleetRegistrationTest, KeyLapsesWithinTheTtlOnceRenewalsStop) {
  auto metrics = std::make_shared<FleetMetrics>();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));
  const int64_t lease = registration->lease();
  registration->Stop();
  const absl::Time stopped = absl::Now();
  EXPECT_TRUE(HeldBy(lease)) << "Stop revoked the lease";
  ASSERT_TRUE(Eventually([&] { return !Read().has_value(); }, kTtl + absl::Seconds(1)))
      << "the key is still there " << (absl::Now() - stopped) << " after the renewals stopped";
  EXPECT_FALSE(metrics->registered());
}

TEST_F(FleetRegistrationTest, LeaveRevokesAtOnce) {
  auto metrics = std::make_shared<FleetMetrics>();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));
  registration->Leave();
  EXPECT_FALSE(Read().has_value()) << "the key outlived Leave";
  EXPECT_FALSE(metrics->registered());
  EXPECT_EQ(registration->lease(), 0);
}

TEST_F(FleetRegistrationTest, EtcdDownLongerThanTheTtlThenBack) {
  auto metrics = std::make_shared<FleetMetrics>();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));
  ASSERT_TRUE(cluster().KillMember(0).ok());
  absl::SleepFor(kTtl + absl::Seconds(1));
  EXPECT_FALSE(metrics->registered());
  EXPECT_GT(metrics->etcd_errors(), 0u);

  ASSERT_TRUE(cluster().StartMember(0).ok()) << cluster().LogTail(0);
  const absl::Time back = absl::Now();
  ASSERT_TRUE(WaitRegistered(*registration, *metrics, absl::Seconds(5)))
      << "not registered " << (absl::Now() - back) << " after etcd came back";
  // etcd's restart gave the old lease a new TTL: past it, the key lives only if renewed.
  absl::SleepFor(kTtl * 2);
  EXPECT_TRUE(HeldBy(registration->lease()));
  EXPECT_TRUE(metrics->registered());
}

TEST_F(FleetRegistrationTest, LeaseRevokedBehindItsBackRegistersAgain) {
  auto metrics = std::make_shared<FleetMetrics>();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));
  const int64_t first = registration->lease();
  ASSERT_TRUE(reader_->RevokeLease(first).ok());
  EXPECT_FALSE(Read().has_value());
  // Found at the next renewal (a third of the TTL), then registered at once.
  ASSERT_TRUE(Eventually(
      [&] {
        std::optional<etcd::KeyValue> kv = Read();
        return kv.has_value() && kv->lease != first && kv->lease == registration->lease();
      },
      kTtl / 3 + absl::Seconds(2)));
  EXPECT_EQ(metrics->registrations(), 2u);
  EXPECT_TRUE(metrics->registered());
}

// A hot upgrade: the new agent registers the same key under its own lease; the old one, should
// its lease be lost, does not take the key back, and does once the key has gone.
TEST_F(FleetRegistrationTest, StandsBackWhileAnotherAgentHoldsTheKey) {
  auto old_metrics = std::make_shared<FleetMetrics>();
  std::unique_ptr<FleetRegistration> old_agent = FleetRegistration::Start(Options(), old_metrics);
  ASSERT_TRUE(WaitRegistered(*old_agent, *old_metrics));
  const int64_t old_lease = old_agent->lease();

  auto new_metrics = std::make_shared<FleetMetrics>();
  FleetRegistrationOptions new_options = Options();
  new_options.registration.set_version("0.2.0");
  std::unique_ptr<FleetRegistration> new_agent = FleetRegistration::Start(new_options, new_metrics);
  ASSERT_TRUE(WaitRegistered(*new_agent, *new_metrics));
  EXPECT_NE(new_agent->lease(), old_lease);
  const int64_t mod_revision = Read()->mod_revision;

  ASSERT_TRUE(reader_->RevokeLease(old_lease).ok());
  EXPECT_TRUE(HeldBy(new_agent->lease())) << "revoking the old lease took the new agent's key";
  // Past the old agent's next renewal and its attempt to register again.
  absl::SleepFor(kTtl);
  std::optional<etcd::KeyValue> kv = Read();
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, new_agent->lease());
  EXPECT_EQ(kv->mod_revision, mod_revision) << "the old agent wrote the key again";
  EXPECT_TRUE(absl::StrContains(kv->value, "\"version\":\"0.2.0\"")) << kv->value;
  EXPECT_FALSE(old_metrics->registered());
  EXPECT_EQ(old_metrics->registrations(), 1u);

  new_agent->Leave();
  ASSERT_TRUE(Eventually([&] { return old_agent->lease() != 0 && HeldBy(old_agent->lease()); },
                         kTtl / 3 + absl::Seconds(2)))
      << "the old agent did not take the key once it had gone";
  EXPECT_TRUE(old_metrics->registered());
}

// Fail static: started while etcd is down, the registration returns at once and never holds
// anything up; it registers once etcd is there.
TEST_F(FleetRegistrationTest, StartsWhileEtcdIsDownAndRegistersWhenItComes) {
  ASSERT_TRUE(cluster().KillMember(0).ok());
  auto metrics = std::make_shared<FleetMetrics>();
  const absl::Time t0 = absl::Now();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(Options(), metrics);
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(100));
  EXPECT_TRUE(Eventually([&] { return metrics->etcd_errors() >= 2; }, absl::Seconds(5)));
  EXPECT_FALSE(metrics->registered());
  EXPECT_EQ(registration->lease(), 0);

  ASSERT_TRUE(cluster().StartMember(0).ok()) << cluster().LogTail(0);
  reader_ = MustConnect(cluster());
  EXPECT_TRUE(WaitRegistered(*registration, *metrics, absl::Seconds(5)));
  EXPECT_EQ(metrics->registrations(), 1u);
}

// Stopping while etcd is away takes no longer than a call's timeout.
TEST_F(FleetRegistrationTest, LeaveWithEtcdDownIsBounded) {
  auto metrics = std::make_shared<FleetMetrics>();
  FleetRegistrationOptions options = Options();
  std::unique_ptr<FleetRegistration> registration = FleetRegistration::Start(options, metrics);
  ASSERT_TRUE(WaitRegistered(*registration, *metrics));
  ASSERT_TRUE(cluster().KillMember(0).ok());
  const absl::Time t0 = absl::Now();
  registration->Leave();
  // A renewal in flight, then the revoke: each bounded by the call timeout.
  EXPECT_LT(absl::Now() - t0, 2 * options.etcd.call_timeout + absl::Milliseconds(500));
}

}  // namespace
}  // namespace tunnelagent::agent
