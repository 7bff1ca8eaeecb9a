#include "agent/server_security.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"
#include "grpc/slice.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace tunnelagent::agent {
namespace {

constexpr char kUnauthenticated[] = "missing or invalid bearer token";
constexpr size_t kMaxFileBytes = 1 << 20;  // PEM bundles and tokens are far smaller

// The host of a gRPC listen address "host:port", "[v6]:port", "host" or a bare IPv6 literal;
// false when it does not parse.
bool ListenHost(absl::string_view listen, absl::string_view* host) {
  if (absl::StartsWith(listen, "[")) {
    size_t close = listen.find(']');
    if (close == absl::string_view::npos) return false;
    absl::string_view rest = listen.substr(close + 1);
    if (!rest.empty() && !absl::StartsWith(rest, ":")) return false;
    *host = listen.substr(1, close - 1);
    return true;
  }
  size_t colon = listen.find(':');
  if (colon == absl::string_view::npos) {
    *host = listen;  // no port
  } else if (listen.find(':', colon + 1) != absl::string_view::npos) {
    *host = listen;  // more than one colon, no brackets: an IPv6 literal without a port
  } else {
    *host = listen.substr(0, colon);
  }
  return true;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& flag, const std::string& path) {
  FILE* file = fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--%s: cannot read %s: %s", flag, path, strerror(errno)));
  }
  std::string data(kMaxFileBytes + 1, '\0');
  size_t n = fread(data.data(), 1, data.size(), file);
  int read_errno = ferror(file) ? errno : 0;
  fclose(file);
  if (read_errno != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--%s: cannot read %s: %s", flag, path, strerror(read_errno)));
  }
  if (n > kMaxFileBytes) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--%s: %s is larger than %d bytes", flag, path, kMaxFileBytes));
  }
  data.resize(n);
  return data;
}

// PEM is parsed with OpenSSL's libcrypto, the TLS library gRPC itself links (gRPC::grpc brings
// OpenSSL::Crypto): a bad file is named at startup, before anything is touched, rather than
// found by gRPC when it binds the port.

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* x509) const { X509_free(x509); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& data) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

// An encrypted key is an error, not a passphrase prompt on the terminal.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// The certificates of a PEM bundle, in order; empty when there is none.
std::vector<std::unique_ptr<X509, X509Free>> ParseCertificates(const std::string& pem) {
  std::vector<std::unique_ptr<X509, X509Free>> certificates;
  auto bio = MemoryBio(pem);
  while (X509* x509 = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certificates.emplace_back(x509);
  }
  ERR_clear_error();  // the end of the bundle reads as an error
  return certificates;
}

// Reads --tls_cert, --tls_key and --tls_client_ca into `security`, checking that they parse and
// that the key is the one of the (first) certificate.
absl::Status ReadTlsFiles(const ServerSecurityFlags& flags, ServerSecurity* security) {
  absl::StatusOr<std::string> cert = ReadSmallFile("tls_cert", flags.tls_cert);
  if (!cert.ok()) return cert.status();
  auto chain = ParseCertificates(*cert);
  if (chain.empty()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--tls_cert: %s holds no PEM certificate", flags.tls_cert));
  }
  absl::StatusOr<std::string> key_pem = ReadSmallFile("tls_key", flags.tls_key);
  if (!key_pem.ok()) return key_pem.status();
  auto bio = MemoryBio(*key_pem);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        absl::StrFormat("--tls_key: %s holds no unencrypted PEM private key", flags.tls_key));
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        absl::StrFormat("--tls_key: %s is not the private key of the certificate in %s",
                        flags.tls_key, flags.tls_cert));
  }
  security->cert_chain_pem = *std::move(cert);
  security->private_key_pem = *std::move(key_pem);
  if (!flags.tls_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadSmallFile("tls_client_ca", flags.tls_client_ca);
    if (!ca.ok()) return ca.status();
    if (ParseCertificates(*ca).empty()) {
      return absl::FailedPreconditionError(
          absl::StrFormat("--tls_client_ca: %s holds no PEM certificate", flags.tls_client_ca));
    }
    security->client_ca_pem = *std::move(ca);
  }
  return absl::OkStatus();
}

