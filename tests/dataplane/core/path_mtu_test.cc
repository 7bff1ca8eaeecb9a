// Path MTU in the packet core: a frame over the path gets the kernel's answer (ICMP
// fragmentation-needed / packet-too-big written back into the device, or outer IPv4 fragments
// when the inner packet allows them), the route is asked again at the next tick and never on
// the packet path, and ICMP errors from the underlay are believed only when they quote one of
// the tunnel's own packets.
#include <cerrno>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dataplane/packet/icmp.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

using Verdict = PacketCore::DeviceVerdict;

constexpr uint32_t kRouteMtu = 1400;
constexpr uint32_t kGreOverhead = 20 + 4;
constexpr uint32_t kGrePathMtu = kRouteMtu - kGreOverhead;  // 1376

// An IPv4 packet of exactly `len` bytes.
Bytes Inner4Of(size_t len, bool df = true) { return InnerIcmp(len - 28, df); }

// The ICMP fragmentation-needed the core writes into the device about `original`: from the
// original's destination to its source, quoting as much as fits in 576 bytes.
Bytes FragNeeded(const Bytes& original, uint16_t mtu) {
  const size_t quote = std::min<size_t>(original.size(), 576 - 28);
  return Build()
      .Ipv4({.src = kInnerDst4, .dst = kInnerSrc4, .protocol = 1, .df = false})
      .Icmp({.type = 3, .code = 4, .rest = mtu})
      .Raw(Bytes(original.begin(), original.begin() + quote))
      .ToBytes();
}

class PathMtu : public ::testing::Test {
 protected:
  explicit PathMtu(const CoreOptions& options = {}) : h_(options) { h_.io.route_mtu = kRouteMtu; }
  TunnelDatapath& AddGre(std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {}) {
    EngineTunnel config = MakeTunnel(TunnelMode::kGre);
    configure(config);
    return h_.Add(config);
  }
  CoreHarness h_;
};

TEST_F(PathMtu, RouteSetsThePathMtuAtAdd) {
  TunnelDatapath& t = AddGre();
  EXPECT_EQ(h_.io.route_probes, 1);
  EXPECT_EQ(t.stats().path_mtu.load(), kGrePathMtu);
  // A frame of exactly the path MTU goes out whole.
  EXPECT_EQ(h_.Read(t, Inner4Of(kGrePathMtu)).verdict, Verdict::kSend);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
}

TEST_F(PathMtu, DontFragmentOverThePathIsAnsweredIntoTheDevice) {
  TunnelDatapath& t = AddGre();
  const Bytes frame = Inner4Of(kGrePathMtu + 1);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);

  ASSERT_EQ(h_.io.device_writes.size(), 1u);
  EXPECT_EQ(h_.io.device_writes[0].fd, 7);
  EXPECT_FALSE(h_.io.device_writes[0].vnet_header);
  EXPECT_EQ(ToHex(h_.io.device_writes[0].packet), ToHex(FragNeeded(frame, kGrePathMtu)));
  EXPECT_EQ(t.counters().icmp_too_big_sent.Get(), 1u);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 1u);
  EXPECT_TRUE(h_.io.underlay_sends.empty());
  EXPECT_EQ(t.counters().tx_packets.Get(), 0u);

  // Not asked on the packet path, however many packets find the path too small ...
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);
  EXPECT_EQ(h_.io.route_probes, 1);
  // ... but at the next tick, once; the route has grown meanwhile, and the frame fits.
  h_.io.route_mtu = 1500;
  const absl::Time now = absl::Now();
  h_.core.Tick(now);
  EXPECT_EQ(h_.io.route_probes, 2);
  h_.core.Tick(now + absl::Milliseconds(50));
  EXPECT_EQ(h_.io.route_probes, 2);
  EXPECT_EQ(t.stats().path_mtu.load(), 1500 - kGreOverhead);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kSend);
  // And then every probe interval (5 s) as housekeeping.
  h_.core.Tick(now + absl::Seconds(6));
  EXPECT_EQ(h_.io.route_probes, 3);
}

