// TunnelManager's side that watches the kernel: the underlay rule's lookups, convergence of
// each device to the desired state, loops, keepalive verdicts and the state they make.
#include <algorithm>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "agent/tunnel_manager.h"
#include "dataplane/tunnel_mode_info.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpPrefix;

const char* StateText(OperState state) {
  switch (state) {
    case OperState::kUp:
      return "UP";
    case OperState::kDown:
      return "DOWN";
    case OperState::kError:
      return "ERROR";
  }
  return "?";
}

}  // namespace

TunnelManager::UnderlayLookup TunnelManager::LookUpUnderlay(const TunnelSpec& spec) const {
  // A multipoint tunnel has no one remote to route to: its underlay is its local address.
  if (spec.multipoint) return UnderlayFrom(spec, absl::NotFoundError("multipoint"));
  return UnderlayFrom(spec, links_->RouteTo(spec.remote));
}

TunnelManager::UnderlayLookup TunnelManager::UnderlayFrom(
    const TunnelSpec& spec, const absl::StatusOr<UnderlayRoute>& found,
    const std::map<int, std::string>* tunnel_devices) const {
  UnderlayLookup lookup;
  std::optional<UnderlayRoute> route;
  if (found.ok() && tunnel_devices != nullptr) {
    if (auto it = tunnel_devices->find(found->ifindex); it != tunnel_devices->end()) {
      lookup.loop_device = it->second;
    }
  } else if (found.ok() && !not_tunnel_devices_.count(found->ifindex)) {
    for (const auto& [name, entry] : tunnels_) {
      if (entry && entry->device && entry->device->ifindex() == found->ifindex) {
        lookup.loop_device = name;
        break;
      }
    }
    // The route's link is no tunnel's, and never will be: the kernel gives every new device
    // an ifindex never used before. Not searched again (a scan of every tunnel per
    // CreateTunnel, for the underlay's one or two links).
    if (lookup.loop_device.empty()) not_tunnel_devices_.insert(found->ifindex);
  }
  if (found.ok()) {
    // A route into a tunnel says nothing about the underlay: its gateway and source are not
    // the path the packets should take.
    if (lookup.loop_device.empty()) route = *found;
  }
  lookup.addresses = UnderlayAddressesOf(spec, route);
  return lookup;
}

absl::Status TunnelManager::CheckUnderlay(const TunnelSpec& spec,
                                          const std::vector<UnderlayAddress>& underlay,
                                          const std::string& ignore) const {
  if (absl::Status status = CheckPrefixesSpareUnderlay(spec, underlay); !status.ok()) {
    return status;
  }
  SyncIndex();
  // Only the tunnels the index says may be in the way, by name, as a scan of all would meet
  // them.
  for (const std::string& name : index_.UnderlayCandidates(spec, underlay)) {
    if (name == ignore || name == spec.name) continue;
    auto found = tunnels_.find(name);
    if (found == tunnels_.end()) continue;
    const std::unique_ptr<Entry>& entry = found->second;
    if (absl::Status status = CheckPrefixesSpareUnderlay(spec, entry->underlay); !status.ok()) {
      return status;
    }
    // And the other way: a prefix another tunnel routes must not swallow this one's underlay.
    if (absl::Status status = CheckPrefixesSpareUnderlay(entry->spec, underlay); !status.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("tunnel ", name, " has ", status.message()));
    }
  }
  return absl::OkStatus();
}

void TunnelManager::RecordRepair(Entry& entry, const char* what, const std::string& detail) {
  ++entry.repairs[what];
  LogEvent("WARNING", "tunnel.repair",
           {{"tunnel", entry.spec.name}, {"what", what}, {"detail", detail}});
  PublishEvent(entry, TunnelEvent::Type::kRepaired, detail);
}

void TunnelManager::SetState(Entry& entry, OperState state, std::string reason) {
  if (state == entry.state && reason == entry.reason) return;
  const OperState before = entry.state;
  entry.state = state;
  entry.reason = std::move(reason);
  if (before != state) ++entry.state_changes;
  LogEvent(state == OperState::kUp ? "INFO" : "WARNING", "tunnel.state",
           {{"tunnel", entry.spec.name},
            {"state", StateText(state)},
            {"was", StateText(before)},
            {"reason", entry.reason}});
  PublishEvent(entry, TunnelEvent::Type::kStateChanged, entry.reason);
}

