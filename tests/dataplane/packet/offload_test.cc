#include "dataplane/packet/offload.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

using ::testing::ElementsAreArray;

// An independent reference: RFC 1071 one 16-bit word at a time.
uint16_t ReferenceSum(const std::vector<uint8_t>& bytes) {
  uint32_t sum = 0;
  for (size_t i = 0; i < bytes.size(); i += 2) {
    sum += (uint32_t{bytes[i]} << 8) | (i + 1 < bytes.size() ? bytes[i + 1] : 0);
  }
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// The pseudo-header (RFC 793, RFC 8200 section 8.1) of the transport segment of `b`, whose
// IP header is `ihl` bytes, as the bytes to sum.
std::vector<uint8_t> PseudoHeader(const std::vector<uint8_t>& b, uint8_t version, size_t ihl,
                                  uint8_t protocol) {
  const size_t l4_len = b.size() - ihl;
  std::vector<uint8_t> pseudo;
  if (version == 4) {
    pseudo.assign(b.begin() + 12, b.begin() + 20);
    pseudo.insert(pseudo.end(), {0, protocol, uint8_t(l4_len >> 8), uint8_t(l4_len)});
  } else {
    pseudo.assign(b.begin() + 8, b.begin() + 40);
    pseudo.insert(pseudo.end(), {0, 0, uint8_t(l4_len >> 8), uint8_t(l4_len), 0, 0, 0, protocol});
  }
  return pseudo;
}

// True when the transport checksum of `ip` (IPv4 or IPv6, TCP or UDP, no options or extension
// headers beyond IPv4's) verifies, by the reference sum.
bool TransportChecksumOk(const uint8_t* ip, size_t len) {
  const bool v4 = (ip[0] >> 4) == 4;
  const size_t ihl = v4 ? (ip[0] & 15) * 4 : 40;
  const uint8_t proto = v4 ? ip[9] : ip[6];
  std::vector<uint8_t> pseudo =
      PseudoHeader(std::vector<uint8_t>(ip, ip + len), v4 ? 4 : 6, ihl, proto);
  pseudo.insert(pseudo.end(), ip + ihl, ip + len);
  return ReferenceSum(pseudo) == 0xFFFF;
}

bool Ipv4HeaderChecksumOk(const uint8_t* ip) {
  return ReferenceSum(std::vector<uint8_t>(ip, ip + (ip[0] & 15) * 4)) == 0xFFFF;
}

struct TcpOptions {
  uint8_t version = 4;
  uint8_t flags = 0x18;  // ACK|PSH
  uint32_t seq = 1000;
  uint32_t ack = 777;
  uint16_t window = 512;
  uint16_t id = 0x1234;
  uint8_t tos = 0;
  bool timestamps = true;
  uint32_t tsval = 42;
  uint16_t src_port = 40000;
  uint16_t dst_port = 5201;
};

void Put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = uint8_t(v >> 8);
  b[at + 1] = uint8_t(v);
}
void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  Put16(b, at, uint16_t(v >> 16));
  Put16(b, at + 2, uint16_t(v));
}

// A TCP packet with `payload` bytes (byte i of the stream is (seq + i) & 0xFF), its checksum
// correct. With `partial`, the checksum field holds only the pseudo-header sum, as a TSO
// super-packet from TUN has it.
std::vector<uint8_t> TcpPacket(const TcpOptions& o, size_t payload, bool partial = false) {
  const size_t ihl = o.version == 4 ? 20 : 40;
  const size_t thl = o.timestamps ? 32 : 20;
  std::vector<uint8_t> b(ihl + thl + payload, 0);
  if (o.version == 4) {
    b[0] = 0x45;
    b[1] = o.tos;
    Put16(b, 2, uint16_t(b.size()));
    Put16(b, 4, o.id);
    Put16(b, 6, 0x4000);  // DF
    b[8] = 64;
    b[9] = 6;
    Put32(b, 12, 0x0A000001);
    Put32(b, 16, 0x0A000002);
    Put16(b, 10, uint16_t(~ReferenceSum(std::vector<uint8_t>(b.begin(), b.begin() + 20))));
  } else {
    b[0] = 0x60;
    Put16(b, 4, uint16_t(b.size() - 40));
    b[6] = 6;
    b[7] = 64;
    b[8] = 0xFD;
    b[23] = 1;
    b[24] = 0xFD;
    b[39] = 2;
  }
  uint8_t* th = b.data() + ihl;
  Put16(b, ihl, o.src_port);
  Put16(b, ihl + 2, o.dst_port);
  Put32(b, ihl + 4, o.seq);
  Put32(b, ihl + 8, o.ack);
  th[12] = uint8_t((thl / 4) << 4);
  th[13] = o.flags;
  Put16(b, ihl + 14, o.window);
  if (o.timestamps) {
    th[20] = 1;
    th[21] = 1;
    th[22] = 8;
    th[23] = 10;
    Put32(b, ihl + 24, o.tsval);
    Put32(b, ihl + 28, 7);
  }
  for (size_t i = 0; i < payload; ++i) b[ihl + thl + i] = uint8_t(o.seq + i);
  // Checksum: the pseudo-header sum, then (unless partial) the whole.
  std::vector<uint8_t> pseudo = PseudoHeader(b, o.version, ihl, 6);
  if (partial) {
    Put16(b, ihl + 16, ReferenceSum(pseudo));
  } else {
    pseudo.insert(pseudo.end(), b.begin() + ihl, b.end());
    Put16(b, ihl + 16, uint16_t(~ReferenceSum(pseudo)));
  }
  return b;
}

