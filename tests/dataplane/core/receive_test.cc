// Receive through the packet core, one table row per mode, option and malformation: what a raw
// underlay socket read goes in, and out comes exactly the inner packet to write to the right
// tunnel's device (or nothing, with the drop counted under its reason, by the core when no
// tunnel is to blame and by the tunnel when its own rules refused it).
#include <sys/socket.h>

#include <cerrno>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

// What a raw socket of the IPv4 underlay hands over: the outer header from the remote to the
// local address, then `protocol`'s payload.
Ipv4Fields From4(uint8_t protocol, uint8_t tos = 0) {
  return {.src = kRemote4, .dst = kLocal4, .protocol = protocol, .tos = tos};
}

struct ReceiveCase {
  std::string name = "";
  TunnelMode mode = TunnelMode::kGre;
  std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {};
  // The socket it arrives on: IPv4 (the whole packet) or IPv6 (what follows the IPv6 headers,
  // the addresses beside it).
  bool ipv6 = false;
  uint8_t protocol = 47;
  Bytes packet = {};
  Ipv6Ancillary ancillary = {};
  std::optional<size_t> capacity = std::nullopt;  // of the receive buffer; default: the packet
  int msg_flags = 0;
  Bytes expected = {};  // written to the device
  // Else dropped: by the core (no tunnel to blame) or by the tunnel's own rules.
  std::optional<DropReason> core_drop = std::nullopt;
  std::optional<DropReason> tunnel_drop = std::nullopt;
};

void PrintTo(const ReceiveCase& c, std::ostream* os) { *os << c.name; }

