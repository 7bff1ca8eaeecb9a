#include "clients/tunnel_controller/controller.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "clients/common/agent_connection.h"
#include "clients/tunnel_controller/etcd_commands.h"
#include "clients/tunnel_controller/progress.h"

namespace tunnelagent::controller {
namespace {

// A restarted agent is found within this (gRPC's default grows to 120 s).
constexpr int kMaxReconnectBackoffMs = 2'000;
// How often `run` looks at the file between passes.
const absl::Duration kFilePoll = absl::Seconds(1);

const char* ActionName(v1::TunnelChange::Action action) {
  switch (action) {
    case v1::TunnelChange::UNCHANGED:
      return "UNCHANGED";
    case v1::TunnelChange::CREATE:
      return "CREATE";
    case v1::TunnelChange::UPDATE:
      return "UPDATE";
    case v1::TunnelChange::RECREATE:
      return "RECREATE";
    case v1::TunnelChange::DELETE:
      return "DELETE";
    default:
      return "UNKNOWN";
  }
}

std::vector<std::string> FailedNodes(const std::vector<NodeReport>& reports) {
  std::vector<std::string> failed;
  for (const NodeReport& r : reports) {
    if (!r.ok) failed.push_back(r.node);
  }
  return failed;
}

int TotalDesired(const FleetPlan& plan) {
  int n = 0;
  for (const auto& [node, tunnels] : plan.desired) n += static_cast<int>(tunnels.size());
  return n;
}

// "12 nodes, 66 links" or "12 nodes, multipoint tnl0 with 132 peers".
std::string FleetShape(const Fleet& fleet, const FleetPlan& plan) {
  if (!plan.multipoint_device.empty()) {
    return absl::StrCat(fleet.nodes.size(), " nodes, multipoint ", plan.multipoint_device, " with ",
                        TotalPeers(plan), " peers");
  }
  return absl::StrCat(fleet.nodes.size(), " nodes, ", plan.links.size(), " links");
}

bool AnyMultipoint(const std::vector<NodeReport>& reports) {
  for (const NodeReport& r : reports) {
    if (!r.multipoint_device.empty()) return true;
  }
  return false;
}

// The peer as tunnelctl's watch names it: "tnl0/node3".
std::string PeerPath(const NodeReport& r, const std::string& peer) {
  return absl::StrCat(r.multipoint_device, "/", peer);
}

std::vector<std::string> NodeNames(const Fleet& fleet) {
  std::vector<std::string> names;
  for (const Node& n : fleet.nodes) names.push_back(n.name);
  return names;
}

// What identifies the file's version: its contents (a changed mtime alone is no change).
std::string ReadWhole(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream content;
  content << file.rdbuf();
  return content.str();
}

// A node's line: "2 unchanged; 2/2 up", with its peers for a multipoint fleet
// ("1 unchanged; peers: 1 created, 10 unchanged; 1/1 up, 11/11 peers up"); plan: the changes
// to make ("1 to create; peers: 1 to create").
std::string NodeLine(Operation operation, const NodeReport& r) {
  const bool planned = operation == Operation::kPlan;
  std::string line = SummarizeChanges(r.changes, planned);
  const bool multipoint = !r.multipoint_device.empty();
  if (multipoint) {
    absl::StrAppend(&line,
                    "; peers: ", SummarizePeerChanges(r.peer_changes, r.peers_unchanged, planned));
  }
  if (operation == Operation::kPlan) return line;
  absl::StrAppend(&line, "; ", r.up, "/", r.actual, " up");
  if (multipoint) absl::StrAppend(&line, ", ", r.peers_up, "/", r.peers_actual, " peers up");
  return line;
}

// "  UPDATE   tc-node2 (mtu)"
std::string ChangeLine(v1::TunnelChange::Action action, const std::string& name,
                       const google::protobuf::RepeatedPtrField<std::string>& fields) {
  std::string line = absl::StrCat("  ", absl::StrFormat("%-9s", ActionName(action)), name);
  if (!fields.empty()) absl::StrAppend(&line, " (", absl::StrJoin(fields, ","), ")");
  return absl::StrCat(line, "\n");
}

}  // namespace

std::string NowText() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::Now(), absl::LocalTimeZone());
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> ServeMetrics(const Options& options,
                                                              ControllerMetrics& metrics,
                                                              std::ostream& err) {
  if (options.metrics_listen.empty()) return nullptr;
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> bound =
      MetricsEndpoint::Listen(options.metrics_listen, "tunnelcontroller");
  if (!bound.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics_listen: ", bound.status().message()));
  }
  (*bound)->RegisterCollectable(metrics.registry());
  err << "tunnel-controller: metrics on http://" << options.metrics_listen << "/metrics\n";
  return bound;
}

