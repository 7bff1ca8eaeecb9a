#include "clients/tunnelctl/apply_file.h"

#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace tunnelagent::tunnelctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct Flags {
  std::string owner;
  bool prune = false;
  bool dry_run = false;
  std::string request_id;
};

Command ApplyCommand(const Flags& flags) {
  Command command;
  command.verb = Verb::kApply;
  command.apply_file = "t.json";
  command.owner = flags.owner;
  command.prune = flags.prune;
  command.dry_run = flags.dry_run;
  command.request_id = flags.request_id;
  return command;
}

struct GoodCase {
  std::string name;
  std::string content;
  Flags flags;
  std::string want;  // text proto of the request
};

TEST(ApplyFileTest, BothShapes) {
  const GoodCase kCases[] = {
      {"request",
       R"({"owner": "fleet", "tunnels": [{"name": "t1", "mode": "TUNNEL_MODE_GRE",
           "remote": "192.0.2.2", "key": 7, "addresses": ["10.0.0.1/30"],
           "labels": {"env": "prod"}}]})",
       {},
       R"pb(owner: "fleet"
            tunnels {
              name: "t1"
              mode: TUNNEL_MODE_GRE
              remote: "192.0.2.2"
              key: 7
              addresses: "10.0.0.1/30"
              labels { key: "env" value: "prod" }
            })pb"},
      {"request, flags merged",
       R"({"owner": "fleet", "tunnels": [], "requestId": "file-id"})",
       {"fleet", true, true, "flag-id"},
       R"pb(owner: "fleet" prune: true dry_run: true request_id: "flag-id")pb"},
      {"request keeps its own prune, dry run and id",
       R"({"owner": "o", "prune": true, "dryRun": true, "requestId": "file-id"})",
       {},
       R"pb(owner: "o" prune: true dry_run: true request_id: "file-id")pb"},
      {"proto field names",
       R"({"owner": "o", "dry_run": true, "tunnels": [{"name": "a"}]})",
       {},
       R"pb(owner: "o"
            dry_run: true
            tunnels { name: "a" })pb"},
      {"request without owner, --owner",
       R"({"tunnels": [{"name": "a"}]})",
       {"o", false, false, ""},
       R"pb(owner: "o"
            tunnels { name: "a" })pb"},
      {"bare array",
       "\n  [{\"name\": \"a\", \"mode\": \"TUNNEL_MODE_IPIP\", \"remote\": \"198.18.0.2\"},\n"
       "   {\"name\": \"b\", \"mtu\": 1400}]\n",
       {"fleet", true, false, ""},
       R"pb(owner: "fleet"
            prune: true
            tunnels { name: "a" mode: TUNNEL_MODE_IPIP remote: "198.18.0.2" }
            tunnels { name: "b" mtu: 1400 })pb"},
      {"empty array", "[]", {"fleet", false, false, ""}, R"pb(owner: "fleet")pb"},
      // `tunnelctl -o json list` output can be applied: status is output only.
      {"list output",
       R"({"tunnels": [{"name": "a", "status": {"state": "OPER_STATE_UP",
           "counters": {"txPackets": "5"}}}]})",
       {"o", false, false, ""},
       R"pb(owner: "o"
            tunnels {
              name: "a"
              status {
                state: OPER_STATE_UP
                counters { tx_packets: 5 }
              }
            })pb"},
  };
  for (const GoodCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<v1::ApplyTunnelsRequest> request =
        ParseApplyFile(c.content, "t.json", ApplyCommand(c.flags));
    ASSERT_TRUE(request.ok()) << request.status();
    v1::ApplyTunnelsRequest want;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.want, &want));
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*request, want))
        << "got:  " << request->ShortDebugString() << "\nwant: " << want.ShortDebugString();
  }
}

struct BadCase {
  std::string name;
  std::string content;
  Flags flags;
  std::string error;  // expected substring
};

