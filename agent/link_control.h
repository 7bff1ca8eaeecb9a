// The kernel side of a tunnel's device, behind an interface so the control plane can be
// tested without privileges (a fake records calls and injects failures).
#ifndef TUNNELAGENT_AGENT_LINK_CONTROL_H_
#define TUNNELAGENT_AGENT_LINK_CONTROL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dataplane/address.h"
#include "dataplane/netlink.h"
#include "dataplane/tun/tun_device.h"

namespace tunnelagent::agent {

// A device the agent created or re-attached to. Destroying it removes the link, and with it
// the link's addresses and routes, unless Keep() was called first.
class Device {
 public:
  virtual ~Device() = default;
  virtual int fd() const = 0;
  virtual int ifindex() const = 0;
  // Leave the link in place when this object goes (for a quick restart).
  virtual void Keep() = 0;
  // Whether reads and writes on fd() carry a virtio-net header (TUN offloads on).
  virtual bool offload() const { return false; }
  // Whether UDP GSO packets may be written to it (TunDevice::udp_offload).
  virtual bool udp_offload() const { return false; }
};

// A persistent TUN or TAP device: removed when this object goes unless Keep() was called, so
// that both a clean stop and a failed create leave nothing, while a crash leaves the device for
// the next start to re-attach. The one Device over a TunDevice, whether the device was created,
// re-attached after a restart or handed over by the agent this one took over from.
class TunLink final : public Device {
 public:
  explicit TunLink(std::unique_ptr<dataplane::TunDevice> tun) : tun_(std::move(tun)) {}
  ~TunLink() override {
    if (!keep_) tun_->SetPersistent(false).IgnoreError();  // closing the fd then removes it
  }
  int fd() const override { return tun_->fd(); }
  int ifindex() const override { return tun_->ifindex(); }
  void Keep() override { keep_ = true; }
  bool offload() const override { return tun_->offload(); }
  bool udp_offload() const override { return tun_->udp_offload(); }

  // Turns IPv6 on before the device's first IPv6 address or route (the kernel refuses those on
  // a device without IPv6). Devices re-attached from an earlier run keep what they have.
  absl::Status EnsureIpv6() const;
  // For a device just made, before it goes up: IPv6 stays off until a prefix needs it.
  void DisableIpv6();

