#include "agent/node_guard.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/scoped_fd.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::agent {
namespace {

using dataplane::ErrnoText;

absl::Status Failed(absl::string_view what, int error) {
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", ErrnoText(error)));
}

// mkdir -p: the last component with `mode`, the missing parents 0755.
absl::Status MakeDirectories(const std::string& dir, mode_t mode) {
  for (size_t slash = dir.find('/', 1); slash != std::string::npos;
       slash = dir.find('/', slash + 1)) {
    const std::string parent = dir.substr(0, slash);
    if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
      return Failed(absl::StrCat("cannot create ", parent), errno);
    }
  }
  if (mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return Failed("cannot create the directory", errno);
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return Failed("cannot look at the directory", errno);
  if (!S_ISDIR(st.st_mode)) return absl::FailedPreconditionError("not a directory");
  return absl::OkStatus();
}

std::string WithoutTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// The pid written in a lock file by its holder; 0 when there is none (yet).
pid_t PidInLockFile(int fd) {
  char buf[32] = {};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  int pid = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid)) return 0;
  return pid > 0 ? pid : 0;
}

bool FillUnixAddress(const std::string& path, sockaddr_un* addr) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) return false;
  memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

}  // namespace

absl::Status EnsureStateDir(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("empty path");
  return MakeDirectories(WithoutTrailingSlashes(dir), 0700);
}

absl::StatusOr<StateDirLock> StateDirLock::Acquire(const std::string& state_dir) {
  std::string path = absl::StrCat(WithoutTrailingSlashes(state_dir), "/", kStateDirLockFile);
  ScopedFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) return Failed(absl::StrCat("cannot open ", path), errno);
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Failed(absl::StrCat("cannot lock ", path), errno);
    // The holder writes its pid just after it locks: give a holder that is starting right
    // now a moment to do so, for a message that names it.
    pid_t holder = PidInLockFile(fd.get());
    for (int i = 0; holder == 0 && i < 20; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
      holder = PidInLockFile(fd.get());
    }
    return absl::FailedPreconditionError(
        absl::StrCat("another tunnel-agent (",
                     holder != 0 ? absl::StrCat("pid ", holder) : std::string("pid unknown"),
                     ") holds ", path, ": one agent per node and state directory"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) != 0 ||
      pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Failed(absl::StrCat("cannot write ", path), errno);
  }
  return StateDirLock(fd.release(), std::move(path));
}

absl::StatusOr<StateDirLock> StateDirLock::AcquireWithin(const std::string& state_dir,
                                                         absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<StateDirLock> lock = Acquire(state_dir);
    if (lock.ok() || !absl::IsFailedPrecondition(lock.status()) || absl::Now() >= deadline) {
      return lock;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

absl::StatusOr<StateDirLock> StateDirLock::Adopt(int fd, const std::string& state_dir) {
  ScopedFd owned(fd);
  std::string path = absl::StrCat(WithoutTrailingSlashes(state_dir), "/", kStateDirLockFile);
  struct stat by_fd;
  struct stat by_path;
  if (fstat(fd, &by_fd) != 0 || stat(path.c_str(), &by_path) != 0 ||
      by_fd.st_dev != by_path.st_dev || by_fd.st_ino != by_path.st_ino) {
    return absl::FailedPreconditionError(
        absl::StrCat("the state directory lock handed over is not ", path));
  }
  // Locking again through the same open file description succeeds (and converts nothing);
  // a description that held no lock would take it now, which is as good.
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    return Failed(absl::StrCat("cannot lock ", path, " handed over"), errno);
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Failed(absl::StrCat("cannot write ", path), errno);
  }
  return StateDirLock(owned.release(), std::move(path));
}

pid_t StateDirLock::HolderOf(const std::string& state_dir) {
  const std::string path = absl::StrCat(WithoutTrailingSlashes(state_dir), "/", kStateDirLockFile);
  ScopedFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  return fd.get() < 0 ? 0 : PidInLockFile(fd.get());
}

StateDirLock::StateDirLock(StateDirLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

StateDirLock& StateDirLock::operator=(StateDirLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

StateDirLock::~StateDirLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

absl::StatusOr<NamespaceLock> NamespaceLock::Acquire(absl::string_view name) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (name.empty() || name.size() + 1 > sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("bad lock name '", name, "'"));
  }
  // An abstract name: a leading NUL, no file, the length given exactly.
  memcpy(addr.sun_path + 1, name.data(), name.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  ScopedFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Failed("cannot make a socket", errno);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0) {
    if (listen(fd.get(), 1) != 0) return Failed(absl::StrCat("cannot listen on @", name), errno);
    return NamespaceLock(fd.release());
  }
  if (errno != EADDRINUSE) return Failed(absl::StrCat("cannot bind @", name), errno);
  // Taken: ask the kernel who listens there.
  pid_t holder = 0;
  ScopedFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (probe.get() >= 0 &&
      connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0) {
    ucred peer = {};
    socklen_t peer_len = sizeof peer;
    if (getsockopt(probe.get(), SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) == 0) holder = peer.pid;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "another tunnel-agent (", holder > 0 ? absl::StrCat("pid ", holder) : "pid unknown",
      ") runs in this network namespace (it holds the abstract socket @", name,
      "): one agent per node, whatever its --state_dir"));
}

