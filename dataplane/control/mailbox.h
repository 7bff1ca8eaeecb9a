// Commands from control threads to a dataplane worker's thread: queued under a lock (never on
// the packet path) and signalled through an eventfd the worker watches and reads.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_MAILBOX_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_MAILBOX_H_

#include <deque>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

struct EngineCommand {
  enum class Kind { kAdd, kRemove, kChangePeers, kStop };
  Kind kind = Kind::kAdd;
  EngineTunnel tunnel;  // kAdd
  std::string name;     // kRemove, kChangePeers
  // kChangePeers: what PacketEngine::ChangePeers was given.
  std::vector<EnginePeer> upserted;
  std::vector<uint32_t> removed;
  std::promise<absl::Status> done;
};

class CommandMailbox {
 public:
  CommandMailbox() = default;
  ~CommandMailbox();
  CommandMailbox(const CommandMailbox&) = delete;
  CommandMailbox& operator=(const CommandMailbox&) = delete;

  // Creates the eventfd (EFD_CLOEXEC plus `eventfd_flags`).
  absl::Status Open(int eventfd_flags);
  int fd() const { return fd_; }

  // Queues a command and waits for the dataplane thread's answer; UNAVAILABLE after Close().
  absl::Status Call(std::unique_ptr<EngineCommand> command);
  // Call() with a kAdd of `tunnel`, checked first (CheckEngineTunnel).
  absl::Status AddTunnel(const EngineTunnel& tunnel);
  // AddTunnel of each of `tunnels`, queued together behind one wake-up: one round trip to the
  // dataplane thread for all of them (a restart attaches thousands). Their answers in order,
  // waited for by the caller when it chooses (PendingAdditions::Wait).
  PendingAdditions BeginAddTunnels(absl::Span<const EngineTunnel> tunnels);
  // Call() with a kRemove of `name`.
  absl::Status RemoveTunnel(const std::string& name);
  // Call() with a kChangePeers of the tunnel `name`.
  absl::Status ChangePeers(const std::string& name, std::vector<EnginePeer> upserted,
                           std::vector<uint32_t> removed);
  // The same, queued: the answer comes when the dataplane thread has taken it.
  std::future<absl::Status> BeginChangePeers(const std::string& name,
                                             std::vector<EnginePeer> upserted,
                                             std::vector<uint32_t> removed);
  // Call() with a kStop.
  absl::Status Stop();

  // For the dataplane thread: runs every queued command, oldest first. An addition is
  // answered with what `add(const EngineTunnel&)` returns; a removal is handed to
  // `remove(std::unique_ptr<EngineCommand>)`, which answers it (at once, or when the last
  // operation on the tunnel's device is done); a change of peers is answered with what
  // `change_peers(const EngineCommand&)` returns. Returns the stop command, if one came: the
  // thread answers it once it has let go of everything.
  template <typename Add, typename Remove, typename ChangePeers>
  std::unique_ptr<EngineCommand> RunQueued(Add&& add, Remove&& remove, ChangePeers&& change_peers) {
    std::unique_ptr<EngineCommand> stop;
    for (auto& command : TakeAll()) {
      switch (command->kind) {
        case EngineCommand::Kind::kAdd:
          command->done.set_value(add(command->tunnel));
          break;
        case EngineCommand::Kind::kRemove:
          remove(std::move(command));
          break;
        case EngineCommand::Kind::kChangePeers:
          command->done.set_value(change_peers(*command));
          break;
        case EngineCommand::Kind::kStop:
          stop = std::move(command);
          break;
      }
    }
    return stop;
  }

  // For the dataplane thread as it stops: answers what is queued, and whatever comes later,
  // with UNAVAILABLE, so nobody waits forever on a command that came too late.
  void Close();

 private:
  std::deque<std::unique_ptr<EngineCommand>> TakeAll();
  // Queues `commands` and wakes the dataplane thread once; false (nothing queued) after Close().
  bool Queue(std::vector<std::unique_ptr<EngineCommand>>& commands);

  int fd_ = -1;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<EngineCommand>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_MAILBOX_H_