TEST(ApplyFileTest, ErrorsNameTheFileAndTheProblem) {
  const BadCase kCases[] = {
      {"empty", "", {"o", false, false, ""}, "apply: t.json: empty"},
      {"white space", " \n\t", {"o", false, false, ""}, "apply: t.json: empty"},
      {"yaml", "owner: fleet\ntunnels: []\n", {"o", false, false, ""}, "apply: t.json: not JSON"},
      {"syntax, with line and column",
       "{\n  \"owner\": \"o\",\n  \"tunnels\" []\n}",
       {},
       "apply: t.json:3:13: Expected : between key:value pair."},
      {"trailing garbage", R"({"owner": "o"} x)", {}, "apply: t.json:1:16: Parsing terminated"},
      {"unterminated", R"({"owner": "o", "tunnels": [)", {}, "apply: t.json"},
      {"unknown field",
       R"({"owner": "o", "tunels": []})",
       {},
       "apply: t.json:1:16: tunels: Cannot"},
      {"unknown tunnel field",
       R"([{"nmae": "a"}])",
       {"o", false, false, ""},
       "apply: t.json:1:3: ([0]) nmae: Cannot find field."},
      {"bad enum, with the path",
       R"({"owner": "o", "tunnels": [{"name": "a", "mode": "gre"}]})",
       {},
       "apply: t.json:1:50: (tunnels[0].mode): invalid value \"gre\""},
      {"bad enum in an array, path without the wrapper",
       R"([{"name": "a"}, {"name": "b", "mode": "gre"}])",
       {"o", false, false, ""},
       "apply: t.json:1:39: ([1].mode): invalid value \"gre\""},
      // What was refused occurs twice: no position rather than a wrong one.
      {"bad enum given twice",
       R"([{"name": "a", "mode": "gre"}, {"name": "b", "mode": "gre"}])",
       {"o", false, false, ""},
       "apply: t.json: ([1].mode): invalid value \"gre\""},
      {"negative key",
       R"([{"name": "a", "key": -1}])",
       {"o", false, false, ""},
       "([0].key): invalid value -1"},
      // Addresses are checked as the command line checks them: bad input, not the agent's.
      {"bad remote",
       R"([{"name": "a", "remote": "198.18.0.2"}, {"name": "b", "remote": "300.1.1.1"}])",
       {"o", false, false, ""},
       "apply: t.json: tunnels[1] (b): invalid remote '300.1.1.1'"},
      {"bad local",
       R"({"owner": "o", "tunnels": [{"name": "a", "local": "any"}]})",
       {},
       "apply: t.json: tunnels[0] (a): invalid local 'any'"},
      {"bad address",
       R"([{"name": "a", "addresses": ["10.0.0.1/30", "10.0.0.5/33"]}])",
       {"o", false, false, ""},
       "apply: t.json: tunnels[0] (a): invalid addresses[1] '10.0.0.5/33'"},
      {"bad route, on one line",
       R"([{"name": "a\nb", "routes": ["10.2.0.0\n/16"]}])",
       {"o", false, false, ""},
       "apply: t.json: tunnels[0] (a b): invalid routes[0] '10.2.0.0 /16'"},
      {"array without --owner",
       R"([{"name": "a"}])",
       {},
       "apply: t.json: an array of tunnels "
       "needs --owner"},
      {"request without owner", R"({"tunnels": []})", {}, "apply: t.json: no \"owner\""},
      {"owners differ",
       R"({"owner": "a"})",
       {"b", false, false, ""},
       "owner 'a' differs from --owner 'b'"},
      {"not an object", R"("owner")", {"o", false, false, ""}, "apply: t.json: not JSON"},
  };
  for (const BadCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<v1::ApplyTunnelsRequest> request =
        ParseApplyFile(c.content, "t.json", ApplyCommand(c.flags));
    ASSERT_FALSE(request.ok()) << request->ShortDebugString();
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(request.status().message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(request.status().message()), Not(HasSubstr("\n")));
  }
}

TEST(ApplyFileTest, SourceNameIsUsed) {
  absl::StatusOr<v1::ApplyTunnelsRequest> request =
      ParseApplyFile("{", "stdin", ApplyCommand({"o", false, false, ""}));
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(std::string(request.status().message()), testing::StartsWith("apply: stdin"));
}

// ---- peer apply ---------------------------------------------------------------------------

Command PeerApplyCommand(const Flags& flags) {
  Command command = ApplyCommand(flags);
  command.verb = Verb::kPeerApply;
  command.name = "mp1";
  command.apply_file = "p.json";
  return command;
}

TEST(PeerApplyFileTest, BothShapes) {
  const GoodCase kCases[] = {
      {"request",
       R"({"owner": "fleet", "peers": [{"name": "site-b", "underlay": "198.18.0.2", "key": 0,
           "allowedPrefixes": ["10.1.0.0/16"], "keepalive": {"interval": "10s", "retries": 3},
           "labels": {"env": "prod"}}]})",
       {},
       R"pb(tunnel: "mp1"
            owner: "fleet"
            peers {
              name: "site-b"
              underlay: "198.18.0.2"
              key: 0
              allowed_prefixes: "10.1.0.0/16"
              keepalive {
                interval { seconds: 10 }
                retries: 3
              }
              labels { key: "env" value: "prod" }
            })pb"},
      {"proto field names, the file's tunnel matching TUNNEL, flags merged",
       R"({"tunnel": "mp1", "owner": "fleet", "peers": [{"name": "a", "underlay": "fd00::2",
           "allowed_prefixes": ["fd10::/64", "10.1.2.3"]}], "request_id": "file-id"})",
       {"fleet", true, true, "flag-id"},
       R"pb(tunnel: "mp1"
            owner: "fleet"
            peers {
              name: "a"
              underlay: "fd00::2"
              allowed_prefixes: [ "fd10::/64", "10.1.2.3" ]
            }
            prune: true
            dry_run: true
            request_id: "flag-id")pb"},
      {"array with --owner",
       R"([{"name": "a", "underlay": "198.18.0.2"}, {"name": "b", "underlay": "198.18.0.3"}])",
       {"fleet", false, false, ""},
       R"pb(tunnel: "mp1"
            owner: "fleet"
            peers { name: "a" underlay: "198.18.0.2" }
            peers { name: "b" underlay: "198.18.0.3" })pb"},
      {"empty array, with prune: delete them all",
       "[]",
       {"fleet", true, false, ""},
       R"pb(tunnel: "mp1" owner: "fleet" prune: true)pb"},
  };
  for (const GoodCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<v1::ApplyPeersRequest> request =
        ParsePeerApplyFile(c.content, "p.json", PeerApplyCommand(c.flags));
    ASSERT_TRUE(request.ok()) << request.status();
    v1::ApplyPeersRequest want;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.want, &want));
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*request, want))
        << "got:  " << request->ShortDebugString() << "\nwant: " << want.ShortDebugString();
  }
}

