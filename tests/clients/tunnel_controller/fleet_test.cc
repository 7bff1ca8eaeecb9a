// The fleet file: a good file in every form, and every kind of bad input named by line,
// column and field.
#include "clients/tunnel_controller/fleet.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::controller {
namespace {

using ::testing::HasSubstr;

constexpr char kGood[] = R"(defaults:
  mode: gre            # any tunnel mode
  key: auto            # auto = a distinct key per link; or a number; or none
  innerPool: 100.64.0.0/16   # a /31 per link, carved stably from this pool
nodes:
  - name: node1
    agent: unix:/run/tunnel-agent/node1.sock   # or host:port
    underlay: 198.18.1.1
  - name: node2
    agent: 198.18.1.2:50051
    underlay: 198.18.1.2
    tls: {ca: ca.pem, cert: /etc/c.pem, key: c.key, serverName: agent2}
    tokenFile: token2
topology:
  type: mesh           # mesh | hub-spoke | links
)";

Fleet MustParse(const std::string& text) {
  absl::StatusOr<Fleet> fleet = ParseFleet(text, "fleet.yaml", "/etc/fleet");
  EXPECT_TRUE(fleet.ok()) << fleet.status();
  return fleet.ok() ? *fleet : Fleet();
}

std::string ErrorOf(const std::string& text) {
  absl::StatusOr<Fleet> fleet = ParseFleet(text, "fleet.yaml");
  EXPECT_FALSE(fleet.ok()) << text;
  if (fleet.ok()) return "";
  EXPECT_EQ(fleet.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(fleet.status().message());
}

// kGood with `from` replaced by `to` (which must be there).
std::string Edit(const std::string& from, const std::string& to) {
  std::string text = kGood;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(FleetTest, GoodFile) {
  Fleet fleet = MustParse(kGood);
  EXPECT_EQ(fleet.source, "fleet.yaml");
  EXPECT_EQ(fleet.defaults.mode, v1::TUNNEL_MODE_GRE);
  EXPECT_EQ(fleet.defaults.key->policy, KeyPolicy::kAuto);
  EXPECT_FALSE(fleet.defaults.mtu.has_value());
  EXPECT_EQ(fleet.inner_pool.network, 0x64400000u);
  EXPECT_EQ(fleet.inner_pool.length, 16);
  ASSERT_EQ(fleet.nodes.size(), 2u);
  EXPECT_EQ(fleet.nodes[0].name, "node1");
  EXPECT_EQ(fleet.nodes[0].agent, "unix:/run/tunnel-agent/node1.sock");
  EXPECT_EQ(fleet.nodes[0].underlay, "198.18.1.1");
  EXPECT_FALSE(fleet.nodes[0].tls.enabled);
  EXPECT_EQ(fleet.nodes[0].position.line, 6);
  EXPECT_TRUE(fleet.nodes[1].tls.enabled);
  EXPECT_EQ(fleet.nodes[1].tls.ca_file, "/etc/fleet/ca.pem");  // relative to the file
  EXPECT_EQ(fleet.nodes[1].tls.cert_file, "/etc/c.pem");
  EXPECT_EQ(fleet.nodes[1].tls.key_file, "/etc/fleet/c.key");
  EXPECT_EQ(fleet.nodes[1].tls.server_name, "agent2");
  EXPECT_EQ(fleet.nodes[1].token_file, "/etc/fleet/token2");
  EXPECT_EQ(fleet.topology, TopologyType::kMesh);
}

TEST(FleetTest, DefaultsModeAndKeyMayBeLeftOut) {
  Fleet fleet = MustParse(R"(defaults: {innerPool: 10.0.0.0/24}
nodes: [{name: a, agent: "unix:/a", underlay: 198.18.0.1}]
topology: {type: mesh}
)");
  EXPECT_EQ(fleet.defaults.mode, v1::TUNNEL_MODE_GRE);
  EXPECT_EQ(fleet.defaults.key->policy, KeyPolicy::kAuto);
}

TEST(FleetTest, DefaultsSettingsTlsAndToken) {
  Fleet fleet = MustParse(R"(defaults:
  mode: ipip
  key: none
  innerPool: 10.1.0.0/20
  mtu: 1400
  checksum: true
  keepalive: {interval: 10s, retries: 5}
  tls: {ca: /ca.pem}
  tokenFile: /token
nodes:
  - {name: a, agent: "a.example:1", underlay: 198.18.0.1}
  - {name: b, agent: "unix:/b", underlay: 198.18.0.2, tls: false}
  - {name: c, agent: "c:1", underlay: 198.18.0.3, tls: {serverName: cc}, tokenFile: /t3}
topology: {type: mesh}
)");
  EXPECT_EQ(fleet.defaults.mode, v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(fleet.defaults.key->policy, KeyPolicy::kNone);
  EXPECT_EQ(fleet.defaults.mtu, 1400u);
  EXPECT_EQ(fleet.defaults.checksum, true);
  EXPECT_EQ(fleet.defaults.keepalive->interval, absl::Seconds(10));
  EXPECT_EQ(fleet.defaults.keepalive->retries, 5u);
  EXPECT_TRUE(fleet.nodes[0].tls.enabled);
  EXPECT_EQ(fleet.nodes[0].tls.ca_file, "/ca.pem");
  EXPECT_EQ(fleet.nodes[0].token_file, "/token");
  EXPECT_FALSE(fleet.nodes[1].tls.enabled);  // tls: false turns the default off
  EXPECT_EQ(fleet.nodes[1].tls.ca_file, "");
  EXPECT_TRUE(fleet.nodes[2].tls.enabled);  // field by field over the defaults
  EXPECT_EQ(fleet.nodes[2].tls.ca_file, "/ca.pem");
  EXPECT_EQ(fleet.nodes[2].tls.server_name, "cc");
  EXPECT_EQ(fleet.nodes[2].token_file, "/t3");
}

TEST(FleetTest, KeyForms) {
  EXPECT_EQ(MustParse(Edit("key: auto ", "key: 42 ")).defaults.key->value, 42u);
  EXPECT_EQ(MustParse(Edit("key: auto ", "key: 0x10 ")).defaults.key->value, 16u);
  EXPECT_EQ(MustParse(Edit("key: auto ", "key: 4294967295 ")).defaults.key->value, 4294967295u);
  EXPECT_EQ(MustParse(Edit("key: auto ", "key: none ")).defaults.key->policy, KeyPolicy::kNone);
}

TEST(FleetTest, HubSpokeAndLinks) {
  Fleet hub = MustParse(Edit("type: mesh ", "type: hub-spoke\n  hub: node2\n"));
  EXPECT_EQ(hub.topology, TopologyType::kHubSpoke);
  EXPECT_EQ(hub.hub, "node2");

  Fleet links = MustParse(Edit("type: mesh ", R"(type: links
  links:
    - [node1, node2]
)"));
  ASSERT_EQ(links.links.size(), 1u);
  EXPECT_EQ(links.links[0].a, "node1");
  EXPECT_EQ(links.links[0].b, "node2");
  EXPECT_EQ(links.links[0].position.line, 17);
  EXPECT_FALSE(links.links[0].settings.mode.has_value());
}

TEST(FleetTest, LinkSettingsAndOverrides) {
  Fleet links = MustParse(Edit("type: mesh ", R"(type: links
  links:
    - {nodes: [node1, node2], mode: ipip, mtu: 1400, checksum: false,
       keepalive: {interval: 500ms, retries: 3}, key: none}
)"));
  ASSERT_EQ(links.links.size(), 1u);
  const LinkSettings& s = links.links[0].settings;
  EXPECT_EQ(s.mode, v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(s.mtu, 1400u);
  EXPECT_EQ(s.checksum, false);
  EXPECT_EQ(s.keepalive->interval, absl::Milliseconds(500));
  EXPECT_EQ(s.keepalive->retries, 3u);
  EXPECT_EQ(s.key->policy, KeyPolicy::kNone);
  EXPECT_EQ(links.links[0].field, "topology.links[0]");

  Fleet mesh = MustParse(Edit("type: mesh ", R"(type: mesh
  overrides:
    - {nodes: [node2, node1], mtu: auto, key: 7}
)"));
  ASSERT_EQ(mesh.overrides.size(), 1u);
  EXPECT_EQ(mesh.overrides[0].settings.mtu, 0u);
  EXPECT_EQ(mesh.overrides[0].settings.key->value, 7u);
}

TEST(FleetTest, Durations) {
  EXPECT_EQ(*ParseDurationText("10s"), absl::Seconds(10));
  EXPECT_EQ(*ParseDurationText("1m30s"), absl::Seconds(90));
  EXPECT_EQ(*ParseDurationText("2.5"), absl::Milliseconds(2500));
  EXPECT_EQ(*ParseDurationText("0"), absl::ZeroDuration());
  EXPECT_FALSE(ParseDurationText("-1s").ok());
  EXPECT_FALSE(ParseDurationText("ten").ok());
  EXPECT_FALSE(ParseDurationText("").ok());
  EXPECT_FALSE(ParseDurationText("inf").ok());
}

TEST(FleetTest, Modes) {
  EXPECT_EQ(*ParseMode("gre"), v1::TUNNEL_MODE_GRE);
  EXPECT_EQ(*ParseMode("IPIP"), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(*ParseMode("TUNNEL_MODE_IP6GRE"), v1::TUNNEL_MODE_IP6GRE);
  EXPECT_FALSE(ParseMode("vxlan").ok());
  EXPECT_EQ(ModeName(v1::TUNNEL_MODE_IP6TNL), "ip6tnl");
}

struct BadCase {
  const char* name;
  std::string text;
  std::string error;  // the whole message, "fleet.yaml:LINE:COL: field: problem"
};

class BadFleetTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadFleetTest, NamesLineAndField) { EXPECT_EQ(ErrorOf(GetParam().text), GetParam().error); }

INSTANTIATE_TEST_SUITE_P(
    Errors, BadFleetTest,
    ::testing::Values(
        BadCase{"Empty", "", "fleet.yaml: empty file (want defaults, nodes and topology)"},
        BadCase{"NotYaml", "defaults: [\n",
                "fleet.yaml:2:1: bad YAML: end of sequence flow not found"},
        BadCase{"NotAMap", "- a\n",
                "fleet.yaml:1:1: the file must be a mapping (defaults, nodes, topology)"},
        BadCase{"UnknownTop", Edit("topology:", "topolgy:"),
                "fleet.yaml:14:1: topolgy: unknown field (known: defaults, nodes, topology)"},
        BadCase{"NoDefaults", "nodes: []\n",
                "fleet.yaml:1:1: defaults: required (at least innerPool)"},
        BadCase{"UnknownDefault", Edit("  mode: gre", "  mdoe: gre"),
                "fleet.yaml:2:3: defaults.mdoe: unknown field (known: mode, key, innerPool, mtu, "
                "checksum, keepalive, tls, tokenFile, multipoint)"},
        BadCase{"BadMode", Edit("mode: gre ", "mode: vxlan "),
                "fleet.yaml:2:9: defaults.mode: \"vxlan\" is not a tunnel mode (gre, gretap, ipip, "
                "sit, ip6gre, ip6gretap, ip6tnl)"},
        BadCase{"BadKey", Edit("key: auto ", "key: sometimes "),
                "fleet.yaml:3:8: defaults.key: \"sometimes\" is not auto, none or a number "
                "0..4294967295"},
        BadCase{"KeyTooBig", Edit("key: auto ", "key: 4294967296 "),
                "fleet.yaml:3:8: defaults.key: \"4294967296\" is not auto, none or a number "
                "0..4294967295"},
        BadCase{
            "NoPool", Edit("  innerPool: 100.64.0.0/16", ""),
            "fleet.yaml:2:3: defaults.innerPool: required (an IPv4 prefix, e.g. 100.64.0.0/16)"},
        BadCase{"BadPool", Edit("100.64.0.0/16", "100.64.0/16"),
                "fleet.yaml:4:14: defaults.innerPool: \"100.64.0/16\" is not an IPv4 prefix like "
                "100.64.0.0/16"},
        BadCase{"PoolHostBits", Edit("100.64.0.0/16", "100.64.0.1/16"),
                "fleet.yaml:4:14: defaults.innerPool: \"100.64.0.1/16\" has host bits set"},
        BadCase{"PoolTooSmall", Edit("100.64.0.0/16", "100.64.0.1/32"),
                "fleet.yaml:4:14: defaults.innerPool: \"100.64.0.1/32\" is too small: each link "
                "takes a /31"},
        BadCase{"MtuRange", Edit("  mode: gre", "  mtu: 40\n  mode: gre"),
                "fleet.yaml:2:8: defaults.mtu: 40 is out of range 68..65535"},
        BadCase{"MtuText", Edit("  mode: gre", "  mtu: big\n  mode: gre"),
                "fleet.yaml:2:8: defaults.mtu: \"big\" is not a number"},
        BadCase{"ChecksumText", Edit("  mode: gre", "  checksum: maybe\n  mode: gre"),
                "fleet.yaml:2:13: defaults.checksum: \"maybe\" is not true or false"},
        BadCase{"KeepaliveNotMap", Edit("  mode: gre", "  keepalive: 10s\n  mode: gre"),
                "fleet.yaml:2:14: defaults.keepalive: must be a mapping like {interval: 10s, "
                "retries: 3}"},
        BadCase{"KeepaliveNoInterval",
                Edit("  mode: gre", "  keepalive: {retries: 3}\n  mode: gre"),
                "fleet.yaml:2:14: defaults.keepalive.interval: required (0 turns keepalive off)"},
        BadCase{"KeepaliveBadInterval",
                Edit("  mode: gre", "  keepalive: {interval: soon}\n  mode: gre"),
                "fleet.yaml:2:25: defaults.keepalive.interval: \"soon\" is not a duration like "
                "10s, 500ms or 1m30s"},
        BadCase{"KeepaliveTooFast",
                Edit("  mode: gre", "  keepalive: {interval: 10ms}\n  mode: gre"),
                "fleet.yaml:2:25: defaults.keepalive.interval: \"10ms\" is out of range 100ms..1h "
                "(0: off)"},
        BadCase{"KeepaliveRetries",
                Edit("  mode: gre", "  keepalive: {interval: 1s, retries: 300}\n  mode: gre"),
                "fleet.yaml:2:38: defaults.keepalive.retries: 300 is out of range 1..255"},
        BadCase{"TlsCertWithoutKey", Edit("  mode: gre", "  tls: {cert: c.pem}\n  mode: gre"),
                "fleet.yaml:2:8: defaults.tls: cert and key go together (mutual TLS)"},
        BadCase{"TlsUnknown", Edit("  mode: gre", "  tls: {cafile: c.pem}\n  mode: gre"),
                "fleet.yaml:2:9: defaults.tls.cafile: unknown field (known: ca, cert, key, "
                "serverName)"},
        BadCase{"TlsNotBool", Edit("  mode: gre", "  tls: sure\n  mode: gre"),
                "fleet.yaml:2:8: defaults.tls: must be true, false or a mapping {ca, cert, key, "
                "serverName}"},
        BadCase{"NoNodes", Edit("nodes:", "nodez:"),
                "fleet.yaml:5:1: nodez: unknown field (known: defaults, nodes, topology)"},
        BadCase{"NodesEmpty",
                "defaults: {innerPool: 10.0.0.0/24}\nnodes: []\ntopology: {type: mesh}\n",
                "fleet.yaml:2:8: nodes: must be a non-empty list"},
        BadCase{"NodeNotMap", Edit("  - name: node1\n", "  - node1\n  - name: node1\n"),
                "fleet.yaml:6:5: nodes[0]: must be a mapping {name, agent, underlay}"},
        BadCase{"NodeUnknownField",
                Edit("    underlay: 198.18.1.1", "    underlay: 198.18.1.1\n    adress: x"),
                "fleet.yaml:9:5: nodes[0].adress: unknown field (known: name, agent, underlay, "
                "tls, tokenFile, prefixes)"},
        BadCase{"NodeNoAgent",
                Edit("    agent: unix:/run/tunnel-agent/node1.sock   # or host:port\n", ""),
                "fleet.yaml:6:5: nodes[0].agent: required"},
        BadCase{"NodeNoUnderlay", Edit("    underlay: 198.18.1.2\n", ""),
                "fleet.yaml:9:5: nodes[1].underlay: required"},
        BadCase{"NodeBadName", Edit("name: node1", "name: node/1"),
                "fleet.yaml:6:11: nodes[0].name: \"node/1\" may hold only letters, digits, '.', "
                "'_' and '-'"},
        BadCase{"NodeNameDash", Edit("name: node1", "name: -node1"),
                "fleet.yaml:6:11: nodes[0].name: \"-node1\" must start with a letter or digit"},
        BadCase{"NodeNameLong", Edit("name: node1", "name: " + std::string(64, 'n')),
                "fleet.yaml:6:11: nodes[0].name: \"" + std::string(64, 'n') +
                    "\" is longer than 63 characters"},
        BadCase{"NodeDuplicate", Edit("name: node2", "name: node1"),
                "fleet.yaml:9:11: nodes[1].name: \"node1\" is already the name of nodes[0]"},
        BadCase{"NodeBadAgent", Edit("agent: 198.18.1.2:50051", "agent: 198.18.1.2"),
                "fleet.yaml:10:12: nodes[1].agent: \"198.18.1.2\" is not unix:/path or host:port"},
        BadCase{"NodeBadPort", Edit("agent: 198.18.1.2:50051", "agent: 198.18.1.2:70000"),
                "fleet.yaml:10:12: nodes[1].agent: \"198.18.1.2:70000\" is not unix:/path or "
                "host:port"},
        BadCase{"NodeEmptyUnix", Edit("agent: 198.18.1.2:50051", "agent: \"unix:\""),
                "fleet.yaml:10:12: nodes[1].agent: unix: needs a socket path"},
        BadCase{"NodeBadUnderlay", Edit("underlay: 198.18.1.2", "underlay: 198.18.1.256"),
                "fleet.yaml:11:15: nodes[1].underlay: \"198.18.1.256\" is not an IP address"},
        BadCase{"NodeSameUnderlay", Edit("underlay: 198.18.1.2", "underlay: 198.18.1.1"),
                "fleet.yaml:11:15: nodes[1].underlay: 198.18.1.1 is already the underlay of "
                "nodes[0]"},
        BadCase{"NodeEmptyToken", Edit("tokenFile: token2", "tokenFile: \"\""),
                "fleet.yaml:13:16: nodes[1].tokenFile: must not be empty"},
        BadCase{"NoTopology",
                Edit("topology:\n  type: mesh           # mesh | hub-spoke | links\n", ""),
                "fleet.yaml:1:1: topology: required ({type: mesh | hub-spoke | links})"},
        BadCase{"TopologyNoType", Edit("type: mesh ", "hub: node1 "),
                "fleet.yaml:15:3: topology.type: required (mesh, hub-spoke or links)"},
        BadCase{"TopologyBadType", Edit("type: mesh ", "type: star "),
                "fleet.yaml:15:9: topology.type: \"star\" is not mesh, hub-spoke or links"},
        BadCase{"HubMissing", Edit("type: mesh ", "type: hub-spoke "),
                "fleet.yaml:15:3: topology.hub: required for hub-spoke (a node's name)"},
        BadCase{"HubUnknown", Edit("type: mesh ", "type: hub-spoke\n  hub: node3\n"),
                "fleet.yaml:16:8: topology.hub: no node named \"node3\""},
        BadCase{"HubOnMesh", Edit("type: mesh ", "type: mesh\n  hub: node1\n"),
                "fleet.yaml:16:8: topology.hub: only for type hub-spoke"},
        BadCase{"LinksMissing", Edit("type: mesh ", "type: links "),
                "fleet.yaml:15:3: topology.links: required for type links ([[a, b], ...])"},
        BadCase{"LinksOnMesh", Edit("type: mesh ", "type: mesh\n  links: [[node1, node2]]\n"),
                "fleet.yaml:16:10: topology.links: only for type links (use overrides)"},
        BadCase{"LinkUnknownNode",
                Edit("type: mesh ", "type: links\n  links:\n    - [node1, node9]\n"),
                "fleet.yaml:17:15: topology.links[0][1]: no node named \"node9\""},
        BadCase{"LinkSelf", Edit("type: mesh ", "type: links\n  links:\n    - [node1, node1]\n"),
                "fleet.yaml:17:7: topology.links[0]: links \"node1\" to itself"},
        BadCase{"LinkNotPair", Edit("type: mesh ", "type: links\n  links:\n    - [node1]\n"),
                "fleet.yaml:17:7: topology.links[0]: must be a pair of node names [a, b]"},
        BadCase{
            "LinkDuplicate",
            Edit("type: mesh ",
                 "type: links\n  links:\n    - [node1, node2]\n    - {nodes: [node2, node1]}\n"),
            "fleet.yaml:18:7: topology.links[1]: the pair node1, node2 is already in "
            "topology.links[0]"},
        BadCase{"LinkMapNoNodes", Edit("type: mesh ", "type: links\n  links:\n    - {mtu: 1400}\n"),
                "fleet.yaml:17:7: topology.links[0].nodes: required ([a, b])"},
        BadCase{
            "LinkBadSetting",
            Edit("type: mesh ", "type: links\n  links:\n    - {nodes: [node1, node2], mtu: 1}\n"),
            "fleet.yaml:17:36: topology.links[0].mtu: 1 is out of range 68..65535"},
        BadCase{
            "LinkUnknownSetting",
            Edit("type: mesh ", "type: links\n  links:\n    - {nodes: [node1, node2], ttl: 1}\n"),
            "fleet.yaml:17:31: topology.links[0].ttl: unknown field (known: nodes, mode, key, "
            "mtu, checksum, keepalive)"},
        BadCase{"OverrideNotMap",
                Edit("type: mesh ", "type: mesh\n  overrides:\n    - [node1, node2]\n"),
                "fleet.yaml:17:7: topology.overrides[0]: must be a mapping {nodes: [a, b], ...}"},
        BadCase{
            "OverridesOnLinks",
            Edit(
                "type: mesh ",
                "type: links\n  links: [[node1, node2]]\n  overrides: [{nodes: [node1, node2]}]\n"),
            "fleet.yaml:17:14: topology.overrides: only for mesh and hub-spoke (give the "
            "settings in links)"},
        BadCase{"OverrideNotHubLink",
                "defaults: {innerPool: 10.0.0.0/24}\n"
                "nodes:\n"
                "  - {name: h, agent: 'unix:/h', underlay: 198.18.0.1}\n"
                "  - {name: a, agent: 'unix:/a', underlay: 198.18.0.2}\n"
                "  - {name: b, agent: 'unix:/b', underlay: 198.18.0.3}\n"
                "topology:\n"
                "  type: hub-spoke\n"
                "  hub: h\n"
                "  overrides:\n"
                "    - {nodes: [a, b], mtu: 1400}\n",
                "fleet.yaml:10:7: topology.overrides[0].nodes: hub-spoke has no link between a "
                "and b (one must be the hub, h)"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

// ---- Multipoint fleets: one device per node, its peers the other nodes ---------------------

constexpr char kMultipoint[] = R"(defaults:
  mode: gre
  innerPool: 100.64.0.0/16
  multipoint: true
nodes:
  - name: a
    agent: unix:/a
    underlay: 198.18.0.1
    prefixes: [10.244.1.0/24, "fd00:1:0::/64"]
  - {name: b, agent: unix:/b, underlay: 198.18.0.2, prefixes: [10.244.2.0/24]}
  - {name: c, agent: unix:/c, underlay: 198.18.0.3}
topology:
  type: mesh
)";

// kMultipoint with `from` replaced by `to` (which must be there).
std::string EditMultipoint(const std::string& from, const std::string& to) {
  std::string text = kMultipoint;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(FleetTest, MultipointInDefaults) {
  Fleet fleet = MustParse(kMultipoint);
  EXPECT_TRUE(fleet.multipoint.enabled);
  EXPECT_EQ(fleet.multipoint.device, "tnl0");
  EXPECT_EQ(fleet.multipoint.field, "defaults.multipoint");
  ASSERT_EQ(fleet.nodes.size(), 3u);
  // Canonical forms: what the agent answers, so that a re-apply compares equal.
  EXPECT_THAT(fleet.nodes[0].prefixes, ::testing::ElementsAre("10.244.1.0/24", "fd00:1::/64"));
  EXPECT_THAT(fleet.nodes[1].prefixes, ::testing::ElementsAre("10.244.2.0/24"));
  EXPECT_TRUE(fleet.nodes[2].prefixes.empty());
}

TEST(FleetTest, MultipointInTopologyWinsOverDefaults) {
  Fleet named =
      MustParse(EditMultipoint("  type: mesh\n", "  type: mesh\n  multipoint: {device: mesh0}\n"));
  EXPECT_TRUE(named.multipoint.enabled);
  EXPECT_EQ(named.multipoint.device, "mesh0");
  EXPECT_EQ(named.multipoint.field, "topology.multipoint");

  std::string text = EditMultipoint("  multipoint: true\n", "");
  text.replace(text.find("topology:"), std::string::npos,
               "topology: {type: hub-spoke, hub: b, multipoint: true}\n");
  Fleet hub = MustParse(text);
  EXPECT_EQ(hub.topology, TopologyType::kHubSpoke);
  EXPECT_TRUE(hub.multipoint.enabled);
  EXPECT_EQ(hub.multipoint.device, "tnl0");

  // Off in the topology: point to point again, and prefixes are then an error.
  const std::string off = EditMultipoint("  type: mesh\n", "  type: mesh\n  multipoint: false\n");
  EXPECT_EQ(ErrorOf(off),
            "fleet.yaml:9:16: nodes[0].prefixes[0]: prefixes are routed into a multipoint device: "
            "only for a multipoint fleet (multipoint: true in defaults or topology)");
  Fleet p2p = MustParse(kGood);
  EXPECT_FALSE(p2p.multipoint.enabled);
}

INSTANTIATE_TEST_SUITE_P(
    MultipointErrors, BadFleetTest,
    ::testing::Values(
        BadCase{"MultipointNotBool", EditMultipoint("multipoint: true", "multipoint: often"),
                "fleet.yaml:4:15: defaults.multipoint: must be true, false or a mapping {device: "
                "NAME}"},
        BadCase{"MultipointUnknown", EditMultipoint("multipoint: true", "multipoint: {dev: x}"),
                "fleet.yaml:4:16: defaults.multipoint.dev: unknown field (known: device)"},
        BadCase{"MultipointDeviceLong",
                EditMultipoint("multipoint: true", "multipoint: {device: tunnel-of-the-mesh}"),
                "fleet.yaml:4:24: defaults.multipoint.device: \"tunnel-of-the-mesh\" is longer "
                "than 15 characters"},
        BadCase{"MultipointDeviceSlash",
                EditMultipoint("multipoint: true", "multipoint: {device: \"a/b\"}"),
                "fleet.yaml:4:24: defaults.multipoint.device: \"a/b\" may not hold '/', ':' or "
                "white space"},
        BadCase{"MultipointOnLinks",
                EditMultipoint("  type: mesh\n", "  type: links\n  links: [[a, b]]\n"),
                "fleet.yaml:4:15: defaults.multipoint: links are point to point: multipoint is "
                "for mesh and hub-spoke"},
        BadCase{"MultipointOverrides",
                EditMultipoint("  type: mesh\n",
                               "  type: mesh\n  overrides: [{nodes: [a, b], mtu: 1400}]\n"),
                "fleet.yaml:14:14: topology.overrides: a multipoint device has the same settings "
                "for all its peers: give them in defaults (defaults.multipoint is on)"},
        BadCase{"MultipointGretap", EditMultipoint("mode: gre", "mode: gretap"),
                "fleet.yaml:4:15: defaults.multipoint: gretap tunnels cannot be multipoint (gre, "
                "ipip, ip6gre and ip6tnl can)"},
        BadCase{"PrefixesNotList", EditMultipoint("prefixes: [10.244.2.0/24]", "prefixes: x"),
                "fleet.yaml:10:63: nodes[1].prefixes: must be a list of prefixes like "
                "[10.244.1.0/24]"},
        BadCase{"PrefixNotCidr", EditMultipoint("10.244.2.0/24", "10.244.2.0"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: \"10.244.2.0\" is not a prefix like "
                "10.244.1.0/24 or fd00:1::/64"},
        BadCase{"PrefixLength", EditMultipoint("10.244.2.0/24", "10.244.2.0/33"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: \"10.244.2.0/33\": the prefix length "
                "must be 0..32"},
        BadCase{"PrefixHostBits", EditMultipoint("10.244.2.0/24", "10.244.2.1/24"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: \"10.244.2.1/24\" has host bits set "
                "(10.244.2.0/24 is the prefix)"},
        BadCase{"PrefixHostBitsV6", EditMultipoint("fd00:1:0::/64", "fd00:1::1/64"),
                "fleet.yaml:9:31: nodes[0].prefixes[1]: \"fd00:1::1/64\" has host bits set "
                "(fd00:1::/64 is the prefix)"},
        BadCase{"PrefixInPool", EditMultipoint("10.244.2.0/24", "100.64.8.0/24"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: 100.64.8.0/24 overlaps "
                "defaults.innerPool 100.64.0.0/16 (the overlay's own addresses)"},
        BadCase{"PrefixHoldsPool", EditMultipoint("10.244.2.0/24", "100.0.0.0/8"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: 100.0.0.0/8 overlaps "
                "defaults.innerPool 100.64.0.0/16 (the overlay's own addresses)"},
        BadCase{"PrefixTwice", EditMultipoint("10.244.2.0/24", "10.244.1.0/24"),
                "fleet.yaml:10:64: nodes[1].prefixes[0]: 10.244.1.0/24 is already in "
                "nodes[0].prefixes[0]"},
        BadCase{"PrefixV6OnIpip", EditMultipoint("mode: gre", "mode: ipip"),
                "fleet.yaml:9:31: nodes[0].prefixes[1]: IPv6, which ipip tunnels do not carry"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

TEST(FleetTest, LoadFleetFileNamesAMissingFile) {
  absl::StatusOr<Fleet> fleet = LoadFleetFile("/nonexistent/fleet.yaml");
  ASSERT_FALSE(fleet.ok());
  EXPECT_EQ(fleet.status().message(),
            "cannot read /nonexistent/fleet.yaml: No such file or directory");
}

}  // namespace
}  // namespace tunnelagent::controller
