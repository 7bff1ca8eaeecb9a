// Google Benchmark micro-benchmarks of the dataplane's per-packet code, without devices or
// sockets: what one packet costs in the codecs and the tunnel lookup, so that the offloads and
// the batching can be checked not to make the per-packet path slower.
// Not a test: it asserts nothing about speed and is not registered with CTest.
//
//   make microbench                      # builds, then runs every benchmark
//   build/tests/dataplane_microbench --benchmark_filter=Lookup --benchmark_min_time=0.2
//
// What is measured (inner packets are IPv4/UDP of 64 and 1400 bytes, laid out as the engines
// lay them out: kMaxEncapHeadroom bytes of headroom, then the packet):
//   BM_Encapsulate/<tunnel>/<inner bytes>  gre (keyless), gre_key_csum_seq, ipip, ip6gre
//   BM_EncapsulateAfterLoopCheck/<tunnel>/<inner bytes>  gre, ip6gre: LoopCheck, then
//                                          Encapsulate, as PrepareTransmit does
//   BM_Decapsulate/<tunnel>/<inner bytes>  the same packets back (Decapsulate, DecapsulateIpv6)
//   BM_GreChecksum/<bytes>                 the RFC 1071 sum the GRE C bit costs
//   BM_Lookup/<case>/<tunnels>             TunnelTable::Lookup in a table of 1 and 10,000
//                                          tunnels: exact_hit (local+remote, first probe),
//                                          remote_only_hit (wildcard local, second probe), miss
//                                          (all four probes); the time must not grow with size
//   BM_IcmpFragNeeded                      WriteIcmpFragmentationNeeded for a 1400-byte packet
//   BM_SegmentTso/<payload bytes>          SegmentSuperPacket of a TCPv4 TSO read (MSS 1436)
//                                          then Encapsulate of each segment in GRE: per
//                                          super-packet, with bytes/s of payload
//   BM_CoalesceTcp/<segments>              Coalescer::Add of that many in-order segments of
//                                          one flow (1436 bytes each), then Flush: per segment
//   BM_CoalesceMiss                        Add of a segment that cannot merge (not TCP)
//   BM_PrefixLookup/<bits>/<prefixes>      PrefixTrie::Lookup (a multipoint tunnel's peer for
//                                          an inner address): IPv4 /26s under 10/8 with a /16
//                                          over every 1,024 of them, IPv6 /64s under fd00::/16;
//                                          4,096 addresses, three in four held
//   BM_PeerLookupSend/<4|6>/<peers>/<flows>
//                                          a multipoint tunnel's peer for a packet to send
//                                          (BasicPeerTable<PeerPath>::ForDestination), 1 or
//                                          10,000 peers of 10 allowed prefixes each (100,000):
//                                          packets of 4,096 flows to peers drawn at random
//                                          (the trie's memory), or of one (its warm path)
//   BM_PeerLookupReceive/<4|6>/<peers>/<flows>
//                                          the same packets received: ForSource (outer
//                                          source) then MaySend (inner source), per packet
//
// Not here yet: GRE-in-UDP (RFC 8086) with UDP GSO/GRO, which the dataplane does not have.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "benchmark/benchmark.h"
#include "dataplane/core/peer_path.h"
#include "dataplane/core/peer_table.h"
#include "dataplane/core/prefix_trie.h"
#include "dataplane/core/tunnel_table.h"
#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/ipv4.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint32_t kLocal = 0xC6120001;     // 198.18.0.1
constexpr uint32_t kRemote = 0xC6120002;    // 198.18.0.2
constexpr uint32_t kInnerSrc = 0x0A000001;  // 10.0.0.1
constexpr uint32_t kInnerDst = 0x0A000002;  // 10.0.0.2
constexpr uint8_t kIpProtoUdp = 17;