 private:
  std::unique_ptr<dataplane::TunDevice> tun_;
  bool keep_ = false;
  // Calls on one device come from the manager's writer, one at a time.
  mutable bool ipv6_disabled_ = false;
};

// What the kernel has on one link now.
struct DeviceState {
  bool up = false;  // administratively (IFF_UP)
  uint32_t mtu = 0;
  std::vector<dataplane::IpPrefix> addresses;  // as added: address and prefix length
  // Routes through the link in the main table that the agent's route protocol marks (the ones
  // AddRoute makes), not the kernel's own prefix and link-local routes.
  std::vector<dataplane::IpPrefix> routes;
  std::string name;
  // One of the agent's devices (what ListAgentDevices lists): AttachListedDevice takes it.
  bool agent = false;
};

// Where the kernel would send a packet to one destination: the link, the next hop when it is
// a gateway (unset when the destination is on-link) and the source address it would pick.
struct UnderlayRoute {
  int ifindex = 0;
  std::optional<dataplane::IpAddress> gateway;
  std::optional<dataplane::IpAddress> source;
  // The MTU of the path (PathMtu's answer) when the lookup learnt it (RoutesTo), else 0.
  uint32_t path_mtu = 0;
};

// One change of a device's configuration, for LinkControl::ApplyChanges: what SetUp, SetMtu,
// AddAddress, DeleteAddress, AddRoute and DeleteRoute do one at a time.
struct LinkChange {
  enum class Kind { kSetUp, kSetMtu, kAddAddress, kDeleteAddress, kAddRoute, kDeleteRoute };
  Kind kind = Kind::kSetUp;
  const Device* device = nullptr;  // must outlive the call
  dataplane::IpPrefix prefix;      // kAddAddress .. kDeleteRoute
  uint32_t mtu = 0;                // kSetMtu
};

// TUN (layer 3: IP packets) for most modes, TAP (layer 2: Ethernet frames) for gretap and
// ip6gretap.
using DeviceKind = dataplane::TunDevice::Kind;

class LinkControl {
 public:
  virtual ~LinkControl() = default;
  // A TUN or TAP device, marked as the agent's; ALREADY_EXISTS when any link has the name.
  virtual absl::StatusOr<std::unique_ptr<Device>> CreateDevice(const std::string& name,
                                                               DeviceKind kind) = 0;
  // The agent's own device of that name and kind left from an earlier run; NOT_FOUND when
  // there is none (a device of that name the agent did not create counts as none). An agent
  // device of that name but the other kind is removed (it can serve no tunnel of this mode),
  // and NOT_FOUND answered, so the caller makes a new one.
  virtual absl::StatusOr<std::unique_ptr<Device>> AttachDevice(const std::string& name,
                                                               DeviceKind kind) = 0;
  // Names of the devices the agent created that exist now (attached or not).
  virtual absl::StatusOr<std::vector<std::string>> ListAgentDevices() = 0;
  // Removes an agent device nobody is attached to.
  virtual absl::Status DeleteDevice(const std::string& name) = 0;
  // Removes every device of the agent's, attached or not, in one kernel batch: one removal's
  // RCU grace periods for all of them instead of one each (seconds for thousands). What is
  // attached must no longer be in use (the dataplane has let go of it). FAILED_PRECONDITION,
  // removing nothing, when the batch would touch a device the agent did not create;
  // UNIMPLEMENTED where there is no batch: the caller then removes its devices one by one.
  virtual absl::Status RemoveAgentDevices() {
    return absl::UnimplementedError("no removal in bulk here");
  }
  // Removes the links of `devices` (the dataplane has let go of them) and closes them: here
  // one by one, as each device's destructor does; the real one in one kernel batch.
  virtual void RemoveDevices(std::vector<std::unique_ptr<Device>> devices) { devices.clear(); }

  virtual absl::Status SetMtu(const Device& device, uint32_t mtu) = 0;
  virtual absl::Status SetUp(const Device& device) = 0;
  virtual absl::Status AddAddress(const Device& device, const dataplane::IpPrefix& address) = 0;
  virtual absl::Status DeleteAddress(const Device& device, const dataplane::IpPrefix& address) = 0;
  virtual absl::Status AddRoute(const Device& device, const dataplane::IpPrefix& route) = 0;
  virtual absl::Status DeleteRoute(const Device& device, const dataplane::IpPrefix& route) = 0;
  // Administrative state (IFF_UP) of every link, by ifindex: one dump for all tunnels.
  virtual absl::StatusOr<std::map<int, bool>> LinkStates() = 0;
  // MTU of the underlay path to `remote`.
  virtual absl::StatusOr<uint32_t> PathMtu(const dataplane::IpAddress& remote) = 0;
  // Every link's DeviceState, by ifindex: a few dumps for all tunnels (links, addresses,
  // routes), whatever their number.
  virtual absl::StatusOr<std::map<int, DeviceState>> DeviceStates() = 0;
  // The kernel's route lookup (`ip route get`) for `destination`. NOT_FOUND when unreachable.
  virtual absl::StatusOr<UnderlayRoute> RouteTo(const dataplane::IpAddress& destination) = 0;

  // AttachDevice of a device the last ListAgentDevices (or DeviceStates) listed as the agent's,
  // without a lookup of its own first. The real one: the lookup of a device that has just lost its
  // reader (a crash) makes the kernel settle the device's carrier change then and there,
  // a reset of every queue and an RCU grace period, about a millisecond for each device.
  virtual absl::StatusOr<std::unique_ptr<Device>> AttachListedDevice(const std::string& name,
                                                                     DeviceKind kind) {
    return AttachDevice(name, kind);
  }

