#include "agent/caller_identity.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "agent/log.h"
#include "dataplane/errno_status.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/server.h"
#include "grpcpp/server_context.h"
#include "grpcpp/server_posix.h"

namespace tunnelagent::agent {
namespace {

constexpr int kMaxBackoffMs = 1000;

using dataplane::ErrnoText;

// What the kernel said of a connection when it was accepted.
struct Peer {
  const UnixSocketListener* listener;
  dev_t dev;  // the socket's identity: a descriptor number gRPC has closed and the process
  ino_t ino;  // reused for something else no longer matches
  uid_t uid;
  pid_t pid;
};

bool SameSocket(const Peer& a, const Peer& b) {
  return a.listener == b.listener && a.dev == b.dev && a.ino == b.ino;
}

// Descriptor -> peer of every connection handed to gRPC. gRPC closes a connection's descriptor
// without telling anyone, so entries are checked against the descriptor's current identity
// (Prune) before connections are counted; while a call runs its connection, and so its
// descriptor, stays open, so a call always finds its own peer.
class PeerTable {
 public:
  void Add(int fd, const Peer& peer) {
    absl::MutexLock lock(&mu_);
    peers_[fd] = peer;  // a reused number: the old connection is gone
  }

  std::optional<Peer> Find(int fd) const {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(fd);
    if (it == peers_.end()) return std::nullopt;
    return it->second;
  }

  // Drops the entries of closed connections; returns how many of `listener`'s remain.
  size_t Prune(const UnixSocketListener* listener) {
    std::vector<std::pair<int, Peer>> mine;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [fd, peer] : peers_) {
        if (peer.listener == listener) mine.emplace_back(fd, peer);
      }
    }
    // fstat outside the lock: no lock is held across a system call.
    std::vector<std::pair<int, Peer>> gone;
    for (const auto& [fd, peer] : mine) {
      struct stat st;
      if (fstat(fd, &st) != 0 || st.st_dev != peer.dev || st.st_ino != peer.ino) {
        gone.emplace_back(fd, peer);
      }
    }
    absl::MutexLock lock(&mu_);
    for (const auto& [fd, peer] : gone) {
      auto it = peers_.find(fd);
      // Only the entry looked at: a new connection added on that number meanwhile stays.
      if (it != peers_.end() && SameSocket(it->second, peer)) peers_.erase(it);
    }
    return mine.size() - gone.size();
  }

  // Forgets every entry of `listener` (it is going away).
  void Forget(const UnixSocketListener* listener) {
    absl::MutexLock lock(&mu_);
    absl::erase_if(peers_, [&](const auto& entry) { return entry.second.listener == listener; });
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<int, Peer> peers_ ABSL_GUARDED_BY(mu_);
};

PeerTable& Peers() {
  static PeerTable* const table = new PeerTable();  // never destroyed: used until exit
  return *table;
}

}  // namespace

std::string CallerOfPeer(absl::string_view peer) {
  absl::string_view number = peer;
  int fd = -1;
  if (absl::ConsumePrefix(&number, "fd:") && absl::SimpleAtoi(number, &fd)) {
    if (std::optional<Peer> found = Peers().Find(fd)) {
      return absl::StrCat("uid=", found->uid, " pid=", found->pid);
    }
  }
  return std::string(peer);
}

std::string CallerOf(const grpc::ServerContextBase& context) {
  std::string caller = CallerOfPeer(context.peer());
  if (std::shared_ptr<const grpc::AuthContext> auth = context.auth_context()) {
    std::vector<grpc::string_ref> cn = auth->FindPropertyValues("x509_common_name");
    if (!cn.empty()) absl::StrAppend(&caller, " cn=", std::string(cn[0].data(), cn[0].size()));
  }
  return caller;
}

