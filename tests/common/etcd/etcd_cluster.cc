#include "tests/common/etcd/etcd_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace tunnelagent::testing {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

bool OnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string file = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(file.c_str(), X_OK) == 0) return true;
  }
  return false;
}

// `count` TCP ports free on 127.0.0.1 now: all bound at once so that they differ, then let
// go for etcd to take (another process may take one meanwhile; rare enough for tests).
absl::StatusOr<std::vector<int>> FreePorts(int count) {
  std::vector<int> fds;
  std::vector<int> ports;
  absl::Status status;
  for (int i = 0; i < count && status.ok(); ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      status = Errno("socket");
      break;
    }
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      status = Errno("bind 127.0.0.1:0");
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
  }
  for (int fd : fds) close(fd);
  if (!status.ok()) return status;
  return ports;
}

// The environment without ETCD_* and ETCDCTL_* variables (etcd takes those as flags), plus
// `extra`.
std::vector<std::string> CleanEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (absl::StartsWith(*e, "ETCD_") || absl::StartsWith(*e, "ETCDCTL_")) continue;
    env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the child between fork and exec: only async-signal-safe calls. The child dies with the
// test process (the thread that forked it, in fact: tests call from their main thread).
[[noreturn]] void ExecChild(pid_t parent, int out_fd, int err_fd, char* const* argv,
                            char* const* envp) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd >= 0) dup2(null_fd, 0);
  dup2(out_fd, 1);
  dup2(err_fd, 2);
  close_range(3, ~0U, 0);
  execvpe(argv[0], argv, envp);
  static const char kMessage[] = "exec failed\n";
  ssize_t ignored = write(2, kMessage, sizeof(kMessage) - 1);
  (void)ignored;
  _exit(127);
}

// GET /health on 127.0.0.1:port: whether etcd answers {"health":"true"}.
bool Healthy(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval timeout{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    static const char kRequest[] = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, kRequest, sizeof(kRequest) - 1, MSG_NOSIGNAL) ==
        static_cast<ssize_t>(sizeof(kRequest) - 1)) {
      char buffer[1024];
      for (int reads = 0; reads < 64; ++reads) {
        ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        answer.append(buffer, n);
      }
    }
  }
  close(fd);
  return absl::StrContains(answer, "\"health\":\"true\"");
}

}  // namespace

bool EtcdCluster::Available() { return OnPath("etcd") && OnPath("etcdctl"); }

absl::StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::Start(const EtcdClusterOptions& options) {
  if (options.members != 1 && options.members != 3) {
    return absl::InvalidArgumentError("an etcd test cluster has 1 or 3 members");
  }
  std::unique_ptr<EtcdCluster> cluster(new EtcdCluster());
  cluster->options_ = options;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/etcd-test.XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return Errno(absl::StrCat("mkdtemp ", pattern));
  cluster->dir_ = pattern;

  absl::StatusOr<std::vector<int>> ports = FreePorts(3 * options.members);
  if (!ports.ok()) return ports.status();
  std::vector<std::string> peers;
  for (int i = 0; i < options.members; ++i) {
    Member m;
    m.name = absl::StrCat("m", i);
    m.data_dir = absl::StrCat(cluster->dir_, "/", m.name, ".data");
    m.log_file = absl::StrCat(cluster->dir_, "/", m.name, ".log");
    m.client_port = (*ports)[3 * i];
    m.peer_port = (*ports)[3 * i + 1];
    m.metrics_port = (*ports)[3 * i + 2];
    peers.push_back(absl::StrCat(m.name, "=http://127.0.0.1:", m.peer_port));
    cluster->members_.push_back(std::move(m));
  }
  cluster->initial_cluster_ = absl::StrJoin(peers, ",");
  if (absl::Status s = cluster->StartAll(); !s.ok()) return s;
  return cluster;
}

