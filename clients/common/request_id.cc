#include "clients/common/request_id.h"

#include <cstddef>
#include <random>

namespace tunnelagent::clients {

std::string FormatUuidV4(std::array<uint8_t, 16> random) {
  random[6] = static_cast<uint8_t>((random[6] & 0x0f) | 0x40);  // version 4
  random[8] = static_cast<uint8_t>((random[8] & 0x3f) | 0x80);  // variant 10xx
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < random.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[random[i] >> 4];
    out += kHex[random[i] & 0x0f];
  }
  return out;
}

std::string NewRequestId() {
  std::random_device device;
  std::array<uint8_t, 16> random;
  for (size_t i = 0; i < random.size(); i += 4) {
    uint32_t word = device();
    for (size_t j = 0; j < 4; ++j) random[i + j] = static_cast<uint8_t>(word >> (8 * j));
  }
  return FormatUuidV4(random);
}

}  // namespace tunnelagent::clients
