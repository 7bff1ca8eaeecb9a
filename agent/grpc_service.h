// tunnelagent.v1.TunnelService: translation between the API and the TunnelManager, plus the
// API-level conventions (request_id, pagination, watch streams). absl::Status codes map one to
// one onto gRPC codes.
//
// On gRPC's callback API, so no call holds a server thread while it waits:
// - reads (Get, List, GetAgentInfo) are answered at once, on the thread that took the call;
// - changes (Create, Update, Delete, Apply) wait in a bounded queue for a few threads of the
//   service's own, so a slow kernel never holds gRPC's threads; beyond the queue a change is
//   RESOURCE_EXHAUSTED, and one whose client gave up while it waited is not run;
// - each WatchTunnels stream is a reactor that writes one event at a time; a single
//   dispatcher thread wakes on every new revision and moves each watcher whose previous write
//   went out. A watcher that stops reading falls behind and is closed once it is too far
//   behind, rather than the agent buffering for it.
// Requests are parsed here (raw methods), so a malformed one is INVALID_ARGUMENT naming the
// field (agent/request_parse.h).
#ifndef TUNNELAGENT_AGENT_GRPC_SERVICE_H_
#define TUNNELAGENT_AGENT_GRPC_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/idempotency.h"
#include "agent/tunnel_manager.h"
#include "agent/work_queue.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {

grpc::Status ToGrpcStatus(const absl::Status& status);

// The largest page ListTunnels and ListPeers answer.
inline constexpr int kMaxPageSize = 1000;
v1::TunnelChange::Action ActionToProto(ChangeAction action);
// A plan's changes as TunnelChange or PeerChange messages.
template <typename Change>
void ChangesToProto(const std::vector<PlannedChange>& plan,
                    google::protobuf::RepeatedPtrField<Change>* out) {
  out->Reserve(static_cast<int>(plan.size()));
  for (const PlannedChange& change : plan) {
    Change* c = out->Add();
    c->set_name(change.name);
    c->set_action(ActionToProto(change.action));
    for (const std::string& f : change.changed_fields) c->add_changed_fields(f);
  }
}
// "create=2 update=1": how many changes of each action, for a change's log line.
template <typename Change>
std::string ActionCounts(const google::protobuf::RepeatedPtrField<Change>& changes) {
  std::map<std::string, int> actions;
  for (const Change& c : changes) {
    ++actions[absl::AsciiStrToLower(v1::TunnelChange::Action_Name(c.action()))];
  }
  return absl::StrJoin(actions, " ", absl::PairFormatter("="));
}
// A request's bytes with its maps in a fixed order: what request_id's replay compares.
std::string Fingerprint(const google::protobuf::Message& message);
// One line per request that changes tunnels or peers, done or refused: who asked, what
// (`what`: "tunnel.create", "peer.apply", ...), on which tunnel, the result.
void LogChange(const grpc::ServerContextBase& context, absl::string_view what,
               const std::string& tunnel, const absl::Status& status,
               std::string detail = std::string());

// What GetAgentInfo reports besides the manager's own figures.
struct AgentIdentity {
  std::string version;
  std::string node_name;
  std::string io_backend;
  absl::Time start_time;
  uint32_t dataplane_workers = 0;
  std::string dataplane_cpus;  // a CPU list; empty when the workers are not pinned
};

// How much of the service one client, and all of them, may hold.
struct TunnelServiceLimits {
  // Threads running changes, and the changes that may wait for one.
  int change_threads = 2;
  size_t max_queued_changes = 64;
  // Open WatchTunnels streams, in all and per client (ClientOfCaller). A stream holds no
  // thread, only its memory: the total may be well above what threads would allow.
  int max_watchers = 256;
  int max_watchers_per_client = 16;
  // A watcher this many revisions behind the agent (counted from when it started, so a
  // resume from an old revision may catch up first) is closed with RESOURCE_EXHAUSTED.
  uint64_t max_watcher_lag = 1024;
  // A watcher closed while its client does not read cannot even be told so: its stream is
  // cancelled after this long.
  absl::Duration closed_watcher_grace = absl::Seconds(10);
};

// Who a client is, for per-client limits: "uid=1000" on the agent's unix socket, the peer's
// address without its port on TCP ("ipv4:198.18.0.1", "ipv6:[2001:db8::1]"), with " cn=NAME"
// when it presented a certificate; `caller` as CallerOf gives it.
std::string ClientOfCaller(absl::string_view caller);

