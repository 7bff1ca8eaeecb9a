// Watches against a real etcd: events in order from a revision (across etcd's batches of
// 1000 revisions), progress notifications, compaction and etcd going away as the watch's end,
// and no callback once the watch is destroyed.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

using etcd::WatchEvent;
using ::testing::HasSubstr;

class EtcdWatchTest : public EtcdTest {};

TEST_F(EtcdWatchTest, DeliversEventsInOrderFromARevision) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<int64_t> from = client->Put("/w/a", "1");
  ASSERT_TRUE(from.ok()) << from.status();
  ASSERT_TRUE(client->Put("/w/b", "2").ok());
  ASSERT_TRUE(client->Delete("/w/a").ok());
  ASSERT_TRUE(client->Put("/x/outside", "never seen").ok());
  // More revisions than etcd sends a catching-up watcher at once (1000).
  constexpr int kMany = 1200;
  constexpr int kWriters = 16;
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int i = w; i < kMany; i += kWriters) {
        if (!client->Put(absl::StrFormat("/w/many/%04d", i), "x").ok()) ++failures;
      }
    });
  }
  for (std::thread& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  absl::StatusOr<int64_t> last = client->Put("/w/c", "3");
  ASSERT_TRUE(last.ok()) << last.status();

  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/w/", *from, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  const size_t expected = 3 + kMany + 1;
  ASSERT_TRUE(recorder.WaitForEvents(expected, absl::Seconds(15)))
      << recorder.events().size() << " events of " << expected;

  std::vector<WatchEvent> events = recorder.events();
  ASSERT_EQ(events.size(), expected);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv.key, "/w/a");
  EXPECT_EQ(events[0].kv.value, "1");
  EXPECT_EQ(events[0].kv.mod_revision, *from);
  EXPECT_EQ(events[1].kv.key, "/w/b");
  EXPECT_EQ(events[2].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[2].kv.key, "/w/a");
  EXPECT_EQ(events[2].kv.mod_revision, *from + 2);
  EXPECT_EQ(events.back().kv.key, "/w/c");
  EXPECT_EQ(events.back().kv.mod_revision, *last);
  for (size_t i = 1; i < events.size(); ++i) {
    ASSERT_GT(events[i].kv.mod_revision, events[i - 1].kv.mod_revision) << "event " << i;
    ASSERT_TRUE(absl::StartsWith(events[i].kv.key, "/w/")) << events[i].kv.key;
  }
  // Each batch brings the watcher exactly to its last event, even where etcd's header says
  // more (while catching up it carries the store's revision).
  std::vector<WatchRecorder::Batch> batches = recorder.batches();
  EXPECT_GE(batches.size(), 2u);
  for (const WatchRecorder::Batch& batch : batches) {
    ASSERT_FALSE(batch.events.empty());
    EXPECT_EQ(batch.revision, batch.events.back().kv.mod_revision);
  }

  // And then live.
  absl::StatusOr<int64_t> live = client->Put("/w/live", "4");
  ASSERT_TRUE(live.ok()) << live.status();
  ASSERT_TRUE(recorder.WaitForEvents(expected + 1, absl::Seconds(5)));
  EXPECT_EQ(recorder.events().back().kv.key, "/w/live");
  EXPECT_EQ(recorder.batches().back().revision, *live);
  EXPECT_FALSE(recorder.ended());
}

class EtcdWatchProgressTest : public EtcdTest {
 protected:
  EtcdClusterOptions ClusterOptions() const override {
    EtcdClusterOptions options;
    options.extra_args = {"--experimental-watch-progress-notify-interval=200ms"};
    return options;
  }
};

TEST_F(EtcdWatchProgressTest, ReportsProgressWhileNothingChanges) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/quiet/", 0, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  absl::StatusOr<int64_t> elsewhere = client->Put("/busy/k", "v");
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  // An empty batch at the store's revision: nothing under the prefix up to there.
  EXPECT_TRUE(Eventually(
      [&] {
        std::vector<WatchRecorder::Batch> batches = recorder.batches();
        return !batches.empty() && batches.back().events.empty() &&
               batches.back().revision >= *elsewhere;
      },
      absl::Seconds(5)));
  EXPECT_TRUE(recorder.events().empty());
}