std::vector<TunnelManager::Repair> TunnelManager::PlanRepairs(const Entry& entry,
                                                              const Device& device,
                                                              const DeviceState& kernel,
                                                              bool undesired_only) const {
  using Kind = LinkChange::Kind;
  const TunnelSpec& spec = entry.spec;
  std::vector<Repair> plan;
  auto add = [&plan, &device](Kind kind, const IpPrefix& prefix, uint32_t mtu, const char* what,
                              std::string done, std::string failed,
                              absl::StatusCode nothing_to_do = absl::StatusCode::kOk) {
    plan.push_back({LinkChange{kind, &device, prefix, mtu}, what, std::move(done),
                    std::move(failed), nothing_to_do});
  };
  // Link first: taking a link down removes its IPv4 routes and IPv6 addresses, which come back
  // below. Then the MTU (IPv6 addresses need 1280 or more); what is not desired goes before
  // what is missing comes back. The kernel makes them in this order, sent together or not.
  if (!undesired_only && !kernel.up) {
    add(Kind::kSetUp, {}, 0, "link", "link was set down; set up again",
        "cannot set the link up again");
  }
  if (!undesired_only && entry.mtu != 0 && kernel.mtu != entry.mtu) {
    add(Kind::kSetMtu, {}, entry.mtu, "mtu",
        absl::StrCat("mtu was ", kernel.mtu, "; set back to ", entry.mtu),
        absl::StrCat("cannot set mtu ", entry.mtu, " again"));
  }
  for (const IpPrefix& p : kernel.routes) {
    if (absl::c_linear_search(spec.routes, p)) continue;
    add(Kind::kDeleteRoute, p, 0, "route",
        absl::StrCat("route ", p.ToString(), " removed (not desired)"),
        absl::StrCat("cannot remove route ", p.ToString()), absl::StatusCode::kNotFound);
  }
  for (const IpPrefix& p : kernel.addresses) {
    if (absl::c_linear_search(spec.addresses, p)) continue;
    add(Kind::kDeleteAddress, p, 0, "address",
        absl::StrCat("address ", p.ToString(), " removed (not desired)"),
        absl::StrCat("cannot remove address ", p.ToString()), absl::StatusCode::kNotFound);
  }
  if (undesired_only) return plan;
  for (const IpPrefix& p : spec.addresses) {
    if (absl::c_linear_search(kernel.addresses, p)) continue;
    add(Kind::kAddAddress, p, 0, "address", absl::StrCat("address ", p.ToString(), " added back"),
        absl::StrCat("cannot add address ", p.ToString(), " back"),
        absl::StatusCode::kAlreadyExists);
  }
  for (const IpPrefix& p : spec.routes) {
    if (absl::c_linear_search(kernel.routes, p)) continue;
    add(Kind::kAddRoute, p, 0, "route", absl::StrCat("route ", p.ToString(), " added back"),
        absl::StrCat("cannot add route ", p.ToString(), " back"));
  }
  return plan;
}

std::vector<absl::Status> TunnelManager::ApplyRepairs(
    const std::vector<std::pair<Entry*, std::vector<Repair>>>& plans) {
  std::vector<LinkChange> changes;
  for (const auto& [entry, plan] : plans) {
    for (const Repair& r : plan) changes.push_back(r.change);
  }
  std::vector<absl::Status> answers;
  if (!changes.empty()) {
    KernelChanging();
    answers = links_->ApplyChanges(changes);
  }
  std::vector<absl::Status> first_failures(plans.size());
  size_t next = 0;
  for (size_t i = 0; i < plans.size(); ++i) {
    auto& [entry, plan] = plans[i];
    for (const Repair& r : plan) {
      const absl::Status& s = answers[next++];
      if (s.ok()) {
        RecordRepair(*entry, r.what, r.done);
      } else if (s.code() != r.nothing_to_do && first_failures[i].ok()) {
        first_failures[i] = absl::Status(s.code(), absl::StrCat(r.failed, ": ", s.message()));
      }
    }
  }
  return first_failures;
}

absl::Status TunnelManager::RemoveUndesired(Entry& entry, const Device& device,
                                            const DeviceState& kernel) {
  return ApplyRepairs({{&entry, PlanRepairs(entry, device, kernel, /*undesired_only=*/true)}})[0];
}

absl::Status TunnelManager::Reconcile(Entry& entry, const DeviceState& kernel) {
  return ApplyRepairs(
      {{&entry, PlanRepairs(entry, *entry.device, kernel, /*undesired_only=*/false)}})[0];
}

