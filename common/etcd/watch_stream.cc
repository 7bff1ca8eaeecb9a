#include "common/etcd/watch_stream.h"

#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/etcd/status.h"

namespace tunnelagent::etcd {
namespace {

// What the watch's thread and its owner share. The thread holds it (and the connection) by
// shared_ptr, so that a watch whose owner lets go of it from inside a callback still finds it.
struct WatchState {
  std::shared_ptr<Connection> connection;
  std::string key;
  std::string range_end;
  int64_t start_revision = 0;
  WatchCallbacks callbacks;
  std::string what;  // the watch, named in errors

  absl::Mutex mu;
  // Set by the owner's destructor: no callback is started after this.
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // The stream's context, for the owner to cancel it.
  std::shared_ptr<grpc::ClientContext> context ABSL_GUARDED_BY(mu);
  // The answer to the create request: set once, then the owner returns.
  absl::Status startup ABSL_GUARDED_BY(mu);
  bool startup_done ABSL_GUARDED_BY(mu) = false;
};

bool Stopping(WatchState& state) {
  absl::MutexLock lock(&state.mu);
  return state.stopping;
}

void FinishStartup(WatchState& state, absl::Status status) {
  absl::MutexLock lock(&state.mu);
  state.startup = std::move(status);
  state.startup_done = true;
}

// How a watch that etcd or the network ended is reported: the codes a caller acts on (list
// again from scratch, fix the roles or the credentials) kept, anything else UNAVAILABLE.
absl::Status EndStatus(absl::Status status) {
  switch (status.code()) {
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kUnavailable:
      return status;
    default:
      return absl::UnavailableError(status.message());
  }
}

using WatchStreamRpc =
    grpc::ClientReaderWriterInterface<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;

// Opens the stream and has etcd create the watch; null when the startup failed (then recorded
// in the state) or the owner is stopping. `*first` is etcd's first answer.
std::unique_ptr<WatchStreamRpc> Open(WatchState& state, etcdserverpb::WatchResponse* first) {
  const absl::Time deadline = absl::Now() + state.connection->options().call_timeout;
  etcdserverpb::WatchRequest request;
  etcdserverpb::WatchCreateRequest* create = request.mutable_create_request();
  create->set_key(state.key);
  create->set_range_end(state.range_end);
  create->set_start_revision(state.start_revision);
  // Lets the owner learn how far the store got while nothing under the prefix changed.
  create->set_progress_notify(true);

  for (int attempt = 0;; ++attempt) {
    auto context = std::make_shared<grpc::ClientContext>();
    std::string token;
    if (absl::Status status = state.connection->AddToken(context.get(), deadline, &token);
        !status.ok()) {
      FinishStartup(state, status);
      return nullptr;
    }
    // etcd ends the stream when its member loses the cluster's leader, instead of leaving the
    // watch silent on a member cut off from the others.
    context->AddMetadata("hasleader", "true");
    {
      absl::MutexLock lock(&state.mu);
      if (state.stopping) return nullptr;
      state.context = context;
    }
    std::unique_ptr<WatchStreamRpc> stream = state.connection->watch().Watch(context.get());
    etcdserverpb::WatchResponse& response = *first;
    if (!stream->Write(request) || !stream->Read(&response)) {
      grpc::Status status = stream->Finish();
      if (attempt == 0 && state.connection->has_user() && IsStaleToken(status)) {
        state.connection->TokenRejected(token);
        continue;
      }
      FinishStartup(state, FromGrpc(state.what, status));
      return nullptr;
    }
    if (response.canceled()) {
      context->TryCancel();
      stream->Finish();
      if (attempt == 0 && state.connection->has_user() &&
          IsStaleTokenMessage(response.cancel_reason())) {
        state.connection->TokenRejected(token);
        continue;
      }
      FinishStartup(state, FromEtcdMessage(state.what, response.cancel_reason()));
      return nullptr;
    }
    FinishStartup(state, absl::OkStatus());
    return stream;
  }
}

void Deliver(WatchState& state, const std::vector<WatchEvent>& events, int64_t revision) {
  if (Stopping(state) || !state.callbacks.on_events) return;
  state.callbacks.on_events(events, revision);
}

void End(WatchState& state, const absl::Status& why) {
  if (Stopping(state) || !state.callbacks.on_end) return;
  state.callbacks.on_end(why);
}

// One answer of etcd's on a created watch, delivered; not OK when it ends the watch.
// `*reached` is the revision the owner has everything up to, never reported backwards.
absl::Status Handle(WatchState& state, const etcdserverpb::WatchResponse& response,
                    int64_t* reached) {
  if (response.compact_revision() != 0) {
    return absl::OutOfRangeError(
        absl::StrCat("etcd ", state.what, ": revisions before ", response.compact_revision(),
                     " were compacted; list again and watch from the list's revision + 1"));
  }
  if (response.canceled()) {
    return FromEtcdMessage(state.what, response.cancel_reason().empty() ? "etcd canceled the watch"
                                                                        : response.cancel_reason());
  }
  if (response.created()) return absl::OkStatus();
  if (response.events().empty()) {
    // A progress notification: etcd sends those only to a watcher that has caught up, so
    // nothing under the prefix changed up to the store's revision.
    const int64_t revision = response.header().revision();
    if (revision > *reached) {
      *reached = revision;
      Deliver(state, {}, revision);
    }
    return absl::OkStatus();
  }
  std::vector<WatchEvent> events;
  events.reserve(response.events_size());
  int64_t revision = *reached;
  for (const mvccpb::Event& e : response.events()) {
    WatchEvent event;
    event.type =
        e.type() == mvccpb::Event::DELETE ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
    event.kv = ToKeyValue(e.kv());
    revision = std::max(revision, e.kv().mod_revision());
    events.push_back(std::move(event));
  }
  // Not the header's revision: while catching up, etcd sends 1000 revisions at a time with
  // the store's current revision in each header, and a watcher restarted from there would
  // miss the rest.
  *reached = revision;
  Deliver(state, events, revision);
  return absl::OkStatus();
}

void Run(std::shared_ptr<WatchState> state) {
  etcdserverpb::WatchResponse response;
  std::unique_ptr<WatchStreamRpc> stream = Open(*state, &response);
  if (stream == nullptr) return;
  std::shared_ptr<grpc::ClientContext> context;
  {
    absl::MutexLock lock(&state->mu);
    context = state->context;
  }

  int64_t reached = std::max<int64_t>(state->start_revision - 1, 0);
  // The first answer is the creation's; anything else in it is handled as the rest are.
  absl::Status end = Handle(*state, response, &reached);
  while (end.ok() && stream->Read(&response)) end = Handle(*state, response, &reached);
  context->TryCancel();
  grpc::Status finished = stream->Finish();
  if (end.ok()) {
    if (Stopping(*state)) return;
    end =
        finished.ok()
            ? absl::UnavailableError(absl::StrCat("etcd ", state->what, ": etcd ended the stream"))
            : FromGrpc(state->what, finished);
  }
  End(*state, EndStatus(std::move(end)));
}

class WatchStream : public Watch {
 public:
  WatchStream(std::shared_ptr<WatchState> state, std::thread thread)
      : state_(std::move(state)), thread_(std::move(thread)) {}

