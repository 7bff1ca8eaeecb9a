// TUN offloads in the packet core: a super-packet read from a device with a virtio-net header
// is split into segments that are each wrapped and sent (over fou as one UDP GSO send), a
// checksum the kernel left partial is finished, and TCP segments received for such a device
// are coalesced into one write.
#include <cerrno>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

using Verdict = PacketCore::DeviceVerdict;

constexpr uint8_t kTcpAck = 0x10;
constexpr uint8_t kTcpPsh = 0x08;
constexpr uint16_t kFirstId = 100;
constexpr uint32_t kFirstSequence = 1000;

EngineTunnel OffloadTunnel(TunnelMode mode = TunnelMode::kGre) {
  EngineTunnel t = MakeTunnel(mode);
  t.vnet_header = true;
  return t;
}

Bytes PayloadBytes(size_t len) { return Build().Payload(len).ToBytes(); }

// A TCP segment (or super-packet) 10.1.0.1:40000 -> 10.2.0.1:5001 carrying `payload`.
Bytes TcpPacket(const Bytes& payload, uint32_t sequence = kFirstSequence, uint16_t id = kFirstId,
                uint8_t flags = kTcpAck) {
  return Build()
      .Ipv4({.protocol = 6, .id = id})
      .Tcp({.seq = sequence, .flags = flags})
      .Raw(payload)
      .ToBytes();
}

// What a sender with checksum offload leaves in the TCP checksum field: the pseudo-header's
// sum, folded and not complemented (NEEDS_CSUM).
void SetPartialChecksum(Bytes& ip, size_t l4_len) {
  Bytes pseudo(ip.begin() + 12, ip.begin() + 20);
  pseudo.insert(pseudo.end(),
                {0, 6, static_cast<uint8_t>(l4_len >> 8), static_cast<uint8_t>(l4_len)});
  const uint16_t partial = static_cast<uint16_t>(~RefChecksum(pseudo.data(), pseudo.size()));
  ip[20 + 16] = static_cast<uint8_t>(partial >> 8);
  ip[20 + 17] = static_cast<uint8_t>(partial);
}

// `inner` in GRE over IPv4, from `src` to `dst`: as the tunnel sends it, or as it receives it.
Bytes OverGre(const Bytes& inner, uint32_t src = kLocal4, uint32_t dst = kRemote4) {
  return Build().Ipv4({.src = src, .dst = dst, .protocol = 47}).Gre({}).Raw(inner).ToBytes();
}
Bytes Gre4(const Bytes& inner) { return OverGre(inner); }
Bytes GreFrom(const Bytes& inner) { return OverGre(inner, kRemote4, kLocal4); }

VirtioNetHeader TsoHeader(uint16_t gso_size) {
  VirtioNetHeader v;
  v.flags = kVirtioNetFlagNeedsCsum;
  v.gso_type = kGsoTcpv4;
  v.hdr_len = 40;
  v.gso_size = gso_size;
  v.csum_start = 20;
  v.csum_offset = 16;
  return v;
}

