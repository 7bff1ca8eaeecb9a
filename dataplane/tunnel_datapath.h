// What happens to one tunnel's packets between the device and the underlay, whatever moves
// them (the io_uring or the epoll engine): the kernel's per-tunnel transmit and receive rules
// (ip_tunnel_xmit, ip_tunnel_rcv), path MTU handling and keepalives.
//
// The common path is split in halves around the engine's asynchronous I/O: PrepareTransmit
// wraps a frame for the engine to send, AcceptReceived checks a matched packet for the engine to
// write to the device. The rare paths (ICMP errors back into the device, fragments, keepalives)
// are done here, synchronously, with plain system calls on the engine's sockets.
//
// Owned and used by the engine's thread only; nothing here locks or allocates per packet.
#ifndef TUNNELAGENT_DATAPLANE_TUNNEL_DATAPATH_H_
#define TUNNELAGENT_DATAPLANE_TUNNEL_DATAPATH_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tunnel_table.h"

namespace tunnelagent::dataplane {

// An engine's underlay sockets and scratch space for the paths that are not the fast one.
class UnderlayIo {
 public:
  UnderlayIo() = default;
  ~UnderlayIo();
  UnderlayIo(const UnderlayIo&) = delete;
  UnderlayIo& operator=(const UnderlayIo&) = delete;

  // Opens the IPPROTO_RAW send sockets (IPv4 always; IPv6 where the kernel has it), and the
  // UDP and rtnetlink sockets used to ask the kernel about routes.
  absl::Status Open(int buffer_bytes);
  // What Open was given: the size for the engine's other underlay sockets (fou) too.
  int buffer_bytes() const { return buffer_bytes_; }

  // -1 when the family is not available.
  int send_fd(bool ipv6) const { return ipv6 ? send6_ : send4_; }

  // The route towards `remote`: the MTU it allows and the source address the kernel would
  // pick. False when there is no route. The MTU is the route's own (its mtu metric, else its
  // device's: what a raw send may carry), never what the kernel's PMTU cache holds for the
  // remote: the kernel writes any "fragmentation needed" that names a GRE or IPIP flow into
  // that cache, forged or not (RouteMtu).
  bool Probe(bool ipv6, const OuterAddress& remote, uint32_t* mtu, OuterAddress* source);
  // The FIB's route to `remote` (RTM_GETROUTE with RTM_F_FIB_MATCH: the route, not the cached
  // exception) and its device's MTU: the route's mtu metric when it has one, capped at the
  // device's, else the device's; the least of the nexthops' for a multipath route. False when
  // the kernel gives no route or no device (e.g. a route through a nexthop object).
  bool RouteMtu(bool ipv6, const OuterAddress& remote, uint32_t* mtu);

  // How long a path MTU lowered by a believed ICMP error holds before the route is asked again
  // (the kernel's net.ipv4.route.mtu_expires default: 10 minutes).
  absl::Duration path_mtu_expiry() const { return path_mtu_expiry_; }
  void set_path_mtu_expiry(absl::Duration expiry) { path_mtu_expiry_ = expiry; }

  // Sends one whole outer packet now; returns 0 or an errno value.
  int SendNow(bool ipv6, const OuterAddress& destination, const uint8_t* packet, size_t len);

  // Room for building one packet of up to 64 KiB with headroom, or its fragments.
  static constexpr size_t kScratchBytes = 2 * 65536 + 256;
  uint8_t* scratch() { return scratch_.get(); }
  uint16_t NextFragmentId() { return ++fragment_id_ == 0 ? ++fragment_id_ : fragment_id_; }

