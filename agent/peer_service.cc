// tunnelagent.v1.TunnelService's peer methods: translation between the API's peers and the
// TunnelManager's, with the service's conventions (request_id, pagination, change logs).
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/grpc_service.h"
#include "agent/peer_spec.h"

namespace tunnelagent::agent {
namespace {

absl::Status Required(absl::string_view field) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
}

// Copies the field `path` (UpdatablePeerFields) of `from` into `to`.
void CopyPeerField(const std::string& path, const v1::Peer& from, v1::Peer& to) {
  if (path == "underlay") {
    to.set_underlay(from.underlay());
  } else if (path == "key") {
    if (from.has_key()) {
      to.set_key(from.key());
    } else {
      to.clear_key();
    }
  } else if (path == "allowed_prefixes") {
    *to.mutable_allowed_prefixes() = from.allowed_prefixes();
  } else if (path == "keepalive") {
    if (from.has_keepalive()) {
      *to.mutable_keepalive() = from.keepalive();
    } else {
      to.clear_keepalive();
    }
  } else if (path == "labels") {
    *to.mutable_labels() = from.labels();
  }
}

}  // namespace

absl::Status TunnelServiceImpl::DoCreatePeer(const grpc::ServerContextBase& context,
                                             const v1::CreatePeerRequest& request,
                                             v1::Peer* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "CreatePeer", request.request_id(), Fingerprint(request), &bytes,
      [&](std::string* out) -> absl::Status {
        if (request.tunnel().empty()) return Required("tunnel");
        if (!request.has_peer()) return Required("peer");
        absl::StatusOr<PeerSpec> spec = PeerFromProto(request.peer());
        if (!spec.ok()) return spec.status();
        absl::StatusOr<PeerView> view = manager_->CreatePeer(request.tunnel(), *spec);
        if (!view.ok()) return view.status();
        *out = PeerToProto(*view).SerializeAsString();
        return absl::OkStatus();
      });
  LogChange(context, "peer.create", request.tunnel(), status,
            absl::StrCat("peer=", request.peer().name(), " underlay=", request.peer().underlay()));
  if (status.ok()) response->ParseFromString(bytes);
  return status;
}

absl::Status TunnelServiceImpl::DoGetPeer(const v1::GetPeerRequest& request, v1::Peer* response) {
  if (request.tunnel().empty()) return Required("tunnel");
  if (request.name().empty()) return Required("name");
  absl::StatusOr<PeerView> view = manager_->GetPeer(request.tunnel(), request.name());
  if (!view.ok()) return view.status();
  *response = PeerToProto(*view);
  return absl::OkStatus();
}

absl::Status TunnelServiceImpl::DoListPeers(const v1::ListPeersRequest& request,
                                            v1::ListPeersResponse* response) {
  if (request.tunnel().empty()) return Required("tunnel");
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError("page_size: must not be negative");
  }
  const int page_size =
      request.page_size() == 0 ? kMaxPageSize : std::min(request.page_size(), kMaxPageSize);
  // As ListTunnels: the token is the name the previous page ended with.
  std::string after;
  if (!request.page_token().empty() && !absl::WebSafeBase64Unescape(request.page_token(), &after)) {
    return absl::InvalidArgumentError("page_token: not a token this agent gave");
  }
  absl::StatusOr<TunnelManager::PeerPage> page =
      manager_->ListPeers(request.tunnel(), after, static_cast<size_t>(page_size));
  if (!page.ok()) return page.status();
  response->mutable_peers()->Reserve(static_cast<int>(page->peers.size()));
  for (const PeerView& view : page->peers) *response->add_peers() = PeerToProto(view);
  if (page->more) {
    response->set_next_page_token(absl::WebSafeBase64Escape(page->peers.back().spec.name));
  }
  return absl::OkStatus();
}

