// TunnelServiceImpl over a real gRPC server and stub (in process, on a unix socket), with the
// TunnelManager on the fakes.
#include "agent/grpc_service.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/tunnel_manager.h"
#include "agent/tunnel_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// A GRE tunnel whose remote and prefixes are its own, numbered by `n` (1..49).
v1::Tunnel Gre(const std::string& name, int n) {
  v1::Tunnel t;
  t.set_name(name);
  t.set_mode(v1::TUNNEL_MODE_GRE);
  t.set_local("198.51.100.1");
  t.set_remote(absl::StrCat("192.0.2.", 100 + n));
  t.add_addresses(absl::StrCat("10.", 100 + n, ".0.1/30"));
  t.add_routes(absl::StrCat("10.", 150 + n, ".0.0/16"));
  return t;
}

v1::Tunnel Ipip(const std::string& name, int n) {
  v1::Tunnel t = Gre(name, n);
  t.set_mode(v1::TUNNEL_MODE_IPIP);
  return t;
}

std::vector<std::string> Names(const google::protobuf::RepeatedPtrField<v1::Tunnel>& tunnels) {
  std::vector<std::string> names;
  for (const v1::Tunnel& t : tunnels) names.push_back(t.name());
  return names;
}

std::string TypeName(v1::TunnelEvent::Type type) { return v1::TunnelEvent::Type_Name(type); }

// "EXISTING t1", "SYNCED", ...
std::string Describe(const v1::TunnelEvent& e) {
  return e.has_tunnel() ? absl::StrCat(TypeName(e.type()), " ", e.tunnel().name())
                        : TypeName(e.type());
}

class GrpcServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(TunnelManager::Options{}); }
  void TearDown() override { Stop(); }

  // Someone routes the tunnel's remote into its own device: it is DOWN (a loop) until that
  // route goes.
  void MakeLoop(const std::string& name) {
    absl::StatusOr<TunnelView> view = manager_->Get(name);
    ASSERT_TRUE(view.ok()) << view.status();
    links_.foreign_routes.push_back(
        {dataplane::IpPrefix(view->spec.remote, view->spec.remote.bit_length()),
         links_.links().at(name).ifindex});
  }

  void Start(TunnelManager::Options options, TunnelServiceLimits limits = TunnelServiceLimits()) {
    Stop();
    manager_ = std::make_unique<TunnelManager>(&links_, &engine_, &store_, options);
    service_ = std::make_unique<TunnelServiceImpl>(
        manager_.get(), AgentIdentity{"1.2.3-test", "node-7", "fake-io", start_time_, 3, "0-1,4"},
        limits);
    static std::atomic<int> instance{0};
    socket_ = absl::StrCat("unix:", ::testing::TempDir(), "/grpc_service_test.", getpid(), ".",
                           instance++, ".sock");
    unlink(socket_.substr(5).c_str());
    grpc::ServerBuilder builder;
    builder.AddListeningPort(socket_, grpc::InsecureServerCredentials());
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr) << socket_;
    stub_ = v1::TunnelService::NewStub(
        grpc::CreateChannel(socket_, grpc::InsecureChannelCredentials()));
  }

  void Stop() {
    stub_.reset();
    if (server_ != nullptr) {
      // Open watch streams are cancelled at the deadline.
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      server_->Wait();
      server_.reset();
      unlink(socket_.substr(5).c_str());
    }
    service_.reset();
    manager_.reset();
  }

  // Every call gets a deadline, so a hang fails the test instead of blocking it.
  static void Bound(grpc::ClientContext* context, int seconds = 5) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Create(const v1::Tunnel& tunnel, const std::string& request_id = "",
                      v1::Tunnel* out = nullptr) {
    grpc::ClientContext context;
    Bound(&context);
    v1::CreateTunnelRequest request;
    *request.mutable_tunnel() = tunnel;
    request.set_request_id(request_id);
    v1::Tunnel response;
    grpc::Status status = stub_->CreateTunnel(&context, request, &response);
    if (out != nullptr) *out = response;
    return status;
  }

  grpc::Status Get(const std::string& name, v1::Tunnel* out) {
    grpc::ClientContext context;
    Bound(&context);
    v1::GetTunnelRequest request;
    request.set_name(name);
    return stub_->GetTunnel(&context, request, out);
  }

  grpc::Status List(const v1::ListTunnelsRequest& request, v1::ListTunnelsResponse* out) {
    grpc::ClientContext context;
    Bound(&context);
    return stub_->ListTunnels(&context, request, out);
  }

  grpc::Status Update(const v1::Tunnel& tunnel, const std::vector<std::string>& mask,
                      v1::UpdateTunnelResponse* out, const std::string& request_id = "") {
    grpc::ClientContext context;
    Bound(&context);
    v1::UpdateTunnelRequest request;
    *request.mutable_tunnel() = tunnel;
    for (const std::string& path : mask) request.mutable_update_mask()->add_paths(path);
    request.set_request_id(request_id);
    return stub_->UpdateTunnel(&context, request, out);
  }

  grpc::Status Delete(const std::string& name, const std::string& etag = "") {
    grpc::ClientContext context;
    Bound(&context);
    v1::DeleteTunnelRequest request;
    request.set_name(name);
    request.set_etag(etag);
    google::protobuf::Empty response;
    return stub_->DeleteTunnel(&context, request, &response);
  }

  grpc::Status Apply(const v1::ApplyTunnelsRequest& request, v1::ApplyTunnelsResponse* out) {
    grpc::ClientContext context;
    Bound(&context);
    return stub_->ApplyTunnels(&context, request, out);
  }

  // The next `n` events of a watch stream, described; fewer when the stream ends.
  static std::vector<std::string> Read(grpc::ClientReader<v1::TunnelEvent>& reader, int n,
                                       std::vector<v1::TunnelEvent>* events = nullptr) {
    std::vector<std::string> described;
    v1::TunnelEvent event;
    while (static_cast<int>(described.size()) < n && reader.Read(&event)) {
      described.push_back(Describe(event));
      if (events != nullptr) events->push_back(event);
    }
    return described;
  }

  // A unary call with `bytes` as the request, whatever they are.
  grpc::Status RawCall(const std::string& method, const std::string& bytes) {
    grpc::GenericStub generic(grpc::CreateChannel(socket_, grpc::InsecureChannelCredentials()));
    grpc::CompletionQueue queue;
    grpc::ClientContext context;
    Bound(&context);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call = generic.PrepareUnaryCall(
        &context, absl::StrCat("/tunnelagent.v1.TunnelService/", method), request, &queue);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(queue.Next(&tag, &ok));
    queue.Shutdown();
    while (queue.Next(&tag, &ok)) {
    }
    return status;
  }

  const absl::Time start_time_ = absl::FromUnixSeconds(1700000000);
  fakes::EventLog log_;
  fakes::FakeLinkControl links_{&log_};
  fakes::FakePacketEngine engine_{&log_};
  fakes::FakeStateStore store_{&log_};
  std::unique_ptr<TunnelManager> manager_;
  std::unique_ptr<TunnelServiceImpl> service_;
  std::string socket_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::TunnelService::Stub> stub_;
};

