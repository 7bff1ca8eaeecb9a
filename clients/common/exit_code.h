// The exit status of every client of the agent (tunnelctl, tunnel-controller), as iproute2
// has it: scripts tell "fix the command line or the file" from "the agent said no" without
// reading the message.
#ifndef TUNNELAGENT_CLIENTS_COMMON_EXIT_CODE_H_
#define TUNNELAGENT_CLIENTS_COMMON_EXIT_CODE_H_

namespace tunnelagent::clients {

// Unscoped, so that main() can return one as is.
enum ExitCode : int {
  // Done: every call succeeded (tunnel-controller: every node converged).
  kExitOk = 0,
  // Bad input of any kind, found before anything was sent: an unknown command or flag, a bad
  // argument or address, an unreadable or malformed file (apply file, fleet file, token,
  // certificate). Nothing was changed.
  kExitBadInput = 1,
  // The agent (tunnel-controller: a node's agent) refused or failed the call, whatever the
  // gRPC code (INVALID_ARGUMENT from the agent included), or could not be reached.
  kExitAgentFailed = 2,
};

}  // namespace tunnelagent::clients

#endif  // TUNNELAGENT_CLIENTS_COMMON_EXIT_CODE_H_
