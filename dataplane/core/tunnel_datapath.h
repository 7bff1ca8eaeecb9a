// What happens to one tunnel's packets between the device and the underlay, whatever moves
// them: the kernel's per-tunnel transmit and receive rules (ip_tunnel_xmit, ip_tunnel_rcv),
// path MTU handling and keepalives.
//
// A point-to-point tunnel has one remote; a multipoint tunnel (EngineTunnel::multipoint) has
// peers: each packet goes to the peer whose allowed prefixes hold its inner destination, and
// what is received must come from a peer's underlay address with an inner source that peer may
// send from. Path MTU and keepalives are per remote (PeerPath) either way.
//
// The common path is split in halves around the backend's I/O: PrepareTransmit wraps a frame
// for the backend to send, ApplyReceiveRules checks a matched packet for the backend to write to
// the device. The rare paths (ICMP errors back into the device, fragments, keepalives) are
// done here, at once, through the worker's PacketIo; asking the route is housekeeping (Tick).
//
// Owned and used by one worker's thread only; nothing here locks or allocates per packet.
#ifndef TUNNELAGENT_DATAPLANE_CORE_TUNNEL_DATAPATH_H_
#define TUNNELAGENT_DATAPLANE_CORE_TUNNEL_DATAPATH_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "dataplane/core/housekeeping_schedule.h"
#include "dataplane/core/multipoint_peers.h"
#include "dataplane/core/packet_io.h"
#include "dataplane/core/peer_path.h"
#include "dataplane/core/tunnel_table.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tun/virtio_net.h"

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
// The largest frame a device gives: the largest MTU, plus the Ethernet header in tap modes.
inline constexpr uint32_t kMaxDeviceFrame = 65535 + kEthernetHeaderLen;
// A device read buffer that any tunnel's reads fit, offloads or not (TunnelDatapath::
// buffer_bytes is at most this): for buffers the tunnels of a worker share.
inline constexpr size_t kMaxDeviceBufferBytes = DeviceBufferBytes(kMaxDeviceFrame);

// What the tunnels of one worker share: the way out (PacketIo), the worker's clock and index,
// and scratch space for the rare paths. Owned by the PacketCore.
struct WorkerContext {
  PacketIo* io = nullptr;
  const WorkerClock* clock = nullptr;
  // Which of a tunnel's counters this worker writes; worker 0 also sends the keepalives.
  unsigned worker = 0;
  // How long a path MTU lowered by a believed ICMP error holds before the route is asked again
  // (the kernel's net.ipv4.route.mtu_expires default: 10 minutes).
  absl::Duration path_mtu_expiry = absl::Minutes(10);
  // Room for building one packet of up to 64 KiB with headroom, or its fragments.
  static constexpr size_t kScratchBytes = 2 * 65536 + 256;
  std::unique_ptr<uint8_t[]> scratch{new uint8_t[kScratchBytes]};
  uint16_t fragment_id = 0;
  uint16_t NextFragmentId() { return ++fragment_id == 0 ? ++fragment_id : fragment_id; }
  // When the worker's tunnels are next due for housekeeping (PacketCore::Tick).
  HousekeepingSchedule housekeeping;
};

class TunnelDatapath {
 public:
  ~TunnelDatapath();
  // Checks the tunnel against what the worker has (FAILED_PRECONDITION for an IPv6 tunnel when
  // the kernel has no IPv6), opens its fou senders, resolves its source address and path MTU.
  // `worker` must outlive the datapath.
  static absl::StatusOr<std::unique_ptr<TunnelDatapath>> Create(const EngineTunnel& config,
                                                                WorkerContext* worker,
                                                                absl::Time now);