TEST_F(PathMtu, AnIdleTunnelIsNotAskedUntilItSendsAgain) {
  TunnelDatapath& t = AddGre();
  ASSERT_EQ(h_.io.route_probes, 1);
  const absl::Time now = absl::Now();
  // Nothing sent: probe after probe passes without a route question.
  for (int i = 1; i <= 4; ++i) h_.core.Tick(now + absl::Seconds(6 * i));
  EXPECT_EQ(h_.io.route_probes, 1);
  // The route shrank meanwhile. The first packet after the idle spell goes by what was known
  // and has the route asked at the next tick, not on the packet path.
  h_.io.route_mtu = 1300;
  EXPECT_EQ(h_.Read(t, Inner4Of(kGrePathMtu)).verdict, Verdict::kSend);
  EXPECT_EQ(h_.io.route_probes, 1);
  h_.core.Tick(now + absl::Seconds(25));
  EXPECT_EQ(h_.io.route_probes, 2);
  EXPECT_EQ(t.stats().path_mtu.load(), 1300 - kGreOverhead);
}

TEST_F(PathMtu, Ipv6OverThePathIsAnsweredWithPacketTooBig) {
  TunnelDatapath& t = AddGre();
  const Bytes frame = InnerIcmp6(kGrePathMtu + 1 - 48);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);
  ASSERT_EQ(h_.io.device_writes.size(), 1u);
  const size_t quote = 1280 - 48;
  EXPECT_EQ(ToHex(h_.io.device_writes[0].packet),
            ToHex(Build()
                      .Ipv6({.src = kInnerDst6, .dst = kInnerSrc6, .next_header = 58})
                      .Icmpv6({.type = 2, .code = 0, .rest = kGrePathMtu})
                      .Raw(Bytes(frame.begin(), frame.begin() + quote))
                      .ToBytes()));
  EXPECT_EQ(t.counters().icmp_too_big_sent.Get(), 1u);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
}

TEST_F(PathMtu, OffloadDeviceGetsTheErrorBehindAVirtioNetHeader) {
  TunnelDatapath& t = AddGre([](EngineTunnel& c) { c.vnet_header = true; });
  const Bytes frame = Inner4Of(kGrePathMtu + 1);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);
  ASSERT_EQ(h_.io.device_writes.size(), 1u);
  EXPECT_TRUE(h_.io.device_writes[0].vnet_header);
  EXPECT_EQ(ToHex(h_.io.device_writes[0].packet), ToHex(FragNeeded(frame, kGrePathMtu)));
  EXPECT_EQ(t.counters().icmp_too_big_sent.Get(), 1u);
}

TEST_F(PathMtu, ErrorThatCannotBeWrittenIsNotCountedAsSent) {
  TunnelDatapath& t = AddGre();
  h_.io.device_result = -EAGAIN;
  EXPECT_EQ(h_.Read(t, Inner4Of(kGrePathMtu + 1)).verdict, Verdict::kDone);
  EXPECT_EQ(h_.io.device_writes.size(), 1u);
  EXPECT_EQ(t.counters().icmp_too_big_sent.Get(), 0u);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
}

class PathMtuFragments : public PathMtu {
 protected:
  PathMtuFragments() : PathMtu(CoreOptions{.first_fragment_id = 0x1233}) {}
};

