// Planning: the tunnels of each node, deterministic and stable as the fleet grows; names,
// keys and /31s under collisions; pool exhaustion; hub-spoke, links and overrides.
#include "clients/tunnel_controller/plan.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace tunnelagent::controller {
namespace {

using ::testing::HasSubstr;

Node MakeNode(const std::string& name, int i) {
  Node n;
  n.name = name;
  n.agent = absl::StrCat("unix:/run/", name, ".sock");
  n.underlay = absl::StrCat("198.18.", i / 250, ".", i % 250 + 1);
  return n;
}

Fleet MeshFleet(int nodes, const std::string& pool = "100.64.0.0/16") {
  Fleet f;
  f.source = "fleet.yaml";
  f.defaults.mode = v1::TUNNEL_MODE_GRE;
  f.defaults.key = KeySetting{KeyPolicy::kAuto, 0};
  const size_t slash = pool.find('/');
  const int length = std::stoi(pool.substr(slash + 1));
  uint32_t a = 0, b = 0, c = 0, d = 0;
  sscanf(pool.c_str(), "%u.%u.%u.%u", &a, &b, &c, &d);
  f.inner_pool = {(a << 24) | (b << 16) | (c << 8) | d, length, pool};
  for (int i = 0; i < nodes; ++i) f.nodes.push_back(MakeNode(absl::StrCat("node", i + 1), i));
  f.topology = TopologyType::kMesh;
  return f;
}

FleetPlan MustPlan(const Fleet& fleet) {
  absl::StatusOr<FleetPlan> plan = PlanFleet(fleet);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : FleetPlan();
}

const Link* FindLink(const FleetPlan& plan, const std::string& a, const std::string& b) {
  for (const Link& l : plan.links) {
    if ((l.a == a && l.b == b) || (l.a == b && l.b == a)) return &l;
  }
  return nullptr;
}

const v1::Tunnel* FindTunnel(const FleetPlan& plan, const std::string& node,
                             const std::string& name) {
  auto it = plan.desired.find(node);
  if (it == plan.desired.end()) return nullptr;
  for (const v1::Tunnel& t : it->second) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

bool SameLink(const Link& x, const Link& y) {
  return x.a == y.a && x.b == y.b && x.key == y.key && x.slot == y.slot &&
         x.a_device == y.a_device && x.b_device == y.b_device && x.a_address == y.a_address;
}

TEST(PlanTest, MeshTunnelsOfANode) {
  FleetPlan plan = MustPlan(MeshFleet(3));
  ASSERT_EQ(plan.links.size(), 3u);
  ASSERT_EQ(plan.desired.size(), 3u);
  ASSERT_EQ(plan.desired["node1"].size(), 2u);
  const v1::Tunnel& t = plan.desired["node1"][0];
  EXPECT_EQ(t.name(), "tc-node2");
  EXPECT_EQ(t.mode(), v1::TUNNEL_MODE_GRE);
  EXPECT_EQ(t.local(), "198.18.0.1");
  EXPECT_EQ(t.remote(), "198.18.0.2");
  EXPECT_TRUE(t.has_key());
  EXPECT_NE(t.key(), 0u);
  EXPECT_EQ(t.mtu(), 0u);
  EXPECT_EQ(t.labels().at("peer"), "node2");
  EXPECT_FALSE(t.checksum());
  EXPECT_FALSE(t.has_keepalive());
  ASSERT_EQ(t.addresses_size(), 1);

  // The other end: same key, the other address of the same /31, local and remote swapped.
  const v1::Tunnel* back = FindTunnel(plan, "node2", "tc-node1");
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->key(), t.key());
  EXPECT_EQ(back->local(), "198.18.0.2");
  EXPECT_EQ(back->remote(), "198.18.0.1");
  const Link* link = FindLink(plan, "node1", "node2");
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(t.addresses(0), link->a_address);
  EXPECT_EQ(back->addresses(0), link->b_address);
  // a_address is even (x.x.x.2k/31), b_address the next one.
  const std::string a = link->a_address.substr(0, link->a_address.size() - 3);
  const std::string b = link->b_address.substr(0, link->b_address.size() - 3);
  const int a_last = std::stoi(a.substr(a.rfind('.') + 1));
  const int b_last = std::stoi(b.substr(b.rfind('.') + 1));
  EXPECT_EQ(a_last % 2, 0);
  EXPECT_EQ(b_last, a_last + 1);
  EXPECT_EQ(a.substr(0, a.rfind('.')), b.substr(0, b.rfind('.')));
  EXPECT_EQ(a.substr(0, 7), "100.64.");
}

TEST(PlanTest, Deterministic) {
  FleetPlan x = MustPlan(MeshFleet(20));
  FleetPlan y = MustPlan(MeshFleet(20));
  ASSERT_EQ(x.links.size(), 190u);
  for (size_t i = 0; i < x.links.size(); ++i) EXPECT_TRUE(SameLink(x.links[i], y.links[i]));
  for (const auto& [node, tunnels] : x.desired) {
    ASSERT_EQ(tunnels.size(), y.desired[node].size());
    for (size_t i = 0; i < tunnels.size(); ++i) {
      EXPECT_TRUE(
          google::protobuf::util::MessageDifferencer::Equals(tunnels[i], y.desired[node][i]));
    }
  }
}

TEST(PlanTest, GoldenValues) {
  // Names, keys and addresses must not change between builds or machines: a change here
  // renumbers every fleet. (The values were checked against an independent Python version of
  // the scheme.)
  EXPECT_EQ(StableHash(""), 17665956581633026203ULL);
  EXPECT_EQ(StableHash("node1\nnode2"), 14202165601346151876ULL);
  FleetPlan plan = MustPlan(MeshFleet(2));
  ASSERT_EQ(plan.links.size(), 1u);
  EXPECT_EQ(plan.links[0].key, 86130571u);
  EXPECT_EQ(plan.links[0].a_address, "100.64.174.192/31");
  Fleet fleet = MeshFleet(0);
  fleet.nodes.push_back(MakeNode("a", 0));
  fleet.nodes.push_back(MakeNode("edge-router-frankfurt-1", 1));
  EXPECT_EQ(MustPlan(fleet).links[0].a_device, "tc-edge-ro-942c");
}

TEST(PlanTest, KeysAndSlotsDistinctAcrossTheFleet) {
  // A pool just big enough: 190 links in 256 /31s (a /23), so /31 collisions happen.
  FleetPlan plan = MustPlan(MeshFleet(20, "10.0.0.0/23"));
  std::set<uint32_t> keys;
  std::set<uint32_t> slots;
  for (const Link& l : plan.links) {
    EXPECT_TRUE(keys.insert(*l.key).second) << l.a << "-" << l.b;
    EXPECT_TRUE(slots.insert(l.slot).second) << l.a << "-" << l.b;
    EXPECT_LT(l.slot, 256u);
  }
}

TEST(PlanTest, AddingNodesKeepsExistingLinks) {
  // Small pool: collisions are certain, and still nothing existing moves.
  for (const char* pool : {"100.64.0.0/16", "10.0.0.0/22"}) {
    FleetPlan before = MustPlan(MeshFleet(12, pool));
    FleetPlan after = MustPlan(MeshFleet(30, pool));
    ASSERT_EQ(after.links.size(), 435u);
    for (const Link& l : before.links) {
      const Link* now = FindLink(after, l.a, l.b);
      ASSERT_NE(now, nullptr);
      EXPECT_TRUE(SameLink(l, *now)) << pool << " " << l.a << "-" << l.b;
    }
    for (const auto& [node, tunnels] : before.desired) {
      for (const v1::Tunnel& t : tunnels) {
        const v1::Tunnel* same = FindTunnel(after, node, t.name());
        ASSERT_NE(same, nullptr) << node << " " << t.name();
        EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(t, *same));
      }
    }
  }
}