// ---- request_id ----------------------------------------------------------------------------

TEST_F(GrpcServiceTest, CreateRetriedWithTheSameRequestIdCreatesOnce) {
  const uint64_t start = manager_->revision();
  v1::Tunnel first;
  v1::Tunnel second;
  grpc::Status a = Create(Gre("gre1", 1), "req-1", &first);
  grpc::Status b = Create(Gre("gre1", 1), "req-1", &second);

  ASSERT_TRUE(a.ok()) << a.error_message();
  ASSERT_TRUE(b.ok()) << b.error_message() << " (a retry, not a second create)";
  EXPECT_TRUE(MessageDifferencer::Equals(first, second))
      << first.DebugString() << " vs " << second.DebugString();
  EXPECT_EQ(first.status().state(), v1::OPER_STATE_UP);
  EXPECT_EQ(links_.create_calls(), 1);
  EXPECT_EQ(manager_->revision(), start + 1);

  // Without an id, the same request is a second create.
  EXPECT_EQ(Create(Gre("gre1", 1)).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(GrpcServiceTest, SameRequestIdWithAnotherBodyIsInvalidArgument) {
  ASSERT_TRUE(Create(Gre("gre1", 1), "req-1").ok());
  grpc::Status reused = Create(Gre("gre2", 2), "req-1");
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << reused.error_message();
  EXPECT_THAT(reused.error_message(), HasSubstr("request_id"));
  EXPECT_EQ(links_.create_calls(), 1);
  v1::Tunnel unused;
  EXPECT_EQ(Get("gre2", &unused).error_code(), grpc::StatusCode::NOT_FOUND);
}

// ---- ListTunnels ---------------------------------------------------------------------------

TEST_F(GrpcServiceTest, ListTunnelsInPages) {
  for (int n : {3, 1, 5, 2, 4}) ASSERT_TRUE(Create(Gre(absl::StrCat("t", n), n)).ok());

  std::vector<std::string> seen;
  std::vector<std::string> tokens;
  v1::ListTunnelsRequest request;
  request.set_page_size(2);
  int pages = 0;
  do {
    v1::ListTunnelsResponse page;
    grpc::Status status = List(request, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_LE(page.tunnels_size(), 2);
    for (const v1::Tunnel& t : page.tunnels()) seen.push_back(t.name());
    tokens.push_back(page.next_page_token());
    request.set_page_token(page.next_page_token());
    ASSERT_LT(++pages, 10) << "no end";
  } while (!request.page_token().empty());

  EXPECT_EQ(pages, 3);
  EXPECT_THAT(seen, ElementsAre("t1", "t2", "t3", "t4", "t5")) << "in order, none twice";
  ASSERT_EQ(tokens.size(), 3u);
  EXPECT_FALSE(tokens[0].empty());
  EXPECT_FALSE(tokens[1].empty());
  EXPECT_NE(tokens[0], tokens[1]);
  EXPECT_TRUE(tokens[2].empty()) << "the last page has no token";

  // Everything at once without a page size.
  v1::ListTunnelsResponse all;
  ASSERT_TRUE(List(v1::ListTunnelsRequest(), &all).ok());
  EXPECT_THAT(Names(all.tunnels()), ElementsAre("t1", "t2", "t3", "t4", "t5"));
  EXPECT_TRUE(all.next_page_token().empty());
}

TEST_F(GrpcServiceTest, ListTunnelsPagesStayWellDefinedWhileTunnelsGo) {
  for (int n = 1; n <= 5; ++n) ASSERT_TRUE(Create(Gre(absl::StrCat("t", n), n)).ok());
  v1::ListTunnelsRequest request;
  request.set_page_size(2);
  v1::ListTunnelsResponse first;
  ASSERT_TRUE(List(request, &first).ok());
  ASSERT_THAT(Names(first.tunnels()), ElementsAre("t1", "t2"));

  ASSERT_TRUE(Delete("t2").ok());  // the one the token points after
  ASSERT_TRUE(Delete("t3").ok());
  request.set_page_token(first.next_page_token());
  v1::ListTunnelsResponse second;
  ASSERT_TRUE(List(request, &second).ok());
  EXPECT_THAT(Names(second.tunnels()), ElementsAre("t4", "t5"));
  EXPECT_TRUE(second.next_page_token().empty());
}

TEST_F(GrpcServiceTest, ListTunnelsWithABadPageTokenOrSizeIsInvalidArgument) {
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  v1::ListTunnelsRequest request;
  request.set_page_token("%%% not a token %%%");
  v1::ListTunnelsResponse response;
  grpc::Status status = List(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("page_token"));

  request.Clear();
  request.set_page_size(-1);
  status = List(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();

  // A filter value this agent does not know matches neither nothing nor everything: refused.
  request.Clear();
  request.set_state(static_cast<v1::OperState>(42));
  status = List(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(status.error_message(), "state: unknown value 42");
  request.Clear();
  request.set_mode(static_cast<v1::TunnelMode>(99));
  status = List(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(status.error_message(), "mode: unknown value 99");
}

TEST_F(GrpcServiceTest, AnErrorAboutAHugeValueStaysSmall) {
  v1::Tunnel tunnel = Gre("t1", 1);
  tunnel.set_name(std::string(3'000'000, 'n'));
  grpc::Status status = Create(tunnel);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_LT(status.error_message().size(), 200u);
  // Whatever a message quotes, the answer is bounded.
  const absl::Status long_one = absl::InternalError(std::string(5000, 'x'));
  EXPECT_EQ(ToGrpcStatus(long_one).error_message().size(), 1024u + strlen("... (3976 more bytes)"));
}

TEST_F(GrpcServiceTest, ListTunnelsFilters) {
  v1::Tunnel t1 = Gre("t1", 1);
  (*t1.mutable_labels())["env"] = "prod";
  (*t1.mutable_labels())["team"] = "a";
  v1::Tunnel t2 = Ipip("t2", 2);
  (*t2.mutable_labels())["env"] = "prod";
  v1::Tunnel t3 = Gre("t3", 3);
  (*t3.mutable_labels())["env"] = "dev";
  for (const v1::Tunnel& t : {t1, t2, t3}) ASSERT_TRUE(Create(t).ok()) << t.name();
  MakeLoop("t3");  // DOWN until the route goes
  manager_->RefreshStates();

  auto list = [this](v1::ListTunnelsRequest request) {
    v1::ListTunnelsResponse response;
    grpc::Status status = List(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return Names(response.tunnels());
  };
  v1::ListTunnelsRequest gre;
  gre.set_mode(v1::TUNNEL_MODE_GRE);
  EXPECT_THAT(list(gre), ElementsAre("t1", "t3"));

  v1::ListTunnelsRequest prod;
  (*prod.mutable_labels())["env"] = "prod";
  EXPECT_THAT(list(prod), ElementsAre("t1", "t2"));

  v1::ListTunnelsRequest gre_prod = gre;
  (*gre_prod.mutable_labels())["env"] = "prod";
  EXPECT_THAT(list(gre_prod), ElementsAre("t1"));

  v1::ListTunnelsRequest two_labels;
  (*two_labels.mutable_labels())["env"] = "prod";
  (*two_labels.mutable_labels())["team"] = "b";
  EXPECT_THAT(list(two_labels), IsEmpty()) << "every label must match";

  v1::ListTunnelsRequest down;
  down.set_state(v1::OPER_STATE_DOWN);
  EXPECT_THAT(list(down), ElementsAre("t3"));
  v1::ListTunnelsRequest up;
  up.set_state(v1::OPER_STATE_UP);
  EXPECT_THAT(list(up), ElementsAre("t1", "t2"));

  // Filters and pages together: the pages are of the matching tunnels.
  gre.set_page_size(1);
  v1::ListTunnelsResponse page;
  ASSERT_TRUE(List(gre, &page).ok());
  EXPECT_THAT(Names(page.tunnels()), ElementsAre("t1"));
  ASSERT_FALSE(page.next_page_token().empty());
  gre.set_page_token(page.next_page_token());
  page.Clear();
  ASSERT_TRUE(List(gre, &page).ok());
  EXPECT_THAT(Names(page.tunnels()), ElementsAre("t3"));
  EXPECT_TRUE(page.next_page_token().empty());
}

// ---- UpdateTunnel --------------------------------------------------------------------------

TEST_F(GrpcServiceTest, UpdateWithAMaskChangesOnlyTheNamedFields) {
  v1::Tunnel created;
  ASSERT_TRUE(Create(Gre("t1", 1), "", &created).ok());

  v1::Tunnel patch;
  patch.set_name("t1");
  patch.add_routes("10.40.0.0/16");
  patch.add_routes("10.41.0.0/16");
  // Not in the mask: ignored, even where they would not parse.
  patch.set_mode(v1::TUNNEL_MODE_IPIP);
  patch.set_remote("not an address");
  patch.set_mtu(1300);
  patch.add_addresses("10.99.0.1/30");
  (*patch.mutable_labels())["x"] = "y";
  v1::UpdateTunnelResponse response;
  grpc::Status status = Update(patch, {"routes"}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  EXPECT_FALSE(response.recreated());
  EXPECT_THAT(response.changed_fields(), ElementsAre("routes"));
  const v1::Tunnel& t = response.tunnel();
  EXPECT_THAT(t.routes(), ElementsAre("10.40.0.0/16", "10.41.0.0/16"));
  EXPECT_EQ(t.mode(), v1::TUNNEL_MODE_GRE);
  EXPECT_EQ(t.remote(), created.remote());
  EXPECT_EQ(t.mtu(), 0u);
  EXPECT_THAT(t.addresses(), ElementsAre("10.101.0.1/30"));
  EXPECT_THAT(t.labels(), IsEmpty());
  EXPECT_NE(t.etag(), created.etag());
  EXPECT_EQ(t.status().ifindex(), created.status().ifindex()) << "in place";

  v1::Tunnel got;
  ASSERT_TRUE(Get("t1", &got).ok());
  EXPECT_THAT(got.routes(), ElementsAre("10.40.0.0/16", "10.41.0.0/16"));
  EXPECT_EQ(got.etag(), t.etag());
}

TEST_F(GrpcServiceTest, UpdateOfOptionsKeepsPresenceAndReportsEachField) {
  v1::Tunnel created;
  ASSERT_TRUE(Create(Gre("t1", 1), "", &created).ok());

  v1::Tunnel patch;
  patch.set_name("t1");
  patch.set_input_key(0);
  patch.set_output_checksum(true);
  patch.set_ttl(0);
  patch.set_tos(0x20);
  patch.mutable_keepalive()->mutable_interval()->set_seconds(10);
  patch.mutable_keepalive()->set_retries(4);
  patch.set_pmtudisc(false);
  v1::UpdateTunnelResponse response;
  grpc::Status status = Update(
      patch, {"keepalive", "ttl", "input_key", "output_checksum", "tos", "pmtudisc"}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(response.recreated());
  EXPECT_THAT(response.changed_fields(),
              ElementsAre("input_key", "output_checksum", "ttl", "tos", "pmtudisc", "keepalive"));
  const v1::Tunnel& t = response.tunnel();
  EXPECT_TRUE(t.has_input_key());
  EXPECT_EQ(t.input_key(), 0u);
  EXPECT_TRUE(t.has_ttl());
  EXPECT_EQ(t.ttl(), 0u);
  EXPECT_TRUE(t.output_checksum());
  EXPECT_EQ(t.tos(), 0x20u);
  EXPECT_TRUE(t.has_pmtudisc());
  EXPECT_FALSE(t.pmtudisc());
  EXPECT_EQ(t.keepalive().interval().seconds(), 10);
  EXPECT_EQ(t.keepalive().retries(), 4u);
  EXPECT_TRUE(t.status().has_keepalive()) << "keepalive on: its status is there";
  EXPECT_TRUE(t.status().keepalive().peer_alive());
  // 1500 - 20 - 4 - 4 (output checksum) on the fake's 1500 underlay.
  EXPECT_EQ(t.status().mtu(), 1472u);
  EXPECT_NE(t.etag(), created.etag());

  // Named in the mask but unset in the tunnel: back to unset (the defaults).
  v1::Tunnel clear;
  clear.set_name("t1");
  status = Update(clear, {"input_key", "ttl", "pmtudisc", "keepalive"}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.changed_fields(), ElementsAre("input_key", "ttl", "pmtudisc", "keepalive"));
  EXPECT_FALSE(response.tunnel().has_input_key());
  EXPECT_FALSE(response.tunnel().has_ttl());
  EXPECT_FALSE(response.tunnel().has_pmtudisc());
  EXPECT_FALSE(response.tunnel().has_keepalive());
  EXPECT_FALSE(response.tunnel().status().has_keepalive());
  EXPECT_TRUE(response.tunnel().output_checksum()) << "not named: unchanged";
}

TEST_F(GrpcServiceTest, OptionsBreakingTheKernelsRulesAreInvalidArgument) {
  v1::Tunnel ipip = Ipip("t1", 1);
  ipip.set_checksum(true);
  grpc::Status status = Create(ipip);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("tunnel.checksum: ipip"));

  v1::Tunnel gre = Gre("t2", 2);
  gre.set_ttl(300);
  status = Create(gre);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("tunnel.ttl: 300 is out of range 0..255"));

  gre.set_ttl(64);
  gre.set_pmtudisc(false);
  status = Create(gre);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("ttl and nopmtudisc are incompatible"));

  v1::Tunnel tap = Gre("t3", 3);
  tap.set_mode(v1::TUNNEL_MODE_GRETAP);
  tap.mutable_keepalive()->mutable_interval()->set_seconds(1);
  status = Create(tap);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("tunnel.keepalive: gretap"));

  v1::ListTunnelsResponse list;
  ASSERT_TRUE(List(v1::ListTunnelsRequest(), &list).ok());
  EXPECT_THAT(list.tunnels(), IsEmpty());
}

// Every path the manager takes is a desired field of Tunnel, of a kind the merge copies.
TEST(UpdatableFieldsTest, EachIsADesiredFieldOfTunnel) {
  for (const std::string& path : UpdatableFields()) {
    const google::protobuf::FieldDescriptor* field =
        v1::Tunnel::descriptor()->FindFieldByName(path);
    ASSERT_NE(field, nullptr) << path;
    EXPECT_NE(path, "status");
    EXPECT_NE(path, "etag");
    EXPECT_NE(path, "name");
  }
  // And every desired field can be updated.
  for (int i = 0; i < v1::Tunnel::descriptor()->field_count(); ++i) {
    const std::string name = v1::Tunnel::descriptor()->field(i)->name();
    if (name == "name" || name == "etag" || name == "status") continue;
    EXPECT_THAT(UpdatableFields(), Contains(name));
  }
}

TEST_F(GrpcServiceTest, UpdateWithABadMaskPathIsInvalidArgument) {
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  const uint64_t revision = manager_->revision();
  v1::Tunnel patch = Gre("t1", 1);
  patch.set_mtu(1300);
  for (const std::vector<std::string>& mask :
       std::vector<std::vector<std::string>>{{"nope"}, {"name"}, {"status"}, {"mtu", "etag"}}) {
    v1::UpdateTunnelResponse response;
    grpc::Status status = Update(patch, mask, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << mask.back() << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("update_mask"));
  }
  EXPECT_EQ(manager_->revision(), revision);
  v1::Tunnel got;
  ASSERT_TRUE(Get("t1", &got).ok());
  EXPECT_EQ(got.mtu(), 0u);
}

TEST_F(GrpcServiceTest, UpdateWithoutAMaskReplacesEveryField) {
  v1::Tunnel original = Gre("t1", 1);
  (*original.mutable_labels())["keep"] = "me";
  v1::Tunnel created;
  ASSERT_TRUE(Create(original, "", &created).ok());

  v1::Tunnel replacement = Ipip("t1", 2);
  replacement.set_mtu(1400);
  v1::UpdateTunnelResponse response;
  grpc::Status status = Update(replacement, {}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  EXPECT_TRUE(response.recreated());
  EXPECT_THAT(response.changed_fields(),
              ElementsAre("mode", "remote", "mtu", "addresses", "routes", "labels"));
  v1::Tunnel got;
  ASSERT_TRUE(Get("t1", &got).ok());
  EXPECT_EQ(got.mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(got.remote(), replacement.remote());
  EXPECT_EQ(got.mtu(), 1400u);
  EXPECT_THAT(got.addresses(), ElementsAre(replacement.addresses(0)));
  EXPECT_THAT(got.routes(), ElementsAre(replacement.routes(0)));
  EXPECT_THAT(got.labels(), IsEmpty()) << "a full replacement drops labels not given";
  EXPECT_EQ(got.status().create_time(), created.status().create_time());
}

TEST_F(GrpcServiceTest, UpdateAndDeleteWithAStaleEtagAreAborted) {
  v1::Tunnel created;
  ASSERT_TRUE(Create(Gre("t1", 1), "", &created).ok());
  v1::Tunnel patch;
  patch.set_name("t1");
  patch.set_mtu(1400);
  patch.set_etag(created.etag());
  v1::UpdateTunnelResponse response;
  ASSERT_TRUE(Update(patch, {"mtu"}, &response).ok());

  patch.set_mtu(1300);  // with the etag of before the first update
  grpc::Status stale = Update(patch, {"mtu"}, &response);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::ABORTED) << stale.error_message();
  EXPECT_EQ(Delete("t1", created.etag()).error_code(), grpc::StatusCode::ABORTED);
  v1::Tunnel got;
  ASSERT_TRUE(Get("t1", &got).ok());
  EXPECT_EQ(got.mtu(), 1400u);
  EXPECT_TRUE(Delete("t1", got.etag()).ok());
}

// ---- WatchTunnels --------------------------------------------------------------------------

TEST_F(GrpcServiceTest, WatchSendsTheCurrentSetThenChangesAsTheyHappen) {
  const uint64_t start = manager_->revision();
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  ASSERT_TRUE(Create(Gre("t2", 2)).ok());

  grpc::ClientContext context;
  Bound(&context, 10);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, v1::WatchTunnelsRequest());
  std::vector<v1::TunnelEvent> events;
  ASSERT_THAT(Read(*reader, 3, &events), ElementsAre("EXISTING t1", "EXISTING t2", "SYNCED"));
  for (const v1::TunnelEvent& e : events) EXPECT_EQ(e.revision(), start + 2) << Describe(e);
  EXPECT_EQ(events[0].tunnel().status().state(), v1::OPER_STATE_UP);

  std::thread changer([this] {
    EXPECT_TRUE(Create(Gre("t3", 3)).ok());
    v1::Tunnel patch;
    patch.set_name("t1");
    patch.set_mtu(1400);
    v1::UpdateTunnelResponse response;
    EXPECT_TRUE(Update(patch, {"mtu"}, &response).ok());
    EXPECT_TRUE(Delete("t2").ok());
  });
  events.clear();
  EXPECT_THAT(Read(*reader, 3, &events), ElementsAre("ADDED t3", "UPDATED t1", "DELETED t2"));
  changer.join();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].revision(), start + 3);
  EXPECT_EQ(events[1].revision(), start + 4);
  EXPECT_EQ(events[1].tunnel().mtu(), 1400u);
  EXPECT_EQ(events[2].revision(), start + 5);
  EXPECT_EQ(events[2].tunnel().name(), "t2") << "a deleted tunnel as it was";

  // A state change is streamed too.
  MakeLoop("t3");  // DOWN until the route goes
  manager_->RefreshStates();
  events.clear();
  EXPECT_THAT(Read(*reader, 1, &events), ElementsAre("STATE_CHANGED t3"));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].tunnel().status().state(), v1::OPER_STATE_DOWN);

  context.TryCancel();
  reader->Finish().IgnoreError();
}

TEST_F(GrpcServiceTest, WatchResumedFromARevisionGetsOnlyWhatWasMissed) {
  const uint64_t start = manager_->revision();
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());  // start + 1
  ASSERT_TRUE(Create(Gre("t2", 2)).ok());  // start + 2
  ASSERT_TRUE(Delete("t1").ok());          // start + 3

  grpc::ClientContext context;
  Bound(&context, 10);
  v1::WatchTunnelsRequest request;
  request.set_since_revision(start + 1);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, request);
  std::vector<v1::TunnelEvent> events;
  EXPECT_THAT(Read(*reader, 2, &events), ElementsAre("ADDED t2", "DELETED t1"));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].revision(), start + 2);
  EXPECT_EQ(events[1].revision(), start + 3);

  // Then the live ones, with no snapshot in between.
  std::thread changer([this] { EXPECT_TRUE(Create(Gre("t3", 3)).ok()); });
  events.clear();
  EXPECT_THAT(Read(*reader, 1, &events), ElementsAre("ADDED t3"));
  changer.join();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].revision(), start + 4);

  context.TryCancel();
  reader->Finish().IgnoreError();
}

