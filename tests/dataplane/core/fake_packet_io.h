// The world outside the packet core, recorded: a PacketIo whose every send, device write, fou
// socket and route question is written down (and answered as the test configures), a
// CoalescedWriter that keeps the flows it is given, and a harness that plays an I/O backend's
// part (a device read into a buffer with headroom, a raw or fou socket's receive with its
// msghdr) so a test feeds packets in and reads the exact actions out. No socket, no device,
// no privilege: device fds are plain numbers the core only hands back to WriteDevice.
#ifndef TUNNELAGENT_TESTS_DATAPLANE_CORE_FAKE_PACKET_IO_H_
#define TUNNELAGENT_TESTS_DATAPLANE_CORE_FAKE_PACKET_IO_H_

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dataplane/core/packet_core.h"
#include "dataplane/core/packet_io.h"
#include "dataplane/core/receive.h"
#include "dataplane/core/tunnel_datapath.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet_engine.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/packet_builder.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

namespace tunnelagent::dataplane::test {

struct UnderlaySend {
  bool ipv6 = false;
  OuterAddress destination;
  Bytes packet;
};

struct FouSend {
  int sender = -1;
  // Where the send was addressed (an unconnected sender's); none for a connected one.
  std::optional<sockaddr_in> destination;
  std::vector<Bytes> payloads;
  uint8_t tos = 0;
  uint8_t ttl = 0;
  uint16_t gso_size = 0;
};

struct DeviceWrite {
  int fd = -1;
  bool vnet_header = false;
  Bytes packet;
};

class FakePacketIo final : public PacketIo {
 public:
  // ---- What the world answers ----
  bool ipv4_sendable = true;
  bool ipv6_sendable = true;
  bool has_route = true;
  uint32_t route_mtu = 1500;
  OuterAddress route_source4 = kLocal4;
  OuterAddress route_source6 = Outer6(kLocal6);
  int underlay_errno = 0;  // what SendUnderlay returns (0: sent)
  // What SendFou returns, one per call; when none is queued, the bytes of its payloads.
  std::deque<int> fou_results;
  int device_result = 0;  // a -errno WriteDevice returns; 0: the bytes written
  absl::Status fou_open_status = absl::OkStatus();

  // ---- What the core asked ----
  int route_probes = 0;
  std::vector<UnderlaySend> underlay_sends;
  std::vector<FouSend> fou_sends;
  std::vector<DeviceWrite> device_writes;
  std::vector<FouSender> fou_opened;
  std::vector<bool> fou_connected;  // of each sender opened
  std::vector<int> fou_closed;

  bool CanSend(bool ipv6) const override { return ipv6 ? ipv6_sendable : ipv4_sendable; }

  bool ProbeRoute(bool ipv6, const OuterAddress& /*remote*/, uint32_t* mtu,
                  OuterAddress* source) override {
    ++route_probes;
    if (!has_route) return false;
    *mtu = route_mtu;
    *source = ipv6 ? route_source6 : route_source4;
    return true;
  }

  int SendUnderlay(bool ipv6, const OuterAddress& destination, const uint8_t* packet,
                   size_t len) override {
    underlay_sends.push_back({ipv6, destination, Bytes(packet, packet + len)});
    return underlay_errno;
  }

  absl::StatusOr<FouSender> OpenFouSender(const EncapParams& encap, bool connected) override {
    if (!fou_open_status.ok()) return fou_open_status;
    fou_connected.push_back(connected);
    // Handles far from any real fd; the port the tunnel asked for, or one "the kernel picks".
    FouSender sender{
        1000 + static_cast<int>(fou_opened.size()),
        encap.udp_sport != 0 ? encap.udp_sport : static_cast<uint16_t>(50000 + fou_opened.size())};
    fou_opened.push_back(sender);
    return sender;
  }
  void CloseFouSender(int handle) override { fou_closed.push_back(handle); }

  int SendFou(int sender, const sockaddr* destination, socklen_t destination_len,
              const iovec* payloads, size_t count, uint8_t tos, uint8_t ttl,
              uint16_t gso_size) override {
    FouSend send{sender, std::nullopt, {}, tos, ttl, gso_size};
    if (destination != nullptr) {
      EXPECT_EQ(destination_len, sizeof(sockaddr_in));
      send.destination.emplace();
      std::memcpy(&*send.destination, destination, sizeof(sockaddr_in));
    }
    int bytes = 0;
    for (size_t i = 0; i < count; ++i) {
      const auto* p = static_cast<const uint8_t*>(payloads[i].iov_base);
      send.payloads.emplace_back(p, p + payloads[i].iov_len);
      bytes += static_cast<int>(payloads[i].iov_len);
    }
    fou_sends.push_back(std::move(send));
    if (fou_results.empty()) return bytes;
    const int result = fou_results.front();
    fou_results.pop_front();
    return result;
  }

