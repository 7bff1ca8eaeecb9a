#include "clients/tunnel_controller/reconciler.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/common/agent_connection.h"
#include "clients/common/request_id.h"
#include "clients/tunnel_controller/fleet.h"

namespace tunnelagent::controller {
namespace {

// "created", or for a plan (nothing was done) "to create".
const char* ActionVerb(v1::TunnelChange::Action action, bool planned) {
  switch (action) {
    case v1::TunnelChange::UNCHANGED:
      return "unchanged";
    case v1::TunnelChange::CREATE:
      return planned ? "to create" : "created";
    case v1::TunnelChange::UPDATE:
      return planned ? "to update" : "updated";
    case v1::TunnelChange::RECREATE:
      return planned ? "to recreate" : "recreated";
    case v1::TunnelChange::DELETE:
      return planned ? "to delete" : "deleted";
    default:
      return "other";
  }
}

// "3 created, 1 updated, 8 unchanged" from the count of each action.
std::string SummarizeCounts(std::map<int, int> counts, bool planned) {
  std::vector<std::string> parts;
  for (v1::TunnelChange::Action a :
       {v1::TunnelChange::CREATE, v1::TunnelChange::UPDATE, v1::TunnelChange::RECREATE,
        v1::TunnelChange::DELETE, v1::TunnelChange::UNCHANGED}) {
    if (counts[a] > 0) parts.push_back(absl::StrCat(counts[a], " ", ActionVerb(a, planned)));
  }
  return parts.empty() ? "nothing" : absl::StrJoin(parts, ", ");
}

const char* StateName(v1::OperState state) {
  switch (state) {
    case v1::OPER_STATE_UP:
      return "UP";
    case v1::OPER_STATE_DOWN:
      return "DOWN";
    case v1::OPER_STATE_ERROR:
      return "ERROR";
    default:
      return "UNKNOWN";
  }
}

// What a call of the controller is for, in the operator's words: its errors lead with it.
absl::string_view Purpose(absl::string_view method) {
  if (method == "ApplyTunnels") return "applying the node's tunnels";
  if (method == "ApplyPeers") return "applying the node's peers";
  if (method == "GetTunnel") return "reading the node's multipoint device";
  if (method == "ListPeers") return "listing the node's peers";
  if (method == "ListTunnels") return "listing the node's tunnels";
  return method;
}

// What an agent's answer means for the controller, in a few words.
absl::string_view Meaning(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
      return "the agent cannot be reached";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "the agent did not answer in time";
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return "the agent refused the controller's credentials";
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return "the agent refused what the fleet file asks for";
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return "the agent's present state does not allow it";
    case grpc::StatusCode::NOT_FOUND:
      return "the agent does not have what it refers to";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "the agent is at one of its limits";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "the agent does not have this call (an older version?)";
    default:
      return "the agent failed";
  }
}

// "name STATE: reason" of a tunnel or peer that is not UP, for the report.
template <typename TunnelOrPeer>
std::string NotUpLine(const TunnelOrPeer& t) {
  std::string line = absl::StrCat(t.name(), " ", StateName(t.status().state()));
  if (!t.status().reason().empty()) absl::StrAppend(&line, ": ", t.status().reason());
  return line;
}

class NodeWorker {
 public:
  // `multipoint`: the node's peers on `device` (null: a point-to-point fleet).
  NodeWorker(const std::vector<v1::Tunnel>& desired, const MultipointNode* multipoint,
             const std::string& device, const AgentHandle& agent, const ReconcileOptions& options,
             NodeReport* report)
      : desired_(desired),
        multipoint_(multipoint),
        device_(device),
        agent_(agent),
        options_(options),
        report_(*report) {}

