// tunnelctl: the operator CLI of tunnel-agent. The work is Main (client.h); this file wires it
// to the process: argv, the environment, the standard streams, gRPC's log and signals.
//
// Exit status (clients/common/exit_code.h): 0 success (and a watch stopped by SIGINT/SIGTERM
// or --count), 1 bad input of any kind (including a bad address or an unreadable or invalid
// file), 2 the call failed (refused by the agent, agent unreachable, deadline exceeded, a
// watch's stream ended) or the result could not be written.
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

#include "clients/common/request_id.h"
#include "clients/tunnelctl/client.h"
#include "grpc/support/log.h"

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

int ProcessMain(int argc, char** argv) {
  // gRPC logs connection and handshake errors to stderr; tunnelctl reports a failure in one
  // line of its own. Its logs stay on when asked for.
  if (Getenv("GRPC_VERBOSITY").empty() && Getenv("GRPC_TRACE").empty()) {
    gpr_set_log_function(DiscardGrpcLog);
  }

  Interrupt interrupt;
  std::unique_ptr<SignalWatcher> signals;
  Process process;
  process.in = &std::cin;
  process.out = &std::cout;
  process.err = &std::cerr;
  process.env.agent = Getenv("TUNNELCTL_AGENT");
  process.env.token = Getenv("TUNNELCTL_TOKEN");
  process.before_watch = [&] { signals = std::make_unique<SignalWatcher>(&interrupt); };
  process.interrupt = &interrupt;
  process.new_request_id = clients::NewRequestId;
  return Main(std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc), process);
}

}  // namespace
}  // namespace tunnelagent::tunnelctl

int main(int argc, char** argv) { return tunnelagent::tunnelctl::ProcessMain(argc, argv); }
