#include "agent/caller_identity.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

// Answers GetTunnel with the caller's identity as the tunnel's name.
class WhoService final : public v1::TunnelService::Service {
 public:
  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* /*request*/,
                         v1::Tunnel* response) override {
    response->set_name(CallerOf(*context));
    return grpc::Status::OK;
  }
};

class ApiListenerTest : public ::testing::Test {
 protected:
  // gRPC stays initialized for the whole run (see server_security_test.cc).
  static void SetUpTestSuite() { grpc_init(); }

  void SetUp() override {
    char tmpl[] = "/tmp/caller_identity_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/agent.sock";
  }
  void TearDown() override {
    if (listener_ != nullptr) listener_->Stop();
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    listener_.reset();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Start(ApiListener::Options options) {
    options.path = path_;
    absl::StatusOr<std::unique_ptr<ApiListener>> listener = ApiListener::Listen(options);
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = *std::move(listener);
    grpc::ServerBuilder builder;  // no port of its own: connections come from the listener
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    listener_->Start(server_.get());
  }

  // The caller the server saw, or the error.
  std::string Who() {
    auto channel = grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::Tunnel tunnel;
    grpc::Status status =
        v1::TunnelService::NewStub(channel)->GetTunnel(&context, v1::GetTunnelRequest(), &tunnel);
    return status.ok() ? tunnel.name() : absl::StrCat("error ", status.error_code());
  }

  // A raw connection; -1 if connect fails.
  int Connect() {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path_.data(), path_.size());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }

  // What a gRPC client sends first: the HTTP/2 connection preface.
  static bool SendPreface(int fd) {
    static constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    return send(fd, kPreface, sizeof kPreface - 1, MSG_NOSIGNAL) ==
           static_cast<ssize_t>(sizeof kPreface - 1);
  }

  // True when the server closes `fd` within `timeout` (EOF or reset); what it writes before
  // (its HTTP/2 settings) is read and dropped.
  static bool ClosedByServer(int fd, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      pollfd p = {fd, POLLIN, 0};
      const int left =
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      if (poll(&p, 1, left) <= 0) return false;
      char buf[256];
      ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN)) return true;
    }
  }

  bool WaitForConnections(size_t want) {
    for (int i = 0; i < 100; ++i) {
      if (listener_->open_connections() == want) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::string dir_;
  std::string path_;
  WhoService service_;
  std::unique_ptr<ApiListener> listener_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ApiListenerTest, CallerIsTheUidAndPidOfTheConnectingProcess) {
  Start({});
  EXPECT_EQ(Who(), absl::StrCat("uid=", geteuid(), " pid=", getpid()));
}

TEST_F(ApiListenerTest, SocketIs0660WithTheGroupAsked) {
  Start({.group = 65534});
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, 65534u);
}

TEST_F(ApiListenerTest, SecondListenerOnALiveSocketIsRefused) {
  Start({});
  absl::StatusOr<std::unique_ptr<ApiListener>> second = ApiListener::Listen({.path = path_});
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("is in use: pid ", getpid())));
  EXPECT_THAT(Who(), HasSubstr("uid=")) << "the first keeps serving";
}

TEST_F(ApiListenerTest, SocketRemovedOnExitOnlyIfStillOurs) {
  Start({});
  listener_->Stop();
  EXPECT_EQ(Connect(), -1) << "stopped: no one accepts";
  listener_.reset();
  struct stat st;
  EXPECT_NE(lstat(path_.c_str(), &st), 0) << "our socket is removed";

  // Another process's socket put at the path after ours: left alone.
  Start({});
  ASSERT_EQ(unlink(path_.c_str()), 0);
  int other = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path_.data(), path_.size());
  ASSERT_EQ(bind(other, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  listener_->Stop();
  listener_.reset();
  EXPECT_EQ(lstat(path_.c_str(), &st), 0) << "someone else's socket was removed";
  close(other);
}

TEST_F(ApiListenerTest, StaleSocketIsReplaced) {
  int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path_.data(), path_.size());
  ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  close(stale);
  Start({});
  EXPECT_THAT(Who(), HasSubstr("uid="));
}

TEST_F(ApiListenerTest, ConnectionsAreCapped) {
  Start({.limits = {.max_connections = 2}});
  int a = Connect();
  int b = Connect();
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(SendPreface(a));
  ASSERT_TRUE(SendPreface(b));
  ASSERT_TRUE(WaitForConnections(2));
  int c = Connect();
  ASSERT_GE(c, 0);
  EXPECT_TRUE(ClosedByServer(c, absl::Seconds(5))) << "a third connection is closed at once";
  EXPECT_FALSE(ClosedByServer(a, absl::Milliseconds(100))) << "the first two stay";
  EXPECT_EQ(listener_->stats().refused_total.load(), 1u);
  close(c);
  // One closes: its place is free again.
  close(a);
  ASSERT_TRUE(WaitForConnections(1)) << listener_->open_connections();
  EXPECT_THAT(Who(), HasSubstr("uid=")) << "a new connection is served";
  close(b);
}

