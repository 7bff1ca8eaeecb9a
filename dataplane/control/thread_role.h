// The thread that owns some state, as a capability clang's thread-safety analysis checks (the
// "role" pattern: a capability no lock stands behind). State only one thread may touch is
// declared ABSL_GUARDED_BY(role), functions only that thread may call
// ABSL_EXCLUSIVE_LOCKS_REQUIRED(role); the analysis (-Wthread-safety, errors in the
// ThreadSanitizer build) then rejects any path that reaches them without holding the role:
//
//   class Worker {
//     void Run() {                        // the worker's thread
//       BoundThreadRole bound(role_);     // holds the role until the loop ends
//       while (...) Step();
//     }
//     void Step() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
//     ThreadRole role_{"worker"};
//     TunnelTable table_ ABSL_GUARDED_BY(role_);
//   };
//
// Code the analysis cannot follow there (a callback, a completion handler) says which thread it
// runs on with role_.Assume(). Checked builds (debug, sanitizers, or
// TUNNEL_AGENT_CHECK_THREAD_ROLES=1) make that a run-time check too: a thread-id compare that
// aborts, naming the role, when the caller is not the bound thread. Release builds keep only the
// annotation: Assume() is empty.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_THREAD_ROLE_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_THREAD_ROLE_H_

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/base/config.h"
#include "absl/base/thread_annotations.h"

#ifndef TUNNEL_AGENT_CHECK_THREAD_ROLES
#if !defined(NDEBUG) || defined(ABSL_HAVE_THREAD_SANITIZER) || defined(ABSL_HAVE_ADDRESS_SANITIZER)
#define TUNNEL_AGENT_CHECK_THREAD_ROLES 1
#else
#define TUNNEL_AGENT_CHECK_THREAD_ROLES 0
#endif
#endif

namespace tunnelagent::dataplane {

class ABSL_LOCKABLE ThreadRole {
 public:
  // Whether Assume() checks the calling thread in this build.
  static constexpr bool kChecked = TUNNEL_AGENT_CHECK_THREAD_ROLES != 0;

  // `name` (a literal: it is kept, not copied) says whose thread it is in a failed check.
  explicit ThreadRole(const char* name) : name_(name) {}
  ThreadRole(const ThreadRole&) = delete;
  ThreadRole& operator=(const ThreadRole&) = delete;

  // Makes the calling thread the role's thread and holds the role from here on, for the analysis.
  // Checked builds abort when another thread is bound: two threads would own the same state.
  void Bind() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    const std::thread::id self = std::this_thread::get_id();
    if constexpr (kChecked) {
      const std::thread::id bound = owner_.load(std::memory_order_relaxed);
      if (bound != std::thread::id() && bound != self) Fail("bound by a second thread");
    }
    owner_.store(self, std::memory_order_relaxed);
  }

  // The bound thread gives the role up (its loop has ended); another thread may Bind it.
  void Unbind() ABSL_UNLOCK_FUNCTION() {
    if constexpr (kChecked) {
      if (!IsCurrent()) Fail("unbound by a thread that is not bound to it");
    }
    owner_.store(std::thread::id(), std::memory_order_relaxed);
  }

  // Whether the calling thread is the bound one, in every build (for a CHECK, a test, or
  // Envoy's isThreadSafe()-style branching). Relaxed: a thread always sees its own Bind and
  // Unbind, and another thread's id never equals its own.
  bool IsCurrent() const {
    return owner_.load(std::memory_order_relaxed) == std::this_thread::get_id();
  }

  // Tells the analysis the calling thread holds the role (code it cannot follow there from
  // Bind); checked builds abort when the caller is not the bound thread.
  void Assume() const ABSL_ASSERT_EXCLUSIVE_LOCK() {
    if constexpr (kChecked) {
      if (!IsCurrent()) Fail("assumed by a thread that is not bound to it");
    }
  }

  const char* name() const { return name_; }

 private:
  [[noreturn]] void Fail(const char* what) const {
    std::fprintf(stderr, "thread role \"%s\" %s\n", name_, what);
    std::abort();
  }

  const char* const name_;
  // The bound thread; a default id (no thread) when none is.
  std::atomic<std::thread::id> owner_{std::thread::id()};
};

// Holds a role on the calling thread for a scope (a thread's loop), binding and unbinding it.
class ABSL_SCOPED_LOCKABLE BoundThreadRole {
 public:
  explicit BoundThreadRole(ThreadRole& role) ABSL_EXCLUSIVE_LOCK_FUNCTION(role) : role_(role) {
    role_.Bind();
  }
  ~BoundThreadRole() ABSL_UNLOCK_FUNCTION() { role_.Unbind(); }
  BoundThreadRole(const BoundThreadRole&) = delete;
  BoundThreadRole& operator=(const BoundThreadRole&) = delete;

 private:
  ThreadRole& role_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_THREAD_ROLE_H_
