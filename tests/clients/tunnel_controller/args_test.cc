// tunnel-controller's command line.
#include "clients/tunnel_controller/args.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::controller {
namespace {

Options MustParse(std::vector<std::string> args) {
  absl::StatusOr<Options> o = ParseArgs(args);
  EXPECT_TRUE(o.ok()) << o.status();
  return o.ok() ? *o : Options();
}

std::string ErrorOf(std::vector<std::string> args) {
  absl::StatusOr<Options> o = ParseArgs(args);
  EXPECT_FALSE(o.ok());
  return o.ok() ? "" : std::string(o.status().message());
}

TEST(ArgsTest, Defaults) {
  Options o = MustParse({"apply", "-f", "fleet.yaml"});
  EXPECT_EQ(o.command, Command::kApply);
  EXPECT_EQ(o.file, "fleet.yaml");
  EXPECT_FALSE(o.prune);
  EXPECT_EQ(o.parallelism, 16);
  EXPECT_EQ(o.policy.timeout, absl::Seconds(10));
  EXPECT_EQ(o.policy.retries, 4);
  EXPECT_EQ(o.owner, "tunnel-controller");
  EXPECT_EQ(o.metrics_listen, "127.0.0.1:9477");
  EXPECT_EQ(o.interval, absl::Seconds(30));
}

TEST(ArgsTest, Flags) {
  Options o = MustParse({"--owner=fleet-a", "run", "-ffleet.yaml", "--interval", "5s", "--prune",
                         "--metrics-listen=127.0.0.1:9999", "--parallelism=4", "--timeout=2.5",
                         "--retries", "0", "--progress=plain"});
  EXPECT_EQ(o.command, Command::kRun);
  EXPECT_EQ(o.file, "fleet.yaml");
  EXPECT_EQ(o.interval, absl::Seconds(5));
  EXPECT_TRUE(o.prune);
  EXPECT_EQ(o.metrics_listen, "127.0.0.1:9999");
  EXPECT_EQ(o.parallelism, 4);
  EXPECT_EQ(o.policy.timeout, absl::Milliseconds(2500));
  EXPECT_EQ(o.policy.retries, 0);
  EXPECT_EQ(o.owner, "fleet-a");
  EXPECT_EQ(o.progress, ProgressMode::kPlain);
  EXPECT_EQ(MustParse({"plan", "--file=f", "--prune=false"}).prune, false);
  EXPECT_EQ(MustParse({"status", "-f", "f"}).command, Command::kStatus);
  EXPECT_EQ(MustParse({"help"}).command, Command::kHelp);
  EXPECT_EQ(MustParse({"--help"}).command, Command::kHelp);
  EXPECT_EQ(MustParse({"-h"}).command, Command::kHelp);
  // Help and version win over the rest of the line, the first of them given.
  EXPECT_EQ(MustParse({"apply", "--bogus", "-h"}).command, Command::kHelp);
  EXPECT_EQ(MustParse({"--help", "apply"}).command, Command::kHelp);
  EXPECT_EQ(MustParse({"--version"}).command, Command::kVersion);
  EXPECT_EQ(MustParse({"version"}).command, Command::kVersion);
  EXPECT_EQ(MustParse({"run", "--version", "--help"}).command, Command::kVersion);
  EXPECT_EQ(MustParse({"-h", "--version"}).command, Command::kHelp);
  EXPECT_EQ(MustParse({"run", "-f", "f", "--metrics_listen="}).metrics_listen, "");
}

TEST(ArgsTest, Errors) {
  EXPECT_EQ(ErrorOf({}), "missing COMMAND (plan, apply, status, run, fleet, help, version)");
  EXPECT_EQ(ErrorOf({"deploy"}),
            "unknown command \"deploy\" (plan, apply, status, run, fleet, help, version)");
  EXPECT_EQ(ErrorOf({"apply"}), "missing -f FILE (or --etcd and --fleet)");
  EXPECT_EQ(ErrorOf({"apply", "-f"}), "-f needs a value");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "b"}), "unexpected argument \"b\"");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--force"}), "unknown flag --force");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "-x"}), "unknown flag -x");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--interval=5s"}), "--interval is for run only");
  EXPECT_EQ(ErrorOf({"plan", "-f", "a", "--metrics_listen=:1"}),
            "--metrics_listen is for run only");
  EXPECT_EQ(ErrorOf({"status", "-f", "a", "--prune"}),
            "status: --prune does not apply (status always counts extra tunnels as drift)");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--interval=soon"}),
            "--interval: \"soon\" is not a duration of at least 100ms");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--interval=10ms"}),
            "--interval: \"10ms\" is not a duration of at least 100ms");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--parallelism=0"}),
            "--parallelism: \"0\" is not a number 1..1024");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--timeout=0"}),
            "--timeout: \"0\" is not a duration in (0, 24h]");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--retries=-1"}),
            "--retries: \"-1\" is not a number 0..100");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--owner=a b"}),
            "--owner: \"a b\" must be 1-63 characters of A-Z a-z 0-9 . _ / -");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--prune=yes"}),
            "--prune takes no value (or =true, =false)");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--progress=fancy"}),
            "--progress: \"fancy\" is not auto, live or plain");
  EXPECT_EQ(ErrorOf({"apply", "-f", "a", "--owner"}), "--owner needs a value");
}

