// tunnel-controller's own metrics (`run` serves them on --metrics_listen at /metrics). The
// names are a contract: alert rules are written against them.
//
//   tunnelcontroller_nodes                         gauge    nodes in the file
//   tunnelcontroller_nodes_reachable               gauge    nodes whose agent answered
//   tunnelcontroller_node_reachable{node}          gauge    1/0 per node of the file
//   tunnelcontroller_tunnels_desired               gauge    tunnels the file asks for (all nodes)
//   tunnelcontroller_tunnels_actual                gauge    the owner's tunnels seen on the agents
//   tunnelcontroller_tunnels_up                    gauge    of those, UP
//   tunnelcontroller_peers_desired                 gauge    peers of multipoint devices the file
//                                                           asks for (all nodes; 0: point to point)
//   tunnelcontroller_peers_actual                  gauge    the owner's peers seen on the agents
//   tunnelcontroller_peers_up                      gauge    of those, UP
//   tunnelcontroller_converged                     gauge    1 when every node is reachable and
//                                                           has exactly the file's tunnels (and
//                                                           peers)
//   tunnelcontroller_last_apply_timestamp_seconds  gauge    end of the last reconcile pass
//   tunnelcontroller_apply_errors_total{node}      counter  passes in which the node failed
//   tunnelcontroller_reconcile_duration_seconds    histogram  duration of each pass
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_METRICS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/tunnel_controller/reconciler.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tunnelagent::controller {

class ControllerMetrics {
 public:
  ControllerMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The nodes of the file (re-read): per-node series exist for these, at 0 until known;
  // series of nodes that left the file are removed.
  void SetNodes(const std::vector<std::string>& nodes, int tunnels_desired, int peers_desired = 0)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The outcome of one reconcile pass (kApply) over every node of the file, ended at `end`.
  void RecordPass(const std::vector<NodeReport>& reports, absl::Duration duration, absl::Time end)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge& nodes_;
  prometheus::Gauge& nodes_reachable_;
  prometheus::Family<prometheus::Gauge>& node_reachable_;
  prometheus::Gauge& tunnels_desired_;
  prometheus::Gauge& tunnels_actual_;
  prometheus::Gauge& tunnels_up_;
  prometheus::Gauge& peers_desired_;
  prometheus::Gauge& peers_actual_;
  prometheus::Gauge& peers_up_;
  prometheus::Gauge& converged_;
  prometheus::Gauge& last_apply_;
  prometheus::Family<prometheus::Counter>& apply_errors_;
  prometheus::Histogram& duration_;

  absl::Mutex mu_;
  struct PerNode {
    prometheus::Gauge* reachable;
    prometheus::Counter* errors;
  };
  std::map<std::string, PerNode> per_node_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_METRICS_H_