TEST_F(PathMtuFragments, WithoutDontFragmentTheOuterPacketIsFragmented) {
  TunnelDatapath& t = AddGre();
  const Bytes frame = Inner4Of(kGrePathMtu + 24, /*df=*/false);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);

  // The outer packet (24 + 1400 bytes) in fragments of at most the route's MTU: 1376 bytes of
  // data (a multiple of 8), then the other 28; DF cleared, one ID from the worker's sequence.
  const Bytes payload = Build().Gre({}).Raw(frame).ToBytes();
  ASSERT_EQ(payload.size(), 1404u);
  const Bytes first = Build()
                          .Ipv4({.src = kLocal4,
                                 .dst = kRemote4,
                                 .protocol = 47,
                                 .id = 0x1234,
                                 .df = false,
                                 .mf = true})
                          .Raw(Bytes(payload.begin(), payload.begin() + 1376))
                          .ToBytes();
  const Bytes second = Build()
                           .Ipv4({.src = kLocal4,
                                  .dst = kRemote4,
                                  .protocol = 47,
                                  .id = 0x1234,
                                  .df = false,
                                  .fragment_offset = 1376 / 8})
                           .Raw(Bytes(payload.begin() + 1376, payload.end()))
                           .ToBytes();
  ASSERT_EQ(h_.io.underlay_sends.size(), 2u);
  for (const UnderlaySend& s : h_.io.underlay_sends) {
    EXPECT_FALSE(s.ipv6);
    EXPECT_EQ(s.destination, OuterAddress(kRemote4));
    EXPECT_LE(s.packet.size(), kRouteMtu);
  }
  EXPECT_EQ(ToHex(h_.io.underlay_sends[0].packet), ToHex(first));
  EXPECT_EQ(ToHex(h_.io.underlay_sends[1].packet), ToHex(second));
  EXPECT_EQ(t.counters().tx_fragmented.Get(), 1u);
  EXPECT_EQ(t.counters().tx_packets.Get(), 1u);
  EXPECT_EQ(t.counters().tx_bytes.Get(), frame.size());
  EXPECT_EQ(AllDrops(t.counters().tx_drops), 0u);
  EXPECT_TRUE(h_.io.device_writes.empty());
  EXPECT_EQ(h_.io.route_probes, 1);

  // The next fragmented packet takes the next ID.
  h_.io.underlay_sends.clear();
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);
  ASSERT_EQ(h_.io.underlay_sends.size(), 2u);
  EXPECT_EQ(h_.io.underlay_sends[0].packet[4], 0x12);
  EXPECT_EQ(h_.io.underlay_sends[0].packet[5], 0x35);
}

TEST_F(PathMtuFragments, FragmentThePathRefusesIsATooBigDrop) {
  TunnelDatapath& t = AddGre();
  h_.io.underlay_errno = EMSGSIZE;
  EXPECT_EQ(h_.Read(t, Inner4Of(kGrePathMtu + 24, false)).verdict, Verdict::kDone);
  EXPECT_EQ(h_.io.underlay_sends.size(), 1u);  // the first refused: the rest not tried
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
  EXPECT_EQ(t.counters().tx_fragmented.Get(), 0u);
  EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
  // The path shrank under us: asked at the next tick.
  h_.core.Tick(absl::Now());
  EXPECT_EQ(h_.io.route_probes, 2);
}

TEST_F(PathMtu, Ipv6UnderlayAnswersEvenWithoutDontFragment) {
  EngineTunnel config = MakeTunnel(TunnelMode::kIp6gre);
  TunnelDatapath& t = h_.Add(config);
  const uint32_t path = kRouteMtu - 40 - 8 - 4;
  EXPECT_EQ(t.stats().path_mtu.load(), path);
  const Bytes frame = Inner4Of(path + 1, /*df=*/false);
  EXPECT_EQ(h_.Read(t, frame).verdict, Verdict::kDone);
  ASSERT_EQ(h_.io.device_writes.size(), 1u);
  EXPECT_EQ(ToHex(h_.io.device_writes[0].packet), ToHex(FragNeeded(frame, path)));
  EXPECT_TRUE(h_.io.underlay_sends.empty());
}

TEST_F(PathMtu, BridgeFramesOverThePathAreDroppedSilently) {
  EngineTunnel config = MakeTunnel(TunnelMode::kGretap);
  TunnelDatapath& t = h_.Add(config);
  const uint32_t path = kRouteMtu - kGreOverhead - 14;
  EXPECT_EQ(t.stats().path_mtu.load(), path);
  EXPECT_EQ(h_.Read(t, Build().Ethernet({}).Raw(Inner4Of(path)).ToBytes()).verdict, Verdict::kSend);
  EXPECT_EQ(h_.Read(t, Build().Ethernet({}).Raw(Inner4Of(path + 1)).ToBytes()).verdict,
            Verdict::kDone);
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
  EXPECT_TRUE(h_.io.device_writes.empty());
  EXPECT_TRUE(h_.io.underlay_sends.empty());
}

