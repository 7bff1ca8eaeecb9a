// Multipoint tunnels in the packet core: one device, many peers. A packet goes to the peer whose
// allowed prefixes hold its inner destination (longest match, with that peer's key), or is
// answered with ICMP destination unreachable; what is received must come from a peer's
// underlay address with an inner source that peer may send from. Path MTU and keepalives are
// per peer, and housekeeping visits only the peers that have something due. Over fou the
// tunnel's UDP senders are not connected: each send names its peer and the fou port.
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <memory>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dataplane/packet/byte_order.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

using Verdict = PacketCore::DeviceVerdict;

InnerPrefix Prefix4(uint32_t network, int length) {
  InnerPrefix p;
  StoreBe32(p.bytes.data(), network);
  p.length = length;
  return p;
}
InnerPrefix Prefix6(const Ipv6Address& network, int length) {
  InnerPrefix p;
  std::memcpy(p.bytes.data(), network.data(), 16);
  p.length = length;
  p.v6 = true;
  return p;
}

EnginePeer Peer(uint32_t id, OuterAddress underlay, std::vector<InnerPrefix> allowed) {
  EnginePeer p;
  p.id = id;
  p.underlay = underlay;
  p.allowed = std::make_shared<const std::vector<InnerPrefix>>(std::move(allowed));
  p.stats = std::make_shared<PeerStats>(1);
  return p;
}

// A multipoint GRE tunnel from kLocal4 with output key 5 (input key none).
EngineTunnel Multipoint(std::vector<EnginePeer> peers, TunnelMode mode = TunnelMode::kGre) {
  EngineTunnel t = MakeTunnel(mode, "mp0");
  t.encap.remote = OuterAddress();
  t.multipoint = true;
  if (mode == TunnelMode::kGre) {
    t.encap.has_key = true;
    t.encap.key = 5;
  }
  t.peers = std::move(peers);
  return t;
}

Bytes Inner4(uint32_t src, uint32_t dst, size_t payload = 8) {
  return Build().Ipv4({.src = src, .dst = dst}).Icmp({}).Payload(payload).ToBytes();
}

// 10.0.0.0/8 is peer 1's (at 198.18.0.2), 10.2.0.0/16 inside it peer 2's (at 198.18.0.3,
// key 9).
constexpr uint32_t kPeer1 = kRemote4;
constexpr uint32_t kPeer2 = kOther4;
std::vector<EnginePeer> TwoPeers() {
  std::vector<EnginePeer> peers = {Peer(1, kPeer1, {Prefix4(0x0A000000, 8)}),
                                   Peer(2, kPeer2, {Prefix4(0x0A020000, 16)})};
  peers[1].has_key = true;
  peers[1].key = 9;
  return peers;
}

uint32_t DestinationOf(const EncapResult& out) {
  EXPECT_EQ(out.destination_len, sizeof(sockaddr_in));
  sockaddr_in a{};
  std::memcpy(&a, out.destination, sizeof a);
  EXPECT_EQ(a.sin_family, AF_INET);
  return ntohl(a.sin_addr.s_addr);
}

TEST(Multipoint, SendGoesToTheLongestMatchWithItsKey) {
  CoreHarness h;
  EngineTunnel config = Multipoint(TwoPeers());
  TunnelDatapath& t = h.Add(config);
  const Bytes to_peer2 = Inner4(kInnerSrc4, 0x0A020001);  // 10.2.0.1: the /16 inside the /8
  const Bytes to_peer1 = Inner4(kInnerSrc4, 0x0A030001);  // 10.3.0.1: the /8 alone

  CoreHarness::DeviceRead r2 = h.Read(t, to_peer2);
  ASSERT_EQ(r2.verdict, Verdict::kSend);
  EXPECT_EQ(ToHex(r2.outer()), ToHex(Build()
                                         .Ipv4({.src = kLocal4, .dst = kPeer2, .protocol = 47})
                                         .Gre({.key = 9})
                                         .Raw(to_peer2)
                                         .ToBytes()));
  EXPECT_EQ(DestinationOf(r2.out), kPeer2);

  CoreHarness::DeviceRead r1 = h.Read(t, to_peer1);
  ASSERT_EQ(r1.verdict, Verdict::kSend);
  EXPECT_EQ(ToHex(r1.outer()),
            ToHex(Build()
                      .Ipv4({.src = kLocal4, .dst = kPeer1, .protocol = 47})
                      .Gre({.key = 5})  // the tunnel's key: peer 1 has none of its own
                      .Raw(to_peer1)
                      .ToBytes()));
  EXPECT_EQ(DestinationOf(r1.out), kPeer1);
  EXPECT_NE(r1.out.peer, r2.out.peer);

  // Counted on the tunnel (the device's totals) and on each peer.
  t.TransmitDone(r2.frame, to_peer2.size(), static_cast<int>(r2.out.len), r2.out.peer);
  t.TransmitDone(r1.frame, to_peer1.size(), static_cast<int>(r1.out.len), r1.out.peer);
  t.TransmitDone(r1.frame, to_peer1.size(), static_cast<int>(r1.out.len), r1.out.peer);
  EXPECT_EQ(t.counters().tx_packets.Get(), 3u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_packets), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_bytes), 2 * to_peer1.size());
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::tx_packets), 1u);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
}

