// Formatting of tunnelctl's results: tables for people, protobuf JSON for programs. Pure.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/common/agent_connection.h"
#include "google/protobuf/message.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

// "gre", "ipip", ... as iproute2 names them; "unspecified" for 0, the number otherwise.
std::string ModeName(v1::TunnelMode mode);

// "up", "down", "error"; "unknown" for OPER_STATE_UNSPECIFIED, the number otherwise.
std::string StateName(v1::OperState state);

// "ADDED", "SYNCED", ... as the proto names them; the number when unknown.
std::string EventTypeName(v1::TunnelEvent::Type type);

// "create", "update", "recreate", "delete", "unchanged"; the number when unknown.
std::string ActionName(v1::TunnelChange::Action action);

// "k1=v1, k2=v2", sorted by key; "-" when there are none.
std::string LabelsText(const google::protobuf::Map<std::string, std::string>& labels);

// The list table: a header line, then one aligned line per tunnel, in the given order.
// Columns: NAME MODE LOCAL REMOTE ("multipoint" for a multipoint tunnel) KEY MTU STATE IFINDEX
// RX_PKTS TX_PKTS, then, each only when
// some tunnel has one: PATH_MTU, PEER (alive/dead, tunnels with keepalive), OPTIONS (the
// options set, as ip-link names them: "ikey=5,okey=5,icsum,ttl=64,keepalive=10s,3") and
// LABELS ("k=v,k2=v2").
std::string FormatTunnelTable(const v1::ListTunnelsResponse& response);

// One tunnel, one "field: value" line per field: the desired fields ("remote: multipoint"
// for a multipoint tunnel) and labels ("options:"
// lists the options in effect as `ip -d link show` does, e.g. "ikey 5 okey 5 icsum ocsum
// iseq oseq ttl inherit pmtudisc"), the status and counters, path_mtu, the keepalive_*
// lines for a tunnel with keepalive, then etag, create_time and update_time (RFC 3339, UTC).
std::string FormatTunnelDetail(const v1::Tunnel& tunnel);

// The tunnel as FormatTunnelDetail prints it, then "recreated: <changed fields>" when the
// update needed a new device.
std::string FormatUpdate(const v1::UpdateTunnelResponse& response);

// One line: "<revision> <TYPE> <name> <state>", with "-" for the name and state of events
// without a tunnel (SYNCED, RESYNC). PEER_* events name "<tunnel>/<peer>" (neither name can
// hold a '/') with the peer's state.
std::string FormatWatchEvent(const v1::TunnelEvent& event);

// The plan or the changes of an apply: a NAME ACTION CHANGED table, then "dry run: nothing
// was changed" or "applied at revision N".
std::string FormatApplyChanges(const v1::ApplyTunnelsResponse& response);

// The peer list table: a header line, then one aligned line per peer, in the given order.
// Columns: NAME UNDERLAY KEY ALLOWED STATE RX_PKTS TX_PKTS PATH_MTU LAST_RECEIVE, then
// KEEPALIVE (alive/dead, peers with keepalive) and LABELS, each only when some peer has one.
std::string FormatPeerTable(const v1::ListPeersResponse& response);

// One peer, one "field: value" line per field: name, underlay, key, allowed prefixes,
// keepalive, labels, the state (and reason), counters, path_mtu, last_receive, the
// keepalive_* lines (rtt included) for a peer with keepalive, then etag, create_time and
// update_time.
std::string FormatPeerDetail(const v1::Peer& peer);

// The plan or the changes of a peer apply: a NAME ACTION CHANGED table of the peers that
// change, "unchanged: N", then "dry run: nothing was changed" or "applied at revision N".
std::string FormatPeerApplyChanges(const v1::ApplyPeersResponse& response);

// The agent's description, one "field: value" line per field.
std::string FormatAgentInfo(const v1::AgentInfo& info);

// Protobuf JSON (camelCase names, default fields omitted, indented), ending in a newline.
absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message);

// The same on a single line (for streams: one object per line), ending in a newline.
absl::StatusOr<std::string> FormatJsonLine(const google::protobuf::Message& message);

// Shared with the other clients.
using clients::FormatRpcError;
using clients::StatusCodeName;

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_
