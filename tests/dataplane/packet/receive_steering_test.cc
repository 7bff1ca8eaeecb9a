#include "dataplane/packet/receive_steering.h"

#include <linux/filter.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dataplane/packet/gre.h"
#include "dataplane/packet/ipv4.h"
#include "gtest/gtest.h"
#include "tests/dataplane/packet/cbpf_interpreter.h"
#include "tests/dataplane/packet/mode_packets.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane {
namespace {

using test::Bytes;
using test::CbpfResult;
using test::CheckCbpf;
using test::Hex;
using test::RunCbpf;

constexpr size_t kNever = std::numeric_limits<size_t>::max();
constexpr uint8_t kTcp = 6;
constexpr uint8_t kUdp = 17;
constexpr uint8_t kSctp = 132;
constexpr uint8_t kIcmp = 1;
constexpr uint8_t kGreC = 0x80;
constexpr uint8_t kGreK = 0x20;
constexpr uint8_t kGreS = 0x10;
constexpr uint16_t kEtherTypeArp = 0x0806;

void Put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}
void Put32(Bytes& b, size_t at, uint32_t v) {
  Put16(b, at, static_cast<uint16_t>(v >> 16));
  Put16(b, at + 2, static_cast<uint16_t>(v));
}
// Headers are built one after the other: outer + GRE + inner.
Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
Bytes Concat(Bytes a, const Bytes& b) { return std::move(a) + b; }

// An inner packet and what of it the steering hash reads.
struct Inner {
  Bytes bytes;
  size_t header_len = 0;      // bytes that must be present for it to parse
  size_t ports_offset = 0;    // where the hashed ports are
  bool ports_hashed = false;  // protocol with ports, not a fragment
};

// IPv4 with `options` words of options, then 4 bytes of ports and 16 of anything else.
Inner Ipv4Packet(uint8_t protocol, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                 uint16_t fragment = 0x4000, uint8_t options = 0, uint16_t id = 0x1234) {
  const size_t ihl = kIpv4HeaderLen + 4u * options;
  Bytes b(ihl + 20, 0x5A);
  b[0] = static_cast<uint8_t>(0x40 | (ihl / 4));
  b[1] = 0;
  Put16(b, 2, static_cast<uint16_t>(b.size()));
  Put16(b, 4, id);
  Put16(b, 6, fragment);
  b[8] = 64;
  b[9] = protocol;
  Put16(b, 10, 0);
  Put32(b, 12, src);
  Put32(b, 16, dst);
  for (size_t i = kIpv4HeaderLen; i < ihl; ++i) b[i] = 1;  // NOPs
  Put16(b, ihl, sport);
  Put16(b, ihl + 2, dport);
  const bool ports =
      (protocol == kTcp || protocol == kUdp || protocol == kSctp) && (fragment & 0x3FFF) == 0;
  return {b, kIpv4HeaderLen, ihl, ports};
}

// IPv6 2001:db8::<src_low> -> 2001:db8::<dst_low>, 4 bytes of ports and 16 more.
Inner Ipv6Packet(uint8_t next, uint32_t src_low, uint32_t dst_low, uint16_t sport, uint16_t dport,
                 uint32_t flow_label = 0, uint8_t traffic_class = 0) {
  Bytes b(kIpv6HeaderLen + 20, 0x5A);
  Put32(b, 0, (6u << 28) | (uint32_t{traffic_class} << 20) | (flow_label & 0xFFFFF));
  Put16(b, 4, 20);
  b[6] = next;
  b[7] = 64;
  for (size_t base : {size_t{8}, size_t{24}}) {
    Put32(b, base, 0x20010db8);
    Put32(b, base + 4, 0);
    Put32(b, base + 8, 0);
  }
  Put32(b, 20, src_low);
  Put32(b, 36, dst_low);
  Put16(b, kIpv6HeaderLen, sport);
  Put16(b, kIpv6HeaderLen + 2, dport);
  const bool ports = next == kTcp || next == kUdp || next == kSctp;
  return {b, kIpv6HeaderLen, kIpv6HeaderLen, ports};
}

Bytes OuterIpv4(uint8_t protocol, size_t payload_len, uint8_t options = 0) {
  Inner h = Ipv4Packet(protocol, test::kLocal, test::kRemote, 0, 0, 0x4000, options);
  h.bytes.resize(h.ports_offset);
  Put16(h.bytes, 2, static_cast<uint16_t>(h.bytes.size() + payload_len));
  return h.bytes;
}

