// What the agent observes about a tunnel, next to what was asked for.
#ifndef TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
#define TUNNELAGENT_AGENT_TUNNEL_STATUS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/time/time.h"

namespace tunnelagent::agent {

enum class OperState { kUp, kDown, kError };

struct TunnelCountersSnapshot {
  uint64_t tx_packets = 0;
  uint64_t tx_bytes = 0;
  uint64_t rx_packets = 0;
  uint64_t rx_bytes = 0;
  uint64_t tx_dropped = 0;
  uint64_t rx_dropped = 0;
};

// Dead-peer detection as the engine observes it (only for tunnels with keepalive on).
struct KeepaliveSnapshot {
  bool peer_alive = true;
  uint64_t sent = 0;
  uint64_t replies = 0;
  uint64_t answered = 0;                         // the peer's keepalives sent back
  absl::Time last_reply = absl::InfinitePast();  // InfinitePast: none yet
  std::optional<absl::Duration> rtt;             // of the last keepalive answered
};

struct TunnelStatus {
  OperState state = OperState::kDown;
  std::string reason;  // why not UP
  int ifindex = 0;
  uint32_t mtu = 0;  // in effect
  TunnelCountersSnapshot counters;
  uint32_t path_mtu = 0;  // the largest inner packet the path carries whole; 0 = not known
  // Set when the tunnel has keepalive on and is running.
  std::optional<KeepaliveSnapshot> keepalive;
  // When the dataplane last delivered a packet into the device; InfinitePast: never.
  absl::Time last_receive = absl::InfinitePast();
  uint64_t state_changes = 0;  // operational state changes since the agent started
  // Repairs since the agent started, by what was put back: "address", "route", "mtu", "link".
  std::map<std::string, uint64_t> repairs;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
