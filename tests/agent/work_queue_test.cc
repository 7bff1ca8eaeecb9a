// The bounded queue the API runs its changes on.
#include "agent/work_queue.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

TEST(BoundedWorkQueueTest, RefusesWorkBeyondTheQueueAndRunsTheRest) {
  std::atomic<int> ran{0};
  absl::Notification release;
  absl::Notification started;
  {
    BoundedWorkQueue queue(/*threads=*/1, /*max_queued=*/2);
    // The one thread is busy until released...
    ASSERT_TRUE(queue.TrySubmit([&] {
      started.Notify();
      release.WaitForNotification();
      ++ran;
    }));
    ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(5)));
    // ...so two more wait, and the next is refused without being run.
    EXPECT_TRUE(queue.TrySubmit([&] { ++ran; }));
    EXPECT_TRUE(queue.TrySubmit([&] { ++ran; }));
    EXPECT_EQ(queue.queued(), 2u);
    bool refused_ran = false;
    EXPECT_FALSE(queue.TrySubmit([&] { refused_ran = true; }));
    release.Notify();
    // The destructor runs what was accepted.
    EXPECT_FALSE(refused_ran);
  }
  EXPECT_EQ(ran.load(), 3);
}

TEST(BoundedWorkQueueTest, ThreadsRunSideBySide) {
  // Before the queue, so they outlive its threads (a task may still be in its wait).
  absl::Notification first, second;
  BoundedWorkQueue queue(/*threads=*/2, /*max_queued=*/4);
  // Each waits for the other: only two threads at once can finish them.
  ASSERT_TRUE(queue.TrySubmit([&] {
    first.Notify();
    second.WaitForNotificationWithTimeout(absl::Seconds(5));
  }));
  ASSERT_TRUE(queue.TrySubmit([&] {
    second.Notify();
    first.WaitForNotificationWithTimeout(absl::Seconds(5));
  }));
  EXPECT_TRUE(first.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(second.WaitForNotificationWithTimeout(absl::Seconds(5)));
}

}  // namespace
}  // namespace tunnelagent::agent
