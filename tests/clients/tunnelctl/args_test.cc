#include "clients/tunnelctl/args.h"

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/tunnelctl/output.h"
#include "gmock/gmock.h"
#include "google/protobuf/empty.pb.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace tunnelagent::tunnelctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::vector<std::string> Split(const std::string& line) {
  return absl::StrSplit(line, ' ', absl::SkipEmpty());
}

v1::Tunnel TunnelFromText(const std::string& text) {
  v1::Tunnel tunnel;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &tunnel)) << text;
  return tunnel;
}

// ---- good commands ------------------------------------------------------------------------

struct GoodCase {
  std::string args;  // split on spaces
  Verb verb;
  std::string name;
  std::string tunnel;  // text proto of Command::tunnel
};

TEST(ParseArgsTest, GoodCommands) {
  const GoodCase kCases[] = {
      {"create gre1 mode gre remote 192.0.2.2", Verb::kCreate, "gre1",
       R"pb(name: "gre1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"add gre1 remote 192.0.2.2 mode gre", Verb::kCreate, "gre1", R"pb(name: "gre1"
                                                                         mode: TUNNEL_MODE_GRE
                                                                         remote: "192.0.2.2")pb"},
      {"create t1 key 0.0.0.5 mtu 1400 local 192.0.2.1 mode gretap remote 192.0.2.2", Verb::kCreate,
       "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRETAP
            local: "192.0.2.1"
            remote: "192.0.2.2"
            key: 5
            mtu: 1400)pb"},
      {"create t1 mode gre remote 192.0.2.2 address 10.0.0.1/30 route 10.2.0.0/16 "
       "address fd00::1/64 route 10.3.0.0/16",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            addresses: [ "10.0.0.1/30", "fd00::1/64" ]
            routes: [ "10.2.0.0/16", "10.3.0.0/16" ])pb"},
      // key 0 is a key, not "no key".
      {"create t1 mode gre remote 192.0.2.2 key 0", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2" key: 0)pb"},
      {"create t1 mode gre remote 192.0.2.2 key 4294967295", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2" key: 4294967295)pb"},
      {"create t1 mode gre remote 192.0.2.2 key 1.2.3.4", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2" key: 0x01020304)pb"},
      {"create t1 mode gre remote 192.0.2.2 key 0x10", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2" key: 16)pb"},
      {"create t1 mode ipip remote 192.0.2.2 local any", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IPIP remote: "192.0.2.2")pb"},
      {"create t1 mode sit remote 192.0.2.2 mtu 68", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_SIT remote: "192.0.2.2" mtu: 68)pb"},
      {"create t1 mode ip6gre remote 2001:db8::2 mtu 65535", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6GRE remote: "2001:db8::2" mtu: 65535)pb"},
      {"create t1 mode ip6gretap remote 2001:db8::2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6GRETAP remote: "2001:db8::2")pb"},
      {"create t1 mode ip6tnl remote 2001:db8::2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6TNL remote: "2001:db8::2")pb"},
      // Flags between keywords; a name that starts with '-' after "--".
      {"create t1 mode gre -o json remote 192.0.2.2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"create -- -t1 mode gre remote 192.0.2.2", Verb::kCreate, "-t1",
       R"pb(name: "-t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"get gre1", Verb::kGet, "gre1", ""},
      {"show gre1", Verb::kGet, "gre1", ""},
      {"show", Verb::kList, "", ""},
      {"list", Verb::kList, "", ""},
      {"ls", Verb::kList, "", ""},
      {"delete gre1", Verb::kDelete, "gre1", ""},
      {"del gre1", Verb::kDelete, "gre1", ""},
      {"help", Verb::kHelp, "", ""},
      {"help create", Verb::kHelp, "", ""},
      {"--help", Verb::kHelp, "", ""},
      {"-h", Verb::kHelp, "", ""},
      // --help wins over errors elsewhere on the line.
      {"create t1 mode bogus --help", Verb::kHelp, "", ""},
      {"bogus -h", Verb::kHelp, "", ""},
  };
  for (const GoodCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, c.verb);
    EXPECT_EQ(command->name, c.name);
    v1::Tunnel want = TunnelFromText(c.tunnel);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
        << "got:  " << command->tunnel.ShortDebugString() << "\nwant: " << want.ShortDebugString();
  }
}

