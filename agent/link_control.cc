#include "agent/link_control.h"

#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/tun_device.h"

namespace tunnelagent::agent {
namespace {

using dataplane::TunDevice;

// A persistent TUN device: removed when this object goes unless Keep() was called, so that
// both a clean stop and a failed create leave nothing, while a crash leaves the device for the
// next start to re-attach.
class TunLink final : public Device {
 public:
  explicit TunLink(std::unique_ptr<TunDevice> tun) : tun_(std::move(tun)) {}
  ~TunLink() override {
    if (!keep_) tun_->SetPersistent(false).IgnoreError();  // closing the fd then removes it
  }
  int fd() const override { return tun_->fd(); }
  int ifindex() const override { return tun_->ifindex(); }
  void Keep() override { keep_ = true; }
  bool offload() const override { return tun_->offload(); }
  bool udp_offload() const override { return tun_->udp_offload(); }

 private:
  std::unique_ptr<TunDevice> tun_;
  bool keep_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::CreateDevice(const std::string& name,
                                                                        DeviceKind kind) {
  TunDevice::CreateOptions options;
  options.alias = dataplane::kAgentDeviceAlias;
  options.persistent = true;
  options.netlink = netlink_;
  options.offload = offload_;
  options.multi_queue = multi_queue_;
  absl::StatusOr<std::unique_ptr<TunDevice>> tun = TunDevice::Create(name, kind, options);
  if (!tun.ok()) return tun.status();
  return std::make_unique<TunLink>(*std::move(tun));
}

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::AttachDevice(const std::string& name,
                                                                        DeviceKind kind) {
  absl::StatusOr<dataplane::LinkInfo> link = netlink_->GetLinkByName(name);
  if (!link.ok()) return link.status();
  if (!dataplane::IsAgentDevice(*link)) {
    return absl::NotFoundError(absl::StrCat("no device of the agent's named ", name));
  }
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
  return std::make_unique<TunLink>(*std::move(tun));
}

absl::StatusOr<std::vector<std::string>> KernelLinkControl::ListAgentDevices() {
  absl::StatusOr<std::vector<dataplane::LinkInfo>> links = netlink_->ListLinks();
  if (!links.ok()) return links.status();
  std::vector<std::string> names;
  for (const dataplane::LinkInfo& link : *links) {
    if (dataplane::IsAgentDevice(link)) names.push_back(link.name);
  }
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

absl::Status KernelLinkControl::SetMtu(const Device& device, uint32_t mtu) {
  return netlink_->SetLinkMtu(device.ifindex(), mtu);
}

absl::Status KernelLinkControl::SetUp(const Device& device) {
  return netlink_->SetLinkUp(device.ifindex(), true);
}

absl::Status KernelLinkControl::AddAddress(const Device& device,
                                           const dataplane::IpPrefix& address) {
  return netlink_->AddAddress(device.ifindex(), address);
}

absl::Status KernelLinkControl::DeleteAddress(const Device& device,
                                              const dataplane::IpPrefix& address) {
  return netlink_->DeleteAddress(device.ifindex(), address);
}

absl::Status KernelLinkControl::AddRoute(const Device& device, const dataplane::IpPrefix& route) {
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
  for (const dataplane::LinkInfo& link : *links) {
    DeviceState& state = states[link.ifindex];
    state.up = link.up;
    state.mtu = link.mtu;
    if (auto it = addresses->find(link.ifindex); it != addresses->end()) {
      state.addresses = std::move(it->second);
    }
    if (auto it = routes->find(link.ifindex); it != routes->end()) {
      state.routes = std::move(it->second);
    }
  }
  // Addresses or routes of a link made after the link dump wait for the next read too.
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

}  // namespace tunnelagent::agent