TEST(Segmentation, SuperPacketIsSplitWrappedAndSent) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  const Bytes payload = PayloadBytes(2500);
  Bytes super = TcpPacket(payload, kFirstSequence, kFirstId, kTcpAck | kTcpPsh);
  SetPartialChecksum(super, 20 + payload.size());
  CoreHarness::DeviceRead r = h.Read(t, super, TsoHeader(1000));
  ASSERT_EQ(r.verdict, Verdict::kSuperPacket);
  EXPECT_EQ(r.read.len, super.size());
  EXPECT_EQ(r.read.segments, 3u);
  EXPECT_EQ(t.counters().tx_super_packets.Get(), 1u);

  SegmentBatch batch;
  size_t next = 0;
  size_t made = 0;
  const size_t prepared = h.core.PrepareSegments(t, r.read, r.frame, &next, batch, &made);
  ASSERT_EQ(made, 3u);
  ASSERT_EQ(prepared, 3u);
  EXPECT_EQ(next, 3u);
  // Each a whole TCP segment: its own length, ID, sequence number and checksums; PSH only on
  // the last; each wrapped in the tunnel's outer headers.
  const size_t sizes[] = {1000, 1000, 500};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const Bytes chunk(payload.begin() + i * 1000, payload.begin() + i * 1000 + sizes[i]);
    const Bytes segment = TcpPacket(chunk, kFirstSequence + i * 1000, kFirstId + i,
                                    i == 2 ? kTcpAck | kTcpPsh : kTcpAck);
    EXPECT_EQ(batch.lens[i], 40 + sizes[i]);
    EXPECT_EQ(ToHex(Bytes(batch.frames[i], batch.frames[i] + batch.lens[i])), ToHex(segment));
    EXPECT_EQ(ToHex(Bytes(batch.packets[i].packet, batch.packets[i].packet + batch.packets[i].len)),
              ToHex(Gre4(segment)));
  }
  EXPECT_EQ(h.core.PrepareSegments(t, r.read, r.frame, &next, batch, &made), 0u);
  EXPECT_EQ(made, 0u);

  // Sent now (the path a backend takes when its own buffers cannot hold them all).
  EXPECT_TRUE(h.io.underlay_sends.empty());
  h.core.SendPreparedNow(t, batch, prepared);
  ASSERT_EQ(h.io.underlay_sends.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(h.io.underlay_sends[i].destination, OuterAddress(kRemote4));
    EXPECT_EQ(h.io.underlay_sends[i].packet.size(), 24 + 40 + sizes[i]);
  }
  EXPECT_EQ(t.counters().tx_packets.Get(), 3u);
  EXPECT_EQ(t.counters().tx_bytes.Get(), 3 * 40 + payload.size());
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
}

TEST(Segmentation, Ipv6SuperPacketOverAnIpv6Underlay) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel(TunnelMode::kIp6tnl));
  const Bytes payload = PayloadBytes(1800);
  const auto tcp6 = [](const Bytes& chunk, uint32_t sequence) {
    return Build().Ipv6({.next_header = 6}).Tcp({.seq = sequence}).Raw(chunk).ToBytes();
  };
  VirtioNetHeader vnet = TsoHeader(1200);
  vnet.gso_type = kGsoTcpv6;
  vnet.hdr_len = 60;
  vnet.csum_start = 40;
  CoreHarness::DeviceRead r = h.Read(t, tcp6(payload, kFirstSequence), vnet);
  ASSERT_EQ(r.verdict, Verdict::kSuperPacket);
  EXPECT_EQ(r.read.segments, 2u);
  SegmentBatch batch;
  size_t next = 0;
  size_t made = 0;
  ASSERT_EQ(h.core.PrepareSegments(t, r.read, r.frame, &next, batch, &made), 2u);
  const size_t sizes[] = {1200, 600};
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const Bytes segment =
        tcp6(Bytes(payload.begin() + i * 1200, payload.begin() + i * 1200 + sizes[i]),
             kFirstSequence + i * 1200);
    EXPECT_EQ(ToHex(Bytes(batch.packets[i].packet, batch.packets[i].packet + batch.packets[i].len)),
              ToHex(Build()
                        .Ipv6({.src = kLocal6,
                               .dst = kRemote6,
                               .next_header = 60,
                               .flow_label = AutoFlowLabel(segment)})
                        .EncapLimit({.next_header = 41})
                        .Raw(segment)
                        .ToBytes()));
  }
}

TEST(Segmentation, PartialChecksumIsFinished) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  const Bytes segment = TcpPacket(PayloadBytes(300));
  Bytes partial = segment;
  SetPartialChecksum(partial, 20 + 300);
  ASSERT_NE(ToHex(partial), ToHex(segment));
  VirtioNetHeader vnet;
  vnet.flags = kVirtioNetFlagNeedsCsum;
  vnet.csum_start = 20;
  vnet.csum_offset = 16;
  CoreHarness::DeviceRead r = h.Read(t, partial, vnet);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  EXPECT_EQ(ToHex(r.outer()), ToHex(Gre4(segment)));
  EXPECT_EQ(t.counters().tx_super_packets.Get(), 0u);
}