TEST(PlanTest, NodeOrderOnlyMattersForCollisions) {
  // Reordering the nodes of a fleet whose links do not collide changes nothing.
  Fleet fleet = MeshFleet(6);
  FleetPlan x = MustPlan(fleet);
  std::reverse(fleet.nodes.begin(), fleet.nodes.end());
  FleetPlan y = MustPlan(fleet);
  for (const Link& l : x.links) {
    const Link* other = FindLink(y, l.a, l.b);
    ASSERT_NE(other, nullptr);
    EXPECT_TRUE(SameLink(l, *other));
  }
}

TEST(PlanTest, LongNamesGetAHashWithin15Characters) {
  Fleet fleet = MeshFleet(0);
  fleet.nodes.push_back(MakeNode("a", 0));
  fleet.nodes.push_back(MakeNode("edge-router-frankfurt-1", 1));
  fleet.nodes.push_back(MakeNode("edge-router-frankfurt-2", 2));
  fleet.nodes.push_back(MakeNode("twelve-chars", 3));  // "tc-" + 12 = 15: fits as is
  FleetPlan plan = MustPlan(fleet);
  std::set<std::string> names;
  for (const v1::Tunnel& t : plan.desired["a"]) {
    EXPECT_LE(t.name().size(), kMaxDeviceName) << t.name();
    names.insert(t.name());
  }
  EXPECT_EQ(names.size(), 3u);
  EXPECT_TRUE(names.count("tc-twelve-chars"));
  const Link* l1 = FindLink(plan, "a", "edge-router-frankfurt-1");
  const Link* l2 = FindLink(plan, "a", "edge-router-frankfurt-2");
  ASSERT_NE(l1, nullptr);
  ASSERT_NE(l2, nullptr);
  EXPECT_THAT(l1->a_device, ::testing::MatchesRegex("tc-edge-ro-[0-9a-f]{4}"));
  EXPECT_THAT(l2->a_device, ::testing::MatchesRegex("tc-edge-ro-[0-9a-f]{4}"));
  EXPECT_NE(l1->a_device, l2->a_device);
  // The peer's name decides the device name, not the node's: the same on every node.
  const Link* l3 = FindLink(plan, "twelve-chars", "edge-router-frankfurt-1");
  ASSERT_NE(l3, nullptr);
  EXPECT_EQ(l3->a_device == l1->a_device || l3->b_device == l1->a_device, true);
}

