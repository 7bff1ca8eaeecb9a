#include "agent/grpc_service.h"

#include <string>

#include "agent/proto_convert.h"

namespace tunnelagent::agent {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering (both are google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status TunnelServiceImpl::CreateTunnel(grpc::ServerContext*,
                                             const v1::CreateTunnelRequest* request,
                                             v1::Tunnel* response) {
  if (!request->has_tunnel()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tunnel: required");
  }
  absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(request->tunnel());
  if (!spec.ok()) return ToGrpcStatus(spec.status());
  absl::StatusOr<TunnelView> view = manager_->Create(*spec);
  if (!view.ok()) return ToGrpcStatus(view.status());
  *response = TunnelToProto(view->spec, view->status);
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::GetTunnel(grpc::ServerContext*, const v1::GetTunnelRequest* request,
                                          v1::Tunnel* response) {
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name: required");
  }
  absl::StatusOr<TunnelView> view = manager_->Get(request->name());
  if (!view.ok()) return ToGrpcStatus(view.status());
  *response = TunnelToProto(view->spec, view->status);
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::ListTunnels(grpc::ServerContext*, const v1::ListTunnelsRequest*,
                                            v1::ListTunnelsResponse* response) {
  for (const TunnelView& view : manager_->List()) {
    *response->add_tunnels() = TunnelToProto(view.spec, view.status);
  }
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::DeleteTunnel(grpc::ServerContext*,
                                             const v1::DeleteTunnelRequest* request,
                                             google::protobuf::Empty*) {
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name: required");
  }
  return ToGrpcStatus(manager_->Delete(request->name()));
}

}  // namespace tunnelagent::agent
