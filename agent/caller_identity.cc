#include "agent/caller_identity.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
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
  const ApiListener* listener;
  dev_t dev;  // the socket's identity: a descriptor number gRPC has closed and the process
  ino_t ino;  // reused for something else no longer matches
  uid_t uid;
  pid_t pid;
  std::string address;  // TCP: "ipv4:198.18.0.1:40000"; empty on a unix socket
  std::string key;      // whose share it counts against: "uid=1000", or the bare address
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

  // Drops the entries of closed connections; returns how many of `listener`'s remain, and in
  // `of_key` how many of those count against `key`.
  size_t Prune(const ApiListener* listener, absl::string_view key = {}, size_t* of_key = nullptr) {
    std::vector<std::pair<int, Peer>> mine;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [fd, peer] : peers_) {
        if (peer.listener == listener) mine.emplace_back(fd, peer);
      }
    }
    // fstat outside the lock: no lock is held across a system call.
    std::vector<std::pair<int, Peer>> gone;
    size_t same_key = 0;
    for (const auto& [fd, peer] : mine) {
      struct stat st;
      if (fstat(fd, &st) != 0 || st.st_dev != peer.dev || st.st_ino != peer.ino) {
        gone.emplace_back(fd, peer);
      } else if (peer.key == key) {
        ++same_key;
      }
    }
    if (of_key != nullptr) *of_key = same_key;
    absl::MutexLock lock(&mu_);
    for (const auto& [fd, peer] : gone) {
      auto it = peers_.find(fd);
      // Only the entry looked at: a new connection added on that number meanwhile stays.
      if (it != peers_.end() && SameSocket(it->second, peer)) peers_.erase(it);
    }
    return mine.size() - gone.size();
  }

  // Forgets every entry of `listener` (it is going away).
  void Forget(const ApiListener* listener) {
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
      if (!found->address.empty()) return found->address;
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

absl::StatusOr<std::unique_ptr<ApiListener>> ApiListener::Listen(Options options) {
  if (absl::Status status = ClaimSocketPath(options.path); !status.ok()) return status;
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, options.path.data(), options.path.size());  // length checked by Claim
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return dataplane::ErrnoStatus(errno, "socket");
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
  if (status.ok() && stop_fd < 0) status = dataplane::ErrnoStatus(errno, "eventfd");
  if (!status.ok()) {
    if (identity.ok()) RemoveIfSameFile(options.path, *identity);
    return fail(status);
  }
  std::string target = absl::StrCat("unix:", options.path);
  return std::unique_ptr<ApiListener>(
      new ApiListener(std::move(options), fd, stop_fd, *identity, std::move(target), 0));
}

namespace {

// Where a client (the agent's self-check) connects to a TCP listener bound to `address`: the
// address bound, or loopback when it is every address. `port`: the port bound.
std::string SelfCheckTarget(const sockaddr_storage& address, int* port) {
  const bool v6 = address.ss_family == AF_INET6;
  *port = ntohs(v6 ? reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port
                   : reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  char text[INET6_ADDRSTRLEN] = {};
  if (v6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr;
    inet_ntop(AF_INET6, IN6_IS_ADDR_UNSPECIFIED(&a) ? &in6addr_loopback : &a, text, sizeof text);
  } else {
    in_addr a = reinterpret_cast<const sockaddr_in*>(&address)->sin_addr;
    if (a.s_addr == htonl(INADDR_ANY)) a.s_addr = htonl(INADDR_LOOPBACK);
    inet_ntop(AF_INET, &a, text, sizeof text);
  }
  return v6 ? absl::StrCat("[", text, "]:", *port) : absl::StrCat(text, ":", *port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiListener>> ApiListener::ListenTcp(const std::string& listen,
                                                                    ListenerLimits limits) {
  // "host:port" or "[v6]:port"; the host may be empty (every address).
  std::string host;
  std::string port;
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(listen, ": want host:port"));
  }
  host = listen.substr(0, colon);
  port = listen.substr(colon + 1);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int error = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      error != 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(listen, ": not an address to listen on: ", gai_strerror(error)));
  }
  sockaddr_storage address = {};
  memcpy(&address, found->ai_addr, found->ai_addrlen);
  const socklen_t address_len = found->ai_addrlen;
  const int family = found->ai_family;
  freeaddrinfo(found);

  const int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return dataplane::ErrnoStatus(errno, "socket");
  auto fail = [&](absl::Status status) {
    close(fd);
    return status;
  };
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // a restart rebinds at once
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), address_len) != 0) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("cannot bind ", listen, ": ", ErrnoText(errno))));
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    return fail(dataplane::ErrnoStatus(errno, absl::StrCat("cannot listen on ", listen)));
  }
  socklen_t len = sizeof address;
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &len);
  int bound_port = 0;
  std::string target = SelfCheckTarget(address, &bound_port);
  const int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) return fail(dataplane::ErrnoStatus(errno, "eventfd"));
  return std::unique_ptr<ApiListener>(new ApiListener({.limits = limits}, fd, stop_fd, std::nullopt,
                                                      std::move(target), bound_port));
}

