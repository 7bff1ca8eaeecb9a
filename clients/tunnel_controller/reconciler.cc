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

const char* ActionVerb(v1::TunnelChange::Action action) {
  switch (action) {
    case v1::TunnelChange::UNCHANGED:
      return "unchanged";
    case v1::TunnelChange::CREATE:
      return "created";
    case v1::TunnelChange::UPDATE:
      return "updated";
    case v1::TunnelChange::RECREATE:
      return "recreated";
    case v1::TunnelChange::DELETE:
      return "deleted";
    default:
      return "other";
  }
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

class NodeWorker {
 public:
  NodeWorker(const std::vector<v1::Tunnel>& desired, const AgentHandle& agent,
             const ReconcileOptions& options, NodeReport* report)
      : desired_(desired), agent_(agent), options_(options), report_(*report) {}

  void Run() {
    const absl::Time start = absl::Now();
    report_.node = agent_.node;
    report_.desired = static_cast<int>(desired_.size());
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
    switch (options_.operation) {
      case Operation::kPlan:
        return absl::StrCat("plan: ", SummarizeChanges(report_.changes));
      case Operation::kApply: {
        std::string s = absl::StrCat("applied: ", SummarizeChanges(report_.changes), "; ",
                                     report_.up, "/", report_.actual, " up");
        if (!report_.extra.empty()) {
          absl::StrAppend(&s, "; ", report_.extra.size(), " not in the file (--prune removes)");
        }
        return s;
      }
      case Operation::kStatus: {
        int drift = 0;
        for (const auto& c : report_.changes) drift += c.action() != v1::TunnelChange::UNCHANGED;
        return absl::StrCat(report_.up, "/", report_.actual, " up, drift ", drift);
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
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.policy.timeout));
      clients::AddToken(&context, agent_.token);
      const grpc::Status status = call(&context);
      if (status.ok()) {
        report_.reachable = true;
        return true;
      }
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
          status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        report_.reachable = true;
      }
      report_.error = clients::FormatRpcError(method, status.error_code(), status.error_message());
      if (!IsRetryable(status.error_code()) || attempt > options_.policy.retries || Stopped()) {
        if (attempt > 1) absl::StrAppend(&report_.error, " (after ", attempt, " attempts)");
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

  bool Apply(bool dry_run, bool prune) {
    v1::ApplyTunnelsRequest request;
    request.set_owner(options_.owner);
    request.set_prune(prune);
    request.set_dry_run(dry_run);
    for (const v1::Tunnel& t : desired_) *request.add_tunnels() = t;
    if (!dry_run) {
      request.set_request_id(options_.new_request_id ? options_.new_request_id()
                                                     : clients::NewRequestId());
    }
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
          std::string line = absl::StrCat(t.name(), " ", StateName(t.status().state()));
          if (!t.status().reason().empty()) absl::StrAppend(&line, ": ", t.status().reason());
          report_.not_up.push_back(std::move(line));
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

  bool Operate() {
    switch (options_.operation) {
      case Operation::kPlan:
        if (!Apply(/*dry_run=*/true, options_.prune)) return false;
        report_.converged = AllUnchanged();
        return true;
      case Operation::kApply:
        if (!Apply(/*dry_run=*/false, options_.prune)) return false;
        if (!Observe()) return false;
        report_.converged = report_.extra.empty();
        return true;
      case Operation::kStatus:
        if (!Apply(/*dry_run=*/true, /*prune=*/true)) return false;
        if (!Observe()) return false;
        report_.converged = AllUnchanged();
        return true;
    }
    return false;
  }

  const std::vector<v1::Tunnel>& desired_;
  const AgentHandle& agent_;
  const ReconcileOptions& options_;
  NodeReport& report_;
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

std::string SummarizeChanges(const std::vector<v1::TunnelChange>& changes) {
  std::map<int, int> counts;
  for (const v1::TunnelChange& c : changes) ++counts[c.action()];
  std::vector<std::string> parts;
  for (v1::TunnelChange::Action a :
       {v1::TunnelChange::CREATE, v1::TunnelChange::UPDATE, v1::TunnelChange::RECREATE,
        v1::TunnelChange::DELETE, v1::TunnelChange::UNCHANGED}) {
    if (counts[a] > 0) parts.push_back(absl::StrCat(counts[a], " ", ActionVerb(a)));
  }
  return parts.empty() ? "nothing" : absl::StrJoin(parts, ", ");
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
      NodeWorker(it == plan.desired.end() ? kNone : it->second, *agent, options, &reports[i]).Run();
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
