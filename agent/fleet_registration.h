// The agent's side of a fleet on etcd: the node's registration (tunnelagent.v1.NodeRegistration,
// as protobuf JSON) under /tunnel-agent/<fleet>/nodes/<node>, bound to a lease this agent keeps
// alive, so that the key lives exactly as long as the agent does (give or take the TTL).
//
// Fail static: etcd is never on the agent's path. Registration runs on a thread of its own;
// while etcd does not answer, the agent serves its API and forwards on its last state as
// before, and the thread retries with a bounded backoff. Once etcd answers again it renews the
// lease if it still lives (an etcd restart keeps leases), registers anew (new lease, same key)
// if it lapsed, and checks the key is still its own.
//
// Who holds the key: the agent's first registration takes it whatever it holds (the key a
// killed agent left, bound to a lease that has not lapsed yet, is replaced at once). Later
// registrations (after a lapsed lease) write it only where it is gone: a key written meanwhile
// under another lease belongs to another agent of the same node name (a hot upgrade's new
// agent, or a second node given the same name), and this one stands back, logs it, and takes
// the key again only if it goes.
//
// Leaving: on shutdown the agent revokes its lease (Leave), so the key goes at once. On a hot
// upgrade handover the old agent only stops renewing (Stop): the new agent has registered the
// same key under a lease of its own, which the old lease's lapse no longer touches, so the
// node never leaves the fleet during an upgrade.
//
//   std::shared_ptr<FleetMetrics> metrics = std::make_shared<FleetMetrics>();
//   std::unique_ptr<FleetRegistration> registration =
//       FleetRegistration::Start(*std::move(options), metrics);
//   ...
//   registration->Leave();  // shutdown; Stop() on a handover
#ifndef TUNNELAGENT_AGENT_FLEET_REGISTRATION_H_
#define TUNNELAGENT_AGENT_FLEET_REGISTRATION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/etcd/client.h"
#include "common/fleet_keys.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "tunnelagent/v1/fleet.pb.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::agent {

// ---- The key and its pieces ------------------------------------------------------------------

// The registration's capabilities, from what GetAgentInfo reports: its modes as iproute2 names
// them, its features, its limits.
v1::Capabilities CapabilitiesOf(const v1::AgentInfo& info);

// ---- Options, and the agent's flags that make them --------------------------------------------

struct FleetRegistrationOptions {
  etcd::ClientOptions etcd;
  std::string key;  // fleet::NodeKey(fleet, node)
  // What is written; registered_at is set at each registration.
  v1::NodeRegistration registration;
  // The lease's TTL (whole seconds, etcd's unit): a dead agent's key goes at most this long
  // after its last renewal. Renewed every third of it.
  absl::Duration lease_ttl = absl::Seconds(15);
  // Between attempts while etcd does not answer or refuses: from the first, doubling, up to
  // the most (at most a third of the TTL, so that etcd back means registered again soon).
  absl::Duration first_retry = absl::Milliseconds(250);
  absl::Duration max_retry = absl::Seconds(5);
};

// The agent's --fleet_* flags, as given (main.cc reads them; this checks them).
struct FleetFlags {
  std::string etcd;                // --fleet_etcd: empty, off
  std::string fleet;               // --fleet
  std::string node;                // --node_name, else $NODE_NAME, else the host name
  std::string advertise_prefixes;  // --advertise_prefixes
  std::string underlay;            // --fleet_underlay
  std::string agent_endpoint;      // --fleet_agent_endpoint
  std::string grpc_listen;         // --grpc_listen, to derive the agent endpoint from
  absl::Duration lease_ttl = absl::Seconds(15);
  std::string etcd_ca;
  std::string etcd_cert;
  std::string etcd_key;
  std::string etcd_user;
  std::string etcd_password_file;
};

// The bounds of --fleet_lease_ttl: below 2 s etcd raises the TTL itself (its minimum follows
// its election timeout); above an hour a dead node would stay a member for that long.
inline constexpr absl::Duration kMinLeaseTtl = absl::Seconds(2);
inline constexpr absl::Duration kMaxLeaseTtl = absl::Hours(1);

