#include "agent/link_control.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/fd_budget.h"
#include "agent/log.h"
#include "dataplane/errno_status.h"
#include "dataplane/tun/tun_device.h"

namespace tunnelagent::agent {
namespace {

using dataplane::TunDevice;

// net.ipv6.conf.<device>.disable_ipv6. A device the agent makes starts without IPv6 and gets it
// with its first IPv6 address or route: the kernel walks every IPv6 route once for each device
// that goes up or away, and a device with IPv6 brings three routes of its own (link-local,
// its address, multicast), so thousands of IPv6-less tunnels made the start and the stop of the
// agent quadratic (5,000 tunnels: restore 12.2 s -> 2.2 s, removal 5.0 s -> 2.8 s without).
// Where the sysctl cannot be written (IPv6 compiled out, /proc/sys read-only in a container)
// the device keeps the kernel's default: slower at scale, otherwise the same.
absl::Status SetIpv6Disabled(const std::string& device, bool disabled) {
  const std::string path = absl::StrCat("/proc/sys/net/ipv6/conf/", device, "/disable_ipv6");
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return dataplane::ErrnoStatus(errno, absl::StrCat("opening ", path));
  const char value = disabled ? '1' : '0';
  const ssize_t n = write(fd, &value, 1);
  const int err = errno;
  close(fd);
  if (n != 1) return dataplane::ErrnoStatus(err, absl::StrCat("writing ", path));
  return absl::OkStatus();
}

}  // namespace

absl::Status TunLink::EnsureIpv6() const {
  if (!ipv6_disabled_) return absl::OkStatus();
  if (absl::Status status = SetIpv6Disabled(tun_->name(), false); !status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("turning IPv6 on for ", tun_->name(), ": ", status.message()));
  }
  ipv6_disabled_ = false;
  return absl::OkStatus();
}

void TunLink::DisableIpv6() { ipv6_disabled_ = SetIpv6Disabled(tun_->name(), true).ok(); }

namespace {

absl::Status EnsureIpv6For(const Device& device, const dataplane::IpPrefix& prefix) {
  if (!prefix.address().is_v6()) return absl::OkStatus();
  const auto* link = dynamic_cast<const TunLink*>(&device);
  return link == nullptr ? absl::OkStatus() : link->EnsureIpv6();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::CreateDevice(const std::string& name,
                                                                        DeviceKind kind) {
  // Tunnels may not take the descriptors kept for the API's connections and the agent.
  if (absl::Status budget = CheckTunnelFdBudget(); !budget.ok()) return budget;
  TunDevice::CreateOptions options;
  options.alias = dataplane::kAgentDeviceAlias;
  options.persistent = true;
  options.netlink = netlink_;
  options.offload = offload_;
  options.multi_queue = multi_queue_;
  absl::StatusOr<std::unique_ptr<TunDevice>> tun = TunDevice::Create(name, kind, options);
  if (!tun.ok()) return tun.status();
  // Without the group the device is still the agent's (its alias says so): it is only
  // removed on its own at stop instead of in the batch.
  netlink_->SetLinkGroup((*tun)->ifindex(), kAgentLinkGroup).IgnoreError();
  // Before it first goes up, so that the kernel never makes the default qdiscs (one per
  // possible queue: megabytes per device). Without it the device works the same, dearer.
  netlink_->SetNoQueue((*tun)->ifindex()).IgnoreError();
  auto link = std::make_unique<TunLink>(*std::move(tun));
  link->DisableIpv6();  // before it goes up: until an IPv6 prefix needs it
  return link;
}

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::AttachDevice(const std::string& name,
                                                                        DeviceKind kind) {
  absl::StatusOr<dataplane::LinkInfo> link = netlink_->GetLinkByName(name);
  if (!link.ok()) return link.status();
  if (!dataplane::IsAgentDevice(*link)) {
    return absl::NotFoundError(absl::StrCat("no device of the agent's named ", name));
  }
  return AttachLink(*link, kind);
}

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::AttachListedDevice(
    const std::string& name, DeviceKind kind) {
  std::optional<dataplane::LinkInfo> link;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = listed_.find(name); it != listed_.end()) link = it->second;
  }
  if (!link.has_value()) return AttachDevice(name, kind);
  // TunDevice::Attach finds the device by name and checks it is a persistent one of `kind`;
  // a link of that name made since the listing by someone else is no TUN device of ours to
  // attach to, and one of the other kind is handled as AttachDevice does.
  return AttachLink(*link, kind);
}

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::AttachLink(
    const dataplane::LinkInfo& link_info, DeviceKind kind) {
  const std::string& name = link_info.name;
  const dataplane::LinkInfo* link = &link_info;
  absl::StatusOr<std::unique_ptr<TunDevice>> tun =
      TunDevice::Attach(name, kind, offload_, multi_queue_);
  if (absl::IsFailedPrecondition(tun.status())) {
    // Either in use, or the other kind (the tunnel's mode changed between TUN and TAP while
    // the device was left behind). Only in the second case can it be opened as the other
    // kind; then it is the agent's and useless for this mode: it goes.
    const DeviceKind other = kind == DeviceKind::kTun ? DeviceKind::kTap : DeviceKind::kTun;
    if (absl::StatusOr<std::unique_ptr<TunDevice>> wrong =
            TunDevice::Attach(name, other, false, multi_queue_);
        wrong.ok()) {
      (*wrong)->SetPersistent(false).IgnoreError();  // closing the fd now removes it
      wrong->reset();
      netlink_->DeleteLink(link->ifindex).IgnoreError();  // in case closing did not
      return absl::NotFoundError(absl::StrCat("device ", name, " was of the other kind (",
                                              other == DeviceKind::kTap ? "tap" : "tun",
                                              ") and was removed"));
    }
  }
  if (!tun.ok()) return tun.status();
  if ((*tun)->ifindex() != link->ifindex) {
    // Removed and made again by someone else since it was looked up: not the agent's.
    return absl::NotFoundError(
        absl::StrCat("device ", name, " was replaced since it was looked up; not the agent's"));
  }
  // A device an older agent made has no group yet.
  if (link->group != kAgentLinkGroup) {
    netlink_->SetLinkGroup(link->ifindex, kAgentLinkGroup).IgnoreError();
  }
  return std::make_unique<TunLink>(*std::move(tun));
}

