// Prometheus metrics of the gRPC server, in the family most gRPC servers export and most gRPC
// dashboards read (go-grpc-prometheus's names and labels): grpc_server_started_total,
// grpc_server_handled_total by status code, grpc_server_handling_seconds for unary calls; and
// the streams open now. Recorded by a server interceptor; the families and each method's
// series are made once, when GrpcMetrics is built.
//
//   auto methods = GrpcMetrics::MethodsOf({"tunnelagent.v1.TunnelService", ...});
//   GrpcMetrics metrics(*methods);
//   exposer.RegisterCollectable(metrics.registry());
//   builder.experimental().SetInterceptorCreators(metrics.InterceptorCreators());
//   (or interceptors.push_back(metrics.NewInterceptorFactory()) beside other interceptors)
//
// GrpcMetrics must outlive the server it is installed in.
#ifndef TUNNELAGENT_AGENT_GRPC_METRICS_H_
#define TUNNELAGENT_AGENT_GRPC_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tunnelagent::agent {

// The grpc_code label of a status code: "OK", "NotFound", "Unavailable", ... (the spelling
// of go-grpc-prometheus, which dashboards and alert rules for gRPC servers match on).
absl::string_view GrpcCodeName(grpc::StatusCode code);

class GrpcMetrics {
 public:
  // The grpc_service, grpc_method and grpc_type labels of calls to a method that is not in
  // the list given to the constructor (a name the server does not serve, say): the labels'
  // values stay a bounded set.
  static constexpr char kUnknownMethod[] = "unknown";

  // The grpc_type label's values.
  static constexpr char kUnary[] = "unary";
  static constexpr char kClientStream[] = "client_stream";
  static constexpr char kServerStream[] = "server_stream";
  static constexpr char kBidiStream[] = "bidi_stream";

  struct Method {
    std::string name;           // "/tunnelagent.v1.TunnelService/CreateTunnel" (slash optional)
    std::string type = kUnary;  // kUnary, kClientStream, kServerStream or kBidiStream
  };

  // Every method of the named services ("grpc.health.v1.Health"), from the descriptors
  // compiled into the binary. NOT_FOUND names a service that is not.
  static absl::StatusOr<std::vector<Method>> MethodsOf(const std::vector<std::string>& services);

  // Makes, at 0, each method's started and OK counts, each unary method's handling-time
  // histogram and each streaming method's open-streams gauge.
  explicit GrpcMetrics(const std::vector<Method>& methods);
  GrpcMetrics(const GrpcMetrics&) = delete;
  GrpcMetrics& operator=(const GrpcMetrics&) = delete;

  // For prometheus::Exposer::RegisterCollectable.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // A factory of interceptors that record every call into this object. Put it first among
  // the server's interceptors: one that ends a call early hides it from those after it.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();
  // The same factory, alone, as ServerBuilder::experimental().SetInterceptorCreators takes it.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
  InterceptorCreators();

  // The series of one method, made in the constructor. Public for the interceptor.
  struct MethodSeries {
    std::string service;  // grpc_service: "tunnelagent.v1.TunnelService"
    std::string method;   // grpc_method: "CreateTunnel"
    std::string type;     // grpc_type
    prometheus::Counter* started = nullptr;
    prometheus::Histogram* handling = nullptr;    // unary methods only
    prometheus::Gauge* streams_active = nullptr;  // streaming methods only
  };
  // The series of the method named as gRPC names it ("/pkg.Service/Method"); the unknown
  // method's when it is not one of ours.
  const MethodSeries& Series(absl::string_view method) const;
  // Counts one call that ended with `code`.
  void CountHandled(const MethodSeries& method, grpc::StatusCode code);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& started_;
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& handling_;
  prometheus::Family<prometheus::Gauge>& streams_active_;
  // Written only by the constructor: read without a lock.
  absl::flat_hash_map<std::string, MethodSeries> methods_;
  MethodSeries unknown_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_GRPC_METRICS_H_