TEST(PlanTest, DeviceNameCollisionsResolvedInPriorityOrder) {
  // Find two long peer names whose first hashed names are the same (a 16-bit hash: a search
  // over a few hundred names finds one), then check that both get distinct names and that the
  // node listed first keeps the plain hashed one.
  std::map<std::string, std::string> first;  // hashed name -> peer
  std::string p1, p2;
  for (int i = 0; i < 5000 && p2.empty(); ++i) {
    const std::string peer = absl::StrCat("collision-peer-", i);
    Fleet f = MeshFleet(0);
    f.nodes.push_back(MakeNode("x", 0));
    f.nodes.push_back(MakeNode(peer, 1));
    const std::string name = MustPlan(f).links[0].b == peer ? MustPlan(f).links[0].a_device
                                                            : MustPlan(f).links[0].b_device;
    auto [it, inserted] = first.emplace(name, peer);
    if (!inserted) {
      p1 = it->second;
      p2 = peer;
    }
  }
  ASSERT_FALSE(p2.empty()) << "no 16-bit collision among 5000 names";
  Fleet f = MeshFleet(0);
  f.nodes.push_back(MakeNode("x", 0));
  f.nodes.push_back(MakeNode(p1, 1));
  FleetPlan alone = MustPlan(f);
  f.nodes.push_back(MakeNode(p2, 2));
  FleetPlan both = MustPlan(f);
  const v1::Tunnel* t1 = nullptr;
  std::set<std::string> names;
  for (const v1::Tunnel& t : both.desired["x"]) {
    names.insert(t.name());
    if (t.labels().at("peer") == p1) t1 = &t;
  }
  EXPECT_EQ(names.size(), 2u);
  ASSERT_NE(t1, nullptr);
  EXPECT_EQ(t1->name(), alone.desired["x"][0].name());  // the earlier node keeps its name
  for (const std::string& n : names) EXPECT_LE(n.size(), kMaxDeviceName);
}

