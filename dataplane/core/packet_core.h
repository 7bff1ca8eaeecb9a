// The packet core of one dataplane worker: its tunnels and every packet decision, whatever
// moves the bytes. An I/O backend (io_uring, epoll) reads devices and sockets and hands what
// it read here; the core answers with what to send, what to write to which device, or nothing
// (a drop, counted; a keepalive answered; a packet coalesced). It makes no system call: the
// rare paths go through the worker's PacketIo.
//
//   transmit: TakeDeviceRead -> kSend (the backend sends `out`, then TransmitDone) or
//             kSuperPacket (PrepareSegments rounds, each packet sent, then TransmitDone)
//   receive:  TakeDatagram -> a Delivery (the backend writes it, then DeviceWriteDone);
//             TakeFouDatagrams for what a fou socket brought; FlushCoalesced after a batch
//   housekeeping: TakeTooBig for each ICMP error read, Tick every time round the loop
//
// Owned and used by the worker's thread only (guarded by the Worker's ThreadRole); nothing
// here locks or allocates per packet.
#ifndef TUNNELAGENT_DATAPLANE_CORE_PACKET_CORE_H_
#define TUNNELAGENT_DATAPLANE_CORE_PACKET_CORE_H_

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dataplane/core/packet_io.h"
#include "dataplane/core/receive.h"
#include "dataplane/core/tunnel_datapath.h"
#include "dataplane/core/tunnel_table.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

// Housekeeping (keepalives, path MTU refresh, ICMP errors) runs at most this often, and at
// least this often (so a new tunnel's first keepalive is not late): backends wake every tick.
inline constexpr absl::Duration kTickResolution = absl::Milliseconds(50);

// Coalescing on receive: flows open at once (their buffers are written before the next batch).
inline constexpr size_t kCoalescerFlows = 16;

// Where a super-packet read from a device with offloads is split: segments of up to this many
// at a time, in this much memory (a 64 KiB packet split at the smallest MSS that fits the
// count, each segment with its headroom and 64-byte alignment), and what PrepareTransmit made
// of those it took.
inline constexpr size_t kMaxSegments = 128;
inline constexpr size_t kSegmentArenaBytes = 65536 + kMaxSegments * (kDeviceHeadroom + 128 + 64);
struct SegmentBatch {
  std::unique_ptr<uint8_t[]> memory{new uint8_t[kSegmentArenaBytes]};
  Segment segments[kMaxSegments];
  uint8_t* frames[kMaxSegments];
  size_t lens[kMaxSegments];
  EncapResult packets[kMaxSegments];
};

// Where coalesced flows go: the backend writes each to its tunnel's device (at once, or as an
// asynchronous write) and then calls PacketCore::CoalescedDone.
class CoalescedWriter {
 public:
  virtual ~CoalescedWriter() = default;
  virtual void WriteCoalesced(TunnelDatapath& tunnel, const Coalescer::Flushed& flow) = 0;
};

struct CoreOptions {
  // This worker's index among `workers`: which of a tunnel's counters it writes; worker 0
  // alone sends keepalives and counts the ICMP errors nobody took.
  unsigned worker = 0;
  unsigned workers = 1;
  absl::Duration path_mtu_expiry = absl::Minutes(10);
  // Coalescer buffers: the open flows plus the coalesced writes a backend keeps in flight.
  size_t coalescer_buffers = kCoalescerFlows;
  // Where the outer IPv4 fragment IDs start (at random, so workers sending fragments to one
  // peer do not reuse each other's IDs within a reassembly timeout).
  uint16_t first_fragment_id = 0;
};

class PacketCore {
 public:
  PacketCore(PacketIo* io, const WorkerClock* clock, CoalescedWriter* writer,
             const CoreOptions& options);
  PacketCore(const PacketCore&) = delete;
  PacketCore& operator=(const PacketCore&) = delete;

  // ---- Tunnels ----------------------------------------------------------------------------
  // Starts the tunnel's datapath: INVALID_ARGUMENT for a tunnel without a device, MTU or
  // counters; ALREADY_EXISTS when the name, or the receive match (mode, local, remote, input
  // key), is taken; what the datapath's checks say (TunnelDatapath::Create).
  absl::StatusOr<TunnelDatapath*> AddTunnel(const EngineTunnel& config);
  // The multipoint tunnel `name`'s peers change (TunnelDatapath::ChangePeers); NOT_FOUND when
  // there is no such tunnel (or it is being removed).
  absl::Status ChangePeers(absl::string_view name, const std::vector<EnginePeer>& upserted,
                           const std::vector<uint32_t>& removed);
  // A tunnel by name (unlinked ones too); nullptr when there is none.
  TunnelDatapath* FindTunnel(absl::string_view name) const;
  // Stops the tunnel's receiving at once: out of the receive match, the ICMP errors' index and
  // the coalescer's open flows. The backend then lets go of what it has in flight and calls
  // EraseTunnel.
  void UnlinkTunnel(TunnelDatapath* tunnel);
  void EraseTunnel(TunnelDatapath* tunnel);
  // Every tunnel, unlinked ones too, in no particular order; `f(TunnelDatapath&)`.
  template <typename F>
  void ForEachTunnel(F&& f) {
    for (auto& [name, tunnel] : tunnels_) f(*tunnel);
  }
  size_t tunnel_count() const { return tunnels_.size(); }
  // Forgets every tunnel (the worker is stopping).
  void Clear();

