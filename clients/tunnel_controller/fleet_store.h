// A fleet kept in etcd: the keys (a contract with the agents, docs/fleet.md#key-layout), the
// connection from tunnel-controller's --etcd* flags, the fleet description (the fleet YAML,
// `nodes` optional) and the nodes' registrations.
//
//   /tunnel-agent/<fleet>/description      the description's text, as `fleet set` stored it
//   /tunnel-agent/<fleet>/nodes/<node>     NodeRegistration as protobuf JSON, on the agent's lease
//   /tunnel-agent/<fleet>/controller       the election of the controller that acts (etcd's
//                                          Election service keeps its candidates under it)
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_STORE_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/tunnel_controller/fleet.h"
#include "common/etcd/client.h"
#include "common/fleet_keys.h"
#include "tunnelagent/v1/fleet.pb.h"

namespace tunnelagent::controller {

// The keys, and the fleet name's rule, shared with the agents (common/fleet_keys.h).
using fleet::ClassifyKey;
using fleet::DescriptionKey;
using fleet::ElectionName;
using fleet::FleetKey;
using fleet::FleetPrefix;
using fleet::NodeKey;
using fleet::NodesPrefix;

// The --etcd* flags.
struct EtcdFlags {
  std::vector<std::string> endpoints;  // --etcd, parsed; empty: the file mode
  std::string fleet;                   // --fleet
  std::string ca_file;                 // --etcd_ca
  std::string cert_file;               // --etcd_cert
  std::string key_file;                // --etcd_key
  std::string user;                    // --etcd_user
  std::string password_file;           // --etcd_password_file
};

// A client for the flags: the password file read (its content, surrounding white space
// removed), TLS with a CA or an https:// endpoint. Errors: InvalidArgument naming the flag (an
// unreadable or empty password file, a bad certificate), as bad input.
absl::StatusOr<std::unique_ptr<etcd::Client>> ConnectEtcd(const EtcdFlags& flags,
                                                          absl::Duration call_timeout);

// A node's registration as read from its key.
struct Registration {
  std::string node;  // the key's last segment, which the message's `node` equals
  v1::NodeRegistration message;
  int64_t create_revision = 0;  // when the key was made: the order in which nodes joined
  int64_t mod_revision = 0;
};

// The registration stored under NodeKey(fleet, node): protobuf JSON (unknown fields ignored, so
// that newer agents' registrations are read). InvalidArgument when it is not JSON of a
// NodeRegistration or names another node.
absl::StatusOr<Registration> ParseRegistration(absl::string_view node, absl::string_view json,
                                               int64_t create_revision, int64_t mod_revision);

// A description's text parsed (FleetText::kDescription); `source` names it in errors (the file
// for `fleet set`, the key for what was read from etcd). Relative file names (tls, tokenFile)
// stay as written: relative to the controller's working directory.
absl::StatusOr<Fleet> ParseDescription(absl::string_view text, absl::string_view source);

// Everything under the fleet's prefix, read at one revision.
struct FleetSnapshot {
  int64_t revision = 0;
  std::optional<std::string> description;   // the text; nullopt: none stored
  std::vector<Registration> registrations;  // readable ones, in key order
  std::vector<std::string> unreadable;      // "n3: ..." for registrations that are not
  std::vector<std::string> unreadable_nodes;
};
absl::StatusOr<FleetSnapshot> ReadFleet(etcd::Client& client, absl::string_view fleet);

// The description stored for `fleet`: NOT_FOUND (naming the key and `fleet set`) when none is.
absl::StatusOr<std::string> GetDescription(etcd::Client& client, absl::string_view fleet);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_FLEET_STORE_H_
