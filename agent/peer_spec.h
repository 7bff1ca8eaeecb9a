// A peer of a multipoint tunnel, as the control plane keeps it: what was asked for (the API's
// Peer without its status), its checks and its translation to and from the API. Each peer is
// a record of its own, never a field of its tunnel, so that changing one of 10,000 costs the
// size of one.
#ifndef TUNNELAGENT_AGENT_PEER_SPEC_H_
#define TUNNELAGENT_AGENT_PEER_SPEC_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/tunnel_spec.h"
#include "agent/tunnel_status.h"
#include "dataplane/address.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::agent {

struct PeerSpec {
  std::string name;
  dataplane::IpAddress underlay;  // the peer's outer address
  std::optional<uint32_t> key;    // unset: the tunnel's output key
  std::vector<dataplane::IpPrefix> allowed_prefixes;
  KeepaliveSpec keepalive;
  std::map<std::string, std::string> labels;
  // Bookkeeping kept with the desired state; InfinitePast() when not known.
  absl::Time create_time = absl::InfinitePast();
  absl::Time update_time = absl::InfinitePast();
};

// What the agent observes about a peer.
struct PeerStatus : DataplaneObservation {
  OperState state = OperState::kUp;
  std::string reason;  // why not UP
};

struct PeerView {
  PeerSpec spec;
  PeerStatus status;
};

// The fields UpdatePeer may name, as the API spells them.
const std::vector<std::string>& UpdatablePeerFields();

// Whether the desired fields of two peers differ, and which (API names, in field order).
std::vector<std::string> ChangedPeerFields(const PeerSpec& before, const PeerSpec& after);

// Parses the desired fields of `peer` (status is ignored); `field` prefixes the errors'
// field names ("peer", "peers[3]").
absl::StatusOr<PeerSpec> PeerFromProto(const v1::Peer& peer, absl::string_view field = "peer");
// The desired fields, labels, etag, and status.create_time/update_time when known: what the
// state file keeps.
v1::Peer PeerSpecToProto(const PeerSpec& spec);
v1::Peer PeerToProto(const PeerView& view);
// A fingerprint of the desired fields, as Peer.etag carries it.
std::string ComputePeerEtag(const PeerSpec& spec);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_PEER_SPEC_H_
