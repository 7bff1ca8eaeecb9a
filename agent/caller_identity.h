// Who is calling the agent, for its log: on the agent's own unix socket the kernel says which
// user and process connected (SO_PEERCRED, read when the connection is accepted); on TCP the
// peer address is what there is.
//
// gRPC's own unix listener does not expose the peer's credentials, so the agent listens on the
// socket itself (UnixSocketListener) and hands each accepted connection to the gRPC server
// (grpc::AddInsecureChannelFromFd). Such connections bypass the server credentials, bearer
// check and TLS included: the agent uses this listener only when neither is configured.
#ifndef TUNNELAGENT_AGENT_CALLER_IDENTITY_H_
#define TUNNELAGENT_AGENT_CALLER_IDENTITY_H_

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "agent/node_guard.h"

namespace grpc {
class Server;
class ServerContextBase;
}  // namespace grpc

namespace tunnelagent::agent {

// The caller of a call: "uid=1000 pid=4242" for a connection accepted by a
// UnixSocketListener, else gRPC's peer address ("ipv4:198.18.0.1:40000", "ipv6:[::1]:5000",
// "unix:..."); with " cn=NAME" appended when the client presented a certificate (mutual TLS).
std::string CallerOf(const grpc::ServerContextBase& context);

// The part of CallerOf that reads gRPC's peer string: "fd:12" (a connection handed over by a
// UnixSocketListener) becomes "uid=... pid=...", anything else stays as it is.
std::string CallerOfPeer(absl::string_view peer);

// A listening unix stream socket the agent owns: created 0660 (owner, root and `group` may
// connect), never taking the path from a live server, removed on destruction only if the path
// is still this socket.
class UnixSocketListener {
 public:
  struct Options {
    std::string path;
    std::optional<gid_t> group;  // nullopt: the agent's own group
    // Connections handed to gRPC and still open; one more is closed at once, so a client that
    // opens connections in a loop cannot use up the agent's descriptors.
    size_t max_connections = 256;
  };

  // Claims the path (ClaimSocketPath), binds, sets mode and group, and only then listens: no
  // one connects before the mode is right. Connections wait in the backlog until Start.
  static absl::StatusOr<std::unique_ptr<UnixSocketListener>> Listen(Options options);

  UnixSocketListener(const UnixSocketListener&) = delete;
  UnixSocketListener& operator=(const UnixSocketListener&) = delete;
  ~UnixSocketListener();  // Stop(), then removes the socket file if it is still this one

  // Accepts in a thread of its own, handing every connection to `server` (already started).
  // Once per listener.
  void Start(grpc::Server* server);

  // Stops accepting and closes the listening socket (new clients get ECONNREFUSED);
  // connections already handed over stay the server's. Before server->Shutdown(): a connection
  // must not be added to a server that is shutting down. Idempotent.
  void Stop();

  const std::string& path() const { return options_.path; }

  // Connections handed over and still open.
  size_t open_connections() const;

 private:
  UnixSocketListener(Options options, int listen_fd, int stop_fd, FileIdentity identity)
      : options_(std::move(options)),
        listen_fd_(listen_fd),
        stop_fd_(stop_fd),
        identity_(identity) {}

  void AcceptLoop(grpc::Server* server);
  // Waits up to `timeout` for Stop; true when stopping.
  bool WaitForStop(int timeout_ms) const;

  const Options options_;
  const int listen_fd_;
  const int stop_fd_;  // an eventfd: Stop writes it, the accept loop polls it
  const FileIdentity identity_;
  absl::Mutex mu_;
  std::thread acceptor_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_CALLER_IDENTITY_H_