// The tunnel's own outer packet to a peer, routed back into the device (a route to the peer's
// underlay through the tunnel), is a loop: dropped, on the tunnel and on that peer. One check
// serves every peer, each with its own underlay.
TEST(Multipoint, OwnOuterPacketRoutedBackIsALoopOfItsPeer) {
  CoreHarness h;
  // Peer 1's allowed prefixes hold its own underlay address (198.18.0.0/16), peer 2's its.
  std::vector<EnginePeer> peers = {Peer(1, kPeer1, {Prefix4(kPeer1 & 0xFFFF0000, 16)}),
                                   Peer(2, kPeer2, {Prefix4(kPeer2, 32)})};
  EngineTunnel config = Multipoint(peers);
  TunnelDatapath& t = h.Add(config);
  const Bytes inner = Inner4(kInnerSrc4, 0x0A000001);
  const auto outer_to = [&](uint32_t peer) {
    return Build().Ipv4({.src = kLocal4, .dst = peer, .protocol = 47}).Gre({.key = 5}).Raw(inner);
  };

  EXPECT_EQ(h.Read(t, outer_to(kPeer1).ToBytes()).verdict, Verdict::kDone);
  EXPECT_EQ(h.Read(t, outer_to(kPeer2).ToBytes()).verdict, Verdict::kDone);
  EXPECT_EQ(t.counters().tx_drops[static_cast<int>(DropReason::kLoop)].Get(), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_drops), 1u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::tx_drops), 1u);

  // GRE from us to another address in peer 1's prefixes is traffic for peer 1, not a loop.
  const Bytes elsewhere = Build()
                              .Ipv4({.src = kLocal4, .dst = kPeer1 + 7, .protocol = 47})
                              .Gre({.key = 5})
                              .Raw(inner)
                              .ToBytes();
  CoreHarness::DeviceRead r = h.Read(t, elsewhere);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  EXPECT_EQ(DestinationOf(r.out), kPeer1);
  EXPECT_EQ(t.counters().tx_drops[static_cast<int>(DropReason::kLoop)].Get(), 2u);
}

TEST(Multipoint, NoPeerIsAnsweredWithHostUnreachableIntoTheDevice) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(Multipoint(TwoPeers()));
  const Bytes nowhere = Inner4(kInnerSrc4, 0xC0A80101);  // 192.168.1.1: no peer's
  CoreHarness::DeviceRead r = h.Read(t, nowhere);
  EXPECT_EQ(r.verdict, Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kNoPeer), 1u);
  EXPECT_TRUE(h.io.underlay_sends.empty());
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  const Bytes& icmp = h.io.device_writes[0].packet;
  EXPECT_EQ(h.io.device_writes[0].fd, 7);
  ASSERT_EQ(icmp.size(), 20u + 8u + nowhere.size());
  EXPECT_EQ(icmp[9], 1) << "ICMP";
  EXPECT_EQ(LoadBe32(icmp.data() + 12), 0xC0A80101u) << "from the unreachable destination";
  EXPECT_EQ(LoadBe32(icmp.data() + 16), kInnerSrc4) << "to the sender";
  EXPECT_EQ(icmp[20], 3) << "destination unreachable";
  EXPECT_EQ(icmp[21], 1) << "host unreachable";
  EXPECT_EQ(Bytes(icmp.begin() + 28, icmp.end()), nowhere) << "the packet quoted";
  EXPECT_EQ(RefChecksum(icmp.data() + 20, icmp.size() - 20), 0);
}

// As the kernel limits its ICMP errors: a burst of 50, then one a millisecond.
TEST(Multipoint, NoPeerAnswersAreLimitedAndEveryPacketCounted) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(Multipoint(TwoPeers()));
  const Bytes nowhere = Inner4(kInnerSrc4, 0xC0A80101);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(h.Read(t, nowhere).verdict, Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kNoPeer), 200u);
  EXPECT_EQ(h.io.device_writes.size(), 50u) << "answers beyond the burst, with no time passed";
}