TEST_F(GrpcServiceTest, WatchResumedFromARevisionNoLongerKeptResyncs) {
  TunnelManager::Options options;
  options.event_history = 2;
  Start(options);
  const uint64_t start = manager_->revision();
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());  // start + 1
  ASSERT_TRUE(Create(Gre("t2", 2)).ok());  // start + 2
  ASSERT_TRUE(Create(Gre("t3", 3)).ok());  // start + 3
  ASSERT_TRUE(Delete("t1").ok());          // start + 4: only + 3 and + 4 are kept

  grpc::ClientContext context;
  Bound(&context, 10);
  v1::WatchTunnelsRequest request;
  request.set_since_revision(start + 1);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, request);
  std::vector<v1::TunnelEvent> events;
  EXPECT_THAT(Read(*reader, 4, &events),
              ElementsAre("RESYNC", "EXISTING t2", "EXISTING t3", "SYNCED"));
  for (const v1::TunnelEvent& e : events) EXPECT_EQ(e.revision(), start + 4) << Describe(e);

  std::thread changer([this] { EXPECT_TRUE(Delete("t2").ok()); });
  events.clear();
  EXPECT_THAT(Read(*reader, 1, &events), ElementsAre("DELETED t2"));
  changer.join();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].revision(), start + 5);

  context.TryCancel();
  reader->Finish().IgnoreError();
}

