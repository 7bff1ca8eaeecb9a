// The agent's core: the desired tunnels, their devices and their place in the dataplane.
// Every change is checked first, applied to the kernel and the dataplane, persisted, and
// rolled back if any step fails, so a failed request leaves nothing behind. Every committed
// change gets a revision and an event, which WatchTunnels streams.
//
// Two locks, so that no reader waits behind the kernel or the disk. `change_mu_` serializes
// everything that changes tunnels (requests, the restore, the refresh's repairs, Shutdown)
// and is held across their netlink calls, dataplane commands and state file writes. Readers
// (Get, List, TakeSnapshot, EventsAfter, ForEachTunnel: the API's reads, watchers, metrics
// scrapes) take only `mu_`, which guards a published copy of every tunnel, the revision and
// the events; a change is published under `mu_` in one step once its kernel work and its
// write are done, so a reader sees a request's result whole or not at all. `mu_` is never
// held across a system call. Order: change_mu_, then mu_. The flush that makes a change
// durable holds neither: a request waits for it after releasing change_mu_ and before it
// answers, so requests arriving meanwhile are committed and share the next flush.
//
// Start at any scale: BeginRestore reads the state file (every saved tunnel is known and
// reported from then on, DOWN with a reason starting "restoring"); FinishRestore, on a
// thread of its own while the API serves, brings the tunnels back. Data plane first: after a
// crash every device the dead agent left is attached and forwarding before anything else
// (UP, with a reason starting "verifying"), then all of them are checked against the desired
// state with a few dumps and their repairs sent together; tunnels without a kept device are
// made one by one after that. Until it is all done, the check included (a few hundred ms for
// 10,000 kept tunnels), requests that change tunnels answer UNAVAILABLE saying how far it is
// ("restoring the saved tunnels: 1200 of 10000 done"): a client retries (the tunnels it would
// change are not in their final state yet, and a change racing the restore could not be
// checked against tunnels still to come), and no request thread waits minutes for a lock. The
// periodic refresh does nothing meanwhile and reads the kernel in full once the restore is
// done.
#ifndef TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_
#define TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_

#include <array>
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/link_control.h"
#include "agent/peer_spec.h"
#include "agent/state_store.h"
#include "agent/tunnel_fields.h"
#include "agent/tunnel_index.h"
#include "agent/tunnel_spec.h"
#include "agent/tunnel_status.h"
#include "agent/underlay_guard.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::agent {

// The label ApplyTunnels manages tunnels by.
inline constexpr char kOwnerLabel[] = "owner";

struct TunnelView {
  TunnelSpec spec;
  TunnelStatus status;
};

struct UpdateResult {
  TunnelView tunnel;
  bool recreated = false;
  std::vector<std::string> changed_fields;  // proto field names, e.g. "remote", "routes"
};

enum class ChangeAction { kUnchanged, kCreate, kUpdate, kRecreate, kDelete };

struct PlannedChange {
  std::string name;
  ChangeAction action = ChangeAction::kUnchanged;
  std::vector<std::string> changed_fields;
};

struct ApplyResult {
  std::vector<PlannedChange> changes;  // by name
  uint64_t revision = 0;
};

struct TunnelEvent {
  enum class Type {
    kAdded,
    kUpdated,
    kDeleted,
    kStateChanged,
    kRepaired,
    // A peer of a multipoint tunnel (`peer`; `tunnel` holds only the tunnel's name and mode).
    // A tunnel deleted takes its peers with it: no event for each of them.
    kPeerAdded,
    kPeerUpdated,
    kPeerDeleted,
    kPeerStateChanged,
  };
  Type type = Type::kAdded;
  uint64_t revision = 0;
  // After the event; as it was, for kDeleted. Shared, never changed: the history keeps
  // thousands of events and every watcher copies those it has not seen (the peer events of one
  // change share one view of their tunnel).
  std::shared_ptr<const TunnelView> tunnel;
  // kRepaired: what was put back ("address 10.0.0.1/30 added back"); kStateChanged and
  // kPeerStateChanged: the reason.
  std::string detail;
  std::shared_ptr<const PeerView> peer;  // kPeer*: after the event; as it was, for kPeerDeleted
};

