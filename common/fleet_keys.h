// The keys of a fleet in etcd, the contract between the agents that register and the
// controllers that read them: written here once, for both.
//
//   /tunnel-agent/<fleet>/description      the fleet's description (tunnel-controller fleet set)
//   /tunnel-agent/<fleet>/nodes/<node>     a node's registration (its agent, on a lease)
//   /tunnel-agent/<fleet>/controller/...   the controllers' election (etcd's Election service)
#ifndef TUNNELAGENT_COMMON_FLEET_KEYS_H_
#define TUNNELAGENT_COMMON_FLEET_KEYS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::fleet {

inline constexpr char kKeyRoot[] = "/tunnel-agent/";

// A fleet's name is a key segment: 1-63 of [a-z0-9-_.], not "." or "..".
absl::Status ValidateFleetName(absl::string_view fleet);
// A node's name too, with the room and letters host names have: 1-253 of [A-Za-z0-9-_.], not
// "." or "..". INVALID_ARGUMENT saying what is wrong otherwise, for both.
absl::Status ValidateNodeName(absl::string_view node);

std::string FleetPrefix(absl::string_view fleet);     // "/tunnel-agent/<fleet>/"
std::string DescriptionKey(absl::string_view fleet);  // ".../description"
std::string NodesPrefix(absl::string_view fleet);     // ".../nodes/"
std::string NodeKey(absl::string_view fleet, absl::string_view node);
std::string ElectionName(absl::string_view fleet);  // ".../controller"

// What a key under FleetPrefix(fleet) is.
struct FleetKey {
  enum class Kind { kDescription, kNode, kElection, kOther };
  Kind kind = Kind::kOther;
  std::string node;  // kNode
};
FleetKey ClassifyKey(absl::string_view fleet, absl::string_view key);

}  // namespace tunnelagent::fleet

#endif  // TUNNELAGENT_COMMON_FLEET_KEYS_H_
