#include "agent/grpc_metrics.h"

#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/support/interceptor.h"

namespace tunnelagent::agent {
namespace {

using grpc::experimental::InterceptionHookPoints;

// 0.1 ms .. 10 s, about 2.5x apart: a GetTunnel answered from memory lands in the first
// buckets, a CreateTunnel that waits on netlink and the state file's fsync in the middle.
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
  return *buckets;
}

std::string WithSlash(absl::string_view name) {
  return absl::StartsWith(name, "/") ? std::string(name) : absl::StrCat("/", name);
}

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(GrpcMetrics* metrics, const GrpcMetrics::MethodSeries* method, bool unary)
      : metrics_(metrics),
        method_(method),
        unary_(unary),
        start_(std::chrono::steady_clock::now()) {
    if (method_->streams_active != nullptr) method_->streams_active->Increment();
  }

  // A call whose status was never sent (the server shut down under it) ends here.
  ~MetricsInterceptor() override {
    if (!finished_) Finish(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (!finished_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Finish(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Finish(grpc::StatusCode code) {
    finished_ = true;
    metrics_->CountRequest(*method_, code);
    if (method_->streams_active != nullptr) method_->streams_active->Decrement();
    // Unary calls only (the series exists for unary methods only, and this call must be one).
    if (unary_ && method_->duration != nullptr) {
      method_->duration->Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
  }

  GrpcMetrics* const metrics_;
  const GrpcMetrics::MethodSeries* const method_;
  const bool unary_;
  const std::chrono::steady_clock::time_point start_;
  bool finished_ = false;  // one RPC's batches are intercepted one at a time
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(GrpcMetrics* metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const char* method = info->method();
    return new MetricsInterceptor(metrics_, &metrics_->Series(method == nullptr ? "" : method),
                                  info->type() == grpc::experimental::ServerRpcInfo::Type::UNARY);
  }

 private:
  GrpcMetrics* const metrics_;
};

}  // namespace

absl::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::DO_NOT_USE:
      break;
  }
  return "UNKNOWN";  // not a code gRPC sends: counted as UNKNOWN rather than a new label
}

absl::StatusOr<std::vector<GrpcMetrics::Method>> GrpcMetrics::MethodsOf(
    const std::vector<std::string>& services) {
  std::vector<Method> methods;
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (service == nullptr) {
      return absl::NotFoundError(absl::StrCat("service ", name, " is not compiled in"));
    }
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* method = service->method(i);
      methods.push_back(Method{absl::StrCat("/", service->full_name(), "/", method->name()),
                               method->client_streaming() || method->server_streaming()});
    }
  }
  return methods;
}

GrpcMetrics::GrpcMetrics(const std::vector<Method>& methods)
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("tunnelagent_grpc_requests_total")
                    .Help("gRPC calls handled, by full method name and status code.")
                    .Register(*registry_)),
      duration_(prometheus::BuildHistogram()
                    .Name("tunnelagent_grpc_request_duration_seconds")
                    .Help("Time from the start of a unary gRPC call to its status, by method.")
                    .Register(*registry_)),
      streams_active_(prometheus::BuildGauge()
                          .Name("tunnelagent_grpc_streams_active")
                          .Help("Streaming gRPC calls open now, by method.")
                          .Register(*registry_)) {
  for (const Method& method : methods) {
    std::string name = WithSlash(method.name);
    if (methods_.contains(name)) continue;
    MethodSeries series;
    series.label = name;
    requests_.Add({{"method", name}, {"code", "OK"}});
    // A stream's lifetime is the client's choice, not the server's latency: not timed.
    if (method.streaming) {
      series.streams_active = &streams_active_.Add({{"method", name}});
    } else {
      series.duration = &duration_.Add({{"method", name}}, DurationBuckets());
    }
    methods_.emplace(std::move(name), std::move(series));
  }
  unknown_.label = kUnknownMethod;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcMetrics::NewInterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
GrpcMetrics::InterceptorCreators() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(NewInterceptorFactory());
  return creators;
}

const GrpcMetrics::MethodSeries& GrpcMetrics::Series(absl::string_view method) const {
  auto it = methods_.find(method);
  return it == methods_.end() ? unknown_ : it->second;
}

void GrpcMetrics::CountRequest(const MethodSeries& method, grpc::StatusCode code) {
  // Family::Add finds the existing series under the family's lock: once per call, fine.
  requests_.Add({{"method", method.label}, {"code", std::string(GrpcCodeName(code))}}).Increment();
}

}  // namespace tunnelagent::agent
