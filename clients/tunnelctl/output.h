// Formatting of tunnelctl's results: tables for people, protobuf JSON for programs. Pure.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

// "gre", "ipip", ... as iproute2 names them; "unspecified" for 0, the number otherwise.
std::string ModeName(v1::TunnelMode mode);

// "up", "down", "error"; "unknown" for OPER_STATE_UNSPECIFIED, the number otherwise.
std::string StateName(v1::OperState state);

// The list table: a header line, then one aligned line per tunnel, in the given order.
// Columns: NAME MODE LOCAL REMOTE KEY MTU STATE IFINDEX RX_PKTS TX_PKTS.
std::string FormatTunnelTable(const v1::ListTunnelsResponse& response);

// One tunnel, one "field: value" line per field, status and counters included.
std::string FormatTunnelDetail(const v1::Tunnel& tunnel);

// Protobuf JSON (camelCase names, default fields omitted, indented), ending in a newline.
absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message);

// "UNAVAILABLE", "NOT_FOUND", ... for a canonical gRPC status code; "CODE_<n>" otherwise.
std::string StatusCodeName(int code);

// "<method>: <code name>: <message>" on one line (line breaks in the message become spaces;
// no ": <message>" when it is empty), without a trailing newline.
std::string FormatRpcError(absl::string_view method, int code, absl::string_view message);

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_OUTPUT_H_
