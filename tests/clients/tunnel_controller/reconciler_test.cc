// Reconcile against in-process fake agents: what goes on the wire (owner, dry run, prune,
// request ids kept across retries, the token), retries and backoff, deadlines, bounded
// parallelism, a failing node reported while the others converge; the reports and metrics.
#include "clients/tunnel_controller/reconciler.h"

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/tunnel_controller/controller.h"
#include "clients/tunnel_controller/metrics.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace tunnelagent::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ApplyTunnels and ListTunnels with the agent's owner semantics, over a map of tunnels; the
// peers of multipoint tunnels (ApplyPeers, ListPeers) as the agent has them: only the changes
// answered, a tunnel's mode not changed while it has peers.
class FakeAgent final : public v1::TunnelService::Service {
 public:
  // The next calls fail with these, in order.
  void FailNext(std::vector<grpc::Status> statuses) {
    absl::MutexLock lock(&mu_);
    failures_ = std::move(statuses);
  }
  void SetDelay(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    delay_ = d;
  }
  // A tunnel someone else made.
  void Add(v1::Tunnel t) {
    absl::MutexLock lock(&mu_);
    tunnels_[t.name()] = std::move(t);
  }
  void SetState(const std::string& name, v1::OperState state) {
    absl::MutexLock lock(&mu_);
    tunnels_[name].mutable_status()->set_state(state);
  }
  std::vector<v1::ApplyTunnelsRequest> applies() {
    absl::MutexLock lock(&mu_);
    return applies_;
  }
  std::vector<std::string> tokens() {
    absl::MutexLock lock(&mu_);
    return tokens_;
  }
  std::map<std::string, v1::Tunnel> tunnels() {
    absl::MutexLock lock(&mu_);
    return tunnels_;
  }
  std::vector<v1::ApplyPeersRequest> peer_applies() {
    absl::MutexLock lock(&mu_);
    return peer_applies_;
  }
  // The methods called, in order.
  std::vector<std::string> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  // The peers of a tunnel, by name.
  std::map<std::string, v1::Peer> peers(const std::string& tunnel) {
    absl::MutexLock lock(&mu_);
    return peers_[tunnel];
  }
  void ErasePeer(const std::string& tunnel, const std::string& peer) {
    absl::MutexLock lock(&mu_);
    peers_[tunnel].erase(peer);
  }
  void SetPeerState(const std::string& tunnel, const std::string& peer, v1::OperState state) {
    absl::MutexLock lock(&mu_);
    peers_[tunnel][peer].mutable_status()->set_state(state);
  }

  static std::atomic<int> in_flight;
  static std::atomic<int> max_in_flight;

  grpc::Status ApplyTunnels(grpc::ServerContext* context, const v1::ApplyTunnelsRequest* request,
                            v1::ApplyTunnelsResponse* response) override {
    const int now = ++in_flight;
    int seen = max_in_flight.load();
    while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
    }
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      delay = delay_;
    }
    absl::SleepFor(delay);
    --in_flight;
    if (context->IsCancelled()) return grpc::Status::CANCELLED;
    absl::MutexLock lock(&mu_);
    Record(context);
    calls_.push_back("ApplyTunnels");
    applies_.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    std::map<std::string, v1::TunnelChange> changes;
    std::map<std::string, v1::Tunnel> next = tunnels_;
    std::set<std::string> given;
    for (v1::Tunnel t : request->tunnels()) {
      (*t.mutable_labels())["owner"] = request->owner();
      given.insert(t.name());
      v1::TunnelChange& c = changes[t.name()];
      c.set_name(t.name());
      auto it = tunnels_.find(t.name());
      if (it == tunnels_.end()) {
        c.set_action(v1::TunnelChange::CREATE);
        t.mutable_status()->set_state(v1::OPER_STATE_UP);
      } else {
        if (it->second.labels().count("owner") == 0 ||
            it->second.labels().at("owner") != request->owner()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not yours");
        }
        const size_t peers = peers_[t.name()].size();
        if (peers > 0 && (it->second.mode() != t.mode() || !t.multipoint())) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              absl::StrCat("tunnel ", t.name(), " has ", peers,
                                           " peers: delete them before changing its mode"));
        }
        v1::Tunnel old = it->second;
        old.clear_status();
        c.set_action(google::protobuf::util::MessageDifferencer::Equals(old, t)
                         ? v1::TunnelChange::UNCHANGED
                         : v1::TunnelChange::UPDATE);
        *t.mutable_status() = it->second.status();
      }
      next[t.name()] = t;
    }
    if (request->prune()) {
      for (const auto& [name, t] : tunnels_) {
        auto owner = t.labels().find("owner");
        if (given.count(name) || owner == t.labels().end() || owner->second != request->owner()) {
          continue;
        }
        changes[name].set_name(name);
        changes[name].set_action(v1::TunnelChange::DELETE);
        next.erase(name);
      }
    }
    for (auto& [name, c] : changes) *response->add_changes() = c;
    response->set_dry_run(request->dry_run());
    if (!request->dry_run()) {
      tunnels_ = std::move(next);
      for (auto it = peers_.begin(); it != peers_.end();) {
        it = tunnels_.count(it->first) ? std::next(it) : peers_.erase(it);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* request,
                         v1::Tunnel* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    calls_.push_back("GetTunnel");
    auto it = tunnels_.find(request->name());
    if (it == tunnels_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such tunnel");
    *response = it->second;
    return grpc::Status::OK;
  }

  grpc::Status ApplyPeers(grpc::ServerContext* context, const v1::ApplyPeersRequest* request,
                          v1::ApplyPeersResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    calls_.push_back("ApplyPeers");
    peer_applies_.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    auto t = tunnels_.find(request->tunnel());
    if (t == tunnels_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("tunnel ", request->tunnel(), " not found"));
    }
    if (!t->second.multipoint()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not multipoint");
    }
    std::map<std::string, v1::Peer> next = peers_[request->tunnel()];
    std::map<std::string, v1::PeerChange> changes;
    std::set<std::string> given;
    uint32_t unchanged = 0;
    for (v1::Peer p : request->peers()) {
      (*p.mutable_labels())["owner"] = request->owner();
      given.insert(p.name());
      auto it = next.find(p.name());
      v1::PeerChange c;
      c.set_name(p.name());
      if (it == next.end()) {
        c.set_action(v1::TunnelChange::CREATE);
        p.mutable_status()->set_state(v1::OPER_STATE_UP);
      } else {
        v1::Peer old = it->second;
        old.clear_status();
        if (google::protobuf::util::MessageDifferencer::Equals(old, p)) {
          ++unchanged;
          continue;
        }
        c.set_action(v1::TunnelChange::UPDATE);
        *p.mutable_status() = it->second.status();
      }
      changes[p.name()] = c;
      next[p.name()] = p;
    }
    if (request->prune()) {
      for (auto it = next.begin(); it != next.end();) {
        auto owner = it->second.labels().find("owner");
        if (given.count(it->first) || owner == it->second.labels().end() ||
            owner->second != request->owner()) {
          ++it;
          continue;
        }
        changes[it->first].set_name(it->first);
        changes[it->first].set_action(v1::TunnelChange::DELETE);
        it = next.erase(it);
      }
    }
    for (auto& [name, c] : changes) *response->add_changes() = c;
    response->set_unchanged(unchanged);
    response->set_dry_run(request->dry_run());
    if (!request->dry_run()) peers_[request->tunnel()] = std::move(next);
    return grpc::Status::OK;
  }

  grpc::Status ListPeers(grpc::ServerContext* context, const v1::ListPeersRequest* request,
                         v1::ListPeersResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    calls_.push_back("ListPeers");
    if (!tunnels_.count(request->tunnel())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such tunnel");
    }
    for (const auto& [name, p] : peers_[request->tunnel()]) *response->add_peers() = p;
    return grpc::Status::OK;
  }

  grpc::Status ListTunnels(grpc::ServerContext* context, const v1::ListTunnelsRequest* request,
                           v1::ListTunnelsResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    calls_.push_back("ListTunnels");
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    for (const auto& [name, t] : tunnels_) {
      bool match = true;
      for (const auto& [k, v] : request->labels()) {
        auto it = t.labels().find(k);
        match = match && it != t.labels().end() && it->second == v;
      }
      if (match) *response->add_tunnels() = t;
    }
    return grpc::Status::OK;
  }

 private:
  void Record(grpc::ServerContext* context) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = context->client_metadata().find("authorization");
    tokens_.push_back(it == context->client_metadata().end()
                          ? ""
                          : std::string(it->second.data(), it->second.size()));
  }
  grpc::Status NextFailure() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failures_.empty()) return grpc::Status::OK;
    grpc::Status s = failures_.front();
    failures_.erase(failures_.begin());
    return s;
  }

  absl::Mutex mu_;
  std::vector<grpc::Status> failures_ ABSL_GUARDED_BY(mu_);
  absl::Duration delay_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, v1::Tunnel> tunnels_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::ApplyTunnelsRequest> applies_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> tokens_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::ApplyPeersRequest> peer_applies_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<std::string, v1::Peer>> peers_ ABSL_GUARDED_BY(mu_);
};
std::atomic<int> FakeAgent::in_flight{0};
std::atomic<int> FakeAgent::max_in_flight{0};

