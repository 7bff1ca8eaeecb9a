#include "agent/grpc_metrics.h"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kCreate[] = "/tunnelagent.v1.TunnelService/CreateTunnel";
constexpr char kGet[] = "/tunnelagent.v1.TunnelService/GetTunnel";
constexpr char kList[] = "/tunnelagent.v1.TunnelService/ListTunnels";
constexpr char kWatch[] = "/tunnelagent.v1.TunnelService/WatchTunnels";
constexpr char kHealthCheck[] = "/grpc.health.v1.Health/Check";
constexpr char kHealthWatch[] = "/grpc.health.v1.Health/Watch";

// Answers just enough to produce each kind of outcome; everything else is the generated
// base class's UNIMPLEMENTED.
class FakeTunnelService final : public v1::TunnelService::Service {
 public:
  grpc::Status GetTunnel(grpc::ServerContext*, const v1::GetTunnelRequest* request,
                         v1::Tunnel*) override {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no tunnel " + request->name());
  }
  grpc::Status ListTunnels(grpc::ServerContext*, const v1::ListTunnelsRequest*,
                           v1::ListTunnelsResponse*) override {
    return grpc::Status::OK;
  }
  // One event, then open until the client goes away.
  grpc::Status WatchTunnels(grpc::ServerContext* context, const v1::WatchTunnelsRequest*,
                            grpc::ServerWriter<v1::TunnelEvent>* writer) override {
    v1::TunnelEvent event;
    event.set_type(v1::TunnelEvent::SYNCED);
    writer->Write(event);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!context->IsCancelled() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return grpc::Status::CANCELLED;
  }
};

// A value in what the registry would serve; nullopt when the series does not exist.
std::optional<double> Sample(const prometheus::Registry& registry, const std::string& family,
                             const std::map<std::string, std::string>& labels) {
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      std::map<std::string, std::string> got;
      for (const auto& label : m.label) got[label.name] = label.value;
      if (got != labels) continue;
      switch (f.type) {
        case prometheus::MetricType::Counter:
          return m.counter.value;
        case prometheus::MetricType::Gauge:
          return m.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(m.histogram.sample_count);
        default:
          return std::nullopt;
      }
    }
  }
  return std::nullopt;
}

// The labels of a method, "/pkg.Service/Method", without its type and code.
std::map<std::string, std::string> MethodLabels(const std::string& method) {
  if (method == GrpcMetrics::kUnknownMethod) {
    return {{"grpc_service", method}, {"grpc_method", method}};
  }
  const size_t slash = method.rfind('/');
  return {{"grpc_service", method.substr(1, slash - 1)}, {"grpc_method", method.substr(slash + 1)}};
}

std::string TypeOf(const std::string& method) {
  if (method == GrpcMetrics::kUnknownMethod) return GrpcMetrics::kUnknownMethod;
  return method == kWatch || method == kHealthWatch ? GrpcMetrics::kServerStream
                                                    : GrpcMetrics::kUnary;
}

std::map<std::string, std::string> Typed(const std::string& method) {
  std::map<std::string, std::string> labels = MethodLabels(method);
  labels["grpc_type"] = TypeOf(method);
  return labels;
}

std::optional<double> Handled(const prometheus::Registry& r, const std::string& method,
                              const std::string& code) {
  std::map<std::string, std::string> labels = Typed(method);
  labels["grpc_code"] = code;
  return Sample(r, "grpc_server_handled_total", labels);
}

std::optional<double> Started(const prometheus::Registry& r, const std::string& method) {
  return Sample(r, "grpc_server_started_total", Typed(method));
}

std::optional<double> Handling(const prometheus::Registry& r, const std::string& method) {
  return Sample(r, "grpc_server_handling_seconds", Typed(method));
}

std::optional<double> StreamsActive(const prometheus::Registry& r, const std::string& method) {
  return Sample(r, "tunnelagent_grpc_streams_active", MethodLabels(method));
}

