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
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/impl/codegen/proto_utils.h"

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
void LogChange(const grpc::ServerContextBase& context, absl::string_view what,
               const std::string& tunnel, const absl::Status& status,
               std::string detail = std::string()) {
  LogEvent("INFO", what,
           {{"tunnel", tunnel},
            {"caller", CallerOf(context)},
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

namespace {

// A response as gRPC sends it.
void Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  out->Clear();  // the writer wants an empty buffer (a watcher's is reused)
  // Only fails on a message too large to send, which none of ours can be.
  grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, out, &own_buffer)
      .IgnoreError();
}

// A WatchTunnels stream refused or malformed: finished as it starts.
class RefusedWatch final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RefusedWatch(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

std::string ClientOfCaller(absl::string_view caller) {
  std::vector<std::string> kept;
  bool first = true;
  for (absl::string_view token : absl::StrSplit(caller, ' ', absl::SkipEmpty())) {
    if (absl::StartsWith(token, "pid=")) continue;  // one user's processes are one client
    if (first && !absl::StartsWith(token, "uid=")) {
      // gRPC's peer: "ipv4:198.18.0.1:40000", "ipv6:[2001:db8::1]:5000", "unix:...".
      if (absl::StartsWith(token, "ipv4:")) {
        token = token.substr(0, token.rfind(':'));
      } else if (absl::StartsWith(token, "ipv6:[")) {
        token = token.substr(0, token.find(']') + 1);
      }
    }
    first = false;
    kept.emplace_back(token);
  }
  return absl::StrJoin(kept, " ");
}

// ---- WatchTunnels ----------------------------------------------------------------------------

// One WatchTunnels stream. At most one thread moves it on at a time: the one that set
// pumping_, and none while a write is out (writing_; OnWriteDone pumps again). Any other
// thread that finds it busy (the dispatcher, say) only marks it kicked_, and the pump looks
// again before letting go.
class TunnelServiceImpl::Watcher final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  Watcher(TunnelServiceImpl* service, grpc::CallbackServerContext* context, std::string client,
          uint64_t since_revision)
      : service_(service),
        context_(context),
        client_(std::move(client)),
        start_revision_(service->manager_->revision()),
        need_snapshot_(since_revision == 0),
        fetched_(since_revision) {}

  const std::string& client() const { return client_; }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  // Writes the next event unless a write is already on its way.
  void Pump() {
    {
      absl::MutexLock lock(&mu_);
      if (finish_requested_) return;
      if (pumping_ || writing_) {
        kicked_ = true;
        return;
      }
      pumping_ = true;
    }
    do {
      PumpOnce();
    } while (ReleasePump());
  }

  // Closes the stream when it is more than the limit behind `revision`.
  void CheckLag(uint64_t revision) {
    uint64_t behind = 0;
    uint64_t resume_from = 0;
    {
      absl::MutexLock lock(&mu_);
      if (finish_requested_) return;
      const uint64_t from = std::max(written_, start_revision_);
      if (revision <= from || revision - from <= service_->limits_.max_watcher_lag) return;
      behind = revision - from;
      resume_from = written_;
    }
    RequestFinish(absl::ResourceExhaustedError(
        absl::StrCat("this watcher fell ", behind, " revisions behind (at most ",
                     service_->limits_.max_watcher_lag,
                     " allowed): read faster, or watch again with "
                     "since_revision=",
                     resume_from)));
  }

  // A stream closed whose client never took its status: cancelled once the grace is over.
  void CancelIfLingering(absl::Time now) {
    {
      absl::MutexLock lock(&mu_);
      if (!finish_requested_ ||
          now - finish_requested_at_ < service_->limits_.closed_watcher_grace) {
        return;
      }
    }
    // Not under mu_: the cancellation may reach OnCancel, which takes it.
    absl::MutexLock lock(&context_mu_);
    if (done_ || cancel_sent_) return;
    cancel_sent_ = true;
    context_->TryCancel();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
    }
    if (!ok) {  // the stream broke (cancelled, connection gone)
      RequestFinish(absl::CancelledError("the watch stream broke"));
      return;
    }
    Pump();
  }

  void OnCancel() override { RequestFinish(absl::CancelledError("the watch was cancelled")); }

  void OnDone() override {
    {
      absl::MutexLock lock(&context_mu_);
      done_ = true;  // context_ is gone
    }
    service_->Unregister(this);
    Unref();  // gRPC's reference
  }

 private:
  // Hands the next event to gRPC, fetching more from the manager when none is left; returns
  // with nothing written when there is nothing to write.
  void PumpOnce() {
    for (;;) {
      bool have_next = false;
      {
        absl::MutexLock lock(&mu_);
        kicked_ = false;
        if (finish_requested_) return;
        if (!pending_.empty()) {
          next_ = std::move(pending_.front());
          pending_.pop_front();
          have_next = true;
        }
      }
      if (!have_next) {
        std::deque<v1::TunnelEvent> batch = Fetch();  // the manager's lock only, briefly
        absl::MutexLock lock(&mu_);
        if (batch.empty()) return;
        pending_ = std::move(batch);
        continue;
      }
      Serialize(next_, &out_);
      {
        absl::MutexLock lock(&mu_);
        if (finish_requested_) return;
        writing_ = true;
        written_ = next_.revision();
      }
      StartWrite(&out_);
      return;
    }
  }

  // Lets go of the pump: true when it must go round again (kicked meanwhile and free to
  // write). A finish asked for while pumping is done here, never beside a StartWrite.
  bool ReleasePump() {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      if (!finish_requested_) {
        if (kicked_ && !writing_) return true;
        pumping_ = false;
        return false;
      }
      pumping_ = false;
      if (finish_called_) return false;
      finish_called_ = true;
      finish = finish_status_;
    }
    Finish(finish);
    return false;
  }

  void RequestFinish(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_requested_) return;
      finish_requested_ = true;
      finish_requested_at_ = absl::Now();
      finish_status_ = ToGrpcStatus(status);
      if (pumping_) return;  // the pump finishes as it lets go
      finish_called_ = true;
    }
    Finish(ToGrpcStatus(status));
  }

  v1::TunnelEvent Event(v1::TunnelEvent::Type type, uint64_t revision, const TunnelView* view,
                        const std::string& detail = std::string()) {
    v1::TunnelEvent event;
    event.set_type(type);
    event.set_revision(revision);
    event.set_detail(detail);
    if (view != nullptr) *event.mutable_tunnel() = TunnelToProto(view->spec, view->status);
    return event;
  }

  // The next events to write: the current set then SYNCED (after RESYNC when the watcher's
  // history is gone), else the events after the last one fetched. Pump-owned state only.
  std::deque<v1::TunnelEvent> Fetch() {
    std::deque<v1::TunnelEvent> batch;
    if (!need_snapshot_) {
      absl::StatusOr<std::vector<TunnelEvent>> events =
          service_->manager_->EventsAfter(fetched_, absl::ZeroDuration());
      if (events.ok()) {
        for (const TunnelEvent& event : *events) {
          batch.push_back(
              Event(EventTypeToProto(event.type), event.revision, &event.tunnel, event.detail));
          fetched_ = event.revision;
        }
        return batch;
      }
      need_snapshot_ = true;
      resync_ = true;
    }
    Snapshot snapshot = service_->manager_->TakeSnapshot();
    if (resync_) batch.push_back(Event(v1::TunnelEvent::RESYNC, snapshot.revision, nullptr));
    for (const TunnelView& view : snapshot.tunnels) {
      batch.push_back(Event(v1::TunnelEvent::EXISTING, snapshot.revision, &view));
    }
    batch.push_back(Event(v1::TunnelEvent::SYNCED, snapshot.revision, nullptr));
    fetched_ = snapshot.revision;
    need_snapshot_ = false;
    resync_ = false;
    return batch;
  }

  TunnelServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const std::string client_;
  const uint64_t start_revision_;
  std::atomic<int> refs_{1};  // gRPC's (released in OnDone), plus the dispatcher's while it works

  // Pump-owned: touched only by the thread holding the pump.
  bool need_snapshot_;
  bool resync_ = false;
  uint64_t fetched_;  // revision of the last event fetched from the manager
  v1::TunnelEvent next_;
  grpc::ByteBuffer out_;  // being written until OnWriteDone

  absl::Mutex mu_;
  std::deque<v1::TunnelEvent> pending_ ABSL_GUARDED_BY(mu_);  // fetched, not yet written
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;  // revision of the last event handed to gRPC
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time finish_requested_at_ ABSL_GUARDED_BY(mu_);
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);

  // Apart from mu_: held across TryCancel so that OnDone (which ends context_) cannot come in
  // between; the callbacks a cancellation brings take mu_ only.
  absl::Mutex context_mu_;
  bool done_ ABSL_GUARDED_BY(context_mu_) = false;
  bool cancel_sent_ ABSL_GUARDED_BY(context_mu_) = false;
};