v1::Tunnel MakeTunnel(const std::string& name, const std::string& remote) {
  v1::Tunnel t;
  t.set_name(name);
  t.set_mode(v1::TUNNEL_MODE_GRE);
  t.set_remote(remote);
  return t;
}

class ReconcilerTest : public ::testing::Test {
 protected:
  // `n` fake agents node1..nodeN, each wanting tunnels to every other node.
  void SetUpNodes(int n) {
    for (int i = 1; i <= n; ++i) {
      const std::string node = absl::StrCat("node", i);
      auto agent = std::make_unique<FakeAgent>();
      grpc::ServerBuilder builder;
      builder.RegisterService(agent.get());
      std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
      AgentHandle handle;
      handle.node = node;
      handle.token = absl::StrCat("token-", i);
      handle.stub = v1::TunnelService::NewStub(server->InProcessChannel(grpc::ChannelArguments()));
      handles_.push_back(handle);
      agents_[node] = std::move(agent);
      servers_.push_back(std::move(server));
      for (int j = 1; j <= n; ++j) {
        if (j != i) {
          plan_.desired[node].push_back(
              MakeTunnel(absl::StrCat("tc-node", j), absl::StrCat("198.18.0.", j)));
        }
      }
    }
  }

  void TearDown() override {
    for (auto& s : servers_) s->Shutdown();
  }

  ReconcileOptions Options(Operation op) {
    ReconcileOptions o;
    o.operation = op;
    o.owner = "fleet";
    o.policy.timeout = absl::Seconds(5);
    o.policy.retries = 3;
    o.policy.initial_backoff = absl::Milliseconds(1);
    o.policy.max_backoff = absl::Milliseconds(4);
    return o;
  }

  const NodeReport& ReportOf(const std::vector<NodeReport>& reports, const std::string& node) {
    for (const NodeReport& r : reports) {
      if (r.node == node) return r;
    }
    ADD_FAILURE() << "no report for " << node;
    static NodeReport none;
    return none;
  }

  FleetPlan plan_;
  std::vector<AgentHandle> handles_;
  std::map<std::string, std::unique_ptr<FakeAgent>> agents_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
};

TEST_F(ReconcilerTest, ApplyThenNothingToDo) {
  SetUpNodes(3);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  ASSERT_EQ(reports.size(), 3u);
  for (const NodeReport& r : reports) {
    EXPECT_TRUE(r.ok) << r.node << ": " << r.error;
    EXPECT_TRUE(r.reachable);
    EXPECT_TRUE(r.converged);
    EXPECT_EQ(r.desired, 2);
    EXPECT_EQ(r.actual, 2);
    EXPECT_EQ(r.up, 2);
    EXPECT_EQ(SummarizeChanges(r.changes), "2 created");
  }
  EXPECT_EQ(ExitStatus(Operation::kApply, reports), kExitOk);
  const std::vector<v1::ApplyTunnelsRequest> applies = agents_["node2"]->applies();
  ASSERT_EQ(applies.size(), 1u);
  EXPECT_EQ(applies[0].owner(), "fleet");
  EXPECT_FALSE(applies[0].dry_run());
  EXPECT_FALSE(applies[0].prune());
  EXPECT_EQ(applies[0].request_id().size(), 36u);  // a UUID
  EXPECT_EQ(applies[0].tunnels_size(), 2);
  EXPECT_THAT(agents_["node2"]->tokens(), ElementsAre("Bearer token-2", "Bearer token-2"));

  reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  for (const NodeReport& r : reports) EXPECT_EQ(SummarizeChanges(r.changes), "2 unchanged");
  EXPECT_EQ(FormatChanges(Operation::kApply, reports, absl::Milliseconds(1500)),
            "node1: 2 unchanged; 2/2 up\n"
            "node2: 2 unchanged; 2/2 up\n"
            "node3: 2 unchanged; 2/2 up\n"
            "apply: 3/3 nodes converged, 6/6 tunnels up, 1.50 s\n");
}

