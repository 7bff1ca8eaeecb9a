// The fleet file of tunnel-controller: which nodes there are, how to reach their agents, and
// which pairs of them are linked by a tunnel, with what settings. YAML in, a checked Fleet out;
// every error names the file, line, column and field. Pure apart from LoadFleetFile.
//
//   defaults:
//     mode: gre                  # any tunnel mode (ip link's names)
//     key: auto                  # auto (a distinct key per link) | none | a number
//     innerPool: 100.64.0.0/16   # a /31 per link
//     mtu: 1400                  # optional: 0 or auto = automatic
//     checksum: true             # optional, GRE modes
//     keepalive: {interval: 10s, retries: 3}   # optional
//     tls: {ca: ca.pem, cert: c.pem, key: c.key, serverName: agent}   # or tls: true
//     tokenFile: token
//     multipoint: true           # optional: one device per node, see below
//   nodes:
//     - name: node1
//       agent: unix:/run/tunnel-agent/node1.sock   # or host:port
//       underlay: 198.18.1.1
//       tls: ...  tokenFile: ...                   # per node, field by field over defaults
//       prefixes: [10.244.1.0/24]                  # multipoint: routed to this node
//   topology:
//     type: mesh        # mesh | hub-spoke (hub: NAME) | links (links: [[a, b], {nodes: [a, b],
//     mode: ipip, ...}]) overrides:        # mesh and hub-spoke: settings of some links
//       - {nodes: [a, b], mtu: 1400}
//     multipoint: {device: mesh0}   # optional, replaces the defaults' for this topology
//
// `multipoint: true | false | {device: NAME}` (default device tnl0), for mesh and hub-spoke:
// instead of a tunnel per link, each node gets one multipoint device whose peers are the
// nodes it would have had links to; `prefixes` of a node are routed to it from every other
// node. Links stay point to point, and so do fleets without `multipoint`.
//
// Relative file names (tls, tokenFile) are relative to the fleet file's directory.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/common/agent_connection.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::controller {

// Longest node name: it becomes a label value ("peer"), at most 63 characters.
inline constexpr size_t kMaxNodeName = 63;

enum class KeyPolicy { kAuto, kNone, kFixed };

struct KeySetting {
  KeyPolicy policy = KeyPolicy::kAuto;
  uint32_t value = 0;  // kFixed
  bool operator==(const KeySetting& o) const { return policy == o.policy && value == o.value; }
};

struct KeepaliveSetting {
  absl::Duration interval = absl::ZeroDuration();  // zero: off
  uint32_t retries = 0;                            // 0: the agent's default (3)
  bool operator==(const KeepaliveSetting& o) const {
    return interval == o.interval && retries == o.retries;
  }
};

// Settings of a link; each one unset falls back to the defaults'.
struct LinkSettings {
  std::optional<v1::TunnelMode> mode;
  std::optional<KeySetting> key;
  std::optional<uint32_t> mtu;  // 0: automatic
  std::optional<bool> checksum;
  std::optional<KeepaliveSetting> keepalive;
};

// Where a value came from in the file, for errors found after parsing.
struct Position {
  int line = 0;  // 1-based; 0: unknown
  int column = 0;
};

struct Node {
  std::string name;
  std::string agent;     // gRPC target: "unix:/path" or "host:port"
  std::string underlay;  // an IPv4 or IPv6 address, as written
  bool underlay_v6 = false;
  clients::TlsOptions tls;
  std::string token_file;
  // Inner prefixes behind this node (its pod CIDR...), in the canonical form ("10.244.1.0/24",
  // "fd00:1::/64"): multipoint fleets route them to it. Host bits zero, none overlapping the
  // inner pool, none advertised by two nodes.
  std::vector<std::string> prefixes;
  Position position;
};

inline constexpr char kDefaultMultipointDevice[] = "tnl0";

