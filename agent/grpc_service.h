// tunnelagent.v1.TunnelService: translation between the API and the TunnelManager, plus the
// API-level conventions (request_id, pagination, watch streams). absl::Status codes map one to
// one onto gRPC codes.
#ifndef TUNNELAGENT_AGENT_GRPC_SERVICE_H_
#define TUNNELAGENT_AGENT_GRPC_SERVICE_H_

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/idempotency.h"
#include "agent/tunnel_manager.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {

grpc::Status ToGrpcStatus(const absl::Status& status);

// What GetAgentInfo reports besides the manager's own figures.
struct AgentIdentity {
  std::string version;
  std::string node_name;
  std::string io_backend;
  absl::Time start_time;
  uint32_t dataplane_workers = 0;
  std::string dataplane_cpus;  // a CPU list; empty when the workers are not pinned
};

class TunnelServiceImpl final : public v1::TunnelService::Service {
 public:
  // At most this many WatchTunnels streams at once: each holds a server thread.
  static constexpr int kMaxWatchers = 32;

  TunnelServiceImpl(TunnelManager* manager, AgentIdentity identity)
      : manager_(manager), identity_(std::move(identity)) {}

  grpc::Status CreateTunnel(grpc::ServerContext* context, const v1::CreateTunnelRequest* request,
                            v1::Tunnel* response) override;
  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* request,
                         v1::Tunnel* response) override;
  grpc::Status ListTunnels(grpc::ServerContext* context, const v1::ListTunnelsRequest* request,
                           v1::ListTunnelsResponse* response) override;
  grpc::Status UpdateTunnel(grpc::ServerContext* context, const v1::UpdateTunnelRequest* request,
                            v1::UpdateTunnelResponse* response) override;
  grpc::Status DeleteTunnel(grpc::ServerContext* context, const v1::DeleteTunnelRequest* request,
                            google::protobuf::Empty* response) override;
  grpc::Status WatchTunnels(grpc::ServerContext* context, const v1::WatchTunnelsRequest* request,
                            grpc::ServerWriter<v1::TunnelEvent>* writer) override;
  grpc::Status ApplyTunnels(grpc::ServerContext* context, const v1::ApplyTunnelsRequest* request,
                            v1::ApplyTunnelsResponse* response) override;
  grpc::Status GetAgentInfo(grpc::ServerContext* context, const v1::GetAgentInfoRequest* request,
                            v1::AgentInfo* response) override;

 private:
  TunnelManager* manager_;
  const AgentIdentity identity_;
  IdempotencyCache idempotency_;
  std::atomic<int> watchers_{0};
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_GRPC_SERVICE_H_