  ~WatchStream() override {
    std::shared_ptr<grpc::ClientContext> context;
    {
      absl::MutexLock lock(&state_->mu);
      state_->stopping = true;
      context = state_->context;
    }
    if (context != nullptr) context->TryCancel();
    if (!thread_.joinable()) return;
    if (thread_.get_id() == std::this_thread::get_id()) {
      // Destroyed from one of its own callbacks: the thread ends by itself once the callback
      // returns (it calls no other: stopping is set), holding the state it needs.
      thread_.detach();
    } else {
      thread_.join();
    }
  }

 private:
  std::shared_ptr<WatchState> state_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Watch>> StartWatch(std::shared_ptr<Connection> connection,
                                                  std::string key, std::string range_end,
                                                  int64_t start_revision,
                                                  WatchCallbacks callbacks) {
  auto state = std::make_shared<WatchState>();
  state->what =
      absl::StrCat("watch of \"", absl::CHexEscape(key), "\" from revision ", start_revision);
  const absl::Duration call_timeout = connection->options().call_timeout;
  state->connection = std::move(connection);
  state->key = std::move(key);
  state->range_end = std::move(range_end);
  state->start_revision = start_revision;
  state->callbacks = std::move(callbacks);

  auto watch = std::make_unique<WatchStream>(state, std::thread(Run, state));
  absl::Status startup;
  {
    absl::MutexLock lock(&state->mu);
    // The thread bounds its own steps by call_timeout; a stream etcd never answers is not.
    if (!state->mu.AwaitWithTimeout(absl::Condition(&state->startup_done),
                                    call_timeout + absl::Seconds(1))) {
      startup = absl::DeadlineExceededError(absl::StrCat(
          "etcd ", state->what, ": no answer within ", absl::FormatDuration(call_timeout)));
    } else {
      startup = state->startup;
    }
  }
  // On failure the watch's destructor cancels the stream and joins the thread.
  if (!startup.ok()) return startup;
  return watch;
}

}  // namespace tunnelagent::etcd
