#include "agent/api_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "agent/metric_family.h"
#include "dataplane/errno_status.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "openssl/err.h"
#include "openssl/ssl.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr char kService[] = "tunnelagent.v1.TunnelService";

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// A connected stream socket to `target` ("unix:/path", "host:port", "[v6]:port"), connected
// within `deadline`; non-blocking.
absl::StatusOr<int> ConnectTo(const std::string& target, absl::Time deadline) {
  sockaddr_storage address = {};
  socklen_t len = 0;
  if (absl::StartsWith(target, "unix:")) {
    const std::string path = target.substr(5);
    auto* un = reinterpret_cast<sockaddr_un*>(&address);
    if (path.size() >= sizeof un->sun_path) return absl::InvalidArgumentError("path too long");
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path.data(), path.size());
    len = sizeof(sockaddr_un);
  } else {
    const size_t colon = target.rfind(':');
    std::string host = target.substr(0, colon);
    if (absl::StartsWith(host, "[")) host = host.substr(1, host.size() - 2);
    addrinfo hints = {};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (colon == std::string::npos ||
        getaddrinfo(host.c_str(), target.substr(colon + 1).c_str(), &hints, &found) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("not an address: ", target));
    }
    memcpy(&address, found->ai_addr, found->ai_addrlen);
    len = found->ai_addrlen;
    freeaddrinfo(found);
  }
  const int fd = socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return dataplane::ErrnoStatus(errno, "socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), len) != 0 && errno != EINPROGRESS) {
    const int err = errno;
    close(fd);
    return dataplane::ErrnoStatus(err, absl::StrCat("connecting to ", target));
  }
  return fd;
}

// Waits until `fd` is ready for `events`; false at the deadline.
bool WaitFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return false;
    pollfd p = {fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// The check of a TLS listener: a TLS handshake completes, or the server answers it (an alert:
// a listener requiring client certificates refuses the agent's handshake, but answers). A
// listener that no longer accepts leaves the connection in the kernel's backlog and answers
// nothing until the deadline. The server's certificate is not checked: the agent asks itself
// whether it answers, not who it is.
absl::Status TlsHandshakeCheck(const std::string& target, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<int> fd = ConnectTo(target, deadline);
  if (!fd.ok()) return fd.status();
  absl::Status status = absl::OkStatus();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = ctx == nullptr ? nullptr : SSL_new(ctx);
  if (ssl == nullptr) {
    status = absl::ResourceExhaustedError("cannot make a TLS client");
  } else {
    SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl, kAlpn, sizeof kAlpn);
    SSL_set_fd(ssl, *fd);
    for (;;) {
      const int result = SSL_connect(ssl);
      if (result == 1) break;
      const int error = SSL_get_error(ssl, result);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (!WaitFor(*fd, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          status = absl::DeadlineExceededError(absl::StrCat(
              "no TLS handshake from ", target, " within ", absl::FormatDuration(timeout)));
          break;
        }
        continue;
      }
      // SSL_ERROR_SSL: the server took part and refused (e.g. no client certificate).
      if (error != SSL_ERROR_SSL) {
        status = absl::UnavailableError(
            absl::StrCat("TLS handshake with ", target, " failed: connection closed or reset"));
      }
      break;
    }
  }
  ERR_clear_error();
  if (ssl != nullptr) SSL_free(ssl);
  if (ctx != nullptr) SSL_CTX_free(ctx);
  close(*fd);
  return status;
}

}  // namespace

// Read at scrape time; holds no reference to the servers once they are gone.
class ApiServer::Metrics final : public prometheus::Collectable {
 public:
  void Attach(const ApiListener* api, const ApiListener* health) {
    absl::MutexLock lock(&mu_);
    listeners_ = {{"grpc", api}, {"health", health}};
  }
  void Detach() {
    absl::MutexLock lock(&mu_);
    listeners_.clear();
  }
  void CheckFailed() { self_check_failures_.fetch_add(1, std::memory_order_relaxed); }
  void Rebuilt() { rebuilds_.fetch_add(1, std::memory_order_relaxed); }
  void SetAnswering(bool answering) { answering_.store(answering, std::memory_order_relaxed); }

