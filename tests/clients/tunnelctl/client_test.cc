// RunCommand against an in-process fake agent: what goes on the wire (request ids, masks,
// pages, metadata), what is printed, and the exit status.
#include "clients/tunnelctl/client.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "clients/common/request_id.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace tunnelagent::tunnelctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

template <typename Message>
Message FromText(const std::string& text) {
  Message message;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &message)) << text;
  return message;
}

// Answers from scripts set by the test; records what it was asked.
class FakeAgent final : public v1::TunnelService::Service {
 public:
  // Statuses the next unary calls fail with, in order, before calls succeed again.
  void FailNext(std::vector<grpc::Status> statuses) {
    absl::MutexLock lock(&mu_);
    failures_ = std::move(statuses);
  }

  grpc::Status CreateTunnel(grpc::ServerContext* context, const v1::CreateTunnelRequest* request,
                            v1::Tunnel* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    creates.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = request->tunnel();
    response->set_etag("e1");
    return grpc::Status::OK;
  }

  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* request,
                         v1::Tunnel* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    response->set_name(request->name());
    return grpc::Status::OK;
  }

  grpc::Status ListTunnels(grpc::ServerContext* context, const v1::ListTunnelsRequest* request,
                           v1::ListTunnelsResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    lists.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    auto page = pages.find(request->page_token());
    if (page == pages.end()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad token");
    *response = page->second;
    return grpc::Status::OK;
  }

  grpc::Status UpdateTunnel(grpc::ServerContext* context, const v1::UpdateTunnelRequest* request,
                            v1::UpdateTunnelResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    updates.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = update_response;
    return grpc::Status::OK;
  }

  grpc::Status DeleteTunnel(grpc::ServerContext* context, const v1::DeleteTunnelRequest* request,
                            google::protobuf::Empty*) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    deletes.push_back(*request);
    return NextFailure();
  }

  grpc::Status WatchTunnels(grpc::ServerContext* context, const v1::WatchTunnelsRequest* request,
                            grpc::ServerWriter<v1::TunnelEvent>* writer) override {
    std::vector<v1::TunnelEvent> events;
    std::optional<grpc::Status> end;
    {
      absl::MutexLock lock(&mu_);
      Record(context);
      watches.push_back(*request);
      events = watch_events;
      end = watch_end;
    }
    for (const v1::TunnelEvent& event : events) {
      if (!writer->Write(event)) return grpc::Status::CANCELLED;
      ++events_sent;
    }
    if (end.has_value()) return *end;
    // Like the agent: the stream stays open until the client goes away; but a client that
    // never goes away fails its test (the stream ends) rather than hanging it.
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!context->IsCancelled()) {
      if (std::chrono::steady_clock::now() > limit) return grpc::Status::OK;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return grpc::Status::CANCELLED;
  }

  grpc::Status ApplyTunnels(grpc::ServerContext* context, const v1::ApplyTunnelsRequest* request,
                            v1::ApplyTunnelsResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    applies.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = apply_response;
    return grpc::Status::OK;
  }

  grpc::Status GetAgentInfo(grpc::ServerContext* context, const v1::GetAgentInfoRequest* request,
                            v1::AgentInfo* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    if (info_unimplemented) {
      return v1::TunnelService::Service::GetAgentInfo(context, request, response);
    }
    response->set_version("0.2.0");
    response->set_revision(77);
    return grpc::Status::OK;
  }

  grpc::Status CreatePeer(grpc::ServerContext* context, const v1::CreatePeerRequest* request,
                          v1::Peer* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_creates.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = request->peer();
    response->set_etag("p1");
    return grpc::Status::OK;
  }

  grpc::Status GetPeer(grpc::ServerContext* context, const v1::GetPeerRequest* request,
                       v1::Peer* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_gets.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = peer_response;
    return grpc::Status::OK;
  }

  grpc::Status ListPeers(grpc::ServerContext* context, const v1::ListPeersRequest* request,
                         v1::ListPeersResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_lists.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    auto page = peer_pages.find(request->page_token());
    if (page == peer_pages.end()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad token");
    }
    *response = page->second;
    return grpc::Status::OK;
  }

  grpc::Status UpdatePeer(grpc::ServerContext* context, const v1::UpdatePeerRequest* request,
                          v1::Peer* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_updates.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = peer_response;
    return grpc::Status::OK;
  }

  grpc::Status DeletePeer(grpc::ServerContext* context, const v1::DeletePeerRequest* request,
                          google::protobuf::Empty*) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_deletes.push_back(*request);
    return NextFailure();
  }

  grpc::Status ApplyPeers(grpc::ServerContext* context, const v1::ApplyPeersRequest* request,
                          v1::ApplyPeersResponse* response) override {
    absl::MutexLock lock(&mu_);
    Record(context);
    peer_applies.push_back(*request);
    if (grpc::Status s = NextFailure(); !s.ok()) return s;
    *response = peer_apply_response;
    return grpc::Status::OK;
  }

  // Set before the calls; read after them.
  std::map<std::string, v1::ListTunnelsResponse> pages;
  std::map<std::string, v1::ListPeersResponse> peer_pages;
  v1::Peer peer_response;
  v1::ApplyPeersResponse peer_apply_response;
  v1::UpdateTunnelResponse update_response;
  v1::ApplyTunnelsResponse apply_response;
  std::vector<v1::TunnelEvent> watch_events;
  std::optional<grpc::Status> watch_end;  // unset: hold the stream open
  bool info_unimplemented = false;

  std::vector<v1::CreateTunnelRequest> creates;
  std::vector<v1::ListTunnelsRequest> lists;
  std::vector<v1::UpdateTunnelRequest> updates;
  std::vector<v1::DeleteTunnelRequest> deletes;
  std::vector<v1::WatchTunnelsRequest> watches;
  std::vector<v1::ApplyTunnelsRequest> applies;
  std::vector<v1::CreatePeerRequest> peer_creates;
  std::vector<v1::GetPeerRequest> peer_gets;
  std::vector<v1::ListPeersRequest> peer_lists;
  std::vector<v1::UpdatePeerRequest> peer_updates;
  std::vector<v1::DeletePeerRequest> peer_deletes;
  std::vector<v1::ApplyPeersRequest> peer_applies;
  // The authorization metadata of every call ("" when absent).
  std::vector<std::string> authorization;
  std::atomic<int> events_sent{0};

 private:
  void Record(grpc::ServerContext* context) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = context->client_metadata().find("authorization");
    authorization.push_back(it == context->client_metadata().end()
                                ? ""
                                : std::string(it->second.data(), it->second.size()));
  }

  grpc::Status NextFailure() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failures_.empty()) return grpc::Status::OK;
    grpc::Status s = failures_.front();
    failures_.erase(failures_.begin());
    return s;
  }

  absl::Mutex mu_;
  std::vector<grpc::Status> failures_ ABSL_GUARDED_BY(mu_);
};

