#include "agent/tunnel_manager.h"

#include <algorithm>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/log.h"
#include "agent/proto_convert.h"
#include "agent/tunnel_index.h"
#include "agent/validation.h"
#include "dataplane/packet/encap.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpPrefix;
using dataplane::TunnelMode;

// The name EngineTunnelFor (the dataplane's to rewrite) still uses; the rule is the dataplane's.

// "Any" may be spelled as no address or as 0.0.0.0; both mean the same receive match.
bool SameEndpoint(const dataplane::IpAddress& a, const dataplane::IpAddress& b) {
  return a == b || (a.is_unspecified() && b.is_unspecified());
}

// What the engine needs: how to wrap sent packets and which received ones are ours.
dataplane::EngineTunnel EngineTunnelFor(const TunnelSpec& spec, const Device& device, uint32_t mtu,
                                        std::shared_ptr<dataplane::TunnelStats> counters) {
  dataplane::EngineTunnel t;
  t.name = spec.name;
  t.device_fd = device.fd();
  t.vnet_header = device.offload();
  t.udp_coalescing = device.offload() && device.udp_offload();
  t.mtu = mtu;
  dataplane::EncapParams& e = t.encap;
  e.mode = spec.mode;
  e.local = OuterAddressOf(spec.local);
  e.remote = OuterAddressOf(spec.remote);
  t.multipoint = spec.multipoint;
  const dataplane::GreOptions out = OutputGreOptions(spec);
  const std::optional<uint32_t> output_key = OutputKey(spec);
  e.has_key = out.key;
  e.key = out.key ? *output_key : 0;
  e.checksum = out.checksum;
  e.sequence = out.sequence;
  e.ttl = EffectiveTtl(spec);
  e.tos = spec.tos;
  e.inherit_tos = spec.inherit_tos;
  e.pmtudisc = spec.pmtudisc;
  e.ignore_df = spec.ignore_df;
  e.udp_dport = EffectiveFouPort(spec);
  e.udp_sport = spec.fou.enabled ? spec.fou.sport : 0;
  const dataplane::GreOptions in = InputGreOptions(spec);
  const std::optional<uint32_t> input_key = InputKey(spec);
  t.has_input_key = in.key;
  t.input_key = in.key ? *input_key : 0;
  t.input_checksum = in.checksum;
  t.input_sequence = in.sequence;
  if (spec.keepalive.enabled()) {
    t.keepalive_interval = spec.keepalive.interval;
    t.keepalive_retries = spec.keepalive.effective_retries();
  }
  t.stats = std::move(counters);
  return t;
}

// For each of `specs` (in saved order) that clashes with one before it (ConflictBetween:
// the same receive match, or overlapping prefixes), the index of one such earlier spec. A
// spec that clashes with one that itself lost still loses (saved order decides, as one by
// one did). Hash lookups and a sorted sweep, not every pair: 10,000 tunnels take
// milliseconds, not the minutes of 50 million comparisons.
std::map<size_t, size_t> EarlierClashes(const std::vector<const TunnelSpec*>& specs) {
  std::map<size_t, size_t> clashes;
  auto clash = [&clashes](size_t a, size_t b) {
    if (a == b) return;
    const size_t later = std::max(a, b);
    clashes.emplace(later, std::min(a, b));  // one earlier tunnel is enough to name
  };
  // The receive match: mode, endpoints ("any" spelled either way) and input key.
  absl::flat_hash_map<std::string, size_t> matches;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TunnelSpec& spec = *specs[i];
    const std::optional<uint32_t> key = InputKey(spec);
    std::string match =
        absl::StrCat(static_cast<int>(spec.mode), "|",
                     spec.local.is_unspecified() ? std::string() : spec.local.ToString(), "|",
                     spec.remote.ToString(), "|", key ? absl::StrCat(*key) : std::string("-"));
    auto [it, inserted] = matches.emplace(std::move(match), i);
    if (!inserted) clash(i, it->second);
  }
  // Overlapping prefixes: one contains the other. Sorted by family, network and length, a
  // prefix comes after every prefix containing it; those still open form a chain on a stack.
  struct Item {
    IpPrefix prefix;
    size_t index;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < specs.size(); ++i) {
    for (const IpPrefix& p : specs[i]->addresses) items.push_back({p.Network(), i});
    for (const IpPrefix& p : specs[i]->routes) items.push_back({p, i});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    const int fa = a.prefix.address().bit_length(), fb = b.prefix.address().bit_length();
    if (fa != fb) return fa < fb;
    if (a.prefix.address().bytes() != b.prefix.address().bytes()) {
      return a.prefix.address().bytes() < b.prefix.address().bytes();
    }
    if (a.prefix.length() != b.prefix.length()) return a.prefix.length() < b.prefix.length();
    return a.index < b.index;
  });
  std::vector<const Item*> open;
  for (const Item& item : items) {
    while (!open.empty() && !open.back()->prefix.Overlaps(item.prefix)) open.pop_back();
    for (const Item* container : open) clash(item.index, container->index);
    open.push_back(&item);
  }
  return clashes;
}

}  // namespace

// What a change gets while the agent hands over to a new one (TunnelManager::Freeze).
absl::Status TunnelManager::FrozenError() {
  return absl::UnavailableError("the agent is handing over to a new agent; retry");
}

// The changes of one request, made under change_mu_: undone in reverse order unless
// committed; committed only when the state store took the change (the tunnels it touched).
// Readers see none of it until then: the tunnels it touched are published, with its events,
// once it is committed (or, as rolled back, once it is undone, which may have left one in
// ERROR).
//
// Published when the store's write() succeeded, before the flush that makes it durable (which
// the request waits for after releasing change_mu_, so that concurrent requests share one
// flush). From the write on, the change cannot be rolled back any more: it is in the page
// cache, where a crash of the agent does not lose it, and the kernel and the dataplane have
// it already. Publishing here, under change_mu_, also keeps changes published in commit
// order; publishing after the flush would need an ordering of its own. Only a crash of the
// machine can lose a published change before its flush, and that takes the agent's devices
// and its watchers' streams with it (revisions of the next run start above, so watchers
// resync); the request itself is answered only once the change is durable.
//
// A transaction of one new tunnel (Create) writes ahead: the tunnel's record is appended, and
// its flush started, before the kernel work, so that the flush, a create's longest wait on a
// busy disk, runs beside that work instead of after it. If the work fails, a record removing
// the tunnel again follows, durable before the caller hears of the failure. A crash of the
// agent in between leaves a tunnel the caller was never answered about, saved: the next run
// makes it, as it would for a crash just after the answer.
class TunnelManager::Transaction {
 public:
  enum class Mode { kAfter, kWriteAhead };
  explicit Transaction(TunnelManager* manager, Mode mode = Mode::kAfter)
      : manager_(manager), mode_(mode) {}
  ~Transaction() {
    if (!done_) Rollback();
  }

  // `name`'s entry may change: published again however the transaction ends.
  void Touch(const std::string& name) { touched_.insert(name); }
  void OnRollback(std::function<void()> undo) { undo_.push_back(std::move(undo)); }
  void OnCommit(std::function<void()> action) { commit_.push_back(std::move(action)); }
  // `entry`'s device goes once the change is committed, with the others of the change in one
  // batch (LinkControl::RemoveDevices).
  void RemoveDeviceOnCommit(std::shared_ptr<Entry> entry) { removed_.push_back(std::move(entry)); }
  void Added(const std::string& name) { events_.push_back({TunnelEvent::Type::kAdded, name, {}}); }
  void Updated(const std::string& name) {
    events_.push_back({TunnelEvent::Type::kUpdated, name, {}});
  }
  void Deleted(TunnelView view) {
    events_.push_back({TunnelEvent::Type::kDeleted, view.spec.name, std::move(view)});
  }

  // Kernel work for `spec`, a new tunnel, follows: in kWriteAhead mode its record is written
  // first (see above). An error means nothing was saved and nothing is to be done.
  absl::Status Creating(const TunnelSpec& spec) {
    if (mode_ != Mode::kWriteAhead) return absl::OkStatus();
    absl::StatusOr<uint64_t> sequence = manager_->store_->Append({{spec}, {}});
    if (!sequence.ok()) return sequence.status();
    sequence_ = *sequence;
    written_ahead_.insert(spec.name);
    manager_->store_->FlushSoon();
    return absl::OkStatus();
  }