  // The configuration it was created with (a multipoint tunnel's initial `peers` not kept:
  // its peers are what ChangePeers made of them).
  const EngineTunnel& config() const { return config_; }
  bool multipoint() const { return config_.multipoint; }
  const std::string& name() const { return config_.name; }
  const TunnelMatch& match() const { return match_; }
  TunnelCounters& counters() { return *counters_; }
  TunnelStats& stats() { return *config_.stats; }
  bool ipv6_underlay() const { return ipv6_; }
  int device_fd() const { return config_.device_fd; }
  // Ancillary data for raw sends, sendmsg's msg_control (none: length 0): IP_PKTINFO naming
  // the configured local address, the outer source the packet carries anyway. Given the
  // source, the kernel's route lookup skips searching its device index for an L3 master
  // device, a search that grows with the number of devices (one per tunnel). It also routes
  // as the kernel's own tunnels do, with the source that policy rules may select on.
  void* send_control() const { return const_cast<uint8_t*>(send_control_); }
  size_t send_control_len() const { return send_control_len_; }
  // The largest frame the device gives: the MTU, plus the Ethernet header for tap modes.
  uint32_t max_frame() const { return max_frame_; }

  // TUN offloads: reads and writes of the device carry a virtio-net header.
  bool vnet_header() const { return config_.vnet_header; }
  size_t vnet_header_len() const { return VirtioNetHeaderBytes(config_.vnet_header); }
  // A device read: a buffer of buffer_bytes(); the read goes to read_offset() into it (the
  // virtio-net header, if any, just before where the frame belongs, at kDeviceHeadroom) and
  // asks for read_bytes(). With offloads a read can be a 64 KiB super-packet.
  size_t buffer_bytes() const {
    return DeviceBufferBytes(config_.vnet_header ? 65535 : max_frame_);
  }
  size_t read_offset() const { return kDeviceHeadroom - vnet_header_len(); }
  size_t read_bytes() const { return buffer_bytes() - kDeviceHeadroom + vnet_header_len(); }

  // The backend's own state of the tunnel (buffers, registered files): set by the backend
  // when the tunnel is added, never read by the core.
  template <typename T>
  T* backend() const {
    return static_cast<T*>(backend_);
  }
  void set_backend(void* state) { backend_ = state; }
  // Out of the receive tables while the backend finishes what it has in flight.
  bool unlinked() const { return unlinked_; }
  void set_unlinked() { unlinked_ = true; }

  // Foo-over-UDP: packets leave through the tunnel's UDP senders, not the raw socket. What
  // Encapsulate made (`packet`) starts with IP and UDP headers for the raw paths; a fou send
  // carries what follows them (FouPayload), with the TOS and TTL they hold, on the sender the
  // flow's source port picks. A point-to-point tunnel's senders are connected to its remote; a
  // multipoint tunnel's are not, and each send names the peer's underlay address and the fou
  // port (`destination`: the packet's EncapResult::destination, which the backend copies).
  bool fou() const { return encap_.fou(); }
  struct FouPayload {
    int sender = -1;
    iovec payload{};
    uint8_t tos = 0;
    uint8_t ttl = 0;
    const sockaddr* destination = nullptr;  // null: the sender is connected
    socklen_t destination_len = 0;
  };
  FouPayload FouPayloadOf(const EncapResult& packet) const;
  // The run of prepared packets at the start of `packets` (`count` of them) that one fou send
  // takes: equal-sized payloads (the last may be shorter) of one sender to one peer, within
  // what one UDP GSO send holds, or one packet when GSO is off. Fills `iovs` with their
  // payloads and returns how many, with the sender and the segment size (0 for a single
  // packet); the run goes where its first packet's FouPayload says.
  size_t NextFouRun(const EncapResult* packets, size_t count, iovec* iovs, int* sender,
                    uint16_t* gso_size) const;
  // Sends `count` prepared packets now through the fou senders (as one UDP GSO send where
  // they allow it) and does TransmitDone for each: frames[i]/lens[i] are what the device gave,
  // packets[i] what PrepareTransmit made of them.
  void SendFouNow(uint8_t* const* frames, const size_t* lens, const EncapResult* packets,
                  size_t count);
  // Writes a matched, accepted packet to the device now and counts it: for receives that
  // bring several packets at once.
  void WriteToDeviceNow(const Decapsulated& d);
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
  // Sends a prepared packet at once and does TransmitDone: for the rare super-packet whose
  // segments do not all fit the backend's buffers.
  void SendNow(uint8_t* frame, size_t len, const EncapResult& packet);

