#include "clients/tunnel_controller/plan.h"

#include <arpa/inet.h>

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/duration.pb.h"

namespace tunnelagent::controller {
namespace {

// Where a link came from, for errors.
struct Origin {
  std::string field;  // "topology.links[2]", or empty for links made by mesh/hub-spoke
  Position position;
};

struct Candidate {
  size_t rank_hi = 0;  // the later node's index in the file
  size_t rank_lo = 0;  // the earlier node's
  Link link;
  LinkSettings overrides;
  Origin origin;
};

std::string PairText(const std::string& a, const std::string& b) {
  return absl::StrCat(a, "\n", b);
}

std::string Ipv4Text(uint32_t address) {
  in_addr a{};
  a.s_addr = htonl(address);
  char text[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a, text, sizeof(text));
  return text;
}

absl::Status LinkError(const Fleet& fleet, const Origin& origin, const Link& link,
                       absl::string_view problem) {
  std::string where = fleet.source;
  if (origin.position.line > 0) {
    absl::StrAppend(&where, ":", origin.position.line, ":", origin.position.column);
  }
  const std::string what = origin.field.empty()
                               ? absl::StrCat("link ", link.a, " - ", link.b)
                               : absl::StrCat(origin.field, " (", link.a, " - ", link.b, ")");
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what, ": ", problem));
}

// Settings of a link: the override's where given, else the defaults'. Checks that the mode
// takes what was asked for explicitly; defaults a mode cannot take are left out.
absl::Status Resolve(const Fleet& fleet, const Candidate& c, Link* link) {
  const LinkSettings& d = fleet.defaults;
  const LinkSettings& o = c.overrides;
  link->mode = o.mode.value_or(*d.mode);
  const std::string mode = ModeName(link->mode);
  KeySetting key = o.key.value_or(*d.key);
  if (!ModeHasKey(link->mode)) {
    if (o.key.has_value() && o.key->policy != KeyPolicy::kNone) {
      return LinkError(fleet, c.origin, *link, absl::StrCat(mode, " tunnels have no key"));
    }
    key = KeySetting{KeyPolicy::kNone, 0};
  }
  if (key.policy == KeyPolicy::kFixed) link->key = key.value;
  // kAuto: assigned later, fleet-wide.
  link->mtu = o.mtu.value_or(d.mtu.value_or(0));
  const bool checksum = o.checksum.value_or(d.checksum.value_or(false));
  if (checksum && !ModeHasKey(link->mode)) {
    if (o.checksum.has_value()) {
      return LinkError(fleet, c.origin, *link,
                       absl::StrCat(mode, " tunnels have no checksum (GRE modes only)"));
    }
  } else {
    link->checksum = checksum;
  }
  const KeepaliveSetting keepalive = o.keepalive.value_or(d.keepalive.value_or(KeepaliveSetting{}));
  if (keepalive.interval != absl::ZeroDuration() && !ModeHasKeepalive(link->mode)) {
    if (o.keepalive.has_value()) {
      return LinkError(
          fleet, c.origin, *link,
          absl::StrCat(mode, " tunnels have no keepalive (gre, ipip, ip6gre, ip6tnl)"));
    }
  } else {
    link->keepalive = keepalive;
  }
  return absl::OkStatus();
}

std::string HashedDeviceName(const std::string& peer, int salt) {
  const std::string seed = salt == 0 ? peer : absl::StrCat(peer, "#", salt);
  const uint16_t h = static_cast<uint16_t>(StableHash(absl::StrCat("device\n", seed)));
  const size_t room = kMaxDeviceName - (sizeof(kDevicePrefix) - 1) - 5;  // "-" + 4 hex
  return absl::StrFormat("%s%s-%04x", kDevicePrefix, peer.substr(0, room), h);
}

// The device name for the tunnel to `peer` on a node where `taken` are already used.
std::string DeviceName(const std::string& peer, absl::flat_hash_set<std::string>& taken) {
  std::string name = absl::StrCat(kDevicePrefix, peer);
  int salt = 0;
  if (name.size() > kMaxDeviceName) name = HashedDeviceName(peer, salt);
  while (taken.contains(name)) name = HashedDeviceName(peer, ++salt);
  taken.insert(name);
  return name;
}

