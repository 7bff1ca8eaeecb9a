// Change notifications from the kernel's routing stack: links, addresses and routes. The agent
// waits on one of these and, when anything changed, reads the kernel's state again and puts
// back what drifted from the desired state; it does not interpret the notifications
// themselves, so a lost one (receive buffer overrun) costs nothing but a re-read.
#ifndef TUNNELAGENT_DATAPLANE_NETLINK_MONITOR_H_
#define TUNNELAGENT_DATAPLANE_NETLINK_MONITOR_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tunnelagent::dataplane {

// A NETLINK_ROUTE socket of its own subscribed to link, IPv4/IPv6 address and IPv4/IPv6 route
// changes. One thread waits (WaitForChange); any thread may Wake() or Stop() it.
class NetlinkMonitor {
 public:
  struct Options {
    // The socket's receive buffer. Large, so a burst (an apply of many tunnels, an operator's
    // script) is rarely overrun; an overrun is reported as a change all the same.
    int receive_buffer_bytes = 4 << 20;
    // Once a notification came, more are waited for until none came for `quiet`, but never
    // longer than `max_settle` in all: a burst still being made counts as one change.
    absl::Duration quiet = absl::Milliseconds(20);
    absl::Duration max_settle = absl::Milliseconds(250);
  };

  static absl::StatusOr<std::unique_ptr<NetlinkMonitor>> Open() { return Open(Options()); }
  static absl::StatusOr<std::unique_ptr<NetlinkMonitor>> Open(const Options& options);
  ~NetlinkMonitor();
  NetlinkMonitor(const NetlinkMonitor&) = delete;
  NetlinkMonitor& operator=(const NetlinkMonitor&) = delete;

  // Blocks up to `timeout` (absl::InfiniteDuration() to wait for ever) for a change. True when
  // notifications came (all that are queued are consumed, however many), when the kernel
  // dropped some because the socket's buffer was full, or when Wake() was called; false when
  // the time ran out with none. CANCELLED once Stop() was called, at once and on every later
  // call. One caller at a time.
  absl::StatusOr<bool> WaitForChange(absl::Duration timeout);

  // Makes the current or next WaitForChange return true, as if the kernel had changed
  // something: for a caller that wants its state re-read now.
  void Wake();
  // Ends a wait under way and every later one with CANCELLED, promptly.
  void Stop();

  // Notifications consumed, and times the kernel reported dropping some, since Open.
  uint64_t notifications() const { return notifications_.load(std::memory_order_relaxed); }
  uint64_t overruns() const { return overruns_.load(std::memory_order_relaxed); }
  // The receive buffer the kernel granted (it reports twice what was asked, for overhead).
  int receive_buffer_bytes() const { return receive_buffer_bytes_; }

 private:
  NetlinkMonitor(int socket_fd, int wake_fd, int receive_buffer_bytes, const Options& options);
  // Reads every queued datagram without blocking; true when any came or an overrun did.
  absl::StatusOr<bool> Drain();
  // Empties the eventfd; true when Wake() or Stop() had written to it.
  bool ConsumeWake();

  const int socket_fd_;
  const int wake_fd_;  // an eventfd: Wake() and Stop() write, WaitForChange polls it
  const int receive_buffer_bytes_;
  const Options options_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> notifications_{0};
  std::atomic<uint64_t> overruns_{0};
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_NETLINK_MONITOR_H_
