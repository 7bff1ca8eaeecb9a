// Every tunnel mode and outer-header option against golden bytes (mode_packets.h), the
// keepalive packets, the ICMP errors for packets too big, and outer IPv4 fragmentation.
#include <ostream>
#include <string>
#include <vector>

#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "gtest/gtest.h"
#include "tests/dataplane/packet/mode_packets.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane {
namespace {

using test::Bytes;
using test::Hex;
using test::Packet;
using test::ToHex;

constexpr size_t kIpv6Headers = kIpv6HeaderLen + kEncapLimitOptionLen;

OuterAddress V6(uint8_t last) {
  uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, last};
  return OuterAddress::FromIpv6(a);
}

EncapParams Params(TunnelMode mode, uint8_t ttl = 64) {
  EncapParams p;
  p.mode = mode;
  if (IsIpv6UnderlayMode(mode)) {
    p.local = V6(1);
    p.remote = V6(2);
  } else {
    p.local = test::kLocal;
    p.remote = test::kRemote;
  }
  p.ttl = ttl;
  return p;
}

EncapParams With(EncapParams p, void (*change)(EncapParams&)) {
  change(p);
  return p;
}

struct ModeCase {
  std::string name;
  EncapParams params;
  Bytes inner;
  uint32_t sequence;
  Bytes expected;
};
void PrintTo(const ModeCase& c, std::ostream* os) { *os << c.name; }

class ModeGoldenTest : public ::testing::TestWithParam<ModeCase> {};

// What the kernel's tunnels put on the wire for the same packet and configuration.
TEST_P(ModeGoldenTest, EncapsulatesToExactBytes) {
  const ModeCase& c = GetParam();
  Bytes buffer(kMaxEncapHeadroom, 0xEE);
  buffer.insert(buffer.end(), c.inner.begin(), c.inner.end());
  uint8_t* inner = buffer.data() + kMaxEncapHeadroom;
  const EncapResult r = Encapsulate(c.params, inner, c.inner.size(), 0x0102, c.sequence);
  ASSERT_NE(r.packet, nullptr) << DropReasonName(r.drop);
  EXPECT_EQ(r.packet, inner - EncapHeaderLen(c.params));
  EXPECT_EQ(ToHex(r.packet, r.len), ToHex(c.expected));
}

// ...and the receiving side takes the same bytes apart again, as its socket delivers them.
TEST_P(ModeGoldenTest, DecapsulatesTheGolden) {
  const ModeCase& c = GetParam();
  Bytes packet = c.expected;
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  if (IsIpv6UnderlayMode(c.params.mode)) {
    ASSERT_EQ(packet[6], 60) << "encapsulation-limit option";
    ASSERT_TRUE(DecapsulateIpv6(packet.data() + kIpv6Headers, packet.size() - kIpv6Headers,
                                packet[kIpv6HeaderLen], c.params.local, c.params.remote, 0, &d,
                                &reason))
        << DropReasonName(reason);
  } else {
    ASSERT_TRUE(Decapsulate(packet.data(), packet.size(), &d, &reason)) << DropReasonName(reason);
  }
  EXPECT_EQ(d.mode, c.params.mode);
  EXPECT_EQ(d.has_key, IsGreMode(c.params.mode) && c.params.has_key);
  EXPECT_EQ(d.has_checksum, c.params.checksum);
  EXPECT_EQ(d.has_sequence, c.params.sequence);
  EXPECT_EQ(d.sequence, c.params.sequence ? c.sequence : 0);
  EXPECT_EQ(ToHex(d.inner, d.inner_len), ToHex(c.inner));
}

