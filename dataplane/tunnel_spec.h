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

// The MTU the kernel gives a tunnel device whose underlay path has `underlay_mtu`:
// underlay MTU less the overhead, never below 68 (IPv4's minimum) or, for modes that carry
// IPv6 only (sit) or run over IPv6, 1280.
uint32_t AutomaticMtu(TunnelMode mode, GreOptions output, uint32_t underlay_mtu, bool fou = false);

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
  TunnelMode mode = TunnelMode::kGre;
  IpAddress local;   // unspecified: any local address
  IpAddress remote;  // the far end
  std::optional<uint32_t> key;
  uint32_t mtu = 0;  // 0 = automatic
  std::vector<IpPrefix> addresses;
  std::vector<IpPrefix> routes;
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
GreOptions InputGreOptions(const TunnelSpec& spec);
GreOptions OutputGreOptions(const TunnelSpec& spec);
// The outer TTL / hop limit in effect: 0 = inherit.
uint8_t EffectiveTtl(const TunnelSpec& spec);
// The UDP port fou sends to and receives on: dport, else 4754 for GRE modes; 0 without fou.
uint16_t EffectiveFouPort(const TunnelSpec& spec);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUNNEL_SPEC_H_
