// TUN offloads in userspace: the virtio-net header a TUN device opened with IFF_VNET_HDR puts
// in front of every packet, checksums the kernel left for us to finish (TUN_F_CSUM), splitting
// the TCP and UDP super-packets it hands over with TUN_F_TSO4/TSO6/USO4/USO6 into packets the
// underlay carries (what the kernel's tcp_gso_segment and __udp_gso_segment do), and the other
// direction, coalescing received TCP segments of one flow back into one super-packet (what
// tcp_gro_receive does), so the host's TCP stack sees few, large packets.
// Pure functions and a fixed-size table on caller-owned memory: no allocation, no system calls.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_OFFLOAD_H_
#define TUNNELAGENT_DATAPLANE_PACKET_OFFLOAD_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "dataplane/packet/drop_reason.h"

namespace tunnelagent::dataplane {

// struct virtio_net_hdr (linux/virtio_net.h), the size TUNSETVNETHDRSZ defaults to. Its
// 16-bit fields are little-endian (what TUN uses on little-endian hosts, and what
// TUNSETVNETLE asks for elsewhere).
inline constexpr size_t kVirtioNetHeaderLen = 10;
inline constexpr uint8_t kVirtioNetFlagNeedsCsum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
inline constexpr uint8_t kVirtioNetFlagDataValid = 2;  // VIRTIO_NET_HDR_F_DATA_VALID
inline constexpr uint8_t kGsoNone = 0;
inline constexpr uint8_t kGsoTcpv4 = 1;
inline constexpr uint8_t kGsoUdp = 3;  // UFO: IP fragmentation of UDP, never asked for here
inline constexpr uint8_t kGsoTcpv6 = 4;
inline constexpr uint8_t kGsoUdpL4 = 5;   // USO
inline constexpr uint8_t kGsoEcn = 0x80;  // TCP with ECN: CWR only on the first segment

inline constexpr uint8_t kIpProtoTcp = 6;
inline constexpr uint8_t kIpProtoUdp = 17;

struct VirtioNetHeader {
  uint8_t flags = 0;
  uint8_t gso_type = kGsoNone;
  uint16_t hdr_len = 0;
  uint16_t gso_size = 0;
  uint16_t csum_start = 0;
  uint16_t csum_offset = 0;
};

VirtioNetHeader ReadVirtioNetHeader(const uint8_t* in);
void WriteVirtioNetHeader(const VirtioNetHeader& h, uint8_t* out);

// Finishes a checksum the sender left partial (NEEDS_CSUM): the field at csum_start +
// csum_offset holds the pseudo-header sum, and the sum over [csum_start, len) goes in it.
// False when the offsets do not lie within the packet.
bool CompleteChecksum(uint8_t* packet, size_t len, uint16_t csum_start, uint16_t csum_offset);

// One packet a super-packet was split into.
struct Segment {
  uint8_t* data = nullptr;
  size_t len = 0;
};

// Where SegmentSuperPacket puts its segments: each at a 64-byte aligned offset in `arena`,
// with `headroom` bytes before it for the outer headers.
struct SegmentArena {
  uint8_t* data = nullptr;
  size_t bytes = 0;
  size_t headroom = 0;
  Segment* segments = nullptr;
  size_t max_segments = 0;
};

// How many segments the IP packet `packet` (`len` bytes; IPv4 or IPv6 without extension
// headers, TCP or UDP) splits into with `h` (gso_type TCPV4, TCPV6 or UDP_L4 with its ECN bit,
// gso_size); 0 with *reason set when it cannot be split (malformed, another gso type).
size_t CountSegments(const VirtioNetHeader& h, const uint8_t* packet, size_t len,
                     DropReason* reason);

// Writes segments [first, first + n) of `packet` into `arena`, with n as large as the arena's
// bytes and max_segments allow (at most what is left), and returns n. Each segment is a whole
// IP packet with correct lengths, IPv4 ID (the first's plus the segment's index), header and
// TCP/UDP checksums; a TCP segment's sequence number advances by gso_size and FIN and PSH stay
// on the last segment only, CWR on the first only. The caller has checked CountSegments.
size_t SegmentSuperPacket(const VirtioNetHeader& h, const uint8_t* packet, size_t len, size_t first,
                          const SegmentArena& arena);

// Receive offload: TCP segments (and, where asked, UDP datagrams) of one flow, arriving in
// order within one batch, merged into one packet written with a virtio-net header of the first
// segment's payload size (GSO TCPV4/TCPV6 or UDP_L4, NEEDS_CSUM), as Linux's GRO merges them.
// A TCP segment merges when addresses, ports, IP fields (TOS/traffic class, TTL/hop limit, DF,
// no options), TCP header length, options, acknowledgment and window are the same as the
// flow's, its sequence number is the next expected, only ACK (and PSH) is set, and its checksum
// is right; a segment shorter than the first, or with PSH, ends its flow. A UDP datagram merges
// as udp_gro_receive_segment merges them: same addresses, ports and IP fields, a length that
// agrees with the IP header's, a checksum that is there and right, no larger than the first
// (a shorter one ends the flow), at most kMaxUdpSegments. The kernel splits such a packet back
// into the very datagrams for a socket that has not asked for UDP_GRO, and hands it whole,
// with its segment size, to one that has. Packets that cannot merge but belong to an open flow
// start a flow of their own, so nothing of one flow is ever reordered.
//
// Buffers hold a flow from its first segment until the engine is done writing it; they come
// from a fixed pool, and when none is free Add declines and the packet goes on its own.
class Coalescer {
 public:
  // Largest packet a flow grows to (the IPv4 total length field's limit).
  static constexpr size_t kMaxPacket = 65535;
  // Most datagrams in one UDP flow: the kernel's own GRO limit (UDP_GRO_CNT_MAX).
  static constexpr uint32_t kMaxUdpSegments = 64;
  // Each buffer: the virtio-net header, then the packet.
  static constexpr size_t kBufferBytes = kVirtioNetHeaderLen + kMaxPacket + 1;