INSTANTIATE_TEST_SUITE_P(
    Modes, ModeGoldenTest,
    ::testing::Values(
        ModeCase{"Gretap", Params(TunnelMode::kGretap), Hex(test::kEthInnerIcmp), 0,
                 Hex(test::kGretap)},
        // sit inherits the hop limit (0x37) like every IPv4 tunnel by default.
        ModeCase{"SitInheritsHopLimit", Params(TunnelMode::kSit, 0), Hex(test::kInnerIcmp6), 0,
                 Hex(test::kSit)},
        ModeCase{"Ip6greIpv4", Params(TunnelMode::kIp6gre), Hex(test::kInnerIcmp), 0,
                 Hex(test::kIp6gre)},
        ModeCase{"Ip6greIpv6KeyChecksumSequence",
                 With(Params(TunnelMode::kIp6gre),
                      [](EncapParams& p) {
                        p.has_key = true;
                        p.key = 42;
                        p.checksum = true;
                        p.sequence = true;
                      }),
                 Hex(test::kInnerIcmp6), 7, Hex(test::kIp6greKeyCsumSeq)},
        ModeCase{"Ip6gretap", Params(TunnelMode::kIp6gretap), Hex(test::kEthInnerIcmp), 0,
                 Hex(test::kIp6gretap)},
        ModeCase{"Ip6tnlIpv4", Params(TunnelMode::kIp6tnl), Hex(test::kInnerIcmp), 0,
                 Hex(test::kIp6tnl4)},
        ModeCase{"Ip6tnlIpv6", Params(TunnelMode::kIp6tnl), Hex(test::kInnerIcmp6), 0,
                 Hex(test::kIp6tnl6)},
        // tos 0x28: the DSCP is ours, the ECN bits still the inner packet's (ECT(0)).
        ModeCase{"GreFixedTos",
                 With(Params(TunnelMode::kGre), [](EncapParams& p) { p.tos = 0x28; }),
                 Hex(test::kInnerIcmpEct0), 0, Hex(test::kGreTos28Ect0)},
        ModeCase{"GreTosInherit",
                 With(Params(TunnelMode::kGre), [](EncapParams& p) { p.inherit_tos = true; }),
                 Hex(test::kInnerIcmpDscpEf), 0, Hex(test::kGreTosInherit)},
        ModeCase{"Ip6greTclassInherit",
                 With(Params(TunnelMode::kIp6gre), [](EncapParams& p) { p.inherit_tos = true; }),
                 Hex(test::kInnerIcmpDscpEf), 0, Hex(test::kIp6greTclassInherit)},
        // nopmtudisc: DF only when the inner packet has it (copied, RFC 2003).
        ModeCase{"GreNoPmtudiscInnerWithoutDf",
                 With(Params(TunnelMode::kGre), [](EncapParams& p) { p.pmtudisc = false; }),
                 Hex(test::kInnerIcmpNoDf), 0, Hex(test::kGreNoPmtudiscNoDf)},
        ModeCase{"GreNoPmtudiscCopiesInnerDf",
                 With(Params(TunnelMode::kGre), [](EncapParams& p) { p.pmtudisc = false; }),
                 Hex(test::kInnerIcmp), 0, Hex(test::kGre)}),
    [](const ::testing::TestParamInfo<ModeCase>& info) { return info.param.name; });

TEST(ModesTest, HeaderLengths) {
  EXPECT_EQ(EncapHeaderLen(Params(TunnelMode::kGretap)), 24u);
  EXPECT_EQ(EncapHeaderLen(Params(TunnelMode::kSit)), 20u);
  EXPECT_EQ(EncapHeaderLen(Params(TunnelMode::kIp6gre)), 52u);
  EXPECT_EQ(EncapHeaderLen(Params(TunnelMode::kIp6tnl)), 48u);
  EncapParams all = Params(TunnelMode::kIp6gretap);
  all.has_key = all.checksum = all.sequence = true;
  EXPECT_EQ(EncapHeaderLen(all), kMaxEncapHeadroom);
}

TEST(ModesTest, EachModeCarriesOnlyWhatTheKernelsDoes) {
  struct Case {
    TunnelMode mode;
    const char* inner;
    bool carried;
  };
  const Case cases[] = {
      {TunnelMode::kIpip, test::kInnerIcmp6, false}, {TunnelMode::kSit, test::kInnerIcmp, false},
      {TunnelMode::kIp6tnl, test::kInnerIcmp, true}, {TunnelMode::kIp6tnl, test::kInnerIcmp6, true},
      {TunnelMode::kGre, test::kInnerIcmp6, true},
  };
  for (const Case& c : cases) {
    Bytes buffer(kMaxEncapHeadroom);
    const Bytes inner = Hex(c.inner);
    buffer.insert(buffer.end(), inner.begin(), inner.end());
    const EncapResult r =
        Encapsulate(Params(c.mode), buffer.data() + kMaxEncapHeadroom, inner.size(), 0, 0);
    EXPECT_EQ(r.packet != nullptr, c.carried) << static_cast<int>(c.mode);
    if (!c.carried) {
      EXPECT_EQ(r.drop, DropReason::kUnsupportedProtocol);
    }
  }
  // A frame shorter than its Ethernet header is not a frame.
  Bytes buffer(kMaxEncapHeadroom + 13);
  EXPECT_EQ(
      Encapsulate(Params(TunnelMode::kGretap), buffer.data() + kMaxEncapHeadroom, 13, 0, 0).drop,
      DropReason::kBadInnerPacket);
}

