#include "agent/metrics.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dataplane/tunnel_counters.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

TunnelSpec Tunnel(const std::string& name, TunnelMode mode, const std::string& remote, int n) {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = mode;
  spec.remote = *IpAddress::Parse(remote);
  spec.addresses = {*IpPrefix::Parse(absl::StrCat("10.", n, ".0.1/30"))};
  return spec;
}

class AgentMetricsTest : public ::testing::Test {
 protected:
  // "name{label=value,...}" -> value, for every sample of family `name`.
  std::map<std::string, double> Samples(const std::string& name) const {
    std::map<std::string, double> samples;
    for (const prometheus::MetricFamily& family : metrics_.Collect()) {
      if (family.name != name) continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        std::vector<std::string> labels;
        for (const auto& l : m.label) labels.push_back(absl::StrCat(l.name, "=", l.value));
        const double value =
            family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
        samples[absl::StrCat(name, "{", absl::StrJoin(labels, ","), "}")] = value;
      }
    }
    return samples;
  }
  std::optional<prometheus::MetricType> TypeOf(const std::string& name) const {
    for (const prometheus::MetricFamily& family : metrics_.Collect()) {
      if (family.name == name) return family.type;
    }
    return std::nullopt;
  }
  std::shared_ptr<dataplane::TunnelStats> CountersOf(const std::string& name) const {
    return engine_.tunnels().at(name).stats;
  }

  fakes::EventLog log_;
  fakes::FakeLinkControl links_{&log_};
  fakes::FakePacketEngine engine_{&log_};
  fakes::FakeStateStore store_{&log_};
  TunnelManager manager_{&links_, &engine_, &store_, TunnelManager::Options{}};
  AgentMetrics metrics_{&manager_, &engine_, "1.2.3"};
};

TEST_F(AgentMetricsTest, PathMtuAndPmtuCountersForEveryTunnel) {
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  CountersOf("gre1")->path_mtu.store(1436);
  CountersOf("gre1")->worker(0).icmp_too_big_sent.Add(3);
  CountersOf("ipip1")->worker(0).tx_fragmented.Add(2);

  EXPECT_EQ(TypeOf("tunnelagent_tunnel_path_mtu_bytes"), prometheus::MetricType::Gauge);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_icmp_too_big_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_tx_fragmented_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_path_mtu_bytes"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_path_mtu_bytes{tunnel=gre1}", 1436},
                                     {"tunnelagent_tunnel_path_mtu_bytes{tunnel=ipip1}", 0}}));
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_icmp_too_big_total"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_icmp_too_big_total{tunnel=gre1}", 3},
                                     {"tunnelagent_tunnel_icmp_too_big_total{tunnel=ipip1}", 0}}));
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_tx_fragmented_total"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_tx_fragmented_total{tunnel=gre1}", 0},
                                     {"tunnelagent_tunnel_tx_fragmented_total{tunnel=ipip1}", 2}}));
}

TEST_F(AgentMetricsTest, CountersAreSummedOverTheWorkers) {
  engine_.set_workers(3);
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  ASSERT_EQ(CountersOf("gre1")->workers(), 3u);
  EXPECT_EQ(Samples("tunnelagent_dataplane_workers"),
            (std::map<std::string, double>{{"tunnelagent_dataplane_workers{}", 3}}));
  CountersOf("gre1")->worker(0).rx_packets.Add(4);
  CountersOf("gre1")->worker(2).rx_packets.Add(5);
  CountersOf("gre1")->worker(1).rx_drops[static_cast<int>(dataplane::DropReason::kGreChecksum)].Add(
      2);
  CountersOf("gre1")->worker(2).rx_drops[static_cast<int>(dataplane::DropReason::kGreChecksum)].Add(
      1);
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_rx_packets_total"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_rx_packets_total{tunnel=gre1}", 9}}));
  EXPECT_EQ(
      Samples(
          "tunnelagent_tunnel_drops_total")["tunnelagent_tunnel_drops_total{direction=rx,reason=" +
                                            std::string(dataplane::DropReasonName(
                                                dataplane::DropReason::kGreChecksum)) +
                                            ",tunnel=gre1}"],
      3);
}