struct Snapshot {
  uint64_t revision = 0;
  std::vector<TunnelView> tunnels;  // by name
  // The peers of the multipoint tunnels: by tunnel, then by name.
  std::vector<std::pair<std::string, PeerView>> peers;
};

struct PeerApplyResult {
  std::vector<PlannedChange> changes;  // those that change something, by name
  size_t unchanged = 0;
  uint64_t revision = 0;
};

// What a peer of a multipoint tunnel holds that no other peer of its tunnel may, as a compact
// key: its underlay address, or one of its allowed prefixes (a prefix's host bits are zero, so
// equal prefixes have equal keys).
struct PeerClaim {
  std::array<uint8_t, 16> bytes{};
  uint8_t length = 0;
  uint8_t family = 0;
  template <typename H>
  friend H AbslHashValue(H h, const PeerClaim& k) {
    return H::combine(std::move(h), k.bytes, k.length, k.family);
  }
  friend bool operator==(const PeerClaim& a, const PeerClaim& b) {
    return a.bytes == b.bytes && a.length == b.length && a.family == b.family;
  }
};

class TunnelManager {
 public:
  struct Options {
    // The underlay MTU assumed when no route to the remote exists yet (the kernel's
    // ETH_DATA_LEN fallback).
    uint32_t default_underlay_mtu = 1500;
    // Creates beyond this many tunnels fail with RESOURCE_EXHAUSTED.
    uint32_t max_tunnels = 4096;
    // Events kept for watchers that reconnect with a revision.
    size_t event_history = 4096;
    // On Shutdown leave the devices in place (a quick restart re-attaches to them) instead of
    // removing them.
    bool keep_devices = false;
    // While requests keep changing the kernel, RefreshStates reads it only once they have
    // paused this long (or at the latest after refresh_max_put_off): a reading taken during a
    // burst is stale before it is used, and reading thousands of devices takes a CPU from the
    // requests. Zero: every call reads.
    absl::Duration refresh_pause = absl::ZeroDuration();
    absl::Duration refresh_max_put_off = absl::Seconds(5);
  };

  // The reason a tunnel carries (state DOWN) from BeginRestore until FinishRestore got to it.
  static constexpr char kRestoringReason[] =
      "restoring: the agent has just started and is bringing the saved tunnels back";
  // The reason a tunnel carries (state UP: its packets move) from the moment the restore
  // started its dataplane on the device an earlier run left, until the device's addresses,
  // routes, MTU and link state are checked (and repaired).
  static constexpr char kVerifyingReason[] =
      "verifying: forwarding on the device kept from the agent's last run; its addresses, "
      "routes, MTU and link state are being checked";

  TunnelManager(LinkControl* links, dataplane::PacketEngine* engine, StateStore* store,
                Options options);
  ~TunnelManager();

  // Brings back every tunnel of the state store, re-attaching to devices the agent left in
  // place and removing devices it created that are no longer desired; devices it did not
  // create are never touched. A tunnel that cannot be brought up stays desired, in state
  // ERROR with the reason. Fails only when the state cannot be read.
  // BeginRestore and then FinishRestore, in this thread.
  absl::Status Restore();
  // The fast part, before the API serves: reads the state file; every saved tunnel is known
  // from here on, DOWN with kRestoringReason. Fails only when the state cannot be read.
  absl::Status BeginRestore();
  // The slow part: devices, addresses, routes and dataplane, tunnel by tunnel, each published
  // (and a STATE_CHANGED event) as it comes up or fails. Stops early when Shutdown begins.
  void FinishRestore();
  // FinishRestore on a thread of the manager's, which Shutdown waits for.
  void FinishRestoreInBackground();
  // UNAVAILABLE ("restoring the saved tunnels: N of M done") while FinishRestore has not
  // finished; OK otherwise.
  absl::Status RestoreStatus() const;
  // Waits up to `timeout` for FinishRestore to be done; whether it is.
  bool WaitForRestore(absl::Duration timeout) const;
  // How many tunnels carry kVerifyingReason now (0 once the restore is done).
  size_t VerifyingCount() const;

