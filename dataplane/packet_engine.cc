#include "dataplane/packet_engine.h"

#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {

absl::Status CheckEngineTunnel(const EngineTunnel& tunnel) {
  if (tunnel.device_fd < 0 || tunnel.mtu == 0 || tunnel.mtu > 65535 || !tunnel.stats) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine tunnel ", tunnel.name, " needs a device, an MTU and counters"));
  }
  // A tap device carries frames: no virtio-net header, nothing to coalesce as IP.
  if (tunnel.vnet_header && IsEthernetMode(tunnel.encap.mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine tunnel ", tunnel.name, ": TUN offloads on a tap mode"));
  }
  if (tunnel.keepalive_interval > absl::ZeroDuration() && !SupportsKeepalive(tunnel.encap.mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine tunnel ", tunnel.name, ": keepalives in a mode that has none"));
  }
  if (!tunnel.multipoint) {
    if (!tunnel.peers.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine tunnel ", tunnel.name, ": peers on a point-to-point tunnel"));
    }
    return absl::OkStatus();
  }
  // Multipoint: the IP modes, over raw sockets or fou (unconnected senders naming the peer in
  // each send). Tap modes would need a peer per MAC address; sequence numbers a stream per
  // peer; a tunnel keepalive has no one remote to go to (peers have their own).
  const TunnelMode mode = tunnel.encap.mode;
  const char* refused = nullptr;
  if (IsEthernetMode(mode)) {
    refused = "a tap mode";
  } else if (tunnel.encap.sequence || tunnel.input_sequence) {
    refused = "sequence numbers";
  } else if (!tunnel.encap.remote.is_zero()) {
    refused = "a remote address";
  } else if (tunnel.keepalive_interval > absl::ZeroDuration()) {
    refused = "a keepalive of the tunnel's own (each peer has its own)";
  } else if (IsIpv6UnderlayMode(mode) && tunnel.encap.local.is_zero()) {
    // Raw IPv6 sends carry the source as written, and no one route gives it for every peer.
    refused = "an IPv6 underlay without a local address";
  }
  if (refused != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine tunnel ", tunnel.name, ": a multipoint tunnel with ", refused));
  }
  return absl::OkStatus();
}

uint64_t TunnelStats::Sum(DropCounters TunnelCounters::*drops, DropReason reason) const {
  uint64_t total = 0;
  for (size_t i = 0; i < workers(); ++i)
    total += (worker(i).*drops)[static_cast<int>(reason)].Get();
  return total;
}

uint64_t TunnelStats::SumAll(DropCounters TunnelCounters::*drops) const {
  uint64_t total = 0;
  for (size_t i = 0; i < workers(); ++i) {
    for (const Counter& c : worker(i).*drops) total += c.Get();
  }
  return total;
}

DataplaneCountersSnapshot& DataplaneCountersSnapshot::operator+=(
    const DataplaneCountersSnapshot& other) {
  rx_packets += other.rx_packets;
  device_read_waits += other.device_read_waits;
  device_buffers_in_use += other.device_buffers_in_use;
  device_buffers_ready += other.device_buffers_ready;
  device_reads_waiting += other.device_reads_waiting;
  for (size_t r = 0; r < drops.size(); ++r) drops[r] += other.drops[r];
  return *this;
}

DataplaneCountersSnapshot DataplaneCounters::Snapshot() const {
  DataplaneCountersSnapshot snapshot;
  snapshot.rx_packets = rx_packets.Get();
  snapshot.device_read_waits = device_read_waits.Get();
  snapshot.device_buffers_in_use = device_buffers_in_use.Get();
  snapshot.device_buffers_ready = device_buffers_ready.Get();
  snapshot.device_reads_waiting = device_reads_waiting.Get();
  for (size_t r = 0; r < drops.size(); ++r) snapshot.drops[r] = drops[r].Get();
  return snapshot;
}

}  // namespace tunnelagent::dataplane