  absl::Status Commit() {
    // Under the writers' lock, as every change is (said at run time: the analysis cannot tell
    // manager_->change_mu_ is the caller's change_mu_). The write, like every kernel call
    // before it, holds only that lock.
    manager_->change_mu_.AssertHeld();
    // Written ahead already when the change is only the tunnels written ahead (as they were:
    // a create does not alter the spec it brings up).
    if (written_ahead_ != touched_) {
      absl::StatusOr<uint64_t> sequence = manager_->SaveLocked(touched_);
      if (!sequence.ok()) {
        Rollback();
        return sequence.status();
      }
      sequence_ = *sequence;
    }
    done_ = true;
    for (auto& action : commit_) action();
    std::vector<std::unique_ptr<Device>> devices;
    for (const std::shared_ptr<Entry>& entry : removed_) {
      if (entry->device) devices.push_back(std::move(entry->device));
    }
    if (!devices.empty()) manager_->links_->RemoveDevices(std::move(devices));
    absl::MutexLock lock(&manager_->mu_);
    for (const std::string& name : touched_) manager_->PublishLocked(name);
    for (PendingEvent& e : events_) {
      if (e.type == TunnelEvent::Type::kDeleted) {
        manager_->RecordEvent(e.type, *e.deleted);
        continue;
      }
      auto it = manager_->tunnels_.find(e.name);
      if (it == manager_->tunnels_.end()) continue;
      manager_->RecordEvent(e.type, {it->second->spec, manager_->StatusOf(*it->second)});
    }
    return absl::OkStatus();
  }

  // The committed change's place in the state store, for WaitDurable (0: nothing committed).
  uint64_t sequence() const { return sequence_; }

 private:
  struct PendingEvent {
    TunnelEvent::Type type;
    std::string name;
    std::optional<TunnelView> deleted;
  };

  // Runs where Commit or the destructor does: under change_mu_ (a destructor cannot say so).
  void Rollback() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    done_ = true;
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
    if (!written_ahead_.empty()) UnwriteAhead();
    if (touched_.empty()) return;
    absl::MutexLock lock(&manager_->mu_);
    for (const std::string& name : touched_) manager_->PublishLocked(name);
  }

  // The records written ahead are taken back: durable before the caller hears of the failure,
  // so that a crash of the machine does not bring back a tunnel it was told failed. Taking
  // back cannot fail in the store's memory (StateChange::undo); if the disk refuses it, the
  // failure is logged and the store rewrites itself whole at the next flush.
  void UnwriteAhead() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    StateChange undo;
    undo.removed.assign(written_ahead_.begin(), written_ahead_.end());
    undo.undo = true;
    absl::StatusOr<uint64_t> sequence = manager_->store_->Append(undo);
    absl::Status status =
        sequence.ok() ? manager_->store_->WaitDurable(*sequence) : sequence.status();
    if (!status.ok()) {
      Log("ERROR", "state: taking back the record of %s after a failed create: %s",
          absl::StrJoin(written_ahead_, ", "), status.ToString());
    }
  }

  TunnelManager* manager_;
  const Mode mode_;
  std::set<std::string> written_ahead_;  // new tunnels whose records were written ahead
  bool done_ = false;
  uint64_t sequence_ = 0;
  std::set<std::string> touched_;
  std::vector<std::function<void()>> undo_;
  std::vector<std::function<void()>> commit_;
  std::vector<std::shared_ptr<Entry>> removed_;
  std::vector<PendingEvent> events_;
};

TunnelManager::TunnelManager(LinkControl* links, dataplane::PacketEngine* engine, StateStore* store,
                             Options options)
    : links_(links),
      engine_(engine),
      store_(store),
      options_(options),
      // Revisions of a new run start above any of an earlier run (seconds since the epoch,
      // times 2^20), so a watcher resuming across a restart is told to resync instead of being
      // handed a revision that means something else now.
      revision_(static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now())) << 20) {}

TunnelManager::~TunnelManager() { Shutdown(); }

absl::Status TunnelManager::Restore() {
  if (absl::Status status = BeginRestore(); !status.ok()) return status;
  FinishRestore();
  return absl::OkStatus();
}

absl::Status TunnelManager::BeginRestore() {
  absl::StatusOr<std::vector<TunnelSpec>> saved = store_->Load();
  if (!saved.ok()) return saved.status();
  absl::MutexLock lock(&change_mu_);
  // Which saved tunnels can come back. One that no longer passes the checks or clashes with
  // one saved before it is kept (so nothing is lost) in state ERROR with the reason, and
  // nothing of it stays installed (FinishRestore removes its device left behind).
  std::vector<Entry*> candidates;
  for (TunnelSpec& spec : *saved) {
    if (tunnels_.count(spec.name)) continue;  // a name saved twice: the first one wins
    auto entry = std::make_unique<Entry>();
    entry->spec = std::move(spec);
    if (absl::Status status = ValidateSpec(entry->spec); status.ok()) {
      entry->state = OperState::kDown;
      entry->reason = kRestoringReason;
      candidates.push_back(entry.get());
    } else {
      entry->reason = std::string(status.message());
    }
    std::string name = entry->spec.name;
    tunnels_.emplace(std::move(name), std::move(entry));
  }
  std::vector<const TunnelSpec*> specs;
  specs.reserve(candidates.size());
  for (const Entry* entry : candidates) specs.push_back(&entry->spec);
  const std::map<size_t, size_t> clashes = EarlierClashes(specs);
  to_restore_.clear();
  for (size_t i = 0; i < candidates.size(); ++i) {
    Entry& entry = *candidates[i];
    if (auto clash = clashes.find(i); clash != clashes.end()) {
      entry.state = OperState::kError;
      entry.reason = std::string(ConflictBetween(entry.spec, *specs[clash->second]).message());
      continue;
    }
    to_restore_.push_back(entry.spec.name);
  }
  // Before the tunnels start: each is handed to the engine with its peers.
  LoadPeers(store_->TakeLoadedPeers());
  absl::MutexLock publish(&mu_);
  for (const auto& [name, entry] : tunnels_) published_[name] = PublishedOf(*entry);
  restoring_ = true;
  restore_done_ = 0;
  restore_verifying_ = 0;
  restore_total_ = to_restore_.size();
  return absl::OkStatus();
}

void TunnelManager::FinishRestoreInBackground() {
  restore_thread_ = std::thread([this] { FinishRestore(); });
}

absl::Status TunnelManager::RestoreStatus() const {
  absl::MutexLock lock(&mu_);
  if (!restoring_) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("restoring the saved tunnels after the agent's start: ", restore_done_, " of ",
                   restore_total_, " done",
                   restore_verifying_ == 0
                       ? ""
                       : absl::StrCat(", ", restore_verifying_, " forwarding and being verified"),
                   "; retry shortly"));
}

bool TunnelManager::WaitForRestore(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !restoring_; };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

void TunnelManager::FinishRestore() {
  const absl::Time start = absl::Now();
  absl::MutexLock lock(&change_mu_);
  std::vector<Entry*> restoring;
  for (const std::string& name : to_restore_) {
    if (auto it = tunnels_.find(name); it != tunnels_.end()) restoring.push_back(it->second.get());
  }
  to_restore_.clear();
  RestoreDevices(restoring);
  refresh_again_ = true;        // the first refresh after the restore reads the kernel in full
  index_rebuild_ = true;        // every tunnel's underlay was looked up
  not_tunnel_devices_.clear();  // devices of an earlier run became tunnels'
  size_t up = 0;
  for (const Entry* entry : restoring) up += entry->state == OperState::kUp;
  {
    absl::MutexLock publish(&mu_);
    restoring_ = false;
  }
  Log("INFO", "restore: %d of %d saved tunnels up in %.2f s%s", static_cast<int>(up),
      static_cast<int>(tunnels_.size()), absl::ToDoubleSeconds(absl::Now() - start),
      stopping_.load() ? " (stopped: the agent is shutting down)" : "");
}

