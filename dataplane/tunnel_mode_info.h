// What the dataplane knows of each tunnel mode, whoever asks: its name as iproute2 spells it,
// whether this build moves its packets, the bytes its encapsulation adds and the MTU that
// leaves. Free of any control-plane description of a tunnel.
#ifndef TUNNELAGENT_DATAPLANE_TUNNEL_MODE_INFO_H_
#define TUNNELAGENT_DATAPLANE_TUNNEL_MODE_INFO_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"
#include "dataplane/packet/tunnel_mode.h"

namespace tunnelagent::dataplane {

// "gre", "gretap", "ipip", ... as iproute2 spells them.
absl::string_view TunnelModeName(TunnelMode mode);
// Parses iproute2's spelling; nullopt when unknown.
std::optional<TunnelMode> ParseTunnelMode(absl::string_view name);
// Whether this build's dataplane moves packets for the mode.
bool IsModeImplemented(TunnelMode mode);
// Which GRE header fields a tunnel sends (output) or requires (input).
struct GreOptions {
  bool key = false;
  bool checksum = false;
  bool sequence = false;
};

// Bytes the encapsulation adds in front of what the device carries: outer IP header (IPv6
// tunnels: plus the 8-byte RFC 2473 encapsulation-limit option), GRE header with the output
// options, and for Ethernet modes the 14-byte Ethernet header of the frame. 24 for GRE, 28
// keyed; 20 for IPIP and SIT; 48 for ip6tnl; 52 for ip6gre. With fou, 8 more (UDP).
uint32_t EncapOverhead(TunnelMode mode, GreOptions output = {}, bool fou = false);

// The MTUs a tunnel device of the mode may be given, as the kernel allows them: from IPv4's
// minimum, 68 (IPv6's, 1280, for sit, which carries only IPv6), to IP_MAX_MTU, 65535, less the
// encapsulation's overhead (65511 for plain gre). Whoever checks an MTU asks here: the agent's
// validation and tunnelctl's, so that both refuse the same values.
struct MtuRange {
  uint32_t min = 0;
  uint32_t max = 0;
};
MtuRange DeviceMtuRange(TunnelMode mode, GreOptions output = {}, bool fou = false);

// The MTU the kernel gives a tunnel device whose underlay path has `underlay_mtu`:
// underlay MTU less the overhead, never below 68 (IPv4's minimum) or, for modes that carry
// IPv6 only (sit) or run over IPv6, 1280.
uint32_t AutomaticMtu(TunnelMode mode, GreOptions output, uint32_t underlay_mtu, bool fou = false);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUNNEL_MODE_INFO_H_