namespace {

struct Loaded {
  Fleet fleet;
  FleetPlan plan;
};

absl::StatusOr<Loaded> Load(const std::string& path) {
  absl::StatusOr<Fleet> fleet = LoadFleetFile(path);
  if (!fleet.ok()) return fleet.status();
  absl::StatusOr<FleetPlan> plan = PlanFleet(*fleet);
  if (!plan.ok()) return plan.status();
  return Loaded{*std::move(fleet), *std::move(plan)};
}

class Runner {
 public:
  Runner(const Options& options, std::ostream& out, std::ostream& err, int err_fd,
         const absl::Notification* stop)
      : options_(options), out_(out), err_(err), err_fd_(err_fd), stop_(stop) {}

  int Run() {
    const bool etcd = EtcdMode(options_);
    // fleet set, fleet get, run --etcd: etcd_commands.h. plan and status --etcd: here, on the
    // fleet as etcd has it now.
    if (etcd && options_.command != Command::kPlan && options_.command != Command::kStatus) {
      return RunEtcdCommand(options_, out_, err_, stop_);
    }
    std::string header;
    absl::StatusOr<Loaded> loaded = etcd ? LoadEtcd(&header) : Load(options_.file);
    if (!loaded.ok()) return Failure(loaded.status());
    if (options_.command == Command::kRun) return Loop(*std::move(loaded));
    absl::StatusOr<std::vector<AgentHandle>> agents = connections_.For(loaded->fleet);
    if (!agents.ok()) return UsageFailure(agents.status());

    const Operation operation = options_.command == Command::kPlan    ? Operation::kPlan
                                : options_.command == Command::kApply ? Operation::kApply
                                                                      : Operation::kStatus;
    ReconcileOptions ro = BaseOptions(operation);
    const int width = TerminalWidth(err_fd_);
    const bool live = options_.progress == ProgressMode::kLive ||
                      (options_.progress == ProgressMode::kAuto && width > 0);
    std::unique_ptr<TerminalProgress> terminal;
    std::unique_ptr<LogProgress> log;
    if (live) {
      terminal = std::make_unique<TerminalProgress>(err_, NodeNames(loaded->fleet),
                                                    width > 0 ? width : 120);
      ro.progress = terminal.get();
    } else {
      log = std::make_unique<LogProgress>(err_);
      ro.progress = log.get();
    }
    const absl::Time start = absl::Now();
    std::vector<NodeReport> reports = Reconcile(loaded->plan, *agents, ro);
    const absl::Duration elapsed = absl::Now() - start;
    if (terminal != nullptr) terminal->Finish();
    out_ << header
         << (operation == Operation::kStatus ? FormatStatus(reports)
                                             : FormatChanges(operation, reports, elapsed))
         << std::flush;
    return ExitStatus(operation, reports);
  }

 private:
  int UsageFailure(const absl::Status& status) {
    err_ << "tunnel-controller: " << status.message() << "\n" << std::flush;
    return kExitBadInput;
  }