TEST_F(GrpcServiceTest, WatchResumedFromARevisionOfAnEarlierRunResyncs) {
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  const uint64_t earlier = manager_->revision();  // the last revision a watcher saw

  // The agent restarts (at least a second later) and restores its tunnels, then makes more
  // changes than the earlier run had: a revision counted from 0 would now pass `earlier`.
  absl::SleepFor(absl::Milliseconds(1100));
  Start(TunnelManager::Options{});
  ASSERT_TRUE(manager_->Restore().ok());
  ASSERT_TRUE(Create(Gre("t2", 2)).ok());
  ASSERT_TRUE(Create(Gre("t3", 3)).ok());
  const uint64_t now = manager_->revision();
  ASSERT_GT(now, earlier);

  grpc::ClientContext context;
  Bound(&context, 10);
  v1::WatchTunnelsRequest request;
  request.set_since_revision(earlier);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&context, request);
  std::vector<v1::TunnelEvent> events;
  EXPECT_THAT(Read(*reader, 5, &events),
              ElementsAre("RESYNC", "EXISTING t1", "EXISTING t2", "EXISTING t3", "SYNCED"));
  for (const v1::TunnelEvent& e : events) EXPECT_EQ(e.revision(), now) << Describe(e);

  std::thread changer([this] { EXPECT_TRUE(Delete("t1").ok()); });
  events.clear();
  EXPECT_THAT(Read(*reader, 1, &events), ElementsAre("DELETED t1"));
  changer.join();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].revision(), now + 1);

  context.TryCancel();
  reader->Finish().IgnoreError();
}

