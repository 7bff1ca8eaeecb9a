#include "agent/grpc_metrics.h"

#include <chrono>
#include <iterator>
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
const prometheus::Histogram::BucketBoundaries& HandlingBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
  return *buckets;
}

prometheus::Labels StartedLabels(const GrpcMetrics::MethodSeries& method) {
  return {
      {"grpc_service", method.service}, {"grpc_method", method.method}, {"grpc_type", method.type}};
}

prometheus::Labels HandledLabels(const GrpcMetrics::MethodSeries& method, grpc::StatusCode code) {
  prometheus::Labels labels = StartedLabels(method);
  labels.emplace("grpc_code", GrpcCodeName(code));
  return labels;
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
    method_->started->Increment();
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
    metrics_->CountHandled(*method_, code);
    if (method_->streams_active != nullptr) method_->streams_active->Decrement();
    // Unary calls only (the series exists for unary methods only, and this call must be one).
    if (unary_ && method_->handling != nullptr) {
      method_->handling->Observe(
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
  // Indexed by the code's number, 0 (OK) to 16 (UNAUTHENTICATED), as gRPC numbers them.
  static constexpr absl::string_view kNames[] = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  const int number = static_cast<int>(code);
  // Not a code gRPC sends: counted as Unknown rather than as a new label value.
  if (number < 0 || number >= static_cast<int>(std::size(kNames))) return "Unknown";
  return kNames[number];
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
      const bool from_client = method->client_streaming();
      const bool from_server = method->server_streaming();
      methods.push_back(Method{absl::StrCat("/", service->full_name(), "/", method->name()),
                               from_client && from_server ? kBidiStream
                               : from_client              ? kClientStream
                               : from_server              ? kServerStream
                                                          : kUnary});
    }
  }
  return methods;
}

GrpcMetrics::GrpcMetrics(const std::vector<Method>& methods)
    : registry_(std::make_shared<prometheus::Registry>()),
      started_(prometheus::BuildCounter()
                   .Name("grpc_server_started_total")
                   .Help("gRPC calls started on the server, by service, method and type.")
                   .Register(*registry_)),
      handled_(prometheus::BuildCounter()
                   .Name("grpc_server_handled_total")
                   .Help("gRPC calls completed on the server, by service, method, type and "
                         "status code.")
                   .Register(*registry_)),
      handling_(prometheus::BuildHistogram()
                    .Name("grpc_server_handling_seconds")
                    .Help("Time from the start of a unary gRPC call to its status, by method.")
                    .Register(*registry_)),
      streams_active_(prometheus::BuildGauge()
                          .Name("tunnelagent_grpc_streams_active")
                          .Help("Streaming gRPC calls open now, by service and method.")
                          .Register(*registry_)) {
  for (const Method& method : methods) {
    std::string name = WithSlash(method.name);
    if (methods_.contains(name)) continue;
    // "/pkg.Service/Method": the service and method labels are the two halves.
    const size_t slash = name.rfind('/');
    MethodSeries series;
    series.service = name.substr(1, slash - 1);
    series.method = name.substr(slash + 1);
    series.type = method.type;
    series.started = &started_.Add(StartedLabels(series));
    handled_.Add(HandledLabels(series, grpc::StatusCode::OK));
    // A stream's lifetime is the client's choice, not the server's latency: not timed.
    if (method.type == kUnary) {
      series.handling = &handling_.Add(StartedLabels(series), HandlingBuckets());
    } else {
      series.streams_active =
          &streams_active_.Add({{"grpc_service", series.service}, {"grpc_method", series.method}});
    }
    methods_.emplace(std::move(name), std::move(series));
  }
  unknown_.service = kUnknownMethod;
  unknown_.method = kUnknownMethod;
  unknown_.type = kUnknownMethod;
  unknown_.started = &started_.Add(StartedLabels(unknown_));
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

void GrpcMetrics::CountHandled(const MethodSeries& method, grpc::StatusCode code) {
  // Family::Add finds the existing series under the family's lock: once per call, fine.
  handled_.Add(HandledLabels(method, code)).Increment();
}

}  // namespace tunnelagent::agent