ApiListener::~ApiListener() {
  Stop();
  close(stop_fd_);
  Peers().Forget(this);
  if (identity_.has_value() && !leave_socket_file_.load()) {
    RemoveIfSameFile(options_.path, *identity_);
  }
}

absl::StatusOr<std::unique_ptr<ApiListener>> ApiListener::Adopt(int fd, Options options) {
  auto fail = [fd](absl::Status status) {
    close(fd);
    return status;
  };
  sockaddr_storage address = {};
  socklen_t len = sizeof address;
  int listening = 0;
  socklen_t listening_len = sizeof listening;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &len) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &listening_len) != 0 || !listening) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("descriptor ", fd, " handed over is no listening socket")));
  }
  // The accept loop polls and accepts without blocking.
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::optional<FileIdentity> identity;
  std::string target;
  int port = 0;
  if (address.ss_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(&address);
    const size_t max =
        len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    options.path = std::string(un->sun_path, strnlen(un->sun_path, max));
    if (options.path.empty()) {
      return fail(absl::FailedPreconditionError("an abstract unix socket cannot be handed over"));
    }
    if (absl::StatusOr<FileIdentity> id = IdentityOf(options.path); id.ok()) identity = *id;
    target = absl::StrCat("unix:", options.path);
  } else if (address.ss_family == AF_INET || address.ss_family == AF_INET6) {
    options.path.clear();
    target = SelfCheckTarget(address, &port);
  } else {
    return fail(absl::FailedPreconditionError("a listening socket of an unknown family"));
  }
  const int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) return fail(dataplane::ErrnoStatus(errno, "eventfd"));
  return std::unique_ptr<ApiListener>(
      new ApiListener(std::move(options), fd, stop_fd, identity, std::move(target), port));
}

void ApiListener::Start(grpc::Server* server) {
  absl::MutexLock lock(&mu_);
  if (stopped_ || acceptor_.joinable()) return;
  acceptor_ = std::thread([this, server] { AcceptLoop(server); });
}

void ApiListener::Stop() {
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

size_t ApiListener::open_connections() const { return Peers().Prune(this); }

bool ApiListener::WaitForStop(int timeout_ms) const {
  pollfd stop = {stop_fd_, POLLIN, 0};
  return poll(&stop, 1, timeout_ms) > 0;
}

// A connection accepted and within the limits, not yet handed to gRPC: it must say something
// (the HTTP/2 preface) before `deadline`.
struct ApiListener::Pending {
  int fd;
  Peer peer;
  absl::Time deadline;
};

namespace {

// "ipv4:198.18.0.1:40000" / "ipv6:[2001:db8::1]:40000" (gRPC's own peer format), and the
// address alone, for the per-peer share.
void DescribeTcpPeer(const sockaddr_storage& address, std::string* peer, std::string* key) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
    *key = text;
    *peer = absl::StrCat("ipv6:[", text, "]:", ntohs(in6.sin6_port));
  } else {
    const auto& in4 = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &in4.sin_addr, text, sizeof text);
    *key = text;
    *peer = absl::StrCat("ipv4:", text, ":", ntohs(in4.sin_port));
  }
}

}  // namespace

ApiListener::AcceptResult ApiListener::AcceptOne(std::vector<Pending>* pending) {
  sockaddr_storage address = {};
  socklen_t address_len = sizeof address;
  const int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&address), &address_len,
                         SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    const int error = errno;
    if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR || error == ECONNABORTED ||
        error == EPROTO) {
      return error == EAGAIN || error == EWOULDBLOCK ? AcceptResult::kEmpty
                                                     : AcceptResult::kAccepted;
    }
    // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or worse: the pending
    // connection stays in the backlog and poll would report it again at once, so the caller
    // backs off and keeps going: descriptors come back as connections and tunnels close.
    stats_.accept_failures.fetch_add(1, std::memory_order_relaxed);
    errno = error;
    return AcceptResult::kNoResources;
  }
  Peer peer{this, 0, 0, 0, 0, {}, {}};
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return AcceptResult::kAccepted;
  }
  peer.dev = st.st_dev;
  peer.ino = st.st_ino;
  if (tcp()) {
    DescribeTcpPeer(address, &peer.address, &peer.key);
    // Small requests and answers must not wait for Nagle's algorithm.
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  } else {
    ucred cred = {};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      Log("WARNING", "grpc: a connection on %s without credentials: %s; closed", target_,
          ErrnoText(errno));
      close(fd);
      return AcceptResult::kAccepted;
    }
    peer.uid = cred.uid;
    peer.pid = cred.pid;
    peer.key = absl::StrCat("uid=", cred.uid);
  }
  size_t of_peer = 0;
  size_t total = Peers().Prune(this, peer.key, &of_peer) + pending->size();
  for (const Pending& waiting : *pending) {
    if (waiting.peer.key == peer.key) ++of_peer;
  }
  const std::string who =
      peer.address.empty() ? absl::StrCat("uid=", peer.uid, " pid=", peer.pid) : peer.address;
  if (total >= options_.limits.max_connections) {
    stats_.refused_total.fetch_add(1, std::memory_order_relaxed);
    if (absl::Now() - refusal_logged_ >= absl::Seconds(10)) {
      Log("WARNING",
          "grpc: %s has %d open connections, the most allowed: closing new ones (this one from "
          "%s) until some close; %d refused so far",
          target_, static_cast<int>(options_.limits.max_connections), who,
          stats_.refused_total.load());
      refusal_logged_ = absl::Now();
    }
    close(fd);
    return AcceptResult::kAccepted;
  }
  if (of_peer >= options_.limits.max_connections_per_peer) {
    stats_.refused_per_peer.fetch_add(1, std::memory_order_relaxed);
    if (absl::Now() - refusal_logged_ >= absl::Seconds(10)) {
      Log("WARNING",
          "grpc: %s has %d open connections from %s, the most one peer may have: closing its "
          "new ones until some close; %d refused so far",
          target_, static_cast<int>(options_.limits.max_connections_per_peer), peer.key,
          stats_.refused_per_peer.load());
      refusal_logged_ = absl::Now();
    }
    close(fd);
    return AcceptResult::kAccepted;
  }
  pending->push_back(
      Pending{fd, std::move(peer), absl::Now() + options_.limits.first_bytes_timeout});
  return AcceptResult::kAccepted;
}

