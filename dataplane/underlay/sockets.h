// The underlay's raw sockets: those tunnel packets arrive on, those outer packets leave by, and
// the ICMP errors about them.
#ifndef TUNNELAGENT_DATAPLANE_UNDERLAY_SOCKETS_H_
#define TUNNELAGENT_DATAPLANE_UNDERLAY_SOCKETS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dataplane/core/receive.h"
#include "dataplane/packet/icmp.h"

namespace tunnelagent::dataplane {

// False when the kernel has no IPv6 (booted with ipv6.disable=1, or built without).
bool KernelHasIpv6();

// SO_RCVBUF or SO_SNDBUF (`receive`) of `bytes`: beyond net.core.[rw]mem_max with the FORCE
// option where CAP_NET_ADMIN allows, else as far as the limit lets.
void SetSocketBuffer(int fd, bool receive, int bytes);

// A raw socket of `family` (AF_INET or AF_INET6) and `protocol` with `buffer_bytes` of send and
// receive buffer (beyond net.core.[rw]mem_max where CAP_NET_ADMIN allows). A socket of GRE,
// IPIP or IPv6 (41) sees every packet of that protocol addressed to this host: over IPv4 with
// the outer header, over IPv6 without it (the address and traffic class come as ancillary data,
// which is turned on here).
absl::StatusOr<int> OpenUnderlaySocket(int family, int protocol, int buffer_bytes,
                                       absl::string_view what);

// Raw sockets for every tunnel protocol (47, 4, 41) over IPv4 and, where the kernel has it,
// IPv6; closed by CloseReceiveSockets. With several workers, each worker's sockets carry a
// steering filter (SteeringProgram): every packet reaches exactly one worker, chosen by its
// inner flow, rather than a copy reaching each.
absl::StatusOr<std::vector<ReceiveSocket>> OpenReceiveSockets(int buffer_bytes, unsigned worker = 0,
                                                              unsigned workers = 1);
void CloseReceiveSockets(std::vector<ReceiveSocket>& sockets);

// The worker's raw ICMP and ICMPv6 sockets, filtered down to "destination unreachable" and
// "packet too big": the errors about the tunnels' packets that the packet core judges itself
// (PacketCore::TakeTooBig) instead of the kernel's PMTU cache, which believes any error
// whose quote names the flow. Read a bounded number at a time (a flood of errors costs a
// bounded share of the thread; what the socket buffer cannot hold the kernel drops).
class TooBigReader {
 public:
  TooBigReader() = default;
  ~TooBigReader();
  TooBigReader(const TooBigReader&) = delete;
  TooBigReader& operator=(const TooBigReader&) = delete;

  // The IPv4 socket always (it needs CAP_NET_RAW, as the engine's other sockets), the IPv6
  // one where the kernel has IPv6.
  absl::Status Open();

  // Reads up to `budget` queued messages of each family, calling `take(const TooBigReport&)`
  // for each that is a well-formed "fragmentation needed" / "packet too big".
  template <typename Take>
  void Read(size_t budget, Take&& take) {
    for (const bool ipv6 : {false, true}) {
      for (size_t i = 0; i < budget; ++i) {
        TooBigReport report;
        const Got got = Next(ipv6, &report);
        if (got == Got::kNothing) break;
        if (got == Got::kReport) take(report);
      }
    }
  }

 private:
  enum class Got { kNothing, kOther, kReport };
  Got Next(bool ipv6, TooBigReport* report);

  // An error is at most 576 bytes (IPv4) or 1280 (IPv6) from a conforming router.
  static constexpr size_t kMessageBytes = 2048;
  static constexpr int kSocketBufferBytes = 256 << 10;
  int fd4_ = -1;
  int fd6_ = -1;
  std::unique_ptr<uint8_t[]> buffer_{new uint8_t[kMessageBytes]};
};

// Too-big errors read per family each time round a worker's housekeeping (every tick).
inline constexpr size_t kTooBigReadsPerTick = 64;

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_UNDERLAY_SOCKETS_H_
