#include "clients/tunnel_controller/etcd_members.h"

#include <arpa/inet.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tunnelagent::controller {
namespace {

bool IsFamily(const std::string& address, bool v6) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(v6 ? AF_INET6 : AF_INET, address.c_str(), buf) == 1;
}

template <typename List>
bool Contains(const List& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

// What the fleet asks of a node that its agent says it cannot do (when it says what it can).
absl::Status CheckCapabilities(const v1::Capabilities& capabilities, const Fleet& fleet) {
  const std::string mode = ModeName(*fleet.defaults.mode);
  if (!capabilities.modes().empty() && !Contains(capabilities.modes(), mode)) {
    return absl::InvalidArgumentError(absl::StrCat("the agent has no ", mode, " tunnels (it has ",
                                                   absl::StrJoin(capabilities.modes(), ", "), ")"));
  }
  if (fleet.multipoint.enabled && !capabilities.features().empty() &&
      !Contains(capabilities.features(), "multipoint")) {
    return absl::InvalidArgumentError("the agent has no multipoint tunnels (feature multipoint)");
  }
  return absl::OkStatus();
}

absl::StatusOr<Node> NodeOf(const Registration& r, const Fleet& fleet) {
  const v1::NodeRegistration& m = r.message;
  if (absl::Status s = CheckCapabilities(m.capabilities(), fleet); !s.ok()) return s;
  Node node;
  node.name = r.node;
  node.agent = m.agent_endpoint();
  const bool v6 = ModeUnderlayV6(*fleet.defaults.mode);
  for (const std::string& address : m.underlay()) {
    if (IsFamily(address, v6)) {
      node.underlay = address;
      break;
    }
  }
  if (node.underlay.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "underlay: no IPv", v6 ? "6" : "4", " address for ", ModeName(*fleet.defaults.mode),
        " tunnels (registered: ", m.underlay().empty() ? "none" : absl::StrJoin(m.underlay(), ", "),
        ")"));
  }
  if (fleet.multipoint.enabled) {
    node.prefixes.assign(m.advertise_prefixes().begin(), m.advertise_prefixes().end());
  }
  return node;
}

bool Before(const Member& a, const Member& b) {
  if (a.registration.create_revision != b.registration.create_revision) {
    return a.registration.create_revision < b.registration.create_revision;
  }
  return a.registration.node < b.registration.node;
}

}  // namespace

void Membership::Reset(const std::vector<Registration>& registered,
                       const std::set<std::string>& unreadable, absl::Time now) {
  std::set<std::string> present(unreadable);
  for (const Registration& r : registered) {
    present.insert(r.node);
    Registered(r);
  }
  for (auto& [name, member] : members_) {
    if (!present.count(name)) Unregistered(name, now);
  }
}

bool Membership::Registered(const Registration& registration) {
  auto [it, added] = members_.try_emplace(registration.node);
  Member& m = it->second;
  const bool joined = added || m.leaving;
  m.registration = registration;
  m.leaving = false;
  m.leaving_since = absl::InfinitePast();
  return joined;
}

bool Membership::Unregistered(const std::string& node, absl::Time now) {
  auto it = members_.find(node);
  if (it == members_.end() || it->second.leaving) return false;
  it->second.leaving = true;
  it->second.leaving_since = now;
  return true;
}

std::vector<std::string> Membership::Expire(absl::Time now) {
  std::vector<std::string> gone;
  for (auto it = members_.begin(); it != members_.end();) {
    if (it->second.leaving && it->second.leaving_since + grace_ <= now) {
      gone.push_back(it->first);
      it = members_.erase(it);
    } else {
      ++it;
    }
  }
  return gone;
}

absl::Time Membership::NextExpiry() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [name, m] : members_) {
    if (m.leaving) next = std::min(next, m.leaving_since + grace_);
  }
  return next;
}

std::vector<Member> Membership::Members() const {
  std::vector<Member> members;
  members.reserve(members_.size());
  for (const auto& [name, m] : members_) members.push_back(m);
  std::sort(members.begin(), members.end(), Before);
  return members;
}

int Membership::RegisteredCount() const {
  int n = 0;
  for (const auto& [name, m] : members_) n += !m.leaving;
  return n;
}

MergedFleet BuildFleet(const Fleet& description, const std::vector<Member>& members) {
  MergedFleet merged;
  merged.fleet = description;
  Fleet& fleet = merged.fleet;
  for (const Node& n : description.nodes) merged.pinned.insert(n.name);
  for (const Member& m : members) {
    // A pinned node is as the description has it, registered or not.
    if (merged.pinned.count(m.registration.node)) continue;
    absl::StatusOr<Node> node = NodeOf(m.registration, fleet);
    absl::Status added = node.ok() ? AddNode(*std::move(node), &fleet) : node.status();
    if (!added.ok()) {
      merged.refused.push_back(absl::StrCat(m.registration.node, ": ", added.message()));
      continue;
    }
    if (m.leaving) merged.leaving.insert(m.registration.node);
  }

  std::set<std::string> names;
  for (const Node& n : fleet.nodes) names.insert(n.name);
  auto both_members = [&](const LinkSpec& l) { return names.count(l.a) && names.count(l.b); };
  auto drop_absent = [&](std::vector<LinkSpec>* links) {
    links->erase(std::remove_if(links->begin(), links->end(),
                                [&](const LinkSpec& l) { return !both_members(l); }),
                 links->end());
  };
  drop_absent(&fleet.links);
  drop_absent(&fleet.overrides);
  if (fleet.topology == TopologyType::kHubSpoke && !names.count(fleet.hub) &&
      !fleet.multipoint.enabled) {
    // No hub, no links (the plan would otherwise link the spokes to a node it does not have).
    fleet.topology = TopologyType::kLinks;
    fleet.links.clear();
    fleet.overrides.clear();
    fleet.hub.clear();
  }
  return merged;
}

}  // namespace tunnelagent::controller
