// Big-endian loads and stores on byte buffers of any alignment.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_BYTE_ORDER_H_
#define TUNNELAGENT_DATAPLANE_PACKET_BYTE_ORDER_H_

#include <cstdint>

namespace tunnelagent::dataplane {

// Byte by byte so that packet fields at odd offsets (IP options, GRE after an odd-length
// header) never become unaligned wide loads; compilers turn these into a load and a bswap.
inline uint16_t LoadBe16(const uint8_t* p) {
  return static_cast<uint16_t>((uint16_t{p[0]} << 8) | p[1]);
}
inline uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline void StoreBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void StoreBe32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_BYTE_ORDER_H_