void SetKeepalive(const KeepaliveSetting& keepalive, v1::Keepalive* k) {
  const int64_t nanos = absl::ToInt64Nanoseconds(keepalive.interval);
  k->mutable_interval()->set_seconds(nanos / 1'000'000'000);
  k->mutable_interval()->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  k->set_retries(keepalive.retries);
}

v1::Tunnel MakeTunnel(const Link& link, const std::string& name, const std::string& local,
                      const std::string& remote, const std::string& address,
                      const std::string& peer) {
  v1::Tunnel t;
  t.set_name(name);
  t.set_mode(link.mode);
  t.set_local(local);
  t.set_remote(remote);
  if (link.key.has_value()) t.set_key(*link.key);
  t.set_mtu(link.mtu);
  t.add_addresses(address);
  (*t.mutable_labels())[kPeerLabel] = peer;
  t.set_checksum(link.checksum);
  if (link.keepalive.interval != absl::ZeroDuration()) {
    SetKeepalive(link.keepalive, t.mutable_keepalive());
  }
  return t;
}

// See plan.h, "Multipoint fleets".
absl::StatusOr<FleetPlan> PlanMultipoint(const Fleet& fleet) {
  const v1::TunnelMode mode = *fleet.defaults.mode;
  const std::string& device = fleet.multipoint.device;
  for (size_t i = 0; i < fleet.nodes.size(); ++i) {
    const Node& n = fleet.nodes[i];
    if (n.underlay_v6 != ModeUnderlayV6(mode)) {
      std::string where = fleet.source;
      if (n.position.line > 0) {
        absl::StrAppend(&where, ":", n.position.line, ":", n.position.column);
      }
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": nodes[", i, "] (", n.name, "): ", ModeName(mode), " needs an ",
          ModeUnderlayV6(mode) ? "IPv6" : "IPv4", " underlay; ", n.name, "'s is ", n.underlay));
    }
  }

  // One address per node: the pool's host addresses, not its network and broadcast ones.
  const InnerPool& pool = fleet.inner_pool;
  const uint64_t size = uint64_t{1} << (32 - pool.length);
  const uint64_t first = size > 2 ? 1 : 0;
  const uint64_t hosts = size > 2 ? size - 2 : size;
  if (fleet.nodes.size() > hosts) {
    return absl::InvalidArgumentError(
        absl::StrCat(fleet.source, ": defaults.innerPool: ", pool.text, " has room for ", hosts,
                     " nodes (an address each); the file has ", fleet.nodes.size()));
  }
  std::map<std::string, std::string> address;  // node -> "a.b.c.d/32"
  absl::flat_hash_set<uint64_t> used;
  for (const Node& n : fleet.nodes) {  // the file's order is the priority
    uint64_t slot = StableHash(absl::StrCat("address\n", n.name)) % hosts;
    while (!used.insert(slot).second) slot = (slot + 1) % hosts;
    address[n.name] =
        absl::StrCat(Ipv4Text(pool.network + static_cast<uint32_t>(first + slot)), "/32");
  }

  std::optional<uint32_t> key;
  if (ModeHasKey(mode)) {
    const KeySetting setting = *fleet.defaults.key;
    if (setting.policy == KeyPolicy::kFixed) {
      key = setting.value;
    } else if (setting.policy == KeyPolicy::kAuto) {
      for (int salt = 0; !key.has_value() || *key == 0; ++salt) {
        key =
            static_cast<uint32_t>(StableHash(absl::StrCat("multipoint key\n", device, "\n", salt)));
      }
    }
  }
  const bool checksum = ModeHasKey(mode) && fleet.defaults.checksum.value_or(false);
  const KeepaliveSetting keepalive = fleet.defaults.keepalive.value_or(KeepaliveSetting{});

  auto make_peer = [&](const Node& n, std::vector<std::string> allowed) {
    v1::Peer p;
    p.set_name(n.name);
    p.set_underlay(n.underlay);
    for (std::string& a : allowed) p.add_allowed_prefixes(std::move(a));
    if (keepalive.interval != absl::ZeroDuration()) SetKeepalive(keepalive, p.mutable_keepalive());
    return p;
  };
  auto own_prefixes = [&](const Node& n) {
    std::vector<std::string> allowed = {address[n.name]};
    allowed.insert(allowed.end(), n.prefixes.begin(), n.prefixes.end());
    return allowed;
  };

  FleetPlan plan;
  plan.multipoint_device = device;
  const bool hub_spoke = fleet.topology == TopologyType::kHubSpoke;
  for (const Node& n : fleet.nodes) {
    MultipointNode& mp = plan.multipoint[n.name];
    mp.address = address[n.name];
    v1::Tunnel t;
    t.set_name(device);
    t.set_mode(mode);
    t.set_multipoint(true);
    t.set_local(n.underlay);
    if (key.has_value()) t.set_key(*key);
    t.set_mtu(fleet.defaults.mtu.value_or(0));
    t.set_checksum(checksum);
    t.add_addresses(mp.address);
    t.add_routes(pool.text);
    for (const Node& other : fleet.nodes) {
      if (other.name == n.name) continue;
      for (const std::string& p : other.prefixes) t.add_routes(p);
      const bool peered = !hub_spoke || n.name == fleet.hub || other.name == fleet.hub;
      if (!peered) continue;
      if (hub_spoke && n.name != fleet.hub) {
        // A spoke reaches everything through the hub: the pool, the hub's prefixes and every
        // other spoke's.
        std::vector<std::string> allowed = {pool.text};
        for (const Node& behind : fleet.nodes) {
          if (behind.name == n.name) continue;
          allowed.insert(allowed.end(), behind.prefixes.begin(), behind.prefixes.end());
        }
        mp.peers.push_back(make_peer(other, std::move(allowed)));
      } else {
        mp.peers.push_back(make_peer(other, own_prefixes(other)));
      }
    }
    std::sort(mp.peers.begin(), mp.peers.end(),
              [](const v1::Peer& x, const v1::Peer& y) { return x.name() < y.name(); });
    plan.desired[n.name].push_back(std::move(t));
  }
  return plan;
}

}  // namespace

