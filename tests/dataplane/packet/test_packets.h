// Helpers shared by the packet tests: golden packets, a hex parser, an independent reference
// checksum and a small fluent builder for deriving malformed variants from a golden packet.
#ifndef TUNNELAGENT_TESTS_DATAPLANE_PACKET_TEST_PACKETS_H_
#define TUNNELAGENT_TESTS_DATAPLANE_PACKET_TEST_PACKETS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane::test {

using Bytes = std::vector<uint8_t>;

// Golden packets, produced outside this code base (a short Python script with struct.pack
// and its own checksum), so the codec is checked against bytes it did not compute.
//
// ICMP echo request 192.0.2.1 -> 198.51.100.2, id 0x1c46, DF, TTL 64, payload "abcdefgh".
inline constexpr char kInnerIcmp[] =
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
// The same packet with ECN ECT(1), ECT(0) and CE (checksums adjusted).
inline constexpr char kInnerIcmpEct1[] =
    "45 01 00 24 1c 46 40 00 40 01 32 5b c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kInnerIcmpEct0[] =
    "45 02 00 24 1c 46 40 00 40 01 32 5a c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kInnerIcmpCe[] =
    "45 03 00 24 1c 46 40 00 40 01 32 59 c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
// ICMPv6 echo request 2001:db8::1 -> 2001:db8::2, hop limit 0x37, payload "abcdefgh".
inline constexpr char kInnerIcmp6[] =
    "60 00 00 00 00 10 3a 37 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02"
    "80 00 80 75 12 34 00 01 61 62 63 64 65 66 67 68";

// kInnerIcmp sent from 203.0.113.1 to 203.0.113.2, outer id 0x0102, DF, TTL 64.
inline constexpr char kGre[] =  // GRE, no options
    "45 00 00 3c 01 02 40 00 40 2f c1 8c cb 00 71 01 cb 00 71 02"
    "00 00 08 00"
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreKey[] =  // key 0x0a0b0c0d
    "45 00 00 40 01 02 40 00 40 2f c1 88 cb 00 71 01 cb 00 71 02"
    "20 00 08 00 0a 0b 0c 0d"
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreCsum[] =  // checksum 0x77ff
    "45 00 00 40 01 02 40 00 40 2f c1 88 cb 00 71 01 cb 00 71 02"
    "80 00 08 00 77 ff 00 00"
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreCsumKeySeq[] =  // checksum 0x47ce, key 42, sequence 7
    "45 00 00 48 01 02 40 00 40 2f c1 80 cb 00 71 01 cb 00 71 02"
    "b0 00 08 00 47 ce 00 00 00 00 00 2a 00 00 00 07"
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kIpip[] =
    "45 00 00 38 01 02 40 00 40 04 c1 bb cb 00 71 01 cb 00 71 02"
    "45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
// kInnerIcmp6 in GRE, outer id 0, no DF, TTL 0x37 (inherited from the hop limit).
inline constexpr char kGreIpv6[] =
    "45 00 00 50 00 00 00 00 37 2f 0b 7b cb 00 71 01 cb 00 71 02"
    "00 00 86 dd"
    "60 00 00 00 00 10 3a 37 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02"
    "80 00 80 75 12 34 00 01 61 62 63 64 65 66 67 68";

inline constexpr uint32_t kLocal = 0xCB007101;   // 203.0.113.1
inline constexpr uint32_t kRemote = 0xCB007102;  // 203.0.113.2

inline Bytes Hex(absl::string_view text) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Bytes out;
  int high = -1;
  for (char c : text) {
    if (c == ' ' || c == '\n') continue;
    const int n = nibble(c);
    if (n < 0) {
      ADD_FAILURE() << "bad hex character '" << c << "'";
      return {};
    }
    if (high < 0) {
      high = n;
    } else {
      out.push_back(static_cast<uint8_t>(high << 4 | n));
      high = -1;
    }
  }
  if (high >= 0) ADD_FAILURE() << "odd number of hex digits";
  return out;
}

inline std::string ToHex(const uint8_t* data, size_t len) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < len; ++i) {
    if (i != 0) out += (i % 20 == 0) ? '\n' : ' ';
    out += kDigits[data[i] >> 4];
    out += kDigits[data[i] & 0xF];
  }
  return out;
}
inline std::string ToHex(const Bytes& b) { return ToHex(b.data(), b.size()); }

// Deliberately a different algorithm from the codec's: a 16-bit sum with the end-around carry
// added after every word, as RFC 1071 section 2 describes it.
inline uint16_t RefChecksum(const uint8_t* data, size_t len) {
  uint16_t sum = 0;
  for (size_t i = 0; i < len; i += 2) {
    const uint16_t word = static_cast<uint16_t>(data[i] << 8 | (i + 1 < len ? data[i + 1] : 0));
    const uint32_t s = uint32_t{sum} + word;
    sum = static_cast<uint16_t>((s & 0xFFFF) + (s >> 16));
  }
  return static_cast<uint16_t>(~sum);
}

// Derives a variant of a packet: Packet(Hex(kGre)).Set8(22, 0x86).FixIpv4Checksum(0).
class Packet {
 public:
  explicit Packet(Bytes bytes) : bytes_(std::move(bytes)) {}
  explicit Packet(absl::string_view hex) : bytes_(Hex(hex)) {}

  Packet& Set8(size_t offset, uint8_t value) {
    Grow(offset + 1);
    bytes_[offset] = value;
    return *this;
  }
  Packet& Set16(size_t offset, uint16_t value) {
    Grow(offset + 2);
    bytes_[offset] = static_cast<uint8_t>(value >> 8);
    bytes_[offset + 1] = static_cast<uint8_t>(value);
    return *this;
  }
  Packet& Truncate(size_t len) {
    bytes_.resize(len);
    return *this;
  }
  Packet& Append(const Bytes& more) {
    bytes_.insert(bytes_.end(), more.begin(), more.end());
    return *this;
  }
  // Replaces everything from `offset` on (e.g. the inner packet) with `tail`.
  Packet& ReplaceTail(size_t offset, const Bytes& tail) {
    bytes_.resize(offset);
    return Append(tail);
  }
  // Sets the IPv4 header at `offset` to claim exactly the bytes that follow it.
  Packet& FixIpv4TotalLen(size_t offset) {
    return Set16(offset + 2, static_cast<uint16_t>(bytes_.size() - offset));
  }
  Packet& FixIpv4Checksum(size_t offset) {
    const size_t header_len = size_t{bytes_[offset] & 0x0Fu} * 4;
    Set16(offset + 10, 0);
    return Set16(offset + 10, RefChecksum(bytes_.data() + offset, header_len));
  }
  // Recomputes the GRE checksum of the GRE packet that starts at `offset` and runs to the end.
  Packet& FixGreChecksum(size_t offset) {
    Set16(offset + 4, 0);
    return Set16(offset + 4, RefChecksum(bytes_.data() + offset, bytes_.size() - offset));
  }

  const Bytes& bytes() const { return bytes_; }
  operator Bytes() const { return bytes_; }  // NOLINT: lets tables hold Packets as Bytes

 private:
  void Grow(size_t len) {
    if (bytes_.size() < len) bytes_.resize(len);
  }
  Bytes bytes_;
};

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_PACKET_TEST_PACKETS_H_
