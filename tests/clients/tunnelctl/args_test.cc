#include "clients/tunnelctl/args.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/tunnelctl/output.h"
#include "dataplane/tunnel_mode_info.h"
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

// `c.args` parses to its verb, name and tunnel.
void ExpectParses(const GoodCase& c) {
  SCOPED_TRACE(c.args);
  absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->verb, c.verb);
  EXPECT_EQ(command->name, c.name);
  v1::Tunnel want = TunnelFromText(c.tunnel);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
      << "got:  " << command->tunnel.ShortDebugString() << "\nwant: " << want.ShortDebugString();
}

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
      // Each mode's limits, as the agent's: sit carries IPv6 only (1280), and the largest is
      // 65535 less the encapsulation.
      {"create t1 mode sit remote 192.0.2.2 mtu 1280", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_SIT remote: "192.0.2.2" mtu: 1280)pb"},
      {"create t1 mode ipip remote 192.0.2.2 mtu 68", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IPIP remote: "192.0.2.2" mtu: 68)pb"},
      {"create t1 mode gre remote 192.0.2.2 mtu 65511", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2" mtu: 65511)pb"},
      {"create t1 mode ip6gre remote 2001:db8::2 mtu 65483", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6GRE remote: "2001:db8::2" mtu: 65483)pb"},
      {"create t1 mode ip6gretap remote 2001:db8::2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6GRETAP remote: "2001:db8::2")pb"},
      {"create t1 mode ip6tnl remote 2001:db8::2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_IP6TNL remote: "2001:db8::2")pb"},
      // Flags between keywords; a name that starts with '-' after "--".
      {"create t1 mode gre -o json remote 192.0.2.2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"create -- -t1 mode gre remote 192.0.2.2", Verb::kCreate, "-t1",
       R"pb(name: "-t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"create t1 mode gre remote 192.0.2.2 label owner=fleet label env=prod label empty=",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            labels { key: "owner" value: "fleet" }
            labels { key: "env" value: "prod" }
            labels { key: "empty" value: "" })pb"},
      // The value is split at the first '='.
      {"create t1 mode gre remote 192.0.2.2 label a=b=c", Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            labels { key: "a" value: "b=c" })pb"},
      {"create t1 mode gre remote 192.0.2.2 mtu auto", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"create t1 mode gre remote 192.0.2.2 --request-id abc", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_GRE remote: "192.0.2.2")pb"},
      {"get gre1", Verb::kGet, "gre1", ""},
      {"watch", Verb::kWatch, "", ""},
      {"info", Verb::kInfo, "", ""},
      {"apply -f t.json", Verb::kApply, "", ""},
      {"list mode gre state up", Verb::kList, "", ""},
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
      {"--version", Verb::kVersion, "", ""},
      {"version", Verb::kVersion, "", ""},
      // Like --help: wins over the rest of the line, the first of the two given counts.
      {"create t1 mode bogus --version", Verb::kVersion, "", ""},
      {"--version --help", Verb::kVersion, "", ""},
      {"-h --version", Verb::kHelp, "", ""},
      // After "--" it is a name, not a flag.
      {"get -- --version", Verb::kGet, "--version", ""},
      // Addresses as the agent reads them: IPv6, a bare address as a host prefix, /0.
      {"create t1 mode ip6gre remote fd00::2 local fd00::1 address fd00:1::1 route ::/0 "
       "route 10.0.0.0/0 route 198.18.0.0/32",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_IP6GRE
            remote: "fd00::2"
            local: "fd00::1"
            addresses: "fd00:1::1"
            routes: [ "::/0", "10.0.0.0/0", "198.18.0.0/32" ])pb"},
  };
  for (const GoodCase& c : kCases) ExpectParses(c);
}

TEST(ParseArgsTest, CreateTakesTheOptionsInIpLinkSpelling) {
  const GoodCase kCases[] = {
      {"create t1 mode gre remote 192.0.2.2 ikey 5 okey 0x6 csum iseq oseq ttl 64 tos 0x10 "
       "pmtudisc keepalive 10,5",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            input_key: 5
            output_key: 6
            checksum: true
            input_sequence: true
            output_sequence: true
            ttl: 64
            tos: 16
            pmtudisc: true
            keepalive {
              interval { seconds: 10 }
              retries: 5
            })pb"},
      {"create t1 mode gre remote 192.0.2.2 encap fou encap-sport 5000 encap-dport 6000",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            encap { type: ENCAP_TYPE_FOU sport: 5000 dport: 6000 })pb"},
      {"create t1 mode gre remote 192.0.2.2 encap fou", Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            remote: "192.0.2.2"
            encap { type: ENCAP_TYPE_FOU })pb"},
      {"create t1 mode gretap remote 192.0.2.2 icsum ocsum seq ttl inherit tos inherit "
       "nopmtudisc ignore-df",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRETAP
            remote: "192.0.2.2"
            input_checksum: true
            output_checksum: true
            sequence: true
            ttl: 0
            inherit_tos: true
            pmtudisc: false
            ignore_df: true)pb"},
      // A bare tos is decimal (ip-link would read it as hexadecimal).
      {"create t1 mode ip6gre remote 2001:db8::2 hoplimit 255 tclass 16 noignore-df "
       "keepalive 0.5",
       Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_IP6GRE
            remote: "2001:db8::2"
            ttl: 255
            tos: 16
            keepalive { interval { nanos: 500000000 } })pb"},
      {"create t1 mode ipip remote 192.0.2.2 keepalive 250ms,0", Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_IPIP
            remote: "192.0.2.2"
            keepalive { interval { nanos: 250000000 } })pb"},
      {"create t1 mode ipip remote 192.0.2.2 keepalive 3600s,255 ttl 0 tos 0", Verb::kCreate, "t1",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_IPIP
            remote: "192.0.2.2"
            ttl: 0
            keepalive {
              interval { seconds: 3600 }
              retries: 255
            })pb"},
  };
  for (const GoodCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    v1::Tunnel want = TunnelFromText(c.tunnel);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
        << "got:  " << command->tunnel.ShortDebugString() << "\nwant: " << want.ShortDebugString();
  }
  // Presence: ttl 0 and pmtudisc are set, not left to the defaults.
  absl::StatusOr<Command> inherit =
      ParseArgs(Split("create t1 mode gre remote 192.0.2.2 ttl inherit pmtudisc"), "");
  ASSERT_TRUE(inherit.ok()) << inherit.status();
  EXPECT_TRUE(inherit->tunnel.has_ttl());
  EXPECT_TRUE(inherit->tunnel.has_pmtudisc());
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

// The agent's own default listener, so that tunnelctl on the node needs no --agent.
TEST(ParseArgsTest, DefaultAgentIsTheAgentsUnixSocket) {
  absl::StatusOr<Command> command = ParseArgs(Split("list"), Environment());
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->agent, "unix:/run/tunnel-agent/agent.sock");
  // $TUNNELCTL_AGENT replaces it, --agent replaces both.
  Environment env;
  env.agent = "unix:/tmp/other.sock";
  command = ParseArgs(Split("list"), env);
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->agent, "unix:/tmp/other.sock");
  command = ParseArgs(Split("--agent=127.0.0.1:50051 list"), env);
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->agent, "127.0.0.1:50051");
}

