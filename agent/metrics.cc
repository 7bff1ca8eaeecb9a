#include "agent/metrics.h"

#include <array>
#include <map>
#include <utility>

#include "dataplane/packet/drop_reason.h"

namespace tunnelagent::agent {
namespace {

using dataplane::DropReason;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Drop reasons that can happen on each direction of a tunnel: these series exist from the
// tunnel's creation (at 0), so rate() and alerts see them before the first drop.
constexpr std::array kTxReasons = {DropReason::kUnsupportedProtocol, DropReason::kBadInnerPacket,
                                   DropReason::kTooBig, DropReason::kSendError,
                                   DropReason::kDeviceError};
// Receive drops a tunnel counts itself: what its icsum/iseq refuse, a device that refuses a
// write, and a peer's keepalive that could not be sent back.
constexpr std::array kRxReasons = {DropReason::kGreChecksum, DropReason::kGreSequence,
                                   DropReason::kDeviceError, DropReason::kSendError};
// What an underlay packet can be dropped for before any tunnel matches it (the engine's receive
// path): send_error and device_error belong to a tunnel and are never counted here.
constexpr std::array kDataplaneReasons = {
    DropReason::kTruncated,      DropReason::kBadOuterHeader, DropReason::kGreVersion,
    DropReason::kGreRouting,     DropReason::kGreChecksum,    DropReason::kUnsupportedProtocol,
    DropReason::kBadInnerPacket, DropReason::kEcnError,       DropReason::kNoTunnel,
    DropReason::kTooBig,         DropReason::kSocketError};

template <size_t N>
bool Listed(DropReason reason, const std::array<DropReason, N>& reasons) {
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

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void AddSample(MetricFamily& family, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

// Adds a series for every listed reason, and for any other reason that has counted.
template <size_t N>
void AddDrops(MetricFamily& family, const std::string& tunnel, const char* direction,
              const dataplane::TunnelStats& stats,
              dataplane::DropCounters dataplane::TunnelCounters::*drops,
              const std::array<DropReason, N>& expected) {
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

}  // namespace

AgentMetrics::AgentMetrics(const TunnelManager* manager, const dataplane::PacketEngine* engine,
                           std::string version, bool io_uring_fallback)
    : manager_(manager),
      engine_(engine),
      version_(std::move(version)),
      io_uring_fallback_(io_uring_fallback) {}

std::vector<MetricFamily> AgentMetrics::Collect() const {
  MetricFamily build =
      Family("tunnelagent_build_info",
             "Version and dataplane backend of the running agent (always 1).", MetricType::Gauge);
  AddSample(build, {{"io_backend", engine_->backend_name()}, {"version", version_}}, 1);
  MetricFamily fallback =
      Family("tunnelagent_dataplane_io_uring_fallback",
             "1 when --io_backend=auto found io_uring refused (e.g. by seccomp) and runs on epoll.",
             MetricType::Gauge);
  AddSample(fallback, {}, io_uring_fallback_ ? 1 : 0);
  MetricFamily workers =
      Family("tunnelagent_dataplane_workers",
             "Dataplane threads moving packets, each with its own ring and sockets "
             "(--dataplane_workers).",
             MetricType::Gauge);
  AddSample(workers, {}, static_cast<double>(engine_->workers()));

  MetricFamily tunnels =
      Family("tunnelagent_tunnels", "Tunnels by mode and operational state.", MetricType::Gauge);
  MetricFamily up =
      Family("tunnelagent_tunnel_up", "1 when the tunnel's device is up and its packets are moved.",
             MetricType::Gauge);
  MetricFamily tx_packets =
      Family("tunnelagent_tunnel_tx_packets_total",
             "Packets read from the tunnel device and sent encapsulated.", MetricType::Counter);
  MetricFamily tx_bytes =
      Family("tunnelagent_tunnel_tx_bytes_total",
             "Inner bytes of the packets counted in tx_packets.", MetricType::Counter);
  MetricFamily rx_packets =
      Family("tunnelagent_tunnel_rx_packets_total",
             "Packets received for the tunnel and written to its device.", MetricType::Counter);
  MetricFamily rx_bytes =
      Family("tunnelagent_tunnel_rx_bytes_total",
             "Inner bytes of the packets counted in rx_packets.", MetricType::Counter);
  MetricFamily drops =
      Family("tunnelagent_tunnel_drops_total",
             "Packets of the tunnel dropped, by direction and reason.", MetricType::Counter);

  MetricFamily path_mtu =
      Family("tunnelagent_tunnel_path_mtu",
             "Largest inner packet the underlay path carries whole, in bytes; 0 when not known.",
             MetricType::Gauge);
  MetricFamily icmp_too_big =
      Family("tunnelagent_tunnel_icmp_too_big_total",
             "Packets too big for the path answered with ICMP fragmentation-needed or ICMPv6 "
             "packet-too-big.",
             MetricType::Counter);
  MetricFamily tx_fragmented =
      Family("tunnelagent_tunnel_tx_fragmented_total",
             "Packets sent as outer IPv4 fragments (too big for the path, DF not set).",
             MetricType::Counter);
  MetricFamily tx_super_packets =
      Family("tunnelagent_tunnel_tx_super_packets_total",
             "TCP/UDP super-packets (TUN offloads: TSO, USO) the host handed over and the "
             "dataplane split into packets the underlay carries.",
             MetricType::Counter);
  MetricFamily rx_coalesced =
      Family("tunnelagent_tunnel_rx_coalesced_packets_total",
             "Packets of several received TCP segments (or UDP datagrams) of one flow, coalesced "
             "(userspace GRO) "
             "and written to the device as one.",
             MetricType::Counter);
  // Only for tunnels with keepalive on: the others would only add series stuck at 0.
  MetricFamily keepalive_sent = Family("tunnelagent_tunnel_keepalive_sent_total",
                                       "Keepalives sent to the peer.", MetricType::Counter);
  MetricFamily keepalive_replies =
      Family("tunnelagent_tunnel_keepalive_replies_total",
             "Keepalives that came back from the peer.", MetricType::Counter);
  MetricFamily keepalive_answered =
      Family("tunnelagent_tunnel_keepalive_answered_total",
             "Keepalives of the peer's that this agent sent back.", MetricType::Counter);
  MetricFamily peer_alive =
      Family("tunnelagent_tunnel_peer_alive",
             "1 while keepalive replies come back from the peer, 0 after the configured "
             "retries went unanswered.",
             MetricType::Gauge);

  std::map<std::pair<std::string, std::string>, int> by_mode_state;
  for (auto mode :
       {dataplane::TunnelMode::kGre, dataplane::TunnelMode::kGretap, dataplane::TunnelMode::kIpip,
        dataplane::TunnelMode::kSit, dataplane::TunnelMode::kIp6gre,
        dataplane::TunnelMode::kIp6gretap, dataplane::TunnelMode::kIp6tnl}) {
    for (OperState state : {OperState::kUp, OperState::kDown, OperState::kError}) {
      by_mode_state[{std::string(dataplane::TunnelModeName(mode)), StateName(state)}] = 0;
    }
  }

  manager_->ForEachTunnel([&](const dataplane::TunnelSpec& spec, const TunnelStatus& status,
                              const dataplane::TunnelStats* counters) {
    ++by_mode_state[{std::string(dataplane::TunnelModeName(spec.mode)), StateName(status.state)}];
    const std::string& name = spec.name;
    AddSample(up, {{"tunnel", name}}, status.state == OperState::kUp ? 1 : 0);
    // A tunnel that could not be brought up has no counters yet: its series are there all the
    // same, at 0, so that queries and alerts over every tunnel see it.
    static const dataplane::TunnelStats kNoTraffic;
    const dataplane::TunnelStats& c = counters != nullptr ? *counters : kNoTraffic;
    using dataplane::TunnelCounters;
    AddSample(tx_packets, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::tx_packets)));
    AddSample(tx_bytes, {{"tunnel", name}}, static_cast<double>(c.Sum(&TunnelCounters::tx_bytes)));
    AddSample(rx_packets, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::rx_packets)));
    AddSample(rx_bytes, {{"tunnel", name}}, static_cast<double>(c.Sum(&TunnelCounters::rx_bytes)));
    AddDrops(drops, name, "tx", c, &TunnelCounters::tx_drops, kTxReasons);
    AddDrops(drops, name, "rx", c, &TunnelCounters::rx_drops, kRxReasons);
    AddSample(path_mtu, {{"tunnel", name}}, c.path_mtu.load(std::memory_order_relaxed));
    AddSample(icmp_too_big, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::icmp_too_big_sent)));
    AddSample(tx_fragmented, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::tx_fragmented)));
    AddSample(tx_super_packets, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::tx_super_packets)));
    AddSample(rx_coalesced, {{"tunnel", name}},
              static_cast<double>(c.Sum(&TunnelCounters::rx_coalesced)));
    if (spec.keepalive.enabled()) {
      AddSample(keepalive_sent, {{"tunnel", name}},
                static_cast<double>(c.Sum(&TunnelCounters::keepalive_sent)));
      AddSample(keepalive_replies, {{"tunnel", name}},
                static_cast<double>(c.Sum(&TunnelCounters::keepalive_replies)));
      AddSample(keepalive_answered, {{"tunnel", name}},
                static_cast<double>(c.Sum(&TunnelCounters::keepalive_answered)));
      AddSample(peer_alive, {{"tunnel", name}},
                c.peer_alive.load(std::memory_order_relaxed) ? 1 : 0);
    }
  });
  for (const auto& [mode_state, count] : by_mode_state) {
    AddSample(tunnels, {{"mode", mode_state.first}, {"state", mode_state.second}}, count);
  }

  const dataplane::DataplaneCounters& dp = engine_->counters();
  MetricFamily underlay_rx =
      Family("tunnelagent_dataplane_rx_packets_total",
             "Packets received on the underlay GRE and IPIP sockets.", MetricType::Counter);
  AddSample(underlay_rx, {}, static_cast<double>(dp.rx_packets.Get()));
  MetricFamily dp_drops =
      Family("tunnelagent_dataplane_drops_total",
             "Underlay packets dropped before any tunnel matched, by reason.", MetricType::Counter);
  for (int i = 0; i < dataplane::kDropReasonCount; ++i) {
    auto reason = static_cast<DropReason>(i);
    uint64_t value = dp.drops[i].Get();
    if (!Listed(reason, kDataplaneReasons) && value == 0) continue;
    AddSample(dp_drops, {{"reason", std::string(dataplane::DropReasonName(reason))}},
              static_cast<double>(value));
  }

  std::vector<MetricFamily> families;
  for (MetricFamily* f : {&build,
                          &fallback,
                          &workers,
                          &tunnels,
                          &up,
                          &tx_packets,
                          &tx_bytes,
                          &rx_packets,
                          &rx_bytes,
                          &drops,
                          &path_mtu,
                          &icmp_too_big,
                          &tx_fragmented,
                          &tx_super_packets,
                          &rx_coalesced,
                          &keepalive_sent,
                          &keepalive_replies,
                          &keepalive_answered,
                          &peer_alive,
                          &underlay_rx,
                          &dp_drops}) {
    families.push_back(std::move(*f));
  }
  return families;
}

}  // namespace tunnelagent::agent
