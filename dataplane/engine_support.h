// What the packet engines (io_uring and epoll) share: the control mailbox between the control
// threads and the dataplane thread, the underlay sockets, and how tunnels are checked, matched
// and given buffers. Only the way packets are moved differs between the engines.
#ifndef TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_
#define TUNNELAGENT_DATAPLANE_ENGINE_SUPPORT_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/offload.h"
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
// IPv6; closed by CloseReceiveSockets. With several workers, each worker's sockets carry a
// steering filter (SteeringProgram): every packet reaches exactly one worker, chosen by its
// inner flow, rather than a copy reaching each.
absl::StatusOr<std::vector<ReceiveSocket>> OpenReceiveSockets(int buffer_bytes, unsigned worker = 0,
                                                              unsigned workers = 1);
void CloseReceiveSockets(std::vector<ReceiveSocket>& sockets);

// Room for the ancillary data an IPv6 receive asks for (packet info and traffic class), and
// for the source address.
inline constexpr size_t kReceiveControlBytes = 128;
using ReceiveAddress = sockaddr_in6;

// Parses a packet `len` bytes long received on `socket` (with `msg`'s name and control data,
// for IPv6). The caller has checked it was not truncated.
bool DecodeReceived(const ReceiveSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                    Decapsulated* out, DropReason* reason);

// Foo-over-UDP receive: one UDP socket per port that fou tunnels use (bound to the port on
// every address, UDP_GRO on, so one receive can bring up to 64 KiB of datagrams of one flow),
// carrying one protocol (GRE, IPv4 or IPv6) as its payload.
struct FouSocket {
  int fd = -1;
  uint16_t port = 0;
  uint8_t protocol = 0;
  int users = 0;  // tunnels that use the port; the socket stays open when it drops to 0
};

// The fou receive sockets of an engine. Owned by the engine's thread.
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
  void Release(uint16_t port);
  FouSocket* Find(uint16_t port);

 private:
  std::vector<std::unique_ptr<FouSocket>> sockets_;
};

// Room for the ancillary data a fou receive asks for (packet info, TOS, the GRO segment size).
inline constexpr size_t kFouControlBytes = 128;

// What a fou receive brought, cut into its datagrams (UDP_GRO: all of `gso_size` bytes but the
// last) and decapsulated; calls `deliver(Decapsulated&)` for each that decapsulates, counts the
// others' drop reasons in `drops`. `msg` is the receive's, with its source, control data and
// flags: a receive the buffer cut short (MSG_TRUNC) counts as one packet too big.
template <typename Deliver>
void ForEachFouDatagram(const FouSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                        DataplaneCounters& counters, Deliver&& deliver);

// Parses a fou receive's name and control data: false when something needed is missing.
bool ParseFouReceive(const msghdr& msg, OuterAddress* source, OuterAddress* destination,
                     uint8_t* tos, size_t* gso_size);

template <typename Deliver>
void ForEachFouDatagram(const FouSocket& socket, uint8_t* data, size_t len, const msghdr& msg,
                        DataplaneCounters& counters, Deliver&& deliver) {
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    counters.rx_packets.Add();
    counters.drops[static_cast<int>(DropReason::kTooBig)].Add();
    return;
  }
  OuterAddress source;
  OuterAddress destination;
  uint8_t tos = 0;
  size_t gso_size = 0;
  if (!ParseFouReceive(msg, &source, &destination, &tos, &gso_size)) {
    counters.rx_packets.Add();
    counters.drops[static_cast<int>(DropReason::kBadOuterHeader)].Add();
    return;
  }
  if (gso_size == 0 || gso_size > len) gso_size = len;
  size_t offset = 0;
  do {  // an empty datagram is one packet too
    counters.rx_packets.Add();
    const size_t n = std::min(gso_size, len - offset);
    Decapsulated packet;
    DropReason reason = DropReason::kCount;
    if (!DecapsulateUdpPayload(data + offset, n, socket.protocol, source, destination, tos, &packet,
                               &reason)) {
      counters.drops[static_cast<int>(reason)].Add();
    } else {
      deliver(packet);
    }
    offset += n;
  } while (offset < len);
}