void TunnelManager::RestoreDevices(std::vector<Entry*> restoring) {
  KernelChanging();
  const absl::Time start = absl::Now();
  std::set<std::string> desired;
  for (const Entry* entry : restoring) desired.insert(entry->spec.name);
  // Devices this agent left behind (a quick restart, or a crash): re-attached for the tunnels
  // still desired, removed otherwise. Devices it did not create are not in this list. One
  // reading of every link (thousands of them cost a dump each) says which, and what they have.
  absl::StatusOr<std::map<int, DeviceState>> kernel = links_->DeviceStates();
  std::set<std::string> left_behind;
  if (kernel.ok()) {
    for (const auto& [ifindex, state] : *kernel) {
      if (state.agent) left_behind.insert(state.name);
    }
  } else if (absl::StatusOr<std::vector<std::string>> owned = links_->ListAgentDevices();
             owned.ok()) {
    left_behind.insert(owned->begin(), owned->end());
  }
  // Data plane first: every kept device forwards again before anything is checked or looked
  // up. The kernel kept its addresses, routes and MTU through the crash; what may differ (a
  // change the crash interrupted, someone's `ip` meanwhile) is found and put back below.
  std::map<Entry*, std::unique_ptr<Device>> attached;  // taken over, for BringUp below
  std::vector<Entry*> kept;
  if (kernel.ok()) kept = AttachKept(restoring, left_behind, *kernel, attached);

  // The verification, in bulk. Devices no longer desired go first (a saved tunnel that cannot
  // come back loses its device, with the addresses and routes it still carries); then what the
  // kept ones carry that is not desired (a change interrupted by a crash) is removed before
  // anything is looked up or configured: a prefix that was moving from one tunnel to another
  // is free again for the one the state gives it to, and a stale route cannot pass for the
  // underlay.
  for (const std::string& name : left_behind) {
    if (!desired.count(name)) links_->DeleteDevice(name).IgnoreError();
  }
  if (kernel.ok()) {
    std::vector<std::pair<Entry*, std::vector<Repair>>> plans;
    for (Entry* entry : kept) {
      if (auto found = kernel->find(entry->device->ifindex()); found != kernel->end()) {
        plans.emplace_back(entry, PlanRepairs(*entry, *entry->device, found->second, true));
      }
    }
    for (auto& [entry, device] : attached) {
      if (auto found = kernel->find(device->ifindex()); found != kernel->end()) {
        plans.emplace_back(entry, PlanRepairs(*entry, *device, found->second, true));
      }
    }
    ApplyRepairs(plans);  // what cannot be removed now is tried again below and by the refresh
  }

  // The underlay rule over the whole saved set: one route lookup per distinct remote, all in
  // flight together.
  std::vector<std::pair<std::string, dataplane::IpAddress>> remotes;
  remotes.reserve(restoring.size());
  for (const Entry* entry : restoring) remotes.emplace_back(entry->spec.name, entry->spec.remote);
  const std::map<std::string, absl::StatusOr<UnderlayRoute>> routes = RoutesOf(remotes);
  std::map<int, std::string> tunnel_devices;  // by ifindex: a route into one is a loop
  for (const Entry* entry : kept) {
    tunnel_devices.emplace(entry->device->ifindex(), entry->spec.name);
  }
  for (const auto& [entry, device] : attached) {
    tunnel_devices.emplace(device->ifindex(), entry->spec.name);
  }
  std::vector<UnderlayAddress> underlay;
  absl::flat_hash_set<std::string> seen;  // many tunnels share a remote or a local address
  for (Entry* entry : restoring) {
    entry->underlay =
        UnderlayFrom(entry->spec, routes.at(entry->spec.name), &tunnel_devices).addresses;
    for (const UnderlayAddress& u : entry->underlay) {
      if (seen.insert(u.address.ToString()).second) underlay.push_back(u);
    }
  }

  // The kept tunnels: the underlay rule, the MTU the spec asks for, then their devices read
  // again and every difference put back together (RefreshFromKernel, as the refresh does).
  std::vector<Entry*> verify;
  std::vector<Entry*> new_mtu;
  size_t failed = 0;
  for (Entry* entry : kept) {
    if (absl::Status status = CheckPrefixesSpareUnderlay(entry->spec, underlay); !status.ok()) {
      StopDataplane(*entry);
      entry->device.reset();  // the device goes, with what it still carries
      ++failed;
      SetState(*entry, OperState::kError, absl::StrCat("not restored: ", status.message()));
      continue;
    }
    if (const uint32_t mtu = MtuWith(entry->spec, routes.at(entry->spec.name)); mtu != entry->mtu) {
      entry->mtu = mtu;  // RefreshFromKernel sets the device's; the engine follows below
      new_mtu.push_back(entry);
    }
    verify.push_back(entry);
  }
  absl::StatusOr<std::map<int, DeviceState>> now = links_->DeviceStates();
  if (!verify.empty()) RefreshFromKernel(verify, now.ok() ? *now : *kernel, routes, tunnel_devices);
  for (Entry* entry : new_mtu) {
    // The engine sizes its buffers and fragments by the MTU it was given.
    if (!entry->device || !entry->in_engine) continue;
    StopDataplane(*entry);
    if (absl::Status s = StartDataplane(*entry); !s.ok()) {
      entry->kernel_state = OperState::kError;
      entry->kernel_reason =
          absl::StrCat("cannot restart the dataplane with mtu ", entry->mtu, ": ", s.message());
    }
  }
  size_t repaired = 0;
  for (Entry* entry : verify) {
    if (!entry->device) {  // removed meanwhile and not made again: ERROR recorded
      ++failed;
      continue;
    }
    if (!entry->repairs.empty()) ++repaired;
    if (entry->kernel_state == OperState::kUp && entry->kernel_reason.empty()) {
      entry->reason.clear();
      PublishEvent(*entry, TunnelEvent::Type::kStateChanged, "verified");
    } else {
      if (entry->kernel_state != OperState::kUp) ++failed;
      SetState(*entry, entry->kernel_state, entry->kernel_reason);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    restore_done_ += kept.size();
    restore_verifying_ = 0;
  }
  if (!kept.empty()) {
    Log("INFO",
        "restore: %d kept tunnels verified %.0f ms after the restore began: %d repaired, %d not UP",
        static_cast<int>(kept.size()), absl::ToDoubleMilliseconds(absl::Now() - start),
        static_cast<int>(repaired), static_cast<int>(failed));
  }

  // The tunnels without a kept device, after the kept ones forward and are checked: one after
  // the other, each published (and announced to watchers) as it comes up or fails, until the
  // agent is told to stop.
  const std::set<Entry*> done(kept.begin(), kept.end());
  for (Entry* entry : restoring) {
    if (stopping_.load()) break;
    if (done.count(entry)) continue;
    absl::Status status = CheckPrefixesSpareUnderlay(entry->spec, underlay);
    if (!status.ok()) {
      status = absl::Status(status.code(), absl::StrCat("not restored: ", status.message()));
      attached.erase(entry);  // the device goes, with what it still carries
    } else {
      auto device = attached.find(entry);
      std::unique_ptr<Device> taken;
      if (device != attached.end()) {
        taken = std::move(device->second);
        attached.erase(device);
      }
      status = BringUp(*entry, std::move(taken));
    }
    if (status.ok()) {
      Log("INFO", "restored tunnel %s (ifindex %d, mtu %d)", entry->spec.name,
          entry->device->ifindex(), static_cast<int>(entry->mtu));
    } else {
      entry->state = OperState::kError;
      entry->reason = std::string(status.message());
      Log("ERROR", "tunnel %s could not be restored: %s", entry->spec.name, entry->reason);
    }
    absl::MutexLock lock(&mu_);
    published_[entry->spec.name] = PublishedOf(*entry);
    RecordEvent(TunnelEvent::Type::kStateChanged, {entry->spec, StatusOf(*entry)},
                status.ok() ? std::string("restored") : entry->reason);
    ++restore_done_;
  }
  // Stopped half way: devices taken over but not yet used stay for the next start when the
  // devices are to be kept; otherwise they go now.
  for (auto& [entry, device] : attached) {
    if (device && options_.keep_devices) device->Keep();
  }
}

std::vector<TunnelManager::Entry*> TunnelManager::AttachKept(
    const std::vector<Entry*>& restoring, const std::set<std::string>& left_behind,
    const std::map<int, DeviceState>& kernel, std::map<Entry*, std::unique_ptr<Device>>& unused) {
  const absl::Time start = absl::Now();
  std::vector<Entry*> kept;
  absl::Duration attach_time, engine_time;
  // Attached devices go to the engine in batches, one round trip to its workers each: the
  // first tunnels forward while the rest are still being attached.
  constexpr size_t kEngineBatch = 64;
  std::vector<Entry*> batch;
  auto start_batch = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) {
    const absl::Time t = absl::Now();
    const std::vector<absl::Status> started = StartDataplanes(batch);
    engine_time += absl::Now() - t;
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry* entry = batch[i];
      if (!started[i].ok()) {
        unused[entry] = std::move(entry->device);
        continue;
      }
      entry->state = OperState::kUp;
      entry->reason = kVerifyingReason;
      kept.push_back(entry);
    }
    batch.clear();
  };
  for (Entry* entry : restoring) {
    if (stopping_.load()) break;
    if (!left_behind.count(entry->spec.name)) continue;
    const DeviceKind kind =
        dataplane::IsEthernetMode(entry->spec.mode) ? DeviceKind::kTap : DeviceKind::kTun;
    const absl::Time t0 = absl::Now();
    absl::StatusOr<std::unique_ptr<Device>> device =
        links_->AttachListedDevice(entry->spec.name, kind);
    attach_time += absl::Now() - t0;
    if (!device.ok()) continue;  // BringUp tries again, or makes a new one
    auto found = kernel.find((*device)->ifindex());
    if (found == kernel.end() || found->second.mtu == 0) {
      unused[entry] = *std::move(device);  // made after the reading: BringUp configures it
      continue;
    }
    // The engine takes the MTU the device has now, which is what the kernel hands it; the
    // verification sets the one the spec asks for, and the engine follows.
    entry->device = *std::move(device);
    entry->mtu = found->second.mtu;
    batch.push_back(entry);
    if (batch.size() == kEngineBatch) start_batch();
  }
  if (!batch.empty()) start_batch();
  {
    absl::MutexLock lock(&mu_);
    for (Entry* entry : kept) {
      published_[entry->spec.name] = PublishedOf(*entry);
      RecordEvent(TunnelEvent::Type::kStateChanged, {entry->spec, StatusOf(*entry)}, entry->reason);
    }
    restore_verifying_ = kept.size();
  }
  if (!kept.empty()) {
    Log("INFO",
        "restore: %d tunnels forwarding on the devices kept from the last run after %.0f ms "
        "(attaching %.0f ms, starting their dataplane %.0f ms); verifying them",
        static_cast<int>(kept.size()), absl::ToDoubleMilliseconds(absl::Now() - start),
        absl::ToDoubleMilliseconds(attach_time), absl::ToDoubleMilliseconds(engine_time));
  }
  return kept;
}

