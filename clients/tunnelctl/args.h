// Command-line parsing for tunnelctl: argv in, a Command out. Pure: no I/O, no environment
// access (the caller passes $TUNNELCTL_AGENT in), so every case can be tested.
//
// Only syntax is checked here (numbers parse and are in range, mode names are known,
// required keywords are present); whether a tunnel makes sense is the agent's decision.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

enum class Verb { kHelp, kCreate, kGet, kList, kDelete };

enum class OutputFormat { kTable, kJson };

inline constexpr char kDefaultAgent[] = "127.0.0.1:50051";
inline constexpr std::chrono::milliseconds kDefaultTimeout{10'000};
inline constexpr std::chrono::milliseconds kMaxTimeout{86'400'000};
inline constexpr uint32_t kMinMtu = 68;
inline constexpr uint32_t kMaxMtu = 65535;

struct Command {
  Verb verb = Verb::kHelp;
  // gRPC target: "host:port" or "unix:/path".
  std::string agent = kDefaultAgent;
  OutputFormat output = OutputFormat::kTable;
  // Deadline of each call.
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // The tunnel's name for kCreate, kGet and kDelete.
  std::string name;
  // kCreate: the tunnel to ask for (name included).
  v1::Tunnel tunnel;
};

// Parses the arguments after the program name. `env_agent` is the value of
// $TUNNELCTL_AGENT (empty when unset): it replaces kDefaultAgent, and --agent replaces it.
// Errors are InvalidArgument with a one-line message naming the problem, without a
// "tunnelctl:" prefix.
absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args,
                                  absl::string_view env_agent);

// "gre", "ipip", ... as `ip link add ... type <mode>` names them.
absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text);

// A GRE key as iproute2 takes it: decimal ("5"), hexadecimal ("0x5") or a dotted quad
// ("0.0.0.5", read as a big-endian 32-bit number).
absl::StatusOr<uint32_t> ParseKey(absl::string_view text);

// A decimal MTU in [kMinMtu, kMaxMtu].
absl::StatusOr<uint32_t> ParseMtu(absl::string_view text);

// Seconds, fractions allowed ("2.5"), greater than 0 and at most kMaxTimeout.
absl::StatusOr<std::chrono::milliseconds> ParseTimeout(absl::string_view text);

// The text `tunnelctl help` prints, ending in a newline.
std::string Usage();

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_ARGS_H_
