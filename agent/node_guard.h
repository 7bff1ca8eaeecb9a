// What keeps one node to one agent, checked before the dataplane starts or any device is
// touched: an exclusive lock on the state directory, a state directory proven writable, and a
// unix socket path that is never taken from a live server nor removed once someone else owns
// it. No gRPC here: plain files and sockets.
#ifndef TUNNELAGENT_AGENT_NODE_GUARD_H_
#define TUNNELAGENT_AGENT_NODE_GUARD_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {

// The name of the lock file inside the state directory; it holds the holder's pid.
inline constexpr char kStateDirLockFile[] = "agent.lock";

// Creates `dir` if it is missing: the directory itself 0700 (it holds the desired state),
// missing parents 0755. A path that exists but is not a directory is an error.
absl::Status EnsureStateDir(const std::string& dir);

// An exclusive flock(2) on <state_dir>/agent.lock, held until this object is destroyed (for an
// agent: its whole life; the kernel drops it when the process dies, kill -9 included, so a
// stale lock file never blocks a restart). The file is left in place on release: removing a
// lock file races with the next holder opening it.
class StateDirLock {
 public:
  // FAILED_PRECONDITION "... is locked by another tunnel-agent (pid 123) ..." when another
  // process holds it; the error of open(2) otherwise. Writes this process's pid into the file.
  static absl::StatusOr<StateDirLock> Acquire(const std::string& state_dir);
  // Acquire, retried until `timeout` while another process holds the lock (an agent that was
  // asked to stop and is still stopping).
  static absl::StatusOr<StateDirLock> AcquireWithin(const std::string& state_dir,
                                                    absl::Duration timeout);
  // The lock another agent handed over (a hot upgrade): `fd` is its locked open file
  // description, and the flock with it. Checks that it is locked and is the file at
  // <state_dir>/agent.lock, then writes this process's pid into it. Owns `fd` (closed on
  // failure too).
  static absl::StatusOr<StateDirLock> Adopt(int fd, const std::string& state_dir);
  // The pid written in <state_dir>/agent.lock; 0 when none can be read.
  static pid_t HolderOf(const std::string& state_dir);

  StateDirLock(StateDirLock&& other) noexcept;
  StateDirLock& operator=(StateDirLock&& other) noexcept;
  StateDirLock(const StateDirLock&) = delete;
  StateDirLock& operator=(const StateDirLock&) = delete;
  ~StateDirLock();

  const std::string& path() const { return path_; }
  // For a handover: the new agent holds the lock through this descriptor.
  int fd() const { return fd_; }

 private:
  StateDirLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// One agent per network namespace, whatever its --state_dir: a second agent with a state of its
// own would take the first one's devices for leftovers and remove them. An abstract unix
// socket (a name in the network namespace, where the devices live too; gone with the process,
// kill -9 included) is bound and listened on, and never accepted from: its listener's pid is
// what a second agent names.
class NamespaceLock {
 public:
  // FAILED_PRECONDITION "another tunnel-agent (pid 123) runs in this network namespace ..."
  // when the name is taken; the socket call's error otherwise.
  static absl::StatusOr<NamespaceLock> Acquire(absl::string_view name = "tunnel-agent");
  // The listening socket another agent handed over (a hot upgrade); owns `fd`.
  static NamespaceLock Adopt(int fd) { return NamespaceLock(fd); }
  int fd() const { return fd_; }

  NamespaceLock(NamespaceLock&& other) noexcept;
  NamespaceLock& operator=(NamespaceLock&& other) = delete;
  NamespaceLock(const NamespaceLock&) = delete;
  NamespaceLock& operator=(const NamespaceLock&) = delete;
  ~NamespaceLock();

 private:
  explicit NamespaceLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Proves that the state file can be saved in `dir` the way the state store saves it: a probe
// file is written, fsync'ed, renamed and removed. The error names the step and the system's
// reason ("--state_dir=/x: cannot write a file there: Read-only file system").
absl::Status CheckStateDirWritable(const std::string& dir);

// The file-system path of a "unix:PATH" or "unix:///PATH" listen address; nullopt for every
// other address (TCP, unix-abstract:, which has no file).
std::optional<std::string> UnixSocketPathOf(absl::string_view listen);

// Creates the directory a unix socket goes in, 0755 for each directory made (clients must be
// able to reach the socket; the socket's own mode decides who may connect).
absl::Status EnsureSocketDirectory(const std::string& socket_path);

// Makes `path` free for a new listening socket without ever taking it from a live server:
// absent: OK; a socket that accepts a connection: FAILED_PRECONDITION naming the path and the
// pid serving it; a socket nobody listens on (ECONNREFUSED, a crashed agent's leftover):
// removed; anything that is not a socket: FAILED_PRECONDITION (never removed).
absl::Status ClaimSocketPath(const std::string& path);

// The identity of a file, to tell later whether a path still names the same one.
struct FileIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
};
absl::StatusOr<FileIdentity> IdentityOf(const std::string& path);

// Removes `path` if it is still the file `identity` (an agent's socket, on exit): a socket
// another process has put there since is left alone. True when removed.
bool RemoveIfSameFile(const std::string& path, const FileIdentity& identity);

// --grpc_socket_group: a group name or a numeric gid. INVALID_ARGUMENT for an unknown name.
absl::StatusOr<gid_t> ResolveGroup(absl::string_view group);

// Gives the socket file at `path` mode 0660 and, when `group` is set, that group (the owner
// stays the agent's user): who may connect is the owner, root and that group.
absl::Status RestrictSocketFile(const std::string& path, std::optional<gid_t> group);

// A unix socket that gRPC binds and listens on itself (when a bearer token or TLS must apply
// to every connection, which only gRPC's own listener enforces): gRPC listens in a private
// directory (0700) next to the final path, where no one can connect while the socket still has
// the mode of the umask; Publish then sets its mode and group and links it into place, never
// replacing a file there.
class StagedUnixSocket {
 public:
  // Creates the private directory; `path` must be free (ClaimSocketPath) by Publish.
  static absl::StatusOr<StagedUnixSocket> Prepare(const std::string& path);

  StagedUnixSocket(StagedUnixSocket&& other) noexcept;
  StagedUnixSocket& operator=(StagedUnixSocket&&) = delete;
  StagedUnixSocket(const StagedUnixSocket&) = delete;
  StagedUnixSocket& operator=(const StagedUnixSocket&) = delete;
  // Removes what is left of the staging directory and, once published, the socket at the
  // final path if it is still this one.
  ~StagedUnixSocket();

  // Where gRPC must listen ("unix:" + this).
  const std::string& staging_path() const { return staging_path_; }

  // Once gRPC listens at staging_path(): mode 0660 and `group`, then in place. A socket that
  // appeared at the path since it was claimed is looked at again: live, an error naming its
  // pid; stale, removed and the move retried once.
  absl::Status Publish(std::optional<gid_t> group);

 private:
  StagedUnixSocket(std::string path, std::string staging_dir)
      : path_(std::move(path)),
        staging_dir_(std::move(staging_dir)),
        staging_path_(staging_dir_ + "/s") {}

  std::string path_;
  std::string staging_dir_;
  std::string staging_path_;
  std::optional<FileIdentity> published_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_NODE_GUARD_H_
