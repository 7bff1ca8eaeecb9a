// A fleet kept in etcd, without etcd: the description (nodes optional), registrations read
// from their JSON, the grace bookkeeping, and the Fleet made of the description and the
// registered nodes, as the plan takes it.
#include "clients/tunnel_controller/etcd_members.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/tunnel_controller/fleet_store.h"
#include "clients/tunnel_controller/plan.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kMultipoint[] = R"(defaults:
  mode: gre
  innerPool: 100.64.0.0/16
  multipoint: true
  tokenFile: /etc/fleet/token
topology:
  type: mesh
)";

constexpr char kPinned[] = R"(defaults: {mode: gre, innerPool: 100.64.0.0/16, multipoint: true}
nodes:
  - {name: hub, agent: "198.18.9.1:50051", underlay: 198.18.9.1, prefixes: [10.9.0.0/16]}
topology: {type: hub-spoke, hub: hub}
)";

Fleet MustParseDescription(const std::string& text) {
  absl::StatusOr<Fleet> fleet = ParseDescription(text, "/tunnel-agent/f/description");
  EXPECT_TRUE(fleet.ok()) << fleet.status();
  return fleet.ok() ? *fleet : Fleet();
}

// A registration as an agent writes it.
Registration Reg(const std::string& node, int64_t revision, std::vector<std::string> underlay,
                 std::vector<std::string> prefixes = {}) {
  Registration r;
  r.node = node;
  r.create_revision = revision;
  r.mod_revision = revision;
  r.message.set_node(node);
  for (const std::string& u : underlay) r.message.add_underlay(u);
  for (const std::string& p : prefixes) r.message.add_advertise_prefixes(p);
  r.message.set_agent_endpoint(absl::StrCat("unix:/run/", node, ".sock"));
  r.message.set_version("0.1.0");
  return r;
}

std::vector<Member> Members(std::vector<Registration> registrations) {
  Membership m(absl::Seconds(30));
  for (const Registration& r : registrations) m.Registered(r);
  return m.Members();
}

std::vector<std::string> Names(const Fleet& fleet) {
  std::vector<std::string> names;
  for (const Node& n : fleet.nodes) names.push_back(n.name);
  return names;
}

// ---- The description ---------------------------------------------------------------------------

TEST(DescriptionTest, NodesAreOptional) {
  EXPECT_THAT(MustParseDescription(kMultipoint).nodes, IsEmpty());
  EXPECT_THAT(MustParseDescription(absl::StrCat(kMultipoint, "nodes:\n")).nodes, IsEmpty());
  EXPECT_THAT(MustParseDescription(absl::StrCat(kMultipoint, "nodes: []\n")).nodes, IsEmpty());
  // A fleet file still needs them.
  absl::StatusOr<Fleet> file = ParseFleet(kMultipoint, "fleet.yaml");
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("nodes: required"));
}

TEST(DescriptionTest, TopologyMayNameNodesThatRegister) {
  Fleet hub = MustParseDescription(R"(defaults: {innerPool: 100.64.0.0/16}
topology: {type: hub-spoke, hub: h1, overrides: [{nodes: [h1, s1], mtu: 1400}]}
)");
  EXPECT_EQ(hub.hub, "h1");
  Fleet links = MustParseDescription(R"(defaults: {innerPool: 100.64.0.0/16}
topology: {type: links, links: [[a, b], {nodes: [b, c], mode: ipip}]}
)");
  ASSERT_EQ(links.links.size(), 2u);
  // In a file they must be its nodes.
  absl::StatusOr<Fleet> file = ParseFleet(R"(defaults: {innerPool: 100.64.0.0/16}
nodes: [{name: a, agent: "unix:/a", underlay: 198.18.0.1}]
topology: {type: hub-spoke, hub: h1}
)",
                                          "fleet.yaml");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().message(), "fleet.yaml:3:34: topology.hub: no node named \"h1\"");
}

