// Reading "fragmentation needed" / "packet too big" errors and judging their quotes: the
// tunnel's own packets, made by Encapsulate and quoted by the ICMP writers a router would
// answer with, then each field of the quote changed the way a forger would get it wrong.
#include "dataplane/packet/icmp.h"

#include <cstring>
#include <vector>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/encap.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint32_t kLocal = 0xC6120001;   // 198.18.0.1
constexpr uint32_t kRemote = 0xC6120102;  // 198.18.1.2
constexpr uint32_t kRouter = 0xC6120201;  // 198.18.2.1
constexpr uint32_t kKey = 0x2A;

// An inner IPv4 packet of `len` bytes (10.0.0.1 -> 10.0.0.2, UDP), DF set.
Bytes InnerIpv4(size_t len) {
  Bytes p(len, 0x55);
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(len);
  ip.dont_fragment = true;
  ip.ttl = 64;
  ip.protocol = 17;
  ip.src = 0x0A000001;
  ip.dst = 0x0A000002;
  WriteIpv4Header(ip, p.data());
  return p;
}

// What the tunnel of `p` sends for a 1400-byte inner packet, whole.
Bytes Outer(const EncapParams& p, uint32_t sequence = 0) {
  Bytes storage(kMaxEncapHeadroom, 0);
  const Bytes inner = InnerIpv4(1400);
  storage.insert(storage.end(), inner.begin(), inner.end());
  EncapResult r = Encapsulate(p, storage.data() + kMaxEncapHeadroom, inner.size(), 0, sequence);
  EXPECT_NE(r.packet, nullptr);
  return Bytes(r.packet, r.packet + r.len);
}

// A router's "fragmentation needed" about `outer`, as a raw ICMP socket reads it.
Bytes FragNeeded(const Bytes& outer, uint16_t mtu) {
  Bytes out(1024);
  const size_t n = WriteIcmpFragmentationNeeded(outer.data(), outer.size(), kRouter, mtu,
                                                out.data(), out.size());
  EXPECT_NE(n, 0u);
  out.resize(n);
  return out;
}

// Rewrites the quoted packet's bytes at `offset` (from the quoted IP header) and fixes the
// ICMP checksum, as a forger would.
void Forge(Bytes& error, size_t offset, const Bytes& bytes) {
  uint8_t* icmp = error.data() + kIpv4HeaderLen;
  std::memcpy(icmp + 8 + offset, bytes.data(), bytes.size());
  StoreBe16(icmp + 2, 0);
  StoreBe16(icmp + 2, InternetChecksum(icmp, error.size() - kIpv4HeaderLen));
}

EncapParams GreKeyed() {
  EncapParams p;
  p.mode = TunnelMode::kGre;
  p.local = kLocal;
  p.remote = kRemote;
  p.has_key = true;
  p.key = kKey;
  p.ttl = 64;
  return p;
}

OwnPacketPattern PatternOf(const EncapParams& p) {
  OwnPacketPattern pattern;
  pattern.mode = p.mode;
  pattern.source = p.local;
  pattern.remote = p.remote;
  pattern.checksum = p.checksum;
  pattern.has_key = p.has_key;
  pattern.key = p.key;
  pattern.sequence = p.sequence;
  pattern.udp_dport = p.udp_dport;
  return pattern;
}

QuoteVerdict Judge(const OwnPacketPattern& pattern, const Bytes& error,
                   uint32_t* sequence = nullptr) {
  TooBigReport report;
  EXPECT_TRUE(ParseIcmpFragmentationNeeded(error.data(), error.size(), &report));
  uint32_t ignored = 0;
  return CheckTooBigQuote(pattern, report, sequence != nullptr ? sequence : &ignored);
}

TEST(TooBigParseTest, ReadsTheReportAndTheQuotedHeader) {
  const Bytes outer = Outer(GreKeyed());
  const Bytes error = FragNeeded(outer, 1400);
  TooBigReport report;
  ASSERT_TRUE(ParseIcmpFragmentationNeeded(error.data(), error.size(), &report));
  EXPECT_FALSE(report.ipv6);
  EXPECT_EQ(report.mtu, 1400u);
  EXPECT_EQ(report.quoted_src, OuterAddress(kLocal));
  EXPECT_EQ(report.quoted_dst, OuterAddress(kRemote));
  EXPECT_EQ(report.quoted_protocol, kIpProtoGre);
  EXPECT_TRUE(report.quoted_dont_fragment);
  EXPECT_EQ(report.quoted_len, outer.size());
  ASSERT_GE(report.transport_len, 8u);
  EXPECT_EQ(LoadBe32(report.transport + 4), kKey);
}

