// What moves a tunnel's packets, seen from the control plane: tunnels are added and removed,
// counters are read. Implemented by the io_uring engine; faked in control-plane tests.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_ENGINE_H_
#define TUNNELAGENT_DATAPLANE_PACKET_ENGINE_H_

#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/tunnel_counters.h"

namespace tunnelagent::dataplane {

// A counter with one writer (the dataplane thread) and any number of readers. The writer
// adds without a locked instruction: a plain load and store, never a read-modify-write.
class Counter {
 public:
  void Add(uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t Get() const { return value_.load(std::memory_order_relaxed); }
  // For a counter that holds a sum made by its one writer (a reader of other counters).
  void Set(uint64_t value) { value_.store(value, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

using DropCounters = std::array<Counter, kDropReasonCount>;

// Counters of one tunnel that one dataplane worker writes, as its device would show them
// (bytes are inner bytes), plus drops by reason. Each worker has its own (see TunnelStats),
// on cache lines of its own, so the per-packet path shares nothing between workers.
struct alignas(64) TunnelCounters {
  // The members, from the one list of tunnel counters (tunnel_counters.h): tx_packets,
  // tx_bytes, rx_packets, rx_bytes, icmp_too_big_sent, tx_fragmented, tx_super_packets,
  // rx_coalesced, keepalive_sent, keepalive_replies, keepalive_answered; and the drops by
  // reason, tx_drops and rx_drops.
#define TUNNEL_COUNTER_MEMBER(member, api_field, metric, help) Counter member;
  TUNNEL_COUNTERS(TUNNEL_COUNTER_MEMBER)
#undef TUNNEL_COUNTER_MEMBER
#define TUNNEL_DROP_MEMBER(member, api_field, direction) DropCounters member;
  TUNNEL_DROP_COUNTERS(TUNNEL_DROP_MEMBER)
#undef TUNNEL_DROP_MEMBER
};

// The counters of one peer of a multipoint tunnel that one worker writes: its traffic, its
// keepalives and its drops as one total per direction (the reasons are the tunnel's). From
// the same lists as TunnelCounters; cache lines of its own per worker, 128 bytes against a
// TunnelCounters' 448, as a tunnel of 10,000 peers has 10,000 of them on every worker.
struct alignas(64) PeerCounters {
#define PEER_COUNTER_MEMBER(member, ...) Counter member;
  TUNNEL_TRAFFIC_COUNTERS(PEER_COUNTER_MEMBER)
  TUNNEL_KEEPALIVE_COUNTERS(PEER_COUNTER_MEMBER)
  TUNNEL_DROP_COUNTERS(PEER_COUNTER_MEMBER)
#undef PEER_COUNTER_MEMBER
};

// One `Counters` per worker, summed when read (at scrape time, never on the packet path).
template <typename Counters>
class WorkerShards {
 public:
  explicit WorkerShards(size_t workers)
      : count_(workers == 0 ? 1 : workers), shards_(new Counters[count_]) {}

  size_t workers() const { return count_; }
  // What worker `index` writes; only that worker's thread may.
  Counters& worker(size_t index) { return shards_[index]; }
  const Counters& worker(size_t index) const { return shards_[index]; }

  // A counter summed over the workers, e.g. Sum(&TunnelCounters::rx_packets).
  uint64_t Sum(Counter Counters::*counter) const {
    uint64_t total = 0;
    for (size_t i = 0; i < count_; ++i) total += (shards_[i].*counter).Get();
    return total;
  }

 private:
  size_t count_;
  std::unique_ptr<Counters[]> shards_;
};

// What the engine observes of the path to a tunnel's remote, or to a peer, as a whole.
struct PathObservation {
  // The largest inner packet (or frame) the underlay path carries whole; 0 = not known.
  std::atomic<uint32_t> path_mtu{0};
  // Keepalive (only when configured): whether replies come back, and when the last came.
  // Any worker may see a reply; the one that sends keepalives reads the time.
  std::atomic<bool> peer_alive{true};
  std::atomic<int64_t> last_keepalive_reply_unix_nanos{0};  // 0: none yet
  // Round-trip time of the last keepalive answered (the reply's arrival less the send time of
  // the keepalive it answers), in nanoseconds; 0: none yet.
  std::atomic<int64_t> keepalive_rtt_nanos{0};
  // When the worker that sends keepalives last sent one (CLOCK_MONOTONIC nanoseconds; 0: never),
  // for whichever worker takes the reply to measure the round trip.
  std::atomic<int64_t> last_keepalive_sent_nanos{0};
  // When a worker last delivered a packet of this tunnel into its device (or took a reply to
  // its keepalive), in Unix nanoseconds of the worker's coarse clock (at most one tick old);
  // 0: never.
  std::atomic<int64_t> last_receive_unix_nanos{0};
};

// Everything the engine reports about one tunnel: a TunnelCounters per worker, and what the
// engine observes about the tunnel as a whole. Owned jointly by the control plane and the
// engine so it outlives removal races.
class TunnelStats : public PathObservation, public WorkerShards<TunnelCounters> {
 public:
  using Counters = TunnelCounters;
  explicit TunnelStats(size_t workers = 1) : WorkerShards(workers) {}
  TunnelStats(const TunnelStats&) = delete;
  TunnelStats& operator=(const TunnelStats&) = delete;

  using WorkerShards::Sum;
  // One drop reason, or every reason, of tx_drops or rx_drops summed over the workers.
  uint64_t Sum(DropCounters TunnelCounters::*drops, DropReason reason) const;
  uint64_t SumAll(DropCounters TunnelCounters::*drops) const;
};

// The same of one peer of a multipoint tunnel, with its PeerCounters.
class PeerStats : public PathObservation, public WorkerShards<PeerCounters> {
 public:
  using Counters = PeerCounters;
  explicit PeerStats(size_t workers = 1) : WorkerShards(workers) {}
  PeerStats(const PeerStats&) = delete;
  PeerStats& operator=(const PeerStats&) = delete;

  // Every drop of one direction: a peer keeps the total only.
  uint64_t SumAll(Counter PeerCounters::*drops) const { return Sum(drops); }
};

// What DataplaneCounters held when read: plain numbers, the reader's own copy.
struct DataplaneCountersSnapshot {
  uint64_t rx_packets = 0;
  std::array<uint64_t, kDropReasonCount> drops{};
  uint64_t device_read_waits = 0;
  uint64_t device_buffers_in_use = 0;
  uint64_t device_buffers_ready = 0;
  uint64_t device_reads_waiting = 0;

  DataplaneCountersSnapshot& operator+=(const DataplaneCountersSnapshot& other);
};

// Counters of packets that matched no tunnel, or of the underlay sockets themselves; written by
// one engine thread.
struct DataplaneCounters {
  Counter rx_packets;  // everything received on the underlay sockets
  DropCounters drops;
  // The device read buffers the worker's tunnels share (io_uring): reads that found them all
  // taken and waited for one to come back (the packet stays queued in the device meanwhile);
  // and, as of the last tick, the buffers reads hold, those ready in the kernel's ring (with
  // pages once a packet was read into them), and the reads still waiting for one.
  Counter device_read_waits;
  Counter device_buffers_in_use;  // a gauge: Set each tick
  Counter device_buffers_ready;   // a gauge: Set each tick
  Counter device_reads_waiting;   // a gauge: Set each tick

  // Each counter read once (not all at one instant: the writer keeps counting).
  DataplaneCountersSnapshot Snapshot() const;
};

// An inner prefix a peer of a multipoint tunnel is reached through and may send from.
struct InnerPrefix {
  std::array<uint8_t, 16> bytes{};  // network order; IPv4 in the first four
  int length = 0;
  bool v6 = false;
};

// A peer's allowed prefixes, as the command that carries it and every worker's table share
// them: one copy however many workers (100,000 prefixes are 2.4 MB a copy).
using AllowedPrefixes = std::shared_ptr<const std::vector<InnerPrefix>>;

// A peer of a multipoint tunnel (EngineTunnel::multipoint).
struct EnginePeer {
  uint32_t id = 0;        // the control plane's handle for it, unique within the tunnel
  OuterAddress underlay;  // the outer destination of what is sent to it, and the outer source
                          // of what it sends
  bool has_key = false;   // a key of its own on send; else the tunnel's output key
  uint32_t key = 0;
  AllowedPrefixes allowed;  // never null
  // Keepalive to this peer alone (zero: off), and the replies missed before it counts as gone
  // (stats->peer_alive).
  absl::Duration keepalive_interval = absl::ZeroDuration();
  uint32_t keepalive_retries = 3;
  // Its own counters and observations, as a tunnel's (path MTU, keepalive, last receive).
  std::shared_ptr<PeerStats> stats;
};

// What the engine needs to move one tunnel's packets.
struct EngineTunnel {
  std::string name;
  int device_fd = -1;  // the TUN/TAP device; not owned, must stay open until RemoveTunnel returns
  // The device was opened with IFF_VNET_HDR (TUN offloads): every read starts with a
  // virtio-net header, which may announce a super-packet to split or a checksum to finish,
  // and every write must start with one.
  bool vnet_header = false;
  // With vnet_header: the kernel takes UDP GSO packets written to the device, so received UDP
  // datagrams of one flow are coalesced like TCP segments (Coalescer's `udp`).
  bool udp_coalescing = false;
  uint32_t mtu = 0;  // device MTU (tap modes: of the frame's payload, as `ip link` shows it)
  // How sent packets are wrapped: mode, underlay addresses, output GRE options, outer header.
  // Which received packets are the tunnel's follows from the mode, the addresses (local: the
  // packet's destination, zero for any; remote: its source, zero for any) and the input key.
  EncapParams encap;
  // What every received packet must carry (ikey, icsum, iseq).
  bool has_input_key = false;
  uint32_t input_key = 0;
  bool input_checksum = false;
  bool input_sequence = false;
  // Keepalive period (zero: off) and the replies missed before the peer counts as gone.
  absl::Duration keepalive_interval = absl::ZeroDuration();
  uint32_t keepalive_retries = 3;
  // Needs at least as many workers as the engine has (PacketEngine::workers()).
  std::shared_ptr<TunnelStats> stats;
  // Whether this worker reads the device. A worker that does not still writes what it
  // receives for the tunnel to device_fd (several workers may share one fd for writing).
  bool read_device = true;
  // No fixed remote (encap.remote zero): each packet goes to the peer whose allowed prefixes
  // hold its inner destination, and what is received must come from a peer (its underlay
  // address as the outer source, an inner source it may send from). `peers`: those it starts
  // with; PacketEngine::ChangePeers changes them afterwards.
  bool multipoint = false;
  std::vector<EnginePeer> peers;
};

// INVALID_ARGUMENT unless the tunnel has a device, an MTU of 1..65535 and counters, and asks
// for TUN offloads and keepalives only in modes that have them. A multipoint tunnel must be of
// an IP mode (gre, ipip, sit, ip6gre, ip6tnl, with or without fou: no tap mode), without a
// remote address, sequence numbers or a keepalive of its own, and over IPv6 with a local
// address; a point-to-point one has no peers.
absl::Status CheckEngineTunnel(const EngineTunnel& tunnel);

// A descriptor the engine reads packets from, listed for a handover to a new process (a hot
// upgrade): the new engine reads the same queues, so no packet waiting in them is lost.
struct EngineDescriptor {
  enum class Kind {
    kReceiveSocket,  // an underlay receive socket of `worker` (EngineOptions::
                     // adopted_receive_sockets)
    kDeviceQueue,    // a further queue of `tunnel`'s multi-queue device, read by `worker`
                     // (PacketEngine::AdoptDeviceQueues)
  };
  Kind kind = Kind::kReceiveSocket;
  int fd = -1;  // the engine's own: valid while the engine runs; never closed by the caller
  unsigned worker = 0;
  bool ipv6 = false;     // kReceiveSocket
  uint8_t protocol = 0;  // kReceiveSocket
  std::string tunnel;    // kDeviceQueue
};

// Additions handed to an engine's thread and not yet answered (PacketEngine::BeginAddTunnels):
// a pool hands its part to every worker before it waits for any, so the workers take a batch
// side by side instead of one after another.
class PendingAdditions {
 public:
  using Settle = std::function<std::vector<absl::Status>()>;

  // Answered already.
  explicit PendingAdditions(std::vector<absl::Status> answers) : answers_(std::move(answers)) {}
  // answers[i] stands unless one of `waiting` is for i: then that future's value replaces it.
  PendingAdditions(std::vector<absl::Status> answers,
                   std::vector<std::pair<size_t, std::future<absl::Status>>> waiting)
      : answers_(std::move(answers)), waiting_(std::move(waiting)) {}
  // Answered by `settle`, which waits for what it began and settles it (a pool's take-back of
  // a tunnel some worker refused). Dropped unwaited, it settles all the same.
  explicit PendingAdditions(Settle settle) : settle_(std::make_unique<Settle>(std::move(settle))) {}
  PendingAdditions(PendingAdditions&&) = default;
  // Not assignable: assigning over unsettled additions would drop them unsettled.
  PendingAdditions& operator=(PendingAdditions&&) = delete;
  ~PendingAdditions() {
    if (settle_) std::move(*this).Wait();
  }

  // Every answer, in the order of the additions; waits for those still to come. Once.
  std::vector<absl::Status> Wait() && {
    if (settle_) {
      answers_ = (*settle_)();
      settle_.reset();
    }
    for (auto& [i, answer] : waiting_) answers_[i] = answer.get();
    waiting_.clear();
    return std::move(answers_);
  }

 private:
  std::vector<absl::Status> answers_;
  std::vector<std::pair<size_t, std::future<absl::Status>>> waiting_;
  std::unique_ptr<Settle> settle_;  // null once settled (or moved from)
};

class PacketEngine {
 public:
  virtual ~PacketEngine() = default;
  // Starts moving the tunnel's packets. ALREADY_EXISTS when the name, or the receive match
  // (mode, local, remote, input key), is taken.
  virtual absl::Status AddTunnel(const EngineTunnel& tunnel) = 0;
  // AddTunnel of each, their answers in order. An engine whose additions cross to another
  // thread makes it one crossing for all of them: a restart adds thousands at once.
  virtual std::vector<absl::Status> AddTunnels(absl::Span<const EngineTunnel> tunnels) {
    return BeginAddTunnels(tunnels).Wait();
  }
  // AddTunnels without waiting, where the engine's thread answers: the caller may hand work to
  // other engines meanwhile. An engine on the caller's thread answers at once.
  virtual PendingAdditions BeginAddTunnels(absl::Span<const EngineTunnel> tunnels) {
    std::vector<absl::Status> answers;
    answers.reserve(tunnels.size());
    for (const EngineTunnel& tunnel : tunnels) answers.push_back(AddTunnel(tunnel));
    return PendingAdditions(std::move(answers));
  }
  // Stops moving them; when it returns no operation uses the device fd any more.
  // NOT_FOUND when there is no such tunnel.
  virtual absl::Status RemoveTunnel(const std::string& name) = 0;
  // Changes the peers of the multipoint tunnel `tunnel`: the peers of `removed` (by id) go,
  // then each of `upserted` is added, or replaces the peer of its id. NOT_FOUND when there is
  // no such tunnel, FAILED_PRECONDITION when it is not multipoint; a peer refused
  // (PeerTable::Add's ALREADY_EXISTS or INVALID_ARGUMENT) leaves that peer as it was, the
  // rest is done, and the first refusal is the answer. Returns once every worker has it: a
  // packet handled after that sees the new peers.
  virtual absl::Status ChangePeers(const std::string& tunnel, std::vector<EnginePeer> upserted,
                                   std::vector<uint32_t> removed) {
    return absl::UnimplementedError("this engine has no multipoint tunnels");
  }
  // ChangePeers without waiting, where the engine's thread answers: a pool hands the change to
  // every worker before it waits for any, so that they build their tables side by side (an
  // apply of 10,000 peers). An engine on the caller's thread answers at once.
  virtual std::future<absl::Status> BeginChangePeers(const std::string& tunnel,
                                                     std::vector<EnginePeer> upserted,
                                                     std::vector<uint32_t> removed) {
    std::promise<absl::Status> answer;
    answer.set_value(ChangePeers(tunnel, std::move(upserted), std::move(removed)));
    return answer.get_future();
  }
  // What the engine has counted so far, read now: an engine of several workers answers with
  // their sum. A value, not a reference, so that no reader shares a sum another is rewriting.
  // Callable from any thread.
  virtual DataplaneCountersSnapshot counters() const = 0;
  // "io_uring" or another backend's name, for logs and metrics.
  virtual const char* backend_name() const = 0;
  // The threads moving packets, each with its own ring (or epoll set) and sockets; what the
  // tunnels' TunnelStats must have room for.
  virtual size_t workers() const { return 1; }
  // OK while every worker is running and has come round its loop within `stall` (workers wake
  // at least every tick even without traffic). UNAVAILABLE naming the worker otherwise: its
  // thread has ended (e.g. its ring failed) or it is stuck. Callable from any thread.
  virtual absl::Status Health(absl::Duration stall) const { return absl::OkStatus(); }

  // ---- Handover to another process (a hot upgrade) ----------------------------------------
  // The descriptors a new engine must read instead of opening its own. Callable from any
  // thread while the engine runs.
  virtual std::vector<EngineDescriptor> Descriptors() const { return {}; }
  // Stops taking packets from devices and underlay sockets, for good: reads in flight are
  // cancelled, and a read that had taken a packet before its cancellation still delivers it.
  // Sends, device writes and housekeeping go on. Returns once no read is in flight any more
  // (what is queued stays queued, for another reader of the same descriptors);
  // DEADLINE_EXCEEDED when that took longer than `timeout`.
  virtual absl::Status PauseReading(absl::Duration timeout) {
    return absl::UnimplementedError("this engine cannot pause its reads");
  }
  // Further queues (fds for workers 1..n-1, owned from here on) of `tunnel`'s multi-queue
  // device that another process handed over: the next AddTunnel of that name reads them
  // instead of opening new queues (a queue of its own would leave what the kernel steers into
  // the old ones unread). Unused ones are closed when the engine goes.
  // Starts reading the underlay sockets of an engine started with
  // EngineOptions::defer_receiving; nothing otherwise. Returns at once.
  virtual void StartReceiving() {}
  virtual void AdoptDeviceQueues(const std::string& tunnel, std::vector<int> fds) {
    for (int fd : fds) close(fd);  // one worker reads the device's first queue only
  }
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_ENGINE_H_
