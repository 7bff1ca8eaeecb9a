// Transmit through the packet core, one table row per mode and option: a frame read from the
// tunnel's device goes in, and out comes exactly the outer packet the backend is to send (or
// nothing, with the drop counted under its reason).
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

using Verdict = PacketCore::DeviceVerdict;

struct TransmitCase {
  std::string name = "";
  TunnelMode mode = TunnelMode::kGre;
  std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {};
  Bytes frame = {};
  Bytes expected = {};                            // the outer packet, when it is sent
  std::optional<DropReason> drop = std::nullopt;  // else: dropped, counted under this tx reason
};

void PrintTo(const TransmitCase& c, std::ostream* os) { *os << c.name; }

// The outer IPv4 header the core writes by default: from the local address to the remote,
// ID 0 (the kernel picks one), DF (pmtudisc), TTL inherited from the inner packet.
Ipv4Fields Outer4(uint8_t protocol, uint8_t ttl = 64) {
  return {.src = kLocal4, .dst = kRemote4, .protocol = protocol, .ttl = ttl};
}
// The outer IPv6 header: fd00:18::1 -> fd00:18::2, the encapsulation-limit option first, the
// flow label from the inner packet.
Ipv6Fields Outer6Header(const Bytes& inner_ip, uint8_t hop_limit = 64) {
  return {.src = kLocal6,
          .dst = kRemote6,
          .next_header = 60,
          .flow_label = AutoFlowLabel(inner_ip),
          .hop_limit = hop_limit};
}