// One multipoint device per node instead of one tunnel per link.
struct MultipointSetting {
  bool enabled = false;
  std::string device = kDefaultMultipointDevice;
  Position position;  // where it was turned on, for errors found later
  std::string field;  // "defaults.multipoint" or "topology.multipoint"
};

enum class TopologyType { kMesh, kHubSpoke, kLinks };

// A pair of nodes (by name, in the file's spelling) and what it overrides.
struct LinkSpec {
  std::string a;
  std::string b;
  LinkSettings settings;
  Position position;
  std::string field;  // "topology.links[3]", for errors
};

struct InnerPool {
  uint32_t network = 0;  // host byte order
  int length = 0;        // prefix length, 0..31
  std::string text;      // as written
};

struct Fleet {
  std::string source;  // the file's name, for messages
  // The defaults with mode (gre) and key (auto) always set.
  LinkSettings defaults;
  InnerPool inner_pool;
  std::vector<Node> nodes;  // in the file's order (also the priority of collision resolution)
  TopologyType topology = TopologyType::kMesh;
  std::string hub;                  // kHubSpoke
  std::vector<LinkSpec> links;      // kLinks
  std::vector<LinkSpec> overrides;  // kMesh, kHubSpoke (not multipoint)
  // topology.multipoint when given, else defaults.multipoint. Enabled only for kMesh and
  // kHubSpoke, with a mode that can be multipoint and no overrides.
  MultipointSetting multipoint;
  // defaults.tls and defaults.tokenFile: what a node added after parsing (AddNode: a node
  // registered in etcd) is reached with.
  clients::TlsOptions default_tls;
  std::string default_token_file;
};

// What is parsed: a fleet file, or a fleet description stored in etcd (docs/fleet.md#etcd),
// which is a fleet file whose nodes are those registered in etcd plus those it lists (pinned).
// A description may leave out `nodes` (or list none), and its topology's hub, links and
// overrides may name nodes it does not list: registered nodes, checked only as names here.
enum class FleetText { kFile, kDescription };

// Parses a fleet file's `content`; `source` names it in errors ("fleet.yaml:12:7: nodes[2].
// underlay: ..."), `base_dir` (may be empty) is prefixed to relative file names. Errors are
// InvalidArgument.
absl::StatusOr<Fleet> ParseFleet(absl::string_view content, absl::string_view source,
                                 absl::string_view base_dir = "",
                                 FleetText kind = FleetText::kFile);

// Appends `node` (a node registered in etcd: name, agent, underlay, prefixes; tls and token file
// are set here from the fleet's defaults) to a parsed fleet, checked as the file's nodes are: a
// valid name not already a node's, an agent target, an IP underlay not already a node's,
// prefixes in canonical form without host bits, outside the inner pool and not another node's,
// and only in a multipoint fleet (not IPv6 with ipip). Errors (InvalidArgument) say what is
// wrong with the node, without a file position; the fleet is then unchanged.
absl::Status AddNode(Node node, Fleet* fleet);

// Reads and parses the file at `path`.
absl::StatusOr<Fleet> LoadFleetFile(const std::string& path);

// "gre", "ipip", ... as `ip link add ... type <mode>` names them (or TUNNEL_MODE_GRE, ...).
absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text);
std::string ModeName(v1::TunnelMode mode);

// Whether the mode takes a key and checksum (the GRE family), keepalive (gre, ipip, ip6gre,
// ip6tnl), and whether its underlay is IPv6.
bool ModeHasKey(v1::TunnelMode mode);
bool ModeHasKeepalive(v1::TunnelMode mode);
bool ModeUnderlayV6(v1::TunnelMode mode);
// Whether a tunnel of the mode can be multipoint (gre, ipip, ip6gre, ip6tnl: IP inside, and
// an IPv4 inner pool to address the devices, which sit does not carry).
bool ModeCanBeMultipoint(v1::TunnelMode mode);

// "10s", "500ms", "1m30s", or a plain number of seconds ("2.5"). Not negative.
absl::StatusOr<absl::Duration> ParseDurationText(absl::string_view text);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_H_