  // Transmit, first half: `len` bytes the device gave at `frame`, with kDeviceHeadroom writable
  // bytes before it. True with *packet set: the backend sends it to packet->destination (raw
  // sends: copied into the send's own storage, the peer may go before the send completes),
  // then calls TransmitDone with packet->peer. False: nothing for the backend to do (answered
  // with an ICMP error, sent as fragments, or dropped; all counted). The tunnel's own outer
  // packet, routed back into its device, is dropped as a loop (LoopCheck). Multipoint: no peer
  // for the inner destination is answered with ICMP destination unreachable (kNoPeer).
  bool PrepareTransmit(uint8_t* frame, size_t len, EncapResult* packet);
  // Transmit, second half: `result` is what the send returned (bytes, or -errno), `peer` the
  // prepared packet's EncapResult::peer. An EMSGSIZE lowers that path's MTU and the frame,
  // still intact, gets the too-big treatment.
  void TransmitDone(uint8_t* frame, size_t len, int result, uint64_t peer = 0);

  // Receive: a packet the table matched to this tunnel. True: the backend writes d.inner to
  // the device, then calls DeviceWriteDone. False: done with (a keepalive, or a drop; counted).
  // Multipoint: the outer source must be a peer's (kUnknownPeer), the inner source one it may
  // send from (kSpoofedSource); an accepted packet is counted on the peer here.
  bool ApplyReceiveRules(const Decapsulated& d);
  // `packets` received segments made `len` bytes written (more than one when coalesced).
  // A write that took stamps the tunnel's last receive time.
  void DeviceWriteDone(size_t len, int result, uint32_t packets = 1);

  // Housekeeping: keepalives, the path MTU's refresh and expiry, sequence marks. Does what is
  // due at `now` (nothing when nothing is: a compare) and remembers when it is next due. A
  // multipoint tunnel visits the peers that are due, and no other.
  void Tick(absl::Time now);

  // Multipoint: the peers of `removed` go (an id that is no peer is nothing to do), then each
  // of `upserted` is added or replaces the peer of its id (one at the same underlay address
  // keeps what is known of its path). FAILED_PRECONDITION for a point-to-point tunnel; a peer
  // refused (INVALID_ARGUMENT: no counters for this worker, an underlay address of the wrong
  // family or none; ALREADY_EXISTS or INVALID_ARGUMENT from the table) is left as it was, the
  // rest is done, and the first refusal is the answer.
  absl::Status ChangePeers(const std::vector<EnginePeer>& upserted,
                           const std::vector<uint32_t>& removed, absl::Time now);
  // A peer by id, for tests and logs; null when there is none.
  const PeerPath* FindPeer(uint32_t id) const {
    return peers_ ? peers_->table().Find(id) : nullptr;
  }
  size_t peer_count() const { return peers_ ? peers_->size() : 0; }
  // How many times housekeeping visited one of the peers: for tests.
  uint64_t peer_visits() const { return peer_visits_; }
  absl::Time next_tick() const { return next_tick_; }
  // Set once by the core as it takes the tunnel: its entries in the worker's schedule.
  void set_housekeeping_id(uint64_t id) { housekeeping_id_ = id; }
  uint64_t housekeeping_id() const { return housekeeping_id_; }

  // An ICMP "fragmentation needed" / "packet too big" the worker read, whose quote names this
  // tunnel's remote (multipoint: any; the peer is the quoted destination's). Believed only when the
  // quote could be one of its packets (CheckTooBigQuote, and for a tunnel that numbers its packets
  // a sequence number it sent in the last one to two seconds): then the path MTU drops to what it
  // reports for WorkerContext::path_mtu_expiry, after which the route is asked again. kRejected is
  // counted (rx_drops, kIcmpRejected) by worker 0 alone, as every worker reads every error. A
  // worker that does not read the tunnel's device sends none of its packets and does not judge.
  QuoteVerdict TakeTooBig(const TooBigReport& report);