// The bearer check as gRPC core's auth metadata processor: runs in the server auth filter for
// every call before it reaches a service, on TLS and plaintext connections alike. `state` is
// the expected token (a std::string).
void ProcessBearerToken(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md,
                        size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  const std::string& token = *static_cast<const std::string*>(state);
  auto view = [](const grpc_slice& slice) {
    return absl::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(slice)),
                             GRPC_SLICE_LENGTH(slice));
  };
  absl::string_view path;
  std::vector<absl::string_view> authorization;
  std::vector<grpc_metadata> consumed;  // the token is not passed on to the services
  for (size_t i = 0; i < num_md; ++i) {
    absl::string_view key = view(md[i].key);
    if (key == ":path") {
      path = view(md[i].value);
    } else if (key == "authorization") {
      authorization.push_back(view(md[i].value));
      consumed.push_back(md[i]);
    }
  }
  absl::Status status = CheckBearerToken(path, authorization, token);
  if (status.ok()) {
    done(user_data, consumed.data(), consumed.size(), nullptr, 0, GRPC_STATUS_OK, nullptr);
  } else {
    done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED, kUnauthenticated);
  }
}

void DestroyBearerToken(void* state) { delete static_cast<std::string*>(state); }

// grpc::ServerCredentials over gRPC core's credentials, built here so that the bearer check can
// be attached to plaintext credentials too (grpc::InsecureServerCredentials() takes no auth
// metadata processor). The ServerCredentials base initializes gRPC before the body runs.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  explicit CoreServerCredentials(const ServerSecurity& security) {
    if (security.tls) {
      grpc_ssl_pem_key_cert_pair pair = {security.private_key_pem.c_str(),
                                         security.cert_chain_pem.c_str()};
      bool mutual = !security.client_ca_pem.empty();
      // Copies the PEM strings.
      creds_ = grpc_ssl_server_credentials_create_ex(
          mutual ? security.client_ca_pem.c_str() : nullptr, &pair, 1,
          mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          nullptr);
    } else {
      creds_ = grpc_insecure_server_credentials_create();
    }
    if (!security.auth_token.empty()) {
      grpc_auth_metadata_processor processor;
      processor.process = ProcessBearerToken;
      processor.destroy = DestroyBearerToken;
      processor.state = new std::string(security.auth_token);
      grpc_server_credentials_set_auth_metadata_processor(creds_, processor);
    }
  }
  ~CoreServerCredentials() override { grpc_server_credentials_release(creds_); }

  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>& /*processor*/) override {
    // The bearer check is attached in the constructor; nothing else may replace it.
    fputs("CoreServerCredentials: SetAuthMetadataProcessor is not supported\n", stderr);
    abort();
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* creds_ = nullptr;
};

// Drops the server builder plugins, server reflection's among them: the plugin registers
// itself for every ServerBuilder of the process when its library loads.
class WithoutPlugins final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

}  // namespace

bool IsLocalListenAddress(absl::string_view listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) {
    return true;
  }
  absl::string_view host;
  if (!ListenHost(listen, &host) || host.empty()) return false;
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  const std::string host_string(host);
  in_addr v4;
  if (inet_pton(AF_INET, host_string.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, host_string.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

absl::StatusOr<std::string> ReadAuthToken(const std::string& path) {
  absl::StatusOr<std::string> data = ReadSmallFile("auth_token_file", path);
  if (!data.ok()) return data.status();
  absl::string_view token = absl::StripAsciiWhitespace(*data);
  if (token.empty()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--auth_token_file: %s is empty: put the bearer token in it", path));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c > 0x7e) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "--auth_token_file: the token in %s has a character a header cannot carry (byte "
          "0x%02x at offset %d): use printable ASCII on one line",
          path, c, i));
    }
  }
  return std::string(token);
}

absl::StatusOr<ServerSecurity> ResolveServerSecurity(const ServerSecurityFlags& flags) {
  if (flags.tls_cert.empty() != flags.tls_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        flags.tls_cert.empty() ? "--tls_key without --tls_cert" : "--tls_cert without --tls_key",
        ": pass both, the PEM files of the server's certificate chain and private key"));
  }
  ServerSecurity security;
  security.tls = !flags.tls_cert.empty();
  if (!flags.tls_client_ca.empty() && !security.tls) {
    return absl::InvalidArgumentError(
        "--tls_client_ca needs TLS: pass --tls_cert and --tls_key too");
  }
  if (!security.tls && !flags.insecure && !IsLocalListenAddress(flags.listen)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "refusing to serve plaintext gRPC on %s, which is not a loopback address or a unix "
        "socket: pass --tls_cert and --tls_key to serve TLS, or --insecure to allow plaintext",
        flags.listen));
  }
  // Loopback TCP (and an abstract unix socket) has no file permissions: every user and
  // process of the host could create tunnels and reroute its traffic. A unix socket path is
  // guarded by its mode and group.
  if (!security.tls && !flags.insecure && flags.auth_token_file.empty() &&
      !absl::StartsWith(flags.listen, "unix:")) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "refusing to serve plaintext gRPC on %s without a bearer token, as every local user "
        "could call it: pass --auth_token_file, or --tls_cert and --tls_key, or --insecure to "
        "allow it (or listen on a unix: socket)",
        flags.listen));
  }
  if (security.tls) {
    if (absl::Status status = ReadTlsFiles(flags, &security); !status.ok()) return status;
  }
  if (!flags.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadAuthToken(flags.auth_token_file);
    if (!token.ok()) return token.status();
    security.auth_token = *std::move(token);
  }
  return security;
}