TEST(Multipoint, NoPeerForAGroupIsCountedButNotAnswered) {
  CoreHarness h;
  TunnelDatapath& t = h.Add(Multipoint(TwoPeers()));
  EXPECT_EQ(h.Read(t, Inner4(kInnerSrc4, 0xE00000FB)).verdict, Verdict::kDone);  // 224.0.0.251
  EXPECT_EQ(h.Read(t, Inner4(kInnerSrc4, 0xFFFFFFFF)).verdict, Verdict::kDone);
  const Bytes solicitation =
      Build().Ipv6({.dst = V6(0xff02, 0, 2)}).Icmpv6({.type = 133}).ToBytes();
  EXPECT_EQ(h.Read(t, solicitation).verdict, Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kNoPeer), 3u);
  EXPECT_TRUE(h.io.device_writes.empty()) << "an ICMP error for a group's packet";
  EXPECT_TRUE(h.io.underlay_sends.empty());
}

TEST(Multipoint, Ipv6NoPeerIsAnsweredWithAddressUnreachable) {
  CoreHarness h;
  EngineTunnel config =
      Multipoint({Peer(1, Outer6(kRemote6), {Prefix6(V6(0xfd20, 0, 0), 32)})}, TunnelMode::kIp6gre);
  TunnelDatapath& t = h.Add(config);
  const Bytes to_peer = InnerIcmp6();  // fd10::1 -> fd20::1
  CoreHarness::DeviceRead sent = h.Read(t, to_peer);
  ASSERT_EQ(sent.verdict, Verdict::kSend);
  EXPECT_EQ(sent.out.destination_len, sizeof(sockaddr_in6));

  const Bytes nowhere = Build().Ipv6({.dst = V6(0xfd30, 0, 1)}).Icmpv6({.type = 128}).ToBytes();
  EXPECT_EQ(h.Read(t, nowhere).verdict, Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kNoPeer), 1u);
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  const Bytes& icmp = h.io.device_writes[0].packet;
  ASSERT_GE(icmp.size(), 48u);
  EXPECT_EQ(icmp[6], 58) << "ICMPv6";
  EXPECT_EQ(Bytes(icmp.begin() + 8, icmp.begin() + 24),
            Bytes(nowhere.begin() + 24, nowhere.begin() + 40));
  EXPECT_EQ(icmp[40], 1) << "destination unreachable";
  EXPECT_EQ(icmp[41], 3) << "address unreachable";
}

TEST(Multipoint, ReceiveWantsAPeerAndASourceItMaySendFrom) {
  CoreHarness h;
  EngineTunnel config = Multipoint(TwoPeers());
  TunnelDatapath& t = h.Add(config);
  auto from = [](uint32_t outer_src, uint32_t inner_src) {
    return Build()
        .Ipv4({.src = outer_src, .dst = kLocal4, .protocol = 47})
        .Gre({})
        .Raw(Inner4(inner_src, 0x0A090001))
        .ToBytes();
  };
  // Not a peer's underlay address.
  EXPECT_FALSE(h.ReceiveIpv4(from(0xC6120009, 0x0A030001)).deliver);
  EXPECT_EQ(RxDrops(t, DropReason::kUnknownPeer), 1u);
  // Peer 1 speaking for 10.2.0.0/16, peer 2's (the longer match): spoofed.
  EXPECT_FALSE(h.ReceiveIpv4(from(kPeer1, 0x0A020007)).deliver);
  EXPECT_EQ(RxDrops(t, DropReason::kSpoofedSource), 1u);
  // Nor from outside every prefix.
  EXPECT_FALSE(h.ReceiveIpv4(from(kPeer2, 0xAC100001)).deliver);
  EXPECT_EQ(RxDrops(t, DropReason::kSpoofedSource), 2u);
  // And each on the peer that sent it, as its status shows.
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::rx_drops), 1u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::rx_drops), 1u);
  EXPECT_EQ(h.core.counters().drops[static_cast<int>(DropReason::kNoTunnel)].Get(), 0u)
      << "the tunnel takes any outer source";

  // Each from its own.
  CoreHarness::Receive r1 = h.ReceiveIpv4(from(kPeer1, 0x0A030001));
  ASSERT_TRUE(r1.deliver);
  EXPECT_EQ(r1.delivery.tunnel, &t);
  t.DeviceWriteDone(r1.delivery.inner_len, static_cast<int>(r1.delivery.len));
  CoreHarness::Receive r2 = h.ReceiveIpv4(from(kPeer2, 0x0A020007));
  ASSERT_TRUE(r2.deliver);
  t.DeviceWriteDone(r2.delivery.inner_len, static_cast<int>(r2.delivery.len));
  EXPECT_EQ(t.counters().rx_packets.Get(), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::rx_packets), 1u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::rx_bytes), r1.delivery.inner_len);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::rx_packets), 1u);
  EXPECT_NE(config.peers[0].stats->last_receive_unix_nanos.load(), 0);
}

