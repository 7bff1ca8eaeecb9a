// A hot upgrade: the running agent (the old) hands the descriptors it moves packets and
// serves clients with to the agent replacing it (the new, started with --takeover), over the
// unix socket <state_dir>/handover.sock, so that no packet is lost in between.
//
// Why it works: a TUN queue, a raw socket and a listening socket are each one open file
// description whichever process holds a descriptor of it, and a read takes a packet (or an
// accept a connection) off it once. So the new agent reads the very queues the old one reads,
// side by side, until the old stops reading; nothing queued is dropped or duplicated. The
// state directory's flock belongs to the open file description too: it passes with its
// descriptor, and one agent per node still holds.
//
// The protocol (proto/tunnelagent/handover/v1/handover.proto): SOCK_SEQPACKET datagrams of
// one Message each, descriptors as SCM_RIGHTS, at most kMaxFdsPerMessage a datagram.
// No gRPC here.
#ifndef TUNNELAGENT_AGENT_HANDOVER_H_
#define TUNNELAGENT_AGENT_HANDOVER_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agent/link_control.h"
#include "agent/scoped_fd.h"
#include "tunnelagent/handover/v1/handover.pb.h"

namespace tunnelagent::agent {

namespace handover = ::tunnelagent::handover::v1;

// The protocol spoken; a new agent of another version is refused and restarts ordinarily.
inline constexpr uint32_t kHandoverProtocolVersion = 1;
// In the state directory.
inline constexpr char kHandoverSocketFile[] = "handover.sock";
// Descriptors in one datagram: the kernel takes at most SCM_MAX_FD (253).
inline constexpr size_t kMaxFdsPerMessage = 250;
// A datagram larger than this is refused (a batch of 250 descriptions is a few KiB).
inline constexpr size_t kMaxHandoverMessageBytes = 64 << 10;

std::string HandoverSocketPath(const std::string& state_dir);

// ---- Framing ---------------------------------------------------------------------------------

// Sends `message` as one datagram with `fds` (at most kMaxFdsPerMessage; not closed here).
// INVALID_ARGUMENT for too many fds or a message too large.
absl::Status SendHandoverMessage(int socket, const handover::Message& message,
                                 absl::Span<const int> fds = {});

// Receives one datagram within `timeout` into `message`, and the descriptors it carried into
// `fds` (owned). UNAVAILABLE when the peer closed the socket, DEADLINE_EXCEEDED on timeout,
// DATA_LOSS for a datagram cut short or descriptors the kernel had to drop (more than
// kMaxFdsPerMessage), INVALID_ARGUMENT for one that does not parse. On any error no descriptor
// is left open.
absl::Status ReceiveHandoverMessage(int socket, absl::Duration timeout, handover::Message* message,
                                    std::vector<ScopedFd>* fds);

// One descriptor to hand over and what it is. The fd stays its owner's.
struct HandoverItem {
  handover::Descriptor what;
  int fd = -1;
};

// The offer and every DescriptorBatch after it.
absl::Status SendHandoverOffer(int socket, handover::Offer offer,
                               const std::vector<HandoverItem>& items);

// ---- The new agent's side ---------------------------------------------------------------------

// What the old agent handed over: every descriptor with what it is, owned here until taken.
class HandedOver {
 public:
  HandedOver() = default;
  HandedOver(HandedOver&&) = default;
  HandedOver& operator=(HandedOver&&) = default;

  const handover::Offer& offer() const { return offer_; }
  // The first descriptor of `kind` (the locks, the listeners), released to the caller; -1
  // when there is none.
  int Take(handover::Descriptor::Kind kind);
  // Every descriptor of `kind`, released to the caller, with what each is.
  std::vector<std::pair<handover::Descriptor, int>> TakeAll(handover::Descriptor::Kind kind);
  size_t size() const { return items_.size(); }

  // Checks an offer and its batches as received: as many descriptors as described, each of
  // a known kind. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<HandedOver> Assemble(handover::Offer offer,
                                             std::vector<handover::Descriptor> descriptors,
                                             std::vector<ScopedFd> fds);

 private:
  handover::Offer offer_;
  std::vector<std::pair<handover::Descriptor, ScopedFd>> items_;
};

// The new agent's connection to the old one.
class HandoverClient {
 public:
  // Connects to the old agent's handover socket in `state_dir` and says hello with
  // `protocol_version`. NOT_FOUND when no agent listens there (none runs: start as usual).
  static absl::StatusOr<HandoverClient> Connect(const std::string& state_dir,
                                                uint32_t protocol_version,
                                                const std::string& agent_version);

  HandoverClient(HandoverClient&&) = default;
  HandoverClient& operator=(HandoverClient&&) = default;

  // The old agent's answer: its offer and descriptors. ABORTED with the old agent's reason
  // when it refused (a version mismatch): restart ordinarily instead.
  absl::StatusOr<HandedOver> Receive(absl::Duration timeout);
  // Says the new agent serves (its dataplane reads the handed-over queues) and waits up to
  // `timeout` for the old one to say it has stopped reading and accepting.
  absl::Status Serving(absl::Duration timeout);

 private:
  explicit HandoverClient(ScopedFd socket) : socket_(std::move(socket)) {}
  ScopedFd socket_;
};

// ---- The old agent's side ---------------------------------------------------------------------

// What the running agent does at each step of a handover; each is called on the server's
// thread.
struct HandoverHooks {
  // A new agent said hello with the right version: refuse changes from now on (the last one
  // durable before this returns) and list what to hand over. An error is sent as a refusal
  // (and `resume` called).
  std::function<absl::StatusOr<std::vector<HandoverItem>>()> prepare;
  // The new agent went away before it served: take changes again and go on as before.
  std::function<void(const absl::Status& why)> resume;
  // The new agent (`pid`) serves: stop reading and accepting. The new agent is told once
  // this returns; the old agent then winds down (its owner's business).
  std::function<void(pid_t pid)> release;
  // A new agent of another protocol version was refused: it asks this one to stop next
  // (SIGTERM), to restart ordinarily. Optional.
  std::function<void()> refused;
};