absl::StatusOr<std::vector<std::string>> KernelLinkControl::ListAgentDevices() {
  absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
  if (!links.ok()) return links.status();
  std::vector<std::string> names;
  std::map<std::string, dataplane::LinkInfo> listed;
  for (const dataplane::LinkInfo& link : *links) {
    if (!dataplane::IsAgentDevice(link)) continue;
    names.push_back(link.name);
    listed.emplace(link.name, link);
  }
  absl::MutexLock lock(&mu_);
  listed_ = std::move(listed);
  return names;
}

absl::Status KernelLinkControl::DeleteDevice(const std::string& name) {
  absl::StatusOr<dataplane::LinkInfo> link = netlink_->GetLinkByName(name);
  if (!link.ok()) return link.status();
  if (!dataplane::IsAgentDevice(*link)) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", name, " was not created by the agent; not touching it"));
  }
  return netlink_->DeleteLink(link->ifindex);
}

void KernelLinkControl::RemoveDevices(std::vector<std::unique_ptr<Device>> devices) {
  if (devices.size() >= 2) {
    std::set<int> moved;
    for (const std::unique_ptr<Device>& device : devices) {
      if (netlink_->SetLinkGroup(device->ifindex(), kRemovingLinkGroup).ok()) {
        moved.insert(device->ifindex());
      }
    }
    absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
    bool only_ours = links.ok() && !moved.empty();
    for (size_t i = 0; only_ours && i < links->size(); ++i) {
      const dataplane::LinkInfo& link = (*links)[i];
      if (link.group == kRemovingLinkGroup && moved.count(link.ifindex) == 0) {
        Log("WARNING",
            "link %s is in link group %u, where the agent removes its devices in one batch, "
            "but is not one of them; removing %d devices one by one",
            link.name, kRemovingLinkGroup, static_cast<int>(devices.size()));
        only_ours = false;
      }
    }
    if (only_ours) {
      const absl::Time start = absl::Now();
      if (absl::Status status = netlink_->DeleteLinkGroup(kRemovingLinkGroup); status.ok()) {
        Log("INFO", "removed %d devices in one batch in %.0f ms", static_cast<int>(moved.size()),
            absl::ToDoubleMilliseconds(absl::Now() - start));
      } else {
        Log("WARNING", "devices not removed in one batch (%s); removing them one by one",
            status.ToString());
      }
    }
  }
  devices.clear();  // a device whose link is gone is only closed
}

absl::Status KernelLinkControl::RemoveAgentDevices() {
  absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
  if (!links.ok()) return links.status();
  bool grouped = false;
  std::vector<int> ungrouped;  // the agent's, outside the group: removed one by one
  for (const dataplane::LinkInfo& link : *links) {
    const bool agent = dataplane::IsAgentDevice(link);
    if (link.group == kAgentLinkGroup && !agent) {
      // Someone else's link in the agent's group: the batch would take it along.
      return absl::FailedPreconditionError(
          absl::StrCat("link ", link.name, " is in the agent's link group ", kAgentLinkGroup,
                       " but was not created by the agent; not removing in bulk"));
    }
    if (!agent) continue;
    if (link.group == kAgentLinkGroup) {
      grouped = true;
    } else {
      ungrouped.push_back(link.ifindex);
    }
  }
  absl::Status status;
  if (grouped) status.Update(netlink_->DeleteLinkGroup(kAgentLinkGroup));
  for (int ifindex : ungrouped) {
    if (absl::Status s = netlink_->DeleteLink(ifindex); !s.ok() && !absl::IsNotFound(s)) {
      status.Update(s);
    }
  }
  return status;
}

