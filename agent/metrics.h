// Prometheus metrics of the agent, read at scrape time from the dataplane's own counters: the
// packet path never touches a metrics library object.
#ifndef TUNNELAGENT_AGENT_METRICS_H_
#define TUNNELAGENT_AGENT_METRICS_H_

#include <atomic>
#include <string>
#include <vector>

#include "agent/tunnel_manager.h"
#include "dataplane/packet_engine.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace tunnelagent::agent {

// The prefix of every metric of the agent's own (gRPC's and the process's follow their
// conventions: grpc_server_*, process_*); docs/metrics.md has the full table.
inline constexpr char kMetricsPrefix[] = "tunnelagent";

class AgentMetrics final : public prometheus::Collectable {
 public:
  // `io_uring_fallback`: --io_backend=auto found io_uring refused and runs on epoll.
  AgentMetrics(const TunnelManager* manager, const dataplane::PacketEngine* engine,
               std::string version, bool io_uring_fallback = false);
  std::vector<prometheus::MetricFamily> Collect() const override;
  // Whether a scrape was collected since the last call. A scrape of thousands of tunnels
  // builds and frees a few hundred MiB of small objects: the caller gives them back to the
  // system (malloc_trim) once the answer is out, or the agent keeps the peak resident.
  bool TakeScraped() { return scraped_.exchange(false, std::memory_order_relaxed); }

 private:
  mutable std::atomic<bool> scraped_{false};
  const TunnelManager* manager_;
  const dataplane::PacketEngine* engine_;
  std::string version_;
  bool io_uring_fallback_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_METRICS_H_
