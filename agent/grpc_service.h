// tunnelagent.v1.TunnelService: translation between the API and the TunnelManager, nothing
// more. absl::Status codes map one to one onto gRPC codes.
#ifndef TUNNELAGENT_AGENT_GRPC_SERVICE_H_
#define TUNNELAGENT_AGENT_GRPC_SERVICE_H_

#include "absl/status/status.h"
#include "agent/tunnel_manager.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {

grpc::Status ToGrpcStatus(const absl::Status& status);

class TunnelServiceImpl final : public v1::TunnelService::Service {
 public:
  explicit TunnelServiceImpl(TunnelManager* manager) : manager_(manager) {}

  grpc::Status CreateTunnel(grpc::ServerContext* context, const v1::CreateTunnelRequest* request,
                            v1::Tunnel* response) override;
  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* request,
                         v1::Tunnel* response) override;
  grpc::Status ListTunnels(grpc::ServerContext* context, const v1::ListTunnelsRequest* request,
                           v1::ListTunnelsResponse* response) override;
  grpc::Status DeleteTunnel(grpc::ServerContext* context, const v1::DeleteTunnelRequest* request,
                            google::protobuf::Empty* response) override;

 private:
  TunnelManager* manager_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_GRPC_SERVICE_H_
