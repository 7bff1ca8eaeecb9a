#include "agent/tunnel_spec.h"

#include "dataplane/packet/encap.h"

namespace tunnelagent::agent {

std::optional<uint32_t> InputKey(const TunnelSpec& spec) {
  return spec.input_key.has_value() ? spec.input_key : spec.key;
}

std::optional<uint32_t> OutputKey(const TunnelSpec& spec) {
  return spec.output_key.has_value() ? spec.output_key : spec.key;
}

dataplane::GreOptions InputGreOptions(const TunnelSpec& spec) {
  if (!dataplane::IsGreMode(spec.mode)) return {};
  return {InputKey(spec).has_value(), spec.checksum || spec.input_checksum,
          spec.sequence || spec.input_sequence};
}

dataplane::GreOptions OutputGreOptions(const TunnelSpec& spec) {
  if (!dataplane::IsGreMode(spec.mode)) return {};
  return {OutputKey(spec).has_value(), spec.checksum || spec.output_checksum,
          spec.sequence || spec.output_sequence};
}

uint16_t EffectiveFouPort(const TunnelSpec& spec) {
  if (!spec.fou.enabled) return 0;
  if (spec.fou.dport != 0) return spec.fou.dport;
  return dataplane::IsGreMode(spec.mode) ? dataplane::kGreInUdpPort : 0;
}

uint8_t EffectiveTtl(const TunnelSpec& spec) {
  if (spec.ttl.has_value()) return *spec.ttl;
  // ip6_tnl's default hop limit is 64; the IPv4 tunnels' default TTL is "inherit".
  return dataplane::IsIpv6UnderlayMode(spec.mode) ? 64 : 0;
}

dataplane::OuterAddress OuterAddressOf(const dataplane::IpAddress& address) {
  if (address.is_v4()) return dataplane::OuterAddress(address.v4());
  if (address.is_v6()) return dataplane::OuterAddress::FromIpv6(address.bytes().data());
  return {};
}

}  // namespace tunnelagent::agent
