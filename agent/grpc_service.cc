#include "agent/grpc_service.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/caller_identity.h"
#include "agent/log.h"
#include "agent/proto_convert.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"

namespace tunnelagent::agent {
namespace {

bool IsUpdatable(const std::string& path) {
  const std::vector<std::string>& fields = UpdatableFields();
  return std::find(fields.begin(), fields.end(), path) != fields.end();
}

// Replaces field `descriptor` of `merged` with that of `patch`, presence included: an
// optional field unset in the patch (key, ttl, pmtudisc, ...) becomes unset, a message field
// (keepalive) is replaced whole, a repeated or map field takes the patch's elements.
absl::Status CopyField(const v1::Tunnel& patch, const google::protobuf::FieldDescriptor* descriptor,
                       v1::Tunnel* merged) {
  using google::protobuf::FieldDescriptor;
  const auto* reflection = v1::Tunnel::GetReflection();
  reflection->ClearField(merged, descriptor);
  if (descriptor->is_repeated()) {
    for (int i = 0; i < reflection->FieldSize(patch, descriptor); ++i) {
      if (descriptor->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        reflection->AddMessage(merged, descriptor)
            ->CopyFrom(reflection->GetRepeatedMessage(patch, descriptor, i));
      } else {
        reflection->AddString(merged, descriptor,
                              reflection->GetRepeatedString(patch, descriptor, i));
      }
    }
    return absl::OkStatus();
  }
  if (descriptor->has_presence() && !reflection->HasField(patch, descriptor)) {
    return absl::OkStatus();
  }
  switch (descriptor->cpp_type()) {
    case FieldDescriptor::CPPTYPE_MESSAGE:
      reflection->MutableMessage(merged, descriptor)
          ->CopyFrom(reflection->GetMessage(patch, descriptor));
      break;
    case FieldDescriptor::CPPTYPE_STRING:
      reflection->SetString(merged, descriptor, reflection->GetString(patch, descriptor));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      reflection->SetUInt32(merged, descriptor, reflection->GetUInt32(patch, descriptor));
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      reflection->SetBool(merged, descriptor, reflection->GetBool(patch, descriptor));
      break;
    case FieldDescriptor::CPPTYPE_ENUM:
      reflection->SetEnumValue(merged, descriptor, reflection->GetEnumValue(patch, descriptor));
      break;
    default:
      // Tunnel has no other kinds of desired field; a new kind must be added above.
      return absl::InternalError(
          absl::StrCat("update_mask: ", descriptor->name(), " has a type this agent cannot copy"));
  }
  return absl::OkStatus();
}

constexpr int kMaxPageSize = 1000;

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

v1::TunnelEvent::Type EventTypeToProto(TunnelEvent::Type type) {
  switch (type) {
    case TunnelEvent::Type::kAdded:
      return v1::TunnelEvent::ADDED;
    case TunnelEvent::Type::kUpdated:
      return v1::TunnelEvent::UPDATED;
    case TunnelEvent::Type::kDeleted:
      return v1::TunnelEvent::DELETED;
    case TunnelEvent::Type::kStateChanged:
      return v1::TunnelEvent::STATE_CHANGED;
    case TunnelEvent::Type::kRepaired:
      return v1::TunnelEvent::REPAIRED;
  }
  return v1::TunnelEvent::TYPE_UNSPECIFIED;
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

// A ListTunnels filter.
bool Matches(const v1::ListTunnelsRequest& request, const TunnelView& view) {
  if (request.mode() != v1::TUNNEL_MODE_UNSPECIFIED &&
      request.mode() != ModeToProto(view.spec.mode)) {
    return false;
  }
  if (request.state() != v1::OPER_STATE_UNSPECIFIED &&
      StateFromProto(request.state()) != view.status.state) {
    return false;
  }
  for (const auto& [key, value] : request.labels()) {
    auto it = view.spec.labels.find(key);
    if (it == view.spec.labels.end() || it->second != value) return false;
  }
  return true;
}

// One line per request that changes tunnels, done or refused: who asked, what, the result.
void LogChange(const grpc::ServerContext* context, absl::string_view what,
               const std::string& tunnel, const absl::Status& status,
               std::string detail = std::string()) {
  LogEvent("INFO", what,
           {{"tunnel", tunnel},
            {"caller", CallerOf(*context)},
            {"result", status.ok() ? std::string("OK") : absl::StatusCodeToString(status.code())},
            {status.ok() ? "detail" : "error",
             status.ok() ? std::move(detail) : std::string(status.message())}});
}

}  // namespace

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

grpc::Status TunnelServiceImpl::CreateTunnel(grpc::ServerContext* context,
                                             const v1::CreateTunnelRequest* request,
                                             v1::Tunnel* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "CreateTunnel", request->request_id(), Fingerprint(*request), &bytes,
      [&](std::string* out) -> absl::Status {
        if (!request->has_tunnel()) return absl::InvalidArgumentError("tunnel: required");
        absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(request->tunnel());
        if (!spec.ok()) return spec.status();
        absl::StatusOr<TunnelView> view = manager_->Create(*spec);
        if (!view.ok()) return view.status();
        *out = TunnelToProto(view->spec, view->status).SerializeAsString();
        return absl::OkStatus();
      });
  LogChange(context, "tunnel.create", request->tunnel().name(), status,
            absl::StrCat("mode=", v1::TunnelMode_Name(request->tunnel().mode()),
                         " remote=", request->tunnel().remote()));
  if (status.ok()) response->ParseFromString(bytes);
  return ToGrpcStatus(status);
}

grpc::Status TunnelServiceImpl::GetTunnel(grpc::ServerContext*, const v1::GetTunnelRequest* request,
                                          v1::Tunnel* response) {
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name: required");
  }
  absl::StatusOr<TunnelView> view = manager_->Get(request->name());
  if (!view.ok()) return ToGrpcStatus(view.status());
  *response = TunnelToProto(view->spec, view->status);
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::ListTunnels(grpc::ServerContext*,
                                            const v1::ListTunnelsRequest* request,
                                            v1::ListTunnelsResponse* response) {
  if (request->page_size() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size: must not be negative");
  }
  // An unknown value would otherwise match nothing or everything: say so instead.
  if (!v1::TunnelMode_IsValid(request->mode())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("mode: unknown value ", request->mode()));
  }
  if (!v1::OperState_IsValid(request->state())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("state: unknown value ", request->state()));
  }
  const int page_size =
      request->page_size() == 0 ? kMaxPageSize : std::min(request->page_size(), kMaxPageSize);
  // The token is the name the previous page ended with: names are unique and sorted, so a
  // page boundary stays well defined while tunnels come and go.
  std::string after;
  if (!request->page_token().empty() &&
      !absl::WebSafeBase64Unescape(request->page_token(), &after)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "page_token: not a token this agent gave");
  }
  int count = 0;
  for (const TunnelView& view : manager_->List()) {
    if (!after.empty() && view.spec.name <= after) continue;
    if (!Matches(*request, view)) continue;
    if (count == page_size) {
      response->set_next_page_token(absl::WebSafeBase64Escape(response->tunnels(count - 1).name()));
      break;
    }
    *response->add_tunnels() = TunnelToProto(view.spec, view.status);
    ++count;
  }
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::UpdateTunnel(grpc::ServerContext* context,
                                             const v1::UpdateTunnelRequest* request,
                                             v1::UpdateTunnelResponse* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "UpdateTunnel", request->request_id(), Fingerprint(*request), &bytes,
      [&](std::string* out) -> absl::Status {
        const v1::Tunnel& patch = request->tunnel();
        if (patch.name().empty()) return absl::InvalidArgumentError("tunnel.name: required");
        std::set<std::string> fields;
        for (const std::string& path : request->update_mask().paths()) {
          if (!IsUpdatable(path)) {
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
        for (const std::string& field : fields) {
          const auto* descriptor = v1::Tunnel::descriptor()->FindFieldByName(field);
          if (descriptor == nullptr) {
            return absl::InternalError(absl::StrCat("update_mask: ", field, " is not a field"));
          }
          if (absl::Status s = CopyField(patch, descriptor, &merged); !s.ok()) return s;
        }
        absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(merged);
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
  LogChange(context, "tunnel.update", request->tunnel().name(), status, changed);
  return ToGrpcStatus(status);
}

grpc::Status TunnelServiceImpl::DeleteTunnel(grpc::ServerContext* context,
                                             const v1::DeleteTunnelRequest* request,
                                             google::protobuf::Empty*) {
  std::string unused;
  absl::Status status =
      idempotency_.Run("DeleteTunnel", request->request_id(), Fingerprint(*request), &unused,
                       [&](std::string*) -> absl::Status {
                         if (request->name().empty())
                           return absl::InvalidArgumentError("name: required");
                         return manager_->Delete(request->name(), request->etag());
                       });
  LogChange(context, "tunnel.delete", request->name(), status);
  return ToGrpcStatus(status);
}

grpc::Status TunnelServiceImpl::WatchTunnels(grpc::ServerContext* context,
                                             const v1::WatchTunnelsRequest* request,
                                             grpc::ServerWriter<v1::TunnelEvent>* writer) {
  if (watchers_.fetch_add(1) >= kMaxWatchers) {
    watchers_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("this agent serves at most ", kMaxWatchers, " watchers"));
  }
  struct Release {
    std::atomic<int>* count;
    ~Release() { count->fetch_sub(1); }
  } release{&watchers_};

  auto write = [writer](v1::TunnelEvent::Type type, uint64_t revision, const TunnelView* view,
                        const std::string& detail = std::string()) {
    v1::TunnelEvent event;
    event.set_type(type);
    event.set_revision(revision);
    event.set_detail(detail);
    if (view != nullptr) *event.mutable_tunnel() = TunnelToProto(view->spec, view->status);
    return writer->Write(event);
  };
  // The current set, then SYNCED; after RESYNC when the watcher's history is gone.
  auto send_snapshot = [&](bool resync, uint64_t* cursor) {
    Snapshot snapshot = manager_->TakeSnapshot();
    if (resync && !write(v1::TunnelEvent::RESYNC, snapshot.revision, nullptr)) return false;
    for (const TunnelView& view : snapshot.tunnels) {
      if (!write(v1::TunnelEvent::EXISTING, snapshot.revision, &view)) return false;
    }
    *cursor = snapshot.revision;
    return write(v1::TunnelEvent::SYNCED, snapshot.revision, nullptr);
  };

  uint64_t cursor = request->since_revision();
  if (cursor == 0 && !send_snapshot(false, &cursor)) return grpc::Status::OK;
  absl::Duration wait = absl::ZeroDuration();  // a resuming watcher first gets what it missed
  while (!context->IsCancelled()) {
    absl::StatusOr<std::vector<TunnelEvent>> events = manager_->EventsAfter(cursor, wait);
    wait = absl::Seconds(1);  // bounded, so cancellation and shutdown are noticed
    if (!events.ok()) {
      if (!send_snapshot(true, &cursor)) break;
      continue;
    }
    for (const TunnelEvent& event : *events) {
      if (!write(EventTypeToProto(event.type), event.revision, &event.tunnel, event.detail)) {
        return grpc::Status::OK;
      }
      cursor = event.revision;
    }
  }
  return grpc::Status::OK;
}

grpc::Status TunnelServiceImpl::ApplyTunnels(grpc::ServerContext* context,
                                             const v1::ApplyTunnelsRequest* request,
                                             v1::ApplyTunnelsResponse* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "ApplyTunnels", request->request_id(), Fingerprint(*request), &bytes,
      [&](std::string* out) -> absl::Status {
        std::vector<dataplane::TunnelSpec> desired;
        desired.reserve(request->tunnels_size());
        for (int i = 0; i < request->tunnels_size(); ++i) {
          absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(request->tunnels(i));
          if (!spec.ok()) {
            return absl::Status(spec.status().code(),
                                absl::StrCat("tunnels[", i, "]: ", spec.status().message()));
          }
          desired.push_back(*std::move(spec));
        }
        absl::StatusOr<ApplyResult> result = manager_->Apply(request->owner(), std::move(desired),
                                                             request->prune(), request->dry_run());
        if (!result.ok()) return result.status();
        v1::ApplyTunnelsResponse answer;
        for (const PlannedChange& change : result->changes) {
          v1::TunnelChange* c = answer.add_changes();
          c->set_name(change.name);
          c->set_action(ActionToProto(change.action));
          for (const std::string& f : change.changed_fields) c->add_changed_fields(f);
        }
        answer.set_dry_run(request->dry_run());
        answer.set_revision(result->revision);
        *out = answer.SerializeAsString();
        return absl::OkStatus();
      });
  std::string summary;
  if (status.ok()) {
    response->ParseFromString(bytes);
    std::map<std::string, int> actions;
    for (const v1::TunnelChange& c : response->changes()) {
      ++actions[absl::AsciiStrToLower(v1::TunnelChange::Action_Name(c.action()))];
    }
    summary = absl::StrCat("owner=", request->owner(), request->dry_run() ? " dry_run" : "", " ",
                           absl::StrJoin(actions, " ", absl::PairFormatter("=")));
  }
  LogChange(context, "tunnel.apply", "", status, summary);
  return ToGrpcStatus(status);
}

grpc::Status TunnelServiceImpl::GetAgentInfo(grpc::ServerContext*, const v1::GetAgentInfoRequest*,
                                             v1::AgentInfo* response) {
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
        "persistent_devices", "gre_options", "keepalive", "path_mtu", "fou"}) {
    response->add_features(feature);
  }
  response->set_io_backend(identity_.io_backend);
  response->set_dataplane_workers(identity_.dataplane_workers);
  response->set_dataplane_cpus(identity_.dataplane_cpus);
  response->set_max_tunnels(manager_->max_tunnels());
  Snapshot snapshot = manager_->TakeSnapshot();
  response->set_tunnel_count(static_cast<uint32_t>(snapshot.tunnels.size()));
  response->set_revision(snapshot.revision);
  *response->mutable_start_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(identity_.start_time));
  return grpc::Status::OK;
}

}  // namespace tunnelagent::agent
