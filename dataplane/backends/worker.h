// What every I/O backend's worker has, whatever way it moves bytes: its thread, the command
// mailbox, the heartbeat, the clock, the underlay's sockets, the fou ports and the packet core
// that makes every packet decision. A backend (UringWorker, EpollWorker) adds only how it reads
// and writes: its loop, its buffers and its completions.
//
// Everything that moves packets belongs to the worker's thread: it is ABSL_GUARDED_BY(role_),
// which that thread holds from its start to its end (BoundThreadRole), so clang's thread-safety
// analysis rejects a path to it from any other thread, and checked builds abort on one.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_WORKER_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_WORKER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dataplane/control/engine_options.h"
#include "dataplane/control/mailbox.h"
#include "dataplane/control/thread_role.h"
#include "dataplane/control/worker_heartbeat.h"
#include "dataplane/core/packet_core.h"
#include "dataplane/packet_engine.h"
#include "dataplane/underlay/fou.h"
#include "dataplane/underlay/sockets.h"
#include "dataplane/underlay/underlay_io.h"

namespace tunnelagent::dataplane {

class Worker : public CoalescedWriter {
 public:
  Worker(const EngineOptions& options, size_t coalescer_buffers);
  // A backend's destructor calls StopThread first: the thread uses the backend's members.
  ~Worker() override;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Opens the sockets (OpenUnderlay) and starts the thread: it names and pins itself, then
  // runs SetUpOnThread (an error ends it at once and is returned here), then Run.
  absl::Status Start(int eventfd_flags);

  CommandMailbox& mailbox() { return mailbox_; }
  const WorkerHeartbeat& heartbeat() const { return heartbeat_; }
  // Read from any thread: the counters are atomics with the worker's thread the one writer.
  const DataplaneCounters& counters() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return core_.counters();
  }
  unsigned index() const { return options_.worker; }
  // The underlay receive sockets: fixed once Start returned, readable from any thread.
  const std::vector<ReceiveSocket>& receive_sockets() const { return sockets_; }

  // Asks the worker's thread to stop reading for good (PacketEngine::PauseReading); from any
  // thread. reading_paused() turns true once no read of the worker's is in flight.
  void RequestPause();
  // Reads the underlay sockets from now on (EngineOptions::defer_receiving); any thread.
  void RequestReceiving();
  bool reading_paused() const { return reading_paused_.load(std::memory_order_acquire); }

