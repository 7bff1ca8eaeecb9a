// What the packet core asks of the world outside it. The core makes every packet decision and no
// system call: the common paths hand their results back to the I/O backend (a packet to send, a
// packet to write to a device), and the rare paths (an ICMP error written back into a device,
// outer fragments, keepalives, a fou send done at once, a question to the routing table) go
// through this interface, which the backends implement over real sockets (UnderlayIo) and tests
// implement by recording what was asked.
#ifndef TUNNELAGENT_DATAPLANE_CORE_PACKET_IO_H_
#define TUNNELAGENT_DATAPLANE_CORE_PACKET_IO_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/status/statusor.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/outer_address.h"

namespace tunnelagent::dataplane {

// `address` as a socket address of its family (sockaddr_in in the storage of a sockaddr_in6
// for IPv4), with its length.
inline sockaddr_in6 UnderlayAddress(bool ipv6, const OuterAddress& address, socklen_t* len) {
  sockaddr_in6 storage{};
  if (ipv6) {
    storage.sin6_family = AF_INET6;
    std::memcpy(&storage.sin6_addr, address.data(), 16);
    *len = sizeof(sockaddr_in6);
  } else {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
    v4->sin_family = AF_INET;
    std::memcpy(&v4->sin_addr, address.data(), 4);
    *len = sizeof(sockaddr_in);
  }
  return storage;
}

// One of a fou tunnel's send sockets: what names it to SendFou, and the UDP source port it is
// bound to (which an ICMP error about its packets must quote).
struct FouSender {
  int handle = -1;
  uint16_t port = 0;
};

// A fou send carries at most this many packets (UDP_MAX_SEGMENTS on older kernels), and this
// many bytes of payload (what one UDP datagram can hold before the kernel splits it).
inline constexpr size_t kMaxFouRun = 64;
inline constexpr size_t kMaxFouRunBytes = 65000;

class PacketIo {
 public:
  virtual ~PacketIo() = default;

  // Whether outer packets of that family can be sent (a kernel without IPv6 has no IPv6 send).
  virtual bool CanSend(bool ipv6) const = 0;
  // The route towards `remote`: the MTU it allows and the source address the kernel would
  // pick. False when there is no route.
  virtual bool ProbeRoute(bool ipv6, const OuterAddress& remote, uint32_t* mtu,
                          OuterAddress* source) = 0;
  // Sends one whole outer IP packet now; returns 0 or an errno value.
  virtual int SendUnderlay(bool ipv6, const OuterAddress& destination, const uint8_t* packet,
                           size_t len) = 0;

  // A send socket for the fou tunnel `encap`, bound to its local address and source port (a
  // port the kernel picks when that is 0). `connected`: to its remote and destination port (a
  // point-to-point tunnel); otherwise each send names where it goes (a multipoint tunnel's
  // peer).
  virtual absl::StatusOr<FouSender> OpenFouSender(const EncapParams& encap, bool connected) = 0;
  virtual void CloseFouSender(int handle) = 0;
  // Sends `count` UDP payloads on a fou sender at once: as one UDP GSO send of `gso_size`
  // segments when that is not 0, else one datagram (count 1), with the outer TOS and TTL, to
  // `destination` (null for a connected sender). Returns the bytes sent or -errno (EIO: the
  // path has no UDP GSO).
  virtual int SendFou(int sender, const sockaddr* destination, socklen_t destination_len,
                      const iovec* payloads, size_t count, uint8_t tos, uint8_t ttl,
                      uint16_t gso_size) = 0;

  // Writes one packet to a tunnel device now, behind an empty virtio-net header when the
  // device has offloads (`vnet_header`). Returns the bytes written (the header's too) or -errno.
  virtual int WriteDevice(int device_fd, bool vnet_header, const uint8_t* packet, size_t len) = 0;
};

// A worker thread's reading of the time, taken once every time round its loop (which wakes at
// least every tick): the per-packet path stamps with it and never asks the kernel. The coarse
// clocks (no system call, the kernel's tick of a few milliseconds) are all that a "last
// received" time or a heartbeat needs. Owned and written by the worker's thread.
class WorkerClock {
 public:
  WorkerClock() { Update(); }
  void Update();
  int64_t unix_nanos() const { return unix_nanos_; }
  int64_t monotonic_nanos() const { return monotonic_nanos_; }
  // CLOCK_MONOTONIC to the nanosecond, for what is measured rather than stamped (a round trip).
  static int64_t PreciseMonotonicNanos();

 private:
  int64_t unix_nanos_ = 0;
  int64_t monotonic_nanos_ = 0;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_PACKET_IO_H_