absl::Status TunnelServiceImpl::DoUpdatePeer(const grpc::ServerContextBase& context,
                                             const v1::UpdatePeerRequest& request,
                                             v1::Peer* response) {
  std::string bytes;
  std::vector<std::string> changed;
  absl::Status status = idempotency_.Run(
      "UpdatePeer", request.request_id(), Fingerprint(request), &bytes,
      [&](std::string* out) -> absl::Status {
        if (request.tunnel().empty()) return Required("tunnel");
        const v1::Peer& patch = request.peer();
        if (patch.name().empty()) return Required("peer.name");
        const std::vector<std::string>& updatable = UpdatablePeerFields();
        std::set<std::string> fields;
        for (const std::string& path : request.update_mask().paths()) {
          if (std::find(updatable.begin(), updatable.end(), path) == updatable.end()) {
            return absl::InvalidArgumentError(
                absl::StrCat("update_mask: ", path, " cannot be updated (",
                             absl::StrJoin(updatable, ", "), " can)"));
          }
          fields.insert(path);
        }
        if (fields.empty()) fields.insert(updatable.begin(), updatable.end());  // AIP-134
        absl::StatusOr<PeerView> current = manager_->GetPeer(request.tunnel(), patch.name());
        if (!current.ok()) return current.status();
        v1::Peer merged = PeerSpecToProto(current->spec);
        for (const std::string& field : fields) CopyPeerField(field, patch, merged);
        absl::StatusOr<PeerSpec> spec = PeerFromProto(merged);
        if (!spec.ok()) return spec.status();
        absl::StatusOr<PeerView> view =
            manager_->UpdatePeer(request.tunnel(), *spec, patch.etag(), &changed);
        if (!view.ok()) return view.status();
        *out = PeerToProto(*view).SerializeAsString();
        return absl::OkStatus();
      });
  LogChange(context, "peer.update", request.tunnel(), status,
            absl::StrCat("peer=", request.peer().name(), " ",
                         changed.empty() ? std::string("unchanged")
                                         : absl::StrCat("changed=", absl::StrJoin(changed, ","))));
  if (status.ok()) response->ParseFromString(bytes);
  return status;
}

absl::Status TunnelServiceImpl::DoDeletePeer(const grpc::ServerContextBase& context,
                                             const v1::DeletePeerRequest& request) {
  std::string unused;
  absl::Status status = idempotency_.Run("DeletePeer", request.request_id(), Fingerprint(request),
                                         &unused, [&](std::string*) -> absl::Status {
                                           if (request.tunnel().empty()) return Required("tunnel");
                                           if (request.name().empty()) return Required("name");
                                           return manager_->DeletePeer(
                                               request.tunnel(), request.name(), request.etag());
                                         });
  LogChange(context, "peer.delete", request.tunnel(), status,
            absl::StrCat("peer=", request.name()));
  return status;
}

absl::Status TunnelServiceImpl::DoApplyPeers(const grpc::ServerContextBase& context,
                                             const v1::ApplyPeersRequest& request,
                                             v1::ApplyPeersResponse* response) {
  std::string bytes;
  absl::Status status =
      idempotency_.Run("ApplyPeers", request.request_id(), Fingerprint(request), &bytes,
                       [&](std::string* out) -> absl::Status {
                         if (request.tunnel().empty()) return Required("tunnel");
                         std::vector<PeerSpec> desired;
                         desired.reserve(request.peers_size());
                         for (int i = 0; i < request.peers_size(); ++i) {
                           absl::StatusOr<PeerSpec> spec =
                               PeerFromProto(request.peers(i), absl::StrCat("peers[", i, "]"));
                           if (!spec.ok()) return spec.status();
                           desired.push_back(*std::move(spec));
                         }
                         absl::StatusOr<PeerApplyResult> result = manager_->ApplyPeers(
                             request.tunnel(), request.owner(), std::move(desired), request.prune(),
                             request.dry_run());
                         if (!result.ok()) return result.status();
                         v1::ApplyPeersResponse answer;
                         ChangesToProto(result->changes, answer.mutable_changes());
                         answer.set_unchanged(static_cast<uint32_t>(result->unchanged));
                         answer.set_dry_run(request.dry_run());
                         answer.set_revision(result->revision);
                         *out = answer.SerializeAsString();
                         return absl::OkStatus();
                       });
  std::string summary;
  if (status.ok()) {
    response->ParseFromString(bytes);
    const std::string actions = ActionCounts(response->changes());
    summary =
        absl::StrCat("owner=", request.owner(), request.dry_run() ? " dry_run" : "",
                     " unchanged=", response->unchanged(), actions.empty() ? "" : " ", actions);
  }
  LogChange(context, "peer.apply", request.tunnel(), status, summary);
  return status;
}

}  // namespace tunnelagent::agent
