// Chooses the dataplane backend. Like Seastar's reactor, the agent probes io_uring before it
// trusts it: "auto" starts the io_uring engine and, when the kernel or a seccomp profile
// refuses it, falls back to the epoll engine and says why.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_FACTORY_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dataplane/control/engine_options.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

enum class IoBackend { kAuto, kUring, kEpoll };

// "auto", "uring" (also "io_uring") or "epoll"; INVALID_ARGUMENT otherwise.
absl::StatusOr<IoBackend> ParseIoBackend(absl::string_view name);
absl::string_view IoBackendName(IoBackend backend);

// kUring: the io_uring engine or its error; kEpoll: the epoll engine or its error; kAuto: the
// io_uring engine, else the epoll engine with *fallback_reason (if not null) set to why
// io_uring could not start (left empty when there was no fallback).
// With options.workers > 1, that many engines of the one backend as a WorkerPool.
absl::StatusOr<std::unique_ptr<PacketEngine>> StartEngine(IoBackend backend,
                                                          const EngineOptions& options,
                                                          std::string* fallback_reason);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_FACTORY_H_