struct Arena {
  explicit Arena(size_t bytes = 200000, size_t max = 256) : memory(bytes), segments(max) {
    arena.data = memory.data();
    arena.bytes = bytes;
    arena.headroom = 64;
    arena.segments = segments.data();
    arena.max_segments = max;
  }
  std::vector<uint8_t> memory;
  std::vector<Segment> segments;
  SegmentArena arena;
};

TEST(VirtioNetHeaderTest, LittleEndianFieldsInKernelOrder) {
  VirtioNetHeader h;
  h.flags = kVirtioNetFlagNeedsCsum;
  h.gso_type = kGsoTcpv4 | kGsoEcn;
  h.hdr_len = 0x0142;
  h.gso_size = 0x05A8;
  h.csum_start = 0x0014;
  h.csum_offset = 0x0010;
  uint8_t out[kVirtioNetHeaderLen];
  WriteVirtioNetHeader(h, out);
  EXPECT_THAT(out, ElementsAreArray({0x01, 0x81, 0x42, 0x01, 0xA8, 0x05, 0x14, 0x00, 0x10, 0x00}));
  const VirtioNetHeader back = ReadVirtioNetHeader(out);
  EXPECT_EQ(back.gso_type, h.gso_type);
  EXPECT_EQ(back.hdr_len, h.hdr_len);
  EXPECT_EQ(back.gso_size, h.gso_size);
  EXPECT_EQ(back.csum_start, h.csum_start);
  EXPECT_EQ(back.csum_offset, h.csum_offset);
}

TEST(CompleteChecksumTest, FinishesAPartialTcpChecksum) {
  TcpOptions o;
  std::vector<uint8_t> full = TcpPacket(o, 333);
  std::vector<uint8_t> partial = TcpPacket(o, 333, /*partial=*/true);
  ASSERT_NE(full, partial);
  ASSERT_TRUE(CompleteChecksum(partial.data(), partial.size(), 20, 16));
  EXPECT_EQ(partial, full);
  EXPECT_TRUE(TransportChecksumOk(partial.data(), partial.size()));
}

TEST(CompleteChecksumTest, RefusesOffsetsOutsideThePacket) {
  std::vector<uint8_t> p = TcpPacket(TcpOptions{}, 0, true);
  EXPECT_FALSE(CompleteChecksum(p.data(), p.size(), uint16_t(p.size() - 1), 0));
  EXPECT_FALSE(CompleteChecksum(p.data(), p.size(), 20, uint16_t(p.size())));
}

VirtioNetHeader Gso(uint8_t type, uint16_t size) {
  VirtioNetHeader h;
  h.flags = kVirtioNetFlagNeedsCsum;
  h.gso_type = type;
  h.gso_size = size;
  return h;
}