 private:
  TunnelDatapath(const EngineTunnel& config, WorkerContext* worker);

  // The path of a prepared packet (EncapResult::peer): the remote, or a peer still there.
  PeerPath* PathOf(uint64_t peer) {
    if (peer == 0) return &remote_;
    return peers_ ? peers_->ByHandle(peer) : nullptr;
  }
  // Multipoint, send: no peer holds the inner destination; counted and answered.
  void AnswerNoPeer(const uint8_t* frame, size_t len);
  // Whether an ICMP error for a packet to no peer may go now. At most kIcmpBurst at once and
  // one a millisecond after that, as the kernel limits its own (icmp_msgs_burst 50,
  // icmp_msgs_per_sec 1000): a host sending into a route no peer holds gets answers at that
  // rate, and its other packets are only counted.
  bool TakeIcmpToken();
  static constexpr int64_t kIcmpBurst = 50;
  static constexpr int64_t kNanosPerIcmpToken = 1'000'000;
  // A peer as this worker keeps it, from what the control plane gave (and what was known of
  // its path, `old`, when at the same address).
  absl::StatusOr<PeerPath> MakePeerPath(const EnginePeer& peer, const PeerPath* old,
                                        absl::Time now) const;
  // Multipoint, receive: the peer rules; true to deliver.
  bool ApplyPeerRules(PeerPath& peer, const Decapsulated& d);
  // A keepalive reply came back from `p`.
  void TakeKeepaliveReply(PeerPath& p);
  // The peer's keepalive: answered straight home. True when it was one.
  bool AnswerPeerKeepalive(PeerPath& p, const Decapsulated& d);
  // Counts a packet sent to (or delivered from) a peer in its own counters.
  // A drop of a packet to or from `p`: the tunnel's, and the peer's own too (a multipoint
  // tunnel's peer shows it in its status).
  void CountDrop(const PeerPath& p, DropCounters TunnelCounters::*direction, DropReason reason) {
    (counters().*direction)[static_cast<int>(reason)].Add();
    if (p.counters == nullptr) return;
    // A peer keeps one total per direction.
    (direction == &TunnelCounters::tx_drops ? p.counters->tx_drops : p.counters->rx_drops).Add();
  }
  static void CountPeer(PeerPath& p, Counter PeerCounters::*packets, Counter PeerCounters::*bytes,
                        size_t len) {
    if (p.counters == nullptr) return;
    (p.counters->*packets).Add();
    (p.counters->*bytes).Add(len);
  }