TEST_F(ReconcilerTest, PlanIsADryRun) {
  SetUpNodes(2);
  ReconcileOptions o = Options(Operation::kPlan);
  o.prune = true;
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  for (const NodeReport& r : reports) {
    EXPECT_TRUE(r.ok);
    EXPECT_FALSE(r.converged);  // something to do
  }
  EXPECT_TRUE(agents_["node1"]->tunnels().empty());
  const auto applies = agents_["node1"]->applies();
  ASSERT_EQ(applies.size(), 1u);
  EXPECT_TRUE(applies[0].dry_run());
  EXPECT_TRUE(applies[0].prune());
  EXPECT_EQ(FormatChanges(Operation::kPlan, reports, absl::ZeroDuration()),
            "node1: 1 to create\n"
            "  CREATE   tc-node2\n"
            "node2: 1 to create\n"
            "  CREATE   tc-node1\n"
            "plan: 2 changes on 2/2 nodes\n");
  EXPECT_EQ(ExitStatus(Operation::kPlan, reports), kExitOk);
}

TEST_F(ReconcilerTest, RetriesKeepTheRequestId) {
  SetUpNodes(2);
  agents_["node1"]->FailNext({grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"),
                              grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "slow")});
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  const NodeReport& r = ReportOf(reports, "node1");
  EXPECT_TRUE(r.ok) << r.error;
  const auto applies = agents_["node1"]->applies();
  ASSERT_EQ(applies.size(), 3u);
  EXPECT_EQ(applies[0].request_id(), applies[1].request_id());
  EXPECT_EQ(applies[1].request_id(), applies[2].request_id());
  EXPECT_NE(applies[0].request_id(), agents_["node2"]->applies()[0].request_id());
}

TEST_F(ReconcilerTest, GivesUpAfterTheRetries) {
  SetUpNodes(3);
  std::vector<grpc::Status> failures(10, grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"));
  agents_["node2"]->FailNext(failures);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  const NodeReport& r = ReportOf(reports, "node2");
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(r.reachable);
  EXPECT_EQ(r.attempts, 4);  // 1 + 3 retries
  EXPECT_EQ(r.error,
            "applying the node's tunnels failed after 4 attempts: the agent cannot be reached "
            "(ApplyTunnels: UNAVAILABLE: down)");
  EXPECT_TRUE(ReportOf(reports, "node1").ok);
  EXPECT_TRUE(ReportOf(reports, "node3").ok);
  EXPECT_EQ(ExitStatus(Operation::kApply, reports), kExitAgentFailed);
  EXPECT_THAT(FormatChanges(Operation::kApply, reports, absl::Seconds(2)),
              HasSubstr("node2: FAILED: applying the node's tunnels failed after 4 attempts: the "
                        "agent cannot be reached (ApplyTunnels: UNAVAILABLE: down)\n"));
  EXPECT_THAT(FormatChanges(Operation::kApply, reports, absl::Seconds(2)),
              HasSubstr("apply: 2/3 nodes converged, 4/4 tunnels up, 2.00 s; failed: node2\n"));
}

TEST_F(ReconcilerTest, RefusalsAreNotRetried) {
  SetUpNodes(2);
  agents_["node1"]->FailNext({grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not yours")});
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  const NodeReport& r = ReportOf(reports, "node1");
  EXPECT_FALSE(r.ok);
  EXPECT_TRUE(r.reachable);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.error,
            "applying the node's tunnels failed: the agent's present state does not allow it "
            "(ApplyTunnels: FAILED_PRECONDITION: not yours)");
}

TEST_F(ReconcilerTest, UnreachableNodeIsReportedByName) {
  SetUpNodes(2);
  AgentHandle gone;
  gone.node = "node3";
  gone.stub = v1::TunnelService::NewStub(grpc::CreateChannel("unix:/nonexistent/tunnel-agent.sock",
                                                             grpc::InsecureChannelCredentials()));
  handles_.push_back(gone);
  plan_.desired["node3"];
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  const NodeReport& r = ReportOf(reports, "node3");
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(r.reachable);
  EXPECT_THAT(r.error, HasSubstr("ApplyTunnels: UNAVAILABLE: "));
  EXPECT_TRUE(ReportOf(reports, "node1").ok);
  EXPECT_TRUE(ReportOf(reports, "node2").ok);
}

TEST_F(ReconcilerTest, DeadlineOfEachCall) {
  SetUpNodes(2);
  agents_["node1"]->SetDelay(absl::Milliseconds(300));
  ReconcileOptions o = Options(Operation::kApply);
  o.policy.timeout = absl::Milliseconds(50);
  o.policy.retries = 1;
  const absl::Time start = absl::Now();
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  const NodeReport& r = ReportOf(reports, "node1");
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.error, HasSubstr("ApplyTunnels: DEADLINE_EXCEEDED"));
  EXPECT_EQ(r.attempts, 2);
  EXPECT_TRUE(ReportOf(reports, "node2").ok);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(ReconcilerTest, ParallelismIsBounded) {
  SetUpNodes(6);
  for (auto& [node, agent] : agents_) agent->SetDelay(absl::Milliseconds(200));
  FakeAgent::max_in_flight = 0;
  ReconcileOptions o = Options(Operation::kPlan);
  o.parallelism = 2;
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  for (const NodeReport& r : reports) EXPECT_TRUE(r.ok);
  EXPECT_EQ(FakeAgent::max_in_flight.load(), 2);

  FakeAgent::max_in_flight = 0;
  o.parallelism = 16;
  Reconcile(plan_, handles_, o);
  EXPECT_EQ(FakeAgent::max_in_flight.load(), 6);  // all at once
}

TEST_F(ReconcilerTest, StatusDriftExtraAndState) {
  SetUpNodes(3);
  Reconcile(plan_, handles_, Options(Operation::kApply));
  // node1: one tunnel gone (drift), one of ours the file no longer has, one down, and one of
  // another owner (not counted, not touched).
  v1::Tunnel stale = MakeTunnel("tc-old", "198.18.0.9");
  (*stale.mutable_labels())["owner"] = "fleet";
  stale.mutable_status()->set_state(v1::OPER_STATE_UP);
  agents_["node1"]->Add(stale);
  v1::Tunnel other = MakeTunnel("theirs", "198.18.0.8");
  (*other.mutable_labels())["owner"] = "someone";
  agents_["node1"]->Add(other);
  agents_["node2"]->SetState("tc-node3", v1::OPER_STATE_DOWN);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kStatus));
  const NodeReport& n1 = ReportOf(reports, "node1");
  EXPECT_TRUE(n1.ok);
  EXPECT_FALSE(n1.converged);
  EXPECT_EQ(n1.actual, 3);
  const NodeReport& n2 = ReportOf(reports, "node2");
  EXPECT_TRUE(n2.converged);  // down is not drift
  EXPECT_EQ(n2.up, 1);
  EXPECT_EQ(ExitStatus(Operation::kStatus, reports), kExitAgentFailed);
  EXPECT_TRUE(agents_["node1"]->applies().back().prune());
  EXPECT_TRUE(agents_["node1"]->applies().back().dry_run());
  EXPECT_TRUE(agents_["node1"]->tunnels().count("tc-old"));  // a dry run
  EXPECT_EQ(FormatStatus(reports),
            "NODE   REACHABLE  DESIRED  ACTUAL  UP  DOWN  DRIFT\n"
            "node1  yes        2        3       3   0     1\n"
            "node2  yes        2        2       1   1     0\n"
            "node3  yes        2        2       2   0     0\n"
            "node1: drift (what apply --prune would do): DELETE tc-old\n"
            "node2: not up: tc-node3 DOWN\n"
            "status: 2/3 nodes converged; not converged: node1\n");

  // apply without prune keeps tc-old and says so; with prune it goes; "theirs" stays.
  reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  EXPECT_THAT(ReportOf(reports, "node1").extra, ElementsAre("tc-old"));
  EXPECT_FALSE(ReportOf(reports, "node1").converged);
  EXPECT_EQ(ExitStatus(Operation::kApply, reports), kExitOk);
  ReconcileOptions prune = Options(Operation::kApply);
  prune.prune = true;
  reports = Reconcile(plan_, handles_, prune);
  EXPECT_TRUE(ReportOf(reports, "node1").converged);
  EXPECT_FALSE(agents_["node1"]->tunnels().count("tc-old"));
  EXPECT_TRUE(agents_["node1"]->tunnels().count("theirs"));
}

