// Leader election through etcd's Election service, with two clients as two controller
// replicas: one leads, the other waits until the first resigns or loses its lease; a campaign
// that times out leaves no candidacy behind.
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kElection[] = "/tunnel-agent/test/controller";

class EtcdElectionTest : public EtcdTest {
 protected:
  // A replica: its own client and lease.
  struct Replica {
    std::unique_ptr<etcd::Client> client;
    int64_t lease = 0;
  };

  Replica MakeReplica() {
    Replica r;
    r.client = MustConnect(cluster());
    if (r.client == nullptr) return r;
    absl::StatusOr<int64_t> lease = r.client->GrantLease(absl::Seconds(30));
    EXPECT_TRUE(lease.ok()) << lease.status();
    r.lease = lease.value_or(0);
    return r;
  }

  // Campaign on a thread of its own; `done` is notified with the result in `result`.
  struct Pending {
    std::thread thread;
    absl::Notification done;
    std::optional<absl::StatusOr<etcd::LeaderKey>> result;
    ~Pending() {
      if (thread.joinable()) thread.join();
    }
  };

  static void CampaignInBackground(Replica& r, const std::string& value, Pending& pending) {
    pending.thread = std::thread([&r, value, &pending] {
      pending.result = r.client->Campaign(kElection, r.lease, value, absl::Seconds(20));
      pending.done.Notify();
    });
  }

  std::string LeaderValue(etcd::Client& client) {
    absl::StatusOr<etcd::KeyValue> leader = client.Leader(kElection);
    if (!leader.ok()) return leader.status().ToString();
    return leader->value;
  }
};

TEST_F(EtcdElectionTest, OneLeadsTheOtherTakesOverWhenItResigns) {
  Replica a = MakeReplica();
  Replica b = MakeReplica();
  ASSERT_TRUE(a.lease != 0 && b.lease != 0);

  absl::StatusOr<etcd::LeaderKey> a_leads =
      a.client->Campaign(kElection, a.lease, "a", absl::Seconds(5));
  ASSERT_TRUE(a_leads.ok()) << a_leads.status();
  EXPECT_EQ(a_leads->name, kElection);
  EXPECT_EQ(a_leads->lease, a.lease);
  EXPECT_TRUE(absl::StartsWith(a_leads->key, absl::StrCat(kElection, "/")));
  EXPECT_GT(a_leads->revision, 0);
  EXPECT_EQ(LeaderValue(*b.client), "a");

  Pending b_campaign;
  CampaignInBackground(b, "b", b_campaign);
  // b stands by while a leads.
  EXPECT_FALSE(b_campaign.done.WaitForNotificationWithTimeout(absl::Milliseconds(700)));
  EXPECT_EQ(LeaderValue(*a.client), "a");

  ASSERT_TRUE(a.client->Resign(*a_leads).ok());
  ASSERT_TRUE(b_campaign.done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(b_campaign.result->ok()) << b_campaign.result->status();
  EXPECT_EQ((*b_campaign.result)->lease, b.lease);
  EXPECT_EQ(LeaderValue(*a.client), "b");
  absl::StatusOr<etcd::KeyValue> leader = a.client->Leader(kElection);
  ASSERT_TRUE(leader.ok());
  EXPECT_EQ(leader->key, (*b_campaign.result)->key);
  EXPECT_EQ(leader->lease, b.lease);

  // Nobody left: NOT_FOUND.
  ASSERT_TRUE(b.client->Resign(**b_campaign.result).ok());
  absl::StatusOr<etcd::KeyValue> nobody = a.client->Leader(kElection);
  ASSERT_FALSE(nobody.ok());
  EXPECT_EQ(nobody.status().code(), absl::StatusCode::kNotFound) << nobody.status();
}

TEST_F(EtcdElectionTest, TheOtherTakesOverWhenTheLeadersLeaseGoes) {
  Replica a = MakeReplica();
  Replica b = MakeReplica();
  ASSERT_TRUE(a.lease != 0 && b.lease != 0);
  absl::StatusOr<etcd::LeaderKey> a_leads =
      a.client->Campaign(kElection, a.lease, "a", absl::Seconds(5));
  ASSERT_TRUE(a_leads.ok()) << a_leads.status();

  Pending b_campaign;
  CampaignInBackground(b, "b", b_campaign);
  EXPECT_FALSE(b_campaign.done.WaitForNotificationWithTimeout(absl::Milliseconds(500)));
  // a's process dies, or loses etcd for longer than its TTL: its lease goes.
  ASSERT_TRUE(a.client->RevokeLease(a.lease).ok());
  ASSERT_TRUE(b_campaign.done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(b_campaign.result->ok()) << b_campaign.result->status();
  EXPECT_EQ(LeaderValue(*a.client), "b");

  // A campaign with a lease that is gone is refused.
  absl::StatusOr<etcd::LeaderKey> stale =
      a.client->Campaign(kElection, a.lease, "a", absl::Seconds(2));
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kNotFound) << stale.status();
}

TEST_F(EtcdElectionTest, ACampaignThatTimesOutIsNoLongerACandidate) {
  Replica a = MakeReplica();
  Replica b = MakeReplica();
  ASSERT_TRUE(a.lease != 0 && b.lease != 0);
  absl::StatusOr<etcd::LeaderKey> a_leads =
      a.client->Campaign(kElection, a.lease, "a", absl::Seconds(5));
  ASSERT_TRUE(a_leads.ok()) << a_leads.status();

  absl::StatusOr<etcd::LeaderKey> b_leads =
      b.client->Campaign(kElection, b.lease, "b", absl::Milliseconds(500));
  ASSERT_FALSE(b_leads.ok());
  EXPECT_EQ(b_leads.status().code(), absl::StatusCode::kDeadlineExceeded) << b_leads.status();

  // Only a's key is under the election: b would not become leader behind its own back.
  absl::StatusOr<etcd::RangeResult> candidates = a.client->GetPrefix(absl::StrCat(kElection, "/"));
  ASSERT_TRUE(candidates.ok()) << candidates.status();
  ASSERT_EQ(candidates->kvs.size(), 1u);
  EXPECT_EQ(candidates->kvs[0].key, a_leads->key);
  ASSERT_TRUE(a.client->Resign(*a_leads).ok());
  absl::StatusOr<etcd::KeyValue> nobody = a.client->Leader(kElection);
  EXPECT_EQ(nobody.status().code(), absl::StatusCode::kNotFound) << nobody.status();
}

TEST_F(EtcdElectionTest, RefusesBadRequests) {
  Replica a = MakeReplica();
  ASSERT_NE(a.lease, 0);
  EXPECT_EQ(a.client->Campaign("", a.lease, "a", absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status no_lease = a.client->Campaign(kElection, 0, "a", absl::Seconds(1)).status();
  EXPECT_EQ(no_lease.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_lease.message()), HasSubstr("bad lease 0"));
  EXPECT_EQ(a.client->Campaign(kElection, a.lease, "a", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.client->Leader("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tunnelagent::testing
