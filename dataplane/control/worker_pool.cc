#include "dataplane/control/worker_pool.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dataplane/packet/tunnel_mode.h"
#include "dataplane/tun/tun_device.h"

namespace tunnelagent::dataplane {

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Start(unsigned workers,
                                                              const StartWorker& start) {
  if (workers == 0) return absl::InvalidArgumentError("a worker pool needs at least one worker");
  std::vector<std::unique_ptr<PacketEngine>> engines;
  for (unsigned i = 0; i < workers; ++i) {
    absl::StatusOr<std::unique_ptr<PacketEngine>> engine = start(i);
    if (!engine.ok()) {
      return absl::Status(engine.status().code(),
                          absl::StrCat("dataplane worker ", i, ": ", engine.status().message()));
    }
    engines.push_back(*std::move(engine));
  }
  return std::unique_ptr<WorkerPool>(new WorkerPool(std::move(engines)));
}

WorkerPool::~WorkerPool() {
  // Workers stop (and stop using the queues) before the queues close.
  workers_.clear();
  absl::MutexLock lock(&mu_);
  for (auto& [name, tunnel] : tunnels_) {
    for (int fd : tunnel.queues) close(fd);
  }
  for (auto& [name, fds] : adopted_queues_) {
    for (int fd : fds) close(fd);
  }
}

std::vector<EngineDescriptor> WorkerPool::Descriptors() const {
  std::vector<EngineDescriptor> descriptors;
  for (const auto& worker : workers_) {
    std::vector<EngineDescriptor> own = worker->Descriptors();
    descriptors.insert(descriptors.end(), own.begin(), own.end());
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [name, tunnel] : tunnels_) {
    for (size_t i = 0; i < tunnel.queues.size(); ++i) {
      descriptors.push_back({.kind = EngineDescriptor::Kind::kDeviceQueue,
                             .fd = tunnel.queues[i],
                             .worker = static_cast<unsigned>(i + 1),
                             .tunnel = name});
    }
  }
  return descriptors;
}

absl::Status WorkerPool::PauseReading(absl::Duration timeout) {
  // Each worker's request first, so they all drain at the same time; then the waits (a
  // second request is harmless).
  for (const auto& worker : workers_) {
    worker->PauseReading(absl::ZeroDuration()).IgnoreError();
  }
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status status;
  for (const auto& worker : workers_) {
    status.Update(worker->PauseReading(std::max(deadline - absl::Now(), absl::ZeroDuration())));
  }
  return status;
}

void WorkerPool::AdoptDeviceQueues(const std::string& tunnel, std::vector<int> fds) {
  absl::MutexLock lock(&mu_);
  std::vector<int>& held = adopted_queues_[tunnel];
  for (int fd : held) close(fd);
  held = std::move(fds);
}

absl::Status WorkerPool::AddTunnel(const EngineTunnel& tunnel) {
  return AddTunnels(absl::MakeConstSpan(&tunnel, 1)).front();
}

absl::StatusOr<WorkerPool::Tunnel> WorkerPool::PrepareLocked(const EngineTunnel& tunnel) {
  if (!tunnel.stats || tunnel.stats->workers() < workers_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tunnel ", tunnel.name, ": its counters need ", workers_.size(), " workers"));
  }
  if (tunnels_.contains(tunnel.name)) {
    return absl::AlreadyExistsError(absl::StrCat("tunnel ", tunnel.name, " exists"));
  }
  Tunnel state;
  // Output sequence numbers must leave in order: one worker sends them.
  bool one_queue = tunnel.encap.sequence || workers_.size() == 1;
  if (auto adopted = adopted_queues_.find(tunnel.name); adopted != adopted_queues_.end()) {
    // The queues the replaced agent read, each to the worker of the same index, when they fit.
    if (!one_queue && adopted->second.size() + 1 == workers_.size()) {
      state.queues = std::move(adopted->second);
    } else {
      for (int fd : adopted->second) close(fd);
    }
    adopted_queues_.erase(adopted);
  }
  if (!one_queue && state.queues.empty()) {
    const TunDevice::Kind kind =
        IsEthernetMode(tunnel.encap.mode) ? TunDevice::Kind::kTap : TunDevice::Kind::kTun;
    const int ifindex = static_cast<int>(TunDevice::IndexOf(tunnel.name));
    for (size_t i = 1; i < workers_.size() && !one_queue; ++i) {
      absl::StatusOr<int> queue =
          ifindex == 0 ? absl::FailedPreconditionError("no device of the tunnel's name")
                       : TunDevice::OpenQueue(tunnel.name, kind, tunnel.vnet_header, ifindex);
      if (queue.ok()) {
        state.queues.push_back(*queue);
      } else if (absl::IsFailedPrecondition(queue.status())) {
        one_queue = true;  // a single-queue device (or a fake one in tests): worker 0 reads
      } else {
        for (int fd : state.queues) close(fd);
        return queue.status();
      }
    }
    if (one_queue) {
      for (int fd : state.queues) close(fd);
      state.queues.clear();
    }
  }
  return state;
}

PendingAdditions WorkerPool::BeginAddTunnels(absl::Span<const EngineTunnel> tunnels) {
  // What is begun here and settled when the caller waits.
  struct Batch {
    std::vector<absl::Status> answers;
    std::vector<size_t> ready;              // indexes into the tunnels asked for, in order
    std::vector<std::string> names;         // of each ready one
    std::vector<Tunnel> states;             // of each ready one
    std::vector<PendingAdditions> pending;  // one per worker
  };
  auto batch = std::make_shared<Batch>();
  batch->answers.resize(tunnels.size());
  absl::MutexLock lock(&mu_);
  // Each tunnel's queues first; then every worker takes its part of all of them in one round
  // trip, the workers side by side. The workers' mailboxes are filled under mu_, so every
  // worker sees the pool's adds and removes in the same order.
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < tunnels.size(); ++i) {
    if (!names.insert(tunnels[i].name).second) {
      batch->answers[i] =
          absl::AlreadyExistsError(absl::StrCat("tunnel ", tunnels[i].name, " exists"));
      continue;
    }
    absl::StatusOr<Tunnel> state = PrepareLocked(tunnels[i]);
    if (!state.ok()) {
      batch->answers[i] = state.status();
      continue;
    }
    batch->ready.push_back(i);
    batch->names.push_back(tunnels[i].name);
    batch->states.push_back(*std::move(state));
  }
  batch->pending.reserve(workers_.size());
  for (size_t w = 0; w < workers_.size() && !batch->ready.empty(); ++w) {
    std::vector<EngineTunnel> parts;
    parts.reserve(batch->ready.size());
    for (size_t k = 0; k < batch->ready.size(); ++k) {
      const bool one_queue = batch->states[k].queues.empty();
      EngineTunnel part = tunnels[batch->ready[k]];
      part.read_device = part.read_device && (w == 0 || !one_queue);
      if (w > 0 && !one_queue) part.device_fd = batch->states[k].queues[w - 1];
      parts.push_back(std::move(part));
    }
    batch->pending.push_back(workers_[w]->BeginAddTunnels(parts));
  }
  return PendingAdditions([this, batch]() -> std::vector<absl::Status> {
    std::vector<absl::Status>& answers = batch->answers;
    const std::vector<size_t>& ready = batch->ready;
    // added[w][k]: worker w took ready[k]. A refusal is the first worker's that refused.
    std::vector<std::vector<bool>> added(batch->pending.size(), std::vector<bool>(ready.size()));
    for (size_t w = 0; w < batch->pending.size(); ++w) {
      const std::vector<absl::Status> results = std::move(batch->pending[w]).Wait();
      for (size_t k = 0; k < ready.size(); ++k) {
        if (results[k].ok()) {
          added[w][k] = true;
        } else if (answers[ready[k]].ok()) {
          answers[ready[k]] = results[k];
        }
      }
    }
    absl::MutexLock lock(&mu_);
    for (size_t k = 0; k < ready.size(); ++k) {
      const std::string& name = batch->names[k];
      if (answers[ready[k]].ok()) {
        tunnels_.emplace(name, std::move(batch->states[k]));
        continue;
      }
      for (size_t w = 0; w < added.size(); ++w) {
        if (added[w][k]) workers_[w]->RemoveTunnel(name).IgnoreError();
      }
      for (int fd : batch->states[k].queues) close(fd);
    }
    return std::move(answers);
  });
}

