#include "dataplane/packet/checksum.h"

#include <cstring>

namespace tunnelagent::dataplane {

uint32_t ChecksumAdd(const uint8_t* data, size_t len, uint32_t sum) {
  // A 64-bit accumulator cannot overflow for any buffer under 16 GiB, so carries are folded
  // once at the end instead of per word.
  uint64_t acc = sum;
  size_t i = 0;
  // Eight bytes at a time as two big-endian 32-bit words: the one's complement sum of 32-bit
  // words folds to the same 16-bit sum (RFC 1071 section 2), at a quarter of the additions.
  for (; i + 8 <= len; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, sizeof word);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    acc += (word >> 32) + (word & 0xFFFFFFFFu);
  }
  for (; i + 1 < len; i += 2) {
    acc += (uint32_t{data[i]} << 8) | data[i + 1];
  }
  if (i < len) acc += uint32_t{data[i]} << 8;
  // Folding the high half into the low half keeps the one's complement sum; twice suffices
  // for a 64-bit value to fit in 32 bits.
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
