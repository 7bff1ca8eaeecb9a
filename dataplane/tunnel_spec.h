// The domain description of a tunnel: what the control plane asks for, free of any API types.
#ifndef TUNNELAGENT_DATAPLANE_TUNNEL_SPEC_H_
#define TUNNELAGENT_DATAPLANE_TUNNEL_SPEC_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dataplane/address.h"

namespace tunnelagent::dataplane {

// The kernel's tunnel link types (`ip link add ... type <name>`).
enum class TunnelMode : uint8_t { kGre, kGretap, kIpip, kSit, kIp6gre, kIp6gretap, kIp6tnl };

// "gre", "gretap", "ipip", ... as iproute2 spells them.
absl::string_view TunnelModeName(TunnelMode mode);
// Parses iproute2's spelling; nullopt when unknown.
std::optional<TunnelMode> ParseTunnelMode(absl::string_view name);
// Whether this build's dataplane moves packets for the mode.
bool IsModeImplemented(TunnelMode mode);

// Bytes the encapsulation adds in front of an inner packet (outer IP header + tunnel header):
// 24 for GRE, +4 with a key; 20 for IPIP.
uint32_t EncapOverhead(TunnelMode mode, bool has_key);

// The MTU the kernel gives a tunnel device whose underlay path has `underlay_mtu`:
// underlay MTU less the overhead, never below 68 (IPv4's minimum).
uint32_t AutomaticMtu(TunnelMode mode, bool has_key, uint32_t underlay_mtu);

struct TunnelSpec {
  std::string name;  // the device name
  TunnelMode mode = TunnelMode::kGre;
  IpAddress local;   // unspecified: any local address
  IpAddress remote;  // the far end
  std::optional<uint32_t> key;
  uint32_t mtu = 0;  // 0 = automatic
  std::vector<IpPrefix> addresses;
  std::vector<IpPrefix> routes;
  // For ownership and selection; the dataplane ignores them.
  std::map<std::string, std::string> labels;
  // Bookkeeping kept with the desired state; InfinitePast() when not known.
  absl::Time create_time = absl::InfinitePast();
  absl::Time update_time = absl::InfinitePast();
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUNNEL_SPEC_H_