// A bad address is bad input found before anything is sent, as any other bad argument.
TEST(ParseArgsTest, BadAddresses) {
  struct AddressCase {
    std::string args;
    std::string error;  // expected substring of the message
  };
  const AddressCase kCases[] = {
      {"create t1 mode gre remote 300.1.1.1",
       "create: invalid remote '300.1.1.1' (want an IPv4 or IPv6 address"},
      {"create t1 mode gre remote 1.2.3", "create: invalid remote '1.2.3'"},
      {"create t1 mode gre remote 198.18.0.2/32", "create: invalid remote '198.18.0.2/32'"},
      {"create t1 mode gre remote peer.example", "create: invalid remote 'peer.example'"},
      {"create t1 mode gre remote fd00::2%eth0", "create: invalid remote 'fd00::2%eth0'"},
      {"create t1 mode gre remote 198.18.0.2 local 198.18.0.256",
       "create: invalid local '198.18.0.256'"},
      {"create t1 mode gre remote 198.18.0.2 address 10.9.0.1/33",
       "create: invalid address '10.9.0.1/33' (want ADDRESS/LENGTH"},
      {"create t1 mode gre remote 198.18.0.2 address 10.9.0.1/", "invalid address '10.9.0.1/'"},
      {"create t1 mode gre remote 198.18.0.2 address 10.9.0.1/a", "invalid address '10.9.0.1/a'"},
      {"create t1 mode gre remote 198.18.0.2 address 10.9.0.1/-1", "invalid address '10.9.0.1/-1'"},
      // iproute2 reads a leading 0 as octal: refused rather than read differently.
      {"create t1 mode gre remote 198.18.0.2 route 10.2.0.0/016", "invalid route '10.2.0.0/016'"},
      {"create t1 mode gre remote 198.18.0.2 route fd00::/129", "invalid route 'fd00::/129'"},
      {"create t1 mode gre remote 198.18.0.2 route 10.2.0.0/16/1", "invalid route '10.2.0.0/16/1'"},
      {"create t1 mode gre remote 198.18.0.2 route /16", "invalid route '/16'"},
      {"update t1 remote 10.0.0.999", "update: invalid remote '10.0.0.999'"},
      {"update t1 route 10.0.0.0/8 route default", "update: invalid route 'default'"},
  };
  for (const AddressCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_FALSE(command.ok());
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(command.status().message(), HasSubstr(c.error));
  }
  // inet_pton reads up to a NUL: text after one must not slip through.
  EXPECT_FALSE(CheckAddress("remote", absl::string_view("198.18.0.2\0junk", 15)).ok());
  EXPECT_FALSE(CheckPrefix("route", absl::string_view("10.0.0.0\0/8", 11)).ok());
  EXPECT_FALSE(CheckAddress("remote", std::string(100, '1')).ok());
  EXPECT_TRUE(CheckAddress("remote", "::ffff:198.18.0.2").ok());
  EXPECT_TRUE(CheckPrefix("route", "fd00::/128").ok());
}