const grpc::Status kUnavailable(grpc::StatusCode::UNAVAILABLE, "connection reset");

class ClientTest : public testing::Test {
 protected:
  void SetUp() override {
    static int servers = 0;
    socket_ = "unix:/tmp/tunnelctl_test_" + std::to_string(getpid()) + "_" +
              std::to_string(++servers) + ".sock";
    grpc::ServerBuilder builder;
    builder.AddListeningPort(socket_, grpc::InsecureServerCredentials());
    builder.RegisterService(&agent_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::TunnelService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
    options_.retry_delay = std::chrono::milliseconds(1);  // no channel: retried at once
    options_.new_request_id = [this] { return "generated-" + std::to_string(++ids_made_); };
  }

  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    std::remove(socket_.substr(5).c_str());
  }

  // Parses `args` (split on spaces) and runs them; out() and err() hold what was printed.
  int Run(const std::string& args) {
    std::vector<std::string> argv = absl::StrSplit(args, ' ', absl::SkipEmpty());
    absl::StatusOr<Command> command = ParseArgs(argv, "");
    EXPECT_TRUE(command.ok()) << command.status();
    if (!command.ok()) return -1;
    out_.str("");
    err_.str("");
    return RunCommand(*command, *stub_, options_, out_, err_);
  }

  std::string out() const { return out_.str(); }
  std::string err() const { return err_.str(); }

  FakeAgent agent_;
  std::string socket_;  // the agent also listens here, for tests that need a real channel
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::TunnelService::Stub> stub_;
  RunOptions options_;
  int ids_made_ = 0;
  std::ostringstream out_;
  std::ostringstream err_;
};

// ---- request ids and the retry ------------------------------------------------------------

TEST_F(ClientTest, CreateSendsAGeneratedRequestId) {
  ASSERT_EQ(Run("create t1 mode gre remote 192.0.2.2 label owner=me"), kExitOk) << err();
  ASSERT_EQ(agent_.creates.size(), 1u);
  EXPECT_EQ(agent_.creates[0].request_id(), "generated-1");
  EXPECT_EQ(agent_.creates[0].tunnel().labels().at("owner"), "me");
  EXPECT_THAT(out(), HasSubstr("labels: owner=me\n"));
  EXPECT_THAT(out(), HasSubstr("etag: e1\n"));
  EXPECT_THAT(err(), IsEmpty());
}

TEST_F(ClientTest, UnavailableIsRetriedOnceWithTheSameId) {
  agent_.FailNext({kUnavailable});
  ASSERT_EQ(Run("create t1 mode gre remote 192.0.2.2"), kExitOk) << err();
  ASSERT_EQ(agent_.creates.size(), 2u);
  EXPECT_EQ(agent_.creates[0].request_id(), "generated-1");
  EXPECT_EQ(agent_.creates[1].request_id(), "generated-1");
  EXPECT_EQ(ids_made_, 1);
  EXPECT_THAT(out(), StartsWith("name: t1\n"));
}

TEST_F(ClientTest, UnavailableTwiceFails) {
  agent_.FailNext({kUnavailable, kUnavailable});
  EXPECT_EQ(Run("create t1 mode gre remote 192.0.2.2 --request-id mine"), kExitAgentFailed);
  ASSERT_EQ(agent_.creates.size(), 2u);
  EXPECT_EQ(agent_.creates[0].request_id(), "mine");
  EXPECT_EQ(agent_.creates[1].request_id(), "mine");
  EXPECT_EQ(ids_made_, 0);
  EXPECT_EQ(err(), "tunnelctl: CreateTunnel: UNAVAILABLE: connection reset\n");
  EXPECT_THAT(out(), IsEmpty());
}

TEST_F(ClientTest, RetryWaitsForTheChannel) {
  Command command;
  command.agent = socket_;
  Inputs inputs;
  inputs.credentials = grpc::InsecureChannelCredentials();
  options_.channel = Dial(command, inputs);
  stub_ = v1::TunnelService::NewStub(options_.channel);
  agent_.FailNext({kUnavailable});
  ASSERT_EQ(Run("delete t1"), kExitOk) << err();
  ASSERT_EQ(agent_.deletes.size(), 2u);
  EXPECT_EQ(agent_.deletes[1].request_id(), agent_.deletes[0].request_id());
}

TEST_F(ClientTest, NoRetryWhileTheChannelCannotConnect) {
  options_.channel =
      grpc::CreateChannel("unix:/nonexistent/agent.sock", grpc::InsecureChannelCredentials());
  agent_.FailNext({kUnavailable});
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Run("--timeout 0.2 delete t1"), kExitAgentFailed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  EXPECT_EQ(agent_.deletes.size(), 1u);
  EXPECT_EQ(err(), "tunnelctl: DeleteTunnel: UNAVAILABLE: connection reset\n");
}

TEST_F(ClientTest, OtherErrorsAreNotRetried) {
  agent_.FailNext({grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "tunnel t1 already exists")});
  EXPECT_EQ(Run("create t1 mode gre remote 192.0.2.2"), kExitAgentFailed);
  EXPECT_EQ(agent_.creates.size(), 1u);
  EXPECT_EQ(err(), "tunnelctl: CreateTunnel: ALREADY_EXISTS: tunnel t1 already exists\n");
}

// ---- update and delete --------------------------------------------------------------------

TEST_F(ClientTest, UpdateSendsMaskEtagAndId) {
  agent_.update_response = FromText<v1::UpdateTunnelResponse>(R"pb(
    tunnel { name: "t1" mode: TUNNEL_MODE_IPIP remote: "192.0.2.9" etag: "e2" }
    recreated: true
    changed_fields: [ "mode", "remote" ]
  )pb");
  ASSERT_EQ(Run("update t1 remote 192.0.2.9 mode ipip noroutes --etag e1"), kExitOk) << err();
  ASSERT_EQ(agent_.updates.size(), 1u);
  const v1::UpdateTunnelRequest& request = agent_.updates[0];
  EXPECT_EQ(request.tunnel().name(), "t1");
  EXPECT_EQ(request.tunnel().etag(), "e1");
  EXPECT_EQ(request.tunnel().mode(), v1::TUNNEL_MODE_IPIP);
  EXPECT_EQ(request.tunnel().remote(), "192.0.2.9");
  EXPECT_THAT(request.update_mask().paths(), ElementsAre("mode", "remote", "routes"));
  EXPECT_EQ(request.request_id(), "generated-1");
  EXPECT_THAT(out(), StartsWith("name: t1\nmode: ipip\n"));
  EXPECT_THAT(out(), HasSubstr("\netag: e2\n"));
  EXPECT_THAT(out(), testing::EndsWith("\nrecreated: mode, remote\n"));
}