TEST(Multipoint, ARemovedPeersTrafficIsDroppedAndTheOthersGoOn) {
  CoreHarness h;
  EngineTunnel config = Multipoint(TwoPeers());
  TunnelDatapath& t = h.Add(config);
  const Bytes to_peer2 = Inner4(kInnerSrc4, 0x0A020001);
  CoreHarness::DeviceRead in_flight = h.Read(t, to_peer2);
  ASSERT_EQ(in_flight.verdict, Verdict::kSend);

  ASSERT_TRUE(h.core.ChangePeers("mp0", {}, {2}).ok());
  EXPECT_EQ(t.peer_count(), 1u);
  // A send prepared before the removal completes after it: counted on the tunnel, on no peer.
  EXPECT_EQ(t.FindPeer(2), nullptr);
  // Its prefix is peer 1's /8 now.
  CoreHarness::DeviceRead now = h.Read(t, to_peer2);
  ASSERT_EQ(now.verdict, Verdict::kSend);
  EXPECT_EQ(DestinationOf(now.out), kPeer1);
  // A new peer in the freed slot is not the one the old send names.
  ASSERT_TRUE(h.core.ChangePeers("mp0", {Peer(3, 0xC6120004, {Prefix4(0x0A050000, 16)})}, {}).ok());
  t.TransmitDone(in_flight.frame, to_peer2.size(), static_cast<int>(in_flight.out.len),
                 in_flight.out.peer);
  EXPECT_EQ(t.counters().tx_packets.Get(), 1u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::tx_packets), 0u);
  EXPECT_EQ(t.FindPeer(3)->stats->Sum(&PeerCounters::tx_packets), 0u);

  // What it sends is from no peer any more.
  const Bytes from_peer2 = Build()
                               .Ipv4({.src = kPeer2, .dst = kLocal4, .protocol = 47})
                               .Gre({})
                               .Raw(Inner4(0x0A020007, 0x0A090001))
                               .ToBytes();
  EXPECT_FALSE(h.ReceiveIpv4(from_peer2).deliver);
  EXPECT_EQ(RxDrops(t, DropReason::kUnknownPeer), 1u);
  // Removing it again is nothing to do; an unknown tunnel or a point-to-point one is refused.
  EXPECT_TRUE(h.core.ChangePeers("mp0", {}, {2}).ok());
  EXPECT_EQ(h.core.ChangePeers("nope", {}, {2}).code(), absl::StatusCode::kNotFound);
  h.Add(MakeTunnel(TunnelMode::kGre, "p2p", 8));
  EXPECT_EQ(h.core.ChangePeers("p2p", {}, {}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Multipoint, RefusedPeersAreLeftAsTheyWereAndTheRestIsDone) {
  CoreHarness h;
  EngineTunnel config = Multipoint(TwoPeers());
  TunnelDatapath& t = h.Add(config);
  EnginePeer v6 = Peer(3, Outer6(kRemote6), {});  // an IPv6 underlay on an IPv4 tunnel
  EnginePeer taken = Peer(4, 0xC6120005, {Prefix4(0x0A020000, 16)});  // peer 2's prefix
  EnginePeer fine = Peer(5, 0xC6120006, {Prefix4(0x0A060000, 16)});
  absl::Status status = h.core.ChangePeers("mp0", {v6, taken, fine}, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(t.FindPeer(3), nullptr);
  EXPECT_EQ(t.FindPeer(4), nullptr);
  ASSERT_NE(t.FindPeer(5), nullptr);
  EXPECT_EQ(t.peer_count(), 3u);
  EXPECT_EQ(h.core.ChangePeers("mp0", {taken}, {}).code(), absl::StatusCode::kAlreadyExists);
  // A replacement keeps the id and takes the new prefixes and key.
  EnginePeer moved = fine;
  moved.allowed = std::make_shared<const std::vector<InnerPrefix>>(
      std::vector<InnerPrefix>{Prefix4(0x0A070000, 16)});
  moved.has_key = true;
  moved.key = 77;
  ASSERT_TRUE(h.core.ChangePeers("mp0", {moved}, {}).ok());
  CoreHarness::DeviceRead r = h.Read(t, Inner4(kInnerSrc4, 0x0A070001));
  ASSERT_EQ(r.verdict, Verdict::kSend);
  EXPECT_EQ(DestinationOf(r.out), 0xC6120006u);
  EXPECT_EQ(LoadBe32(r.out.packet + 24), 77u) << "its key";
  EXPECT_EQ(DestinationOf(h.Read(t, Inner4(kInnerSrc4, 0x0A060001)).out), kPeer1)
      << "its old prefix falls back to the /8";
}

TEST(Multipoint, TooBigLowersThatPeersPathOnly) {
  CoreHarness h;
  EngineTunnel config = Multipoint(TwoPeers());
  TunnelDatapath& t = h.Add(config);
  const Bytes big = Inner4(kInnerSrc4, 0x0A020001, 1300);  // to peer 2, DF
  CoreHarness::DeviceRead r = h.Read(t, big);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  t.TransmitDone(r.frame, big.size(), -EMSGSIZE, r.out.peer);
  EXPECT_EQ(t.FindPeer(2)->path_mtu, big.size() - 1);
  EXPECT_EQ(config.peers[1].stats->path_mtu.load(), big.size() - 1);
  EXPECT_EQ(t.FindPeer(1)->path_mtu, 0u);
  EXPECT_EQ(config.peers[0].stats->path_mtu.load(), 0u) << "peer 1 never asked, never lowered";
  // The sender was told (frag-needed into the device); peer 1 still takes the same size.
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  EXPECT_EQ(h.io.device_writes[0].packet[20], 3);
  EXPECT_EQ(h.io.device_writes[0].packet[21], 4);
  EXPECT_EQ(h.Read(t, Inner4(kInnerSrc4, 0x0A030001, 1300)).verdict, Verdict::kSend);
  EXPECT_EQ(h.Read(t, big).verdict, Verdict::kDone) << "peer 2's path is smaller now";
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 2u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::tx_drops), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_drops), 0u);
  // A send the underlay refused otherwise: the peer's too.
  CoreHarness::DeviceRead other = h.Read(t, Inner4(kInnerSrc4, 0x0A030001));
  ASSERT_EQ(other.verdict, Verdict::kSend);
  t.TransmitDone(other.frame, 28, -ENOBUFS, other.out.peer);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_drops), 1u);
}