TEST(SegmentTest, SplitsTcpv4LikeTheKernel) {
  TcpOptions o;
  o.flags = 0x19 | 0x80;  // ACK|PSH|FIN|CWR
  const std::vector<uint8_t> super = TcpPacket(o, 2500, true);
  const VirtioNetHeader h = Gso(kGsoTcpv4 | kGsoEcn, 1000);
  DropReason reason;
  ASSERT_EQ(CountSegments(h, super.data(), super.size(), &reason), 3u);
  Arena a;
  ASSERT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 0, a.arena), 3u);
  const size_t sizes[] = {1000, 1000, 500};
  for (size_t i = 0; i < 3; ++i) {
    const Segment& s = a.segments[i];
    SCOPED_TRACE(i);
    ASSERT_EQ(s.len, 52 + sizes[i]);
    EXPECT_EQ((s.data - a.memory.data()) % 64, 64 % 64) << "64-byte aligned in the arena";
    EXPECT_GE(s.data - a.memory.data(), 64);
    EXPECT_EQ(Be16(s.data + 2), s.len);
    EXPECT_EQ(Be16(s.data + 4), 0x1234 + i);
    EXPECT_TRUE(Ipv4HeaderChecksumOk(s.data));
    EXPECT_EQ(Be32(s.data + 24), 1000 + 1000 * i);
    EXPECT_EQ(Be32(s.data + 28), 777u);
    const uint8_t flags = s.data[33];
    EXPECT_EQ(flags & 0x80, i == 0 ? 0x80 : 0) << "CWR on the first only";
    EXPECT_EQ(flags & 0x09, i == 2 ? 0x09 : 0) << "FIN and PSH on the last only";
    EXPECT_EQ(flags & 0x10, 0x10);
    EXPECT_TRUE(TransportChecksumOk(s.data, s.len));
    for (size_t j = 0; j < sizes[i]; ++j) {
      ASSERT_EQ(s.data[52 + j], uint8_t(1000 + 1000 * i + j));
    }
  }
}

TEST(SegmentTest, SplitsTcpv6) {
  TcpOptions o;
  o.version = 6;
  const std::vector<uint8_t> super = TcpPacket(o, 3000, true);
  const VirtioNetHeader h = Gso(kGsoTcpv6, 1428);
  Arena a;
  ASSERT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 0, a.arena), 3u);
  EXPECT_EQ(a.segments[0].len, 72u + 1428);
  EXPECT_EQ(Be16(a.segments[0].data + 4), 32 + 1428);
  EXPECT_EQ(a.segments[2].len, 72u + 144);
  EXPECT_EQ(Be16(a.segments[2].data + 4), 32 + 144);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(TransportChecksumOk(a.segments[i].data, a.segments[i].len));
    EXPECT_EQ(Be32(a.segments[i].data + 44), 1000 + 1428 * i);
  }
}

TEST(SegmentTest, SplitsUdpL4) {
  // A UDP super-packet: 8-byte header, 2000 bytes, segments of 700.
  std::vector<uint8_t> b(20 + 8 + 2000, 0);
  b[0] = 0x45;
  Put16(b, 2, uint16_t(b.size()));
  b[8] = 64;
  b[9] = 17;
  Put32(b, 12, 0x0A000001);
  Put32(b, 16, 0x0A000002);
  Put16(b, 20, 1111);
  Put16(b, 22, 2222);
  Put16(b, 24, uint16_t(b.size() - 20));
  for (size_t i = 28; i < b.size(); ++i) b[i] = uint8_t(i * 7);
  const VirtioNetHeader h = Gso(kGsoUdpL4, 700);
  Arena a;
  ASSERT_EQ(SegmentSuperPacket(h, b.data(), b.size(), 0, a.arena), 3u);
  const size_t sizes[] = {700, 700, 600};
  for (size_t i = 0; i < 3; ++i) {
    const Segment& s = a.segments[i];
    ASSERT_EQ(s.len, 28 + sizes[i]);
    EXPECT_EQ(Be16(s.data + 24), 8 + sizes[i]);
    EXPECT_EQ(Be16(s.data + 20), 1111);
    EXPECT_TRUE(Ipv4HeaderChecksumOk(s.data));
    EXPECT_TRUE(TransportChecksumOk(s.data, s.len));
    EXPECT_EQ(s.data[28], uint8_t((28 + 700 * i) * 7));
  }
}