OuterAddress Ipv6Address(uint8_t last) {
  uint8_t bytes[16] = {0x20, 0x01, 0x0d, 0xb8};  // 2001:db8::last
  bytes[15] = last;
  return OuterAddress::FromIpv6(bytes);
}

// An IPv4/UDP packet of `len` bytes (header checksum right, DF set, payload of zeros).
void WriteInnerPacket(uint8_t* out, size_t len) {
  std::memset(out, 0, len);
  Ipv4Header h;
  h.total_len = static_cast<uint16_t>(len);
  h.id = 0x1234;
  h.dont_fragment = true;
  h.ttl = 64;
  h.protocol = kIpProtoUdp;
  h.src = kInnerSrc;
  h.dst = kInnerDst;
  WriteIpv4Header(h, out);
  const size_t udp_len = len - kIpv4HeaderLen;
  out[kIpv4HeaderLen + 0] = 0x30;  // source port 12345
  out[kIpv4HeaderLen + 1] = 0x39;
  out[kIpv4HeaderLen + 2] = 0x14;  // destination port 5201
  out[kIpv4HeaderLen + 3] = 0x51;
  out[kIpv4HeaderLen + 4] = static_cast<uint8_t>(udp_len >> 8);
  out[kIpv4HeaderLen + 5] = static_cast<uint8_t>(udp_len);
}

// The tunnels benchmarked: gre keyless, gre with key, checksum and sequence, ipip, ip6gre.
enum Variant { kGreKeyless, kGreKeyCsumSeq, kIpip, kIp6gre };

EncapParams ParamsFor(Variant variant) {
  EncapParams p;
  p.ttl = 64;
  switch (variant) {
    case kGreKeyless:
      p.mode = TunnelMode::kGre;
      break;
    case kGreKeyCsumSeq:
      p.mode = TunnelMode::kGre;
      p.has_key = true;
      p.key = 42;
      p.checksum = true;
      p.sequence = true;
      break;
    case kIpip:
      p.mode = TunnelMode::kIpip;
      break;
    case kIp6gre:
      p.mode = TunnelMode::kIp6gre;
      p.local = Ipv6Address(1);
      p.remote = Ipv6Address(2);
      return p;
  }
  p.local = kLocal;
  p.remote = kRemote;
  return p;
}

// An inner packet in a buffer with the engines' headroom in front of it.
class Frame {
 public:
  explicit Frame(size_t inner_len)
      : storage_(kMaxEncapHeadroom + inner_len), inner_len_(inner_len) {
    WriteInnerPacket(inner(), inner_len);
  }
  uint8_t* inner() { return storage_.data() + kMaxEncapHeadroom; }
  size_t inner_len() const { return inner_len_; }

 private:
  std::vector<uint8_t> storage_;
  size_t inner_len_;
};

void SetCounters(benchmark::State& state, size_t bytes) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

// ---- Encapsulate ----------------------------------------------------------------------------

void BM_Encapsulate(benchmark::State& state, Variant variant) {
  const size_t inner_len = static_cast<size_t>(state.range(0));
  const EncapParams params = ParamsFor(variant);
  Frame frame(inner_len);
  uint32_t sequence = 1;
  for (auto _ : state) {
    // In place, as the engines do: only the headroom is written, so the frame can be reused.
    EncapResult r = Encapsulate(params, frame.inner(), frame.inner_len(), 0, sequence++);
    benchmark::DoNotOptimize(r.packet);
    benchmark::DoNotOptimize(r.len);
    benchmark::ClobberMemory();
  }
  SetCounters(state, inner_len);
}

