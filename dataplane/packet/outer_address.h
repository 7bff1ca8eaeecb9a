// An underlay address as the packet codecs see it: 16 bytes in network order, an IPv4
// address in the first four (the family follows from the tunnel's mode, so it is not stored).
#ifndef TUNNELAGENT_DATAPLANE_PACKET_OUTER_ADDRESS_H_
#define TUNNELAGENT_DATAPLANE_PACKET_OUTER_ADDRESS_H_

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "dataplane/packet/byte_order.h"

namespace tunnelagent::dataplane {

struct OuterAddress {
  std::array<uint8_t, 16> bytes{};

  constexpr OuterAddress() = default;
  // Implicit on purpose: IPv4 addresses are written as host-order integers throughout the
  // codecs and their tests (0xC6120001 is 198.18.0.1).
  OuterAddress(uint32_t ipv4_host_order) { StoreBe32(bytes.data(), ipv4_host_order); }

  static OuterAddress FromIpv6(const uint8_t* network_order) {
    OuterAddress a;
    std::memcpy(a.bytes.data(), network_order, 16);
    return a;
  }
  static OuterAddress FromIpv4Bytes(const uint8_t* network_order) {
    OuterAddress a;
    std::memcpy(a.bytes.data(), network_order, 4);
    return a;
  }

  uint32_t v4() const { return LoadBe32(bytes.data()); }
  const uint8_t* data() const { return bytes.data(); }
  bool is_zero() const {
    for (uint8_t b : bytes) {
      if (b != 0) return false;
    }
    return true;
  }

  friend bool operator==(const OuterAddress& a, const OuterAddress& b) {
    return a.bytes == b.bytes;
  }
  friend bool operator!=(const OuterAddress& a, const OuterAddress& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const OuterAddress& a) {
    return H::combine(std::move(h), a.bytes);
  }
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_OUTER_ADDRESS_H_