TEST(SegmentTest, RefusesWhatItCannotSplit) {
  DropReason reason = DropReason::kCount;
  const std::vector<uint8_t> tcp = TcpPacket(TcpOptions{}, 100, true);
  EXPECT_EQ(CountSegments(Gso(kGsoUdpL4, 50), tcp.data(), tcp.size(), &reason), 0u);
  EXPECT_EQ(reason, DropReason::kUnsupportedProtocol);
  EXPECT_EQ(CountSegments(Gso(kGsoTcpv6, 50), tcp.data(), tcp.size(), &reason), 0u);
  EXPECT_EQ(CountSegments(Gso(kGsoUdp, 50), tcp.data(), tcp.size(), &reason), 0u);
  EXPECT_EQ(CountSegments(Gso(kGsoTcpv4, 0), tcp.data(), tcp.size(), &reason), 0u);
  reason = DropReason::kCount;
  EXPECT_EQ(CountSegments(Gso(kGsoTcpv4, 50), tcp.data(), 30, &reason), 0u);
  EXPECT_EQ(reason, DropReason::kBadInnerPacket);
  std::vector<uint8_t> bad_offset = tcp;
  bad_offset[32] = 0x10;  // TCP data offset 4: shorter than a TCP header
  EXPECT_EQ(CountSegments(Gso(kGsoTcpv4, 50), bad_offset.data(), bad_offset.size(), &reason), 0u);
  std::vector<uint8_t> fragment = tcp;
  fragment[6] = 0x20;  // MF
  EXPECT_EQ(CountSegments(Gso(kGsoTcpv4, 50), fragment.data(), fragment.size(), &reason), 0u);
}

TEST(SegmentTest, ContinuesWhereTheArenaWasFull) {
  const std::vector<uint8_t> super = TcpPacket(TcpOptions{}, 5000, true);
  const VirtioNetHeader h = Gso(kGsoTcpv4, 1000);
  Arena small(200000, 2);
  ASSERT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 0, small.arena), 2u);
  ASSERT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 2, small.arena), 2u);
  EXPECT_EQ(Be32(small.segments[0].data + 24), 3000u);
  ASSERT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 4, small.arena), 1u);
  EXPECT_EQ(Be32(small.segments[0].data + 24), 5000u);
  EXPECT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 5, small.arena), 0u);
  // An arena of too few bytes stops early too.
  Arena tiny(2000, 16);
  EXPECT_EQ(SegmentSuperPacket(h, super.data(), super.size(), 0, tiny.arena), 1u);
}

struct Flushed {
  const void* owner;
  std::vector<uint8_t> data;
  uint32_t segments;
  size_t inner_bytes;
};

std::vector<Flushed> FlushAll(Coalescer& gro) {
  std::vector<Flushed> out;
  gro.Flush([&](const Coalescer::Flushed& f) {
    out.push_back(
        {f.owner, std::vector<uint8_t>(f.data, f.data + f.len), f.segments, f.inner_bytes});
    gro.Release(f.buffer);
  });
  return out;
}

TEST(CoalescerTest, SegmentsOfOneFlowBecomeTheSuperPacketAgain) {
  for (uint8_t version : {4, 6}) {
    SCOPED_TRACE(int(version));
    TcpOptions o;
    o.version = version;
    o.flags = 0x18;
    const std::vector<uint8_t> super = TcpPacket(o, 4000, true);
    const uint8_t type = version == 4 ? kGsoTcpv4 : kGsoTcpv6;
    Arena a;
    const size_t n = SegmentSuperPacket(Gso(type, 1400), super.data(), super.size(), 0, a.arena);
    ASSERT_EQ(n, 3u);
    Coalescer gro(4, 8);
    int owner;
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(gro.Add(&owner, a.segments[i].data, a.segments[i].len), Coalescer::Verdict::kTaken);
    }
    std::vector<Flushed> out = FlushAll(gro);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].owner, &owner);
    EXPECT_EQ(out[0].segments, 3u);
    EXPECT_EQ(out[0].inner_bytes, a.segments[0].len + a.segments[1].len + a.segments[2].len);
    const VirtioNetHeader h = ReadVirtioNetHeader(out[0].data.data());
    const size_t ihl = version == 4 ? 20 : 40;
    EXPECT_EQ(h.flags, kVirtioNetFlagNeedsCsum);
    EXPECT_EQ(h.gso_type, type);
    EXPECT_EQ(h.gso_size, 1400);
    EXPECT_EQ(h.hdr_len, ihl + 32);
    EXPECT_EQ(h.csum_start, ihl);
    EXPECT_EQ(h.csum_offset, 16);
    // The packet is the super-packet again: same headers (the checksum field holds the
    // pseudo-header sum, as the kernel's TSO packet did), same payload.
    std::vector<uint8_t> packet(out[0].data.begin() + kVirtioNetHeaderLen, out[0].data.end());
    EXPECT_EQ(packet, super);
    if (version == 4) {
      EXPECT_TRUE(Ipv4HeaderChecksumOk(packet.data()));
    }
    ASSERT_TRUE(CompleteChecksum(packet.data(), packet.size(), h.csum_start, h.csum_offset));
    EXPECT_TRUE(TransportChecksumOk(packet.data(), packet.size()));
    EXPECT_EQ(gro.free_buffers(), 8u);
  }
}

