#include "dataplane/control/thread_role.h"

#include <gtest/gtest.h>

#include <thread>

#include "absl/base/thread_annotations.h"

namespace tunnelagent::dataplane {
namespace {

// A worker in the shape the engines take: state only its thread may touch.
class Worker {
 public:
  // The worker's thread: holds the role while it counts.
  void Run(int steps) {
    BoundThreadRole bound(role_);
    for (int i = 0; i < steps; ++i) Step();
  }
  // Runs on the worker's thread, entered from somewhere the analysis cannot follow.
  void Callback() {
    role_.Assume();
    Step();
  }
  ThreadRole& role() { return role_; }
  int steps_seen_by_owner() {
    role_.Assume();
    return steps_;
  }

 private:
  void Step() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) { ++steps_; }

  ThreadRole role_{"test worker"};
  int steps_ ABSL_GUARDED_BY(role_) = 0;

#ifdef THREAD_ROLE_TEST_MISUSE
  // Compiled only by the thread-safety check of scripts/tsan.sh, which expects the analysis to
  // reject both: guarded state and a role-only function reached without the role.
 public:
  int Peek() { return steps_; }
  void StepFromAnywhere() { Step(); }
#endif
};

TEST(ThreadRoleTest, NoThreadIsCurrentUntilOneBinds) {
  ThreadRole role("unbound");
  EXPECT_FALSE(role.IsCurrent());
  role.Bind();
  EXPECT_TRUE(role.IsCurrent());
  role.Unbind();
  EXPECT_FALSE(role.IsCurrent());
}

TEST(ThreadRoleTest, OnlyTheBoundThreadIsCurrent) {
  ThreadRole role("worker");
  bool current_on_worker = false;
  bool current_on_main_while_worker_bound = true;
  std::atomic<bool> bound{false};
  std::atomic<bool> checked{false};
  std::thread worker([&] {
    BoundThreadRole scope(role);
    current_on_worker = role.IsCurrent();
    bound.store(true);
    while (!checked.load()) std::this_thread::yield();
  });
  while (!bound.load()) std::this_thread::yield();
  current_on_main_while_worker_bound = role.IsCurrent();
  checked.store(true);
  worker.join();
  EXPECT_TRUE(current_on_worker);
  EXPECT_FALSE(current_on_main_while_worker_bound);
  // The worker's scope has ended: the role is free for another thread.
  role.Bind();
  EXPECT_TRUE(role.IsCurrent());
  role.Unbind();
}

TEST(ThreadRoleTest, OwnerRunsItsSteps) {
  Worker worker;
  std::thread thread([&] {
    worker.Run(3);
    worker.role().Bind();
    worker.Callback();
    EXPECT_EQ(worker.steps_seen_by_owner(), 4);
    worker.role().Unbind();
  });
  thread.join();
}

TEST(ThreadRoleTest, AssumeOnTheBoundThreadPasses) {
  ThreadRole role("worker");
  role.Bind();
  role.Assume();  // does not abort
  role.Unbind();
}

// Misuse on purpose, which the analysis would reject: the run-time check must catch it.
void BindUnchecked(ThreadRole& role) ABSL_NO_THREAD_SAFETY_ANALYSIS { role.Bind(); }
void UnbindUnchecked(ThreadRole& role) ABSL_NO_THREAD_SAFETY_ANALYSIS { role.Unbind(); }

// The run-time side: another thread's state touched from here.
TEST(ThreadRoleDeathTest, AssumeOffTheBoundThreadAbortsInCheckedBuilds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  if (!ThreadRole::kChecked) GTEST_SKIP() << "release build: Assume() checks nothing at run time";
  Worker worker;
  std::atomic<bool> bound{false};
  std::atomic<bool> done{false};
  std::thread owner([&] {
    BoundThreadRole scope(worker.role());
    bound.store(true);
    while (!done.load()) std::this_thread::yield();
  });
  while (!bound.load()) std::this_thread::yield();
  EXPECT_DEATH(worker.Callback(), "thread role \"test worker\" assumed by a thread");
  EXPECT_DEATH(BindUnchecked(worker.role()),
               "thread role \"test worker\" bound by a second thread");
  done.store(true);
  owner.join();
  EXPECT_DEATH(UnbindUnchecked(worker.role()), "unbound by a thread that is not bound to it");
}

}  // namespace
}  // namespace tunnelagent::dataplane