// The tunnel a received, decoded packet is for, when the engine is to write it to the device:
// the table's match, if the tunnel's rules accept it (TunnelDatapath::AcceptReceived) and, with
// offloads, the coalescer did not take it. nullptr otherwise (counted, or a keepalive).
// `flush()` writes what the coalescer holds, for a packet that must not overtake it.
template <typename Tunnel, typename Flush>
Tunnel* AdmitReceived(const TunnelTable<Tunnel>& table, Coalescer& coalescer,
                      DataplaneCounters& counters, const Decapsulated& packet, Flush&& flush) {
  Tunnel* tunnel = table.Lookup(packet);
  if (tunnel == nullptr) {
    counters.drops[static_cast<int>(DropReason::kNoTunnel)].Add();
    return nullptr;
  }
  if (!tunnel->path->AcceptReceived(packet)) return nullptr;
  if (tunnel->path->vnet_header()) {
    switch (coalescer.Add(tunnel, packet.inner, packet.inner_len,
                          tunnel->path->config().udp_coalescing)) {
      case Coalescer::Verdict::kTaken:
        return nullptr;
      case Coalescer::Verdict::kFlushThenDeliver:
        flush();  // what came before it goes first
        break;
      case Coalescer::Verdict::kDeliver:
        break;
    }
  }
  return tunnel;
}

// The protocol a fou port carries for a mode: 47 (GRE) for gre and gretap, 4 for ipip, 41 for
// sit.
uint8_t FouProtocol(TunnelMode mode);

// A UDP socket that sends a fou tunnel's packets: bound to `local` (any when zero) and `sport`
// (0: a port the kernel picks), connected to `remote`:`dport`, DF on every packet.
absl::StatusOr<int> OpenFouSendSocket(const OuterAddress& local, uint16_t sport,
                                      const OuterAddress& remote, uint16_t dport, int buffer_bytes);

// The engine's raw ICMP and ICMPv6 sockets, filtered down to "destination unreachable" and
// "packet too big": the errors about the tunnels' packets that the engine judges itself
// (TunnelDatapath::TakeTooBig) instead of the kernel's PMTU cache, which believes any error
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

// Too-big errors read per family each time round an engine's housekeeping (every tick).
inline constexpr size_t kTooBigReadsPerTick = 64;

// An engine's tunnels by remote address, for the errors that quote a packet sent to it.
// Owned by the engine's thread; a lookup allocates nothing.
template <typename Tunnel>
class TunnelsByRemote {
 public:
  void Insert(const OuterAddress& remote, Tunnel* tunnel) { map_[remote].push_back(tunnel); }
  void Erase(const OuterAddress& remote, Tunnel* tunnel) {
    auto it = map_.find(remote);
    if (it == map_.end()) return;
    std::vector<Tunnel*>& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), tunnel), list.end());
    if (list.empty()) map_.erase(it);
  }
  void Clear() { map_.clear(); }

  // Hands `report` to every tunnel to its quoted destination (each judges it; usually there is
  // one). One that names a tunnel protocol's flow and no tunnel took or rejected is counted
  // in `counters` (kIcmpRejected) when `count` (worker 0: every worker reads every error).
  void Dispatch(const TooBigReport& report, DataplaneCounters& counters, bool count) const {
    bool judged = false;
    auto it = map_.find(report.quoted_dst);
    if (it != map_.end()) {
      for (Tunnel* tunnel : it->second) {
        const QuoteVerdict verdict = tunnel->path->TakeTooBig(report);
        judged |= verdict != QuoteVerdict::kOtherFlow;
        // Its housekeeping wakes next tick and from then on also for the lowered MTU's expiry.
        if (verdict == QuoteVerdict::kOurs) tunnel->next_tick = absl::InfinitePast();
      }
    }
    const uint8_t p = report.quoted_protocol;
    if (!judged && count && (p == kIpProtoGre || p == kIpProtoIpip || p == kIpProtoIpv6)) {
      counters.drops[static_cast<int>(DropReason::kIcmpRejected)].Add();
    }
  }

 private:
  absl::flat_hash_map<OuterAddress, std::vector<Tunnel*>> map_;
};

// Whether a worker's thread is running, for PacketEngine::Health: the thread beats every time
// round its loop (which wakes at least every tick, traffic or not) and says why when it ends.
// Read from any thread: an atomic, and a short lock for the reason once the thread has ended.
class WorkerHeartbeat {
 public:
  explicit WorkerHeartbeat(unsigned worker);

  // The worker's thread, with its clock's coarse CLOCK_MONOTONIC reading.
  void Beat(int64_t monotonic_nanos) {
    last_beat_nanos_.store(monotonic_nanos, std::memory_order_relaxed);
  }
  // The worker's thread as it leaves its loop for good.
  void Stopped(std::string why);

  // OK, or UNAVAILABLE: "dataplane worker N stopped: <why>", or "dataplane worker N (thread
  // dataplane-N) has not run for 3.2 s" when the last beat is older than `stall`.
  absl::Status Health(absl::Duration stall) const;

 private:
  const unsigned worker_;
  std::atomic<int64_t> last_beat_nanos_;
  std::atomic<bool> stopped_{false};
  mutable absl::Mutex mu_;
  std::string why_ ABSL_GUARDED_BY(mu_);
};

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
