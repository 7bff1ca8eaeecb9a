// Brings every node's agent to its planned tunnels, or looks at how far they are: all nodes
// concurrently (bounded), each call with a deadline, retried with exponential backoff. A node
// that fails is reported and does not hold up the others.
//
// Multipoint fleets: on each node, ApplyTunnels (the device) and then ApplyPeers (its peers,
// the same owner and prune), so that a node joining or leaving costs each other node one
// call whose answer lists only what changed.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_RECONCILER_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_RECONCILER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/tunnel_controller/plan.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::controller {

inline constexpr char kDefaultOwner[] = "tunnel-controller";

struct CallPolicy {
  absl::Duration timeout = absl::Seconds(10);                // each call's deadline
  int retries = 4;                                           // after the first attempt
  absl::Duration initial_backoff = absl::Milliseconds(200);  // doubled per retry, +-20 %
  absl::Duration max_backoff = absl::Seconds(5);
};

// One node's agent: a stub, and the token to send. `error` set: the node could not be set up
// (it fails with that error, without calls).
struct AgentHandle {
  std::string node;
  std::shared_ptr<v1::TunnelService::StubInterface> stub;
  std::string token;
  absl::Status error;
};

enum class Operation {
  kPlan,    // ApplyTunnels (ApplyPeers) dry run: what would change
  kApply,   // ApplyTunnels (ApplyPeers), then ListTunnels (ListPeers): what is there now
  kStatus,  // ApplyTunnels (ApplyPeers) dry run with prune (drift), ListTunnels (ListPeers)
};

struct NodeReport {
  std::string node;
  bool reachable = false;  // some call was answered (with any status but UNAVAILABLE)
  bool ok = false;         // the operation succeeded
  std::string error;       // !ok: "ApplyTunnels: UNAVAILABLE: ..." (after every retry)
  int attempts = 0;        // of the failed or last call
  // kPlan, kApply: the agent's answer (every change, UNCHANGED included). kStatus: the
  // dry run's, with prune: anything but UNCHANGED is drift.
  std::vector<v1::TunnelChange> changes;
  int desired = 0;
  // After kApply and kStatus: the tunnels labelled with the owner on the agent (-1: unknown),
  // how many of them are UP, and the others ("tc-node3 DOWN: no keepalive reply").
  int actual = -1;
  int up = 0;
  std::vector<std::string> not_up;
  // Owned tunnels on the agent that the file does not have (kApply without prune).
  std::vector<std::string> extra;
  // Multipoint fleets: the node's device (empty: point to point) and its peers. ApplyPeers'
  // answer: the peers that change (kStatus: drift) and how many do not; a device still to be
  // created has every peer to create (kPlan, kStatus, without a call).
  std::string multipoint_device;
  std::vector<v1::PeerChange> peer_changes;
  int peers_unchanged = 0;
  int peers_desired = 0;
  // After kApply and kStatus: the owner's peers on the device (-1: unknown), how many are UP,
  // the others ("node3 DOWN: keepalive: ..."), and those the file does not have.
  int peers_actual = -1;
  int peers_up = 0;
  std::vector<std::string> peers_not_up;
  std::vector<std::string> extra_peers;
  // Reachable and the owner's tunnels (and peers) on the agent are exactly the file's.
  bool converged = false;
  absl::Duration duration;
};

// Receives what each node is doing (from the worker threads; implementations synchronize).
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // A node started, retries, or finished (`done`: its final line).
  virtual void NodeState(const std::string& node, const std::string& state, bool done) = 0;
};

struct ReconcileOptions {
  Operation operation = Operation::kApply;
  std::string owner = kDefaultOwner;
  bool prune = false;  // kPlan, kApply
  int parallelism = 16;
  CallPolicy policy;
  ProgressSink* progress = nullptr;          // may be null
  const absl::Notification* stop = nullptr;  // when notified, no more retries; may be null
  // Makes the request id of each node's ApplyTunnels and ApplyPeers (kept across retries).
  std::function<std::string()> new_request_id;
  // When set, asked before every call (and retry) to a node: a reason, and the call is not
  // made and the node fails with it; empty, and the call goes. run --etcd: only the leader
  // calls agents, and none whose registration went during the pass (it is most likely dead:
  // retrying it would hold the pass, and the other nodes' news, up).
  std::function<std::string(const std::string& node)> refuse_call;
};

// Runs `options.operation` on every agent (`agents` and `plan.desired` by node name; a node
// without an agent handle fails). Reports in the order of `agents`.
std::vector<NodeReport> Reconcile(const FleetPlan& plan, const std::vector<AgentHandle>& agents,
                                  const ReconcileOptions& options);

// Whether a call that failed with `code` is worth retrying (the agent may be back or less busy).
bool IsRetryable(grpc::StatusCode code);

// The backoff before retry number `retry` (1-based), before jitter.
absl::Duration Backoff(const CallPolicy& policy, int retry);

// "3 created, 1 updated, 8 unchanged" (actions with a count only; "nothing" when empty);
// `planned` (a plan, which changes nothing): "3 to create, 1 to update, 8 unchanged".
std::string SummarizeChanges(const std::vector<v1::TunnelChange>& changes, bool planned = false);
// The same for peers: ApplyPeers lists only the peers that change, and counts the others.
std::string SummarizePeerChanges(const std::vector<v1::PeerChange>& changes, int unchanged,
                                 bool planned = false);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_RECONCILER_H_
