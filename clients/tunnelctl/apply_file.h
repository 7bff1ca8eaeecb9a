// The files of `tunnelctl apply -f FILE` and `tunnelctl peer apply TUNNEL -f FILE`: JSON,
// either the request in protobuf JSON ({"owner": "...", "tunnels": [...]}, {"owner": "...",
// "peers": [...]}) or a bare array of Tunnel or Peer objects. Pure.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_APPLY_FILE_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_APPLY_FILE_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/tunnelctl/args.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

// Parses `content`, read from `source` (the file's name, or "stdin"), and merges in the flags
// of `command`: --owner (required when the file has no owner; must agree when it has one),
// --prune and --dry-run (set them), --request-id (replaces the file's). Field names may be
// the JSON (camelCase) or the proto ones; unknown fields are errors.
//
// Errors are InvalidArgument, one line: "apply: <source>[:<line>:<column>]: <problem>".
absl::StatusOr<v1::ApplyTunnelsRequest> ParseApplyFile(absl::string_view content,
                                                       absl::string_view source,
                                                       const Command& command);

// The same for `peer apply`: an ApplyPeersRequest or an array of Peer objects. The tunnel is
// command.name (TUNNEL); a file that names another is an error. Peer names, underlay
// addresses and allowed prefixes are checked as on the command line (peer add).
//
// Errors: "peer apply: <source>[:<line>:<column>]: <problem>".
absl::StatusOr<v1::ApplyPeersRequest> ParsePeerApplyFile(absl::string_view content,
                                                         absl::string_view source,
                                                         const Command& command);

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_APPLY_FILE_H_