  std::vector<MetricFamily> Collect() const override {
    MetricFamily open = Family("tunnelagent_api_connections",
                               "Connections the agent's own listener has handed to the gRPC "
                               "server and that are still open.",
                               MetricType::Gauge);
    MetricFamily limit =
        Family("tunnelagent_api_connections_limit",
               "Connections the listener allows at once (and per peer).", MetricType::Gauge);
    MetricFamily accepted =
        Family("tunnelagent_api_connections_accepted_total",
               "Connections accepted and handed to the gRPC server.", MetricType::Counter);
    MetricFamily refused =
        Family("tunnelagent_api_connections_refused_total",
               "Connections closed before reaching the gRPC server: the total or the peer's "
               "limit reached, or nothing sent in time (silent).",
               MetricType::Counter);
    MetricFamily accept_failures =
        Family("tunnelagent_api_accept_failures_total",
               "accept(2) failures for want of descriptors or memory (the listener backs off and "
               "retries).",
               MetricType::Counter);
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [name, listener] : listeners_) {
        if (listener == nullptr) continue;
        const ListenerStats& stats = listener->stats();
        const std::string l(name);
        AddSample(open, {{"listener", l}}, static_cast<double>(listener->open_connections()));
        AddSample(limit, {{"listener", l}, {"scope", "total"}},
                  static_cast<double>(listener->limits().max_connections));
        AddSample(limit, {{"listener", l}, {"scope", "peer"}},
                  static_cast<double>(listener->limits().max_connections_per_peer));
        AddSample(accepted, {{"listener", l}}, static_cast<double>(stats.accepted.load()));
        AddSample(refused, {{"listener", l}, {"reason", "total_limit"}},
                  static_cast<double>(stats.refused_total.load()));
        AddSample(refused, {{"listener", l}, {"reason", "peer_limit"}},
                  static_cast<double>(stats.refused_per_peer.load()));
        AddSample(refused, {{"listener", l}, {"reason", "silent"}},
                  static_cast<double>(stats.closed_silent.load()));
        AddSample(accept_failures, {{"listener", l}},
                  static_cast<double>(stats.accept_failures.load()));
      }
    }
    MetricFamily answering = Family("tunnelagent_api_self_check_ok",
                                    "1 while the agent's periodic call of its own API answers "
                                    "(0 after several failures in a row: health NOT_SERVING).",
                                    MetricType::Gauge);
    AddSample(answering, {}, answering_.load() ? 1 : 0);
    MetricFamily failures = Family("tunnelagent_api_self_check_failures_total",
                                   "Self-checks of the API that failed.", MetricType::Counter);
    AddSample(failures, {}, static_cast<double>(self_check_failures_.load()));
    MetricFamily rebuilds =
        Family("tunnelagent_api_server_rebuilds_total",
               "Times the gRPC server was shut down and started again on the same address "
               "because its own listener stopped answering.",
               MetricType::Counter);
    AddSample(rebuilds, {}, static_cast<double>(rebuilds_.load()));
    return {std::move(open),     std::move(limit),           std::move(accepted),
            std::move(refused),  std::move(accept_failures), std::move(answering),
            std::move(failures), std::move(rebuilds)};
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::pair<absl::string_view, const ApiListener*>> listeners_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> self_check_failures_{0};
  std::atomic<uint64_t> rebuilds_{0};
  std::atomic<bool> answering_{true};
};

ApiServer::ApiServer(ApiServerOptions options)
    : options_(std::move(options)), metrics_(std::make_shared<Metrics>()) {}

absl::StatusOr<std::unique_ptr<grpc::Server>> ApiServer::BuildServer() {
  grpc::ServerBuilder builder;
  int port = 0;
  if (!grpc_bind_.empty()) {
    builder.AddListeningPort(grpc_bind_, MakeServerCredentials(options_.security), &port);
  }
  ApplyServerLimits(options_.limits, &builder);
  options_.add_services(&builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr ||
      (!grpc_bind_.empty() && !absl::StartsWith(grpc_bind_, "unix:") && port == 0)) {
    return absl::UnavailableError(absl::StrCat("grpc: cannot listen on ", options_.listen));
  }
  if (!grpc_bind_.empty() && !absl::StartsWith(grpc_bind_, "unix:")) {
    // Port 0 asked for one: a rebuild binds the same one, and the self-check calls it.
    const size_t colon = grpc_bind_.rfind(':');
    grpc_bind_ = absl::StrCat(grpc_bind_.substr(0, colon), ":", port);
    std::string host = grpc_bind_.substr(0, colon);
    if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
    if (host == "[::]") host = "[::1]";
    if (host == "localhost") host = "127.0.0.1";
    target_ = absl::StrCat(host, ":", port);
  }
  return server;
}

