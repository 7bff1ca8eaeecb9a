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
//   tunnelcontroller_leader                        gauge    1 while this process acts on the
//                                                           fleet (file mode: always; run --etcd:
//                                                           while it leads)
//   tunnelcontroller_nodes_registered              gauge    run --etcd: registrations present,
//                                                           as the leader last read them
//   tunnelcontroller_fleet_converged               gauge    1 when the last pass converged every
//                                                           node to the fleet as last read (file,
//                                                           etcd) with no change pending
//   tunnelcontroller_last_convergence_timestamp_seconds
//                                                  gauge    end of the last pass that left the
//                                                           fleet converged (0: none yet)
//   tunnelcontroller_etcd_errors_total             counter  etcd calls that failed (run --etcd)
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
  // Also sets fleet_converged as the pass left it, and the last convergence when it did.
  void RecordPass(const std::vector<NodeReport>& reports, absl::Duration duration, absl::Time end)
      ABSL_LOCKS_EXCLUDED(mu_);

  // run --etcd: the pass converged a fleet that is no longer the latest (a change came
  // meanwhile, or the latest could not be planned).
  void SetFleetConverged(bool converged) { fleet_converged_.Set(converged ? 1 : 0); }
  void SetLeader(bool leader) { leader_.Set(leader ? 1 : 0); }
  void SetRegistered(int nodes) { nodes_registered_.Set(nodes); }
  void EtcdError() { etcd_errors_.Increment(); }

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
  prometheus::Gauge& leader_;
  prometheus::Gauge& nodes_registered_;
  prometheus::Gauge& fleet_converged_;
  prometheus::Gauge& last_convergence_;
  prometheus::Counter& etcd_errors_;

  absl::Mutex mu_;
  struct PerNode {
    prometheus::Gauge* reachable;
    prometheus::Counter* errors;
  };
  std::map<std::string, PerNode> per_node_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_METRICS_H_
