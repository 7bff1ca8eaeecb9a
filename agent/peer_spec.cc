#include "agent/peer_spec.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/proto_convert.h"

namespace tunnelagent::agent {
namespace {

// The desired fields as the API spells them, in field order.
v1::Peer DesiredToProto(const PeerSpec& spec) {
  v1::Peer peer;
  peer.set_name(spec.name);
  peer.set_underlay(spec.underlay.ToString());
  if (spec.key.has_value()) peer.set_key(*spec.key);
  for (const dataplane::IpPrefix& p : spec.allowed_prefixes) {
    peer.add_allowed_prefixes(p.ToString());
  }
  if (spec.keepalive.interval != absl::ZeroDuration() || spec.keepalive.retries != 0) {
    *peer.mutable_keepalive()->mutable_interval() = DurationToProto(spec.keepalive.interval);
    peer.mutable_keepalive()->set_retries(spec.keepalive.retries);
  }
  peer.mutable_labels()->insert(spec.labels.begin(), spec.labels.end());
  return peer;
}

}  // namespace

const std::vector<std::string>& UpdatablePeerFields() {
  static const std::vector<std::string> fields = {"underlay", "key", "allowed_prefixes",
                                                  "keepalive", "labels"};
  return fields;
}

std::vector<std::string> ChangedPeerFields(const PeerSpec& before, const PeerSpec& after) {
  std::vector<std::string> changed;
  if (!(before.underlay == after.underlay)) changed.push_back("underlay");
  if (before.key != after.key) changed.push_back("key");
  if (before.allowed_prefixes != after.allowed_prefixes) changed.push_back("allowed_prefixes");
  if (before.keepalive != after.keepalive) changed.push_back("keepalive");
  if (before.labels != after.labels) changed.push_back("labels");
  return changed;
}

absl::StatusOr<PeerSpec> PeerFromProto(const v1::Peer& peer, absl::string_view field) {
  PeerSpec spec;
  spec.name = peer.name();
  absl::StatusOr<dataplane::IpAddress> underlay =
      AddressFromProto(absl::StrCat(field, ".underlay"), peer.underlay());
  if (!underlay.ok()) return underlay.status();
  spec.underlay = *underlay;
  if (peer.has_key()) spec.key = peer.key();
  if (absl::Status s = PrefixesFromProto(absl::StrCat(field, ".allowed_prefixes"),
                                         peer.allowed_prefixes(), &spec.allowed_prefixes);
      !s.ok()) {
    return s;
  }
  if (peer.has_keepalive()) {
    absl::StatusOr<absl::Duration> interval =
        DurationFromProto(absl::StrCat(field, ".keepalive.interval"), peer.keepalive().interval());
    if (!interval.ok()) return interval.status();
    spec.keepalive.interval = *interval;
    spec.keepalive.retries = peer.keepalive().retries();
  }
  spec.labels.insert(peer.labels().begin(), peer.labels().end());
  TimesFromProto(peer, &spec.create_time, &spec.update_time);
  return spec;
}

std::string ComputePeerEtag(const PeerSpec& spec) {
  return StableFingerprint(DesiredToProto(spec));
}

v1::Peer PeerSpecToProto(const PeerSpec& spec) {
  v1::Peer peer = DesiredToProto(spec);
  peer.set_etag(ComputePeerEtag(spec));
  TimesToProto(spec.create_time, spec.update_time, &peer);
  return peer;
}

v1::Peer PeerToProto(const PeerView& view) {
  v1::Peer peer = PeerSpecToProto(view.spec);
  const PeerStatus& status = view.status;
  v1::PeerStatus* out = peer.mutable_status();
  out->set_state(StateToProto(status.state));
  out->set_reason(status.reason);
  CountersToProto(status.counters, out->mutable_counters());
  out->set_path_mtu(status.path_mtu);
  if (status.last_receive != absl::InfinitePast()) {
    *out->mutable_last_receive_time() = TimestampFromTime(status.last_receive);
  }
  if (status.keepalive.has_value()) KeepaliveToProto(*status.keepalive, out->mutable_keepalive());
  return peer;
}

}  // namespace tunnelagent::agent