TEST(DescriptionTest, MalformedIsRefusedWithLineAndColumn) {
  struct Case {
    const char* text;
    const char* error;
  } cases[] = {
      {"defaults: {innerPool: 100.64.0.0/16}\ntopology: {type: mush}\n",
       "/tunnel-agent/f/description:2:18: topology.type: \"mush\" is not mesh, hub-spoke or links"},
      {"defaults: {innerPool: 100.64.0.0/16}\nnodes: {a: 1}\ntopology: {type: mesh}\n",
       "/tunnel-agent/f/description:2:8: nodes: must be a list (or left out)"},
      {"defaults: {innerPool: 100.64.0.0/16}\ntopology: {type: hub-spoke, hub: \"no/slash\"}\n",
       "/tunnel-agent/f/description:2:34: topology.hub: \"no/slash\" may hold only letters, "
       "digits, '.', '_' and '-'"},
      {"defaults: {innerPool: 100.64.0.0/16\n", "/tunnel-agent/f/description:2:1: bad YAML: "},
      {"", "/tunnel-agent/f/description: empty file"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Fleet> fleet = ParseDescription(c.text, "/tunnel-agent/f/description");
    ASSERT_FALSE(fleet.ok()) << c.text;
    EXPECT_EQ(fleet.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(fleet.status().message()), HasSubstr(c.error)) << c.text;
  }
}

// ---- Registrations and keys ------------------------------------------------------------------

TEST(RegistrationTest, ReadFromProtobufJson) {
  absl::StatusOr<Registration> r =
      ParseRegistration("n1",
                        R"({"node": "n1", "underlay": ["198.18.0.1", "2001:2::1"],
          "advertisePrefixes": ["10.244.1.0/24"], "agentEndpoint": "198.18.0.1:50051",
          "version": "0.1.0", "capabilities": {"modes": ["gre"], "features": ["multipoint"]},
          "registeredAt": "2024-05-01T12:00:00Z", "fieldOfANewerAgent": 7})",
                        12, 14);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->node, "n1");
  EXPECT_EQ(r->create_revision, 12);
  EXPECT_EQ(r->mod_revision, 14);
  EXPECT_THAT(r->message.underlay(), ElementsAre("198.18.0.1", "2001:2::1"));
  EXPECT_THAT(r->message.advertise_prefixes(), ElementsAre("10.244.1.0/24"));
  EXPECT_EQ(r->message.agent_endpoint(), "198.18.0.1:50051");
  EXPECT_EQ(r->message.registered_at().seconds(), 1714564800);
}

TEST(RegistrationTest, RefusedWhenNotARegistrationOfTheKey) {
  absl::StatusOr<Registration> r = ParseRegistration("n1", "not json", 1, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("not a NodeRegistration in JSON"));
  r = ParseRegistration("n1", R"({"node": "n2"})", 1, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "the key names node \"n1\" but the registration \"n2\"");
  r = ParseRegistration("n1", R"({"node": "n1", "underlay": {"a": 1}})", 1, 1);
  EXPECT_FALSE(r.ok()) << "underlay is a list of strings";
}

TEST(FleetKeyTest, Layout) {
  EXPECT_EQ(FleetPrefix("prod"), "/tunnel-agent/prod/");
  EXPECT_EQ(DescriptionKey("prod"), "/tunnel-agent/prod/description");
  EXPECT_EQ(NodeKey("prod", "n1"), "/tunnel-agent/prod/nodes/n1");
  EXPECT_EQ(ElectionName("prod"), "/tunnel-agent/prod/controller");
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/prod/description").kind,
            FleetKey::Kind::kDescription);
  FleetKey node = ClassifyKey("prod", "/tunnel-agent/prod/nodes/n1");
  EXPECT_EQ(node.kind, FleetKey::Kind::kNode);
  EXPECT_EQ(node.node, "n1");
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/prod/controller/694d7a1b2c").kind,
            FleetKey::Kind::kElection);
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/prod/nodes/").kind, FleetKey::Kind::kOther);
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/prod/nodes/n1/x").kind, FleetKey::Kind::kOther);
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/production/description").kind,
            FleetKey::Kind::kOther);
  EXPECT_EQ(ClassifyKey("prod", "/tunnel-agent/prod/descriptions").kind, FleetKey::Kind::kOther);
}

TEST(FleetKeyTest, FleetNames) {
  EXPECT_TRUE(fleet::ValidateFleetName("prod-1.eu_west").ok());
  EXPECT_FALSE(fleet::ValidateFleetName("").ok());
  EXPECT_FALSE(fleet::ValidateFleetName("a/b").ok());
  EXPECT_FALSE(fleet::ValidateFleetName("Prod").ok()) << "as the agent: lower case";
  EXPECT_FALSE(fleet::ValidateFleetName("..").ok());
  EXPECT_FALSE(fleet::ValidateFleetName(std::string(64, 'a')).ok());
}

// ---- Grace
// ---------------------------------------------------------------------------------------