TEST(ModesTest, TtlInheritedFromTheIpPacketInsideAFrame) {
  Bytes frame = Packet(test::kEthInnerIcmp).Set8(14 + 8, 9);  // inner TTL 9
  Bytes buffer(kMaxEncapHeadroom);
  buffer.insert(buffer.end(), frame.begin(), frame.end());
  const EncapResult r = Encapsulate(Params(TunnelMode::kGretap, 0),
                                    buffer.data() + kMaxEncapHeadroom, frame.size(), 0, 0);
  ASSERT_NE(r.packet, nullptr);
  EXPECT_EQ(r.packet[8], 9);
  // Not IP (ARP): the default TTL.
  Bytes arp = Packet(test::kEthInnerIcmp).Set16(12, 0x0806);
  std::copy(arp.begin(), arp.end(), buffer.begin() + kMaxEncapHeadroom);
  const EncapResult a = Encapsulate(Params(TunnelMode::kGretap, 0),
                                    buffer.data() + kMaxEncapHeadroom, arp.size(), 0, 0);
  ASSERT_NE(a.packet, nullptr);
  EXPECT_EQ(a.packet[8], 64);
}

TEST(ModesTest, ModeFollowsProtocolAndFamily) {
  struct Case {
    const char* golden;
    TunnelMode mode;
  };
  for (const Case& c :
       {Case{test::kGre, TunnelMode::kGre}, Case{test::kGretap, TunnelMode::kGretap},
        Case{test::kIpip, TunnelMode::kIpip}, Case{test::kSit, TunnelMode::kSit}}) {
    Bytes packet = Hex(c.golden);
    Decapsulated d;
    DropReason reason;
    ASSERT_TRUE(Decapsulate(packet.data(), packet.size(), &d, &reason)) << c.golden;
    EXPECT_EQ(d.mode, c.mode);
  }
}

TEST(ModesTest, Ipv6UnderlayEcnFromTrafficClass) {
  Bytes packet = Hex(test::kIp6tnl4);
  Bytes payload(packet.begin() + kIpv6Headers, packet.end());
  payload[1] = kEcnEct0;  // make the inner ECT(0), fix its checksum
  payload[10] = payload[11] = 0;
  const uint16_t sum = test::RefChecksum(payload.data(), 20);
  payload[10] = static_cast<uint8_t>(sum >> 8);
  payload[11] = static_cast<uint8_t>(sum);
  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(DecapsulateIpv6(payload.data(), payload.size(), kIpProtoIpip, V6(1), V6(2), kEcnCe,
                              &d, &reason));
  EXPECT_EQ(d.inner[1] & kEcnMask, kEcnCe);
  EXPECT_EQ(test::RefChecksum(d.inner, 20), 0);
  // Over a not-ECT inner packet an outer CE is a drop.
  Bytes not_ect(packet.begin() + kIpv6Headers, packet.end());
  EXPECT_FALSE(DecapsulateIpv6(not_ect.data(), not_ect.size(), kIpProtoIpip, V6(1), V6(2), kEcnCe,
                               &d, &reason));
  EXPECT_EQ(reason, DropReason::kEcnError);
  EXPECT_FALSE(DecapsulateIpv6(not_ect.data(), not_ect.size(), 17, V6(1), V6(2), 0, &d, &reason));
  EXPECT_EQ(reason, DropReason::kUnsupportedProtocol);
}

// ---- Keepalives -----------------------------------------------------------------------------