absl::Status KernelLinkControl::SetMtu(const Device& device, uint32_t mtu) {
  return netlink_->SetLinkMtu(device.ifindex(), mtu);
}

absl::Status KernelLinkControl::SetUp(const Device& device) {
  return netlink_->SetLinkUp(device.ifindex(), true);
}

absl::Status KernelLinkControl::AddAddress(const Device& device,
                                           const dataplane::IpPrefix& address) {
  if (absl::Status status = EnsureIpv6For(device, address); !status.ok()) return status;
  return netlink_->AddAddress(device.ifindex(), address);
}

absl::Status KernelLinkControl::DeleteAddress(const Device& device,
                                              const dataplane::IpPrefix& address) {
  return netlink_->DeleteAddress(device.ifindex(), address);
}

absl::Status KernelLinkControl::AddRoute(const Device& device, const dataplane::IpPrefix& route) {
  if (absl::Status status = EnsureIpv6For(device, route); !status.ok()) return status;
  return netlink_->AddRoute(device.ifindex(), route);
}

absl::Status KernelLinkControl::DeleteRoute(const Device& device,
                                            const dataplane::IpPrefix& route) {
  return netlink_->DeleteRoute(device.ifindex(), route);
}

absl::StatusOr<std::map<int, bool>> KernelLinkControl::LinkStates() {
  absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
  if (!links.ok()) return links.status();
  std::map<int, bool> states;
  for (const dataplane::LinkInfo& link : *links) states[link.ifindex] = link.up;
  return states;
}

absl::StatusOr<uint32_t> KernelLinkControl::PathMtu(const dataplane::IpAddress& remote) {
  return netlink_->PathMtu(remote);
}

absl::StatusOr<std::map<int, DeviceState>> KernelLinkControl::DeviceStates() {
  // Three dumps whatever the number of links. They are not one snapshot: a change between two
  // of them shows up in the next read, which the change notification it causes brings about.
  absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
  if (!links.ok()) return links.status();
  absl::StatusOr<std::map<int, std::vector<dataplane::IpPrefix>>> addresses =
      netlink_->ListAllAddresses();
  if (!addresses.ok()) return addresses.status();
  absl::StatusOr<std::map<int, std::vector<dataplane::IpPrefix>>> routes =
      netlink_->ListAgentRoutes();
  if (!routes.ok()) return routes.status();

  std::map<int, DeviceState> states;
  std::map<std::string, dataplane::LinkInfo> listed;
  for (const dataplane::LinkInfo& link : *links) {
    DeviceState& state = states[link.ifindex];
    state.up = link.up;
    state.mtu = link.mtu;
    state.name = link.name;
    state.agent = dataplane::IsAgentDevice(link);
    if (state.agent) listed.emplace(link.name, link);
    if (auto it = addresses->find(link.ifindex); it != addresses->end()) {
      state.addresses = std::move(it->second);
    }
    if (auto it = routes->find(link.ifindex); it != routes->end()) {
      state.routes = std::move(it->second);
    }
  }
  // Addresses or routes of a link made after the link dump wait for the next read too.
  absl::MutexLock lock(&mu_);
  listed_ = std::move(listed);
  return states;
}

absl::StatusOr<UnderlayRoute> KernelLinkControl::RouteTo(const dataplane::IpAddress& destination) {
  absl::StatusOr<dataplane::RouteLookup> route = netlink_->RouteGet(destination);
  if (!route.ok()) return route.status();
  UnderlayRoute underlay;
  underlay.ifindex = route->ifindex;
  underlay.gateway = route->gateway;
  underlay.source = route->source;
  return underlay;
}