TEST(CoalescerTest, OneSegmentGoesAsItCame) {
  Coalescer gro(4, 4);
  const std::vector<uint8_t> p = TcpPacket(TcpOptions{}, 100);
  int owner;
  EXPECT_EQ(gro.Add(&owner, p.data(), p.size()), Coalescer::Verdict::kTaken);
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].segments, 1u);
  EXPECT_THAT(std::vector<uint8_t>(out[0].data.begin(), out[0].data.begin() + 10),
              ElementsAreArray(std::vector<uint8_t>(10, 0)));
  EXPECT_EQ(std::vector<uint8_t>(out[0].data.begin() + 10, out[0].data.end()), p);
}

TEST(CoalescerTest, WhatCannotMergeIsNotMergedAndNotReordered) {
  Coalescer gro(8, 8);
  int a, b;
  TcpOptions o;
  o.flags = 0x10;
  const auto first = TcpPacket(o, 1000);
  o.seq = 2000;
  const auto second = TcpPacket(o, 1000);
  o.seq = 5000;  // a gap: a new flow
  const auto gap = TcpPacket(o, 1000);
  TcpOptions other_owner = o;
  other_owner.seq = 6000;
  const auto of_b = TcpPacket(other_owner, 1000);
  o.seq = 6000;
  o.ack = 999;  // a different acknowledgment: not merged
  const auto new_ack = TcpPacket(o, 1000);
  o.seq = 7000;
  o.ack = 999;
  o.flags = 0x11;  // FIN: never merged, but must not overtake
  const auto fin = TcpPacket(o, 0);
  using V = Coalescer::Verdict;
  EXPECT_EQ(gro.Add(&a, first.data(), first.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&a, second.data(), second.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&a, gap.data(), gap.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&b, of_b.data(), of_b.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&a, new_ack.data(), new_ack.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&a, fin.data(), fin.size()), V::kTaken);
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].segments, 2u);
  EXPECT_EQ(out[1].segments, 1u);
  EXPECT_EQ(out[2].owner, &b);
  EXPECT_EQ(out[3].segments, 1u);
  EXPECT_EQ(Be32(out[3].data.data() + 10 + 28), 999u);
  EXPECT_EQ(out[4].data.size(), 10 + fin.size());
  EXPECT_EQ(out[4].data[10 + 33], 0x11);
}

TEST(CoalescerTest, PshAndShortSegmentsEndTheFlow) {
  Coalescer gro(8, 8);
  int owner;
  TcpOptions o;
  o.flags = 0x10;
  const auto s1 = TcpPacket(o, 1000);
  o.seq = 2000;
  o.flags = 0x18;
  const auto s2 = TcpPacket(o, 1000);  // PSH: ends the flow
  o.seq = 3000;
  o.flags = 0x10;
  const auto s3 = TcpPacket(o, 500);  // starts another, of 500-byte segments
  o.seq = 3500;
  const auto s4 = TcpPacket(o, 500);
  for (const auto* p : {&s1, &s2, &s3, &s4}) gro.Add(&owner, p->data(), p->size());
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].segments, 2u);
  EXPECT_EQ(out[0].data[10 + 33], 0x18) << "the flow carries the PSH on";
  EXPECT_EQ(out[1].segments, 2u);
  EXPECT_EQ(ReadVirtioNetHeader(out[1].data.data()).gso_size, 500);
}