TEST_F(ReconcilerTest, StopEndsTheRetries) {
  SetUpNodes(1);
  std::vector<grpc::Status> failures(100, grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"));
  agents_["node1"]->FailNext(failures);
  absl::Notification stop;
  ReconcileOptions o = Options(Operation::kApply);
  o.policy.retries = 100;
  o.policy.initial_backoff = absl::Seconds(1);
  o.policy.max_backoff = absl::Seconds(1);
  o.stop = &stop;
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(100));
    stop.Notify();
  });
  const absl::Time start = absl::Now();
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  stopper.join();
  EXPECT_FALSE(reports[0].ok);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST_F(ReconcilerTest, NoCallOnceRefused) {
  SetUpNodes(2);
  ReconcileOptions o = Options(Operation::kApply);
  o.refuse_call = [](const std::string&) { return "this controller no longer leads the fleet"; };
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  for (const NodeReport& r : reports) {
    EXPECT_FALSE(r.ok);
    EXPECT_THAT(r.error, HasSubstr("not attempted: this controller no longer leads the fleet"));
  }
  EXPECT_TRUE(agents_["node1"]->calls().empty());
  EXPECT_TRUE(agents_["node2"]->calls().empty());

  // Asked before each call: the answer changing after the first call stops the rest.
  std::atomic<int> asked{0};
  o.refuse_call = [&](const std::string&) { return ++asked <= 1 ? "" : "lost the lead"; };
  o.parallelism = 1;
  reports = Reconcile(plan_, handles_, o);
  EXPECT_EQ(agents_["node1"]->calls().size(), 1u);
  EXPECT_TRUE(agents_["node2"]->calls().empty());

  // Per node: one refused (its registration went), the other called.
  o.refuse_call = [](const std::string& node) {
    return node == "node2" ? "its registration went" : "";
  };
  reports = Reconcile(plan_, handles_, o);
  EXPECT_TRUE(reports[0].ok) << reports[0].error;
  EXPECT_THAT(reports[1].error, HasSubstr("not attempted: its registration went"));
  EXPECT_EQ(agents_["node1"]->calls().size(), 1u + 2u);  // ApplyTunnels, then the check
  EXPECT_TRUE(agents_["node2"]->calls().empty());
}

// ---- Multipoint fleets: ApplyTunnels (the device), then ApplyPeers ------------------------

class MultipointReconcilerTest : public ReconcilerTest {
 protected:
  // Agents node1..nodeN, and the plan of a multipoint mesh of the first `planned` of them.
  void SetUpMesh(int n, int planned = -1) {
    SetUpNodes(n);
    Replan(planned < 0 ? n : planned);
  }

  void Replan(int planned, v1::TunnelMode mode = v1::TUNNEL_MODE_GRE) {
    Fleet fleet;
    fleet.source = "fleet.yaml";
    fleet.defaults.mode = mode;
    fleet.defaults.key = KeySetting{KeyPolicy::kAuto, 0};
    fleet.inner_pool = {0x64400000, 16, "100.64.0.0/16"};
    fleet.multipoint.enabled = true;
    for (int i = 1; i <= planned; ++i) {
      Node node;
      node.name = absl::StrCat("node", i);
      node.agent = "unix:/unused";
      node.underlay = absl::StrCat("198.18.0.", i);
      node.prefixes = {absl::StrCat("10.244.", i, ".0/24")};
      fleet.nodes.push_back(node);
    }
    absl::StatusOr<FleetPlan> plan = PlanFleet(fleet);
    ASSERT_TRUE(plan.ok()) << plan.status();
    plan_ = *std::move(plan);
  }

  // The handles of the nodes the plan has (a node that left the file is not worked on).
  std::vector<AgentHandle> Planned() {
    std::vector<AgentHandle> planned;
    for (const AgentHandle& h : handles_) {
      if (plan_.desired.count(h.node)) planned.push_back(h);
    }
    return planned;
  }
};

