// What the agent observes about a tunnel, next to what was asked for.
#ifndef TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
#define TUNNELAGENT_AGENT_TUNNEL_STATUS_H_

#include <cstdint>
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
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