std::vector<GrpcMetrics::Method> OurMethods() {
  auto methods = GrpcMetrics::MethodsOf({"tunnelagent.v1.TunnelService", "grpc.health.v1.Health"});
  EXPECT_TRUE(methods.ok()) << methods.status();
  return methods.ok() ? *methods : std::vector<GrpcMetrics::Method>{};
}

class GrpcMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    metrics_ = std::make_unique<GrpcMetrics>(OurMethods());
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    builder.experimental().SetInterceptorCreators(metrics_->InterceptorCreators());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
    stub_ = v1::TunnelService::NewStub(channel_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  const prometheus::Registry& registry() const { return *metrics_->registry(); }

  // Polls (bounded) until `value` of the series is `want`: a server writes its status before
  // the interceptor's counters are guaranteed visible to the client thread.
  bool Eventually(std::function<std::optional<double>()> value, double want) {
    for (int i = 0; i < 400; ++i) {
      if (value() == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  FakeTunnelService service_;
  std::unique_ptr<GrpcMetrics> metrics_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::TunnelService::Stub> stub_;
};

TEST(GrpcMetricsMethodsTest, MethodsOfListsEveryMethodAndWhichStream) {
  auto methods = GrpcMetrics::MethodsOf({"tunnelagent.v1.TunnelService", "grpc.health.v1.Health"});
  ASSERT_TRUE(methods.ok()) << methods.status();
  std::map<std::string, std::string> type;
  for (const auto& m : *methods) type[m.name] = m.type;
  EXPECT_EQ(type.count(kCreate), 1u);
  EXPECT_EQ(type[kGet], GrpcMetrics::kUnary);
  EXPECT_EQ(type[kWatch], GrpcMetrics::kServerStream);
  EXPECT_EQ(type[kHealthCheck], GrpcMetrics::kUnary);
  EXPECT_EQ(type[kHealthWatch], GrpcMetrics::kServerStream);

  auto missing = GrpcMetrics::MethodsOf({"no.such.Service"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(GrpcMetricsMethodsTest, CodeNames) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::CANCELLED), "Canceled");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::NOT_FOUND), "NotFound");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::FAILED_PRECONDITION), "FailedPrecondition");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAVAILABLE), "Unavailable");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "Unauthenticated");
  EXPECT_EQ(GrpcCodeName(static_cast<grpc::StatusCode>(99)), "Unknown");
  EXPECT_EQ(GrpcCodeName(static_cast<grpc::StatusCode>(-1)), "Unknown");
}

