// Security and bounds of the agent's gRPC server: which listen addresses may serve plaintext,
// TLS and mutual TLS from PEM files, a bearer token required on every call but health, and
// limits on messages, streams, threads and dead connections.
//
// The bearer token is checked in gRPC core's server auth filter (an auth metadata processor on
// the server credentials), before a call reaches any service: a rejected call never runs its
// handler and the client sees UNAUTHENTICATED. This works alike for TLS and plaintext
// (loopback, unix sockets, --insecure), and covers every service registered now or later.
#ifndef TUNNELAGENT_AGENT_SERVER_SECURITY_H_
#define TUNNELAGENT_AGENT_SERVER_SECURITY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace tunnelagent::agent {

// True when a server on `listen` (a --grpc_listen value) can only be reached from this host:
// unix: and unix-abstract: sockets, localhost, 127.0.0.0/8, ::1 (also ::ffff:127.x.y.z).
// Everything else is false: wildcard addresses (0.0.0.0, [::], an empty host), real addresses,
// other host names, and anything that does not parse.
bool IsLocalListenAddress(absl::string_view listen);

// The security flags of tunnel-agent, as given (file paths; empty = not given).
struct ServerSecurityFlags {
  std::string listen;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  bool insecure = false;
  std::string auth_token_file;
};

// What the flags come to, with the files read.
struct ServerSecurity {
  bool tls = false;  // else plaintext
  std::string cert_chain_pem;
  std::string private_key_pem;
  std::string client_ca_pem;  // non-empty: mutual TLS, client certificates signed by it
  std::string auth_token;     // non-empty: every call but health needs it
};

// Checks the flags together and reads their files. The error is one line saying what is wrong
// and what to pass; the agent prints it and exits 1. Unless `insecure` is set, plaintext is
// refused on a listen address that is not local (IsLocalListenAddress), and on a local one
// other than a unix socket path (loopback TCP, unix-abstract:) without a bearer token: only a
// unix socket's file mode keeps other local users out.
absl::StatusOr<ServerSecurity> ResolveServerSecurity(const ServerSecurityFlags& flags);

// The token in `path`, surrounding whitespace trimmed. An empty file, or a token with a
// character that cannot travel in an HTTP/2 header value, is an error.
absl::StatusOr<std::string> ReadAuthToken(const std::string& path);

// Methods (":path", like "/grpc.health.v1.Health/Check") callable without the token, so that
// probes (Kubernetes, load balancers) need no secret: grpc.health.v1.Health/*.
bool IsAuthExempt(absl::string_view method_path);

// The bearer check of one call. `authorization` holds the call's `authorization` metadata
// values; one must be "Bearer <token>" (the scheme case-insensitive), compared in time
// independent of the expected token. OK or UNAUTHENTICATED "missing or invalid bearer token".
// An empty `token` means no token is required.
absl::Status CheckBearerToken(absl::string_view method_path,
                              absl::Span<const absl::string_view> authorization,
                              absl::string_view token);

// Equality of two strings in time that depends only on the length of `presented`.
bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected);

// Server credentials for `security`: TLS (requiring client certificates when client_ca_pem is
// set) or plaintext, with the bearer check of CheckBearerToken attached when auth_token is set.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const ServerSecurity& security);

// One line for the startup log: "TLS, client certificates required, bearer token required".
std::string DescribeServerSecurity(const ServerSecurity& security);

// Bounds on what clients can make the server hold.
struct ServerLimits {
  int max_receive_message_bytes = 4 << 20;  // larger requests: RESOURCE_EXHAUSTED
  int max_concurrent_streams = 64;          // per connection (HTTP/2 SETTINGS)
  // All gRPC sync-server threads, pollers included; a call beyond gets RESOURCE_EXHAUSTED. Only
  // server reflection (gRPC's plugin) is synchronous: each open reflection stream holds one of
  // these, and competes only with other reflection streams. The API, health and watch streams
  // run on the callback API and hold no thread.
  int max_threads = 64;
  int keepalive_time_ms = 60'000;            // ping a connection quiet for this long
  int keepalive_timeout_ms = 20'000;         // and close it if the ping is not answered
  int min_client_ping_interval_ms = 10'000;  // clients may ping this often, even with no call
  // Close connections without calls for this long: an idle client holds a descriptor and a
  // place under the connection caps; gRPC clients reconnect by themselves on their next call.
  int max_connection_idle_ms = 2 * 60'000;
  // TLS handshake and HTTP/2 preface on gRPC's own listener: a connection that never gets
  // through them is closed this soon. (The agent's own listener closes silent connections
  // itself: ListenerLimits::first_bytes_timeout.)
  int handshake_timeout_ms = 5'000;
};

// Applies `limits` to `builder`: message size, HTTP/2 streams, a ResourceQuota of threads,
// keepalive (dead clients are found and their calls and threads released), idle and
// handshake timeouts.
void ApplyServerLimits(const ServerLimits& limits, grpc::ServerBuilder* builder);

// A second server that answers grpc.health.v1.Health and nothing else, in plaintext on
// `listen` (host:port), for probes that carry neither a token nor a certificate (kubelet's
// native gRPC probes): the main listener can then require both. Server reflection, which gRPC
// adds to every server once it is linked, is left out; any other method is UNIMPLEMENTED.
// Its health statuses are set through server->GetHealthCheckService(). The default health
// service must be enabled (grpc::EnableDefaultHealthCheckService) before the call.
struct HealthOnlyServer {
  // Answers every other method UNIMPLEMENTED; declared first, so it outlives the server. (A
  // server needs a service of its own to start; the health service is added as it starts.)
  std::unique_ptr<grpc::CallbackGenericService> unimplemented;
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the port bound (for a listen address with port 0)
};
// With `own_port` false the server binds nothing: connections come from the agent's own
// listener (ApiListener::Start), and `listen` only names it in errors.
absl::StatusOr<HealthOnlyServer> StartHealthOnlyServer(const std::string& listen,
                                                       bool own_port = true);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_SERVER_SECURITY_H_
