// Keepalives in the packet core: a tick sends the tunnel's keepalive (a packet the peer routes
// straight back to us) through PacketIo, its reply is counted and not delivered, a peer that
// stops answering is marked gone, and the peer's own keepalives are sent home.
#include <cerrno>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

constexpr absl::Duration kInterval = absl::Seconds(10);

// The IPv4 packet the peer is to send home: from it to us, TTL 255, no DF, empty (GRE with
// protocol type 0).
Bytes Home4(uint8_t protocol, const GreFields& gre = {.protocol = 0}) {
  PacketBuilder b;
  b.Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = protocol, .ttl = 255, .df = false});
  if (protocol == 47) b.Gre(gre);
  return b.ToBytes();
}
// Our outer IPv4 header around it: the TTL inherited from the home packet, DF.
Ipv4Fields Sent4(uint8_t protocol) {
  return {.src = kLocal4, .dst = kRemote4, .protocol = protocol, .ttl = 255};
}
// The same over IPv6: hop limit 64, the encapsulation-limit option (no flow label of its own).
Bytes Home6(uint8_t protocol) {
  PacketBuilder b;
  b.Ipv6({.src = kRemote6, .dst = kLocal6, .next_header = 60})
      .EncapLimit({.next_header = protocol});
  if (protocol == 47) b.Gre({.protocol = 0});
  return b.ToBytes();
}
Ipv6Fields Sent6(const Bytes& home) {
  return {.src = kLocal6, .dst = kRemote6, .next_header = 60, .flow_label = AutoFlowLabel(home)};
}

struct KeepaliveCase {
  std::string name = "";
  TunnelMode mode = TunnelMode::kGre;
  std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {};
  // What the peer is to send home (its outer packet, as our receive side wants it), and the
  // keepalive as sent: that packet inside ours.
  Bytes home = {};
  Bytes sent = {};
  // How the home packet arrives at us: the raw socket's protocol, and for IPv6 what follows
  // the IPv6 header.
  bool ipv6 = false;
  uint8_t protocol = 47;
  Bytes received = {};
};

void PrintTo(const KeepaliveCase& c, std::ostream* os) { *os << c.name; }

std::vector<KeepaliveCase> Cases() {
  std::vector<KeepaliveCase> cases;
  {
    // The home packet: from the peer to us, TTL 255, no DF, GRE protocol type 0, empty.
    const Bytes home = Home4(47);
    cases.push_back({.name = "gre",
                     .home = home,
                     .sent = Build().Ipv4(Sent4(47)).Gre({}).Raw(home).ToBytes(),
                     .received = home});
  }
  {
    // What our receive side requires (key 42, checksum) is in the home packet; what we send
    // with (key 7) is on the outside.
    const Bytes home = Home4(47, {.protocol = 0, .checksum = true, .key = 42});
    cases.push_back({.name = "gre_keys_and_checksum",
                     .configure =
                         [](EngineTunnel& t) {
                           t.encap.has_key = true;
                           t.encap.key = 7;
                           t.has_input_key = true;
                           t.input_key = 42;
                           t.input_checksum = true;
                         },
                     .home = home,
                     .sent = Build().Ipv4(Sent4(47)).Gre({.key = 7}).Raw(home).ToBytes(),
                     .received = home});
  }
  {
    // Over GRE-in-UDP the keepalive goes UDP-wrapped; what comes home is plain GRE.
    const Bytes home = Home4(47);
    cases.push_back({.name = "gre_in_udp",
                     .configure =
                         [](EngineTunnel& t) {
                           t.encap.udp_dport = 4754;
                           t.encap.udp_sport = 5555;
                         },
                     .home = home,
                     .sent = Build()
                                 .Ipv4(Sent4(17))
                                 .Udp({.sport = 5555, .dport = 4754})
                                 .Gre({})
                                 .Raw(home)
                                 .ToBytes(),
                     .received = home});
  }
  {
    const Bytes home = Home4(4);
    cases.push_back({.name = "ipip",
                     .mode = TunnelMode::kIpip,
                     .home = home,
                     .sent = Build().Ipv4(Sent4(4)).Raw(home).ToBytes(),
                     .protocol = 4,
                     .received = home});
  }
  {
    const Bytes home = Home6(47);
    cases.push_back({.name = "ip6gre",
                     .mode = TunnelMode::kIp6gre,
                     .home = home,
                     .sent = Build()
                                 .Ipv6(Sent6(home))
                                 .EncapLimit({.next_header = 47})
                                 .Gre({.protocol = 0x86DD})
                                 .Raw(home)
                                 .ToBytes(),
                     .ipv6 = true,
                     .received = Build().Gre({.protocol = 0}).ToBytes()});
  }
  {
    const Bytes home = Home6(41);
    cases.push_back(
        {.name = "ip6tnl",
         .mode = TunnelMode::kIp6tnl,
         .home = home,
         .sent = Build().Ipv6(Sent6(home)).EncapLimit({.next_header = 41}).Raw(home).ToBytes(),
         .ipv6 = true,
         .protocol = 41,
         .received = {}});
  }
  return cases;
}

class KeepaliveTable : public ::testing::TestWithParam<KeepaliveCase> {};

