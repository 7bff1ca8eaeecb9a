#include "dataplane/tunnel_mode_info.h"

#include "dataplane/packet/encap.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint32_t kIpv4Header = 20;
constexpr uint32_t kIpv6Header = 40;
constexpr uint32_t kGreBase = 4;
constexpr uint32_t kGreOption = 4;  // each of key, checksum, sequence
constexpr uint32_t kEthernetHeader = 14;
// RFC 2473 tunnel encapsulation limit destination option, which ip6gre and ip6tnl add unless
// configured with "encaplimit none".
constexpr uint32_t kEncapLimitOption = 8;
constexpr uint32_t kIpv4MinMtu = 68;
constexpr uint32_t kIpv6MinMtu = 1280;
// The kernel's IP_MAX_MTU, from which it subtracts the tunnel header for a tunnel's max_mtu.
constexpr uint32_t kIpMaxMtu = 65535;

struct ModeName {
  TunnelMode mode;
  absl::string_view name;
};

constexpr ModeName kModeNames[] = {
    {TunnelMode::kGre, "gre"},       {TunnelMode::kGretap, "gretap"},
    {TunnelMode::kIpip, "ipip"},     {TunnelMode::kSit, "sit"},
    {TunnelMode::kIp6gre, "ip6gre"}, {TunnelMode::kIp6gretap, "ip6gretap"},
    {TunnelMode::kIp6tnl, "ip6tnl"},
};

}  // namespace

absl::string_view TunnelModeName(TunnelMode mode) {
  for (const ModeName& m : kModeNames) {
    if (m.mode == mode) return m.name;
  }
  return "unknown";
}

std::optional<TunnelMode> ParseTunnelMode(absl::string_view name) {
  for (const ModeName& m : kModeNames) {
    if (m.name == name) return m.mode;
  }
  return std::nullopt;
}

bool IsModeImplemented(TunnelMode mode) {
  switch (mode) {
    case TunnelMode::kGre:
    case TunnelMode::kGretap:
    case TunnelMode::kIpip:
    case TunnelMode::kSit:
    case TunnelMode::kIp6gre:
    case TunnelMode::kIp6gretap:
    case TunnelMode::kIp6tnl:
      return true;
  }
  return false;
}

uint32_t EncapOverhead(TunnelMode mode, GreOptions output, bool fou) {
  const uint32_t gre = kGreBase + (output.key ? kGreOption : 0) +
                       (output.checksum ? kGreOption : 0) + (output.sequence ? kGreOption : 0);
  if (fou) return EncapOverhead(mode, output, false) + 8;
  switch (mode) {
    case TunnelMode::kGre:
      return kIpv4Header + gre;
    case TunnelMode::kGretap:
      return kIpv4Header + gre + kEthernetHeader;
    case TunnelMode::kIpip:
    case TunnelMode::kSit:
      return kIpv4Header;
    case TunnelMode::kIp6gre:
      return kIpv6Header + kEncapLimitOption + gre;
    case TunnelMode::kIp6gretap:
      return kIpv6Header + kEncapLimitOption + gre + kEthernetHeader;
    case TunnelMode::kIp6tnl:
      return kIpv6Header + kEncapLimitOption;
  }
  return kIpv4Header;
}

MtuRange DeviceMtuRange(TunnelMode mode, GreOptions output, bool fou) {
  return MtuRange{.min = mode == TunnelMode::kSit ? kIpv6MinMtu : kIpv4MinMtu,
                  .max = kIpMaxMtu - EncapOverhead(mode, output, fou)};
}

uint32_t AutomaticMtu(TunnelMode mode, GreOptions output, uint32_t underlay_mtu, bool fou) {
  const uint32_t overhead = EncapOverhead(mode, output, fou);
  // What the device must carry at least: IPv6 needs 1280 (sit carries only IPv6, and the
  // kernel holds IPv6-underlay tunnels to it too); otherwise IPv4's 68.
  const uint32_t floor =
      mode == TunnelMode::kSit || IsIpv6UnderlayMode(mode) ? kIpv6MinMtu : kIpv4MinMtu;
  if (underlay_mtu < overhead + floor) return floor;
  return underlay_mtu - overhead;
}

}  // namespace tunnelagent::dataplane