bool IsAuthExempt(absl::string_view method_path) {
  return absl::StartsWith(method_path, "/grpc.health.v1.Health/");
}

bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected) {
  // Every byte of `presented` is looked at, against the expected token repeated: the time
  // tells the length of what was presented, nothing of what was expected.
  volatile unsigned char diff = presented.size() != expected.size() ? 1 : 0;
  const size_t n = expected.empty() ? 1 : expected.size();
  for (size_t i = 0; i < presented.size(); ++i) {
    unsigned char want = expected.empty() ? 0 : static_cast<unsigned char>(expected[i % n]);
    diff = diff | (static_cast<unsigned char>(presented[i]) ^ want);
  }
  return diff == 0;
}

absl::Status CheckBearerToken(absl::string_view method_path,
                              absl::Span<const absl::string_view> authorization,
                              absl::string_view token) {
  if (token.empty() || IsAuthExempt(method_path)) return absl::OkStatus();
  constexpr absl::string_view kScheme = "bearer ";
  bool valid = false;
  for (absl::string_view value : authorization) {
    if (value.size() <= kScheme.size() ||
        !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
      continue;
    }
    absl::string_view presented = absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size()));
    if (ConstantTimeEquals(presented, token)) valid = true;
  }
  return valid ? absl::OkStatus() : absl::UnauthenticatedError(kUnauthenticated);
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const ServerSecurity& security) {
  return std::make_shared<CoreServerCredentials>(security);
}

std::string DescribeServerSecurity(const ServerSecurity& security) {
  std::vector<std::string> parts;
  if (!security.tls) {
    parts.push_back("plaintext");
  } else if (security.client_ca_pem.empty()) {
    parts.push_back("TLS");
  } else {
    parts.push_back("TLS, client certificates required");
  }
  parts.push_back(security.auth_token.empty() ? "no bearer token"
                                              : "bearer token required (health exempt)");
  return absl::StrJoin(parts, ", ");
}

void ApplyServerLimits(const ServerLimits& limits, grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(limits.max_receive_message_bytes);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams);
  grpc::ResourceQuota quota("tunnel-agent");
  quota.SetMaxThreads(limits.max_threads);
  builder->SetResourceQuota(quota);
  // Keepalive: the server pings a quiet connection, with or without calls (a watcher waiting
  // for events is quiet), and closes it when the ping goes unanswered; its calls are cancelled
  // and their threads return. No cap on pings without data, or an idle watcher's connection
  // would stop being probed after two.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, limits.keepalive_time_ms);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, limits.keepalive_timeout_ms);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients' own keepalive pings are accepted down to this interval, with no call open too;
  // faster ones are strikes, and two strikes close the connection (GOAWAY too_many_pings).
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              limits.min_client_ping_interval_ms);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, limits.max_connection_idle_ms);
  builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, limits.handshake_timeout_ms);
}

absl::StatusOr<HealthOnlyServer> StartHealthOnlyServer(const std::string& listen, bool own_port) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--health_listen=", listen, ": want host:port (it is for probes over TCP)"));
  }
  HealthOnlyServer health;
  health.unimplemented = std::make_unique<grpc::CallbackGenericService>();
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<WithoutPlugins>());
  if (own_port) builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &health.port);
  builder.RegisterCallbackGenericService(health.unimplemented.get());
  ServerLimits limits;
  limits.max_receive_message_bytes = 4096;  // a HealthCheckRequest is a service name
  limits.max_threads = 8;
  ApplyServerLimits(limits, &builder);
  health.server = builder.BuildAndStart();
  if (health.server == nullptr || (own_port && health.port == 0)) {
    return absl::UnavailableError(absl::StrCat("--health_listen: cannot listen on ", listen));
  }
  if (health.server->GetHealthCheckService() == nullptr) {
    health.server->Shutdown();
    return absl::FailedPreconditionError("the default health service is not enabled");
  }
  return health;
}

}  // namespace tunnelagent::agent