TEST_F(AgentMetricsTest, OffloadCountersForEveryTunnel) {
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  CountersOf("gre1")->worker(0).tx_super_packets.Add(5);
  CountersOf("ipip1")->worker(0).rx_coalesced.Add(7);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_tx_super_packets_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_rx_coalesced_packets_total"),
            prometheus::MetricType::Counter);
  EXPECT_EQ(Samples("tunnelagent_tunnel_tx_super_packets_total"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_tx_super_packets_total{tunnel=gre1}", 5},
                {"tunnelagent_tunnel_tx_super_packets_total{tunnel=ipip1}", 0}}));
  EXPECT_EQ(Samples("tunnelagent_tunnel_rx_coalesced_packets_total"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_rx_coalesced_packets_total{tunnel=gre1}", 0},
                {"tunnelagent_tunnel_rx_coalesced_packets_total{tunnel=ipip1}", 7}}));
}

// Every counter of the one list (tunnel_counters.h) is a family of its own, under the name
// dashboards rely on, with what the workers counted for it and nothing else.
TEST_F(AgentMetricsTest, EveryCounterOfTheListIsItsOwnFamily) {
  engine_.set_workers(2);
  TunnelSpec spec = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  spec.keepalive.interval = absl::Seconds(10);  // the keepalive families too
  ASSERT_TRUE(manager_.Create(spec).ok());
  std::map<std::string, double> want;
  uint64_t next = 1;
#define COUNT(member, api_field, metric, help)    \
  CountersOf("gre1")->worker(0).member.Add(1);    \
  CountersOf("gre1")->worker(1).member.Add(next); \
  want[metric] = 1 + next++;
  TUNNEL_COUNTERS(COUNT)
#undef COUNT
  // The names are a contract: the list may grow, never rename.
  for (const char* name :
       {"tunnelagent_tunnel_tx_packets_total", "tunnelagent_tunnel_tx_bytes_total",
        "tunnelagent_tunnel_rx_packets_total", "tunnelagent_tunnel_rx_bytes_total",
        "tunnelagent_tunnel_icmp_too_big_total", "tunnelagent_tunnel_tx_fragmented_total",
        "tunnelagent_tunnel_tx_super_packets_total",
        "tunnelagent_tunnel_rx_coalesced_packets_total", "tunnelagent_tunnel_keepalive_sent_total",
        "tunnelagent_tunnel_keepalive_replies_total",
        "tunnelagent_tunnel_keepalive_answered_total"}) {
    EXPECT_EQ(want.count(name), 1u) << name << " is not in the counter list";
  }
  for (const auto& [name, value] : want) {
    EXPECT_EQ(TypeOf(name), prometheus::MetricType::Counter) << name;
    EXPECT_EQ(Samples(name),
              (std::map<std::string, double>{{absl::StrCat(name, "{tunnel=gre1}"), value}}));
  }
  // And what the API reports is the same sums.
  absl::StatusOr<TunnelView> view = manager_.Get("gre1");
  ASSERT_TRUE(view.ok()) << view.status();
  ASSERT_TRUE(view->status.keepalive.has_value());
#define EXPECT_SUM(member, api_field, metric, help) \
  EXPECT_EQ(view->status.counters.api_field, want[metric]) << metric;
  TUNNEL_TRAFFIC_COUNTERS(EXPECT_SUM)
#undef EXPECT_SUM
#define EXPECT_SUM(member, api_field, metric, help) \
  EXPECT_EQ(view->status.keepalive->api_field, want[metric]) << metric;
  TUNNEL_KEEPALIVE_COUNTERS(EXPECT_SUM)
#undef EXPECT_SUM
}

