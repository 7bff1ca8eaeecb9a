// GRE-in-UDP (and IPIP-in-UDP) in the packet core: the tunnel's UDP senders are opened and
// closed through PacketIo, a packet goes out as the UDP payload on the sender its flow picks
// (one UDP GSO send for a run of segments, one by one where the path has no GSO), and what a
// fou socket received is written to the right device at once.
#include <sys/socket.h>

#include <cerrno>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

using Verdict = PacketCore::DeviceVerdict;
constexpr uint16_t kFouPort = 4754;

EngineTunnel FouTunnel(TunnelMode mode = TunnelMode::kGre, uint16_t sport = 0) {
  EngineTunnel t = MakeTunnel(mode);
  t.encap.udp_dport = kFouPort;
  t.encap.udp_sport = sport;
  return t;
}

Bytes PayloadOf(const FouSend& send, size_t i) { return send.payloads.at(i); }

TEST(Fou, SendersOpenedPerTunnelAndClosedWithIt) {
  CoreHarness h;
  // A fixed source port: one sender bound to it.
  TunnelDatapath& fixed = h.Add(FouTunnel(TunnelMode::kGre, 5555));
  ASSERT_EQ(h.io.fou_opened.size(), 1u);
  EXPECT_EQ(h.io.fou_opened[0].port, 5555);
  // Per flow: several senders on ports the kernel picks.
  EngineTunnel other = FouTunnel(TunnelMode::kIpip);
  other.name = "t1";
  TunnelDatapath& per_flow = h.Add(other);
  ASSERT_EQ(h.io.fou_opened.size(), 5u);
  // A point-to-point tunnel's senders are connected to its remote.
  EXPECT_EQ(h.io.fou_connected, std::vector<bool>(5, true));
  EXPECT_TRUE(h.io.fou_closed.empty());
  h.core.EraseTunnel(&per_flow);
  EXPECT_EQ(h.io.fou_closed, (std::vector<int>{1001, 1002, 1003, 1004}));
  h.core.EraseTunnel(&fixed);
  EXPECT_EQ(h.io.fou_closed.size(), 5u);
  EXPECT_EQ(h.io.fou_closed.back(), 1000);
  EXPECT_EQ(h.core.tunnel_count(), 0u);
}

TEST(Fou, SenderThatCannotOpenFailsTheAddWithItsCode) {
  CoreHarness h;
  h.io.fou_open_status = absl::ResourceExhaustedError("no more sockets");
  absl::StatusOr<TunnelDatapath*> t = h.core.AddTunnel(FouTunnel());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(t.status().message().find("t0"), absl::string_view::npos) << t.status();
  EXPECT_EQ(h.core.tunnel_count(), 0u);
}

TEST(Fou, OverAnIpv6UnderlayIsRefused) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kIp6gre);
  config.encap.udp_dport = kFouPort;
  EXPECT_EQ(h.core.AddTunnel(config).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(h.io.fou_opened.empty());
}

TEST(Fou, PacketGoesAsTheUdpPayloadOnTheSenderItsFlowPicks) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel());
  const Bytes inner = InnerIcmp();
  CoreHarness::DeviceRead r = h.Read(t, inner);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  const Bytes outer = r.outer();
  ASSERT_GE(outer.size(), 22u);
  // The source port comes from a hash of the inner flow, in the dynamic range.
  const uint16_t sport = static_cast<uint16_t>(outer[20] << 8 | outer[21]);
  EXPECT_GE(sport, 49152);
  EXPECT_EQ(ToHex(outer), ToHex(Build()
                                    .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 17})
                                    .Udp({.sport = sport, .dport = kFouPort})
                                    .Gre({})
                                    .Raw(inner)
                                    .ToBytes()));
  // The same flow, the same port.
  EXPECT_EQ(ToHex(h.Read(t, inner).outer()), ToHex(outer));

  const TunnelDatapath::FouPayload p = t.FouPayloadOf(r.out);
  EXPECT_EQ(p.sender, h.io.fou_opened.at(sport % 4).handle);
  const auto* data = static_cast<const uint8_t*>(p.payload.iov_base);
  EXPECT_EQ(ToHex(Bytes(data, data + p.payload.iov_len)),
            ToHex(Build().Gre({}).Raw(inner).ToBytes()));
  EXPECT_EQ(p.tos, 0);
  EXPECT_EQ(p.ttl, 64);

  // Sent at once through PacketIo: one datagram, no GSO, then counted.
  SegmentBatch batch;
  batch.frames[0] = r.frame;
  batch.lens[0] = r.read.len;
  batch.packets[0] = r.out;
  h.core.SendPreparedNow(t, batch, 1);
  ASSERT_EQ(h.io.fou_sends.size(), 1u);
  const FouSend& send = h.io.fou_sends[0];
  EXPECT_EQ(send.sender, p.sender);
  EXPECT_FALSE(send.destination.has_value()) << "a connected sender's send names nothing";
  EXPECT_EQ(send.gso_size, 0);
  EXPECT_EQ(send.tos, 0);
  EXPECT_EQ(send.ttl, 64);
  ASSERT_EQ(send.payloads.size(), 1u);
  EXPECT_EQ(ToHex(PayloadOf(send, 0)), ToHex(Build().Gre({}).Raw(inner).ToBytes()));
  EXPECT_EQ(t.counters().tx_packets.Get(), 1u);
  EXPECT_EQ(t.counters().tx_bytes.Get(), inner.size());
  EXPECT_TRUE(h.io.underlay_sends.empty());
}