TEST_F(EtcdWatchTest, EndsOutOfRangeFromACompactedRevision) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<int64_t> first = client->Put("/w/a", "1");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(client->Put("/w/a", "2").ok());
  absl::StatusOr<int64_t> last = client->Put("/w/a", "3");
  ASSERT_TRUE(last.ok()) << last.status();
  absl::StatusOr<std::string> compacted = cluster().Etcdctl({"compact", absl::StrCat(*last)});
  ASSERT_TRUE(compacted.ok()) << compacted.status();

  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/w/", *first, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  absl::Status end = recorder.WaitForEnd(absl::Seconds(5));
  EXPECT_EQ(end.code(), absl::StatusCode::kOutOfRange) << end;
  EXPECT_THAT(std::string(end.message()), HasSubstr(absl::StrCat("revisions before ", *last)));
  EXPECT_TRUE(recorder.events().empty());

  absl::StatusOr<int64_t> next = client->Put("/w/b", "1");
  ASSERT_TRUE(next.ok());
  // The list's revision + 1 is watchable again.
  WatchRecorder again;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> rewatch =
      client->WatchPrefix("/w/", *last + 1, again.Callbacks());
  ASSERT_TRUE(rewatch.ok()) << rewatch.status();
  ASSERT_TRUE(again.WaitForEvents(1, absl::Seconds(5)));
  EXPECT_EQ(again.events()[0].kv.key, "/w/b");
}

TEST_F(EtcdWatchTest, EndsUnavailableWhenEtcdDies) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/w/", 0, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(client->Put("/w/a", "1").ok());
  ASSERT_TRUE(recorder.WaitForEvents(1, absl::Seconds(5)));

  ASSERT_TRUE(cluster().KillMember(0).ok());
  absl::Status end = recorder.WaitForEnd(absl::Seconds(5));
  EXPECT_EQ(end.code(), absl::StatusCode::kUnavailable) << end;

  // A watch asked for while etcd is down is refused at once.
  WatchRecorder refused;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> down =
      client->WatchPrefix("/w/", 0, refused.Callbacks());
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
}

TEST_F(EtcdWatchTest, NoCallbackAfterTheDestructorReturns) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  std::atomic<int> calls{0};
  std::atomic<bool> ended{false};
  etcd::WatchCallbacks callbacks{[&](const std::vector<WatchEvent>&, int64_t) {
                                   ++calls;
                                   // A slow consumer: the destructor comes while a callback runs.
                                   absl::SleepFor(absl::Milliseconds(100));
                                 },
                                 [&](const absl::Status&) { ended = true; }};
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch = client->WatchPrefix("/w/", 0, callbacks);
  ASSERT_TRUE(watch.ok()) << watch.status();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(client->Put(absl::StrCat("/w/", i), "v").ok());
  ASSERT_TRUE(Eventually([&] { return calls.load() > 0; }, absl::Seconds(5)));

  watch->reset();
  const int after_destructor = calls.load();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(client->Put(absl::StrCat("/w/more", i), "v").ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(calls.load(), after_destructor);
  // Ended by its owner: not an end to report.
  EXPECT_FALSE(ended.load());
}

TEST_F(EtcdWatchTest, DestroyedFromItsOwnCallback) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  absl::Mutex mu;
  std::unique_ptr<etcd::Watch> watch;
  std::atomic<int> calls{0};
  etcd::WatchCallbacks callbacks{[&](const std::vector<WatchEvent>&, int64_t) {
                                   ++calls;
                                   absl::MutexLock lock(&mu);
                                   watch.reset();
                                 },
                                 nullptr};
  {
    absl::StatusOr<std::unique_ptr<etcd::Watch>> started = client->WatchPrefix("/w/", 0, callbacks);
    ASSERT_TRUE(started.ok()) << started.status();
    absl::MutexLock lock(&mu);
    watch = *std::move(started);
  }
  ASSERT_TRUE(client->Put("/w/a", "1").ok());
  ASSERT_TRUE(Eventually(
      [&] {
        absl::MutexLock lock(&mu);
        return watch == nullptr;
      },
      absl::Seconds(5)));
  ASSERT_TRUE(client->Put("/w/b", "2").ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(EtcdWatchTest, OutlivesItsClient) {
  std::unique_ptr<etcd::Client> client = MustConnect(cluster());
  ASSERT_NE(client, nullptr);
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/w/", 0, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  client.reset();
  std::unique_ptr<etcd::Client> other = MustConnect(cluster());
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->Put("/w/a", "1").ok());
  EXPECT_TRUE(recorder.WaitForEvents(1, absl::Seconds(5)));
}

}  // namespace
}  // namespace tunnelagent::testing
