// Prometheus metrics of the gRPC server: requests by method and status code, how long unary
// calls took, and the server streams open now. Recorded by a server interceptor; the
// families and each method's series are made once, when GrpcMetrics is built.
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

// "OK", "NOT_FOUND", ...: the names gRPC's documentation gives the codes.
absl::string_view GrpcCodeName(grpc::StatusCode code);

class GrpcMetrics {
 public:
  // The method label of calls to a method that is not in the list given to the constructor
  // (a name the server does not serve, say): the label's values stay a bounded set.
  static constexpr char kUnknownMethod[] = "unknown";

  struct Method {
    std::string name;        // "/tunnelagent.v1.TunnelService/CreateTunnel" (the slash optional)
    bool streaming = false;  // client, server or bidirectional stream
  };

  // Every method of the named services ("grpc.health.v1.Health"), from the descriptors
  // compiled into the binary. NOT_FOUND names a service that is not.
  static absl::StatusOr<std::vector<Method>> MethodsOf(const std::vector<std::string>& services);

  // Makes, at 0, each method's OK count, each unary method's duration histogram and each
  // streaming method's open-streams gauge.
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
    std::string label;                            // the method label's value
    prometheus::Histogram* duration = nullptr;    // null for the unknown method
    prometheus::Gauge* streams_active = nullptr;  // server-streaming methods only
  };
  // The series of the method named as gRPC names it ("/pkg.Service/Method"); the unknown
  // method's when it is not one of ours.
  const MethodSeries& Series(absl::string_view method) const;
  // Counts one call that ended with `code`.
  void CountRequest(const MethodSeries& method, grpc::StatusCode code);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Gauge>& streams_active_;
  // Written only by the constructor: read without a lock.
  absl::flat_hash_map<std::string, MethodSeries> methods_;
  MethodSeries unknown_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_GRPC_METRICS_H_