// ---- ApplyTunnels --------------------------------------------------------------------------

std::vector<std::string> Plan(const v1::ApplyTunnelsResponse& response) {
  std::vector<std::string> plan;
  for (const v1::TunnelChange& c : response.changes()) {
    plan.push_back(absl::StrCat(c.name(), " ", v1::TunnelChange::Action_Name(c.action())));
  }
  return plan;
}

TEST_F(GrpcServiceTest, ApplyTunnelsDryRunThenForRealThenPruned) {
  const uint64_t start = manager_->revision();
  ASSERT_TRUE(Create(Gre("theirs", 9)).ok());
  v1::ApplyTunnelsRequest request;
  request.set_owner("team-a");
  *request.add_tunnels() = Gre("a", 1);
  *request.add_tunnels() = Ipip("b", 2);
  request.set_dry_run(true);

  v1::ApplyTunnelsResponse dry;
  grpc::Status status = Apply(request, &dry);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(Plan(dry), ElementsAre("a CREATE", "b CREATE"));
  EXPECT_TRUE(dry.dry_run());
  EXPECT_EQ(dry.revision(), start + 1);
  v1::ListTunnelsResponse listed;
  ASSERT_TRUE(List(v1::ListTunnelsRequest(), &listed).ok());
  EXPECT_THAT(Names(listed.tunnels()), ElementsAre("theirs"));

  request.set_dry_run(false);
  v1::ApplyTunnelsResponse real;
  ASSERT_TRUE(Apply(request, &real).ok());
  EXPECT_THAT(Plan(real), ElementsAre("a CREATE", "b CREATE"));
  EXPECT_FALSE(real.dry_run());
  EXPECT_EQ(real.revision(), start + 3);
  v1::ListTunnelsRequest owned;
  (*owned.mutable_labels())["owner"] = "team-a";
  listed.Clear();
  ASSERT_TRUE(List(owned, &listed).ok());
  EXPECT_THAT(Names(listed.tunnels()), ElementsAre("a", "b"));

  // b goes with prune; a is as it was. Dry first, then for real.
  request.clear_tunnels();
  *request.add_tunnels() = Gre("a", 1);
  request.set_prune(true);
  request.set_dry_run(true);
  v1::ApplyTunnelsResponse plan;
  ASSERT_TRUE(Apply(request, &plan).ok());
  EXPECT_THAT(Plan(plan), ElementsAre("a UNCHANGED", "b DELETE"));
  v1::Tunnel unused;
  EXPECT_TRUE(Get("b", &unused).ok()) << "dry run";
  request.set_dry_run(false);
  v1::ApplyTunnelsResponse pruned;
  ASSERT_TRUE(Apply(request, &pruned).ok());
  EXPECT_THAT(Plan(pruned), ElementsAre("a UNCHANGED", "b DELETE"));
  EXPECT_EQ(pruned.revision(), start + 4);
  listed.Clear();
  ASSERT_TRUE(List(v1::ListTunnelsRequest(), &listed).ok());
  EXPECT_THAT(Names(listed.tunnels()), ElementsAre("a", "theirs"));
}