TEST(PlanTest, FixedAndNoKeys) {
  Fleet fleet = MeshFleet(4);
  fleet.defaults.key = KeySetting{KeyPolicy::kFixed, 42};
  FleetPlan plan = MustPlan(fleet);
  for (const Link& l : plan.links) EXPECT_EQ(l.key, 42u);
  fleet.defaults.key = KeySetting{KeyPolicy::kNone, 0};
  plan = MustPlan(fleet);
  for (const auto& [node, tunnels] : plan.desired) {
    for (const v1::Tunnel& t : tunnels) EXPECT_FALSE(t.has_key());
  }
}

TEST(PlanTest, AutoKeysAvoidFixedOnes) {
  Fleet fleet = MeshFleet(3);
  FleetPlan plan = MustPlan(fleet);
  const uint32_t k12 = *FindLink(plan, "node1", "node2")->key;
  // node2-node3 now has node1-node2's auto key as a fixed key: node1-node2 must move.
  LinkSpec o;
  o.a = "node2";
  o.b = "node3";
  o.settings.key = KeySetting{KeyPolicy::kFixed, k12};
  fleet.overrides.push_back(o);
  plan = MustPlan(fleet);
  EXPECT_EQ(FindLink(plan, "node2", "node3")->key, k12);
  EXPECT_NE(FindLink(plan, "node1", "node2")->key, k12);
}

TEST(PlanTest, PoolExhausted) {
  FleetPlan ok = MustPlan(MeshFleet(4, "10.0.0.0/28"));  // 6 links, 8 /31s
  EXPECT_EQ(ok.links.size(), 6u);
  absl::StatusOr<FleetPlan> plan = PlanFleet(MeshFleet(5, "10.0.0.0/28"));  // 10 links
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "fleet.yaml: defaults.innerPool: 10.0.0.0/28 has room for 8 links (a /31 each); the "
            "topology has 10");
  // Exactly full: a /31 pool holds one link.
  FleetPlan one = MustPlan(MeshFleet(2, "10.0.0.0/31"));
  ASSERT_EQ(one.links.size(), 1u);
  EXPECT_EQ(one.links[0].a_address, "10.0.0.0/31");
  EXPECT_EQ(one.links[0].b_address, "10.0.0.1/31");
  EXPECT_FALSE(PlanFleet(MeshFleet(3, "10.0.0.0/31")).ok());
}

TEST(PlanTest, HubSpoke) {
  Fleet fleet = MeshFleet(5);
  fleet.topology = TopologyType::kHubSpoke;
  fleet.hub = "node3";
  FleetPlan plan = MustPlan(fleet);
  EXPECT_EQ(plan.links.size(), 4u);
  EXPECT_EQ(plan.desired["node3"].size(), 4u);
  for (const char* spoke : {"node1", "node2", "node4", "node5"}) {
    ASSERT_EQ(plan.desired[spoke].size(), 1u) << spoke;
    EXPECT_EQ(plan.desired[spoke][0].name(), "tc-node3");
  }
}