void ApiListener::AcceptLoop(grpc::Server* server) {
  int backoff_ms = 0;                          // > 0 while accept(2) fails for want of resources
  absl::Time retry_at = absl::InfinitePast();  // no accept before, while backing off
  absl::Time silent_logged = absl::InfinitePast();
  std::vector<Pending> pending;
  std::vector<pollfd> fds;
  for (;;) {
    const absl::Time now = absl::Now();
    const bool accepting = now >= retry_at;
    absl::Time wake = accepting ? absl::InfiniteFuture() : retry_at;
    fds.clear();
    fds.push_back({stop_fd_, POLLIN, 0});
    fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});  // -1: not polled
    for (const Pending& waiting : pending) {
      fds.push_back({waiting.fd, POLLIN, 0});
      wake = std::min(wake, waiting.deadline);
    }
    const int timeout_ms =
        wake == absl::InfiniteFuture()
            ? -1
            : static_cast<int>(std::clamp<int64_t>(
                  absl::ToInt64Milliseconds(absl::Ceil(wake - now, absl::Milliseconds(1))), 0,
                  kMaxBackoffMs));
    if (poll(fds.data(), fds.size(), timeout_ms) < 0) {
      if (errno == EINTR) continue;
      Log("ERROR", "grpc: poll on %s: %s", target_, ErrnoText(errno));
      if (WaitForStop(kMaxBackoffMs)) break;
      continue;
    }
    if (fds[0].revents != 0) break;
    // Connections that spoke go to gRPC; those silent past their deadline, or gone, close.
    const absl::Time after = absl::Now();
    size_t silent = 0;
    std::vector<Pending> waiting;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& each = pending[i];
      const short revents = fds[i + 2].revents;
      if ((revents & POLLIN) != 0) {
        Peers().Add(each.fd, each.peer);
        stats_.accepted.fetch_add(1, std::memory_order_relaxed);
        grpc::AddInsecureChannelFromFd(server, each.fd);  // the server owns fd from here on
      } else if (revents != 0) {
        close(each.fd);  // hung up or failed before saying anything
      } else if (after >= each.deadline) {
        // Counted before the close: whoever sees the connection end sees it counted.
        stats_.closed_silent.fetch_add(1, std::memory_order_relaxed);
        close(each.fd);
        ++silent;
      } else {
        waiting.push_back(std::move(each));
      }
    }
    pending = std::move(waiting);
    if (silent > 0) {
      if (after - silent_logged >= absl::Seconds(10)) {  // a flood logs a line per 10 s
        Log("WARNING", "grpc: %s: closed %d connection(s) that sent nothing for %s", target_,
            static_cast<int>(silent), absl::FormatDuration(options_.limits.first_bytes_timeout));
        silent_logged = after;
      }
    }
    if (!accepting) continue;
    if ((fds[1].revents & POLLIN) == 0) {
      if (fds[1].revents != 0 && WaitForStop(100)) break;  // an error on the socket: no spin
      continue;
    }
    // A batch per wake-up, so a flood cannot keep the pending connections from being served.
    for (int batch = 0; batch < 64; ++batch) {
      const AcceptResult result = AcceptOne(&pending);
      if (result == AcceptResult::kEmpty) break;
      if (result == AcceptResult::kNoResources) {
        const int error = errno;
        backoff_ms = backoff_ms == 0 ? 10 : std::min(backoff_ms * 2, kMaxBackoffMs);
        if (backoff_ms == 10) {
          Log("ERROR", "grpc: cannot accept on %s: %s; retrying", target_, ErrnoText(error));
        }
        retry_at = absl::Now() + absl::Milliseconds(backoff_ms);
        break;
      }
      if (backoff_ms != 0) {
        Log("INFO", "grpc: accepting on %s again", target_);
        backoff_ms = 0;
      }
    }
  }
  for (const Pending& waiting : pending) close(waiting.fd);
}

}  // namespace tunnelagent::agent
