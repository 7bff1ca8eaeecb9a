#include "dataplane/tunnel_spec.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint32_t kIpv4Header = 20;
constexpr uint32_t kIpv6Header = 40;
constexpr uint32_t kGreBase = 4;
constexpr uint32_t kGreKey = 4;
constexpr uint32_t kEthernetHeader = 14;
// RFC 2473 tunnel encapsulation limit destination option, which ip6gre and ip6tnl add unless
// configured with "encaplimit none".
constexpr uint32_t kEncapLimitOption = 8;
constexpr uint32_t kIpv4MinMtu = 68;

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
  return mode == TunnelMode::kGre || mode == TunnelMode::kIpip;
}

uint32_t EncapOverhead(TunnelMode mode, bool has_key) {
  const uint32_t gre = kGreBase + (has_key ? kGreKey : 0);
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

uint32_t AutomaticMtu(TunnelMode mode, bool has_key, uint32_t underlay_mtu) {
  const uint32_t overhead = EncapOverhead(mode, has_key);
  if (underlay_mtu < overhead + kIpv4MinMtu) return kIpv4MinMtu;
  return underlay_mtu - overhead;
}

}  // namespace tunnelagent::dataplane