TEST(PlanTest, LinksWithSettings) {
  Fleet fleet = MeshFleet(4);
  fleet.topology = TopologyType::kLinks;
  LinkSpec plain;
  plain.a = "node1";
  plain.b = "node2";
  LinkSpec ipip;
  ipip.a = "node4";
  ipip.b = "node3";
  ipip.settings.mode = v1::TUNNEL_MODE_IPIP;
  ipip.settings.mtu = 1400;
  ipip.settings.keepalive = KeepaliveSetting{absl::Milliseconds(1500), 5};
  LinkSpec gre;
  gre.a = "node1";
  gre.b = "node4";
  gre.settings.checksum = true;
  gre.settings.key = KeySetting{KeyPolicy::kNone, 0};
  fleet.links = {plain, ipip, gre};
  FleetPlan plan = MustPlan(fleet);
  EXPECT_EQ(plan.links.size(), 3u);
  EXPECT_EQ(plan.desired["node2"].size(), 1u);
  const v1::Tunnel* t = FindTunnel(plan, "node3", "tc-node4");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_FALSE(t->has_key());  // ipip: key auto does not apply
  EXPECT_EQ(t->mtu(), 1400u);
  EXPECT_EQ(t->keepalive().interval().seconds(), 1);
  EXPECT_EQ(t->keepalive().interval().nanos(), 500'000'000);
  EXPECT_EQ(t->keepalive().retries(), 5u);
  t = FindTunnel(plan, "node4", "tc-node1");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->checksum());
  EXPECT_FALSE(t->has_key());
  t = FindTunnel(plan, "node1", "tc-node2");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->has_key());
  EXPECT_FALSE(t->checksum());
}

TEST(PlanTest, OverridesOnAMesh) {
  Fleet fleet = MeshFleet(3);
  fleet.defaults.mtu = 1450;
  fleet.defaults.checksum = true;
  LinkSpec o;
  o.a = "node3";
  o.b = "node1";
  o.settings.mode = v1::TUNNEL_MODE_IPIP;
  fleet.overrides.push_back(o);
  FleetPlan plan = MustPlan(fleet);
  const v1::Tunnel* t = FindTunnel(plan, "node1", "tc-node3");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(t->mtu(), 1450u);   // from the defaults
  EXPECT_FALSE(t->checksum());  // the default's checksum does not apply to ipip
  t = FindTunnel(plan, "node1", "tc-node2");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->mode(), v1::TUNNEL_MODE_GRE);
  EXPECT_TRUE(t->checksum());
}

TEST(PlanTest, SettingsTheModeCannotHave) {
  Fleet fleet = MeshFleet(3);
  LinkSpec o;
  o.a = "node1";
  o.b = "node2";
  o.field = "topology.overrides[0]";
  o.position = {17, 7};
  o.settings.mode = v1::TUNNEL_MODE_IPIP;
  o.settings.key = KeySetting{KeyPolicy::kFixed, 5};
  fleet.overrides = {o};
  absl::StatusOr<FleetPlan> plan = PlanFleet(fleet);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "fleet.yaml:17:7: topology.overrides[0] (node1 - node2): ipip tunnels have no key");

  fleet.overrides[0].settings.key.reset();
  fleet.overrides[0].settings.checksum = true;
  plan = PlanFleet(fleet);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(plan.status().message(), HasSubstr("ipip tunnels have no checksum"));

  fleet.overrides[0].settings.checksum.reset();
  fleet.overrides[0].settings.mode = v1::TUNNEL_MODE_GRETAP;
  fleet.overrides[0].settings.keepalive = KeepaliveSetting{absl::Seconds(1), 0};
  plan = PlanFleet(fleet);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(plan.status().message(), HasSubstr("gretap tunnels have no keepalive"));

  fleet.overrides[0].settings.keepalive.reset();
  fleet.overrides[0].settings.mode = v1::TUNNEL_MODE_IP6GRE;
  plan = PlanFleet(fleet);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "fleet.yaml:17:7: topology.overrides[0] (node1 - node2): ip6gre needs an IPv6 "
            "underlay; node1's is 198.18.0.1");
}