TEST_F(PathMtu, MessageTooLongFromTheSendLowersThePathUntilTheNextTick) {
  h_.io.route_mtu = 1500;
  TunnelDatapath& t = AddGre();
  const Bytes frame = Inner4Of(1400);
  CoreHarness::DeviceRead r = h_.Read(t, frame);
  ASSERT_EQ(r.verdict, Verdict::kSend);
  t.TransmitDone(r.frame, r.read.len, -EMSGSIZE);
  // The path is smaller than what failed; the frame, still intact, is answered.
  EXPECT_EQ(t.stats().path_mtu.load(), 1399u);
  ASSERT_EQ(h_.io.device_writes.size(), 1u);
  EXPECT_EQ(ToHex(h_.io.device_writes[0].packet), ToHex(FragNeeded(frame, 1399)));
  EXPECT_EQ(TxDrops(t, DropReason::kTooBig), 1u);
  EXPECT_EQ(t.counters().tx_packets.Get(), 0u);
  EXPECT_EQ(h_.io.route_probes, 1);
  h_.core.Tick(absl::Now());
  EXPECT_EQ(h_.io.route_probes, 2);
  EXPECT_EQ(t.stats().path_mtu.load(), 1500 - kGreOverhead);
}

// ---- ICMP errors from the underlay about the tunnel's packets ----

struct TooBigCase {
  std::string name = "";
  std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {};
  uint32_t quoted_src = kLocal4;
  uint32_t quoted_dst = kRemote4;
  uint8_t quoted_protocol = 47;
  bool quoted_df = true;
  GreFields quoted_gre = {};
  uint16_t mtu = 1300;
  uint32_t packets_sent_first = 0;
  enum Outcome { kBelieved, kTunnelRejected, kCoreRejected, kIgnored } outcome = kBelieved;
};

void PrintTo(const TooBigCase& c, std::ostream* os) { *os << c.name; }

std::vector<TooBigCase> TooBigCases() {
  const auto keyed = [](EngineTunnel& t) {
    t.encap.has_key = true;
    t.encap.key = 42;
  };
  const auto numbered = [](EngineTunnel& t) { t.encap.sequence = true; };
  return {
      {.name = "believed"},
      {.name = "believed_keyed", .configure = keyed, .quoted_gre = {.key = 42}},
      {.name = "believed_sequence_sent_lately",
       .configure = numbered,
       .quoted_gre = {.sequence = 1},
       .packets_sent_first = 1},
      {.name = "wrong_source", .quoted_src = kOther4, .outcome = TooBigCase::kTunnelRejected},
      {.name = "no_dont_fragment", .quoted_df = false, .outcome = TooBigCase::kTunnelRejected},
      {.name = "mtu_below_the_least", .mtu = 500, .outcome = TooBigCase::kTunnelRejected},
      {.name = "mtu_not_below_the_quoted_length",
       .mtu = 1424,
       .outcome = TooBigCase::kTunnelRejected},
      {.name = "wrong_key",
       .configure = keyed,
       .quoted_gre = {.key = 43},
       .outcome = TooBigCase::kTunnelRejected},
      {.name = "gre_flags_not_ours",
       .quoted_gre = {.checksum = true},
       .outcome = TooBigCase::kTunnelRejected},
      {.name = "sequence_never_sent",
       .configure = numbered,
       .quoted_gre = {.sequence = 1000},
       .packets_sent_first = 1,
       .outcome = TooBigCase::kTunnelRejected},
      // Nobody's GRE flow: counted once, by worker 0, in the core's drops.
      {.name = "gre_to_no_tunnels_remote",
       .quoted_dst = kOther4,
       .outcome = TooBigCase::kCoreRejected},
      // Not a tunnel protocol at all: another socket's business.
      {.name = "udp_to_no_tunnels_remote",
       .quoted_dst = kOther4,
       .quoted_protocol = 17,
       .outcome = TooBigCase::kIgnored},
      {.name = "udp_to_the_remote", .quoted_protocol = 17, .outcome = TooBigCase::kIgnored},
  };
}

class TooBigTable : public ::testing::TestWithParam<TooBigCase> {};

