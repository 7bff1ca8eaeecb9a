// The agent's gRPC servers: the API on --grpc_listen and, with --health_listen, a health-only
// server, built and started with their security and bounds, and kept answering.
//
// Plaintext without a bearer token, the agent accepts connections itself (ApiListener: caps
// per peer and in total, recovery after accept(2) runs out of descriptors). With TLS or a
// token, gRPC's own listener serves, since only it runs the TLS handshake and the bearer check
// in gRPC core; it stops for good the first time accept(2) fails for want of descriptors. A
// self-check therefore calls the API over its real listener, on a new connection each time;
// after several failures in a row health turns NOT_SERVING and, where gRPC's listener is the
// one serving, the server is rebuilt on the same address with the same services.
#ifndef TUNNELAGENT_AGENT_API_SERVER_H_
#define TUNNELAGENT_AGENT_API_SERVER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "agent/caller_identity.h"
#include "agent/node_guard.h"
#include "agent/server_security.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "prometheus/collectable.h"

namespace tunnelagent::agent {

struct SelfCheckOptions {
  absl::Duration interval = absl::Seconds(5);  // zero: no self-check
  absl::Duration timeout = absl::Seconds(2);   // a call's deadline, connection included
  int failures = 3;                            // in a row before NOT_SERVING (and a rebuild)
  absl::Duration reminder = absl::Minutes(1);  // ERROR again while it keeps failing
};

struct ApiServerOptions {
  std::string listen;  // --grpc_listen as given, for the log
  ServerSecurity security;
  ServerLimits limits;
  // The agent's own listener on --grpc_listen; null: gRPC listens on `listen` (or, on a unix
  // socket path, on `staged`'s staging path, published once health is set).
  std::unique_ptr<ApiListener> listener;
  std::optional<StagedUnixSocket> staged;
  std::optional<gid_t> socket_group;  // for `staged`
  // --health_listen: the agent's own listener of the health-only server; null: none.
  std::unique_ptr<ApiListener> health_listener;
  // Registers the services and interceptors on a builder: called for the first server and for
  // every rebuild (so the services must outlive the ApiServer).
  std::function<void(grpc::ServerBuilder*)> add_services;
  SelfCheckOptions self_check;
};

class ApiServer {
 public:
  // Builds and starts the servers, sets health (NOT_SERVING unless `dataplane_serving`), then
  // lets clients in (listeners started, a staged socket published) and starts the self-check.
  static absl::StatusOr<std::unique_ptr<ApiServer>> Start(ApiServerOptions options,
                                                          bool dataplane_serving);

  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;
  ~ApiServer();  // Shutdown()

  // Health follows the dataplane too: SERVING only while both the dataplane and the
  // self-check are fine.
  void SetDataplaneServing(bool serving);

  // NOT_SERVING from now on, the self-check stops, listeners stop, then the servers shut down
  // (calls get `grace` to finish). Idempotent; Wait() returns once it is done.
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  void Wait();

  // Whether the last self-checks passed (true until `failures` in a row have failed).
  bool api_answering() const;
  // The self-check's target: "unix:/path" or "host:port" with the port bound.
  const std::string& self_check_target() const { return target_; }

  // tunnelagent_api_* series: connections, refusals, self-check failures and rebuilds.
  std::shared_ptr<prometheus::Collectable> metrics() const;

  class Metrics;

 private:
  explicit ApiServer(ApiServerOptions options);

  // Builds a server for the API (listening itself unless the agent's listener serves).
  absl::StatusOr<std::unique_ptr<grpc::Server>> BuildServer();
  absl::Status SelfCheckOnce();
  void SelfCheckLoop();
  // Shuts the API server down and starts a new one on the same address.
  absl::Status Rebuild();
  void ApplyHealth() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ApiServerOptions options_;
  std::string target_;     // where the self-check connects
  std::string grpc_bind_;  // where gRPC's own listener binds ("" with the agent's listener)
  std::shared_ptr<Metrics> metrics_;
  HealthOnlyServer health_only_;  // no listening port of its own: health_listener feeds it

  mutable absl::Mutex mu_;
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(mu_);
  bool dataplane_serving_ ABSL_GUARDED_BY(mu_) = false;
  bool api_answering_ ABSL_GUARDED_BY(mu_) = true;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;

  absl::Notification stop_self_check_;
  absl::Notification shut_down_;
  std::thread self_check_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_API_SERVER_H_