TEST(CoalescerTest, OnlyCorrectTcpIsTaken) {
  Coalescer gro(8, 8);
  int owner;
  using V = Coalescer::Verdict;
  auto bad = TcpPacket(TcpOptions{}, 100);
  bad[60] ^= 0xFF;  // payload changed, checksum not
  EXPECT_EQ(gro.Add(&owner, bad.data(), bad.size()), V::kDeliver);
  TcpOptions syn;
  syn.flags = 0x02;
  const auto s = TcpPacket(syn, 0);
  EXPECT_EQ(gro.Add(&owner, s.data(), s.size()), V::kDeliver);
  TcpOptions pure_ack;
  pure_ack.flags = 0x10;
  const auto ack = TcpPacket(pure_ack, 0);
  EXPECT_EQ(gro.Add(&owner, ack.data(), ack.size()), V::kDeliver);
  std::vector<uint8_t> udp(28, 0);
  udp[0] = 0x45;
  udp[3] = 28;
  udp[9] = 17;
  EXPECT_EQ(gro.Add(&owner, udp.data(), udp.size()), V::kDeliver);
  const std::vector<uint8_t> junk = {0x45, 0, 0};
  EXPECT_EQ(gro.Add(&owner, junk.data(), junk.size()), V::kDeliver);
  EXPECT_EQ(gro.open_flows(), 0u);
}

TEST(CoalescerTest, APacketThatWouldOvertakeAskForAFlushWhenNoBufferIsFree) {
  Coalescer gro(1, 1);
  int owner;
  using V = Coalescer::Verdict;
  TcpOptions o;
  o.flags = 0x10;
  const auto first = TcpPacket(o, 1000);
  o.seq = 9000;
  const auto gap = TcpPacket(o, 1000);
  TcpOptions other;
  other.src_port = 1;
  const auto other_flow = TcpPacket(other, 1000);
  EXPECT_EQ(gro.Add(&owner, first.data(), first.size()), V::kTaken);
  EXPECT_EQ(gro.Add(&owner, other_flow.data(), other_flow.size()), V::kDeliver);
  EXPECT_EQ(gro.Add(&owner, gap.data(), gap.size()), V::kFlushThenDeliver);
  int released = -1;
  gro.Flush([&](const Coalescer::Flushed& f) { released = f.buffer; });
  EXPECT_EQ(gro.free_buffers(), 0u) << "written, not yet released";
  EXPECT_EQ(gro.Add(&owner, gap.data(), gap.size()), V::kDeliver);
  gro.Release(released);
  EXPECT_EQ(gro.Add(&owner, gap.data(), gap.size()), V::kTaken);
}

TEST(CoalescerTest, DiscardForgetsAnOwnersFlows) {
  Coalescer gro(4, 4);
  int a, b;
  TcpOptions o;
  o.flags = 0x10;
  const auto p = TcpPacket(o, 1000);
  gro.Add(&a, p.data(), p.size());
  gro.Add(&b, p.data(), p.size());
  gro.Discard(&a);
  EXPECT_EQ(gro.free_buffers(), 3u);
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].owner, &b);
}

TEST(CoalescerTest, StopsAtTheLargestPacket) {
  Coalescer gro(2, 2);
  int owner;
  TcpOptions o;
  o.flags = 0x10;
  o.timestamps = false;
  size_t merged_payload = 0;
  for (int i = 0; i < 50; ++i) {
    const auto p = TcpPacket(o, 1460);
    gro.Add(&owner, p.data(), p.size());
    o.seq += 1460;
  }
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_GE(out.size(), 2u);
  for (const Flushed& f : out) {
    EXPECT_LE(f.data.size() - kVirtioNetHeaderLen, 65535u);
    merged_payload += f.segments;
  }
  EXPECT_EQ(merged_payload, 50u);
  EXPECT_EQ(out[0].segments, (65535u - 40) / 1460);
}

// ---- UDP coalescing -------------------------------------------------------------------------

struct UdpOptions {
  uint8_t version = 4;
  uint16_t id = 0x2000;
  uint8_t tos = 0;
  uint16_t src_port = 40000;
  uint16_t dst_port = 4433;
  uint8_t fill = 0;  // byte i of the payload is fill + i
};

