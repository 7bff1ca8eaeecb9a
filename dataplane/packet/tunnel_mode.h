// The kernel's tunnel link types, and what each one puts on the wire. Shared by the packet
// codecs and the tunnel descriptions above them.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_TUNNEL_MODE_H_
#define TUNNELAGENT_DATAPLANE_PACKET_TUNNEL_MODE_H_

#include <cstdint>

namespace tunnelagent::dataplane {

// `ip link add ... type <name>`: gre, gretap, ipip, sit, ip6gre, ip6gretap, ip6tnl.
enum class TunnelMode : uint8_t { kGre, kGretap, kIpip, kSit, kIp6gre, kIp6gretap, kIp6tnl };
inline constexpr int kTunnelModeCount = 7;

// GRE modes (gre, gretap, ip6gre, ip6gretap): the ones with keys, checksums and sequences.
constexpr bool IsGreMode(TunnelMode mode) {
  return mode == TunnelMode::kGre || mode == TunnelMode::kGretap || mode == TunnelMode::kIp6gre ||
         mode == TunnelMode::kIp6gretap;
}

// Ethernet-in-GRE modes (gretap, ip6gretap): a TAP device, frames rather than IP packets.
constexpr bool IsEthernetMode(TunnelMode mode) {
  return mode == TunnelMode::kGretap || mode == TunnelMode::kIp6gretap;
}

// Modes whose underlay is IPv6 (ip6gre, ip6gretap, ip6tnl).
constexpr bool IsIpv6UnderlayMode(TunnelMode mode) {
  return mode == TunnelMode::kIp6gre || mode == TunnelMode::kIp6gretap ||
         mode == TunnelMode::kIp6tnl;
}

// Modes that can send keepalives: those whose payload can be a packet of the underlay's own
// family (gre, ipip, ip6gre, ip6tnl).
constexpr bool SupportsKeepalive(TunnelMode mode) {
  return mode == TunnelMode::kGre || mode == TunnelMode::kIpip || mode == TunnelMode::kIp6gre ||
         mode == TunnelMode::kIp6tnl;
}

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_TUNNEL_MODE_H_