// What PrepareTransmit does with a packet from the device: LoopCheck (an ordinary packet leaves
// at the protocol byte), then Encapsulate; against BM_Encapsulate, the check's cost.
void BM_EncapsulateAfterLoopCheck(benchmark::State& state, Variant variant) {
  const size_t inner_len = static_cast<size_t>(state.range(0));
  const EncapParams params = ParamsFor(variant);
  const LoopCheck loop_check(params);
  Frame frame(inner_len);
  uint32_t sequence = 1;
  for (auto _ : state) {
    if (loop_check.IsOwnOuterPacket(frame.inner(), frame.inner_len())) {
      state.SkipWithError("an ordinary packet taken for a loop");
      break;
    }
    EncapResult r = Encapsulate(params, frame.inner(), frame.inner_len(), 0, sequence++);
    benchmark::DoNotOptimize(r.packet);
    benchmark::DoNotOptimize(r.len);
    benchmark::ClobberMemory();
  }
  SetCounters(state, inner_len);
}

// ---- Decapsulate ----------------------------------------------------------------------------

void BM_Decapsulate(benchmark::State& state, Variant variant) {
  const size_t inner_len = static_cast<size_t>(state.range(0));
  const EncapParams params = ParamsFor(variant);
  Frame frame(inner_len);
  EncapResult r = Encapsulate(params, frame.inner(), frame.inner_len(), 0, 7);
  if (r.packet == nullptr) {
    state.SkipWithError(("Encapsulate dropped: " + std::string(DropReasonName(r.drop))).c_str());
    return;
  }
  // Raw IPv6 sockets deliver what follows the IPv6 header and its extension headers.
  const size_t ipv6_skip = kIpv6HeaderLen + kEncapLimitOptionLen;
  const bool over_ipv6 = IsIpv6UnderlayMode(params.mode);
  const std::vector<uint8_t> before(r.packet, r.packet + r.len);
  Decapsulated d;
  DropReason reason = DropReason::kCount;
  auto decap = [&] {
    return over_ipv6 ? DecapsulateIpv6(r.packet + ipv6_skip, r.len - ipv6_skip, kIpProtoGre,
                                       params.remote, params.local, 0, &d, &reason)
                     : Decapsulate(r.packet, r.len, &d, &reason);
  };
  // Decapsulation works in place but leaves a packet without ECN marks unchanged, so the same
  // packet can be decapsulated again and again; check that once rather than copy per round.
  if (!decap() || d.inner_len != inner_len || std::memcmp(before.data(), r.packet, r.len) != 0) {
    state.SkipWithError(
        ("Decapsulate failed or changed the packet: " + std::string(DropReasonName(reason)))
            .c_str());
    return;
  }
  for (auto _ : state) {
    bool ok = decap();
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(d.inner);
    benchmark::ClobberMemory();
  }
  SetCounters(state, inner_len);
}

// BM_Encapsulate/<mode>/<inner bytes>, BM_Decapsulate/<mode>/<inner bytes>
BENCHMARK_CAPTURE(BM_Encapsulate, gre, kGreKeyless)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Encapsulate, gre_key_csum_seq, kGreKeyCsumSeq)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Encapsulate, ipip, kIpip)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Encapsulate, ip6gre, kIp6gre)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_EncapsulateAfterLoopCheck, gre, kGreKeyless)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_EncapsulateAfterLoopCheck, ip6gre, kIp6gre)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Decapsulate, gre, kGreKeyless)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Decapsulate, gre_key_csum_seq, kGreKeyCsumSeq)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Decapsulate, ipip, kIpip)->Arg(64)->Arg(1400);
BENCHMARK_CAPTURE(BM_Decapsulate, ip6gre, kIp6gre)->Arg(64)->Arg(1400);

// ---- GRE checksum ---------------------------------------------------------------------------

