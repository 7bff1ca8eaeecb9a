#include "dataplane/backends/worker.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"
#include "dataplane/cpu_affinity.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {
namespace {

CoreOptions CoreOptionsFor(const EngineOptions& options, size_t coalescer_buffers) {
  CoreOptions core;
  core.worker = options.worker;
  core.workers = options.workers;
  core.path_mtu_expiry = options.path_mtu_expiry;
  core.coalescer_buffers = coalescer_buffers;
  core.first_fragment_id = UnderlayIo::RandomFragmentId();
  return core;
}

}  // namespace

Worker::Worker(const EngineOptions& options, size_t coalescer_buffers)
    : options_(options),
      heartbeat_(options.worker),
      core_(&io_, &clock_, this, CoreOptionsFor(options, coalescer_buffers)) {}

Worker::~Worker() { CloseReceiveSockets(sockets_); }

absl::Status Worker::Start(int eventfd_flags) {
  if (absl::Status s = mailbox_.Open(eventfd_flags); !s.ok()) return s;
  // IPPROTO_RAW (IP_HDRINCL) sockets send for every tunnel, one raw socket per family and
  // protocol receives everything of that protocol addressed to this host.
  if (absl::Status s = io_.Open(options_.socket_buffer_bytes); !s.ok()) return s;
  if (absl::Status s = too_big_.Open(); !s.ok()) return s;
  if (options_.worker < options_.adopted_receive_sockets.size() &&
      !options_.adopted_receive_sockets[options_.worker].empty()) {
    // Handed over by the agent this one replaces: the same sockets, each packet read once by
    // whichever process takes it. Copies, so a backend that fails to start (and closes its
    // sockets) leaves the caller's for the next one to try.
    for (const ReceiveSocket& adopted : options_.adopted_receive_sockets[options_.worker]) {
      const int fd = fcntl(adopted.fd, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) {
        const int error = errno;
        CloseReceiveSockets(sockets_);
        return ErrnoStatus(error, absl::StrCat("adopting underlay socket ", adopted.fd));
      }
      sockets_.push_back(ReceiveSocket{fd, adopted.ipv6, adopted.protocol});
    }
  } else {
    absl::StatusOr<std::vector<ReceiveSocket>> sockets =
        OpenReceiveSockets(options_.socket_buffer_bytes, options_.worker, options_.workers);
    if (!sockets.ok()) return sockets.status();
    sockets_ = std::move(*sockets);
  }

  std::promise<absl::Status> ready;
  std::future<absl::Status> ready_future = ready.get_future();
  thread_ = std::thread([this, &ready] {
    BoundThreadRole bound(role_);  // from here to its end, the thread owns the worker's state
    absl::Status status =
        SetUpWorkerThread(options_.worker, WorkerCpu(options_.cpus, options_.worker));
    if (status.ok()) status = SetUpOnThread();
    const bool ok = status.ok();
    ready.set_value(std::move(status));
    if (ok) Run();
  });
  absl::Status status = ready_future.get();
  if (!status.ok()) thread_.join();
  return status;
}

void Worker::StopThread() {
  if (!thread_.joinable()) return;
  mailbox_.Stop().IgnoreError();
  thread_.join();
}

void Worker::RequestPause() {
  pause_requested_.store(true, std::memory_order_release);
  // Wakes the thread as a command would; it looks at the request when it runs its commands.
  const uint64_t one = 1;
  (void)!write(mailbox_.fd(), &one, sizeof one);
}

void Worker::RequestReceiving() {
  receiving_requested_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!write(mailbox_.fd(), &one, sizeof one);
}

void Worker::Housekeeping() {
  const absl::Time now = absl::Now();
  if (now < next_housekeeping_) return;
  next_housekeeping_ = now + kTickResolution;
  too_big_.Read(kTooBigReadsPerTick, [this](const TooBigReport& report) {
    role_.Assume();  // Read calls back at once, on this thread
    core_.TakeTooBig(report);
  });
  core_.Tick(now);
}

absl::Status Worker::AddTunnel(const EngineTunnel& config) {
  absl::StatusOr<TunnelDatapath*> tunnel = core_.AddTunnel(config);
  if (!tunnel.ok()) return tunnel.status();
  if (absl::Status s = AttachTunnel(**tunnel); !s.ok()) {
    core_.EraseTunnel(*tunnel);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<FouSocket*> Worker::AcquireFouPort(const TunnelDatapath& tunnel, bool* opened) {
  return fou_ports_.AcquireFor(tunnel.config(), options_.socket_buffer_bytes, options_.workers > 1,
                               opened);
}

void Worker::ReleaseFouPort(const TunnelDatapath& tunnel) {
  if (tunnel.fou()) fou_ports_.Release(tunnel.config().encap.udp_dport);
}

void Worker::Finish(std::string why) {
  heartbeat_.Stopped(std::move(why));
  core_.Clear();
  mailbox_.Close();
  if (stop_command_) stop_command_->done.set_value(absl::OkStatus());
}

std::vector<EngineDescriptor> WorkerEngine::Descriptors() const {
  std::vector<EngineDescriptor> descriptors;
  for (const ReceiveSocket& socket : worker_->receive_sockets()) {
    descriptors.push_back({.kind = EngineDescriptor::Kind::kReceiveSocket,
                           .fd = socket.fd,
                           .worker = worker_->index(),
                           .ipv6 = socket.ipv6,
                           .protocol = socket.protocol,
                           .tunnel = {}});
  }
  return descriptors;
}

absl::Status WorkerEngine::PauseReading(absl::Duration timeout) {
  worker_->RequestPause();
  const absl::Time deadline = absl::Now() + timeout;
  while (!worker_->reading_paused()) {
    // A worker that has stopped reads nothing any more either.
    if (!worker_->heartbeat().Health(absl::InfiniteDuration()).ok()) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("dataplane worker ", worker_->index(), " still has reads in flight"));
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

}  // namespace tunnelagent::dataplane
