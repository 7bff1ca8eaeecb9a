// tunnel-controller's command line: argv in, Options out. Pure.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/tunnel_controller/reconciler.h"

namespace tunnelagent::controller {

inline constexpr int kExitConverged = 0;
inline constexpr int kExitNodeFailed = 1;
inline constexpr int kExitUsage = 2;

inline constexpr char kDefaultMetricsListen[] = "127.0.0.1:9477";

enum class Command { kHelp, kPlan, kApply, kStatus, kRun };

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
};

// Parses the arguments after the program name. Errors are InvalidArgument, one line.
absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args);

// The text of `tunnel-controller help`, ending in a newline.
std::string Usage();

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ARGS_H_