TEST(MembershipTest, JoinsAtOnceLeavesAfterTheGrace) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  Membership m(absl::Seconds(30));
  EXPECT_TRUE(m.Registered(Reg("n1", 5, {"198.18.0.1"})));
  EXPECT_TRUE(m.Registered(Reg("n2", 6, {"198.18.0.2"})));
  EXPECT_FALSE(m.Registered(Reg("n2", 6, {"198.18.0.2"}))) << "written again: no join";
  EXPECT_EQ(m.RegisteredCount(), 2);
  EXPECT_EQ(m.NextExpiry(), absl::InfiniteFuture());

  EXPECT_TRUE(m.Unregistered("n1", t0));
  EXPECT_FALSE(m.Unregistered("n1", t0 + absl::Seconds(5))) << "already leaving";
  EXPECT_FALSE(m.Unregistered("nobody", t0));
  EXPECT_EQ(m.RegisteredCount(), 1);
  EXPECT_EQ(m.NextExpiry(), t0 + absl::Seconds(30)) << "the grace runs from the first deletion";
  std::vector<Member> members = m.Members();
  ASSERT_EQ(members.size(), 2u);
  EXPECT_TRUE(members[0].leaving);
  EXPECT_EQ(members[0].leaving_since, t0);

  EXPECT_THAT(m.Expire(t0 + absl::Seconds(30) - absl::Milliseconds(1)), IsEmpty());
  EXPECT_EQ(m.Members().size(), 2u) << "a member until the grace is over";
  EXPECT_THAT(m.Expire(t0 + absl::Seconds(30)), ElementsAre("n1"));
  ASSERT_EQ(m.Members().size(), 1u);
  EXPECT_EQ(m.Members()[0].registration.node, "n2");
  EXPECT_EQ(m.NextExpiry(), absl::InfiniteFuture());
}

TEST(MembershipTest, RegisteringAgainWithinTheGraceKeepsTheMember) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  Membership m(absl::Seconds(30));
  m.Registered(Reg("n1", 5, {"198.18.0.1"}));
  m.Unregistered("n1", t0);
  // The agent restarted: a new lease, a new key (a later create revision).
  EXPECT_TRUE(m.Registered(Reg("n1", 9, {"198.18.0.1"})));
  EXPECT_THAT(m.Expire(t0 + absl::Hours(1)), IsEmpty());
  ASSERT_EQ(m.Members().size(), 1u);
  EXPECT_FALSE(m.Members()[0].leaving);
  EXPECT_EQ(m.Members()[0].registration.create_revision, 9);
}

TEST(MembershipTest, ZeroGraceRemovesAtTheNextExpire) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  Membership m(absl::ZeroDuration());
  m.Registered(Reg("n1", 5, {"198.18.0.1"}));
  m.Unregistered("n1", t0);
  EXPECT_EQ(m.NextExpiry(), t0);
  EXPECT_THAT(m.Expire(t0), ElementsAre("n1"));
}

TEST(MembershipTest, AListStartsTheGraceOfTheMissingOnly) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  Membership m(absl::Seconds(30));
  m.Registered(Reg("n1", 5, {"198.18.0.1"}));
  m.Registered(Reg("n2", 6, {"198.18.0.2"}));
  m.Registered(Reg("n3", 7, {"198.18.0.3"}));
  m.Unregistered("n3", t0);
  // Listed again 10 s later (after the watch ended): n1 is gone, n2's value is unreadable
  // now (kept as it was), n3 is still gone (its grace keeps running from t0), n4 is new.
  m.Reset({Reg("n4", 11, {"198.18.0.4"})}, {"n2"}, t0 + absl::Seconds(10));
  std::vector<Member> members = m.Members();
  ASSERT_EQ(members.size(), 4u);
  EXPECT_EQ(members[0].registration.node, "n1");
  EXPECT_TRUE(members[0].leaving);
  EXPECT_EQ(members[0].leaving_since, t0 + absl::Seconds(10));
  EXPECT_EQ(members[1].registration.node, "n2");
  EXPECT_FALSE(members[1].leaving);
  EXPECT_EQ(members[2].registration.node, "n3");
  EXPECT_EQ(members[2].leaving_since, t0);
  EXPECT_EQ(members[3].registration.node, "n4");
  EXPECT_EQ(m.RegisteredCount(), 2);
  EXPECT_THAT(m.Expire(t0 + absl::Seconds(30)), ElementsAre("n3"));
  EXPECT_THAT(m.Expire(t0 + absl::Seconds(40)), ElementsAre("n1"));
}

