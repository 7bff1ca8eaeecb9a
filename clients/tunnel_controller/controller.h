// tunnel-controller's commands: plan, apply, status and run, from the command line to output
// and an exit status. main.cc only wires Main to the process (argv, streams, signals).
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_CONTROLLER_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_CONTROLLER_H_

#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "clients/tunnel_controller/args.h"
#include "clients/tunnel_controller/fleet.h"
#include "clients/tunnel_controller/metrics.h"
#include "clients/tunnel_controller/plan.h"
#include "clients/tunnel_controller/reconciler.h"
#include "common/metrics_endpoint.h"

namespace tunnelagent::controller {

// Channels to the nodes' agents, kept across passes of `run`: a node keeps its channel while
// its agent address, TLS options and token file stay the same.
class Connections {
 public:
  // Handles for every node of `fleet`, in its order. Errors (InvalidArgument, naming the node's
  // field: an unreadable token or certificate file) concern the file: exit kExitBadInput.
  absl::StatusOr<std::vector<AgentHandle>> For(const Fleet& fleet);

 private:
  struct Entry {
    std::string agent;
    clients::TlsOptions tls;
    std::string token_file;
    AgentHandle handle;
  };
  std::map<std::string, Entry> entries_;
};

// The report of plan and apply: per node its outcome and (plan) its changes, then one line.
std::string FormatChanges(Operation operation, const std::vector<NodeReport>& reports,
                          absl::Duration elapsed);
// The report of status: a table, then drift, tunnels not up and errors per node, then one line.
std::string FormatStatus(const std::vector<NodeReport>& reports);
// Rows as columns two spaces apart, each as wide as its widest cell; a line per row.
std::string AlignedColumns(const std::vector<std::vector<std::string>>& rows);

// A pass of run: "<time> pass 3: 12/12 nodes converged, ..." and a line per node that changed
// or failed.
std::string FormatPass(int pass, const std::vector<NodeReport>& reports, absl::Duration elapsed);

// The local time as run's lines start with it: "2024-05-01T12:00:00".
std::string NowText();

// run's /metrics on options.metrics_listen (null when it is empty), announced on `err`;
// InvalidArgument naming --metrics_listen when it cannot listen there.
absl::StatusOr<std::unique_ptr<MetricsEndpoint>> ServeMetrics(const Options& options,
                                                              ControllerMetrics& metrics,
                                                              std::ostream& err);

// kExitOk when every node succeeded and (status) converged, else kExitAgentFailed.
int ExitStatus(Operation operation, const std::vector<NodeReport>& reports);

// Runs options.command (not kHelp). Reports go to `out`, progress and errors to `err`
// (`err_fd`: its descriptor, to tell a terminal). `stop` ends `run` (may be null for the
// others). Returns the exit status.
int RunCommand(const Options& options, std::ostream& out, std::ostream& err, int err_fd,
               const absl::Notification* stop);

// One whole invocation: parses `args` (those after the program name), then prints the help or
// the version, or runs the command. `before_run` (may be empty) is called once the command
// line is parsed and before anything that may start a thread: main.cc blocks SIGINT and
// SIGTERM there, for its own thread to notify `stop`. Returns the exit status; bad input is
// kExitBadInput with one "tunnel-controller: ..." line on `err`.
int Main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, int err_fd,
         const absl::Notification* stop, const std::function<void()>& before_run);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_CONTROLLER_H_