  // Bad input (InvalidArgument) is kExitBadInput; etcd unreachable, refusing or without the
  // description, kExitAgentFailed.
  int Failure(const absl::Status& status) {
    err_ << "tunnel-controller: " << status.message() << "\n" << std::flush;
    return absl::IsInvalidArgument(status) ? kExitBadInput : kExitAgentFailed;
  }

  // The members as etcd has them now (no grace: a node is a member while registered), and
  // what status prints before its table (who leads, the registrations).
  absl::StatusOr<Loaded> LoadEtcd(std::string* header) {
    absl::StatusOr<EtcdView> view = ReadEtcdView(options_, absl::Now());
    if (!view.ok()) return view.status();
    absl::StatusOr<FleetPlan> plan = PlanFleet(view->merged.fleet);
    if (!plan.ok()) return plan.status();
    if (options_.command == Command::kStatus) *header = view->header;
    return Loaded{std::move(view->merged.fleet), *std::move(plan)};
  }

  ReconcileOptions BaseOptions(Operation operation) const {
    ReconcileOptions ro;
    ro.operation = operation;
    ro.owner = options_.owner;
    ro.prune = options_.prune;
    ro.parallelism = options_.parallelism;
    ro.policy = options_.policy;
    ro.stop = stop_;
    return ro;
  }

  bool Stopped() const { return stop_ != nullptr && stop_->HasBeenNotified(); }

  // Waits up to `d`; false when stopped.
  bool Wait(absl::Duration d) const {
    if (stop_ == nullptr) {
      absl::SleepFor(d);
      return true;
    }
    return !stop_->WaitForNotificationWithTimeout(d);
  }

  static std::string Now() { return NowText(); }

  int Loop(Loaded loaded) {
    ControllerMetrics metrics;
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> exposer =
        ServeMetrics(options_, metrics, err_);
    if (!exposer.ok()) return UsageFailure(exposer.status());
    metrics.SetLeader(true);  // the only controller of its file
    std::string content = ReadWhole(options_.file);
    absl::StatusOr<std::vector<AgentHandle>> agents = connections_.For(loaded.fleet);
    if (!agents.ok()) return UsageFailure(agents.status());
    metrics.SetNodes(NodeNames(loaded.fleet), TotalDesired(loaded.plan),
                     static_cast<int>(TotalPeers(loaded.plan)));
    err_ << "tunnel-controller: " << options_.file << ": " << FleetShape(loaded.fleet, loaded.plan)
         << "; every " << absl::FormatDuration(options_.interval) << "\n"
         << std::flush;

    bool converged = false;
    for (int pass = 1; !Stopped(); ++pass) {
      const absl::Time start = absl::Now();
      ReconcileOptions ro = BaseOptions(Operation::kApply);
      std::vector<NodeReport> reports = Reconcile(loaded.plan, *agents, ro);
      const absl::Time end = absl::Now();
      metrics.RecordPass(reports, end - start, end);
      converged = ExitStatus(Operation::kApply, reports) == kExitOk;
      out_ << FormatPass(pass, reports, end - start) << std::flush;

      // Until the interval is over, or the file changes.
      const absl::Time next = start + options_.interval;
      while (!Stopped()) {
        const absl::Duration left = next - absl::Now();
        if (left <= absl::ZeroDuration()) break;
        if (!Wait(std::min(left, kFilePoll))) break;
        const std::string now = ReadWhole(options_.file);
        if (now == content) continue;
        content = now;
        absl::StatusOr<Loaded> reloaded = Load(options_.file);
        absl::StatusOr<std::vector<AgentHandle>> new_agents =
            reloaded.ok() ? connections_.For(reloaded->fleet)
                          : absl::StatusOr<std::vector<AgentHandle>>(reloaded.status());
        if (!reloaded.ok() || !new_agents.ok()) {
          err_ << Now() << " tunnel-controller: " << options_.file
               << " changed but is not usable; keeping the previous fleet: "
               << (reloaded.ok() ? new_agents.status() : reloaded.status()).message() << "\n"
               << std::flush;
          continue;
        }
        loaded = *std::move(reloaded);
        agents = std::move(new_agents);
        metrics.SetNodes(NodeNames(loaded.fleet), TotalDesired(loaded.plan),
                         static_cast<int>(TotalPeers(loaded.plan)));
        err_ << Now() << " tunnel-controller: " << options_.file
             << " changed: " << FleetShape(loaded.fleet, loaded.plan) << "\n"
             << std::flush;
        break;
      }
    }
    err_ << "tunnel-controller: stopped\n" << std::flush;
    return converged ? kExitOk : kExitAgentFailed;
  }