TEST(PeerApplyFileTest, ErrorsNameTheFileAndThePeer) {
  const BadCase kCases[] = {
      {"empty", "", {"o", false, false, ""}, "peer apply: p.json: empty"},
      {"yaml",
       "owner: fleet\npeers: []\n",
       {"o", false, false, ""},
       "peer apply: p.json: not JSON (want an object like {\"owner\": ..., \"peers\": [...]} or "
       "an array of peers)"},
      {"syntax, with line and column",
       "{\n  \"owner\": \"o\",\n  \"peers\" []\n}",
       {},
       "peer apply: p.json:3:11: Expected : between key:value pair."},
      {"unknown field",
       R"({"owner": "o", "peer": []})",
       {},
       "peer apply: p.json:1:16: peer: Cannot"},
      {"a tunnel's field in a peer",
       R"([{"name": "a", "remote": "198.18.0.2"}])",
       {"o", false, false, ""},
       "peer apply: p.json:1:16: ([0]) remote: Cannot find field."},
      {"bad key, path without the wrapper",
       R"([{"name": "a"}, {"name": "b", "key": -1}])",
       {"o", false, false, ""},
       "peer apply: p.json:1:38: ([1].key): invalid value -1"},
      {"bad name",
       R"([{"name": "a", "underlay": "198.18.0.2"}, {"name": "b/c", "underlay": "198.18.0.3"}])",
       {"o", false, false, ""},
       "peer apply: p.json: peers[1] (b/c): invalid peer name 'b/c'"},
      {"no name",
       R"([{"underlay": "198.18.0.3"}])",
       {"o", false, false, ""},
       "peer apply: p.json: peers[0] (): invalid peer name ''"},
      {"bad underlay",
       R"({"owner": "o", "peers": [{"name": "a", "underlay": "198.18.0.0/24"}]})",
       {},
       "peer apply: p.json: peers[0] (a): invalid underlay '198.18.0.0/24'"},
      {"bad allowed prefix",
       R"([{"name": "a", "allowedPrefixes": ["10.1.0.0/16", "10.2.0.0/33"]}])",
       {"o", false, false, ""},
       "peer apply: p.json: peers[0] (a): invalid allowedPrefixes[1] '10.2.0.0/33'"},
      {"host bits in an allowed prefix",
       R"([{"name": "a", "allowedPrefixes": ["10.1.0.1/16"]}])",
       {"o", false, false, ""},
       "peers[0] (a): invalid allowedPrefixes[0] '10.1.0.1/16' (host bits set; want "
       "10.1.0.0/16)"},
      {"another tunnel",
       R"({"tunnel": "mp2", "owner": "o", "peers": []})",
       {},
       "peer apply: p.json: tunnel 'mp2' differs from TUNNEL 'mp1'"},
      {"array without --owner", R"([])", {}, "peer apply: p.json: an array of peers needs --owner"},
      {"request without owner", R"({"peers": []})", {}, "peer apply: p.json: no \"owner\""},
      {"owners differ",
       R"({"owner": "a"})",
       {"b", false, false, ""},
       "peer apply: p.json: owner 'a' differs from --owner 'b'"},
      {"a tunnel apply file",
       R"({"owner": "o", "tunnels": []})",
       {},
       "peer apply: p.json:1:16: tunnels: Cannot find field."},
  };
  for (const BadCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<v1::ApplyPeersRequest> request =
        ParsePeerApplyFile(c.content, "p.json", PeerApplyCommand(c.flags));
    ASSERT_FALSE(request.ok()) << request->ShortDebugString();
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(request.status().message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(request.status().message()), Not(HasSubstr("\n")));
  }
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
