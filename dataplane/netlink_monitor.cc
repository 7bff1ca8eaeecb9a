#include "dataplane/netlink_monitor.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {
namespace {

// What the agent converges: its devices' link state and MTU, their addresses, its routes (and
// the underlay's routes, which decide the path to each remote).
constexpr unsigned kGroups[] = {RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR,
                                RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE};

// A link notification carries the link's statistics and can pass 8 KiB on a device with many
// queues or virtual functions; one that still does not fit is counted all the same (MSG_TRUNC).
constexpr size_t kDatagramBufferSize = 64 * 1024;

absl::Status SystemError(int err, absl::string_view what) {
  return absl::Status(ErrnoCode(err), absl::StrCat(what, ": ", ErrnoText(err)));
}

// poll()'s timeout for `remaining`: rounded up, so a wait never ends early; -1 for ever.
int PollMilliseconds(absl::Duration remaining) {
  if (remaining == absl::InfiniteDuration()) return -1;
  if (remaining <= absl::ZeroDuration()) return 0;
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(remaining, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

}  // namespace

absl::StatusOr<std::unique_ptr<NetlinkMonitor>> NetlinkMonitor::Open(const Options& options) {
  if (options.receive_buffer_bytes <= 0 || options.quiet < absl::ZeroDuration() ||
      options.max_settle < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "netlink monitor: the receive buffer must be positive and the settle times not negative");
  }
  const int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (fd < 0) return SystemError(errno, "netlink monitor: opening a NETLINK_ROUTE socket");
  auto fail = [fd](int err, absl::string_view what) {
    close(fd);
    return SystemError(err, absl::StrCat("netlink monitor: ", what));
  };

  // FORCE goes past net.core.rmem_max but needs CAP_NET_ADMIN; without it the plain option
  // still gets up to rmem_max.
  const int wanted = options.receive_buffer_bytes;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &wanted, sizeof(wanted)) != 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &wanted, sizeof(wanted)) != 0) {
    return fail(errno, "setting the receive buffer");
  }
  int granted = 0;
  socklen_t granted_len = sizeof(granted);
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &granted, &granted_len) != 0) {
    return fail(errno, "reading the receive buffer size");
  }

  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;  // port chosen by the kernel, groups joined below
  if (bind(fd, reinterpret_cast<const sockaddr*>(&local), sizeof(local)) != 0) {
    return fail(errno, "binding the socket");
  }
  for (unsigned group : kGroups) {
    if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof(group)) != 0) {
      return fail(errno, absl::StrCat("joining rtnetlink group ", group));
    }
  }

  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return fail(errno, "creating the wake-up eventfd");
  return std::unique_ptr<NetlinkMonitor>(new NetlinkMonitor(fd, wake_fd, granted, options));
}

NetlinkMonitor::NetlinkMonitor(int socket_fd, int wake_fd, int receive_buffer_bytes,
                               const Options& options)
    : socket_fd_(socket_fd),
      wake_fd_(wake_fd),
      receive_buffer_bytes_(receive_buffer_bytes),
      options_(options) {}

NetlinkMonitor::~NetlinkMonitor() {
  close(socket_fd_);
  close(wake_fd_);
}

void NetlinkMonitor::Wake() {
  const uint64_t one = 1;
  // Only fails when the counter is about to overflow, and then a wake-up is pending anyway.
  (void)!write(wake_fd_, &one, sizeof(one));
}

void NetlinkMonitor::Stop() {
  stopped_.store(true, std::memory_order_release);
  Wake();
}

bool NetlinkMonitor::ConsumeWake() {
  uint64_t count = 0;
  return read(wake_fd_, &count, sizeof(count)) == sizeof(count) && count > 0;
}

absl::StatusOr<bool> NetlinkMonitor::Drain() {
  std::vector<char> buf(kDatagramBufferSize);
  bool changed = false;
  while (true) {
    sockaddr_nl sender{};
    socklen_t sender_len = sizeof(sender);
    const ssize_t n = recvfrom(socket_fd_, buf.data(), buf.size(), MSG_TRUNC,
                               reinterpret_cast<sockaddr*>(&sender), &sender_len);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return changed;
      if (err == ENOBUFS) {
        // The kernel dropped notifications: what changed is unknown, so everything did.
        overruns_.fetch_add(1, std::memory_order_relaxed);
        changed = true;
        continue;
      }
      return SystemError(err, "netlink monitor: receiving notifications");
    }
    // Only the kernel speaks for the routing stack; anything else is ignored.
    if (sender_len < sizeof(sender) || sender.nl_pid != 0) continue;
    uint64_t messages = 0;
    const size_t received = std::min(static_cast<size_t>(n), buf.size());
    int remaining = static_cast<int>(received);
    for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data()); NLMSG_OK(nlh, remaining);
         nlh = NLMSG_NEXT(nlh, remaining)) {
      if (nlh->nlmsg_type >= NLMSG_MIN_TYPE) ++messages;
    }
    // A truncated datagram still announced a change.
    if (messages == 0 && static_cast<size_t>(n) > buf.size()) messages = 1;
    if (messages > 0) {
      notifications_.fetch_add(messages, std::memory_order_relaxed);
      changed = true;
    }
  }
}

absl::StatusOr<bool> NetlinkMonitor::WaitForChange(absl::Duration timeout) {
  if (stopped_.load(std::memory_order_acquire)) {
    return absl::CancelledError("netlink monitor: stopped");
  }
  const absl::Time start = absl::Now();
  const absl::Time deadline =
      timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : start + timeout;

  // One poll over both descriptors; `*changed` is set when a notification, an overrun or a
  // Wake() came, CANCELLED returned on Stop().
  auto poll_once = [&](absl::Duration wait, bool* changed) -> absl::Status {
    pollfd fds[2] = {{socket_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int ready = poll(fds, 2, PollMilliseconds(wait));
    if (ready < 0) {
      if (errno == EINTR) return absl::OkStatus();
      return SystemError(errno, "netlink monitor: waiting for notifications");
    }
    if (fds[1].revents != 0 && ConsumeWake()) {
      if (stopped_.load(std::memory_order_acquire)) {
        return absl::CancelledError("netlink monitor: stopped");
      }
      *changed = true;
    }
    // POLLERR is how an overrun shows; Drain reads it as ENOBUFS.
    if (fds[0].revents != 0) {
      absl::StatusOr<bool> drained = Drain();
      if (!drained.ok()) return drained.status();
      if (*drained) *changed = true;
    }
    return absl::OkStatus();
  };

  bool changed = false;
  while (!changed) {
    const absl::Duration remaining = deadline - absl::Now();
    if (absl::Status s = poll_once(std::max(remaining, absl::ZeroDuration()), &changed); !s.ok()) {
      return s;
    }
    if (!changed && remaining <= absl::ZeroDuration()) return false;
  }

  // Let a burst finish, so its remaining notifications are consumed with this wake-up rather
  // than causing the next.
  const absl::Time settle_end = absl::Now() + options_.max_settle;
  while (true) {
    const absl::Duration wait = std::min(options_.quiet, settle_end - absl::Now());
    if (wait <= absl::ZeroDuration()) break;
    const uint64_t before = notifications_.load(std::memory_order_relaxed) + overruns();
    bool more = false;
    if (absl::Status s = poll_once(wait, &more); !s.ok()) return s;
    if (notifications_.load(std::memory_order_relaxed) + overruns() == before) break;
  }
  return true;
}

}  // namespace tunnelagent::dataplane