TEST_P(KeepaliveTable, SentAtTheTickAndItsReplyCounted) {
  const KeepaliveCase& c = GetParam();
  CoreHarness h;
  EngineTunnel config = MakeTunnel(c.mode);
  config.keepalive_interval = kInterval;
  c.configure(config);
  TunnelDatapath& t = h.Add(config);
  EXPECT_TRUE(h.io.underlay_sends.empty());  // not before the first tick

  const absl::Time start = absl::Now();
  h.core.Tick(start);
  ASSERT_EQ(h.io.underlay_sends.size(), 1u);
  EXPECT_EQ(h.io.underlay_sends[0].ipv6, IsIpv6UnderlayMode(c.mode));
  EXPECT_EQ(h.io.underlay_sends[0].destination, config.encap.remote);
  EXPECT_EQ(ToHex(h.io.underlay_sends[0].packet), ToHex(c.sent));
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 1u);
  EXPECT_NE(t.stats().last_keepalive_sent_nanos.load(), 0);

  // Not again before the interval is up; then again.
  h.core.Tick(start + kInterval - absl::Milliseconds(1));
  EXPECT_EQ(h.io.underlay_sends.size(), 1u);
  h.core.Tick(start + kInterval);
  EXPECT_EQ(h.io.underlay_sends.size(), 2u);
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 2u);

  // The peer sent it home: a reply, counted, written nowhere, no drop.
  CoreHarness::Receive r =
      c.ipv6 ? h.ReceiveIpv6(c.received, c.protocol) : h.ReceiveIpv4(c.received, c.protocol);
  EXPECT_FALSE(r.deliver);
  EXPECT_EQ(t.counters().keepalive_replies.Get(), 1u);
  EXPECT_NE(t.stats().last_keepalive_reply_unix_nanos.load(), 0);
  EXPECT_TRUE(t.stats().peer_alive.load());
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
  EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
  EXPECT_TRUE(h.io.device_writes.empty());
  EXPECT_EQ(h.io.underlay_sends.size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Modes, KeepaliveTable, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<KeepaliveCase>& info) {
                           return info.param.name;
                         });

TEST(Keepalive, PeerIsGoneAfterTheRetriesAndBackWithAReply) {
  CoreHarness h;
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  config.keepalive_interval = kInterval;
  config.keepalive_retries = 3;
  TunnelDatapath& t = h.Add(config);
  const absl::Time start = absl::Now();
  // Three keepalives unanswered are still within the retries ...
  for (int i = 0; i < 3; ++i) {
    h.core.Tick(start + i * kInterval);
    EXPECT_TRUE(t.stats().peer_alive.load()) << i;
  }
  // ... the fourth tick finds them all missed.
  h.core.Tick(start + 3 * kInterval);
  EXPECT_FALSE(t.stats().peer_alive.load());
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 4u);

  const Bytes home = Home4(47);
  EXPECT_FALSE(h.ReceiveIpv4(home).deliver);
  EXPECT_TRUE(t.stats().peer_alive.load());
  // The reply resets the count: the next tick does not declare the peer gone again.
  h.core.Tick(start + 4 * kInterval);
  EXPECT_TRUE(t.stats().peer_alive.load());
}

TEST(Keepalive, OnlyWorkerZeroSendsThem) {
  CoreHarness h(CoreOptions{.worker = 1, .workers = 2});
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  config.keepalive_interval = kInterval;
  config.stats = std::make_shared<TunnelStats>(2);
  h.Add(config);
  h.core.Tick(absl::Now());
  h.core.Tick(absl::Now() + 2 * kInterval);
  EXPECT_TRUE(h.io.underlay_sends.empty());
}

TEST(Keepalive, OffMeansNone) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  h.core.Tick(absl::Now());
  h.core.Tick(absl::Now() + absl::Hours(1));
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 0u);
}

// The peer's keepalive: inside its packet, one of ours from us back to it, which is to go
// back to the peer as it is.
Bytes PeersHome() {
  return Build()
      .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 47, .ttl = 255, .df = false})
      .Gre({.protocol = 0})
      .ToBytes();
}
Bytes PeerKeepalive() {
  return Build()
      .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47, .ttl = 255})
      .Gre({})
      .Raw(PeersHome())
      .ToBytes();
}

TEST(Keepalive, PeersKeepaliveIsSentStraightHome) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  CoreHarness::Receive r = h.ReceiveIpv4(PeerKeepalive());
  EXPECT_FALSE(r.deliver);
  ASSERT_EQ(h.io.underlay_sends.size(), 1u);
  EXPECT_EQ(h.io.underlay_sends[0].destination, OuterAddress(kRemote4));
  EXPECT_EQ(ToHex(h.io.underlay_sends[0].packet), ToHex(PeersHome()));
  EXPECT_EQ(t.counters().keepalive_answered.Get(), 1u);
  EXPECT_EQ(t.counters().rx_packets.Get(), 0u);
  EXPECT_TRUE(h.io.device_writes.empty());
}

TEST(Keepalive, PeersKeepaliveThatCannotBeSentIsASendError) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kGre));
  h.io.underlay_errno = ENETUNREACH;
  EXPECT_FALSE(h.ReceiveIpv4(PeerKeepalive()).deliver);
  EXPECT_EQ(h.io.underlay_sends.size(), 1u);
  EXPECT_EQ(t.counters().keepalive_answered.Get(), 0u);
  EXPECT_EQ(RxDrops(t, DropReason::kSendError), 1u);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 1u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