TEST_F(GrpcServiceTest, ApplyTunnelsWithABadRequestIsInvalidArgument) {
  const uint64_t start = manager_->revision();
  v1::ApplyTunnelsRequest request;
  *request.add_tunnels() = Gre("a", 1);
  v1::ApplyTunnelsResponse response;
  grpc::Status status = Apply(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "no owner";
  EXPECT_THAT(status.error_message(), HasSubstr("owner"));

  request.set_owner("team-a");
  v1::Tunnel bad = Gre("b", 2);
  bad.set_remote("1.2.3");
  *request.add_tunnels() = bad;
  status = Apply(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("tunnels[1]"));
  EXPECT_EQ(manager_->revision(), start);
}

// ---- GetAgentInfo --------------------------------------------------------------------------

TEST_F(GrpcServiceTest, GetAgentInfo) {
  TunnelManager::Options options;
  options.max_tunnels = 77;
  Start(options);
  const uint64_t start = manager_->revision();
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  ASSERT_TRUE(Create(Gre("t2", 2)).ok());
  ASSERT_TRUE(Delete("t2").ok());

  grpc::ClientContext context;
  Bound(&context);
  v1::AgentInfo info;
  grpc::Status status = stub_->GetAgentInfo(&context, v1::GetAgentInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();

  EXPECT_EQ(info.version(), "1.2.3-test");
  EXPECT_EQ(info.node_name(), "node-7");
  EXPECT_EQ(info.io_backend(), "fake-io");
  EXPECT_EQ(info.dataplane_workers(), 3u);
  EXPECT_EQ(info.dataplane_cpus(), "0-1,4");
  EXPECT_EQ(info.max_tunnels(), 77u);
  EXPECT_EQ(info.tunnel_count(), 1u);
  EXPECT_EQ(info.revision(), start + 3);
  EXPECT_EQ(google::protobuf::util::TimeUtil::TimestampToSeconds(info.start_time()), 1700000000);
  std::set<int> modes(info.supported_modes().begin(), info.supported_modes().end());
  EXPECT_TRUE(modes.count(v1::TUNNEL_MODE_GRE));
  EXPECT_TRUE(modes.count(v1::TUNNEL_MODE_IPIP));
  // Every mode the dataplane carries is offered.
  for (v1::TunnelMode mode : {v1::TUNNEL_MODE_GRETAP, v1::TUNNEL_MODE_SIT, v1::TUNNEL_MODE_IP6GRE,
                              v1::TUNNEL_MODE_IP6GRETAP, v1::TUNNEL_MODE_IP6TNL}) {
    EXPECT_TRUE(modes.count(mode)) << v1::TunnelMode_Name(mode);
  }
  for (const char* feature : {"request_id", "etag", "update_mask", "watch", "apply", "labels",
                              "pagination", "gre_options", "keepalive", "path_mtu"}) {
    EXPECT_THAT(info.features(), Contains(feature));
  }
}

}  // namespace
}  // namespace tunnelagent::agent

namespace tunnelagent::agent {
namespace {

// ---- Abuse: malformed requests, watchers held, watchers that do not read ------------------

TEST_F(GrpcServiceTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  // CreateTunnelRequest{tunnel: Tunnel{name: "abc\xff"}} by hand: protobuf would not build it.
  const std::string name = "abc\xff";
  std::string tunnel = std::string("\x0a") + static_cast<char>(name.size()) + name;
  std::string request = std::string("\x0a") + static_cast<char>(tunnel.size()) + tunnel;
  grpc::Status status = RawCall("CreateTunnel", request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "tunnel.name is not valid UTF-8 (byte 0xff at offset 3)");
  EXPECT_TRUE(links_.LinkNames().empty());

  // Reads too: GetTunnelRequest{name: "\xc3("}.
  status = RawCall("GetTunnel", std::string("\x0a\x02\xc3(", 4));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "name is not valid UTF-8 (byte 0xc3 at offset 0)");

  // Bytes that are no message at all.
  status = RawCall("ListTunnels", std::string("\x12\x7f", 2));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token is cut short");