TEST_F(ApiListenerTest, SilentConnectionsHoldAPlaceUntilTheirTimeoutOnly) {
  // The timeout is long enough that the third connection is refused while the first two
  // still wait, however slowly a loaded machine accepts it.
  Start({.limits = {.max_connections = 2, .first_bytes_timeout = absl::Seconds(3)}});
  int a = Connect();
  int b = Connect();
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  // Both places are taken while they wait for their first bytes.
  int c = Connect();
  EXPECT_TRUE(ClosedByServer(c, absl::Seconds(2)));
  close(c);
  EXPECT_EQ(listener_->stats().refused_total.load(), 1u);
  EXPECT_TRUE(ClosedByServer(a, absl::Seconds(8))) << "closed for saying nothing";
  EXPECT_TRUE(ClosedByServer(b, absl::Seconds(8)));
  EXPECT_EQ(listener_->stats().closed_silent.load(), 2u);
  EXPECT_EQ(listener_->open_connections(), 0u) << "gRPC never saw them";
  EXPECT_THAT(Who(), HasSubstr("uid=")) << "their places are free again";
  close(a);
  close(b);
}

TEST_F(ApiListenerTest, OnePeerGetsItsShareOnly) {
  Start({.limits = {.max_connections = 10, .max_connections_per_peer = 2}});
  int a = Connect();
  int b = Connect();
  ASSERT_TRUE(SendPreface(a));
  ASSERT_TRUE(SendPreface(b));
  ASSERT_TRUE(WaitForConnections(2));
  int c = Connect();  // the same uid: over its share
  EXPECT_TRUE(ClosedByServer(c, absl::Seconds(5)));
  EXPECT_EQ(listener_->stats().refused_per_peer.load(), 1u);
  EXPECT_EQ(listener_->stats().refused_total.load(), 0u);
  close(a);
  close(b);
  close(c);
}

TEST_F(ApiListenerTest, AcceptsAgainOnceDescriptorsComeBack) {
  Start({});
  // Sockets made now, connected once the process has no descriptor left to accept with.
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  size_t open = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++open;
  }
  rlimit none_left = saved;
  none_left.rlim_cur = open - 1;  // the iterator's own descriptor is closed again
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &none_left), 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path_.data(), path_.size());
  for (int fd : clients) {
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_TRUE(SendPreface(fd));
  }
  for (int i = 0; i < 100 && listener_->stats().accept_failures.load() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const uint64_t failures = listener_->stats().accept_failures.load();
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_GT(failures, 0u) << "accept(2) ran out of descriptors";
  EXPECT_TRUE(WaitForConnections(3))
      << "all three handed over once descriptors are back: " << listener_->open_connections();
  EXPECT_THAT(Who(), HasSubstr("uid="));
  for (int fd : clients) close(fd);
}

TEST(ApiListenerTcpTest, ServesTcpAndNamesThePeerByAddress) {
  grpc_init();
  absl::StatusOr<std::unique_ptr<ApiListener>> listener =
      ApiListener::ListenTcp("127.0.0.1:0", ListenerLimits{});
  ASSERT_TRUE(listener.ok()) << listener.status();
  ASSERT_GT((*listener)->port(), 0);
  EXPECT_EQ((*listener)->target(), absl::StrCat("127.0.0.1:", (*listener)->port()));
  WhoService service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  (*listener)->Start(server.get());
  auto channel = grpc::CreateChannel((*listener)->target(), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::Tunnel tunnel;
  grpc::Status status =
      v1::TunnelService::NewStub(channel)->GetTunnel(&context, v1::GetTunnelRequest(), &tunnel);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(tunnel.name(), ::testing::StartsWith("ipv4:127.0.0.1:"));
  (*listener)->Stop();
  server->Shutdown(std::chrono::system_clock::now());
  EXPECT_FALSE(ApiListener::ListenTcp("no-port", ListenerLimits{}).ok());
  grpc_shutdown();
}

TEST(CallerOfPeerTest, OtherPeersAsTheyAre) {
  EXPECT_EQ(CallerOfPeer("ipv4:198.18.0.1:40000"), "ipv4:198.18.0.1:40000");
  EXPECT_EQ(CallerOfPeer("ipv6:[::1]:5"), "ipv6:[::1]:5");
  EXPECT_EQ(CallerOfPeer("fd:987654"), "fd:987654") << "no such connection";
  EXPECT_EQ(CallerOfPeer("fd:x"), "fd:x");
  EXPECT_EQ(CallerOfPeer(""), "");
}

}  // namespace
}  // namespace tunnelagent::agent
