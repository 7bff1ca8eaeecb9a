// tunnel-controller: provisions the tunnels of a fleet of tunnel-agent nodes from one YAML file
// (fleet.h), through each agent's ApplyTunnels under its own owner label.
//
// Exit status (clients/common/exit_code.h): 0 every node converged, 1 bad input (usage, the
// fleet file or a file it names), 2 some node failed (or, for status, differs from the file).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "clients/tunnel_controller/controller.h"
#include "grpc/support/log.h"

namespace tunnelagent::controller {
namespace {

void DiscardGrpcLog(gpr_log_func_args*) {}

// SIGINT and SIGTERM notify `stop`. Blocks them in the calling thread first, so it must be
// made before any other thread exists (those inherit the mask).
class SignalWatcher {
 public:
  explicit SignalWatcher(absl::Notification* stop) {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this, stop] {
      const timespec poll = {0, 100'000'000};
      while (!done_.load()) {
        if (sigtimedwait(&signals_, nullptr, &poll) > 0) {
          if (!stop->HasBeenNotified()) stop->Notify();
          return;
        }
      }
    });
  }
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
  }

 private:
  sigset_t signals_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

int ProcessMain(int argc, char** argv) {
  const char* verbosity = std::getenv("GRPC_VERBOSITY");
  const char* trace = std::getenv("GRPC_TRACE");
  if ((verbosity == nullptr || *verbosity == '\0') && (trace == nullptr || *trace == '\0')) {
    gpr_set_log_function(DiscardGrpcLog);
  }
  absl::Notification stop;
  std::unique_ptr<SignalWatcher> signals;
  return Main(std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc), std::cout,
              std::cerr, STDERR_FILENO, &stop,
              [&] { signals = std::make_unique<SignalWatcher>(&stop); });
}

}  // namespace
}  // namespace tunnelagent::controller

int main(int argc, char** argv) { return tunnelagent::controller::ProcessMain(argc, argv); }