  // The service still answers.
  grpc::ClientContext context;
  Bound(&context);
  v1::AgentInfo info;
  EXPECT_TRUE(stub_->GetAgentInfo(&context, v1::GetAgentInfoRequest(), &info).ok());
}

TEST(ClientOfCallerTest, OneClientPerUserOrAddress) {
  EXPECT_EQ(ClientOfCaller("uid=1000 pid=4242"), "uid=1000");
  EXPECT_EQ(ClientOfCaller("uid=1000 pid=4243"), "uid=1000");
  EXPECT_EQ(ClientOfCaller("ipv4:198.18.0.1:40000"), "ipv4:198.18.0.1");
  EXPECT_EQ(ClientOfCaller("ipv6:[2001:db8::1]:5000"), "ipv6:[2001:db8::1]");
  EXPECT_EQ(ClientOfCaller("ipv4:198.18.0.1:40000 cn=node-3"), "ipv4:198.18.0.1 cn=node-3");
  EXPECT_EQ(ClientOfCaller("unix:"), "unix:");
}

// Opens a watch and reads up to its SYNCED: it is registered once that came.
struct OpenWatch {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader;
};

std::unique_ptr<OpenWatch> Watch(v1::TunnelService::Stub* stub) {
  auto watch = std::make_unique<OpenWatch>();
  watch->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  watch->reader = stub->WatchTunnels(&watch->context, v1::WatchTunnelsRequest());
  return watch;
}

// A client whose flow-control window stays small, so the agent's writes stop when it stops
// reading.
std::unique_ptr<v1::TunnelService::Stub> SlowReader(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  return v1::TunnelService::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

TEST_F(GrpcServiceTest, WatchersAreLimitedPerClientAndInAll) {
  TunnelServiceLimits limits;
  limits.max_watchers_per_client = 2;
  limits.max_watchers = 3;
  Start(TunnelManager::Options{}, limits);
  std::vector<std::unique_ptr<OpenWatch>> open;
  for (int i = 0; i < 2; ++i) {
    open.push_back(Watch(stub_.get()));
    ASSERT_THAT(Read(*open.back()->reader, 1), ElementsAre("SYNCED"));
  }
  EXPECT_EQ(service_->open_watchers(), 2);

  // This test's calls all come from one client.
  std::unique_ptr<OpenWatch> refused = Watch(stub_.get());
  EXPECT_THAT(Read(*refused->reader, 1), IsEmpty());
  grpc::Status status = refused->reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("at most 2 watchers per client"));

  // Unary calls are not held up by them.
  ASSERT_TRUE(Create(Gre("t1", 1)).ok());
  for (auto& watch : open) EXPECT_THAT(Read(*watch->reader, 1), ElementsAre("ADDED t1"));

  // One closes: its slot is free again.
  open.back()->context.TryCancel();
  open.back()->reader->Finish().IgnoreError();
  open.pop_back();
  for (int i = 0; i < 100 && service_->open_watchers() != 1; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(service_->open_watchers(), 1);
  open.push_back(Watch(stub_.get()));
  EXPECT_THAT(Read(*open.back()->reader, 2), ElementsAre("EXISTING t1", "SYNCED"));

  // The total: with a per-client allowance above it, the total is what refuses.
  limits.max_watchers_per_client = 5;
  limits.max_watchers = 1;
  for (auto& watch : open) watch->context.TryCancel();
  for (auto& watch : open) watch->reader->Finish().IgnoreError();
  open.clear();
  Start(TunnelManager::Options{}, limits);
  open.push_back(Watch(stub_.get()));
  ASSERT_THAT(Read(*open.back()->reader, 1), ElementsAre("SYNCED"));
  refused = Watch(stub_.get());
  EXPECT_THAT(Read(*refused->reader, 1), IsEmpty());
  status = refused->reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("at most 1 watchers in all"));
  open.back()->context.TryCancel();
  open.back()->reader->Finish().IgnoreError();
}

TEST_F(GrpcServiceTest, AWatcherThatDoesNotReadIsClosedOnceTooFarBehind) {
  TunnelServiceLimits limits;
  limits.max_watcher_lag = 20;
  Start(TunnelManager::Options{}, limits);
  auto slow = SlowReader(socket_);
  std::unique_ptr<OpenWatch> watch = Watch(slow.get());
  ASSERT_THAT(Read(*watch->reader, 1), ElementsAre("SYNCED"));

  // Large events: a tunnel with 40 labels of 63 bytes, updated over and over (~3 KB each).
  v1::Tunnel big = Gre("big", 1);
  for (int i = 0; i < 40; ++i) (*big.mutable_labels())[absl::StrCat("k", i)] = std::string(63, 'v');
  ASSERT_TRUE(Create(big).ok());
  constexpr int kUpdates = 200;
  for (int i = 0; i < kUpdates; ++i) {
    v1::Tunnel patch;
    patch.set_name("big");
    patch.set_mtu(1300 + i);
    v1::UpdateTunnelResponse response;
    ASSERT_TRUE(Update(patch, {"mtu"}, &response).ok());
  }
  // The dispatcher looks at each watcher on new revisions.
  absl::SleepFor(absl::Milliseconds(500));
  v1::Tunnel patch;
  patch.set_name("big");
  patch.set_mtu(1200);
  v1::UpdateTunnelResponse response;
  ASSERT_TRUE(Update(patch, {"mtu"}, &response).ok());
  absl::SleepFor(absl::Milliseconds(500));

  // What was sent before it fell behind, then the reason.
  const std::vector<std::string> events = Read(*watch->reader, kUpdates + 10);
  EXPECT_LT(events.size(), static_cast<size_t>(kUpdates));
  grpc::Status status = watch->reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("revisions behind (at most 20 allowed)"));
  EXPECT_THAT(status.error_message(), HasSubstr("since_revision="));
}