  // ---- Transmit ---------------------------------------------------------------------------
  enum class DeviceVerdict {
    kSend,         // *out is the outer packet: send it, then TransmitDone
    kSuperPacket,  // a super-packet: PrepareSegments, round by round
    kDone,         // nothing to send (answered, fragmented, dropped: counted)
  };
  // What a device read held: the frame's length and, for a super-packet, its virtio-net
  // header and how many segments it splits into.
  struct DeviceFrame {
    size_t len = 0;
    VirtioNetHeader vnet;
    size_t segments = 0;
  };
  // A read of `read_len` bytes from the tunnel's device, at read_offset() into a buffer whose
  // frame starts at `frame` (= buffer + kDeviceHeadroom): the size checks, the virtio-net
  // header, the tunnel's transmit rules and the encapsulation.
  DeviceVerdict TakeDeviceRead(TunnelDatapath& tunnel, uint8_t* frame, size_t read_len,
                               EncapResult* out, DeviceFrame* read);
  // Splits the next round of a super-packet (from segment *next, which it advances) into
  // `batch`, prepares each segment (PrepareTransmit) and returns how many it took, in
  // batch.frames / lens / packets; *made is how many the round split (0: no more rounds).
  size_t PrepareSegments(TunnelDatapath& tunnel, const DeviceFrame& read, const uint8_t* frame,
                         size_t* next, SegmentBatch& batch, size_t* made);
  // Sends `count` prepared packets of `batch` at once through PacketIo (fou: as UDP GSO sends
  // where the path allows) and does TransmitDone for each.
  void SendPreparedNow(TunnelDatapath& tunnel, SegmentBatch& batch, size_t count);

  // ---- Receive ----------------------------------------------------------------------------
  // What to write to a device: `len` bytes at `data` (behind an empty virtio-net header for a
  // device with offloads) into `tunnel`'s device, then DeviceWriteDone with `inner_len`.
  struct Delivery {
    TunnelDatapath* tunnel = nullptr;
    uint8_t* data = nullptr;
    size_t len = 0;
    uint32_t inner_len = 0;
  };
  // A packet received on a raw underlay socket: `len` is its real length (received with
  // MSG_TRUNC), `capacity` what the buffer at `data` holds (with kReceiveHeadroom free before
  // it), `msg` the receive's (IPv6: source and ancillary data). True with *out set: write it.
  // False: dropped (counted), taken by the coalescer or a keepalive.
  bool TakeDatagram(const ReceiveSocket& socket, uint8_t* data, size_t len, size_t capacity,
                    const msghdr& msg, Delivery* out);
  // What a receive on a fou socket carrying `protocol` brought (one datagram, or several of
  // one flow with UDP GRO): each written to its device at once through PacketIo, or coalesced.
  void TakeFouDatagrams(uint8_t protocol, uint8_t* data, size_t len, const msghdr& msg);
  // A failed receive (-errno): ICMP errors queued on the socket surface here (ENOPROTOOPT,
  // ECONNREFUSED, ...), as does ENOBUFS under memory pressure. Counted unless it is only
  // "nothing there" (EAGAIN, EINTR); receiving goes on.
  void ReceiveFailed(int error);
  // A datagram larger than the receive buffers (or cut short) on a socket: counted.
  void ReceivedTooBig();

  // Hands every open coalesced flow to the CoalescedWriter. Backends flush after every batch
  // of receives (the core flushes by itself before a packet that must not overtake a flow).
  void FlushCoalesced();
  void CoalescedDone(TunnelDatapath& tunnel, const Coalescer::Flushed& f, int result) {
    tunnel.DeviceWriteDone(f.inner_bytes, result, f.segments);
    coalescer_.Release(f.buffer);
  }

  // ---- Housekeeping -----------------------------------------------------------------------
  // An ICMP "fragmentation needed" / "packet too big" the worker read: handed to every
  // tunnel to its quoted destination (each judges it). One that names a tunnel protocol's
  // flow and no tunnel took or rejected is counted (kIcmpRejected) by worker 0 alone, as
  // every worker reads every error.
  void TakeTooBig(const TooBigReport& report);
  // Keepalives, path MTU refreshes: each tunnel's housekeeping that is due at `now`.
  void Tick(absl::Time now);

  DataplaneCounters& counters() { return counters_; }
  const DataplaneCounters& counters() const { return counters_; }
  const CoreOptions& options() const { return options_; }

 private:
  // The tunnel a decoded packet is for, when it is to be written to the device: the table's
  // match, if the tunnel's rules accept it and, with offloads, the coalescer did not take it.
  // nullptr otherwise (counted, or a keepalive).
  TunnelDatapath* MatchReceived(const Decapsulated& packet);
  void Drop(DropReason reason) { counters_.drops[static_cast<int>(reason)].Add(); }

  const CoreOptions options_;
  WorkerContext worker_;
  DataplaneCounters counters_;
  absl::flat_hash_map<std::string, std::unique_ptr<TunnelDatapath>> tunnels_;
  // The linked tunnels by housekeeping id (worker_.housekeeping names them so), and the
  // entries a tick takes out of the schedule (kept: a tick allocates nothing once warm).
  absl::flat_hash_map<uint64_t, TunnelDatapath*> by_housekeeping_id_;
  uint64_t last_housekeeping_id_ = 0;
  std::vector<HousekeepingSchedule::Entry> due_;
  TunnelTable<TunnelDatapath> by_match_;
  // By remote address, for the errors that quote a packet sent to it; the multipoint tunnels,
  // which find the peer an error names themselves (a few per worker).
  absl::flat_hash_map<OuterAddress, std::vector<TunnelDatapath*>> by_remote_;
  std::vector<TunnelDatapath*> multipoint_;
  Coalescer coalescer_;
  CoalescedWriter* const writer_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_PACKET_CORE_H_
