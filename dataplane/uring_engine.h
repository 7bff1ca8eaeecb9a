// The io_uring dataplane: one thread, one ring, every device read, underlay send, underlay
// receive and device write an asynchronous operation on a fixed pool of buffers.
//
//   transmit: device read -> encapsulate in place (headroom) -> sendmsg on the raw socket
//             -> the same buffer goes back to a device read
//   receive:  recv on the raw GRE / IPIP socket -> validate, decapsulate, look the tunnel up
//             -> write to its device -> the same buffer goes back to a recv
//
// Completions are reaped in batches and everything they lead to is submitted with one
// io_uring_enter. The per-packet path takes no lock and allocates nothing; control commands
// (add, remove) reach the thread through a queue and an eventfd the ring itself reads.
#ifndef TUNNELAGENT_DATAPLANE_URING_ENGINE_H_
#define TUNNELAGENT_DATAPLANE_URING_ENGINE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

struct UringEngineOptions {
  unsigned ring_entries = 1024;
  // Reads kept in flight on each tunnel device.
  unsigned device_reads_per_tunnel = 8;
  // Receives kept in flight on each underlay socket, and the size of their buffers (a
  // reassembled underlay packet can be up to 64 KiB).
  unsigned socket_receives = 64;
  unsigned receive_buffer_bytes = 65536;
  // SO_RCVBUF / SO_SNDBUF of the underlay sockets, so bursts are not dropped.
  int socket_buffer_bytes = 4 << 20;
  // For one worker of several (see WorkerPool): its index, and how many there are. It takes
  // only its share of received packets, writes its own counters, and worker 0 alone sends
  // keepalives.
  unsigned worker = 0;
  unsigned workers = 1;
  // How long a path MTU lowered by an ICMP error the engine believed holds before the route
  // is asked again (the kernel's net.ipv4.route.mtu_expires default).
  absl::Duration path_mtu_expiry = absl::Minutes(10);
  // CPUs to pin the workers to: worker i runs on cpus[i % cpus.size()] (WorkerCpu); empty:
  // wherever the scheduler puts them.
  std::vector<int> cpus;
};

class UringEngine final : public PacketEngine {
 public:
  // Opens the underlay sockets, sets up the ring and starts the thread. FAILED_PRECONDITION
  // when io_uring or raw sockets are not available (e.g. forbidden by seccomp, no CAP_NET_RAW).
  static absl::StatusOr<std::unique_ptr<UringEngine>> Start(const UringEngineOptions& options);
  ~UringEngine() override;  // stops the thread, cancels everything in flight

  absl::Status AddTunnel(const EngineTunnel& tunnel) override;
  absl::Status RemoveTunnel(const std::string& name) override;
  const DataplaneCounters& counters() const override;
  const char* backend_name() const override { return "io_uring"; }
  absl::Status Health(absl::Duration stall) const override;

  class Impl;

 private:
  explicit UringEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_URING_ENGINE_H_
