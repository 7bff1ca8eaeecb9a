// Every field of a tunnel a client sets, in one table: its API name, how two specs compare on
// it, how it is copied from one spec (or one API message) to another, and what a change of it
// does to a running tunnel. Update masks, change detection, the recreation and dataplane rules
// and the merge of an UpdateTunnel patch are all read from here, so a new field is one row.
#ifndef TUNNELAGENT_AGENT_TUNNEL_FIELDS_H_
#define TUNNELAGENT_AGENT_TUNNEL_FIELDS_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "agent/tunnel_spec.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::agent {

// What changing a field does to a tunnel that is running.
enum class FieldEffect {
  // Applied to the device as it is (addresses, routes, MTU) or kept only in the desired state
  // (labels). An MTU in effect that changes still replaces the engine's tunnel (its buffers).
  kInPlace,
  // Changes how packets are wrapped or matched: the engine's tunnel is replaced.
  kDataplane,
  // A link's type is fixed: the device is made anew under the same name.
  kRecreate,
};

struct TunnelField {
  // The API's name for it (the proto field name), as update masks and changed_fields spell it.
  const char* name;
  FieldEffect effect;
  // Whether `a` and `b` agree on the field (as the dataplane sees it: "any" local address is
  // equal however it is spelled).
  bool (*equal)(const TunnelSpec& a, const TunnelSpec& b);
  // Sets the field of `to` to that of `from`; nothing else of `to` changes.
  void (*copy)(const TunnelSpec& from, TunnelSpec& to);
  // The same on API messages, presence included: an optional field unset in `from` becomes
  // unset, a message field is replaced whole, a repeated or map field takes `from`'s elements.
  void (*copy_proto)(const v1::Tunnel& from, v1::Tunnel& to);
};

// The rows, in the API's field order.
absl::Span<const TunnelField> TunnelFields();
// The row of `name`, or null when no client-settable field has that name (name, etag and
// status are not).
const TunnelField* FindTunnelField(absl::string_view name);

// The fields UpdateTunnel's update_mask may name (proto field names), in field order.
const std::vector<std::string>& UpdatableFields();

// The fields (proto names) in which two specs differ, in field order.
std::vector<std::string> ChangedFields(const TunnelSpec& a, const TunnelSpec& b);

// Whether a field whose change makes a new device differs between `a` and `b`.
bool NeedsNewDevice(const TunnelSpec& a, const TunnelSpec& b);
// Whether the engine's view of the tunnel (how it wraps and matches packets) differs.
bool EncapsulationChanged(const TunnelSpec& a, const TunnelSpec& b);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_FIELDS_H_
