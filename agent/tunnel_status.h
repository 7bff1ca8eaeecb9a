// What the agent observes about a tunnel, next to what was asked for.
#ifndef TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
#define TUNNELAGENT_AGENT_TUNNEL_STATUS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tunnel_counters.h"

namespace tunnelagent::agent {

enum class OperState { kUp, kDown, kError };

// The traffic counters summed over the dataplane's workers (tx_packets, tx_bytes, rx_packets,
// rx_bytes) and each direction's drops (tx_dropped, rx_dropped): the API's TunnelCounters.
struct TunnelCountersSnapshot {
#define TUNNEL_SNAPSHOT_MEMBER(member, api_field, ...) uint64_t api_field = 0;
  TUNNEL_TRAFFIC_COUNTERS(TUNNEL_SNAPSHOT_MEMBER)
  TUNNEL_DROP_COUNTERS(TUNNEL_SNAPSHOT_MEMBER)
#undef TUNNEL_SNAPSHOT_MEMBER
};

// Dead-peer detection as the engine observes it (only for tunnels with keepalive on).
struct KeepaliveSnapshot {
  bool peer_alive = true;
  // sent, replies, answered (the peer's keepalives sent back), summed over the workers.
#define TUNNEL_SNAPSHOT_MEMBER(member, api_field, ...) uint64_t api_field = 0;
  TUNNEL_KEEPALIVE_COUNTERS(TUNNEL_SNAPSHOT_MEMBER)
#undef TUNNEL_SNAPSHOT_MEMBER
  absl::Time last_reply = absl::InfinitePast();  // InfinitePast: none yet
  std::optional<absl::Duration> rtt;             // of the last keepalive answered
};

// What the dataplane observes of a tunnel, or of a peer of a multipoint tunnel.
struct DataplaneObservation {
  TunnelCountersSnapshot counters;
  uint32_t path_mtu = 0;  // the largest inner packet the path carries whole; 0 = not known
  // Set when keepalive is on and the tunnel is running.
  std::optional<KeepaliveSnapshot> keepalive;
  // When the dataplane last delivered a packet into the device; InfinitePast: never.
  absl::Time last_receive = absl::InfinitePast();
};

struct TunnelStatus : DataplaneObservation {
  OperState state = OperState::kDown;
  std::string reason;  // why not UP
  int ifindex = 0;
  uint32_t mtu = 0;            // in effect
  uint64_t state_changes = 0;  // operational state changes since the agent started
  // Repairs since the agent started, by what was put back: "address", "route", "mtu", "link".
  std::map<std::string, uint64_t> repairs;
};

// What the engine counted and observed of one tunnel (or peer of a multipoint tunnel), read
// now: the counters summed over its workers, path MTU, last receive and, with `keepalive`,
// the keepalive's figures.
void ReadObservation(const dataplane::TunnelStats& stats, bool keepalive,
                     DataplaneObservation* out);
void ReadObservation(const dataplane::PeerStats& stats, bool keepalive, DataplaneObservation* out);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