  const Options& options_;
  std::ostream& out_;
  std::ostream& err_;
  const int err_fd_;
  const absl::Notification* stop_;
  Connections connections_;
};

}  // namespace

absl::StatusOr<std::vector<AgentHandle>> Connections::For(const Fleet& fleet) {
  std::vector<AgentHandle> handles;
  std::map<std::string, Entry> kept;
  for (size_t i = 0; i < fleet.nodes.size(); ++i) {
    const Node& node = fleet.nodes[i];
    auto it = entries_.find(node.name);
    if (it != entries_.end() && it->second.agent == node.agent && it->second.tls == node.tls &&
        it->second.token_file == node.token_file) {
      handles.push_back(it->second.handle);
      kept[node.name] = it->second;
      continue;
    }
    const std::string field = absl::StrCat(fleet.source, ": nodes[", i, "] (", node.name, ")");
    clients::CredentialSources sources;
    sources.token_file = absl::StrCat(field, ": tokenFile");
    sources.ca_file = absl::StrCat(field, ": tls.ca");
    sources.cert_file = absl::StrCat(field, ": tls.cert");
    sources.key_file = absl::StrCat(field, ": tls.key");
    std::istringstream no_stdin;
    absl::StatusOr<clients::Credentials> credentials =
        clients::LoadCredentials(node.tls, node.token_file, "", no_stdin, sources);
    if (!credentials.ok()) return credentials.status();
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
    AgentHandle handle;
    handle.node = node.name;
    handle.token = credentials->token;
    handle.stub = v1::TunnelService::NewStub(
        clients::Dial(node.agent, node.tls, *credentials, std::move(args)));
    handles.push_back(handle);
    kept[node.name] = Entry{node.agent, node.tls, node.token_file, handle};
  }
  entries_ = std::move(kept);
  return handles;
}

std::string FormatPass(int pass, const std::vector<NodeReport>& reports, absl::Duration elapsed) {
  int converged = 0;
  int up = 0;
  int actual = 0;
  int peers_up = 0;
  int peers_actual = 0;
  std::string lines;
  for (const NodeReport& r : reports) {
    const bool ok = r.ok && r.converged;
    converged += ok;
    up += r.up;
    actual += std::max(r.actual, 0);
    peers_up += r.peers_up;
    peers_actual += std::max(r.peers_actual, 0);
    bool changed = !r.peer_changes.empty();
    for (const auto& c : r.changes) changed = changed || c.action() != v1::TunnelChange::UNCHANGED;
    if (!r.ok) {
      absl::StrAppend(&lines, "  ", r.node, ": FAILED: ", r.error, "\n");
    } else if (changed || !r.converged || !r.not_up.empty() || !r.peers_not_up.empty()) {
      absl::StrAppend(&lines, "  ", r.node, ": ", NodeLine(Operation::kApply, r));
      if (!r.extra.empty())
        absl::StrAppend(&lines, "; not in the file: ", absl::StrJoin(r.extra, " "));
      if (!r.extra_peers.empty())
        absl::StrAppend(&lines, "; peers not in the file: ", absl::StrJoin(r.extra_peers, " "));
      absl::StrAppend(&lines, "\n");
    }
  }
  std::string out = absl::StrCat(NowText(), " pass ", pass, ": ", converged, "/", reports.size(),
                                 " nodes converged, ", up, "/", actual, " tunnels up, ");
  if (AnyMultipoint(reports)) absl::StrAppend(&out, peers_up, "/", peers_actual, " peers up, ");
  absl::StrAppend(&out, absl::StrFormat("%.2f s", absl::ToDoubleSeconds(elapsed)), "\n", lines);
  return out;
}