  int WriteDevice(int device_fd, bool vnet_header, const uint8_t* packet, size_t len) override {
    device_writes.push_back({device_fd, vnet_header, Bytes(packet, packet + len)});
    if (device_result < 0) return device_result;
    return static_cast<int>(len + (vnet_header ? kVirtioNetHeaderLen : 0));
  }
};

// The coalesced flows handed over, copied (the buffer goes back at CoalescedDone).
struct CoalescedFlow {
  TunnelDatapath* tunnel = nullptr;
  Bytes data;  // the virtio-net header, then the packet
  Coalescer::Flushed flushed;
};

class RecordingWriter final : public CoalescedWriter {
 public:
  std::vector<CoalescedFlow> flows;
  void WriteCoalesced(TunnelDatapath& tunnel, const Coalescer::Flushed& flow) override {
    flows.push_back({&tunnel, Bytes(flow.data, flow.data + flow.len), flow});
  }
};

// A tunnel of `mode` between the test underlay addresses of its family, device MTU 1400, its
// own counters for one worker; `fd` is only handed back to WriteDevice.
inline EngineTunnel MakeTunnel(TunnelMode mode, const std::string& name = "t0", int fd = 7) {
  EngineTunnel t;
  t.name = name;
  t.device_fd = fd;
  t.mtu = 1400;
  t.encap.mode = mode;
  if (IsIpv6UnderlayMode(mode)) {
    t.encap.local = Outer6(kLocal6);
    t.encap.remote = Outer6(kRemote6);
  } else {
    t.encap.local = kLocal4;
    t.encap.remote = kRemote4;
  }
  t.stats = std::make_shared<TunnelStats>(1);
  return t;
}

inline uint64_t TxDrops(TunnelDatapath& t, DropReason r) {
  return t.counters().tx_drops[static_cast<int>(r)].Get();
}
inline uint64_t RxDrops(TunnelDatapath& t, DropReason r) {
  return t.counters().rx_drops[static_cast<int>(r)].Get();
}
inline uint64_t AllDrops(const DropCounters& drops) {
  uint64_t n = 0;
  for (const Counter& c : drops) n += c.Get();
  return n;
}

// What a raw IPv6 socket's receive carries besides the payload: the source as msg_name, the
// destination (IPV6_PKTINFO) and traffic class (IPV6_TCLASS) as ancillary data.
struct Ipv6Ancillary {
  Ipv6Address source = kRemote6;
  std::optional<Ipv6Address> destination = kLocal6;
  uint8_t traffic_class = 0;
};

// A fou socket's receive: the source as msg_name, the destination (IP_PKTINFO), TOS and the
// GRO segment size (UDP_GRO, 0: none) as ancillary data.
struct FouAncillary {
  uint32_t source = kRemote4;
  std::optional<uint32_t> destination = kLocal4;
  uint8_t tos = 0;
  int gro_size = 0;
  int flags = 0;
};

// Plays the I/O backend's part around one PacketCore.
class CoreHarness {
 public:
  explicit CoreHarness(const CoreOptions& options = {}) : core(&io, &clock, &writer, options) {}

  FakePacketIo io;
  WorkerClock clock;
  RecordingWriter writer;
  PacketCore core;

  TunnelDatapath& Add(const EngineTunnel& config) {
    absl::StatusOr<TunnelDatapath*> t = core.AddTunnel(config);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) std::abort();  // the test cannot go on without it
    return **t;
  }

  // An ICMP fragmentation-needed from a router of the underlay (kRouter4 to kLocal4) naming
  // `mtu` and quoting `quote` (the start of an outer packet the tunnel sent), handed to the
  // core as the backend's error queue would. False when it does not parse as one.
  bool TakeUnderlayTooBig(const Bytes& quote, uint16_t mtu) {
    const Bytes error = Build()
                            .Ipv4({.src = kRouter4, .dst = kLocal4, .protocol = 1, .df = false})
                            .Icmp({.type = 3, .code = 4, .rest = mtu})
                            .Raw(quote)
                            .ToBytes();
    TooBigReport report;
    if (!ParseIcmpFragmentationNeeded(error.data(), error.size(), &report)) return false;
    core.TakeTooBig(report);
    return true;
  }

  // ---- Transmit: one read of the tunnel's device ----
  struct DeviceRead {
    PacketCore::DeviceVerdict verdict = PacketCore::DeviceVerdict::kDone;
    EncapResult out;
    PacketCore::DeviceFrame read;  // the frame's length; a super-packet's header and count
    std::unique_ptr<uint8_t[]> buffer;
    uint8_t* frame = nullptr;
    Bytes outer() const { return Bytes(out.packet, out.packet + out.len); }
  };
  // `frame` read from the device as a backend reads it: into a buffer of buffer_bytes(), at
  // read_offset(), behind `vnet` on a device with offloads. `read_len` overrides the length
  // the read reports (a read that filled the buffer).
  DeviceRead Read(TunnelDatapath& t, const Bytes& frame, const VirtioNetHeader& vnet = {},
                  std::optional<size_t> read_len = std::nullopt) {
    DeviceRead r;
    r.buffer.reset(new uint8_t[t.buffer_bytes()]);
    std::memset(r.buffer.get(), 0xEE, t.buffer_bytes());
    r.frame = r.buffer.get() + kDeviceHeadroom;
    const size_t header = t.vnet_header_len();
    if (header != 0) WriteVirtioNetHeader(vnet, r.frame - header);
    const size_t room = t.buffer_bytes() - kDeviceHeadroom;
    std::memcpy(r.frame, frame.data(), std::min(frame.size(), room));
    r.verdict =
        core.TakeDeviceRead(t, r.frame, read_len.value_or(header + frame.size()), &r.out, &r.read);
    return r;
  }