std::vector<ReceiveCase> Cases() {
  const Bytes inner4 = InnerIcmp();
  const Bytes inner6 = InnerIcmp6();
  const Bytes frame4 = Build().Ethernet({}).Raw(inner4).ToBytes();
  const auto keyed = [](EngineTunnel& t) {
    t.has_input_key = true;
    t.input_key = 42;
  };
  return {
      {.name = "gre_ipv4",
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "gre_ipv6",
       .packet = Build().Ipv4(From4(47)).Gre({.protocol = 0x86DD}).Raw(inner6).ToBytes(),
       .expected = inner6},
      // Link-layer padding after the outer packet, and after the inner one, is not delivered.
      {.name = "gre_padding_trimmed",
       .packet = Build()
                     .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47, .total_len = 24 + 36})
                     .Gre({})
                     .Raw(inner4)
                     .Raw({0, 0, 0, 0})
                     .ToBytes(),
       .expected = inner4},
      {.name = "gre_key",
       .configure = keyed,
       .packet = Build().Ipv4(From4(47)).Gre({.key = 42}).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "gre_checksum_required_and_right",
       .configure = [](EngineTunnel& t) { t.input_checksum = true; },
       .packet = Build().Ipv4(From4(47)).Gre({.checksum = true}).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "gre_checksum_unasked_still_checked",
       .packet = Build().Ipv4(From4(47)).Gre({.checksum = true}).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "gre_sequence_required_and_there",
       .configure = [](EngineTunnel& t) { t.input_sequence = true; },
       .packet = Build().Ipv4(From4(47)).Gre({.sequence = 9}).Raw(inner4).ToBytes(),
       .expected = inner4},
      // Outer CE over an ECN-capable inner packet marks it CE (RFC 6040), checksum fixed.
      {.name = "gre_outer_ce_marks_inner",
       .packet = Build().Ipv4(From4(47, 0x03)).Gre({}).Raw(InnerIcmp(8, true, 0x02)).ToBytes(),
       .expected = InnerIcmp(8, true, 0x03)},
      {.name = "gretap",
       .mode = TunnelMode::kGretap,
       .packet = Build().Ipv4(From4(47)).Gre({.protocol = 0x6558}).Raw(frame4).ToBytes(),
       .expected = frame4},
      {.name = "ipip",
       .mode = TunnelMode::kIpip,
       .protocol = 4,
       .packet = Build().Ipv4(From4(4)).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "sit",
       .mode = TunnelMode::kSit,
       .protocol = 41,
       .packet = Build().Ipv4(From4(41)).Raw(inner6).ToBytes(),
       .expected = inner6},
      {.name = "ip6gre",
       .mode = TunnelMode::kIp6gre,
       .ipv6 = true,
       .packet = Build().Gre({}).Raw(inner4).ToBytes(),
       .expected = inner4},
      {.name = "ip6gre_key_sequence",
       .mode = TunnelMode::kIp6gre,
       .configure =
           [](EngineTunnel& t) {
             t.has_input_key = true;
             t.input_key = 5;
             t.input_sequence = true;
           },
       .ipv6 = true,
       .packet = Build().Gre({.protocol = 0x86DD, .key = 5, .sequence = 1}).Raw(inner6).ToBytes(),
       .expected = inner6},
      {.name = "ip6gretap",
       .mode = TunnelMode::kIp6gretap,
       .ipv6 = true,
       .packet = Build().Gre({.protocol = 0x6558}).Raw(frame4).ToBytes(),
       .expected = frame4},
      {.name = "ip6tnl_ipv4",
       .mode = TunnelMode::kIp6tnl,
       .ipv6 = true,
       .protocol = 4,
       .packet = inner4,
       .expected = inner4},
      {.name = "ip6tnl_ipv6",
       .mode = TunnelMode::kIp6tnl,
       .ipv6 = true,
       .protocol = 41,
       .packet = inner6,
       .expected = inner6},

      // ---- Dropped by the core: the packet itself is wrong, or nobody's ----
      {.name = "no_tunnel_from_another_address",
       .packet = Build()
                     .Ipv4({.src = kOther4, .dst = kLocal4, .protocol = 47})
                     .Gre({})
                     .Raw(inner4)
                     .ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      {.name = "no_tunnel_wrong_key",
       .configure = keyed,
       .packet = Build().Ipv4(From4(47)).Gre({.key = 43}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      {.name = "no_tunnel_keyless_packet_for_keyed_tunnel",
       .configure = keyed,
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      {.name = "no_tunnel_keyed_packet_for_keyless_tunnel",
       .packet = Build().Ipv4(From4(47)).Gre({.key = 42}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      // ip_gre and gretap are separate tables: a frame is not for a gre tunnel.
      {.name = "no_tunnel_frame_for_gre",
       .packet = Build().Ipv4(From4(47)).Gre({.protocol = 0x6558}).Raw(frame4).ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      {.name = "no_tunnel_ipip_for_gre",
       .protocol = 4,
       .packet = Build().Ipv4(From4(4)).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kNoTunnel},
      {.name = "no_tunnel_ip6gre_from_another_address",
       .mode = TunnelMode::kIp6gre,
       .ipv6 = true,
       .packet = Build().Gre({}).Raw(inner4).ToBytes(),
       .ancillary = {.source = kOther6},
       .core_drop = DropReason::kNoTunnel},
      {.name = "truncated_below_an_ip_header",
       .packet = Bytes{0x45, 0, 0, 20, 0, 0},
       .core_drop = DropReason::kTruncated},
      {.name = "truncated_shorter_than_its_total_length",
       .packet = Build()
                     .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47, .total_len = 200})
                     .Gre({})
                     .Raw(inner4)
                     .ToBytes(),
       .core_drop = DropReason::kTruncated},
      {.name = "truncated_gre_header",
       .packet = Build().Ipv4(From4(47)).Raw({0x20, 0x00, 0x08, 0x00, 0, 0}).ToBytes(),
       .core_drop = DropReason::kTruncated},
      {.name = "bad_outer_version",
       .packet = Build()
                     .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47, .version = 5})
                     .Gre({})
                     .Raw(inner4)
                     .ToBytes(),
       .core_drop = DropReason::kBadOuterHeader},
      {.name = "bad_outer_fragment",
       .packet =
           Build()
               .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47, .df = false, .mf = true})
               .Gre({})
               .Raw(inner4)
               .ToBytes(),
       .core_drop = DropReason::kBadOuterHeader},
      {.name = "ipv6_without_its_destination",
       .mode = TunnelMode::kIp6gre,
       .ipv6 = true,
       .packet = Build().Gre({}).Raw(inner4).ToBytes(),
       .ancillary = {.destination = std::nullopt},
       .core_drop = DropReason::kBadOuterHeader},
      {.name = "gre_version_1",
       .packet = Build().Ipv4(From4(47)).Gre({.extra_flags = 1}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kGreVersion},
      {.name = "gre_routing",
       .packet = Build().Ipv4(From4(47)).Gre({.extra_flags = 0x4000}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kGreRouting},
      {.name = "gre_checksum_wrong",
       .packet = Build()
                     .Ipv4(From4(47))
                     .Gre({.checksum = true, .wrong_checksum = true})
                     .Raw(inner4)
                     .ToBytes(),
       .core_drop = DropReason::kGreChecksum},
      {.name = "gre_unknown_protocol_type",
       .packet = Build().Ipv4(From4(47)).Gre({.protocol = 0x88B5}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kUnsupportedProtocol},
      {.name = "outer_protocol_not_a_tunnels",
       .protocol = 47,
       .packet = Build().Ipv4(From4(50)).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kUnsupportedProtocol},
      {.name = "gre_ipv4_type_carrying_ipv6",
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner6).ToBytes(),
       .core_drop = DropReason::kBadInnerPacket},
      {.name = "gre_inner_longer_than_received",
       .packet =
           Build().Ipv4(From4(47)).Gre({}).Raw(Bytes(inner4.begin(), inner4.end() - 4)).ToBytes(),
       .core_drop = DropReason::kBadInnerPacket},
      {.name = "gretap_runt_frame",
       .mode = TunnelMode::kGretap,
       .packet = Build().Ipv4(From4(47)).Gre({.protocol = 0x6558}).Raw(Bytes(10, 0)).ToBytes(),
       .core_drop = DropReason::kBadInnerPacket},
      {.name = "ipip_carrying_ipv6",
       .mode = TunnelMode::kIpip,
       .protocol = 4,
       .packet = Build().Ipv4(From4(4)).Raw(inner6).ToBytes(),
       .core_drop = DropReason::kBadInnerPacket},
      {.name = "ecn_outer_ce_over_not_ect",
       .packet = Build().Ipv4(From4(47, 0x03)).Gre({}).Raw(inner4).ToBytes(),
       .core_drop = DropReason::kEcnError},
      {.name = "ecn_ipv6_traffic_class_ce_over_not_ect",
       .mode = TunnelMode::kIp6tnl,
       .ipv6 = true,
       .protocol = 4,
       .packet = inner4,
       .ancillary = {.traffic_class = 0x03},
       .core_drop = DropReason::kEcnError},
      {.name = "too_big_for_the_buffer",
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .capacity = 40,
       .core_drop = DropReason::kTooBig},
      {.name = "too_big_cut_short",
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .msg_flags = MSG_TRUNC,
       .core_drop = DropReason::kTooBig},

      // ---- Dropped by the tunnel's own receive rules ----
      {.name = "gre_checksum_required_absent",
       .configure = [](EngineTunnel& t) { t.input_checksum = true; },
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .tunnel_drop = DropReason::kGreChecksum},
      {.name = "gre_sequence_required_absent",
       .configure = [](EngineTunnel& t) { t.input_sequence = true; },
       .packet = Build().Ipv4(From4(47)).Gre({}).Raw(inner4).ToBytes(),
       .tunnel_drop = DropReason::kGreSequence},
  };
}

class ReceiveTable : public ::testing::TestWithParam<ReceiveCase> {};

TEST_P(ReceiveTable, ExactInnerPacketOrCountedDrop) {
  const ReceiveCase& c = GetParam();
  CoreHarness h;
  EngineTunnel config = MakeTunnel(c.mode);
  c.configure(config);
  TunnelDatapath& t = h.Add(config);
  CoreHarness::Receive r = c.ipv6 ? h.ReceiveIpv6(c.packet, c.protocol, c.ancillary)
                                  : h.ReceiveIpv4(c.packet, c.protocol, c.capacity, c.msg_flags);

  EXPECT_EQ(h.core.counters().rx_packets.Get(), 1u);
  // The common path leaves the writing to the backend.
  EXPECT_TRUE(h.io.device_writes.empty());
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_TRUE(h.writer.flows.empty());
  const DropCounters& core_drops = h.core.counters().drops;
  if (!c.core_drop && !c.tunnel_drop) {
    ASSERT_TRUE(r.deliver);
    EXPECT_EQ(r.delivery.tunnel, &t);
    EXPECT_EQ(ToHex(r.delivered()), ToHex(c.expected));
    EXPECT_EQ(r.delivery.inner_len, c.expected.size());
    EXPECT_EQ(AllDrops(core_drops), 0u);
    EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
    // Counted once the backend reports the write.
    EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
    t.DeviceWriteDone(r.delivery.inner_len, static_cast<int>(r.delivery.len));
    EXPECT_EQ(t.counters().rx_packets.Get(), 1u);
    EXPECT_EQ(t.counters().rx_bytes.Get(), c.expected.size());
    EXPECT_NE(t.stats().last_receive_unix_nanos.load(), 0);
    return;
  }
  EXPECT_FALSE(r.deliver);
  if (c.core_drop) {
    EXPECT_EQ(core_drops[static_cast<int>(*c.core_drop)].Get(), 1u) << DropReasonName(*c.core_drop);
    EXPECT_EQ(AllDrops(core_drops), 1u);
    EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
  } else {
    EXPECT_EQ(RxDrops(t, *c.tunnel_drop), 1u) << DropReasonName(*c.tunnel_drop);
    EXPECT_EQ(AllDrops(t.counters().rx_drops), 1u);
    EXPECT_EQ(AllDrops(core_drops), 0u);
  }
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
  EXPECT_EQ(t.stats().last_receive_unix_nanos.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, ReceiveTable, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<ReceiveCase>& info) {
                           return info.param.name;
                         });

TEST(Receive, DeviceErrorIsCountedPerPacket) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  CoreHarness::Receive r =
      h.ReceiveIpv4(Build().Ipv4(From4(47)).Gre({}).Raw(InnerIcmp()).ToBytes());
  ASSERT_TRUE(r.deliver);
  t.DeviceWriteDone(r.delivery.inner_len, -EIO);
  EXPECT_EQ(RxDrops(t, DropReason::kDeviceError), 1u);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 1u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
  EXPECT_EQ(t.counters().rx_bytes.Get(), 0u);
}