using TunnelServiceBase = v1::TunnelService::WithRawCallbackMethod_CreateTunnel<
    v1::TunnelService::WithRawCallbackMethod_GetTunnel<
        v1::TunnelService::WithRawCallbackMethod_ListTunnels<
            v1::TunnelService::WithRawCallbackMethod_UpdateTunnel<
                v1::TunnelService::WithRawCallbackMethod_DeleteTunnel<
                    v1::TunnelService::WithRawCallbackMethod_WatchTunnels<
                        v1::TunnelService::WithRawCallbackMethod_ApplyTunnels<
                            v1::TunnelService::WithRawCallbackMethod_GetAgentInfo<
                                v1::TunnelService::WithRawCallbackMethod_CreatePeer<
                                    v1::TunnelService::WithRawCallbackMethod_GetPeer<
                                        v1::TunnelService::WithRawCallbackMethod_ListPeers<
                                            v1::TunnelService::WithRawCallbackMethod_UpdatePeer<
                                                v1::TunnelService::WithRawCallbackMethod_DeletePeer<
                                                    v1::TunnelService::
                                                        WithRawCallbackMethod_ApplyPeers<
                                                            v1::TunnelService::
                                                                Service>>>>>>>>>>>>>>;

class TunnelServiceImpl final : public TunnelServiceBase {
 public:
  TunnelServiceImpl(TunnelManager* manager, AgentIdentity identity,
                    TunnelServiceLimits limits = TunnelServiceLimits());
  // After the server it is registered in has shut down: no call may be open.
  ~TunnelServiceImpl() override;

  grpc::ServerUnaryReactor* CreateTunnel(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetTunnel(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListTunnels(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* UpdateTunnel(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteTunnel(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchTunnels(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ApplyTunnels(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetAgentInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CreatePeer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetPeer(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListPeers(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* UpdatePeer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeletePeer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ApplyPeers(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

  // WatchTunnels streams open now (closed ones whose stream has not ended yet included).
  int open_watchers() const;
  // What GetAgentInfo answers; the fleet registration's capabilities are taken from it.
  void DoGetAgentInfo(v1::AgentInfo* response);

 private:
  class Watcher;

  // The calls' work, on parsed requests.
  absl::Status DoCreate(const grpc::ServerContextBase& context,
                        const v1::CreateTunnelRequest& request, v1::Tunnel* response);
  absl::Status DoGet(const v1::GetTunnelRequest& request, v1::Tunnel* response);
  absl::Status DoList(const v1::ListTunnelsRequest& request, v1::ListTunnelsResponse* response);
  absl::Status DoUpdate(const grpc::ServerContextBase& context,
                        const v1::UpdateTunnelRequest& request, v1::UpdateTunnelResponse* response);
  absl::Status DoDelete(const grpc::ServerContextBase& context,
                        const v1::DeleteTunnelRequest& request);
  absl::Status DoApply(const grpc::ServerContextBase& context,
                       const v1::ApplyTunnelsRequest& request, v1::ApplyTunnelsResponse* response);
  // Peers of multipoint tunnels (peer_service.cc).
  absl::Status DoCreatePeer(const grpc::ServerContextBase& context,
                            const v1::CreatePeerRequest& request, v1::Peer* response);
  absl::Status DoGetPeer(const v1::GetPeerRequest& request, v1::Peer* response);
  absl::Status DoListPeers(const v1::ListPeersRequest& request, v1::ListPeersResponse* response);
  absl::Status DoUpdatePeer(const grpc::ServerContextBase& context,
                            const v1::UpdatePeerRequest& request, v1::Peer* response);
  absl::Status DoDeletePeer(const grpc::ServerContextBase& context,
                            const v1::DeletePeerRequest& request);
  absl::Status DoApplyPeers(const grpc::ServerContextBase& context,
                            const v1::ApplyPeersRequest& request, v1::ApplyPeersResponse* response);

  // Runs `work` on the change threads and finishes the call with what it returns; refuses
  // the call (logged as `what` on `tunnel`) when the queue is full.
  template <typename Request, typename Response, typename Work>
  grpc::ServerUnaryReactor* QueueChange(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request_bytes,
                                        grpc::ByteBuffer* response_bytes, const char* what,
                                        Work work);

  // The dispatcher: wakes on every revision after `seen` and moves the watchers on.
  void Dispatch(uint64_t seen);
  void Unregister(Watcher* watcher);

  TunnelManager* const manager_;
  const AgentIdentity identity_;
  const TunnelServiceLimits limits_;
  IdempotencyCache idempotency_;

  mutable absl::Mutex watchers_mu_;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(watchers_mu_);
  absl::flat_hash_map<std::string, int> watchers_by_client_ ABSL_GUARDED_BY(watchers_mu_);
  bool stopping_ ABSL_GUARDED_BY(watchers_mu_) = false;
  std::thread dispatcher_ ABSL_GUARDED_BY(watchers_mu_);  // started with the first watcher

  // Last: its threads finish the queued changes before the members above go.
  BoundedWorkQueue changes_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_GRPC_SERVICE_H_
