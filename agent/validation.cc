#include "agent/validation.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/peer_spec.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;

// IFNAMSIZ less the terminating NUL.
constexpr size_t kMaxDeviceName = 15;

constexpr TunnelMode kAllModes[] = {TunnelMode::kGre,   TunnelMode::kGretap, TunnelMode::kIpip,
                                    TunnelMode::kSit,   TunnelMode::kIp6gre, TunnelMode::kIp6gretap,
                                    TunnelMode::kIp6tnl};

std::string Quote(absl::string_view text) { return QuoteValue(text); }

TunnelLimits tunnel_limits;

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

std::string Indexed(absl::string_view field, size_t i) { return absl::StrCat(field, "[", i, "]"); }

IpAddress::Family UnderlayFamily(TunnelMode mode) {
  return dataplane::IsIpv6UnderlayMode(mode) ? IpAddress::Family::kV6 : IpAddress::Family::kV4;
}

// Which inner packets the device carries, as the kernel's drivers accept them: ipip is IPv4
// only, sit is there for IPv6, the Ethernet (tap) modes carry anything.
bool CarriesFamily(TunnelMode mode, IpAddress::Family family) {
  switch (mode) {
    case TunnelMode::kIpip:
      return family == IpAddress::Family::kV4;
    case TunnelMode::kSit:
      return family == IpAddress::Family::kV6;
    default:
      return family == IpAddress::Family::kV4 || family == IpAddress::Family::kV6;
  }
}

absl::string_view FamilyName(IpAddress::Family family) {
  switch (family) {
    case IpAddress::Family::kV4:
      return "IPv4";
    case IpAddress::Family::kV6:
      return "IPv6";
    case IpAddress::Family::kNone:
      break;
  }
  return "unspecified";
}

std::string ImplementedModes() {
  std::vector<absl::string_view> names;
  for (TunnelMode m : kAllModes) {
    if (dataplane::IsModeImplemented(m)) names.push_back(dataplane::TunnelModeName(m));
  }
  if (names.size() == 1) return absl::StrCat(names[0], " is");
  if (names.size() == 2) return absl::StrCat(names[0], " and ", names[1], " are");
  return absl::StrCat(absl::StrJoin(names, ", "), " are");
}

bool IsLimitedBroadcast(const IpAddress& a) { return a.is_v4() && a.v4() == 0xFFFFFFFFu; }