 private:
  int send4_ = -1;
  int send6_ = -1;
  int probe4_ = -1;
  int probe6_ = -1;
  int route_netlink_ = -1;  // NETLINK_ROUTE, for RouteMtu
  uint32_t route_request_ = 0;
  absl::Duration path_mtu_expiry_ = absl::Minutes(10);
  int buffer_bytes_ = 0;
  std::unique_ptr<uint8_t[]> scratch_{new uint8_t[kScratchBytes]};
  uint16_t fragment_id_ = 0;
};

// An engine thread's reading of the time, taken once every time round its loop (which wakes at
// least every tick): the per-packet path stamps with it and never asks the kernel. The coarse
// clocks (no system call, the kernel's tick of a few milliseconds) are all that a "last
// received" time or a heartbeat needs. Owned and written by the engine's thread.
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

// Ancillary data of a fou send: the outer TOS and TTL of the packet(s), and the UDP segment
// size when several equal-sized payloads go as one (UDP GSO, `gso_size` 0 otherwise). Returns
// the control length; `control` must hold kFouSendControlBytes.
// A fou send carries at most this many packets (UDP_MAX_SEGMENTS on older kernels), and this
// many bytes of payload (what one UDP datagram can hold before the kernel splits it).
inline constexpr size_t kMaxFouRun = 64;
inline constexpr size_t kMaxFouRunBytes = 65000;
inline constexpr size_t kFouSendControlBytes = 96;  // three cmsgs: 24 + 24 + 24
static_assert(kFouSendControlBytes >= 2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint16_t)));
size_t WriteFouControl(uint8_t* control, uint8_t tos, uint8_t ttl, uint16_t gso_size);

class TunnelDatapath {
 public:
  ~TunnelDatapath();
  // Checks the tunnel against what the engine has (FAILED_PRECONDITION for an IPv6 tunnel when
  // the kernel has no IPv6), resolves its source address and path MTU. `worker` is the
  // engine's index among the workers: which of the tunnel's counters it writes; worker 0 also
  // sends the keepalives. `clock` is the engine thread's (it must outlive the datapath).
  static absl::StatusOr<std::unique_ptr<TunnelDatapath>> Create(const EngineTunnel& config,
                                                                UnderlayIo* io,
                                                                const WorkerClock* clock,
                                                                absl::Time now,
                                                                unsigned worker = 0);

  const EngineTunnel& config() const { return config_; }
  const TunnelMatch& match() const { return match_; }
  TunnelCounters& counters() { return *counters_; }
  TunnelStats& stats() { return *config_.counters; }
  bool ipv6_underlay() const { return ipv6_; }
  int send_fd() const { return io_->send_fd(ipv6_); }
  // Where outer packets go, for sendmsg's msg_name.
  const sockaddr* destination() const { return reinterpret_cast<const sockaddr*>(&destination_); }
  socklen_t destination_len() const { return destination_len_; }
  // The largest frame the device gives: the MTU, plus the Ethernet header for tap modes.
  uint32_t max_frame() const { return max_frame_; }

  // TUN offloads: reads and writes of the device carry a virtio-net header.
  bool vnet_header() const { return config_.vnet_header; }

  // Foo-over-UDP: packets leave through the tunnel's UDP sockets, not the raw socket. What
  // Encapsulate made (`packet`) starts with IP and UDP headers for the raw paths; a UDP socket
  // sends what follows them (FouPayload), with the TOS and TTL they hold, on the socket the
  // flow's source port picks (FouSendFd).
  bool fou() const { return encap_.fou(); }
  size_t fou_header_len() const { return fou_header_len_; }
  int FouSendFd(const EncapResult& packet) const;
  // The run of prepared packets at the start of `packets` (`count` of them) that one fou send
  // takes: equal-sized payloads (the last may be shorter) of one socket, within what one UDP
  // GSO send holds, or one packet when GSO is off. Fills `iovs` with their payloads and returns
  // how many, with the socket and the segment size (0 for a single packet).
  size_t NextFouRun(const EncapResult* packets, size_t count, iovec* iovs, int* fd,
                    uint16_t* gso_size) const;
  // Sends `count` prepared packets now through the fou sockets (as one UDP GSO send where
  // they allow it) and does TransmitDone for each: frames[i]/lens[i] are what the device gave,
  // packets[i] what PrepareTransmit made of them.
  void SendFouNow(uint8_t* const* frames, const size_t* lens, const EncapResult* packets,
                  size_t count);
  // Writes a matched, accepted packet to the device now (behind an empty virtio-net header
  // with offloads) and counts it: for receives that bring several packets at once.
  void DeliverNow(const Decapsulated& d);
  // UDP GSO for fou sends: on until the kernel refuses it once (EIO: no checksum offload on the
  // path), then off for this tunnel.
  bool fou_gso() const { return fou_gso_; }
  void DisableFouGso() { fou_gso_ = false; }

