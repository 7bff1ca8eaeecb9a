// How a dataplane is set up, whichever backend moves its packets (io_uring, epoll) and however
// many workers it has.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_

#include <vector>

#include "absl/time/time.h"

namespace tunnelagent::dataplane {

struct EngineOptions {
  // io_uring only: submission queue entries of each worker's ring.
  unsigned ring_entries = 1024;
  // io_uring only: reads kept in flight on each tunnel device.
  unsigned device_reads_per_tunnel = 8;
  // Receives kept in flight on each underlay socket (epoll: the recvmmsg batch, at most 64),
  // and the size of their buffers (a reassembled underlay packet can be up to 64 KiB).
  unsigned socket_receives = 64;
  unsigned receive_buffer_bytes = 65536;
  // SO_RCVBUF / SO_SNDBUF of the underlay sockets, so bursts are not dropped.
  int socket_buffer_bytes = 4 << 20;
  // For one worker of several (see WorkerPool): its index, and how many there are. It takes
  // only its share of received packets, writes its own counters, and worker 0 alone sends
  // keepalives.
  unsigned worker = 0;
  unsigned workers = 1;
  // How long a path MTU lowered by an ICMP error the core believed holds before the route
  // is asked again (the kernel's net.ipv4.route.mtu_expires default).
  absl::Duration path_mtu_expiry = absl::Minutes(10);
  // CPUs to pin the workers to: worker i runs on cpus[i % cpus.size()] (WorkerCpu); empty:
  // wherever the scheduler puts them.
  std::vector<int> cpus;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_