TEST(Multipoint, ASilentPeerGoesDownAndTheOtherStaysAlive) {
  CoreHarness h;
  std::vector<EnginePeer> peers = TwoPeers();
  for (EnginePeer& p : peers) {
    p.keepalive_interval = absl::Seconds(10);
    p.keepalive_retries = 2;
  }
  EngineTunnel config = Multipoint(peers);
  TunnelDatapath& t = h.Add(config);
  // Peer 1 sends our keepalive home: from it to us, empty GRE (our input: no key).
  const Bytes home1 =
      Build()
          .Ipv4({.src = kPeer1, .dst = kLocal4, .protocol = 47, .ttl = 255, .df = false})
          .Gre({.protocol = 0})
          .ToBytes();
  const absl::Time start = absl::Now();
  for (int i = 0; i < 5; ++i) {
    h.core.Tick(start + i * absl::Seconds(10));
    EXPECT_FALSE(h.ReceiveIpv4(home1).deliver);
  }
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 10u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::keepalive_sent), 5u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::keepalive_sent), 5u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::keepalive_replies), 5u);
  EXPECT_TRUE(config.peers[0].stats->peer_alive.load());
  EXPECT_FALSE(config.peers[1].stats->peer_alive.load());
  // Each keepalive went to its own peer, wrapped with its own key, the home packet inside.
  int to_peer2 = 0;
  for (const UnderlaySend& s : h.io.underlay_sends) to_peer2 += s.destination == kPeer2;
  EXPECT_EQ(to_peer2, 5);

  // Peer 2's own keepalive (a packet from it to itself inside) is answered, although its inner
  // source is no prefix of its.
  const Bytes its_keepalive =
      Build()
          .Ipv4({.src = kPeer2, .dst = kLocal4, .protocol = 47})
          .Gre({})
          .Ipv4({.src = kLocal4, .dst = kPeer2, .protocol = 47, .ttl = 255, .df = false})
          .Gre({.protocol = 0})
          .ToBytes();
  h.io.underlay_sends.clear();
  EXPECT_FALSE(h.ReceiveIpv4(its_keepalive).deliver);
  ASSERT_EQ(h.io.underlay_sends.size(), 1u);
  EXPECT_EQ(h.io.underlay_sends[0].destination, OuterAddress(kPeer2));
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::keepalive_answered), 1u);
  EXPECT_EQ(RxDrops(t, DropReason::kSpoofedSource), 0u);
}

