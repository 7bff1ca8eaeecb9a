// IP addresses and prefixes as the control plane speaks them ("198.18.0.1", "10.0.0.0/24").
#ifndef TUNNELAGENT_DATAPLANE_ADDRESS_H_
#define TUNNELAGENT_DATAPLANE_ADDRESS_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::dataplane {

// An IPv4 or IPv6 address, or the unspecified value (family 0).
class IpAddress {
 public:
  enum class Family : uint8_t { kNone = 0, kV4 = 4, kV6 = 6 };

  IpAddress() = default;
  static IpAddress V4(uint32_t host_order);
  static IpAddress V6(const std::array<uint8_t, 16>& bytes);
  // Parses dotted-quad IPv4 or RFC 4291 IPv6 text; INVALID_ARGUMENT otherwise.
  static absl::StatusOr<IpAddress> Parse(absl::string_view text);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::kV4; }
  bool is_v6() const { return family_ == Family::kV6; }
  bool is_unspecified() const;  // family none, 0.0.0.0 or ::
  bool is_multicast() const;
  // IPv4 address in host byte order (198.18.0.1 == 0xC6120001). Only for is_v4().
  uint32_t v4() const;
  // Network-order bytes: 4 used for IPv4, 16 for IPv6.
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  int bit_length() const { return is_v4() ? 32 : is_v6() ? 128 : 0; }
  std::string ToString() const;  // "" for family none

  friend bool operator==(const IpAddress& a, const IpAddress& b) {
    return a.family_ == b.family_ && a.bytes_ == b.bytes_;
  }
  friend bool operator!=(const IpAddress& a, const IpAddress& b) { return !(a == b); }

 private:
  Family family_ = Family::kNone;
  std::array<uint8_t, 16> bytes_{};
};

// An address with a prefix length. As an interface address the host bits are the host's own;
// as a route destination they must be zero (see is_network()).
class IpPrefix {
 public:
  IpPrefix() = default;
  IpPrefix(IpAddress address, int length) : address_(address), length_(length) {}
  // "a.b.c.d/n" or "x::y/n". A bare address is taken as a host prefix (/32 or /128), as
  // iproute2 does.
  static absl::StatusOr<IpPrefix> Parse(absl::string_view text);

  const IpAddress& address() const { return address_; }
  int length() const { return length_; }
  // True when no bit beyond the prefix length is set.
  bool is_network() const;
  // The prefix with host bits cleared.
  IpPrefix Network() const;
  // True when the two prefixes share any address (same family and one contains the other).
  bool Overlaps(const IpPrefix& other) const;
  std::string ToString() const;

  friend bool operator==(const IpPrefix& a, const IpPrefix& b) {
    return a.address_ == b.address_ && a.length_ == b.length_;
  }

 private:
  IpAddress address_;
  int length_ = 0;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_ADDRESS_H_
