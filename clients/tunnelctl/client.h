// What tunnelctl does: parse the command line, read the files it names, connect, make the calls
// and print their results, and the exit status of each outcome. main.cc only wires Main to the
// process (argv, the environment, stdin/stdout/stderr, signals); tests drive it, and its
// parts, against an in-process agent.
#ifndef TUNNELAGENT_CLIENTS_TUNNELCTL_CLIENT_H_
#define TUNNELAGENT_CLIENTS_TUNNELCTL_CLIENT_H_

#include <chrono>
#include <functional>
#include <istream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "clients/common/exit_code.h"
#include "clients/tunnelctl/args.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {

// 0 ok; 1 bad input, nothing sent; 2 the agent refused, failed or was unreachable.
using clients::kExitAgentFailed;
using clients::kExitBadInput;
using clients::kExitOk;

// How long a call that failed UNAVAILABLE waits for the channel to (re)connect before its one
// retry; when it does not connect in time, the first error stands. At most the call timeout.
inline constexpr std::chrono::milliseconds kRetryWait{1'000};

// The contents of the files a command names, checked.
struct Inputs {
  // Bearer token from --token_file, else $TUNNELCTL_TOKEN; empty: none.
  std::string token;
  // Insecure, or TLS as TlsOptions say.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // kApply: the request, flags merged in (request_id may still be empty).
  v1::ApplyTunnelsRequest apply;
  // kPeerApply: the same for peers.
  v1::ApplyPeersRequest apply_peers;
};

// Reads the files of `command` (`in` is stdin, for "apply -f -"). Errors are
// InvalidArgument, one line naming the file and the problem: the caller exits kExitBadInput.
absl::StatusOr<Inputs> LoadInputs(const Command& command, std::istream& in);

using clients::CheckToken;
using clients::ReadInputFile;

// A channel to command.agent with the credentials of `inputs`, reconnecting quickly after a
// failure (so that the retry of an UNAVAILABLE call can find a restarted agent).
std::shared_ptr<grpc::Channel> Dial(const Command& command, const Inputs& inputs);

// Stops a watch from another thread (the one that waits for SIGINT). Thread-safe.
class Interrupt {
 public:
  // Cancels the attached call, if any, and every call attached later.
  void Trigger() ABSL_LOCKS_EXCLUDED(mu_);
  bool triggered() const ABSL_LOCKS_EXCLUDED(mu_);
  // `context` must stay valid until Detach().
  void Attach(grpc::ClientContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  void Detach() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  bool triggered_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

struct RunOptions {
  std::string token;
  v1::ApplyTunnelsRequest apply;
  v1::ApplyPeersRequest apply_peers;
  // Makes the request id of a mutating call when --request-id is not given (once per run).
  std::function<std::string()> new_request_id;
  // The stub's channel: an UNAVAILABLE call is retried once it is connected again (waiting
  // up to kRetryWait). Null: retried after `retry_delay`, for tests.
  std::shared_ptr<grpc::Channel> channel;
  std::chrono::milliseconds retry_delay{0};
  // Stops a watch with exit status 0 when triggered; may be null.
  Interrupt* interrupt = nullptr;
};

// Runs `command` (not kHelp or kVersion) against `stub`: results to `out`, one
// "tunnelctl: ..." line on `err` on failure. Returns the exit status (kExitOk or
// kExitAgentFailed).
int RunCommand(const Command& command, v1::TunnelService::StubInterface& stub,
               const RunOptions& options, std::ostream& out, std::ostream& err);

// What one invocation takes from its process.
struct Process {
  std::istream* in = nullptr;
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  Environment env;
  // Called for a watch once the command line is parsed and before anything that may start a
  // thread (making credentials starts gRPC's): main.cc blocks SIGINT and SIGTERM there, so
  // that only its own thread takes them and triggers `interrupt`. May be empty.
  std::function<void()> before_watch;
  Interrupt* interrupt = nullptr;
  // As in RunOptions; empty: clients::NewRequestId.
  std::function<std::string()> new_request_id;
};

// One whole invocation: parses `args` (those after the program name), prints the help or the
// version, reads the files, dials the agent and runs the command. Returns the exit status:
// kExitBadInput with one "tunnelctl: ..." line on err for any bad input (nothing is sent),
// kExitAgentFailed when the agent refused, failed or could not be reached.
int Main(const std::vector<std::string>& args, const Process& process);

}  // namespace tunnelagent::tunnelctl

#endif  // TUNNELAGENT_CLIENTS_TUNNELCTL_CLIENT_H_
