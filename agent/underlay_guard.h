// The rule that keeps a tunnel from cutting the underlay it runs on: no address or route of a
// tunnel may cover an address the underlay uses (a tunnel's remote, its local address, the
// gateway and source of the route towards a remote). Routed into a tunnel device, such an
// address would take the tunnels' own outer packets into a tunnel: every tunnel to that peer
// stops while still looking up.
#ifndef TUNNELAGENT_AGENT_UNDERLAY_GUARD_H_
#define TUNNELAGENT_AGENT_UNDERLAY_GUARD_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "agent/link_control.h"
#include "agent/tunnel_spec.h"
#include "dataplane/address.h"

namespace tunnelagent::agent {

// One address the underlay uses, and whose it is ("the remote of tunnel gre2").
struct UnderlayAddress {
  dataplane::IpAddress address;
  std::string role;  // "remote", "local", "gateway towards the remote", "source towards the remote"
  std::string tunnel;
};

// The underlay addresses of `spec`: its remote, its local address when set, and, from `route`
// (the kernel's route towards the remote, when known and not itself through a tunnel device),
// the gateway and the source address.
std::vector<UnderlayAddress> UnderlayAddressesOf(const TunnelSpec& spec,
                                                 const std::optional<UnderlayRoute>& route);

// FAILED_PRECONDITION naming the field, the prefix and what it covers when an address (its
// network: the route the kernel adds for it) or a route of `spec` covers one of `underlay`
// (whoever's it is, `spec`'s own included). OK otherwise.
absl::Status CheckPrefixesSpareUnderlay(const TunnelSpec& spec,
                                        absl::Span<const UnderlayAddress> underlay);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_UNDERLAY_GUARD_H_
