// What the agent observes about a tunnel, next to what was asked for.
#ifndef TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
#define TUNNELAGENT_AGENT_TUNNEL_STATUS_H_

#include <cstdint>
#include <string>

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

struct TunnelStatus {
  OperState state = OperState::kDown;
  std::string reason;  // why not UP
  int ifindex = 0;
  uint32_t mtu = 0;  // in effect
  TunnelCountersSnapshot counters;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_STATUS_H_