  // Transmit, before the first half when the device has offloads: what the virtio-net header
  // (`*header`, read from in front of `frame`) says about the `len` bytes at `frame`.
  enum class DeviceRead {
    kPacket,       // one packet, its checksum finished if it was left partial: PrepareTransmit it
    kSuperPacket,  // *segments packets to be made with SegmentSuperPacket, each then prepared
    kDropped,      // malformed (counted)
  };
  DeviceRead TakeVirtioNetHeader(const VirtioNetHeader& header, uint8_t* frame, size_t len,
                                 size_t* segments);
  // Sends a prepared packet at once with a plain system call and does TransmitDone: for the
  // rare super-packet whose segments do not all fit the engine's buffers.
  void SendNow(uint8_t* frame, size_t len, const EncapResult& packet);

  // Transmit, first half: `len` bytes the device gave at `frame`, with kDeviceHeadroom writable
  // bytes before it. True with *packet set: the engine sends it, then calls TransmitDone. False:
  // nothing for the engine to do (answered with an ICMP error, sent as fragments, or dropped;
  // all counted). The tunnel's own outer packet, routed back into its device, is dropped as a
  // loop (LoopCheck).
  bool PrepareTransmit(uint8_t* frame, size_t len, EncapResult* packet);
  // Transmit, second half: `result` is what the send returned (bytes, or -errno). An EMSGSIZE
  // lowers the path MTU and the frame, still intact, gets the too-big treatment.
  void TransmitDone(uint8_t* frame, size_t len, int result);

  // Receive: a packet the table matched to this tunnel. True: the engine writes d.inner to the
  // device, then calls DeliverDone. False: done with (a keepalive, or a drop; counted).
  bool AcceptReceived(const Decapsulated& d);
  // `packets` received segments made `len` bytes written (more than one when coalesced).
  // A write that took stamps the tunnel's last receive time.
  void DeliverDone(size_t len, int result, uint32_t packets = 1);

  // Keepalives and path MTU refresh; returns when it next wants to run.
  absl::Time Tick(absl::Time now);

  // An ICMP "fragmentation needed" / "packet too big" the engine read, whose quote names this
  // tunnel's remote. Believed only when the quote could be one of its packets
  // (CheckTooBigQuote, and for a tunnel that numbers its packets a sequence number it sent in
  // the last one to two seconds): then the path MTU drops to what it reports for
  // UnderlayIo::path_mtu_expiry, after which the route is asked again. kRejected is counted
  // (rx_drops, kIcmpRejected) by worker 0 alone, as every worker reads every error. A worker
  // that does not read the tunnel's device sends none of its packets and does not judge.
  QuoteVerdict TakeTooBig(const TooBigReport& report);

 private:
  TunnelDatapath(const EngineTunnel& config, UnderlayIo* io, const WorkerClock* clock,
                 unsigned worker);

  void RefreshPath();
  // path_mtu_ from the route's MTU and what a believed error lowered it to; worker 0 shows it.
  void UpdatePathMtu();
  // Whether `sequence` went out in the last one to two seconds (kSequenceMarkInterval).
  bool SentLately(uint32_t sequence) const {
    return static_cast<int32_t>(sequence - sequence_marks_[1]) > 0 &&
           static_cast<int32_t>(tx_sequence_ - sequence) >= 0;
  }
  // A frame longer than the path carries: ICMP error, fragments, or a drop.
  void HandleTooBig(uint8_t* frame, size_t len);
  bool WriteIcmpToDevice(const uint8_t* ip, size_t len);
  bool SendFragments(const uint8_t* outer, size_t len);
  // Wraps the frame again and sends it at once on its fou socket; true when the send took.
  bool ResendFou(uint8_t* frame, size_t len);
  void SendKeepalive();
  bool IsPeerKeepalive(const Decapsulated& d) const;
  // TunnelStats::last_receive_unix_nanos from the worker's clock; the shared value is written
  // only when this worker's clock has moved on since it last did, so the per-packet cost is a
  // compare.
  void StampReceived() {
    const int64_t now = clock_->unix_nanos();
    if (now == last_receive_stamp_) return;
    last_receive_stamp_ = now;
    // Stored whatever is there: workers' clocks are at most a tick apart, and a wall clock
    // stepped back must not freeze the time at a value in the future.
    config_.counters->last_receive_unix_nanos.store(now, std::memory_order_relaxed);
  }

