// tunnelagent.v1.TunnelService's WatchTunnels: streams on the callback API, moved on by one
// dispatcher thread as the manager's revision grows, none holding a thread of its own; limits
// in all and per client.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/caller_identity.h"
#include "agent/grpc_service.h"
#include "agent/log.h"
#include "agent/peer_spec.h"
#include "agent/proto_convert.h"
#include "agent/request_parse.h"

namespace tunnelagent::agent {
namespace {

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
    case TunnelEvent::Type::kPeerAdded:
      return v1::TunnelEvent::PEER_ADDED;
    case TunnelEvent::Type::kPeerUpdated:
      return v1::TunnelEvent::PEER_UPDATED;
    case TunnelEvent::Type::kPeerDeleted:
      return v1::TunnelEvent::PEER_DELETED;
    case TunnelEvent::Type::kPeerStateChanged:
      return v1::TunnelEvent::PEER_STATE_CHANGED;
  }
  return v1::TunnelEvent::TYPE_UNSPECIFIED;
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
      SerializeResponse(next_, &out_);
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
  // An event about a peer of the multipoint tunnel `tunnel`: the tunnel named, the peer whole.
  v1::TunnelEvent PeerEvent(v1::TunnelEvent::Type type, uint64_t revision,
                            const std::string& tunnel, dataplane::TunnelMode mode,
                            const PeerView& peer, const std::string& detail = std::string()) {
    v1::TunnelEvent event;
    event.set_type(type);
    event.set_revision(revision);
    event.set_detail(detail);
    event.mutable_tunnel()->set_name(tunnel);
    event.mutable_tunnel()->set_mode(ModeToProto(mode));
    event.mutable_tunnel()->set_multipoint(true);
    *event.mutable_peer() = PeerToProto(peer);
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
          if (event.peer != nullptr) {
            batch.push_back(PeerEvent(EventTypeToProto(event.type), event.revision,
                                      event.tunnel->spec.name, event.tunnel->spec.mode, *event.peer,
                                      event.detail));
          } else {
            batch.push_back(Event(EventTypeToProto(event.type), event.revision, event.tunnel.get(),
                                  event.detail));
          }
          fetched_ = event.revision;
        }
        return batch;
      }
      need_snapshot_ = true;
      resync_ = true;
    }
    Snapshot snapshot = service_->manager_->TakeSnapshot();
    if (resync_) batch.push_back(Event(v1::TunnelEvent::RESYNC, snapshot.revision, nullptr));
    std::map<std::string, dataplane::TunnelMode> modes;
    for (const TunnelView& view : snapshot.tunnels) {
      batch.push_back(Event(v1::TunnelEvent::EXISTING, snapshot.revision, &view));
      modes[view.spec.name] = view.spec.mode;
    }
    for (const auto& [tunnel, peer] : snapshot.peers) {
      batch.push_back(
          PeerEvent(v1::TunnelEvent::EXISTING, snapshot.revision, tunnel, modes[tunnel], peer));
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

}  // namespace tunnelagent::agent