TEST_P(TooBigTable, BelievedOnlyWhenItQuotesOurPacket) {
  const TooBigCase& c = GetParam();
  CoreHarness h;
  h.io.route_mtu = 1500;
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  c.configure(config);
  TunnelDatapath& t = h.Add(config);
  const uint32_t path_before = t.stats().path_mtu.load();
  const uint32_t overhead = 1500 - path_before;  // the tunnel's outer headers
  const uint32_t learned_path = c.mtu - overhead;
  for (uint32_t i = 0; i < c.packets_sent_first; ++i) {
    ASSERT_EQ(h.Read(t, InnerIcmp()).verdict, Verdict::kSend);
  }
  // What a router on the path sends: ICMP fragmentation-needed quoting the start of the
  // 1424-byte outer packet.
  const Bytes inner = InnerIcmp();
  const Bytes quote = Build()
                          .Ipv4({.src = c.quoted_src,
                                 .dst = c.quoted_dst,
                                 .protocol = c.quoted_protocol,
                                 .df = c.quoted_df,
                                 .total_len = 1424})
                          .Gre(c.quoted_gre)
                          .Raw(Bytes(inner.begin(), inner.begin() + 8))
                          .ToBytes();
  ASSERT_TRUE(h.TakeUnderlayTooBig(quote, c.mtu));

  const uint64_t tunnel_rejected = RxDrops(t, DropReason::kIcmpRejected);
  const uint64_t core_rejected =
      h.core.counters().drops[static_cast<int>(DropReason::kIcmpRejected)].Get();
  switch (c.outcome) {
    case TooBigCase::kBelieved: {
      EXPECT_EQ(t.stats().path_mtu.load(), learned_path);
      EXPECT_EQ(tunnel_rejected + core_rejected, 0u);
      // Answered from what was learned, without asking the route.
      const Bytes frame = Inner4Of(learned_path + 1);
      EXPECT_EQ(h.Read(t, frame).verdict, Verdict::kDone);
      ASSERT_EQ(h.io.device_writes.size(), 1u);
      EXPECT_EQ(ToHex(h.io.device_writes[0].packet), ToHex(FragNeeded(frame, learned_path)));
      h.core.Tick(absl::Now());
      EXPECT_EQ(h.io.route_probes, 1);
      EXPECT_EQ(t.stats().path_mtu.load(), learned_path);
      break;
    }
    case TooBigCase::kTunnelRejected:
      EXPECT_EQ(tunnel_rejected, 1u);
      EXPECT_EQ(core_rejected, 0u);
      EXPECT_EQ(t.stats().path_mtu.load(), path_before);
      break;
    case TooBigCase::kCoreRejected:
      EXPECT_EQ(tunnel_rejected, 0u);
      EXPECT_EQ(core_rejected, 1u);
      EXPECT_EQ(t.stats().path_mtu.load(), path_before);
      break;
    case TooBigCase::kIgnored:
      EXPECT_EQ(tunnel_rejected + core_rejected, 0u);
      EXPECT_EQ(t.stats().path_mtu.load(), path_before);
      break;
  }
  EXPECT_EQ(AllDrops(h.core.counters().drops), core_rejected);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), tunnel_rejected);
}

INSTANTIATE_TEST_SUITE_P(Quotes, TooBigTable, ::testing::ValuesIn(TooBigCases()),
                         [](const ::testing::TestParamInfo<TooBigCase>& info) {
                           return info.param.name;
                         });

// What an error reporting `mtu` says of a DF packet it quotes only the IPv4 header of (as
// much as an IPIP tunnel's pattern needs).
TooBigReport QuoteOf(uint32_t src, uint32_t dst, uint8_t protocol, uint32_t len, uint32_t mtu) {
  TooBigReport report;
  report.mtu = mtu;
  report.quoted_src = src;
  report.quoted_dst = dst;
  report.quoted_protocol = protocol;
  report.quoted_dont_fragment = true;
  report.quoted_len = len;
  return report;
}

