#include "agent/fd_budget.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::agent {
namespace {

std::atomic<const FdBudget*> tunnel_budget{nullptr};

}  // namespace

absl::StatusOr<FileLimitChange> RaiseFileLimit() {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) {
    return dataplane::ErrnoStatus(errno, "getrlimit(RLIMIT_NOFILE)");
  }
  FileLimitChange change;
  change.before = files.rlim_cur;
  change.hard = files.rlim_max;
  if (files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &files) != 0) {
      return dataplane::ErrnoStatus(errno, "setrlimit(RLIMIT_NOFILE)");
    }
  }
  change.after = files.rlim_cur;
  return change;
}

uint64_t FileLimit() {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return 0;
  return files.rlim_cur;
}

absl::StatusOr<uint64_t> GrowDescriptorTable(uint64_t slots) {
  slots = std::min(slots, FileLimit());
  if (slots == 0) return slots;
  const int any = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (any < 0) return dataplane::ErrnoStatus(errno, "open(/dev/null)");
  // The lowest free descriptor at or above the last slot: the table now reaches it. Closing
  // the copy leaves the table as large (it never shrinks).
  const int last = fcntl(any, F_DUPFD_CLOEXEC, static_cast<int>(slots - 1));
  const int error = errno;
  if (last >= 0) close(last);
  close(any);
  if (last < 0) {
    return dataplane::ErrnoStatus(error, absl::StrCat("fcntl(F_DUPFD, ", slots - 1, ")"));
  }
  return slots;
}

absl::StatusOr<size_t> CountOpenDescriptors(const std::string& fd_dir) {
  DIR* dir = opendir(fd_dir.c_str());
  if (dir == nullptr) {
    const int err = errno;
    return dataplane::ErrnoStatus(err, absl::StrCat("counting open descriptors in ", fd_dir));
  }
  size_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  // The directory's own descriptor was listed too.
  return count > 0 ? count - 1 : 0;
}

size_t ApiConnectionsFor(uint64_t limit, size_t wanted) {
  constexpr size_t kFewest = 8;
  const uint64_t quarter = limit / 4;
  return std::max<size_t>(kFewest, std::min<uint64_t>(wanted, quarter));
}

absl::Status FdBudget::CheckTunnel() const {
  const uint64_t limit = options_.limit ? options_.limit() : FileLimit();
  // The whole reserve (no connection counted as open): the estimate below errs high.
  const uint64_t reserve_all = reserve();
  const uint64_t since = checks_since_count_.load(std::memory_order_relaxed);
  const uint64_t estimate =
      last_open_.load(std::memory_order_relaxed) + reserve_all + (since + 1) * options_.per_tunnel;
  // Far from the limit (half of it to spare) and counted not long ago: no need to count.
  // Past half at the last count already, and still a quarter to spare: counted every
  // kRecountNear checks, not at each (a count reads an entry per open descriptor, 20 ms at
  // 10,000, and the quarter left is far more than can be opened behind the budget's back
  // between two counts).
  // A recent count beside the requests (Recount) stands for those.
  const uint64_t counted = last_open_.load(std::memory_order_relaxed) + reserve_all;
  const bool fresh = absl::GetCurrentTimeNanos() - recounted_at_nanos_.load() <
                     absl::ToInt64Nanoseconds(kCountFresh);
  if (((since < kRecountEvery || fresh) && estimate <= limit / 2) ||
      ((since < kRecountNear || fresh) && counted > limit / 2 && estimate <= limit - limit / 4)) {
    checks_since_count_.store(since + 1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> open = CountOpenDescriptors(options_.fd_dir);
  if (!open.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("file descriptors are short: ", open.status().message()));
  }
  last_open_.store(*open, std::memory_order_relaxed);
  const size_t in_use =
      std::min(options_.api_in_use ? options_.api_in_use() : 0, options_.api_connections);
  const uint64_t keep_free = (options_.api_connections - in_use) + options_.own_reserve;
  const uint64_t need = static_cast<uint64_t>(*open) + options_.per_tunnel + keep_free;
  if (need <= limit) {
    checks_since_count_.store(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  checks_since_count_.store(kRecountEvery, std::memory_order_relaxed);  // count next time too
  return absl::ResourceExhaustedError(absl::StrCat(
      "file descriptors are short: ", *open, " open of a limit of ", limit, ", a tunnel needs ",
      options_.per_tunnel, " and ", reserve(), " are reserved for the API's ",
      options_.api_connections, " connections and the agent's own use (", in_use,
      " connections open now); delete tunnels or raise the limit (RLIMIT_NOFILE, "
      "systemd's LimitNOFILE)"));
}

void FdBudget::Recount() const {
  if (checks_since_count_.load(std::memory_order_relaxed) == 0) return;  // nothing new
  absl::StatusOr<size_t> open = CountOpenDescriptors(options_.fd_dir);
  if (!open.ok()) return;  // the next check counts (and says why) itself
  // Every tunnel let in so far is in this count. One being made now may not be yet, and is
  // then missing from the estimate until the next count: the agent's reserve covers it.
  last_open_.store(*open, std::memory_order_relaxed);
  checks_since_count_.store(0, std::memory_order_relaxed);
  recounted_at_nanos_.store(absl::GetCurrentTimeNanos());
}

void SetTunnelFdBudget(const FdBudget* budget) { tunnel_budget.store(budget); }

absl::Status CheckTunnelFdBudget() {
  const FdBudget* budget = tunnel_budget.load();
  return budget == nullptr ? absl::OkStatus() : budget->CheckTunnel();
}

}  // namespace tunnelagent::agent