TEST(TooBigParseTest, RefusesWhatIsNotAWholeFragNeeded) {
  const Bytes good = FragNeeded(Outer(GreKeyed()), 1400);
  TooBigReport report;
  Bytes bad_sum = good;
  bad_sum[kIpv4HeaderLen + 9] ^= 1;  // inside the quote, checksum left as it was
  EXPECT_FALSE(ParseIcmpFragmentationNeeded(bad_sum.data(), bad_sum.size(), &report));
  Bytes port_unreachable = good;
  port_unreachable[kIpv4HeaderLen + 1] = 3;
  EXPECT_FALSE(
      ParseIcmpFragmentationNeeded(port_unreachable.data(), port_unreachable.size(), &report));
  // Too short to hold the quoted IP header.
  Bytes cut(good.begin(), good.begin() + kIpv4HeaderLen + 8 + 12);
  StoreBe16(cut.data() + 2, static_cast<uint16_t>(cut.size()));
  EXPECT_FALSE(ParseIcmpFragmentationNeeded(cut.data(), cut.size(), &report));
  EXPECT_FALSE(ParseIcmpFragmentationNeeded(good.data(), 10, &report));
}

TEST(TooBigQuoteTest, OwnGrePacketWithItsKeyIsBelieved) {
  const EncapParams p = GreKeyed();
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(p), 1400)), QuoteVerdict::kOurs);
}

TEST(TooBigQuoteTest, AnotherRemoteOrProtocolIsAnotherFlow) {
  const EncapParams p = GreKeyed();
  EncapParams other = p;
  other.remote = 0xC6120103;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(other), 1400)), QuoteVerdict::kOtherFlow);
  EncapParams ipip = p;
  ipip.mode = TunnelMode::kIpip;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(ipip), 1400)), QuoteVerdict::kOtherFlow);
}

TEST(TooBigQuoteTest, ForgedFieldsOfOurFlowAreRejected) {
  const EncapParams p = GreKeyed();
  const OwnPacketPattern pattern = PatternOf(p);
  const Bytes outer = Outer(p);

  EncapParams other_source = p;
  other_source.local = 0xC6120009;
  EXPECT_EQ(Judge(pattern, FragNeeded(Outer(other_source), 1400)), QuoteVerdict::kRejected);

  EncapParams other_key = p;
  other_key.key = kKey + 1;
  EXPECT_EQ(Judge(pattern, FragNeeded(Outer(other_key), 1400)), QuoteVerdict::kRejected);

  EncapParams keyless = p;
  keyless.has_key = false;
  EXPECT_EQ(Judge(pattern, FragNeeded(Outer(keyless), 1400)), QuoteVerdict::kRejected);

  EncapParams with_checksum = p;
  with_checksum.checksum = true;
  EXPECT_EQ(Judge(pattern, FragNeeded(Outer(with_checksum), 1400)), QuoteVerdict::kRejected);

  // No DF: a router fragments such a packet and never sends this error about it.
  Bytes no_df = FragNeeded(outer, 1400);
  Forge(no_df, 6, {0x00, 0x00});
  EXPECT_EQ(Judge(pattern, no_df), QuoteVerdict::kRejected);
}

TEST(TooBigQuoteTest, MtuMustBeAtLeastTheFloorAndBelowThePacket) {
  const EncapParams p = GreKeyed();
  const OwnPacketPattern pattern = PatternOf(p);
  const Bytes outer = Outer(p);  // 20 + 8 + 1400 bytes
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, kIpv4MinPathMtu)), QuoteVerdict::kOurs);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, kIpv4MinPathMtu - 1)), QuoteVerdict::kRejected);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, 68)), QuoteVerdict::kRejected);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, 0)), QuoteVerdict::kRejected);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, static_cast<uint16_t>(outer.size() - 1))),
            QuoteVerdict::kOurs);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, static_cast<uint16_t>(outer.size()))),
            QuoteVerdict::kRejected);
}

TEST(TooBigQuoteTest, QuoteTooShortToShowTheKeyIsRejected) {
  const EncapParams p = GreKeyed();
  Bytes error = FragNeeded(Outer(p), 1400);
  // The RFC 792 minimum: the IP header and 8 bytes, here cut to 4 (no key).
  error.resize(kIpv4HeaderLen + 8 + kIpv4HeaderLen + 4);
  StoreBe16(error.data() + 2, static_cast<uint16_t>(error.size()));
  uint8_t* icmp = error.data() + kIpv4HeaderLen;
  StoreBe16(icmp + 2, 0);
  StoreBe16(icmp + 2, InternetChecksum(icmp, error.size() - kIpv4HeaderLen));
  EXPECT_EQ(Judge(PatternOf(p), error), QuoteVerdict::kRejected);
}