TEST(GrpcMetricsMethodsTest, SeriesExistAtZeroFromTheStart) {
  GrpcMetrics metrics({{"tunnelagent.v1.TunnelService/GetTunnel"},  // no slash: added
                       {kWatch, GrpcMetrics::kServerStream}});
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Handled(r, kGet, "OK"), 0);
  EXPECT_EQ(Handled(r, kWatch, "OK"), 0);
  EXPECT_EQ(Handled(r, kGet, "NotFound"), std::nullopt);  // codes appear as they happen
  EXPECT_EQ(Started(r, kGet), 0);
  EXPECT_EQ(Started(r, kWatch), 0);
  EXPECT_EQ(Handling(r, kGet), 0);
  EXPECT_EQ(StreamsActive(r, kWatch), 0);
  EXPECT_EQ(StreamsActive(r, kGet), std::nullopt);
  EXPECT_EQ(Handling(r, kWatch), std::nullopt);

  const std::string text = prometheus::TextSerializer().Serialize(r.Collect());
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_started_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_handled_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_handling_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE tunnelagent_grpc_streams_active gauge\n"));
  EXPECT_THAT(text,
              HasSubstr("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"GetTunnel\","
                        "grpc_service=\"tunnelagent.v1.TunnelService\",grpc_type=\"unary\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("grpc_server_handling_seconds_bucket{grpc_method=\"GetTunnel\","
                              "grpc_service=\"tunnelagent.v1.TunnelService\",grpc_type=\"unary\","
                              "le=\"0.0001\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("grpc_server_handling_seconds_bucket{grpc_method=\"GetTunnel\","
                              "grpc_service=\"tunnelagent.v1.TunnelService\",grpc_type=\"unary\","
                              "le=\"10\"} 0\n"));
}

TEST_F(GrpcMetricsTest, CountsEachCallByMethodAndCode) {
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    v1::ListTunnelsResponse response;
    ASSERT_TRUE(stub_->ListTunnels(&context, v1::ListTunnelsRequest(), &response).ok());
  }
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    v1::GetTunnelRequest request;
    request.set_name("nosuch");
    v1::Tunnel tunnel;
    EXPECT_EQ(stub_->GetTunnel(&context, request, &tunnel).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    v1::Tunnel tunnel;
    EXPECT_EQ(stub_->CreateTunnel(&context, v1::CreateTunnelRequest(), &tunnel).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }

  const prometheus::Registry& r = registry();
  EXPECT_TRUE(Eventually([&] { return Handled(r, kList, "OK"); }, 3));
  EXPECT_TRUE(Eventually([&] { return Handled(r, kGet, "NotFound"); }, 2));
  EXPECT_TRUE(Eventually([&] { return Handled(r, kCreate, "Unimplemented"); }, 1));
  EXPECT_TRUE(Eventually([&] { return Handled(r, kHealthCheck, "OK"); }, 1));
  EXPECT_EQ(Handled(r, kGet, "OK"), 0);
  EXPECT_EQ(Handled(r, kCreate, "OK"), 0);
  // Every call started counted, every unary call timed, whatever its code.
  EXPECT_EQ(Started(r, kList), 3);
  EXPECT_EQ(Started(r, kGet), 2);
  EXPECT_EQ(Started(r, kCreate), 1);
  EXPECT_EQ(Handling(r, kList), 3);
  EXPECT_EQ(Handling(r, kGet), 2);
  EXPECT_EQ(Handling(r, kHealthCheck), 1);
  EXPECT_EQ(Handling(r, kWatch), std::nullopt);
}

TEST_F(GrpcMetricsTest, ServerStreamIsActiveUntilItEnds) {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, v1::WatchTunnelsRequest());
  v1::TunnelEvent event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.type(), v1::TunnelEvent::SYNCED);
  EXPECT_EQ(StreamsActive(registry(), kWatch), 1);
  EXPECT_EQ(Handled(registry(), kWatch, "Canceled"), std::nullopt);

  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return StreamsActive(registry(), kWatch); }, 0));
  EXPECT_TRUE(Eventually([&] { return Handled(registry(), kWatch, "Canceled"); }, 1));
  EXPECT_EQ(Handled(registry(), kWatch, "OK"), 0);
  // A stream's lifetime is not a latency: no histogram.
  EXPECT_EQ(Started(registry(), kWatch), 1);
  EXPECT_EQ(Handling(registry(), kWatch), std::nullopt);
}

TEST_F(GrpcMetricsTest, UnknownMethodsShareOneLabel) {
  grpc::GenericStub generic(channel_);
  for (const char* method : {"/no.such.Service/Call", "/tunnelagent.v1.TunnelService/Nope"}) {
    grpc::ClientContext context;
    grpc::Slice empty("");  // an empty message; a default ByteBuffer is no message at all
    grpc::ByteBuffer request(&empty, 1), response;
    grpc::Status status;
    std::atomic<bool> done{false};
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        status = std::move(s);
                        done = true;
                      });
    for (int i = 0; i < 400 && !done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(done);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  EXPECT_TRUE(Eventually(
      [&] { return Handled(registry(), GrpcMetrics::kUnknownMethod, "Unimplemented"); }, 2));
  EXPECT_EQ(Started(registry(), GrpcMetrics::kUnknownMethod), 2);
  const std::string text = prometheus::TextSerializer().Serialize(registry().Collect());
  EXPECT_THAT(text, Not(HasSubstr("no.such.Service")));
  EXPECT_THAT(text, Not(HasSubstr("Nope")));
}

}  // namespace
}  // namespace tunnelagent::agent