TEST(Fou, RefusedSendIsASendError) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel(TunnelMode::kIpip, 6000));
  CoreHarness::DeviceRead r = h.Read(t, InnerIcmp());
  ASSERT_EQ(r.verdict, Verdict::kSend);
  SegmentBatch batch;
  batch.frames[0] = r.frame;
  batch.lens[0] = r.read.len;
  batch.packets[0] = r.out;
  h.io.fou_results = {-ENETUNREACH};
  h.core.SendPreparedNow(t, batch, 1);
  EXPECT_EQ(h.io.fou_sends.size(), 1u);
  EXPECT_EQ(TxDrops(t, DropReason::kSendError), 1u);
  EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
}

TEST(Fou, MessageTooLongWithinThePathIsAQueuedErrorAndTheSendIsRepeatedOnce) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel(TunnelMode::kGre, 5555));
  const Bytes inner = InnerIcmp();
  CoreHarness::DeviceRead r = h.Read(t, inner);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  const uint32_t path = t.stats().path_mtu.load();
  // The backend's send of it failed with EMSGSIZE although the route carries it: an ICMP
  // error the kernel queued on the socket. Sent again, once, at once.
  t.TransmitDone(r.frame, r.read.len, -EMSGSIZE);
  ASSERT_EQ(h.io.fou_sends.size(), 1u);
  EXPECT_EQ(ToHex(PayloadOf(h.io.fou_sends[0], 0)), ToHex(Build().Gre({}).Raw(inner).ToBytes()));
  EXPECT_EQ(t.counters().tx_packets.Get(), 1u);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
  EXPECT_EQ(t.stats().path_mtu.load(), path);
  EXPECT_TRUE(h.io.device_writes.empty());
}

// ---- Receive ----

TEST(Fou, ReceivedPayloadIsWrittenToTheDeviceAtOnce) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel());
  const Bytes inner = InnerIcmp();
  h.ReceiveFou(Build().Gre({}).Raw(inner).ToBytes());
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  EXPECT_EQ(h.io.device_writes[0].fd, 7);
  EXPECT_FALSE(h.io.device_writes[0].vnet_header);
  EXPECT_EQ(ToHex(h.io.device_writes[0].packet), ToHex(inner));
  EXPECT_EQ(h.core.counters().rx_packets.Get(), 1u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 1u);
  EXPECT_EQ(t.counters().rx_bytes.Get(), inner.size());
  EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
}

TEST(Fou, IpipPayloadByThePortsProtocol) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel(TunnelMode::kIpip));
  const Bytes inner = InnerIcmp();
  h.ReceiveFou(inner, /*protocol=*/4);
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  EXPECT_EQ(ToHex(h.io.device_writes[0].packet), ToHex(inner));
  EXPECT_EQ(t.counters().rx_packets.Get(), 1u);
}

TEST(Fou, GroReceiveIsCutIntoItsDatagrams) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel());
  const Bytes a = Build().Gre({}).Raw(InnerIcmp(100)).ToBytes();
  const Bytes b = Build().Gre({}).Raw(InnerIcmp(100, true, 0x01)).ToBytes();
  const Bytes c = Build().Gre({}).Raw(InnerIcmp(40)).ToBytes();  // the last may be shorter
  Bytes all = a;
  all.insert(all.end(), b.begin(), b.end());
  all.insert(all.end(), c.begin(), c.end());
  h.ReceiveFou(all, 47, {.gro_size = static_cast<int>(a.size())});
  ASSERT_EQ(h.io.device_writes.size(), 3u);
  EXPECT_EQ(ToHex(h.io.device_writes[0].packet), ToHex(InnerIcmp(100)));
  EXPECT_EQ(ToHex(h.io.device_writes[1].packet), ToHex(InnerIcmp(100, true, 0x01)));
  EXPECT_EQ(ToHex(h.io.device_writes[2].packet), ToHex(InnerIcmp(40)));
  EXPECT_EQ(h.core.counters().rx_packets.Get(), 3u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 3u);
}

struct FouDropCase {
  std::string name;
  Bytes payload;
  FouAncillary ancillary;
  DropReason reason;
};

TEST(Fou, ReceiveDropsAreCounted) {
  const Bytes good = Build().Gre({}).Raw(InnerIcmp()).ToBytes();
  const FouDropCase cases[] = {
      {"no_destination", good, {.destination = std::nullopt}, DropReason::kBadOuterHeader},
      {"cut_short", good, {.flags = MSG_TRUNC}, DropReason::kTooBig},
      {"from_another_address", good, {.source = kOther4}, DropReason::kNoTunnel},
      {"gre_version_1",
       Build().Gre({.extra_flags = 1}).Raw(InnerIcmp()).ToBytes(),
       {},
       DropReason::kGreVersion},
      {"bad_inner", Build().Gre({}).Raw(InnerIcmp6()).ToBytes(), {}, DropReason::kBadInnerPacket},
  };
  for (const FouDropCase& c : cases) {
    SCOPED_TRACE(c.name);
    CoreHarness h;
    TunnelDatapath& t = h.Add(FouTunnel());
    h.ReceiveFou(c.payload, 47, c.ancillary);
    EXPECT_TRUE(h.io.device_writes.empty());
    EXPECT_EQ(h.core.counters().rx_packets.Get(), 1u);
    EXPECT_EQ(h.core.counters().drops[static_cast<int>(c.reason)].Get(), 1u);
    EXPECT_EQ(AllDrops(h.core.counters().drops), 1u);
    EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
  }
}

TEST(Fou, DeviceThatRefusesTheWriteIsADeviceError) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(FouTunnel());
  h.io.device_result = -EIO;
  h.ReceiveFou(Build().Gre({}).Raw(InnerIcmp()).ToBytes());
  EXPECT_EQ(h.io.device_writes.size(), 1u);
  EXPECT_EQ(RxDrops(t, DropReason::kDeviceError), 1u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
