// From a fleet to the tunnels each node should have: pure and deterministic.
//
// The links: every pair (mesh), the hub with every other node (hub-spoke), or the listed pairs
// (links). Each link is one tunnel on each of its two nodes, with local = the node's underlay,
// remote = the peer's, and the node's end of the link's /31 as its address (the /31 makes the
// peer's end reachable through the tunnel).
//
// Names, keys and /31s are pure functions of the file, stable under change:
//  - Priority. Links are ranked by the later of their two nodes in the file's `nodes` list,
//    then by the earlier one. Where two links want the same name, key or /31, the higher
//    ranked keeps it and the other moves on to its next candidate. So adding nodes at the end
//    of the list, or adding links, never changes anything of the existing links; removing a
//    node or reordering `nodes` can move a link that had lost such a collision (rare; see below).
//  - Device names, on node X for the link to peer P: "tc-P" when that fits in 15 characters;
//    else "tc-" + the first 7 characters of P + "-" + 4 hex digits of a hash of P. A name
//    already taken on X (by a higher ranked link) moves to the hash of (P, 1), (P, 2), ...
//  - Keys (key: auto, GRE modes): a 32-bit hash of the unordered pair of names (never 0 and
//    never a key given as a number anywhere in the file), distinct across the fleet: a taken
//    one moves to the hash of (pair, 1), (pair, 2), ...
//  - Addresses: the pool's /31 number hash(pair) mod (number of /31s), linear probing past
//    taken ones. The node whose name sorts first gets the even address. Two links collide
//    with probability about (links / /31s in the pool): a /16 (32,768 /31s) suits a few
//    thousand links; more links than /31s is an error.
// Hashes are FNV-1a 64 with a splitmix64 finalizer over the names: the same on every machine.
//
// Multipoint fleets (Fleet::multipoint): no links. Each node gets one device (the setting's
// name, tnl0 by default) with no remote, and a peer for each node it would have had a link to:
//  - Addresses: each node one address of the inner pool, as a /32 on its device: address
//    number hash(name) mod (the pool's host addresses: neither its first nor its last, unless
//    it is a /31), linear probing past taken ones, the earlier node in `nodes` keeping its
//    own. As for links, adding nodes at the end never moves an existing address.
//  - The device: local = the node's underlay, routes = the pool and every other node's
//    `prefixes` (what the kernel sends into it; the peers' allowed prefixes pick the peer).
//    Key (GRE modes): one for the whole fleet, as every node's device must accept what any
//    other sends: the number given, none, or (auto) a hash of the device name; peers carry
//    no key of their own. MTU, checksum from the defaults; keepalive goes on each peer.
//  - A peer: named as the node, underlay = the node's, allowed prefixes = its /32 and its
//    `prefixes`. Mesh: every node has every other (N-1 peers). Hub-spoke: the hub has every
//    spoke; a spoke has only the hub, allowing the whole pool and every other node's
//    `prefixes`, so that spoke to spoke goes through the hub (which must forward IP).
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PLAN_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PLAN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/tunnel_controller/fleet.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::controller {

inline constexpr size_t kMaxDeviceName = 15;
inline constexpr char kDevicePrefix[] = "tc-";
// The label each tunnel carries naming the node at its other end (beside ApplyTunnels' owner).
inline constexpr char kPeerLabel[] = "peer";

// One link, as planned.
struct Link {
  // The two nodes; a's name sorts before b's.
  std::string a;
  std::string b;
  v1::TunnelMode mode = v1::TUNNEL_MODE_GRE;
  std::optional<uint32_t> key;
  uint32_t mtu = 0;
  bool checksum = false;
  KeepaliveSetting keepalive;
  // The /31: index in the pool, and each end's address as a CIDR ("100.64.0.6/31").
  uint32_t slot = 0;
  std::string a_address;
  std::string b_address;
  // The device name on a (toward b) and on b (toward a).
  std::string a_device;
  std::string b_device;
};

// A node's part of a multipoint fleet.
struct MultipointNode {
  std::string address;          // the node's overlay address on its device, "100.64.3.7/32"
  std::vector<v1::Peer> peers;  // sorted by name; ApplyPeers adds the owner label
};

struct FleetPlan {
  std::vector<Link> links;  // sorted by (a, b); empty for a multipoint fleet
  // Every node of the file (even one without links), its tunnels sorted by name.
  std::map<std::string, std::vector<v1::Tunnel>> desired;
  // Multipoint fleets: the device's name (empty: point to point), and every node's peers.
  std::string multipoint_device;
  std::map<std::string, MultipointNode> multipoint;
};

// Peers over all nodes.
size_t TotalPeers(const FleetPlan& plan);

// Errors (InvalidArgument, naming the file and the link's field or line): a setting the
// link's mode cannot have (a key or checksum on a non-GRE link, keepalive on gretap...), an
// underlay of the wrong family for the mode, a pool too small for the links (multipoint: for
// the nodes).
absl::StatusOr<FleetPlan> PlanFleet(const Fleet& fleet);

// The hash used throughout (exposed for tests): FNV-1a 64, then splitmix64's finalizer.
uint64_t StableHash(absl::string_view data);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PLAN_H_
