#include "agent/node_guard.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

class NodeGuardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/node_guard_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A unix stream socket bound at `path`; listening when `listen_too`. -1 on failure.
  static int BoundSocket(const std::string& path, bool listen_too) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path.data(), path.size());
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        (listen_too && listen(fd, 4) != 0)) {
      close(fd);
      return -1;
    }
    return fd;
  }

  static bool Exists(const std::string& path) {
    struct stat st;
    return lstat(path.c_str(), &st) == 0;
  }

  std::string dir_;
};

// ---- the state directory --------------------------------------------------------------------

TEST_F(NodeGuardTest, StateDirIsCreated0700WithItsParents) {
  const std::string dir = dir_ + "/a/b/state/";
  ASSERT_TRUE(EnsureStateDir(dir).ok());
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/a/b/state").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_TRUE(EnsureStateDir(dir).ok()) << "an existing directory is fine";
}

TEST_F(NodeGuardTest, StateDirThatCannotBeADirectory) {
  std::ofstream(dir_ + "/file") << "x";
  absl::Status status = EnsureStateDir(dir_ + "/file");
  EXPECT_THAT(status.message(), HasSubstr("not a directory"));
  status = EnsureStateDir("/proc/nope");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("cannot create the directory"));
  EXPECT_EQ(status.message().find('\n'), absl::string_view::npos);
}

TEST_F(NodeGuardTest, WritableProbeLeavesNothingBehind) {
  ASSERT_TRUE(CheckStateDirWritable(dir_).ok());
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(NodeGuardTest, UnwritableStateDirFails) {
  // Root ignores file modes: /proc takes no new files whoever asks, and a path through a
  // regular file is no directory at all.
  absl::Status status = CheckStateDirWritable("/proc");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("cannot create a file there"));
  std::ofstream(dir_ + "/file") << "x";
  status = CheckStateDirWritable(dir_ + "/file");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("Not a directory"));
}

// ---- the lock -------------------------------------------------------------------------------

TEST_F(NodeGuardTest, SecondLockOnOneDirFailsNamingTheHolder) {
  absl::StatusOr<StateDirLock> first = StateDirLock::Acquire(dir_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->path(), dir_ + "/agent.lock");
  std::string content;
  std::getline(std::ifstream(first->path()), content);
  EXPECT_EQ(content, absl::StrCat(getpid()));

  absl::StatusOr<StateDirLock> second = StateDirLock::Acquire(dir_ + "/");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(),
              HasSubstr(absl::StrCat("another tunnel-agent (pid ", getpid(), ") holds ", dir_,
                                     "/agent.lock")));

  StateDirLock moved = *std::move(first);  // moving keeps it held
  EXPECT_FALSE(StateDirLock::Acquire(dir_).ok());
  { StateDirLock released = std::move(moved); }
  EXPECT_TRUE(StateDirLock::Acquire(dir_).ok()) << "released with its holder";
}

TEST_F(NodeGuardTest, LockOfAnotherProcessNamesItsPidAndDiesWithIt) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const std::string path = dir_ + "/agent.lock";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Only async-signal-safe calls between fork and _exit: the test process has threads.
    int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(1);
    char pid[16];
    int n = 0;
    for (pid_t p = getpid(); p > 0; p /= 10) pid[n++] = static_cast<char>('0' + p % 10);
    for (int i = 0; i < n / 2; ++i) std::swap(pid[i], pid[n - 1 - i]);
    if (write(fd, pid, n) != n || write(ready[1], "x", 1) != 1) _exit(1);
    for (;;) pause();
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  absl::StatusOr<StateDirLock> lock = StateDirLock::Acquire(dir_);
  EXPECT_FALSE(lock.ok());
  EXPECT_THAT(lock.status().message(), HasSubstr(absl::StrCat("(pid ", child, ")")));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  lock = StateDirLock::Acquire(dir_);
  EXPECT_TRUE(lock.ok()) << "kill -9 releases the lock: " << lock.status();
}