TEST(MembershipTest, OrderIsThatOfRegistration) {
  std::vector<Member> members = Members(
      {Reg("zz", 3, {"198.18.0.1"}), Reg("aa", 8, {"198.18.0.2"}), Reg("mm", 3, {"198.18.0.3"})});
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].registration.node, "mm");  // same revision: by name
  EXPECT_EQ(members[1].registration.node, "zz");
  EXPECT_EQ(members[2].registration.node, "aa");
}

// ---- The fleet: description and registrations merged -------------------------------------------

TEST(BuildFleetTest, RegisteredNodesAreTheMembers) {
  const Fleet description = MustParseDescription(kMultipoint);
  MergedFleet merged = BuildFleet(
      description, Members({Reg("n2", 7, {"198.18.0.2"}, {"10.244.2.0/24"}),
                            Reg("n1", 5, {"2001:2::1", "198.18.0.1"}, {"10.244.1.0/24"})}));
  EXPECT_THAT(merged.refused, IsEmpty());
  EXPECT_THAT(Names(merged.fleet), ElementsAre("n1", "n2"));
  const Node& n1 = merged.fleet.nodes[0];
  EXPECT_EQ(n1.agent, "unix:/run/n1.sock");
  EXPECT_EQ(n1.underlay, "198.18.0.1") << "the first address of the mode's family";
  EXPECT_FALSE(n1.underlay_v6);
  EXPECT_THAT(n1.prefixes, ElementsAre("10.244.1.0/24"));
  EXPECT_EQ(n1.token_file, "/etc/fleet/token") << "the description's defaults reach the agent";
  EXPECT_TRUE(merged.pinned.empty());

  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->multipoint.at("n1").peers.size(), 1u);
  const v1::Peer& peer = plan->multipoint.at("n1").peers[0];
  EXPECT_EQ(peer.name(), "n2");
  EXPECT_EQ(peer.underlay(), "198.18.0.2");
  EXPECT_THAT(peer.allowed_prefixes(), ::testing::Contains("10.244.2.0/24"));
}

TEST(BuildFleetTest, ANodeJoiningMovesNobody) {
  const Fleet description = MustParseDescription(kMultipoint);
  std::vector<Registration> regs;
  for (int i = 1; i <= 20; ++i) {
    regs.push_back(Reg(absl::StrCat("n", i), 100 + i, {absl::StrCat("198.18.0.", i)}));
  }
  absl::StatusOr<FleetPlan> before = PlanFleet(BuildFleet(description, Members(regs)).fleet);
  regs.push_back(Reg("a-newcomer", 500, {"198.18.1.1"}));
  absl::StatusOr<FleetPlan> after = PlanFleet(BuildFleet(description, Members(regs)).fleet);
  ASSERT_TRUE(before.ok() && after.ok());
  for (const auto& [node, mp] : before->multipoint) {
    EXPECT_EQ(after->multipoint.at(node).address, mp.address) << node;
  }
}

TEST(BuildFleetTest, PinnedNodesComeFirstAndWinOverTheirRegistration) {
  const Fleet description = MustParseDescription(kPinned);
  MergedFleet merged = BuildFleet(
      description, Members({Reg("s1", 5, {"198.18.0.1"}),
                            // The hub registered too, with other addresses: the description's win.
                            Reg("hub", 6, {"198.18.7.7"}, {"10.7.0.0/16"})}));
  EXPECT_THAT(merged.refused, IsEmpty());
  EXPECT_THAT(Names(merged.fleet), ElementsAre("hub", "s1"));
  EXPECT_EQ(merged.fleet.nodes[0].underlay, "198.18.9.1");
  EXPECT_EQ(merged.fleet.nodes[0].agent, "198.18.9.1:50051");
  EXPECT_THAT(merged.fleet.nodes[0].prefixes, ElementsAre("10.9.0.0/16"));
  EXPECT_THAT(merged.pinned, ElementsAre("hub"));

  // Pinned and not registered: a member all the same.
  merged = BuildFleet(description, {});
  EXPECT_THAT(Names(merged.fleet), ElementsAre("hub"));
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->multipoint.at("hub").peers.empty());
}