std::vector<TransmitCase> Cases() {
  const Bytes inner4 = InnerIcmp();
  const Bytes inner6 = InnerIcmp6();
  const Bytes frame4 = Build().Ethernet({}).Raw(inner4).ToBytes();
  const Bytes frame6 = Build().Ethernet({.ether_type = 0x86DD}).Raw(inner6).ToBytes();
  std::vector<TransmitCase> cases = {
      {.name = "gre_ipv4",
       .frame = inner4,
       .expected = Build().Ipv4(Outer4(47)).Gre({}).Raw(inner4).ToBytes()},
      {.name = "gre_ipv6",
       .frame = inner6,
       .expected = Build().Ipv4(Outer4(47)).Gre({.protocol = 0x86DD}).Raw(inner6).ToBytes()},
      {.name = "gre_key",
       .configure =
           [](EngineTunnel& t) {
             t.encap.has_key = true;
             t.encap.key = 0x0A0B0C0D;
           },
       .frame = inner4,
       .expected = Build().Ipv4(Outer4(47)).Gre({.key = 0x0A0B0C0D}).Raw(inner4).ToBytes()},
      {.name = "gre_checksum",
       .configure = [](EngineTunnel& t) { t.encap.checksum = true; },
       .frame = inner4,
       .expected = Build().Ipv4(Outer4(47)).Gre({.checksum = true}).Raw(inner4).ToBytes()},
      {.name = "gre_checksum_key_sequence",
       .configure =
           [](EngineTunnel& t) {
             t.encap.checksum = true;
             t.encap.has_key = true;
             t.encap.key = 42;
             t.encap.sequence = true;
           },
       .frame = inner6,
       // The first packet a tunnel numbers is number 1.
       .expected = Build()
                       .Ipv4(Outer4(47))
                       .Gre({.protocol = 0x86DD, .checksum = true, .key = 42, .sequence = 1})
                       .Raw(inner6)
                       .ToBytes()},
      {.name = "gre_fixed_tos_ttl_ecn_copied",
       .configure =
           [](EngineTunnel& t) {
             t.encap.tos = 0x28;
             t.encap.ttl = 32;
           },
       .frame = InnerIcmp(8, true, /*tos=*/0x02),
       .expected =
           Build()
               .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 47, .tos = 0x2A, .ttl = 32})
               .Gre({})
               .Raw(InnerIcmp(8, true, 0x02))
               .ToBytes()},
      {.name = "gre_inherit_tos_ce_sent_as_ect0",
       .configure = [](EngineTunnel& t) { t.encap.inherit_tos = true; },
       .frame = InnerIcmp(8, true, /*tos=*/0xBB),
       .expected = Build()
                       .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 47, .tos = 0xBA})
                       .Gre({})
                       .Raw(InnerIcmp(8, true, 0xBB))
                       .ToBytes()},
      {.name = "gre_nopmtudisc_copies_inner_df",
       .configure = [](EngineTunnel& t) { t.encap.pmtudisc = false; },
       .frame = InnerIcmp(8, /*df=*/false),
       .expected = Build()
                       .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 47, .df = false})
                       .Gre({})
                       .Raw(InnerIcmp(8, false))
                       .ToBytes()},
      {.name = "gretap",
       .mode = TunnelMode::kGretap,
       .frame = frame4,
       .expected = Build().Ipv4(Outer4(47)).Gre({.protocol = 0x6558}).Raw(frame4).ToBytes()},
      {.name = "ipip",
       .mode = TunnelMode::kIpip,
       .frame = inner4,
       .expected = Build().Ipv4(Outer4(4)).Raw(inner4).ToBytes()},
      {.name = "sit",
       .mode = TunnelMode::kSit,
       .frame = inner6,
       .expected = Build().Ipv4(Outer4(41)).Raw(inner6).ToBytes()},
      {.name = "ip6gre_ipv4",
       .mode = TunnelMode::kIp6gre,
       .frame = inner4,
       .expected = Build().Ipv6(Outer6Header(inner4)).EncapLimit({}).Gre({}).Raw(inner4).ToBytes()},
      {.name = "ip6gre_key_sequence_ipv6",
       .mode = TunnelMode::kIp6gre,
       .configure =
           [](EngineTunnel& t) {
             t.encap.has_key = true;
             t.encap.key = 7;
             t.encap.sequence = true;
           },
       .frame = inner6,
       .expected = Build()
                       .Ipv6(Outer6Header(inner6))
                       .EncapLimit({})
                       .Gre({.protocol = 0x86DD, .key = 7, .sequence = 1})
                       .Raw(inner6)
                       .ToBytes()},
      {.name = "ip6gretap",
       .mode = TunnelMode::kIp6gretap,
       .frame = frame6,
       .expected = Build()
                       .Ipv6(Outer6Header(inner6))
                       .EncapLimit({})
                       .Gre({.protocol = 0x6558})
                       .Raw(frame6)
                       .ToBytes()},
      {.name = "ip6tnl_ipv4",
       .mode = TunnelMode::kIp6tnl,
       .frame = inner4,
       .expected =
           Build().Ipv6(Outer6Header(inner4)).EncapLimit({.next_header = 4}).Raw(inner4).ToBytes()},
      {.name = "ip6tnl_ipv6_encap_limit_1",
       .mode = TunnelMode::kIp6tnl,
       .configure = [](EngineTunnel& t) { t.encap.encap_limit = 1; },
       .frame = inner6,
       .expected = Build()
                       .Ipv6(Outer6Header(inner6))
                       .EncapLimit({.next_header = 41, .limit = 1})
                       .Raw(inner6)
                       .ToBytes()},
      {.name = "gre_in_udp_fixed_source_port",
       .configure =
           [](EngineTunnel& t) {
             t.encap.udp_dport = 4754;
             t.encap.udp_sport = 5555;
           },
       .frame = inner4,
       .expected = Build()
                       .Ipv4(Outer4(17))
                       .Udp({.sport = 5555, .dport = 4754})
                       .Gre({})
                       .Raw(inner4)
                       .ToBytes()},
      {.name = "ipip_in_udp",
       .mode = TunnelMode::kIpip,
       .configure =
           [](EngineTunnel& t) {
             t.encap.udp_dport = 5555;
             t.encap.udp_sport = 6666;
           },
       .frame = inner4,
       .expected =
           Build().Ipv4(Outer4(17)).Udp({.sport = 6666, .dport = 5555}).Raw(inner4).ToBytes()},

      // ---- Dropped on the way out ----
      {.name = "ipip_cannot_carry_ipv6",
       .mode = TunnelMode::kIpip,
       .frame = inner6,
       .drop = DropReason::kUnsupportedProtocol},
      {.name = "sit_cannot_carry_ipv4",
       .mode = TunnelMode::kSit,
       .frame = inner4,
       .drop = DropReason::kUnsupportedProtocol},
      {.name = "gre_not_ip",
       .frame = Bytes{0x50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19},
       .drop = DropReason::kUnsupportedProtocol},
      {.name = "gre_ipv4_shorter_than_its_header",
       .frame = Bytes(inner4.begin(), inner4.begin() + 12),
       .drop = DropReason::kBadInnerPacket},
      {.name = "ip6tnl_ipv6_shorter_than_its_header",
       .mode = TunnelMode::kIp6tnl,
       .frame = Bytes(inner6.begin(), inner6.begin() + 30),
       .drop = DropReason::kBadInnerPacket},
      {.name = "gretap_runt_frame",
       .mode = TunnelMode::kGretap,
       .frame = Bytes(frame4.begin(), frame4.begin() + 10),
       .drop = DropReason::kBadInnerPacket},
      // The tunnel's own outer packet routed back into its device: not wrapped again.
      {.name = "gre_loop",
       .frame = Build().Ipv4(Outer4(47)).Gre({}).Raw(inner4).ToBytes(),
       .drop = DropReason::kLoop},
      {.name = "ipip_loop",
       .mode = TunnelMode::kIpip,
       .frame = Build().Ipv4(Outer4(4)).Raw(inner4).ToBytes(),
       .drop = DropReason::kLoop},
      {.name = "ip6tnl_loop",
       .mode = TunnelMode::kIp6tnl,
       .frame =
           Build().Ipv6(Outer6Header(inner4)).EncapLimit({.next_header = 4}).Raw(inner4).ToBytes(),
       .drop = DropReason::kLoop},
      {.name = "gretap_loop",
       .mode = TunnelMode::kGretap,
       .frame = Build().Ethernet({}).Ipv4(Outer4(47)).Gre({}).Raw(inner4).ToBytes(),
       .drop = DropReason::kLoop},
      {.name = "gre_in_udp_loop",
       .configure = [](EngineTunnel& t) { t.encap.udp_dport = 4754; },
       .frame = Build()
                    .Ipv4(Outer4(17))
                    .Udp({.sport = 50001, .dport = 4754})
                    .Gre({})
                    .Raw(inner4)
                    .ToBytes(),
       .drop = DropReason::kLoop},
  };
  return cases;
}

