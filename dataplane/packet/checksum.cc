#include "dataplane/packet/checksum.h"

#include <cstring>

namespace tunnelagent::dataplane {

namespace {

// Adds `word` to `acc` with the carry wrapped around: one's complement addition of 64-bit
// words, whose 16-bit fold is the same sum as adding the 16-bit words one by one.
inline uint64_t AddWrapped(uint64_t acc, uint64_t word) {
  unsigned long long out;  // NOLINT(runtime/int): the builtin's type
  const bool carry = __builtin_uaddll_overflow(acc, word, &out);
  return out + carry;
}

inline uint64_t Load64(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, sizeof word);
  return word;
}

}  // namespace

uint32_t ChecksumAdd(const uint8_t* data, size_t len, uint32_t sum) {
  // The bulk is summed as 64-bit words in the machine's byte order: the one's complement sum
  // is independent of byte order up to a swap of the two bytes of the folded result (RFC 1071
  // section 2(B)), so no per-word byte swap is needed. Two accumulators let the two
  // add-with-carry chains run side by side; this runs on every byte of every TSO segment.
  uint64_t a = 0;
  uint64_t b = 0;
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    a = AddWrapped(a, Load64(data + i));
    b = AddWrapped(b, Load64(data + i + 8));
    a = AddWrapped(a, Load64(data + i + 16));
    b = AddWrapped(b, Load64(data + i + 24));
  }
  for (; i + 8 <= len; i += 8) a = AddWrapped(a, Load64(data + i));
  a = AddWrapped(a, b);
  // Fold to 16 bits, each step keeping the one's complement sum.
  a = (a & 0xFFFFFFFFu) + (a >> 32);
  a = (a & 0xFFFFFFFFu) + (a >> 32);
  a = (a & 0xFFFF) + (a >> 16);
  a = (a & 0xFFFF) + (a >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  a = ((a & 0xFF) << 8) | (a >> 8);
#endif
  // The tail starts at a multiple of 8, so its 16-bit words line up with the bulk's.
  uint64_t acc = uint64_t{sum} + a;
  for (; i + 1 < len; i += 2) {
    acc += (uint32_t{data[i]} << 8) | data[i + 1];
  }
  if (i < len) acc += uint32_t{data[i]} << 8;
  acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
  acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
  return static_cast<uint32_t>(acc);
}

uint16_t ChecksumFinish(uint32_t sum) {
  sum = (sum & 0xFFFF) + (sum >> 16);
  sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

uint16_t InternetChecksum(const uint8_t* data, size_t len) {
  return ChecksumFinish(ChecksumAdd(data, len));
}

}  // namespace tunnelagent::dataplane
