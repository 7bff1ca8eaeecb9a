// What every call of the etcd client goes through: the one gRPC channel over all endpoints
// (TLS as the options say), etcd's service stubs, and the auth token sent with each call and
// fetched again when etcd no longer takes it. Shared (std::shared_ptr) by the client and its
// watches, which may outlive it. Internal to the etcd client.
#ifndef TUNNELAGENT_COMMON_ETCD_CONNECTION_H_
#define TUNNELAGENT_COMMON_ETCD_CONNECTION_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/etcd/client.h"
#include "common/etcd/status.h"
#include "etcd/etcdserver/api/v3election/v3electionpb/v3election.grpc.pb.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace tunnelagent::etcd {

class Connection {
 public:
  // Checks the options and reads the TLS files; does not talk to etcd (the channel connects
  // on first use), so that a program starts while etcd is down. INVALID_ARGUMENT for bad
  // options, UNAVAILABLE when no endpoint's name resolves.
  static absl::StatusOr<std::shared_ptr<Connection>> Create(const ClientOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const ClientOptions& options() const { return options_; }
  etcdserverpb::KV::Stub& kv() { return *kv_; }
  etcdserverpb::Watch::Stub& watch() { return *watch_; }
  etcdserverpb::Lease::Stub& lease() { return *lease_; }
  v3electionpb::Election::Stub& election() { return *election_; }

  // Sets the deadline on `context` and adds the auth token (AddToken).
  absl::Status Prepare(grpc::ClientContext* context, absl::Time deadline, std::string* token);
  // Adds the auth token to `context`, fetching one first (by `auth_deadline`) when there is a
  // user and no token yet. `*token` is the token sent, for TokenRejected.
  absl::Status AddToken(grpc::ClientContext* context, absl::Time auth_deadline, std::string* token);
  // The token sent with a call that etcd refused as stale (IsStaleToken): forgotten, so that
  // the next Prepare fetches another. Does nothing when another call already did that.
  void TokenRejected(const std::string& token);
  bool has_user() const { return !options_.username.empty(); }

  // One unary call: `rpc(context, response)` with the deadline and token, once more with a new
  // token when etcd refused the first as stale. `what` names the call in errors.
  template <typename Response>
  absl::StatusOr<Response> Call(
      absl::string_view what, absl::Time deadline,
      const std::function<grpc::Status(grpc::ClientContext*, Response*)>& rpc) {
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext context;
      std::string token;
      if (absl::Status prepared = Prepare(&context, deadline, &token); !prepared.ok()) {
        return prepared;
      }
      Response response;
      grpc::Status status = rpc(&context, &response);
      if (status.ok()) return response;
      if (attempt == 0 && has_user() && IsStaleToken(status)) {
        TokenRejected(token);
        continue;
      }
      return FromGrpc(what, status);
    }
  }

 private:
  explicit Connection(const ClientOptions& options) : options_(options) {}

  // Auth.Authenticate: the token, or "" when etcd's auth is off.
  absl::StatusOr<std::string> Authenticate(absl::Time deadline);
  // The watcher thread's loop (see connection.cc).
  void WatchChannel();

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch_;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease_;
  std::unique_ptr<etcdserverpb::Auth::Stub> auth_;
  std::unique_ptr<v3electionpb::Election::Stub> election_;

  // Keeps the channel's connections read between calls (see WatchChannel).
  grpc::CompletionQueue watcher_queue_;
  std::atomic<bool> stopping_{false};
  std::thread watcher_;

  enum class AuthState { kNone, kToken, kAuthDisabled };
  absl::Mutex mu_;
  AuthState auth_state_ ABSL_GUARDED_BY(mu_) = AuthState::kNone;
  std::string token_ ABSL_GUARDED_BY(mu_);
};

// etcd's key-value message as the client's.
KeyValue ToKeyValue(const mvccpb::KeyValue& kv);

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_CONNECTION_H_