  void Run() {
    const absl::Time start = absl::Now();
    report_.node = agent_.node;
    report_.desired = static_cast<int>(desired_.size());
    if (multipoint_ != nullptr) {
      report_.multipoint_device = device_;
      report_.peers_desired = static_cast<int>(multipoint_->peers.size());
    }
    if (!agent_.error.ok()) {
      report_.error = std::string(agent_.error.message());
      Progress(absl::StrCat("failed: ", report_.error), true);
    } else {
      Progress("connecting", false);
      report_.ok = Operate();
      if (report_.ok) {
        Progress(Summary(), true);
      } else {
        Progress(absl::StrCat("FAILED: ", report_.error), true);
      }
    }
    report_.duration = absl::Now() - start;
  }

 private:
  void Progress(const std::string& state, bool done) {
    if (options_.progress != nullptr) options_.progress->NodeState(agent_.node, state, done);
  }

  std::string Summary() const {
    const bool planned = options_.operation == Operation::kPlan;
    const std::string peers =
        multipoint_ == nullptr
            ? ""
            : absl::StrCat("; peers: ", SummarizePeerChanges(report_.peer_changes,
                                                             report_.peers_unchanged, planned));
    switch (options_.operation) {
      case Operation::kPlan:
        return absl::StrCat("plan: ", SummarizeChanges(report_.changes, planned), peers);
      case Operation::kApply: {
        std::string s = absl::StrCat("applied: ", SummarizeChanges(report_.changes), peers, "; ",
                                     report_.up, "/", report_.actual, " up");
        if (multipoint_ != nullptr) {
          absl::StrAppend(&s, ", ", report_.peers_up, "/", report_.peers_actual, " peers up");
        }
        if (!report_.extra.empty() || !report_.extra_peers.empty()) {
          absl::StrAppend(&s, "; ", report_.extra.size() + report_.extra_peers.size(),
                          " not in the file (--prune removes)");
        }
        return s;
      }
      case Operation::kStatus: {
        int drift = static_cast<int>(report_.peer_changes.size());
        for (const auto& c : report_.changes) drift += c.action() != v1::TunnelChange::UNCHANGED;
        std::string s = absl::StrCat(report_.up, "/", report_.actual, " up");
        if (multipoint_ != nullptr) {
          absl::StrAppend(&s, ", ", report_.peers_up, "/", report_.peers_actual, " peers up");
        }
        return absl::StrCat(s, ", drift ", drift);
      }
    }
    return "";
  }

  bool Stopped() const { return options_.stop != nullptr && options_.stop->HasBeenNotified(); }

