// tunnelctl: the operator CLI of tunnel-agent. Parses the command line (args.h), reads the
// files it names and connects (client.h), makes the calls and prints the results.
//
// Exit status: 0 success (and a watch stopped by SIGINT/SIGTERM or --count), 1 usage error
// (including an unreadable or invalid file), 2 the call failed (refused by the agent, agent
// unreachable, deadline exceeded, a watch's stream ended) or the result could not be written.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/common/request_id.h"
#include "clients/tunnelctl/args.h"
#include "clients/tunnelctl/client.h"
#include "grpc/support/log.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::tunnelctl {
namespace {

std::string Getenv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// Turns SIGINT and SIGTERM into Interrupt::Trigger, for a watch. Blocks the signals in the
// calling thread, so it must exist before any other thread (gRPC's included) is started:
// those inherit the mask, and only this object's thread takes the signals.
class SignalWatcher {
 public:
  explicit SignalWatcher(Interrupt* interrupt) {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this, interrupt] {
      const timespec poll = {0, 100'000'000};
      while (!stop_.load()) {
        if (sigtimedwait(&signals_, nullptr, &poll) > 0) {
          interrupt->Trigger();
          return;
        }
      }
    });
  }
  ~SignalWatcher() {
    stop_.store(true);
    thread_.join();
  }

 private:
  sigset_t signals_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

void DiscardGrpcLog(gpr_log_func_args*) {}

int Main(int argc, char** argv) {
  // gRPC logs connection and handshake errors to stderr; tunnelctl reports a failure in one
  // line of its own. Its logs stay on when asked for.
  if (Getenv("GRPC_VERBOSITY").empty() && Getenv("GRPC_TRACE").empty()) {
    gpr_set_log_function(DiscardGrpcLog);
  }

  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  Environment env;
  env.agent = Getenv("TUNNELCTL_AGENT");
  env.token = Getenv("TUNNELCTL_TOKEN");
  absl::StatusOr<Command> command = ParseArgs(args, env);
  if (!command.ok()) {
    std::cerr << "tunnelctl: " << command.status().message() << "\n"
              << "see 'tunnelctl help'\n";
    return kExitUsage;
  }
  if (command->verb == Verb::kHelp) {
    std::cout << Usage();
    if (!std::cout.flush()) {
      std::cerr << "tunnelctl: cannot write the output\n";
      return kExitFailed;
    }
    return kExitOk;
  }
  // Before anything that may start a thread (making credentials initializes gRPC).
  Interrupt interrupt;
  std::unique_ptr<SignalWatcher> signals;
  if (command->verb == Verb::kWatch) signals = std::make_unique<SignalWatcher>(&interrupt);

  absl::StatusOr<Inputs> inputs = LoadInputs(*command, std::cin);
  if (!inputs.ok()) {
    std::cerr << "tunnelctl: " << inputs.status().message() << "\n";
    return kExitUsage;
  }

  std::shared_ptr<grpc::Channel> channel = Dial(*command, *inputs);
  std::unique_ptr<v1::TunnelService::Stub> stub = v1::TunnelService::NewStub(channel);
  RunOptions options;
  options.channel = channel;
  options.token = inputs->token;
  options.apply = inputs->apply;
  options.new_request_id = clients::NewRequestId;
  options.interrupt = &interrupt;
  return RunCommand(*command, *stub, options, std::cout, std::cerr);
}

}  // namespace
}  // namespace tunnelagent::tunnelctl

int main(int argc, char** argv) { return tunnelagent::tunnelctl::Main(argc, argv); }
