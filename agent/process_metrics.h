// The process_* metrics every Prometheus client library exports (same names, same units), read
// from procfs at scrape time: prometheus-cpp has no process collector, and alerts and
// dashboards written for any other exporter (memory, open file descriptors against their
// limit, CPU) then work on the agent unchanged.
#ifndef TUNNELAGENT_AGENT_PROCESS_METRICS_H_
#define TUNNELAGENT_AGENT_PROCESS_METRICS_H_

#include <string>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace tunnelagent::agent {

// process_cpu_seconds_total, process_open_fds, process_max_fds, process_virtual_memory_bytes,
// process_virtual_memory_max_bytes, process_resident_memory_bytes, process_start_time_seconds,
// process_threads. A value whose procfs file cannot be read or parsed is left out of that
// scrape (never exported as a made-up 0): `absent()` or a missing series shows it.
class ProcessMetrics final : public prometheus::Collectable {
 public:
  // `proc_self`: the process's procfs directory (stat, limits, fd/); `proc_stat`: the system's
  // /proc/stat, for the boot time. Tests point both at a tree of their own.
  explicit ProcessMetrics(std::string proc_self = "/proc/self",
                          std::string proc_stat = "/proc/stat");
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string proc_self_;
  const std::string proc_stat_;
  const double ticks_per_second_;  // the unit of utime, stime and starttime in stat
  const double page_size_;         // the unit of rss in stat
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_PROCESS_METRICS_H_
