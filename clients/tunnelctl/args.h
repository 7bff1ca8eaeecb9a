// Command-line parsing for tunnelctl: argv in, a Command out. Pure: no I/O, no environment
// access (the caller passes $TUNNELCTL_AGENT and $TUNNELCTL_TOKEN in), so every case can be
// tested. Files named on the command line (apply -f, --token_file, --tls_*) are read later,
// by LoadInputs (client.h).
//
// Only syntax is checked here (numbers parse and are in range, addresses and prefixes are
// addresses and prefixes, mode names are known, required keywords are present); whether a
// tunnel makes sense is the agent's decision.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/common/agent_connection.h"
#include "google/protobuf/field_mask.pb.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

enum class Verb {
  kHelp,
  kVersion,
  kCreate,
  kGet,
  kList,
  kUpdate,
  kDelete,
  kWatch,
  kApply,
  kInfo,
  // `peer add|get|list|update|delete|apply TUNNEL ...`: the peers of a multipoint tunnel.
  kPeerCreate,
  kPeerGet,
  kPeerList,
  kPeerUpdate,
  kPeerDelete,
  kPeerApply,
};

// The verbs of `tunnelctl peer ...`.
bool IsPeerVerb(Verb verb);

enum class OutputFormat { kTable, kJson };

// The agent's default listener: a unix socket, so that who may manage the node's tunnels is
// decided by the socket's owner and mode rather than by who can reach a TCP port.
inline constexpr char kDefaultAgent[] = "unix:/run/tunnel-agent/agent.sock";
inline constexpr std::chrono::milliseconds kDefaultTimeout{10'000};
inline constexpr std::chrono::milliseconds kMaxTimeout{86'400'000};
inline constexpr uint32_t kMinMtu = 68;
inline constexpr uint32_t kMaxMtu = 65535;
// ListTunnels and ListPeers page size: the default, and the agent's cap.
inline constexpr int32_t kDefaultPageSize = 500;
inline constexpr int32_t kMaxPageSize = 1000;
// The agent takes request ids up to this long.
inline constexpr size_t kMaxRequestIdLength = 128;
// A peer's name: 1-63 letters, digits, '.', '_' and '-' (Peer.name).
inline constexpr size_t kMaxPeerNameLength = 63;

// How to reach the agent (shared with the other clients).
using clients::TlsOptions;

struct Command {
  Verb verb = Verb::kHelp;
  // gRPC target: "host:port" or "unix:/path".
  std::string agent = kDefaultAgent;
  OutputFormat output = OutputFormat::kTable;
  // Deadline of each call (not of a watch, which runs until stopped).
  std::chrono::milliseconds timeout = kDefaultTimeout;
  TlsOptions tls;
  // Bearer token: read from token_file when set, else this ($TUNNELCTL_TOKEN). Sent as
  // `authorization: Bearer <token>` on every call.
  std::string token_file;
  std::string env_token;

  // The tunnel's name for kCreate, kGet, kUpdate, kDelete and every peer verb (TUNNEL).
  std::string name;
  // kCreate: the tunnel to ask for. kUpdate: the name and the fields in update_mask.
  v1::Tunnel tunnel;
  // kPeerCreate: the peer to ask for. kPeerUpdate: the name and the fields in update_mask.
  // kPeerGet, kPeerDelete: the name only.
  v1::Peer peer;
  // kUpdate, kPeerUpdate: the fields given, as proto field names (of Tunnel, of Peer) in
  // field order. Never empty.
  google::protobuf::FieldMask update_mask;
  // kUpdate, kDelete, kPeerUpdate, kPeerDelete: --etag (empty: unconditional).
  std::string etag;
  // kCreate, kUpdate, kDelete, kApply and their peer verbs: --request-id; empty: one is
  // generated per invocation.
  std::string request_id;

  // kList: the filters and the page size (every page is fetched). kPeerList: the page size.
  v1::ListTunnelsRequest list;

  // kWatch: --since and --count (stop after that many events; unset: run until stopped).
  uint64_t since_revision = 0;
  std::optional<uint64_t> count;

  // kApply, kPeerApply: -f FILE ("-" for stdin), --prune, --dry-run, --owner.
  std::string apply_file;
  bool prune = false;
  bool dry_run = false;
  std::string owner;
};

// The environment tunnelctl reads; empty means unset.
struct Environment {
  std::string agent;  // $TUNNELCTL_AGENT: replaces kDefaultAgent; --agent replaces it
  std::string token;  // $TUNNELCTL_TOKEN: used unless --token_file is given
};

// Parses the arguments after the program name. Errors are InvalidArgument with a one-line
// message naming the problem, without a "tunnelctl:" prefix.
absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args, const Environment& env);
// Same, with only $TUNNELCTL_AGENT set (empty: unset).
absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args,
                                  absl::string_view env_agent);