TEST(VersionTest, NamesTheProgramAndTheProjectVersion) {
  EXPECT_EQ(VersionLine(), absl::StrCat("tunnelctl ", TUNNEL_AGENT_VERSION, "\n"));
  EXPECT_THAT(VersionLine(), ::testing::MatchesRegex("tunnelctl [0-9]+\\.[0-9]+\\.[0-9]+\n"));
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
      {"list extra", "list: unknown argument 'extra' (want mode, state or label)"},
      {"ls extra", "ls: unknown argument 'extra'"},
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
      {"create t1 mode gre remote 192.0.2.2 ttl 256", "create: invalid ttl '256'"},
      {"create t1 mode gre remote 192.0.2.2 ttl -1", "create: invalid ttl '-1'"},
      {"create t1 mode gre remote 192.0.2.2 ttl 64 hoplimit 5",
       "create: 'hoplimit' conflicts with 'ttl'"},
      {"create t1 mode gre remote 192.0.2.2 tos 256", "create: invalid tos '256'"},
      {"create t1 mode gre remote 192.0.2.2 tos 0x100", "create: invalid tos '0x100'"},
      {"create t1 mode gre remote 192.0.2.2 tos af11", "create: invalid tos 'af11'"},
      {"create t1 mode gre remote 192.0.2.2 ikey x", "create: invalid key 'x'"},
      {"create t1 mode gre remote 192.0.2.2 csum csum", "create: 'csum' given twice"},
      {"create t1 mode gre remote 192.0.2.2 nocsum", "create: unknown argument 'nocsum'"},
      {"create t1 mode gre remote 192.0.2.2 nokeepalive", "create: unknown argument 'nokeepalive'"},
      {"create t1 mode gre remote 192.0.2.2 pmtudisc nopmtudisc",
       "create: 'nopmtudisc' conflicts with 'pmtudisc'"},
      {"create t1 mode gre remote 192.0.2.2 keepalive", "create: 'keepalive' needs a value"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 0", "create: invalid keepalive '0'"},
      {"create t1 mode gre remote 192.0.2.2 encap gue", "create: invalid encap 'gue'"},
      {"create t1 mode gre remote 192.0.2.2 encap fou encap-dport 0",
       "create: invalid encap-dport '0'"},
      {"create t1 mode gre remote 192.0.2.2 encap fou encap-dport auto",
       "create: invalid encap-dport 'auto'"},
      {"create t1 mode gre remote 192.0.2.2 encap fou encap-sport 65536",
       "create: invalid encap-sport '65536'"},
      {"create t1 mode gre remote 192.0.2.2 encap fou encap fou", "create: 'encap' given twice"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 0.05", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 3601", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 10,256", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 10,3,1", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 10,", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive -1", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 1e1", "create: invalid keepalive"},
      {"create t1 mode gre remote 192.0.2.2 keepalive 10m", "create: invalid keepalive"},
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
      {"create t1 mode gre remote 192.0.2.2 mtu 65535",
       "create: invalid mtu '65535' for mode gre with these options (want 68-65511, or auto)"},
      {"create t1 mode gre remote 192.0.2.2 key 5 csum seq mtu 65511",
       "create: invalid mtu '65511' for mode gre with these options (want 68-65499, or auto)"},
      {"create t1 mode gre remote 192.0.2.2 okey 5 encap fou mtu 65504", "want 68-65499, or auto"},
      {"create t1 mode ip6tnl remote 2001:db8::2 mtu 65488", "(want 68-65487, or auto)"},
      {"create t1 mode sit remote 192.0.2.2 mtu 1279", "(want 1280-65515, or auto)"},
      {"update t1 mode gretap mtu 65500", "update: invalid mtu '65500' for mode gretap"},
      {"create t1 mode gre remote 192.0.2.2 mtu 1500x", "create: invalid mtu '1500x'"},
      {"create t1 mode gre remote 192.0.2.2 mtu -5", "create: invalid mtu '-5'"},
      {"create t1 mode gre remote 192.0.2.2 mtu +1400", "create: invalid mtu '+1400'"},
      {"create t1 mode gre remote 192.0.2.2 -x", "unknown flag '-x'"},
      // labels
      {"create t1 mode gre remote 192.0.2.2 label owner", "create: invalid label 'owner'"},
      {"create t1 mode gre remote 192.0.2.2 label =x", "create: invalid label '=x'"},
      {"create t1 mode gre remote 192.0.2.2 label a=1 label a=2", "create: label 'a' given twice"},
      {"create t1 mode gre remote 192.0.2.2 label", "create: 'label' needs a value"},
      // update's keywords are not create's
      {"create t1 mode gre remote 192.0.2.2 nokey", "create: unknown argument 'nokey'"},
      {"create t1 mode gre remote 192.0.2.2 noroutes", "create: unknown argument 'noroutes'"},
      {"create t1 mode gre remote 192.0.2.2 state up", "create: unknown argument 'state'"},
      // update
      {"update", "update: missing NAME"},
      {"update t1", "update: nothing to change"},
      {"update mtu 1400", "update: missing NAME before 'mtu'"},
      {"update t1 mtu", "update: 'mtu' needs a value"},
      {"update t1 mtu 10", "update: invalid mtu '10'"},
      {"update t1 mode bogus", "update: unknown mode 'bogus'"},
      {"update t1 key 1 nokey", "update: 'nokey' conflicts with 'key'"},
      {"update t1 nokey key 1", "update: 'key' conflicts with 'nokey'"},
      {"update t1 nokey nokey", "update: 'nokey' given twice"},
      {"update t1 address 10.0.0.1/30 noaddresses",
       "update: 'noaddresses' conflicts with 'address'"},
      {"update t1 noroutes route 10.2.0.0/16", "update: 'route' conflicts with 'noroutes'"},
      {"update t1 nolabels label a=b", "update: 'label' conflicts with 'nolabels'"},
      {"update t1 mtu 1400 mtu 1300", "update: 'mtu' given twice"},
      {"update t1 ttl 64 nottl", "update: 'nottl' conflicts with 'ttl'"},
      {"update t1 keepalive 10 nokeepalive", "update: 'nokeepalive' conflicts with 'keepalive'"},
      {"update t1 ikey 1 noikey", "update: 'noikey' conflicts with 'ikey'"},
      {"update t1 ignore-df noignore-df", "update: 'noignore-df' conflicts with 'ignore-df'"},
      {"update t1 state up", "update: unknown argument 'state'"},
      {"update t1 mtu 1400 --page-size 5", "update: flag --page-size does not apply"},
      {"update t1 mtu 1400 --etag", "flag --etag needs a value"},
      {"update t1 mtu 1400 --etag=", "flag --etag needs a value"},
      // delete
      {"delete t1 --prune", "delete: flag --prune does not apply"},
      {"delete t1 --request-id=", "flag --request-id needs a value"},
      {"delete t1 --request-id " + std::string(129, 'x'), "longer than 128 characters"},
      {"get t1 --etag e", "get: flag --etag does not apply"},
      {"get t1 --request-id r", "get: flag --request-id does not apply"},
      {"--etag e show t1", "show: flag --etag does not apply"},
      // list
      {"list mode", "list: 'mode' needs a value"},
      {"list mode bogus", "list: unknown mode 'bogus'"},
      {"list state sleepy", "list: unknown state 'sleepy'"},
      {"list state UP", "list: unknown state 'UP'"},
      {"list state up state down", "list: 'state' given twice"},
      {"list label a", "list: invalid label 'a'"},
      {"list label a=1 label a=2", "list: label 'a' given twice"},
      {"list remote 192.0.2.2", "list: unknown argument 'remote'"},
      {"list --page-size 0", "invalid value '0' for --page-size (want a number 1-1000)"},
      {"list --page-size 1001", "invalid value '1001' for --page-size"},
      {"list --page-size=-1", "invalid value '-1' for --page-size"},
      {"list --page-size", "flag --page-size needs a value"},
      {"list --count 1", "list: flag --count does not apply"},
      // watch
      {"watch now", "watch: unexpected argument 'now'"},
      {"watch --since", "flag --since needs a value"},
      {"watch --since=x", "invalid value 'x' for --since"},
      {"watch --since=-1", "invalid value '-1' for --since"},
      {"watch --since=18446744073709551616", "invalid value '18446744073709551616' for --since"},
      {"watch --count 0", "invalid value '0' for --count (want a number 1 or more)"},
      {"watch --count=1x", "invalid value '1x' for --count"},
      {"watch --etag e", "watch: flag --etag does not apply"},
      {"watch --dry-run", "watch: flag --dry-run does not apply"},
      // apply
      {"apply", "apply: missing -f FILE"},
      {"apply t.json", "apply: unexpected argument 't.json'"},
      {"apply -f", "flag -f needs a value"},
      {"apply --file=", "flag --file needs a value"},
      {"apply -f t.json --prune=yes", "flag --prune takes no value"},
      {"apply -f t.json --dry-run=1", "flag --dry-run takes no value"},
      {"apply -f t.json --owner", "flag --owner needs a value"},
      {"apply -f t.json --etag e", "apply: flag --etag does not apply"},
      {"list --owner me", "list: flag --owner does not apply"},
      {"create t1 mode gre remote 192.0.2.2 --prune", "create: flag --prune does not apply"},
      // info
      {"info now", "info: unexpected argument 'now'"},
      {"info --count 1", "info: flag --count does not apply"},
      // TLS and auth
      {"--tls=yes list", "flag --tls takes no value"},
      {"--tls_ca list", "missing command"},  // "list" is taken as the file
      {"--tls_ca= list", "flag --tls_ca needs a value"},
      {"--tls_cert c.pem list", "--tls_cert and --tls_key go together"},
      {"--tls_key k.pem list", "--tls_cert and --tls_key go together"},
      {"--tls_server_name list", "missing command"},
      {"--token_file= list", "flag --token_file needs a value"},
      {"list --token_file", "flag --token_file needs a value"},
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

// ---- update: fields and update_mask -------------------------------------------------------

struct UpdateCase {
  std::string args;
  std::string tunnel;  // text proto of Command::tunnel
  std::string mask;    // update_mask paths, comma-separated
};

TEST(ParseArgsTest, UpdateBuildsTheMaskFromTheKeywordsGiven) {
  const UpdateCase kCases[] = {
      {"update t1 mtu 1400", R"pb(name: "t1" mtu: 1400)pb", "mtu"},
      // mtu auto is 0, and still named in the mask.
      {"update t1 mtu auto", R"pb(name: "t1")pb", "mtu"},
      {"update t1 remote 192.0.2.9 local any", R"pb(name: "t1" remote: "192.0.2.9")pb",
       "local,remote"},
      // Paths come in field order, whatever the order on the command line.
      {"update t1 route 10.2.0.0/16 mode ipip key 7 address 10.0.0.1/30 address fd00::1/64",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_IPIP
            key: 7
            addresses: [ "10.0.0.1/30", "fd00::1/64" ]
            routes: "10.2.0.0/16")pb",
       "mode,key,addresses,routes"},
      // nokey: the key is named and unset.
      {"update t1 nokey", R"pb(name: "t1")pb", "key"},
      {"update t1 noaddresses noroutes nolabels", R"pb(name: "t1")pb", "addresses,routes,labels"},
      {"update t1 label owner=a label env=b",
       R"pb(name: "t1"
            labels { key: "owner" value: "a" }
            labels { key: "env" value: "b" })pb",
       "labels"},
      {"update t1 mtu 1400 --etag 17 --request-id r1", R"pb(name: "t1" mtu: 1400)pb", "mtu"},
      {"update t1 mode gre local 192.0.2.1 remote 192.0.2.2 key 0 mtu 9000 address 10.0.0.1/30 "
       "route 10.2.0.0/16 "
       "label k=v",
       R"pb(name: "t1"
            mode: TUNNEL_MODE_GRE
            local: "192.0.2.1"
            remote: "192.0.2.2"
            key: 0
            mtu: 9000
            addresses: "10.0.0.1/30"
            routes: "10.2.0.0/16"
            labels { key: "k" value: "v" })pb",
       "mode,local,remote,key,mtu,addresses,routes,labels"},
  };
  for (const UpdateCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, Verb::kUpdate);
    EXPECT_EQ(command->name, "t1");
    v1::Tunnel want = TunnelFromText(c.tunnel);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
        << "got:  " << command->tunnel.ShortDebugString() << "\nwant: " << want.ShortDebugString();
    EXPECT_EQ(absl::StrJoin(command->update_mask.paths(), ","), c.mask);
  }
}