TunnelServiceImpl::TunnelServiceImpl(TunnelManager* manager, AgentIdentity identity,
                                     TunnelServiceLimits limits)
    : manager_(manager),
      identity_(std::move(identity)),
      limits_(limits),
      changes_(limits.change_threads, limits.max_queued_changes) {}

TunnelServiceImpl::~TunnelServiceImpl() {
  std::thread dispatcher;
  {
    absl::MutexLock lock(&watchers_mu_);
    stopping_ = true;
    dispatcher = std::move(dispatcher_);
  }
  if (dispatcher.joinable()) dispatcher.join();
}

int TunnelServiceImpl::open_watchers() const {
  absl::MutexLock lock(&watchers_mu_);
  return static_cast<int>(watchers_.size());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* TunnelServiceImpl::WatchTunnels(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes) {
  v1::WatchTunnelsRequest request;
  if (absl::Status status = ParseRequest(*request_bytes, &request); !status.ok()) {
    return new RefusedWatch(status);
  }
  std::string client = ClientOfCaller(CallerOf(*context));
  auto* watcher = new Watcher(this, context, client, request.since_revision());
  {
    absl::MutexLock lock(&watchers_mu_);
    absl::Status refused;
    if (static_cast<int>(watchers_.size()) >= limits_.max_watchers) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("this agent serves at most ", limits_.max_watchers, " watchers in all"));
    } else if (watchers_by_client_[client] >= limits_.max_watchers_per_client) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("this agent serves at most ", limits_.max_watchers_per_client,
                       " watchers per client, and ", client, " has that many open"));
    }
    if (!refused.ok()) {
      if (watchers_by_client_[client] == 0) watchers_by_client_.erase(client);
      delete watcher;
      return new RefusedWatch(refused);
    }
    watchers_.insert(watcher);
    ++watchers_by_client_[client];
    if (!dispatcher_.joinable()) {
      // Read before this watcher's first fetch: a change made after that fetch is always
      // one the dispatcher has not seen yet, and wakes it.
      const uint64_t seen = manager_->revision();
      dispatcher_ = std::thread([this, seen] { Dispatch(seen); });
    }
  }
  // A resuming watcher first gets what it missed; a new one the current set.
  watcher->Pump();
  return watcher;
}