TEST(ParseArgsTest, KeyPresenceIsTracked) {
  absl::StatusOr<Command> without = ParseArgs(Split("create t1 mode gre remote 192.0.2.2"), "");
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_FALSE(without->tunnel.has_key());
  absl::StatusOr<Command> with = ParseArgs(Split("create t1 mode gre remote 192.0.2.2 key 0"), "");
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_TRUE(with->tunnel.has_key());
}

// ---- flags --------------------------------------------------------------------------------

struct FlagCase {
  std::string args;
  std::string env_agent;
  std::string agent;
  OutputFormat output;
  std::chrono::milliseconds timeout;
};

TEST(ParseArgsTest, Flags) {
  using std::chrono::milliseconds;
  const FlagCase kCases[] = {
      {"list", "", kDefaultAgent, OutputFormat::kTable, kDefaultTimeout},
      {"list", "10.0.0.1:9000", "10.0.0.1:9000", OutputFormat::kTable, kDefaultTimeout},
      {"--agent unix:/run/a.sock list", "10.0.0.1:9000", "unix:/run/a.sock", OutputFormat::kTable,
       kDefaultTimeout},
      {"--agent=h:1 list", "", "h:1", OutputFormat::kTable, kDefaultTimeout},
      {"-o json list", "", kDefaultAgent, OutputFormat::kJson, kDefaultTimeout},
      {"-ojson list", "", kDefaultAgent, OutputFormat::kJson, kDefaultTimeout},
      {"--output=json list", "", kDefaultAgent, OutputFormat::kJson, kDefaultTimeout},
      {"--output json -o table list", "", kDefaultAgent, OutputFormat::kTable, kDefaultTimeout},
      {"list -o json", "", kDefaultAgent, OutputFormat::kJson, kDefaultTimeout},
      {"get t1 --agent h:2", "", "h:2", OutputFormat::kTable, kDefaultTimeout},
      {"--timeout 3 list", "", kDefaultAgent, OutputFormat::kTable, milliseconds(3000)},
      {"--timeout=0.25 list", "", kDefaultAgent, OutputFormat::kTable, milliseconds(250)},
      {"--timeout=0.0001 list", "", kDefaultAgent, OutputFormat::kTable, milliseconds(1)},
  };
  for (const FlagCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), c.env_agent);
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->agent, c.agent);
    EXPECT_EQ(command->output, c.output);
    EXPECT_EQ(command->timeout.count(), c.timeout.count());
  }
}

// ---- bad commands -------------------------------------------------------------------------

struct BadCase {
  std::string args;
  std::string error;  // expected substring of the message
};