  // INVALID_ARGUMENT / UNIMPLEMENTED from validation; ALREADY_EXISTS for a taken name or a
  // (mode, local, remote, input key) another tunnel carries; FAILED_PRECONDITION for an address or
  // route that overlaps another tunnel's; RESOURCE_EXHAUSTED beyond max_tunnels.
  absl::StatusOr<TunnelView> Create(const TunnelSpec& spec);
  absl::StatusOr<TunnelView> Get(const std::string& name) const;
  std::vector<TunnelView> List() const;  // by name
  // One page of the tunnels by name: up to `limit` of those named after `after` ("": from the
  // first) that `match` accepts, and whether another one follows. Only the page is copied and
  // its counters summed, so listing N tunnels in pages costs O(N) in all, not O(N) a page.
  struct Page {
    std::vector<TunnelView> tunnels;
    bool more = false;
  };
  Page ListPage(const std::string& after, size_t limit,
                absl::FunctionRef<bool(const TunnelSpec&, OperState)> match) const;
  // Replaces the `fields` (proto names, UpdatableFields()) of the tunnel with those of
  // `patch`. ABORTED when `etag` is set and stale. What a change does follows each field's
  // FieldEffect (tunnel_fields.h): a new device (mode), a new engine tunnel (what wraps or
  // matches packets), or a change in place; a change of the MTU in effect replaces the tunnel
  // in the engine too, and an automatic MTU follows the output GRE options.
  absl::StatusOr<UpdateResult> Update(const std::string& name, const TunnelSpec& patch,
                                      const std::set<std::string>& fields, const std::string& etag);

  absl::Status Delete(const std::string& name, const std::string& etag = "");
  // Makes the tunnels labelled owner=`owner` exactly `desired` (each gets the label), with
  // `prune` deleting the owner's others; all of it or nothing. FAILED_PRECONDITION when a
  // desired name belongs to a tunnel without that owner label.
  absl::StatusOr<ApplyResult> Apply(const std::string& owner, std::vector<TunnelSpec> desired,
                                    bool prune, bool dry_run);