TEST_F(ClientTest, UpdateJsonIsTheResponse) {
  agent_.update_response = FromText<v1::UpdateTunnelResponse>(R"pb(tunnel { name: "t1" }
                                                                   recreated: true
                                                                   changed_fields: "key")pb");
  ASSERT_EQ(Run("-o json update t1 nokey"), kExitOk) << err();
  EXPECT_THAT(out(), StartsWith("{\n"));
  EXPECT_THAT(out(), HasSubstr("\"recreated\": true"));
  EXPECT_THAT(out(), HasSubstr("\"changedFields\": ["));
  EXPECT_THAT(agent_.updates[0].update_mask().paths(), ElementsAre("key"));
  EXPECT_FALSE(agent_.updates[0].tunnel().has_key());
}

TEST_F(ClientTest, UpdateAbortedOnStaleEtag) {
  agent_.FailNext({grpc::Status(grpc::StatusCode::ABORTED, "etag e0 is stale (now e1)")});
  EXPECT_EQ(Run("update t1 mtu 1400 --etag e0"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: UpdateTunnel: ABORTED: etag e0 is stale (now e1)\n");
}

TEST_F(ClientTest, DeleteSendsEtagAndId) {
  ASSERT_EQ(Run("delete t1 --etag e1 --request-id d1"), kExitOk) << err();
  ASSERT_EQ(agent_.deletes.size(), 1u);
  EXPECT_EQ(agent_.deletes[0].name(), "t1");
  EXPECT_EQ(agent_.deletes[0].etag(), "e1");
  EXPECT_EQ(agent_.deletes[0].request_id(), "d1");
  EXPECT_THAT(out(), IsEmpty());
  ASSERT_EQ(Run("-o json delete t2"), kExitOk) << err();
  EXPECT_EQ(out(), "{}\n");
  EXPECT_EQ(agent_.deletes[1].etag(), "");
  EXPECT_EQ(agent_.deletes[1].request_id(), "generated-1");
}

// ---- list ---------------------------------------------------------------------------------

TEST_F(ClientTest, ListFetchesEveryPageWithTheFilters) {
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "a" }
                                                            tunnels { name: "b" }
                                                            next_page_token: "p2")pb");
  agent_.pages["p2"] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "c" }
                                                              next_page_token: "p3")pb");
  agent_.pages["p3"] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "d" })pb");
  ASSERT_EQ(Run("list mode gre state up label owner=me"), kExitOk) << err();
  ASSERT_EQ(agent_.lists.size(), 3u);
  std::vector<std::string> tokens;
  for (const v1::ListTunnelsRequest& r : agent_.lists) {
    tokens.push_back(r.page_token());
    EXPECT_EQ(r.page_size(), 500);
    EXPECT_EQ(r.mode(), v1::TUNNEL_MODE_GRE);
    EXPECT_EQ(r.state(), v1::OPER_STATE_UP);
    EXPECT_EQ(r.labels().at("owner"), "me");
  }
  EXPECT_THAT(tokens, ElementsAre("", "p2", "p3"));
  std::vector<std::string> lines = absl::StrSplit(out(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << out();
  EXPECT_THAT(lines[0], StartsWith("NAME"));
  EXPECT_THAT(lines[4], StartsWith("d "));
}

TEST_F(ClientTest, ListJsonIsOneDocumentWithoutToken) {
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "a" }
                                                            next_page_token: "p2")pb");
  agent_.pages["p2"] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "b" })pb");
  ASSERT_EQ(Run("-o json ls --page-size 1"), kExitOk) << err();
  EXPECT_EQ(agent_.lists[0].page_size(), 1);
  v1::ListTunnelsResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out(), &parsed).ok()) << out();
  ASSERT_EQ(parsed.tunnels_size(), 2);
  EXPECT_EQ(parsed.tunnels(1).name(), "b");
  EXPECT_EQ(parsed.next_page_token(), "");
}

TEST_F(ClientTest, ListStopsOnARepeatedToken) {
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(next_page_token: "p")pb");
  agent_.pages["p"] = FromText<v1::ListTunnelsResponse>(R"pb(next_page_token: "p")pb");
  EXPECT_EQ(Run("list"), kExitAgentFailed);
  EXPECT_THAT(err(), HasSubstr("same page token twice"));
  EXPECT_THAT(out(), IsEmpty());
}

TEST_F(ClientTest, ListRetriesAPageOnce) {
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "a" })pb");
  agent_.FailNext({kUnavailable});
  ASSERT_EQ(Run("list"), kExitOk) << err();
  EXPECT_EQ(agent_.lists.size(), 2u);
}

// ---- watch --------------------------------------------------------------------------------

std::vector<v1::TunnelEvent> SampleEvents() {
  return {
      FromText<v1::TunnelEvent>(R"pb(type: EXISTING
                                     revision: 5
                                     tunnel {
                                       name: "a"
                                       status { state: OPER_STATE_UP }
                                     })pb"),
      FromText<v1::TunnelEvent>(R"pb(type: SYNCED revision: 5)pb"),
      FromText<v1::TunnelEvent>(R"pb(type: ADDED
                                     revision: 6
                                     tunnel { name: "b" })pb"),
      FromText<v1::TunnelEvent>(R"pb(type: DELETED
                                     revision: 7
                                     tunnel { name: "a" })pb"),
  };
}

TEST_F(ClientTest, WatchStopsAfterCount) {
  agent_.watch_events = SampleEvents();
  ASSERT_EQ(Run("watch --since 4 --count 3"), kExitOk) << err();
  EXPECT_EQ(out(), "5 EXISTING a up\n5 SYNCED - -\n6 ADDED b unknown\n");
  ASSERT_EQ(agent_.watches.size(), 1u);
  EXPECT_EQ(agent_.watches[0].since_revision(), 4u);
  EXPECT_THAT(err(), IsEmpty());
}

TEST_F(ClientTest, WatchJsonIsOneObjectPerLine) {
  agent_.watch_events = SampleEvents();
  ASSERT_EQ(Run("watch -o json --count 2"), kExitOk) << err();
  EXPECT_EQ(out(),
            "{\"type\":\"EXISTING\",\"revision\":\"5\",\"tunnel\":{\"name\":\"a\",\"status\":"
            "{\"state\":\"OPER_STATE_UP\"}}}\n"
            "{\"type\":\"SYNCED\",\"revision\":\"5\"}\n");
}

