#include "clients/tunnel_controller/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace tunnelagent::controller {

void LogProgress::NodeState(const std::string& node, const std::string& state, bool done) {
  if (!done && state.find("retry") == std::string::npos) return;
  absl::MutexLock lock(&mu_);
  out_ << node << ": " << state << "\n" << std::flush;
}

TerminalProgress::TerminalProgress(std::ostream& out, std::vector<std::string> nodes, int width)
    : out_(out), nodes_(std::move(nodes)), width_(std::max(width, 20)) {
  for (const std::string& n : nodes_) name_width_ = std::max(name_width_, n.size());
  absl::MutexLock lock(&mu_);
  states_.assign(nodes_.size(), "waiting");
  done_.assign(nodes_.size(), false);
  DrawLocked();
  ticker_ = std::thread([this] {
    absl::MutexLock lock(&mu_);
    while (!finished_) {
      mu_.AwaitWithTimeout(absl::Condition(&finished_), absl::Milliseconds(100));
      if (dirty_ && !finished_) DrawLocked();
    }
  });
}

TerminalProgress::~TerminalProgress() { Finish(); }

void TerminalProgress::Finish() {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    DrawLocked();
  }
  ticker_.join();
}

void TerminalProgress::NodeState(const std::string& node, const std::string& state, bool done) {
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i] == node) {
      states_[i] = state;
      done_[i] = done;
      dirty_ = true;
    }
  }
}

void TerminalProgress::DrawLocked() {
  std::string frame;
  if (drawn_) absl::StrAppend(&frame, "\033[", nodes_.size(), "A");
  for (size_t i = 0; i < nodes_.size(); ++i) {
    std::string line =
        absl::StrFormat("%-*s %s %s", name_width_, nodes_[i], done_[i] ? "=" : "*", states_[i]);
    for (char& c : line) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = ' ';
    }
    // Cut to the width so that nothing wraps.
    const size_t limit = static_cast<size_t>(width_ - 1);
    if (line.size() > limit) line.resize(limit);
    absl::StrAppend(&frame, "\r\033[2K", line, "\n");
  }
  out_ << frame << std::flush;
  drawn_ = true;
  dirty_ = false;
}

int TerminalWidth(int fd) {
  if (!isatty(fd)) return 0;
  winsize ws{};
  if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace tunnelagent::controller