size_t TunnelManager::VerifyingCount() const {
  absl::MutexLock lock(&mu_);
  return restore_verifying_;
}

absl::StatusOr<TunnelView> TunnelManager::Create(const TunnelSpec& requested) {
  if (absl::Status status = ValidateSpec(requested); !status.ok()) return status;
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  TunnelSpec spec = requested;
  spec.create_time = spec.update_time = absl::Now();
  absl::ReleasableMutexLock lock(&change_mu_);
  if (frozen_.load()) return FrozenError();
  Transaction tx(this, Transaction::Mode::kWriteAhead);
  if (absl::Status status = CreateLocked(spec, tx); !status.ok()) return status;
  if (absl::Status status = tx.Commit(); !status.ok()) return status;
  const Entry& entry = *tunnels_.at(spec.name);
  TunnelView view{entry.spec, StatusOf(entry)};
  // Durable before the answer; the flush is waited for without the writers' lock, so that
  // the requests committed meanwhile share it.
  lock.Release();
  if (absl::Status status = WaitDurable(tx.sequence()); !status.ok()) return status;
  return view;
}

absl::StatusOr<TunnelView> TunnelManager::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = published_.find(name);
  if (it == published_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  return TunnelView{it->second.spec, LiveStatus(it->second)};
}

std::vector<TunnelView> TunnelManager::List() const { return TakeSnapshot().tunnels; }

TunnelManager::Page TunnelManager::ListPage(
    const std::string& after, size_t limit,
    absl::FunctionRef<bool(const TunnelSpec&, OperState)> match) const {
  Page page;
  absl::MutexLock lock(&mu_);
  for (auto it = after.empty() ? published_.begin() : published_.upper_bound(after);
       it != published_.end(); ++it) {
    if (!match(it->second.spec, it->second.status.state)) continue;
    if (page.tunnels.size() == limit) {
      page.more = true;
      break;
    }
    page.tunnels.push_back({it->second.spec, LiveStatus(it->second)});
  }
  return page;
}

Snapshot TunnelManager::TakeSnapshot() const {
  absl::MutexLock lock(&mu_);
  Snapshot snapshot;
  snapshot.revision = revision_;
  snapshot.tunnels.reserve(published_.size());
  for (const auto& [name, tunnel] : published_) {
    snapshot.tunnels.push_back({tunnel.spec, LiveStatus(tunnel)});
  }
  for (const auto& [tunnel, peers] : published_peers_) {
    for (const auto& [name, peer] : peers) snapshot.peers.emplace_back(tunnel, PeerViewOf(*peer));
  }
  return snapshot;
}

uint64_t TunnelManager::revision() const {
  absl::MutexLock lock(&mu_);
  return revision_;
}

TunnelManager::Census TunnelManager::TakeCensus() const {
  absl::MutexLock lock(&mu_);
  return {published_.size(), revision_};
}

absl::StatusOr<UpdateResult> TunnelManager::Update(const std::string& name, const TunnelSpec& patch,
                                                   const std::set<std::string>& fields,
                                                   const std::string& etag) {
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  if (frozen_.load()) return FrozenError();
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  if (!etag.empty() && etag != ComputeEtag(it->second->spec)) {
    return absl::AbortedError(absl::StrCat("tunnel ", name, " changed since etag ", etag,
                                           " was read; get it again and retry"));
  }
  TunnelSpec desired = it->second->spec;
  for (const std::string& path : fields) {
    const TunnelField* field = FindTunnelField(path);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("update_mask: ", path, " cannot be updated (",
                                                     absl::StrJoin(UpdatableFields(), ", "),
                                                     " can)"));
    }
    field->copy(patch, desired);
  }
  if (absl::Status status = ValidateSpec(desired); !status.ok()) return status;
  Transaction tx(this);
  absl::StatusOr<UpdateResult> result = UpdateLocked(name, desired, tx);
  if (!result.ok()) return result.status();
  if (result->changed_fields.empty()) return result;
  if (absl::Status status = tx.Commit(); !status.ok()) return status;
  const Entry& entry = *tunnels_.at(name);
  result->tunnel = {entry.spec, StatusOf(entry)};
  lock.Release();  // durable before the answer, as Create
  if (absl::Status status = WaitDurable(tx.sequence()); !status.ok()) return status;
  return result;
}

absl::Status TunnelManager::Delete(const std::string& name, const std::string& etag) {
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  if (frozen_.load()) return FrozenError();
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  if (!etag.empty() && etag != ComputeEtag(it->second->spec)) {
    return absl::AbortedError(absl::StrCat("tunnel ", name, " changed since etag ", etag,
                                           " was read; get it again and retry"));
  }
  Transaction tx(this);
  if (absl::Status status = DeleteLocked(name, tx); !status.ok()) return status;
  if (absl::Status status = tx.Commit(); !status.ok()) return status;
  lock.Release();  // durable before the answer, as Create
  return WaitDurable(tx.sequence());
}