TEST(ParseArgsTest, UpdateOptionsBuildTheMask) {
  const UpdateCase kCases[] = {
      {"update t1 keepalive 10,3 ikey 1 okey 2", R"pb(name: "t1"
                                                      input_key: 1
                                                      output_key: 2
                                                      keepalive {
                                                        interval { seconds: 10 }
                                                        retries: 3
                                                      })pb",
       "input_key,output_key,keepalive"},
      {"update t1 noikey nookey nottl nokeepalive", R"pb(name: "t1")pb",
       "input_key,output_key,ttl,keepalive"},
      {"update t1 csum icsum ocsum seq iseq oseq",
       R"pb(name: "t1"
            checksum: true
            input_checksum: true
            output_checksum: true
            sequence: true
            input_sequence: true
            output_sequence: true)pb",
       "checksum,input_checksum,output_checksum,sequence,input_sequence,output_sequence"},
      {"update t1 nocsum noicsum noocsum noseq noiseq nooseq", R"pb(name: "t1")pb",
       "checksum,input_checksum,output_checksum,sequence,input_sequence,output_sequence"},
      // tos names inherit_tos too: either replaces the other.
      {"update t1 tos 12", R"pb(name: "t1" tos: 12)pb", "tos,inherit_tos"},
      {"update t1 tos inherit", R"pb(name: "t1" inherit_tos: true)pb", "tos,inherit_tos"},
      {"update t1 nopmtudisc noignore-df ttl 0",
       R"pb(name: "t1" ttl: 0 pmtudisc: false ignore_df: false)pb", "ttl,pmtudisc,ignore_df"},
      {"update t1 pmtudisc ignore-df", R"pb(name: "t1" pmtudisc: true ignore_df: true)pb",
       "pmtudisc,ignore_df"},
      {"update t1 keepalive 2 mtu auto", R"pb(name: "t1"
                                              keepalive { interval { seconds: 2 } })pb",
       "mtu,keepalive"},
      {"update t1 encap fou encap-sport auto encap-dport 5555",
       R"pb(name: "t1"
            encap { type: ENCAP_TYPE_FOU dport: 5555 })pb",
       "encap"},
      {"update t1 encap none", R"pb(name: "t1"
                                    encap {})pb",
       "encap"},
      {"update t1 encap-dport 4754", R"pb(name: "t1"
                                          encap { dport: 4754 })pb",
       "encap"},
  };
  for (const UpdateCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    v1::Tunnel want = TunnelFromText(c.tunnel);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
        << "got:  " << command->tunnel.ShortDebugString() << "\nwant: " << want.ShortDebugString();
    EXPECT_EQ(absl::StrJoin(command->update_mask.paths(), ","), c.mask);
  }
  // nottl and nopmtudisc differ in presence: ttl unset (the default), pmtudisc set to false.
  absl::StatusOr<Command> command = ParseArgs(Split("update t1 nottl nopmtudisc"), "");
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_FALSE(command->tunnel.has_ttl());
  EXPECT_TRUE(command->tunnel.has_pmtudisc());
}

TEST(ParseArgsTest, UpdateKeyPresence) {
  absl::StatusOr<Command> nokey = ParseArgs(Split("update t1 nokey"), "");
  ASSERT_TRUE(nokey.ok()) << nokey.status();
  EXPECT_FALSE(nokey->tunnel.has_key());
  absl::StatusOr<Command> key0 = ParseArgs(Split("update t1 key 0"), "");
  ASSERT_TRUE(key0.ok()) << key0.status();
  EXPECT_TRUE(key0->tunnel.has_key());
}

// ---- list: filters and page size ----------------------------------------------------------

struct ListCase {
  std::string args;
  std::string request;  // text proto of Command::list
};

TEST(ParseArgsTest, ListFilters) {
  const ListCase kCases[] = {
      {"list", "page_size: 500"},
      {"ls", "page_size: 500"},
      {"show", "page_size: 500"},
      {"list mode gre", "page_size: 500 mode: TUNNEL_MODE_GRE"},
      {"list state up", "page_size: 500 state: OPER_STATE_UP"},
      {"list state down", "page_size: 500 state: OPER_STATE_DOWN"},
      {"list state error", "page_size: 500 state: OPER_STATE_ERROR"},
      {"ls label owner=fleet label env=",
       R"pb(page_size: 500
            labels { key: "owner" value: "fleet" }
            labels { key: "env" value: "" })pb"},
      {"list label owner=a mode ipip state up --page-size 7",
       R"pb(page_size: 7
            mode: TUNNEL_MODE_IPIP
            state: OPER_STATE_UP
            labels { key: "owner" value: "a" })pb"},
      {"--page-size=1000 list", "page_size: 1000"},
      {"list --page_size 1", "page_size: 1"},
  };
  for (const ListCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, Verb::kList);
    v1::ListTunnelsRequest want;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.request, &want));
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->list, want))
        << "got:  " << command->list.ShortDebugString() << "\nwant: " << want.ShortDebugString();
    // Filters go to the request, not to the tunnel.
    EXPECT_EQ(command->tunnel.ByteSizeLong(), 0u);
  }
}

// ---- flags of delete, watch, apply and the mutating calls ---------------------------------

struct VerbFlagCase {
  std::string args;
  Verb verb;
  std::string etag;
  std::string request_id;
  uint64_t since;
  std::optional<uint64_t> count;
  std::string file;
  bool prune;
  bool dry_run;
  std::string owner;
};

TEST(ParseArgsTest, VerbFlags) {
  const VerbFlagCase kCases[] = {
      {"delete t1", Verb::kDelete, "", "", 0, std::nullopt, "", false, false, ""},
      {"delete t1 --etag e1", Verb::kDelete, "e1", "", 0, std::nullopt, "", false, false, ""},
      {"del --etag=e1 --request-id=r1 t1", Verb::kDelete, "e1", "r1", 0, std::nullopt, "", false,
       false, ""},
      {"--request_id r2 delete t1", Verb::kDelete, "", "r2", 0, std::nullopt, "", false, false, ""},
      {"update t1 mtu 1400 --etag=e2", Verb::kUpdate, "e2", "", 0, std::nullopt, "", false, false,
       ""},
      {"watch", Verb::kWatch, "", "", 0, std::nullopt, "", false, false, ""},
      {"watch --since 42", Verb::kWatch, "", "", 42, std::nullopt, "", false, false, ""},
      {"watch --since=18446744073709551615 --count=3", Verb::kWatch, "", "", 18446744073709551615u,
       3, "", false, false, ""},
      {"watch --since 0 --count 1", Verb::kWatch, "", "", 0, 1, "", false, false, ""},
      {"apply -f t.json", Verb::kApply, "", "", 0, std::nullopt, "t.json", false, false, ""},
      {"apply -f -", Verb::kApply, "", "", 0, std::nullopt, "-", false, false, ""},
      {"apply -ft.json --prune --dry-run --owner fleet --request-id r3", Verb::kApply, "", "r3", 0,
       std::nullopt, "t.json", true, true, "fleet"},
      {"apply --file=t.json --dry_run --owner=o", Verb::kApply, "", "", 0, std::nullopt, "t.json",
       false, true, "o"},
      {"-f t.json apply", Verb::kApply, "", "", 0, std::nullopt, "t.json", false, false, ""},
  };
  for (const VerbFlagCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, c.verb);
    EXPECT_EQ(command->etag, c.etag);
    EXPECT_EQ(command->request_id, c.request_id);
    EXPECT_EQ(command->since_revision, c.since);
    EXPECT_EQ(command->count, c.count);
    EXPECT_EQ(command->apply_file, c.file);
    EXPECT_EQ(command->prune, c.prune);
    EXPECT_EQ(command->dry_run, c.dry_run);
    EXPECT_EQ(command->owner, c.owner);
  }
}

// ---- TLS and auth -------------------------------------------------------------------------

struct SecurityCase {
  std::string args;
  std::string env_token;
  bool tls;
  std::string ca, cert, key, server_name;
  std::string token_file;
};

TEST(ParseArgsTest, TlsAndTokenFlags) {
  const SecurityCase kCases[] = {
      {"list", "", false, "", "", "", "", ""},
      {"--tls list", "", true, "", "", "", "", ""},
      {"--tls_ca ca.pem list", "", true, "ca.pem", "", "", "", ""},
      {"list --tls-ca=ca.pem", "", true, "ca.pem", "", "", "", ""},
      {"--tls_cert c.pem --tls_key k.pem info", "", true, "", "c.pem", "k.pem", "", ""},
      {"--tls --tls_server_name agent.example info", "", true, "", "", "", "agent.example", ""},
      {"--tls_server_name=a info", "", true, "", "", "", "a", ""},
      {"--token_file t.txt list", "", false, "", "", "", "", "t.txt"},
      {"--token-file=t.txt watch", "envtok", false, "", "", "", "", "t.txt"},
      {"list", "envtok", false, "", "", "", "", ""},
  };
  for (const SecurityCase& c : kCases) {
    SCOPED_TRACE(c.args);
    Environment env;
    env.token = c.env_token;
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), env);
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->tls.enabled, c.tls);
    EXPECT_EQ(command->tls.ca_file, c.ca);
    EXPECT_EQ(command->tls.cert_file, c.cert);
    EXPECT_EQ(command->tls.key_file, c.key);
    EXPECT_EQ(command->tls.server_name, c.server_name);
    EXPECT_EQ(command->token_file, c.token_file);
    EXPECT_EQ(command->env_token, c.env_token);
  }
}

