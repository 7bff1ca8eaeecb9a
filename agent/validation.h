// Semantic checks of a requested tunnel, run before anything changes.
#ifndef TUNNELAGENT_AGENT_VALIDATION_H_
#define TUNNELAGENT_AGENT_VALIDATION_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "agent/tunnel_spec.h"

namespace tunnelagent::agent {

// A Linux interface name: 1-15 bytes, printable ASCII, no '/', ':' or white space, not "." or
// "..". INVALID_ARGUMENT naming `field` otherwise.
absl::Status ValidateDeviceName(absl::string_view name, absl::string_view field = "tunnel.name");

// Everything about one tunnel that can be checked without looking at other tunnels or the
// kernel. INVALID_ARGUMENT names the field ("tunnel.key: ..."); UNIMPLEMENTED for a mode
// this build cannot carry yet. Rules (kernel's where it has one):
// - name: ValidateDeviceName.
// - remote is a unicast address of the mode's underlay family, required (point-to-point
//   tunnels only: the kernel's remote-less "any" tunnels are not offered); local is
//   unspecified or unicast of that family.
// - key, input_key, output_key, checksum*, sequence*: GRE modes only (gre, gretap, ip6gre,
//   ip6gretap).
// - local/remote: the mode's underlay family (IPv6 for ip6gre, ip6gretap, ip6tnl).
// - pmtudisc off: IPv4 underlays only (IPv6 has no DF), and not with a fixed ttl (1-255):
//   "ttl and nopmtudisc are incompatible", as iproute2 says. ignore_df: IPv4 underlays only,
//   and only with pmtudisc off. (ttl and tos are 0..255 by SpecFromProto.)
// - keepalive: interval 0 (off) or 100ms..1h, retries 0..255, only for modes that
//   SupportsKeepalive (gre, ipip, ip6gre, ip6tnl).
// - mtu: 0 or 68 (sit: 1280, as the kernel has it)..65535 less the encapsulation overhead with the
// output GRE options (the
//   kernel's IP_MAX_MTU - t_hlen).
// - addresses: at most TunnelLimits::max_addresses, a family the tunnel carries (IPv4 only for
//   ipip, IPv6 only for sit), not unspecified or multicast, no duplicates.
// - routes: at most TunnelLimits::max_routes, a family the tunnel carries, host bits zero
//   ("10.1.0.0/16", not "10.1.0.1/16"), no duplicates.
// - labels: ValidateLabels.
// A value quoted in an error is cut to a short prefix: a request of megabytes gets an answer
// of a line.
absl::Status ValidateSpec(const TunnelSpec& spec);

// A value for an error message: quoted and escaped, cut to its first 64 bytes and its length.
std::string QuoteValue(absl::string_view text);

// What one request may ask for, so that none holds the agent for long: addresses, routes and
// labels per tunnel (--max_addresses_per_tunnel, --max_routes_per_tunnel,
// --max_labels_per_tunnel, --max_label_key_length, --max_label_value_length), and the
// addresses and routes of one ApplyTunnels in all (--max_prefixes_per_apply: each is a
// netlink request, about 20-50 us).
struct TunnelLimits {
  size_t max_addresses = 256;
  size_t max_routes = 1024;
  size_t max_labels = 64;
  size_t max_label_key_length = 63;
  size_t max_label_value_length = 63;
  size_t max_apply_prefixes = 65536;
  // Peers of one multipoint tunnel (--max_peers_per_tunnel), and allowed prefixes of one peer
  // (--max_prefixes_per_peer).
  size_t max_peers = 16384;
  size_t max_peer_prefixes = 1024;
};
// Set once at start, before requests are served.
void SetTunnelLimits(const TunnelLimits& limits);
const TunnelLimits& CurrentTunnelLimits();

// At most TunnelLimits::max_labels labels (64); keys 1-max_label_key_length (63) and values
// 0-max_label_value_length (63) characters of [A-Za-z0-9._/-].
absl::Status ValidateLabels(const std::map<std::string, std::string>& labels,
                            absl::string_view field = "tunnel.labels");

// Everything about one peer of `tunnel` (a multipoint tunnel) that can be checked without the
// other peers. INVALID_ARGUMENT names the field ("peer.underlay: ..."):
// - name: 1-63 characters of [A-Za-z0-9._-].
// - underlay: a unicast address of the tunnel's underlay family, required.
// - key: GRE modes only.
// - allowed_prefixes: at most TunnelLimits::max_peer_prefixes, of a family the tunnel
//   carries, host bits zero, no duplicates.
// - keepalive: as a tunnel's; labels: ValidateLabels.
struct PeerSpec;
absl::Status ValidatePeer(const PeerSpec& peer, const TunnelSpec& tunnel);

// INVALID_ARGUMENT naming --max_prefixes_per_apply when `tunnels` (one ApplyTunnels) have more
// addresses and routes in all than TunnelLimits::max_apply_prefixes.
absl::Status CheckApplyWork(const std::vector<TunnelSpec>& tunnels);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_VALIDATION_H_