// ---- the socket path ------------------------------------------------------------------------

TEST_F(NodeGuardTest, OneAgentPerNetworkNamespaceWhateverItsStateDir) {
  // A name of this test's own, so an agent running on this machine is no obstacle.
  const std::string name = absl::StrCat("tunnel-agent-test-", getpid());
  {
    absl::StatusOr<NamespaceLock> first = NamespaceLock::Acquire(name);
    ASSERT_TRUE(first.ok()) << first.status();
    absl::StatusOr<NamespaceLock> second = NamespaceLock::Acquire(name);
    ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
    EXPECT_THAT(second.status().message(),
                HasSubstr(absl::StrCat("another tunnel-agent (pid ", getpid(),
                                       ") runs in this network namespace")));
    EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("@", name)));
  }
  // Released with its holder: the next one takes it.
  EXPECT_TRUE(NamespaceLock::Acquire(name).ok());
  EXPECT_EQ(NamespaceLock::Acquire("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NodeGuardTest, UnixSocketPathOf) {
  EXPECT_EQ(UnixSocketPathOf("unix:/run/tunnel-agent/agent.sock"), "/run/tunnel-agent/agent.sock");
  EXPECT_EQ(UnixSocketPathOf("unix:///run/a.sock"), "/run/a.sock");
  EXPECT_EQ(UnixSocketPathOf("unix:rel.sock"), "rel.sock");
  EXPECT_EQ(UnixSocketPathOf("unix:"), "");
  EXPECT_EQ(UnixSocketPathOf("unix-abstract:x"), std::nullopt);
  EXPECT_EQ(UnixSocketPathOf("127.0.0.1:50051"), std::nullopt);
}

TEST_F(NodeGuardTest, SocketDirectoryIsCreated0755) {
  ASSERT_TRUE(EnsureSocketDirectory(dir_ + "/run/tunnel-agent/agent.sock").ok());
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/run/tunnel-agent").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_FALSE(Exists(dir_ + "/run/tunnel-agent/agent.sock"));
}

TEST_F(NodeGuardTest, LiveSocketIsNeverTakenOver) {
  const std::string path = dir_ + "/agent.sock";
  int live = BoundSocket(path, /*listen_too=*/true);
  ASSERT_GE(live, 0);
  absl::Status status = ClaimSocketPath(path);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat("unix socket ", path, " is in use: pid ", getpid())));
  EXPECT_THAT(status.message(), HasSubstr("refusing to take it over"));
  EXPECT_TRUE(Exists(path));
  close(live);
}

TEST_F(NodeGuardTest, StaleSocketIsReplaced) {
  const std::string path = dir_ + "/agent.sock";
  int stale = BoundSocket(path, /*listen_too=*/false);  // bound, never listening: refused
  ASSERT_GE(stale, 0);
  close(stale);
  ASSERT_TRUE(Exists(path));
  absl::Status status = ClaimSocketPath(path);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_FALSE(Exists(path));
  EXPECT_TRUE(ClaimSocketPath(path).ok()) << "nothing there";
}

TEST_F(NodeGuardTest, OtherFilesAreNeverRemoved) {
  const std::string path = dir_ + "/agent.sock";
  std::ofstream(path) << "precious";
  absl::Status status = ClaimSocketPath(path);
  EXPECT_THAT(status.message(), HasSubstr("exists and is not a socket"));
  EXPECT_TRUE(Exists(path));
  status = ClaimSocketPath(dir_ + "/" + std::string(120, 'x'));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NodeGuardTest, RemoveIfSameFile) {
  const std::string path = dir_ + "/agent.sock";
  int first = BoundSocket(path, true);
  ASSERT_GE(first, 0);
  absl::StatusOr<FileIdentity> mine = IdentityOf(path);
  ASSERT_TRUE(mine.ok());
  // Someone else's socket now at the path: left alone.
  ASSERT_EQ(unlink(path.c_str()), 0);
  int other = BoundSocket(path, true);
  ASSERT_GE(other, 0);
  EXPECT_FALSE(RemoveIfSameFile(path, *mine));
  EXPECT_TRUE(Exists(path));
  absl::StatusOr<FileIdentity> theirs = IdentityOf(path);
  ASSERT_TRUE(theirs.ok());
  EXPECT_TRUE(RemoveIfSameFile(path, *theirs));
  EXPECT_FALSE(Exists(path));
  close(first);
  close(other);
}

