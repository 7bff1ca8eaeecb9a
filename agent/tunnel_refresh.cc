// TunnelManager's side that watches the kernel: the underlay rule's lookups, convergence of
// each device to the desired state, loops, keepalive verdicts and the state they make.
#include <algorithm>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "agent/tunnel_manager.h"

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
  } else if (found.ok()) {
    for (const auto& [name, entry] : tunnels_) {
      if (entry && entry->device && entry->device->ifindex() == found->ifindex) {
        lookup.loop_device = name;
        break;
      }
    }
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
  for (const auto& [name, entry] : tunnels_) {
    if (name == ignore || name == spec.name) continue;
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

absl::Status TunnelManager::RemoveUndesired(Entry& entry, const Device& device,
                                            const DeviceState& kernel) {
  const TunnelSpec& spec = entry.spec;
  absl::Status first_failure;
  for (const IpPrefix& p : kernel.routes) {
    if (absl::c_linear_search(spec.routes, p)) continue;
    if (absl::Status s = links_->DeleteRoute(device, p); s.ok()) {
      RecordRepair(entry, "route", absl::StrCat("route ", p.ToString(), " removed (not desired)"));
    } else if (!absl::IsNotFound(s) && first_failure.ok()) {  // gone already: nothing to do
      first_failure = absl::Status(
          s.code(), absl::StrCat("cannot remove route ", p.ToString(), ": ", s.message()));
    }
  }
  for (const IpPrefix& p : kernel.addresses) {
    if (absl::c_linear_search(spec.addresses, p)) continue;
    if (absl::Status s = links_->DeleteAddress(device, p); s.ok()) {
      RecordRepair(entry, "address",
                   absl::StrCat("address ", p.ToString(), " removed (not desired)"));
    } else if (!absl::IsNotFound(s) && first_failure.ok()) {
      first_failure = absl::Status(
          s.code(), absl::StrCat("cannot remove address ", p.ToString(), ": ", s.message()));
    }
  }
  return first_failure;
}

absl::Status TunnelManager::Reconcile(Entry& entry, const DeviceState& kernel) {
  const Device& device = *entry.device;
  const TunnelSpec& spec = entry.spec;
  absl::Status first_failure;
  auto failed = [&first_failure](absl::Status status, absl::string_view what) {
    if (!first_failure.ok()) return;
    first_failure = what.empty()
                        ? status
                        : absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
  };
  // Link first: taking a link down removes its IPv4 routes and IPv6 addresses, which come back
  // below. Then the MTU (IPv6 addresses need 1280 or more); what is not desired goes before
  // what is missing comes back.
  if (!kernel.up) {
    if (absl::Status s = links_->SetUp(device); s.ok()) {
      RecordRepair(entry, "link", "link was set down; set up again");
    } else {
      failed(s, "cannot set the link up again");
    }
  }
  if (entry.mtu != 0 && kernel.mtu != entry.mtu) {
    if (absl::Status s = links_->SetMtu(device, entry.mtu); s.ok()) {
      RecordRepair(entry, "mtu", absl::StrCat("mtu was ", kernel.mtu, "; set back to ", entry.mtu));
    } else {
      failed(s, absl::StrCat("cannot set mtu ", entry.mtu, " again"));
    }
  }
  if (absl::Status s = RemoveUndesired(entry, device, kernel); !s.ok()) failed(s, "");
  for (const IpPrefix& p : spec.addresses) {
    if (absl::c_linear_search(kernel.addresses, p)) continue;
    absl::Status s = links_->AddAddress(device, p);
    if (s.ok()) {
      RecordRepair(entry, "address", absl::StrCat("address ", p.ToString(), " added back"));
    } else if (!absl::IsAlreadyExists(s)) {  // there, only not listed (an IPv6 link-local one)
      failed(s, absl::StrCat("cannot add address ", p.ToString(), " back"));
    }
  }
  for (const IpPrefix& p : spec.routes) {
    if (absl::c_linear_search(kernel.routes, p)) continue;
    if (absl::Status s = links_->AddRoute(device, p); s.ok()) {
      RecordRepair(entry, "route", absl::StrCat("route ", p.ToString(), " added back"));
    } else {
      failed(s, absl::StrCat("cannot add route ", p.ToString(), " back"));
    }
  }
  return first_failure;
}

absl::Status TunnelManager::ReconcileNow(Entry& entry) {
  if (!entry.device) return absl::OkStatus();
  ++kernel_generation_;  // its repairs change the kernel under a refresh reading it
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
    for (const auto& [name, remote] : remotes) routes.emplace(name, links_->RouteTo(remote));
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
    if (kernel_changed) {
      auto route = routes.find(name);
      // A tunnel that got its device after the reading (none here, as no request came in
      // between, but a retry above may have made one) is looked at the next time.
      if (route != routes.end()) {
        RefreshFromKernel(entry, *devices, route->second, tunnel_devices);
        if (!entry.device) continue;  // removed and not made again (ERROR already recorded)
      }
    }
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
}

void TunnelManager::RefreshFromKernel(Entry& entry, const std::map<int, DeviceState>& devices,
                                      const absl::StatusOr<UnderlayRoute>& route,
                                      const std::map<int, std::string>& tunnel_devices) {
  auto found = devices.find(entry.device->ifindex());
  if (found == devices.end()) {
    // Removed behind the agent's back: the tunnel is still desired, so make it again.
    StopDataplane(entry);
    entry.device.reset();
    if (absl::Status status = BringUp(entry); !status.ok()) {
      entry.repair_at = absl::Now() + absl::Seconds(10);
      SetState(entry, OperState::kError,
               absl::StrCat("the device was removed by someone else and cannot be made again: ",
                            status.message()));
      return;
    }
    RecordRepair(entry, "link", "device was removed by someone else; made again");
    entry.kernel_state = OperState::kUp;
    entry.kernel_reason.clear();
    return;
  }
  absl::Status repaired = Reconcile(entry, found->second);
  UnderlayLookup underlay = UnderlayFrom(entry.spec, route, &tunnel_devices);
  if (underlay.loop_device.empty()) entry.underlay = std::move(underlay.addresses);
  entry.kernel_state = OperState::kUp;
  entry.kernel_reason.clear();
  if (!repaired.ok()) {
    entry.kernel_state = OperState::kError;
    entry.kernel_reason = std::string(repaired.message());
  } else if (!underlay.loop_device.empty()) {
    entry.kernel_state = OperState::kDown;
    entry.kernel_reason = absl::StrCat(
        "loop: the route towards the remote ", entry.spec.remote.ToString(),
        " leads into tunnel device ", underlay.loop_device,
        " (a route made outside the agent); its packets are dropped until that route is gone");
  }
}

}  // namespace tunnelagent::agent
