#include "clients/tunnel_controller/etcd_commands.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/common/agent_connection.h"
#include "clients/tunnel_controller/controller.h"
#include "clients/tunnel_controller/etcd_run.h"
#include "clients/tunnel_controller/plan.h"

namespace tunnelagent::controller {
namespace {

int Fail(std::ostream& err, const absl::Status& status) {
  err << "tunnel-controller: " << status.message() << "\n" << std::flush;
  return absl::IsInvalidArgument(status) ? kExitBadInput : kExitAgentFailed;
}

// "etcd (127.0.0.1:2379): UNAVAILABLE: ..." for a failed etcd call.
absl::Status EtcdFailure(const Options& options, absl::string_view what, const absl::Status& s) {
  if (absl::IsInvalidArgument(s) || absl::IsNotFound(s)) return s;
  return absl::Status(s.code(),
                      absl::StrCat(what, ": etcd (", absl::StrJoin(options.etcd.endpoints, ","),
                                   "): ", absl::StatusCodeToString(s.code()), ": ", s.message()));
}

std::vector<Member> MembersOf(const std::vector<Registration>& registrations) {
  std::vector<Member> members;
  for (const Registration& r : registrations) members.push_back(Member{r});
  std::sort(members.begin(), members.end(), [](const Member& a, const Member& b) {
    if (a.registration.create_revision != b.registration.create_revision) {
      return a.registration.create_revision < b.registration.create_revision;
    }
    return a.registration.node < b.registration.node;
  });
  return members;
}

// "12 nodes (2 pinned, 11 registered), mesh, multipoint tnl0"
std::string Shape(const MergedFleet& merged, size_t registered) {
  const Fleet& f = merged.fleet;
  const char* topology = f.topology == TopologyType::kMesh       ? "mesh"
                         : f.topology == TopologyType::kHubSpoke ? "hub-spoke"
                                                                 : "links";
  std::string shape = absl::StrCat(f.nodes.size(), " nodes (", merged.pinned.size(), " pinned, ",
                                   registered, " registered), ", topology);
  if (f.multipoint.enabled) absl::StrAppend(&shape, ", multipoint ", f.multipoint.device);
  return shape;
}

int FleetSet(const Options& options, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::string> text = clients::ReadInputFile(options.file, std::cin);
  if (!text.ok()) return Fail(err, absl::InvalidArgumentError(text.status().message()));
  absl::StatusOr<Fleet> description = ParseDescription(*text, options.file);
  if (!description.ok()) return Fail(err, description.status());

  absl::StatusOr<std::unique_ptr<etcd::Client>> client =
      ConnectEtcd(options.etcd, options.policy.timeout);
  if (!client.ok()) return Fail(err, client.status());
  absl::StatusOr<FleetSnapshot> snapshot = ReadFleet(**client, options.etcd.fleet);
  if (!snapshot.ok()) return Fail(err, EtcdFailure(options, "fleet set", snapshot.status()));
  // With the nodes registered now: a description that cannot be planned with them (a pool too
  // small, a setting a link's mode cannot have) is refused before it reaches the leader.
  const MergedFleet merged = BuildFleet(*description, MembersOf(snapshot->registrations));
  absl::StatusOr<FleetPlan> plan = PlanFleet(merged.fleet);
  if (!plan.ok()) {
    return Fail(err, absl::InvalidArgumentError(absl::StrCat(plan.status().message(), " (with the ",
                                                             snapshot->registrations.size(),
                                                             " nodes registered now)")));
  }
  const std::string key = DescriptionKey(options.etcd.fleet);
  absl::StatusOr<int64_t> revision = (*client)->Put(key, *text);
  if (!revision.ok()) return Fail(err, EtcdFailure(options, "fleet set", revision.status()));
  for (const std::string& r : merged.refused) {
    err << "tunnel-controller: warning: registered node " << r << " (not a member)\n";
  }
  out << "fleet " << options.etcd.fleet << ": description stored at " << key << " (revision "
      << *revision << "): " << Shape(merged, snapshot->registrations.size()) << "\n"
      << std::flush;
  return kExitOk;
}

int FleetGet(const Options& options, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::unique_ptr<etcd::Client>> client =
      ConnectEtcd(options.etcd, options.policy.timeout);
  if (!client.ok()) return Fail(err, client.status());
  absl::StatusOr<std::string> text = GetDescription(**client, options.etcd.fleet);
  if (!text.ok()) return Fail(err, EtcdFailure(options, "fleet get", text.status()));
  out << *text << std::flush;
  return kExitOk;
}

std::string Age(const Registration& r, absl::Time now) {
  if (!r.message.has_registered_at()) return "-";
  const absl::Time at = absl::FromUnixSeconds(r.message.registered_at().seconds()) +
                        absl::Nanoseconds(r.message.registered_at().nanos());
  const absl::Duration age =
      absl::Trunc(std::max(now - at, absl::ZeroDuration()), absl::Seconds(1));
  return absl::FormatDuration(age);
}

}  // namespace

std::string FormatMembers(absl::string_view fleet, absl::string_view leader,
                          const MergedFleet& merged, const std::vector<Registration>& registered,
                          const std::vector<std::string>& unreadable, absl::Time now) {
  std::map<std::string, const Registration*> by_name;
  for (const Registration& r : registered) by_name[r.node] = &r;
  std::string out = absl::StrCat(
      "fleet ", fleet, ": ",
      leader.empty() ? "no leader (no run --etcd leads it)" : absl::StrCat("led by ", leader),
      "\n");
  std::vector<std::vector<std::string>> rows = {{"NODE", "MEMBER", "AGE", "UNDERLAY", "AGENT"}};
  for (const Node& n : merged.fleet.nodes) {
    auto it = by_name.find(n.name);
    const bool pinned = merged.pinned.count(n.name) > 0;
    const bool is_registered = it != by_name.end();
    rows.push_back({n.name,
                    pinned && is_registered ? "pinned+registered"
                    : pinned                ? "pinned"
                                            : "registered",
                    is_registered ? Age(*it->second, now) : "-", n.underlay, n.agent});
  }
  absl::StrAppend(&out, AlignedColumns(rows));
  for (const std::string& r : merged.refused) absl::StrAppend(&out, "not a member: ", r, "\n");
  for (const std::string& u : unreadable)
    absl::StrAppend(&out, "unreadable registration: ", u, "\n");
  absl::StrAppend(&out, "\n");
  return out;
}

absl::StatusOr<EtcdView> ReadEtcdView(const Options& options, absl::Time now) {
  absl::StatusOr<std::unique_ptr<etcd::Client>> client =
      ConnectEtcd(options.etcd, options.policy.timeout);
  if (!client.ok()) return client.status();
  const std::string& fleet = options.etcd.fleet;
  absl::StatusOr<FleetSnapshot> snapshot = ReadFleet(**client, fleet);
  if (!snapshot.ok()) return EtcdFailure(options, "read the fleet", snapshot.status());
  if (!snapshot->description.has_value()) {
    return absl::NotFoundError(absl::StrCat("fleet ", fleet, ": no description stored at ",
                                            DescriptionKey(fleet),
                                            " (tunnel-controller fleet set -f FILE stores one)"));
  }
  absl::StatusOr<Fleet> description =
      ParseDescription(*snapshot->description, DescriptionKey(fleet));
  if (!description.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the stored description is not valid: ", description.status().message()));
  }
  std::string leader;
  absl::StatusOr<etcd::KeyValue> led = (*client)->Leader(ElectionName(fleet));
  if (led.ok()) {
    leader = led->value;
  } else if (!absl::IsNotFound(led.status())) {
    return EtcdFailure(options, "read the leader", led.status());
  }
  EtcdView view;
  view.merged = BuildFleet(*description, MembersOf(snapshot->registrations));
  view.header =
      FormatMembers(fleet, leader, view.merged, snapshot->registrations, snapshot->unreadable, now);
  return view;
}

int RunEtcdCommand(const Options& options, std::ostream& out, std::ostream& err,
                   const absl::Notification* stop) {
  switch (options.command) {
    case Command::kFleetSet:
      return FleetSet(options, out, err);
    case Command::kFleetGet:
      return FleetGet(options, out, err);
    case Command::kRun:
      return RunWithEtcd(options, out, err, stop);
    default:
      return Fail(err, absl::InvalidArgumentError("not a command of the etcd mode"));
  }
}

}  // namespace tunnelagent::controller