TEST(ArgsTest, EtcdMode) {
  Options o =
      MustParse({"run", "--etcd=127.0.0.1:2379,https://etcd2:2379", "--fleet", "prod",
                 "--etcd-ca=ca.pem", "--etcd_cert=c.pem", "--etcd_key=c.key", "--etcd_user=ctl",
                 "--etcd_password_file=pw", "--grace=10s", "--lease_ttl=3s"});
  EXPECT_EQ(o.command, Command::kRun);
  EXPECT_TRUE(EtcdMode(o));
  EXPECT_THAT(o.etcd.endpoints, ::testing::ElementsAre("127.0.0.1:2379", "https://etcd2:2379"));
  EXPECT_EQ(o.etcd.fleet, "prod");
  EXPECT_EQ(o.etcd.ca_file, "ca.pem");
  EXPECT_EQ(o.etcd.cert_file, "c.pem");
  EXPECT_EQ(o.etcd.key_file, "c.key");
  EXPECT_EQ(o.etcd.user, "ctl");
  EXPECT_EQ(o.etcd.password_file, "pw");
  EXPECT_EQ(o.grace, absl::Seconds(10));
  EXPECT_EQ(o.lease_ttl, absl::Seconds(3));
  EXPECT_TRUE(o.file.empty());

  Options d = MustParse({"run", "--etcd=e:2379", "--fleet=f"});
  EXPECT_EQ(d.grace, absl::Seconds(30));
  EXPECT_EQ(d.lease_ttl, absl::Seconds(5));
  EXPECT_EQ(MustParse({"run", "--etcd=e:2379", "--fleet=f", "--grace=0"}).grace,
            absl::ZeroDuration());
  EXPECT_FALSE(EtcdMode(MustParse({"run", "-f", "fleet.yaml"})));

  Options set = MustParse({"fleet", "set", "-f", "d.yaml", "--etcd=e:2379", "--fleet=f"});
  EXPECT_EQ(set.command, Command::kFleetSet);
  EXPECT_EQ(set.file, "d.yaml");
  EXPECT_EQ(MustParse({"--etcd=e:2379", "fleet", "get", "--fleet=f"}).command, Command::kFleetGet);
  EXPECT_EQ(MustParse({"status", "--etcd=e:2379", "--fleet=f"}).command, Command::kStatus);
  EXPECT_EQ(MustParse({"plan", "--etcd=e:2379", "--fleet=f", "--prune"}).command, Command::kPlan);
}