  // ---- Peers of multipoint tunnels (tunnel_peers.cc) --------------------------------------
  // Each peer is a record of its own (in the state store too): a change costs its own size,
  // however many peers the tunnel has, and never touches the device. NOT_FOUND for a tunnel
  // (or peer) that does not exist; FAILED_PRECONDITION for a tunnel that is not multipoint;
  // ALREADY_EXISTS for a name, an underlay address, or an allowed prefix another peer of the
  // tunnel has (nested prefixes are fine); RESOURCE_EXHAUSTED beyond
  // TunnelLimits::max_peers; ABORTED for a stale etag.
  absl::StatusOr<PeerView> CreatePeer(const std::string& tunnel, const PeerSpec& peer);
  absl::StatusOr<PeerView> GetPeer(const std::string& tunnel, const std::string& name) const;
  struct PeerPage {
    std::vector<PeerView> peers;
    bool more = false;
  };
  // Up to `limit` peers named after `after` ("": from the first), by name.
  absl::StatusOr<PeerPage> ListPeers(const std::string& tunnel, const std::string& after,
                                     size_t limit) const;
  // Makes the peer `desired.name` `desired` (its desired fields); `changed_fields` (API
  // names) says what differed.
  absl::StatusOr<PeerView> UpdatePeer(const std::string& tunnel, const PeerSpec& desired,
                                      const std::string& etag,
                                      std::vector<std::string>* changed_fields = nullptr);
  absl::Status DeletePeer(const std::string& tunnel, const std::string& name,
                          const std::string& etag = "");
  // Makes the tunnel's peers labelled owner=`owner` exactly `desired` (each gets the label),
  // with `prune` deleting the owner's others; all or nothing, in one engine change and one
  // record. FAILED_PRECONDITION when a desired name is a peer without that owner label.
  absl::StatusOr<PeerApplyResult> ApplyPeers(const std::string& tunnel, const std::string& owner,
                                             std::vector<PeerSpec> desired, bool prune,
                                             bool dry_run);
  // Calls `visit(tunnel name, peers, up, down)` for each multipoint tunnel as last published:
  // for metrics.
  template <typename Visitor>
  void ForEachPeerCount(Visitor visit) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [tunnel, peers] : published_peers_) {
      size_t down = 0;
      for (const auto& [name, peer] : peers) down += peer->state != OperState::kUp;
      visit(tunnel, peers.size() - down, down);
    }
  }

  // Whether a change of many peers was committed since the last call. What it built (the
  // request, the records, the engine's copies) is free once it is answered, but stays resident
  // in the allocator's arenas: the caller gives it back to the system (malloc_trim) a little
  // later, as after a metrics scrape.
  bool TakeBulkChange() { return bulk_change_.exchange(false); }

  Snapshot TakeSnapshot() const;
  uint64_t revision() const;
  // How many tunnels there are and the revision they are at, read together without copying
  // any tunnel (GetAgentInfo, which health checks call often).
  struct Census {
    size_t tunnels = 0;
    uint64_t revision = 0;
  };
  Census TakeCensus() const;
  // The events after revision `after`, waiting up to `wait` for the first one (empty when
  // none came). OUT_OF_RANGE when they are no longer all kept (or `after` is in the future):
  // the watcher must start again from a snapshot.
  absl::StatusOr<std::vector<TunnelEvent>> EventsAfter(uint64_t after, absl::Duration wait) const;

  // Makes the kernel match the desired state and records what it finds. Called by the daemon
  // whenever the kernel reports a change of links, addresses or routes, and periodically.
  // Each managed device's MTU, addresses, routes (those of the agent's route protocol) and
  // link state are compared with the desired ones; a difference is put back, counted
  // (TunnelStatus::repairs), logged and recorded as a REPAIRED event; a device removed behind
  // the agent's back is made again. A tunnel is DOWN while the route towards its remote leads
  // into a tunnel device (a loop: its packets are dropped), or while keepalive is on and the
  // engine finds the peer silent (TunnelStats::peer_alive false); ERROR while a difference
  // cannot be put back.
  // `kernel_changed` false: only the engine's verdicts (keepalive) and retries are looked at,
  // the kernel is not read (nothing was reported changed there since the last call). The
  // kernel is read without the manager's lock (requests are not kept waiting behind a dump
  // and a route lookup per tunnel); a reading that a request overtook is not used, and the
  // next call reads again.
  void RefreshStates(bool kernel_changed = true);

  // Stops every tunnel's dataplane; removes the devices unless keep_devices: every device of
  // the agent's with one request the kernel handles as a batch (LinkControl::
  // RemoveAgentDevices), else one by one (each about 40 ms of RCU grace periods; what remains
  // in the batch is the kernel's own teardown of each TUN device, a few ms). A restore still
  // running stops first. The desired state stays on disk.
  void Shutdown();

  // A handover to a new agent (a hot upgrade): once Freeze returns, no change is in progress,
  // the last one is durable, and every change answers UNAVAILABLE ("the agent is handing
  // over to a new agent; retry"); reads still answer. Unfreeze: the new agent went away
  // before it served, changes are taken again.
  void Freeze();
  void Unfreeze();
  bool frozen() const { return frozen_.load(); }
  // The device of every tunnel that has one (its fd stays the manager's), for the handover.
  struct HandoverDevice {
    std::string name;
    int fd = -1;
    bool tap = false;
  };
  std::vector<HandoverDevice> DevicesForHandover();

  uint32_t max_tunnels() const { return options_.max_tunnels; }
  // The state store's commits, syncs and compactions, for metrics.
  StateStoreStats store_stats() const { return store_->stats(); }

  // Calls `visit(spec, status, counters)` for each tunnel as last published, under the
  // readers' lock only (no change in progress holds it): for metrics, read at scrape time.
  // `counters` is null for a tunnel that has never run.
  template <typename Visitor>
  void ForEachTunnel(Visitor visit) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, tunnel] : published_) {
      visit(tunnel.spec, LiveStatus(tunnel), tunnel.counters.get());
    }
  }

 private:
  // What readers see of one tunnel: a copy of its Entry, taken when a change is published.
  struct Published {
    TunnelSpec spec;
    TunnelStatus status;  // but the counters, which LiveStatus reads when asked
    bool has_device = false;
    std::shared_ptr<dataplane::TunnelStats> counters;
  };

  // One peer of a multipoint tunnel: never changed once made (a change makes a new one), so
  // that the change path and the readers share it, one copy for both.
  struct PeerRecord {
    PeerSpec spec;
    uint32_t id = 0;  // the engine's handle: never reused within a run
    std::shared_ptr<dataplane::PeerStats> stats;
    OperState state = OperState::kUp;  // DOWN while its keepalive goes unanswered
    std::string reason;
  };
  using PeerRef = std::shared_ptr<const PeerRecord>;
  // The peers of one multipoint tunnel and what they hold, for the checks across peers.
  // Shared by the Entry objects that stand for the tunnel in turn (a device made anew).
  struct PeerSet {
    std::map<std::string, PeerRef> peers;  // by name
    // Who holds an underlay address or a prefix: the name, as the key of `peers`.
    absl::flat_hash_map<PeerClaim, const std::string*> by_underlay;
    absl::flat_hash_map<PeerClaim, const std::string*> by_prefix;
    uint32_t next_id = 1;
  };

  struct Entry {
    TunnelSpec spec;
    std::shared_ptr<PeerSet> peers;  // multipoint tunnels, made with their first peer
    std::unique_ptr<Device> device;  // null when the tunnel could not be brought up
    std::shared_ptr<dataplane::TunnelStats> counters;
    uint32_t mtu = 0;
    bool in_engine = false;  // the engine is moving its packets
    OperState state = OperState::kError;
    std::string reason;  // why not UP
    // When to try again to make a device that vanished (InfiniteFuture: not trying).
    absl::Time repair_at = absl::InfiniteFuture();
    // The addresses its underlay uses (remote, local, the route's gateway and source), as last
    // looked up: what no tunnel's address or route may cover.
    std::vector<UnderlayAddress> underlay;
    uint64_t state_changes = 0;
    std::map<std::string, uint64_t> repairs;  // by what: address, route, mtu, link
    // What the last look at the kernel found wrong (a loop, a repair that failed): kept until
    // the next look, whatever keepalive says meanwhile. Empty: nothing.
    OperState kernel_state = OperState::kUp;
    std::string kernel_reason;
  };
  class Transaction;

  static Published PublishedOf(const Entry& entry);
  // `tunnel`'s status with its counters as they are now.
  static TunnelStatus LiveStatus(const Published& tunnel);
  // Makes the published copy of `name` what tunnels_ has (removed when it has none).
  void PublishLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_, mu_);
  // Entry and event at once, for a change outside a transaction (a repair, a state change).
  void PublishEvent(const Entry& entry, TunnelEvent::Type type, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // The restore of the saved tunnels in `restoring` (FinishRestore's work): the devices an
  // earlier run left are attached and forwarding first (AttachKept), then checked in bulk
  // (the refresh's RefreshFromKernel, for all at once); the others are brought up after
  // them, one by one.
  void RestoreDevices(std::vector<Entry*> restoring) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Attaches the kept device of each of `restoring` that has one in `left_behind`, with the
  // MTU `kernel` shows for it, and starts its dataplane: UP with kVerifyingReason, published
  // at once. Those attached are returned; a device attached whose dataplane did not start
  // goes to `unused` for BringUp.
  std::vector<Entry*> AttachKept(const std::vector<Entry*>& restoring,
                                 const std::set<std::string>& left_behind,
                                 const std::map<int, DeviceState>& kernel,
                                 std::map<Entry*, std::unique_ptr<Device>>& unused)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // A change of the kernel that makes one difference good, and what it records.
  struct Repair {
    LinkChange change;
    const char* what = "";  // TunnelStatus::repairs' key: link, mtu, address, route
    std::string done;       // the REPAIRED event's detail
    std::string failed;     // the failure's words, before the kernel's
    // The answer that means there was nothing to do: NOT_FOUND (gone already) for a removal,
    // ALREADY_EXISTS for an address (there, only not listed: an IPv6 link-local one).
    absl::StatusCode nothing_to_do = absl::StatusCode::kOk;
  };
  // What Reconcile does to `device` (the tunnel's, or one being taken over for it), in its
  // order; with `undesired_only`, only RemoveUndesired's part.
  std::vector<Repair> PlanRepairs(const Entry& entry, const Device& device,
                                  const DeviceState& kernel, bool undesired_only) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // The repairs planned for many tunnels made at once: all sent together (LinkControl::
  // ApplyChanges, many in flight), each recorded as Reconcile records it. For each tunnel, the
  // first difference that could not be put back, or OK.
  std::vector<absl::Status> ApplyRepairs(
      const std::vector<std::pair<Entry*, std::vector<Repair>>>& plans)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // The MTU `spec` needs (MtuFor) with the underlay path's MTU taken from `route` when the
  // lookup learnt it.
  uint32_t MtuWith(const TunnelSpec& spec, const absl::StatusOr<UnderlayRoute>& route)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // RoutesTo of the distinct remotes of `entries` (thousands of tunnels share a few), by
  // tunnel name.
  std::map<std::string, absl::StatusOr<UnderlayRoute>> RoutesOf(
      const std::vector<std::pair<std::string, dataplane::IpAddress>>& remotes);

  // `check_conflicts` false: the caller checked the whole resulting set already (Apply).
  // `looked_up`: the tunnel's underlay addresses when the caller has looked them up (Apply).
  absl::Status CreateLocked(const TunnelSpec& spec, Transaction& tx, bool check_conflicts = true,
                            const std::vector<UnderlayAddress>* looked_up = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  absl::Status DeleteLocked(const std::string& name, Transaction& tx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  absl::StatusOr<UpdateResult> UpdateLocked(const std::string& name, const TunnelSpec& desired,
                                            Transaction& tx, bool check_conflicts = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Removes from the kernel the routes and addresses of tunnel `name` that `desired` no longer
  // has, so that another tunnel of the same Apply can take them whatever the order.
  absl::Status ReleasePrefixes(const std::string& name, const TunnelSpec& desired, Transaction& tx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Creates, configures and starts the device of `entry`; on failure nothing is left.
  // `attached`: a device of an earlier run already taken over for it (Restore).
  absl::Status BringUp(Entry& entry, std::unique_ptr<Device> attached = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Stops the dataplane of `entry` (its device stays).
  void StopDataplane(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Before a change to the kernel (a request's, or repairs): a refresh's reading taken
  // before is stale (kernel_generation_).
  void KernelChanging() ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) {
    ++kernel_generation_;
    kernel_changed_at_ = absl::Now();
  }
  absl::Status StartDataplane(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // What the engine is handed for `entry` on `device` (its counters made on first use).
  dataplane::EngineTunnel EngineTunnelOf(Entry& entry, const Device& device, uint32_t mtu)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // StartDataplane of each (each with a device), in one engine call; their answers in order.
  std::vector<absl::Status> StartDataplanes(const std::vector<Entry*>& entries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Rules across tunnels, `spec` against every tunnel but `ignore`.
  absl::Status CheckConflicts(const TunnelSpec& spec, const std::string& ignore) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Appends the change to tunnels `touched` (as tunnels_ has them now: present ones whole,
  // missing ones as removed) to the state store; the sequence number to wait for.
  absl::StatusOr<uint64_t> SaveLocked(const std::set<std::string>& touched) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // After change_mu_ is released: until the change `sequence` is durable. An error says the
  // change is in effect but may not survive a crash of the machine.
  absl::Status WaitDurable(uint64_t sequence) const ABSL_LOCKS_EXCLUDED(change_mu_);
  // Brings index_ up to date with tunnels_: the names marked changed, or all of them.
  void SyncIndex() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Whoever changes a tunnel's spec or underlay, or adds or removes one, outside a
  // transaction says so here (a transaction does it for every name it touches, when it
  // publishes them).
  void IndexChanged(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) {
    index_stale_.insert(name);
  }
  void RecordEvent(TunnelEvent::Type type, const TunnelView& view, std::string detail = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives `event` the next revision and appends it to the history, for the watchers.
  void PushEvent(TunnelEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends a peer event to the history (a revision of its own). `tunnel`: PeerEventTunnel's.
  void RecordPeerEvent(TunnelEvent::Type type, std::shared_ptr<const TunnelView> tunnel,
                       PeerView peer, std::string detail = "") ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a peer event says of its tunnel: the name and mode.
  static std::shared_ptr<const TunnelView> PeerEventTunnel(const TunnelSpec& tunnel);

  // What a change answers while the manager is frozen (Freeze).
  static absl::Status FrozenError();

  // ---- Peers (tunnel_peers.cc) ----
  // The multipoint tunnel `name`, for a peer change: NOT_FOUND, FAILED_PRECONDITION (not
  // multipoint), UNAVAILABLE (restoring, frozen).
  absl::StatusOr<Entry*> PeerTunnelLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // One change of a tunnel's peers: `upserted` (whole, new or replacing the peer of the same
  // name) and `removed` (names). Checked against the other peers, handed to the engine,
  // recorded, published with an event each; nothing changed when it fails. The sequence to
  // wait for (WaitDurable), 0 when nothing changed.
  absl::StatusOr<uint64_t> ChangePeersLocked(Entry& entry, std::vector<PeerSpec> upserted,
                                             const std::vector<std::string>& removed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // ALREADY_EXISTS or RESOURCE_EXHAUSTED when the change cannot be made, checked without
  // changing anything.
  absl::Status CheckPeerChange(const Entry& entry, const std::vector<PeerSpec>& upserted,
                               const std::vector<std::string>& removed) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Puts `spec`'s underlay and prefixes in `set`'s lookups, held by `name` (a key of
  // set.peers), or takes them out.
  static void IndexPeer(PeerSet& set, const std::string& name, const PeerSpec& spec);
  static void UnindexPeer(PeerSet& set, const PeerSpec& spec);
  // The engine's view of a peer.
  static dataplane::EnginePeer EnginePeerOf(const PeerRecord& peer);
  // The published copy of the peers of a tunnel that is gone or no longer multipoint.
  void UnpublishPeersLocked(const std::string& tunnel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    published_peers_.erase(tunnel);
  }
  static PeerView PeerViewOf(const PeerRecord& peer);
  // The published peers of `tunnel`: NOT_FOUND, or FAILED_PRECONDITION for a point-to-point
  // tunnel.
  absl::StatusOr<const std::map<std::string, PeerRef>*> PublishedPeersLocked(
      const std::string& tunnel) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Restore: the saved peers of the tunnels just loaded.
  void LoadPeers(std::vector<SavedPeer> saved) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // RefreshStates' part for peers with keepalive: each whose engine verdict changed gets its
  // state and a kPeerStateChanged event.
  void RefreshPeerStates() ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  TunnelStatus StatusOf(const Entry& entry) const;
  uint32_t MtuFor(const TunnelSpec& spec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);

  // The kernel's route towards `spec`'s remote: its underlay addresses, and the tunnel device
  // it leads into when it does (a loop), else "".
  struct UnderlayLookup {
    std::vector<UnderlayAddress> addresses;
    std::string loop_device;
  };
  UnderlayLookup LookUpUnderlay(const TunnelSpec& spec) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // The same from a route looked up already; `tunnel_devices` (tunnel names by their devices'
  // ifindex) when the caller has it, else the tunnels are searched.
  UnderlayLookup UnderlayFrom(const TunnelSpec& spec, const absl::StatusOr<UnderlayRoute>& route,
                              const std::map<int, std::string>* tunnel_devices = nullptr) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // The underlay rule (underlay_guard.h) for `spec`, whose underlay is `underlay`, against
  // every tunnel but `ignore` and itself, both ways.
  absl::Status CheckUnderlay(const TunnelSpec& spec, const std::vector<UnderlayAddress>& underlay,
                             const std::string& ignore) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Puts back what differs between `kernel` (the device as it is) and the desired state;
  // the first difference that cannot be put back, or OK.
  absl::Status Reconcile(Entry& entry, const DeviceState& kernel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // The kernel side of RefreshStates for tunnels with a device: each made again when removed,
  // else reconciled (the repairs of all of them sent together), and its underlay looked up
  // again from `routes` (by tunnel name; kernel_state, kernel_reason).
  void RefreshFromKernel(const std::vector<Entry*>& entries,
                         const std::map<int, DeviceState>& devices,
                         const std::map<std::string, absl::StatusOr<UnderlayRoute>>& routes,
                         const std::map<int, std::string>& tunnel_devices)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Removes from `device` (the tunnel's, or one being taken over for it) the routes and
  // addresses `kernel` shows that the desired state does not have, each a repair; the first
  // that could not be removed, or OK (one found gone already is no failure).
  absl::Status RemoveUndesired(Entry& entry, const Device& device, const DeviceState& kernel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  // Reconcile of one tunnel's device, read from the kernel now.
  absl::Status ReconcileNow(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_);
  void RecordRepair(Entry& entry, const char* what, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // Records a change of operational state (counted, logged, a STATE_CHANGED event); nothing
  // when it is the same.
  void SetState(Entry& entry, OperState state, std::string reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) ABSL_LOCKS_EXCLUDED(mu_);

  LinkControl* const links_;
  dataplane::PacketEngine* const engine_;
  StateStore* const store_;
  const Options options_;

  // The writers' lock (see the top of this file): held across kernel calls and disk writes.
  absl::Mutex change_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::map<std::string, std::unique_ptr<Entry>> tunnels_ ABSL_GUARDED_BY(change_mu_);
  // Counts the requests that may have changed the kernel: RefreshStates reads the kernel
  // without the lock and uses what it read only if no request came in between.
  uint64_t kernel_generation_ ABSL_GUARDED_BY(change_mu_) = 0;
  // When a request (or a repair) last changed the kernel, and since when RefreshStates has put
  // off reading it because of such changes (InfiniteFuture: it has not; Options::refresh_pause).
  absl::Time kernel_changed_at_ ABSL_GUARDED_BY(change_mu_) = absl::InfinitePast();
  absl::Time reading_put_off_since_ ABSL_GUARDED_BY(change_mu_) = absl::InfiniteFuture();
  // A refresh whose reading went stale: the next one reads the kernel whatever it is told.
  bool refresh_again_ ABSL_GUARDED_BY(change_mu_) = false;
  // Which tunnels may clash with a new or changed one (tunnel_index.h), so that CheckConflicts,
  // CheckUnderlay and Apply do not scan every tunnel. Brought up to date by SyncIndex when
  // read: the names in index_stale_ are indexed again, or, with index_rebuild_ (the restore
  // looked every underlay up) or a count that differs from tunnels_', everything.
  mutable TunnelIndex index_ ABSL_GUARDED_BY(change_mu_);
  mutable std::set<std::string> index_stale_ ABSL_GUARDED_BY(change_mu_);
  mutable bool index_rebuild_ ABSL_GUARDED_BY(change_mu_) = true;
  // Links a route lookup led to that are no tunnel's device (the underlay's), so that
  // UnderlayFrom does not search every tunnel for them again. Cleared when a device that
  // existed before is attached (a restore, a device of an earlier run taken over).
  mutable std::set<int> not_tunnel_devices_ ABSL_GUARDED_BY(change_mu_);

  // The readers' lock: only ever held to copy in or out.
  mutable absl::Mutex mu_;
  std::map<std::string, Published> published_ ABSL_GUARDED_BY(mu_);
  // The peers of multipoint tunnels, by tunnel then name.
  std::map<std::string, std::map<std::string, PeerRef>> published_peers_ ABSL_GUARDED_BY(mu_);
  mutable absl::CondVar changed_;  // signalled on every new revision
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<TunnelEvent> history_ ABSL_GUARDED_BY(mu_);
  // From BeginRestore until FinishRestore is done: how many saved tunnels it has got to.
  bool restoring_ ABSL_GUARDED_BY(mu_) = false;
  size_t restore_done_ ABSL_GUARDED_BY(mu_) = 0;
  size_t restore_total_ ABSL_GUARDED_BY(mu_) = 0;
  size_t restore_verifying_ ABSL_GUARDED_BY(mu_) = 0;  // forwarding, not yet checked
  // The saved tunnels BeginRestore found valid, for FinishRestore.
  std::vector<std::string> to_restore_ ABSL_GUARDED_BY(change_mu_);

  std::atomic<bool> bulk_change_{false};  // TakeBulkChange
  // Set when Shutdown begins: a restore in progress stops between two tunnels.
  std::atomic<bool> stopping_{false};
  // Freeze: written under change_mu_, so a change that holds it sees the latest value.
  std::atomic<bool> frozen_{false};
  std::thread restore_thread_;  // FinishRestoreInBackground's; joined by Shutdown
};

// Why two tunnels cannot both exist: the same receive match (ALREADY_EXISTS: same mode, as
// each mode has its own receive table in the kernel, same local and remote, and for GRE the
// same input key) or overlapping addresses / routes (FAILED_PRECONDITION). OK when they can.
absl::Status ConflictBetween(const TunnelSpec& spec, const TunnelSpec& other);

// `status` with `context` in front of its message ("tunnel.mtu: ...").
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_