absl::Status TunnelManager::ReconcileNow(Entry& entry) {
  if (!entry.device) return absl::OkStatus();
  KernelChanging();
  absl::StatusOr<std::map<int, DeviceState>> devices = links_->DeviceStates();
  if (!devices.ok()) return devices.status();
  auto found = devices->find(entry.device->ifindex());
  if (found == devices->end()) return absl::OkStatus();  // gone: RefreshStates makes it again
  return Reconcile(entry, found->second);
}

void TunnelManager::RefreshStates(bool kernel_changed) {
  // What the kernel is to be asked, taken under the lock; the asking is done without it.
  uint64_t generation = 0;
  std::vector<std::pair<std::string, dataplane::IpAddress>> remotes;
  // The restore configures the kernel tunnel by tunnel, holding the writers' lock: nothing to
  // compare yet, and no reason to wait for it (it sets refresh_again_ when it is done).
  if (!RestoreStatus().ok()) return;
  {
    absl::MutexLock lock(&change_mu_);
    kernel_changed |= refresh_again_;
    refresh_again_ = false;
    generation = kernel_generation_;
    // Put off while requests keep changing the kernel (Options::refresh_pause); a change
    // someone else made meanwhile is still seen, refresh_max_put_off later at the latest.
    const absl::Time now = absl::Now();
    if (kernel_changed && now - kernel_changed_at_ < options_.refresh_pause) {
      if (reading_put_off_since_ == absl::InfiniteFuture()) reading_put_off_since_ = now;
      if (now - reading_put_off_since_ < options_.refresh_max_put_off) {
        refresh_again_ = true;
        kernel_changed = false;
      }
    }
    if (kernel_changed) reading_put_off_since_ = absl::InfiniteFuture();
    if (kernel_changed) {
      remotes.reserve(tunnels_.size());
      for (const auto& [name, entry] : tunnels_) {
        if (entry->device) remotes.emplace_back(name, entry->spec.remote);
      }
    }
  }
  absl::StatusOr<std::map<int, DeviceState>> devices;
  std::map<std::string, absl::StatusOr<UnderlayRoute>> routes;
  if (kernel_changed) {
    devices = links_->DeviceStates();
    if (!devices.ok()) {
      absl::MutexLock lock(&change_mu_);
      refresh_again_ = true;  // not read: the next call tries again
      return;
    }
    routes = RoutesOf(remotes);  // thousands of tunnels share a few remotes: one lookup each
  }

  absl::MutexLock lock(&change_mu_);
  if (kernel_changed && generation != kernel_generation_) {
    // A request changed the kernel meanwhile: what was read may show its work half done.
    refresh_again_ = true;
    kernel_changed = false;
  }
  std::map<int, std::string> tunnel_devices;  // a route into one of these is a loop
  if (kernel_changed) {
    for (const auto& [name, entry] : tunnels_) {
      if (entry->device) tunnel_devices.emplace(entry->device->ifindex(), name);
    }
  }
  std::vector<Entry*> with_device;  // had one before the retries below
  std::vector<Entry*> read;         // and were in the reading
  for (auto& [name, entry_ptr] : tunnels_) {
    Entry& entry = *entry_ptr;
    if (!entry.device) {
      // Lost its device earlier and could not get it back: try again now and then.
      if (entry.repair_at == absl::InfiniteFuture() || absl::Now() < entry.repair_at) continue;
      if (absl::Status status = BringUp(entry); status.ok()) {
        entry.repair_at = absl::InfiniteFuture();
        RecordRepair(entry, "link", "device made again");
        SetState(entry, OperState::kUp, "");
      } else {
        entry.repair_at = absl::Now() + absl::Seconds(10);
      }
      continue;
    }
    with_device.push_back(&entry);
    // A tunnel that got its device after the reading (none here, as no request came in
    // between, but a retry above may have made one) is looked at the next time.
    if (kernel_changed && routes.count(name)) read.push_back(&entry);
  }
  // The repairs of every tunnel go to the kernel together.
  if (!read.empty()) RefreshFromKernel(read, *devices, routes, tunnel_devices);
  for (Entry* entry_ptr : with_device) {
    Entry& entry = *entry_ptr;
    if (!entry.device) continue;  // removed and not made again (ERROR already recorded)
    OperState state = entry.kernel_state;
    std::string reason = entry.kernel_reason;
    if (state == OperState::kUp && entry.spec.keepalive.enabled() && entry.in_engine &&
        entry.counters && !entry.counters->peer_alive.load()) {
      state = OperState::kDown;
      reason = absl::StrCat("keepalive: no reply from ", entry.spec.remote.ToString(), " in ",
                            entry.spec.keepalive.effective_retries(), " intervals");
    }
    SetState(entry, state, std::move(reason));
  }
  RefreshPeerStates();
}

