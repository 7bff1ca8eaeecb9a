// The hot upgrade as the agent's main runs it, on both sides.
//
// The new agent (--takeover): takes the running agent's descriptors, starts its dataplane on
// them, says when it serves, and binds /metrics once the old agent has let go of the port.
// The running agent: hands over on request, stops reading and accepting, and ends (or idles,
// --after_handover=wait); SIGUSR2 starts its successor.
//
// The conversation itself, and the descriptors' meaning, are agent/handover.h's.
#ifndef TUNNELAGENT_AGENT_TAKEOVER_H_
#define TUNNELAGENT_AGENT_TAKEOVER_H_

#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "agent/caller_identity.h"
#include "agent/handover.h"
#include "agent/link_control.h"
#include "agent/tunnel_manager.h"
#include "common/metrics_endpoint.h"
#include "dataplane/control/engine_options.h"
#include "dataplane/packet_engine.h"
#include "prometheus/collectable.h"

namespace tunnelagent::agent {

// Who this agent is to the other side of a handover: both run on the same state directory.
struct HandoverPeer {
  std::string state_dir;
  std::string agent_version;
  uint32_t protocol_version = kHandoverProtocolVersion;
};

// ---- The new agent's side ---------------------------------------------------------------------

class Takeover {
 public:
  // Asks the agent running on `self.state_dir` for its descriptors. nullopt when there is
  // none to take over from, or it refused (another handover protocol) or failed: then it was
  // asked to stop (SIGTERM: it keeps its devices, the next start re-attaches them;
  // `*asked_to_stop` is set) and this agent starts as after a restart, once the state
  // directory's lock is free.
  static std::optional<Takeover> Begin(const HandoverPeer& self, bool* asked_to_stop);

  Takeover(Takeover&&) = default;
  Takeover& operator=(Takeover&&) = default;

  // What the running agent handed over and is not taken yet (the node's claim takes the
  // locks and the listeners).
  HandedOver& handed() { return handed_; }

  // The running agent's underlay sockets into `options`, by worker, so each packet is read
  // once by one of the two agents; as many workers as it has (its sockets' steering filters
  // divide the packets between that many). Receiving waits until the tunnels are in the
  // engine (PacketEngine::StartReceiving).
  void AddReceiveSockets(dataplane::EngineOptions* options);
  // Once the engine has started, or failed to: its workers hold copies of the sockets.
  void CloseReceiveSockets(dataplane::EngineOptions* options);

  // The tunnels' devices are the running agent's descriptors (and their further queues, given
  // to `engine`), attached through them; whatever is not in the state stays closed.
  std::unique_ptr<HandedOverLinks> AdoptDevices(dataplane::PacketEngine* engine,
                                                LinkControl* kernel_links);

  // Every tunnel is in the engine (since `restored_at`) and the API accepts: tells the
  // running agent, which stops reading and accepting, and exits. Logs how long each step took.
  void ConfirmServing(absl::Time restored_at);

 private:
  Takeover(absl::Time started, HandoverClient client, HandedOver handed)
      : started_(started),
        handed_at_(absl::Now()),
        client_(std::move(client)),
        handed_(std::move(handed)) {}

  absl::Time started_;
  absl::Time handed_at_;
  HandoverClient client_;
  HandedOver handed_;
  // Between AddReceiveSockets and CloseReceiveSockets.
  std::vector<std::pair<handover::Descriptor, int>> receive_sockets_;
};

// /metrics for an agent that took over: the running agent serves it until it exits
// (the HTTP server binds the port itself, it cannot be handed over), so this binds it once it
// is free, trying every 100 ms for 30 s at most, on a thread of its own.
class DeferredMetricsExposer {
 public:
  DeferredMetricsExposer(std::string listen,
                         std::vector<std::weak_ptr<prometheus::Collectable>> collectables);
  ~DeferredMetricsExposer();  // Stop(); /metrics, if bound, goes with this object

  DeferredMetricsExposer(const DeferredMetricsExposer&) = delete;
  DeferredMetricsExposer& operator=(const DeferredMetricsExposer&) = delete;

  // Stops trying; a bound /metrics serves on until this object goes.
  void Stop();

 private:
  absl::Notification stopping_;
  std::unique_ptr<MetricsEndpoint> endpoint_;  // written by the thread, until it is joined
  std::thread thread_;
};

// ---- The running agent's side ----------------------------------------------------------------

// What the running agent hands over to a new one, and what it stops once that one serves.
struct HandoverSources {
  TunnelManager* manager = nullptr;
  dataplane::PacketEngine* engine = nullptr;
  int state_dir_lock = -1;
  int namespace_lock = -1;                 // -1: none held
  ApiListener* api_listener = nullptr;     // null: the agent accepts on no listener of its own
  ApiListener* health_listener = nullptr;  // null: no --health_listen
  // TLS or a bearer token: gRPC's own listener holds the API's unix socket, and gRPC cannot
  // give it away, so no handover is possible.
  bool grpc_owns_unix_socket = false;
};

class HandoverOnRequest {
 public:
  // Listens for a new agent on the state directory's handover socket. Where it cannot (said
  // in the log), no hot upgrade is possible and the agent runs on as before.
  HandoverOnRequest(const HandoverPeer& self, const HandoverSources& sources);
  ~HandoverOnRequest();  // Stop()

  HandoverOnRequest(const HandoverOnRequest&) = delete;
  HandoverOnRequest& operator=(const HandoverOnRequest&) = delete;

  // Returns on SIGTERM or SIGINT, or once a new agent serves. `signals` (SIGTERM, SIGINT,
  // SIGUSR2) are blocked in every thread and taken here. SIGUSR2 starts `binary` (the agent's
  // path at its start) with `args` and --takeover, unless the one started before still runs.
  void WaitForStop(const sigset_t& signals, const std::string& binary,
                   const std::vector<std::string>& args);

  // Once a new agent serves, or the new agent that was refused a handover stopped this one to
  // restart ordinarily: ends the process, tearing nothing down (the devices, whatever
  // --keep_devices says, the socket files and the queues are the new agent's). After a
  // handover it first lets the dataplane's reads drain and, with `after_handover` "wait",
  // idles until SIGTERM. Returns when neither happened.
  void ExitIfReplaced(const std::string& after_handover) const;

  // Stops listening: the agent stops on its own.
  void Stop();

 private:
  absl::StatusOr<std::vector<HandoverItem>> Prepare();
  void Release(pid_t pid);
  pid_t handed_over_to() const;

  const HandoverSources sources_;
  mutable absl::Mutex mu_;
  pid_t handed_over_to_ ABSL_GUARDED_BY(mu_) = 0;
  // The thread in WaitForStop, which Release wakes.
  std::optional<pthread_t> waiter_ ABSL_GUARDED_BY(mu_);
  absl::Time pause_start_ ABSL_GUARDED_BY(mu_);  // when Release asked the engine to pause
  // When a new agent of another handover protocol was refused (it stops this one next, to
  // restart ordinarily: the devices stay for it).
  std::optional<absl::Time> refused_at_ ABSL_GUARDED_BY(mu_);
  // Last: destroyed first, so its thread, which calls back into this object, has stopped.
  std::unique_ptr<HandoverServer> server_;
};

// The agent's own binary, resolved at start: an upgrade replaces the file, and /proc/self/exe
// then names a deleted one. Empty when unknown.
std::string AgentBinaryPath();

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TAKEOVER_H_
