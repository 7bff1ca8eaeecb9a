// How tunnel-controller shows progress: on a terminal, one live line per node, redrawn in
// place; otherwise (a pipe, a log file) plain lines for what matters: retries and each node's
// outcome.
#ifndef TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PROGRESS_H_
#define TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PROGRESS_H_

#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "clients/tunnel_controller/reconciler.h"

namespace tunnelagent::controller {

// Plain lines: "node3: retry 1/4 in 0.2s after ApplyTunnels: UNAVAILABLE: ...", "node1: applied:
// 11 created; 11/11 up". Lines of nodes' intermediate steps (connecting, listing) are left out.
class LogProgress final : public ProgressSink {
 public:
  explicit LogProgress(std::ostream& out) : out_(out) {}
  void NodeState(const std::string& node, const std::string& state, bool done) override
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  std::ostream& out_ ABSL_GUARDED_BY(mu_);
};

// A line per node, in the given order ("node1 * applying 11 tunnels", "node1 = applied: 11
// created; 11/11 up"), redrawn in place (ANSI cursor movement) at most ten times a second;
// each cut to the terminal's width so that nothing wraps. Finish() draws the
// last state and leaves the lines on the screen.
class TerminalProgress final : public ProgressSink {
 public:
  TerminalProgress(std::ostream& out, std::vector<std::string> nodes, int width);
  ~TerminalProgress() override;
  void NodeState(const std::string& node, const std::string& state, bool done) override
      ABSL_LOCKS_EXCLUDED(mu_);
  void Finish() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void DrawLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::ostream& out_ ABSL_GUARDED_BY(mu_);
  const std::vector<std::string> nodes_;
  const int width_;
  size_t name_width_ = 0;
  std::vector<std::string> states_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);
  bool drawn_ ABSL_GUARDED_BY(mu_) = false;
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::thread ticker_;
};

// The width of the terminal on `fd`, or 0 when it is not a terminal.
int TerminalWidth(int fd);

}  // namespace tunnelagent::controller

#endif  // TUNNELAGENT_CLIENTS_TUNNEL_CONTROLLER_PROGRESS_H_
