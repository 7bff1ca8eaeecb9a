#include "clients/tunnel_controller/etcd_run.h"

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/tunnel_controller/controller.h"
#include "clients/tunnel_controller/etcd_members.h"
#include "clients/tunnel_controller/fleet_store.h"
#include "clients/tunnel_controller/leader.h"
#include "clients/tunnel_controller/metrics.h"
#include "clients/tunnel_controller/plan.h"

namespace tunnelagent::controller {
namespace {

// Changes that come within this of each other are applied together (an agent restarting is a
// delete and a put; a description edit and the nodes it names).
const absl::Duration kDebounce = absl::Milliseconds(50);
// A stream of changes is not put off for longer than this.
const absl::Duration kDebounceMax = absl::Milliseconds(250);
// A failed list is tried again after this, doubling up to kRelistMax: etcd coming back is
// noticed within kRelistMax.
const absl::Duration kRelistMin = absl::Milliseconds(100);
const absl::Duration kRelistMax = absl::Milliseconds(500);
// The main loop's longest sleep: how soon it sees `stop` (a Notification it cannot wait on
// together with its own condition).
const absl::Duration kMaxSleep = absl::Milliseconds(200);
// The same etcd error is logged once per this.
const absl::Duration kErrorLogEvery = absl::Seconds(10);

std::string ReplicaName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host[0] != '\0' ? host : "unknown-host", "/", getpid());
}

int DesiredOf(const FleetPlan& plan, const std::vector<AgentHandle>& agents) {
  int n = 0;
  for (const AgentHandle& a : agents) {
    if (auto it = plan.desired.find(a.node); it != plan.desired.end()) n += it->second.size();
  }
  return n;
}

int PeersOf(const FleetPlan& plan, const std::vector<AgentHandle>& agents) {
  int n = 0;
  for (const AgentHandle& a : agents) {
    if (auto it = plan.multipoint.find(a.node); it != plan.multipoint.end()) {
      n += it->second.peers.size();
    }
  }
  return n;
}

class FleetLeader {
 public:
  FleetLeader(const Options& options, std::ostream& out, std::ostream& err,
              const absl::Notification* stop)
      : options_(options),
        fleet_(options.etcd.fleet),
        out_(out),
        err_(err),
        stop_(stop != nullptr ? stop : &never_),
        membership_(options.grace) {}

  int Run() {
    // Each call within a third of the lease's TTL, so that a renewal that fails still leaves
    // time for another before the lease lapses.
    const absl::Duration call_timeout = std::min(absl::Seconds(5), options_.lease_ttl / 3);
    absl::StatusOr<std::unique_ptr<etcd::Client>> client = ConnectEtcd(options_.etcd, call_timeout);
    if (!client.ok()) {
      Log(std::string(client.status().message()));
      return absl::IsInvalidArgument(client.status()) ? kExitBadInput : kExitAgentFailed;
    }
    client_ = *std::move(client);
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> exposer =
        ServeMetrics(options_, metrics_, err_);
    if (!exposer.ok()) {
      Log(std::string(exposer.status().message()));
      return kExitBadInput;
    }
    metrics_.SetLeader(false);
    ElectionOptions eo;
    eo.election = ElectionName(fleet_);
    eo.value = ReplicaName();
    eo.ttl = options_.lease_ttl;
    eo.on_error = [this](absl::string_view call, const absl::Status& s) { EtcdError(call, s); };
    eo.on_lost = [this] { Wake(); };
    Log(absl::StrCat("fleet ", fleet_, " on etcd ", absl::StrJoin(options_.etcd.endpoints, ","),
                     ": campaigning as ", eo.value, " (lease TTL ",
                     absl::FormatDuration(options_.lease_ttl), ", grace ",
                     absl::FormatDuration(options_.grace), ", every ",
                     absl::FormatDuration(options_.interval), ")"));
    election_ = std::make_unique<LeaderElection>(*client_, std::move(eo));
    while (!Stopped()) {
      if (!election_->Campaign(*stop_)) break;
      Lead();
    }
    // Revoking the lease hands the leadership to a standby at once.
    election_.reset();
    Log("stopped");
    return !led_ || converged_ ? kExitOk : kExitAgentFailed;
  }

