#include "agent/underlay_guard.h"

#include "absl/strings/str_cat.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;

bool Covers(const IpPrefix& prefix, const IpAddress& address) {
  if (address.is_unspecified()) return false;
  return prefix.Overlaps(IpPrefix(address, address.bit_length()));
}

absl::Status Refusal(absl::string_view field, size_t index, const IpPrefix& given,
                     const IpPrefix& covering, const UnderlayAddress& underlay,
                     absl::string_view tunnel) {
  const std::string whose = underlay.tunnel == tunnel ? std::string("this tunnel")
                                                      : absl::StrCat("tunnel ", underlay.tunnel);
  return absl::FailedPreconditionError(absl::StrCat(
      "tunnel.", field, "[", index, "] ", given.ToString(),
      given == covering ? std::string() : absl::StrCat(" (network ", covering.ToString(), ")"),
      " covers ", underlay.address.ToString(), ", the ", underlay.role, " of ", whose,
      ": routed into a tunnel it would cut the underlay that tunnel's packets travel on"));
}

}  // namespace

std::vector<UnderlayAddress> UnderlayAddressesOf(const TunnelSpec& spec,
                                                 const std::optional<UnderlayRoute>& route) {
  std::vector<UnderlayAddress> out;
  if (!spec.remote.is_unspecified()) out.push_back({spec.remote, "remote", spec.name});
  if (!spec.local.is_unspecified()) out.push_back({spec.local, "local address", spec.name});
  if (route.has_value()) {
    if (route->gateway && !route->gateway->is_unspecified()) {
      out.push_back({*route->gateway, "gateway towards the remote", spec.name});
    }
    if (route->source && !route->source->is_unspecified() && *route->source != spec.local) {
      out.push_back({*route->source, "source address towards the remote", spec.name});
    }
  }
  return out;
}

absl::Status CheckPrefixesSpareUnderlay(const TunnelSpec& spec,
                                        absl::Span<const UnderlayAddress> underlay) {
  for (size_t i = 0; i < spec.addresses.size(); ++i) {
    const IpPrefix network = spec.addresses[i].Network();
    for (const UnderlayAddress& u : underlay) {
      // The tunnel's own address may be the underlay's only when it is the host itself; an
      // address equal to an underlay address is refused anyway (the kernel would answer
      // locally for it), as is a network around one.
      if (Covers(network, u.address)) {
        return Refusal("addresses", i, spec.addresses[i], network, u, spec.name);
      }
    }
  }
  for (size_t i = 0; i < spec.routes.size(); ++i) {
    for (const UnderlayAddress& u : underlay) {
      if (Covers(spec.routes[i], u.address)) {
        return Refusal("routes", i, spec.routes[i], spec.routes[i], u, spec.name);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace tunnelagent::agent
