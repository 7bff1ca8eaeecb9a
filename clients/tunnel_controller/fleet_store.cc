#include "clients/tunnel_controller/fleet_store.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"

namespace tunnelagent::controller {
namespace {

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view flag) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream content;
  content << file.rdbuf();
  std::string text(absl::StripAsciiWhitespace(content.str()));
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is empty"));
  return text;
}

}  // namespace

absl::StatusOr<std::unique_ptr<etcd::Client>> ConnectEtcd(const EtcdFlags& flags,
                                                          absl::Duration call_timeout) {
  etcd::ClientOptions options;
  options.endpoints = flags.endpoints;
  options.ca_file = flags.ca_file;
  options.cert_file = flags.cert_file;
  options.key_file = flags.key_file;
  options.username = flags.user;
  options.call_timeout = call_timeout;
  if (!flags.password_file.empty()) {
    absl::StatusOr<std::string> password =
        ReadSecretFile(flags.password_file, "--etcd_password_file");
    if (!password.ok()) return password.status();
    options.password = *std::move(password);
  }
  absl::StatusOr<std::unique_ptr<etcd::Client>> client = etcd::Client::Connect(options);
  if (!client.ok() && client.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::InvalidArgumentError(absl::StrCat("etcd: ", client.status().message()));
  }
  return client;
}

absl::StatusOr<Registration> ParseRegistration(absl::string_view node, absl::string_view json,
                                               int64_t create_revision, int64_t mod_revision) {
  Registration r;
  r.node = std::string(node);
  r.create_revision = create_revision;
  r.mod_revision = mod_revision;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // written by an agent newer than this controller
  const auto status =
      google::protobuf::util::JsonStringToMessage(std::string(json), &r.message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a NodeRegistration in JSON: ", std::string(status.message())));
  }
  if (r.message.node() != node) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the key names node \"", node, "\" but the registration \"", r.message.node(), "\""));
  }
  return r;
}

absl::StatusOr<Fleet> ParseDescription(absl::string_view text, absl::string_view source) {
  return ParseFleet(text, source, "", FleetText::kDescription);
}

absl::StatusOr<FleetSnapshot> ReadFleet(etcd::Client& client, absl::string_view fleet) {
  absl::StatusOr<etcd::RangeResult> range = client.GetPrefix(FleetPrefix(fleet));
  if (!range.ok()) return range.status();
  FleetSnapshot snapshot;
  snapshot.revision = range->revision;
  for (const etcd::KeyValue& kv : range->kvs) {
    const FleetKey key = ClassifyKey(fleet, kv.key);
    if (key.kind == FleetKey::Kind::kDescription) {
      snapshot.description = kv.value;
    } else if (key.kind == FleetKey::Kind::kNode) {
      absl::StatusOr<Registration> r =
          ParseRegistration(key.node, kv.value, kv.create_revision, kv.mod_revision);
      if (r.ok()) {
        snapshot.registrations.push_back(*std::move(r));
      } else {
        snapshot.unreadable.push_back(absl::StrCat(key.node, ": ", r.status().message()));
        snapshot.unreadable_nodes.push_back(key.node);
      }
    }
  }
  return snapshot;
}

absl::StatusOr<std::string> GetDescription(etcd::Client& client, absl::string_view fleet) {
  const std::string key = DescriptionKey(fleet);
  absl::StatusOr<etcd::RangeResult> range = client.Get(key);
  if (!range.ok()) return range.status();
  if (range->kvs.empty()) {
    return absl::NotFoundError(absl::StrCat("fleet ", fleet, ": no description stored at ", key,
                                            " (tunnel-controller fleet set -f FILE stores one)"));
  }
  return range->kvs.front().value;
}

}  // namespace tunnelagent::controller