 private:
  bool Stopped() const { return stop_->HasBeenNotified(); }

  void Log(const std::string& line) ABSL_LOCKS_EXCLUDED(log_mu_) {
    absl::MutexLock lock(&log_mu_);
    err_ << NowText() << " tunnel-controller: " << line << "\n" << std::flush;
  }

  // Counted always; logged when it differs from the last one logged, or once per
  // kErrorLogEvery (while etcd is away every retry fails alike).
  void EtcdError(absl::string_view call, const absl::Status& status) ABSL_LOCKS_EXCLUDED(log_mu_) {
    metrics_.EtcdError();
    const std::string text = absl::StrCat(
        "etcd: ", call, ": ", absl::StatusCodeToString(status.code()), ": ", status.message());
    const absl::Time now = absl::Now();
    {
      absl::MutexLock lock(&log_mu_);
      if (text == last_error_ && now - last_error_at_ < kErrorLogEvery) return;
      last_error_ = text;
      last_error_at_ = now;
    }
    Log(text);
  }

  // A message logged once until it changes (a problem that every pass would find again).
  void LogOnce(std::string* last, const std::string& text) {
    if (*last == text) return;
    *last = text;
    if (!text.empty()) Log(text);
  }

  void Wake() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    woken_ = true;
    cv_.Signal();
  }

  // On the watch's thread. Each event keeps when it came: a node's grace runs from then, not
  // from when a pass under way lets the main loop see it. A node whose registration went is
  // not called from then on, even by that pass.
  void OnEvents(const std::vector<etcd::WatchEvent>& events) ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    for (const etcd::WatchEvent& e : events) {
      inbox_.push_back({e, now});
      const FleetKey key = ClassifyKey(fleet_, e.kv.key);
      if (key.kind != FleetKey::Kind::kNode) continue;
      if (e.type == etcd::WatchEvent::Type::kDelete) {
        unregistered_.insert(key.node);
      } else {
        unregistered_.erase(key.node);
      }
    }
    cv_.Signal();
  }

  // Why a node may not be called now; empty: it may.
  std::string RefuseCall(const std::string& node) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!election_->Leading() || Stopped()) return "this controller no longer leads the fleet";
    absl::MutexLock lock(&mu_);
    if (unregistered_.contains(node)) return "its registration went: it is leaving the fleet";
    return "";
  }

  void OnWatchEnd(const absl::Status& why) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    watch_ended_ = why;
    cv_.Signal();
  }

  // The whole fleet at one revision, and a watch from the next one.
  bool List(std::unique_ptr<etcd::Watch>* watch, absl::Time now) {
    absl::StatusOr<FleetSnapshot> snapshot = ReadFleet(*client_, fleet_);
    if (!snapshot.ok()) {
      EtcdError("list", snapshot.status());
      return false;
    }
    SetDescription(snapshot->description);
    const std::set<std::string> unreadable(snapshot->unreadable_nodes.begin(),
                                           snapshot->unreadable_nodes.end());
    const int before = membership_.RegisteredCount();
    membership_.Reset(snapshot->registrations, unreadable, now);
    LogOnce(&last_unreadable_, snapshot->unreadable.empty()
                                   ? ""
                                   : absl::StrCat("registrations not read (kept as they were): ",
                                                  absl::StrJoin(snapshot->unreadable, "; ")));
    metrics_.SetRegistered(membership_.RegisteredCount());
    etcd::WatchCallbacks callbacks;
    callbacks.on_events = [this](const std::vector<etcd::WatchEvent>& events, int64_t) {
      OnEvents(events);
    };
    callbacks.on_end = [this](const absl::Status& why) { OnWatchEnd(why); };
    absl::StatusOr<std::unique_ptr<etcd::Watch>> watching =
        client_->WatchPrefix(FleetPrefix(fleet_), snapshot->revision + 1, std::move(callbacks));
    if (!watching.ok()) {
      EtcdError("watch", watching.status());
      return false;
    }
    *watch = *std::move(watching);
    Log(absl::StrCat("listed at revision ", snapshot->revision, ": ", membership_.RegisteredCount(),
                     " nodes registered (", before, " before), description ",
                     description_.has_value() ? "present" : "absent", "; watching"));
    return true;
  }

  void SetDescription(const std::optional<std::string>& text) {
    if (!text.has_value()) {
      if (description_.has_value()) {
        Log(absl::StrCat(DescriptionKey(fleet_),
                         " was deleted: nothing is converged until a description is stored; "
                         "the agents keep what they have"));
      }
      description_.reset();
      description_text_.clear();
      return;
    }
    if (description_.has_value() && *text == description_text_) return;
    absl::StatusOr<Fleet> parsed = ParseDescription(*text, DescriptionKey(fleet_));
    if (!parsed.ok()) {
      Log(absl::StrCat("the stored description is not valid",
                       description_.has_value() ? " (the previous one is kept)" : "", ": ",
                       parsed.status().message()));
      return;
    }
    Log(absl::StrCat(description_.has_value() ? "description changed" : "description read", ": ",
                     parsed->nodes.size(), " pinned nodes"));
    description_ = *std::move(parsed);
    description_text_ = *text;
  }

  // One change seen by the watch; whether the fleet may have changed.
  bool Apply(const etcd::WatchEvent& e, absl::Time now) {
    const FleetKey key = ClassifyKey(fleet_, e.kv.key);
    const bool put = e.type == etcd::WatchEvent::Type::kPut;
    switch (key.kind) {
      case FleetKey::Kind::kDescription:
        SetDescription(put ? std::optional<std::string>(e.kv.value) : std::nullopt);
        return true;
      case FleetKey::Kind::kNode: {
        if (!put) {
          if (membership_.Unregistered(key.node, now)) {
            Log(absl::StrCat(key.node, " unregistered: a member for another ",
                             absl::FormatDuration(options_.grace)));
          }
          return true;
        }
        absl::StatusOr<Registration> r =
            ParseRegistration(key.node, e.kv.value, e.kv.create_revision, e.kv.mod_revision);
        if (!r.ok()) {
          Log(absl::StrCat(key.node,
                           ": registration not read (kept as it was): ", r.status().message()));
          return false;
        }
        if (membership_.Registered(*r)) Log(absl::StrCat(key.node, " registered"));
        return true;
      }
      case FleetKey::Kind::kElection:
        // This leader's key deleted behind its back (an operator, a revoked lease): it no
        // longer leads, whatever its lease says.
        if (!put && e.kv.key == election_->LeaderKeyName()) {
          election_->Lost(absl::StrCat("its leader key ", e.kv.key, " was deleted"));
        }
        return false;
      case FleetKey::Kind::kOther:
        return false;
    }
    return false;
  }

  // Brings every member (but those leaving) to the fleet.
  void Pass(bool prune) {
    const absl::Time start = absl::Now();
    MergedFleet merged = BuildFleet(*description_, membership_.Members());
    LogOnce(&last_refused_, merged.refused.empty()
                                ? ""
                                : absl::StrCat("registered but not a member: ",
                                               absl::StrJoin(merged.refused, "; ")));
    absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
    LogOnce(&last_plan_error_, plan.ok()
                                   ? ""
                                   : absl::StrCat("the fleet cannot be planned",
                                                  last_good_ ? " (the previous one is kept)" : "",
                                                  ": ", plan.status().message()));
    if (plan.ok()) {
      last_good_ = Good{std::move(merged), *std::move(plan)};
    } else if (!last_good_.has_value()) {
      return;
    }
    const Good& good = *last_good_;
    absl::StatusOr<std::vector<AgentHandle>> handles = connections_.For(good.merged.fleet);
    LogOnce(&last_handle_error_, handles.ok() ? "" : std::string(handles.status().message()));
    if (!handles.ok()) return;
    // A leaving node stays the others' peer, and is not called: it is most likely gone.
    std::vector<AgentHandle> agents;
    for (AgentHandle& h : *handles) {
      if (!good.merged.leaving.count(h.node)) agents.push_back(std::move(h));
    }
    std::vector<std::string> names;
    for (const AgentHandle& a : agents) names.push_back(a.node);
    metrics_.SetNodes(names, DesiredOf(good.plan, agents), PeersOf(good.plan, agents));

    ReconcileOptions ro;
    ro.operation = Operation::kApply;
    ro.owner = options_.owner;
    ro.prune = prune;
    ro.parallelism = options_.parallelism;
    ro.policy = options_.policy;
    ro.stop = stop_;
    ro.refuse_call = [this](const std::string& node) { return RefuseCall(node); };
    std::vector<NodeReport> reports = Reconcile(good.plan, agents, ro);
    const absl::Time end = absl::Now();
    metrics_.RecordPass(reports, end - start, end);
    converged_ = ExitStatus(Operation::kApply, reports) == kExitOk;
    bool pending = false;
    {
      absl::MutexLock lock(&mu_);
      pending = !inbox_.empty() || watch_ended_.has_value();
    }
    if (!plan.ok() || pending) metrics_.SetFleetConverged(false);
    out_ << FormatPass(++passes_, reports, end - start) << std::flush;
  }

  // One term: from winning the election to losing it (or stop).
  void Lead() {
    led_ = true;
    const absl::Time term_start = absl::Now();
    metrics_.SetLeader(true);
    Log(absl::StrCat(
        "leading fleet ", fleet_, " (", election_->LeaderKeyName(), ")",
        options_.grace > absl::ZeroDuration()
            ? absl::StrCat("; nothing deleted for the first ", absl::FormatDuration(options_.grace))
            : ""));
    std::unique_ptr<etcd::Watch> watch;
    bool listed = false;
    absl::Time relist_at = term_start;
    absl::Duration relist_wait = kRelistMin;
    bool dirty = false;
    absl::Time first_change = absl::InfiniteFuture();
    absl::Time last_change = absl::InfinitePast();
    absl::Time next_full = absl::InfiniteFuture();
    const absl::Time prune_from = term_start + options_.grace;
    bool pruning = options_.grace == absl::ZeroDuration();
    auto changed = [&](absl::Time now) {
      if (!dirty) first_change = now;
      dirty = true;
      last_change = now;
    };
    while (!Stopped() && election_->Leading()) {
      absl::Time now = absl::Now();
      if (!listed && now >= relist_at) {
        watch.reset();  // no callback of the old watch after this
        {
          absl::MutexLock lock(&mu_);
          inbox_.clear();
          watch_ended_.reset();
          unregistered_.clear();  // the list says who is registered
        }
        if (List(&watch, now)) {
          listed = true;
          relist_wait = kRelistMin;
          changed(now - kDebounce);  // a pass at once
        } else {
          relist_at = now + relist_wait;
          relist_wait = std::min(relist_wait * 2, kRelistMax);
        }
      }
      std::vector<ReceivedEvent> events;
      std::optional<absl::Status> ended;
      {
        absl::MutexLock lock(&mu_);
        events.swap(inbox_);
        ended.swap(watch_ended_);
      }
      now = absl::Now();
      for (const ReceivedEvent& e : events) {
        if (Apply(e.event, e.received)) changed(now);
      }
      metrics_.SetRegistered(membership_.RegisteredCount());
      // What came during the last pass changed nothing of the fleet (a standby's candidacy,
      // say): that pass's outcome stands.
      if (!events.empty() && !dirty && converged_) metrics_.SetFleetConverged(true);
      if (ended.has_value() && listed) {
        if (!absl::IsOutOfRange(*ended)) EtcdError("watch", *ended);
        Log(absl::StrCat("the watch ended (", absl::StatusCodeToString(ended->code()),
                         "): listing again"));
        listed = false;
        relist_at = now;
        continue;
      }
      if (const std::vector<std::string> gone = membership_.Expire(now); !gone.empty()) {
        Log(absl::StrCat("grace over, removed from the fleet: ", absl::StrJoin(gone, " ")));
        changed(now - kDebounce);
      }
      if (!pruning && now >= prune_from) {
        pruning = true;
        changed(now - kDebounce);  // delete what nodes that left before this term left behind
      }
      const bool due =
          dirty && (now >= last_change + kDebounce || now >= first_change + kDebounceMax);
      if (description_.has_value() && (due || now >= next_full)) {
        dirty = false;
        Pass(pruning);
        next_full = absl::Now() + options_.interval;
        continue;  // what came during the pass, before sleeping
      }
      if (due) dirty = false;  // no description: nothing to converge

      absl::Time until = std::min(
          {now + kMaxSleep, next_full, membership_.NextExpiry(), election_->LeadingUntil()});
      if (!listed) until = std::min(until, relist_at);
      if (!pruning) until = std::min(until, prune_from);
      if (dirty)
        until = std::min(until, std::min(last_change + kDebounce, first_change + kDebounceMax));
      absl::MutexLock lock(&mu_);
      if (inbox_.empty() && !watch_ended_.has_value() && !woken_) cv_.WaitWithDeadline(&mu_, until);
      woken_ = false;
    }
    watch.reset();
    metrics_.SetLeader(false);
    metrics_.SetFleetConverged(false);
    if (!Stopped()) Log(absl::StrCat("no longer leading: ", election_->LostReason()));
  }

  const Options& options_;
  const std::string fleet_;
  std::ostream& out_;
  std::ostream& err_;
  const absl::Notification never_;
  const absl::Notification* stop_;

  ControllerMetrics metrics_;
  std::unique_ptr<etcd::Client> client_;
  Membership membership_;
  std::optional<Fleet> description_;
  std::string description_text_;
  Connections connections_;
  struct Good {
    MergedFleet merged;
    FleetPlan plan;
  };
  std::optional<Good> last_good_;  // the last fleet that could be planned
  std::string last_refused_;
  std::string last_plan_error_;
  std::string last_handle_error_;
  std::string last_unreadable_;
  int passes_ = 0;
  bool led_ = false;
  bool converged_ = false;

  absl::Mutex log_mu_;
  std::string last_error_ ABSL_GUARDED_BY(log_mu_);
  absl::Time last_error_at_ ABSL_GUARDED_BY(log_mu_) = absl::InfinitePast();

  // What the watch's and the election's threads hand to the main loop.
  absl::Mutex mu_;
  absl::CondVar cv_;
  struct ReceivedEvent {
    etcd::WatchEvent event;
    absl::Time received;
  };
  std::vector<ReceivedEvent> inbox_ ABSL_GUARDED_BY(mu_);
  // Nodes whose registration's last event is its deletion (since the last list).
  absl::flat_hash_set<std::string> unregistered_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> watch_ended_ ABSL_GUARDED_BY(mu_);
  bool woken_ ABSL_GUARDED_BY(mu_) = false;

  // Last: destroyed first, while what its callbacks touch is still there.
  std::unique_ptr<LeaderElection> election_;
};

}  // namespace

int RunWithEtcd(const Options& options, std::ostream& out, std::ostream& err,
                const absl::Notification* stop) {
  return FleetLeader(options, out, err, stop).Run();
}

}  // namespace tunnelagent::controller