  // Bulk forms, for thousands of tunnels at once (a restore, a refresh): the real one keeps
  // many requests in flight; these defaults make one call after the other.
  // `changes`, made in the order given; one status per change, as the single call answers.
  virtual std::vector<absl::Status> ApplyChanges(const std::vector<LinkChange>& changes);
  // RouteTo of each destination, with path_mtu filled in where it can be learnt on the way.
  virtual std::vector<absl::StatusOr<UnderlayRoute>> RoutesTo(
      const std::vector<dataplane::IpAddress>& destinations);
};

// The link group (IFLA_GROUP) the agent puts its devices in, so that RemoveAgentDevices can
// delete them all with one request (`ip link show group 2054847098` lists them). A value no
// one uses by chance; a device of someone else's found in it stops the batch.
inline constexpr uint32_t kAgentLinkGroup = 0x7a7a7a7a;
// Where RemoveDevices moves the devices it removes in one batch, for the moment of the batch.
inline constexpr uint32_t kRemovingLinkGroup = kAgentLinkGroup + 1;

// The real one: persistent TUN/TAP devices marked with an interface alias and put in
// kAgentLinkGroup, configured over rtnetlink.
class KernelLinkControl final : public LinkControl {
 public:
  // `offload`: TUN devices are opened with TUN offloads (TunDevice::CreateOptions::offload).
  // `multi_queue`: with IFF_MULTI_QUEUE, so each dataplane worker can read a queue of its own.
  explicit KernelLinkControl(dataplane::Netlink* netlink, bool offload = false,
                             bool multi_queue = false)
      : netlink_(netlink), offload_(offload), multi_queue_(multi_queue) {}
  absl::StatusOr<std::unique_ptr<Device>> CreateDevice(const std::string& name,
                                                       DeviceKind kind) override;
  absl::StatusOr<std::unique_ptr<Device>> AttachDevice(const std::string& name,
                                                       DeviceKind kind) override;
  absl::StatusOr<std::vector<std::string>> ListAgentDevices() override;
  absl::StatusOr<std::unique_ptr<Device>> AttachListedDevice(const std::string& name,
                                                             DeviceKind kind) override;
  absl::Status DeleteDevice(const std::string& name) override;
  absl::Status RemoveAgentDevices() override;
  // Two or more: moved to kRemovingLinkGroup and deleted with one request, so the kernel waits
  // for its RCU grace periods (about 20 ms) once, not once each (an apply pruning thousands
  // took minutes). A link of someone else's in that group, or a failure, leaves each removal
  // to its device, one by one.
  void RemoveDevices(std::vector<std::unique_ptr<Device>> devices) override;
  absl::Status SetMtu(const Device& device, uint32_t mtu) override;
  absl::Status SetUp(const Device& device) override;
  absl::Status AddAddress(const Device& device, const dataplane::IpPrefix& address) override;
  absl::Status DeleteAddress(const Device& device, const dataplane::IpPrefix& address) override;
  absl::Status AddRoute(const Device& device, const dataplane::IpPrefix& route) override;
  absl::Status DeleteRoute(const Device& device, const dataplane::IpPrefix& route) override;
  absl::StatusOr<std::map<int, bool>> LinkStates() override;
  absl::StatusOr<uint32_t> PathMtu(const dataplane::IpAddress& remote) override;
  absl::StatusOr<std::map<int, DeviceState>> DeviceStates() override;
  absl::StatusOr<UnderlayRoute> RouteTo(const dataplane::IpAddress& destination) override;
  std::vector<absl::Status> ApplyChanges(const std::vector<LinkChange>& changes) override;
  std::vector<absl::StatusOr<UnderlayRoute>> RoutesTo(
      const std::vector<dataplane::IpAddress>& destinations) override;

 private:
  // AttachDevice once the link is known to be the agent's.
  absl::StatusOr<std::unique_ptr<Device>> AttachLink(const dataplane::LinkInfo& link,
                                                     DeviceKind kind);

  dataplane::Netlink* netlink_;
  const bool offload_;
  const bool multi_queue_;
  absl::Mutex mu_;
  // The agent's devices the last ListAgentDevices or DeviceStates found, by name, for
  // AttachListedDevice.
  std::map<std::string, dataplane::LinkInfo> listed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_LINK_CONTROL_H_
