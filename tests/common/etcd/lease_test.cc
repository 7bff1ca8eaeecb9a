// Leases against a real etcd: granted, kept alive past their TTL, left to expire (their keys
// go with them), revoked.
#include <string>

#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

using ::testing::HasSubstr;

class EtcdLeaseTest : public EtcdTest {};

bool KeyExists(etcd::Client& client, const std::string& key) {
  absl::StatusOr<etcd::RangeResult> got = client.Get(key);
  EXPECT_TRUE(got.ok()) << got.status();
  return got.ok() && !got->kvs.empty();
}

TEST_F(EtcdLeaseTest, KeptAliveThenExpires) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<int64_t> lease = client->GrantLease(absl::Seconds(2));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_GT(*lease, 0);
  ASSERT_TRUE(client->Put("/t/nodes/n1", "registration", *lease).ok());
  absl::StatusOr<etcd::RangeResult> got = client->Get("/t/nodes/n1");
  ASSERT_TRUE(got.ok() && got->kvs.size() == 1) << got.status();
  EXPECT_EQ(got->kvs[0].lease, *lease);

  // Kept alive for longer than its TTL: the key stays.
  const absl::Time until = absl::Now() + absl::Seconds(3);
  for (int i = 0; i < 30 && absl::Now() < until; ++i) {
    absl::StatusOr<absl::Duration> ttl = client->KeepAliveOnce(*lease);
    ASSERT_TRUE(ttl.ok()) << ttl.status();
    EXPECT_EQ(*ttl, absl::Seconds(2));
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_TRUE(KeyExists(*client, "/t/nodes/n1"));

  // Left alone: gone within its TTL and etcd's check interval.
  const absl::Time left = absl::Now();
  EXPECT_TRUE(Eventually([&] { return !KeyExists(*client, "/t/nodes/n1"); }, absl::Seconds(6)));
  EXPECT_GE(absl::Now() - left, absl::Seconds(1));
  absl::StatusOr<absl::Duration> ttl = client->KeepAliveOnce(*lease);
  ASSERT_FALSE(ttl.ok());
  EXPECT_EQ(ttl.status().code(), absl::StatusCode::kNotFound) << ttl.status();
  EXPECT_THAT(std::string(ttl.status().message()), HasSubstr("expired or was revoked"));
  absl::Status put = client->Put("/t/nodes/n1", "again", *lease).status();
  EXPECT_EQ(put.code(), absl::StatusCode::kNotFound) << put;
}

TEST_F(EtcdLeaseTest, RevokeDeletesItsKeys) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<int64_t> lease = client->GrantLease(absl::Seconds(60));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(client->Put("/t/a", "1", *lease).ok());
  ASSERT_TRUE(client->Put("/t/b", "2", *lease).ok());
  ASSERT_TRUE(client->Put("/t/c", "3").ok());

  ASSERT_TRUE(client->RevokeLease(*lease).ok());
  absl::StatusOr<etcd::RangeResult> listed = client->GetPrefix("/t/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->kvs.size(), 1u);
  EXPECT_EQ(listed->kvs[0].key, "/t/c");

  EXPECT_EQ(client->KeepAliveOnce(*lease).status().code(), absl::StatusCode::kNotFound);
  absl::Status again = client->RevokeLease(*lease);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
}

TEST_F(EtcdLeaseTest, RefusesBadTtlsAndIds) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->GrantLease(absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->GrantLease(absl::Seconds(-5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->GrantLease(absl::InfiniteDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->KeepAliveOnce(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->RevokeLease(-1).code(), absl::StatusCode::kInvalidArgument);
  // A fraction of a second is rounded up to etcd's whole seconds, not down to nothing.
  absl::StatusOr<int64_t> lease = client->GrantLease(absl::Milliseconds(1500));
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<absl::Duration> ttl = client->KeepAliveOnce(*lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, absl::Seconds(2));
}

}  // namespace
}  // namespace tunnelagent::testing
