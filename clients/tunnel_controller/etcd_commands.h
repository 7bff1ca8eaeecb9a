// tunnel-controller's commands on a fleet kept in etcd (--etcd, --fleet): fleet set, fleet get,
// run (etcd_run.h), and what plan and status read (the fleet as etcd has it now).
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_COMMANDS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_COMMANDS_H_

#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/tunnel_controller/args.h"
#include "clients/tunnel_controller/etcd_members.h"

namespace tunnelagent::controller {

// fleet set, fleet get or run with --etcd; the exit status.
//  - fleet set: the file parsed as a description (errors: file:line:column, exit 1), merged
//    with the nodes registered now and planned (a fleet that cannot be planned: exit 1), then
//    stored; etcd unreachable or refusing: exit 2. The stored description is unchanged on any
//    error.
//  - fleet get: the stored text on `out`, as stored; none stored: exit 2.
int RunEtcdCommand(const Options& options, std::ostream& out, std::ostream& err,
                   const absl::Notification* stop);

// The fleet as etcd has it at one revision: every readable registration a member (nobody
// leaving: a command that runs once knows no grace), and what status prints first: who leads,
// the members with the age of their registration, those refused.
struct EtcdView {
  MergedFleet merged;
  std::string header;
};
// Errors: InvalidArgument (a bad flag's file, a stored description that is not valid), NOT_FOUND
// (no description), or etcd's (UNAVAILABLE...).
absl::StatusOr<EtcdView> ReadEtcdView(const Options& options, absl::Time now);

// The header of ReadEtcdView: "fleet NAME: led by VALUE" (or "no leader"), then a table of the
// members (NODE, MEMBER: registered, pinned or both, AGE of the registration, UNDERLAY, AGENT),
// then the registrations that are no member and why.
std::string FormatMembers(absl::string_view fleet, absl::string_view leader,
                          const MergedFleet& merged, const std::vector<Registration>& registered,
                          const std::vector<std::string>& unreadable, absl::Time now);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_COMMANDS_H_
