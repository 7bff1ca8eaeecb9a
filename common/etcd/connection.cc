#include "common/etcd/connection.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/etcd/endpoints.h"
#include "common/etcd/tls.h"

namespace tunnelagent::etcd {
namespace {

// round_robin: a connection to every member, calls spread over those that are up, a member
// that goes away skipped at once (pick_first would keep one connection and find the next
// member only after that one failed). Reads, which change nothing, are retried on
// UNAVAILABLE within their deadline, so that a member dying under a read is not an error;
// writes are not (a write may have been applied before its answer was lost).
constexpr char kServiceConfig[] = R"json({
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "etcdserverpb.KV", "method": "Range"},
             {"service": "v3electionpb.Election", "method": "Leader"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
  }]
})json";

grpc::ChannelArguments ChannelArguments(const std::vector<Endpoint>& endpoints) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kServiceConfig);
  args.SetInt(GRPC_ARG_SERVICE_CONFIG_DISABLE_RESOLUTION, 1);
  // One name for the channel (the authority, the TLS server name sent): the first endpoint's,
  // rather than the list gRPC would make of an ipv4: target.
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, endpoints.front().HostPort());
  // A member that comes back is used again within a second, not after gRPC's backoff of up to
  // two minutes; trying a dead member's address once a second costs nothing worth saving.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A member that vanished without closing its connections (a host down, a partition) is
  // noticed within 15 s while a watch or call is open. etcd's servers refuse pings more often
  // than every 5 s (--grpc-keepalive-min-time) and pings without a call.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A watch catching up sends up to 1000 revisions in one message.
  args.SetMaxReceiveMessageSize(-1);
  return args;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Connection>> Connection::Create(const ClientOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoint given");
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("etcd call_timeout must be positive");
  }
  if (options.username.empty() && !options.password.empty()) {
    return absl::InvalidArgumentError("etcd password given without a user name");
  }
  std::vector<Endpoint> endpoints;
  bool any_http = false;
  bool any_https = false;
  for (const std::string& text : options.endpoints) {
    absl::StatusOr<Endpoint> endpoint = ParseEndpoint(text);
    if (!endpoint.ok()) return endpoint.status();
    any_http |= endpoint->scheme == Endpoint::Scheme::kHttp;
    any_https |= endpoint->scheme == Endpoint::Scheme::kHttps;
    endpoints.push_back(*std::move(endpoint));
  }
  // One channel has one kind of credentials.
  if (any_http && any_https) {
    return absl::InvalidArgumentError(
        "etcd endpoints mix http:// and https://: all of them speak TLS or none");
  }
  const bool tls = any_https || !options.ca_file.empty() || !options.cert_file.empty() ||
                   !options.key_file.empty();

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (tls) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> made =
        TlsCredentials(options, endpoints);
    if (!made.ok()) return made.status();
    credentials = *std::move(made);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  absl::StatusOr<std::string> target = ChannelTarget(endpoints);
  if (!target.ok()) return target.status();

  std::shared_ptr<Connection> connection(new Connection(options));
  connection->channel_ =
      grpc::CreateCustomChannel(*target, credentials, ChannelArguments(endpoints));
  connection->kv_ = etcdserverpb::KV::NewStub(connection->channel_);
  connection->watch_ = etcdserverpb::Watch::NewStub(connection->channel_);
  connection->lease_ = etcdserverpb::Lease::NewStub(connection->channel_);
  connection->auth_ = etcdserverpb::Auth::NewStub(connection->channel_);
  connection->election_ = v3electionpb::Election::NewStub(connection->channel_);
  connection->watcher_ = std::thread([c = connection.get()] { c->WatchChannel(); });
  return connection;
}

Connection::~Connection() {
  stopping_ = true;
  if (watcher_.joinable()) watcher_.join();
}

// gRPC's synchronous API (1.51) reads a channel's connections only while a call on it waits,
// and otherwise every 5 s (its backup poller): a member that died between two calls would be
// noticed by the next call, which would fail on its closed connection instead of going to a
// live member. This thread waits on the channel's state all the time, which keeps every
// connection read, so that round_robin drops a dead member at once; asking for the state
// with try_to_connect also has the channel connect to every member from the start and
// reconnect after each failure (with backoff) rather than when a call comes.
void Connection::WatchChannel() {
  // The wait is short so that the destructor, which waits for this thread, is not held long.
  constexpr absl::Duration kWake = absl::Milliseconds(200);
  while (!stopping_) {
    grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
    channel_->NotifyOnStateChange(state, absl::ToChronoTime(absl::Now() + kWake), &watcher_queue_,
                                  nullptr);
    void* tag = nullptr;
    bool changed = false;
    if (!watcher_queue_.Next(&tag, &changed)) break;
  }
  watcher_queue_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (watcher_queue_.Next(&tag, &ok)) {
  }
}

absl::StatusOr<std::string> Connection::Authenticate(absl::Time deadline) {
  etcdserverpb::AuthenticateRequest request;
  request.set_name(options_.username);
  request.set_password(options_.password);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  etcdserverpb::AuthenticateResponse response;
  grpc::Status status = auth_->Authenticate(&context, request, &response);
  if (status.ok()) return response.token();
  // A user given to an etcd without auth: calls go without a token, as etcdctl's do.
  if (status.error_message().find("authentication is not enabled") != std::string::npos) {
    return std::string();
  }
  return FromGrpc(absl::StrCat("authenticate user \"", options_.username, "\""), status);
}

absl::Status Connection::Prepare(grpc::ClientContext* context, absl::Time deadline,
                                 std::string* token) {
  context->set_deadline(absl::ToChronoTime(deadline));
  return AddToken(context, deadline, token);
}

absl::Status Connection::AddToken(grpc::ClientContext* context, absl::Time auth_deadline,
                                  std::string* token) {
  token->clear();
  if (!has_user()) return absl::OkStatus();
  {
    absl::MutexLock lock(&mu_);
    if (auth_state_ == AuthState::kToken) *token = token_;
    if (auth_state_ != AuthState::kNone) {
      if (!token->empty()) context->AddMetadata("token", *token);
      return absl::OkStatus();
    }
  }
  // No lock across the call: concurrent callers may each authenticate, and the last token
  // stays; etcd takes them all.
  absl::StatusOr<std::string> fetched = Authenticate(auth_deadline);
  if (!fetched.ok()) return fetched.status();
  {
    absl::MutexLock lock(&mu_);
    auth_state_ = fetched->empty() ? AuthState::kAuthDisabled : AuthState::kToken;
    token_ = *fetched;
  }
  *token = *std::move(fetched);
  if (!token->empty()) context->AddMetadata("token", *token);
  return absl::OkStatus();
}

void Connection::TokenRejected(const std::string& token) {
  absl::MutexLock lock(&mu_);
  if (token_ == token) {
    auth_state_ = AuthState::kNone;
    token_.clear();
  }
}

KeyValue ToKeyValue(const mvccpb::KeyValue& kv) {
  KeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

}  // namespace tunnelagent::etcd