// Keepalive series exist only for the tunnels that send keepalives: the others would add a
// series each, forever 0.
TEST_F(AgentMetricsTest, KeepaliveSeriesOnlyForTunnelsWithKeepalive) {
  TunnelSpec ka = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  ka.keepalive = {absl::Seconds(10), 0};
  ASSERT_TRUE(manager_.Create(ka).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  const auto counters = CountersOf("gre1");
  counters->worker(0).keepalive_sent.Add(5);
  counters->worker(0).keepalive_replies.Add(4);
  counters->worker(0).keepalive_answered.Add(6);

  EXPECT_EQ(TypeOf("tunnelagent_tunnel_peer_alive"), prometheus::MetricType::Gauge);
  for (const char* name :
       {"tunnelagent_tunnel_keepalive_sent_total", "tunnelagent_tunnel_keepalive_replies_total",
        "tunnelagent_tunnel_keepalive_answered_total"}) {
    EXPECT_EQ(TypeOf(name), prometheus::MetricType::Counter) << name;
  }
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_keepalive_sent_total"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_keepalive_sent_total{tunnel=gre1}", 5}}));
  EXPECT_EQ(Samples("tunnelagent_tunnel_keepalive_replies_total"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_keepalive_replies_total{tunnel=gre1}", 4}}));
  EXPECT_EQ(Samples("tunnelagent_tunnel_keepalive_answered_total"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_keepalive_answered_total{tunnel=gre1}", 6}}));
  EXPECT_EQ(Samples("tunnelagent_tunnel_peer_alive"),
            (std::map<std::string, double>{{"tunnelagent_tunnel_peer_alive{tunnel=gre1}", 1}}));

  counters->peer_alive.store(false);
  EXPECT_EQ(Samples("tunnelagent_tunnel_peer_alive"),
            (std::map<std::string, double>{{"tunnelagent_tunnel_peer_alive{tunnel=gre1}", 0}}));

  // Turned off: its keepalive series go.
  TunnelSpec off;
  ASSERT_TRUE(manager_.Update("gre1", off, {"keepalive"}, "").ok());
  EXPECT_THAT(Samples("tunnelagent_tunnel_peer_alive"), IsEmpty());
  EXPECT_THAT(Samples("tunnelagent_tunnel_keepalive_sent_total"), IsEmpty());
}

TEST_F(AgentMetricsTest, ExpositionHasHelpAndTypeOfTheNewFamilies) {
  TunnelSpec ka = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  ka.keepalive = {absl::Seconds(1), 0};
  ASSERT_TRUE(manager_.Create(ka).ok());
  const std::string text = prometheus::TextSerializer().Serialize(metrics_.Collect());
  for (const char* line : {"# TYPE tunnelagent_tunnel_path_mtu_bytes gauge",
                           "# TYPE tunnelagent_tunnel_peer_alive gauge",
                           "# TYPE tunnelagent_tunnel_icmp_too_big_total counter",
                           "# TYPE tunnelagent_tunnel_tx_fragmented_total counter",
                           "# TYPE tunnelagent_tunnel_keepalive_sent_total counter",
                           "# TYPE tunnelagent_tunnel_keepalive_replies_total counter",
                           "# TYPE tunnelagent_tunnel_keepalive_answered_total counter",
                           "# HELP tunnelagent_tunnel_path_mtu_bytes ",
                           "tunnelagent_tunnel_peer_alive{tunnel=\"gre1\"} 1"}) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  // No peer address in any label but the info metric's: every other family stays one series
  // per tunnel, and addresses are joined in from tunnelagent_tunnel_info when wanted.
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "tunnelagent_tunnel_info{")) continue;
    EXPECT_THAT(line, Not(HasSubstr("203.0.113.7")));
  }
}

// One series per tunnel with its addresses and key, and nothing else, whatever it carries.
TEST_F(AgentMetricsTest, TunnelInfoHasModeAddressesAndKey) {
  TunnelSpec keyed = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  keyed.local = *IpAddress::Parse("198.18.0.1");
  keyed.key = 7;
  ASSERT_TRUE(manager_.Create(keyed).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  TunnelSpec split = Tunnel("gre2", TunnelMode::kGre, "203.0.113.9", 3);
  split.input_key = 5;
  split.output_key = 6;
  ASSERT_TRUE(manager_.Create(split).ok());
  TunnelSpec out_only = Tunnel("gre3", TunnelMode::kGre, "203.0.113.10", 4);
  out_only.output_key = 9;
  ASSERT_TRUE(manager_.Create(out_only).ok());
  TunnelSpec v6 = Tunnel("v6", TunnelMode::kIp6gre, "2001:db8::2", 5);
  v6.local = *IpAddress::Parse("2001:db8::1");
  ASSERT_TRUE(manager_.Create(v6).ok());

  EXPECT_EQ(TypeOf("tunnelagent_tunnel_info"), prometheus::MetricType::Gauge);
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_info"),
      (std::map<std::string, double>{
          {"tunnelagent_tunnel_info{key=7,local=198.18.0.1,mode=gre,remote=203.0.113.7,"
           "tunnel=gre1}",
           1},
          {"tunnelagent_tunnel_info{key=5/6,local=,mode=gre,remote=203.0.113.9,tunnel=gre2}", 1},
          {"tunnelagent_tunnel_info{key=/9,local=,mode=gre,remote=203.0.113.10,tunnel=gre3}", 1},
          {"tunnelagent_tunnel_info{key=,local=,mode=ipip,remote=203.0.113.8,tunnel=ipip1}", 1},
          {"tunnelagent_tunnel_info{key=,local=2001:db8::1,mode=ip6gre,remote=2001:db8::2,"
           "tunnel=v6}",
           1}}));

  // Follows an update, and goes with the tunnel.
  TunnelSpec moved;
  moved.remote = *IpAddress::Parse("203.0.113.77");
  ASSERT_TRUE(manager_.Update("ipip1", moved, {"remote"}, "").ok());
  EXPECT_EQ(Samples("tunnelagent_tunnel_info")
                ["tunnelagent_tunnel_info{key=,local=,mode=ipip,remote=203.0.113.77,tunnel=ipip1}"],
            1);
  ASSERT_TRUE(manager_.Delete("gre1").ok());
  ASSERT_TRUE(manager_.Delete("gre2").ok());
  ASSERT_TRUE(manager_.Delete("gre3").ok());
  ASSERT_TRUE(manager_.Delete("v6").ok());
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_info"),
      (std::map<std::string, double>{
          {"tunnelagent_tunnel_info{key=,local=,mode=ipip,remote=203.0.113.77,tunnel=ipip1}", 1}}));
}