class HandoverServer {
 public:
  struct Options {
    std::string state_dir;
    std::string agent_version;
    uint32_t protocol_version = kHandoverProtocolVersion;
    // How long a new agent may take between receiving the descriptors and serving (it
    // restores every tunnel meanwhile) before the handover is given up.
    absl::Duration serving_timeout = absl::Seconds(60);
    // How long a step of the conversation may take otherwise.
    absl::Duration step_timeout = absl::Seconds(5);
  };

  // Listens on <state_dir>/handover.sock (mode 0600; the agent's own uid or root may connect,
  // checked again by SO_PEERCRED), replacing a stale one: only the holder of the state
  // directory's lock calls this.
  static absl::StatusOr<std::unique_ptr<HandoverServer>> Listen(Options options);
  ~HandoverServer();  // Stop()

  HandoverServer(const HandoverServer&) = delete;
  HandoverServer& operator=(const HandoverServer&) = delete;

  // Serves handovers one at a time on a thread of its own, until one completes or Stop.
  void Start(HandoverHooks hooks);
  // Stops listening. Called by an agent that stops on its own (the socket file is removed
  // unless a handover completed: then it is the new agent's).
  void Stop();
  // Whether a handover completed (release was called).
  bool handed_over() const;

 private:
  HandoverServer(Options options, ScopedFd listen_fd, ScopedFd stop_fd)
      : options_(std::move(options)),
        listen_fd_(std::move(listen_fd)),
        stop_fd_(std::move(stop_fd)) {}
  void Loop();
  // One new agent's conversation; true when it took over.
  bool Session(int socket);

  const Options options_;
  ScopedFd listen_fd_;
  ScopedFd stop_fd_;  // an eventfd: Stop writes it
  HandoverHooks hooks_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  bool handed_over_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int session_fd_ ABSL_GUARDED_BY(mu_) = -1;  // the conversation in progress, if any
};

// ---- Devices ----------------------------------------------------------------------------------

// The kernel's LinkControl, except that AttachDevice takes a device handed over (its first
// queue's descriptor) instead of opening it: a TUN device without multiple queues takes one
// descriptor only, and a new queue of a multi-queue one would leave what the kernel steers
// into the old agent's queues unread. Devices not taken are closed with this object (they
// stay: they are persistent).
class HandedOverLinks final : public LinkControl {
 public:
  HandedOverLinks(LinkControl* links, std::vector<std::pair<handover::Descriptor, int>> devices);
  ~HandedOverLinks() override;

  absl::StatusOr<std::unique_ptr<Device>> CreateDevice(const std::string& name,
                                                       DeviceKind kind) override {
    return links_->CreateDevice(name, kind);
  }
  absl::StatusOr<std::unique_ptr<Device>> AttachDevice(const std::string& name,
                                                       DeviceKind kind) override;
  absl::StatusOr<std::vector<std::string>> ListAgentDevices() override {
    return links_->ListAgentDevices();
  }
  absl::Status DeleteDevice(const std::string& name) override { return links_->DeleteDevice(name); }
  absl::Status RemoveAgentDevices() override { return links_->RemoveAgentDevices(); }
  void RemoveDevices(std::vector<std::unique_ptr<Device>> devices) override {
    links_->RemoveDevices(std::move(devices));
  }
  absl::Status SetMtu(const Device& device, uint32_t mtu) override {
    return links_->SetMtu(device, mtu);
  }
  absl::Status SetUp(const Device& device) override { return links_->SetUp(device); }
  absl::Status AddAddress(const Device& device, const dataplane::IpPrefix& address) override {
    return links_->AddAddress(device, address);
  }
  absl::Status DeleteAddress(const Device& device, const dataplane::IpPrefix& address) override {
    return links_->DeleteAddress(device, address);
  }
  absl::Status AddRoute(const Device& device, const dataplane::IpPrefix& route) override {
    return links_->AddRoute(device, route);
  }
  absl::Status DeleteRoute(const Device& device, const dataplane::IpPrefix& route) override {
    return links_->DeleteRoute(device, route);
  }
  absl::StatusOr<std::map<int, bool>> LinkStates() override { return links_->LinkStates(); }
  absl::StatusOr<uint32_t> PathMtu(const dataplane::IpAddress& remote) override {
    return links_->PathMtu(remote);
  }
  absl::StatusOr<std::map<int, DeviceState>> DeviceStates() override {
    return links_->DeviceStates();
  }
  absl::StatusOr<UnderlayRoute> RouteTo(const dataplane::IpAddress& destination) override {
    return links_->RouteTo(destination);
  }

  // Devices handed over and not attached (yet).
  size_t unclaimed() const;

 private:
  LinkControl* const links_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::pair<handover::Descriptor, int>> devices_ ABSL_GUARDED_BY(mu_);
};

// ---- Service managers ---------------------------------------------------------------------------

// Tells the service manager (systemd, Type=notify) that this process is the service's main
// process now and ready: "MAINPID=<pid>\nREADY=1" to $NOTIFY_SOCKET. Nothing when it is unset.
absl::Status NotifyServiceManager(const std::string& state);

// Starts `binary` with `args` (argv[1..]) and --takeover appended, with every signal
// unblocked, not waited for. The pid of the new process.
absl::StatusOr<pid_t> SpawnTakeover(const std::string& binary,
                                    const std::vector<std::string>& args);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_HANDOVER_H_