TEST(ParseArgsTest, EnvironmentAgent) {
  Environment env;
  env.agent = "unix:/run/tunnel-agent.sock";
  absl::StatusOr<Command> command = ParseArgs(Split("info"), env);
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->agent, "unix:/run/tunnel-agent.sock");
  command = ParseArgs(Split("--agent h:1 info"), env);
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->agent, "h:1");
}

TEST(ParseArgsTest, LabelParsing) {
  absl::StatusOr<std::pair<std::string, std::string>> label = ParseLabel("a.b/c=d=e");
  ASSERT_TRUE(label.ok()) << label.status();
  EXPECT_EQ(label->first, "a.b/c");
  EXPECT_EQ(label->second, "d=e");
  EXPECT_FALSE(ParseLabel("").ok());
  EXPECT_FALSE(ParseLabel("=v").ok());
  EXPECT_FALSE(ParseLabel("k").ok());
}

TEST(UsageTest, NamesEveryVerbAndFlag) {
  const std::string usage = Usage();
  for (const char* word : {"create",
                           "get",
                           "list",
                           "update",
                           "delete",
                           "watch",
                           "apply",
                           "info",
                           "label KEY=VALUE",
                           "nokey",
                           "noaddresses",
                           "noroutes",
                           "nolabels",
                           "state up|down|error",
                           "--etag",
                           "--request-id",
                           "--page-size",
                           "--since",
                           "--count",
                           "-f, --file",
                           "--prune",
                           "--dry-run",
                           "--owner",
                           "--tls ",
                           "--tls_ca",
                           "--tls_cert",
                           "--tls_key",
                           "--tls_server_name",
                           "--token_file",
                           "$TUNNELCTL_TOKEN",
                           "$TUNNELCTL_AGENT",
                           "unix:/run/tunnel-agent/agent.sock",
                           "version",
                           "--version",
                           "Exit status",
                           "1  bad input",
                           "2  the agent refused"}) {
    EXPECT_THAT(usage, HasSubstr(word));
  }
  // Fits a terminal.
  for (absl::string_view line : absl::StrSplit(usage, '\n')) {
    EXPECT_LE(line.size(), 92u) << line;
  }
}

// The help is made from the parser's own keyword table: every keyword it takes is in it,
// as a whole word, and its MTU figures are the agent's rule's.
TEST(UsageTest, NamesEveryKeywordTheParserTakes) {
  const std::string usage = Usage();
  EXPECT_THAT(usage, HasSubstr(KeywordHelp()));
  EXPECT_THAT(usage, HasSubstr(PeerKeywordHelp()));
  const std::vector<std::string> keywords = HelpKeywords();
  EXPECT_GT(keywords.size(), 40u);
  for (const std::string& word : keywords) {
    const std::regex whole(absl::StrCat("(^|[^a-z-])", word, "([^a-z-]|$)"));
    EXPECT_TRUE(std::regex_search(usage, whole)) << word << " is not in the help";
  }
  const dataplane::MtuRange gre = dataplane::DeviceMtuRange(dataplane::TunnelMode::kGre);
  const std::string flowed = std::regex_replace(usage, std::regex("\\s+"), " ");
  EXPECT_THAT(flowed, HasSubstr(absl::StrCat("(gre: ", gre.max, ",")));
  // The parser refuses what the help says is too much.
  EXPECT_TRUE(
      ParseArgs(Split(absl::StrCat("create t1 mode gre remote 198.18.0.2 mtu ", gre.max)), "")
          .ok());
  EXPECT_FALSE(
      ParseArgs(Split(absl::StrCat("create t1 mode gre remote 198.18.0.2 mtu ", gre.max + 1)), "")
          .ok());
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

TEST(OutputTest, TableShowsPathMtuPeerAndOptionsWhenAnyTunnelHasThem) {
  v1::ListTunnelsResponse list = SampleList();
  v1::Tunnel* gre = list.mutable_tunnels(0);
  gre->set_input_key(6);
  gre->set_checksum(true);
  gre->set_ttl(64);
  gre->mutable_keepalive()->mutable_interval()->set_seconds(10);
  gre->mutable_status()->set_path_mtu(1472);
  gre->mutable_status()->mutable_keepalive()->set_peer_alive(false);
  const std::string want =
      "NAME            MODE  LOCAL      REMOTE         KEY  MTU   STATE  IFINDEX  RX_PKTS  "
      "TX_PKTS  PATH_MTU  PEER  OPTIONS\n"
      "gre1            gre   192.0.2.1  192.0.2.2      5    1472  up     7        12       "
      "345678   1472      dead  ikey=6,icsum,ocsum,ttl=64,keepalive=10s,3\n"
      "ipip-long-name  ipip  any        198.51.100.20  -    1400  error  -        0        "
      "0        -         -     -\n";
  EXPECT_EQ(FormatTunnelTable(list), want);
}

TEST(OutputTest, DetailShowsOptionsAsIpLinkDoes) {
  v1::Tunnel t = SampleList().tunnels(0);
  t.set_checksum(true);
  t.set_sequence(true);
  t.set_ttl(0);
  EXPECT_THAT(FormatTunnelDetail(t),
              HasSubstr("\noptions: ikey 5 okey 5 icsum ocsum iseq oseq ttl inherit pmtudisc\n"));
  t.set_output_key(9);
  t.clear_key();
  t.set_sequence(false);
  t.set_input_sequence(true);
  t.set_ttl(64);
  t.set_tos(0x28);
  t.set_pmtudisc(false);
  t.set_ignore_df(true);
  t.mutable_keepalive()->mutable_interval()->set_nanos(500000000);
  t.mutable_keepalive()->set_retries(7);
  EXPECT_THAT(FormatTunnelDetail(t),
              HasSubstr("\noptions: okey 9 icsum ocsum iseq ttl 64 tos 0x28 nopmtudisc ignore-df "
                        "keepalive 0.5s,7\n"));
  // IPv6 underlays: hop limit and traffic class, 64 by default, no DF.
  v1::Tunnel ip6;
  ip6.set_mode(v1::TUNNEL_MODE_IP6TNL);
  ip6.set_inherit_tos(true);
  EXPECT_THAT(FormatTunnelDetail(ip6), HasSubstr("\noptions: hoplimit 64 tclass inherit\n"));
  // ipip has no GRE options to show, even when fields say otherwise.
  v1::Tunnel ipip;
  ipip.set_mode(v1::TUNNEL_MODE_IPIP);
  ipip.set_key(3);
  EXPECT_THAT(FormatTunnelDetail(ipip), HasSubstr("\noptions: ttl inherit pmtudisc\n"));
}

TEST(OutputTest, DetailShowsPathMtuAndKeepaliveStatus) {
  v1::Tunnel t = SampleList().tunnels(0);
  EXPECT_THAT(FormatTunnelDetail(t), HasSubstr("\ntx_dropped: 0\npath_mtu: -\netag: -\n"));
  t.mutable_status()->set_path_mtu(1436);
  v1::KeepaliveStatus* k = t.mutable_status()->mutable_keepalive();
  k->set_peer_alive(true);
  k->set_sent(9);
  k->set_replies(8);
  k->set_answered(4);
  k->mutable_last_reply_time()->set_seconds(1700000000);
  EXPECT_THAT(FormatTunnelDetail(t), HasSubstr("\npath_mtu: 1436\n"
                                               "keepalive_peer: alive\n"
                                               "keepalive_sent: 9\n"
                                               "keepalive_replies: 8\n"
                                               "keepalive_answered: 4\n"
                                               "keepalive_last_reply: 2023-11-14T22:13:20Z\n"
                                               "etag: -\n"));
  k->clear_last_reply_time();
  k->set_peer_alive(false);
  EXPECT_THAT(FormatTunnelDetail(t), HasSubstr("\nkeepalive_peer: dead\n"));
  EXPECT_THAT(FormatTunnelDetail(t), HasSubstr("\nkeepalive_last_reply: -\n"));
}

TEST(OutputTest, JsonCarriesTheOptionsAndStatus) {
  v1::Tunnel t = SampleList().tunnels(0);
  t.set_input_key(0);
  t.set_pmtudisc(false);
  t.mutable_keepalive()->mutable_interval()->set_seconds(10);
  t.mutable_status()->set_path_mtu(1472);
  t.mutable_status()->mutable_keepalive()->set_peer_alive(true);
  absl::StatusOr<std::string> json = FormatJsonLine(t);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, HasSubstr("\"inputKey\":0"));
  EXPECT_THAT(*json, HasSubstr("\"pmtudisc\":false"));
  EXPECT_THAT(*json, HasSubstr("\"keepalive\":{\"interval\":\"10s\"}"));
  EXPECT_THAT(*json, HasSubstr("\"pathMtu\":1472"));
  EXPECT_THAT(*json, HasSubstr("\"keepalive\":{\"peerAlive\":true}"));
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
      "options: ikey 5 okey 5 ttl inherit pmtudisc\n"
      "addresses: 10.0.0.1/30\n"
      "routes: -\n"
      "labels: -\n"
      "state: up\n"
      "ifindex: 7\n"
      "rx_packets: 12\n"
      "rx_bytes: 0\n"
      "rx_dropped: 0\n"
      "tx_packets: 345678\n"
      "tx_bytes: 99\n"
      "tx_dropped: 0\n"
      "path_mtu: -\n"
      "etag: -\n"
      "create_time: -\n"
      "update_time: -\n";
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

// ---- multipoint tunnels -------------------------------------------------------------------

TEST(ParseArgsTest, MultipointTunnels) {
  absl::StatusOr<Command> command =
      ParseArgs(Split("create mp1 mode gre local 192.0.2.1 key 7 multipoint"), "");
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->verb, Verb::kCreate);
  v1::Tunnel want = TunnelFromText(
      R"pb(name: "mp1" mode: TUNNEL_MODE_GRE local: "192.0.2.1" key: 7 multipoint: true)pb");
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want))
      << command->tunnel.ShortDebugString();

  const UpdateCase kUpdates[] = {
      // Turning multipoint on clears the remote, which a multipoint tunnel must not have.
      {"update mp1 multipoint", R"pb(name: "mp1" multipoint: true)pb", "remote,multipoint"},
      {"update mp1 nomultipoint remote 192.0.2.2", R"pb(name: "mp1" remote: "192.0.2.2")pb",
       "remote,multipoint"},
      {"update mp1 nomultipoint", R"pb(name: "mp1")pb", "multipoint"},
      {"update mp1 mtu 1400 multipoint", R"pb(name: "mp1" mtu: 1400 multipoint: true)pb",
       "remote,mtu,multipoint"},
  };
  for (const UpdateCase& c : kUpdates) {
    SCOPED_TRACE(c.args);
    command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, Verb::kUpdate);
    v1::Tunnel want_update = TunnelFromText(c.tunnel);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->tunnel, want_update))
        << "got:  " << command->tunnel.ShortDebugString()
        << "\nwant: " << want_update.ShortDebugString();
    EXPECT_EQ(absl::StrJoin(command->update_mask.paths(), ","), c.mask);
  }

  const BadCase kBad[] = {
      {"create mp1 mode gre multipoint remote 192.0.2.2",
       "create: 'remote' conflicts with 'multipoint'"},
      {"create mp1 mode gre", "create: missing 'remote' (or 'multipoint')"},
      {"create mp1 mode gre multipoint multipoint", "create: 'multipoint' given twice"},
      {"create mp1 mode gre multipoint nomultipoint", "create: unknown argument 'nomultipoint'"},
      {"update mp1 multipoint remote 192.0.2.2", "update: 'remote' conflicts with 'multipoint'"},
      {"update mp1 multipoint nomultipoint", "update: 'nomultipoint' conflicts with 'multipoint'"},
      {"create mp1 mode gre multipoint on", "create: unknown argument 'on'"},
  };
  for (const BadCase& c : kBad) {
    SCOPED_TRACE(c.args);
    command = ParseArgs(Split(c.args), "");
    ASSERT_FALSE(command.ok());
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(command.status().message()), HasSubstr(c.error));
  }
}

