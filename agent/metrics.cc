#include "agent/metrics.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agent/metric_family.h"
#include "dataplane/packet/drop_reason.h"
#include "dataplane/tunnel_counters.h"

namespace tunnelagent::agent {
namespace {

using dataplane::DropReason;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// A family of one of the tunnel counter lists (tunnel_counters.h) and the counter it sums.
struct CounterMetric {
  dataplane::Counter dataplane::TunnelCounters::*member;
  MetricFamily family;
};
#define COUNTER_METRIC(member, api_field, metric, help) \
  CounterMetric{&dataplane::TunnelCounters::member, Family(metric, help, MetricType::Counter)},

// Drop reasons that can happen on each direction of a tunnel: these series exist from the
// tunnel's creation (at 0), so rate() and alerts see them before the first drop.
constexpr std::array kTxReasons = {
    DropReason::kUnsupportedProtocol, DropReason::kBadInnerPacket, DropReason::kTooBig,
    DropReason::kSendError,           DropReason::kDeviceError,    DropReason::kLoop};
// Receive drops a tunnel counts itself: what its icsum/iseq refuse, a device that refuses a
// write, and a peer's keepalive that could not be sent back.
constexpr std::array kRxReasons = {DropReason::kGreChecksum, DropReason::kGreSequence,
                                   DropReason::kDeviceError, DropReason::kSendError,
                                   DropReason::kIcmpRejected};
// What an underlay packet can be dropped for before any tunnel matches it (the engine's receive
// path): send_error and device_error belong to a tunnel and are never counted here.
constexpr std::array kDataplaneReasons = {
    DropReason::kTruncated,      DropReason::kBadOuterHeader, DropReason::kGreVersion,
    DropReason::kGreRouting,     DropReason::kGreChecksum,    DropReason::kUnsupportedProtocol,
    DropReason::kBadInnerPacket, DropReason::kEcnError,       DropReason::kNoTunnel,
    DropReason::kTooBig,         DropReason::kSocketError};

// What the agent puts back on a managed device when someone else changed it: these series exist
// from the tunnel's creation (at 0), like the drop reasons.
constexpr std::array<const char*, 4> kRepairs = {"address", "route", "mtu", "link"};

template <size_t N, size_t M>
constexpr std::array<DropReason, N + M> Joined(const std::array<DropReason, N>& a,
                                               const std::array<DropReason, M>& b) {
  std::array<DropReason, N + M> out{};
  for (size_t i = 0; i < N; ++i) out[i] = a[i];
  for (size_t i = 0; i < M; ++i) out[N + i] = b[i];
  return out;
}
// Multipoint tunnels have these too: a packet to no peer's prefixes (tx), and from an address
// that is no peer's or with an inner source its peer may not send from (rx).
constexpr std::array kMultipointTxReasons = Joined(kTxReasons, std::array{DropReason::kNoPeer});
constexpr std::array kMultipointRxReasons =
    Joined(kRxReasons, std::array{DropReason::kUnknownPeer, DropReason::kSpoofedSource});

// The drop reasons of a tunnel's direction ("tx" or "rx") that have series from the start.
absl::Span<const DropReason> ExpectedDrops(absl::string_view direction, bool multipoint) {
  if (direction == "tx") {
    return multipoint ? absl::Span<const DropReason>(kMultipointTxReasons) : kTxReasons;
  }
  return multipoint ? absl::Span<const DropReason>(kMultipointRxReasons) : kRxReasons;
}

bool Listed(DropReason reason, absl::Span<const DropReason> reasons) {
  for (DropReason r : reasons) {
    if (r == reason) return true;
  }
  return false;
}

const char* StateName(OperState state) {
  switch (state) {
    case OperState::kUp:
      return "up";
    case OperState::kDown:
      return "down";
    case OperState::kError:
      return "error";
  }
  return "unknown";
}

// Adds a series for every listed reason, and for any other reason that has counted.
void AddDrops(MetricFamily& family, const std::string& tunnel, const char* direction,
              const dataplane::TunnelStats& stats,
              dataplane::DropCounters dataplane::TunnelCounters::*drops,
              absl::Span<const DropReason> expected) {
  for (int i = 0; i < dataplane::kDropReasonCount; ++i) {
    auto reason = static_cast<DropReason>(i);
    uint64_t value = stats.Sum(drops, reason);
    if (!Listed(reason, expected) && value == 0) continue;
    AddSample(family,
              {{"direction", direction},
               {"reason", std::string(dataplane::DropReasonName(reason))},
               {"tunnel", tunnel}},
              static_cast<double>(value));
  }
}

// The key label of tunnelagent_tunnel_info: "" without a key, the key when both directions use
// the same one, else "<input>/<output>" with "" for a direction without.
std::string KeyLabel(const TunnelSpec& spec) {
  const std::optional<uint32_t> in = InputKey(spec);
  const std::optional<uint32_t> out = OutputKey(spec);
  auto text = [](std::optional<uint32_t> key) { return key ? std::to_string(*key) : ""; };
  if (in == out) return text(in);
  return text(in) + "/" + text(out);
}

// A figure of the whole agent: a family of one sample without labels.
struct ScalarMetric {
  const char* name;
  const char* help;
  MetricType type;
  double value;
};

MetricFamily Scalar(const ScalarMetric& metric) {
  MetricFamily family = Family(metric.name, metric.help, metric.type);
  AddSample(family, {}, metric.value);
  return family;
}

}  // namespace

AgentMetrics::AgentMetrics(const TunnelManager* manager, const dataplane::PacketEngine* engine,
                           std::string version, bool io_uring_fallback)
    : manager_(manager),
      engine_(engine),
      version_(std::move(version)),
      io_uring_fallback_(io_uring_fallback) {}

std::vector<MetricFamily> AgentMetrics::Collect() const {
  scraped_.store(true, std::memory_order_relaxed);
  MetricFamily build =
      Family("tunnelagent_build_info",
             "Version and dataplane backend of the running agent (always 1).", MetricType::Gauge);
  AddSample(build, {{"io_backend", engine_->backend_name()}, {"version", version_}}, 1);
  const ScalarMetric agent_gauges[] = {
      {"tunnelagent_dataplane_io_uring_fallback",
       "1 when --io_backend=auto found io_uring refused (e.g. by seccomp) and runs on epoll.",
       MetricType::Gauge, io_uring_fallback_ ? 1.0 : 0.0},
      {"tunnelagent_dataplane_workers",
       "Dataplane threads moving packets, each with its own ring and sockets "
       "(--dataplane_workers).",
       MetricType::Gauge, static_cast<double>(engine_->workers())},
      {"tunnelagent_max_tunnels",
       "Tunnels the agent accepts (--max_tunnels); creates beyond fail RESOURCE_EXHAUSTED.",
       MetricType::Gauge, static_cast<double>(manager_->max_tunnels())},
      {"tunnelagent_tunnels_verifying",
       "Tunnels forwarding again on the devices an agent that crashed left, whose addresses, "
       "routes, MTU and link state are still being checked (0 once the restore is done).",
       MetricType::Gauge, static_cast<double>(manager_->VerifyingCount())},
  };

  MetricFamily tunnels =
      Family("tunnelagent_tunnels", "Tunnels by mode and operational state.", MetricType::Gauge);
  MetricFamily up =
      Family("tunnelagent_tunnel_up", "1 when the tunnel's device is up and its packets are moved.",
             MetricType::Gauge);
  // The tunnel's addresses as labels, one series per tunnel: join on `tunnel` to see them beside
  // any other series, without putting addresses on those.
  MetricFamily info = Family("tunnelagent_tunnel_info",
                             "The tunnel's mode, local and remote address and GRE key (always 1; "
                             "local and key empty when not set).",
                             MetricType::Gauge);
  MetricFamily state_changes =
      Family("tunnelagent_tunnel_state_changes_total",
             "Changes of the tunnel's operational state (up, down, error) since the agent started.",
             MetricType::Counter);
  MetricFamily last_receive =
      Family("tunnelagent_tunnel_last_receive_timestamp_seconds",
             "When the dataplane last delivered a received packet into the tunnel's device, in "
             "Unix seconds; 0 while nothing was received since the agent started.",
             MetricType::Gauge);
  MetricFamily repairs =
      Family("tunnelagent_tunnel_repairs_total",
             "Changes made to the tunnel's device by someone else that the agent put back, by "
             "what: address, route, mtu, link (its up state).",
             MetricType::Counter);
  // One family per counter of the tunnel counter lists (tunnel_counters.h), in list order.
  std::vector<CounterMetric> traffic = {TUNNEL_TRAFFIC_COUNTERS(COUNTER_METRIC)};
  std::vector<CounterMetric> path = {TUNNEL_PATH_COUNTERS(COUNTER_METRIC)};
  // Only for tunnels with keepalive on: the others would only add series stuck at 0.
  std::vector<CounterMetric> keepalive = {TUNNEL_KEEPALIVE_COUNTERS(COUNTER_METRIC)};
  MetricFamily drops =
      Family("tunnelagent_tunnel_drops_total",
             "Packets of the tunnel dropped, by direction and reason.", MetricType::Counter);

  MetricFamily path_mtu =
      Family("tunnelagent_tunnel_path_mtu_bytes",
             "Largest inner packet the underlay path carries whole, in bytes; 0 when not known.",
             MetricType::Gauge);
  MetricFamily peer_alive =
      Family("tunnelagent_tunnel_peer_alive",
             "1 while keepalive replies come back from the peer, 0 after the configured "
             "retries went unanswered.",
             MetricType::Gauge);
  MetricFamily keepalive_rtt = Family(
      "tunnelagent_tunnel_keepalive_rtt_seconds",
      "Round-trip time of the last keepalive the peer answered, in seconds.", MetricType::Gauge);

  // Per multipoint tunnel, its peers by state; figures of each peer are the API's (a series
  // per peer would grow with the fleet).
  MetricFamily peers = Family("tunnelagent_tunnel_peers",
                              "Peers of a multipoint tunnel by state: up, or down (keepalive "
                              "unanswered).",
                              MetricType::Gauge);
  std::map<std::string, std::pair<size_t, size_t>> peer_counts;
  manager_->ForEachPeerCount([&](const std::string& tunnel, size_t up_peers, size_t down_peers) {
    peer_counts[tunnel] = {up_peers, down_peers};
  });

  std::map<std::pair<std::string, std::string>, int> by_mode_state;
  for (auto mode :
       {dataplane::TunnelMode::kGre, dataplane::TunnelMode::kGretap, dataplane::TunnelMode::kIpip,
        dataplane::TunnelMode::kSit, dataplane::TunnelMode::kIp6gre,
        dataplane::TunnelMode::kIp6gretap, dataplane::TunnelMode::kIp6tnl}) {
    for (OperState state : {OperState::kUp, OperState::kDown, OperState::kError}) {
      by_mode_state[{std::string(dataplane::TunnelModeName(mode)), StateName(state)}] = 0;
    }
  }

  manager_->ForEachTunnel([&](const TunnelSpec& spec, const TunnelStatus& status,
                              const dataplane::TunnelStats* counters) {
    ++by_mode_state[{std::string(dataplane::TunnelModeName(spec.mode)), StateName(status.state)}];
    const std::string& name = spec.name;
    AddSample(up, {{"tunnel", name}}, status.state == OperState::kUp ? 1 : 0);
    AddSample(info,
              {{"key", KeyLabel(spec)},
               {"local", spec.local.is_unspecified() ? "" : spec.local.ToString()},
               {"mode", std::string(dataplane::TunnelModeName(spec.mode))},
               {"remote", spec.remote.ToString()},
               {"tunnel", name}},
              1);
    AddSample(state_changes, {{"tunnel", name}}, static_cast<double>(status.state_changes));
    if (spec.multipoint) {
      const std::pair<size_t, size_t> counts = peer_counts[name];
      AddSample(peers, {{"state", "up"}, {"tunnel", name}}, static_cast<double>(counts.first));
      AddSample(peers, {{"state", "down"}, {"tunnel", name}}, static_cast<double>(counts.second));
    }
    AddSample(last_receive, {{"tunnel", name}},
              status.last_receive == absl::InfinitePast()
                  ? 0
                  : absl::ToDoubleSeconds(status.last_receive - absl::UnixEpoch()));
    for (const char* what : kRepairs) {
      auto it = status.repairs.find(what);
      AddSample(repairs, {{"tunnel", name}, {"what", what}},
                it == status.repairs.end() ? 0 : static_cast<double>(it->second));
    }
    for (const auto& [what, count] : status.repairs) {  // any the list above does not have yet
      if (std::find(kRepairs.begin(), kRepairs.end(), what) != kRepairs.end()) continue;
      AddSample(repairs, {{"tunnel", name}, {"what", what}}, static_cast<double>(count));
    }
    // A tunnel that could not be brought up has no counters yet: its series are there all the
    // same, at 0, so that queries and alerts over every tunnel see it.
    static const dataplane::TunnelStats kNoTraffic;
    const dataplane::TunnelStats& c = counters != nullptr ? *counters : kNoTraffic;
    auto add_counters = [&](std::vector<CounterMetric>& metrics) {
      for (CounterMetric& m : metrics) {
        AddSample(m.family, {{"tunnel", name}}, static_cast<double>(c.Sum(m.member)));
      }
    };
    add_counters(traffic);
#define ADD_DROPS(member, api_field, direction)                           \
  AddDrops(drops, name, direction, c, &dataplane::TunnelCounters::member, \
           ExpectedDrops(direction, spec.multipoint));
    TUNNEL_DROP_COUNTERS(ADD_DROPS)
#undef ADD_DROPS
    AddSample(path_mtu, {{"tunnel", name}}, c.path_mtu.load(std::memory_order_relaxed));
    add_counters(path);
    if (spec.keepalive.enabled()) {
      add_counters(keepalive);
      AddSample(peer_alive, {{"tunnel", name}},
                c.peer_alive.load(std::memory_order_relaxed) ? 1 : 0);
      // No series until a keepalive came back: a made-up 0 would read as a perfect path.
      if (status.keepalive && status.keepalive->rtt) {
        AddSample(keepalive_rtt, {{"tunnel", name}}, absl::ToDoubleSeconds(*status.keepalive->rtt));
      }
    }
  });
  for (const auto& [mode_state, count] : by_mode_state) {
    AddSample(tunnels, {{"mode", mode_state.first}, {"state", mode_state.second}}, count);
  }

  const dataplane::DataplaneCountersSnapshot dp = engine_->counters();
  MetricFamily underlay_rx = Scalar({"tunnelagent_dataplane_rx_packets_total",
                                     "Packets received on the underlay GRE and IPIP sockets.",
                                     MetricType::Counter, static_cast<double>(dp.rx_packets)});
  MetricFamily dp_drops =
      Family("tunnelagent_dataplane_drops_total",
             "Underlay packets dropped before any tunnel matched, by reason.", MetricType::Counter);
  for (int i = 0; i < dataplane::kDropReasonCount; ++i) {
    auto reason = static_cast<DropReason>(i);
    uint64_t value = dp.drops[i];
    if (!Listed(reason, kDataplaneReasons) && value == 0) continue;
    AddSample(dp_drops, {{"reason", std::string(dataplane::DropReasonName(reason))}},
              static_cast<double>(value));
  }
  // The device read buffers the workers' tunnels share (io_uring; 0 with epoll, whose workers
  // read into one batch of buffers each).
  MetricFamily read_waits =
      Scalar({"tunnelagent_dataplane_device_read_waits_total",
              "Device reads that found the shared read buffers all taken and waited for one (the "
              "packet stays queued in the device meanwhile).",
              MetricType::Counter, static_cast<double>(dp.device_read_waits)});
  MetricFamily read_buffers =
      Family("tunnelagent_dataplane_device_read_buffers",
             "Shared device read buffers: held by reads until their packet is sent (in_use), and "
             "ready for reads in the kernel's buffer ring (ready).",
             MetricType::Gauge);
  AddSample(read_buffers, {{"state", "in_use"}}, static_cast<double>(dp.device_buffers_in_use));
  AddSample(read_buffers, {{"state", "ready"}}, static_cast<double>(dp.device_buffers_ready));

  // The state store: commits against syncs shows how many changes one flush carries.
  const StateStoreStats store = manager_->store_stats();
  const ScalarMetric store_counters[] = {
      {"tunnelagent_state_commits_total",
       "Changes of the desired tunnels appended to the state log.", MetricType::Counter,
       static_cast<double>(store.commits)},
      {"tunnelagent_state_syncs_total",
       "Flushes (fdatasync) of the state log; each makes every change appended before it "
       "durable (group commit), so fewer than commits under concurrent requests.",
       MetricType::Counter, static_cast<double>(store.syncs)},
      {"tunnelagent_state_sync_failures_total",
       "Flushes of the state log that failed (the requests waiting on them got an error; "
       "the next change rewrites the whole state).",
       MetricType::Counter, static_cast<double>(store.sync_failures)},
      {"tunnelagent_state_compactions_total",
       "Snapshots of the whole state written (log compaction, migration).", MetricType::Counter,
       static_cast<double>(store.compactions)},
  };

  std::vector<MetricFamily> families;
  auto take = [&families](std::vector<CounterMetric>& metrics) {
    for (CounterMetric& m : metrics) families.push_back(std::move(m.family));
  };
  families.push_back(std::move(build));
  for (const ScalarMetric& gauge : agent_gauges) families.push_back(Scalar(gauge));
  for (MetricFamily* f : {&tunnels, &up, &info, &state_changes, &last_receive, &repairs, &peers}) {
    families.push_back(std::move(*f));
  }
  take(traffic);
  families.push_back(std::move(drops));
  families.push_back(std::move(path_mtu));
  take(path);
  take(keepalive);
  for (MetricFamily* f :
       {&peer_alive, &keepalive_rtt, &underlay_rx, &dp_drops, &read_waits, &read_buffers}) {
    families.push_back(std::move(*f));
  }
  for (const ScalarMetric& counter : store_counters) families.push_back(Scalar(counter));
  return families;
}

}  // namespace tunnelagent::agent