TEST(Multipoint, HousekeepingLeavesIdlePeersAlone) {
  CoreHarness h;
  std::vector<EnginePeer> peers;
  for (uint32_t i = 0; i < 2000; ++i) {
    peers.push_back(Peer(i + 1, 0xC6130000 + i, {Prefix4(0x0A000000 | (i << 8), 24)}));
  }
  TunnelDatapath& t = h.Add(Multipoint(peers));
  const absl::Time start = absl::Now();
  h.core.Tick(start);  // each new peer is looked at once
  const uint64_t first = t.peer_visits();
  EXPECT_EQ(first, 2000u);
  for (int i = 1; i <= 200; ++i) h.core.Tick(start + i * absl::Milliseconds(50));
  EXPECT_EQ(t.peer_visits(), first) << "nothing is due for an idle peer";
  EXPECT_EQ(h.io.route_probes, 0);

  // One peer sends: its route is asked at the next tick, and it alone is visited.
  ASSERT_EQ(h.Read(t, Inner4(kInnerSrc4, 0x0A000701)).verdict, Verdict::kSend);
  h.core.Tick(start + absl::Seconds(11));
  EXPECT_EQ(h.io.route_probes, 1);
  EXPECT_EQ(t.peer_visits(), first + 1);
  EXPECT_EQ(t.FindPeer(8)->path_mtu, h.io.route_mtu - 28) << "1500 less IPv4 and keyed GRE";
}

// ---- Over fou (GRE-in-UDP, IPIP-in-UDP) ----

constexpr uint16_t kFouPort = 4754;

// TwoPeers over GRE-in-UDP to port 4754, from source port `sport` (0: per flow).
EngineTunnel FouMultipoint(uint16_t sport, std::vector<EnginePeer> peers = TwoPeers()) {
  EngineTunnel t = Multipoint(std::move(peers));
  t.encap.udp_dport = kFouPort;
  t.encap.udp_sport = sport;
  return t;
}

// The address and port a fou send named.
std::pair<uint32_t, uint16_t> SentTo(const FouSend& send) {
  EXPECT_TRUE(send.destination.has_value()) << "an unconnected sender's send names its peer";
  if (!send.destination) return {0, 0};
  EXPECT_EQ(send.destination->sin_family, AF_INET);
  return {ntohl(send.destination->sin_addr.s_addr), ntohs(send.destination->sin_port)};
}

TEST(Multipoint, FouSendersAreNotConnectedAndEachSendNamesItsPeer) {
  CoreHarness h;
  EngineTunnel config = FouMultipoint(/*sport=*/0);
  TunnelDatapath& t = h.Add(config);
  ASSERT_EQ(h.io.fou_opened.size(), 4u);
  EXPECT_EQ(h.io.fou_connected, std::vector<bool>(4, false));

  const Bytes to_peer2 = Inner4(kInnerSrc4, 0x0A020001);
  const Bytes to_peer1 = Inner4(kInnerSrc4, 0x0A030001);
  CoreHarness::DeviceRead r2 = h.Read(t, to_peer2);
  CoreHarness::DeviceRead r1 = h.Read(t, to_peer1);
  ASSERT_EQ(r2.verdict, Verdict::kSend);
  ASSERT_EQ(r1.verdict, Verdict::kSend);
  // The outer packet as the raw paths would send it: UDP to the peer, its own key inside.
  const uint16_t sport2 = LoadBe16(r2.out.packet + 20);
  EXPECT_EQ(ToHex(r2.outer()), ToHex(Build()
                                         .Ipv4({.src = kLocal4, .dst = kPeer2, .protocol = 17})
                                         .Udp({.sport = sport2, .dport = kFouPort})
                                         .Gre({.key = 9})
                                         .Raw(to_peer2)
                                         .ToBytes()));

  SegmentBatch batch;
  batch.frames[0] = r2.frame;
  batch.lens[0] = r2.read.len;
  batch.packets[0] = r2.out;
  batch.frames[1] = r1.frame;
  batch.lens[1] = r1.read.len;
  batch.packets[1] = r1.out;
  h.core.SendPreparedNow(t, batch, 2);
  ASSERT_EQ(h.io.fou_sends.size(), 2u);
  EXPECT_EQ(SentTo(h.io.fou_sends[0]), std::make_pair(kPeer2, kFouPort));
  EXPECT_EQ(h.io.fou_sends[0].sender, h.io.fou_opened.at(sport2 % 4).handle);
  EXPECT_EQ(ToHex(h.io.fou_sends[0].payloads.at(0)),
            ToHex(Build().Gre({.key = 9}).Raw(to_peer2).ToBytes()));
  EXPECT_EQ(SentTo(h.io.fou_sends[1]), std::make_pair(kPeer1, kFouPort));
  EXPECT_EQ(ToHex(h.io.fou_sends[1].payloads.at(0)),
            ToHex(Build().Gre({.key = 5}).Raw(to_peer1).ToBytes()));
  EXPECT_TRUE(h.io.underlay_sends.empty());
  EXPECT_EQ(t.counters().tx_packets.Get(), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::tx_packets), 1u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::tx_packets), 1u);
}