// A UDP datagram with `payload` bytes and its checksum correct; with `partial`, the checksum
// field holds only the pseudo-header sum, as a USO super-packet from TUN has it.
std::vector<uint8_t> UdpPacket(const UdpOptions& o, size_t payload, bool partial = false) {
  const size_t ihl = o.version == 4 ? 20 : 40;
  std::vector<uint8_t> b(ihl + 8 + payload, 0);
  if (o.version == 4) {
    b[0] = 0x45;
    b[1] = o.tos;
    Put16(b, 2, uint16_t(b.size()));
    Put16(b, 4, o.id);
    b[8] = 64;
    b[9] = 17;
    Put32(b, 12, 0x0A000001);
    Put32(b, 16, 0x0A000002);
    Put16(b, 10, uint16_t(~ReferenceSum(std::vector<uint8_t>(b.begin(), b.begin() + 20))));
  } else {
    b[0] = 0x60;
    b[1] = uint8_t(o.tos << 4);
    Put16(b, 4, uint16_t(b.size() - 40));
    b[6] = 17;
    b[7] = 64;
    b[8] = 0xFD;
    b[23] = 1;
    b[24] = 0xFD;
    b[39] = 2;
  }
  const size_t l4_len = 8 + payload;
  Put16(b, ihl, o.src_port);
  Put16(b, ihl + 2, o.dst_port);
  Put16(b, ihl + 4, uint16_t(l4_len));
  for (size_t i = 0; i < payload; ++i) b[ihl + 8 + i] = uint8_t(o.fill + i);
  std::vector<uint8_t> pseudo = PseudoHeader(b, o.version, ihl, 17);
  if (partial) {
    Put16(b, ihl + 6, ReferenceSum(pseudo));
  } else {
    pseudo.insert(pseudo.end(), b.begin() + ihl, b.end());
    const uint16_t sum = uint16_t(~ReferenceSum(pseudo));
    Put16(b, ihl + 6, sum == 0 ? 0xFFFF : sum);
  }
  return b;
}

// USO in both directions: a UDP super-packet split into datagrams, and the datagrams
// coalesced back into that very super-packet, which splits into them again.
TEST(UdpCoalescerTest, DatagramsOfOneFlowBecomeTheSuperPacketAgain) {
  for (uint8_t version : {4, 6}) {
    SCOPED_TRACE(int(version));
    UdpOptions o;
    o.version = version;
    const std::vector<uint8_t> super = UdpPacket(o, 2500, true);
    Arena a;
    const size_t n =
        SegmentSuperPacket(Gso(kGsoUdpL4, 1000), super.data(), super.size(), 0, a.arena);
    ASSERT_EQ(n, 3u);
    std::vector<std::vector<uint8_t>> datagrams;
    for (size_t i = 0; i < n; ++i) {
      datagrams.emplace_back(a.segments[i].data, a.segments[i].data + a.segments[i].len);
    }
    Coalescer gro(4, 8);
    int owner;
    for (const auto& d : datagrams) {
      EXPECT_EQ(gro.Add(&owner, d.data(), d.size(), /*udp=*/true), Coalescer::Verdict::kTaken);
    }
    std::vector<Flushed> out = FlushAll(gro);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].segments, 3u);
    EXPECT_EQ(out[0].inner_bytes, datagrams[0].size() + datagrams[1].size() + datagrams[2].size());
    const VirtioNetHeader h = ReadVirtioNetHeader(out[0].data.data());
    const size_t ihl = version == 4 ? 20 : 40;
    EXPECT_EQ(h.flags, kVirtioNetFlagNeedsCsum);
    EXPECT_EQ(h.gso_type, kGsoUdpL4);
    EXPECT_EQ(h.gso_size, 1000);
    EXPECT_EQ(h.hdr_len, ihl + 8);
    EXPECT_EQ(h.csum_start, ihl);
    EXPECT_EQ(h.csum_offset, 6);
    std::vector<uint8_t> packet(out[0].data.begin() + kVirtioNetHeaderLen, out[0].data.end());
    EXPECT_EQ(packet, super);
    Arena again;
    ASSERT_EQ(SegmentSuperPacket(h, packet.data(), packet.size(), 0, again.arena), 3u);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(std::vector<uint8_t>(again.segments[i].data,
                                     again.segments[i].data + again.segments[i].len),
                datagrams[i])
          << i;
    }
    ASSERT_TRUE(CompleteChecksum(packet.data(), packet.size(), h.csum_start, h.csum_offset));
    EXPECT_TRUE(TransportChecksumOk(packet.data(), packet.size()));
  }
}

TEST(UdpCoalescerTest, UdpIsLeftAloneUnlessAsked) {
  Coalescer gro(4, 4);
  int owner;
  const auto d = UdpPacket(UdpOptions{}, 500);
  EXPECT_EQ(gro.Add(&owner, d.data(), d.size()), Coalescer::Verdict::kDeliver);
  EXPECT_EQ(gro.Add(&owner, d.data(), d.size(), /*udp=*/false), Coalescer::Verdict::kDeliver);
  EXPECT_EQ(gro.open_flows(), 0u);
}

