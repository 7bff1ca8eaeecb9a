// What the packet engines (io_uring and epoll) share: the control mailbox between the control
// threads and the dataplane thread, the underlay sockets, and how tunnels are checked, matched
// and given buffers. Only the way packets are moved differs between the engines.
#ifndef TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_
#define TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <deque>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tunnel_table.h"

namespace tunnelagent::dataplane {

// Room left in front of every packet read from a device, so the outer headers are written in
// place; 64 keeps the inner packet cache-line aligned.
inline constexpr size_t kDeviceHeadroom = 64;
static_assert(kDeviceHeadroom >= kMaxEncapHeadroom);

// Bytes of one buffer for packets read from a device of `mtu`: the headroom, an MTU-sized
// packet, and enough beyond it to tell a packet that overflows the MTU from one that fits
// exactly; a multiple of 64.
constexpr size_t DeviceBufferBytes(uint32_t mtu) {
  return (kDeviceHeadroom + mtu + 64 + 63) & ~size_t{63};
}

// INVALID_ARGUMENT unless the tunnel has a device, an MTU of 1..65535 and counters.
absl::Status CheckEngineTunnel(const EngineTunnel& tunnel);

// False when the kernel has no IPv6 (booted with ipv6.disable=1, or built without).
bool KernelHasIpv6();

// A raw socket of `family` (AF_INET or AF_INET6) and `protocol` with `buffer_bytes` of send and
// receive buffer (beyond net.core.[rw]mem_max where CAP_NET_ADMIN allows). A socket of GRE,
// IPIP or IPv6 (41) sees every packet of that protocol addressed to this host: over IPv4 with
// the outer header, over IPv6 without it (the address and traffic class come as ancillary data,
// which is turned on here).
absl::StatusOr<int> OpenUnderlaySocket(int family, int protocol, int buffer_bytes,
                                       absl::string_view what);

// One of the sockets tunnel packets arrive on.
struct ReceiveSocket {
  int fd = -1;
  bool ipv6 = false;
  uint8_t protocol = 0;
};

// Raw sockets for every tunnel protocol (47, 4, 41) over IPv4 and, where the kernel has it,
// IPv6; closed by CloseReceiveSockets.
absl::StatusOr<std::vector<ReceiveSocket>> OpenReceiveSockets(int buffer_bytes);
void CloseReceiveSockets(std::vector<ReceiveSocket>& sockets);

// Room for the ancillary data an IPv6 receive asks for (packet info and traffic class), and
// for the source address.
inline constexpr size_t kReceiveControlBytes = 128;
using ReceiveAddress = sockaddr_in6;

// Parses a packet `len` bytes long received on `socket` (with `msg`'s name and control data,
// for IPv6). The caller has checked it was not truncated.
bool DecodeReceived(const ReceiveSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                    Decapsulated* out, DropReason* reason);

struct EngineCommand {
  enum class Kind { kAdd, kRemove, kStop };
  Kind kind = Kind::kAdd;
  EngineTunnel tunnel;  // kAdd
  std::string name;     // kRemove
  std::promise<absl::Status> done;
};

// Commands from control threads to the dataplane thread: queued under a lock (never on the
// packet path) and signalled through an eventfd the dataplane thread watches and reads.
class CommandMailbox {
 public:
  CommandMailbox() = default;
  ~CommandMailbox();
  CommandMailbox(const CommandMailbox&) = delete;
  CommandMailbox& operator=(const CommandMailbox&) = delete;

  // Creates the eventfd (EFD_CLOEXEC plus `eventfd_flags`).
  absl::Status Open(int eventfd_flags);
  int fd() const { return fd_; }

  // Queues a command and waits for the dataplane thread's answer; UNAVAILABLE after Close().
  absl::Status Call(std::unique_ptr<EngineCommand> command);
  // Call() with a kAdd of `tunnel`, checked first (CheckEngineTunnel).
  absl::Status AddTunnel(const EngineTunnel& tunnel);
  // Call() with a kRemove of `name`.
  absl::Status RemoveTunnel(const std::string& name);
  // Call() with a kStop.
  absl::Status Stop();

  // For the dataplane thread: every queued command, oldest first.
  std::deque<std::unique_ptr<EngineCommand>> TakeAll();
  // For the dataplane thread as it stops: answers what is queued, and whatever comes later,
  // with UNAVAILABLE, so nobody waits forever on a command that came too late.
  void Close();

 private:
  int fd_ = -1;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<EngineCommand>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_
