// The domain description of a tunnel: what the control plane asks for (with its labels and
// bookkeeping), free of any API types. The dataplane never sees it: the agent turns it into
// the engine's EngineTunnel.
#ifndef TUNNELAGENT_AGENT_TUNNEL_SPEC_H_
#define TUNNELAGENT_AGENT_TUNNEL_SPEC_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "dataplane/address.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"
#include "dataplane/tunnel_mode_info.h"

namespace tunnelagent::agent {

// Cisco-style dead-peer detection (see the API's Keepalive).
struct KeepaliveSpec {
  absl::Duration interval = absl::ZeroDuration();  // zero: off
  uint32_t retries = 0;                            // 0: the default, 3

  bool enabled() const { return interval > absl::ZeroDuration(); }
  uint32_t effective_retries() const { return retries == 0 ? 3 : retries; }
  friend bool operator==(const KeepaliveSpec& a, const KeepaliveSpec& b) {
    return a.interval == b.interval && a.retries == b.retries;
  }
  friend bool operator!=(const KeepaliveSpec& a, const KeepaliveSpec& b) { return !(a == b); }
};

// ip link ... encap fou encap-sport encap-dport.
struct FouSpec {
  bool enabled = false;
  uint16_t sport = 0;  // 0 = per flow
  uint16_t dport = 0;  // 0 = the mode's default (4754 for gre and gretap)
  friend bool operator==(const FouSpec& a, const FouSpec& b) {
    return a.enabled == b.enabled && a.sport == b.sport && a.dport == b.dport;
  }
  friend bool operator!=(const FouSpec& a, const FouSpec& b) { return !(a == b); }
};

struct TunnelSpec {
  std::string name;  // the device name
  dataplane::TunnelMode mode = dataplane::TunnelMode::kGre;
  dataplane::IpAddress local;   // unspecified: any local address
  dataplane::IpAddress remote;  // the far end; unspecified for a multipoint tunnel
  // One device for many peers (PeerSpec): no remote, the peers' prefixes pick the far end.
  bool multipoint = false;
  std::optional<uint32_t> key;
  uint32_t mtu = 0;  // 0 = automatic
  std::vector<dataplane::IpPrefix> addresses;
  std::vector<dataplane::IpPrefix> routes;
  // GRE options as ip-link(8) has them: plain ones for both directions, i/o ones for one.
  std::optional<uint32_t> input_key;
  std::optional<uint32_t> output_key;
  bool checksum = false;
  bool input_checksum = false;
  bool output_checksum = false;
  bool sequence = false;
  bool input_sequence = false;
  bool output_sequence = false;
  // Outer header: nullopt = the mode's default (inherit for IPv4 underlays, 64 for IPv6);
  // 0 = inherit; else fixed.
  std::optional<uint8_t> ttl;
  uint8_t tos = 0;  // DSCP bits used; ECN per RFC 6040
  bool inherit_tos = false;
  bool pmtudisc = true;
  bool ignore_df = false;
  KeepaliveSpec keepalive;
  FouSpec fou;
  // For ownership and selection; the dataplane ignores them.
  std::map<std::string, std::string> labels;
  // Bookkeeping kept with the desired state; InfinitePast() when not known.
  absl::Time create_time = absl::InfinitePast();
  absl::Time update_time = absl::InfinitePast();
};

// The key a direction uses: its own when set, else `key`.
std::optional<uint32_t> InputKey(const TunnelSpec& spec);
std::optional<uint32_t> OutputKey(const TunnelSpec& spec);
// What the tunnel requires on received and sends on transmitted GRE packets (all off for
// modes other than GRE).
dataplane::GreOptions InputGreOptions(const TunnelSpec& spec);
dataplane::GreOptions OutputGreOptions(const TunnelSpec& spec);
// The outer TTL / hop limit in effect: 0 = inherit.
uint8_t EffectiveTtl(const TunnelSpec& spec);
// The engine's form of an underlay address (zero for an unspecified one).
dataplane::OuterAddress OuterAddressOf(const dataplane::IpAddress& address);
// The UDP port fou sends to and receives on: dport, else 4754 for GRE modes; 0 without fou.
uint16_t EffectiveFouPort(const TunnelSpec& spec);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_SPEC_H_
