// The client when members go away: a 3-member cluster with one member killed keeps
// answering; dead endpoints in the list are skipped; a client whose etcd is gone gets
// UNAVAILABLE at once and finds etcd again when it is back; a silent etcd is a
// DEADLINE_EXCEEDED at call_timeout.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

class EtcdThreeMemberTest : public EtcdTest {
 protected:
  EtcdClusterOptions ClusterOptions() const override {
    EtcdClusterOptions options;
    options.members = 3;
    return options;
  }
};

// What the fleet does with etcd, each call expected to succeed.
void ExpectEveryCallWorks(etcd::Client& client, int round) {
  SCOPED_TRACE(absl::StrCat("round ", round));
  absl::StatusOr<int64_t> lease = client.GrantLease(absl::Seconds(30));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::string key = absl::StrCat("/f/nodes/n", round);
  absl::StatusOr<int64_t> put = client.Put(key, "registration", *lease);
  ASSERT_TRUE(put.ok()) << put.status();
  absl::StatusOr<absl::Duration> ttl = client.KeepAliveOnce(*lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  absl::StatusOr<etcd::RangeResult> listed = client.GetPrefix("/f/nodes/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->kvs.size(), static_cast<size_t>(round + 1));
  absl::StatusOr<etcd::RangeResult> description = client.Get("/f/description");
  ASSERT_TRUE(description.ok()) << description.status();
  const int64_t read_at = description->kvs.empty() ? 0 : description->kvs[0].mod_revision;
  absl::StatusOr<bool> swapped =
      client.PutIfUnchanged("/f/description", absl::StrCat(round), read_at);
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  EXPECT_TRUE(*swapped);
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client.WatchPrefix("/f/nodes/", *put, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_TRUE(recorder.WaitForEvents(1, absl::Seconds(5)));
  absl::StatusOr<etcd::LeaderKey> leads =
      client.Campaign("/f/controller", *lease, "me", absl::Seconds(5));
  ASSERT_TRUE(leads.ok()) << leads.status();
  ASSERT_TRUE(client.Resign(*leads).ok());
}

TEST_F(EtcdThreeMemberTest, CallsSucceedWithOneMemberKilled) {
  etcd::ClientOptions options;
  options.endpoints = cluster().endpoints();
  std::unique_ptr<etcd::Client> client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  ExpectEveryCallWorks(*client, 0);

  // Every member in turn is the dead one (one of them is raft's leader).
  for (int dead = 0; dead < 3; ++dead) {
    ASSERT_TRUE(cluster().KillMember(dead).ok());
    // Until the others have elected a leader (when the dead one led), etcd holds writes until
    // their deadline: etcd's own pause, not the client's to hide.
    absl::Status quorum = cluster().WaitHealthy();
    ASSERT_TRUE(quorum.ok()) << quorum;
    ExpectEveryCallWorks(*client, dead + 1);
    absl::Status back = cluster().StartMember(dead);
    ASSERT_TRUE(back.ok()) << back;
    // The client tries a dead member again once a second at most: it uses the member that
    // came back within that, before the next one dies.
    absl::SleepFor(absl::Milliseconds(1500));
  }
}

class EtcdAvailabilityTest : public EtcdTest {};

TEST_F(EtcdAvailabilityTest, UnavailableAtOnceWhileDownAndFoundAgainAfter) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Put("/k", "v").ok());
  ASSERT_TRUE(cluster().KillMember(0).ok());

  const absl::Time start = absl::Now();
  absl::StatusOr<etcd::RangeResult> got = client->Get("/k");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  absl::StatusOr<int64_t> put = client->Put("/k", "w");
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable) << put.status();
  // Not a wait for call_timeout (5 s): the caller learns at once and keeps its last state.
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));

  absl::Status back = cluster().StartMember(0);
  ASSERT_TRUE(back.ok()) << back;
  EXPECT_TRUE(Eventually([&] { return client->Get("/k").ok(); }, absl::Seconds(10)));
  got = client->Get("/k");
  ASSERT_TRUE(got.ok() && got->kvs.size() == 1) << got.status();
  EXPECT_EQ(got->kvs[0].value, "v");
}

// A port on 127.0.0.1 with nothing behind it.
int DeadPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(EtcdAvailabilityTest, DeadEndpointsInTheListAreSkipped) {
  // etcd listens on 127.0.0.1 only: its port on ::1 and another port are dead. Both address
  // families in one list (IPv4 as IPv4-mapped IPv6 for gRPC).
  const std::string live = cluster().endpoint(0);
  const std::string port = std::vector<std::string>(absl::StrSplit(live, ':')).back();
  etcd::ClientOptions options;
  options.endpoints = {absl::StrCat("[::1]:", port), absl::StrCat("127.0.0.1:", DeadPort()), live};
  std::unique_ptr<etcd::Client> client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<int64_t> put = client->Put(absl::StrCat("/k", i), "v");
    ASSERT_TRUE(put.ok()) << put.status();
  }

  // One endpoint named by a host name, resolved by gRPC.
  options.endpoints = {absl::StrCat("http://localhost:", port)};
  client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<etcd::RangeResult> got = client->GetPrefix("/k");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kvs.size(), 5u);
}

TEST(EtcdDeadlineTest, DeadlineExceededWhenNothingAnswers) {
  // A TCP port that takes connections (the kernel completes them) but never speaks HTTP/2.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  etcd::ClientOptions options;
  options.endpoints = {absl::StrCat("127.0.0.1:", ntohs(addr.sin_port))};
  options.call_timeout = absl::Milliseconds(300);
  std::unique_ptr<etcd::Client> client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  absl::StatusOr<etcd::RangeResult> got = client->Get("/k");
  const absl::Duration took = absl::Now() - start;
  close(fd);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(3));
}

}  // namespace
}  // namespace tunnelagent::testing
