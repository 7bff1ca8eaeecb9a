// A file descriptor closed on every path out of a scope, so that an early return never leaks
// one.
#ifndef TUNNELAGENT_AGENT_SCOPED_FD_H_
#define TUNNELAGENT_AGENT_SCOPED_FD_H_

#include <unistd.h>

#include <utility>

namespace tunnelagent::agent {

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) close(fd_);
      fd_ = other.release();
    }
    return *this;
  }
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  // Hands the descriptor over: it is no longer closed here.
  int release() { return std::exchange(fd_, -1); }
  // Closes now and answers close(2)'s result, for callers that must see a failing close
  // (deferred write errors on some file systems).
  int Close() { return close(std::exchange(fd_, -1)); }

 private:
  int fd_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_SCOPED_FD_H_
