// What the engine tests against the kernel share: a tunnel whose underlay is loopback (local
// 127.0.0.1, remote 127.0.0.2: all of 127/8 is local, which makes loopback a two-ended
// underlay), its TUN device configured and routed as the tests send into it, and the small
// tools they wait and send with. Runs in the private network namespace netns_main.cc made.
#ifndef TUNNELAGENT_TESTS_DATAPLANE_BACKENDS_LOOPBACK_UNDERLAY_H_
#define TUNNELAGENT_TESTS_DATAPLANE_BACKENDS_LOOPBACK_UNDERLAY_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "dataplane/address.h"
#include "dataplane/netlink.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tun/tun_device.h"

namespace tunnelagent::dataplane::test {

inline constexpr uint32_t kLocal = 0x7f000001;   // 127.0.0.1
inline constexpr uint32_t kRemote = 0x7f000002;  // 127.0.0.2
inline constexpr uint16_t kPort = 4242;          // of the inner datagrams
inline constexpr uint32_t kTunnelMtu = 1400;

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Waits up to `ms` for a condition that an engine thread makes true.
template <typename F>
bool Eventually(F condition, int ms = 2000) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return condition();
}

inline sockaddr_in Addr(uint32_t host_order, uint16_t port = 0) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(host_order);
  a.sin_port = htons(port);
  return a;
}

// The namespace's netlink, with loopback (the underlay) up.
inline absl::StatusOr<std::unique_ptr<Netlink>> OpenWithLoopbackUp() {
  absl::StatusOr<std::unique_ptr<Netlink>> netlink = Netlink::Open();
  if (!netlink.ok()) return netlink.status();
  absl::StatusOr<LinkInfo> lo = (*netlink)->GetLinkByName("lo");
  if (!lo.ok()) return lo.status();
  if (absl::Status status = (*netlink)->SetLinkUp(lo->ifindex, true); !status.ok()) return status;
  return netlink;
}

// A TUN device `name` with MTU kTunnelMtu, `address` on it and `route` through it, up.
// Without IPv6: a new TUN device sends router solicitations, and the tunnel is to carry the
// test's packets only.
inline absl::StatusOr<std::unique_ptr<TunDevice>> CreateRoutedDevice(
    Netlink& netlink, const std::string& name, const TunDevice::CreateOptions& options,
    const std::string& address, const std::string& route) {
  absl::StatusOr<std::unique_ptr<TunDevice>> tun =
      TunDevice::Create(name, TunDevice::Kind::kTun, options);
  if (!tun.ok()) return tun.status();
  const int ifindex = (*tun)->ifindex();
  if (int fd =
          open(absl::StrCat("/proc/sys/net/ipv6/conf/", name, "/disable_ipv6").c_str(), O_WRONLY);
      fd >= 0) {
    (void)!write(fd, "1", 1);
    close(fd);
  }
  if (absl::Status status = netlink.SetLinkMtu(ifindex, kTunnelMtu); !status.ok()) return status;
  if (absl::Status status = netlink.AddAddress(ifindex, *IpPrefix::Parse(address)); !status.ok()) {
    return status;
  }
  if (absl::Status status = netlink.SetLinkUp(ifindex, true); !status.ok()) return status;
  if (absl::Status status = netlink.AddRoute(ifindex, *IpPrefix::Parse(route)); !status.ok()) {
    return status;
  }
  return tun;
}

// The engine's tunnel `name` over `device` from kLocal to kRemote, MTU kTunnelMtu, TTL 64;
// keyed both ways with `key` when `keyed`.
inline EngineTunnel LoopbackTunnel(const std::string& name, const TunDevice& device,
                                   TunnelMode mode, bool keyed, uint32_t key,
                                   std::shared_ptr<TunnelStats> stats) {
  EngineTunnel t;
  t.name = name;
  t.device_fd = device.fd();
  t.vnet_header = device.offload();
  t.udp_coalescing = device.udp_offload();
  t.mtu = kTunnelMtu;
  t.encap.mode = mode;
  t.encap.ttl = 64;
  t.encap.local = kLocal;
  t.encap.remote = kRemote;
  t.encap.has_key = keyed;
  t.encap.key = key;
  t.has_input_key = keyed;
  t.input_key = key;
  t.stats = std::move(stats);
  return t;
}

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_BACKENDS_LOOPBACK_UNDERLAY_H_
