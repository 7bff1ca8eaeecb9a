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

std::optional<double> Requests(const prometheus::Registry& r, const std::string& method,
                               const std::string& code) {
  return Sample(r, "tunnelagent_grpc_requests_total", {{"method", method}, {"code", code}});
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
  std::map<std::string, bool> streaming;
  for (const auto& m : *methods) streaming[m.name] = m.streaming;
  EXPECT_EQ(streaming.count(kCreate), 1u);
  EXPECT_FALSE(streaming[kGet]);
  EXPECT_TRUE(streaming[kWatch]);
  EXPECT_FALSE(streaming[kHealthCheck]);
  EXPECT_TRUE(streaming[kHealthWatch]);

  auto missing = GrpcMetrics::MethodsOf({"no.such.Service"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(GrpcMetricsMethodsTest, CodeNames) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::NOT_FOUND), "NOT_FOUND");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::FAILED_PRECONDITION), "FAILED_PRECONDITION");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(static_cast<grpc::StatusCode>(99)), "UNKNOWN");
}

TEST(GrpcMetricsMethodsTest, SeriesExistAtZeroFromTheStart) {
  GrpcMetrics metrics({{"tunnelagent.v1.TunnelService/GetTunnel", false},  // no slash: added
                       {kWatch, true}});
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Requests(r, kGet, "OK"), 0);
  EXPECT_EQ(Requests(r, kWatch, "OK"), 0);
  EXPECT_EQ(Requests(r, kGet, "NOT_FOUND"), std::nullopt);  // codes appear as they happen
  EXPECT_EQ(Sample(r, "tunnelagent_grpc_request_duration_seconds", {{"method", kGet}}), 0);
  EXPECT_EQ(Sample(r, "tunnelagent_grpc_streams_active", {{"method", kWatch}}), 0);
  EXPECT_EQ(Sample(r, "tunnelagent_grpc_streams_active", {{"method", kGet}}), std::nullopt);
  EXPECT_EQ(Sample(r, "tunnelagent_grpc_request_duration_seconds", {{"method", kWatch}}),
            std::nullopt);

  const std::string text = prometheus::TextSerializer().Serialize(r.Collect());
  EXPECT_THAT(text, HasSubstr("# TYPE tunnelagent_grpc_requests_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE tunnelagent_grpc_request_duration_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE tunnelagent_grpc_streams_active gauge\n"));
  EXPECT_THAT(text, HasSubstr("tunnelagent_grpc_requests_total{code=\"OK\",method=\"" +
                              std::string(kGet) + "\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("tunnelagent_grpc_request_duration_seconds_bucket{method=\"" +
                              std::string(kGet) + "\",le=\"0.0001\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("tunnelagent_grpc_request_duration_seconds_bucket{method=\"" +
                              std::string(kGet) + "\",le=\"10\"} 0\n"));
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
  EXPECT_TRUE(Eventually([&] { return Requests(r, kList, "OK"); }, 3));
  EXPECT_TRUE(Eventually([&] { return Requests(r, kGet, "NOT_FOUND"); }, 2));
  EXPECT_TRUE(Eventually([&] { return Requests(r, kCreate, "UNIMPLEMENTED"); }, 1));
  EXPECT_TRUE(Eventually([&] { return Requests(r, kHealthCheck, "OK"); }, 1));
  EXPECT_EQ(Requests(r, kGet, "OK"), 0);
  EXPECT_EQ(Requests(r, kCreate, "OK"), 0);
  // Every unary call timed, whatever its code.
  const std::string duration = "tunnelagent_grpc_request_duration_seconds";
  EXPECT_EQ(Sample(r, duration, {{"method", kList}}), 3);
  EXPECT_EQ(Sample(r, duration, {{"method", kGet}}), 2);
  EXPECT_EQ(Sample(r, duration, {{"method", kHealthCheck}}), 1);
  EXPECT_EQ(Sample(r, duration, {{"method", kWatch}}), std::nullopt);
}

TEST_F(GrpcMetricsTest, ServerStreamIsActiveUntilItEnds) {
  const std::string active = "tunnelagent_grpc_streams_active";
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, v1::WatchTunnelsRequest());
  v1::TunnelEvent event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.type(), v1::TunnelEvent::SYNCED);
  EXPECT_EQ(Sample(registry(), active, {{"method", kWatch}}), 1);
  EXPECT_EQ(Requests(registry(), kWatch, "CANCELLED"), std::nullopt);

  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return Sample(registry(), active, {{"method", kWatch}}); }, 0));
  EXPECT_TRUE(Eventually([&] { return Requests(registry(), kWatch, "CANCELLED"); }, 1));
  EXPECT_EQ(Requests(registry(), kWatch, "OK"), 0);
  // A stream's lifetime is not a latency: no histogram.
  EXPECT_EQ(Sample(registry(), "tunnelagent_grpc_request_duration_seconds", {{"method", kWatch}}),
            std::nullopt);
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
      [&] { return Requests(registry(), GrpcMetrics::kUnknownMethod, "UNIMPLEMENTED"); }, 2));
  const std::string text = prometheus::TextSerializer().Serialize(registry().Collect());
  EXPECT_THAT(text, Not(HasSubstr("no.such.Service")));
  EXPECT_THAT(text, Not(HasSubstr("Nope")));
}

}  // namespace
}  // namespace tunnelagent::agent