  // Calls `call` with a fresh context until it succeeds, fails for good, or the retries are
  // spent. Sets report_.error on failure.
  template <typename Call>
  bool CallWithRetry(absl::string_view method, Call call) {
    std::mt19937 rng(std::hash<std::string>()(agent_.node) ^
                     static_cast<uint32_t>(absl::ToUnixNanos(absl::Now())));
    for (int attempt = 1;; ++attempt) {
      report_.attempts = attempt;
      if (options_.refuse_call) {
        if (std::string why = options_.refuse_call(agent_.node); !why.empty()) {
          report_.error = absl::StrCat(Purpose(method), " not attempted: ", why);
          return false;
        }
      }
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.policy.timeout));
      clients::AddToken(&context, agent_.token);
      const grpc::Status status = call(&context);
      last_code_ = status.error_code();
      if (status.ok()) {
        report_.reachable = true;
        return true;
      }
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
          status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        report_.reachable = true;
      }
      // What failed and why first; the call and the agent's words for whoever digs deeper.
      const std::string call_error =
          clients::FormatRpcError(method, status.error_code(), status.error_message());
      report_.error = absl::StrCat(Purpose(method), " failed: ", Meaning(status.error_code()), " (",
                                   call_error, ")");
      if (!IsRetryable(status.error_code()) || attempt > options_.policy.retries || Stopped()) {
        if (attempt > 1) {
          report_.error =
              absl::StrCat(Purpose(method), " failed after ", attempt,
                           " attempts: ", Meaning(status.error_code()), " (", call_error, ")");
        }
        return false;
      }
      std::uniform_real_distribution<double> jitter(0.8, 1.2);
      const absl::Duration wait = Backoff(options_.policy, attempt) * jitter(rng);
      Progress(absl::StrFormat("retry %d/%d in %.1fs after %s", attempt, options_.policy.retries,
                               absl::ToDoubleSeconds(wait), report_.error),
               false);
      if (options_.stop != nullptr) {
        if (options_.stop->WaitForNotificationWithTimeout(wait)) return false;
      } else {
        absl::SleepFor(wait);
      }
    }
  }

  // What an ApplyTunnels and an ApplyPeers request of this controller say besides their
  // items: its owner, prune and dry run, and a request id (a retry is the same request).
  template <typename Request>
  void SetApplyOptions(bool dry_run, bool prune, Request* request) const {
    request->set_owner(options_.owner);
    request->set_prune(prune);
    request->set_dry_run(dry_run);
    if (!dry_run) request->set_request_id(NewRequestId());
  }

  bool Apply(bool dry_run, bool prune) {
    v1::ApplyTunnelsRequest request;
    SetApplyOptions(dry_run, prune, &request);
    for (const v1::Tunnel& t : desired_) *request.add_tunnels() = t;
    v1::ApplyTunnelsResponse response;
    Progress(dry_run ? "planning" : absl::StrCat("applying ", desired_.size(), " tunnels"), false);
    if (!CallWithRetry("ApplyTunnels", [&](grpc::ClientContext* c) {
          return agent_.stub->ApplyTunnels(c, request, &response);
        })) {
      return false;
    }
    report_.changes.assign(response.changes().begin(), response.changes().end());
    return true;
  }

  std::string NewRequestId() const {
    return options_.new_request_id ? options_.new_request_id() : clients::NewRequestId();
  }

  // Whether ApplyTunnels' answer creates the device: a dry run cannot ask the agent about the
  // peers of a device it does not have yet, but knows they are all to create.
  bool DeviceToCreate() const {
    for (const v1::TunnelChange& c : report_.changes) {
      if (c.name() == device_ && c.action() == v1::TunnelChange::CREATE) return true;
    }
    return false;
  }

  void AllPeersToCreate() {
    report_.peer_changes.clear();
    for (const v1::Peer& p : multipoint_->peers) {
      v1::PeerChange c;
      c.set_name(p.name());
      c.set_action(v1::TunnelChange::CREATE);
      report_.peer_changes.push_back(std::move(c));
    }
    report_.peers_unchanged = 0;
  }

  bool ApplyPeers(bool dry_run, bool prune, const std::vector<v1::Peer>& peers) {
    v1::ApplyPeersRequest request;
    request.set_tunnel(device_);
    SetApplyOptions(dry_run, prune, &request);
    for (const v1::Peer& p : peers) *request.add_peers() = p;
    v1::ApplyPeersResponse response;
    Progress(dry_run ? "planning peers" : absl::StrCat("applying ", peers.size(), " peers"), false);
    if (!CallWithRetry("ApplyPeers", [&](grpc::ClientContext* c) {
          return agent_.stub->ApplyPeers(c, request, &response);
        })) {
      return false;
    }
    report_.peer_changes.assign(response.changes().begin(), response.changes().end());
    report_.peers_unchanged = static_cast<int>(response.unchanged());
    return true;
  }

  // The agent refuses to change the mode of a multipoint device that has peers (they were
  // checked against the mode). When that is why ApplyTunnels failed, this owner's peers are
  // taken off the device (ApplyPeers puts them back right after) and the apply tried again.
  bool ApplyAfterClearingPeers(bool prune) {
    if (last_code_ != grpc::StatusCode::FAILED_PRECONDITION) return false;
    const std::string error = report_.error;
    v1::GetTunnelRequest get;
    get.set_name(device_);
    v1::Tunnel current;
    if (!CallWithRetry("GetTunnel", [&](grpc::ClientContext* c) {
          return agent_.stub->GetTunnel(c, get, &current);
        })) {
      report_.error = error;
      return false;
    }
    auto owner = current.labels().find("owner");
    v1::TunnelMode wanted = current.mode();
    for (const v1::Tunnel& t : desired_) {
      if (t.name() == device_) wanted = t.mode();
    }
    if (!current.multipoint() || current.mode() == wanted || owner == current.labels().end() ||
        owner->second != options_.owner) {
      report_.error = error;
      return false;
    }
    Progress(absl::StrCat("mode of ", device_, " changes: removing its peers first"), false);
    return ApplyPeers(/*dry_run=*/false, /*prune=*/true, {}) && Apply(/*dry_run=*/false, prune);
  }

  // The owner's peers on the device: counts, states, and those the file lacks.
  bool ObservePeers() {
    v1::ListPeersRequest request;
    request.set_tunnel(device_);
    request.set_page_size(1000);
    std::set<std::string> wanted;
    for (const v1::Peer& p : multipoint_->peers) wanted.insert(p.name());
    report_.peers_actual = 0;
    Progress("listing peers", false);
    while (true) {
      v1::ListPeersResponse page;
      if (!CallWithRetry("ListPeers", [&](grpc::ClientContext* c) {
            return agent_.stub->ListPeers(c, request, &page);
          })) {
        report_.peers_actual = -1;
        return false;
      }
      for (const v1::Peer& p : page.peers()) {
        auto owner = p.labels().find("owner");
        if (owner == p.labels().end() || owner->second != options_.owner) continue;
        ++report_.peers_actual;
        if (p.status().state() == v1::OPER_STATE_UP) {
          ++report_.peers_up;
        } else {
          report_.peers_not_up.push_back(NotUpLine(p));
        }
        if (!wanted.count(p.name())) report_.extra_peers.push_back(p.name());
      }
      if (page.next_page_token().empty() || page.next_page_token() == request.page_token()) break;
      request.set_page_token(page.next_page_token());
    }
    return true;
  }

  // The owner's tunnels on the agent: counts, states, and those the file lacks.
  bool Observe() {
    v1::ListTunnelsRequest request;
    request.set_page_size(1000);
    (*request.mutable_labels())["owner"] = options_.owner;
    std::set<std::string> wanted;
    for (const v1::Tunnel& t : desired_) wanted.insert(t.name());
    report_.actual = 0;
    Progress("listing", false);
    while (true) {
      v1::ListTunnelsResponse page;
      if (!CallWithRetry("ListTunnels", [&](grpc::ClientContext* c) {
            return agent_.stub->ListTunnels(c, request, &page);
          })) {
        report_.actual = -1;
        return false;
      }
      for (const v1::Tunnel& t : page.tunnels()) {
        ++report_.actual;
        if (t.status().state() == v1::OPER_STATE_UP) {
          ++report_.up;
        } else {
          report_.not_up.push_back(NotUpLine(t));
        }
        if (!wanted.count(t.name())) report_.extra.push_back(t.name());
      }
      if (page.next_page_token().empty() || page.next_page_token() == request.page_token()) break;
      request.set_page_token(page.next_page_token());
    }
    return true;
  }

  bool AllUnchanged() const {
    for (const auto& c : report_.changes) {
      if (c.action() != v1::TunnelChange::UNCHANGED) return false;
    }
    return true;
  }

  // The peers' part of a dry run (kPlan, kStatus), after ApplyTunnels'.
  bool PlanPeers(bool prune) {
    if (multipoint_ == nullptr) return true;
    if (DeviceToCreate()) {
      AllPeersToCreate();
      return true;
    }
    return ApplyPeers(/*dry_run=*/true, prune, multipoint_->peers);
  }

  bool Operate() {
    switch (options_.operation) {
      case Operation::kPlan:
        if (!Apply(/*dry_run=*/true, options_.prune)) return false;
        if (!PlanPeers(options_.prune)) return false;
        report_.converged = AllUnchanged() && report_.peer_changes.empty();
        return true;
      case Operation::kApply:
        if (!Apply(/*dry_run=*/false, options_.prune) &&
            (multipoint_ == nullptr || !ApplyAfterClearingPeers(options_.prune))) {
          return false;
        }
        if (multipoint_ != nullptr &&
            !ApplyPeers(/*dry_run=*/false, options_.prune, multipoint_->peers)) {
          return false;
        }
        if (!Observe()) return false;
        if (multipoint_ != nullptr && !ObservePeers()) return false;
        report_.converged = report_.extra.empty() && report_.extra_peers.empty();
        return true;
      case Operation::kStatus:
        if (!Apply(/*dry_run=*/true, /*prune=*/true)) return false;
        if (!PlanPeers(/*prune=*/true)) return false;
        if (!Observe()) return false;
        if (multipoint_ != nullptr) {
          if (DeviceToCreate()) {
            report_.peers_actual = 0;  // no device, no peers
          } else if (!ObservePeers()) {
            return false;
          }
        }
        report_.converged = AllUnchanged() && report_.peer_changes.empty();
        return true;
    }
    return false;
  }

  const std::vector<v1::Tunnel>& desired_;
  const MultipointNode* multipoint_;
  const std::string& device_;
  const AgentHandle& agent_;
  const ReconcileOptions& options_;
  NodeReport& report_;
  grpc::StatusCode last_code_ = grpc::StatusCode::OK;  // of the last call
};

}  // namespace