// An underlay endpoint: the address family the mode runs over, and a single host.
absl::Status ValidateEndpoint(absl::string_view field, const IpAddress& address, TunnelMode mode) {
  const IpAddress::Family want = UnderlayFamily(mode);
  if (address.family() != want) {
    return Invalid(field, absl::StrCat(address.ToString(), " is not an ", FamilyName(want),
                                       " address (", dataplane::TunnelModeName(mode),
                                       " tunnels run over ", FamilyName(want), ")"));
  }
  if (address.is_unspecified() || address.is_multicast() || IsLimitedBroadcast(address)) {
    return Invalid(field, absl::StrCat(address.ToString(), " is not a unicast address"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePrefixShape(absl::string_view field, const IpPrefix& prefix, TunnelMode mode) {
  const IpAddress& a = prefix.address();
  if (a.family() == IpAddress::Family::kNone) return Invalid(field, "required");
  if (!CarriesFamily(mode, a.family())) {
    return Invalid(field,
                   absl::StrCat(prefix.ToString(), " is ", FamilyName(a.family()), ", which ",
                                dataplane::TunnelModeName(mode), " tunnels do not carry"));
  }
  // Only reachable by building a spec by hand; Parse never produces it.
  if (prefix.length() < 0 || prefix.length() > a.bit_length()) {
    return Invalid(field, absl::StrCat("prefix length ", prefix.length(), " is out of range 0..",
                                       a.bit_length()));
  }
  return absl::OkStatus();
}

absl::Status ValidateAddresses(const TunnelSpec& spec) {
  // First: the duplicate checks below are quadratic.
  if (spec.addresses.size() > tunnel_limits.max_addresses) {
    return absl::InvalidArgumentError(
        absl::StrCat("tunnel.addresses: ", spec.addresses.size(), " addresses, at most ",
                     tunnel_limits.max_addresses, " per tunnel (--max_addresses_per_tunnel)"));
  }
  for (size_t i = 0; i < spec.addresses.size(); ++i) {
    const std::string field = Indexed("tunnel.addresses", i);
    const IpPrefix& p = spec.addresses[i];
    if (absl::Status s = ValidatePrefixShape(field, p, spec.mode); !s.ok()) return s;
    if (p.address().is_unspecified()) {
      return Invalid(field, absl::StrCat(p.ToString(), " is the unspecified address"));
    }
    if (p.address().is_multicast()) {
      return Invalid(field, absl::StrCat(p.ToString(), " is a multicast address"));
    }
    // The address alone identifies an interface address to the kernel (for IPv6 always,
    // for IPv4 the same address with another mask only confuses source selection), so
    // "10.0.0.1/24" and "10.0.0.1/30" count as duplicates.
    for (size_t j = 0; j < i; ++j) {
      if (spec.addresses[j].address() == p.address()) {
        return Invalid(field, absl::StrCat(p.address().ToString(), " duplicates ",
                                           Indexed("tunnel.addresses", j)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRoutes(const TunnelSpec& spec) {
  if (spec.routes.size() > tunnel_limits.max_routes) {
    return absl::InvalidArgumentError(absl::StrCat("tunnel.routes: ", spec.routes.size(),
                                                   " routes, at most ", tunnel_limits.max_routes,
                                                   " per tunnel (--max_routes_per_tunnel)"));
  }
  for (size_t i = 0; i < spec.routes.size(); ++i) {
    const std::string field = Indexed("tunnel.routes", i);
    const IpPrefix& p = spec.routes[i];
    if (absl::Status s = ValidatePrefixShape(field, p, spec.mode); !s.ok()) return s;
    // The kernel refuses these with a bare EINVAL; say what would have been meant.
    if (!p.is_network()) {
      return Invalid(field, absl::StrCat(p.ToString(), " has host bits set (did you mean ",
                                         p.Network().ToString(), "?)"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (spec.routes[j] == p) {
        return Invalid(field,
                       absl::StrCat(p.ToString(), " duplicates ", Indexed("tunnel.routes", j)));
      }
    }
  }
  return absl::OkStatus();
}

// key, ikey/okey, csum/icsum/ocsum, seq/iseq/oseq: GRE header fields, as ip_gre and ip6_gre
// take them (ipip, sit and ip6tnl have no such header, and iproute2 offers none of these).
absl::Status ValidateGreOptions(const TunnelSpec& spec) {
  if (dataplane::IsGreMode(spec.mode)) return absl::OkStatus();
  const struct {
    const char* field;
    bool set;
  } options[] = {
      {"tunnel.key", spec.key.has_value()},
      {"tunnel.input_key", spec.input_key.has_value()},
      {"tunnel.output_key", spec.output_key.has_value()},
      {"tunnel.checksum", spec.checksum},
      {"tunnel.input_checksum", spec.input_checksum},
      {"tunnel.output_checksum", spec.output_checksum},
      {"tunnel.sequence", spec.sequence},
      {"tunnel.input_sequence", spec.input_sequence},
      {"tunnel.output_sequence", spec.output_sequence},
  };
  for (const auto& option : options) {
    if (!option.set) continue;
    return Invalid(option.field,
                   absl::StrCat(dataplane::TunnelModeName(spec.mode),
                                " tunnels have no GRE header (gre, gretap, ip6gre and ip6gretap "
                                "only)"));
  }
  return absl::OkStatus();
}

// ttl, tos, pmtudisc, ignore-df: the rules of ip_tunnel's netlink parsing and of iproute2.
absl::Status ValidateOuterHeader(const TunnelSpec& spec) {
  const bool ipv6_underlay = dataplane::IsIpv6UnderlayMode(spec.mode);
  // The 0..255 ranges of ttl and tos are SpecFromProto's: a byte is all the spec can hold.
  if (!spec.pmtudisc) {
    // ip6_tunnel and ip6_gre have no DF to set or clear: IPv6 routers never fragment.
    if (ipv6_underlay) {
      return Invalid("tunnel.pmtudisc",
                     absl::StrCat("cannot be turned off for ", dataplane::TunnelModeName(spec.mode),
                                  " (an IPv6 underlay has no DF bit: it never fragments)"));
    }
    // ip_tunnel_newlink / iproute2: "ttl != 0 and nopmtudisc are incompatible".
    if (spec.ttl.has_value() && *spec.ttl != 0) {
      return Invalid("tunnel.ttl",
                     absl::StrCat("ttl and nopmtudisc are incompatible: a fixed ttl (", *spec.ttl,
                                  ") needs pmtudisc (or use ttl 0 = inherit)"));
    }
  }
  if (spec.ignore_df) {
    if (ipv6_underlay) {
      return Invalid("tunnel.ignore_df",
                     absl::StrCat(dataplane::TunnelModeName(spec.mode),
                                  " tunnels have no DF bit to ignore (IPv4 underlay only)"));
    }
    // ip_tunnel: "ignore-df ... is incompatible with DF set" (pmtudisc).
    if (spec.pmtudisc) {
      return Invalid("tunnel.ignore_df",
                     "ignore_df and pmtudisc are incompatible (set pmtudisc to false)");
    }
  }
  return absl::OkStatus();
}

// encap fou: what ip_tunnel's encapsulation takes, IPv4 underlays only here.
absl::Status ValidateFou(const TunnelSpec& spec) {
  if (!spec.fou.enabled) {
    if (spec.fou.sport != 0 || spec.fou.dport != 0) {
      return Invalid("tunnel.encap", "sport and dport need type ENCAP_TYPE_FOU");
    }
    return absl::OkStatus();
  }
  if (dataplane::IsIpv6UnderlayMode(spec.mode)) {
    return Invalid("tunnel.encap", absl::StrCat("fou over an IPv6 underlay is not supported (",
                                                dataplane::TunnelModeName(spec.mode),
                                                "); gre, gretap, ipip and sit take it"));
  }
  if (EffectiveFouPort(spec) == 0) {
    return Invalid("tunnel.encap.dport",
                   absl::StrCat("is required for ", dataplane::TunnelModeName(spec.mode),
                                " (no standard port; gre and gretap default to 4754)"));
  }
  if (spec.fou.sport != 0 && spec.fou.sport == EffectiveFouPort(spec)) {
    return Invalid("tunnel.encap.sport",
                   absl::StrCat(spec.fou.sport,
                                " is the port fou receives on; use another or 0 "
                                "(per flow)"));
  }
  if (!spec.pmtudisc) {
    // A UDP socket sets DF for all its packets or none: the inner DF cannot be copied.
    return Invalid("tunnel.pmtudisc", "encap fou needs pmtudisc (DF on every outer packet)");
  }
  return absl::OkStatus();
}

// A multipoint tunnel's far ends are its peers: no remote, no keepalive of its own (each peer
// has one). IP modes only: a bridge would need a MAC table per peer.
absl::Status ValidateMultipoint(const TunnelSpec& spec) {
  if (spec.remote.family() != IpAddress::Family::kNone) {
    return Invalid("tunnel.remote",
                   "must be empty for a multipoint tunnel: its peers give the far ends");
  }
  if (dataplane::IsEthernetMode(spec.mode)) {
    return Invalid("tunnel.multipoint",
                   absl::StrCat(dataplane::TunnelModeName(spec.mode),
                                " tunnels cannot be multipoint (gre, ipip, sit, ip6gre and "
                                "ip6tnl can)"));
  }
  if (spec.keepalive.enabled()) {
    return Invalid("tunnel.keepalive",
                   "a multipoint tunnel has no keepalive of its own: set one per peer");
  }
  if (spec.sequence || spec.input_sequence || spec.output_sequence) {
    // Sequence numbers are one stream each way, and a multipoint tunnel has one per peer.
    return Invalid("tunnel.sequence", "sequence numbers are for point-to-point tunnels only");
  }
  if (UnderlayFamily(spec.mode) == IpAddress::Family::kV6 && spec.local.is_unspecified()) {
    // With no remote there is no route to take a source from, and a raw IPv6 send carries
    // the source as written.
    return Invalid("tunnel.local", "required for a multipoint tunnel over IPv6");
  }
  return absl::OkStatus();
}

// `field` is where the keepalive is: "tunnel.keepalive", "peer.keepalive".
absl::Status ValidateKeepalive(const KeepaliveSpec& k, TunnelMode mode, absl::string_view field) {
  constexpr absl::Duration kMinInterval = absl::Milliseconds(100);
  constexpr absl::Duration kMaxInterval = absl::Hours(1);
  constexpr uint32_t kMaxRetries = 255;
  if (k.interval < absl::ZeroDuration() ||
      (k.interval != absl::ZeroDuration() &&
       (k.interval < kMinInterval || k.interval > kMaxInterval))) {
    return Invalid(absl::StrCat(field, ".interval"),
                   absl::StrCat(absl::FormatDuration(k.interval),
                                " is out of range 100ms..1h (0 or unset = off)"));
  }
  if (k.retries > kMaxRetries) {
    return Invalid(absl::StrCat(field, ".retries"),
                   absl::StrCat(k.retries, " is out of range 0..", kMaxRetries, " (0 = 3)"));
  }
  if (k.enabled() && !dataplane::SupportsKeepalive(mode)) {
    return Invalid(field,
                   absl::StrCat(dataplane::TunnelModeName(mode),
                                " tunnels cannot send keepalives (gre, ipip, ip6gre and ip6tnl "
                                "can)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateDeviceName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return Invalid(field, "required");
  if (name.size() > kMaxDeviceName) {
    return Invalid(field, absl::StrCat(Quote(name), " is longer than ", kMaxDeviceName, " bytes"));
  }
  if (name == "." || name == "..") {
    return Invalid(field, absl::StrCat(Quote(name), " is not a valid device name"));
  }
  for (char c : name) {
    // Printable ASCII without space: also keeps names safe in shells, sysfs paths and logs.
    if (c <= ' ' || c > '~') {
      return Invalid(
          field, absl::StrCat(Quote(name), " may hold only printable ASCII without white space"));
    }
    if (c == '/' || c == ':') {
      return Invalid(field,
                     absl::StrCat(Quote(name), " must not contain '", std::string(1, c), "'"));
    }
  }
  return absl::OkStatus();
}

std::string QuoteValue(absl::string_view text) {
  // A bad value of any size is quoted by its first bytes and its length.
  constexpr size_t kMaxQuoted = 64;
  if (text.size() <= kMaxQuoted) return absl::StrCat("\"", absl::CEscape(text), "\"");
  return absl::StrCat("\"", absl::CEscape(text.substr(0, kMaxQuoted)), "\"... (", text.size(),
                      " bytes)");
}

void SetTunnelLimits(const TunnelLimits& limits) { tunnel_limits = limits; }
const TunnelLimits& CurrentTunnelLimits() { return tunnel_limits; }

absl::Status ValidateSpec(const TunnelSpec& spec) {
  if (absl::Status s = ValidateDeviceName(spec.name); !s.ok()) return s;

  // Before the other rules: they are written for the modes the dataplane carries, and a
  // client asking for another mode needs to hear that first, not a complaint about a field.
  if (!dataplane::IsModeImplemented(spec.mode)) {
    return absl::UnimplementedError(
        absl::StrCat("tunnel.mode: ", dataplane::TunnelModeName(spec.mode),
                     " is not implemented yet (", ImplementedModes(), ")"));
  }

  if (spec.local.family() != IpAddress::Family::kNone &&
      !(spec.local.is_unspecified() && spec.local.family() == UnderlayFamily(spec.mode))) {
    if (absl::Status s = ValidateEndpoint("tunnel.local", spec.local, spec.mode); !s.ok()) {
      return s;
    }
  }

  if (spec.multipoint) {
    if (absl::Status s = ValidateMultipoint(spec); !s.ok()) return s;
  } else {
    if (spec.remote.family() == IpAddress::Family::kNone) {
      return Invalid("tunnel.remote", "required");
    }
    if (absl::Status s = ValidateEndpoint("tunnel.remote", spec.remote, spec.mode); !s.ok()) {
      return s;
    }
  }

  if (absl::Status s = ValidateGreOptions(spec); !s.ok()) return s;
  if (absl::Status s = ValidateOuterHeader(spec); !s.ok()) return s;
  if (absl::Status s = ValidateKeepalive(spec.keepalive, spec.mode, "tunnel.keepalive"); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateFou(spec); !s.ok()) return s;

  if (spec.mtu != 0) {
    const dataplane::MtuRange range =
        dataplane::DeviceMtuRange(spec.mode, OutputGreOptions(spec), spec.fou.enabled);
    if (spec.mtu < range.min || spec.mtu > range.max) {
      return Invalid("tunnel.mtu", absl::StrCat(spec.mtu, " is out of range ", range.min, "..",
                                                range.max, " (0 = automatic)"));
    }
  }

  if (absl::Status s = ValidateAddresses(spec); !s.ok()) return s;
  if (absl::Status s = ValidateRoutes(spec); !s.ok()) return s;
  return ValidateLabels(spec.labels);
}

absl::Status ValidateLabels(const std::map<std::string, std::string>& labels,
                            absl::string_view field) {
  const TunnelLimits& limits = tunnel_limits;
  auto allowed = [](absl::string_view text) {
    for (char c : text) {
      if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '/' && c != '-') return false;
    }
    return true;
  };
  if (labels.size() > limits.max_labels) {
    return Invalid(field,
                   absl::StrCat(labels.size(), " labels, at most ", limits.max_labels,
                                absl::StartsWith(field, "peer") ? " per peer" : " per tunnel",
                                " (--max_labels_per_tunnel)"));
  }
  for (const auto& [key, value] : labels) {
    if (key.empty() || key.size() > limits.max_label_key_length || !allowed(key)) {
      return Invalid(field,
                     absl::StrCat("key ", Quote(key), " must be 1-", limits.max_label_key_length,
                                  " characters of A-Z a-z 0-9 . _ / - (--max_label_key_length)"));
    }
    if (value.size() > limits.max_label_value_length || !allowed(value)) {
      return Invalid(
          absl::StrCat(field, "[", key, "]"),
          absl::StrCat("value ", Quote(value), " must be 0-", limits.max_label_value_length,
                       " characters of A-Z a-z 0-9 . _ / - (--max_label_value_length)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePeer(const PeerSpec& peer, const TunnelSpec& tunnel) {
  constexpr size_t kMaxPeerName = 63;
  if (peer.name.empty()) return Invalid("peer.name", "required");
  if (peer.name.size() > kMaxPeerName) {
    return Invalid("peer.name",
                   absl::StrCat(Quote(peer.name), " is longer than ", kMaxPeerName, " characters"));
  }
  for (char c : peer.name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return Invalid("peer.name",
                     absl::StrCat(Quote(peer.name), " may hold only A-Z a-z 0-9 . _ -"));
    }
  }
  if (peer.underlay.family() == IpAddress::Family::kNone) {
    return Invalid("peer.underlay", "required");
  }
  if (absl::Status s = ValidateEndpoint("peer.underlay", peer.underlay, tunnel.mode); !s.ok()) {
    return s;
  }
  if (peer.key.has_value() && !dataplane::IsGreMode(tunnel.mode)) {
    return Invalid("peer.key", absl::StrCat(dataplane::TunnelModeName(tunnel.mode),
                                            " tunnels carry no key (GRE modes do)"));
  }
  const TunnelLimits& limits = tunnel_limits;
  if (peer.allowed_prefixes.size() > limits.max_peer_prefixes) {
    return Invalid("peer.allowed_prefixes",
                   absl::StrCat(peer.allowed_prefixes.size(), " prefixes, at most ",
                                limits.max_peer_prefixes, " per peer (--max_prefixes_per_peer)"));
  }
  std::set<std::pair<std::string, int>> seen;
  for (size_t i = 0; i < peer.allowed_prefixes.size(); ++i) {
    const std::string field = Indexed("peer.allowed_prefixes", i);
    const IpPrefix& p = peer.allowed_prefixes[i];
    if (absl::Status s = ValidatePrefixShape(field, p, tunnel.mode); !s.ok()) return s;
    if (!p.is_network()) {
      return Invalid(field, absl::StrCat(p.ToString(), " has host bits set (",
                                         p.Network().ToString(), " is the prefix)"));
    }
    if (!seen.emplace(p.address().ToString(), p.length()).second) {
      return Invalid(field, absl::StrCat(p.ToString(), " is given twice"));
    }
  }
  if (absl::Status s = ValidateKeepalive(peer.keepalive, tunnel.mode, "peer.keepalive"); !s.ok()) {
    return s;
  }
  return ValidateLabels(peer.labels, "peer.labels");
}

absl::Status CheckApplyWork(const std::vector<TunnelSpec>& tunnels) {
  const TunnelLimits& limits = tunnel_limits;
  size_t prefixes = 0;
  for (const TunnelSpec& spec : tunnels) {
    prefixes += spec.addresses.size() + spec.routes.size();
  }
  if (prefixes > limits.max_apply_prefixes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tunnels: ", prefixes, " addresses and routes in all, at most ", limits.max_apply_prefixes,
        " in one ApplyTunnels (--max_prefixes_per_apply); split the change into several"));
  }
  return absl::OkStatus();
}

}  // namespace tunnelagent::agent