TEST(ParseArgsTest, BadCommands) {
  const BadCase kCases[] = {
      {"", "missing command"},
      {"bogus", "unknown command 'bogus'"},
      {"--bogus list", "unknown flag '--bogus'"},
      {"list --bogus=1", "unknown flag '--bogus'"},
      {"list -x", "unknown flag '-x'"},
      {"list extra", "list: unexpected argument 'extra'"},
      {"ls extra", "ls: unexpected argument 'extra'"},
      {"get", "get: missing NAME"},
      {"get a b", "get: unexpected argument 'b'"},
      {"show a b", "show: unexpected argument 'b'"},
      {"delete", "delete: missing NAME"},
      {"del a b", "del: unexpected argument 'b'"},
      {"--agent", "flag --agent needs a value"},
      {"--agent= list", "--agent needs a non-empty address"},
      {"-o yaml list", "invalid output format 'yaml'"},
      {"list -o", "flag -o needs a value"},
      {"--timeout=0 list", "invalid timeout '0'"},
      {"--timeout=-1 list", "invalid timeout '-1'"},
      {"--timeout=abc list", "invalid timeout 'abc'"},
      {"--timeout=nan list", "invalid timeout 'nan'"},
      {"--timeout=1e9 list", "invalid timeout '1e9'"},
      {"create", "create: missing NAME"},
      {"create mode gre remote 192.0.2.2", "create: missing NAME before 'mode'"},
      {"create t1 remote 192.0.2.2", "create: missing 'mode'"},
      {"add t1 mode gre", "add: missing 'remote'"},
      {"create t1 mode gre remote", "create: 'remote' needs a value"},
      {"create t1 mode bogus remote 192.0.2.2", "create: unknown mode 'bogus'"},
      {"create t1 mode GRE remote 192.0.2.2", "create: unknown mode 'GRE'"},
      {"create t1 mode gre remote 192.0.2.2 ttl 64", "create: unknown argument 'ttl'"},
      {"create t1 mode gre remote 192.0.2.2 mode ipip", "create: 'mode' given twice"},
      {"create t1 mode gre remote 192.0.2.2 remote 192.0.2.3", "create: 'remote' given twice"},
      {"create t1 mode gre remote 192.0.2.2 key 1 key 2", "create: 'key' given twice"},
      {"create t1 mode gre remote 192.0.2.2 key 4294967296", "create: invalid key '4294967296'"},
      {"create t1 mode gre remote 192.0.2.2 key -1", "create: invalid key '-1'"},
      {"create t1 mode gre remote 192.0.2.2 key five", "create: invalid key 'five'"},
      {"create t1 mode gre remote 192.0.2.2 key 1.2.3", "create: invalid key '1.2.3'"},
      {"create t1 mode gre remote 192.0.2.2 key 1.2.3.256", "create: invalid key '1.2.3.256'"},
      {"create t1 mode gre remote 192.0.2.2 key 1.2..4", "create: invalid key '1.2..4'"},
      {"create t1 mode gre remote 192.0.2.2 key 0x", "create: invalid key '0x'"},
      {"create t1 mode gre remote 192.0.2.2 key 0x100000000", "create: invalid key '0x100000000'"},
      {"create t1 mode gre remote 192.0.2.2 mtu 67", "create: invalid mtu '67'"},
      {"create t1 mode gre remote 192.0.2.2 mtu 0", "create: invalid mtu '0'"},
      {"create t1 mode gre remote 192.0.2.2 mtu 65536", "create: invalid mtu '65536'"},
      {"create t1 mode gre remote 192.0.2.2 mtu 1500x", "create: invalid mtu '1500x'"},
      {"create t1 mode gre remote 192.0.2.2 mtu -5", "create: invalid mtu '-5'"},
      {"create t1 mode gre remote 192.0.2.2 mtu +1400", "create: invalid mtu '+1400'"},
      {"create t1 mode gre remote 192.0.2.2 -x", "unknown flag '-x'"},
  };
  for (const BadCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_FALSE(command.ok()) << "parsed as verb " << static_cast<int>(command->verb);
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(command.status().message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(command.status().message()), Not(HasSubstr("\n")));
  }
}

TEST(ParseArgsTest, EmptyValuesAreRejected) {
  absl::StatusOr<Command> command = ParseArgs({"create", "t1", "mode", "gre", "remote", ""}, "");
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("empty value for 'remote'"));
  command = ParseArgs({"get", ""}, "");
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("get: empty NAME"));
}

// ---- mode names ---------------------------------------------------------------------------

TEST(ModeTest, EveryModeRoundTrips) {
  const google::protobuf::EnumDescriptor* modes = v1::TunnelMode_descriptor();
  for (int i = 0; i < modes->value_count(); ++i) {
    auto mode = static_cast<v1::TunnelMode>(modes->value(i)->number());
    if (mode == v1::TUNNEL_MODE_UNSPECIFIED) continue;
    SCOPED_TRACE(modes->value(i)->name());
    absl::StatusOr<v1::TunnelMode> parsed = ParseMode(ModeName(mode));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, mode);
    // The usage text lists every mode.
    EXPECT_THAT(Usage(), HasSubstr(ModeName(mode)));
  }
}

TEST(ModeTest, Names) {
  EXPECT_EQ(ModeName(v1::TUNNEL_MODE_GRE), "gre");
  EXPECT_EQ(ModeName(v1::TUNNEL_MODE_IPIP), "ipip");
  EXPECT_EQ(ModeName(v1::TUNNEL_MODE_IP6GRETAP), "ip6gretap");
  EXPECT_EQ(ModeName(v1::TUNNEL_MODE_UNSPECIFIED), "unspecified");
  EXPECT_EQ(ModeName(static_cast<v1::TunnelMode>(42)), "42");
  EXPECT_EQ(StateName(v1::OPER_STATE_UP), "up");
  EXPECT_EQ(StateName(v1::OPER_STATE_DOWN), "down");
  EXPECT_EQ(StateName(v1::OPER_STATE_ERROR), "error");
  EXPECT_EQ(StateName(v1::OPER_STATE_UNSPECIFIED), "unknown");
}

// ---- output -------------------------------------------------------------------------------