absl::StatusOr<std::unique_ptr<ApiServer>> ApiServer::Start(ApiServerOptions options,
                                                            bool dataplane_serving) {
  std::unique_ptr<ApiServer> api(new ApiServer(std::move(options)));
  ApiServerOptions& o = api->options_;
  if (o.listener != nullptr) {
    api->target_ = o.listener->target();
  } else if (o.staged.has_value()) {
    api->grpc_bind_ = absl::StrCat("unix:", o.staged->staging_path());
    api->target_ = absl::StrCat("unix:", *UnixSocketPathOf(o.listen));
  } else {
    api->grpc_bind_ = o.listen;
    api->target_ = o.listen;
  }
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = api->BuildServer();
  if (!server.ok()) return server.status();
  if (o.health_listener != nullptr) {
    absl::StatusOr<HealthOnlyServer> health =
        StartHealthOnlyServer(o.health_listener->target(), /*own_port=*/false);
    if (!health.ok()) {
      (*server)->Shutdown(std::chrono::system_clock::now());
      return health.status();
    }
    api->health_only_ = *std::move(health);
  }
  {
    absl::MutexLock lock(&api->mu_);
    api->server_ = *std::move(server);
    api->dataplane_serving_ = dataplane_serving;
    api->ApplyHealth();
  }
  // Clients come in only now, with health set.
  if (o.staged.has_value()) {
    if (absl::Status status = o.staged->Publish(o.socket_group); !status.ok()) {
      api->Shutdown(absl::ZeroDuration());
      return absl::Status(status.code(),
                          absl::StrCat("--grpc_listen=", o.listen, ": ", status.message()));
    }
  }
  {
    absl::MutexLock lock(&api->mu_);
    if (o.listener != nullptr) o.listener->Start(api->server_.get());
  }
  if (o.health_listener != nullptr) o.health_listener->Start(api->health_only_.server.get());
  api->metrics_->Attach(o.listener.get(), o.health_listener.get());
  if (o.self_check.interval > absl::ZeroDuration()) {
    api->self_check_ = std::thread([raw = api.get()] { raw->SelfCheckLoop(); });
  }
  return api;
}

std::shared_ptr<prometheus::Collectable> ApiServer::metrics() const { return metrics_; }

ApiServer::~ApiServer() {
  Shutdown();
  metrics_->Detach();
}

void ApiServer::ApplyHealth() {
  const bool serving = dataplane_serving_ && api_answering_ && !shutting_down_;
  for (grpc::Server* each : {server_.get(), health_only_.server.get()}) {
    if (each == nullptr || each->GetHealthCheckService() == nullptr) continue;
    each->GetHealthCheckService()->SetServingStatus("", serving);
    each->GetHealthCheckService()->SetServingStatus(kService, serving);
  }
}

void ApiServer::SetDataplaneServing(bool serving) {
  absl::MutexLock lock(&mu_);
  dataplane_serving_ = serving;
  ApplyHealth();
}

bool ApiServer::api_answering() const {
  absl::MutexLock lock(&mu_);
  return api_answering_;
}

absl::Status ApiServer::SelfCheckOnce() {
  if (options_.security.tls) return TlsHandshakeCheck(target_, options_.self_check.timeout);
  grpc::ChannelArguments args;
  // A connection of its own each time: a listener that stopped accepting would go unnoticed
  // on a connection made before.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target_, grpc::InsecureChannelCredentials(), args);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(options_.self_check.timeout));
  if (!options_.security.auth_token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.security.auth_token));
  }
  v1::AgentInfo info;
  grpc::Status status =
      v1::TunnelService::NewStub(channel)->GetAgentInfo(&context, v1::GetAgentInfoRequest(), &info);
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat("GetAgentInfo on ", target_, ": ", status.error_message()));
}

