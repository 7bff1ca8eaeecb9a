// tunnel-controller's command line: argv in, Options out. Pure.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/common/exit_code.h"
#include "clients/tunnel_controller/fleet_store.h"
#include "clients/tunnel_controller/reconciler.h"

namespace tunnelagent::controller {

// 0 every node converged; 1 bad input (command line, fleet file or description, or a file it
// names), nothing sent; 2 some node's agent refused, failed or was unreachable, or (status)
// differs from the file; etcd unreachable, refusing, or without the description asked for.
using clients::kExitAgentFailed;
using clients::kExitBadInput;
using clients::kExitOk;

inline constexpr char kDefaultMetricsListen[] = "127.0.0.1:9477";

// kFleetSet, kFleetGet: `fleet set`, `fleet get` (etcd only).
enum class Command { kHelp, kVersion, kPlan, kApply, kStatus, kRun, kFleetSet, kFleetGet };

enum class ProgressMode { kAuto, kLive, kPlain };

struct Options {
  Command command = Command::kHelp;
  std::string file;  // -f
  bool prune = false;
  absl::Duration interval = absl::Seconds(30);         // run
  std::string metrics_listen = kDefaultMetricsListen;  // run; empty: no metrics
  int parallelism = 16;
  CallPolicy policy;  // --timeout, --retries
  std::string owner = kDefaultOwner;
  ProgressMode progress = ProgressMode::kAuto;
  // The etcd mode (etcd.endpoints not empty): the fleet is the description and registrations
  // kept in etcd under /tunnel-agent/<etcd.fleet>/ instead of the file (fleet set: -f is the
  // description to store).
  EtcdFlags etcd;
  absl::Duration grace = absl::Seconds(30);     // run --etcd
  absl::Duration lease_ttl = absl::Seconds(5);  // run --etcd
};

// Whether `options` are of the etcd mode.
inline bool EtcdMode(const Options& options) { return !options.etcd.endpoints.empty(); }

// Parses the arguments after the program name. Errors are InvalidArgument, one line.
absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args);

// The text of `tunnel-controller help`, ending in a newline.
std::string Usage();

// What `tunnel-controller --version` prints: "tunnel-controller <version>" and a newline.
std::string VersionLine();

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_
