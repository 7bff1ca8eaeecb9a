// Several dataplane workers behind one PacketEngine, so every core moves packets. Each worker
// is a whole engine (io_uring or epoll) with its own thread, ring, sockets and buffers; they
// share nothing on the per-packet path:
//   - transmit: each tunnel device has one queue per worker (IFF_MULTI_QUEUE), and the kernel
//     spreads what the host sends into it over the queues by flow;
//   - receive: each worker's raw sockets carry a steering filter that takes only its share of
//     the packets, by inner flow (fou: SO_REUSEPORT sockets, by 4-tuple);
//   - counters: each worker writes its own (TunnelStats), summed when read.
// A tunnel whose device has a single queue (one made by an older run), or that numbers its
// packets (oseq: one sender keeps them in order), is read by worker 0 alone; every worker still
// writes what it receives for it.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_WORKER_POOL_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_WORKER_POOL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

class WorkerPool final : public PacketEngine {
 public:
  // Starts worker `index` of the pool (its options say which of how many it is).
  using StartWorker = std::function<absl::StatusOr<std::unique_ptr<PacketEngine>>(unsigned index)>;

  // `workers` (>= 1) engines from `start`; the first error stops the ones already started.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Start(unsigned workers,
                                                           const StartWorker& start);
  ~WorkerPool() override;

  // INVALID_ARGUMENT when the tunnel's stats have fewer workers than the pool.
  absl::Status AddTunnel(const EngineTunnel& tunnel) override;
  // Every worker takes all of them in one round trip (a restart adds thousands), all the
  // workers at once; the answers settle (a tunnel some worker refused is taken back from the
  // others) when waited for. Until then the pool does not know the tunnels: a RemoveTunnel of
  // one of them is NOT_FOUND.
  PendingAdditions BeginAddTunnels(absl::Span<const EngineTunnel> tunnels) override;
  absl::Status RemoveTunnel(const std::string& name) override;
  // Every worker gets the change, in the same order as the adds and removes; the answer once
  // all have it: NOT_FOUND when the pool has no such tunnel, else the first worker's refusal
  // (every worker refuses the same peers, as they hold the same ones).
  absl::Status ChangePeers(const std::string& tunnel, std::vector<EnginePeer> upserted,
                           std::vector<uint32_t> removed) override;
  // The workers' counters summed, into the caller's own copy.
  DataplaneCountersSnapshot counters() const override;
  const char* backend_name() const override { return workers_.front()->backend_name(); }
  size_t workers() const override { return workers_.size(); }
  // Every worker's health: OK when all are, else what each failing one says.
  absl::Status Health(absl::Duration stall) const override;
  // Every worker's receive sockets, and the further queues of every tunnel's device.
  std::vector<EngineDescriptor> Descriptors() const override;
  // Every worker at once, then waits for each.
  absl::Status PauseReading(absl::Duration timeout) override;
  void StartReceiving() override {
    for (const auto& worker : workers_) worker->StartReceiving();
  }
  // Taken by AddTunnel of `tunnel` when there is one fd per worker but the first.
  void AdoptDeviceQueues(const std::string& tunnel, std::vector<int> fds) override;

  // How many of the tunnel's device queues the workers read (1 or workers()); 0 when there
  // is no such tunnel. For tests and logs.
  size_t DeviceQueues(const std::string& name) const;

 private:
  explicit WorkerPool(std::vector<std::unique_ptr<PacketEngine>> workers)
      : workers_(std::move(workers)) {}

  struct Tunnel {
    std::vector<int> queues;  // the extra device queues the pool opened, for workers 1..n-1
  };

  // What AddTunnels settles before asking the workers: the tunnel's further device queues
  // (none: worker 0 alone reads it). ALREADY_EXISTS, INVALID_ARGUMENT or the queue's error.
  absl::StatusOr<Tunnel> PrepareLocked(const EngineTunnel& tunnel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::vector<std::unique_ptr<PacketEngine>> workers_;  // fixed after Start
  // Serialises adds and removes, so the workers' tunnel sets agree.
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Tunnel> tunnels_ ABSL_GUARDED_BY(mu_);
  // Queues handed over by the agent this one replaced, until their tunnel is added.
  absl::flat_hash_map<std::string, std::vector<int>> adopted_queues_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_WORKER_POOL_H_