std::string FormatChanges(Operation operation, const std::vector<NodeReport>& reports,
                          absl::Duration elapsed) {
  std::string out;
  int changes = 0;
  int peer_changes = 0;
  int converged = 0;
  int up = 0;
  int actual = 0;
  int peers_up = 0;
  int peers_actual = 0;
  for (const NodeReport& r : reports) {
    if (!r.ok) {
      absl::StrAppend(&out, r.node, ": FAILED: ", r.error, "\n");
      continue;
    }
    converged += r.converged;
    up += r.up;
    actual += std::max(r.actual, 0);
    peers_up += r.peers_up;
    peers_actual += std::max(r.peers_actual, 0);
    absl::StrAppend(&out, r.node, ": ", NodeLine(operation, r), "\n");
    for (const v1::TunnelChange& c : r.changes) {
      if (c.action() == v1::TunnelChange::UNCHANGED) continue;
      ++changes;
      absl::StrAppend(&out, ChangeLine(c.action(), c.name(), c.changed_fields()));
    }
    for (const v1::PeerChange& c : r.peer_changes) {
      ++peer_changes;
      absl::StrAppend(&out, ChangeLine(c.action(), PeerPath(r, c.name()), c.changed_fields()));
    }
    if (!r.extra.empty()) {
      absl::StrAppend(
          &out, "  not in the file (kept; --prune deletes): ", absl::StrJoin(r.extra, " "), "\n");
    }
    if (!r.extra_peers.empty()) {
      absl::StrAppend(&out, "  peers not in the file (kept; --prune deletes): ",
                      absl::StrJoin(r.extra_peers, " "), "\n");
    }
    for (const std::string& n : r.not_up) absl::StrAppend(&out, "  not up: ", n, "\n");
    for (const std::string& n : r.peers_not_up) {
      absl::StrAppend(&out, "  peer not up: ", PeerPath(r, n), "\n");
    }
  }
  const std::vector<std::string> failed = FailedNodes(reports);
  const size_t total = reports.size();
  const bool multipoint = AnyMultipoint(reports);
  if (operation == Operation::kPlan) {
    if (multipoint) {
      absl::StrAppend(&out, "plan: ", changes, " tunnel and ", peer_changes, " peer changes on ",
                      total - failed.size(), "/", total, " nodes");
    } else {
      absl::StrAppend(&out, "plan: ", changes, " changes on ", total - failed.size(), "/", total,
                      " nodes");
    }
  } else {
    absl::StrAppend(&out, "apply: ", converged, "/", total, " nodes converged, ", up, "/", actual,
                    " tunnels up, ");
    if (multipoint) absl::StrAppend(&out, peers_up, "/", peers_actual, " peers up, ");
    absl::StrAppend(&out, absl::StrFormat("%.2f s", absl::ToDoubleSeconds(elapsed)));
  }
  if (!failed.empty()) absl::StrAppend(&out, "; failed: ", absl::StrJoin(failed, " "));
  absl::StrAppend(&out, "\n");
  return out;
}