TEST(ArgsTest, EtcdModeErrors) {
  EXPECT_EQ(ErrorOf({"fleet"}), "fleet: missing set or get");
  EXPECT_EQ(ErrorOf({"fleet", "delete"}), "fleet: unknown command \"delete\" (set, get)");
  EXPECT_EQ(ErrorOf({"fleet", "get"}), "fleet get: needs --etcd ENDPOINTS and --fleet NAME");
  EXPECT_EQ(ErrorOf({"fleet", "set", "-f", "d.yaml"}),
            "fleet set: needs --etcd ENDPOINTS and --fleet NAME");
  EXPECT_EQ(ErrorOf({"fleet", "set", "--etcd=e:1", "--fleet=f"}),
            "fleet set: missing -f FILE (the description)");
  EXPECT_EQ(ErrorOf({"fleet", "get", "--etcd=e:1", "--fleet=f", "-f", "x"}),
            "-f FILE or --etcd: one or the other (fleet set takes both)");
  EXPECT_EQ(ErrorOf({"run", "--etcd=e:1"}), "--etcd needs --fleet NAME");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--fleet=f"}), "--fleet and the --etcd_* flags need --etcd");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--etcd_ca=ca.pem"}),
            "--fleet and the --etcd_* flags need --etcd");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--grace=1s"}), "--grace is for run --etcd only");
  EXPECT_EQ(ErrorOf({"status", "--etcd=e:1", "--fleet=f", "--lease_ttl=5s"}),
            "--lease_ttl is for run --etcd only");
  EXPECT_EQ(ErrorOf({"run", "-f", "a", "--etcd=e:1", "--fleet=f"}),
            "-f FILE or --etcd: one or the other (fleet set takes both)");
  EXPECT_EQ(ErrorOf({"apply", "--etcd=e:1", "--fleet=f"}),
            "apply: not with --etcd (run --etcd converges the fleet; plan and status show it)");
  EXPECT_EQ(ErrorOf({"run", "--etcd=", "--fleet=f"}), "--etcd: no etcd endpoint given");
  EXPECT_EQ(ErrorOf({"run", "--etcd=a:1,,b:2", "--fleet=f"}),
            "--etcd: etcd endpoints \"a:1,,b:2\": entry 2 is empty");
  EXPECT_THAT(ErrorOf({"run", "--etcd=e:1", "--fleet=a/b"}),
              ::testing::HasSubstr("--fleet: fleet name \"a/b\": '/' is not one of [a-z0-9-_.]"));
  EXPECT_EQ(ErrorOf({"run", "--etcd=e:1", "--fleet=f", "--etcd_cert=c.pem"}),
            "--etcd_cert and --etcd_key go together");
  EXPECT_EQ(ErrorOf({"run", "--etcd=e:1", "--fleet=f", "--etcd_user=u"}),
            "--etcd_user and --etcd_password_file go together");
  EXPECT_EQ(ErrorOf({"run", "--etcd=e:1", "--fleet=f", "--etcd_ca="}), "--etcd_ca: empty value");
  EXPECT_EQ(ErrorOf({"run", "--etcd=e:1", "--fleet=f", "--grace=-1s"}),
            "--grace: \"-1s\" is not a duration in [0, 24h]");
  for (const char* ttl : {"1s", "2.5s", "2h", "soon"}) {
    EXPECT_EQ(
        ErrorOf({"run", "--etcd=e:1", "--fleet=f", absl::StrCat("--lease_ttl=", ttl)}),
        absl::StrCat("--lease_ttl: \"", ttl, "\" is not a whole number of seconds in [2s, 1h]"));
  }
}

TEST(ArgsTest, VersionLine) {
  EXPECT_EQ(VersionLine(), absl::StrCat("tunnel-controller ", TUNNEL_AGENT_VERSION, "\n"));
  EXPECT_THAT(VersionLine(),
              ::testing::MatchesRegex("tunnel-controller [0-9]+\\.[0-9]+\\.[0-9]+\n"));
}

TEST(ArgsTest, UsageListsFlagsCommandsAndExitStatus) {
  const std::string usage = Usage();
  for (const char* word : {"plan",
                           "apply",
                           "status",
                           "run",
                           "help",
                           "version",
                           "--prune",
                           "--interval",
                           "--metrics_listen",
                           "--parallelism",
                           "--timeout",
                           "--retries",
                           "--owner",
                           "--progress",
                           "-h, --help",
                           "--version",
                           "exit status:",
                           "0  every node converged",
                           "1  bad input",
                           "2  some node",
                           "fleet set",
                           "fleet get",
                           "--etcd ENDPOINTS",
                           "--fleet NAME",
                           "--etcd_ca",
                           "--etcd_cert",
                           "--etcd_key",
                           "--etcd_user",
                           "--etcd_password_file",
                           "--grace",
                           "--lease_ttl"}) {
    EXPECT_THAT(usage, ::testing::HasSubstr(word));
  }
}

}  // namespace
}  // namespace tunnelagent::controller