class TransmitTable : public ::testing::TestWithParam<TransmitCase> {};

TEST_P(TransmitTable, ExactOuterPacketOrCountedDrop) {
  const TransmitCase& c = GetParam();
  CoreHarness h;
  EngineTunnel config = MakeTunnel(c.mode);
  c.configure(config);
  TunnelDatapath& t = h.Add(config);
  CoreHarness::DeviceRead r = h.Read(t, c.frame);

  // The common path leaves the sending to the backend: nothing went through PacketIo.
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_TRUE(h.io.fou_sends.empty());
  EXPECT_TRUE(h.io.device_writes.empty());
  if (!c.drop) {
    ASSERT_EQ(r.verdict, Verdict::kSend);
    EXPECT_EQ(ToHex(r.outer()), ToHex(c.expected));
    EXPECT_EQ(r.read.len, c.frame.size());
    EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
    // Counted once the backend reports the send.
    EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
    t.TransmitDone(r.frame, r.read.len, static_cast<int>(r.out.len));
    EXPECT_EQ(t.counters().tx_packets.Get(), 1u);
    EXPECT_EQ(t.counters().tx_bytes.Get(), c.frame.size());
  } else {
    EXPECT_EQ(r.verdict, Verdict::kDone);
    EXPECT_EQ(TxDrops(t, *c.drop), 1u) << DropReasonName(*c.drop);
    EXPECT_EQ(AllDrops(t.counters().tx_drops), 1u);
    EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
  }
  // Transmit never touches the receive side's counters.
  EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, TransmitTable, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<TransmitCase>& info) {
                           return info.param.name;
                         });

TEST(Transmit, SendErrorIsCountedAsSuch) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  CoreHarness::DeviceRead r = h.Read(t, InnerIcmp());
  ASSERT_EQ(r.verdict, Verdict::kSend);
  t.TransmitDone(r.frame, r.read.len, -EPERM);
  EXPECT_EQ(TxDrops(t, DropReason::kSendError), 1u);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 1u);
  EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
  EXPECT_EQ(t.counters().tx_bytes.Get(), 0u);
  // Not a size problem: no ICMP, no resend, the route not asked again.
  EXPECT_TRUE(h.io.device_writes.empty());
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_EQ(h.io.route_probes, 1);
  h.core.Tick(absl::Now());
  EXPECT_EQ(h.io.route_probes, 1);
}

TEST(Transmit, SequenceNumbersCountUpPerPacket) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  config.encap.sequence = true;
  TunnelDatapath& t = h.Add(config);
  for (uint32_t expected = 1; expected <= 3; ++expected) {
    CoreHarness::DeviceRead r = h.Read(t, InnerIcmp());
    ASSERT_EQ(r.verdict, Verdict::kSend);
    EXPECT_EQ(
        ToHex(r.outer()),
        ToHex(Build().Ipv4(Outer4(47)).Gre({.sequence = expected}).Raw(InnerIcmp()).ToBytes()));
  }
}

TEST(Transmit, ReadThatFillsTheBufferIsTooBig) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  // A read that filled the buffer may have been cut: dropped before anything looks at it.
  CoreHarness::DeviceRead r = h.Read(t, InnerIcmp(), {}, t.read_bytes());
  EXPECT_EQ(r.verdict, Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 1u);
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_TRUE(h.io.device_writes.empty());
}

TEST(Transmit, Ipv6UnderlaySendsFromTheRoutesSourceWhenNoLocalIsSet) {
  CoreHarness h;
  h.io.route_source6 = Outer6(kOther6);
  EngineTunnel config = MakeTunnel(TunnelMode::kIp6tnl);
  config.encap.local = OuterAddress();
  TunnelDatapath& t = h.Add(config);
  const Bytes inner = InnerIcmp();
  CoreHarness::DeviceRead r = h.Read(t, inner);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  Ipv6Fields outer = Outer6Header(inner);
  outer.src = kOther6;
  EXPECT_EQ(ToHex(r.outer()),
            ToHex(Build().Ipv6(outer).EncapLimit({.next_header = 4}).Raw(inner).ToBytes()));
}

TEST(Transmit, Ipv4UnderlayWithoutLocalLeavesTheSourceToTheKernel) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kIpip);
  config.encap.local = OuterAddress();
  TunnelDatapath& t = h.Add(config);
  CoreHarness::DeviceRead r = h.Read(t, InnerIcmp());
  ASSERT_EQ(r.verdict, Verdict::kSend);
  EXPECT_EQ(
      ToHex(r.outer()),
      ToHex(Build().Ipv4({.src = 0, .dst = kRemote4, .protocol = 4}).Raw(InnerIcmp()).ToBytes()));
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
