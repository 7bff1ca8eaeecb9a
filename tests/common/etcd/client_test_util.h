// What the etcd client's tests share: a client connected to a test cluster, a bounded wait,
// and a recorder of what a watch delivers.
#ifndef TUNNELAGENT_TESTS_COMMON_ETCD_CLIENT_TEST_UTIL_H_
#define TUNNELAGENT_TESTS_COMMON_ETCD_CLIENT_TEST_UTIL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/etcd/client.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {

inline std::unique_ptr<etcd::Client> MustConnect(etcd::ClientOptions options) {
  absl::StatusOr<std::unique_ptr<etcd::Client>> client = etcd::Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

inline std::unique_ptr<etcd::Client> MustConnect(const EtcdCluster& cluster) {
  etcd::ClientOptions options;
  options.endpoints = cluster.endpoints();
  return MustConnect(options);
}

// Polls `done` every 50 ms until it holds or `timeout` passes; whether it held.
inline bool Eventually(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (done()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// Everything a watch delivers, in order, for a test to wait on and look at.
class WatchRecorder {
 public:
  struct Batch {
    std::vector<etcd::WatchEvent> events;
    int64_t revision = 0;
  };

  etcd::WatchCallbacks Callbacks() {
    return {
        [this](const std::vector<etcd::WatchEvent>& events, int64_t revision) {
          absl::MutexLock lock(&mu_);
          batches_.push_back({events, revision});
          for (const etcd::WatchEvent& e : events) events_.push_back(e);
        },
        [this](const absl::Status& why) {
          absl::MutexLock lock(&mu_);
          ended_ = true;
          end_ = why;
        },
    };
  }

  // Waits until at least `count` events came; whether they did within `timeout`.
  bool WaitForEvents(size_t count, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, count]()
                      ABSL_SHARED_LOCKS_REQUIRED(mu_) { return events_.size() >= count; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

  // Waits for on_end; its status, or DEADLINE_EXCEEDED from the test when it did not come.
  absl::Status WaitForEnd(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&ended_), timeout)) {
      return absl::DeadlineExceededError("the watch did not end");
    }
    return end_;
  }

  std::vector<etcd::WatchEvent> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<Batch> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  bool ended() {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Batch> batches_ ABSL_GUARDED_BY(mu_);
  std::vector<etcd::WatchEvent> events_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status end_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::testing

#endif  // TUNNELAGENT_TESTS_COMMON_ETCD_CLIENT_TEST_UTIL_H_
