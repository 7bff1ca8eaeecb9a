// Who is calling the agent, for its log: on the agent's own unix socket the kernel says which
// user and process connected (SO_PEERCRED, read when the connection is accepted); on TCP the
// peer address is what there is.
//
// gRPC's own unix listener does not expose the peer's credentials, and gRPC's listener stops
// for good once accept(2) fails for want of descriptors, so the agent listens itself
// (ApiListener) and hands each accepted connection to the gRPC server
// (grpc::AddInsecureChannelFromFd). Such connections bypass the server credentials, bearer
// check and TLS included: the agent uses this listener only when neither is configured.
#ifndef TUNNELAGENT_AGENT_CALLER_IDENTITY_H_
#define TUNNELAGENT_AGENT_CALLER_IDENTITY_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/node_guard.h"

namespace grpc {
class Server;
class ServerContextBase;
}  // namespace grpc

namespace tunnelagent::agent {

// The caller of a call: "uid=1000 pid=4242" for a connection accepted by a
// unix-socket ApiListener, the peer's address for a TCP one ("ipv4:198.18.0.1:40000"), else
// gRPC's peer address ("ipv4:198.18.0.1:40000", "ipv6:[::1]:5000",
// "unix:..."); with " cn=NAME" appended when the client presented a certificate (mutual TLS).
std::string CallerOf(const grpc::ServerContextBase& context);

// The part of CallerOf that reads gRPC's peer string: "fd:12" (a connection handed over by a
// ApiListener) becomes "uid=... pid=..." or the TCP peer's address, anything else stays as it
// is.
std::string CallerOfPeer(absl::string_view peer);

// Bounds an ApiListener enforces before gRPC sees a connection.
struct ListenerLimits {
  // Connections open (handed to gRPC, or waiting for their first bytes) at once; one more is
  // closed at once, so a client that opens connections in a loop cannot use up the agent's
  // descriptors.
  size_t max_connections = 256;
  // The same for one peer: a uid on a unix socket, an address on TCP. One client cannot take
  // every place.
  size_t max_connections_per_peer = 64;
  // A connection that sends nothing (not even the HTTP/2 preface) this long after it was
  // accepted is closed without reaching gRPC.
  absl::Duration first_bytes_timeout = absl::Seconds(5);
};

// What an ApiListener did, for /metrics and the tests. Counters only grow.
struct ListenerStats {
  std::atomic<uint64_t> accepted{0};          // handed to gRPC
  std::atomic<uint64_t> refused_total{0};     // closed at once: max_connections reached
  std::atomic<uint64_t> refused_per_peer{0};  // closed at once: the peer's share reached
  std::atomic<uint64_t> closed_silent{0};     // closed: nothing sent within first_bytes_timeout
  std::atomic<uint64_t> accept_failures{0};   // accept(2) out of descriptors or memory
};

// A listening socket the agent accepts on itself, handing each connection to a gRPC server
// (grpc::AddInsecureChannelFromFd) once it is within the limits and has sent its first bytes.
// Unlike gRPC's own listener, which stops for good after one accept(2) fails for want of
// descriptors, it backs off and accepts again when descriptors come back.
//
// On a unix socket path: created 0660 (owner, root and `group` may connect), never taking the
// path from a live server, removed on destruction only if the path is still this socket; the
// caller is the uid and pid the kernel reports (SO_PEERCRED). On TCP: the caller is the
// peer's address.
class ApiListener {
 public:
  struct Options {
    std::string path{};
    std::optional<gid_t> group{};  // nullopt: the agent's own group
    ListenerLimits limits{};
  };

  // Claims the path (ClaimSocketPath), binds, sets mode and group, and only then listens: no
  // one connects before the mode is right. Connections wait in the backlog until Start.
  static absl::StatusOr<std::unique_ptr<ApiListener>> Listen(Options options);

  // A TCP listener on `listen` ("host:port", "[v6]:port"; port 0 picks one): a numeric
  // address or localhost. INVALID_ARGUMENT for an address it cannot parse.
  static absl::StatusOr<std::unique_ptr<ApiListener>> ListenTcp(const std::string& listen,
                                                                ListenerLimits limits);

  // A listening socket another agent handed over (a hot upgrade), unix or TCP, owned from
  // here on (closed on failure too). Both agents may accept from it while the handover lasts:
  // each connection goes to one of them. `options.path` is ignored: the socket says.
  static absl::StatusOr<std::unique_ptr<ApiListener>> Adopt(int fd, Options options);

  ApiListener(const ApiListener&) = delete;
  ApiListener& operator=(const ApiListener&) = delete;
  ~ApiListener();  // Stop(), then removes the socket file if it is still this one

  // The listening socket, for a handover; valid until Stop.
  int listen_fd() const { return listen_fd_; }
  // The socket file is another agent's now (handed over): never removed here.
  void LeaveSocketFile() { leave_socket_file_.store(true); }

  // Accepts in a thread of its own, handing every connection to `server` (already started).
  // Once per listener.
  void Start(grpc::Server* server);

  // Stops accepting and closes the listening socket (new clients get ECONNREFUSED);
  // connections already handed over stay the server's, those not yet handed over are closed.
  // Before server->Shutdown(): a connection must not be added to a server that is shutting
  // down. Idempotent.
  void Stop();

  // The socket path (unix), empty on TCP.
  const std::string& path() const { return options_.path; }
  // "unix:/path" or "host:port" with the port bound: where a client connects.
  const std::string& target() const { return target_; }
  int port() const { return port_; }  // TCP: the port bound; 0 on unix
  const ListenerLimits& limits() const { return options_.limits; }
  const ListenerStats& stats() const { return stats_; }

  // Connections handed over and still open.
  size_t open_connections() const;

 private:
  struct Pending;

  ApiListener(Options options, int listen_fd, int stop_fd, std::optional<FileIdentity> identity,
              std::string target, int port)
      : options_(std::move(options)),
        listen_fd_(listen_fd),
        stop_fd_(stop_fd),
        identity_(identity),
        target_(std::move(target)),
        port_(port) {}

  void AcceptLoop(grpc::Server* server);
  enum class AcceptResult { kAccepted, kEmpty, kNoResources };
  // Accepts one connection into `pending`, or closes it when over a limit (kAccepted either
  // way); kEmpty when the backlog is; kNoResources (errno set) when accept(2) failed for want
  // of descriptors or memory.
  AcceptResult AcceptOne(std::vector<Pending>* pending);
  // Waits up to `timeout` for Stop; true when stopping.
  bool WaitForStop(int timeout_ms) const;
  bool tcp() const { return options_.path.empty(); }

  const Options options_;
  const int listen_fd_;
  const int stop_fd_;  // an eventfd: Stop writes it, the accept loop polls it
  const std::optional<FileIdentity> identity_;  // of the socket file (unix)
  std::atomic<bool> leave_socket_file_{false};
  const std::string target_;
  const int port_;
  ListenerStats stats_;
  // When a refusal was last logged: a flood logs a line per 10 s. The accept thread's own.
  absl::Time refusal_logged_ = absl::InfinitePast();
  absl::Mutex mu_;
  std::thread acceptor_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_CALLER_IDENTITY_H_