TEST_F(GrpcServiceTest, AClosedWatcherThatNeverReadsIsCancelledAfterTheGrace) {
  TunnelServiceLimits limits;
  limits.max_watcher_lag = 5;
  limits.closed_watcher_grace = absl::Milliseconds(300);
  Start(TunnelManager::Options{}, limits);
  auto slow = SlowReader(socket_);
  std::unique_ptr<OpenWatch> watch = Watch(slow.get());
  ASSERT_THAT(Read(*watch->reader, 1), ElementsAre("SYNCED"));
  ASSERT_EQ(service_->open_watchers(), 1);

  v1::Tunnel big = Gre("big", 1);
  for (int i = 0; i < 40; ++i) (*big.mutable_labels())[absl::StrCat("k", i)] = std::string(63, 'v');
  ASSERT_TRUE(Create(big).ok());
  for (int i = 0; i < 200; ++i) {
    v1::Tunnel patch;
    patch.set_name("big");
    patch.set_mtu(1300 + i);
    v1::UpdateTunnelResponse response;
    ASSERT_TRUE(Update(patch, {"mtu"}, &response).ok());
  }
  // Never read: the status cannot get through, so the stream is cancelled and its place freed.
  for (int i = 0; i < 100 && service_->open_watchers() != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(service_->open_watchers(), 0);
  watch->context.TryCancel();
  watch->reader->Finish().IgnoreError();
}

// ---- Peers of multipoint tunnels ----------------------------------------------------------

v1::Peer PeerMessage(const std::string& name, int n) {
  v1::Peer p;
  p.set_name(name);
  p.set_underlay(absl::StrCat("198.51.100.", n));
  p.add_allowed_prefixes(absl::StrCat("100.65.", n, ".0/24"));
  return p;
}

TEST_F(GrpcServiceTest, PeersOverTheWire) {
  v1::Tunnel hub;
  hub.set_name("tnl0");
  hub.set_mode(v1::TUNNEL_MODE_GRE);
  hub.set_local("198.51.100.1");
  hub.set_multipoint(true);
  hub.add_routes("100.65.0.0/16");
  ASSERT_TRUE(Create(hub).ok());

  grpc::ClientContext watch_context;
  Bound(&watch_context, 10);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> reader =
      stub_->WatchTunnels(&watch_context, v1::WatchTunnelsRequest());
  ASSERT_THAT(Read(*reader, 2), ElementsAre("EXISTING tnl0", "SYNCED"));

  {
    grpc::ClientContext context;
    Bound(&context);
    v1::CreatePeerRequest request;
    request.set_tunnel("tnl0");
    *request.mutable_peer() = PeerMessage("b", 2);
    v1::Peer made;
    ASSERT_TRUE(stub_->CreatePeer(&context, request, &made).ok());
    EXPECT_EQ(made.name(), "b");
    EXPECT_FALSE(made.etag().empty());
    EXPECT_EQ(made.status().state(), v1::OPER_STATE_UP);
  }
  {
    // The same prefix for another peer: ALREADY_EXISTS; a point-to-point tunnel: none.
    grpc::ClientContext context;
    Bound(&context);
    v1::CreatePeerRequest request;
    request.set_tunnel("tnl0");
    *request.mutable_peer() = PeerMessage("c", 3);
    request.mutable_peer()->set_allowed_prefixes(0, "100.65.2.0/24");
    v1::Peer made;
    EXPECT_EQ(stub_->CreatePeer(&context, request, &made).error_code(),
              grpc::StatusCode::ALREADY_EXISTS);
  }
  {
    grpc::ClientContext context;
    Bound(&context);
    v1::UpdatePeerRequest request;
    request.set_tunnel("tnl0");
    request.mutable_peer()->set_name("b");
    request.mutable_peer()->set_underlay("198.51.100.9");
    request.mutable_update_mask()->add_paths("underlay");
    v1::Peer updated;
    ASSERT_TRUE(stub_->UpdatePeer(&context, request, &updated).ok());
    EXPECT_EQ(updated.underlay(), "198.51.100.9");
    ASSERT_EQ(updated.allowed_prefixes_size(), 1) << "a field outside the mask is kept";
    EXPECT_EQ(updated.allowed_prefixes(0), "100.65.2.0/24");
  }
  {
    grpc::ClientContext context;
    Bound(&context);
    v1::UpdatePeerRequest request;
    request.set_tunnel("tnl0");
    request.mutable_peer()->set_name("b");
    request.mutable_update_mask()->add_paths("name");
    v1::Peer updated;
    EXPECT_EQ(stub_->UpdatePeer(&context, request, &updated).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext context;
    Bound(&context);
    v1::ApplyPeersRequest request;
    request.set_tunnel("tnl0");
    request.set_owner("fleet");
    *request.add_peers() = PeerMessage("n3", 3);
    *request.add_peers() = PeerMessage("n4", 4);
    v1::ApplyPeersResponse response;
    ASSERT_TRUE(stub_->ApplyPeers(&context, request, &response).ok());
    ASSERT_EQ(response.changes_size(), 2);
    EXPECT_EQ(response.changes(0).action(), v1::TunnelChange::CREATE);
    EXPECT_EQ(response.unchanged(), 0u);
  }
  {
    grpc::ClientContext context;
    Bound(&context);
    v1::ListPeersRequest request;
    request.set_tunnel("tnl0");
    request.set_page_size(2);
    v1::ListPeersResponse page;
    ASSERT_TRUE(stub_->ListPeers(&context, request, &page).ok());
    ASSERT_EQ(page.peers_size(), 2);
    EXPECT_EQ(page.peers(0).name(), "b");
    EXPECT_FALSE(page.next_page_token().empty());
    grpc::ClientContext next_context;
    Bound(&next_context);
    request.set_page_token(page.next_page_token());
    ASSERT_TRUE(stub_->ListPeers(&next_context, request, &page).ok());
    ASSERT_EQ(page.peers_size(), 1);
    EXPECT_EQ(page.peers(0).name(), "n4");
    EXPECT_EQ(page.peers(0).labels().at("owner"), "fleet");
  }
  {
    grpc::ClientContext context;
    Bound(&context);
    v1::DeletePeerRequest request;
    request.set_tunnel("tnl0");
    request.set_name("n3");
    google::protobuf::Empty empty;
    ASSERT_TRUE(stub_->DeletePeer(&context, request, &empty).ok());
    grpc::ClientContext get_context;
    Bound(&get_context);
    v1::GetPeerRequest get;
    get.set_tunnel("tnl0");
    get.set_name("n3");
    v1::Peer peer;
    EXPECT_EQ(stub_->GetPeer(&get_context, get, &peer).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  std::vector<v1::TunnelEvent> events;
  EXPECT_THAT(Read(*reader, 5, &events),
              ElementsAre("PEER_ADDED tnl0", "PEER_UPDATED tnl0", "PEER_ADDED tnl0",
                          "PEER_ADDED tnl0", "PEER_DELETED tnl0"));
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].peer().name(), "b");
  EXPECT_EQ(events[4].peer().name(), "n3");
  EXPECT_EQ(events[1].revision() + 1, events[2].revision());

  // A new watcher sees the peers in the current set.
  grpc::ClientContext again_context;
  Bound(&again_context, 10);
  std::unique_ptr<grpc::ClientReader<v1::TunnelEvent>> again =
      stub_->WatchTunnels(&again_context, v1::WatchTunnelsRequest());
  events.clear();
  ASSERT_THAT(Read(*again, 4, &events),
              ElementsAre("EXISTING tnl0", "EXISTING tnl0", "EXISTING tnl0", "SYNCED"));
  EXPECT_EQ(events[1].peer().name(), "b");
  EXPECT_EQ(events[2].peer().name(), "n4");
  watch_context.TryCancel();
  again_context.TryCancel();
}

}  // namespace
}  // namespace tunnelagent::agent