TEST(Segmentation, PlainReadBehindAnEmptyHeaderIsOnePacket) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel(TunnelMode::kIpip));
  const Bytes inner = InnerIcmp();
  CoreHarness::DeviceRead r = h.Read(t, inner);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  EXPECT_EQ(
      ToHex(r.outer()),
      ToHex(Build().Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 4}).Raw(inner).ToBytes()));
  EXPECT_EQ(r.read.len, inner.size());
}

TEST(Segmentation, MalformedReadsAreDropped) {
  struct Case {
    const char* name;
    Bytes frame;
    VirtioNetHeader vnet;
    std::optional<size_t> read_len;
    DropReason reason;
  };
  VirtioNetHeader ufo = TsoHeader(1000);
  ufo.gso_type = kGsoUdp;  // IP fragmentation of UDP: never asked for
  VirtioNetHeader tso6 = TsoHeader(1000);
  tso6.gso_type = kGsoTcpv6;  // says IPv6, carries IPv4
  VirtioNetHeader no_size = TsoHeader(0);
  VirtioNetHeader bad_csum;
  bad_csum.flags = kVirtioNetFlagNeedsCsum;
  bad_csum.csum_start = 20;
  bad_csum.csum_offset = 400;  // beyond the packet
  const Bytes super = TcpPacket(PayloadBytes(2000));
  const Case cases[] = {
      {"shorter_than_the_header", {}, {}, 4, DropReason::kBadInnerPacket},
      {"ufo", super, ufo, std::nullopt, DropReason::kUnsupportedProtocol},
      {"gso_type_of_another_family", super, tso6, std::nullopt, DropReason::kUnsupportedProtocol},
      {"gso_size_0", super, no_size, std::nullopt, DropReason::kUnsupportedProtocol},
      {"tcp_header_cut", Bytes(super.begin(), super.begin() + 30), TsoHeader(1000), std::nullopt,
       DropReason::kBadInnerPacket},
      {"checksum_beyond_the_packet", TcpPacket(PayloadBytes(100)), bad_csum, std::nullopt,
       DropReason::kBadInnerPacket},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    CoreHarness h;
    TunnelDatapath& t = h.Add(OffloadTunnel());
    EXPECT_EQ(h.Read(t, c.frame, c.vnet, c.read_len).verdict, Verdict::kDone);
    EXPECT_EQ(TxDrops(t, c.reason), 1u) << DropReasonName(c.reason);
    EXPECT_EQ(AllDrops(t.counters().tx_drops), 1u);
    EXPECT_EQ(t.counters().tx_super_packets.Get(), 0u);
  }
}