std::vector<absl::Status> LinkControl::ApplyChanges(const std::vector<LinkChange>& changes) {
  std::vector<absl::Status> statuses;
  statuses.reserve(changes.size());
  for (const LinkChange& c : changes) {
    switch (c.kind) {
      case LinkChange::Kind::kSetUp:
        statuses.push_back(SetUp(*c.device));
        break;
      case LinkChange::Kind::kSetMtu:
        statuses.push_back(SetMtu(*c.device, c.mtu));
        break;
      case LinkChange::Kind::kAddAddress:
        statuses.push_back(AddAddress(*c.device, c.prefix));
        break;
      case LinkChange::Kind::kDeleteAddress:
        statuses.push_back(DeleteAddress(*c.device, c.prefix));
        break;
      case LinkChange::Kind::kAddRoute:
        statuses.push_back(AddRoute(*c.device, c.prefix));
        break;
      case LinkChange::Kind::kDeleteRoute:
        statuses.push_back(DeleteRoute(*c.device, c.prefix));
        break;
    }
  }
  return statuses;
}

std::vector<absl::StatusOr<UnderlayRoute>> LinkControl::RoutesTo(
    const std::vector<dataplane::IpAddress>& destinations) {
  std::vector<absl::StatusOr<UnderlayRoute>> routes;
  routes.reserve(destinations.size());
  for (const dataplane::IpAddress& destination : destinations) {
    routes.push_back(RouteTo(destination));
  }
  return routes;
}

std::vector<absl::Status> KernelLinkControl::ApplyChanges(const std::vector<LinkChange>& changes) {
  using Kind = LinkChange::Kind;
  std::vector<absl::Status> statuses(changes.size());
  std::vector<dataplane::LinkRequest> requests;
  std::vector<size_t> sent;  // the change of each request
  requests.reserve(changes.size());
  for (size_t i = 0; i < changes.size(); ++i) {
    const LinkChange& c = changes[i];
    // An IPv6 prefix needs IPv6 on the device first (a sysctl, not netlink): refused here as
    // the single call would refuse it.
    if (c.kind == Kind::kAddAddress || c.kind == Kind::kAddRoute) {
      if (absl::Status s = EnsureIpv6For(*c.device, c.prefix); !s.ok()) {
        statuses[i] = s;
        continue;
      }
    }
    dataplane::LinkRequest r{.ifindex = c.device->ifindex(), .prefix = c.prefix, .mtu = c.mtu};
    switch (c.kind) {
      case Kind::kSetUp:
        r.kind = dataplane::LinkRequest::Kind::kSetUp;
        break;
      case Kind::kSetMtu:
        r.kind = dataplane::LinkRequest::Kind::kSetMtu;
        break;
      case Kind::kAddAddress:
        r.kind = dataplane::LinkRequest::Kind::kAddAddress;
        break;
      case Kind::kDeleteAddress:
        r.kind = dataplane::LinkRequest::Kind::kDeleteAddress;
        break;
      case Kind::kAddRoute:
        r.kind = dataplane::LinkRequest::Kind::kAddRoute;
        break;
      case Kind::kDeleteRoute:
        r.kind = dataplane::LinkRequest::Kind::kDeleteRoute;
        break;
    }
    requests.push_back(r);
    sent.push_back(i);
  }
  std::vector<absl::Status> answers = netlink_->Apply(requests);
  for (size_t k = 0; k < sent.size(); ++k) statuses[sent[k]] = std::move(answers[k]);
  return statuses;
}

std::vector<absl::StatusOr<UnderlayRoute>> KernelLinkControl::RoutesTo(
    const std::vector<dataplane::IpAddress>& destinations) {
  std::vector<absl::StatusOr<dataplane::RouteLookup>> lookups =
      netlink_->RouteGetMany(destinations);
  // The path MTU as PathMtu finds it: the route's MTU metric, else its link's MTU, asked once
  // for each link the routes leave by (a few underlay links, however many tunnels).
  std::map<int, uint32_t> link_mtu;
  for (const auto& lookup : lookups) {
    if (!lookup.ok() || lookup->mtu_metric != 0 || link_mtu.count(lookup->ifindex)) continue;
    absl::StatusOr<dataplane::LinkInfo> link = netlink_->GetLink(lookup->ifindex);
    link_mtu[lookup->ifindex] = link.ok() ? link->mtu : 0;  // 0: PathMtu asked later
  }
  std::vector<absl::StatusOr<UnderlayRoute>> routes;
  routes.reserve(lookups.size());
  for (auto& lookup : lookups) {
    if (!lookup.ok()) {
      routes.push_back(lookup.status());
      continue;
    }
    UnderlayRoute underlay;
    underlay.ifindex = lookup->ifindex;
    underlay.gateway = lookup->gateway;
    underlay.source = lookup->source;
    if (lookup->mtu_metric != 0) {
      underlay.path_mtu = lookup->mtu_metric;
    } else if (auto it = link_mtu.find(lookup->ifindex); it != link_mtu.end() && it->second) {
      underlay.path_mtu = it->second;
    }
    routes.push_back(underlay);
  }
  return routes;
}

}  // namespace tunnelagent::agent
