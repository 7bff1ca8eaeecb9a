// File descriptors: the agent raises RLIMIT_NOFILE as far as it may at start, and keeps a share
// of the limit for the API's connections and its own needs (state files, netlink, sockets),
// which tunnels may not take. Without that reserve, enough tunnels leave no descriptor to
// accept a client with, and the node can no longer be managed.
#ifndef TUNNELAGENT_AGENT_FD_BUDGET_H_
#define TUNNELAGENT_AGENT_FD_BUDGET_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {

// RLIMIT_NOFILE before and after RaiseFileLimit.
struct FileLimitChange {
  uint64_t before = 0;  // the soft limit found
  uint64_t after = 0;   // the soft limit now
  uint64_t hard = 0;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (which only root may raise, and which is
// left alone). The error of getrlimit/setrlimit otherwise.
absl::StatusOr<FileLimitChange> RaiseFileLimit();

// The soft RLIMIT_NOFILE now.
uint64_t FileLimit();

// Grows the process's descriptor table to hold `slots` descriptors (no more than FileLimit())
// now, at start. The kernel grows it by doubling when a descriptor lands past its end, and in
// a process of several threads each growth waits for an RCU grace period (milliseconds): a
// CreateTunnel that opened the 4,097th descriptor would wait that long. Returns the table's
// size asked for; the error of the system call when it could not grow.
absl::StatusOr<uint64_t> GrowDescriptorTable(uint64_t slots);

// Descriptors open in the process: entries of `fd_dir` (/proc/self/fd), the one used to read
// it not counted. RESOURCE_EXHAUSTED when not even that one can be opened.
absl::StatusOr<size_t> CountOpenDescriptors(const std::string& fd_dir = "/proc/self/fd");

// How many connections the API may hold at once for a descriptor limit: `wanted`, but no more
// than a quarter of the limit (tunnels need the rest), and never fewer than 8.
size_t ApiConnectionsFor(uint64_t limit, size_t wanted);

// Whether one more tunnel fits in the descriptors while the reserve stays free.
class FdBudget {
 public:
  struct Options {
    // Connections the API may hold at once (its listeners' cap).
    size_t api_connections = 0;
    // Headroom for the agent's own needs beyond what it holds now: a state file being
    // written, netlink and lookup sockets, the self-check's connection, /metrics scrapes.
    size_t own_reserve = 48;
    // Descriptors a tunnel holds: its device, and one queue more per extra dataplane worker.
    size_t per_tunnel = 1;
    std::string fd_dir = "/proc/self/fd";
    // The limit; default the soft RLIMIT_NOFILE, read each time (it may be changed by prlimit).
    std::function<uint64_t()> limit{};
    // API connections open now: their descriptors are among the open ones already, so only
    // the rest of the API's share is still to be kept free. Default: none counted (the whole
    // share kept free).
    std::function<size_t()> api_in_use;
  };

  explicit FdBudget(Options options) : options_(std::move(options)) {}

  // OK when a new tunnel's descriptors leave the reserve free; else RESOURCE_EXHAUSTED
  // "file descriptors are short: 180 open of a limit of 256, a tunnel needs 2 and 96 are
  // reserved for the API's connections and the agent ...". Counting the open descriptors
  // reads a directory as long as there are tunnels, so it is skipped while the last count
  // plus every tunnel checked since stays far below the limit: restoring 10,000 tunnels under
  // a limit of a million does not read /proc 10,000 times. Once a count finds more than
  // half the limit taken, it is counted every 128 checks while a quarter stays to spare.
  absl::Status CheckTunnel() const;

  // For a thread beside the requests' (the agent's monitor, once a second): counts the open
  // descriptors when tunnels were checked since the last count. While such a count is recent
  // (kCountFresh), CheckTunnel trusts it instead of counting on the request path every
  // kRecountEvery or kRecountNear checks (20 ms at 10,000 descriptors: that one create in a
  // hundred or so took that much longer). Near the limit (a quarter to spare) it still counts.
  void Recount() const;

  // Descriptors kept from tunnels in all (the API's share and the agent's own).
  size_t reserve() const { return options_.api_connections + options_.own_reserve; }
  const Options& options() const { return options_; }

 private:
  const Options options_;
  // The last count of open descriptors, and the checks passed since (each may have added a
  // tunnel's descriptors). Checks run one at a time (the manager serializes its changes);
  // atomics only so that a concurrent check stays well defined.
  mutable std::atomic<uint64_t> last_open_{0};
  mutable std::atomic<uint64_t> checks_since_count_{kRecountEvery};
  // When Recount last counted (absl::GetCurrentTimeNanos).
  mutable std::atomic<int64_t> recounted_at_nanos_{0};
  static constexpr absl::Duration kCountFresh = absl::Seconds(2);
  static constexpr uint64_t kRecountEvery = 256;
  static constexpr uint64_t kRecountNear = 128;  // checks between counts with a quarter to spare
};

// The budget KernelLinkControl asks before it creates a device. Null (the default, and in
// tests of the manager) means no check. Set before devices are created; not owned.
void SetTunnelFdBudget(const FdBudget* budget);

// The check of the budget set above; OK when none is set.
absl::Status CheckTunnelFdBudget();

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_FD_BUDGET_H_