// ---- peers --------------------------------------------------------------------------------

struct PeerCase {
  std::string args;  // split on spaces
  Verb verb;
  std::string tunnel;
  std::string peer;  // text proto of Command::peer
  std::string mask;  // update_mask paths, comma-separated
};

TEST(ParseArgsTest, PeerCommands) {
  const PeerCase kCases[] = {
      {"peer add mp1 site-b underlay 198.18.0.2", Verb::kPeerCreate, "mp1",
       R"pb(name: "site-b" underlay: "198.18.0.2")pb", ""},
      {"peer create mp1 site_b.2 underlay fd00::2 key 0.0.0.9 allowed 10.1.0.0/16,10.2.0.0/16 "
       "allowed fd10::/64 allowed 10.3.0.9 keepalive 500ms retries 5 label owner=me label env=",
       Verb::kPeerCreate, "mp1",
       R"pb(name: "site_b.2"
            underlay: "fd00::2"
            key: 9
            allowed_prefixes: [ "10.1.0.0/16", "10.2.0.0/16", "fd10::/64", "10.3.0.9" ]
            keepalive {
              interval { nanos: 500000000 }
              retries: 5
            }
            labels { key: "owner" value: "me" }
            labels { key: "env" value: "" })pb",
       ""},
      // retries before keepalive, and keepalive's own form.
      {"peer add mp1 p retries 2 underlay 198.18.0.2 keepalive 10", Verb::kPeerCreate, "mp1",
       R"pb(name: "p"
            underlay: "198.18.0.2"
            keepalive {
              interval { seconds: 10 }
              retries: 2
            })pb",
       ""},
      {"peer add mp1 p underlay 198.18.0.2 keepalive 10s,4 key 0", Verb::kPeerCreate, "mp1",
       R"pb(name: "p"
            underlay: "198.18.0.2"
            key: 0
            keepalive {
              interval { seconds: 10 }
              retries: 4
            })pb",
       ""},
      {"peer get mp1 p", Verb::kPeerGet, "mp1", R"pb(name: "p")pb", ""},
      {"peer show mp1 p", Verb::kPeerGet, "mp1", R"pb(name: "p")pb", ""},
      {"peer list mp1", Verb::kPeerList, "mp1", "", ""},
      {"peer ls mp1 --page-size 3", Verb::kPeerList, "mp1", "", ""},
      {"peer delete mp1 p --etag e1", Verb::kPeerDelete, "mp1", R"pb(name: "p")pb", ""},
      {"peer del mp1 p", Verb::kPeerDelete, "mp1", R"pb(name: "p")pb", ""},
      {"peer apply mp1 -f peers.json", Verb::kPeerApply, "mp1", "", ""},
      // update: the mask in Peer's field order, whatever the order given.
      {"peer update mp1 p label a=b allowed 10.1.0.0/16 underlay 198.18.0.3", Verb::kPeerUpdate,
       "mp1",
       R"pb(name: "p"
            underlay: "198.18.0.3"
            allowed_prefixes: "10.1.0.0/16"
            labels { key: "a" value: "b" })pb",
       "underlay,allowed_prefixes,labels"},
      {"peer update mp1 p nokey noallowed nokeepalive nolabels", Verb::kPeerUpdate, "mp1",
       R"pb(name: "p")pb", "key,allowed_prefixes,keepalive,labels"},
      {"peer update mp1 p key 5 keepalive 1 retries 0 --etag e2 --request-id r1", Verb::kPeerUpdate,
       "mp1",
       R"pb(name: "p"
            key: 5
            keepalive { interval { seconds: 1 } })pb",
       "key,keepalive"},
  };
  for (const PeerCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, c.verb);
    EXPECT_TRUE(IsPeerVerb(command->verb));
    EXPECT_EQ(command->name, c.tunnel);
    v1::Peer want;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.peer, &want));
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(command->peer, want))
        << "got:  " << command->peer.ShortDebugString() << "\nwant: " << want.ShortDebugString();
    EXPECT_EQ(absl::StrJoin(command->update_mask.paths(), ","), c.mask);
    // Peer keywords never touch the tunnel.
    EXPECT_EQ(command->tunnel.ByteSizeLong(), 0u);
  }
  EXPECT_FALSE(IsPeerVerb(Verb::kCreate));
  EXPECT_FALSE(IsPeerVerb(Verb::kApply));
}