size_t TotalPeers(const FleetPlan& plan) {
  size_t n = 0;
  for (const auto& [node, mp] : plan.multipoint) n += mp.peers.size();
  return n;
}

uint64_t StableHash(absl::string_view data) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

absl::StatusOr<FleetPlan> PlanFleet(const Fleet& fleet) {
  if (fleet.multipoint.enabled) return PlanMultipoint(fleet);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < fleet.nodes.size(); ++i) index[fleet.nodes[i].name] = i;

  // The links, with their overrides.
  std::map<std::pair<std::string, std::string>, Candidate> by_pair;
  auto add = [&](const std::string& x, const std::string& y, const LinkSettings& settings,
                 Origin origin) {
    Candidate c;
    c.link.a = std::min(x, y);
    c.link.b = std::max(x, y);
    c.rank_hi = std::max(index[x], index[y]);
    c.rank_lo = std::min(index[x], index[y]);
    c.overrides = settings;
    c.origin = std::move(origin);
    by_pair[{c.link.a, c.link.b}] = std::move(c);
  };
  switch (fleet.topology) {
    case TopologyType::kMesh:
      for (size_t i = 0; i < fleet.nodes.size(); ++i) {
        for (size_t j = i + 1; j < fleet.nodes.size(); ++j) {
          add(fleet.nodes[i].name, fleet.nodes[j].name, {}, {});
        }
      }
      break;
    case TopologyType::kHubSpoke:
      for (const Node& n : fleet.nodes) {
        if (n.name != fleet.hub) add(fleet.hub, n.name, {}, {});
      }
      break;
    case TopologyType::kLinks:
      for (const LinkSpec& l : fleet.links) add(l.a, l.b, l.settings, {l.field, l.position});
      break;
  }
  for (const LinkSpec& o : fleet.overrides) {
    auto it = by_pair.find(std::minmax(o.a, o.b));
    if (it == by_pair.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(fleet.source, ":", o.position.line, ":", o.position.column, ": ", o.field,
                       ": the topology has no link between ", o.a, " and ", o.b));
    }
    it->second.overrides = o.settings;
    it->second.origin = {o.field, o.position};
  }

  // Settings, then the priority order.
  std::vector<Candidate> ranked;
  ranked.reserve(by_pair.size());
  std::set<uint32_t> fixed_keys;
  for (auto& [pair, c] : by_pair) {
    if (absl::Status s = Resolve(fleet, c, &c.link); !s.ok()) return s;
    const Node& na = fleet.nodes[index[c.link.a]];
    const Node& nb = fleet.nodes[index[c.link.b]];
    const bool want_v6 = ModeUnderlayV6(c.link.mode);
    for (const Node* n : {&na, &nb}) {
      if (n->underlay_v6 != want_v6) {
        return LinkError(
            fleet, c.origin, c.link,
            absl::StrCat(ModeName(c.link.mode), " needs an ", want_v6 ? "IPv6" : "IPv4",
                         " underlay; ", n->name, "'s is ", n->underlay));
      }
    }
    if (c.link.key.has_value()) fixed_keys.insert(*c.link.key);
    ranked.push_back(std::move(c));
  }
  std::sort(ranked.begin(), ranked.end(), [](const Candidate& x, const Candidate& y) {
    return std::tie(x.rank_hi, x.rank_lo) < std::tie(y.rank_hi, y.rank_lo);
  });

  // The pool.
  const uint64_t slots = uint64_t{1} << (31 - fleet.inner_pool.length);
  if (ranked.size() > slots) {
    return absl::InvalidArgumentError(absl::StrCat(
        fleet.source, ": defaults.innerPool: ", fleet.inner_pool.text, " has room for ", slots,
        " links (a /31 each); the topology has ", ranked.size()));
  }
  absl::flat_hash_set<uint64_t> used;
  absl::flat_hash_set<uint32_t> keys;
  std::map<std::string, absl::flat_hash_set<std::string>> names;  // per node

  for (Candidate& c : ranked) {
    Link& link = c.link;
    const std::string pair = PairText(link.a, link.b);
    const bool auto_key = ModeHasKey(link.mode) && !link.key.has_value() &&
                          c.overrides.key.value_or(*fleet.defaults.key).policy == KeyPolicy::kAuto;
    if (auto_key) {
      for (int salt = 0;; ++salt) {
        const std::string seed = salt == 0 ? pair : absl::StrCat(pair, "\n", salt);
        const uint32_t key = static_cast<uint32_t>(StableHash(absl::StrCat("key\n", seed)));
        if (key != 0 && !fixed_keys.count(key) && keys.insert(key).second) {
          link.key = key;
          break;
        }
      }
    }
    uint64_t slot = StableHash(absl::StrCat("pool\n", pair)) % slots;
    while (!used.insert(slot).second) slot = (slot + 1) % slots;
    link.slot = static_cast<uint32_t>(slot);
    const uint32_t base = fleet.inner_pool.network + static_cast<uint32_t>(slot) * 2;
    link.a_address = absl::StrCat(Ipv4Text(base), "/31");
    link.b_address = absl::StrCat(Ipv4Text(base + 1), "/31");
    link.a_device = DeviceName(link.b, names[link.a]);
    link.b_device = DeviceName(link.a, names[link.b]);
  }

  FleetPlan plan;
  for (const Node& n : fleet.nodes) plan.desired[n.name];
  for (Candidate& c : ranked) {
    const Link& l = c.link;
    const Node& na = fleet.nodes[index[l.a]];
    const Node& nb = fleet.nodes[index[l.b]];
    plan.desired[l.a].push_back(
        MakeTunnel(l, l.a_device, na.underlay, nb.underlay, l.a_address, l.b));
    plan.desired[l.b].push_back(
        MakeTunnel(l, l.b_device, nb.underlay, na.underlay, l.b_address, l.a));
    plan.links.push_back(std::move(c.link));
  }
  for (auto& [node, tunnels] : plan.desired) {
    std::sort(tunnels.begin(), tunnels.end(),
              [](const v1::Tunnel& x, const v1::Tunnel& y) { return x.name() < y.name(); });
  }
  std::sort(plan.links.begin(), plan.links.end(),
            [](const Link& x, const Link& y) { return std::tie(x.a, x.b) < std::tie(y.a, y.b); });
  return plan;
}

}  // namespace tunnelagent::controller