TEST_F(NodeGuardTest, GroupsAndSocketMode) {
  EXPECT_EQ(*ResolveGroup("0"), 0u);
  EXPECT_EQ(*ResolveGroup("root"), 0u);
  EXPECT_EQ(*ResolveGroup("65534"), 65534u);
  absl::StatusOr<gid_t> unknown = ResolveGroup("no-such-group-here");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("no group named \"no-such-group-here\""));
  EXPECT_FALSE(ResolveGroup("").ok());
  EXPECT_FALSE(ResolveGroup("-1").ok());

  const std::string path = dir_ + "/agent.sock";
  int fd = BoundSocket(path, false);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(RestrictSocketFile(path, 65534).ok());
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, 65534u);
  EXPECT_EQ(st.st_uid, geteuid());
  close(fd);
}

// ---- a socket gRPC binds itself, moved into place -------------------------------------------

TEST_F(NodeGuardTest, StagedSocketIsPublishedRestrictedAndRemovedWithIt) {
  const std::string path = dir_ + "/agent.sock";
  int listening = -1;
  {
    absl::StatusOr<StagedUnixSocket> staged = StagedUnixSocket::Prepare(path);
    ASSERT_TRUE(staged.ok()) << staged.status();
    const std::string staging_dir =
        staged->staging_path().substr(0, staged->staging_path().rfind('/'));
    struct stat st;
    ASSERT_EQ(stat(staging_dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u) << "no one reaches the socket before it is restricted";
    listening = BoundSocket(staged->staging_path(), true);  // what gRPC does
    ASSERT_GE(listening, 0);
    ASSERT_TRUE(staged->Publish(65534).ok());
    ASSERT_EQ(lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0660u);
    EXPECT_EQ(st.st_gid, 65534u);
    EXPECT_FALSE(Exists(staging_dir));
    absl::Status in_use = ClaimSocketPath(path);
    EXPECT_THAT(in_use.message(), HasSubstr("is in use")) << "the published path is the listener";
  }
  EXPECT_FALSE(Exists(path)) << "removed with its owner";
  close(listening);
}

TEST_F(NodeGuardTest, StagedSocketNeverReplacesALiveOne) {
  const std::string path = dir_ + "/agent.sock";
  int live = BoundSocket(path, true);
  ASSERT_GE(live, 0);
  absl::StatusOr<FileIdentity> theirs = IdentityOf(path);
  ASSERT_TRUE(theirs.ok());
  {
    absl::StatusOr<StagedUnixSocket> staged = StagedUnixSocket::Prepare(path);
    ASSERT_TRUE(staged.ok()) << staged.status();
    int mine = BoundSocket(staged->staging_path(), true);
    ASSERT_GE(mine, 0);
    absl::Status status = staged->Publish(std::nullopt);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("is in use: pid ", getpid())));
    close(mine);
  }
  absl::StatusOr<FileIdentity> after = IdentityOf(path);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->ino, theirs->ino) << "the live socket was replaced or removed";
  close(live);
  // Now stale: replaced.
  absl::StatusOr<StagedUnixSocket> staged = StagedUnixSocket::Prepare(path);
  ASSERT_TRUE(staged.ok());
  int mine = BoundSocket(staged->staging_path(), true);
  EXPECT_TRUE(staged->Publish(std::nullopt).ok());
  close(mine);
}

}  // namespace
}  // namespace tunnelagent::agent