  EngineTunnel config_;
  TunnelCounters* counters_;  // this worker's
  UnderlayIo* io_;
  const WorkerClock* clock_;
  int64_t last_receive_stamp_ = 0;  // what this worker last stored as the last receive time
  LoopCheck loop_check_;
  bool ipv6_ = false;
  TunnelMatch match_;
  EncapParams encap_;    // config_.encap with the source resolved where it must be known
  OuterAddress source_;  // our underlay address towards the remote (resolved)
  sockaddr_in6 destination_{};
  socklen_t destination_len_ = 0;
  uint32_t max_frame_ = 0;
  uint32_t l2_header_ = 0;
  uint32_t overhead_ = 0;  // outer headers in front of an IP packet (or of a frame's payload)
  uint32_t path_mtu_ = 0;  // largest inner IP packet the path carries; 0 = not known
  const unsigned worker_;
  uint32_t route_mtu_ = 0;  // what the route to the remote allows (UnderlayIo::Probe); 0: none
  // The underlay MTU a believed too-big error reported, until (CLOCK_MONOTONIC nanoseconds)
  // it expires; 0: none.
  uint32_t learned_mtu_ = 0;
  int64_t learned_until_nanos_ = 0;
  // tx_sequence_ as it was one and two marks ago: what a quoted sequence number must be after.
  uint32_t sequence_marks_[2] = {0, 0};
  absl::Time next_sequence_mark_ = absl::InfiniteFuture();
  std::vector<uint16_t> fou_sports_;  // the ports fou_fds_ are bound to
  uint32_t tx_sequence_ = 0;
  uint32_t rx_sequence_ = 0;  // the next expected; 0 = none seen (as the kernel's i_seqno)
  absl::Time next_probe_ = absl::InfinitePast();
  absl::Time next_keepalive_ = absl::InfiniteFuture();
  uint32_t keepalives_outstanding_ = 0;
  int64_t seen_keepalive_reply_ = 0;  // stats().last_keepalive_reply_unix_nanos, as last read
  std::vector<int> fou_fds_;  // fou: connected UDP sockets, picked by the flow's source port
  size_t fou_header_len_ = 0;
  bool fou_gso_ = true;  // off after the kernel refused a UDP GSO send (EIO)
};

// What both engines check before taking a tunnel: its name free, its datapath made, its receive
// match free (ALREADY_EXISTS otherwise). `tunnels` is the engine's map by name.
template <typename Tunnels, typename Table>
absl::StatusOr<std::unique_ptr<TunnelDatapath>> NewTunnelDatapath(
    const EngineTunnel& config, const Tunnels& tunnels, const Table& by_match, UnderlayIo* io,
    const WorkerClock* clock, unsigned worker = 0) {
  if (tunnels.contains(config.name)) {
    return absl::AlreadyExistsError(absl::StrCat("tunnel ", config.name, " exists"));
  }
  absl::StatusOr<std::unique_ptr<TunnelDatapath>> path =
      TunnelDatapath::Create(config, io, clock, absl::Now(), worker);
  if (path.ok() && by_match.Contains((*path)->match())) {
    return absl::AlreadyExistsError(absl::StrCat(
        "another tunnel receives the same mode, local, remote and key as ", config.name));
  }
  return path;
}

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUNNEL_DATAPATH_H_