TEST(TooBig, OnlyWorkerZeroCountsWhatNobodyTook) {
  // Every worker reads every error: the one nobody's tunnel took is counted once.
  CoreHarness h(CoreOptions{.worker = 1, .workers = 2});
  EngineTunnel config = MakeTunnel(TunnelMode::kGre);
  config.stats = std::make_shared<TunnelStats>(2);
  TunnelDatapath& t = h.Add(config);
  TooBigReport report = QuoteOf(kLocal4, kOther4, 47, 1424, 1300);
  h.core.TakeTooBig(report);
  EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
  // Nor does a worker other than 0 count a rejected quote of its tunnel's flow.
  report.quoted_dst = kRemote4;
  report.quoted_src = kOther4;
  h.core.TakeTooBig(report);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
  EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
}

TEST(TooBig, LearnedMtuExpiresAndTheRouteIsAskedAgain) {
  CoreHarness h(CoreOptions{.path_mtu_expiry = absl::ZeroDuration()});
  h.io.route_mtu = 1500;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kIpip));
  EXPECT_EQ(t.stats().path_mtu.load(), 1480u);
  h.core.TakeTooBig(QuoteOf(kLocal4, kRemote4, 4, 1500, 1300));
  EXPECT_EQ(t.stats().path_mtu.load(), 1280u);
  EXPECT_EQ(h.io.route_probes, 1);
  // Already expired at the next tick: the route is asked, and its MTU holds again.
  h.core.Tick(absl::Now());
  EXPECT_EQ(h.io.route_probes, 2);
  EXPECT_EQ(t.stats().path_mtu.load(), 1480u);
}

TEST(TooBig, GreInUdpErrorMustQuoteABoundSourcePort) {
  struct Case {
    const char* name;
    uint16_t sport;
    uint16_t dport;
    bool believed;
    uint64_t rejected;
  };
  const Case cases[] = {
      {"bound_port", 5555, 4754, true, 0},
      {"port_we_do_not_send_from", 6000, 4754, false, 1},
      {"another_sockets_port", 5555, 53, false, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    CoreHarness h;
    h.io.route_mtu = 1500;
    EngineTunnel config = MakeTunnel(TunnelMode::kGre);
    config.encap.udp_dport = 4754;
    config.encap.udp_sport = 5555;
    TunnelDatapath& t = h.Add(config);
    const uint32_t overhead = 20 + 8 + 4;
    EXPECT_EQ(t.stats().path_mtu.load(), 1500 - overhead);
    const Bytes quote =
        Build()
            .Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 17, .total_len = 1500})
            .Udp({.sport = c.sport, .dport = c.dport})
            .Gre({})
            .ToBytes();
    ASSERT_TRUE(h.TakeUnderlayTooBig(quote, 1300));
    EXPECT_EQ(t.stats().path_mtu.load(), c.believed ? 1300 - overhead : 1500 - overhead);
    EXPECT_EQ(RxDrops(t, DropReason::kIcmpRejected), c.rejected);
    EXPECT_EQ(AllDrops(h.core.counters().drops), 0u);
  }
}

TEST(TooBig, Ip6tnlPacketTooBigIsBelieved) {
  CoreHarness h;
  h.io.route_mtu = 1500;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kIp6tnl));
  EXPECT_EQ(t.stats().path_mtu.load(), 1500u - 48);
  // ICMPv6 packet too big (as a raw ICMPv6 socket hands it: no IPv6 header) quoting the start
  // of a 1452-byte ip6tnl packet.
  const Bytes quoted = Build()
                           .Ipv6({.src = kLocal6, .dst = kRemote6, .next_header = 60})
                           .EncapLimit({.next_header = 4})
                           .Raw(InnerIcmp(1452 - 48 - 28))
                           .ToBytes();
  Bytes message = {2, 0, 0, 0, 0, 0, 0x05, 0x14};  // MTU 1300; checksum the kernel checked
  message.insert(message.end(), quoted.begin(), quoted.begin() + 96);
  TooBigReport report;
  ASSERT_TRUE(ParseIcmpv6PacketTooBig(message.data(), message.size(), &report));
  h.core.TakeTooBig(report);
  EXPECT_EQ(t.stats().path_mtu.load(), 1300u - 48);
  EXPECT_EQ(AllDrops(t.counters().rx_drops), 0u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