// nullopt when --fleet_etcd is empty (no fleet; any other --fleet_* flag is then an error).
// Reads the password file and checks the TLS files can be read. INVALID_ARGUMENT naming the
// flag and the value for every bad one. The registration's version and capabilities are left
// for the caller (they come from the running agent).
absl::StatusOr<std::optional<FleetRegistrationOptions>> FleetOptionsFromFlags(
    const FleetFlags& flags);

// ---- Metrics ---------------------------------------------------------------------------------

// tunnelagent_fleet_registered (gauge, 1/0), tunnelagent_fleet_etcd_errors_total and
// tunnelagent_fleet_registrations_total (counters). Exported from the agent's start, fleet or
// not (0 without --fleet_etcd).
class FleetMetrics final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;

  // The key is in etcd until `until` at least (the lease's expiry, as of the last renewal).
  void RegisteredUntil(absl::Time until);
  // The key is not this agent's (any more): a lapsed lease, another agent's key, a revoke.
  void NotRegistered();
  void AddEtcdError() { etcd_errors_.fetch_add(1, std::memory_order_relaxed); }
  void AddRegistration() { registrations_.fetch_add(1, std::memory_order_relaxed); }

  bool registered() const;
  uint64_t etcd_errors() const { return etcd_errors_.load(std::memory_order_relaxed); }
  uint64_t registrations() const { return registrations_.load(std::memory_order_relaxed); }

 private:
  mutable absl::Mutex mu_;
  absl::Time registered_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::atomic<uint64_t> etcd_errors_{0};
  std::atomic<uint64_t> registrations_{0};
};

// ---- The registration ------------------------------------------------------------------------

class FleetRegistration {
 public:
  // Connects and registers on a thread of its own; returns at once, etcd up or not.
  static std::unique_ptr<FleetRegistration> Start(FleetRegistrationOptions options,
                                                  std::shared_ptr<FleetMetrics> metrics);
  ~FleetRegistration();  // Stop()

  FleetRegistration(const FleetRegistration&) = delete;
  FleetRegistration& operator=(const FleetRegistration&) = delete;

  // Stops renewing: the lease, and the key if it still holds it, lapse after the TTL. A hot
  // upgrade's old agent (the new one holds the key under its own lease), and what a killed
  // agent amounts to. Waits for a call in progress (bounded by the etcd call timeout).
  void Stop();
  // Stop(), then revokes the lease: the key goes at once. The agent's shutdown. Bounded by the
  // etcd call timeout; etcd down, the key lapses with the lease instead (logged).
  void Leave();

  // The lease the key is bound to; 0 while none (not yet registered, or lost). For tests.
  int64_t lease() const;
  const std::string& key() const { return options_.key; }

 private:
  FleetRegistration(FleetRegistrationOptions options, std::shared_ptr<FleetMetrics> metrics);

  // What one round did: renewed or registered (wait the renew interval), failed (wait the
  // backoff), or found the lease gone (register again at once).
  enum class Round { kDone, kFailed, kAgain };

  void Run();
  Round Connect();
  Round Register();
  Round Renew(int64_t lease);
  // Once etcd answers after failing: is the key still bound to `lease`?
  Round CheckKey(int64_t lease);
  // While another agent holds the key: takes it back once it has gone.
  Round WaitForKeyGone();
  // Writes the registration under `lease`: unconditionally the first time, only where the key
  // is gone after that. False: another agent holds it.
  absl::StatusOr<bool> Write(int64_t lease, bool take_over);
  // Counts, and logs the first failure of a run and then at most once a minute.
  void EtcdFailed(absl::string_view what, const absl::Status& status);
  void EtcdAnswered();
  // Waits `d` or until Stop; false once stopping.
  bool Sleep(absl::Duration d);
  void SetLease(int64_t lease);

  const FleetRegistrationOptions options_;
  const std::shared_ptr<FleetMetrics> metrics_;
  // The thread's alone until it is joined; then Leave's.
  std::unique_ptr<etcd::Client> client_;
  bool ever_registered_ = false;
  bool superseded_ = false;   // another agent's registration holds the key
  int failures_ = 0;          // calls failed in a row
  absl::Time failing_since_;  // the first of them
  absl::Time connected_at_;   // when client_ was made
  absl::Time last_failure_log_ = absl::InfinitePast();

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t lease_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: started once everything above is set
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_FLEET_REGISTRATION_H_