absl::StatusOr<ApplyResult> TunnelManager::Apply(const std::string& owner,
                                                 std::vector<TunnelSpec> desired, bool prune,
                                                 bool dry_run) {
  if (owner.empty()) return absl::InvalidArgumentError("owner: required");
  if (absl::Status status = ValidateLabels({{kOwnerLabel, owner}}); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("owner: ", status.message()));
  }
  // Bounded before anything is looked at: the count (an apply cannot end with more than
  // max_tunnels anyway) and the kernel work in all.
  if (desired.size() > options_.max_tunnels) {
    return absl::InvalidArgumentError(absl::StrCat("tunnels: ", desired.size(),
                                                   " tunnels, this agent allows ",
                                                   options_.max_tunnels, " (--max_tunnels)"));
  }
  if (absl::Status status = CheckApplyWork(desired); !status.ok()) return status;
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < desired.size(); ++i) {
    TunnelSpec& spec = desired[i];
    spec.labels[kOwnerLabel] = owner;
    if (absl::Status status = ValidateSpec(spec); !status.ok()) {
      return Annotate(status, absl::StrCat("tunnels[", i, "]"));
    }
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tunnels[", i, "].name: ", spec.name, " is given twice"));
    }
  }

  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  if (frozen_.load()) return FrozenError();
  // The plan, checked as a whole before anything changes.
  std::map<std::string, PlannedChange> plan;
  size_t creates = 0;
  size_t deletes = 0;
  for (const TunnelSpec& spec : desired) {
    PlannedChange& change = plan[spec.name];
    change.name = spec.name;
    auto it = tunnels_.find(spec.name);
    if (it == tunnels_.end()) {
      change.action = ChangeAction::kCreate;
      ++creates;
      continue;
    }
    auto label = it->second->spec.labels.find(kOwnerLabel);
    if (label == it->second->spec.labels.end() || label->second != owner) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tunnel ", spec.name, " exists and is not owned by ", owner,
          label == it->second->spec.labels.end() ? std::string(" (it has no owner)")
                                                 : absl::StrCat(" (owner ", label->second, ")")));
    }
    change.changed_fields = ChangedFields(it->second->spec, spec);
    if (change.changed_fields.empty()) {
      change.action = ChangeAction::kUnchanged;
    } else if (NeedsNewDevice(it->second->spec, spec) || !it->second->device) {
      change.action = ChangeAction::kRecreate;
    } else {
      change.action = ChangeAction::kUpdate;
    }
  }
  if (prune) {
    for (const auto& [name, entry] : tunnels_) {
      auto label = entry->spec.labels.find(kOwnerLabel);
      if (label == entry->spec.labels.end() || label->second != owner || names.contains(name)) {
        continue;
      }
      plan[name] = {name, ChangeAction::kDelete, {}};
      ++deletes;
    }
  }
  if (tunnels_.size() - deletes + creates > options_.max_tunnels) {
    return absl::ResourceExhaustedError(
        absl::StrCat("apply would make ", tunnels_.size() - deletes + creates,
                     " tunnels; this agent allows ", options_.max_tunnels, " (--max_tunnels)"));
  }
  // Conflicts against the set as it will be: the tunnels that stay (those the plan leaves
  // alone), by name, then the desired ones, in order. The indexes narrow each scan of that set
  // to the tunnels that may clash, so an apply of M costs M lookups, not M times N pairs; the
  // first clash found, and its words, are those of the full scan.
  SyncIndex();
  TunnelIndex desired_index;
  absl::flat_hash_map<std::string, size_t> desired_at;
  for (size_t i = 0; i < desired.size(); ++i) {
    desired_index.Add(desired[i], {});
    desired_at[desired[i].name] = i;
  }
  // Of the candidates an index gave: the staying tunnels, by name, and the desired ones, in
  // order.
  auto staying = [this, &plan](const std::set<std::string>& names)
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) {
                       std::vector<const Entry*> out;
                       for (const std::string& name : names) {
                         auto it = tunnels_.find(name);
                         if (it == tunnels_.end() || plan.count(name)) continue;
                         out.push_back(it->second.get());
                       }
                       return out;
                     };
  auto in_order = [&desired_at](const std::set<std::string>& names) {
    std::vector<size_t> out;
    for (const std::string& name : names) out.push_back(desired_at.at(name));
    std::sort(out.begin(), out.end());
    return out;
  };
  for (const TunnelSpec& spec : desired) {
    if (plan[spec.name].action == ChangeAction::kUnchanged) continue;
    for (const Entry* other : staying(index_.ConflictCandidates(spec))) {
      if (absl::Status status = ConflictBetween(spec, other->spec); !status.ok()) return status;
    }
    for (size_t i : in_order(desired_index.ConflictCandidates(spec))) {
      if (desired[i].name == spec.name) continue;
      if (absl::Status status = ConflictBetween(spec, desired[i]); !status.ok()) return status;
    }
  }
  // The underlay rule over the set as it will be: what a changed tunnel routes spares every
  // tunnel's underlay, and what any tunnel routes spares the changed ones' underlay.
  // The changed tunnels' routes in one batch (many requests in flight, each distinct remote
  // once), and the tunnels' devices listed once: a route into one of them is a loop.
  std::vector<std::pair<std::string, dataplane::IpAddress>> remotes;
  for (const TunnelSpec& spec : desired) {
    if (plan[spec.name].action != ChangeAction::kUnchanged) {
      remotes.emplace_back(spec.name, spec.remote);
    }
  }
  const std::map<std::string, absl::StatusOr<UnderlayRoute>> routes = RoutesOf(remotes);
  std::map<int, std::string> tunnel_devices;
  for (const auto& [name, entry] : tunnels_) {
    if (entry->device) tunnel_devices.emplace(entry->device->ifindex(), name);
  }
  std::vector<std::vector<UnderlayAddress>> desired_underlay(desired.size());
  std::vector<UnderlayAddress> changed_underlay;
  for (size_t i = 0; i < desired.size(); ++i) {
    const TunnelSpec& spec = desired[i];
    if (plan[spec.name].action == ChangeAction::kUnchanged) {
      desired_underlay[i] = tunnels_.at(spec.name)->underlay;
    } else {
      desired_underlay[i] = UnderlayFrom(spec, routes.at(spec.name), &tunnel_devices).addresses;
      changed_underlay.insert(changed_underlay.end(), desired_underlay[i].begin(),
                              desired_underlay[i].end());
    }
    desired_index.Add(spec, desired_underlay[i]);
  }
  for (const TunnelSpec& spec : desired) {
    if (plan[spec.name].action == ChangeAction::kUnchanged) continue;
    // Every underlay address of the set that the spec's prefixes may cover, in the set's
    // order: the first one covered is the one a scan of all of them names.
    std::set<std::string> existing;
    std::set<std::string> others;
    for (const auto* prefixes : {&spec.addresses, &spec.routes}) {
      for (const IpPrefix& p : *prefixes) {
        index_.UnderlayInside(p, existing);
        desired_index.UnderlayInside(p, others);
      }
    }
    std::vector<UnderlayAddress> covered;
    for (const Entry* other : staying(existing)) {
      covered.insert(covered.end(), other->underlay.begin(), other->underlay.end());
    }
    for (size_t i : in_order(others)) {
      covered.insert(covered.end(), desired_underlay[i].begin(), desired_underlay[i].end());
    }
    if (absl::Status status = CheckPrefixesSpareUnderlay(spec, covered); !status.ok()) {
      return Annotate(status, absl::StrCat("tunnel ", spec.name));
    }
  }
  {
    // The tunnels of the set with a prefix that may cover a changed tunnel's underlay.
    std::set<std::string> existing;
    std::set<std::string> others;
    for (const UnderlayAddress& u : changed_underlay) {
      index_.PrefixesCovering(u.address, existing);
      desired_index.PrefixesCovering(u.address, others);
    }
    std::vector<const TunnelSpec*> covering;
    for (const Entry* other : staying(existing)) covering.push_back(&other->spec);
    for (size_t i : in_order(others)) covering.push_back(&desired[i]);
    for (const TunnelSpec* spec : covering) {
      if (absl::Status status = CheckPrefixesSpareUnderlay(*spec, changed_underlay); !status.ok()) {
        return Annotate(status, absl::StrCat("tunnel ", spec->name));
      }
    }
  }

  ApplyResult result;
  bool any_change = false;
  for (auto& [name, change] : plan) {
    result.changes.push_back(change);
    any_change |= change.action != ChangeAction::kUnchanged;
  }
  if (dry_run || !any_change) {
    result.revision = revision();
    return result;
  }

  // Deletes first (they free names, endpoints and prefixes), then updates, then creates.
  Transaction tx(this);
  for (const auto& [name, change] : plan) {
    if (change.action != ChangeAction::kDelete) continue;
    if (absl::Status status = DeleteLocked(name, tx); !status.ok()) {
      return Annotate(status, absl::StrCat("deleting ", name));
    }
  }
  const absl::Time now = absl::Now();
  // The whole resulting set was checked above; what stands in the way now is only the order
  // in which prefixes move between tunnels, so every update first lets go of what it drops.
  for (const TunnelSpec& spec : desired) {
    const ChangeAction action = plan[spec.name].action;
    if (action != ChangeAction::kUpdate && action != ChangeAction::kRecreate) continue;
    if (absl::Status status = ReleasePrefixes(spec.name, spec, tx); !status.ok()) {
      return Annotate(status, absl::StrCat("updating ", spec.name));
    }
  }
  for (TunnelSpec& spec : desired) {
    const ChangeAction action = plan[spec.name].action;
    if (action == ChangeAction::kUpdate || action == ChangeAction::kRecreate) {
      absl::StatusOr<UpdateResult> updated =
          UpdateLocked(spec.name, spec, tx, /*check_conflicts=*/false);
      if (!updated.ok()) return Annotate(updated.status(), absl::StrCat("updating ", spec.name));
    }
  }
  for (size_t i = 0; i < desired.size(); ++i) {
    TunnelSpec& spec = desired[i];
    if (plan[spec.name].action != ChangeAction::kCreate) continue;
    spec.create_time = spec.update_time = now;
    if (absl::Status status =
            CreateLocked(spec, tx, /*check_conflicts=*/false, &desired_underlay[i]);
        !status.ok()) {
      return Annotate(status, absl::StrCat("creating ", spec.name));
    }
  }
  if (absl::Status status = tx.Commit(); !status.ok()) return status;
  result.revision = revision();
  lock.Release();  // durable before the answer, as Create
  if (absl::Status status = WaitDurable(tx.sequence()); !status.ok()) return status;
  return result;
}

absl::StatusOr<std::vector<TunnelEvent>> TunnelManager::EventsAfter(uint64_t after,
                                                                    absl::Duration wait) const {
  absl::MutexLock lock(&mu_);
  if (after > revision_) {
    return absl::OutOfRangeError(
        absl::StrCat("revision ", after, " is ahead of this agent's ", revision_));
  }
  const absl::Time deadline = absl::Now() + wait;
  while (revision_ == after) {
    if (changed_.WaitWithDeadline(&mu_, deadline)) break;
  }
  std::vector<TunnelEvent> events;
  if (revision_ == after) return events;
  if (history_.empty() || history_.front().revision > after + 1) {
    return absl::OutOfRangeError(
        absl::StrCat("events after revision ", after, " are no longer kept"));
  }
  for (const TunnelEvent& event : history_) {
    if (event.revision > after) events.push_back(event);
  }
  return events;
}

void TunnelManager::Shutdown() {
  stopping_.store(true);
  if (restore_thread_.joinable()) restore_thread_.join();  // stops after its current tunnel
  absl::MutexLock lock(&change_mu_);
  if (tunnels_.empty()) return;
  KernelChanging();
  const absl::Time start = absl::Now();
  bool batch = false;
  if (!options_.keep_devices) {
    // Removing a device costs RCU grace periods (about 20 ms); the kernel pays them once for
    // a batch. First: the engine's reads of a device that is gone end at once (EBADFD, and it
    // parks them), so taking the tunnels out of the engine afterwards waits for nothing. The
    // devices' fds stay open until then, as the engine requires. What the batch could not
    // take goes one by one below, as the device objects do.
    absl::Status status = links_->RemoveAgentDevices();
    batch = status.ok();
    if (!status.ok() && !absl::IsUnimplemented(status)) {
      Log("WARNING", "shutdown: devices not removed in one batch (%s); removing them one by one",
          status.ToString());
    }
  }
  const absl::Time removed = absl::Now();
  for (auto& [name, entry] : tunnels_) StopDataplane(*entry);
  const absl::Time stopped = absl::Now();
  for (auto& [name, entry] : tunnels_) {
    if (entry->device && options_.keep_devices) entry->device->Keep();
    entry->device.reset();
  }
  Log("INFO",
      "shutdown: %d tunnels: devices %s in %.2f s, dataplane stopped in %.2f s, %.2f s in all",
      static_cast<int>(tunnels_.size()),
      options_.keep_devices ? "kept"
      : batch               ? "removed in one batch"
                            : "removed one by one",
      absl::ToDoubleSeconds(removed - start), absl::ToDoubleSeconds(stopped - removed),
      absl::ToDoubleSeconds(absl::Now() - start));
  tunnels_.clear();
  absl::MutexLock publish(&mu_);
  published_.clear();
}