TEST(KeepaliveTest, HomePacketIsCiscos) {
  // What the peer sends home: GRE from the peer to us, our input key, protocol type 0, TTL 255.
  EncapParams home = Params(TunnelMode::kGre);
  home.local = test::kRemote;
  home.remote = test::kLocal;
  home.has_key = true;
  home.key = 42;
  home.ttl = 0;
  home.pmtudisc = false;
  Bytes buffer(256);
  const EncapResult inner = EncapsulateEmpty(home, buffer.data() + 128, 0);
  ASSERT_NE(inner.packet, nullptr);
  EXPECT_EQ(ToHex(inner.packet, inner.len), ToHex(Hex(test::kGreKeepaliveHome)));
  // Sent wrapped in the tunnel's own encapsulation.
  const EncapResult sent =
      Encapsulate(Params(TunnelMode::kGre), inner.packet, inner.len, 0x0102, 0);
  ASSERT_NE(sent.packet, nullptr);
  EXPECT_EQ(ToHex(sent.packet, sent.len), ToHex(Hex(test::kGreKeepaliveSent)));
  // The peer decapsulates the outer layer and sends the inner one back; we see an empty GRE
  // payload for our keyed tunnel.
  Bytes back = Hex(test::kGreKeepaliveHome);
  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(Decapsulate(back.data(), back.size(), &d, &reason)) << DropReasonName(reason);
  EXPECT_EQ(d.inner_len, 0u);
  EXPECT_EQ(d.mode, TunnelMode::kGre);
  EXPECT_TRUE(d.has_key);
  EXPECT_EQ(d.key, 42u);
}

TEST(KeepaliveTest, IpipHomePacket) {
  EncapParams home = Params(TunnelMode::kIpip, 0);
  home.local = test::kRemote;
  home.remote = test::kLocal;
  home.pmtudisc = false;
  Bytes buffer(64);
  const EncapResult inner = EncapsulateEmpty(home, buffer.data() + 64, 0);
  EXPECT_EQ(ToHex(inner.packet, inner.len), ToHex(Hex(test::kIpipKeepaliveHome)));
  Bytes back = Hex(test::kIpipKeepaliveHome);
  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(Decapsulate(back.data(), back.size(), &d, &reason));
  EXPECT_EQ(d.inner_len, 0u);
  EXPECT_EQ(d.mode, TunnelMode::kIpip);
}

TEST(KeepaliveTest, Ip6greHomePacketRoundTrips) {
  EncapParams home = Params(TunnelMode::kIp6gre, 0);
  home.local = V6(2);
  home.remote = V6(1);
  Bytes buffer(128);
  const EncapResult inner = EncapsulateEmpty(home, buffer.data() + 128, 0);
  ASSERT_EQ(inner.len, 52u);
  EXPECT_EQ(inner.packet[7], 64) << "hop limit";
  Decapsulated d;
  DropReason reason;
  ASSERT_TRUE(DecapsulateIpv6(inner.packet + kIpv6Headers, inner.len - kIpv6Headers,
                              inner.packet[kIpv6HeaderLen], V6(2), V6(1), 0, &d, &reason));
  EXPECT_EQ(d.inner_len, 0u);
  EXPECT_EQ(d.mode, TunnelMode::kIp6gre);
}

// ---- ICMP errors for packets too big ---------------------------------------------------------

TEST(IcmpTest, FragmentationNeededGolden) {
  const Bytes original = Hex(test::kInnerIcmp);
  Bytes out(1500);
  const size_t n = WriteIcmpFragmentationNeeded(original.data(), original.size(), 0x0A000001, 1400,
                                                out.data(), out.size());
  EXPECT_EQ(ToHex(out.data(), n), ToHex(Hex(test::kFragNeeded)));
  EXPECT_EQ(test::RefChecksum(out.data(), 20), 0);
  EXPECT_EQ(test::RefChecksum(out.data() + 20, n - 20), 0);
}