absl::StatusOr<std::unique_ptr<UnixSocketListener>> UnixSocketListener::Listen(Options options) {
  if (absl::Status status = ClaimSocketPath(options.path); !status.ok()) return status;
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, options.path.data(), options.path.size());  // length checked by Claim
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", ErrnoText(errno)));
  auto fail = [&](absl::Status status) {
    close(fd);
    return status;
  };
  // bind(2) fails on any existing file, so a socket another process put there in the meantime
  // is never replaced.
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("cannot bind unix socket ", options.path, ": ", ErrnoText(errno))));
  }
  absl::StatusOr<FileIdentity> identity = IdentityOf(options.path);
  absl::Status status =
      identity.ok() ? RestrictSocketFile(options.path, options.group) : identity.status();
  if (status.ok() && listen(fd, SOMAXCONN) != 0) {
    status = absl::InternalError(
        absl::StrCat("cannot listen on unix socket ", options.path, ": ", ErrnoText(errno)));
  }
  const int stop_fd = status.ok() ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
  if (status.ok() && stop_fd < 0) {
    status = absl::InternalError(absl::StrCat("eventfd: ", ErrnoText(errno)));
  }
  if (!status.ok()) {
    if (identity.ok()) RemoveIfSameFile(options.path, *identity);
    return fail(status);
  }
  return std::unique_ptr<UnixSocketListener>(
      new UnixSocketListener(std::move(options), fd, stop_fd, *identity));
}

UnixSocketListener::~UnixSocketListener() {
  Stop();
  close(stop_fd_);
  Peers().Forget(this);
  RemoveIfSameFile(options_.path, identity_);
}

void UnixSocketListener::Start(grpc::Server* server) {
  absl::MutexLock lock(&mu_);
  if (stopped_ || acceptor_.joinable()) return;
  acceptor_ = std::thread([this, server] { AcceptLoop(server); });
}

void UnixSocketListener::Stop() {
  std::thread acceptor;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    acceptor = std::move(acceptor_);
  }
  const uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
  if (acceptor.joinable()) acceptor.join();
  close(listen_fd_);
}

size_t UnixSocketListener::open_connections() const { return Peers().Prune(this); }

bool UnixSocketListener::WaitForStop(int timeout_ms) const {
  pollfd stop = {stop_fd_, POLLIN, 0};
  return poll(&stop, 1, timeout_ms) > 0;
}

void UnixSocketListener::AcceptLoop(grpc::Server* server) {
  int backoff_ms = 0;     // > 0 while accept(2) keeps failing for want of resources
  bool at_limit = false;  // logged once per stretch at the connection limit
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Log("ERROR", "grpc: poll on %s: %s", options_.path, ErrnoText(errno));
      if (WaitForStop(kMaxBackoffMs)) return;
      continue;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) {
      if (WaitForStop(100)) return;  // an error on the listening socket: do not spin
      continue;
    }
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      const int error = errno;
      if (error == EAGAIN || error == EINTR || error == ECONNABORTED || error == EPROTO) continue;
      // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or worse: the pending
      // connection stays in the backlog and poll would report it again at once, so back off,
      // and keep going: descriptors come back as connections and tunnels close.
      backoff_ms = backoff_ms == 0 ? 10 : std::min(backoff_ms * 2, kMaxBackoffMs);
      if (backoff_ms == 10) {
        Log("ERROR", "grpc: cannot accept on %s: %s; retrying", options_.path, ErrnoText(error));
      }
      if (WaitForStop(backoff_ms)) return;
      continue;
    }
    if (backoff_ms != 0) {
      Log("INFO", "grpc: accepting on %s again", options_.path);
      backoff_ms = 0;
    }
    ucred cred = {};
    socklen_t len = sizeof cred;
    struct stat st;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || fstat(fd, &st) != 0) {
      Log("WARNING", "grpc: a connection on %s without credentials: %s; closed", options_.path,
          ErrnoText(errno));
      close(fd);
      continue;
    }
    if (Peers().Prune(this) >= options_.max_connections) {
      if (!at_limit) {
        Log("WARNING",
            "grpc: %s has %d open connections, the most allowed: closing new ones (this one "
            "from uid=%d pid=%d) until some close",
            options_.path, static_cast<int>(options_.max_connections), static_cast<int>(cred.uid),
            static_cast<int>(cred.pid));
        at_limit = true;
      }
      close(fd);
      continue;
    }
    at_limit = false;
    Peers().Add(fd, Peer{this, st.st_dev, st.st_ino, cred.uid, cred.pid});
    grpc::AddInsecureChannelFromFd(server, fd);  // the server owns fd from here on
  }
}

}  // namespace tunnelagent::agent
