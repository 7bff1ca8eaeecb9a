#include "agent/metrics.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using dataplane::TunnelSpec;
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
    return engine_.tunnels().at(name).counters;
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

  EXPECT_EQ(TypeOf("tunnelagent_tunnel_path_mtu"), prometheus::MetricType::Gauge);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_icmp_too_big_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(TypeOf("tunnelagent_tunnel_tx_fragmented_total"), prometheus::MetricType::Counter);
  EXPECT_EQ(Samples("tunnelagent_tunnel_path_mtu"),
            (std::map<std::string, double>{{"tunnelagent_tunnel_path_mtu{tunnel=gre1}", 1436},
                                           {"tunnelagent_tunnel_path_mtu{tunnel=ipip1}", 0}}));
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
  for (const char* line :
       {"# TYPE tunnelagent_tunnel_path_mtu gauge", "# TYPE tunnelagent_tunnel_peer_alive gauge",
        "# TYPE tunnelagent_tunnel_icmp_too_big_total counter",
        "# TYPE tunnelagent_tunnel_tx_fragmented_total counter",
        "# TYPE tunnelagent_tunnel_keepalive_sent_total counter",
        "# TYPE tunnelagent_tunnel_keepalive_replies_total counter",
        "# TYPE tunnelagent_tunnel_keepalive_answered_total counter",
        "# HELP tunnelagent_tunnel_path_mtu ",
        "tunnelagent_tunnel_peer_alive{tunnel=\"gre1\"} 1"}) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  // No peer address in any label: cardinality stays one series per tunnel.
  EXPECT_THAT(text, Not(HasSubstr("203.0.113.7")));
}

}  // namespace
}  // namespace tunnelagent::agent
