// Which CPUs the dataplane workers run on. On a node that gives the agent cores of its own (a
// Kubernetes pod with exclusive CPUs, isolcpus), pinning each worker to one keeps its ring,
// buffers and flows on that core's caches instead of migrating with the scheduler's mood.
#ifndef TUNNELAGENT_DATAPLANE_CPU_AFFINITY_H_
#define TUNNELAGENT_DATAPLANE_CPU_AFFINITY_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::dataplane {

// A CPU list as Linux writes them (cpuset.cpus, taskset -c, isolcpus): numbers and ranges,
// comma-separated ("0-3,8,10-11"), in the order given, each CPU once. INVALID_ARGUMENT for an
// empty list or element, a reversed range, a repeated CPU or a number past the kernel's limit.
absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text);
// The reverse, with runs of consecutive CPUs as ranges: {0, 1, 2, 5} is "0-2,5".
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs this process may run on (sched_getaffinity), ascending; empty if it cannot say.
std::vector<int> AllowedCpus();
// OK when every one of `cpus` is allowed; INVALID_ARGUMENT naming the first that is not.
absl::Status CheckCpusAllowed(const std::vector<int>& cpus);

// The CPU bandwidth limit of this process's cgroup, in CPUs (quota / period: 1.5 for
// "150000 100000"), the smallest along the cgroup and its ancestors, for cgroup v2 (cpu.max)
// and v1 (cpu.cfs_quota_us / cpu.cfs_period_us); nullopt when there is none or it cannot be
// read. A container's CPU limit (Kubernetes `limits.cpu`) is such a quota: more busy threads
// than it allows get throttled, however many CPUs the affinity mask lists. `root` prefixes
// every path read (/proc/self/cgroup, /proc/self/mountinfo, the cgroup files), for tests.
std::optional<double> CgroupCpuLimit(const std::string& root = "");

// The CPU the worker `worker` runs on: cpus[worker % size], or -1 (not pinned) for none.
int WorkerCpu(const std::vector<int>& cpus, unsigned worker);
// Names the calling thread "dataplane-<worker>" (as top -H and /proc show it) and, when
// `cpu` >= 0, pins it there.
absl::Status SetUpWorkerThread(unsigned worker, int cpu);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CPU_AFFINITY_H_