void BM_GreChecksum(benchmark::State& state) {
  const size_t len = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> data(len);
  for (size_t i = 0; i < len; ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
  for (auto _ : state) {
    uint16_t sum = InternetChecksum(data.data(), data.size());
    benchmark::DoNotOptimize(sum);
  }
  SetCounters(state, len);
}
// GRE header and payload: 4 + 64, 4 + 1400, and a 64 KiB super-packet as offloads will bring.
BENCHMARK(BM_GreChecksum)->Arg(68)->Arg(1404)->Arg(65536);

// ---- TunnelTable::Lookup --------------------------------------------------------------------

struct FakeTunnel {
  int id = 0;
};

enum LookupCase { kExactHit, kRemoteOnlyHit, kMiss };

// A table of `n` keyed GRE tunnels, as a fleet has them: the one looked up, and n - 1 others
// with remote 198.19.x.y and key i, half with the local address set and half left as any.
// The one looked up is exact (local and remote: the first probe finds it) or remote-only
// (local any: the second probe); a miss has a key no tunnel has, so all four probes run.
void BM_Lookup(benchmark::State& state, LookupCase which) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<FakeTunnel> tunnels(n);
  TunnelTable<FakeTunnel> table;
  const uint32_t exact_remote = 0xC6120002;  // 198.18.0.2
  const uint32_t remote_only = 0xC6120003;   // 198.18.0.3
  FakeTunnel* target = &tunnels[0];
  if (which == kRemoteOnlyHit) {
    table.Insert({TunnelMode::kGre, true, OuterAddress(), remote_only, 8888}, target);
  } else {
    table.Insert({TunnelMode::kGre, true, kLocal, exact_remote, 7777}, target);
  }
  for (size_t i = 1; i < n; ++i) {
    const uint32_t remote = 0xC6130000u + static_cast<uint32_t>(i);  // 198.19.0.0 + i
    const bool with_local = (i % 2) == 0;
    tunnels[i].id = static_cast<int>(i);
    table.Insert({TunnelMode::kGre, true, with_local ? OuterAddress(kLocal) : OuterAddress(),
                  remote, static_cast<uint32_t>(i)},
                 &tunnels[i]);
  }

  Decapsulated packet;
  packet.mode = TunnelMode::kGre;
  packet.outer_dst = kLocal;
  packet.has_key = true;
  switch (which) {
    case kExactHit:
      packet.outer_src = exact_remote;
      packet.key = 7777;
      break;
    case kRemoteOnlyHit:
      packet.outer_src = remote_only;
      packet.key = 8888;
      break;
    case kMiss:
      packet.outer_src = exact_remote;
      packet.key = 9999;  // no tunnel has it: all four probes
      break;
  }
  const FakeTunnel* expected = which == kMiss ? nullptr : target;
  if (table.size() != n || table.Lookup(packet) != expected) {
    state.SkipWithError("Lookup found the wrong tunnel");
    return;
  }
  for (auto _ : state) {
    FakeTunnel* t = table.Lookup(packet);
    benchmark::DoNotOptimize(t);
  }
  state.counters["tunnels"] = static_cast<double>(table.size());
  state.SetItemsProcessed(state.iterations());
}
// BM_Lookup/<case>/<tunnels in the table>
BENCHMARK_CAPTURE(BM_Lookup, exact_hit, kExactHit)->Arg(1)->Arg(10000);
BENCHMARK_CAPTURE(BM_Lookup, remote_only_hit, kRemoteOnlyHit)->Arg(1)->Arg(10000);
BENCHMARK_CAPTURE(BM_Lookup, miss, kMiss)->Arg(1)->Arg(10000);

// ---- ICMP fragmentation needed --------------------------------------------------------------

void BM_IcmpFragNeeded(benchmark::State& state) {
  Frame frame(1400);
  uint8_t out[576];
  const size_t len = WriteIcmpFragmentationNeeded(frame.inner(), frame.inner_len(), kInnerDst, 1300,
                                                  out, sizeof out);
  if (len == 0) {
    state.SkipWithError("WriteIcmpFragmentationNeeded wrote nothing");
    return;
  }
  for (auto _ : state) {
    size_t n = WriteIcmpFragmentationNeeded(frame.inner(), frame.inner_len(), kInnerDst, 1300, out,
                                            sizeof out);
    benchmark::DoNotOptimize(n);
    benchmark::ClobberMemory();
  }
  state.counters["icmp_bytes"] = static_cast<double>(len);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_IcmpFragNeeded);