TEST(ParseArgsTest, PeerFlags) {
  const VerbFlagCase kCases[] = {
      {"peer delete mp1 p --etag e1 --request-id r1", Verb::kPeerDelete, "e1", "r1", 0,
       std::nullopt, "", false, false, ""},
      {"peer update mp1 p key 1 --etag=e2", Verb::kPeerUpdate, "e2", "", 0, std::nullopt, "", false,
       false, ""},
      {"--request-id r2 peer add mp1 p underlay 198.18.0.2", Verb::kPeerCreate, "", "r2", 0,
       std::nullopt, "", false, false, ""},
      {"peer apply mp1 -f - --prune --dry-run --owner fleet --request-id r3", Verb::kPeerApply, "",
       "r3", 0, std::nullopt, "-", true, true, "fleet"},
      {"-f p.json peer apply --owner=o mp1", Verb::kPeerApply, "", "", 0, std::nullopt, "p.json",
       false, false, "o"},
  };
  for (const VerbFlagCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->verb, c.verb);
    EXPECT_EQ(command->etag, c.etag);
    EXPECT_EQ(command->request_id, c.request_id);
    EXPECT_EQ(command->apply_file, c.file);
    EXPECT_EQ(command->prune, c.prune);
    EXPECT_EQ(command->dry_run, c.dry_run);
    EXPECT_EQ(command->owner, c.owner);
  }
  absl::StatusOr<Command> command = ParseArgs(Split("peer list mp1 --page-size 7"), "");
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->list.page_size(), 7);
  command = ParseArgs(Split("peer list mp1"), "");
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->list.page_size(), kDefaultPageSize);
}

TEST(ParseArgsTest, BadPeerCommands) {
  const BadCase kCases[] = {
      {"peer", "peer: missing command (want add, get, list, update, delete or apply)"},
      {"peer bogus mp1", "peer: unknown command 'bogus' (want add, get, list, update, delete"},
      {"peer add", "peer add: missing TUNNEL"},
      {"peer add mp1", "peer add: missing PEER"},
      {"peer add underlay 198.18.0.2", "peer add: missing TUNNEL and PEER before 'underlay'"},
      {"peer add mp1 underlay 198.18.0.2", "peer add: missing PEER before 'underlay'"},
      {"peer add mp1 p", "peer add: missing 'underlay'"},
      {"peer add mp1 p key 5", "peer add: missing 'underlay'"},
      {"peer add mp1 p underlay", "peer add: 'underlay' needs a value"},
      {"peer add mp1 p underlay 198.18.0.300", "peer add: invalid underlay '198.18.0.300'"},
      {"peer add mp1 p underlay 198.18.0.0/24", "peer add: invalid underlay '198.18.0.0/24'"},
      {"peer add mp1 p underlay 198.18.0.2 underlay 198.18.0.3",
       "peer add: 'underlay' given twice"},
      {"peer add mp1 p underlay 198.18.0.2 key 4294967296", "peer add: invalid key '4294967296'"},
      {"peer add mp1 p underlay 198.18.0.2 nokey", "peer add: unknown argument 'nokey'"},
      {"peer add mp1 p underlay 198.18.0.2 mode gre",
       "peer add: unknown argument 'mode' (want "
       "underlay, key, allowed, keepalive, retries "
       "or label)"},
      {"peer add mp1 p underlay 198.18.0.2 allowed 10.1.0.1/16",
       "peer add: invalid allowed prefix '10.1.0.1/16' (host bits set; want 10.1.0.0/16)"},
      {"peer add mp1 p underlay 198.18.0.2 allowed fd10::1/64",
       "invalid allowed prefix 'fd10::1/64' (host bits set; want fd10::/64)"},
      {"peer add mp1 p underlay 198.18.0.2 allowed 10.1.0.0/33",
       "peer add: invalid allowed prefix '10.1.0.0/33' (want ADDRESS/LENGTH"},
      {"peer add mp1 p underlay 198.18.0.2 allowed 10.1.0.0/16,", "invalid allowed prefix ''"},
      {"peer add mp1 p underlay 198.18.0.2 allowed 10.1.0.0/16,,10.2.0.0/16",
       "invalid allowed prefix ''"},
      {"peer add mp1 p underlay 198.18.0.2 keepalive 0", "peer add: invalid keepalive '0'"},
      {"peer add mp1 p underlay 198.18.0.2 keepalive 5m", "peer add: invalid keepalive '5m'"},
      {"peer add mp1 p underlay 198.18.0.2 retries 3",
       "peer add: 'retries' needs 'keepalive INTERVAL'"},
      {"peer add mp1 p underlay 198.18.0.2 keepalive 10 retries 256",
       "peer add: invalid retries '256'"},
      {"peer add mp1 p underlay 198.18.0.2 keepalive 10,3 retries 4",
       "peer add: 'retries' conflicts with the retries of 'keepalive'"},
      {"peer add mp1 p underlay 198.18.0.2 label k", "peer add: invalid label 'k'"},
      {"peer add mp1 p underlay 198.18.0.2 label k=1 label k=2", "peer add: label 'k' given twice"},
      {"peer add mp1 p underlay 198.18.0.2 --etag e1", "peer add: flag --etag does not apply"},
      {"peer add mp1 p underlay 198.18.0.2 --prune", "peer add: flag --prune does not apply"},
      // Peer names: 1-63 letters, digits, '.', '_' and '-'.
      {"peer add mp1 a/b underlay 198.18.0.2", "peer add: invalid peer name 'a/b' (want 1-63"},
      {"peer add mp1 a:b underlay 198.18.0.2", "invalid peer name 'a:b'"},
      {"peer get mp1 " + std::string(64, 'x'), "peer get: invalid peer name 'xxx"},
      {"peer get mp1 p x", "peer get: unexpected argument 'x'"},
      {"peer get mp1", "peer get: missing PEER"},
      {"peer get", "peer get: missing TUNNEL"},
      {"peer get mp1 p --request-id r1", "peer get: flag --request-id does not apply"},
      {"peer list", "peer list: missing TUNNEL"},
      {"peer list mp1 p", "peer list: unexpected argument 'p'"},
      {"peer list mp1 --etag e", "peer list: flag --etag does not apply"},
      {"peer delete mp1", "peer delete: missing PEER"},
      {"peer delete mp1 p --page-size 3", "peer delete: flag --page-size does not apply"},
      {"peer update mp1 p", "peer update: nothing to change (want underlay, key, nokey,"},
      {"peer update mp1 p key 1 nokey", "peer update: 'nokey' conflicts with 'key'"},
      {"peer update mp1 p allowed 10.0.0.0/8 noallowed",
       "peer update: 'noallowed' conflicts with 'allowed'"},
      {"peer update mp1 p nokeepalive retries 3",
       "peer update: 'retries' needs 'keepalive INTERVAL'"},
      {"peer update mp1 p nolabels label a=b", "peer update: 'label' conflicts with 'nolabels'"},
      {"peer apply mp1", "peer apply: missing -f FILE"},
      {"peer apply -f x.json", "peer apply: missing TUNNEL"},
      {"peer apply mp1 p -f x.json", "peer apply: unexpected argument 'p'"},
      {"apply -f x.json mp1", "apply: unexpected argument 'mp1'"},
  };
  for (const BadCase& c : kCases) {
    SCOPED_TRACE(c.args);
    absl::StatusOr<Command> command = ParseArgs(Split(c.args), "");
    ASSERT_FALSE(command.ok()) << "parsed as verb " << static_cast<int>(command->verb);
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(command.status().message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(command.status().message()), Not(HasSubstr("\n")));
  }
  absl::StatusOr<Command> command = ParseArgs({"peer", "get", "mp1", ""}, "");
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("invalid peer name ''"));
  command = ParseArgs({"peer", "list", ""}, "");
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("peer list: empty TUNNEL"));
}