TEST(Multipoint, FouGsoRunsStopWhereThePeerChanges) {
  CoreHarness h;
  // One sender (a fixed source port), equal sizes (both peers' GRE headers carry a key): the
  // peer alone splits the runs.
  TunnelDatapath& t = h.Add(FouMultipoint(/*sport=*/5555));
  ASSERT_EQ(h.io.fou_opened.size(), 1u);
  const uint32_t destinations[] = {0x0A030001, 0x0A030002, 0x0A020001, 0x0A020002, 0x0A030003};
  std::vector<CoreHarness::DeviceRead> reads;
  SegmentBatch batch;
  for (size_t i = 0; i < std::size(destinations); ++i) {
    reads.push_back(h.Read(t, Inner4(kInnerSrc4, destinations[i], 500)));
    ASSERT_EQ(reads.back().verdict, Verdict::kSend);
    batch.frames[i] = reads.back().frame;
    batch.lens[i] = reads.back().read.len;
    batch.packets[i] = reads.back().out;
  }
  h.core.SendPreparedNow(t, batch, std::size(destinations));
  ASSERT_EQ(h.io.fou_sends.size(), 3u);
  const size_t payload = 8 + 20 + 8 + 500;  // keyed GRE, IPv4, ICMP
  EXPECT_EQ(SentTo(h.io.fou_sends[0]), std::make_pair(kPeer1, kFouPort));
  EXPECT_EQ(h.io.fou_sends[0].payloads.size(), 2u);
  EXPECT_EQ(h.io.fou_sends[0].gso_size, payload);
  EXPECT_EQ(SentTo(h.io.fou_sends[1]), std::make_pair(kPeer2, kFouPort));
  EXPECT_EQ(h.io.fou_sends[1].payloads.size(), 2u);
  EXPECT_EQ(h.io.fou_sends[1].gso_size, payload);
  EXPECT_EQ(SentTo(h.io.fou_sends[2]), std::make_pair(kPeer1, kFouPort));
  EXPECT_EQ(h.io.fou_sends[2].payloads.size(), 1u);
  EXPECT_EQ(h.io.fou_sends[2].gso_size, 0);
  for (const FouSend& send : h.io.fou_sends) {
    for (const Bytes& p : send.payloads) {
      const uint32_t key = SentTo(send).first == kPeer2 ? 9 : 5;
      EXPECT_EQ(LoadBe32(p.data() + 4), key) << "each payload in the run of its own peer";
    }
  }
  EXPECT_EQ(t.counters().tx_packets.Get(), 5u);
}

TEST(Multipoint, FouMessageTooLongLowersThatPeersPath) {
  CoreHarness h;
  EngineTunnel config = FouMultipoint(/*sport=*/5555);
  TunnelDatapath& t = h.Add(config);
  const Bytes big = Inner4(kInnerSrc4, 0x0A020001, 1300);  // to peer 2, DF
  CoreHarness::DeviceRead r = h.Read(t, big);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  // An unconnected sender has no ICMP error queued on it: the refusal is the packet's size, so
  // nothing is sent again (as a connected point-to-point sender's would be).
  t.TransmitDone(r.frame, big.size(), -EMSGSIZE, r.out.peer);
  EXPECT_TRUE(h.io.fou_sends.empty());
  EXPECT_EQ(t.FindPeer(2)->path_mtu, big.size() - 1);
  EXPECT_EQ(config.peers[1].stats->path_mtu.load(), big.size() - 1);
  EXPECT_EQ(t.FindPeer(1)->path_mtu, 0u);
  ASSERT_EQ(h.io.device_writes.size(), 1u);
  EXPECT_EQ(h.io.device_writes[0].packet[20], 3) << "frag-needed to the sender";
  EXPECT_EQ(h.io.device_writes[0].packet[21], 4);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
}

TEST(Multipoint, FouTooBigQuotingAPeersPacketLowersItsPath) {
  CoreHarness h;
  h.io.route_mtu = 1500;
  EngineTunnel config = FouMultipoint(/*sport=*/5555);
  TunnelDatapath& t = h.Add(config);
  // Peers' routes are asked once they are sent to.
  ASSERT_EQ(h.Read(t, Inner4(kInnerSrc4, 0x0A020001)).verdict, Verdict::kSend);
  ASSERT_EQ(h.Read(t, Inner4(kInnerSrc4, 0x0A030001)).verdict, Verdict::kSend);
  h.core.Tick(absl::Now());
  const uint32_t overhead = 20 + 8 + 8;  // IPv4, UDP, keyed GRE
  ASSERT_EQ(t.FindPeer(2)->path_mtu, 1500 - overhead);
  const Bytes quote = Build()
                          .Ipv4({.src = kLocal4, .dst = kPeer2, .protocol = 17, .total_len = 1500})
                          .Udp({.sport = 5555, .dport = kFouPort})
                          .Gre({.key = 9})
                          .ToBytes();
  ASSERT_TRUE(h.TakeUnderlayTooBig(quote, 1300));
  EXPECT_EQ(t.FindPeer(2)->path_mtu, 1300 - overhead);
  EXPECT_EQ(t.FindPeer(1)->path_mtu, 1500 - overhead);
}

