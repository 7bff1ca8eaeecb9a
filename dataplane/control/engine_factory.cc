#include "dataplane/control/engine_factory.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataplane/backends/epoll_engine.h"
#include "dataplane/backends/uring_engine.h"
#include "dataplane/control/worker_pool.h"

namespace tunnelagent::dataplane {

absl::StatusOr<IoBackend> ParseIoBackend(absl::string_view name) {
  if (name == "auto") return IoBackend::kAuto;
  if (name == "uring" || name == "io_uring") return IoBackend::kUring;
  if (name == "epoll") return IoBackend::kEpoll;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown io backend \"", name, "\": want auto, uring or epoll"));
}

absl::string_view IoBackendName(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kUring:
      return "uring";
    case IoBackend::kEpoll:
      return "epoll";
  }
  return "auto";
}

namespace {

absl::StatusOr<std::unique_ptr<PacketEngine>> StartOne(IoBackend backend,
                                                       const EngineOptions& options,
                                                       std::string* fallback_reason) {
  if (backend != IoBackend::kEpoll) {
    absl::StatusOr<std::unique_ptr<UringEngine>> uring = UringEngine::Start(options);
    if (uring.ok()) return std::unique_ptr<PacketEngine>(*std::move(uring));
    if (backend == IoBackend::kUring) return uring.status();
    if (fallback_reason != nullptr) *fallback_reason = uring.status().ToString();
    absl::StatusOr<std::unique_ptr<EpollEngine>> epoll = EpollEngine::Start(options);
    if (epoll.ok()) return std::unique_ptr<PacketEngine>(*std::move(epoll));
    // Neither works: say both, the epoll error's code (usually the shared cause).
    return absl::Status(epoll.status().code(), absl::StrCat("io_uring: ", uring.status().message(),
                                                            "; epoll: ", epoll.status().message()));
  }
  absl::StatusOr<std::unique_ptr<EpollEngine>> epoll = EpollEngine::Start(options);
  if (!epoll.ok()) return epoll.status();
  return std::unique_ptr<PacketEngine>(*std::move(epoll));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PacketEngine>> StartEngine(IoBackend backend,
                                                          const EngineOptions& options,
                                                          std::string* fallback_reason) {
  if (fallback_reason != nullptr) fallback_reason->clear();
  if (options.workers <= 1) return StartOne(backend, options, fallback_reason);
  // Worker 0 probes; the others use what it got, so all workers are of one backend.
  std::string reason;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Start(options.workers, [&](unsigned index) {
        EngineOptions worker_options = options;
        worker_options.worker = index;
        if (index == 0) return StartOne(backend, worker_options, &reason);
        const bool uring = backend != IoBackend::kEpoll && reason.empty();
        return StartOne(uring ? IoBackend::kUring : IoBackend::kEpoll, worker_options, nullptr);
      });
  if (fallback_reason != nullptr) *fallback_reason = reason;
  if (!pool.ok()) return pool.status();
  return std::unique_ptr<PacketEngine>(*std::move(pool));
}

}  // namespace tunnelagent::dataplane