std::string AlignedColumns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatStatus(const std::vector<NodeReport>& reports) {
  // Multipoint fleets add the peers: desired, on the agent, and UP.
  const bool multipoint = AnyMultipoint(reports);
  std::vector<std::vector<std::string>> rows = {
      {"NODE", "REACHABLE", "DESIRED", "ACTUAL", "UP", "DOWN", "DRIFT"}};
  if (multipoint) {
    for (const char* h : {"PEERS", "PEERS_ACTUAL", "PEERS_UP"}) rows[0].push_back(h);
  }
  std::string details;
  std::vector<std::string> off;
  for (const NodeReport& r : reports) {
    if (!r.ok) {
      rows.push_back(
          {r.node, r.reachable ? "yes" : "no", absl::StrCat(r.desired), "-", "-", "-", "-"});
      if (multipoint) {
        for (const char* v : {"-", "-", "-"}) rows.back().push_back(v);
        rows.back()[7] = absl::StrCat(r.peers_desired);
      }
      absl::StrAppend(&details, r.node, ": ", r.error, "\n");
      off.push_back(r.node);
      continue;
    }
    std::vector<std::string> drift;
    auto add_drift = [&](v1::TunnelChange::Action action, const std::string& name,
                         const google::protobuf::RepeatedPtrField<std::string>& fields) {
      std::string d = absl::StrCat(ActionName(action), " ", name);
      if (!fields.empty()) absl::StrAppend(&d, " (", absl::StrJoin(fields, ","), ")");
      drift.push_back(std::move(d));
    };
    for (const v1::TunnelChange& c : r.changes) {
      if (c.action() == v1::TunnelChange::UNCHANGED) continue;
      add_drift(c.action(), c.name(), c.changed_fields());
    }
    for (const v1::PeerChange& c : r.peer_changes) {
      add_drift(c.action(), PeerPath(r, c.name()), c.changed_fields());
    }
    rows.push_back({r.node, "yes", absl::StrCat(r.desired), absl::StrCat(r.actual),
                    absl::StrCat(r.up), absl::StrCat(r.actual - r.up), absl::StrCat(drift.size())});
    if (multipoint) {
      rows.back().push_back(absl::StrCat(r.peers_desired));
      rows.back().push_back(r.peers_actual < 0 ? "-" : absl::StrCat(r.peers_actual));
      rows.back().push_back(absl::StrCat(r.peers_up));
    }
    if (!drift.empty()) {
      absl::StrAppend(&details, r.node,
                      ": drift (what apply --prune would do): ", absl::StrJoin(drift, ", "), "\n");
    }
    if (!r.not_up.empty()) {
      absl::StrAppend(&details, r.node, ": not up: ", absl::StrJoin(r.not_up, ", "), "\n");
    }
    if (!r.peers_not_up.empty()) {
      std::vector<std::string> paths;
      for (const std::string& n : r.peers_not_up) paths.push_back(PeerPath(r, n));
      absl::StrAppend(&details, r.node, ": peers not up: ", absl::StrJoin(paths, ", "), "\n");
    }
    if (!r.converged) off.push_back(r.node);
  }
  std::string out = AlignedColumns(rows);
  absl::StrAppend(&out, details, "status: ", reports.size() - off.size(), "/", reports.size(),
                  " nodes converged");
  if (!off.empty()) absl::StrAppend(&out, "; not converged: ", absl::StrJoin(off, " "));
  absl::StrAppend(&out, "\n");
  return out;
}

int ExitStatus(Operation operation, const std::vector<NodeReport>& reports) {
  for (const NodeReport& r : reports) {
    if (!r.ok) return kExitAgentFailed;
    if (operation == Operation::kStatus && !r.converged) return kExitAgentFailed;
  }
  return kExitOk;
}

int RunCommand(const Options& options, std::ostream& out, std::ostream& err, int err_fd,
               const absl::Notification* stop) {
  return Runner(options, out, err, err_fd, stop).Run();
}

int Main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, int err_fd,
         const absl::Notification* stop, const std::function<void()>& before_run) {
  absl::StatusOr<Options> options = ParseArgs(args);
  if (!options.ok()) {
    err << "tunnel-controller: " << options.status().message() << "\n"
        << "see 'tunnel-controller help'\n"
        << std::flush;
    return kExitBadInput;
  }
  if (options->command == Command::kHelp || options->command == Command::kVersion) {
    out << (options->command == Command::kHelp ? Usage() : VersionLine()) << std::flush;
    return kExitOk;
  }
  if (before_run) before_run();
  return RunCommand(*options, out, err, err_fd, stop);
}

}  // namespace tunnelagent::controller