TEST(Segmentation, FouSendsTheSegmentsAsOneUdpGsoSendAndFallsBackWithoutGso) {
  for (const bool gso_refused : {false, true}) {
    SCOPED_TRACE(gso_refused ? "GSO refused" : "GSO");
    CoreHarness h;
    EngineTunnel config = OffloadTunnel();
    config.encap.udp_dport = 4754;
    config.encap.udp_sport = 5555;
    TunnelDatapath& t = h.Add(config);
    const Bytes payload = PayloadBytes(2500);
    CoreHarness::DeviceRead r = h.Read(t, TcpPacket(payload), TsoHeader(1000));
    ASSERT_EQ(r.verdict, Verdict::kSuperPacket);
    SegmentBatch batch;
    size_t next = 0;
    size_t made = 0;
    ASSERT_EQ(h.core.PrepareSegments(t, r.read, r.frame, &next, batch, &made), 3u);
    if (gso_refused) h.io.fou_results = {-EIO};
    h.core.SendPreparedNow(t, batch, 3);

    std::vector<Bytes> expected;
    for (size_t i = 0; i < 3; ++i) {
      const size_t size = i < 2 ? 1000 : 500;
      expected.push_back(
          Build()
              .Gre({})
              .Raw(TcpPacket(Bytes(payload.begin() + i * 1000, payload.begin() + i * 1000 + size),
                             kFirstSequence + i * 1000, kFirstId + i))
              .ToBytes());
    }
    if (!gso_refused) {
      // One send: equal segments of 4 + 1040 bytes, the last shorter.
      ASSERT_EQ(h.io.fou_sends.size(), 1u);
      EXPECT_EQ(h.io.fou_sends[0].gso_size, 1044);
      EXPECT_EQ(h.io.fou_sends[0].sender, h.io.fou_opened[0].handle);
      ASSERT_EQ(h.io.fou_sends[0].payloads.size(), 3u);
      for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(ToHex(h.io.fou_sends[0].payloads[i]), ToHex(expected[i]));
      }
      EXPECT_TRUE(t.fou_gso());
    } else {
      // The GSO send refused (EIO: no checksum offload on the path), then one by one, and
      // no GSO for this tunnel from then on.
      ASSERT_EQ(h.io.fou_sends.size(), 4u);
      EXPECT_EQ(h.io.fou_sends[0].payloads.size(), 3u);
      for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(h.io.fou_sends[i + 1].gso_size, 0);
        ASSERT_EQ(h.io.fou_sends[i + 1].payloads.size(), 1u);
        EXPECT_EQ(ToHex(h.io.fou_sends[i + 1].payloads[0]), ToHex(expected[i]));
      }
      EXPECT_FALSE(t.fou_gso());
    }
    EXPECT_EQ(t.counters().tx_packets.Get(), 3u);
    EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
    EXPECT_TRUE(h.io.underlay_sends.empty());
  }
}

// ---- Coalescing on receive ----

// The virtio-net header of a coalesced TCP/IPv4 flow of `gso_size` segments (little-endian).
Bytes TsoHeaderBytes(uint16_t gso_size) {
  return {kVirtioNetFlagNeedsCsum,
          kGsoTcpv4,
          40,
          0,
          static_cast<uint8_t>(gso_size),
          static_cast<uint8_t>(gso_size >> 8),
          20,
          0,
          16,
          0};
}

TEST(Coalescing, InOrderSegmentsBecomeOneWrite) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  const Bytes payload = PayloadBytes(3000);
  for (size_t i = 0; i < 3; ++i) {
    const Bytes chunk(payload.begin() + i * 1000, payload.begin() + (i + 1) * 1000);
    CoreHarness::Receive r =
        h.ReceiveIpv4(GreFrom(TcpPacket(chunk, kFirstSequence + i * 1000, kFirstId + i)));
    EXPECT_FALSE(r.deliver) << i;  // taken into the flow
  }
  EXPECT_TRUE(h.writer.flows.empty());
  EXPECT_EQ(h.core.counters().rx_packets.Get(), 3u);

  h.core.FlushCoalesced();
  ASSERT_EQ(h.writer.flows.size(), 1u);
  const CoalescedFlow& flow = h.writer.flows[0];
  EXPECT_EQ(flow.tunnel, &t);
  EXPECT_EQ(flow.flushed.segments, 3u);
  EXPECT_EQ(flow.flushed.inner_bytes, 3 * 1040u);
  // One packet of the whole payload, the first segment's headers with the total length, its
  // checksum left for the kernel (NEEDS_CSUM) behind the TSO header of the segment size.
  Bytes packet = TcpPacket(payload);
  SetPartialChecksum(packet, 20 + payload.size());
  Bytes expected = TsoHeaderBytes(1000);
  expected.insert(expected.end(), packet.begin(), packet.end());
  EXPECT_EQ(ToHex(flow.data), ToHex(expected));
  EXPECT_TRUE(h.io.device_writes.empty());

  h.core.CoalescedDone(t, flow.flushed, static_cast<int>(flow.data.size()));
  EXPECT_EQ(t.counters().rx_packets.Get(), 3u);
  EXPECT_EQ(t.counters().rx_bytes.Get(), 3 * 1040u);
  EXPECT_EQ(t.counters().rx_coalesced.Get(), 1u);
  // Nothing is left open.
  h.core.FlushCoalesced();
  EXPECT_EQ(h.writer.flows.size(), 1u);
}