  // ---- Receive: one packet of a raw underlay socket ----
  struct Receive {
    bool deliver = false;
    PacketCore::Delivery delivery;
    std::unique_ptr<uint8_t[]> buffer;
    Bytes delivered() const { return Bytes(delivery.data, delivery.data + delivery.len); }
  };
  // An IPv4 raw socket's receive of `packet` (its outer header included); `capacity` is what
  // the buffer holds (default: the packet), `flags` the receive's msg_flags.
  Receive ReceiveIpv4(const Bytes& packet, uint8_t protocol = 47,
                      std::optional<size_t> capacity = std::nullopt, int flags = 0) {
    Receive r;
    const size_t room = std::max(capacity.value_or(packet.size()), packet.size());
    r.buffer.reset(new uint8_t[kReceiveHeadroom + room]);
    uint8_t* data = r.buffer.get() + kReceiveHeadroom;
    std::memcpy(data, packet.data(), packet.size());
    msghdr msg{};
    msg.msg_flags = flags;
    r.deliver = core.TakeDatagram(ReceiveSocket{3, false, protocol}, data, packet.size(),
                                  capacity.value_or(packet.size()), msg, &r.delivery);
    return r;
  }
  // An IPv6 raw socket of `next_header`'s receive: what follows the IPv6 header and its
  // extension headers, with the addresses and traffic class beside it.
  Receive ReceiveIpv6(const Bytes& payload, uint8_t next_header,
                      const Ipv6Ancillary& ancillary = {}) {
    Receive r;
    r.buffer.reset(new uint8_t[kReceiveHeadroom + payload.size() + 1]);
    uint8_t* data = r.buffer.get() + kReceiveHeadroom;
    if (!payload.empty()) std::memcpy(data, payload.data(), payload.size());
    sockaddr_in6 from{};
    from.sin6_family = AF_INET6;
    std::memcpy(&from.sin6_addr, ancillary.source.data(), 16);
    ReceivedMessage received(&from, sizeof from);
    if (ancillary.destination) {
      in6_pktinfo info{};
      std::memcpy(&info.ipi6_addr, ancillary.destination->data(), 16);
      received.Add(IPPROTO_IPV6, IPV6_PKTINFO, info);
    }
    received.Add(IPPROTO_IPV6, IPV6_TCLASS, int{ancillary.traffic_class});
    r.deliver = core.TakeDatagram(ReceiveSocket{4, true, next_header}, data, payload.size(),
                                  payload.size() + 1, received.msg(), &r.delivery);
    return r;
  }

  // A fou socket for `protocol`'s receive of `payload` (one UDP payload, or several of one
  // flow back to back with UDP GRO).
  void ReceiveFou(const Bytes& payload, uint8_t protocol = 47, const FouAncillary& ancillary = {}) {
    Bytes buffer = payload;
    sockaddr_in from{};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(ancillary.source);
    ReceivedMessage received(&from, sizeof from, ancillary.flags);
    if (ancillary.destination) {
      in_pktinfo info{};
      info.ipi_addr.s_addr = htonl(*ancillary.destination);
      received.Add(IPPROTO_IP, IP_PKTINFO, info);
    }
    received.Add(IPPROTO_IP, IP_TOS, ancillary.tos);
    if (ancillary.gro_size != 0) received.Add(SOL_UDP, UDP_GRO, ancillary.gro_size);
    core.TakeFouDatagrams(protocol, buffer.data(), buffer.size(), received.msg());
  }

 private:
  // A msghdr as a receive fills it: the sender's address and the ancillary data asked for.
  class ReceivedMessage {
   public:
    ReceivedMessage(void* name, socklen_t name_len, int flags = 0) {
      msg_.msg_name = name;
      msg_.msg_namelen = name_len;
      msg_.msg_control = control_;
      msg_.msg_flags = flags;
    }
    template <typename T>
    void Add(int level, int type, const T& value) {
      auto* c = reinterpret_cast<cmsghdr*>(control_ + msg_.msg_controllen);
      c->cmsg_level = level;
      c->cmsg_type = type;
      c->cmsg_len = CMSG_LEN(sizeof value);
      std::memcpy(CMSG_DATA(c), &value, sizeof value);
      msg_.msg_controllen += CMSG_SPACE(sizeof value);
    }
    const msghdr& msg() const { return msg_; }

   private:
    alignas(cmsghdr) uint8_t control_[std::max(kReceiveControlBytes, kFouControlBytes)] = {};
    msghdr msg_{};
  };
};

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_CORE_FAKE_PACKET_IO_H_