void TunnelServiceImpl::Unregister(Watcher* watcher) {
  absl::MutexLock lock(&watchers_mu_);
  watchers_.erase(watcher);
  auto it = watchers_by_client_.find(watcher->client());
  if (it != watchers_by_client_.end() && --it->second <= 0) watchers_by_client_.erase(it);
}

void TunnelServiceImpl::Dispatch(uint64_t seen) {
  // Waits are bounded, so a stopping service and lingering streams are noticed.
  constexpr absl::Duration kTick = absl::Milliseconds(200);
  for (;;) {
    absl::StatusOr<std::vector<TunnelEvent>> events = manager_->EventsAfter(seen, kTick);
    const uint64_t revision = manager_->revision();
    if (!events.ok() && revision == seen) absl::SleepFor(kTick);  // never spin
    std::vector<Watcher*> watchers;
    {
      absl::MutexLock lock(&watchers_mu_);
      if (stopping_) return;
      watchers.reserve(watchers_.size());
      for (Watcher* watcher : watchers_) {
        watcher->Ref();
        watchers.push_back(watcher);
      }
    }
    const absl::Time now = absl::Now();
    for (Watcher* watcher : watchers) {
      if (revision != seen) {
        watcher->CheckLag(revision);
        watcher->Pump();
      }
      watcher->CancelIfLingering(now);
      watcher->Unref();
    }
    seen = revision;
  }
}

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
    if (status.ok()) Serialize(response, response_bytes);
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// The tunnel a change request names, for the log line of a change refused before it ran.
std::string TunnelOf(const v1::CreateTunnelRequest& request) { return request.tunnel().name(); }
std::string TunnelOf(const v1::UpdateTunnelRequest& request) { return request.tunnel().name(); }
std::string TunnelOf(const v1::DeleteTunnelRequest& request) { return request.name(); }
std::string TunnelOf(const v1::ApplyTunnelsRequest&) { return std::string(); }

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
    if (status.ok()) Serialize(response, response_bytes);
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

