// The Internet checksum (RFC 1071), used by IPv4 and GRE headers.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_CHECKSUM_H_
#define TUNNELAGENT_DATAPLANE_PACKET_CHECKSUM_H_

#include <cstddef>
#include <cstdint>

namespace tunnelagent::dataplane {

// Adds `data` as big-endian 16-bit words to a running 32-bit sum (odd tail padded with zero).
uint32_t ChecksumAdd(const uint8_t* data, size_t len, uint32_t sum = 0);
// Folds a running sum and returns its one's complement: the value to store in a checksum
// field (host order; write it big-endian). A region whose stored checksum is right sums to 0.
uint16_t ChecksumFinish(uint32_t sum);
// ChecksumFinish(ChecksumAdd(data, len)).
uint16_t InternetChecksum(const uint8_t* data, size_t len);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_CHECKSUM_H_