TEST(PlanTest, OverrideOfAMissingLink) {
  Fleet fleet = MeshFleet(3);
  fleet.topology = TopologyType::kHubSpoke;
  fleet.hub = "node1";
  LinkSpec o;
  o.a = "node2";
  o.b = "node3";
  o.field = "topology.overrides[0]";
  o.position = {20, 7};
  fleet.overrides = {o};
  absl::StatusOr<FleetPlan> plan = PlanFleet(fleet);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "fleet.yaml:20:7: topology.overrides[0]: the topology has no link between node2 and "
            "node3");
}

TEST(PlanTest, NodeWithoutLinksHasAnEmptySet) {
  Fleet fleet = MeshFleet(3);
  fleet.topology = TopologyType::kLinks;
  LinkSpec l;
  l.a = "node1";
  l.b = "node2";
  fleet.links = {l};
  FleetPlan plan = MustPlan(fleet);
  ASSERT_TRUE(plan.desired.count("node3"));
  EXPECT_TRUE(plan.desired["node3"].empty());  // an apply --prune empties it
}

// ---- Multipoint fleets ------------------------------------------------------------------

Fleet MultipointFleet(int nodes) {
  Fleet f = MeshFleet(nodes);
  f.multipoint.enabled = true;
  return f;
}

const MultipointNode& MultipointOf(const FleetPlan& plan, const std::string& node) {
  static const MultipointNode kNone;
  auto it = plan.multipoint.find(node);
  EXPECT_NE(it, plan.multipoint.end()) << node;
  return it == plan.multipoint.end() ? kNone : it->second;
}

const v1::Peer* FindPeer(const FleetPlan& plan, const std::string& node, const std::string& peer) {
  for (const v1::Peer& p : MultipointOf(plan, node).peers) {
    if (p.name() == peer) return &p;
  }
  return nullptr;
}

std::vector<std::string> Strings(const google::protobuf::RepeatedPtrField<std::string>& field) {
  return std::vector<std::string>(field.begin(), field.end());
}

TEST(PlanTest, MultipointMeshOneDeviceAndNMinusOnePeers) {
  Fleet fleet = MultipointFleet(4);
  fleet.nodes[0].prefixes = {"10.244.1.0/24"};
  fleet.nodes[1].prefixes = {"10.244.2.0/24", "fd00:2::/64"};
  FleetPlan plan = MustPlan(fleet);
  EXPECT_TRUE(plan.links.empty());
  EXPECT_EQ(plan.multipoint_device, "tnl0");
  EXPECT_EQ(TotalPeers(plan), 12u);

  std::set<std::string> addresses;
  std::set<uint32_t> keys;
  for (const Node& n : fleet.nodes) {
    SCOPED_TRACE(n.name);
    ASSERT_EQ(plan.desired[n.name].size(), 1u);
    const v1::Tunnel& t = plan.desired[n.name][0];
    EXPECT_EQ(t.name(), "tnl0");
    EXPECT_TRUE(t.multipoint());
    EXPECT_EQ(t.mode(), v1::TUNNEL_MODE_GRE);
    EXPECT_EQ(t.local(), n.underlay);
    EXPECT_EQ(t.remote(), "");
    EXPECT_FALSE(t.has_keepalive());
    EXPECT_TRUE(t.labels().empty());  // ApplyTunnels adds the owner
    ASSERT_TRUE(t.has_key());
    keys.insert(t.key());
    const MultipointNode& mp = MultipointOf(plan, n.name);
    ASSERT_EQ(t.addresses_size(), 1);
    EXPECT_EQ(t.addresses(0), mp.address);
    EXPECT_EQ(mp.address.substr(0, 7), "100.64.");
    EXPECT_EQ(mp.address.substr(mp.address.size() - 3), "/32");
    addresses.insert(mp.address);
    // The pool, then every other node's prefixes (never the node's own).
    std::vector<std::string> routes = {"100.64.0.0/16"};
    for (const Node& other : fleet.nodes) {
      if (other.name != n.name)
        routes.insert(routes.end(), other.prefixes.begin(), other.prefixes.end());
    }
    EXPECT_EQ(Strings(t.routes()), routes);

    ASSERT_EQ(mp.peers.size(), 3u);
    std::vector<std::string> names;
    for (const v1::Peer& p : mp.peers) {
      names.push_back(p.name());
      const Node* other = nullptr;
      for (const Node& o : fleet.nodes) {
        if (o.name == p.name()) other = &o;
      }
      ASSERT_NE(other, nullptr);
      EXPECT_NE(other->name, n.name);
      EXPECT_EQ(p.underlay(), other->underlay);
      EXPECT_FALSE(p.has_key());  // the device's key, the same everywhere
      EXPECT_TRUE(p.labels().empty());
      std::vector<std::string> allowed = {MultipointOf(plan, other->name).address};
      allowed.insert(allowed.end(), other->prefixes.begin(), other->prefixes.end());
      EXPECT_EQ(Strings(p.allowed_prefixes()), allowed);
    }
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  }
  EXPECT_EQ(addresses.size(), 4u);
  EXPECT_EQ(keys.size(), 1u);  // what one node sends, every other accepts
  EXPECT_THAT(
      Strings(FindPeer(plan, "node3", "node2")->allowed_prefixes()),
      ::testing::ElementsAre(MultipointOf(plan, "node2").address, "10.244.2.0/24", "fd00:2::/64"));
}