void TunnelManager::RefreshFromKernel(
    const std::vector<Entry*>& entries, const std::map<int, DeviceState>& devices,
    const std::map<std::string, absl::StatusOr<UnderlayRoute>>& routes,
    const std::map<int, std::string>& tunnel_devices) {
  std::vector<std::pair<Entry*, std::vector<Repair>>> plans;
  plans.reserve(entries.size());
  for (Entry* entry : entries) {
    auto found = devices.find(entry->device->ifindex());
    if (found != devices.end()) {
      plans.emplace_back(entry, PlanRepairs(*entry, *entry->device, found->second,
                                            /*undesired_only=*/false));
      continue;
    }
    // Removed behind the agent's back: the tunnel is still desired, so make it again.
    StopDataplane(*entry);
    entry->device.reset();
    if (absl::Status status = BringUp(*entry); !status.ok()) {
      entry->repair_at = absl::Now() + absl::Seconds(10);
      SetState(*entry, OperState::kError,
               absl::StrCat("the device was removed by someone else and cannot be made again: ",
                            status.message()));
      continue;
    }
    RecordRepair(*entry, "link", "device was removed by someone else; made again");
    entry->kernel_state = OperState::kUp;
    entry->kernel_reason.clear();
  }
  const std::vector<absl::Status> repaired = ApplyRepairs(plans);
  for (size_t i = 0; i < plans.size(); ++i) {
    Entry& entry = *plans[i].first;
    static const absl::StatusOr<UnderlayRoute> kNotLookedUp = absl::NotFoundError("not looked up");
    auto route = routes.find(entry.spec.name);
    UnderlayLookup underlay = UnderlayFrom(
        entry.spec, route != routes.end() ? route->second : kNotLookedUp, &tunnel_devices);
    if (underlay.loop_device.empty()) {
      // The conflict index holds the addresses: told only when they moved (re-indexing every
      // tunnel after each refresh would cost a scan per request again).
      if (!absl::c_equal(underlay.addresses, entry.underlay,
                         [](const UnderlayAddress& a, const UnderlayAddress& b) {
                           return a.address == b.address;
                         })) {
        IndexChanged(entry.spec.name);
      }
      entry.underlay = std::move(underlay.addresses);
    }
    entry.kernel_state = OperState::kUp;
    entry.kernel_reason.clear();
    if (!repaired[i].ok()) {
      entry.kernel_state = OperState::kError;
      entry.kernel_reason = std::string(repaired[i].message());
    } else if (!underlay.loop_device.empty()) {
      entry.kernel_state = OperState::kDown;
      entry.kernel_reason = absl::StrCat(
          "loop: the route towards the remote ", entry.spec.remote.ToString(),
          " leads into tunnel device ", underlay.loop_device,
          " (a route made outside the agent); its packets are dropped until that route is gone");
    }
  }
}

std::map<std::string, absl::StatusOr<UnderlayRoute>> TunnelManager::RoutesOf(
    const std::vector<std::pair<std::string, dataplane::IpAddress>>& remotes) {
  std::vector<dataplane::IpAddress> distinct;
  std::map<std::string, size_t> index;  // by the remote's text
  for (const auto& [name, remote] : remotes) {
    if (remote.family() == dataplane::IpAddress::Family::kNone) continue;  // multipoint
    if (index.emplace(remote.ToString(), distinct.size()).second) distinct.push_back(remote);
  }
  const std::vector<absl::StatusOr<UnderlayRoute>> found = links_->RoutesTo(distinct);
  std::map<std::string, absl::StatusOr<UnderlayRoute>> routes;
  for (const auto& [name, remote] : remotes) {
    auto it = index.find(remote.ToString());
    routes.emplace(name, it != index.end() ? found[it->second]
                                           : absl::StatusOr<UnderlayRoute>(
                                                 absl::NotFoundError("multipoint: no remote")));
  }
  return routes;
}

uint32_t TunnelManager::MtuWith(const TunnelSpec& spec,
                                const absl::StatusOr<UnderlayRoute>& route) {
  if (spec.mtu != 0) return spec.mtu;
  if (!route.ok() || route->path_mtu == 0) return MtuFor(spec);
  return dataplane::AutomaticMtu(spec.mode, OutputGreOptions(spec), route->path_mtu,
                                 spec.fou.enabled);
}

}  // namespace tunnelagent::agent
