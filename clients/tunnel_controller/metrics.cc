#include "clients/tunnel_controller/metrics.h"

#include <set>

namespace tunnelagent::controller {
namespace {

prometheus::Gauge& PlainGauge(prometheus::Registry& registry, const std::string& name,
                              const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

ControllerMetrics::ControllerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      nodes_(PlainGauge(*registry_, "tunnelcontroller_nodes", "Nodes in the fleet file.")),
      nodes_reachable_(PlainGauge(*registry_, "tunnelcontroller_nodes_reachable",
                                  "Nodes whose agent answered in the last pass.")),
      node_reachable_(prometheus::BuildGauge()
                          .Name("tunnelcontroller_node_reachable")
                          .Help("1 when the node's agent answered in the last pass.")
                          .Register(*registry_)),
      tunnels_desired_(PlainGauge(*registry_, "tunnelcontroller_tunnels_desired",
                                  "Tunnels the fleet file asks for, over all nodes.")),
      tunnels_actual_(PlainGauge(*registry_, "tunnelcontroller_tunnels_actual",
                                 "Tunnels of the controller's owner seen on the agents.")),
      tunnels_up_(PlainGauge(*registry_, "tunnelcontroller_tunnels_up",
                             "Tunnels of the controller's owner that are UP.")),
      peers_desired_(PlainGauge(*registry_, "tunnelcontroller_peers_desired",
                                "Peers of multipoint devices the fleet file asks for, over all "
                                "nodes.")),
      peers_actual_(PlainGauge(*registry_, "tunnelcontroller_peers_actual",
                               "Peers of the controller's owner seen on the agents.")),
      peers_up_(PlainGauge(*registry_, "tunnelcontroller_peers_up",
                           "Peers of the controller's owner that are UP.")),
      converged_(PlainGauge(*registry_, "tunnelcontroller_converged",
                            "1 when every node is reachable and has exactly the file's tunnels.")),
      last_apply_(PlainGauge(*registry_, "tunnelcontroller_last_apply_timestamp_seconds",
                             "Unix time at the end of the last reconcile pass.")),
      apply_errors_(prometheus::BuildCounter()
                        .Name("tunnelcontroller_apply_errors_total")
                        .Help("Reconcile passes in which applying to the node failed.")
                        .Register(*registry_)),
      duration_(
          prometheus::BuildHistogram()
              .Name("tunnelcontroller_reconcile_duration_seconds")
              .Help("Duration of each reconcile pass over all nodes.")
              .Register(*registry_)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                               2.5, 5, 10, 30, 60, 120})),
      leader_(PlainGauge(*registry_, "tunnelcontroller_leader",
                         "1 while this process acts on the fleet: always with a fleet file, "
                         "while it leads with --etcd.")),
      nodes_registered_(PlainGauge(*registry_, "tunnelcontroller_nodes_registered",
                                   "Nodes registered in etcd, as this process last read them.")),
      fleet_converged_(PlainGauge(*registry_, "tunnelcontroller_fleet_converged",
                                  "1 when the last pass converged every node to the fleet as last "
                                  "read, with no change pending.")),
      last_convergence_(
          PlainGauge(*registry_, "tunnelcontroller_last_convergence_timestamp_seconds",
                     "Unix time at the end of the last pass that left the fleet converged.")),
      etcd_errors_(prometheus::BuildCounter()
                       .Name("tunnelcontroller_etcd_errors_total")
                       .Help("etcd calls that failed (list, watch, lease, election).")
                       .Register(*registry_)
                       .Add({})) {}

void ControllerMetrics::SetNodes(const std::vector<std::string>& nodes, int tunnels_desired,
                                 int peers_desired) {
  absl::MutexLock lock(&mu_);
  std::set<std::string> wanted(nodes.begin(), nodes.end());
  for (auto it = per_node_.begin(); it != per_node_.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    node_reachable_.Remove(it->second.reachable);
    apply_errors_.Remove(it->second.errors);
    it = per_node_.erase(it);
  }
  for (const std::string& n : nodes) {
    if (per_node_.count(n)) continue;
    per_node_[n] = {&node_reachable_.Add({{"node", n}}), &apply_errors_.Add({{"node", n}})};
  }
  nodes_.Set(static_cast<double>(nodes.size()));
  tunnels_desired_.Set(tunnels_desired);
  peers_desired_.Set(peers_desired);
}

void ControllerMetrics::RecordPass(const std::vector<NodeReport>& reports, absl::Duration duration,
                                   absl::Time end) {
  absl::MutexLock lock(&mu_);
  int reachable = 0;
  int actual = 0;
  int up = 0;
  int peers_actual = 0;
  int peers_up = 0;
  bool converged = true;
  for (const NodeReport& r : reports) {
    reachable += r.reachable;
    if (r.actual > 0) actual += r.actual;
    up += r.up;
    if (r.peers_actual > 0) peers_actual += r.peers_actual;
    peers_up += r.peers_up;
    converged = converged && r.reachable && r.ok && r.converged;
    auto it = per_node_.find(r.node);
    if (it == per_node_.end()) continue;
    it->second.reachable->Set(r.reachable ? 1 : 0);
    if (!r.ok) it->second.errors->Increment();
  }
  nodes_reachable_.Set(reachable);
  tunnels_actual_.Set(actual);
  tunnels_up_.Set(up);
  peers_actual_.Set(peers_actual);
  peers_up_.Set(peers_up);
  converged_.Set(converged ? 1 : 0);
  fleet_converged_.Set(converged ? 1 : 0);
  last_apply_.Set(absl::ToDoubleSeconds(end - absl::UnixEpoch()));
  if (converged) last_convergence_.Set(absl::ToDoubleSeconds(end - absl::UnixEpoch()));
  duration_.Observe(absl::ToDoubleSeconds(duration));
}

}  // namespace tunnelagent::controller