EtcdCluster::~EtcdCluster() {
  StopAll();
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::string EtcdCluster::endpoint(int i) const {
  return absl::StrCat(options_.server_cert_file.empty() ? "http" : "https",
                      "://127.0.0.1:", members_.at(i).client_port);
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (int i = 0; i < size(); ++i) out.push_back(endpoint(i));
  return out;
}

std::string EtcdCluster::endpoints_flag() const { return absl::StrJoin(endpoints(), ","); }

bool EtcdCluster::running(int i) const { return members_.at(i).pid > 0; }

std::vector<std::string> EtcdCluster::Args(const Member& m) const {
  const std::string client = absl::StrCat(options_.server_cert_file.empty() ? "http" : "https",
                                          "://127.0.0.1:", m.client_port);
  const std::string peer = absl::StrCat("http://127.0.0.1:", m.peer_port);
  std::vector<std::string> args = {
      "etcd",
      "--name=" + m.name,
      "--data-dir=" + m.data_dir,
      "--listen-client-urls=" + client,
      "--advertise-client-urls=" + client,
      "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer,
      // /health over plain HTTP whatever the client URLs speak.
      absl::StrCat("--listen-metrics-urls=http://127.0.0.1:", m.metrics_port),
      "--initial-cluster=" + initial_cluster_,
      "--initial-cluster-state=new",
      // Unique, so that members of two tests' clusters never take each other in.
      "--initial-cluster-token=" + std::filesystem::path(dir_).filename().string(),
      // A leader within a second of a start or of the leader's death (etcd's defaults: 100 ms
      // and 1 s), still slow enough for a loaded machine.
      "--heartbeat-interval=50",
      "--election-timeout=500",
      "--logger=zap",
      "--log-outputs=stderr",
  };
  if (!options_.server_cert_file.empty()) {
    args.push_back("--cert-file=" + options_.server_cert_file);
    args.push_back("--key-file=" + options_.server_key_file);
    if (!options_.trusted_ca_file.empty()) {
      args.push_back("--trusted-ca-file=" + options_.trusted_ca_file);
      args.push_back("--client-cert-auth");
    }
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  return args;
}

absl::Status EtcdCluster::Spawn(Member& m) {
  std::vector<std::string> args = Args(m);
  std::vector<std::string> env = CleanEnvironment({});
  std::vector<char*> argv = CStrings(args);
  std::vector<char*> envp = CStrings(env);
  int log_fd = open(m.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Errno(absl::StrCat("open ", m.log_file));
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) ExecChild(parent, log_fd, log_fd, argv.data(), envp.data());
  close(log_fd);
  if (pid < 0) return Errno("fork");
  m.pid = pid;
  return absl::OkStatus();
}

absl::Status EtcdCluster::WaitMemberHealthy(int i) {
  Member& m = members_.at(i);
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  while (absl::Now() < deadline) {
    int wstatus = 0;
    if (waitpid(m.pid, &wstatus, WNOHANG) == m.pid) {
      m.pid = -1;
      return absl::InternalError(absl::StrCat("etcd member ", m.name, " exited (status ", wstatus,
                                              "); its log ends:\n", LogTail(i)));
    }
    if (Healthy(m.metrics_port)) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("etcd member ", m.name, " not healthy within ",
                                                  absl::FormatDuration(options_.start_timeout),
                                                  "; its log ends:\n", LogTail(i)));
}

absl::Status EtcdCluster::KillMember(int i) {
  Member& m = members_.at(i);
  if (m.pid <= 0) return absl::FailedPreconditionError(absl::StrCat(m.name, " is not running"));
  kill(m.pid, SIGKILL);
  waitpid(m.pid, nullptr, 0);
  m.pid = -1;
  return absl::OkStatus();
}

absl::Status EtcdCluster::StartMember(int i) {
  Member& m = members_.at(i);
  if (m.pid > 0) return absl::FailedPreconditionError(absl::StrCat(m.name, " is running"));
  if (absl::Status s = Spawn(m); !s.ok()) return s;
  return WaitMemberHealthy(i);
}

absl::Status EtcdCluster::WaitHealthy() {
  for (int i = 0; i < size(); ++i) {
    if (!running(i)) continue;
    if (absl::Status s = WaitMemberHealthy(i); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void EtcdCluster::StopAll() {
  for (int i = 0; i < size(); ++i) {
    if (running(i)) KillMember(i).IgnoreError();
  }
}

absl::Status EtcdCluster::StartAll() {
  // All first: a member of three is healthy only once a quorum runs.
  for (Member& m : members_) {
    if (m.pid > 0) continue;
    if (absl::Status s = Spawn(m); !s.ok()) return s;
  }
  return WaitHealthy();
}

std::string EtcdCluster::LogTail(int i, size_t bytes) const {
  std::ifstream file(members_.at(i).log_file, std::ios::binary);
  std::stringstream content;
  content << file.rdbuf();
  std::string text = content.str();
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

absl::StatusOr<std::string> EtcdCluster::Etcdctl(const std::vector<std::string>& args) const {
  std::vector<std::string> argv_strings = {"etcdctl", "--endpoints=" + endpoints_flag(),
                                           "--dial-timeout=3s", "--command-timeout=10s"};
  if (!options_.client_ca_file.empty())
    argv_strings.push_back("--cacert=" + options_.client_ca_file);
  if (!options_.client_cert_file.empty()) {
    argv_strings.push_back("--cert=" + options_.client_cert_file);
    argv_strings.push_back("--key=" + options_.client_key_file);
  }
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env = CleanEnvironment({"ETCDCTL_API=3"});
  std::vector<char*> argv = CStrings(argv_strings);
  std::vector<char*> envp = CStrings(env);

  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return Errno("pipe");
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) ExecChild(parent, out_pipe[1], err_pipe[1], argv.data(), envp.data());
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return Errno("fork");
  }
  std::string out;
  std::string err;
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (wait_ms <= 0) {
      timed_out = true;
      break;
    }
    if (poll(fds, 2, wait_ms) < 0 && errno != EINTR) break;
    for (int k = 0; k < 2; ++k) {
      if (fds[k].fd < 0 || fds[k].revents == 0) continue;
      char buffer[4096];
      ssize_t n = read(fds[k].fd, buffer, sizeof(buffer));
      if (n > 0) {
        (k == 0 ? out : err).append(buffer, n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[k].fd);
        fds[k].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  if (timed_out) kill(pid, SIGKILL);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  const std::string command = absl::StrJoin(args, " ");
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat("etcdctl ", command, ": no end within 15 s"));
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return absl::InternalError(
        absl::StrCat("etcdctl ", command, " failed (status ", wstatus, "): ", err, out));
  }
  return out;
}

void EtcdTest::SetUp() {
  if (!EtcdCluster::Available()) {
    GTEST_SKIP() << "etcd or etcdctl not found (apt-get install etcd-server etcd-client)";
  }
  absl::StatusOr<std::unique_ptr<EtcdCluster>> cluster = EtcdCluster::Start(ClusterOptions());
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  cluster_ = *std::move(cluster);
}

void EtcdTest::TearDown() {
  // What etcd saw, while it is still there to read.
  if (HasFailure() && cluster_ != nullptr) {
    for (int i = 0; i < cluster_->size(); ++i) {
      std::cerr << "---- etcd member m" << i << ", end of its log:\n" << cluster_->LogTail(i, 3000);
    }
  }
  cluster_.reset();
}

}  // namespace tunnelagent::testing
