// `tunnel-controller run --etcd=ENDPOINTS --fleet=NAME`: one of any number of replicas. Each
// campaigns in etcd's election (leader.h); the one that leads converges the fleet, the others
// wait to take over.
//
// The leader lists everything under /tunnel-agent/<fleet>/ (the description, the
// registrations) and watches the prefix from the list's revision + 1; when the watch ends
// (compaction: OUT_OF_RANGE, or etcd away: UNAVAILABLE) it lists again. On every change
// (changes within 50 ms of each other taken together, none put off more than 250 ms), when a
// leaving node's grace ends, and every --interval, it builds the fleet (etcd_members.h), plans
// it and brings every member's agent to it with the reconciler (ApplyTunnels, ApplyPeers,
// with prune, under --owner), as `apply` does.
//
// Fail static: what cannot be read from etcd changes nothing. While etcd is away the leader
// keeps converging the fleet it last read until its lease may have lapsed, and then no replica
// calls any agent: the agents keep their tunnels and peers. A description that is deleted or
// not valid, or a fleet that cannot be planned, is reported and the previous fleet kept (none:
// nothing is done).
//
// A leader cannot know which nodes left before it led: for its first --grace it deletes
// nothing (prune off), so that a node that was leaving under the previous leader keeps the
// rest of its grace; nodes joining and changes are applied at once.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_RUN_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_RUN_H_

#include <ostream>

#include "absl/synchronization/notification.h"
#include "clients/tunnel_controller/args.h"

namespace tunnelagent::controller {

// Runs until `stop` is notified (may be null: runs until killed), then resigns so that a
// standby leads at once. Exit status: kExitOk when it stopped as a standby or after a pass
// that converged, kExitAgentFailed after one that did not; kExitBadInput for bad input found
// at start (an --etcd_* file, --metrics_listen).
int RunWithEtcd(const Options& options, std::ostream& out, std::ostream& err,
                const absl::Notification* stop);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_RUN_H_
