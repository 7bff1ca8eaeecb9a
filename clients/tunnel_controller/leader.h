// Which replica of `tunnel-controller run --etcd` acts on the fleet: the one that won etcd's
// election /tunnel-agent/<fleet>/controller, for as long as the lease it won with lives.
//
// The lease (--lease_ttl) is renewed every third of its TTL. Leading ends:
//  - when etcd says the lease is gone (revoked, or expired while etcd could not be reached);
//  - when the last renewal sent is a TTL old without an answer: by then etcd may have let the
//    lease expire and another replica may lead, so this one stops first (the clock starts when
//    the renewal was sent, before etcd received it);
//  - when Lost() is called (the leader key was seen deleted), or at Resign().
// A replica that stopped leading for want of etcd keeps its lease and campaigns with it again:
// if etcd kept the lease (it extends leases when it comes back) it leads again at once.
//
// A standby's Campaign waits in etcd's Election service; it gets the leadership when the
// leader's key goes, i.e. at most the leader's TTL after the leader died (at once when the
// leader resigns, as `run` does when it is stopped).
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_LEADER_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_LEADER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/etcd/client.h"

namespace tunnelagent::controller {

struct ElectionOptions {
  std::string election;                             // ElectionName(fleet)
  std::string value;                                // what Leader() shows: "host/pid"
  absl::Duration ttl = absl::Seconds(5);            // the lease's TTL (whole seconds)
  absl::Duration campaign_wait = absl::Seconds(2);  // each Campaign call, then again
  // Every failed etcd call (not a Campaign that merely waited): for the errors metric and log.
  std::function<void(absl::string_view call, const absl::Status&)> on_error;
  // Leading ended (from the renewing thread; no lock of this class is held).
  std::function<void()> on_lost;
};

class LeaderElection {
 public:
  LeaderElection(etcd::Client& client, ElectionOptions options);
  // Resigns (revokes the lease) when one is held, so that a standby leads at once.
  ~LeaderElection();
  LeaderElection(const LeaderElection&) = delete;
  LeaderElection& operator=(const LeaderElection&) = delete;

  // Blocks until this replica leads (true) or `stop` is notified (false); etcd errors are
  // retried.
  bool Campaign(const absl::Notification& stop) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether the leadership won by the last Campaign holds now.
  bool Leading() const ABSL_LOCKS_EXCLUDED(mu_);
  // Until when it holds, unless renewed (InfinitePast: not leading).
  absl::Time LeadingUntil() const ABSL_LOCKS_EXCLUDED(mu_);
  // Why leading ended, for the log.
  std::string LostReason() const ABSL_LOCKS_EXCLUDED(mu_);
  // The leader key won (for the watch: its deletion ends the term).
  std::string LeaderKeyName() const ABSL_LOCKS_EXCLUDED(mu_);

  // Ends leading now (the leader key was deleted behind its back); the lease is revoked.
  void Lost(absl::string_view why) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends leading and revokes the lease.
  void Resign() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RenewLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Ends leading; returns whether it was leading (the caller calls on_lost then).
  bool EndLocked(absl::string_view why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Error(absl::string_view call, const absl::Status& status);
  // Revokes `lease` (best effort: when etcd is not there it expires on its own).
  void Revoke(int64_t lease);

  etcd::Client& client_;
  const ElectionOptions options_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  int64_t lease_ ABSL_GUARDED_BY(mu_) = 0;  // 0: none held
  // The lease lives at least until then: the last renewal's (or the grant's) sending time plus
  // the TTL etcd answered.
  absl::Time lease_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool leading_ ABSL_GUARDED_BY(mu_) = false;
  etcd::LeaderKey leader_key_ ABSL_GUARDED_BY(mu_);
  std::string lost_reason_ ABSL_GUARDED_BY(mu_);
  std::thread renewer_;
};

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_LEADER_H_