absl::Status TunnelManager::CreateLocked(const TunnelSpec& spec, Transaction& tx,
                                         bool check_conflicts,
                                         const std::vector<UnderlayAddress>* looked_up) {
  tx.Touch(spec.name);
  if (tunnels_.count(spec.name)) {
    return absl::AlreadyExistsError(absl::StrCat("tunnel ", spec.name, " already exists"));
  }
  if (tunnels_.size() >= options_.max_tunnels) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this agent has ", tunnels_.size(), " tunnels, its limit (--max_tunnels)"));
  }
  UnderlayLookup underlay;
  if (looked_up != nullptr) {
    underlay.addresses = *looked_up;
  } else {
    underlay = LookUpUnderlay(spec);
  }
  if (check_conflicts) {
    if (absl::Status status = CheckConflicts(spec, ""); !status.ok()) return status;
    if (absl::Status status = CheckUnderlay(spec, underlay.addresses, ""); !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = tx.Creating(spec); !status.ok()) return status;
  auto entry = std::make_unique<Entry>();
  entry->spec = spec;
  entry->underlay = std::move(underlay.addresses);
  if (absl::Status status = BringUp(*entry); !status.ok()) return status;
  tunnels_.emplace(spec.name, std::move(entry));
  const std::string name = spec.name;
  tx.OnRollback([this, name]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    auto it = tunnels_.find(name);
    StopDataplane(*it->second);
    tunnels_.erase(it);  // its device goes with it
  });
  tx.Added(name);
  return absl::OkStatus();
}

absl::Status TunnelManager::DeleteLocked(const std::string& name, Transaction& tx) {
  tx.Touch(name);
  KernelChanging();
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  // The device lives on until the change is committed, so undoing is only a restart.
  std::shared_ptr<Entry> entry(std::move(it->second));
  tunnels_.erase(it);
  TunnelView view{entry->spec, StatusOf(*entry)};
  // The engine answers once nothing in flight touches the device; only then may it close.
  StopDataplane(*entry);
  // Its routes go now, though: the kernel keeps one route per prefix, and a tunnel created or
  // updated later in the same change (ApplyTunnels) may be taking them over.
  std::vector<IpPrefix> removed_routes;
  for (size_t i = 0; entry->device && i < entry->spec.routes.size(); ++i) {
    const IpPrefix& p = entry->spec.routes[i];
    if (links_->DeleteRoute(*entry->device, p).ok()) removed_routes.push_back(p);
  }
  tx.OnRollback([this, entry, name, removed_routes]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const IpPrefix& p : removed_routes) links_->AddRoute(*entry->device, p).IgnoreError();
    if (entry->device) StartDataplane(*entry).IgnoreError();
    tunnels_[name] = std::make_unique<Entry>(std::move(*entry));
  });
  tx.RemoveDeviceOnCommit(entry);  // the link goes, with its addresses and routes
  tx.Deleted(std::move(view));
  return absl::OkStatus();
}

absl::StatusOr<UpdateResult> TunnelManager::UpdateLocked(const std::string& name,
                                                         const TunnelSpec& requested,
                                                         Transaction& tx, bool check_conflicts) {
  tx.Touch(name);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  Entry& entry = *it->second;
  UpdateResult result;
  result.changed_fields = ChangedFields(entry.spec, requested);
  if (entry.peers && !entry.peers->peers.empty() &&
      (requested.mode != entry.spec.mode || !requested.multipoint)) {
    // Its peers were checked against what the tunnel is (its underlay family, its keys, what
    // it carries): they are deleted first.
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", name, " has ", entry.peers->peers.size(),
                     " peers: delete them before changing its mode or making it point to "
                     "point"));
  }
  if (!requested.multipoint && entry.peers) entry.peers.reset();
  if (result.changed_fields.empty()) {
    // Nothing to change, but the device is checked: an update that repeats the desired
    // values puts back whatever was changed behind the agent's back.
    ReconcileNow(entry).IgnoreError();  // a failure shows in the state at the next refresh
    result.tunnel = {entry.spec, StatusOf(entry)};
    return result;
  }
  KernelChanging();
  UnderlayLookup underlay = LookUpUnderlay(requested);
  if (check_conflicts) {
    if (absl::Status status = CheckConflicts(requested, name); !status.ok()) return status;
    if (absl::Status status = CheckUnderlay(requested, underlay.addresses, name); !status.ok()) {
      return status;
    }
  }
  TunnelSpec desired = requested;
  desired.create_time = entry.spec.create_time;
  desired.update_time = absl::Now();
  const TunnelSpec old_spec = entry.spec;

  if (NeedsNewDevice(entry.spec, requested) || !entry.device) {
    // A link's type is fixed (the kernel cannot change it either): the device is made anew,
    // under the same name, so the old one must go first.
    result.recreated = entry.device != nullptr;
    std::unique_ptr<Entry> old = std::move(it->second);
    StopDataplane(*old);
    old->device.reset();
    auto fresh = std::make_unique<Entry>();
    fresh->spec = desired;
    fresh->peers = old->peers;
    fresh->underlay = underlay.addresses;
    fresh->state_changes = old->state_changes;
    fresh->repairs = old->repairs;
    if (absl::Status status = BringUp(*fresh); !status.ok()) {
      if (result.recreated) {
        auto back = std::make_unique<Entry>();
        back->spec = old_spec;
        back->peers = old->peers;
        back->underlay = LookUpUnderlay(old_spec).addresses;
        if (absl::Status again = BringUp(*back); !again.ok()) {
          back->state = OperState::kError;
          back->reason = std::string(again.message());
        }
        it->second = std::move(back);
      } else {
        it->second = std::move(old);
      }
      return status;
    }
    it->second = std::move(fresh);
    tx.OnRollback([this, name, old_spec]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      std::unique_ptr<Entry>& current = tunnels_[name];
      StopDataplane(*current);
      current->device.reset();
      auto back = std::make_unique<Entry>();
      back->spec = old_spec;
      back->peers = current->peers;
      back->underlay = LookUpUnderlay(old_spec).addresses;
      if (absl::Status status = BringUp(*back); !status.ok()) {
        back->state = OperState::kError;
        back->reason = std::string(status.message());
      }
      current = std::move(back);
    });
    tx.Updated(name);
    return result;
  }

  // In place, step by step; a failing step undoes the ones before it.
  std::vector<std::function<void()>> undo;
  auto fail = [&undo](absl::Status status) {
    for (auto u = undo.rbegin(); u != undo.rend(); ++u) (*u)();
    return status;
  };
  const Device& device = *entry.device;
  const uint32_t old_mtu = entry.mtu;
  const uint32_t new_mtu = MtuFor(desired);
  // The engine takes a tunnel's parameters when it is added: any change of how packets are
  // wrapped or matched (or of the buffer size, the MTU) replaces the engine's tunnel.
  const bool dataplane_changes = EncapsulationChanged(old_spec, desired) || new_mtu != old_mtu;
  const bool keepalive_changes = old_spec.keepalive != desired.keepalive;
  // Undone last: the old spec back, and the dataplane on it again.
  undo.push_back([this, &entry, old_spec, old_mtu, dataplane_changes]()
                     ABSL_NO_THREAD_SAFETY_ANALYSIS {
                       entry.spec = old_spec;
                       entry.mtu = old_mtu;
                       if (dataplane_changes) StartDataplane(entry).IgnoreError();
                     });
  if (dataplane_changes) StopDataplane(entry);
  if (new_mtu != old_mtu) {
    if (absl::Status s = links_->SetMtu(device, new_mtu); !s.ok()) {
      return fail(Annotate(s, "tunnel.mtu"));
    }
    undo.push_back([this, &device, old_mtu] { links_->SetMtu(device, old_mtu).IgnoreError(); });
  }
  for (const IpPrefix& p : old_spec.routes) {
    if (absl::c_linear_search(desired.routes, p)) continue;
    if (absl::Status s = links_->DeleteRoute(device, p); !s.ok() && !absl::IsNotFound(s)) {
      return fail(Annotate(s, absl::StrCat("removing route ", p.ToString())));
    }
    undo.push_back([this, &device, p] { links_->AddRoute(device, p).IgnoreError(); });
  }
  for (const IpPrefix& p : old_spec.addresses) {
    if (absl::c_linear_search(desired.addresses, p)) continue;
    if (absl::Status s = links_->DeleteAddress(device, p); !s.ok() && !absl::IsNotFound(s)) {
      return fail(Annotate(s, absl::StrCat("removing address ", p.ToString())));
    }
    undo.push_back([this, &device, p] { links_->AddAddress(device, p).IgnoreError(); });
  }
  for (const IpPrefix& p : desired.addresses) {
    if (absl::c_linear_search(old_spec.addresses, p)) continue;
    if (absl::Status s = links_->AddAddress(device, p); !s.ok()) {
      return fail(Annotate(s, absl::StrCat("tunnel.addresses ", p.ToString())));
    }
    undo.push_back([this, &device, p] { links_->DeleteAddress(device, p).IgnoreError(); });
  }
  for (const IpPrefix& p : desired.routes) {
    if (absl::c_linear_search(old_spec.routes, p)) continue;
    if (absl::Status s = links_->AddRoute(device, p); !s.ok()) {
      return fail(Annotate(s, absl::StrCat("tunnel.routes ", p.ToString())));
    }
    undo.push_back([this, &device, p] { links_->DeleteRoute(device, p).IgnoreError(); });
  }
  entry.spec = desired;
  entry.mtu = new_mtu;
  entry.underlay = std::move(underlay.addresses);
  // A new keepalive configuration starts with the benefit of the doubt, as a new tunnel does:
  // an earlier one's verdict is not about this one.
  if (keepalive_changes && entry.counters) entry.counters->peer_alive.store(true);
  if (dataplane_changes) {
    if (absl::Status s = StartDataplane(entry); !s.ok()) return fail(s);
  }
  // Everything took: the whole in-place change is one step of the transaction.
  tx.OnRollback([this, name, dataplane_changes, undo = std::move(undo)]()
                    ABSL_NO_THREAD_SAFETY_ANALYSIS {
                      if (dataplane_changes) StopDataplane(*tunnels_.at(name));
                      for (auto u = undo.rbegin(); u != undo.rend(); ++u) (*u)();
                    });
  tx.Updated(name);
  return result;
}

