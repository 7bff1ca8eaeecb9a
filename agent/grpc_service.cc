#include "agent/grpc_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/caller_identity.h"
#include "agent/log.h"
#include "agent/proto_convert.h"
#include "agent/request_parse.h"
#include "agent/tunnel_fields.h"
#include "agent/validation.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace tunnelagent::agent {
namespace {

OperState StateFromProto(v1::OperState state) {
  switch (state) {
    case v1::OPER_STATE_DOWN:
      return OperState::kDown;
    case v1::OPER_STATE_ERROR:
      return OperState::kError;
    default:
      return OperState::kUp;
  }
}

// A ListTunnels filter.
bool Matches(const v1::ListTunnelsRequest& request, const TunnelSpec& spec, OperState state) {
  if (request.mode() != v1::TUNNEL_MODE_UNSPECIFIED && request.mode() != ModeToProto(spec.mode)) {
    return false;
  }
  if (request.state() != v1::OPER_STATE_UNSPECIFIED && StateFromProto(request.state()) != state) {
    return false;
  }
  for (const auto& [key, value] : request.labels()) {
    auto it = spec.labels.find(key);
    if (it == spec.labels.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

// Map order must not make two equal requests look different.
std::string Fingerprint(const google::protobuf::Message& message) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream out(&stream);
  out.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&out);
  out.Trim();
  return bytes;
}

v1::TunnelChange::Action ActionToProto(ChangeAction action) {
  switch (action) {
    case ChangeAction::kUnchanged:
      return v1::TunnelChange::UNCHANGED;
    case ChangeAction::kCreate:
      return v1::TunnelChange::CREATE;
    case ChangeAction::kUpdate:
      return v1::TunnelChange::UPDATE;
    case ChangeAction::kRecreate:
      return v1::TunnelChange::RECREATE;
    case ChangeAction::kDelete:
      return v1::TunnelChange::DELETE;
  }
  return v1::TunnelChange::ACTION_UNSPECIFIED;
}

// One line per request that changes tunnels, done or refused: who asked, what, the result.
void LogChange(const grpc::ServerContextBase& context, absl::string_view what,
               const std::string& tunnel, const absl::Status& status, std::string detail) {
  LogEvent("INFO", what,
           {{"tunnel", tunnel},
            {"caller", CallerOf(context)},
            {"result", status.ok() ? std::string("OK") : absl::StatusCodeToString(status.code())},
            {status.ok() ? "detail" : "error",
             status.ok() ? std::move(detail) : std::string(status.message())}});
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // Bounded whatever a message quotes: an answer must fit a client's metadata limit (8 KiB
  // by default), or the client sees that limit instead of the error.
  constexpr size_t kMaxMessage = 1024;
  absl::string_view message = status.message();
  std::string text = message.size() <= kMaxMessage
                         ? std::string(message)
                         : absl::StrCat(message.substr(0, kMaxMessage), "... (",
                                        message.size() - kMaxMessage, " more bytes)");
  // absl::StatusCode and grpc::StatusCode share their numbering (both are google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(text));
}

TunnelServiceImpl::TunnelServiceImpl(TunnelManager* manager, AgentIdentity identity,
                                     TunnelServiceLimits limits)
    : manager_(manager),
      identity_(std::move(identity)),
      limits_(limits),
      changes_(limits.change_threads, limits.max_queued_changes) {}

// ---- Unary calls -------------------------------------------------------------------------------

namespace {

// Parses the request, runs `work` on it and finishes the call, all on this thread.
template <typename Request, typename Response, typename Work>
grpc::ServerUnaryReactor* AnswerNow(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request_bytes,
                                    grpc::ByteBuffer* response_bytes, Work work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  absl::Status status = ParseRequest(*request_bytes, &request);
  if (status.ok()) {
    Response response;
    status = work(request, &response);
    if (status.ok()) SerializeResponse(response, response_bytes);
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// The tunnel a change request names, for the log line of a change refused before it ran.
std::string TunnelOf(const v1::CreateTunnelRequest& request) { return request.tunnel().name(); }
std::string TunnelOf(const v1::UpdateTunnelRequest& request) { return request.tunnel().name(); }
std::string TunnelOf(const v1::DeleteTunnelRequest& request) { return request.name(); }
std::string TunnelOf(const v1::ApplyTunnelsRequest&) { return std::string(); }
std::string TunnelOf(const v1::CreatePeerRequest& request) { return request.tunnel(); }
std::string TunnelOf(const v1::UpdatePeerRequest& request) { return request.tunnel(); }
std::string TunnelOf(const v1::DeletePeerRequest& request) { return request.tunnel(); }
std::string TunnelOf(const v1::ApplyPeersRequest& request) { return request.tunnel(); }

}  // namespace

template <typename Request, typename Response, typename Work>
grpc::ServerUnaryReactor* TunnelServiceImpl::QueueChange(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request_bytes,
                                                         grpc::ByteBuffer* response_bytes,
                                                         const char* what, Work work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto request = std::make_shared<Request>();
  if (absl::Status status = ParseRequest(*request_bytes, request.get()); !status.ok()) {
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }
  // The context, the response buffer and the reactor stay valid until Finish.
  const bool queued = changes_.TrySubmit([=] {
    absl::Status status;
    if (context->IsCancelled()) {
      status = absl::CancelledError("the call was cancelled while it waited for its turn");
    } else if (context->deadline() <= std::chrono::system_clock::now()) {
      status =
          absl::DeadlineExceededError("the deadline passed while the call waited for its turn");
    }
    if (!status.ok()) {
      LogChange(*context, what, TunnelOf(*request), status);
      reactor->Finish(ToGrpcStatus(status));
      return;
    }
    Response response;
    status = work(*request, &response);
    if (status.ok()) SerializeResponse(response, response_bytes);
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!queued) {
    absl::Status busy = absl::ResourceExhaustedError(absl::StrCat(
        "the agent is busy: ", changes_.max_queued(), " changes are already waiting; retry later"));
    LogChange(*context, what, TunnelOf(*request), busy);
    reactor->Finish(ToGrpcStatus(busy));
  }
  return reactor;
}

grpc::ServerUnaryReactor* TunnelServiceImpl::CreateTunnel(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return QueueChange<v1::CreateTunnelRequest, v1::Tunnel>(
      context, request, response, "tunnel.create",
      [this, context](const v1::CreateTunnelRequest& r, v1::Tunnel* out) {
        return DoCreate(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::UpdateTunnel(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return QueueChange<v1::UpdateTunnelRequest, v1::UpdateTunnelResponse>(
      context, request, response, "tunnel.update",
      [this, context](const v1::UpdateTunnelRequest& r, v1::UpdateTunnelResponse* out) {
        return DoUpdate(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::DeleteTunnel(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return QueueChange<v1::DeleteTunnelRequest, google::protobuf::Empty>(
      context, request, response, "tunnel.delete",
      [this, context](const v1::DeleteTunnelRequest& r, google::protobuf::Empty*) {
        return DoDelete(*context, r);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::ApplyTunnels(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return QueueChange<v1::ApplyTunnelsRequest, v1::ApplyTunnelsResponse>(
      context, request, response, "tunnel.apply",
      [this, context](const v1::ApplyTunnelsRequest& r, v1::ApplyTunnelsResponse* out) {
        return DoApply(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::GetTunnel(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return AnswerNow<v1::GetTunnelRequest, v1::Tunnel>(
      context, request, response,
      [this](const v1::GetTunnelRequest& r, v1::Tunnel* out) { return DoGet(r, out); });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::ListTunnels(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  return AnswerNow<v1::ListTunnelsRequest, v1::ListTunnelsResponse>(
      context, request, response,
      [this](const v1::ListTunnelsRequest& r, v1::ListTunnelsResponse* out) {
        return DoList(r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::GetAgentInfo(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return AnswerNow<v1::GetAgentInfoRequest, v1::AgentInfo>(
      context, request, response, [this](const v1::GetAgentInfoRequest&, v1::AgentInfo* out) {
        DoGetAgentInfo(out);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::CreatePeer(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  return QueueChange<v1::CreatePeerRequest, v1::Peer>(
      context, request, response, "peer.create",
      [this, context](const v1::CreatePeerRequest& r, v1::Peer* out) {
        return DoCreatePeer(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::UpdatePeer(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  return QueueChange<v1::UpdatePeerRequest, v1::Peer>(
      context, request, response, "peer.update",
      [this, context](const v1::UpdatePeerRequest& r, v1::Peer* out) {
        return DoUpdatePeer(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::DeletePeer(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  return QueueChange<v1::DeletePeerRequest, google::protobuf::Empty>(
      context, request, response, "peer.delete",
      [this, context](const v1::DeletePeerRequest& r, google::protobuf::Empty*) {
        return DoDeletePeer(*context, r);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::ApplyPeers(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  return QueueChange<v1::ApplyPeersRequest, v1::ApplyPeersResponse>(
      context, request, response, "peer.apply",
      [this, context](const v1::ApplyPeersRequest& r, v1::ApplyPeersResponse* out) {
        return DoApplyPeers(*context, r, out);
      });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::GetPeer(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return AnswerNow<v1::GetPeerRequest, v1::Peer>(
      context, request, response,
      [this](const v1::GetPeerRequest& r, v1::Peer* out) { return DoGetPeer(r, out); });
}

grpc::ServerUnaryReactor* TunnelServiceImpl::ListPeers(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return AnswerNow<v1::ListPeersRequest, v1::ListPeersResponse>(
      context, request, response,
      [this](const v1::ListPeersRequest& r, v1::ListPeersResponse* out) {
        return DoListPeers(r, out);
      });
}

// ---- The calls' work -----------------------------------------------------------------------

absl::Status TunnelServiceImpl::DoCreate(const grpc::ServerContextBase& context,
                                         const v1::CreateTunnelRequest& request,
                                         v1::Tunnel* response) {
  std::string bytes;
  absl::Status status =
      idempotency_.Run("CreateTunnel", request.request_id(), Fingerprint(request), &bytes,
                       [&](std::string* out) -> absl::Status {
                         if (!request.has_tunnel())
                           return absl::InvalidArgumentError("tunnel: required");
                         absl::StatusOr<TunnelSpec> spec = SpecFromProto(request.tunnel());
                         if (!spec.ok()) return spec.status();
                         absl::StatusOr<TunnelView> view = manager_->Create(*spec);
                         if (!view.ok()) return view.status();
                         *out = TunnelToProto(view->spec, view->status).SerializeAsString();
                         return absl::OkStatus();
                       });
  LogChange(context, "tunnel.create", request.tunnel().name(), status,
            absl::StrCat("mode=", v1::TunnelMode_Name(request.tunnel().mode()), " remote=",
                         request.tunnel().multipoint() ? "multipoint" : request.tunnel().remote()));
  if (status.ok()) response->ParseFromString(bytes);
  return status;
}

absl::Status TunnelServiceImpl::DoGet(const v1::GetTunnelRequest& request, v1::Tunnel* response) {
  if (request.name().empty()) return absl::InvalidArgumentError("name: required");
  absl::StatusOr<TunnelView> view = manager_->Get(request.name());
  if (!view.ok()) return view.status();
  *response = TunnelToProto(view->spec, view->status);
  return absl::OkStatus();
}

absl::Status TunnelServiceImpl::DoList(const v1::ListTunnelsRequest& request,
                                       v1::ListTunnelsResponse* response) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError("page_size: must not be negative");
  }
  // An unknown value would otherwise match nothing or everything: say so instead.
  if (!v1::TunnelMode_IsValid(request.mode())) {
    return absl::InvalidArgumentError(absl::StrCat("mode: unknown value ", request.mode()));
  }
  if (!v1::OperState_IsValid(request.state())) {
    return absl::InvalidArgumentError(absl::StrCat("state: unknown value ", request.state()));
  }
  const int page_size =
      request.page_size() == 0 ? kMaxPageSize : std::min(request.page_size(), kMaxPageSize);
  // The token is the name the previous page ended with: names are unique and sorted, so a
  // page boundary stays well defined while tunnels come and go.
  std::string after;
  if (!request.page_token().empty() && !absl::WebSafeBase64Unescape(request.page_token(), &after)) {
    return absl::InvalidArgumentError("page_token: not a token this agent gave");
  }
  // Only this page is copied out of the manager: a client reading 10,000 tunnels in pages
  // of 1,000 costs ten pages' work, not ten times every tunnel.
  TunnelManager::Page page = manager_->ListPage(
      after, static_cast<size_t>(page_size), [&request](const TunnelSpec& spec, OperState state) {
        return Matches(request, spec, state);
      });
  response->mutable_tunnels()->Reserve(static_cast<int>(page.tunnels.size()));
  for (const TunnelView& view : page.tunnels) {
    *response->add_tunnels() = TunnelToProto(view.spec, view.status);
  }
  if (page.more) {
    response->set_next_page_token(absl::WebSafeBase64Escape(page.tunnels.back().spec.name));
  }
  return absl::OkStatus();
}

absl::Status TunnelServiceImpl::DoUpdate(const grpc::ServerContextBase& context,
                                         const v1::UpdateTunnelRequest& request,
                                         v1::UpdateTunnelResponse* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "UpdateTunnel", request.request_id(), Fingerprint(request), &bytes,
      [&](std::string* out) -> absl::Status {
        const v1::Tunnel& patch = request.tunnel();
        if (patch.name().empty()) return absl::InvalidArgumentError("tunnel.name: required");
        std::set<std::string> fields;
        for (const std::string& path : request.update_mask().paths()) {
          if (FindTunnelField(path) == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat("update_mask: ", path, " cannot be updated (",
                             absl::StrJoin(UpdatableFields(), ", "), " can)"));
          }
          fields.insert(path);
        }
        // AIP-134: no mask = replace it all.
        if (fields.empty()) fields.insert(UpdatableFields().begin(), UpdatableFields().end());
        // Parse only what is being changed: the rest comes from the current tunnel.
        absl::StatusOr<TunnelView> current = manager_->Get(patch.name());
        if (!current.ok()) return current.status();
        v1::Tunnel merged = SpecToProto(current->spec);
        for (const std::string& field : fields) FindTunnelField(field)->copy_proto(patch, merged);
        absl::StatusOr<TunnelSpec> spec = SpecFromProto(merged);
        if (!spec.ok()) return spec.status();
        absl::StatusOr<UpdateResult> result =
            manager_->Update(patch.name(), *spec, fields, patch.etag());
        if (!result.ok()) return result.status();
        v1::UpdateTunnelResponse answer;
        *answer.mutable_tunnel() = TunnelToProto(result->tunnel.spec, result->tunnel.status);
        answer.set_recreated(result->recreated);
        for (const std::string& f : result->changed_fields) answer.add_changed_fields(f);
        *out = answer.SerializeAsString();
        return absl::OkStatus();
      });
  std::string changed;
  if (status.ok()) {
    response->ParseFromString(bytes);
    changed = response->changed_fields().empty()
                  ? std::string("unchanged")
                  : absl::StrCat("changed=", absl::StrJoin(response->changed_fields(), ","),
                                 response->recreated() ? " recreated" : "");
  }
  LogChange(context, "tunnel.update", request.tunnel().name(), status, changed);
  return status;
}

absl::Status TunnelServiceImpl::DoDelete(const grpc::ServerContextBase& context,
                                         const v1::DeleteTunnelRequest& request) {
  std::string unused;
  absl::Status status = idempotency_.Run("DeleteTunnel", request.request_id(), Fingerprint(request),
                                         &unused, [&](std::string*) -> absl::Status {
                                           if (request.name().empty())
                                             return absl::InvalidArgumentError("name: required");
                                           return manager_->Delete(request.name(), request.etag());
                                         });
  LogChange(context, "tunnel.delete", request.name(), status);
  return status;
}

absl::Status TunnelServiceImpl::DoApply(const grpc::ServerContextBase& context,
                                        const v1::ApplyTunnelsRequest& request,
                                        v1::ApplyTunnelsResponse* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "ApplyTunnels", request.request_id(), Fingerprint(request), &bytes,
      [&](std::string* out) -> absl::Status {
        std::vector<TunnelSpec> desired;
        desired.reserve(request.tunnels_size());
        for (int i = 0; i < request.tunnels_size(); ++i) {
          absl::StatusOr<TunnelSpec> spec = SpecFromProto(request.tunnels(i));
          if (!spec.ok()) {
            return absl::Status(spec.status().code(),
                                absl::StrCat("tunnels[", i, "]: ", spec.status().message()));
          }
          desired.push_back(*std::move(spec));
        }
        absl::StatusOr<ApplyResult> result = manager_->Apply(request.owner(), std::move(desired),
                                                             request.prune(), request.dry_run());
        if (!result.ok()) return result.status();
        v1::ApplyTunnelsResponse answer;
        ChangesToProto(result->changes, answer.mutable_changes());
        answer.set_dry_run(request.dry_run());
        answer.set_revision(result->revision);
        *out = answer.SerializeAsString();
        return absl::OkStatus();
      });
  std::string summary;
  if (status.ok()) {
    response->ParseFromString(bytes);
    summary = absl::StrCat("owner=", request.owner(), request.dry_run() ? " dry_run" : "", " ",
                           ActionCounts(response->changes()));
  }
  LogChange(context, "tunnel.apply", "", status, summary);
  return status;
}

void TunnelServiceImpl::DoGetAgentInfo(v1::AgentInfo* response) {
  response->set_version(identity_.version);
  response->set_node_name(identity_.node_name);
  for (auto mode :
       {dataplane::TunnelMode::kGre, dataplane::TunnelMode::kGretap, dataplane::TunnelMode::kIpip,
        dataplane::TunnelMode::kSit, dataplane::TunnelMode::kIp6gre,
        dataplane::TunnelMode::kIp6gretap, dataplane::TunnelMode::kIp6tnl}) {
    if (dataplane::IsModeImplemented(mode)) response->add_supported_modes(ModeToProto(mode));
  }
  for (const char* feature :
       {"request_id", "etag", "update_mask", "watch", "apply", "labels", "pagination",
        "persistent_devices", "gre_options", "keepalive", "path_mtu", "fou", "multipoint"}) {
    response->add_features(feature);
  }
  response->set_io_backend(identity_.io_backend);
  response->set_dataplane_workers(identity_.dataplane_workers);
  response->set_dataplane_cpus(identity_.dataplane_cpus);
  response->set_max_tunnels(manager_->max_tunnels());
  response->set_max_peers_per_tunnel(static_cast<uint32_t>(CurrentTunnelLimits().max_peers));
  response->set_tunnels_verifying(static_cast<uint32_t>(manager_->VerifyingCount()));
  const TunnelManager::Census census = manager_->TakeCensus();
  response->set_tunnel_count(static_cast<uint32_t>(census.tunnels));
  response->set_revision(census.revision);
  *response->mutable_start_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(identity_.start_time));
}

}  // namespace tunnelagent::agent
