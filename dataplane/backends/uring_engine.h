// The io_uring backend: one thread, one ring, every device read, underlay send, underlay
// receive and device write an asynchronous operation on a fixed pool of buffers; every packet
// decision is the packet core's.
//
//   transmit: device read -> PacketCore::TakeDeviceRead (wrapped in place, in the headroom)
//             -> sendmsg on the raw socket -> the same buffer goes back to a device read
//   receive:  recv on a raw underlay socket -> PacketCore::TakeDatagram -> write to the
//             tunnel's device -> the same buffer goes back to a recv
//
// Completions are reaped in batches and everything they lead to is submitted with one
// io_uring_enter. Control commands (add, remove) reach the thread through the mailbox's
// eventfd, which the ring itself reads.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_URING_ENGINE_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_URING_ENGINE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "dataplane/backends/worker.h"
#include "dataplane/control/engine_options.h"

namespace tunnelagent::dataplane {

class UringEngine final : public WorkerEngine {
 public:
  // Opens the underlay sockets, sets up the ring and starts the thread. FAILED_PRECONDITION
  // when io_uring or raw sockets are not available (e.g. forbidden by seccomp, no CAP_NET_RAW).
  static absl::StatusOr<std::unique_ptr<UringEngine>> Start(const EngineOptions& options);
  ~UringEngine() override;  // stops the thread, cancels everything in flight

  const char* backend_name() const override { return "io_uring"; }

 private:
  explicit UringEngine(std::unique_ptr<Worker> worker);
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_URING_ENGINE_H_