// ---- The calls' work -----------------------------------------------------------------------

absl::Status TunnelServiceImpl::DoCreate(const grpc::ServerContextBase& context,
                                         const v1::CreateTunnelRequest& request,
                                         v1::Tunnel* response) {
  std::string bytes;
  absl::Status status = idempotency_.Run(
      "CreateTunnel", request.request_id(), Fingerprint(request), &bytes,
      [&](std::string* out) -> absl::Status {
        if (!request.has_tunnel()) return absl::InvalidArgumentError("tunnel: required");
        absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(request.tunnel());
        if (!spec.ok()) return spec.status();
        absl::StatusOr<TunnelView> view = manager_->Create(*spec);
        if (!view.ok()) return view.status();
        *out = TunnelToProto(view->spec, view->status).SerializeAsString();
        return absl::OkStatus();
      });
  LogChange(context, "tunnel.create", request.tunnel().name(), status,
            absl::StrCat("mode=", v1::TunnelMode_Name(request.tunnel().mode()),
                         " remote=", request.tunnel().remote()));
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
  int count = 0;
  for (const TunnelView& view : manager_->List()) {
    if (!after.empty() && view.spec.name <= after) continue;
    if (!Matches(request, view)) continue;
    if (count == page_size) {
      response->set_next_page_token(absl::WebSafeBase64Escape(response->tunnels(count - 1).name()));
      break;
    }
    *response->add_tunnels() = TunnelToProto(view.spec, view.status);
    ++count;
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
        std::vector<dataplane::TunnelSpec> desired;
        desired.reserve(request.tunnels_size());
        for (int i = 0; i < request.tunnels_size(); ++i) {
          absl::StatusOr<dataplane::TunnelSpec> spec = SpecFromProto(request.tunnels(i));
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
        for (const PlannedChange& change : result->changes) {
          v1::TunnelChange* c = answer.add_changes();
          c->set_name(change.name);
          c->set_action(ActionToProto(change.action));
          for (const std::string& f : change.changed_fields) c->add_changed_fields(f);
        }
        answer.set_dry_run(request.dry_run());
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
    summary = absl::StrCat("owner=", request.owner(), request.dry_run() ? " dry_run" : "", " ",
                           absl::StrJoin(actions, " ", absl::PairFormatter("=")));
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
}

}  // namespace tunnelagent::agent
