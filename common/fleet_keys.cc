#include "common/fleet_keys.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tunnelagent::fleet {
namespace {

constexpr char kDescription[] = "description";
constexpr char kNodes[] = "nodes/";
constexpr char kController[] = "controller";

absl::Status KeySegment(absl::string_view what, absl::string_view name, size_t max_length,
                        bool upper_case) {
  if (name.empty() || name.size() > max_length) {
    return absl::InvalidArgumentError(absl::StrCat(what, " \"", name, "\": want 1 to ", max_length,
                                                   " characters, has ", name.size()));
  }
  if (name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(what, " \"", name, "\" is not a name"));
  }
  for (char c : name) {
    const bool ok = absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-' || c == '_' ||
                    c == '.' || (upper_case && absl::ascii_isupper(c));
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " \"", name, "\": '", std::string(1, c), "' is not one of [",
                       upper_case ? "A-Za-z0-9" : "a-z0-9", "-_.] (it is a segment of etcd keys)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateFleetName(absl::string_view fleet) {
  return KeySegment("fleet name", fleet, 63, /*upper_case=*/false);
}

absl::Status ValidateNodeName(absl::string_view node) {
  return KeySegment("node name", node, 253, /*upper_case=*/true);
}

std::string FleetPrefix(absl::string_view fleet) { return absl::StrCat(kKeyRoot, fleet, "/"); }
std::string DescriptionKey(absl::string_view fleet) {
  return absl::StrCat(FleetPrefix(fleet), kDescription);
}
std::string NodesPrefix(absl::string_view fleet) {
  return absl::StrCat(FleetPrefix(fleet), kNodes);
}
std::string NodeKey(absl::string_view fleet, absl::string_view node) {
  return absl::StrCat(NodesPrefix(fleet), node);
}
std::string ElectionName(absl::string_view fleet) {
  return absl::StrCat(FleetPrefix(fleet), kController);
}

FleetKey ClassifyKey(absl::string_view fleet, absl::string_view key) {
  FleetKey k;
  const std::string prefix = FleetPrefix(fleet);
  if (!absl::ConsumePrefix(&key, prefix)) return k;
  if (key == kDescription) {
    k.kind = FleetKey::Kind::kDescription;
  } else if (absl::ConsumePrefix(&key, kNodes)) {
    // One segment: the node's name (anything deeper is no registration).
    if (!key.empty() && !absl::StrContains(key, '/')) {
      k.kind = FleetKey::Kind::kNode;
      k.node = std::string(key);
    }
  } else if (key == kController || absl::StartsWith(key, absl::StrCat(kController, "/"))) {
    k.kind = FleetKey::Kind::kElection;
  }
  return k;
}

}  // namespace tunnelagent::fleet