TEST_F(MultipointReconcilerTest, ApplyDeviceThenPeersThenNothingToDo) {
  SetUpMesh(4);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  for (const NodeReport& r : reports) {
    SCOPED_TRACE(r.node);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.converged);
    EXPECT_EQ(r.multipoint_device, "tnl0");
    EXPECT_EQ(SummarizeChanges(r.changes), "1 created");
    EXPECT_EQ(SummarizePeerChanges(r.peer_changes, r.peers_unchanged), "3 created");
    EXPECT_EQ(r.peers_desired, 3);
    EXPECT_EQ(r.peers_actual, 3);
    EXPECT_EQ(r.peers_up, 3);
  }
  FakeAgent& agent = *agents_["node2"];
  EXPECT_THAT(agent.calls(), ElementsAre("ApplyTunnels", "ApplyPeers", "ListTunnels", "ListPeers"));
  const std::vector<v1::ApplyPeersRequest> applies = agent.peer_applies();
  ASSERT_EQ(applies.size(), 1u);
  EXPECT_EQ(applies[0].tunnel(), "tnl0");
  EXPECT_EQ(applies[0].owner(), "fleet");
  EXPECT_FALSE(applies[0].prune());
  EXPECT_FALSE(applies[0].dry_run());
  EXPECT_EQ(applies[0].request_id().size(), 36u);
  EXPECT_NE(applies[0].request_id(), agent.applies()[0].request_id());
  EXPECT_EQ(applies[0].peers_size(), 3);
  const std::map<std::string, v1::Peer> peers = agent.peers("tnl0");
  ASSERT_EQ(peers.size(), 3u);
  EXPECT_EQ(peers.at("node3").underlay(), "198.18.0.3");
  EXPECT_EQ(peers.at("node3").allowed_prefixes(1), "10.244.3.0/24");
  EXPECT_EQ(peers.at("node3").labels().at("owner"), "fleet");
  EXPECT_TRUE(agent.tunnels().at("tnl0").multipoint());

  // Again: nothing changes, and ApplyPeers answers with a count, not a list.
  reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  for (const NodeReport& r : reports) {
    EXPECT_TRUE(r.peer_changes.empty());
    EXPECT_EQ(r.peers_unchanged, 3);
    EXPECT_TRUE(r.converged);
  }
  EXPECT_EQ(FormatChanges(Operation::kApply, reports, absl::Milliseconds(250)),
            "node1: 1 unchanged; peers: 3 unchanged; 1/1 up, 3/3 peers up\n"
            "node2: 1 unchanged; peers: 3 unchanged; 1/1 up, 3/3 peers up\n"
            "node3: 1 unchanged; peers: 3 unchanged; 1/1 up, 3/3 peers up\n"
            "node4: 1 unchanged; peers: 3 unchanged; 1/1 up, 3/3 peers up\n"
            "apply: 4/4 nodes converged, 4/4 tunnels up, 12/12 peers up, 0.25 s\n");
  EXPECT_EQ(ExitStatus(Operation::kApply, reports), kExitOk);
}

TEST_F(MultipointReconcilerTest, PlanBeforeTheDeviceExists) {
  SetUpMesh(2);
  ReconcileOptions o = Options(Operation::kPlan);
  o.prune = true;
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, o);
  for (const NodeReport& r : reports) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_FALSE(r.converged);
  }
  // No device yet: its peers are all to create, without asking the agent.
  EXPECT_THAT(agents_["node1"]->calls(), ElementsAre("ApplyTunnels"));
  EXPECT_EQ(FormatChanges(Operation::kPlan, reports, absl::ZeroDuration()),
            "node1: 1 to create; peers: 1 to create\n"
            "  CREATE   tnl0\n"
            "  CREATE   tnl0/node2\n"
            "node2: 1 to create; peers: 1 to create\n"
            "  CREATE   tnl0\n"
            "  CREATE   tnl0/node1\n"
            "plan: 2 tunnel and 2 peer changes on 2/2 nodes\n");

  Reconcile(plan_, handles_, Options(Operation::kApply));
  reports = Reconcile(plan_, handles_, o);
  for (const NodeReport& r : reports) EXPECT_TRUE(r.converged);
  const auto applies = agents_["node1"]->peer_applies();
  EXPECT_TRUE(applies.back().dry_run());
  EXPECT_TRUE(applies.back().prune());
  EXPECT_EQ(applies.back().request_id(), "");
}

TEST_F(MultipointReconcilerTest, NodeJoiningCostsOnePeerPerNode) {
  SetUpMesh(5, 4);
  Reconcile(plan_, Planned(), Options(Operation::kApply));
  Replan(5);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  for (const NodeReport& r : reports) {
    SCOPED_TRACE(r.node);
    EXPECT_TRUE(r.converged);
    if (r.node == "node5") {
      EXPECT_EQ(SummarizePeerChanges(r.peer_changes, r.peers_unchanged), "4 created");
      continue;
    }
    EXPECT_EQ(SummarizeChanges(r.changes), "1 updated");  // a route to node5's prefix
    ASSERT_EQ(r.peer_changes.size(), 1u);
    EXPECT_EQ(r.peer_changes[0].name(), "node5");
    EXPECT_EQ(r.peer_changes[0].action(), v1::TunnelChange::CREATE);
    EXPECT_EQ(r.peers_unchanged, 3);
  }
}

TEST_F(MultipointReconcilerTest, NodeLeavingIsPrunedEverywhere) {
  SetUpMesh(4);
  Reconcile(plan_, handles_, Options(Operation::kApply));
  Replan(3);  // node4 leaves the file

  // Without prune: kept, reported, not converged.
  std::vector<NodeReport> reports = Reconcile(plan_, Planned(), Options(Operation::kApply));
  ASSERT_EQ(reports.size(), 3u);
  for (const NodeReport& r : reports) {
    EXPECT_THAT(r.extra_peers, ElementsAre("node4"));
    EXPECT_FALSE(r.converged);
  }
  EXPECT_THAT(FormatChanges(Operation::kApply, reports, absl::ZeroDuration()),
              HasSubstr("  peers not in the file (kept; --prune deletes): node4\n"));
  EXPECT_EQ(FormatStatus(Reconcile(plan_, Planned(), Options(Operation::kStatus))),
            "NODE   REACHABLE  DESIRED  ACTUAL  UP  DOWN  DRIFT  PEERS  PEERS_ACTUAL  PEERS_UP\n"
            "node1  yes        1        1       1   0     1      2      3             3\n"
            "node2  yes        1        1       1   0     1      2      3             3\n"
            "node3  yes        1        1       1   0     1      2      3             3\n"
            "node1: drift (what apply --prune would do): DELETE tnl0/node4\n"
            "node2: drift (what apply --prune would do): DELETE tnl0/node4\n"
            "node3: drift (what apply --prune would do): DELETE tnl0/node4\n"
            "status: 0/3 nodes converged; not converged: node1 node2 node3\n");

  ReconcileOptions prune = Options(Operation::kApply);
  prune.prune = true;
  reports = Reconcile(plan_, Planned(), prune);
  for (const NodeReport& r : reports) {
    SCOPED_TRACE(r.node);
    EXPECT_TRUE(r.converged);
    ASSERT_EQ(r.peer_changes.size(), 1u);
    EXPECT_EQ(r.peer_changes[0].name(), "node4");
    EXPECT_EQ(r.peer_changes[0].action(), v1::TunnelChange::DELETE);
    EXPECT_EQ(r.peers_unchanged, 2);
    EXPECT_FALSE(agents_[r.node]->peers("tnl0").count("node4"));
    EXPECT_TRUE(agents_[r.node]->peer_applies().back().prune());
  }
  EXPECT_EQ(FormatStatus(Reconcile(plan_, Planned(), Options(Operation::kStatus))),
            "NODE   REACHABLE  DESIRED  ACTUAL  UP  DOWN  DRIFT  PEERS  PEERS_ACTUAL  PEERS_UP\n"
            "node1  yes        1        1       1   0     0      2      2             2\n"
            "node2  yes        1        1       1   0     0      2      2             2\n"
            "node3  yes        1        1       1   0     0      2      2             2\n"
            "status: 3/3 nodes converged\n");
}