TEST(BuildFleetTest, ABadRegistrationIsRefusedAndTheOthersStay) {
  const Fleet description = MustParseDescription(kPinned);
  Registration no_agent = Reg("bad-agent", 7, {"198.18.0.7"});
  no_agent.message.clear_agent_endpoint();
  MergedFleet merged =
      BuildFleet(description,
                 Members({Reg("ok1", 1, {"198.18.0.1"}, {"10.244.1.0/24"}),
                          Reg("v6only", 2, {"2001:2::5"}), Reg("same-underlay", 3, {"198.18.9.1"}),
                          Reg("in-the-pool", 4, {"198.18.0.4"}, {"100.64.1.0/24"}),
                          Reg("hostbits", 5, {"198.18.0.5"}, {"10.244.5.1/24"}),
                          Reg("taken", 6, {"198.18.0.6"}, {"10.244.1.0/24"}), no_agent,
                          Reg("ok2", 8, {"198.18.0.8"}, {"10.244.8.0/24"})}));
  EXPECT_THAT(Names(merged.fleet), ElementsAre("hub", "ok1", "ok2"));
  EXPECT_THAT(merged.refused,
              ElementsAre(HasSubstr("v6only: underlay: no IPv4 address for gre tunnels "
                                    "(registered: 2001:2::5)"),
                          HasSubstr("same-underlay: underlay: 198.18.9.1 is already the underlay "
                                    "of hub"),
                          HasSubstr("in-the-pool: prefixes: 100.64.1.0/24 overlaps "
                                    "defaults.innerPool"),
                          HasSubstr("hostbits: prefixes: \"10.244.5.1/24\" has host bits set"),
                          HasSubstr("taken: prefixes: 10.244.1.0/24 is already advertised by ok1"),
                          HasSubstr("bad-agent: agent: none given")));
}

TEST(BuildFleetTest, CapabilitiesTheFleetNeeds) {
  const Fleet description = MustParseDescription(kMultipoint);
  Registration no_gre = Reg("no-gre", 1, {"198.18.0.1"});
  no_gre.message.mutable_capabilities()->add_modes("ipip");
  Registration no_multipoint = Reg("no-mp", 2, {"198.18.0.2"});
  no_multipoint.message.mutable_capabilities()->add_modes("gre");
  no_multipoint.message.mutable_capabilities()->add_features("fou");
  Registration able = Reg("able", 3, {"198.18.0.3"});
  able.message.mutable_capabilities()->add_modes("gre");
  able.message.mutable_capabilities()->add_features("multipoint");
  MergedFleet merged = BuildFleet(description, Members({no_gre, no_multipoint, able}));
  EXPECT_THAT(Names(merged.fleet), ElementsAre("able"));
  EXPECT_THAT(merged.refused,
              ElementsAre("no-gre: the agent has no gre tunnels (it has ipip)",
                          "no-mp: the agent has no multipoint tunnels (feature multipoint)"));
}

TEST(BuildFleetTest, PointToPointIgnoresPrefixesAndPicksTheModesFamily) {
  const Fleet description = MustParseDescription(
      "defaults: {mode: ip6gre, innerPool: 100.64.0.0/16}\ntopology: {type: mesh}\n");
  MergedFleet merged =
      BuildFleet(description, Members({Reg("a", 1, {"198.18.0.1", "2001:2::1"}, {"10.1.0.0/16"}),
                                       Reg("b", 2, {"2001:2::2"})}));
  EXPECT_THAT(merged.refused, IsEmpty());
  ASSERT_EQ(merged.fleet.nodes.size(), 2u);
  EXPECT_EQ(merged.fleet.nodes[0].underlay, "2001:2::1");
  EXPECT_TRUE(merged.fleet.nodes[0].underlay_v6);
  EXPECT_THAT(merged.fleet.nodes[0].prefixes, IsEmpty());
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->links.size(), 1u);
}

TEST(BuildFleetTest, LinksWaitForBothEnds) {
  const Fleet description = MustParseDescription(R"(defaults: {innerPool: 100.64.0.0/16}
topology: {type: links, links: [[a, b], {nodes: [b, c], mode: ipip}]}
)");
  MergedFleet merged =
      BuildFleet(description, Members({Reg("a", 1, {"198.18.0.1"}), Reg("b", 2, {"198.18.0.2"})}));
  ASSERT_EQ(merged.fleet.links.size(), 1u) << "b-c waits for c";
  EXPECT_EQ(merged.fleet.links[0].b, "b");
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->links.size(), 1u);
}