// `len` bytes of 0x5a behind an IPv4 header (10.0.0.1 -> 10.0.0.2, `protocol`) and the ports
// 40000 -> `dport`.
std::vector<uint8_t> Ipv4WithPorts(size_t len, uint8_t protocol, uint16_t dport) {
  std::vector<uint8_t> p(len, 0x5a);
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(p.size());
  ip.ttl = 64;
  ip.dont_fragment = protocol == kIpProtoTcp;
  ip.protocol = protocol;
  ip.src = 0x0a000001;
  ip.dst = 0x0a000002;
  WriteIpv4Header(ip, p.data());
  uint8_t* l4 = p.data() + 20;
  l4[0] = 40000 >> 8;
  l4[1] = 40000 & 0xff;
  l4[2] = static_cast<uint8_t>(dport >> 8);
  l4[3] = static_cast<uint8_t>(dport);
  return p;
}

// A TCPv4 segment of `payload` bytes (10.0.0.1:40000 -> 10.0.0.2:5201, ACK, sequence `seq`)
// with a correct checksum, or the pseudo-header sum only (`partial`, as TSO leaves it).
std::vector<uint8_t> TcpSegment(size_t payload, uint32_t seq, bool partial) {
  std::vector<uint8_t> p = Ipv4WithPorts(40 + payload, kIpProtoTcp, 5201);
  uint8_t* th = p.data() + 20;
  th[4] = static_cast<uint8_t>(seq >> 24);
  th[5] = static_cast<uint8_t>(seq >> 16);
  th[6] = static_cast<uint8_t>(seq >> 8);
  th[7] = static_cast<uint8_t>(seq);
  th[12] = 5 << 4;
  th[13] = 0x10;
  th[16] = th[17] = 0;
  const uint32_t pseudo = ChecksumAdd(p.data() + 12, 8) + kIpProtoTcp + (p.size() - 20);
  const uint16_t sum = partial ? static_cast<uint16_t>(~ChecksumFinish(pseudo))
                               : ChecksumFinish(ChecksumAdd(th, p.size() - 20, pseudo));
  th[16] = static_cast<uint8_t>(sum >> 8);
  th[17] = static_cast<uint8_t>(sum);
  return p;
}

void BM_SegmentTso(benchmark::State& state) {
  const size_t payload = static_cast<size_t>(state.range(0));
  const std::vector<uint8_t> super = TcpSegment(payload, 1, /*partial=*/true);
  VirtioNetHeader h;
  h.flags = kVirtioNetFlagNeedsCsum;
  h.gso_type = kGsoTcpv4;
  h.gso_size = 1436;
  std::vector<uint8_t> memory(65536 + 128 * 256);
  std::vector<Segment> segments(128);
  SegmentArena arena{memory.data(), memory.size(), kMaxEncapHeadroom, segments.data(), 128};
  EncapParams gre;
  gre.mode = TunnelMode::kGre;
  gre.local = OuterAddress(0xc6120001);
  gre.remote = OuterAddress(0xc6120002);
  size_t made = 0;
  for (auto _ : state) {
    made = SegmentSuperPacket(h, super.data(), super.size(), 0, arena);
    for (size_t i = 0; i < made; ++i) {
      EncapResult r = Encapsulate(gre, segments[i].data, segments[i].len, 0, 0);
      benchmark::DoNotOptimize(r.packet);
    }
    benchmark::ClobberMemory();
  }
  state.counters["segments"] = static_cast<double>(made);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * payload));
}
BENCHMARK(BM_SegmentTso)->Arg(1436)->Arg(14360)->Arg(64620);