TEST(Receive, SequenceNumbersBehindTheLastAreDropped) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  config.input_sequence = true;
  TunnelDatapath& t = h.Add(config);
  const auto packet = [](uint32_t sequence) {
    return Build().Ipv4(From4(47)).Gre({.sequence = sequence}).Raw(InnerIcmp()).ToBytes();
  };
  struct Step {
    uint32_t sequence;
    bool delivered;
  };
  // 5, then 7 (a gap is fine), then 6 and 7 again (behind), then 8.
  const Step steps[] = {{5, true}, {7, true}, {6, false}, {7, false}, {8, true}};
  uint64_t drops = 0;
  for (const Step& s : steps) {
    EXPECT_EQ(h.ReceiveIpv4(packet(s.sequence)).deliver, s.delivered) << s.sequence;
    if (!s.delivered) ++drops;
    EXPECT_EQ(RxDrops(t, DropReason::kGreSequence), drops) << s.sequence;
  }
}

TEST(Receive, MostSpecificTunnelWinsAndKeysSeparateTunnels) {
  CoreHarness h;
  EngineTunnel any = MakeTunnel(TunnelMode::kGre, "any", 8);
  any.encap.local = OuterAddress();
  any.encap.remote = OuterAddress();
  EngineTunnel exact = MakeTunnel(TunnelMode::kGre, "exact", 9);
  EngineTunnel keyed = MakeTunnel(TunnelMode::kGre, "keyed", 10);
  keyed.has_input_key = true;
  keyed.input_key = 42;
  TunnelDatapath& t_any = h.Add(any);
  TunnelDatapath& t_exact = h.Add(exact);
  TunnelDatapath& t_keyed = h.Add(keyed);
  const Bytes inner = InnerIcmp();
  EXPECT_EQ(h.ReceiveIpv4(Build().Ipv4(From4(47)).Gre({}).Raw(inner).ToBytes()).delivery.tunnel,
            &t_exact);
  EXPECT_EQ(h.ReceiveIpv4(Build()
                              .Ipv4({.src = kOther4, .dst = kLocal4, .protocol = 47})
                              .Gre({})
                              .Raw(inner)
                              .ToBytes())
                .delivery.tunnel,
            &t_any);
  EXPECT_EQ(
      h.ReceiveIpv4(Build().Ipv4(From4(47)).Gre({.key = 42}).Raw(inner).ToBytes()).delivery.tunnel,
      &t_keyed);
  // Once unlinked, a tunnel receives nothing; the wildcard one takes its packets.
  h.core.UnlinkTunnel(&t_exact);
  EXPECT_EQ(h.ReceiveIpv4(Build().Ipv4(From4(47)).Gre({}).Raw(inner).ToBytes()).delivery.tunnel,
            &t_any);
  h.core.EraseTunnel(&t_any);
  EXPECT_FALSE(h.ReceiveIpv4(Build().Ipv4(From4(47)).Gre({}).Raw(inner).ToBytes()).deliver);
  EXPECT_EQ(h.core.counters().drops[static_cast<int>(DropReason::kNoTunnel)].Get(), 1u);
  EXPECT_EQ(h.core.tunnel_count(), 2u);
}

