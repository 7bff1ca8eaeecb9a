#include "agent/link_control.h"

#include "dataplane/tun_device.h"

namespace tunnelagent::agent {
namespace {

class TunLink final : public Device {
 public:
  explicit TunLink(std::unique_ptr<dataplane::TunDevice> tun) : tun_(std::move(tun)) {}
  int fd() const override { return tun_->fd(); }
  int ifindex() const override { return tun_->ifindex(); }

 private:
  std::unique_ptr<dataplane::TunDevice> tun_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> KernelLinkControl::CreateDevice(const std::string& name) {
  absl::StatusOr<std::unique_ptr<dataplane::TunDevice>> tun =
      dataplane::TunDevice::Create(name, dataplane::TunDevice::Kind::kTun);
  if (!tun.ok()) return tun.status();
  return std::make_unique<TunLink>(*std::move(tun));
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

absl::Status KernelLinkControl::AddRoute(const Device& device, const dataplane::IpPrefix& route) {
  return netlink_->AddRoute(device.ifindex(), route);
}

absl::StatusOr<uint32_t> KernelLinkControl::PathMtu(const dataplane::IpAddress& remote) {
  return netlink_->PathMtu(remote);
}

}  // namespace tunnelagent::agent
