// Foo-over-UDP (GRE-in-UDP, IPIP and SIT in UDP) on the underlay: the receive sockets of the
// ports fou tunnels use, the send sockets of each tunnel (connected to a point-to-point
// tunnel's remote; a multipoint tunnel's name the peer in each send), and the ancillary data of
// a send. What goes in the UDP payloads is the packet core's (Encapsulate, DecapsulateUdpPayload).
#ifndef TUNNELAGENT_DATAPLANE_UNDERLAY_FOU_H_
#define TUNNELAGENT_DATAPLANE_UNDERLAY_FOU_H_

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

// A fou receive socket: one per port that fou tunnels use (bound to the port on every address,
// UDP_GRO on, so one receive can bring up to 64 KiB of datagrams of one flow), carrying one
// protocol (GRE, IPv4 or IPv6) as its payload.
struct FouSocket {
  int fd = -1;
  uint16_t port = 0;
  uint8_t protocol = 0;
  int users = 0;  // tunnels that use the port; the socket stays open when it drops to 0
};

// The protocol a fou port carries for a mode: 47 (GRE) for gre and gretap, 4 for ipip, 41 for
// sit.
uint8_t FouProtocol(TunnelMode mode);

// The fou receive sockets of a worker. Owned by the worker's thread.
class FouPorts {
 public:
  FouPorts() = default;
  ~FouPorts();
  FouPorts(const FouPorts&) = delete;
  FouPorts& operator=(const FouPorts&) = delete;

  // A user more of the socket for `port` carrying `protocol`, opened when new (*opened set);
  // FAILED_PRECONDITION when tunnels use the port for another protocol, or it cannot be bound.
  // `shared`: the workers of one engine each bind the port (SO_REUSEPORT).
  absl::StatusOr<FouSocket*> Acquire(uint16_t port, uint8_t protocol, int buffer_bytes, bool shared,
                                     bool* opened);
  // Acquire for a fou tunnel: its port and its mode's protocol.
  absl::StatusOr<FouSocket*> AcquireFor(const EngineTunnel& tunnel, int buffer_bytes, bool shared,
                                        bool* opened) {
    return Acquire(tunnel.encap.udp_dport, FouProtocol(tunnel.encap.mode), buffer_bytes, shared,
                   opened);
  }
  void Release(uint16_t port);
  FouSocket* Find(uint16_t port);

 private:
  std::vector<std::unique_ptr<FouSocket>> sockets_;
};

// A UDP socket that sends a fou tunnel's packets: bound to `local` (any when zero) and `sport`
// (0: a port the kernel picks), connected to `remote`:`dport` (not connected when `remote` is
// null: each send names its destination), DF on every packet.
absl::StatusOr<int> OpenFouSendSocket(const OuterAddress& local, uint16_t sport,
                                      const OuterAddress* remote, uint16_t dport, int buffer_bytes);

// Ancillary data of a fou send: the outer TOS and TTL of the packet(s), and the UDP segment
// size when several equal-sized payloads go as one (UDP GSO, `gso_size` 0 otherwise). Returns
// the control length; `control` must hold kFouSendControlBytes.
inline constexpr size_t kFouSendControlBytes = 96;  // three cmsgs: 24 + 24 + 24
static_assert(kFouSendControlBytes >= 2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint16_t)));
size_t WriteFouControl(uint8_t* control, uint8_t tos, uint8_t ttl, uint16_t gso_size);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_UNDERLAY_FOU_H_
