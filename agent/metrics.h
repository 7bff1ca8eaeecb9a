// Prometheus metrics of the agent, read at scrape time from the dataplane's own counters: the
// packet path never touches a metrics library object.
#ifndef TUNNELAGENT_AGENT_METRICS_H_
#define TUNNELAGENT_AGENT_METRICS_H_

#include <string>
#include <vector>

#include "agent/tunnel_manager.h"
#include "dataplane/packet_engine.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace tunnelagent::agent {

// Every metric is prefixed tunnelagent_; the README has the full table.
class AgentMetrics final : public prometheus::Collectable {
 public:
  // `io_uring_fallback`: --io_backend=auto found io_uring refused and runs on epoll.
  AgentMetrics(const TunnelManager* manager, const dataplane::PacketEngine* engine,
               std::string version, bool io_uring_fallback = false);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const TunnelManager* manager_;
  const dataplane::PacketEngine* engine_;
  std::string version_;
  bool io_uring_fallback_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_METRICS_H_
