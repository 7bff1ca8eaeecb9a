// The epoll dataplane: the io_uring engine's behaviour on plain system calls, for hosts where
// io_uring is forbidden (the default seccomp profile of most container runtimes) or missing.
// One thread, one level-triggered epoll set over an eventfd (commands), every tunnel device
// and the raw GRE and IPIP sockets.
//
//   transmit: a readable device -> read up to a batch of packets into a shared pool (with
//             headroom) -> encapsulate in place -> one sendmmsg on the raw socket
//   receive:  a readable GRE / IPIP socket -> recvmmsg a batch -> validate, decapsulate, look
//             the tunnel up -> write() to its device
//
// Same tunnels, counters and drop reasons as UringEngine; the per-packet path takes no lock
// and allocates nothing. Devices are switched to O_NONBLOCK while the engine uses them.
#ifndef TUNNELAGENT_DATAPLANE_EPOLL_ENGINE_H_
#define TUNNELAGENT_DATAPLANE_EPOLL_ENGINE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "dataplane/packet_engine.h"
#include "dataplane/uring_engine.h"

namespace tunnelagent::dataplane {

class EpollEngine final : public PacketEngine {
 public:
  // Uses the same options as the io_uring engine: socket_receives caps the recvmmsg batch,
  // receive_buffer_bytes sizes receive buffers, socket_buffer_bytes the socket buffers
  // (ring_entries and device_reads_per_tunnel do not apply). FAILED_PRECONDITION or
  // PERMISSION_DENIED when raw sockets are not available (no CAP_NET_RAW).
  static absl::StatusOr<std::unique_ptr<EpollEngine>> Start(const UringEngineOptions& options);
  ~EpollEngine() override;  // stops the thread; no device is touched after it returns

  absl::Status AddTunnel(const EngineTunnel& tunnel) override;
  absl::Status RemoveTunnel(const std::string& name) override;
  const DataplaneCounters& counters() const override;
  const char* backend_name() const override { return "epoll"; }
  absl::Status Health(absl::Duration stall) const override;

  class Impl;

 private:
  explicit EpollEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_EPOLL_ENGINE_H_