absl::Status WorkerPool::RemoveTunnel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  absl::Status status;
  for (const auto& worker : workers_) status.Update(worker->RemoveTunnel(name));
  // No worker uses the queues any more once each RemoveTunnel has returned.
  for (int fd : it->second.queues) close(fd);
  tunnels_.erase(it);
  return status;
}

absl::Status WorkerPool::ChangePeers(const std::string& tunnel, std::vector<EnginePeer> upserted,
                                     std::vector<uint32_t> removed) {
  absl::MutexLock lock(&mu_);
  if (!tunnels_.contains(tunnel)) {
    return absl::NotFoundError(absl::StrCat("tunnel ", tunnel, " not found"));
  }
  // Every worker builds its part side by side; the mailboxes are filled under mu_, so every
  // worker sees the pool's changes in the same order.
  std::vector<std::future<absl::Status>> answers;
  answers.reserve(workers_.size());
  for (size_t w = 0; w < workers_.size(); ++w) {
    const bool last = w + 1 == workers_.size();
    answers.push_back(workers_[w]->BeginChangePeers(tunnel, last ? std::move(upserted) : upserted,
                                                    last ? std::move(removed) : removed));
  }
  absl::Status status;
  for (std::future<absl::Status>& answer : answers) status.Update(answer.get());
  return status;
}

size_t WorkerPool::DeviceQueues(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) return 0;
  return it->second.queues.size() + 1;
}

absl::Status WorkerPool::Health(absl::Duration stall) const {
  std::vector<std::string> failing;
  for (const auto& worker : workers_) {
    if (absl::Status s = worker->Health(stall); !s.ok()) failing.emplace_back(s.message());
  }
  if (failing.empty()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrJoin(failing, "; "));
}

DataplaneCountersSnapshot WorkerPool::counters() const {
  // No lock: workers_ is fixed after Start, and each worker's counters are read by value.
  DataplaneCountersSnapshot sum;
  for (const auto& worker : workers_) sum += worker->counters();
  return sum;
}

}  // namespace tunnelagent::dataplane
