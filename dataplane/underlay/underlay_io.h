// A worker's way out to the underlay and its devices, for the packet core's rare paths
// (PacketIo): the IPPROTO_RAW send sockets (which the backends' fast paths send on too), the
// route questions, the fou senders, and writes into a TUN device.
#ifndef TUNNELAGENT_DATAPLANE_UNDERLAY_UNDERLAY_IO_H_
#define TUNNELAGENT_DATAPLANE_UNDERLAY_UNDERLAY_IO_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dataplane/core/packet_io.h"

namespace tunnelagent::dataplane {

class UnderlayIo final : public PacketIo {
 public:
  UnderlayIo() = default;
  ~UnderlayIo() override;
  UnderlayIo(const UnderlayIo&) = delete;
  UnderlayIo& operator=(const UnderlayIo&) = delete;

  // Opens the IPPROTO_RAW send sockets (IPv4 always; IPv6 where the kernel has it), and the
  // UDP and rtnetlink sockets used to ask the kernel about routes. `buffer_bytes` sizes the
  // send sockets and the fou senders.
  absl::Status Open(int buffer_bytes);
  // -1 when the family is not available.
  int send_fd(bool ipv6) const { return ipv6 ? send6_ : send4_; }
  // A random 16-bit value, where the outer IPv4 fragment IDs start.
  static uint16_t RandomFragmentId();

  bool CanSend(bool ipv6) const override { return send_fd(ipv6) >= 0; }
  // The MTU is the route's own (its mtu metric, else its device's: what a raw send may carry),
  // never what the kernel's PMTU cache holds for the remote: the kernel writes any
  // "fragmentation needed" that names a GRE or IPIP flow into that cache, forged or not.
  bool ProbeRoute(bool ipv6, const OuterAddress& remote, uint32_t* mtu,
                  OuterAddress* source) override;
  int SendUnderlay(bool ipv6, const OuterAddress& destination, const uint8_t* packet,
                   size_t len) override;
  absl::StatusOr<FouSender> OpenFouSender(const EncapParams& encap, bool connected) override;
  void CloseFouSender(int handle) override;
  int SendFou(int sender, const sockaddr* destination, socklen_t destination_len,
              const iovec* payloads, size_t count, uint8_t tos, uint8_t ttl,
              uint16_t gso_size) override;
  int WriteDevice(int device_fd, bool vnet_header, const uint8_t* packet, size_t len) override;

 private:
  // The FIB's route to `remote` (RTM_GETROUTE with RTM_F_FIB_MATCH: the route, not the cached
  // exception) and its device's MTU: the route's mtu metric when it has one, capped at the
  // device's, else the device's; the least of the nexthops' for a multipath route. False when
  // the kernel gives no route or no device (e.g. a route through a nexthop object).
  bool RouteMtu(bool ipv6, const OuterAddress& remote, uint32_t* mtu);

  int send4_ = -1;
  int send6_ = -1;
  int probe4_ = -1;
  int probe6_ = -1;
  int route_netlink_ = -1;  // NETLINK_ROUTE, for RouteMtu
  uint32_t route_request_ = 0;
  int buffer_bytes_ = 0;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_UNDERLAY_UNDERLAY_IO_H_