void BM_CoalesceTcp(benchmark::State& state) {
  const size_t count = static_cast<size_t>(state.range(0));
  std::vector<std::vector<uint8_t>> segments;
  for (size_t i = 0; i < count; ++i) segments.push_back(TcpSegment(1436, 1 + 1436 * i, false));
  Coalescer gro(16, 32);
  int owner = 0;
  for (auto _ : state) {
    for (const auto& seg : segments) {
      benchmark::DoNotOptimize(gro.Add(&owner, seg.data(), seg.size()));
    }
    gro.Flush([&](const Coalescer::Flushed& f) {
      benchmark::DoNotOptimize(f.data);
      gro.Release(f.buffer);
    });
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * count));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * count * 1436));
}
BENCHMARK(BM_CoalesceTcp)->Arg(1)->Arg(8)->Arg(44);

// UDP datagrams of one flow (10.0.0.1:40000 -> 10.0.0.2:4433), `payload` bytes each with a
// correct checksum, coalesced into UDP GSO packets (at most 64 datagrams each).
void BM_CoalesceUdp(benchmark::State& state) {
  const size_t payload = static_cast<size_t>(state.range(0));
  const size_t count = static_cast<size_t>(state.range(1));
  std::vector<uint8_t> d = Ipv4WithPorts(28 + payload, kIpProtoUdp, 4433);
  uint8_t* uh = d.data() + 20;
  uh[4] = static_cast<uint8_t>((d.size() - 20) >> 8);
  uh[5] = static_cast<uint8_t>(d.size() - 20);
  uh[6] = uh[7] = 0;
  const uint16_t sum = ChecksumFinish(ChecksumAdd(
      uh, d.size() - 20, ChecksumAdd(d.data() + 12, 8) + kIpProtoUdp + (d.size() - 20)));
  uh[6] = static_cast<uint8_t>(sum >> 8);
  uh[7] = static_cast<uint8_t>(sum);
  Coalescer gro(16, 32);
  int owner = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < count; ++i) {
      benchmark::DoNotOptimize(gro.Add(&owner, d.data(), d.size(), /*udp=*/true));
    }
    gro.Flush([&](const Coalescer::Flushed& f) {
      benchmark::DoNotOptimize(f.data);
      gro.Release(f.buffer);
    });
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * count));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * count * payload));
}
BENCHMARK(BM_CoalesceUdp)->Args({64, 32})->Args({1400, 32});

void BM_CoalesceMiss(benchmark::State& state) {
  std::vector<uint8_t> udp = TcpSegment(64, 1, false);
  udp[9] = 17;  // UDP, not asked to coalesce it
  Coalescer gro(16, 32);
  int owner = 0;
  for (auto _ : state) benchmark::DoNotOptimize(gro.Add(&owner, udp.data(), udp.size()));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CoalesceMiss);

void BM_PrefixLookup(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const uint32_t count = static_cast<uint32_t>(state.range(1));
  PrefixTrie<uint32_t> trie(bits);
  // Prefix i: IPv4 10.0.0.0/8 cut into /26s; IPv6 fd00:0:<i>::/64. Bytes past the prefix zero.
  auto prefix_bytes = [bits](uint32_t i) {
    std::array<uint8_t, 16> b{};
    if (bits == 32) {
      const uint32_t network = (10u << 24) | (i << 6);
      b = {static_cast<uint8_t>(network >> 24), static_cast<uint8_t>(network >> 16),
           static_cast<uint8_t>(network >> 8), static_cast<uint8_t>(network)};
    } else {
      b[0] = 0xfd;
      b[4] = static_cast<uint8_t>(i >> 24);
      b[5] = static_cast<uint8_t>(i >> 16);
      b[6] = static_cast<uint8_t>(i >> 8);
      b[7] = static_cast<uint8_t>(i);
    }
    return b;
  };
  const int length = bits == 32 ? 26 : 64;
  for (uint32_t i = 0; i < count; ++i) trie.TryInsert(prefix_bytes(i).data(), length, i);
  for (uint32_t i = 0; bits == 32 && i < count; i += 1024) {
    trie.TryInsert(prefix_bytes(i).data(), 16, count + i);  // nested: a shorter one above
  }
  std::vector<std::array<uint8_t, 16>> addresses(4096);
  uint32_t seed = 12345;
  for (auto& a : addresses) {
    seed = seed * 1103515245u + 12345u;
    const uint32_t i = (seed >> 8) % (count + count / 3);  // a quarter beyond the held ones
    a = prefix_bytes(i);
    a[bits / 8 - 1] |= 0x11;  // a host inside
  }
  size_t next = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(trie.Lookup(addresses[next].data()));
    next = (next + 1) & 4095;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PrefixLookup)->Args({32, 1000})->Args({32, 100000})->Args({128, 10000});