TEST(BuildFleetTest, HubSpokeWithoutItsHub) {
  // Point to point: no links at all until the hub registers.
  Fleet description = MustParseDescription(R"(defaults: {innerPool: 100.64.0.0/16}
topology: {type: hub-spoke, hub: h, overrides: [{nodes: [h, s1], mtu: 1400}]}
)");
  MergedFleet merged = BuildFleet(
      description, Members({Reg("s1", 1, {"198.18.0.1"}), Reg("s2", 2, {"198.18.0.2"})}));
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->links.empty());
  EXPECT_TRUE(plan->desired.at("s1").empty());
  // The hub registers: a link to each spoke, with the override.
  merged =
      BuildFleet(description, Members({Reg("s1", 1, {"198.18.0.1"}), Reg("s2", 2, {"198.18.0.2"}),
                                       Reg("h", 3, {"198.18.0.3"})}));
  plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->links.size(), 2u);
  EXPECT_EQ(plan->links[0].mtu, 1400u);

  // Multipoint: the spokes' devices, without peers.
  description = MustParseDescription(
      "defaults: {innerPool: 100.64.0.0/16, multipoint: true}\n"
      "topology: {type: hub-spoke, hub: h}\n");
  merged = BuildFleet(description,
                      Members({Reg("s1", 1, {"198.18.0.1"}), Reg("s2", 2, {"198.18.0.2"})}));
  plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->multipoint.at("s1").peers.empty());
  EXPECT_EQ(plan->desired.at("s1").size(), 1u);
}

TEST(BuildFleetTest, LeavingMembersStayPeers) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const Fleet description = MustParseDescription(kMultipoint);
  Membership m(absl::Seconds(30));
  m.Registered(Reg("n1", 1, {"198.18.0.1"}));
  m.Registered(Reg("n2", 2, {"198.18.0.2"}));
  m.Registered(Reg("n3", 3, {"198.18.0.3"}));
  m.Unregistered("n2", t0);
  MergedFleet merged = BuildFleet(description, m.Members());
  EXPECT_THAT(Names(merged.fleet), ElementsAre("n1", "n2", "n3"));
  EXPECT_THAT(merged.leaving, ElementsAre("n2"));
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->multipoint.at("n1").peers.size(), 2u) << "n2 is still n1's peer";
  m.Expire(t0 + absl::Seconds(30));
  merged = BuildFleet(description, m.Members());
  EXPECT_THAT(Names(merged.fleet), ElementsAre("n1", "n3"));
  plan = PlanFleet(merged.fleet);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->multipoint.at("n1").peers.size(), 1u);
  EXPECT_EQ(plan->multipoint.at("n1").peers[0].name(), "n3");
}

// ---- AddNode, as the file checks its nodes
// --------------------------------------------------------

TEST(AddNodeTest, ChecksAsTheFileDoes) {
  Fleet fleet = MustParseDescription(kPinned);
  auto node = [](std::string name, std::string agent, std::string underlay,
                 std::vector<std::string> prefixes = {}) {
    Node n;
    n.name = std::move(name);
    n.agent = std::move(agent);
    n.underlay = std::move(underlay);
    n.prefixes = std::move(prefixes);
    return n;
  };
  EXPECT_EQ(AddNode(node("hub", "unix:/x", "198.18.0.1"), &fleet).message(),
            "\"hub\" is already a node");
  EXPECT_EQ(AddNode(node("-x", "unix:/x", "198.18.0.1"), &fleet).message(),
            "\"-x\" must start with a letter or digit");
  EXPECT_EQ(AddNode(node("x", "nowhere", "198.18.0.1"), &fleet).message(),
            "agent: \"nowhere\" is not unix:/path or host:port");
  EXPECT_EQ(AddNode(node("x", "unix:/x", "198.18.0.300"), &fleet).message(),
            "underlay: \"198.18.0.300\" is not an IP address");
  EXPECT_EQ(AddNode(node("x", "unix:/x", "198.18.0.1", {"fd00::/64"}), &fleet).code(),
            absl::StatusCode::kOk);
  EXPECT_EQ(fleet.nodes.size(), 2u);
  EXPECT_EQ(
      AddNode(node("y", "unix:/y", "198.18.0.2", {"10.1.0.0/16", "10.1.0.0/16"}), &fleet).message(),
      "prefixes: 10.1.0.0/16 is already given");
  EXPECT_EQ(fleet.nodes.size(), 2u) << "unchanged after an error";
  Fleet p2p =
      MustParseDescription("defaults: {innerPool: 100.64.0.0/16}\ntopology: {type: mesh}\n");
  EXPECT_THAT(AddNode(node("x", "unix:/x", "198.18.0.1", {"10.1.0.0/16"}), &p2p).message(),
              HasSubstr("only for a multipoint fleet"));
}

}  // namespace
}  // namespace tunnelagent::controller
