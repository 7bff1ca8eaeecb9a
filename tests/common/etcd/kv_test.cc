// The etcd client's keys and values against a real etcd: put, get, delete, prefixes read in
// pages at one revision, and the compare-and-put.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

using ::testing::HasSubstr;

class EtcdKvTest : public EtcdTest {};

TEST_F(EtcdKvTest, PutGetDelete) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);

  absl::StatusOr<int64_t> first = client->Put("/t/a", "one");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<int64_t> second = client->Put("/t/a", "two");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(*second, *first);

  absl::StatusOr<etcd::RangeResult> got = client->Get("/t/a");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(got->kvs[0].key, "/t/a");
  EXPECT_EQ(got->kvs[0].value, "two");
  EXPECT_EQ(got->kvs[0].create_revision, *first);
  EXPECT_EQ(got->kvs[0].mod_revision, *second);
  EXPECT_EQ(got->kvs[0].version, 2);
  EXPECT_EQ(got->kvs[0].lease, 0);
  EXPECT_EQ(got->revision, *second);

  // Get is exact: not a prefix.
  ASSERT_TRUE(client->Put("/t/ab", "x").ok());
  got = client->Get("/t/a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kvs.size(), 1u);

  // Binary values and keys go through unchanged.
  const std::string binary("\0\xff\n", 3);
  ASSERT_TRUE(client->Put(std::string("/t/\0b", 4), binary).ok());
  got = client->Get(std::string("/t/\0b", 4));
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(got->kvs[0].value, binary);

  absl::StatusOr<int64_t> deleted = client->Delete("/t/a");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1);
  deleted = client->Delete("/t/a");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 0);
  got = client->Get("/t/a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->kvs.empty());
}

TEST_F(EtcdKvTest, GetPrefixReadsEveryPageAtOneRevision) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  // More than two pages of 1000, written concurrently (etcd commits concurrent writes
  // together: a few seconds rather than one fsync per key).
  constexpr int kKeys = 2345;
  constexpr int kWriters = 16;
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int i = w; i < kKeys; i += kWriters) {
        if (!client->Put(absl::StrFormat("/fleet/nodes/n%05d", i), absl::StrCat("v", i)).ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  // Neighbours of the prefix that must stay out of it.
  ASSERT_TRUE(client->Put("/fleet/nodes", "the prefix itself without its slash").ok());
  ASSERT_TRUE(client->Put("/fleet/nodes0", "after").ok());
  absl::StatusOr<int64_t> last = client->Put("/fleet/nodea", "after");
  ASSERT_TRUE(last.ok()) << last.status();

  absl::StatusOr<etcd::RangeResult> listed = client->GetPrefix("/fleet/nodes/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->kvs.size(), static_cast<size_t>(kKeys));
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(listed->kvs[i].key, absl::StrFormat("/fleet/nodes/n%05d", i));
    ASSERT_EQ(listed->kvs[i].value, absl::StrCat("v", i));
  }
  EXPECT_EQ(listed->revision, *last);

  // Every key, through the empty prefix.
  absl::StatusOr<etcd::RangeResult> all = client->GetPrefix("");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->kvs.size(), static_cast<size_t>(kKeys + 3));

  absl::StatusOr<int64_t> deleted = client->DeletePrefix("/fleet/nodes/");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, kKeys);
  listed = client->GetPrefix("/fleet/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->kvs.size(), 3u);
}

TEST_F(EtcdKvTest, PrefixEndingInFfBytes) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  const std::string prefix = "a\xff";
  ASSERT_TRUE(client->Put(prefix + "1", "in").ok());
  ASSERT_TRUE(client->Put(prefix + "\xff", "in").ok());
  ASSERT_TRUE(client->Put("b", "out").ok());
  ASSERT_TRUE(client->Put("a", "out").ok());
  absl::StatusOr<etcd::RangeResult> listed = client->GetPrefix(prefix);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->kvs.size(), 2u);
  EXPECT_EQ(listed->kvs[0].key, prefix + "1");
  EXPECT_EQ(listed->kvs[1].key, prefix + "\xff");
  // A prefix of 0xff bytes only has no end: every key from it on.
  ASSERT_TRUE(client
                  ->Put("\xff\xff"
                        "z",
                        "in")
                  .ok());
  listed = client->GetPrefix("\xff\xff");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->kvs.size(), 1u);
}

TEST_F(EtcdKvTest, PutIfUnchanged) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);

  // 0: only when the key does not exist.
  absl::StatusOr<bool> written = client->PutIfUnchanged("/t/desc", "v1", 0);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_TRUE(*written);
  written = client->PutIfUnchanged("/t/desc", "v1 again", 0);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_FALSE(*written);

  absl::StatusOr<etcd::RangeResult> got = client->Get("/t/desc");
  ASSERT_TRUE(got.ok() && got->kvs.size() == 1) << got.status();
  EXPECT_EQ(got->kvs[0].value, "v1");
  const int64_t read_at = got->kvs[0].mod_revision;

  written = client->PutIfUnchanged("/t/desc", "v2", read_at);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_TRUE(*written);
  // The same revision again: the key changed meanwhile.
  written = client->PutIfUnchanged("/t/desc", "v3", read_at);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_FALSE(*written);
  got = client->Get("/t/desc");
  ASSERT_TRUE(got.ok() && got->kvs.size() == 1) << got.status();
  EXPECT_EQ(got->kvs[0].value, "v2");

  // A revision for a key that does not exist is never current.
  written = client->PutIfUnchanged("/t/absent", "v", read_at);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_FALSE(*written);
}

TEST_F(EtcdKvTest, RefusesBadRequests) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Put("", "v").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Get("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Delete("").status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status all = client->DeletePrefix("").status();
  EXPECT_EQ(all.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(all.message()), HasSubstr("every key"));
  EXPECT_EQ(client->Put("/k", "v", -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->PutIfUnchanged("/k", "v", -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A lease etcd does not know.
  absl::Status put = client->Put("/k", "v", 0x1234).status();
  EXPECT_EQ(put.code(), absl::StatusCode::kNotFound) << put;
  EXPECT_THAT(std::string(put.message()),
              HasSubstr("etcd put \"/k\": etcdserver: requested lease not found"));
}

}  // namespace
}  // namespace tunnelagent::testing