absl::Status ApiServer::Rebuild() {
  std::unique_ptr<grpc::Server> old;
  {
    absl::MutexLock lock(&mu_);
    old = std::move(server_);
  }
  if (old != nullptr) {
    old->Shutdown(DeadlineIn(absl::Seconds(1)));
    old.reset();
  }
  if (options_.staged.has_value()) {
    // A new private directory and socket, published over the old one (stale by now).
    absl::StatusOr<StagedUnixSocket> staged =
        StagedUnixSocket::Prepare(*UnixSocketPathOf(options_.listen));
    if (!staged.ok()) return staged.status();
    options_.staged.reset();
    options_.staged.emplace(*std::move(staged));
    grpc_bind_ = absl::StrCat("unix:", options_.staged->staging_path());
  }
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = BuildServer();
  if (!server.ok()) return server.status();
  {
    absl::MutexLock lock(&mu_);
    server_ = *std::move(server);
    ApplyHealth();
  }
  if (options_.staged.has_value()) return options_.staged->Publish(options_.socket_group);
  return absl::OkStatus();
}

void ApiServer::SelfCheckLoop() {
  const SelfCheckOptions& check = options_.self_check;
  int failed = 0;  // in a row
  absl::Time reminded = absl::InfinitePast();
  absl::Time failing_since = absl::InfinitePast();
  while (!stop_self_check_.WaitForNotificationWithTimeout(check.interval)) {
    absl::Status status = SelfCheckOnce();
    if (stop_self_check_.HasBeenNotified()) return;
    if (status.ok()) {
      if (failed >= check.failures) {
        Log("INFO", "health: the API answers its own calls on %s again after %s", target_,
            absl::FormatDuration(absl::Trunc(absl::Now() - failing_since, absl::Seconds(1))));
        absl::MutexLock lock(&mu_);
        api_answering_ = true;
        ApplyHealth();
      }
      failed = 0;
      metrics_->SetAnswering(true);
      continue;
    }
    metrics_->CheckFailed();
    if (++failed < check.failures) {
      Log("WARNING", "health: self-check %d of %d failed: %s", failed, check.failures,
          status.message());
      continue;
    }
    if (failed == check.failures) {
      failing_since = absl::Now();
      reminded = absl::Now();
      Log("ERROR",
          "health: NOT_SERVING: the API does not answer its own calls on %s (%d in a row): %s",
          target_, failed, status.message());
      metrics_->SetAnswering(false);
      absl::MutexLock lock(&mu_);
      api_answering_ = false;
      ApplyHealth();
    } else if (absl::Now() - reminded >= check.reminder) {
      reminded = absl::Now();
      Log("ERROR", "health: NOT_SERVING: the API still does not answer on %s, for %s: %s", target_,
          absl::FormatDuration(absl::Trunc(absl::Now() - failing_since, absl::Seconds(1))),
          status.message());
    }
    // gRPC's own listener does not recover by itself: a new server on the same address does.
    // Again after every `failures` more, while it keeps failing.
    if (options_.listener == nullptr && failed % check.failures == 0) {
      Log("WARNING", "grpc: rebuilding the server on %s", options_.listen);
      metrics_->Rebuilt();
      if (absl::Status rebuilt = Rebuild(); !rebuilt.ok()) {
        Log("ERROR", "grpc: rebuilding the server on %s failed: %s; trying again later",
            options_.listen, rebuilt.message());
      } else {
        Log("INFO", "grpc: server rebuilt, serving on %s again", options_.listen);
      }
    }
  }
}

void ApiServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
    // NOT_SERVING from here on, whatever the dataplane and the self-check say meanwhile.
    for (grpc::Server* each : {server_.get(), health_only_.server.get()}) {
      if (each != nullptr && each->GetHealthCheckService() != nullptr) {
        each->GetHealthCheckService()->Shutdown();
      }
    }
  }
  stop_self_check_.Notify();
  if (self_check_.joinable()) self_check_.join();  // a rebuild in progress finishes first
  // No connection may be handed to a server that is shutting down.
  if (options_.listener != nullptr) options_.listener->Stop();
  if (options_.health_listener != nullptr) options_.health_listener->Stop();
  grpc::Server* server = nullptr;
  {
    absl::MutexLock lock(&mu_);
    server = server_.get();
  }
  if (server != nullptr) server->Shutdown(DeadlineIn(grace));
  if (health_only_.server != nullptr) health_only_.server->Shutdown(DeadlineIn(absl::Seconds(1)));
  shut_down_.Notify();
}

void ApiServer::Wait() { shut_down_.WaitForNotification(); }

}  // namespace tunnelagent::agent