Bytes GreBytes(uint8_t flags, uint16_t type, uint32_t key = 0, uint32_t sequence = 0) {
  Bytes b = {flags, 0, 0, 0};
  Put16(b, 2, type);
  auto append = [&b](uint32_t v) {
    b.resize(b.size() + 4);
    Put32(b, b.size() - 4, v);
  };
  if (flags & kGreC) append(0xABCD0000);  // steering does not check the checksum
  if (flags & kGreK) append(key);
  if (flags & kGreS) append(sequence);
  return b;
}

Bytes EthernetHeader(uint16_t type) {
  Bytes b = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0, 0};
  Put16(b, 12, type);
  return b;
}

struct Case {
  std::string name;
  SteeringSocket socket;
  uint8_t protocol;
  Bytes bytes;
  size_t parsed_from = kNever;  // shorter than this: worker 0
  size_t ports_end = kNever;    // from this length on, the ports are in the hash
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

Case Wrap(std::string name, SteeringSocket socket, uint8_t protocol, const Bytes& before,
          const Inner& inner) {
  Case c{std::move(name), socket, protocol, Concat(before, inner.bytes)};
  c.parsed_from = before.size() + inner.header_len;
  if (inner.ports_hashed) c.ports_end = before.size() + inner.ports_offset + 4;
  return c;
}
Case Unparsable(std::string name, SteeringSocket socket, uint8_t protocol, Bytes bytes) {
  return Case{std::move(name), socket, protocol, std::move(bytes)};
}

// On an IPv4 socket the packet starts with the outer header; on an IPv6 socket it does not.
Bytes Outer(SteeringSocket socket, uint8_t protocol, const Bytes& rest, size_t inner_len,
            uint8_t options = 0) {
  if (socket == SteeringSocket::kIpv6) return rest;
  return Concat(OuterIpv4(protocol, rest.size() + inner_len, options), rest);
}

Inner Tcp4(uint16_t sport = 40001) { return Ipv4Packet(kTcp, 0xC0000201, 0xC6336402, sport, 443); }
Inner Udp6(uint16_t sport = 40001) { return Ipv6Packet(kUdp, 1, 2, sport, 53, 0x12345); }

// Every mode, over both sockets where the mode exists there.
std::vector<Case> ModeCases() {
  std::vector<Case> cases;
  for (const SteeringSocket s : {SteeringSocket::kIpv4, SteeringSocket::kIpv6}) {
    const std::string on = s == SteeringSocket::kIpv4 ? "Ipv4" : "Ipv6";
    auto gre = [&](const std::string& name, const Bytes& header, const Inner& inner,
                   uint8_t options = 0) {
      cases.push_back(Wrap(on + "Gre" + name, s, kIpProtoGre,
                           Outer(s, kIpProtoGre, header, inner.bytes.size(), options), inner));
    };
    gre("Keyless", GreBytes(0, kEtherTypeIpv4), Tcp4());
    gre("Keyed", GreBytes(kGreK, kEtherTypeIpv4, 0x0a0b0c0d), Tcp4());
    gre("Checksum", GreBytes(kGreC, kEtherTypeIpv4), Tcp4());
    gre("ChecksumKeyed", GreBytes(kGreC | kGreK, kEtherTypeIpv4, 42), Tcp4());
    gre("Ipv6", GreBytes(0, kEtherTypeIpv6), Udp6());
    gre("KeyedIpv6", GreBytes(kGreK, kEtherTypeIpv6, 7), Udp6());
    gre("Udp", GreBytes(0, kEtherTypeIpv4), Ipv4Packet(kUdp, 0x0A000001, 0x0A000002, 5, 6));
    gre("Sctp", GreBytes(0, kEtherTypeIpv4), Ipv4Packet(kSctp, 0x0A000001, 0x0A000002, 5, 6));
    gre("Icmp", GreBytes(0, kEtherTypeIpv4), Ipv4Packet(kIcmp, 0x0A000001, 0x0A000002, 5, 6));
    gre("Fragment", GreBytes(0, kEtherTypeIpv4),
        Ipv4Packet(kTcp, 0x0A000001, 0x0A000002, 5, 6, 0x2000));
    gre("LaterFragment", GreBytes(0, kEtherTypeIpv4),
        Ipv4Packet(kUdp, 0x0A000001, 0x0A000002, 5, 6, 0x00B9));
    gre("InnerOptions", GreBytes(0, kEtherTypeIpv4),
        Ipv4Packet(kTcp, 0x0A000001, 0x0A000002, 5, 6, 0, 3));
    gre("Icmp6", GreBytes(0, kEtherTypeIpv6), Ipv6Packet(58, 1, 2, 0x8000, 0, 7));
    if (s == SteeringSocket::kIpv4)
      gre("OuterOptions", GreBytes(kGreK, kEtherTypeIpv4, 9), Tcp4(), 2);
    const Bytes tap = GreBytes(0, kEtherTypeTransparentBridging);
    gre("TapIpv4", Concat(tap, EthernetHeader(kEtherTypeIpv4)), Tcp4());
    gre("TapIpv6", Concat(tap, EthernetHeader(kEtherTypeIpv6)), Udp6());
    gre("KeyedTapIpv4",
        Concat(GreBytes(kGreK, kEtherTypeTransparentBridging, 5), EthernetHeader(kEtherTypeIpv4)),
        Tcp4());
    const Bytes arp(28, 0x01);
    cases.push_back(Unparsable(
        on + "GreTapArp", s, kIpProtoGre,
        Outer(s, kIpProtoGre, Concat(tap, EthernetHeader(kEtherTypeArp)), arp.size()) + arp));
    const Inner tcp = Tcp4();
    cases.push_back(
        Unparsable(on + "GreSequence", s, kIpProtoGre,
                   Outer(s, kIpProtoGre, GreBytes(kGreS, kEtherTypeIpv4, 0, 7), tcp.bytes.size()) +
                       tcp.bytes));
    cases.push_back(Unparsable(
        on + "GreVersion1", s, kIpProtoGre,
        Outer(s, kIpProtoGre, Bytes{0x00, 0x01, 0x08, 0x00}, tcp.bytes.size()) + tcp.bytes));
    cases.push_back(
        Unparsable(on + "GreMpls", s, kIpProtoGre,
                   Outer(s, kIpProtoGre, GreBytes(0, 0x8847), tcp.bytes.size()) + tcp.bytes));
    cases.push_back(
        Wrap(on + "Ipv4InIp", s, kIpProtoIpip, Outer(s, kIpProtoIpip, {}, tcp.bytes.size()), tcp));
    cases.push_back(Wrap(on + "Ipv6InIp", s, kIpProtoIpv6,
                         Outer(s, kIpProtoIpv6, {}, Udp6().bytes.size()), Udp6()));
    cases.push_back(Unparsable(on + "Ipv6InIpButIpv4", s, kIpProtoIpv6,
                               Outer(s, kIpProtoIpv6, {}, tcp.bytes.size()) + tcp.bytes));
    cases.push_back(Unparsable(on + "Ipv4InIpButIpv6", s, kIpProtoIpip,
                               Outer(s, kIpProtoIpip, {}, Udp6().bytes.size()) + Udp6().bytes));
  }
  return cases;
}

// The golden packets of the other tests: on an IPv6 socket without their 40-byte IPv6 header
// and 8-byte encapsulation-limit option, which the kernel strips.
std::vector<Case> GoldenCases() {
  auto v4 = [](const char* name, uint8_t protocol, const char* hex, size_t inner_at,
               size_t inner_len) {
    return Case{name, SteeringSocket::kIpv4, protocol, Hex(hex), inner_at + inner_len};
  };
  auto v6 = [](const char* name, uint8_t protocol, const char* hex, size_t inner_at,
               size_t inner_len) {
    Bytes all = Hex(hex);
    return Case{name, SteeringSocket::kIpv6, protocol, Bytes(all.begin() + 48, all.end()),
                inner_at + inner_len};
  };
  Case sequenced{"GoldenGreCsumKeySeq", SteeringSocket::kIpv4, kIpProtoGre,
                 Hex(test::kGreCsumKeySeq)};
  Case sequenced6 = v6("GoldenIp6greKeyCsumSeq", kIpProtoGre, test::kIp6greKeyCsumSeq, 0, 0);
  sequenced6.parsed_from = kNever;
  return {
      v4("GoldenGre", kIpProtoGre, test::kGre, 24, 20),
      v4("GoldenGreKey", kIpProtoGre, test::kGreKey, 28, 20),
      v4("GoldenGreCsum", kIpProtoGre, test::kGreCsum, 28, 20),
      sequenced,
      v4("GoldenGreIpv6", kIpProtoGre, test::kGreIpv6, 24, 40),
      v4("GoldenIpip", kIpProtoIpip, test::kIpip, 20, 20),
      v4("GoldenGretap", kIpProtoGre, test::kGretap, 38, 20),
      v4("GoldenSit", kIpProtoIpv6, test::kSit, 20, 40),
      v6("GoldenIp6gre", kIpProtoGre, test::kIp6gre, 4, 20),
      sequenced6,
      v6("GoldenIp6gretap", kIpProtoGre, test::kIp6gretap, 18, 20),
      v6("GoldenIp6tnl4", kIpProtoIpip, test::kIp6tnl4, 0, 20),
      v6("GoldenIp6tnl6", kIpProtoIpv6, test::kIp6tnl6, 0, 40),
  };
}

std::vector<Case> AllCases() {
  std::vector<Case> all = ModeCases();
  for (Case& c : GoldenCases()) all.push_back(std::move(c));
  return all;
}

using ProgramKey = std::tuple<SteeringSocket, uint8_t, unsigned>;

// Every worker's program for a socket, protocol and worker count, built once.
const std::vector<std::vector<sock_filter>>& Programs(SteeringSocket socket, uint8_t protocol,
                                                      unsigned workers) {
  static auto* cache = new std::map<ProgramKey, std::vector<std::vector<sock_filter>>>;
  auto [it, added] = cache->try_emplace(ProgramKey{socket, protocol, workers});
  if (added) {
    for (unsigned w = 0; w < workers; ++w) {
      it->second.push_back(SteeringProgram(socket, protocol, w, workers));
    }
  }
  return it->second;
}

// Runs every worker's program on the packet and checks that exactly one accepts it whole, the
// one SteeringWorker names, and that no run loaded beyond the packet; returns that worker.
unsigned ExpectExactlyOne(SteeringSocket socket, uint8_t protocol, const uint8_t* data, size_t len,
                          unsigned workers, const std::string& what) {
  const unsigned expected = SteeringWorker(socket, protocol, data, len, workers);
  EXPECT_LT(expected, workers) << what;
  unsigned accepted = 0;
  unsigned last = workers;
  const auto& programs = Programs(socket, protocol, workers);
  for (unsigned w = 0; w < workers; ++w) {
    const CbpfResult r = RunCbpf(programs[w], data, len);
    EXPECT_EQ(r.error, "") << what << " worker " << w;
    EXPECT_FALSE(r.out_of_bounds) << what << " worker " << w << " loaded beyond " << len;
    EXPECT_FALSE(r.divided_by_zero) << what << " worker " << w;
    if (r.value != 0) {
      EXPECT_EQ(r.value, 0xFFFFFFFFu) << what << " worker " << w << " keeps only part";
      ++accepted;
      last = w;
    }
  }
  EXPECT_EQ(accepted, 1u) << what << " (" << workers << " workers)";
  if (accepted == 1) {
    EXPECT_EQ(last, expected) << what << " (" << workers << " workers)";
  }
  return expected;
}

struct Shape {
  SteeringSocket socket;
  uint8_t protocol;
  const char* name;
};
constexpr Shape kShapes[] = {
    {SteeringSocket::kIpv4, kIpProtoGre, "IPv4/GRE"},
    {SteeringSocket::kIpv4, kIpProtoIpip, "IPv4/IPIP"},
    {SteeringSocket::kIpv4, kIpProtoIpv6, "IPv4/IPv6"},
    {SteeringSocket::kIpv6, kIpProtoGre, "IPv6/GRE"},
    {SteeringSocket::kIpv6, kIpProtoIpip, "IPv6/IPIP"},
    {SteeringSocket::kIpv6, kIpProtoIpv6, "IPv6/IPv6"},
};

class SteeringModeTest : public ::testing::TestWithParam<Case> {};

TEST_P(SteeringModeTest, ExactlyOneWorkerAcceptsTheOneSteeringWorkerNames) {
  const Case& c = GetParam();
  for (unsigned workers = 2; workers <= 8; ++workers) {
    const unsigned w =
        ExpectExactlyOne(c.socket, c.protocol, c.bytes.data(), c.bytes.size(), workers, c.name);
    if (c.parsed_from == kNever) {
      EXPECT_EQ(w, 0u) << c.name << " is not to be parsed";
    }
  }
}

TEST_P(SteeringModeTest, EveryTruncationLandsOnExactlyOneWorker) {
  const Case& c = GetParam();
  for (unsigned workers = 2; workers <= 8; ++workers) {
    const unsigned full =
        SteeringWorker(c.socket, c.protocol, c.bytes.data(), c.bytes.size(), workers);
    for (size_t len = 0; len <= c.bytes.size(); ++len) {
      // A copy of exactly `len` bytes, so a read past it is caught by sanitizers too.
      const Bytes cut(c.bytes.begin(), c.bytes.begin() + len);
      const std::string what = c.name + " cut to " + std::to_string(len);
      const unsigned w = ExpectExactlyOne(c.socket, c.protocol, cut.data(), len, workers, what);
      if (len < c.parsed_from) {
        EXPECT_EQ(w, 0u) << what;
      }
      if (len >= c.ports_end || (c.ports_end == kNever && len >= c.parsed_from)) {
        EXPECT_EQ(w, full) << what << ": all that is hashed is there";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, SteeringModeTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(SteeringTest, ProgramsAreAcceptedByTheCheckerAndShort) {
  for (const Shape& s : kShapes) {
    for (unsigned workers : {2u, 3u, 4u, 8u, 64u}) {
      for (unsigned w = 0; w < workers; ++w) {
        const std::vector<sock_filter> p = SteeringProgram(s.socket, s.protocol, w, workers);
        EXPECT_EQ(CheckCbpf(p), "") << s.name << " worker " << w << " of " << workers;
        EXPECT_LE(p.size(), 160u) << s.name;
      }
    }
    std::cout << s.name << ": " << SteeringProgram(s.socket, s.protocol, 0, 2).size()
              << " instructions\n";
  }
}

TEST(SteeringTest, OutOfDomainArgumentsStillGiveEachPacketOneWorker) {
  const Bytes packet = Hex(test::kGre);
  auto verdict = [&](uint8_t protocol, unsigned worker, unsigned workers) {
    const std::vector<sock_filter> p =
        SteeringProgram(SteeringSocket::kIpv4, protocol, worker, workers);
    EXPECT_EQ(CheckCbpf(p), "");
    return RunCbpf(p, packet.data(), packet.size()).value;
  };
  EXPECT_EQ(verdict(kIpProtoGre, 0, 1), 0xFFFFFFFFu);
  EXPECT_EQ(verdict(kIpProtoGre, 0, 0), 0xFFFFFFFFu);
  EXPECT_EQ(verdict(kIpProtoGre, 3, 3), 0u);
  EXPECT_EQ(verdict(kUdp, 0, 4), 0xFFFFFFFFu);
  EXPECT_EQ(verdict(kUdp, 1, 4), 0u);
  EXPECT_EQ(SteeringWorker(SteeringSocket::kIpv4, kUdp, packet.data(), packet.size(), 4), 0u);
  EXPECT_EQ(SteeringWorker(SteeringSocket::kIpv4, kIpProtoGre, packet.data(), packet.size(), 1),
            0u);
}

TEST(SteeringTest, RandomGarbageLandsOnExactlyOneWorker) {
  std::mt19937 rng(20240611);
  const std::vector<Case> cases = AllCases();
  std::uniform_int_distribution<size_t> pick(0, cases.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int nonzero = 0;
  for (int i = 0; i < 3000; ++i) {
    Bytes packet;
    if (i % 3 == 0) {
      packet.resize(std::uniform_int_distribution<size_t>(0, 120)(rng));
      for (uint8_t& b : packet) b = static_cast<uint8_t>(byte(rng));
    } else {
      // A real packet with a few bytes changed and perhaps cut: reaches the deeper branches.
      packet = cases[pick(rng)].bytes;
      const int flips = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int f = 0; f < flips; ++f) {
        packet[std::uniform_int_distribution<size_t>(0, packet.size() - 1)(rng)] =
            static_cast<uint8_t>(byte(rng));
      }
      if (i % 3 == 2) {
        packet.resize(std::uniform_int_distribution<size_t>(0, packet.size())(rng));
      }
    }
    for (const Shape& s : kShapes) {
      for (unsigned workers : {2u, 3u, 5u, 8u}) {
        const unsigned w = ExpectExactlyOne(
            s.socket, s.protocol, packet.data(), packet.size(), workers,
            std::string(s.name) + " garbage " + std::to_string(i) + ": " + test::ToHex(packet));
        if (w != 0) ++nonzero;
      }
    }
    if (HasFailure()) return;
  }
  // Not all to worker 0: the mutated packets do exercise the hashing branches.
  EXPECT_GT(nonzero, 1000);
}

TEST(SteeringTest, SequencedGreAlwaysLandsOnWorkerZero) {
  for (const SteeringSocket s : {SteeringSocket::kIpv4, SteeringSocket::kIpv6}) {
    for (const uint8_t flags : {kGreS, uint8_t(kGreS | kGreK), uint8_t(kGreS | kGreC | kGreK)}) {
      for (uint16_t port = 1000; port < 1100; ++port) {
        const Inner inner = Tcp4(port);
        const Bytes packet = Outer(s, kIpProtoGre, GreBytes(flags, kEtherTypeIpv4, port * 7u, port),
                                   inner.bytes.size()) +
                             inner.bytes;
        for (unsigned workers = 2; workers <= 8; ++workers) {
          EXPECT_EQ(ExpectExactlyOne(s, kIpProtoGre, packet.data(), packet.size(), workers,
                                     "sequenced " + std::to_string(port)),
                    0u);
        }
      }
    }
  }
}

// The specified hash, from field values rather than packet offsets.
unsigned SpecWorker(uint32_t h, unsigned workers) {
  h ^= h >> 16;
  return ((h * 0x9E3779B1u) >> 16) % workers;
}

TEST(SteeringTest, HashIsTheSpecifiedFunctionOfTheInnerFlow) {
  constexpr uint32_t kSrc = 0x0A010203;
  constexpr uint32_t kDst = 0xAC100005;
  constexpr uint32_t kKey = 0xDEADBEEF;
  const Inner tcp = Ipv4Packet(kTcp, kSrc, kDst, 51000, 80);
  const Inner frag = Ipv4Packet(kTcp, kSrc, kDst, 51000, 80, 0x2000);
  const Inner udp6 = Ipv6Packet(kUdp, 0x11223344, 0x55667788, 4000, 53, 0xABCDE);
  const Bytes keyed = OuterIpv4(kIpProtoGre, 8 + tcp.bytes.size()) +
                      GreBytes(kGreK, kEtherTypeIpv4, kKey) + tcp.bytes;
  const Bytes keyed_frag = OuterIpv4(kIpProtoGre, 8 + frag.bytes.size()) +
                           GreBytes(kGreK, kEtherTypeIpv4, kKey) + frag.bytes;
  const Bytes tap6 =
      GreBytes(kGreC, kEtherTypeTransparentBridging) + EthernetHeader(kEtherTypeIpv6) + udp6.bytes;
  for (unsigned workers = 2; workers <= 8; ++workers) {
    EXPECT_EQ(
        SteeringWorker(SteeringSocket::kIpv4, kIpProtoGre, keyed.data(), keyed.size(), workers),
        SpecWorker(kKey ^ kSrc ^ kDst ^ (51000u << 16 | 80), workers));
    EXPECT_EQ(SteeringWorker(SteeringSocket::kIpv4, kIpProtoGre, keyed_frag.data(),
                             keyed_frag.size(), workers),
              SpecWorker(kKey ^ kSrc ^ kDst, workers));
    EXPECT_EQ(SteeringWorker(SteeringSocket::kIpv6, kIpProtoGre, tap6.data(), tap6.size(), workers),
              SpecWorker(0x11223344u ^ 0x55667788u ^ (4000u << 16 | 53), workers));
    EXPECT_EQ(SteeringWorker(SteeringSocket::kIpv6, kIpProtoIpv6, udp6.bytes.data(),
                             udp6.bytes.size(), workers),
              SpecWorker(0x11223344u ^ 0x55667788u ^ (4000u << 16 | 53), workers));
  }
}

// Linux gives a connection a new flow label when it re-picks its hash (after a retransmission
// timeout): that must not move the flow to another worker.
TEST(SteeringTest, FlowLabelDoesNotMoveAnIpv6Flow) {
  for (uint16_t port = 3000; port < 3100; ++port) {
    const Inner a = Ipv6Packet(kTcp, 0x01, 0x02, port, 443, 0x12345);
    const Inner b = Ipv6Packet(kTcp, 0x01, 0x02, port, 443, 0xFEDCB);
    for (unsigned workers : {2u, 3u, 5u}) {
      EXPECT_EQ(ExpectExactlyOne(SteeringSocket::kIpv6, kIpProtoIpv6, a.bytes.data(),
                                 a.bytes.size(), workers, "label a"),
                ExpectExactlyOne(SteeringSocket::kIpv6, kIpProtoIpv6, b.bytes.data(),
                                 b.bytes.size(), workers, "label b"))
          << "port " << port;
    }
  }
}

TEST(SteeringTest, OuterHeaderAndPayloadDoNotMoveAFlow) {
  for (uint16_t port = 2000; port < 2200; ++port) {
    const Inner a = Ipv4Packet(kTcp, 0x0A000001, 0x0A000002, port, 22, 0x4000, 0, 1);
    Inner b = Ipv4Packet(kTcp, 0x0A000001, 0x0A000002, port, 22, 0x0000, 0, 999);
    b.bytes.resize(b.bytes.size() + 100, 0x77);  // a longer segment of the same flow
    b.bytes[8] = 3;                              // another TTL
    Bytes pa =
        OuterIpv4(kIpProtoGre, 8 + a.bytes.size()) + GreBytes(kGreK, kEtherTypeIpv4, 5) + a.bytes;
    Bytes pb = OuterIpv4(kIpProtoGre, 12 + b.bytes.size(), 1) +
               GreBytes(kGreC | kGreK, kEtherTypeIpv4, 5) + b.bytes;
    pb[8] = 1;  // outer TTL
    for (unsigned workers : {2u, 3u, 4u, 7u}) {
      EXPECT_EQ(
          ExpectExactlyOne(SteeringSocket::kIpv4, kIpProtoGre, pa.data(), pa.size(), workers, "a"),
          ExpectExactlyOne(SteeringSocket::kIpv4, kIpProtoGre, pb.data(), pb.size(), workers, "b"))
          << "port " << port;
    }
  }
}

// `workers` counts of `flows` flows, each flow sent twice (with other payloads), through the
// programs; fails when a flow's two packets land apart.
std::vector<int> Spread(SteeringSocket socket, uint8_t protocol, unsigned workers, int flows,
                        uint16_t first_port, uint16_t step) {
  std::vector<int> counts(workers);
  for (int i = 0; i < flows; ++i) {
    const uint16_t port = static_cast<uint16_t>(first_port + i * step);
    unsigned seen = workers;
    for (int copy = 0; copy < 2; ++copy) {
      Inner inner = protocol == kIpProtoIpv6 ? Ipv6Packet(kTcp, 0x0A, 0x0B, port, 443, 0x5555)
                                             : Ipv4Packet(kTcp, 0xC0A80001, 0xC0A80102, port, 443,
                                                          0x4000, 0, static_cast<uint16_t>(copy));
      inner.bytes.resize(inner.bytes.size() + copy * 50, 0x33);
      const Bytes rest = protocol == kIpProtoGre ? GreBytes(kGreK, kEtherTypeIpv4, 100) : Bytes{};
      const Bytes packet = Outer(socket, protocol, rest, inner.bytes.size()) + inner.bytes;
      const unsigned w =
          ExpectExactlyOne(socket, protocol, packet.data(), packet.size(), workers, "flow");
      if (copy == 0) {
        seen = w;
        ++counts[w];
      } else {
        EXPECT_EQ(w, seen) << "flow with port " << port << " moved";
      }
    }
  }
  return counts;
}

void ExpectShares(const std::vector<int>& counts, int flows, double low, double high,
                  const std::string& what) {
  for (size_t w = 0; w < counts.size(); ++w) {
    EXPECT_GE(counts[w], low * flows) << what << " worker " << w;
    EXPECT_LE(counts[w], high * flows) << what << " worker " << w;
  }
}

TEST(SteeringTest, TcpFlowsSpreadEvenlyAndStayPut) {
  constexpr int kFlows = 1000;
  const Shape shapes[] = {{SteeringSocket::kIpv4, kIpProtoGre, "IPv4/GRE"},
                          {SteeringSocket::kIpv4, kIpProtoIpip, "IPv4/IPIP"},
                          {SteeringSocket::kIpv6, kIpProtoGre, "IPv6/GRE"},
                          {SteeringSocket::kIpv6, kIpProtoIpv6, "IPv6/IPv6"}};
  for (const Shape& s : shapes) {
    // Consecutive ports, and ports of one parity as Linux's connect() picks them.
    for (const uint16_t step : {uint16_t{1}, uint16_t{2}}) {
      const std::string what = std::string(s.name) + " step " + std::to_string(step);
      ExpectShares(Spread(s.socket, s.protocol, 2, kFlows, 32768, step), kFlows, 0.35, 0.65, what);
      ExpectShares(Spread(s.socket, s.protocol, 4, kFlows, 32768, step), kFlows, 0.15, 0.35, what);
    }
  }
}

// Linux's connect() takes ephemeral ports of one parity, in order: a host's first flows differ
// in a few low port bits only, which a linear (XOR-only) fold maps to one worker.
TEST(SteeringTest, EvenPortsOfOneHostSpread) {
  constexpr int kFlows = 100;
  for (const Shape& s : {kShapes[0], kShapes[5]}) {
    ExpectShares(Spread(s.socket, s.protocol, 2, kFlows, 33280, 2), kFlows, 0.3, 0.7, s.name);
    ExpectShares(Spread(s.socket, s.protocol, 4, kFlows, 33280, 2), kFlows, 0.1, 0.4, s.name);
  }
}

TEST(SteeringTest, InstructionsRunPerPacketStaySmall) {
  size_t most = 0;
  for (const Case& c : AllCases()) {
    const std::vector<sock_filter> p = SteeringProgram(c.socket, c.protocol, 1, 4);
    const CbpfResult r = RunCbpf(p, c.bytes.data(), c.bytes.size());
    EXPECT_LE(r.executed, p.size()) << c.name << ": jumps only forward";
    most = std::max(most, r.executed);
  }
  std::cout << "at most " << most << " instructions run per packet\n";
  EXPECT_LE(most, 100u);
}

TEST(SteeringTest, KernelAcceptsEveryProgram) {
  if (geteuid() != 0) GTEST_SKIP() << "raw sockets need root";
  for (const Shape& s : kShapes) {
    const int family = s.socket == SteeringSocket::kIpv4 ? AF_INET : AF_INET6;
    const int fd = socket(family, SOCK_RAW | SOCK_CLOEXEC, s.protocol);
    if (fd < 0 && (errno == EAFNOSUPPORT || errno == EPERM || errno == EACCES)) {
      GTEST_SKIP() << "no raw socket for " << s.name << ": " << strerror(errno);
    }
    ASSERT_GE(fd, 0) << s.name << ": " << strerror(errno);
    for (unsigned workers : {2u, 3u, 8u}) {
      for (unsigned w = 0; w < workers; ++w) {
        std::vector<sock_filter> p = SteeringProgram(s.socket, s.protocol, w, workers);
        const sock_fprog prog{static_cast<unsigned short>(p.size()), p.data()};
        EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog), 0)
            << s.name << " worker " << w << " of " << workers << ": " << strerror(errno);
      }
    }
    close(fd);
  }
}

// The interpreter itself, on the semantics the steering tests lean on.
TEST(SteeringCbpfInterpreterTest, LoadBeyondThePacketDrops) {
  const Bytes packet = {1, 2, 3, 4, 5, 6};  // runs see 5 or all 6 of them
  const std::vector<sock_filter> word_at_2 = {BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 2),
                                              BPF_STMT(BPF_RET | BPF_K, 7)};
  CbpfResult r = RunCbpf(word_at_2, packet.data(), 5);
  EXPECT_TRUE(r.out_of_bounds);
  EXPECT_EQ(r.value, 0u);
  r = RunCbpf(word_at_2, packet.data(), 6);
  EXPECT_FALSE(r.out_of_bounds);
  EXPECT_EQ(r.value, 7u);
  const std::vector<sock_filter> ind = {BPF_STMT(BPF_LDX | BPF_IMM, 3),
                                        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 1),
                                        BPF_STMT(BPF_RET | BPF_A, 0)};
  EXPECT_TRUE(RunCbpf(ind, packet.data(), 5).out_of_bounds);
  EXPECT_EQ(RunCbpf(ind, packet.data(), 6).value, 0x0506u);
}

TEST(SteeringCbpfInterpreterTest, ArithmeticAndJumpsFollowTheKernel) {
  const Bytes packet = {0x47, 0x00, 0x80, 0x01};
  const std::vector<sock_filter> p = {
      BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),         // X = 4 * 7 = 28
      BPF_STMT(BPF_MISC | BPF_TXA, 0),                //
      BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, 5),         // 3
      BPF_STMT(BPF_ALU | BPF_NEG, 0),                 // 0xFFFFFFFD
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 30),        // 3
      BPF_STMT(BPF_ST, 4),                            //
      BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 2),          // 0x8001
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 1, 0, 2),  //
      BPF_STMT(BPF_LDX | BPF_MEM, 4),                 //
      BPF_STMT(BPF_ALU | BPF_MUL | BPF_X, 0),         // 0x18003
      BPF_STMT(BPF_RET | BPF_A, 0),
  };
  EXPECT_EQ(CheckCbpf(p), "");
  EXPECT_EQ(RunCbpf(p, packet.data(), packet.size()).value, 0x18003u);
  const std::vector<sock_filter> divide = {BPF_STMT(BPF_LD | BPF_IMM, 9),
                                           BPF_STMT(BPF_ALU | BPF_DIV | BPF_X, 0),
                                           BPF_STMT(BPF_RET | BPF_K, 1)};
  const CbpfResult r = RunCbpf(divide, packet.data(), packet.size());
  EXPECT_TRUE(r.divided_by_zero);
  EXPECT_EQ(r.value, 0u);
}

TEST(SteeringCbpfInterpreterTest, CheckerRefusesWhatTheKernelRefuses) {
  EXPECT_NE(CheckCbpf({}), "");
  EXPECT_NE(CheckCbpf({BPF_STMT(BPF_LD | BPF_IMM, 1)}), "");  // no return
  EXPECT_NE(CheckCbpf({BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, 0), BPF_STMT(BPF_RET | BPF_K, 0)}), "");
  EXPECT_NE(CheckCbpf({BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0), BPF_STMT(BPF_RET | BPF_K, 0)}),
            "");
  // M[1] is stored on one path only.
  EXPECT_NE(CheckCbpf({BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0), BPF_STMT(BPF_ST, 1),
                       BPF_STMT(BPF_LD | BPF_MEM, 1), BPF_STMT(BPF_RET | BPF_A, 0)}),
            "");
  EXPECT_EQ(CheckCbpf({BPF_STMT(BPF_ST, 1), BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0),
                       BPF_STMT(BPF_LD | BPF_MEM, 1), BPF_STMT(BPF_RET | BPF_A, 0)}),
            "");
}

}  // namespace
}  // namespace tunnelagent::dataplane