  // `flows`: open at once; `buffers`: in the pool (at least `flows`).
  Coalescer(size_t flows, size_t buffers);
  Coalescer(const Coalescer&) = delete;
  Coalescer& operator=(const Coalescer&) = delete;

  enum class Verdict {
    kTaken,    // copied into a flow: the caller's buffer is free again
    kDeliver,  // deliver it as it is (not TCP, or nothing to merge into and no buffer free)
    // It belongs to an open flow but no buffer is free: flush the open flows, then deliver it,
    // so it does not overtake what came before it.
    kFlushThenDeliver,
  };
  // Offers the IP packet `ip` (`len` bytes) for `owner` (the tunnel's device; flows of
  // different owners never merge). `udp`: UDP datagrams may merge too, for a device whose
  // kernel takes UDP_L4 GSO packets written to it (Linux 6.2 on, TunDevice::udp_offload).
  Verdict Add(const void* owner, const uint8_t* ip, size_t len, bool udp = false);

  // A flow ready to be written: `data` (virtio-net header and packet, `len` bytes) goes to
  // `owner`'s device; `segments` and `inner_bytes` are what it is made of, for counters.
  struct Flushed {
    const void* owner = nullptr;
    uint8_t* data = nullptr;
    size_t len = 0;
    uint32_t segments = 0;
    size_t inner_bytes = 0;
    int buffer = -1;  // to give back with Release once written
  };
  // Finishes every open flow (lengths, checksums, the virtio-net header) in the order they
  // were opened and hands each to `emit`. Their buffers stay taken until Release.
  template <typename Emit>
  void Flush(Emit&& emit) {
    for (size_t i = 0; i < open_count_; ++i) emit(Finish(open_[i]));
    open_count_ = 0;
  }
  void Release(int buffer);
  // Forgets the open flows of `owner` without writing them (its device is going away) and
  // gives their buffers back.
  void Discard(const void* owner);

  size_t open_flows() const { return open_count_; }
  size_t free_buffers() const { return free_count_; }

 private:
  struct Flow {
    const void* owner = nullptr;
    int buffer = -1;
    uint8_t version = 0;
    uint8_t protocol = 0;  // TCP or UDP
    bool closed = false;   // takes no more segments
    bool mergeable = false;
    uint16_t ip_header_len = 0;
    uint16_t header_len = 0;  // IP + TCP
    uint16_t gso_size = 0;    // payload of the first segment
    uint32_t next_sequence = 0;
    uint32_t segments = 0;
    size_t len = 0;  // of the packet so far
    size_t inner_bytes = 0;
  };

  bool Matches(const Flow& f, const uint8_t* ip, uint8_t protocol, size_t ip_header_len) const;
  bool CanMerge(const Flow& f, const uint8_t* ip, size_t header_len, size_t payload) const;
  Flushed Finish(Flow& f);
  uint8_t* packet_of(const Flow& f) { return buffer_of(f.buffer) + kVirtioNetHeaderLen; }
  uint8_t* buffer_of(int buffer) { return memory_.get() + size_t(buffer) * kBufferBytes; }

  const size_t max_flows_;
  std::unique_ptr<Flow[]> open_;
  size_t open_count_ = 0;
  std::unique_ptr<int[]> free_;  // a stack of free buffer indexes
  size_t free_count_ = 0;
  size_t buffers_;
  std::unique_ptr<uint8_t[]> memory_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_OFFLOAD_H_