TEST(IcmpTest, PacketTooBigGolden) {
  const Bytes original = Hex(test::kInnerIcmp6);
  const uint8_t fd00_1[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  Bytes out(1500);
  const size_t n =
      WriteIcmpv6PacketTooBig(original.data(), original.size(), OuterAddress::FromIpv6(fd00_1),
                              1000, out.data(), out.size());
  // An MTU below IPv6's minimum is reported as 1280.
  EXPECT_EQ(ToHex(out.data(), n), ToHex(Hex(test::kPacketTooBig)));
}

// No route for the destination (a multipoint tunnel without a peer for it): the same error as
// frag-needed but for its type, code and the unused rest.
TEST(IcmpTest, HostUnreachableGolden) {
  const Bytes original = Hex(test::kInnerIcmp);
  Bytes out(1500);
  const size_t n = WriteIcmpHostUnreachable(original.data(), original.size(), 0x0A000001,
                                            out.data(), out.size());
  Bytes expected = Hex(test::kFragNeeded);
  ASSERT_EQ(n, expected.size());
  expected[21] = 1;  // host unreachable
  for (size_t i = 22; i < 28; ++i) expected[i] = 0;
  const uint16_t sum = test::RefChecksum(expected.data() + 20, expected.size() - 20);
  expected[22] = static_cast<uint8_t>(sum >> 8);
  expected[23] = static_cast<uint8_t>(sum);
  EXPECT_EQ(ToHex(out.data(), n), ToHex(expected));
  // Never about an ICMP error.
  const Bytes dest_unreachable = Packet(test::kInnerIcmp).Set8(20, 3).FixIpv4Checksum(0);
  EXPECT_EQ(WriteIcmpHostUnreachable(dest_unreachable.data(), dest_unreachable.size(), 0x0A000001,
                                     out.data(), out.size()),
            0u);
}

TEST(IcmpTest, AddressUnreachableGolden) {
  const Bytes original = Hex(test::kInnerIcmp6);
  const uint8_t fd00_1[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  Bytes out(1500);
  const size_t n = WriteIcmpv6AddressUnreachable(
      original.data(), original.size(), OuterAddress::FromIpv6(fd00_1), out.data(), out.size());
  Bytes expected = Hex(test::kPacketTooBig);
  ASSERT_EQ(n, expected.size());
  expected[40] = 1;  // destination unreachable
  expected[41] = 3;  // address unreachable
  for (size_t i = 42; i < 48; ++i) expected[i] = 0;
  // The checksum over the pseudo-header (addresses, length, next header) and the message.
  Bytes whole(expected.begin() + 8, expected.begin() + 40);
  const size_t icmp_len = expected.size() - 40;
  whole.insert(whole.end(), {0, 0, static_cast<uint8_t>(icmp_len >> 8),
                             static_cast<uint8_t>(icmp_len), 0, 0, 0, 58});
  whole.insert(whole.end(), expected.begin() + 40, expected.end());
  const uint16_t sum = test::RefChecksum(whole.data(), whole.size());
  expected[42] = static_cast<uint8_t>(sum >> 8);
  expected[43] = static_cast<uint8_t>(sum);
  EXPECT_EQ(ToHex(out.data(), n), ToHex(expected));
  const Bytes from_multicast = Packet(test::kInnerIcmp6).Set8(8, 0xff);
  EXPECT_EQ(WriteIcmpv6AddressUnreachable(from_multicast.data(), from_multicast.size(), V6(1),
                                          out.data(), out.size()),
            0u);
}

TEST(IcmpTest, QuotesAtMost576BytesOfIpv4) {
  Packet big(test::kInnerIcmp);
  big.Truncate(20);
  for (int i = 0; i < 1400; ++i) big.Append({static_cast<uint8_t>(i)});
  big.FixIpv4TotalLen(0).FixIpv4Checksum(0);
  const Bytes original = big;
  Bytes out(2000);
  EXPECT_EQ(WriteIcmpFragmentationNeeded(original.data(), original.size(), 0x0A000001, 1400,
                                         out.data(), out.size()),
            576u);
  Bytes small(100);
  EXPECT_EQ(WriteIcmpFragmentationNeeded(original.data(), original.size(), 0x0A000001, 1400,
                                         small.data(), small.size()),
            0u)
      << "does not fit";
}

TEST(IcmpTest, NeverAboutErrorsFragmentsOrMulticast) {
  Bytes out(1500);
  auto answer = [&](const Bytes& p) {
    return WriteIcmpFragmentationNeeded(p.data(), p.size(), 0x0A000001, 1400, out.data(),
                                        out.size());
  };
  const Bytes dest_unreachable = Packet(test::kInnerIcmp).Set8(20, 3).FixIpv4Checksum(0);
  EXPECT_EQ(answer(dest_unreachable), 0u);
  const Bytes echo_reply = Packet(test::kInnerIcmp).Set8(20, 0).FixIpv4Checksum(0);
  EXPECT_NE(answer(echo_reply), 0u) << "an informational ICMP message is answered";
  const Bytes later_fragment = Packet(test::kInnerIcmp).Set16(6, 0x2001).FixIpv4Checksum(0);
  EXPECT_EQ(answer(later_fragment), 0u);
  const Bytes to_multicast = Packet(test::kInnerIcmp).Set8(16, 224).FixIpv4Checksum(0);
  EXPECT_EQ(answer(to_multicast), 0u);
  const Bytes from_nowhere = Packet(test::kInnerIcmp).Set16(12, 0).Set16(14, 0).FixIpv4Checksum(0);
  EXPECT_EQ(answer(from_nowhere), 0u);

  const Bytes icmp6_error = Packet(test::kInnerIcmp6).Set8(40, 1);  // destination unreachable
  EXPECT_EQ(WriteIcmpv6PacketTooBig(icmp6_error.data(), icmp6_error.size(), V6(1), 1280, out.data(),
                                    out.size()),
            0u);
  const Bytes from_multicast = Packet(test::kInnerIcmp6).Set8(8, 0xff);
  EXPECT_EQ(WriteIcmpv6PacketTooBig(from_multicast.data(), from_multicast.size(), V6(1), 1280,
                                    out.data(), out.size()),
            0u);
}

// ---- Outer fragmentation --------------------------------------------------------------------

TEST(FragmentTest, FragmentsReassembleToTheOriginal) {
  // A 1,500-byte GRE packet with DF set, cut for a 576-byte path.
  Packet big(test::kGre);
  big.Truncate(24 + 20);
  for (int i = 0; i < 1456; ++i) big.Append({static_cast<uint8_t>(i * 13)});
  big.FixIpv4TotalLen(24).FixIpv4Checksum(24).FixIpv4TotalLen(0).FixIpv4Checksum(0);
  const Bytes packet = big;
  ASSERT_EQ(packet.size(), 1500u);

  Bytes out(4096);
  Fragment fragments[8];
  const size_t count =
      FragmentIpv4(packet.data(), packet.size(), 576, 0xBEEF, out.data(), out.size(), fragments, 8);
  ASSERT_EQ(count, 3u);  // 552 + 552 + 376 data bytes
  Bytes data;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* f = fragments[i].data;
    ASSERT_LE(fragments[i].len, 576u);
    EXPECT_EQ(test::RefChecksum(f, 20), 0) << i;
    EXPECT_EQ(size_t{f[2]} << 8 | f[3], fragments[i].len);
    EXPECT_EQ(f[4], 0xBE);
    EXPECT_EQ(f[5], 0xEF);
    const uint16_t frag = static_cast<uint16_t>(f[6] << 8 | f[7]);
    EXPECT_EQ(frag & 0x4000, 0) << "DF cleared";
    EXPECT_EQ((frag & 0x2000) != 0, i + 1 < count) << "MF on all but the last";
    EXPECT_EQ(size_t{frag & 0x1FFFu} * 8, data.size());
    EXPECT_EQ(f[9], kIpProtoGre);
    data.insert(data.end(), f + 20, f + fragments[i].len);
  }
  EXPECT_EQ(ToHex(data), ToHex(packet.data() + 20, packet.size() - 20));
}

TEST(FragmentTest, RefusesWhatCannotBeFragmented) {
  const Bytes packet = Hex(test::kGre);
  Bytes out(4096);
  Fragment fragments[4];
  EXPECT_EQ(FragmentIpv4(packet.data(), packet.size(), 27, 1, out.data(), out.size(), fragments, 4),
            0u)
      << "no room for 8 data bytes";
  EXPECT_EQ(FragmentIpv4(packet.data(), packet.size(), 28, 1, out.data(), out.size(), fragments, 4),
            0u)
      << "more fragments than room";
  const Bytes already = Packet(test::kGre).Set16(6, 0x2000).FixIpv4Checksum(0);
  EXPECT_EQ(
      FragmentIpv4(already.data(), already.size(), 40, 1, out.data(), out.size(), fragments, 4), 0u)
      << "already a fragment";
}

}  // namespace
}  // namespace tunnelagent::dataplane