// No checksum (IPv4's 0), a wrong one, or a UDP length that disagrees with the IP header's:
// the datagram goes as it is; behind an open flow of its own, after that flow.
TEST(UdpCoalescerTest, OnlyCorrectUdpIsTaken) {
  int owner;
  auto no_checksum = UdpPacket(UdpOptions{}, 500);
  no_checksum[26] = no_checksum[27] = 0;
  auto wrong_checksum = UdpPacket(UdpOptions{}, 500);
  wrong_checksum[40] ^= 1;
  auto wrong_length = UdpPacket(UdpOptions{}, 500);
  Put16(wrong_length, 24, 400);
  for (const auto* d : {&no_checksum, &wrong_checksum, &wrong_length}) {
    Coalescer gro(4, 4);
    EXPECT_EQ(gro.Add(&owner, d->data(), d->size(), true), Coalescer::Verdict::kDeliver);
    const auto good = UdpPacket(UdpOptions{}, 500);
    ASSERT_EQ(gro.Add(&owner, good.data(), good.size(), true), Coalescer::Verdict::kTaken);
    // Behind the open flow it is kept, unmerged, so it does not overtake.
    EXPECT_EQ(gro.Add(&owner, d->data(), d->size(), true), Coalescer::Verdict::kTaken);
    EXPECT_EQ(gro.Add(&owner, good.data(), good.size(), true), Coalescer::Verdict::kTaken);
    std::vector<Flushed> out = FlushAll(gro);
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(std::vector<uint8_t>(out[1].data.begin() + kVirtioNetHeaderLen, out[1].data.end()),
              *d);
    for (const Flushed& f : out) EXPECT_EQ(f.segments, 1u);
  }
}

// Flows are told apart by addresses, ports and protocol; a larger datagram than the first
// starts a flow of its own, a shorter one ends its flow.
TEST(UdpCoalescerTest, WhatCannotMergeIsNotMergedAndNotReordered) {
  Coalescer gro(8, 8);
  int owner;
  UdpOptions other_port;
  other_port.src_port = 40001;
  TcpOptions tcp;
  tcp.src_port = 40000;
  tcp.dst_port = 4433;
  tcp.flags = 0x10;
  const auto d1 = UdpPacket(UdpOptions{}, 500);
  const auto p1 = UdpPacket(other_port, 500);
  const auto t1 = TcpPacket(tcp, 500);
  const auto big = UdpPacket(UdpOptions{}, 600);
  const auto small = UdpPacket(UdpOptions{}, 100);
  for (const auto* d : {&d1, &p1, &t1, &d1, &big, &small, &big}) {
    EXPECT_EQ(gro.Add(&owner, d->data(), d->size(), true), Coalescer::Verdict::kTaken);
  }
  std::vector<Flushed> out = FlushAll(gro);
  // d1+d1 (then big cannot follow: larger), p1, t1, big+small (small ends it), big.
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].segments, 2u);
  EXPECT_EQ(out[1].segments, 1u);
  EXPECT_EQ(out[2].segments, 1u);
  EXPECT_EQ(out[3].segments, 2u);
  EXPECT_EQ(out[4].segments, 1u);
  EXPECT_EQ(ReadVirtioNetHeader(out[0].data.data()).gso_size, 500);
  EXPECT_EQ(ReadVirtioNetHeader(out[3].data.data()).gso_size, 600);
  EXPECT_EQ(out[3].data.size(), kVirtioNetHeaderLen + 28 + 600 + 100);
}

TEST(UdpCoalescerTest, AtMostTheKernelsCountOfDatagramsPerFlow) {
  Coalescer gro(4, 4);
  int owner;
  const auto d = UdpPacket(UdpOptions{}, 100);
  for (int i = 0; i < 70; ++i) {
    ASSERT_EQ(gro.Add(&owner, d.data(), d.size(), true), Coalescer::Verdict::kTaken) << i;
  }
  std::vector<Flushed> out = FlushAll(gro);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].segments, Coalescer::kMaxUdpSegments);
  EXPECT_EQ(out[1].segments, 70 - Coalescer::kMaxUdpSegments);
}

}  // namespace
}  // namespace tunnelagent::dataplane