// ---- A multipoint tunnel's peer lookup ------------------------------------------------------

// A multipoint tunnel of `peers` peers with kPrefixesPerPeer allowed prefixes each, in the
// table type the datapath keeps (BasicPeerTable<PeerPath>), and `flows` packets (4,096 or 1)
// to or from peers drawn at random: with 4,096 the lookups wander over the whole trie as a
// fleet's traffic does; with 1, one flow's warm path, as the iperf3 runs of make bench see.
// The layout is tests/bench/dataplane_bench.sh's multipoint step's: peer i (from 0) has
// underlay 198.18.1.0 + i and prefixes k = 10 i .. 10 i + 9; IPv4 even k the /26s of
// 10.128.0.0/9, odd k the /27s of 100.64.0.0/10 (none nested: 262,144 fit); IPv6
// fd00:0:<k>::/64.
constexpr uint32_t kPrefixesPerPeer = 10;

InnerPrefix PeerPrefix(uint32_t k, bool v6) {
  InnerPrefix p;
  p.v6 = v6;
  if (v6) {
    p.bytes[0] = 0xfd;
    p.bytes[4] = static_cast<uint8_t>(k >> 24);
    p.bytes[5] = static_cast<uint8_t>(k >> 16);
    p.bytes[6] = static_cast<uint8_t>(k >> 8);
    p.bytes[7] = static_cast<uint8_t>(k);
    p.length = 64;
  } else if (k % 2 == 0) {
    StoreBe32(p.bytes.data(), 0x0A800000u + ((k / 2) << 6));  // 10.128.0.0 + 64 (k / 2)
    p.length = 26;
  } else {
    StoreBe32(p.bytes.data(), 0x64400000u + ((k / 2) << 5));  // 100.64.0.0 + 32 (k / 2)
    p.length = 27;
  }
  return p;
}

struct PeerLookupSetup {
  BasicPeerTable<PeerPath> table;
  struct Packet {
    std::array<uint8_t, 16> inner{};  // a host inside one of the peer's prefixes
    OuterAddress outer;               // the peer's underlay
    const PeerPath* peer = nullptr;   // whom the lookups must find
  };
  std::vector<Packet> packets;
};