TEST(TooBigQuoteTest, SequenceNumberIsHandedBackToCheck) {
  EncapParams p = GreKeyed();
  p.sequence = true;
  uint32_t sequence = 0;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(p, 777), 1400), &sequence), QuoteVerdict::kOurs);
  EXPECT_EQ(sequence, 777u);
  // A tunnel that numbers its packets never sends one without.
  EncapParams unnumbered = p;
  unnumbered.sequence = false;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(unnumbered), 1400)), QuoteVerdict::kRejected);
}

TEST(TooBigQuoteTest, IpipIsJudgedByAddressesProtocolAndMtu) {
  EncapParams p;
  p.mode = TunnelMode::kIpip;
  p.local = kLocal;
  p.remote = kRemote;
  p.ttl = 64;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(p), 1300)), QuoteVerdict::kOurs);
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(p), 500)), QuoteVerdict::kRejected);
  EncapParams other_source = p;
  other_source.local = 0xC6120009;
  EXPECT_EQ(Judge(PatternOf(p), FragNeeded(Outer(other_source), 1300)), QuoteVerdict::kRejected);
}

TEST(TooBigQuoteTest, FouNeedsItsPortsAndKey) {
  EncapParams p = GreKeyed();
  p.udp_dport = kGreInUdpPort;
  p.udp_sport = 50000;
  OwnPacketPattern pattern = PatternOf(p);
  const uint16_t bound[] = {50000};
  pattern.udp_sports = bound;
  pattern.udp_sport_count = 1;
  const Bytes outer = Outer(p);
  EXPECT_EQ(Judge(pattern, FragNeeded(outer, 1400)), QuoteVerdict::kOurs);

  Bytes other_sport = FragNeeded(outer, 1400);
  Forge(other_sport, kIpv4HeaderLen, {0xC3, 0x51});  // 50001
  EXPECT_EQ(Judge(pattern, other_sport), QuoteVerdict::kRejected);

  Bytes other_dport = FragNeeded(outer, 1400);
  Forge(other_dport, kIpv4HeaderLen + 2, {0x00, 0x35});  // 53: someone else's UDP
  EXPECT_EQ(Judge(pattern, other_dport), QuoteVerdict::kOtherFlow);

  EncapParams other_key = p;
  other_key.key = kKey + 1;
  EXPECT_EQ(Judge(pattern, FragNeeded(Outer(other_key), 1400)), QuoteVerdict::kRejected);
}

// IPv6: ip6gre's packets carry the encapsulation-limit option before GRE.
TEST(TooBigQuoteTest, Ip6greThroughItsDestinationOptions) {
  EncapParams p;
  p.mode = TunnelMode::kIp6gre;
  uint8_t local[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  uint8_t remote[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  p.local = OuterAddress::FromIpv6(local);
  p.remote = OuterAddress::FromIpv6(remote);
  p.has_key = true;
  p.key = kKey;
  p.ttl = 64;
  const Bytes outer = Outer(p);
  Bytes error(2048);
  const size_t n = WriteIcmpv6PacketTooBig(outer.data(), outer.size(), OuterAddress(kRouter), 1280,
                                           error.data(), error.size());
  ASSERT_NE(n, 0u);
  // A raw ICMPv6 socket reads the message without the IPv6 header.
  const uint8_t* message = error.data() + kIpv6HeaderLen;
  const size_t message_len = n - kIpv6HeaderLen;
  TooBigReport report;
  ASSERT_TRUE(ParseIcmpv6PacketTooBig(message, message_len, &report));
  EXPECT_TRUE(report.ipv6);
  EXPECT_EQ(report.mtu, 1280u);
  EXPECT_EQ(report.quoted_protocol, kIpProtoGre);
  EXPECT_EQ(report.quoted_len, outer.size());
  uint32_t sequence = 0;
  EXPECT_EQ(CheckTooBigQuote(PatternOf(p), report, &sequence), QuoteVerdict::kOurs);

  EncapParams other_key = p;
  other_key.key = kKey + 1;
  EXPECT_EQ(CheckTooBigQuote(PatternOf(other_key), report, &sequence), QuoteVerdict::kRejected);

  // Below IPv6's least MTU (the checksum is the kernel's to check for raw ICMPv6 sockets).
  Bytes low(message, message + message_len);
  StoreBe32(low.data() + 4, 1279);
  ASSERT_TRUE(ParseIcmpv6PacketTooBig(low.data(), low.size(), &report));
  EXPECT_EQ(CheckTooBigQuote(PatternOf(p), report, &sequence), QuoteVerdict::kRejected);
}

}  // namespace
}  // namespace tunnelagent::dataplane
