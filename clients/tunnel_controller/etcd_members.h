// Who is in a fleet kept in etcd, and the Fleet that the plan and the reconciler take: the
// description's pinned nodes, then the registered nodes, each checked as the file's nodes are.
// Pure: the time is given, nothing is read.
//
// Membership (docs/fleet.md#the-etcd-mode):
//  - A node whose registration appears is a member at once.
//  - A node whose registration disappears (its key deleted: the agent stopped, or its lease
//    lapsed) stays a member for the grace period, as a peer of the others, and is then removed;
//    registering again within the grace keeps it as if it had never left. While leaving, its
//    own agent is not called (it is most likely gone).
//  - A registration that cannot be read (not NodeRegistration JSON) changes nothing: the
//    member keeps its last readable registration, and a node never read is no member.
//  - Order (which decides collisions of names, keys and addresses, docs/fleet.md): the pinned
//    nodes in the description's order, then the registered ones by the revision their key was
//    created at, so that a node joining comes last and moves nobody.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_MEMBERS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_MEMBERS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "clients/tunnel_controller/fleet.h"
#include "clients/tunnel_controller/fleet_store.h"

namespace tunnelagent::controller {

struct Member {
  Registration registration;
  bool leaving = false;  // its key is gone: a member until leaving_since + grace
  absl::Time leaving_since = absl::InfinitePast();
};

// The registered nodes and those leaving, with the grace bookkeeping.
class Membership {
 public:
  explicit Membership(absl::Duration grace) : grace_(grace) {}

  // A full list of the registrations (at one revision): those given are registered; a member
  // missing from it starts leaving at `now` (unless it already is); a node in `unreadable` keeps
  // its state.
  void Reset(const std::vector<Registration>& registered, const std::set<std::string>& unreadable,
             absl::Time now);
  // A registration written (a new node, or one registering again). True when the node was no
  // member or was leaving.
  bool Registered(const Registration& registration);
  // A registration deleted at `now`. True when a member starts leaving.
  bool Unregistered(const std::string& node, absl::Time now);
  // Removes the members whose grace is over at `now`; the names removed.
  std::vector<std::string> Expire(absl::Time now);
  // When the next grace ends (InfiniteFuture: none leaving).
  absl::Time NextExpiry() const;

  // Every member, in the fleet's order (by create revision, then name).
  std::vector<Member> Members() const;
  // Members whose registration is present (not leaving).
  int RegisteredCount() const;
  absl::Duration grace() const { return grace_; }

 private:
  const absl::Duration grace_;
  std::map<std::string, Member> members_;
};

// The fleet to plan: `description`'s nodes (pinned) first, then the members not pinned, in
// order. A member becomes a node with the registration's agent endpoint, its first underlay
// address of the family the fleet's mode needs, its advertised prefixes (multipoint fleets only;
// a point-to-point fleet has no use for them) and the description's defaults.tls and
// defaults.tokenFile. The topology's links and overrides that name a node that is not a member
// are left out until it is one; a hub-spoke fleet whose hub is not a member has no links (a
// multipoint one: devices without peers).
struct MergedFleet {
  Fleet fleet;
  std::set<std::string> leaving;     // members in their grace: peers of the others, not called
  std::set<std::string> pinned;      // from the description
  std::vector<std::string> refused;  // "n3: underlay: ...": registrations that are no member
};
MergedFleet BuildFleet(const Fleet& description, const std::vector<Member>& members);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_ETCD_MEMBERS_H_
