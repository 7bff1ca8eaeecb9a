// The epoll backend: the packet core's packets moved with plain system calls, for hosts where
// io_uring is forbidden (the default seccomp profile of most container runtimes) or missing.
// One thread, one level-triggered epoll set over an eventfd (commands), every tunnel device,
// the raw underlay sockets and the fou ports' sockets.
//
//   transmit: a readable device -> read up to a batch of frames into a shared pool (with
//             headroom) -> PacketCore::TakeDeviceRead -> one sendmmsg on the raw socket
//   receive:  a readable underlay socket -> recvmmsg a batch -> PacketCore::TakeDatagram
//             -> write() to the tunnel's device
//
// Same tunnels, counters and drop reasons as the io_uring backend, as every packet decision is
// the core's. Devices are switched to O_NONBLOCK while the engine uses them.
#ifndef TUNNELAGENT_DATAPLANE_BACKENDS_EPOLL_ENGINE_H_
#define TUNNELAGENT_DATAPLANE_BACKENDS_EPOLL_ENGINE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "dataplane/backends/worker.h"
#include "dataplane/control/engine_options.h"

namespace tunnelagent::dataplane {

class EpollEngine final : public WorkerEngine {
 public:
  // socket_receives caps the recvmmsg batch, receive_buffer_bytes sizes receive buffers,
  // socket_buffer_bytes the socket buffers (ring_entries and device_reads_per_tunnel do not
  // apply). FAILED_PRECONDITION or PERMISSION_DENIED when raw sockets are not available (no
  // CAP_NET_RAW).
  static absl::StatusOr<std::unique_ptr<EpollEngine>> Start(const EngineOptions& options);
  ~EpollEngine() override;  // stops the thread; no device is touched after it returns

  const char* backend_name() const override { return "epoll"; }

 private:
  explicit EpollEngine(std::unique_ptr<Worker> worker);
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_BACKENDS_EPOLL_ENGINE_H_