TEST_F(MultipointReconcilerTest, StatusSeesAPeerGoneAndOneDown) {
  SetUpMesh(3);
  Reconcile(plan_, handles_, Options(Operation::kApply));
  agents_["node1"]->ErasePeer("tnl0", "node3");
  agents_["node2"]->SetPeerState("tnl0", "node1", v1::OPER_STATE_DOWN);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kStatus));
  EXPECT_FALSE(ReportOf(reports, "node1").converged);
  EXPECT_TRUE(ReportOf(reports, "node2").converged);  // down is not drift
  EXPECT_EQ(ExitStatus(Operation::kStatus, reports), kExitAgentFailed);
  const std::string status = FormatStatus(reports);
  EXPECT_THAT(status, HasSubstr("node1: drift (what apply --prune would do): CREATE tnl0/node3\n"));
  EXPECT_THAT(status, HasSubstr("node2: peers not up: tnl0/node1 DOWN\n"));
  EXPECT_EQ(agents_["node1"]->peers("tnl0").size(), 1u);  // status changes nothing
}

TEST_F(MultipointReconcilerTest, ModeChangeTakesThePeersOffFirst) {
  SetUpMesh(2);
  Reconcile(plan_, handles_, Options(Operation::kApply));
  Replan(2, v1::TUNNEL_MODE_IPIP);
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  for (const NodeReport& r : reports) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.converged);
  }
  EXPECT_EQ(agents_["node1"]->tunnels().at("tnl0").mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(agents_["node1"]->peers("tnl0").size(), 1u);
  const auto applies = agents_["node1"]->peer_applies();
  ASSERT_EQ(applies.size(), 3u);
  EXPECT_EQ(applies[1].peers_size(), 0);  // the owner's peers off
  EXPECT_TRUE(applies[1].prune());
  EXPECT_EQ(applies[2].peers_size(), 1);  // and back

  // Another owner's tunnel of that name is not for the controller to empty.
  v1::Tunnel theirs = MakeTunnel("tnl0", "");
  theirs.set_multipoint(true);
  (*theirs.mutable_labels())["owner"] = "someone";
  agents_["node2"]->Add(theirs);
  reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  EXPECT_EQ(ReportOf(reports, "node2").error,
            "applying the node's tunnels failed: the agent's present state does not allow it "
            "(ApplyTunnels: FAILED_PRECONDITION: not yours)");
}

TEST_F(MultipointReconcilerTest, PeerRefusalReportedByName) {
  SetUpMesh(2);
  agents_["node1"]->FailNext({grpc::Status::OK,
                              grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many"),
                              grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "peers[0]: bad")});
  std::vector<NodeReport> reports = Reconcile(plan_, handles_, Options(Operation::kApply));
  const NodeReport& r = ReportOf(reports, "node1");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "applying the node's peers failed after 2 attempts: the agent refused what the fleet "
            "file asks for (ApplyPeers: INVALID_ARGUMENT: peers[0]: bad)");
  EXPECT_TRUE(ReportOf(reports, "node2").ok);
  EXPECT_EQ(ExitStatus(Operation::kApply, reports), kExitAgentFailed);
}

// ---- Main: the whole invocation and its exit status ----------------------------------------

// Two fake agents on unix sockets named by a fleet file, and Main run as the binary runs it.
class ControllerMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tunnel_controller_test_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    for (const char* node : {"a", "b"}) {
      auto agent = std::make_unique<FakeAgent>();
      grpc::ServerBuilder builder;
      builder.AddListeningPort(absl::StrCat("unix:", dir_, "/", node, ".sock"),
                               grpc::InsecureServerCredentials());
      builder.RegisterService(agent.get());
      servers_.push_back(builder.BuildAndStart());
      ASSERT_NE(servers_.back(), nullptr);
      agents_[node] = std::move(agent);
    }
  }

  void TearDown() override {
    for (auto& s : servers_) s->Shutdown();
    std::filesystem::remove_all(dir_);
  }

  // Writes `content` as a file of the test's directory; returns its path.
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path) << content;
    return path;
  }

  // A fleet of the two agents and, with `extra`, a third node whose socket does not exist.
  std::string Fleet(bool extra = false) {
    std::string nodes =
        absl::StrCat("  - {name: a, agent: \"unix:", dir_, "/a.sock\", underlay: 198.18.0.1}\n",
                     "  - {name: b, agent: \"unix:", dir_, "/b.sock\", underlay: 198.18.0.2}\n");
    if (extra) {
      absl::StrAppend(&nodes, "  - {name: c, agent: \"unix:", dir_,
                      "/nosuch.sock\", underlay: 198.18.0.3}\n");
    }
    return Write("fleet.yaml", absl::StrCat("defaults: {innerPool: 10.0.0.0/24}\nnodes:\n", nodes,
                                            "topology: {type: mesh}\n"));
  }

  int RunMain(std::vector<std::string> args) {
    out_.str("");
    err_.str("");
    return Main(args, out_, err_, /*err_fd=*/-1, /*stop=*/nullptr, [this] { ++before_run_; });
  }

  size_t Calls() {
    size_t n = 0;
    for (auto& [node, agent] : agents_) n += agent->tokens().size();
    return n;
  }

  std::string dir_;
  std::map<std::string, std::unique_ptr<FakeAgent>> agents_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
  std::ostringstream out_;
  std::ostringstream err_;
  int before_run_ = 0;
};