TEST(PeerNameTest, LettersDigitsDotUnderscoreDash) {
  EXPECT_TRUE(CheckPeerName("a").ok());
  EXPECT_TRUE(CheckPeerName("Site-B_2.east").ok());
  EXPECT_TRUE(CheckPeerName(std::string(63, 'z')).ok());
  EXPECT_FALSE(CheckPeerName("").ok());
  EXPECT_FALSE(CheckPeerName(std::string(64, 'z')).ok());
  EXPECT_FALSE(CheckPeerName("a b").ok());
  EXPECT_FALSE(CheckPeerName("a/b").ok());
  EXPECT_FALSE(CheckPeerName("é").ok());
  EXPECT_FALSE(CheckPeerName(absl::string_view("a\0b", 3)).ok());
}

TEST(NetworkPrefixTest, HostBitsMustBeZero) {
  for (const char* good : {"10.0.0.0/8", "10.1.2.3/32", "10.1.2.3", "0.0.0.0/0", "192.168.1.128/25",
                           "fd00::/8", "fd00::1/128", "fd00::1", "::/0", "fd00:0:0:1::/64"}) {
    EXPECT_TRUE(CheckNetworkPrefix("allowed prefix", good).ok()) << good;
  }
  struct BadPrefix {
    const char* text;
    const char* want;  // the network suggested
  };
  for (const BadPrefix& c :
       {BadPrefix{"10.0.0.1/8", "10.0.0.0/8"}, BadPrefix{"192.168.1.129/25", "192.168.1.128/25"},
        BadPrefix{"10.1.2.3/0", "0.0.0.0/0"}, BadPrefix{"fd00::1/64", "fd00::/64"},
        BadPrefix{"fd00:0:0:1:8000::/65", "fd00:0:0:1:8000::/65"}}) {
    absl::Status s = CheckNetworkPrefix("allowed prefix", c.text);
    if (std::string(c.text) == c.want) {
      EXPECT_TRUE(s.ok()) << c.text;
      continue;
    }
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("want ", c.want, ")")));
  }
  EXPECT_FALSE(CheckNetworkPrefix("allowed prefix", "10.0.0.0/08").ok());
  EXPECT_FALSE(CheckNetworkPrefix("allowed prefix", "fd00::1:0/111").ok());
}

TEST(UsageTest, NamesThePeerCommands) {
  const std::string usage = Usage();
  for (const char* word :
       {"multipoint", "nomultipoint", "peer add TUNNEL PEER underlay ADDR", "peer get TUNNEL PEER",
        "peer list TUNNEL", "peer update TUNNEL PEER", "peer delete TUNNEL PEER",
        "peer apply TUNNEL -f FILE", "allowed PREFIX", "noallowed", "retries N", "nokeepalive"}) {
    EXPECT_THAT(usage, HasSubstr(word));
  }
}

// ip(8) habits: the spellings that mean the same are taken, the others refused with a hint.
TEST(ParseArgsTest, TakesIpSpellingsThatMeanTheSame) {
  const GoodCase kCases[] = {
      {"add name gre2 mode gre remote 198.18.0.2", Verb::kCreate, "gre2",
       R"pb(name: "gre2" mode: TUNNEL_MODE_GRE remote: "198.18.0.2")pb"},
      {"add dev gre2 type gre remote 198.18.0.2", Verb::kCreate, "gre2",
       R"pb(name: "gre2" mode: TUNNEL_MODE_GRE remote: "198.18.0.2")pb"},
      {"add t1 mode gre/ip remote 198.18.0.2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                         mode: TUNNEL_MODE_GRE
                                                                         remote: "198.18.0.2")pb"},
      {"add t1 mode ip/ip remote 198.18.0.2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                        mode: TUNNEL_MODE_IPIP
                                                                        remote: "198.18.0.2")pb"},
      {"add t1 mode ipv6/ip remote 198.18.0.2", Verb::kCreate, "t1",
       R"pb(name: "t1" mode: TUNNEL_MODE_SIT remote: "198.18.0.2")pb"},
      {"add t1 mode gre/ipv6 remote fd00::2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                        mode: TUNNEL_MODE_IP6GRE
                                                                        remote: "fd00::2")pb"},
      {"add t1 mode ip6ip6 remote fd00::2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                      mode: TUNNEL_MODE_IP6TNL
                                                                      remote: "fd00::2")pb"},
      {"add t1 mode ipip6 remote fd00::2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                     mode: TUNNEL_MODE_IP6TNL
                                                                     remote: "fd00::2")pb"},
      {"add t1 type any remote fd00::2", Verb::kCreate, "t1", R"pb(name: "t1"
                                                                   mode: TUNNEL_MODE_IP6TNL
                                                                   remote: "fd00::2")pb"},
      // A tunnel may still be called "dev" or "name": the next word is a keyword.
      {"add dev mode gre remote 198.18.0.2", Verb::kCreate, "dev", R"pb(name: "dev"
                                                                        mode: TUNNEL_MODE_GRE
                                                                        remote: "198.18.0.2")pb"},
      {"get dev gre2", Verb::kGet, "gre2", ""},
      {"delete name gre2", Verb::kDelete, "gre2", ""},
      {"get name", Verb::kGet, "name", ""},
  };
  for (const GoodCase& c : kCases) ExpectParses(c);
  absl::StatusOr<Command> update = ParseArgs(Split("update dev gre2 type ipip"), "");
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_EQ(update->tunnel.mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(absl::StrJoin(update->update_mask.paths(), ","), "mode");
}

TEST(ParseArgsTest, RefusesIpSpellingsThatMeanSomethingElseWithAHint) {
  const std::pair<std::string, std::string> kCases[] = {
      {"add gre2 mode gre remote 198.18.0.2 dev eth0", "binds the tunnel to an underlay device"},
      {"add gre2 mode gre remote 198.18.0.2 name x", "names the tunnel only right after"},
      {"add t1 mode ip6tnl remote fd00::2 encaplimit 4", "encapsulation limit"},
      {"add t1 mode ip6tnl remote fd00::2 flowlabel 7", "flow label"},
      {"add t1 mode vti remote 198.18.0.2", "mode 'vti' is ip(8)'s but not tunnel-agent's"},
      {"add t1 type isatap remote 198.18.0.2", "mode 'isatap' is ip(8)'s"},
  };
  for (const auto& [args, hint] : kCases) {
    SCOPED_TRACE(args);
    absl::StatusOr<Command> command = ParseArgs(Split(args), "");
    ASSERT_FALSE(command.ok());
    EXPECT_THAT(command.status().message(), HasSubstr(hint));
  }
}

TEST(UsageTest, NamesEncapAndTheIpSpellings) {
  const std::string usage = Usage();
  for (const char* word :
       {"encap fou|none", "encap-sport auto|PORT", "encap-dport PORT", "`name NAME` and `dev NAME`",
        "`type MODE`", "gre/ip", "ip6ip6", "encaplimit", "flowlabel", "vti"}) {
    EXPECT_THAT(usage, HasSubstr(word));
  }
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
