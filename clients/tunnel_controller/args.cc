#include "clients/tunnel_controller/args.h"

#include <algorithm>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "clients/common/version.h"
#include "clients/tunnel_controller/fleet.h"
#include "common/etcd/client.h"
#include "common/fleet_keys.h"

namespace tunnelagent::controller {
namespace {

constexpr int kMaxParallelism = 1024;
constexpr int kMaxRetries = 100;

absl::Status UsageError(absl::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

bool IsLabelText(absl::string_view text) {
  if (text.empty() || text.size() > 63) return false;
  for (char c : text) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '/' && c != '-') return false;
  }
  return true;
}

// What the etcd mode asks of the rest of the line.
absl::Status CheckEtcdFlags(const Options& options, bool grace_given, bool lease_ttl_given) {
  const EtcdFlags& etcd = options.etcd;
  const bool fleet_command =
      options.command == Command::kFleetSet || options.command == Command::kFleetGet;
  const bool other_etcd_flag = !etcd.fleet.empty() || !etcd.ca_file.empty() ||
                               !etcd.cert_file.empty() || !etcd.key_file.empty() ||
                               !etcd.user.empty() || !etcd.password_file.empty();
  if (!EtcdMode(options)) {
    if (fleet_command) {
      return UsageError(absl::StrCat("fleet ",
                                     options.command == Command::kFleetSet ? "set" : "get",
                                     ": needs --etcd ENDPOINTS and --fleet NAME"));
    }
    if (other_etcd_flag) return UsageError("--fleet and the --etcd_* flags need --etcd");
    if (grace_given || lease_ttl_given) {
      return UsageError(
          absl::StrCat(grace_given ? "--grace" : "--lease_ttl", " is for run --etcd only"));
    }
    return absl::OkStatus();
  }
  if (etcd.fleet.empty()) return UsageError("--etcd needs --fleet NAME");
  if (etcd.cert_file.empty() != etcd.key_file.empty()) {
    return UsageError("--etcd_cert and --etcd_key go together");
  }
  if (etcd.user.empty() != etcd.password_file.empty()) {
    return UsageError("--etcd_user and --etcd_password_file go together");
  }
  if (options.command == Command::kApply) {
    return UsageError(
        "apply: not with --etcd (run --etcd converges the fleet; plan and status show it)");
  }
  if (options.command == Command::kFleetSet) {
    if (options.file.empty()) return UsageError("fleet set: missing -f FILE (the description)");
  } else if (!options.file.empty()) {
    return UsageError("-f FILE or --etcd: one or the other (fleet set takes both)");
  }
  if ((grace_given || lease_ttl_given) && options.command != Command::kRun) {
    return UsageError(
        absl::StrCat(grace_given ? "--grace" : "--lease_ttl", " is for run --etcd only"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string Usage() {
  return R"(usage: tunnel-controller COMMAND -f FILE [flags]
       tunnel-controller COMMAND --etcd ENDPOINTS --fleet NAME [flags]

Provisions the tunnels of a fleet of tunnel-agent nodes from one YAML file, or from a fleet
kept in etcd: a description (the same YAML, nodes optional) and the nodes that registered.

commands:
  plan -f FILE [--prune]          what would change on each node (a dry run)
  apply -f FILE [--prune]         make each node's tunnels (and peers) those of the file
  status -f FILE                  per node: reachable, tunnels up/down, drift from the file
  run -f FILE --interval D [--prune] [--metrics_listen ADDR]
                                  apply every D (and when the file changes); serve /metrics
  fleet set -f FILE --etcd E --fleet NAME
                                  check FILE as the fleet's description and store it in etcd
  fleet get --etcd E --fleet NAME
                                  print the stored description
  run --etcd E --fleet NAME [--grace D] [--lease_ttl D] [--interval D] [--metrics_listen ADDR]
                                  one of any number of replicas: the elected one converges
                                  the registered and pinned nodes on every change (and every D)
  status --etcd E --fleet NAME    who leads, the registered nodes, then per node as status -f
  plan --etcd E --fleet NAME      what would change on each member (a dry run)
  help                            this text (also -h, --help)
  version                         the version (also --version)

flags:
  -f, --file FILE         the fleet file (YAML)
  --prune                 also delete the owner's tunnels (peers) the file no longer has
  --interval D            run: time between passes, e.g. 30s, 1m (default 30s)
  --metrics_listen ADDR   run: serve Prometheus /metrics here (default 127.0.0.1:9477;
                          empty: off)
  --parallelism N         nodes worked on at once (default 16)
  --timeout D             deadline of each call, e.g. 10s or 2.5 (seconds; default 10s)
  --retries N             retries of a failed call, with exponential backoff from 200 ms
                          up to 5 s (default 4)
  --owner NAME            the owner label of the controller's tunnels (default
                          tunnel-controller); other owners' tunnels are never touched
  --progress auto|live|plain
                          a live line per node (auto: when stderr is a terminal) or log lines
  --etcd ENDPOINTS        etcd's endpoints, comma-separated: HOST:PORT, http://HOST:PORT or
                          https://HOST:PORT (as etcdctl takes them)
  --fleet NAME            the fleet in etcd: its keys are under /tunnel-agent/NAME/
  --etcd_ca FILE          CA certificates to check etcd's (TLS)
  --etcd_cert FILE        client certificate for etcd (with --etcd_key)
  --etcd_key FILE         its private key
  --etcd_user NAME        etcd user (password authentication, with --etcd_password_file)
  --etcd_password_file FILE
                          the user's password (the whole file, surrounding white space removed)
  --grace D               run --etcd: how long a node whose registration is gone stays a
                          member, as the others' peer (default 30s; 0: removed at once)
  --lease_ttl D           run --etcd: TTL of the leader's lease, whole seconds >= 2 (default
                          5s); a standby leads within it after the leader dies
  -h, --help              print this text
  --version               print the version
In flag names '_' and '-' are the same; values go after '=' or as the next argument.

exit status:
  0  every node converged (plan: every node answered; fleet set, get: done; run --etcd: also
     stopped as a standby)
  1  bad input, nothing sent: unknown command or flag, bad value, a fleet file (description)
     that cannot be read or is not valid (YAML, a node, an address, a link), or a file it
     names (token, certificate, etcd password); run: also --metrics_listen that cannot be
     listened on
  2  some node's agent refused or failed a call, or could not be reached; status: also a
     node that differs from the file; run: the last pass had not converged when stopped;
     etcd unreachable or refusing, or no description stored (fleet get, status, plan)
)";
}

std::string VersionLine() { return absl::StrCat("tunnel-controller ", clients::kVersion, "\n"); }

absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args) {
  Options options;
  // -h, --help or --version win over everything else on the line (the first of them given),
  // so that asking for help never fails on the rest of it.
  for (const std::string& arg : args) {
    if (arg == "-h" || arg == "--help" || arg == "--version") {
      options.command = arg == "--version" ? Command::kVersion : Command::kHelp;
      return options;
    }
  }
  std::optional<Command> command;
  bool fleet_command = false;  // `fleet` seen: the next word is set or get
  bool interval_given = false;
  bool metrics_given = false;
  bool grace_given = false;
  bool lease_ttl_given = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&](absl::string_view flag,
                     std::optional<std::string> inline_value) -> absl::StatusOr<std::string> {
      if (inline_value.has_value()) return *inline_value;
      if (i + 1 >= args.size()) return UsageError(absl::StrCat(flag, " needs a value"));
      return args[++i];
    };
    if (arg == "-f" || (absl::StartsWith(arg, "-f") && !absl::StartsWith(arg, "--"))) {
      absl::StatusOr<std::string> v =
          value("-f", arg.size() > 2 ? std::optional<std::string>(arg.substr(2)) : std::nullopt);
      if (!v.ok()) return v.status();
      if (v->empty()) return UsageError("-f: empty file name");
      options.file = *v;
      continue;
    }
    if (absl::StartsWith(arg, "--")) {
      std::string name = arg.substr(2);
      std::optional<std::string> inline_value;
      if (size_t eq = name.find('='); eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name.resize(eq);
      }
      name = absl::StrReplaceAll(name, {{"-", "_"}});
      const std::string flag = absl::StrCat("--", name);
      if (name == "prune") {
        if (inline_value.has_value()) {
          if (*inline_value == "true") {
            options.prune = true;
          } else if (*inline_value == "false") {
            options.prune = false;
          } else {
            return UsageError("--prune takes no value (or =true, =false)");
          }
        } else {
          options.prune = true;
        }
        continue;
      }
      static const char* const kValued[] = {
          "file",    "interval",  "metrics_listen", "parallelism", "timeout",
          "retries", "owner",     "progress",       "etcd",        "fleet",
          "etcd_ca", "etcd_cert", "etcd_key",       "etcd_user",   "etcd_password_file",
          "grace",   "lease_ttl"};
      if (std::find(std::begin(kValued), std::end(kValued), name) == std::end(kValued)) {
        return UsageError(absl::StrCat("unknown flag --", name));
      }
      absl::StatusOr<std::string> v = value(flag, inline_value);
      if (!v.ok()) return v.status();
      if (name == "file") {
        if (v->empty()) return UsageError("--file: empty file name");
        options.file = *v;
      } else if (name == "interval") {
        absl::StatusOr<absl::Duration> d = ParseDurationText(*v);
        if (!d.ok() || *d < absl::Milliseconds(100)) {
          return UsageError(
              absl::StrCat("--interval: \"", *v, "\" is not a duration of at least 100ms"));
        }
        options.interval = *d;
        interval_given = true;
      } else if (name == "metrics_listen") {
        options.metrics_listen = *v;
        metrics_given = true;
      } else if (name == "parallelism") {
        int n = 0;
        if (!absl::SimpleAtoi(*v, &n) || n < 1 || n > kMaxParallelism) {
          return UsageError(
              absl::StrCat("--parallelism: \"", *v, "\" is not a number 1..", kMaxParallelism));
        }
        options.parallelism = n;
      } else if (name == "timeout") {
        absl::StatusOr<absl::Duration> d = ParseDurationText(*v);
        if (!d.ok() || *d <= absl::ZeroDuration() || *d > absl::Hours(24)) {
          return UsageError(absl::StrCat("--timeout: \"", *v, "\" is not a duration in (0, 24h]"));
        }
        options.policy.timeout = *d;
      } else if (name == "retries") {
        int n = 0;
        if (!absl::SimpleAtoi(*v, &n) || n < 0 || n > kMaxRetries) {
          return UsageError(
              absl::StrCat("--retries: \"", *v, "\" is not a number 0..", kMaxRetries));
        }
        options.policy.retries = n;
      } else if (name == "owner") {
        if (!IsLabelText(*v)) {
          return UsageError(
              absl::StrCat("--owner: \"", *v, "\" must be 1-63 characters of A-Z a-z 0-9 . _ / -"));
        }
        options.owner = *v;
      } else if (name == "progress") {
        if (*v == "auto") {
          options.progress = ProgressMode::kAuto;
        } else if (*v == "live") {
          options.progress = ProgressMode::kLive;
        } else if (*v == "plain") {
          options.progress = ProgressMode::kPlain;
        } else {
          return UsageError(absl::StrCat("--progress: \"", *v, "\" is not auto, live or plain"));
        }
      } else if (name == "etcd") {
        absl::StatusOr<std::vector<std::string>> endpoints = etcd::ParseEndpoints(*v);
        if (!endpoints.ok())
          return UsageError(absl::StrCat("--etcd: ", endpoints.status().message()));
        options.etcd.endpoints = *std::move(endpoints);
      } else if (name == "fleet") {
        if (absl::Status s = fleet::ValidateFleetName(*v); !s.ok()) {
          return UsageError(absl::StrCat("--fleet: ", s.message()));
        }
        options.etcd.fleet = *v;
      } else if (name == "etcd_ca" || name == "etcd_cert" || name == "etcd_key" ||
                 name == "etcd_user" || name == "etcd_password_file") {
        if (v->empty()) return UsageError(absl::StrCat(flag, ": empty value"));
        std::string* field = name == "etcd_ca"     ? &options.etcd.ca_file
                             : name == "etcd_cert" ? &options.etcd.cert_file
                             : name == "etcd_key"  ? &options.etcd.key_file
                             : name == "etcd_user" ? &options.etcd.user
                                                   : &options.etcd.password_file;
        *field = *v;
      } else if (name == "grace") {
        absl::StatusOr<absl::Duration> d = ParseDurationText(*v);
        if (!d.ok() || *d > absl::Hours(24)) {
          return UsageError(absl::StrCat("--grace: \"", *v, "\" is not a duration in [0, 24h]"));
        }
        options.grace = *d;
        grace_given = true;
      } else if (name == "lease_ttl") {
        absl::StatusOr<absl::Duration> d = ParseDurationText(*v);
        if (!d.ok() || *d < absl::Seconds(2) || *d > absl::Hours(1) ||
            absl::Trunc(*d, absl::Seconds(1)) != *d) {
          return UsageError(absl::StrCat("--lease_ttl: \"", *v,
                                         "\" is not a whole number of seconds in [2s, 1h]"));
        }
        options.lease_ttl = *d;
        lease_ttl_given = true;
      } else {
        return UsageError(absl::StrCat("unknown flag --", name));
      }
      continue;
    }
    if (absl::StartsWith(arg, "-") && arg != "-") {
      return UsageError(absl::StrCat("unknown flag ", arg));
    }
    if (fleet_command) {
      fleet_command = false;
      if (arg == "set") {
        command = Command::kFleetSet;
      } else if (arg == "get") {
        command = Command::kFleetGet;
      } else {
        return UsageError(absl::StrCat("fleet: unknown command \"", arg, "\" (set, get)"));
      }
      continue;
    }
    if (command.has_value()) {
      return UsageError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    if (arg == "fleet") {
      fleet_command = true;
      continue;
    }
    if (arg == "plan") {
      command = Command::kPlan;
    } else if (arg == "apply") {
      command = Command::kApply;
    } else if (arg == "status") {
      command = Command::kStatus;
    } else if (arg == "run") {
      command = Command::kRun;
    } else if (arg == "help") {
      command = Command::kHelp;
    } else if (arg == "version") {
      command = Command::kVersion;
    } else {
      return UsageError(absl::StrCat("unknown command \"", arg,
                                     "\" (plan, apply, status, run, fleet, help, version)"));
    }
  }
  if (fleet_command) return UsageError("fleet: missing set or get");
  if (!command.has_value()) {
    return UsageError("missing COMMAND (plan, apply, status, run, fleet, help, version)");
  }
  options.command = *command;
  if (options.command == Command::kHelp || options.command == Command::kVersion) return options;
  if (absl::Status s = CheckEtcdFlags(options, grace_given, lease_ttl_given); !s.ok()) return s;
  if (options.file.empty() && options.command != Command::kFleetGet && !EtcdMode(options)) {
    return UsageError("missing -f FILE (or --etcd and --fleet)");
  }
  if (options.prune && options.command == Command::kStatus) {
    return UsageError(
        "status: --prune does not apply (status always counts extra tunnels as drift)");
  }
  if (interval_given && options.command != Command::kRun) {
    return UsageError("--interval is for run only");
  }
  if (metrics_given && options.command != Command::kRun) {
    return UsageError("--metrics_listen is for run only");
  }
  return options;
}

}  // namespace tunnelagent::controller
