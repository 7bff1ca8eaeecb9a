// A TUN (layer 3) or TAP (layer 2) device owned through its file descriptor.
#ifndef TUNNELAGENT_DATAPLANE_TUN_TUN_DEVICE_H_
#define TUNNELAGENT_DATAPLANE_TUN_TUN_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dataplane/netlink.h"

namespace tunnelagent::dataplane {

// The interface alias (IFLA_IFALIAS; `ip link show` prints it as "alias tunnel-agent") that
// marks a device as created by the agent. After a restart the agent takes back only devices
// for which IsAgentDevice() holds: it never touches a device it did not create.
inline constexpr char kAgentDeviceAlias[] = "tunnel-agent";

// A TUN/TAP device (kind "tun") carrying kAgentDeviceAlias.
inline bool IsAgentDevice(const LinkInfo& link) {
  return link.kind == "tun" && link.alias == kAgentDeviceAlias;
}

class TunDevice {
 public:
  enum class Kind { kTun, kTap };

  struct CreateOptions {
    // Set as the interface alias before Create returns; "" sets none. The agent passes
    // kAgentDeviceAlias.
    std::string alias;
    // Made persistent (see SetPersistent) once the alias is set, so the device never exists
    // both persistent and unmarked.
    bool persistent = false;
    // The socket used to set the alias; Create opens one of its own when null.
    Netlink* netlink = nullptr;
    // TUN only: see SetUpOffload.
    bool offload = false;
    // IFF_MULTI_QUEUE: OpenQueue can add queues, one per dataplane worker; the kernel
    // spreads what the host sends into the device over them by flow.
    bool multi_queue = false;
  };

  // Creates the device `name` (IFF_NO_PI; exclusive: ALREADY_EXISTS when any link of that
  // name exists, so a device the agent did not create is never taken over). The fd is
  // blocking, which is what io_uring wants: it arms its own poll.
  // The device is not persistent: it disappears when the object is destroyed.
  static absl::StatusOr<std::unique_ptr<TunDevice>> Create(const std::string& name, Kind kind);
  // As above, then sets the alias and persistence `options` ask for. On any failure the new
  // device is removed again: it is not left half set up.
  static absl::StatusOr<std::unique_ptr<TunDevice>> Create(const std::string& name, Kind kind,
                                                           const CreateOptions& options);

  // Opens the EXISTING persistent TUN (or TAP) device `name`, e.g. one a previous run of the
  // agent left behind, with the same flags Create uses (IFF_NO_PI). The device stays
  // persistent. NOT_FOUND when there is no link of that name; FAILED_PRECONDITION when the
  // link is not a TUN/TAP device of `kind`, or another process holds it open.
  // Attach does not check who created the device: check IsAgentDevice() on the link first
  // (and that ifindex() is the one listed, if a concurrent delete-and-recreate matters).
  static absl::StatusOr<std::unique_ptr<TunDevice>> Attach(const std::string& name, Kind kind);
  // As above, with the device's offloads as `offload` asks (see SetUpOffload).
  static absl::StatusOr<std::unique_ptr<TunDevice>> Attach(const std::string& name, Kind kind,
                                                           bool offload);
  // As above, asking for IFF_MULTI_QUEUE when `multi_queue`. A device an earlier run made the
  // other way is attached as it is: multi_queue() says which it got. Note that a
  // multi-queue device takes further fds while one is open, so "in use" is not detected.
  static absl::StatusOr<std::unique_ptr<TunDevice>> Attach(const std::string& name, Kind kind,
                                                           bool offload, bool multi_queue);

  // The persistent device `fd` is attached to (one of its queues, handed over by another
  // process: a hot upgrade), owned from here on (closed on failure too). The device's name,
  // offloads (IFF_VNET_HDR: set up again as Attach does) and queues come from the fd.
  // FAILED_PRECONDITION when the fd is no TUN/TAP device of `kind` or not persistent.
  static absl::StatusOr<std::unique_ptr<TunDevice>> Adopt(int fd, Kind kind);

  // The ifindex of the link named `name`; 0 with errno when there is none (as if_nametoindex,
  // in one system call).
  static unsigned IndexOf(const std::string& name);

  // Another queue of the multi-queue device `name` (of `kind`, with a virtio-net header
  // when `vnet_header`), which must still be the device `ifindex`: a blocking fd the caller
  // owns. Closing it removes the queue. FAILED_PRECONDITION when the device has one queue
  // only, NOT_FOUND when it is gone.
  static absl::StatusOr<int> OpenQueue(const std::string& name, Kind kind, bool vnet_header,
                                       int ifindex);

  // Closes the fd. A device that is persistent at that moment (made so by CreateOptions,
  // SetPersistent(true), or opened with Attach) stays, with its addresses and routes, and can
  // be re-attached; any other device disappears. To remove a persistent device, call
  // SetPersistent(false) before destroying the object, or Netlink::DeleteLink(ifindex()).
  ~TunDevice();
  TunDevice(const TunDevice&) = delete;
  TunDevice& operator=(const TunDevice&) = delete;

  // TUNSETPERSIST: whether the device outlives this object (and the process). NOT_FOUND when
  // the device has been deleted meanwhile.
  absl::Status SetPersistent(bool persistent);

  int fd() const { return fd_; }
  // Whether every read and write on fd() starts with a virtio-net header (IFF_VNET_HDR,
  // kVirtioNetHeaderLen bytes): true when offloads were asked for on a TUN device.
  bool offload() const { return offload_; }
  // Whether the device has IFF_MULTI_QUEUE (see OpenQueue).
  bool multi_queue() const { return multi_queue_; }
  // The TUNSETOFFLOAD features the kernel took: TUN_F_CSUM, TSO4/6, TSO_ECN, USO4/6 where the
  // kernel has them (6.2 on), so the host hands over unfinished checksums and 64 KiB TCP (and
  // UDP) super-packets for the reader to finish and split. 0 without offload.
  unsigned offload_features() const { return offload_features_; }
  // Whether the kernel takes UDP GSO (UDP_L4) packets written to the device, so received UDP
  // datagrams of one flow can be written as one: it has USO (6.2 on), seen in the features.
  bool udp_offload() const;
  int ifindex() const { return ifindex_; }
  const std::string& name() const { return name_; }
  Kind kind() const { return kind_; }
  // As last set by Create, Attach or SetPersistent.
  bool persistent() const { return persistent_; }

 private:
  TunDevice(int fd, int ifindex, std::string name, Kind kind, bool persistent)
      : fd_(fd), ifindex_(ifindex), name_(std::move(name)), kind_(kind), persistent_(persistent) {}
  static absl::StatusOr<std::unique_ptr<TunDevice>> CreateWith(const std::string& name, Kind kind,
                                                               bool offload, bool multi_queue);
  // IFF_VNET_HDR was set on `fd`: sets the header size and the offload features.
  absl::Status SetUpOffload();

  int fd_;
  bool offload_ = false;
  bool multi_queue_ = false;
  unsigned offload_features_ = 0;
  int ifindex_;
  std::string name_;
  Kind kind_;
  bool persistent_;
};

// Writes one packet to a TUN/TAP device's fd now, behind an empty virtio-net header when the
// device was opened with offloads (IFF_VNET_HDR: every write must start with one). A TUN write
// hands the packet to the host's stack at once; it does not block. Returns the bytes written
// (the header's too) or -errno.
int WriteTunPacket(int fd, bool vnet_header, const uint8_t* packet, size_t len);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUN_TUN_DEVICE_H_