bool IsRetryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::ABORTED;
}

absl::Duration Backoff(const CallPolicy& policy, int retry) {
  absl::Duration d = policy.initial_backoff;
  for (int i = 1; i < retry && d < policy.max_backoff; ++i) d *= 2;
  return std::min(d, policy.max_backoff);
}

std::string SummarizeChanges(const std::vector<v1::TunnelChange>& changes, bool planned) {
  std::map<int, int> counts;
  for (const v1::TunnelChange& c : changes) ++counts[c.action()];
  return SummarizeCounts(std::move(counts), planned);
}

std::string SummarizePeerChanges(const std::vector<v1::PeerChange>& changes, int unchanged,
                                 bool planned) {
  std::map<int, int> counts;
  for (const v1::PeerChange& c : changes) ++counts[c.action()];
  counts[v1::TunnelChange::UNCHANGED] += unchanged;
  return SummarizeCounts(std::move(counts), planned);
}

std::vector<NodeReport> Reconcile(const FleetPlan& plan, const std::vector<AgentHandle>& agents,
                                  const ReconcileOptions& options) {
  std::vector<NodeReport> reports(agents.size());
  static const std::vector<v1::Tunnel> kNone;
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < agents.size(); i = next++) {
      auto it = plan.desired.find(agents[i].node);
      AgentHandle missing;
      const AgentHandle* agent = &agents[i];
      if (it == plan.desired.end()) {
        missing = agents[i];
        missing.error =
            absl::NotFoundError(absl::StrCat("node ", agents[i].node, " is not planned"));
        agent = &missing;
      } else if (agent->error.ok() && agent->stub == nullptr) {
        missing = agents[i];
        missing.error = absl::FailedPreconditionError("no connection");
        agent = &missing;
      }
      const MultipointNode* multipoint = nullptr;
      if (!plan.multipoint_device.empty()) {
        auto mp = plan.multipoint.find(agents[i].node);
        if (mp != plan.multipoint.end()) multipoint = &mp->second;
      }
      NodeWorker(it == plan.desired.end() ? kNone : it->second, multipoint, plan.multipoint_device,
                 *agent, options, &reports[i])
          .Run();
    }
  };
  const size_t workers =
      std::min<size_t>(agents.size(), static_cast<size_t>(std::max(1, options.parallelism)));
  std::vector<std::thread> threads;
  for (size_t i = 1; i < workers; ++i) threads.emplace_back(work);
  if (workers > 0) work();
  for (std::thread& t : threads) t.join();
  return reports;
}

}  // namespace tunnelagent::controller
