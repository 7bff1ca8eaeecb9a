#include "dataplane/address.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {
namespace {

// Longest IPv6 text inet_ntop can produce, which also bounds what inet_pton accepts.
constexpr size_t kMaxAddressText = INET6_ADDRSTRLEN;

absl::Status InvalidAddress(absl::string_view what, absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " \"", text, "\""));
}

// True when the first `bits` bits of a and b are equal.
bool SamePrefix(const std::array<uint8_t, 16>& a, const std::array<uint8_t, 16>& b, int bits) {
  const int full = bits / 8;
  if (!std::equal(a.begin(), a.begin() + full, b.begin())) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xFF << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

// Parses a prefix length written as plain decimal. Leading zeros are refused because
// iproute2 reads "010" as octal 8; accepting it here as 10 would silently disagree.
bool ParseLength(absl::string_view text, int max, int* length) {
  if (text.empty() || text.size() > 3 || (text.size() > 1 && text[0] == '0')) return false;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  if (value > max) return false;
  *length = value;
  return true;
}

}  // namespace

IpAddress IpAddress::V4(uint32_t host_order) {
  IpAddress a;
  a.family_ = Family::kV4;
  a.bytes_[0] = static_cast<uint8_t>(host_order >> 24);
  a.bytes_[1] = static_cast<uint8_t>(host_order >> 16);
  a.bytes_[2] = static_cast<uint8_t>(host_order >> 8);
  a.bytes_[3] = static_cast<uint8_t>(host_order);
  return a;
}

IpAddress IpAddress::V6(const std::array<uint8_t, 16>& bytes) {
  IpAddress a;
  a.family_ = Family::kV6;
  a.bytes_ = bytes;
  return a;
}

absl::StatusOr<IpAddress> IpAddress::Parse(absl::string_view text) {
  // inet_pton needs a NUL-terminated string; an embedded NUL would cut the text short and
  // let "1.2.3.4\0junk" through.
  if (text.empty() || text.size() >= kMaxAddressText ||
      text.find('\0') != absl::string_view::npos) {
    return InvalidAddress("IP address", text);
  }
  char buf[kMaxAddressText];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress a;
  if (inet_pton(AF_INET, buf, a.bytes_.data()) == 1) {
    a.family_ = Family::kV4;
    return a;
  }
  if (inet_pton(AF_INET6, buf, a.bytes_.data()) == 1) {
    a.family_ = Family::kV6;
    return a;
  }
  return InvalidAddress("IP address", text);
}

bool IpAddress::is_unspecified() const {
  const int len = bit_length() / 8;
  return std::all_of(bytes_.begin(), bytes_.begin() + len, [](uint8_t b) { return b == 0; });
}

bool IpAddress::is_multicast() const {
  if (is_v4()) return (bytes_[0] & 0xF0) == 0xE0;  // 224.0.0.0/4
  if (is_v6()) return bytes_[0] == 0xFF;           // ff00::/8
  return false;
}

uint32_t IpAddress::v4() const {
  return (uint32_t{bytes_[0]} << 24) | (uint32_t{bytes_[1]} << 16) | (uint32_t{bytes_[2]} << 8) |
         bytes_[3];
}

std::string IpAddress::ToString() const {
  char buf[kMaxAddressText];
  const int af = is_v4() ? AF_INET : is_v6() ? AF_INET6 : AF_UNSPEC;
  if (af == AF_UNSPEC || inet_ntop(af, bytes_.data(), buf, sizeof(buf)) == nullptr) return "";
  return buf;
}

absl::StatusOr<IpPrefix> IpPrefix::Parse(absl::string_view text) {
  const size_t slash = text.find('/');
  absl::StatusOr<IpAddress> address = IpAddress::Parse(text.substr(0, slash));
  if (!address.ok()) return InvalidAddress("IP prefix", text);
  int length = address->bit_length();
  if (slash != absl::string_view::npos &&
      !ParseLength(text.substr(slash + 1), address->bit_length(), &length)) {
    return InvalidAddress("IP prefix", text);
  }
  return IpPrefix(*address, length);
}

bool IpPrefix::is_network() const { return Network().address_ == address_; }

IpPrefix IpPrefix::Network() const {
  // Clamped so that a prefix built with an out-of-range length still yields something sane.
  const int length = std::clamp(length_, 0, address_.bit_length());
  std::array<uint8_t, 16> bytes = address_.bytes();
  const int full = length / 8;
  const int rest = length % 8;
  if (full < 16) {
    if (rest != 0) bytes[full] &= static_cast<uint8_t>(0xFF << (8 - rest));
    std::fill(bytes.begin() + full + (rest != 0 ? 1 : 0), bytes.end(), 0);
  }
  IpAddress network;
  if (address_.is_v4()) {
    network = IpAddress::V4((uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) |
                            (uint32_t{bytes[2]} << 8) | bytes[3]);
  } else if (address_.is_v6()) {
    network = IpAddress::V6(bytes);
  }
  return IpPrefix(network, length_);
}

bool IpPrefix::Overlaps(const IpPrefix& other) const {
  if (address_.family() != other.address_.family() ||
      address_.family() == IpAddress::Family::kNone) {
    return false;
  }
  const int shorter = std::clamp(std::min(length_, other.length_), 0, address_.bit_length());
  return SamePrefix(address_.bytes(), other.address_.bytes(), shorter);
}

std::string IpPrefix::ToString() const {
  if (address_.family() == IpAddress::Family::kNone) return "";
  return absl::StrCat(address_.ToString(), "/", length_);
}

}  // namespace tunnelagent::dataplane