TEST(Coalescing, GapStartsANewFlowAndOtherTrafficIsDeliveredAtOnce) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  const Bytes chunk = PayloadBytes(500);
  EXPECT_FALSE(h.ReceiveIpv4(GreFrom(TcpPacket(chunk, 1000))).deliver);
  EXPECT_FALSE(h.ReceiveIpv4(GreFrom(TcpPacket(chunk, 1500))).deliver);
  EXPECT_FALSE(h.ReceiveIpv4(GreFrom(TcpPacket(chunk, 3000))).deliver);  // a gap
  // Not TCP: delivered as it is, behind an empty virtio-net header.
  CoreHarness::Receive icmp = h.ReceiveIpv4(GreFrom(InnerIcmp()));
  ASSERT_TRUE(icmp.deliver);
  Bytes expected(kVirtioNetHeaderLen, 0);
  const Bytes inner = InnerIcmp();
  expected.insert(expected.end(), inner.begin(), inner.end());
  EXPECT_EQ(ToHex(icmp.delivered()), ToHex(expected));

  h.core.FlushCoalesced();
  ASSERT_EQ(h.writer.flows.size(), 2u);
  EXPECT_EQ(h.writer.flows[0].flushed.segments, 2u);
  EXPECT_EQ(h.writer.flows[1].flushed.segments, 1u);
  // A flow of one goes as it came: its own checksum, an empty virtio-net header.
  Bytes single(kVirtioNetHeaderLen, 0);
  const Bytes alone = TcpPacket(chunk, 3000);
  single.insert(single.end(), alone.begin(), alone.end());
  EXPECT_EQ(ToHex(h.writer.flows[1].data), ToHex(single));
  for (const CoalescedFlow& f : h.writer.flows) {
    h.core.CoalescedDone(t, f.flushed, static_cast<int>(f.data.size()));
  }
  EXPECT_EQ(t.counters().rx_packets.Get(), 3u);
  EXPECT_EQ(t.counters().rx_coalesced.Get(), 1u);
}

TEST(Coalescing, FailedWriteCountsEverySegmentAsADeviceError) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  const Bytes chunk = PayloadBytes(500);
  h.ReceiveIpv4(GreFrom(TcpPacket(chunk, 1000)));
  h.ReceiveIpv4(GreFrom(TcpPacket(chunk, 1500)));
  h.core.FlushCoalesced();
  ASSERT_EQ(h.writer.flows.size(), 1u);
  h.core.CoalescedDone(t, h.writer.flows[0].flushed, -EIO);
  EXPECT_EQ(RxDrops(t, DropReason::kDeviceError), 2u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
}

TEST(Coalescing, UnlinkedTunnelsOpenFlowsAreDiscarded) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(OffloadTunnel());
  h.ReceiveIpv4(GreFrom(TcpPacket(PayloadBytes(500), 1000)));
  h.core.UnlinkTunnel(&t);
  h.core.FlushCoalesced();
  EXPECT_TRUE(h.writer.flows.empty());
}

TEST(Coalescing, FouReceiveIsCoalescedToo) {
  CoreHarness h;
  EngineTunnel config = OffloadTunnel();
  config.encap.udp_dport = 4754;
  TunnelDatapath& t = h.Add(config);
  const Bytes chunk = PayloadBytes(500);
  const Bytes a = Build().Gre({}).Raw(TcpPacket(chunk, 1000)).ToBytes();
  const Bytes b = Build().Gre({}).Raw(TcpPacket(chunk, 1500)).ToBytes();
  Bytes both = a;
  both.insert(both.end(), b.begin(), b.end());
  h.ReceiveFou(both, 47, {.gro_size = static_cast<int>(a.size())});
  EXPECT_TRUE(h.io.device_writes.empty());
  h.core.FlushCoalesced();
  ASSERT_EQ(h.writer.flows.size(), 1u);
  EXPECT_EQ(h.writer.flows[0].tunnel, &t);
  EXPECT_EQ(h.writer.flows[0].flushed.segments, 2u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