TEST(Multipoint, FouReceiveWantsAPeerAndASourceItMaySendFrom) {
  CoreHarness h;
  EngineTunnel config = FouMultipoint(/*sport=*/0);
  TunnelDatapath& t = h.Add(config);
  auto payload = [](uint32_t inner_src) {
    return Build().Gre({}).Raw(Inner4(inner_src, 0x0A090001)).ToBytes();
  };
  h.ReceiveFou(payload(0x0A030001), 47, {.source = 0xC6120009});
  EXPECT_EQ(RxDrops(t, DropReason::kUnknownPeer), 1u);
  h.ReceiveFou(payload(0x0A020007), 47, {.source = kPeer1});
  EXPECT_EQ(RxDrops(t, DropReason::kSpoofedSource), 1u);
  EXPECT_TRUE(h.io.device_writes.empty());
  EXPECT_EQ(h.core.counters().drops[static_cast<int>(DropReason::kNoTunnel)].Get(), 0u)
      << "the tunnel takes any outer source";

  h.ReceiveFou(payload(0x0A030001), 47, {.source = kPeer1});
  h.ReceiveFou(payload(0x0A020007), 47, {.source = kPeer2});
  ASSERT_EQ(h.io.device_writes.size(), 2u);
  EXPECT_EQ(ToHex(h.io.device_writes[0].packet), ToHex(Inner4(0x0A030001, 0x0A090001)));
  EXPECT_EQ(ToHex(h.io.device_writes[1].packet), ToHex(Inner4(0x0A020007, 0x0A090001)));
  EXPECT_EQ(t.counters().rx_packets.Get(), 2u);
  EXPECT_EQ(config.peers[0].stats->Sum(&PeerCounters::rx_packets), 1u);
  EXPECT_EQ(config.peers[1].stats->Sum(&PeerCounters::rx_packets), 1u);
}

TEST(Multipoint, FouKeepaliveGoesToItsPeer) {
  CoreHarness h;
  std::vector<EnginePeer> peers = TwoPeers();
  peers[1].keepalive_interval = absl::Seconds(10);
  TunnelDatapath& t = h.Add(FouMultipoint(/*sport=*/5555, peers));
  h.core.Tick(absl::Now());
  ASSERT_EQ(h.io.underlay_sends.size(), 1u);
  const UnderlaySend& sent = h.io.underlay_sends[0];
  EXPECT_EQ(sent.destination, OuterAddress(kPeer2));
  ASSERT_GE(sent.packet.size(), 28u);
  EXPECT_EQ(sent.packet[9], 17) << "UDP";
  EXPECT_EQ(LoadBe32(sent.packet.data() + 16), kPeer2);
  EXPECT_EQ(LoadBe16(sent.packet.data() + 22), kFouPort);
  EXPECT_EQ(t.counters().keepalive_sent.Get(), 1u);
}

TEST(Multipoint, EngineTunnelChecks) {
  EngineTunnel ok = Multipoint(TwoPeers());
  EXPECT_TRUE(CheckEngineTunnel(ok).ok());
  EngineTunnel with_remote = ok;
  with_remote.encap.remote = kRemote4;
  EXPECT_EQ(CheckEngineTunnel(with_remote).code(), absl::StatusCode::kInvalidArgument);
  EngineTunnel tap = Multipoint({}, TunnelMode::kGretap);
  EXPECT_EQ(CheckEngineTunnel(tap).code(), absl::StatusCode::kInvalidArgument);
  EngineTunnel fou = ok;
  fou.encap.udp_dport = 4754;
  EXPECT_TRUE(CheckEngineTunnel(fou).ok());
  EngineTunnel sequence = ok;
  sequence.encap.sequence = true;
  EXPECT_EQ(CheckEngineTunnel(sequence).code(), absl::StatusCode::kInvalidArgument);
  EngineTunnel v6 = Multipoint({}, TunnelMode::kIp6tnl);
  v6.encap.local = OuterAddress();
  EXPECT_EQ(CheckEngineTunnel(v6).code(), absl::StatusCode::kInvalidArgument);
  EngineTunnel p2p_with_peers = MakeTunnel(TunnelMode::kGre);
  p2p_with_peers.peers = TwoPeers();
  EXPECT_EQ(CheckEngineTunnel(p2p_with_peers).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