TEST_F(AgentMetricsTest, MaxTunnelsIsTheManagersLimit) {
  EXPECT_EQ(TypeOf("tunnelagent_max_tunnels"), prometheus::MetricType::Gauge);
  EXPECT_EQ(Samples("tunnelagent_max_tunnels"),
            (std::map<std::string, double>{{"tunnelagent_max_tunnels{}", 4096}}));

  TunnelManager::Options options;
  options.max_tunnels = 3;
  TunnelManager small(&links_, &engine_, &store_, options);
  AgentMetrics metrics(&small, &engine_, "1.2.3");
  const std::string text = prometheus::TextSerializer().Serialize(metrics.Collect());
  EXPECT_THAT(text, HasSubstr("\ntunnelagent_max_tunnels 3\n"));
}

// Every what of every tunnel exists at 0 from the tunnel's creation, even when it could not
// be brought up, so that increase() sees the first repair.
TEST_F(AgentMetricsTest, RepairSeriesExistAtZeroFromCreation) {
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_repairs_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(Samples("tunnelagent_tunnel_repairs_total"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_repairs_total{tunnel=gre1,what=address}", 0},
                {"tunnelagent_tunnel_repairs_total{tunnel=gre1,what=link}", 0},
                {"tunnelagent_tunnel_repairs_total{tunnel=gre1,what=mtu}", 0},
                {"tunnelagent_tunnel_repairs_total{tunnel=gre1,what=route}", 0}}));
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_state_changes_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(
      Samples("tunnelagent_tunnel_state_changes_total"),
      (std::map<std::string, double>{{"tunnelagent_tunnel_state_changes_total{tunnel=gre1}", 0}}));
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_last_receive_timestamp_seconds"),
            prometheus::MetricType::Gauge);
  EXPECT_EQ(Samples("tunnelagent_tunnel_last_receive_timestamp_seconds"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_last_receive_timestamp_seconds{tunnel=gre1}", 0}}));
}

// Changes someone else makes to a managed device, put back by the manager, counted by what.
TEST_F(AgentMetricsTest, RepairsCountedByWhat) {
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  const uint32_t mtu = links_.links().at("gre1").mtu;
  links_.Mutable("gre1").mtu = mtu - 100;
  manager_.RefreshStates();
  ASSERT_EQ(links_.links().at("gre1").mtu, mtu) << "the MTU was not put back";
  links_.Mutable("gre1").mtu = mtu - 100;
  manager_.RefreshStates();
  links_.Mutable("gre1").addresses.clear();
  manager_.RefreshStates();
  ASSERT_THAT(links_.links().at("gre1").addresses, Not(IsEmpty()));

  std::map<std::string, double> expected;
  for (const char* tunnel : {"gre1", "ipip1"}) {
    for (const char* what : {"address", "link", "mtu", "route"}) {
      expected[absl::StrCat("tunnelagent_tunnel_repairs_total{tunnel=", tunnel, ",what=", what,
                            "}")] = 0;
    }
  }
  expected["tunnelagent_tunnel_repairs_total{tunnel=gre1,what=mtu}"] = 2;
  expected["tunnelagent_tunnel_repairs_total{tunnel=gre1,what=address}"] = 1;
  EXPECT_EQ(Samples("tunnelagent_tunnel_repairs_total"), expected);
}

TEST_F(AgentMetricsTest, StateChangesCountEachChange) {
  TunnelSpec ka = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  ka.keepalive = {absl::Seconds(10), 0};
  ASSERT_TRUE(manager_.Create(ka).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  const std::string gre1 = "tunnelagent_tunnel_state_changes_total{tunnel=gre1}";
  const std::string ipip1 = "tunnelagent_tunnel_state_changes_total{tunnel=ipip1}";
  const double start = Samples("tunnelagent_tunnel_state_changes_total")[gre1];

  CountersOf("gre1")->peer_alive.store(false);
  manager_.RefreshStates();
  ASSERT_EQ(manager_.Get("gre1")->status.state, OperState::kDown);
  manager_.RefreshStates();  // still down: no change
  CountersOf("gre1")->peer_alive.store(true);
  manager_.RefreshStates();
  ASSERT_EQ(manager_.Get("gre1")->status.state, OperState::kUp);
  EXPECT_EQ(Samples("tunnelagent_tunnel_state_changes_total"),
            (std::map<std::string, double>{{gre1, start + 2}, {ipip1, start}}));
}

TEST_F(AgentMetricsTest, LastReceiveInUnixSecondsZeroUntilAPacketCame) {
  ASSERT_TRUE(manager_.Create(Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1)).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  const std::string gre1 = "tunnelagent_tunnel_last_receive_timestamp_seconds{tunnel=gre1}";
  const std::string ipip1 = "tunnelagent_tunnel_last_receive_timestamp_seconds{tunnel=ipip1}";
  EXPECT_EQ(Samples("tunnelagent_tunnel_last_receive_timestamp_seconds"),
            (std::map<std::string, double>{{gre1, 0}, {ipip1, 0}}));

  const int64_t when = 1'700'000'123'250'000'000;  // 2023-11-14, and a quarter second
  CountersOf("gre1")->last_receive_unix_nanos.store(when);
  if (manager_.Get("gre1")->status.last_receive == absl::InfinitePast()) {
    GTEST_SKIP() << "TunnelManager does not copy TunnelStats::last_receive_unix_nanos into "
                    "TunnelStatus::last_receive yet";
  }
  std::map<std::string, double> samples =
      Samples("tunnelagent_tunnel_last_receive_timestamp_seconds");
  EXPECT_NEAR(samples[gre1], 1'700'000'123.25, 1e-6);
  EXPECT_EQ(samples[ipip1], 0);
  EXPECT_EQ(samples.size(), 2u);
}

// Only for tunnels with keepalive on, and only once a reply came: no made-up 0 before.
TEST_F(AgentMetricsTest, KeepaliveRttOnceAReplyCame) {
  TunnelSpec ka = Tunnel("gre1", TunnelMode::kGre, "203.0.113.7", 1);
  ka.keepalive = {absl::Seconds(10), 0};
  ASSERT_TRUE(manager_.Create(ka).ok());
  ASSERT_TRUE(manager_.Create(Tunnel("ipip1", TunnelMode::kIpip, "203.0.113.8", 2)).ok());
  EXPECT_THAT(Samples("tunnelagent_tunnel_keepalive_rtt_seconds"), IsEmpty());

  CountersOf("gre1")->keepalive_rtt_nanos.store(1'500'000);
  CountersOf("ipip1")->keepalive_rtt_nanos.store(2'000'000);  // keepalive off: never exported
  const std::optional<KeepaliveSnapshot> snapshot = manager_.Get("gre1")->status.keepalive;
  ASSERT_TRUE(snapshot.has_value());
  if (!snapshot->rtt.has_value()) {
    GTEST_SKIP() << "TunnelManager does not copy TunnelStats::keepalive_rtt_nanos into "
                    "KeepaliveSnapshot::rtt yet";
  }
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_keepalive_rtt_seconds"), prometheus::MetricType::Gauge);
  EXPECT_EQ(Samples("tunnelagent_tunnel_keepalive_rtt_seconds"),
            (std::map<std::string, double>{
                {"tunnelagent_tunnel_keepalive_rtt_seconds{tunnel=gre1}", 0.0015}}));
}

}  // namespace
}  // namespace tunnelagent::agent