TEST(PlanTest, MultipointAddressesStableAsNodesJoin) {
  FleetPlan small = MustPlan(MultipointFleet(50));
  FleetPlan big = MustPlan(MultipointFleet(100));
  EXPECT_EQ(TotalPeers(big), 9900u);
  std::set<std::string> addresses;
  for (const auto& [node, mp] : big.multipoint) {
    EXPECT_TRUE(addresses.insert(mp.address).second) << mp.address;
    EXPECT_EQ(mp.peers.size(), 99u);
    EXPECT_NE(mp.address, "100.64.0.0/32");  // the pool's network address is never given
    EXPECT_NE(mp.address, "100.64.255.255/32");
  }
  for (const auto& [node, mp] : small.multipoint) {
    EXPECT_EQ(mp.address, MultipointOf(big, node).address) << node;
    // A node joining adds one peer elsewhere and changes none of the others.
    for (const v1::Peer& p : mp.peers) {
      const v1::Peer* q = FindPeer(big, node, p.name());
      ASSERT_NE(q, nullptr);
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(p, *q))
          << node << " " << p.name();
    }
  }
  FleetPlan again = MustPlan(MultipointFleet(100));
  for (const auto& [node, tunnels] : big.desired) {
    EXPECT_TRUE(
        google::protobuf::util::MessageDifferencer::Equals(tunnels[0], again.desired[node][0]));
  }
}

TEST(PlanTest, MultipointGoldenValues) {
  // As for links: a change here renumbers every multipoint fleet (values checked against an
  // independent Python version of the scheme).
  FleetPlan plan = MustPlan(MultipointFleet(2));
  EXPECT_EQ(MultipointOf(plan, "node1").address, "100.64.223.106/32");
  EXPECT_EQ(plan.desired["node1"][0].key(), 3426297556u);
}