absl::Status TunnelManager::ReleasePrefixes(const std::string& name, const TunnelSpec& desired,
                                            Transaction& tx) {
  tx.Touch(name);
  KernelChanging();
  Entry& entry = *tunnels_.at(name);
  if (!entry.device) return absl::OkStatus();
  const Device* device = entry.device.get();
  // Undone only while that device is still the tunnel's (a recreate replaces it).
  auto still_there = [this, name, device]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    auto it = tunnels_.find(name);
    return it != tunnels_.end() && it->second->device.get() == device;
  };
  for (const IpPrefix& p : entry.spec.routes) {
    if (absl::c_linear_search(desired.routes, p)) continue;
    if (absl::Status s = links_->DeleteRoute(*device, p); !s.ok() && !absl::IsNotFound(s)) {
      return Annotate(s, absl::StrCat("removing route ", p.ToString()));
    }
    tx.OnRollback([this, still_there, device, p] {
      if (still_there()) links_->AddRoute(*device, p).IgnoreError();
    });
  }
  for (const IpPrefix& p : entry.spec.addresses) {
    if (absl::c_linear_search(desired.addresses, p)) continue;
    if (absl::Status s = links_->DeleteAddress(*device, p); !s.ok() && !absl::IsNotFound(s)) {
      return Annotate(s, absl::StrCat("removing address ", p.ToString()));
    }
    tx.OnRollback([this, still_there, device, p] {
      if (still_there()) links_->AddAddress(*device, p).IgnoreError();
    });
  }
  return absl::OkStatus();
}

uint32_t TunnelManager::MtuFor(const TunnelSpec& spec) {
  if (spec.mtu != 0) return spec.mtu;
  // As the kernel does: the MTU of the route towards the remote, less the headers. A
  // multipoint tunnel has no one remote: the default underlay MTU (each peer's path MTU is
  // the dataplane's, and answered with ICMP errors like any).
  absl::StatusOr<uint32_t> path_mtu =
      spec.multipoint ? absl::StatusOr<uint32_t>(absl::NotFoundError("multipoint"))
                      : links_->PathMtu(spec.remote);
  uint32_t underlay = path_mtu.ok() ? *path_mtu : options_.default_underlay_mtu;
  return dataplane::AutomaticMtu(spec.mode, OutputGreOptions(spec), underlay, spec.fou.enabled);
}

absl::Status TunnelManager::BringUp(Entry& entry, std::unique_ptr<Device> attached_device) {
  KernelChanging();
  const TunnelSpec& spec = entry.spec;
  const uint32_t mtu = MtuFor(spec);
  // A device this agent left in place (quick restart, crash) is taken over; otherwise a new
  // one is made. Its addresses and routes may still be there: ALREADY_EXISTS is fine then.
  bool attached = true;
  // Ethernet modes carry frames: a TAP device. The others carry IP packets: a TUN device.
  const DeviceKind kind =
      dataplane::IsEthernetMode(spec.mode) ? DeviceKind::kTap : DeviceKind::kTun;
  absl::StatusOr<std::unique_ptr<Device>> device =
      attached_device ? absl::StatusOr<std::unique_ptr<Device>>(std::move(attached_device))
                      : links_->AttachDevice(spec.name, kind);
  if (!device.ok()) {
    attached = false;
    device = links_->CreateDevice(spec.name, kind);
  }
  if (!device.ok()) return device.status();
  // A device that existed before becomes a tunnel's: the links known to be none may hold it.
  if (attached) not_tunnel_devices_.clear();
  auto tolerate = [attached](absl::Status s) {
    return attached && absl::IsAlreadyExists(s) ? absl::OkStatus() : s;
  };
  // From here on a failure destroys the device, which takes its addresses and routes along.
  // The workers take the tunnel while the kernel configures its device: their wake-up and the
  // netlink round trips overlap instead of following each other. Until the device is up
  // nothing reaches them through it, and what they decapsulate meanwhile is a counted drop.
  dataplane::PendingAdditions adding =
      engine_->BeginAddTunnels({EngineTunnelOf(entry, **device, mtu)});
  absl::Status status = links_->SetMtu(**device, mtu);
  for (size_t i = 0; status.ok() && i < spec.addresses.size(); ++i) {
    status = tolerate(links_->AddAddress(**device, spec.addresses[i]));
    if (!status.ok()) {
      status = Annotate(status,
                        absl::StrCat("tunnel.addresses[", i, "] ", spec.addresses[i].ToString()));
    }
  }
  if (status.ok()) status = links_->SetUp(**device);
  for (size_t i = 0; status.ok() && i < spec.routes.size(); ++i) {
    // The kernel answers ALREADY_EXISTS for the prefix on any device: a re-attached device's
    // own route is removed and added again, so one that moved elsewhere is seen as a conflict.
    if (attached) links_->DeleteRoute(**device, spec.routes[i]).IgnoreError();
    status = links_->AddRoute(**device, spec.routes[i]);
    if (!status.ok()) {
      status = Annotate(status, absl::StrCat("tunnel.routes[", i, "] ", spec.routes[i].ToString()));
    }
  }
  const absl::Status started = std::move(adding).Wait().front();
  entry.in_engine = started.ok();
  if (!status.ok()) {
    StopDataplane(entry);  // before the device goes: the workers let go of it first
    return status;
  }
  if (!started.ok()) return started;
  entry.device = *std::move(device);
  entry.mtu = mtu;
  entry.state = OperState::kUp;
  entry.reason.clear();
  return absl::OkStatus();
}

absl::Status TunnelManager::StartDataplane(Entry& entry) {
  return StartDataplanes({&entry}).front();
}

dataplane::EngineTunnel TunnelManager::EngineTunnelOf(Entry& entry, const Device& device,
                                                      uint32_t mtu) {
  if (!entry.counters) {
    entry.counters = std::make_shared<dataplane::TunnelStats>(engine_->workers());
  }
  dataplane::EngineTunnel tunnel = EngineTunnelFor(entry.spec, device, mtu, entry.counters);
  if (entry.peers) {
    tunnel.peers.reserve(entry.peers->peers.size());
    for (const auto& [name, peer] : entry.peers->peers) tunnel.peers.push_back(EnginePeerOf(*peer));
  }
  return tunnel;
}

std::vector<absl::Status> TunnelManager::StartDataplanes(const std::vector<Entry*>& entries) {
  std::vector<dataplane::EngineTunnel> tunnels;
  tunnels.reserve(entries.size());
  for (Entry* entry : entries) {
    tunnels.push_back(EngineTunnelOf(*entry, *entry->device, entry->mtu));
  }
  std::vector<absl::Status> started = engine_->AddTunnels(tunnels);
  for (size_t i = 0; i < entries.size(); ++i) entries[i]->in_engine = started[i].ok();
  return started;
}

void TunnelManager::StopDataplane(Entry& entry) {
  if (!entry.in_engine) return;
  engine_->RemoveTunnel(entry.spec.name).IgnoreError();
  entry.in_engine = false;
}