// The convention itself, as scripts see it.
TEST(ExitCodeTest, Values) {
  EXPECT_EQ(kExitOk, 0);
  EXPECT_EQ(kExitBadInput, 1);
  EXPECT_EQ(kExitAgentFailed, 2);
}

TEST_F(ControllerMainTest, HelpAndVersionAreZero) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"--help"}, {"-h"}, {"help"}, {"apply", "-f", "x", "--bogus", "--help"}}) {
    SCOPED_TRACE(args[0]);
    EXPECT_EQ(RunMain(args), kExitOk);
    EXPECT_EQ(out_.str(), Usage());
    EXPECT_EQ(err_.str(), "");
  }
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"--version"}, {"version"}, {"plan", "--version"}}) {
    SCOPED_TRACE(args[0]);
    EXPECT_EQ(RunMain(args), kExitOk);
    EXPECT_EQ(out_.str(), absl::StrCat("tunnel-controller ", TUNNEL_AGENT_VERSION, "\n"));
    EXPECT_EQ(err_.str(), "");
  }
  EXPECT_EQ(before_run_, 0);
  EXPECT_THAT(Usage(), HasSubstr("exit status:"));
  EXPECT_THAT(Usage(), HasSubstr("1  bad input"));
  EXPECT_THAT(Usage(), HasSubstr("--version"));
}

TEST_F(ControllerMainTest, BadInputIsOneAndSendsNothing) {
  const std::string fleet = Fleet();
  const std::string bad_yaml = Write("bad.yaml", "nodes: [\n");
  const std::string bad_address = Write(
      "addr.yaml", absl::StrCat("defaults: {innerPool: 10.0.0.0/24}\nnodes:\n",
                                "  - {name: a, agent: \"unix:", dir_,
                                "/a.sock\", underlay: 300.1.1.1}\n", "topology: {type: mesh}\n"));
  const std::string bad_token = Write(
      "token.yaml", absl::StrCat("defaults: {innerPool: 10.0.0.0/24}\nnodes:\n",
                                 "  - {name: a, agent: \"unix:", dir_,
                                 "/a.sock\", underlay: 198.18.0.1, tokenFile: /nonexistent/t}\n",
                                 "topology: {type: mesh}\n"));
  const std::vector<std::vector<std::string>> kCases = {
      {},
      {"deploy", "-f", fleet},
      {"apply"},
      {"apply", "-f", fleet, "--bogus"},
      {"apply", "-f", fleet, "--parallelism=0"},
      {"status", "-f", fleet, "--prune"},
      {"apply", "-f", dir_ + "/missing.yaml"},
      {"apply", "-f", bad_yaml},
      {"plan", "-f", bad_address},
      {"apply", "-f", bad_token},
  };
  for (const std::vector<std::string>& args : kCases) {
    SCOPED_TRACE(args.empty() ? "(none)" : absl::StrCat(args[0], " ", args.back()));
    EXPECT_EQ(RunMain(args), kExitBadInput);
    EXPECT_THAT(err_.str(), ::testing::StartsWith("tunnel-controller: "));
    EXPECT_EQ(out_.str(), "");
  }
  EXPECT_EQ(Calls(), 0u);
}

TEST_F(ControllerMainTest, ConvergedIsZero) {
  const std::string fleet = Fleet();
  ASSERT_EQ(RunMain({"apply", "-f", fleet, "--progress=plain"}), kExitOk) << err_.str();
  EXPECT_EQ(agents_["a"]->applies().size(), 1u);
  EXPECT_EQ(agents_["b"]->applies().size(), 1u);
  EXPECT_EQ(before_run_, 1);
  EXPECT_EQ(RunMain({"status", "-f", fleet, "--progress=plain"}), kExitOk) << out_.str();
}

// Whatever the node's reason, a refusal is 2; a node differing from the file is too.
TEST_F(ControllerMainTest, RefusalAndDriftAreTwo) {
  const std::string fleet = Fleet();
  for (grpc::StatusCode code :
       {grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::ALREADY_EXISTS,
        grpc::StatusCode::NOT_FOUND, grpc::StatusCode::FAILED_PRECONDITION,
        grpc::StatusCode::PERMISSION_DENIED}) {
    const std::string name = clients::StatusCodeName(code);
    SCOPED_TRACE(name);
    agents_["a"]->FailNext({grpc::Status(code, "refused")});
    EXPECT_EQ(RunMain({"apply", "-f", fleet, "--progress=plain", "--retries=0"}), kExitAgentFailed);
    EXPECT_THAT(out_.str(),
                HasSubstr(absl::StrCat("a: FAILED: applying the node's tunnels failed: ")));
    EXPECT_THAT(out_.str(), HasSubstr(absl::StrCat("(ApplyTunnels: ", name)));
  }
  // Once converged, another owner's tunnel is no drift; one of the controller's own that the
  // file does not list is.
  ASSERT_EQ(RunMain({"apply", "-f", fleet, "--progress=plain"}), kExitOk) << out_.str();
  agents_["b"]->Add(MakeTunnel("extra", "198.18.0.9"));
  EXPECT_EQ(RunMain({"status", "-f", fleet, "--progress=plain"}), kExitOk) << out_.str();
  v1::Tunnel mine = MakeTunnel("stale", "198.18.0.9");
  (*mine.mutable_labels())["owner"] = kDefaultOwner;
  agents_["b"]->Add(mine);
  EXPECT_EQ(RunMain({"status", "-f", fleet, "--progress=plain"}), kExitAgentFailed) << out_.str();
  EXPECT_THAT(out_.str(), HasSubstr("stale"));
}

// A node with no agent behind its address (a unix socket that does not exist: no network).
TEST_F(ControllerMainTest, UnreachableIsTwo) {
  const std::string fleet = Fleet(/*extra=*/true);
  const absl::Time start = absl::Now();
  EXPECT_EQ(RunMain({"apply", "-f", fleet, "--progress=plain", "--retries=0", "--timeout=2"}),
            kExitAgentFailed);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_THAT(
      out_.str(),
      HasSubstr("c: FAILED: applying the node's tunnels failed: the agent cannot be reached "
                "(ApplyTunnels: UNAVAILABLE"));
  // The others converged all the same.
  EXPECT_EQ(agents_["a"]->applies().size(), 1u);
  EXPECT_EQ(agents_["b"]->applies().size(), 1u);
}

