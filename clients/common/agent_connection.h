// How clients of tunnel-agent (tunnelctl, tunnel-controller) reach an agent: the TLS options
// and bearer token they take, the files those name read and checked, and the gRPC channel.
// Shared so that every client speaks to the agent the same way.
#ifndef TUNNELAGENT_CLIENTS_COMMON_AGENT_CONNECTION_H_
#define TUNNELAGENT_CLIENTS_COMMON_AGENT_CONNECTION_H_

#include <istream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace tunnelagent::clients {

// How to reach the agent. Any of the TLS fields implies `enabled`.
struct TlsOptions {
  bool enabled = false;
  // PEM file of the CAs to trust; empty: the system's roots.
  std::string ca_file;
  // PEM files of the client certificate (chain) and its key, for mTLS; both or neither.
  std::string cert_file;
  std::string key_file;
  // The name to expect in the agent's certificate instead of the target's host.
  std::string server_name;

  bool operator==(const TlsOptions& other) const {
    return enabled == other.enabled && ca_file == other.ca_file && cert_file == other.cert_file &&
           key_file == other.key_file && server_name == other.server_name;
  }
};

// The names under which the files of a connection are reported in errors ("--tls_ca" for
// tunnelctl, "nodes[2].tls.ca" for a fleet file).
struct CredentialSources {
  std::string token_file = "--token_file";
  std::string env_token = "$TUNNELCTL_TOKEN";
  std::string ca_file = "--tls_ca";
  std::string cert_file = "--tls_cert";
  std::string key_file = "--tls_key";
};

// What a connection needs, read and checked.
struct Credentials {
  // Bearer token, or empty: none.
  std::string token;
  // Insecure, or TLS as the TlsOptions said.
  std::shared_ptr<grpc::ChannelCredentials> channel;
};

// Reads the token (token_file, else env_token; both empty: none) and the TLS files; "-" reads
// `in`. Errors are InvalidArgument, one line naming the source and file: "--tls_ca: ca.pem:
// not PEM".
absl::StatusOr<Credentials> LoadCredentials(const TlsOptions& tls, const std::string& token_file,
                                            const std::string& env_token, std::istream& in,
                                            const CredentialSources& sources = {});

// A file's contents; "-" reads all of `in`. Errors name the file.
absl::StatusOr<std::string> ReadInputFile(const std::string& path, std::istream& in);

// A token as sent in `authorization: Bearer <token>`: surrounding white space removed;
// must then be non-empty visible ASCII. `source` names where it came from, for errors.
absl::StatusOr<std::string> CheckToken(absl::string_view token, absl::string_view source);

// First reconnect backoff of the channels Dial makes (gRPC's default is 1 s): short, so that a
// retry finds a restarted agent. (Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: that is also the
// minimum time a connection attempt is given.)
inline constexpr int kInitialReconnectBackoffMs = 100;

// The agent's usual TCP port (deploy/kubernetes has it listen there): what a target naming a
// host alone is given. gRPC would take 443, the HTTPS port, where no agent listens.
inline constexpr int kDefaultAgentPort = 50051;

// `target` with kDefaultAgentPort when it names a host alone ("localhost", "198.18.0.1",
// "[::1]", "::1"); anything else (host:port, unix:/path, a gRPC scheme such as dns:) as it is.
std::string WithDefaultPort(const std::string& target);

// A channel to `target` ("host:port", a host alone for kDefaultAgentPort, or "unix:/path")
// with `credentials`, reconnecting quickly after a failure; tls.server_name overrides the name
// expected in the agent's certificate. `args` may carry more channel arguments.
std::shared_ptr<grpc::Channel> Dial(const std::string& target, const TlsOptions& tls,
                                    const Credentials& credentials,
                                    grpc::ChannelArguments args = {});

// Adds `authorization: Bearer <token>` to `context` when token is not empty.
void AddToken(grpc::ClientContext* context, const std::string& token);

// "UNAVAILABLE", "NOT_FOUND", ... for a canonical gRPC status code; "CODE_<n>" otherwise.
std::string StatusCodeName(int code);

// "<method>: <code name>: <message>" on one line (line breaks in the message become spaces;
// no ": <message>" when it is empty, except that an UNIMPLEMENTED says the agent lacks the
// call), without a trailing newline.
std::string FormatRpcError(absl::string_view method, int code, absl::string_view message);

}  // namespace tunnelagent::clients

#endif  // TUNNELAGENT_CLIENTS_COMMON_AGENT_CONNECTION_H_