NamespaceLock::NamespaceLock(NamespaceLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

NamespaceLock::~NamespaceLock() {
  if (fd_ >= 0) close(fd_);
}

absl::Status CheckStateDirWritable(const std::string& dir) {
  const std::string base = absl::StrCat(WithoutTrailingSlashes(dir), "/.probe.", getpid());
  const std::string renamed = base + ".renamed";
  absl::Status status = [&]() -> absl::Status {
    ScopedFd fd(open(base.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd.get() < 0) return Failed("cannot create a file there", errno);
    constexpr absl::string_view kProbe = "tunnel-agent write probe\n";
    if (write(fd.get(), kProbe.data(), kProbe.size()) != static_cast<ssize_t>(kProbe.size())) {
      return Failed("cannot write a file there", errno == 0 ? EIO : errno);
    }
    if (fsync(fd.get()) != 0) return Failed("cannot fsync a file there", errno);
    if (close(fd.release()) != 0) return Failed("cannot write a file there", errno);
    if (rename(base.c_str(), renamed.c_str()) != 0) {
      return Failed("cannot rename a file there", errno);
    }
    if (unlink(renamed.c_str()) != 0) return Failed("cannot remove a file there", errno);
    return absl::OkStatus();
  }();
  if (!status.ok()) {  // whatever step failed, leave no probe behind
    unlink(base.c_str());
    unlink(renamed.c_str());
  }
  return status;
}

std::optional<std::string> UnixSocketPathOf(absl::string_view listen) {
  if (!absl::ConsumePrefix(&listen, "unix:")) return std::nullopt;
  // unix:///abs/path: an empty authority, then the absolute path.
  if (absl::StartsWith(listen, "//")) listen.remove_prefix(2);
  return std::string(listen);
}

absl::Status EnsureSocketDirectory(const std::string& socket_path) {
  const size_t slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return absl::OkStatus();  // cwd or /
  return MakeDirectories(socket_path.substr(0, slash), 0755);
}

absl::Status ClaimSocketPath(const std::string& path) {
  sockaddr_un addr;
  if (!FillUnixAddress(path, &addr)) {
    return absl::InvalidArgumentError(absl::StrCat("unix socket path \"", path,
                                                   "\" is empty or longer than ",
                                                   sizeof addr.sun_path - 1, " bytes"));
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Failed(absl::StrCat("cannot look at ", path), errno);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket: refusing to replace it"));
  }
  ScopedFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (probe.get() < 0) return Failed("socket", errno);
  if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ||
      errno == EAGAIN) {
    // Someone listens (EAGAIN: so busy its backlog is full). The credentials of a unix
    // socket's peer are those of the process that called listen().
    ucred peer = {};
    socklen_t len = sizeof peer;
    std::string who = "pid unknown";
    if (getsockopt(probe.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 && peer.pid > 0) {
      who = absl::StrCat("pid ", peer.pid);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("unix socket ", path, " is in use: ", who,
                     " accepts connections on it; refusing to take it over"));
  }
  if (errno != ECONNREFUSED) {
    return Failed(absl::StrCat("cannot tell whether unix socket ", path, " is in use"), errno);
  }
  // Nobody listens: the leftover of a process that died without removing it.
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Failed(absl::StrCat("cannot remove the stale unix socket ", path), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<FileIdentity> IdentityOf(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return Failed(absl::StrCat("cannot look at ", path), errno);
  return FileIdentity{st.st_dev, st.st_ino};
}

bool RemoveIfSameFile(const std::string& path, const FileIdentity& identity) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return false;
  if (st.st_dev != identity.dev || st.st_ino != identity.ino) return false;
  return unlink(path.c_str()) == 0;
}

absl::StatusOr<gid_t> ResolveGroup(absl::string_view group) {
  if (group.empty()) return absl::InvalidArgumentError("empty group");
  if (uint32_t gid; absl::SimpleAtoi(group, &gid) && absl::ascii_isdigit(group[0])) {
    if (gid == static_cast<uint32_t>(-1)) {
      return absl::InvalidArgumentError(absl::StrCat("group ", group, " is not a valid gid"));
    }
    return static_cast<gid_t>(gid);
  }
  const std::string name(group);
  long size = sysconf(_SC_GETGR_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? static_cast<size_t>(size) : 4096);
  for (;;) {
    struct group entry;
    struct group* found = nullptr;
    int rc = getgrnam_r(name.c_str(), &entry, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0) return Failed(absl::StrCat("cannot look up group ", name), rc);
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("no group named \"", name, "\""));
    }
    return found->gr_gid;
  }
}

absl::Status RestrictSocketFile(const std::string& path, std::optional<gid_t> group) {
  if (chmod(path.c_str(), 0660) != 0) {
    return Failed(absl::StrCat("cannot set mode 0660 on ", path), errno);
  }
  if (group.has_value() &&
      fchownat(AT_FDCWD, path.c_str(), static_cast<uid_t>(-1), *group, AT_SYMLINK_NOFOLLOW) != 0) {
    return Failed(absl::StrCat("cannot give ", path, " to group ", *group), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<StagedUnixSocket> StagedUnixSocket::Prepare(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  std::string tmpl = (dir == "/" ? std::string() : dir) + "/.tunnel-agent.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    return Failed(absl::StrCat("cannot make a private directory next to ", path), errno);
  }
  StagedUnixSocket staged(path, tmpl);
  sockaddr_un addr;
  if (!FillUnixAddress(staged.staging_path_, &addr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unix socket path ", path, " is too long: its staging path ",
                     staged.staging_path_, " exceeds ", sizeof addr.sun_path - 1, " bytes"));
  }
  return staged;
}

StagedUnixSocket::StagedUnixSocket(StagedUnixSocket&& other) noexcept
    : path_(std::move(other.path_)),
      staging_dir_(std::exchange(other.staging_dir_, std::string())),
      staging_path_(std::exchange(other.staging_path_, std::string())),
      published_(std::exchange(other.published_, std::nullopt)) {}

StagedUnixSocket::~StagedUnixSocket() {
  if (staging_dir_.empty()) return;  // moved from
  unlink(staging_path_.c_str());
  rmdir(staging_dir_.c_str());
  if (published_.has_value()) RemoveIfSameFile(path_, *published_);
}

absl::Status StagedUnixSocket::Publish(std::optional<gid_t> group) {
  if (absl::Status status = RestrictSocketFile(staging_path_, group); !status.ok()) return status;
  // link(2), unlike rename(2), never replaces what is at the path.
  for (int attempt = 0;; ++attempt) {
    if (link(staging_path_.c_str(), path_.c_str()) == 0) break;
    if (errno != EEXIST || attempt > 0) {
      return Failed(absl::StrCat("cannot put the unix socket at ", path_), errno);
    }
    if (absl::Status status = ClaimSocketPath(path_); !status.ok()) return status;
  }
  absl::StatusOr<FileIdentity> identity = IdentityOf(path_);
  if (!identity.ok()) return identity.status();
  published_ = *identity;
  unlink(staging_path_.c_str());
  rmdir(staging_dir_.c_str());
  return absl::OkStatus();
}

}  // namespace tunnelagent::agent
