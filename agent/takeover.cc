#include "agent/takeover.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/time/clock.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/node_guard.h"

namespace tunnelagent::agent {

// ---- Takeover ---------------------------------------------------------------------------------

std::optional<Takeover> Takeover::Begin(const HandoverPeer& self, bool* asked_to_stop) {
  const absl::Time started = absl::Now();
  absl::StatusOr<HandoverClient> client =
      HandoverClient::Connect(self.state_dir, self.protocol_version, self.agent_version);
  if (absl::IsNotFound(client.status())) {
    Log("INFO", "takeover: %s; starting as usual", client.status().message());
    return std::nullopt;
  }
  absl::Status status = client.status();
  if (client.ok()) {
    absl::StatusOr<HandedOver> handed = client->Receive(absl::Seconds(30));
    if (handed.ok()) {
      Log("INFO", "takeover: agent %s (pid %d) handed over %d descriptors",
          handed->offer().agent_version(), handed->offer().pid(), static_cast<int>(handed->size()));
      return Takeover(started, *std::move(client), *std::move(handed));
    }
    status = handed.status();
  }
  const pid_t holder = StateDirLock::HolderOf(self.state_dir);
  Log("WARNING", "handover %s: %s; falling back to an ordinary restart (stopping pid %d)",
      absl::IsAborted(status) ? "refused" : "failed", status.message(), static_cast<int>(holder));
  if (holder > 0 && holder != getpid() && kill(holder, SIGTERM) == 0) *asked_to_stop = true;
  return std::nullopt;
}

void Takeover::AddReceiveSockets(dataplane::EngineOptions* options) {
  receive_sockets_ = handed_.TakeAll(handover::Descriptor::RECEIVE_SOCKET);
  const unsigned workers = handed_.offer().workers();
  if (workers > 0 && workers != options->workers) {
    Log("INFO", "takeover: %d dataplane workers, as the running agent has (flags ask for %d)",
        static_cast<int>(workers), static_cast<int>(options->workers));
    options->workers = workers;
  }
  options->adopted_receive_sockets.resize(options->workers);
  options->defer_receiving = true;  // until the tunnels are in the engine
  for (const auto& [what, fd] : receive_sockets_) {
    if (what.worker() >= options->workers) continue;
    options->adopted_receive_sockets[what.worker()].push_back(
        {fd, what.ipv6(), static_cast<uint8_t>(what.protocol())});
  }
}

void Takeover::CloseReceiveSockets(dataplane::EngineOptions* options) {
  for (const auto& [what, fd] : receive_sockets_) close(fd);
  receive_sockets_.clear();
  options->adopted_receive_sockets.clear();
}

std::unique_ptr<HandedOverLinks> Takeover::AdoptDevices(dataplane::PacketEngine* engine,
                                                        LinkControl* kernel_links) {
  std::map<std::string, std::vector<std::pair<uint32_t, int>>> queues;
  for (const auto& [what, fd] : handed_.TakeAll(handover::Descriptor::DEVICE_QUEUE)) {
    queues[what.tunnel()].emplace_back(what.worker(), fd);
  }
  for (auto& [name, by_worker] : queues) {
    std::sort(by_worker.begin(), by_worker.end());
    std::vector<int> fds;
    for (const auto& [worker, fd] : by_worker) fds.push_back(fd);
    engine->AdoptDeviceQueues(name, std::move(fds));
  }
  return std::make_unique<HandedOverLinks>(kernel_links,
                                           handed_.TakeAll(handover::Descriptor::DEVICE));
}

void Takeover::ConfirmServing(absl::Time restored_at) {
  const absl::Duration serving_after = absl::Now() - started_;
  if (absl::Status status = client_.Serving(absl::Seconds(10)); status.ok()) {
    Log("INFO",
        "takeover: serving %.3f s after the start (descriptors after %.3f s, tunnels in the "
        "engine after %.3f s); agent pid %d has stopped reading and accepting",
        absl::ToDoubleSeconds(serving_after), absl::ToDoubleSeconds(handed_at_ - started_),
        absl::ToDoubleSeconds(restored_at - started_), handed_.offer().pid());
  } else {
    // It died meanwhile (kill -9): this agent holds the lock and every descriptor already.
    Log("WARNING", "takeover: the old agent did not confirm (%s); serving anyway",
        status.message());
  }
}

// ---- DeferredMetricsExposer -------------------------------------------------------------------

DeferredMetricsExposer::DeferredMetricsExposer(
    std::string listen, std::vector<std::weak_ptr<prometheus::Collectable>> collectables) {
  thread_ = std::thread([this, listen = std::move(listen), collectables = std::move(collectables)] {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::string error;
    do {
      absl::StatusOr<std::unique_ptr<MetricsEndpoint>> bound =
          MetricsEndpoint::Listen(listen, kMetricsPrefix);
      if (bound.ok()) {
        for (const std::weak_ptr<prometheus::Collectable>& c : collectables) {
          (*bound)->RegisterCollectable(c);
        }
        endpoint_ = *std::move(bound);
        Log("INFO", "metrics: serving http://%s/metrics", listen);
        return;
      }
      error = std::string(bound.status().message());
    } while (!stopping_.WaitForNotificationWithTimeout(absl::Milliseconds(100)) &&
             absl::Now() < deadline);
    Log("ERROR", "metrics: cannot listen on %s: %s; no /metrics", listen, error);
  });
}

DeferredMetricsExposer::~DeferredMetricsExposer() { Stop(); }

void DeferredMetricsExposer::Stop() {
  if (!stopping_.HasBeenNotified()) stopping_.Notify();
  if (thread_.joinable()) thread_.join();
}

// ---- HandoverOnRequest ------------------------------------------------------------------------

HandoverOnRequest::HandoverOnRequest(const HandoverPeer& self, const HandoverSources& sources)
    : sources_(sources) {
  absl::StatusOr<std::unique_ptr<HandoverServer>> server =
      HandoverServer::Listen({.state_dir = self.state_dir,
                              .agent_version = self.agent_version,
                              .protocol_version = self.protocol_version});
  if (!server.ok()) {
    Log("WARNING", "handover: %s; no hot upgrade possible", server.status().message());
    return;
  }
  server_ = *std::move(server);
  server_->Start({
      .prepare = [this] { return Prepare(); },
      .resume =
          [this](const absl::Status&) {
            sources_.manager->Unfreeze();
            Log("INFO", "handover: given up; changes are taken again");
          },
      .release = [this](pid_t pid) { Release(pid); },
      .refused =
          [this] {
            absl::MutexLock lock(&mu_);
            refused_at_ = absl::Now();
          },
  });
}

HandoverOnRequest::~HandoverOnRequest() { Stop(); }

void HandoverOnRequest::Stop() {
  if (server_ != nullptr) server_->Stop();
}

absl::StatusOr<std::vector<HandoverItem>> HandoverOnRequest::Prepare() {
  if (sources_.grpc_owns_unix_socket) {
    return absl::FailedPreconditionError(
        "the API's unix socket is gRPC's own (TLS or a bearer token): it cannot be handed "
        "over");
  }
  TunnelManager& manager = *sources_.manager;
  if (absl::Status status = manager.RestoreStatus(); !status.ok()) return status;
  manager.Freeze();
  std::vector<HandoverItem> items;
  auto add = [&items](handover::Descriptor::Kind kind, int fd) {
    HandoverItem item;
    item.what.set_kind(kind);
    item.fd = fd;
    items.push_back(std::move(item));
  };
  add(handover::Descriptor::STATE_DIR_LOCK, sources_.state_dir_lock);
  if (sources_.namespace_lock >= 0) {
    add(handover::Descriptor::NAMESPACE_LOCK, sources_.namespace_lock);
  }
  if (sources_.api_listener != nullptr) {
    add(handover::Descriptor::API_LISTENER, sources_.api_listener->listen_fd());
  }
  if (sources_.health_listener != nullptr) {
    add(handover::Descriptor::HEALTH_LISTENER, sources_.health_listener->listen_fd());
  }
  for (const TunnelManager::HandoverDevice& device : manager.DevicesForHandover()) {
    HandoverItem item;
    item.what.set_kind(handover::Descriptor::DEVICE);
    item.what.set_tunnel(device.name);
    item.what.set_tap(device.tap);
    item.fd = device.fd;
    items.push_back(std::move(item));
  }
  for (const dataplane::EngineDescriptor& d : sources_.engine->Descriptors()) {
    HandoverItem item;
    item.what.set_kind(d.kind == dataplane::EngineDescriptor::Kind::kReceiveSocket
                           ? handover::Descriptor::RECEIVE_SOCKET
                           : handover::Descriptor::DEVICE_QUEUE);
    item.what.set_worker(d.worker);
    item.what.set_ipv6(d.ipv6);
    item.what.set_protocol(d.protocol);
    item.what.set_tunnel(d.tunnel);
    item.fd = d.fd;
    items.push_back(std::move(item));
  }
  return items;
}

void HandoverOnRequest::Release(pid_t pid) {
  // The new agent reads the same queues: stop taking packets (a read already done still
  // delivers its packet), and stop accepting (its listener accepts). Asked here, waited for
  // before the exit: the new agent reads already, and what this one's reads took meanwhile
  // it still delivers.
  // The listeners first: from here on every new connection is the new agent's.
  for (ApiListener* listener : {sources_.api_listener, sources_.health_listener}) {
    if (listener == nullptr) continue;
    listener->LeaveSocketFile();  // the new agent's now
    listener->Stop();
  }
  sources_.engine->PauseReading(absl::ZeroDuration()).IgnoreError();
  const absl::Time pause_start = absl::Now();
  absl::MutexLock lock(&mu_);
  pause_start_ = pause_start;
  handed_over_to_ = pid;
  // WaitForStop returns now, not at its next tick: the calls in progress finish, and the
  // connections still open are told to go to the new agent, without delay.
  if (waiter_.has_value()) pthread_kill(*waiter_, SIGUSR2);
}

pid_t HandoverOnRequest::handed_over_to() const {
  absl::MutexLock lock(&mu_);
  return handed_over_to_;
}

void HandoverOnRequest::WaitForStop(const sigset_t& signals, const std::string& binary,
                                    const std::vector<std::string>& args) {
  pid_t upgrade = 0;  // the agent SIGUSR2 started, while it runs; 0: none
  const timespec tick = {0, 100'000'000};
  {
    absl::MutexLock lock(&mu_);
    waiter_ = pthread_self();
  }
  absl::Cleanup forget_waiter = [this] {  // no wake-up for a thread that may be gone
    absl::MutexLock lock(&mu_);
    waiter_.reset();
  };
  for (;;) {
    if (upgrade != 0 && waitpid(upgrade, nullptr, WNOHANG) != 0) upgrade = 0;
    if (const pid_t to = handed_over_to(); to != 0) {
      Log("INFO", "handover: agent pid %d serves; finishing the calls in progress", to);
      return;
    }
    const int signal = sigtimedwait(&signals, nullptr, &tick);
    if (signal < 0) continue;
    // Release's wake-up (a SIGUSR2 to this thread) once a new agent serves.
    if (signal == SIGUSR2 && handed_over_to() != 0) continue;
    if (signal == SIGUSR2) {
      if (upgrade != 0) {
        Log("WARNING", "received SIGUSR2: the upgrade started before (pid %d) still runs",
            static_cast<int>(upgrade));
        continue;
      }
      absl::StatusOr<pid_t> pid =
          binary.empty() ? absl::FailedPreconditionError("the agent's binary is unknown")
                         : SpawnTakeover(binary, args);
      if (pid.ok()) {
        upgrade = *pid;
        Log("INFO", "received SIGUSR2: started %s --takeover (pid %d)", binary,
            static_cast<int>(*pid));
      } else {
        Log("ERROR", "received SIGUSR2: %s", pid.status().message());
      }
      continue;
    }
    Log("INFO", "received %s, shutting down", signal == SIGTERM ? "SIGTERM" : "SIGINT");
    return;
  }
}

void HandoverOnRequest::ExitIfReplaced(const std::string& after_handover) const {
  pid_t to;
  absl::Time pause_start;
  std::optional<absl::Time> refused_at;
  {
    absl::MutexLock lock(&mu_);
    to = handed_over_to_;
    pause_start = pause_start_;
    refused_at = refused_at_;
  }
  if (to != 0) {
    if (absl::Status status = sources_.engine->PauseReading(absl::Seconds(2)); !status.ok()) {
      Log("WARNING", "handover: dataplane: %s", status.message());
    } else {
      Log("INFO", "handover: dataplane reads stopped and drained %.3f s after the release",
          absl::ToDoubleSeconds(absl::Now() - pause_start));
    }
    // Everything is the new agent's: the devices (whatever --keep_devices says), the socket
    // files, the queues. Nothing is torn down: the process ends and its descriptors with it.
    if (after_handover == "wait") {
      Log("INFO", "handover: done (pid %d serves); idle until SIGTERM (--after_handover=wait)",
          static_cast<int>(to));
      sigset_t stop;
      sigemptyset(&stop);
      sigaddset(&stop, SIGTERM);
      sigaddset(&stop, SIGINT);
      int signal = 0;
      sigwait(&stop, &signal);
    }
    Log("INFO", "handover: done (pid %d serves); exiting", static_cast<int>(to));
    fflush(stdout);
    fflush(stderr);
    _exit(0);
  }
  if (refused_at.has_value() && absl::Now() - *refused_at < absl::Minutes(1)) {
    // The new agent that was refused a handover stopped this one: it re-attaches the devices.
    Log("INFO", "stopped for the agent that was refused a handover; devices kept for it");
    fflush(stdout);
    fflush(stderr);
    _exit(0);
  }
}

std::string AgentBinaryPath() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : std::string();
}

}  // namespace tunnelagent::agent
