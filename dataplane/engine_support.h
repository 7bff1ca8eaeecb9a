// What the packet engines (io_uring and epoll) share: the control mailbox between the control
// threads and the dataplane thread, the underlay sockets, and how tunnels are checked, matched
// and given buffers. Only the way packets are moved differs between the engines.
#ifndef TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_
#define TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_

#include <deque>
#include <future>
#include <memory>
#include <string>

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

// The tunnel's receive match (its input key only counts when it has one).
TunnelMatch MatchOf(const EngineTunnel& tunnel);

// A raw IPv4 socket of `protocol` with `buffer_bytes` of send and receive buffer (beyond
// net.core.[rw]mem_max where CAP_NET_ADMIN allows). IPPROTO_RAW implies IP_HDRINCL: the engine
// writes whole outer headers; the kernel fills in the ID and, when 0, the source. A socket of
// GRE or IPIP sees every packet of that protocol addressed to this host, outer header included.
absl::StatusOr<int> OpenUnderlaySocket(int protocol, int buffer_bytes, absl::string_view what);

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
