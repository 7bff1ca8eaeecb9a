#include "dataplane/packet/checksum.h"

namespace tunnelagent::dataplane {

uint32_t ChecksumAdd(const uint8_t* data, size_t len, uint32_t sum) {
  // A 64-bit accumulator cannot overflow for any buffer that fits in memory (2^48 words), so
  // carries are folded once at the end instead of per word.
  uint64_t acc = sum;
  size_t i = 0;
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