  // Asks the route (a system call through PacketIo): from Create and Tick, and at most once a
  // tick when the underlay refused a send as too big (TransmitDone).
  void RefreshPath(PeerPath& p);
  // The underlay refused a send as too big: the route is asked now (true), so that the ICMP
  // error the host caches names the real MTU and a fragmented packet can be cut again, at most
  // once a tick (a burst of refused sends asks once); otherwise at the next tick (false).
  bool AskRouteSoon(PeerPath& p);
  // The path is to be asked again at the next tick rather than on the packet path.
  void ScheduleRefresh(PeerPath& p) {
    p.refresh_due = true;
    TickSoon(p);
  }
  // Housekeeping of `p` at the next tick: the worker's schedule is told when the time moves
  // forward (and a multipoint tunnel's schedule of its peers).
  void TickSoon(PeerPath& p) {
    if (&p != &remote_) {
      if (p.next_tick == absl::InfinitePast()) return;  // due already
      peers_->Schedule(p, absl::InfinitePast());
    }
    TickSoon();
  }
  void TickSoon() {
    if (next_tick_ == absl::InfinitePast()) return;  // due already
    next_tick_ = absl::InfinitePast();
    worker_->housekeeping.Schedule(housekeeping_id_, next_tick_);
  }
  // The path's housekeeping due at `now`: route probes, a lowered MTU's expiry, keepalives.
  // Returns when it is next due.
  absl::Time TickPath(PeerPath& p, absl::Time now);
  // p.path_mtu from the route's MTU and what a believed error lowered it to; worker 0 shows it.
  void UpdatePathMtu(PeerPath& p);
  // Whether `sequence` went out in the last one to two seconds (kSequenceMarkInterval).
  bool SentLately(uint32_t sequence) const {
    return static_cast<int32_t>(sequence - sequence_marks_[1]) > 0 &&
           static_cast<int32_t>(tx_sequence_ - sequence) >= 0;
  }
  // A frame longer than the path carries: ICMP error, fragments, or a drop.
  void HandleTooBig(PeerPath& p, uint8_t* frame, size_t len);
  bool WriteIcmpToDevice(const uint8_t* ip, size_t len);
  bool SendFragments(PeerPath& p, const uint8_t* outer, size_t len);
  // Wraps the frame again for `p` and sends it at once on its fou sender; true when the send
  // took.
  bool ResendFou(PeerPath& p, uint8_t* frame, size_t len);
  void SendKeepalive(PeerPath& p);
  bool IsPeerKeepalive(const Decapsulated& d) const;
  // last_receive_unix_nanos of the path's stats from the worker's clock; the shared value is
  // written only when this worker's clock has moved on since it last did, so the per-packet
  // cost is a compare.
  void StampReceived(PeerPath& p) {
    const int64_t now = worker_->clock->unix_nanos();
    if (now == p.last_receive_stamp) return;
    p.last_receive_stamp = now;
    // Stored whatever is there: workers' clocks are at most a tick apart, and a wall clock
    // stepped back must not freeze the time at a value in the future.
    p.shown->last_receive_unix_nanos.store(now, std::memory_order_relaxed);
  }
  int64_t monotonic_nanos() const { return worker_->clock->monotonic_nanos(); }

  EngineTunnel config_;
  TunnelCounters* counters_;  // this worker's
  WorkerContext* worker_;
  void* backend_ = nullptr;
  bool unlinked_ = false;
  bool ipv6_ = false;
  TunnelMatch match_;
  EncapParams encap_;  // config_.encap with the source resolved where it must be known
  // The remote of a point-to-point tunnel (of a multipoint one: unused, its peers are in
  // peers_). Its stats are the tunnel's.
  PeerPath remote_;
  std::unique_ptr<MultipointPeers> peers_;  // multipoint only
  // From the configured addresses (a tunnel without a local address sends from whichever the
  // route gives, so its looped packets can come from any), checked against the path's
  // underlay: one for the tunnel, whatever its number of peers.
  LoopCheck loop_check_;
  uint64_t peer_visits_ = 0;
  alignas(cmsghdr) uint8_t send_control_[CMSG_SPACE(sizeof(in_pktinfo))] = {};
  size_t send_control_len_ = 0;
  uint32_t max_frame_ = 0;
  uint32_t l2_header_ = 0;
  // tx_sequence_ as it was one and two marks ago: what a quoted sequence number must be after.
  uint32_t sequence_marks_[2] = {0, 0};
  absl::Time next_sequence_mark_ = absl::InfiniteFuture();
  uint32_t tx_sequence_ = 0;
  uint32_t rx_sequence_ = 0;  // the next expected; 0 = none seen (as the kernel's i_seqno)
  absl::Time next_tick_ = absl::InfinitePast();
  uint64_t housekeeping_id_ = 0;        // its name in the worker's HousekeepingSchedule
  std::vector<FouSender> fou_senders_;  // fou: picked by the flow's source port
  size_t fou_header_len_ = 0;
  bool fou_gso_ = true;               // off after the kernel refused a UDP GSO send (EIO)
  int64_t icmp_tokens_ = kIcmpBurst;  // TakeIcmpToken's bucket, this worker's
  int64_t icmp_refilled_nanos_ = 0;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_TUNNEL_DATAPATH_H_