v1::ListTunnelsResponse SampleList() {
  v1::ListTunnelsResponse response;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        tunnels {
          name: "gre1"
          mode: TUNNEL_MODE_GRE
          local: "192.0.2.1"
          remote: "192.0.2.2"
          key: 5
          addresses: "10.0.0.1/30"
          status {
            state: OPER_STATE_UP
            ifindex: 7
            mtu: 1472
            counters { rx_packets: 12 tx_packets: 345678 tx_bytes: 99 }
          }
        }
        tunnels {
          name: "ipip-long-name"
          mode: TUNNEL_MODE_IPIP
          remote: "198.51.100.20"
          mtu: 1400
          status { state: OPER_STATE_ERROR reason: "device\ngone" }
        }
      )pb",
      &response));
  return response;
}

TEST(OutputTest, TableHasAlignedColumns) {
  const std::string want =
      "NAME            MODE  LOCAL      REMOTE         KEY  MTU   STATE  IFINDEX  RX_PKTS  "
      "TX_PKTS\n"
      "gre1            gre   192.0.2.1  192.0.2.2      5    1472  up     7        12       "
      "345678\n"
      "ipip-long-name  ipip  any        198.51.100.20  -    1400  error  -        0        "
      "0\n";
  EXPECT_EQ(FormatTunnelTable(SampleList()), want);
}

TEST(OutputTest, EmptyTableHasHeaderOnly) {
  EXPECT_EQ(FormatTunnelTable(v1::ListTunnelsResponse()),
            "NAME  MODE  LOCAL  REMOTE  KEY  MTU  STATE  IFINDEX  RX_PKTS  TX_PKTS\n");
}

TEST(OutputTest, Detail) {
  const std::string want =
      "name: gre1\n"
      "mode: gre\n"
      "local: 192.0.2.1\n"
      "remote: 192.0.2.2\n"
      "key: 5\n"
      "mtu: 1472 (auto)\n"
      "addresses: 10.0.0.1/30\n"
      "routes: -\n"
      "state: up\n"
      "ifindex: 7\n"
      "rx_packets: 12\n"
      "rx_bytes: 0\n"
      "rx_dropped: 0\n"
      "tx_packets: 345678\n"
      "tx_bytes: 99\n"
      "tx_dropped: 0\n";
  EXPECT_EQ(FormatTunnelDetail(SampleList().tunnels(0)), want);
}

TEST(OutputTest, DetailShowsReasonOnOneLine) {
  std::string detail = FormatTunnelDetail(SampleList().tunnels(1));
  EXPECT_THAT(detail, HasSubstr("\nlocal: any\n"));
  EXPECT_THAT(detail, HasSubstr("\nkey: -\n"));
  EXPECT_THAT(detail, HasSubstr("\nmtu: 1400\n"));
  EXPECT_THAT(detail, HasSubstr("\nstate: error\nreason: device gone\n"));
  EXPECT_THAT(detail, HasSubstr("\nifindex: -\n"));
}

TEST(OutputTest, JsonUsesCamelCaseNames) {
  absl::StatusOr<std::string> json = FormatJson(SampleList());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, StartsWith("{\n"));
  EXPECT_THAT(*json, HasSubstr("\"tunnels\": ["));
  EXPECT_THAT(*json, HasSubstr("\"mode\": \"TUNNEL_MODE_GRE\""));
  EXPECT_THAT(*json, HasSubstr("\"state\": \"OPER_STATE_UP\""));
  EXPECT_THAT(*json, HasSubstr("\"txPackets\": \"345678\""));  // 64-bit ints are strings
  EXPECT_THAT(*json, HasSubstr("\"ifindex\": 7"));
  EXPECT_THAT(*json, HasSubstr("\"key\": 5"));
  EXPECT_THAT(*json, Not(HasSubstr("tx_packets")));
  EXPECT_EQ(json->back(), '\n');
}

TEST(OutputTest, JsonOfEmpty) {
  absl::StatusOr<std::string> json = FormatJson(google::protobuf::Empty());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json, "{}\n");
}

TEST(OutputTest, RpcError) {
  EXPECT_EQ(FormatRpcError("ListTunnels", 14, "failed to connect\nto all addresses"),
            "ListTunnels: UNAVAILABLE: failed to connect to all addresses");
  EXPECT_EQ(FormatRpcError("GetTunnel", 5, "no tunnel gre9"),
            "GetTunnel: NOT_FOUND: no tunnel gre9");
  EXPECT_EQ(FormatRpcError("DeleteTunnel", 4, ""), "DeleteTunnel: DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(99), "CODE_99");
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