TEST(PlanTest, MultipointHubSpoke) {
  Fleet fleet = MultipointFleet(4);
  fleet.topology = TopologyType::kHubSpoke;
  fleet.hub = "node2";
  fleet.nodes[0].prefixes = {"10.244.1.0/24"};
  fleet.nodes[1].prefixes = {"10.244.2.0/24"};
  fleet.nodes[3].prefixes = {"10.244.4.0/24"};
  FleetPlan plan = MustPlan(fleet);
  EXPECT_EQ(TotalPeers(plan), 6u);
  const MultipointNode& hub = MultipointOf(plan, "node2");
  ASSERT_EQ(hub.peers.size(), 3u);
  EXPECT_THAT(Strings(FindPeer(plan, "node2", "node4")->allowed_prefixes()),
              ::testing::ElementsAre(MultipointOf(plan, "node4").address, "10.244.4.0/24"));
  // A spoke: the hub alone, allowing the whole pool and everything behind the other nodes.
  const MultipointNode& spoke = MultipointOf(plan, "node1");
  ASSERT_EQ(spoke.peers.size(), 1u);
  EXPECT_EQ(spoke.peers[0].name(), "node2");
  EXPECT_EQ(spoke.peers[0].underlay(), "198.18.0.2");
  EXPECT_THAT(Strings(spoke.peers[0].allowed_prefixes()),
              ::testing::ElementsAre("100.64.0.0/16", "10.244.2.0/24", "10.244.4.0/24"));
  EXPECT_THAT(Strings(plan.desired["node1"][0].routes()),
              ::testing::ElementsAre("100.64.0.0/16", "10.244.2.0/24", "10.244.4.0/24"));
  EXPECT_EQ(MultipointOf(plan, "node3").peers.size(), 1u);
}

TEST(PlanTest, MultipointSettings) {
  Fleet fleet = MultipointFleet(3);
  fleet.multipoint.device = "mesh0";
  fleet.defaults.key = KeySetting{KeyPolicy::kFixed, 77};
  fleet.defaults.mtu = 1400;
  fleet.defaults.checksum = true;
  fleet.defaults.keepalive = KeepaliveSetting{absl::Milliseconds(500), 4};
  FleetPlan plan = MustPlan(fleet);
  const v1::Tunnel& t = plan.desired["node2"][0];
  EXPECT_EQ(t.name(), "mesh0");
  EXPECT_EQ(t.key(), 77u);
  EXPECT_EQ(t.mtu(), 1400u);
  EXPECT_TRUE(t.checksum());
  EXPECT_FALSE(t.has_keepalive());  // a multipoint device has none of its own: each peer has
  const v1::Peer& p = MultipointOf(plan, "node2").peers[0];
  EXPECT_EQ(p.keepalive().interval().nanos(), 500'000'000);
  EXPECT_EQ(p.keepalive().retries(), 4u);

  fleet.defaults.key = KeySetting{KeyPolicy::kNone, 0};
  EXPECT_FALSE(MustPlan(fleet).desired["node1"][0].has_key());
  fleet.defaults.key = KeySetting{KeyPolicy::kAuto, 0};
  fleet.defaults.mode = v1::TUNNEL_MODE_IPIP;  // no key, no checksum: left out from defaults
  const v1::Tunnel& ipip = MustPlan(fleet).desired["node1"][0];
  EXPECT_FALSE(ipip.has_key());
  EXPECT_FALSE(ipip.checksum());
}

TEST(PlanTest, MultipointErrors) {
  Fleet small = MultipointFleet(3);
  small.inner_pool = {0x64400000, 31, "100.64.0.0/31"};
  EXPECT_EQ(PlanFleet(small).status().message(),
            "fleet.yaml: defaults.innerPool: 100.64.0.0/31 has room for 2 nodes (an address each); "
            "the file has 3");
  small.inner_pool = {0x64400000, 30, "100.64.0.0/30"};
  EXPECT_FALSE(PlanFleet(small).ok());  // 2 host addresses
  small.nodes.pop_back();
  EXPECT_TRUE(PlanFleet(small).ok());

  Fleet v6 = MultipointFleet(2);
  v6.defaults.mode = v1::TUNNEL_MODE_IP6GRE;
  v6.nodes[0].position = {7, 5};
  EXPECT_EQ(PlanFleet(v6).status().message(),
            "fleet.yaml:7:5: nodes[0] (node1): ip6gre needs an IPv6 underlay; node1's is "
            "198.18.0.1");
}

}  // namespace
}  // namespace tunnelagent::controller