absl::Status TunnelManager::CheckConflicts(const TunnelSpec& spec,
                                           const std::string& ignore) const {
  SyncIndex();
  // Only the tunnels the index says may clash, by name: the first clash is the one a scan of
  // every tunnel would find.
  for (const std::string& name : index_.ConflictCandidates(spec)) {
    if (name == ignore || name == spec.name) continue;
    auto other = tunnels_.find(name);
    if (other == tunnels_.end()) continue;
    if (absl::Status status = ConflictBetween(spec, other->second->spec); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

void TunnelManager::SyncIndex() const {
  if (!index_rebuild_) {
    for (const std::string& name : index_stale_) {
      auto it = tunnels_.find(name);
      if (it == tunnels_.end()) {
        index_.Remove(name);
      } else {
        index_.Add(it->second->spec, it->second->underlay);
      }
    }
  }
  index_stale_.clear();
  // Tunnels come and go through transactions (each name they touch is marked when it is
  // published), the restore and Shutdown: a count that differs means one of the latter, and
  // everything is indexed again.
  if (index_rebuild_ || index_.size() != tunnels_.size()) {
    index_.Clear();
    for (const auto& [name, entry] : tunnels_) index_.Add(entry->spec, entry->underlay);
    index_rebuild_ = false;
  }
}

absl::Status ConflictBetween(const TunnelSpec& spec, const TunnelSpec& other) {
  // Two tunnels that would claim the same received packets (the kernel refuses these too).
  // Each mode has its own receive table there: gre and gretap (ipgre_net vs gretap_net,
  // or GRE protocol type), ipip and sit (another inner protocol), ip6gre and ip6gretap
  // (ip6gre_tunnel_find compares the device type) never clash with each other. Within a
  // table the match is the endpoints and, for GRE, the key received packets must carry: the
  // input key.
  const std::optional<uint32_t> key = InputKey(spec);
  if (other.mode == spec.mode && SameEndpoint(other.local, spec.local) &&
      other.remote == spec.remote && InputKey(other) == key) {
    const bool gre = dataplane::IsGreMode(spec.mode);
    return absl::AlreadyExistsError(absl::StrCat(
        "tunnel ", other.name, " already carries ", dataplane::TunnelModeName(spec.mode), " from ",
        spec.local.is_unspecified() ? "any" : spec.local.ToString(), " to ", spec.remote.ToString(),
        !gre  ? std::string()
        : key ? absl::StrCat(" with input key ", *key)
              : std::string(" without an input key")));
  }
  // Prefixes that overlap another tunnel's would make routing depend on which came first.
  auto prefixes = [](const TunnelSpec& s) {
    std::vector<std::pair<const char*, IpPrefix>> all;
    for (const IpPrefix& p : s.addresses) all.push_back({"address", p.Network()});
    for (const IpPrefix& p : s.routes) all.push_back({"route", p});
    return all;
  };
  for (const auto& [kind, mine] : prefixes(spec)) {
    for (const auto& [other_kind, theirs] : prefixes(other)) {
      if (mine.Overlaps(theirs)) {
        return absl::FailedPreconditionError(absl::StrCat(kind, " ", mine.ToString(), " overlaps ",
                                                          other_kind, " ", theirs.ToString(),
                                                          " of tunnel ", other.name));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> TunnelManager::SaveLocked(const std::set<std::string>& touched) const {
  // Only what the change touched: its cost does not grow with the number of tunnels.
  StateChange change;
  for (const std::string& name : touched) {
    if (auto it = tunnels_.find(name); it != tunnels_.end()) {
      change.upserted.push_back(it->second->spec);
    } else {
      change.removed.push_back(name);
    }
  }
  return store_->Append(change);
}

absl::Status TunnelManager::WaitDurable(uint64_t sequence) const {
  if (sequence == 0) return absl::OkStatus();
  absl::Status status = store_->WaitDurable(sequence);
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("the change is in effect but not yet saved durably (a crash "
                                   "of the machine could lose it): ",
                                   status.message()));
}

void TunnelManager::RecordEvent(TunnelEvent::Type type, const TunnelView& view,
                                std::string detail) {
  TunnelEvent event;
  event.type = type;
  event.tunnel = std::make_shared<const TunnelView>(view);
  event.detail = std::move(detail);
  PushEvent(std::move(event));
}

void TunnelManager::PushEvent(TunnelEvent event) {
  event.revision = ++revision_;
  history_.push_back(std::move(event));
  while (history_.size() > options_.event_history) history_.pop_front();
  changed_.SignalAll();
}

TunnelManager::Published TunnelManager::PublishedOf(const Entry& entry) {
  Published out;
  out.spec = entry.spec;
  out.status.state = entry.state;
  out.status.reason = entry.reason;
  out.status.state_changes = entry.state_changes;
  out.status.repairs = entry.repairs;
  out.has_device = entry.device != nullptr;
  if (entry.device) {
    out.status.ifindex = entry.device->ifindex();
    out.status.mtu = entry.mtu;
  }
  out.counters = entry.counters;
  return out;
}

void TunnelManager::PublishLocked(const std::string& name) {
  IndexChanged(name);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    published_.erase(name);
    UnpublishPeersLocked(name);
  } else {
    published_[name] = PublishedOf(*it->second);
    if (!it->second->peers) UnpublishPeersLocked(name);
  }
}

void TunnelManager::PublishEvent(const Entry& entry, TunnelEvent::Type type,
                                 const std::string& detail) {
  Published published = PublishedOf(entry);
  const TunnelView view{published.spec, LiveStatus(published)};
  absl::MutexLock lock(&mu_);
  published_[entry.spec.name] = std::move(published);
  RecordEvent(type, view, detail);
}

TunnelStatus TunnelManager::StatusOf(const Entry& entry) const {
  return LiveStatus(PublishedOf(entry));
}

TunnelStatus TunnelManager::LiveStatus(const Published& tunnel) {
  TunnelStatus status = tunnel.status;
  if (!tunnel.has_device || !tunnel.counters) return status;
  ReadObservation(*tunnel.counters, tunnel.spec.keepalive.enabled(), &status);
  return status;
}

namespace {

// A tunnel's or a peer's: the same members by name (both from tunnel_counters.h), drops summed
// by direction.
template <typename Stats>
void ReadStats(const Stats& c, bool keepalive, DataplaneObservation* out) {
  using Counters = typename Stats::Counters;
#define SUM_COUNTER(member, api_field, ...) out->counters.api_field = c.Sum(&Counters::member);
  TUNNEL_TRAFFIC_COUNTERS(SUM_COUNTER)
#undef SUM_COUNTER
#define SUM_DROPS(member, api_field, ...) out->counters.api_field = c.SumAll(&Counters::member);
  TUNNEL_DROP_COUNTERS(SUM_DROPS)
#undef SUM_DROPS
  out->path_mtu = c.path_mtu.load(std::memory_order_relaxed);
  if (const int64_t last = c.last_receive_unix_nanos.load(std::memory_order_relaxed); last != 0) {
    out->last_receive = absl::FromUnixNanos(last);
  }
  if (!keepalive) return;
  KeepaliveSnapshot& k = out->keepalive.emplace();
  k.peer_alive = c.peer_alive.load(std::memory_order_relaxed);
#define SUM_KEEPALIVE(member, api_field, ...) k.api_field = c.Sum(&Counters::member);
  TUNNEL_KEEPALIVE_COUNTERS(SUM_KEEPALIVE)
#undef SUM_KEEPALIVE
  const int64_t last = c.last_keepalive_reply_unix_nanos.load(std::memory_order_relaxed);
  if (last != 0) k.last_reply = absl::FromUnixNanos(last);
  if (const int64_t rtt = c.keepalive_rtt_nanos.load(std::memory_order_relaxed); rtt != 0) {
    k.rtt = absl::Nanoseconds(rtt);
  }
}

}  // namespace

void ReadObservation(const dataplane::TunnelStats& c, bool keepalive, DataplaneObservation* out) {
  ReadStats(c, keepalive, out);
}

void ReadObservation(const dataplane::PeerStats& c, bool keepalive, DataplaneObservation* out) {
  ReadStats(c, keepalive, out);
}

void TunnelManager::Freeze() {
  // Taken once the change in progress (if any) has written the state: the next holder of
  // change_mu_ sees frozen_.
  absl::MutexLock lock(&change_mu_);
  frozen_.store(true);
}

void TunnelManager::Unfreeze() {
  absl::MutexLock lock(&change_mu_);
  frozen_.store(false);
}

std::vector<TunnelManager::HandoverDevice> TunnelManager::DevicesForHandover() {
  absl::MutexLock lock(&change_mu_);
  std::vector<HandoverDevice> devices;
  for (const auto& [name, entry] : tunnels_) {
    if (!entry->device) continue;
    devices.push_back({name, entry->device->fd(), dataplane::IsEthernetMode(entry->spec.mode)});
  }
  return devices;
}

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace tunnelagent::agent