 protected:
  // On the worker's thread, before anyone relies on it (the ring is set up there, so its
  // memory is first touched on the worker's own CPU).
  virtual absl::Status SetUpOnThread() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    return absl::OkStatus();
  }
  // The loop: until the mailbox says stop (stopping_), then lets go of everything and answers
  // the stop command (Finish).
  virtual void Run() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) = 0;
  // Stops and joins the thread, if it runs.
  void StopThread();

  // For the backend's loop: whether RequestPause came, and the answer once its reads are done.
  bool pause_requested() const { return pause_requested_.load(std::memory_order_acquire); }
  void MarkReadingPaused() { reading_paused_.store(true, std::memory_order_release); }
  // Whether the sockets are to be read: true unless deferred and not yet asked for.
  bool receiving_requested() const { return receiving_requested_.load(std::memory_order_acquire); }

  // Every time round the loop: the clock, and the heartbeat Health reads.
  void Beat() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    clock_.Update();
    heartbeat_.Beat(clock_.monotonic_nanos());
  }
  // Errors about the tunnels' packets (rare, read with plain calls, a bounded number a tick)
  // and the tunnels' own housekeeping, at most once a tick.
  void Housekeeping() ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // Commands from the mailbox: additions through the core and then the backend's
  // AttachTunnel; removals to `remove`; changes of peers to the core alone (sends copy their
  // destination, so the backend keeps nothing of a peer); a stop sets stopping_.
  template <typename Remove>
  void RunCommands(Remove&& remove) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) {
    std::unique_ptr<EngineCommand> stop = mailbox_.RunQueued(
        [this](const EngineTunnel& config) {
          role_.Assume();  // RunQueued calls back at once, on this thread
          return AddTunnel(config);
        },
        remove,
        [this](const EngineCommand& command) {
          role_.Assume();  // RunQueued calls back at once, on this thread
          return core_.ChangePeers(command.name, command.upserted, command.removed);
        });
    if (stop) {
      stopping_ = true;
      stop_command_ = std::move(stop);
    }
  }
  // What the backend does for a tunnel the core took: buffers, reads, fou receive sockets.
  // An error undoes the addition.
  virtual absl::Status AttachTunnel(TunnelDatapath& tunnel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_) = 0;
  // The fou receive socket of a fou tunnel's port: a user more, opened when new (*opened).
  absl::StatusOr<FouSocket*> AcquireFouPort(const TunnelDatapath& tunnel, bool* opened)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  void ReleaseFouPort(const TunnelDatapath& tunnel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);
  // The worker leaves its loop for good: says why (Health), forgets the tunnels, answers what
  // is queued with UNAVAILABLE and the stop command with OK.
  void Finish(std::string why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  const EngineOptions options_;
  // The worker's thread; what only it may touch is guarded by it.
  ThreadRole role_{"dataplane worker"};
  WorkerClock clock_ ABSL_GUARDED_BY(role_);
  WorkerHeartbeat heartbeat_;
  UnderlayIo io_;
  TooBigReader too_big_;  // opened before the thread starts, read by it alone
  std::vector<ReceiveSocket> sockets_;
  FouPorts fou_ports_ ABSL_GUARDED_BY(role_);
  PacketCore core_ ABSL_GUARDED_BY(role_);
  CommandMailbox mailbox_;
  bool stopping_ ABSL_GUARDED_BY(role_) = false;

 private:
  absl::Status AddTunnel(const EngineTunnel& config) ABSL_EXCLUSIVE_LOCKS_REQUIRED(role_);

  std::thread thread_;
  std::atomic<bool> pause_requested_{false};
  std::atomic<bool> reading_paused_{false};
  std::atomic<bool> receiving_requested_{!options_.defer_receiving};
  std::unique_ptr<EngineCommand> stop_command_ ABSL_GUARDED_BY(role_);
  absl::Time next_housekeeping_ ABSL_GUARDED_BY(role_) = absl::InfinitePast();
};

// A PacketEngine of one worker, whichever backend it is.
class WorkerEngine : public PacketEngine {
 public:
  absl::Status AddTunnel(const EngineTunnel& tunnel) override {
    return worker_->mailbox().AddTunnel(tunnel);
  }
  PendingAdditions BeginAddTunnels(absl::Span<const EngineTunnel> tunnels) override {
    return worker_->mailbox().BeginAddTunnels(tunnels);
  }
  absl::Status RemoveTunnel(const std::string& name) override {
    return worker_->mailbox().RemoveTunnel(name);
  }
  absl::Status ChangePeers(const std::string& tunnel, std::vector<EnginePeer> upserted,
                           std::vector<uint32_t> removed) override {
    return worker_->mailbox().ChangePeers(tunnel, std::move(upserted), std::move(removed));
  }
  std::future<absl::Status> BeginChangePeers(const std::string& tunnel,
                                             std::vector<EnginePeer> upserted,
                                             std::vector<uint32_t> removed) override {
    return worker_->mailbox().BeginChangePeers(tunnel, std::move(upserted), std::move(removed));
  }
  DataplaneCountersSnapshot counters() const override { return worker_->counters().Snapshot(); }
  absl::Status Health(absl::Duration stall) const override {
    return worker_->heartbeat().Health(stall);
  }
  std::vector<EngineDescriptor> Descriptors() const override;
  absl::Status PauseReading(absl::Duration timeout) override;
  void StartReceiving() override { worker_->RequestReceiving(); }

 protected:
  explicit WorkerEngine(std::unique_ptr<Worker> worker) : worker_(std::move(worker)) {}
  std::unique_ptr<Worker> worker_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_WORKER_H_