TEST_F(ClientTest, WatchFailsWhenTheStreamBreaks) {
  agent_.watch_events = SampleEvents();
  agent_.watch_end = grpc::Status(grpc::StatusCode::UNAVAILABLE, "agent shutting down");
  EXPECT_EQ(Run("watch"), kExitAgentFailed);
  EXPECT_EQ(out(), "5 EXISTING a up\n5 SYNCED - -\n6 ADDED b unknown\n7 DELETED a unknown\n");
  EXPECT_EQ(err(), "tunnelctl: WatchTunnels: UNAVAILABLE: agent shutting down (last revision 7)\n");
}

TEST_F(ClientTest, WatchFailsWhenTheAgentEndsTheStream) {
  agent_.watch_end = grpc::Status::OK;
  EXPECT_EQ(Run("watch --since 3 --count 10"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: WatchTunnels: the agent ended the stream (last revision 3)\n");
}

TEST_F(ClientTest, WatchUnimplemented) {
  agent_.watch_end = grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  EXPECT_EQ(Run("watch"), kExitAgentFailed);
  EXPECT_THAT(err(), HasSubstr("WatchTunnels: UNIMPLEMENTED: the agent does not implement"));
}

TEST_F(ClientTest, WatchStopsWhenInterrupted) {
  agent_.watch_events = {SampleEvents()[0]};
  Interrupt interrupt;
  options_.interrupt = &interrupt;
  std::thread trigger([&] {
    while (agent_.events_sent.load() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    interrupt.Trigger();
  });
  int status = Run("watch");
  trigger.join();
  EXPECT_EQ(status, kExitOk) << err();
  EXPECT_EQ(out(), "5 EXISTING a up\n");
  EXPECT_THAT(err(), IsEmpty());
}

TEST_F(ClientTest, WatchInterruptedBeforeItStarts) {
  Interrupt interrupt;
  interrupt.Trigger();
  options_.interrupt = &interrupt;
  agent_.watch_events = SampleEvents();
  EXPECT_EQ(Run("watch"), kExitOk) << err();
  EXPECT_THAT(err(), IsEmpty());
}

// ---- apply and info -----------------------------------------------------------------------

TEST_F(ClientTest, ApplySendsTheLoadedRequest) {
  options_.apply = FromText<v1::ApplyTunnelsRequest>(R"pb(owner: "fleet"
                                                          tunnels { name: "a" }
                                                          prune: true)pb");
  agent_.apply_response = FromText<v1::ApplyTunnelsResponse>(R"pb(
    changes { name: "a" action: CREATE }
    changes { name: "z" action: DELETE }
    revision: 9
  )pb");
  ASSERT_EQ(Run("apply -f x.json --prune"), kExitOk) << err();
  ASSERT_EQ(agent_.applies.size(), 1u);
  EXPECT_EQ(agent_.applies[0].owner(), "fleet");
  EXPECT_TRUE(agent_.applies[0].prune());
  EXPECT_EQ(agent_.applies[0].request_id(), "generated-1");
  EXPECT_EQ(out(),
            "NAME  ACTION  CHANGED\n"
            "a     create  -\n"
            "z     delete  -\n"
            "applied at revision 9\n");
}

TEST_F(ClientTest, ApplyKeepsTheFilesRequestId) {
  options_.apply = FromText<v1::ApplyTunnelsRequest>(R"pb(owner: "o" request_id: "file")pb");
  agent_.apply_response.set_dry_run(true);
  ASSERT_EQ(Run("-o json apply -f x.json"), kExitOk) << err();
  EXPECT_EQ(agent_.applies[0].request_id(), "file");
  EXPECT_EQ(out(), "{\n \"dryRun\": true\n}\n");
}

TEST_F(ClientTest, Info) {
  ASSERT_EQ(Run("info"), kExitOk) << err();
  EXPECT_THAT(out(), StartsWith("version: 0.2.0\n"));
  EXPECT_THAT(out(), HasSubstr("\nrevision: 77\n"));
  agent_.info_unimplemented = true;
  EXPECT_EQ(Run("info"), kExitAgentFailed);
  EXPECT_THAT(err(), StartsWith("tunnelctl: GetAgentInfo: UNIMPLEMENTED"));
}

// ---- multipoint tunnels and their peers ---------------------------------------------------

TEST_F(ClientTest, CreateMultipointTunnel) {
  ASSERT_EQ(Run("create mp1 mode gre local 192.0.2.1 multipoint"), kExitOk) << err();
  ASSERT_EQ(agent_.creates.size(), 1u);
  EXPECT_TRUE(agent_.creates[0].tunnel().multipoint());
  EXPECT_EQ(agent_.creates[0].tunnel().remote(), "");
  EXPECT_THAT(out(), HasSubstr("\nremote: multipoint\n"));
}

TEST_F(ClientTest, PeerAddSendsThePeerAndARequestId) {
  ASSERT_EQ(Run("peer add mp1 site-b underlay 198.18.0.2 key 7 allowed 10.1.0.0/16,10.2.0.0/16 "
                "keepalive 10 retries 4 label owner=me"),
            kExitOk)
      << err();
  ASSERT_EQ(agent_.peer_creates.size(), 1u);
  const v1::CreatePeerRequest& request = agent_.peer_creates[0];
  EXPECT_EQ(request.tunnel(), "mp1");
  EXPECT_EQ(request.peer().name(), "site-b");
  EXPECT_EQ(request.peer().underlay(), "198.18.0.2");
  ASSERT_TRUE(request.peer().has_key());
  EXPECT_EQ(request.peer().key(), 7u);
  EXPECT_THAT(request.peer().allowed_prefixes(), ElementsAre("10.1.0.0/16", "10.2.0.0/16"));
  EXPECT_EQ(request.peer().keepalive().interval().seconds(), 10);
  EXPECT_EQ(request.peer().keepalive().retries(), 4u);
  EXPECT_EQ(request.peer().labels().at("owner"), "me");
  EXPECT_EQ(request.request_id(), "generated-1");
  EXPECT_THAT(out(), StartsWith("name: site-b\nunderlay: 198.18.0.2\nkey: 7\n"));
  EXPECT_THAT(out(), HasSubstr("\netag: p1\n"));
  EXPECT_THAT(err(), IsEmpty());
}

TEST_F(ClientTest, PeerAddRetriedWithTheSameIdAndRefusalsNamed) {
  agent_.FailNext({kUnavailable});
  ASSERT_EQ(Run("peer add mp1 p underlay 198.18.0.2 --request-id mine"), kExitOk) << err();
  ASSERT_EQ(agent_.peer_creates.size(), 2u);
  EXPECT_EQ(agent_.peer_creates[1].request_id(), "mine");
  agent_.FailNext({grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "mp1 is not multipoint")});
  EXPECT_EQ(Run("peer add mp1 p underlay 198.18.0.2"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: CreatePeer: FAILED_PRECONDITION: mp1 is not multipoint\n");
  EXPECT_THAT(out(), IsEmpty());
}

TEST_F(ClientTest, PeerGetTableAndJson) {
  agent_.peer_response =
      FromText<v1::Peer>(R"pb(name: "p"
                              underlay: "198.18.0.2"
                              status { state: OPER_STATE_UP path_mtu: 1476 })pb");
  ASSERT_EQ(Run("peer get mp1 p"), kExitOk) << err();
  ASSERT_EQ(agent_.peer_gets.size(), 1u);
  EXPECT_EQ(agent_.peer_gets[0].tunnel(), "mp1");
  EXPECT_EQ(agent_.peer_gets[0].name(), "p");
  EXPECT_THAT(out(), StartsWith("name: p\nunderlay: 198.18.0.2\n"));
  EXPECT_THAT(out(), HasSubstr("\nstate: up\n"));
  EXPECT_THAT(out(), HasSubstr("\npath_mtu: 1476\n"));
  ASSERT_EQ(Run("-o json peer show mp1 p"), kExitOk) << err();
  v1::Peer parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out(), &parsed).ok()) << out();
  EXPECT_EQ(parsed.status().path_mtu(), 1476u);
  agent_.FailNext({grpc::Status(grpc::StatusCode::NOT_FOUND, "no peer q on mp1")});
  EXPECT_EQ(Run("peer get mp1 q"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: GetPeer: NOT_FOUND: no peer q on mp1\n");
}

TEST_F(ClientTest, PeerListFetchesEveryPage) {
  agent_.peer_pages[""] = FromText<v1::ListPeersResponse>(R"pb(peers { name: "a" }
                                                               peers { name: "b" }
                                                               next_page_token: "p2")pb");
  agent_.peer_pages["p2"] = FromText<v1::ListPeersResponse>(R"pb(peers { name: "c" })pb");
  ASSERT_EQ(Run("peer list mp1"), kExitOk) << err();
  ASSERT_EQ(agent_.peer_lists.size(), 2u);
  std::vector<std::string> tokens;
  for (const v1::ListPeersRequest& r : agent_.peer_lists) {
    tokens.push_back(r.page_token());
    EXPECT_EQ(r.tunnel(), "mp1");
    EXPECT_EQ(r.page_size(), 500);
  }
  EXPECT_THAT(tokens, ElementsAre("", "p2"));
  std::vector<std::string> lines = absl::StrSplit(out(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << out();
  EXPECT_THAT(lines[0], StartsWith("NAME  UNDERLAY  KEY  ALLOWED  STATE"));
  EXPECT_THAT(lines[3], StartsWith("c "));

  ASSERT_EQ(Run("-o json peer ls mp1 --page-size 2"), kExitOk) << err();
  EXPECT_EQ(agent_.peer_lists[2].page_size(), 2);
  v1::ListPeersResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out(), &parsed).ok()) << out();
  ASSERT_EQ(parsed.peers_size(), 3);
  EXPECT_EQ(parsed.peers(2).name(), "c");
  EXPECT_EQ(parsed.next_page_token(), "");
}

TEST_F(ClientTest, PeerListStopsOnARepeatedToken) {
  agent_.peer_pages[""] = FromText<v1::ListPeersResponse>(R"pb(next_page_token: "p")pb");
  agent_.peer_pages["p"] = FromText<v1::ListPeersResponse>(R"pb(next_page_token: "p")pb");
  EXPECT_EQ(Run("peer list mp1"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: ListPeers: the agent returned the same page token twice\n");
  EXPECT_THAT(out(), IsEmpty());
}

TEST_F(ClientTest, PeerUpdateSendsMaskEtagAndId) {
  agent_.peer_response = FromText<v1::Peer>(R"pb(name: "p" underlay: "198.18.0.9" etag: "p2")pb");
  ASSERT_EQ(Run("peer update mp1 p nokey underlay 198.18.0.9 nolabels --etag p1"), kExitOk)
      << err();
  ASSERT_EQ(agent_.peer_updates.size(), 1u);
  const v1::UpdatePeerRequest& request = agent_.peer_updates[0];
  EXPECT_EQ(request.tunnel(), "mp1");
  EXPECT_EQ(request.peer().name(), "p");
  EXPECT_EQ(request.peer().etag(), "p1");
  EXPECT_EQ(request.peer().underlay(), "198.18.0.9");
  EXPECT_FALSE(request.peer().has_key());
  EXPECT_THAT(request.update_mask().paths(), ElementsAre("underlay", "key", "labels"));
  EXPECT_EQ(request.request_id(), "generated-1");
  EXPECT_THAT(out(), StartsWith("name: p\nunderlay: 198.18.0.9\n"));
  EXPECT_THAT(out(), HasSubstr("\netag: p2\n"));

  agent_.FailNext({grpc::Status(grpc::StatusCode::ABORTED, "etag p0 is stale (now p2)")});
  EXPECT_EQ(Run("peer update mp1 p allowed 10.0.0.0/8 --etag p0"), kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: UpdatePeer: ABORTED: etag p0 is stale (now p2)\n");
  EXPECT_THAT(agent_.peer_updates[1].update_mask().paths(), ElementsAre("allowed_prefixes"));
}

TEST_F(ClientTest, PeerDeleteSendsEtagAndId) {
  ASSERT_EQ(Run("peer delete mp1 p --etag p1 --request-id d1"), kExitOk) << err();
  ASSERT_EQ(agent_.peer_deletes.size(), 1u);
  EXPECT_EQ(agent_.peer_deletes[0].tunnel(), "mp1");
  EXPECT_EQ(agent_.peer_deletes[0].name(), "p");
  EXPECT_EQ(agent_.peer_deletes[0].etag(), "p1");
  EXPECT_EQ(agent_.peer_deletes[0].request_id(), "d1");
  EXPECT_THAT(out(), IsEmpty());
  ASSERT_EQ(Run("-o json peer del mp1 q"), kExitOk) << err();
  EXPECT_EQ(out(), "{}\n");
  EXPECT_EQ(agent_.peer_deletes[1].etag(), "");
  EXPECT_EQ(agent_.peer_deletes[1].request_id(), "generated-1");
}

TEST_F(ClientTest, PeerApplySendsTheLoadedRequest) {
  options_.apply_peers = FromText<v1::ApplyPeersRequest>(R"pb(tunnel: "mp1"
                                                              owner: "fleet"
                                                              peers { name: "a" }
                                                              prune: true)pb");
  agent_.peer_apply_response = FromText<v1::ApplyPeersResponse>(R"pb(
    changes { name: "a" action: CREATE }
    changes { name: "z" action: DELETE }
    unchanged: 12
    revision: 9
  )pb");
  ASSERT_EQ(Run("peer apply mp1 -f p.json --prune"), kExitOk) << err();
  ASSERT_EQ(agent_.peer_applies.size(), 1u);
  EXPECT_EQ(agent_.peer_applies[0].tunnel(), "mp1");
  EXPECT_EQ(agent_.peer_applies[0].owner(), "fleet");
  EXPECT_TRUE(agent_.peer_applies[0].prune());
  EXPECT_EQ(agent_.peer_applies[0].request_id(), "generated-1");
  EXPECT_EQ(out(),
            "NAME  ACTION  CHANGED\n"
            "a     create  -\n"
            "z     delete  -\n"
            "unchanged: 12\n"
            "applied at revision 9\n");
  // The tunnel apply is another call.
  EXPECT_THAT(agent_.applies, IsEmpty());

  options_.apply_peers.set_request_id("file");
  agent_.peer_apply_response =
      FromText<v1::ApplyPeersResponse>(R"pb(dry_run: true unchanged: 3)pb");
  ASSERT_EQ(Run("-o json peer apply mp1 -f p.json"), kExitOk) << err();
  EXPECT_EQ(agent_.peer_applies[1].request_id(), "file");
  EXPECT_EQ(out(), "{\n \"unchanged\": 3,\n \"dryRun\": true\n}\n");
}

TEST_F(ClientTest, WatchPrintsPeerEvents) {
  agent_.watch_events = {FromText<v1::TunnelEvent>(R"pb(type: PEER_ADDED
                                                        revision: 8
                                                        tunnel { name: "mp1" }
                                                        peer {
                                                          name: "site-b"
                                                          status { state: OPER_STATE_UP }
                                                        })pb")};
  ASSERT_EQ(Run("watch --count 1"), kExitOk) << err();
  EXPECT_EQ(out(), "8 PEER_ADDED mp1/site-b up\n");
  ASSERT_EQ(Run("watch -o json --count 1"), kExitOk) << err();
  EXPECT_THAT(out(), HasSubstr("\"peer\":{\"name\":\"site-b\""));
}

// ---- the bearer token ---------------------------------------------------------------------

TEST_F(ClientTest, TokenGoesOnEveryCall) {
  options_.token = "s3cret";
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(next_page_token: "p2")pb");
  agent_.pages["p2"] = v1::ListTunnelsResponse();
  agent_.watch_events = SampleEvents();
  ASSERT_EQ(Run("list"), kExitOk) << err();
  ASSERT_EQ(Run("watch --count 1"), kExitOk) << err();
  ASSERT_EQ(Run("get a"), kExitOk) << err();
  EXPECT_THAT(agent_.authorization,
              ElementsAre("Bearer s3cret", "Bearer s3cret", "Bearer s3cret", "Bearer s3cret"));
}

TEST_F(ClientTest, NoTokenNoMetadata) {
  ASSERT_EQ(Run("get a"), kExitOk) << err();
  EXPECT_THAT(agent_.authorization, ElementsAre(""));
}

// ---- inputs -------------------------------------------------------------------------------

class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char name[] = "/tmp/tunnelctl_test_XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = name;
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Command Parsed(const std::vector<std::string>& args, const Environment& env = {}) {
  absl::StatusOr<Command> command = ParseArgs(args, env);
  EXPECT_TRUE(command.ok()) << command.status();
  return command.ok() ? *command : Command();
}

TEST(LoadInputsTest, TokenFromFileWinsOverEnvironment) {
  TempFile token("  tok-123\n");
  Environment env;
  env.token = "from-env";
  std::istringstream in;
  absl::StatusOr<Inputs> inputs =
      LoadInputs(Parsed({"--token_file", token.path(), "info"}, env), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->token, "tok-123");
  inputs = LoadInputs(Parsed({"info"}, env), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->token, "from-env");
  inputs = LoadInputs(Parsed({"info"}), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->token, "");
  EXPECT_NE(inputs->credentials, nullptr);
}

TEST(LoadInputsTest, TokenFromStdin) {
  std::istringstream in("piped\n");
  absl::StatusOr<Inputs> inputs = LoadInputs(Parsed({"--token_file", "-", "info"}), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->token, "piped");
}

struct BadInputCase {
  std::vector<std::string> args;
  std::string env_token;
  std::string error;
};

TEST(LoadInputsTest, BadFilesAreNamed) {
  TempFile empty("\n");
  TempFile spaced("two words\n");
  TempFile not_pem("hello");
  TempFile bad_json("{\"owner\": ");
  const BadInputCase kCases[] = {
      {{"--token_file", "/nonexistent/t", "info"},
       "",
       "--token_file: cannot read /nonexistent/t: No such file or directory"},
      {{"--token_file", empty.path(), "info"},
       "",
       "--token_file " + empty.path() + ": empty token"},
      {{"--token_file", spaced.path(), "info"}, "", "visible ASCII without white space"},
      {{"info"}, "a\tb", "$TUNNELCTL_TOKEN: the token must be"},
      {{"--tls_ca", "/nonexistent/ca.pem", "info"}, "", "--tls_ca: cannot read /nonexistent/ca"},
      {{"--tls_ca", not_pem.path(), "info"}, "", "--tls_ca: " + not_pem.path() + ": not PEM"},
      {{"--tls_cert", not_pem.path(), "--tls_key", not_pem.path(), "info"},
       "",
       "--tls_cert: " + not_pem.path() + ": not PEM"},
      {{"apply", "-f", "/nonexistent/a.json"}, "", "apply: cannot read /nonexistent/a.json"},
      {{"apply", "-f", "/tmp"}, "", "apply: cannot read /tmp: is a directory"},
      {{"peer", "apply", "tnl0", "-f", "/tmp"}, "", "cannot read /tmp: is a directory"},
      {{"apply", "-f", bad_json.path(), "--owner", "o"}, "", "apply: " + bad_json.path()},
      {{"apply", "-f", "-", "--token_file", "-"}, "", "only one file can be read from stdin"},
  };
  for (const BadInputCase& c : kCases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    Environment env;
    env.token = c.env_token;
    std::istringstream in;
    absl::StatusOr<Inputs> inputs = LoadInputs(Parsed(c.args, env), in);
    ASSERT_FALSE(inputs.ok());
    EXPECT_EQ(inputs.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(inputs.status().message()), HasSubstr(c.error));
  }
}

TEST(LoadInputsTest, ApplyFromStdin) {
  std::istringstream in(R"([{"name": "a"}])");
  absl::StatusOr<Inputs> inputs =
      LoadInputs(Parsed({"apply", "-f", "-", "--owner", "o", "--dry-run"}), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->apply.owner(), "o");
  EXPECT_TRUE(inputs->apply.dry_run());
  ASSERT_EQ(inputs->apply.tunnels_size(), 1);

  std::istringstream bad("[");
  inputs = LoadInputs(Parsed({"apply", "-f", "-", "--owner", "o"}), bad);
  ASSERT_FALSE(inputs.ok());
  EXPECT_THAT(std::string(inputs.status().message()), StartsWith("apply: stdin"));
}

TEST(LoadInputsTest, PeerApplyFromStdinAndFile) {
  std::istringstream in(R"([{"name": "a", "underlay": "198.18.0.2"}])");
  absl::StatusOr<Inputs> inputs =
      LoadInputs(Parsed({"peer", "apply", "mp1", "-f", "-", "--owner", "o", "--dry-run"}), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->apply_peers.tunnel(), "mp1");
  EXPECT_EQ(inputs->apply_peers.owner(), "o");
  EXPECT_TRUE(inputs->apply_peers.dry_run());
  ASSERT_EQ(inputs->apply_peers.peers_size(), 1);
  EXPECT_EQ(inputs->apply.tunnels_size(), 0);

  TempFile file(R"({"owner": "fleet", "peers": [{"name": "b", "underlay": "fd00::2"}]})");
  std::istringstream none;
  inputs = LoadInputs(Parsed({"peer", "apply", "mp1", "-f", file.path()}), none);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_EQ(inputs->apply_peers.owner(), "fleet");
  EXPECT_EQ(inputs->apply_peers.peers(0).underlay(), "fd00::2");

  std::istringstream bad("[");
  inputs = LoadInputs(Parsed({"peer", "apply", "mp1", "-f", "-", "--owner", "o"}), bad);
  ASSERT_FALSE(inputs.ok());
  EXPECT_THAT(std::string(inputs.status().message()), StartsWith("peer apply: stdin"));
  inputs = LoadInputs(Parsed({"peer", "apply", "mp1", "-f", "/nonexistent/p.json"}), none);
  ASSERT_FALSE(inputs.ok());
  EXPECT_THAT(std::string(inputs.status().message()),
              StartsWith("peer apply: cannot read /nonexistent/p.json"));
  inputs = LoadInputs(
      Parsed({"peer", "apply", "mp1", "-f", "-", "--token_file", "-", "--owner", "o"}), none);
  ASSERT_FALSE(inputs.ok());
  EXPECT_THAT(std::string(inputs.status().message()), HasSubstr("only one file"));
}

TEST(LoadInputsTest, TlsWithPemFiles) {
  TempFile pem("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
  std::istringstream in;
  absl::StatusOr<Inputs> inputs =
      LoadInputs(Parsed({"--tls_ca", pem.path(), "--tls_server_name", "agent", "info"}), in);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  EXPECT_NE(inputs->credentials, nullptr);
}

// ---- Main: the whole invocation and its exit status ----------------------------------------

// Main against the fake agent on its unix socket, as the binary runs: parsing, files, the
// channel and the call. Every outcome is one of three exit codes.
class MainTest : public ClientTest {
 protected:
  int RunMain(const std::string& args, const std::string& stdin_text = "") {
    std::vector<std::string> argv = absl::StrSplit(args, ' ', absl::SkipEmpty());
    std::istringstream in(stdin_text);
    out_.str("");
    err_.str("");
    Process process;
    process.in = &in;
    process.out = &out_;
    process.err = &err_;
    process.env = env_;
    process.new_request_id = [] { return std::string("main-id"); };
    process.before_watch = [this] { ++before_watch_calls_; };
    return Main(argv, process);
  }

  // The calls the agent received, of any method.
  size_t Calls() const { return agent_.authorization.size(); }
  std::string Agent() const { return "--agent=" + socket_; }

  Environment env_;
  int before_watch_calls_ = 0;
};

// The convention itself, as scripts see it.
TEST(ExitCodeTest, Values) {
  EXPECT_EQ(kExitOk, 0);
  EXPECT_EQ(kExitBadInput, 1);
  EXPECT_EQ(kExitAgentFailed, 2);
}

TEST_F(MainTest, SuccessIsZero) {
  agent_.pages[""] = FromText<v1::ListTunnelsResponse>(R"pb(tunnels { name: "a" })pb");
  ASSERT_EQ(RunMain(Agent() + " list"), kExitOk) << err();
  EXPECT_THAT(out(), HasSubstr("\na "));
  EXPECT_THAT(err(), IsEmpty());
  ASSERT_EQ(RunMain(Agent() + " create t1 mode gre remote 198.18.0.2"), kExitOk) << err();
  ASSERT_EQ(agent_.creates.size(), 1u);
  EXPECT_EQ(agent_.creates[0].request_id(), "main-id");
  EXPECT_EQ(before_watch_calls_, 0);
}

// $TUNNELCTL_AGENT still replaces the default, and --agent replaces it.
TEST_F(MainTest, AgentFromTheEnvironment) {
  agent_.pages[""] = v1::ListTunnelsResponse();
  env_.agent = socket_;
  ASSERT_EQ(RunMain("list"), kExitOk) << err();
  EXPECT_EQ(Calls(), 1u);
  env_.agent = "unix:/nonexistent/tunnelctl_test.sock";
  ASSERT_EQ(RunMain(Agent() + " list"), kExitOk) << err();
  EXPECT_EQ(Calls(), 2u);
}

TEST_F(MainTest, HelpAndVersionAreZeroAndContactNoAgent) {
  for (const char* args : {"--help", "-h", "help", "list --help", "create t1 --bogus -h"}) {
    SCOPED_TRACE(args);
    ASSERT_EQ(RunMain(Agent() + " " + args), kExitOk);
    EXPECT_EQ(out(), Usage());
    EXPECT_THAT(err(), IsEmpty());
  }
  for (const char* args : {"--version", "version", "list --version"}) {
    SCOPED_TRACE(args);
    ASSERT_EQ(RunMain(Agent() + " " + args), kExitOk);
    EXPECT_EQ(out(), absl::StrCat("tunnelctl ", TUNNEL_AGENT_VERSION, "\n"));
    EXPECT_THAT(err(), IsEmpty());
  }
  EXPECT_EQ(Calls(), 0u);
}

struct BadInputMainCase {
  std::string args;
  std::string stdin_text;
  std::string error;  // the one line on stderr starts with this
};

TEST_F(MainTest, BadInputIsOneAndSendsNothing) {
  TempFile empty_token("\n");
  const BadInputMainCase kCases[] = {
      {"bogus", "", "tunnelctl: unknown command 'bogus'"},
      {"--bogus list", "", "tunnelctl: unknown flag '--bogus'"},
      {"", "", "tunnelctl: missing command"},
      {"create t1 mode gre", "", "tunnelctl: create: missing 'remote'"},
      {"create t1 mode gre remote 300.1.1.1", "", "tunnelctl: create: invalid remote '300.1.1.1'"},
      {"create t1 mode gre remote 198.18.0.2 address 10.9.0.1/33", "",
       "tunnelctl: create: invalid address '10.9.0.1/33'"},
      {"update t1 route 10.0.0.0/40", "", "tunnelctl: update: invalid route '10.0.0.0/40'"},
      {"--timeout=0 list", "", "tunnelctl: invalid timeout '0'"},
      {"apply -f - --owner o", "{\"tunnels\": [", "tunnelctl: apply: stdin"},
      {"apply -f - --owner o", "not json", "tunnelctl: apply: stdin: not JSON"},
      {"apply -f - --owner o", R"([{"name": "t1", "remote": "300.1.1.1"}])",
       "tunnelctl: apply: stdin: tunnels[0] (t1): invalid remote '300.1.1.1'"},
      {"apply -f /nonexistent/tunnelctl_test.json --owner o", "",
       "tunnelctl: apply: cannot read /nonexistent/tunnelctl_test.json"},
      {"--token_file " + empty_token.path() + " list", "", "tunnelctl: --token_file"},
      {"peer add mp1 p underlay 198.18.0.0/24", "",
       "tunnelctl: peer add: invalid underlay '198.18.0.0/24'"},
      {"peer add mp1 p/q underlay 198.18.0.2", "", "tunnelctl: peer add: invalid peer name"},
      {"peer update mp1 p allowed 10.0.0.1/8", "",
       "tunnelctl: peer update: invalid allowed prefix '10.0.0.1/8'"},
      {"peer apply mp1 -f - --owner o", R"([{"name": "a", "underlay": "300.1.1.1"}])",
       "tunnelctl: peer apply: stdin: peers[0] (a): invalid underlay '300.1.1.1'"},
      {"peer apply mp1 -f - --owner o", "peers: []", "tunnelctl: peer apply: stdin: not JSON"},
  };
  for (const BadInputMainCase& c : kCases) {
    SCOPED_TRACE(c.args);
    EXPECT_EQ(RunMain(Agent() + " " + c.args, c.stdin_text), kExitBadInput);
    EXPECT_THAT(err(), StartsWith(c.error));
    EXPECT_THAT(out(), IsEmpty());
  }
  EXPECT_EQ(Calls(), 0u);
}

// Whatever the agent's reason, a refusal is 2, with the code on one line.
TEST_F(MainTest, RefusalIsTwo) {
  const grpc::StatusCode kCodes[] = {
      grpc::StatusCode::INVALID_ARGUMENT,   grpc::StatusCode::ALREADY_EXISTS,
      grpc::StatusCode::NOT_FOUND,          grpc::StatusCode::FAILED_PRECONDITION,
      grpc::StatusCode::PERMISSION_DENIED,  grpc::StatusCode::UNAUTHENTICATED,
      grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::ABORTED,
      grpc::StatusCode::INTERNAL,           grpc::StatusCode::DEADLINE_EXCEEDED,
  };
  for (grpc::StatusCode code : kCodes) {
    const std::string name = clients::StatusCodeName(code);
    SCOPED_TRACE(name);
    agent_.FailNext({grpc::Status(code, "refused: reason\nsecond line")});
    EXPECT_EQ(RunMain(Agent() + " create t1 mode gre remote 198.18.0.2"), kExitAgentFailed);
    EXPECT_EQ(err(), "tunnelctl: CreateTunnel: " + name + ": refused: reason second line\n");
    EXPECT_THAT(out(), IsEmpty());
  }
  agent_.FailNext({grpc::Status(grpc::StatusCode::NOT_FOUND, "no tunnel t9")});
  EXPECT_EQ(RunMain(Agent() + " delete t9"), kExitAgentFailed);
  EXPECT_THAT(err(), HasSubstr("NOT_FOUND"));
  agent_.FailNext({grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tunnels[0].remote")});
  EXPECT_EQ(RunMain(Agent() + " apply -f - --owner o", R"([{"name": "t1"}])"), kExitAgentFailed);
  EXPECT_THAT(err(), HasSubstr("ApplyTunnels: INVALID_ARGUMENT"));
  agent_.FailNext({grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "mp1 has 4096 peers")});
  EXPECT_EQ(RunMain(Agent() + " peer apply mp1 -f - --owner o",
                    R"([{"name": "a", "underlay": "198.18.0.2"}])"),
            kExitAgentFailed);
  EXPECT_EQ(err(), "tunnelctl: ApplyPeers: RESOURCE_EXHAUSTED: mp1 has 4096 peers\n");
  ASSERT_EQ(agent_.peer_applies.size(), 1u);
  EXPECT_EQ(agent_.peer_applies[0].request_id(), "main-id");
  EXPECT_EQ(agent_.peer_applies[0].tunnel(), "mp1");
}

// No agent behind the address (a unix socket path that does not exist: no network is used).
TEST_F(MainTest, UnreachableIsTwo) {
  const std::string nowhere =
      "unix:/tmp/tunnelctl_test_" + std::to_string(getpid()) + "_nosuchdir/agent.sock";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RunMain("--agent=" + nowhere + " --timeout=3 list"), kExitAgentFailed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_THAT(err(), StartsWith("tunnelctl: ListTunnels: UNAVAILABLE"));
  const std::string error = err();
  EXPECT_EQ(std::count(error.begin(), error.end(), '\n'), 1) << error;
  EXPECT_THAT(out(), IsEmpty());
}

// The signal hook runs for a watch only, before the call.
TEST_F(MainTest, WatchArmsTheSignalHook) {
  agent_.watch_events = {FromText<v1::TunnelEvent>(R"pb(type: SYNCED revision: 3)pb")};
  ASSERT_EQ(RunMain(Agent() + " watch --count=1"), kExitOk) << err();
  EXPECT_EQ(before_watch_calls_, 1);
  EXPECT_EQ(out(), "3 SYNCED - -\n");
}

// ---- request ids --------------------------------------------------------------------------

TEST(RequestIdTest, FormatSetsVersionAndVariant) {
  std::array<uint8_t, 16> ones;
  ones.fill(0xff);
  EXPECT_EQ(clients::FormatUuidV4(ones), "ffffffff-ffff-4fff-bfff-ffffffffffff");
  std::array<uint8_t, 16> zeros{};
  EXPECT_EQ(clients::FormatUuidV4(zeros), "00000000-0000-4000-8000-000000000000");
  std::array<uint8_t, 16> counting;
  for (size_t i = 0; i < counting.size(); ++i) counting[i] = static_cast<uint8_t>(i * 17);
  EXPECT_EQ(clients::FormatUuidV4(counting), "00112233-4455-4677-8899-aabbccddeeff");
}

TEST(RequestIdTest, NewIdsAreRandomUuids) {
  std::string a = clients::NewRequestId();
  std::string b = clients::NewRequestId();
  EXPECT_THAT(a,
              MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