// Builds the table and the packets; an error text, or empty.
std::string MakePeerLookup(uint32_t peers, uint32_t flows, bool v6, PeerLookupSetup* s) {
  for (uint32_t i = 0; i < peers; ++i) {
    PeerPath path;
    path.id = i + 1;
    path.underlay = OuterAddress(0xC6120100u + i);  // 198.18.1.0 + i
    std::vector<InnerPrefix> allowed;
    for (uint32_t j = 0; j < kPrefixesPerPeer; ++j) {
      allowed.push_back(PeerPrefix(i * kPrefixesPerPeer + j, v6));
    }
    if (absl::Status st = s->table.Add(path, allowed); !st.ok()) return std::string(st.message());
  }
  s->packets.resize(4096);
  uint32_t seed = 12345;
  for (uint32_t n = 0; n < flows; ++n) {
    auto& packet = s->packets[n];
    seed = seed * 1103515245u + 12345u;
    const uint32_t i = (seed >> 8) % peers;
    seed = seed * 1103515245u + 12345u;
    const InnerPrefix prefix =
        PeerPrefix(i * kPrefixesPerPeer + (seed >> 8) % kPrefixesPerPeer, v6);
    packet.inner = prefix.bytes;
    packet.inner[v6 ? 15 : 3] |= 0x11;  // a host inside
    packet.outer = OuterAddress(0xC6120100u + i);
    packet.peer = s->table.Find(i + 1);
  }
  // The timed loops cycle through all 4,096 (no branch on the count): fewer flows repeat.
  for (size_t n = flows; n < s->packets.size(); ++n) s->packets[n] = s->packets[n % flows];
  // Checked once, untimed: every packet finds its own peer both ways.
  for (const auto& packet : s->packets) {
    if (s->table.ForDestination(packet.inner.data(), v6) != packet.peer) {
      return "ForDestination found the wrong peer";
    }
    const PeerPath* from = s->table.ForSource(packet.outer);
    if (from != packet.peer || !s->table.MaySend(*from, packet.inner.data(), v6)) {
      return "ForSource or MaySend refused the peer's own packet";
    }
  }
  return "";
}

void SetPeerCounters(benchmark::State& state, const PeerLookupSetup& s) {
  state.counters["peers"] = static_cast<double>(s.table.size());
  state.counters["prefixes"] = static_cast<double>(s.table.prefixes());
  state.SetItemsProcessed(state.iterations());
}

// The table of the benchmark's arguments (family, peers, flows); false, with the benchmark
// skipped, when it cannot be made.
bool SetUpPeerLookup(benchmark::State& state, PeerLookupSetup* s) {
  std::string error = MakePeerLookup(static_cast<uint32_t>(state.range(1)),
                                     static_cast<uint32_t>(state.range(2)), state.range(0) == 6, s);
  if (error.empty()) return true;
  state.SkipWithError(error.c_str());
  return false;
}

// Send (PrepareTransmit): the peer whose allowed prefixes hold the inner destination.
void BM_PeerLookupSend(benchmark::State& state) {
  const bool v6 = state.range(0) == 6;
  PeerLookupSetup s;
  if (!SetUpPeerLookup(state, &s)) return;
  size_t next = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.table.ForDestination(s.packets[next].inner.data(), v6));
    next = (next + 1) & 4095;
  }
  SetPeerCounters(state, s);
}

// Receive (ApplyReceiveRules, ApplyPeerRules): the peer the outer source names, then whether it
// may send from the inner source (that source's longest match is that same peer).
void BM_PeerLookupReceive(benchmark::State& state) {
  const bool v6 = state.range(0) == 6;
  PeerLookupSetup s;
  if (!SetUpPeerLookup(state, &s)) return;
  size_t next = 0;
  for (auto _ : state) {
    const auto& packet = s.packets[next];
    const PeerPath* peer = s.table.ForSource(packet.outer);
    bool allowed = peer != nullptr && s.table.MaySend(*peer, packet.inner.data(), v6);
    benchmark::DoNotOptimize(allowed);
    next = (next + 1) & 4095;
  }
  SetPeerCounters(state, s);
}
// BM_PeerLookup{Send,Receive}/<IP version>/<peers>/<flows>: one peer is the reference the
// 10,000 are read against (same run, same machine).
void PeerLookupArgs(benchmark::internal::Benchmark* b) {
  for (int v : {4, 6}) {
    b->Args({v, 1, 1})->Args({v, 10000, 4096})->Args({v, 10000, 1});
  }
}
BENCHMARK(BM_PeerLookupSend)->Apply(PeerLookupArgs);
BENCHMARK(BM_PeerLookupReceive)->Apply(PeerLookupArgs);

}  // namespace
}  // namespace tunnelagent::dataplane

BENCHMARK_MAIN();