// "gre", "ipip", ... as `ip link add ... type <mode>` names them.
absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text);

// An IPv4 or IPv6 address as the agent reads one (dotted quad, RFC 4291 text); `what` names
// the argument in the error ("remote").
absl::Status CheckAddress(absl::string_view what, absl::string_view text);

// ADDRESS/LENGTH, or a bare address (a host prefix), as the agent reads one: the length in
// plain decimal (no leading zero, which iproute2 would read as octal), at most 32 or 128.
absl::Status CheckPrefix(absl::string_view what, absl::string_view text);

// A peer's name as Peer.name allows it: 1-kMaxPeerNameLength letters, digits, '.', '_' and
// '-'.
absl::Status CheckPeerName(absl::string_view text);

// A prefix as CheckPrefix takes it, and also without host bits ("10.1.0.0/16", not
// "10.1.0.1/16"): what a peer's allowed prefixes must be, since a prefix with host bits set is
// most likely a typo for another prefix.
absl::Status CheckNetworkPrefix(absl::string_view what, absl::string_view text);

// "up", "down" or "error".
absl::StatusOr<v1::OperState> ParseState(absl::string_view text);

// A GRE key as iproute2 takes it: decimal ("5"), hexadecimal ("0x5") or a dotted quad
// ("0.0.0.5", read as a big-endian 32-bit number).
absl::StatusOr<uint32_t> ParseKey(absl::string_view text);

// A TTL or hop limit: decimal 0-255, or "inherit" (= 0).
absl::StatusOr<uint32_t> ParseTtl(absl::string_view text);

// A TOS / traffic class: decimal 0-255 or hexadecimal "0xNN" (iproute2 reads a bare number as
// hexadecimal; here it is decimal); nullopt for "inherit".
absl::StatusOr<std::optional<uint32_t>> ParseTos(absl::string_view text);

// "INTERVAL[,RETRIES]": the interval in seconds ("10", "0.5") or with a unit ("500ms",
// "10s"), 0.1-3600 seconds; retries 0-255.
absl::StatusOr<v1::Keepalive> ParseKeepalive(absl::string_view text);

// A decimal MTU in [kMinMtu, kMaxMtu], the widest range of any mode.
absl::StatusOr<uint32_t> ParseMtu(absl::string_view text);

// OK unless the tunnel's MTU is outside what the agent accepts for its mode, output GRE
// options and encap (dataplane::DeviceMtuRange: the agent's own rule); OK too when the MTU is
// automatic (0) or the mode unknown.
absl::Status CheckMtuOfMode(const v1::Tunnel& tunnel);

// Seconds, fractions allowed ("2.5"), greater than 0 and at most kMaxTimeout.
absl::StatusOr<std::chrono::milliseconds> ParseTimeout(absl::string_view text);

// "KEY=VALUE": split at the first '='; the key must not be empty, the value may be.
absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(absl::string_view text);

// The text `tunnelctl help` prints, ending in a newline.
std::string Usage();
// Its sections made from the parser's keyword table: the arguments and options of create and
// update, and the arguments of peer add and peer update.
std::string KeywordHelp();
std::string PeerKeywordHelp();
// Every keyword the parser takes (create, update, list, peer add, peer update), for the test
// that each is in the help.
std::vector<std::string> HelpKeywords();

// What `tunnelctl --version` prints: "tunnelctl <version>" and a newline.
std::string VersionLine();

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_
