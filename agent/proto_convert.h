// Translation between the API's Tunnel message and the domain's TunnelSpec. Used by the gRPC
// layer and by the state file; knows nothing of gRPC itself.
#ifndef TUNNELAGENT_AGENT_PROTO_CONVERT_H_
#define TUNNELAGENT_AGENT_PROTO_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/tunnel_spec.h"
#include "agent/tunnel_status.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::agent {

// Parses the desired fields of `tunnel` (status is ignored). INVALID_ARGUMENT names the field
// as the API spells it, e.g. "tunnel.remote: \"1.2.3\" is not an IP address",
// "tunnel.addresses[1]: ...", "tunnel.mode: required". Semantic checks are ValidateSpec's.
absl::StatusOr<TunnelSpec> SpecFromProto(const v1::Tunnel& tunnel);

// The desired fields, labels, etag, and status.create_time/update_time when known (the rest
// of status left empty): what the state file keeps.
v1::Tunnel SpecToProto(const TunnelSpec& spec);

// Desired fields and status.
v1::Tunnel TunnelToProto(const TunnelSpec& spec, const TunnelStatus& status);

v1::TunnelMode ModeToProto(dataplane::TunnelMode mode);

// A fingerprint of the desired fields (not times or status): it changes whenever they change,
// is the same across restarts, and is what Tunnel.etag carries.
std::string ComputeEtag(const TunnelSpec& spec);

// ---- Pieces the tunnel's and the peer's translations share ------------------------------
// Empty: unspecified. INVALID_ARGUMENT naming `field` for text that is no address.
absl::StatusOr<dataplane::IpAddress> AddressFromProto(absl::string_view field,
                                                      const std::string& text);
// Each of `texts` as a prefix; INVALID_ARGUMENT naming `field`[i] for one that is not.
absl::Status PrefixesFromProto(absl::string_view field,
                               const google::protobuf::RepeatedPtrField<std::string>& texts,
                               std::vector<dataplane::IpPrefix>* out);
// As google.protobuf.Duration defines it, else INVALID_ARGUMENT naming `field`.
absl::StatusOr<absl::Duration> DurationFromProto(absl::string_view field,
                                                 const google::protobuf::Duration& d);
google::protobuf::Duration DurationToProto(absl::Duration d);
google::protobuf::Timestamp TimestampFromTime(absl::Time t);
absl::Time TimeFromTimestamp(const google::protobuf::Timestamp& t);
v1::OperState StateToProto(OperState state);
void CountersToProto(const TunnelCountersSnapshot& counters, v1::TunnelCounters* out);
void KeepaliveToProto(const KeepaliveSnapshot& keepalive, v1::KeepaliveStatus* out);
// A record's (Tunnel, Peer) create_time and update_time in its status, and back: only the
// state file carries them in; the manager sets its own on API requests. Not known: no status
// is made for them.
template <typename Record>
void TimesToProto(absl::Time create_time, absl::Time update_time, Record* out) {
  if (create_time != absl::InfinitePast()) {
    *out->mutable_status()->mutable_create_time() = TimestampFromTime(create_time);
  }
  if (update_time != absl::InfinitePast()) {
    *out->mutable_status()->mutable_update_time() = TimestampFromTime(update_time);
  }
}
template <typename Record>
void TimesFromProto(const Record& record, absl::Time* create_time, absl::Time* update_time) {
  if (record.status().has_create_time()) {
    *create_time = TimeFromTimestamp(record.status().create_time());
  }
  if (record.status().has_update_time()) {
    *update_time = TimeFromTimestamp(record.status().update_time());
  }
}
// A fingerprint of `message`'s bytes (maps in a fixed order): stable across builds and
// restarts; what etags are.
std::string StableFingerprint(const google::protobuf::Message& message);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_PROTO_CONVERT_H_
