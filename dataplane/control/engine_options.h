// How a dataplane is set up, whichever backend moves its packets (io_uring, epoll) and however
// many workers it has.
#ifndef TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_
#define TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_

#include <vector>

#include "absl/time/time.h"
#include "dataplane/core/receive.h"

namespace tunnelagent::dataplane {

struct EngineOptions {
  // io_uring only: submission queue entries of each worker's ring.
  unsigned ring_entries = 1024;
  // io_uring only: reads kept in flight on each tunnel device.
  unsigned device_reads_per_tunnel = 8;
  // io_uring only: the device read buffers a worker's tunnels share (DeviceBufferPool): as many
  // to start with, more on demand up to device_buffers_max (rounded up to a power of two), fewer
  // again when the traffic needs fewer. A read holds one only from when a packet arrives until
  // it is sent, so this bounds memory by packets in flight, not by tunnels. 0 max: each tunnel
  // has buffers of its own for its reads (also what a kernel without buffer rings gets).
  unsigned device_buffers = 64;
  unsigned device_buffers_max = 512;
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
  // Underlay receive sockets another process handed over (a hot upgrade), by worker index:
  // worker i receives on adopted_receive_sockets[i] (copies of the descriptors, so the caller
  // keeps its own) instead of opening sockets of its own. Sockets of the same file description
  // dequeue every packet once, whichever process reads it, and keep their steering filter;
  // opening new ones would hand a copy of every packet to each. Empty, or empty for a worker:
  // that worker opens its own.
  std::vector<std::vector<ReceiveSocket>> adopted_receive_sockets;
  // The underlay sockets are not read until PacketEngine::StartReceiving: a new agent that
  // took sockets over reads them once its tunnels are in the engine, so nothing it takes off
  // them meanwhile is dropped as matching no tunnel (the old agent reads them until then).
  bool defer_receiving = false;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CONTROL_ENGINE_OPTIONS_H_