TEST(Receive, OffloadDeviceGetsAnEmptyVirtioNetHeaderInFront) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kIp6tnl);
  config.vnet_header = true;
  TunnelDatapath& t = h.Add(config);
  // ip6tnl over IPv6: nothing precedes the inner packet in the buffer but the headroom.
  const Bytes inner = InnerIcmp();
  CoreHarness::Receive r = h.ReceiveIpv6(inner, 4);
  ASSERT_TRUE(r.deliver);
  EXPECT_EQ(r.delivery.tunnel, &t);
  Bytes expected(kVirtioNetHeaderLen, 0);
  expected.insert(expected.end(), inner.begin(), inner.end());
  EXPECT_EQ(ToHex(r.delivered()), ToHex(expected));
  EXPECT_EQ(r.delivery.inner_len, inner.size());
}

TEST(Receive, SocketErrorsAreCountedButNotNothingThere) {
  CoreHarness h;
  const DropCounters& drops = h.core.counters().drops;
  h.core.ReceiveFailed(-EAGAIN);
  h.core.ReceiveFailed(-EINTR);
  EXPECT_EQ(AllDrops(drops), 0u);
  h.core.ReceiveFailed(-ECONNREFUSED);
  h.core.ReceiveFailed(-ENOBUFS);
  EXPECT_EQ(drops[static_cast<int>(DropReason::kSocketError)].Get(), 2u);
  h.core.ReceivedTooBig();
  EXPECT_EQ(drops[static_cast<int>(DropReason::kTooBig)].Get(), 1u);
  EXPECT_EQ(h.core.counters().rx_packets.Get(), 1u);
  EXPECT_EQ(AllDrops(drops), 3u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