TEST(BackoffTest, DoublesUpToTheCap) {
  CallPolicy p;
  EXPECT_EQ(Backoff(p, 1), absl::Milliseconds(200));
  EXPECT_EQ(Backoff(p, 2), absl::Milliseconds(400));
  EXPECT_EQ(Backoff(p, 3), absl::Milliseconds(800));
  EXPECT_EQ(Backoff(p, 5), absl::Milliseconds(3200));
  EXPECT_EQ(Backoff(p, 6), absl::Seconds(5));
  EXPECT_EQ(Backoff(p, 60), absl::Seconds(5));
  EXPECT_TRUE(IsRetryable(grpc::StatusCode::UNAVAILABLE));
  EXPECT_TRUE(IsRetryable(grpc::StatusCode::DEADLINE_EXCEEDED));
  EXPECT_FALSE(IsRetryable(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_FALSE(IsRetryable(grpc::StatusCode::FAILED_PRECONDITION));
}

std::string Scrape(ControllerMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

TEST(MetricsTest, Peers) {
  ControllerMetrics metrics;
  metrics.SetNodes({"a", "b"}, 2, 2);
  EXPECT_THAT(Scrape(metrics), HasSubstr("tunnelcontroller_peers_desired 2\n"));
  NodeReport a;
  a.node = "a";
  a.ok = a.reachable = a.converged = true;
  a.multipoint_device = "tnl0";
  a.peers_actual = 1;
  a.peers_up = 1;
  NodeReport b = a;
  b.node = "b";
  b.peers_up = 0;
  metrics.RecordPass({a, b}, absl::Milliseconds(30), absl::FromUnixSeconds(1700000000));
  const std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("tunnelcontroller_peers_actual 2\n"));
  EXPECT_THAT(text, HasSubstr("tunnelcontroller_peers_up 1\n"));
}

TEST(MetricsTest, LeaderAndConvergence) {
  ControllerMetrics metrics;
  metrics.SetNodes({"a"}, 1);
  std::string text = Scrape(metrics);
  for (const char* line : {"tunnelcontroller_leader 0", "tunnelcontroller_nodes_registered 0",
                           "tunnelcontroller_fleet_converged 0",
                           "tunnelcontroller_last_convergence_timestamp_seconds 0",
                           "tunnelcontroller_etcd_errors_total 0"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(line, "\n"))) << line;
  }
  metrics.SetLeader(true);
  metrics.SetRegistered(3);
  metrics.EtcdError();
  metrics.EtcdError();
  NodeReport a;
  a.node = "a";
  a.ok = a.reachable = a.converged = true;
  metrics.RecordPass({a}, absl::Milliseconds(10), absl::FromUnixSeconds(1700000000));
  NodeReport failed = a;
  failed.ok = false;
  metrics.RecordPass({failed}, absl::Milliseconds(10), absl::FromUnixSeconds(1700000050));
  text = Scrape(metrics);
  for (const char* line : {"tunnelcontroller_leader 1", "tunnelcontroller_nodes_registered 3",
                           "tunnelcontroller_fleet_converged 0",
                           // The last pass that converged, not the last pass.
                           "tunnelcontroller_last_convergence_timestamp_seconds 1700000000",
                           "tunnelcontroller_last_apply_timestamp_seconds 1700000050",
                           "tunnelcontroller_etcd_errors_total 2"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(line, "\n"))) << line;
  }
  metrics.RecordPass({a}, absl::Milliseconds(10), absl::FromUnixSeconds(1700000060));
  EXPECT_THAT(Scrape(metrics), HasSubstr("tunnelcontroller_fleet_converged 1\n"));
  // Converged, but to a fleet a change has overtaken.
  metrics.SetFleetConverged(false);
  EXPECT_THAT(Scrape(metrics), HasSubstr("tunnelcontroller_fleet_converged 0\n"));
  EXPECT_THAT(Scrape(metrics), HasSubstr("tunnelcontroller_converged 1\n"));
}

TEST(MetricsTest, NamesAndValues) {
  ControllerMetrics metrics;
  metrics.SetNodes({"a", "b"}, 2);
  std::string text = Scrape(metrics);
  for (const char* line :
       {"tunnelcontroller_nodes 2", "tunnelcontroller_nodes_reachable 0",
        "tunnelcontroller_node_reachable{node=\"a\"} 0", "tunnelcontroller_tunnels_desired 2",
        "tunnelcontroller_tunnels_actual 0", "tunnelcontroller_tunnels_up 0",
        "tunnelcontroller_peers_desired 0", "tunnelcontroller_peers_actual 0",
        "tunnelcontroller_peers_up 0", "tunnelcontroller_converged 0",
        "tunnelcontroller_last_apply_timestamp_seconds 0",
        "tunnelcontroller_apply_errors_total{node=\"b\"} 0",
        "tunnelcontroller_reconcile_duration_seconds_count 0"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(line, "\n"))) << line;
  }
  NodeReport a;
  a.node = "a";
  a.ok = a.reachable = a.converged = true;
  a.actual = 1;
  a.up = 1;
  NodeReport b;
  b.node = "b";
  b.error = "ApplyTunnels: UNAVAILABLE";
  metrics.RecordPass({a, b}, absl::Milliseconds(300), absl::FromUnixSeconds(1700000000));
  text = Scrape(metrics);
  for (const char* line :
       {"tunnelcontroller_nodes_reachable 1", "tunnelcontroller_node_reachable{node=\"a\"} 1",
        "tunnelcontroller_node_reachable{node=\"b\"} 0", "tunnelcontroller_tunnels_actual 1",
        "tunnelcontroller_tunnels_up 1", "tunnelcontroller_converged 0",
        "tunnelcontroller_last_apply_timestamp_seconds 1700000000",
        "tunnelcontroller_apply_errors_total{node=\"b\"} 1",
        "tunnelcontroller_apply_errors_total{node=\"a\"} 0",
        "tunnelcontroller_reconcile_duration_seconds_count 1",
        "tunnelcontroller_reconcile_duration_seconds_bucket{le=\"0.5\"} 1"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(line, "\n"))) << line;
  }
  b.ok = b.reachable = b.converged = true;
  b.error.clear();
  metrics.RecordPass({a, b}, absl::Milliseconds(30), absl::FromUnixSeconds(1700000001));
  EXPECT_THAT(Scrape(metrics), HasSubstr("tunnelcontroller_converged 1\n"));
  // b leaves the file: its series go.
  metrics.SetNodes({"a"}, 0);
  text = Scrape(metrics);
  EXPECT_THAT(text, ::testing::Not(HasSubstr("node=\"b\"")));
  EXPECT_THAT(text, HasSubstr("tunnelcontroller_nodes 1\n"));
}

}  // namespace
}  // namespace tunnelagent::controller
