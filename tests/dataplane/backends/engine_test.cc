// Both packet engines (io_uring and epoll) against the real kernel, in the private network
// namespace netns_main.cc made: a tunnel whose underlay is loopback (local 127.0.0.1, remote
// 127.0.0.2). Every test runs on each backend. Also ParseIoBackend.
//   transmit: a UDP datagram routed into the device comes out on a raw GRE socket, wrapped;
//   receive:  a wrapped datagram sent to 127.0.0.1 reaches a UDP socket behind the device.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dataplane/backends/epoll_engine.h"
#include "dataplane/backends/uring_engine.h"
#include "dataplane/control/engine_factory.h"
#include "dataplane/control/worker_pool.h"
#include "dataplane/cpu_affinity.h"
#include "dataplane/netlink.h"
#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/checksum.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/gre.h"
#include "dataplane/packet/icmp.h"
#include "dataplane/packet/ipv4.h"
#include "dataplane/packet/offload.h"
#include "dataplane/packet/receive_steering.h"
#include "dataplane/tun/tun_device.h"
#include "gtest/gtest.h"
#include "tests/dataplane/backends/loopback_underlay.h"

namespace tunnelagent::dataplane {
namespace {

using test::Addr;
using test::Eventually;
using test::Fd;
using test::kLocal;
using test::kPort;
using test::kRemote;

constexpr uint32_t kInnerA = 0x0a010001;    // 10.1.0.1, on the device
constexpr uint32_t kInnerFar = 0x0a090002;  // 10.9.0.2, behind the far end

std::array<uint8_t, 16> Ipv6Bytes(const char* text) {
  std::array<uint8_t, 16> bytes{};
  inet_pton(AF_INET6, text, bytes.data());
  return bytes;
}

// The namespace's IPv6 counters that are not zero (/proc/net/snmp6): where a packet the
// engine sent went, when a test did not see it arrive.
std::string Ipv6Counters() {
  std::ifstream snmp6("/proc/net/snmp6");
  std::string name;
  uint64_t value = 0;
  std::string out;
  while (snmp6 >> name >> value) {
    if (value != 0 && (name.rfind("Ip6", 0) == 0 || name.rfind("Icmp6", 0) == 0)) {
      out += name + "=" + std::to_string(value) + " ";
    }
  }
  return out.empty() ? "(no IPv6 counter above zero)" : out;
}

// A new IPv6 address is tentative for a moment even on loopback (its DAD completes from a
// work queue) and takes no packets until then; its local route is added by that work too, so
// an address that can already be bound may still lose what is sent to it. Waits until a
// datagram sent to `address` arrives there.
bool Ipv6AddressUsable(const uint8_t* address) {
  return Eventually([&] {
    Fd probe(socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0));
    sockaddr_in6 at{};
    at.sin6_family = AF_INET6;
    memcpy(&at.sin6_addr, address, 16);
    socklen_t len = sizeof at;
    if (bind(probe.get(), reinterpret_cast<sockaddr*>(&at), sizeof at) != 0 ||
        getsockname(probe.get(), reinterpret_cast<sockaddr*>(&at), &len) != 0) {
      return false;
    }
    const char ping = 'p';
    if (sendto(probe.get(), &ping, 1, 0, reinterpret_cast<sockaddr*>(&at), len) != 1) {
      return false;
    }
    pollfd ready{probe.get(), POLLIN, 0};
    char got = 0;
    return poll(&ready, 1, 100) == 1 && recv(probe.get(), &got, 1, 0) == 1;
  });
}

// A minimal IPv4/UDP datagram with a zero UDP checksum (allowed over IPv4).
std::vector<uint8_t> UdpPacket(uint32_t src, uint32_t dst, uint16_t port,
                               const std::string& payload) {
  std::vector<uint8_t> pkt(kIpv4HeaderLen + 8 + payload.size());
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(pkt.size());
  ip.ttl = 63;
  ip.protocol = IPPROTO_UDP;
  ip.src = src;
  ip.dst = dst;
  WriteIpv4Header(ip, pkt.data());
  uint8_t* udp = pkt.data() + kIpv4HeaderLen;
  udp[0] = port >> 8;
  udp[1] = port & 0xff;
  udp[2] = port >> 8;
  udp[3] = port & 0xff;
  uint16_t len = static_cast<uint16_t>(8 + payload.size());
  udp[4] = len >> 8;
  udp[5] = len & 0xff;
  memcpy(udp + 8, payload.data(), payload.size());
  return pkt;
}

// Wraps `inner` as the far end would: outer IPv4 127.0.0.2 -> 127.0.0.1, then GRE or IPIP.
std::vector<uint8_t> Wrap(const std::vector<uint8_t>& inner, uint8_t protocol,
                          const GreHeader* gre) {
  size_t gre_len = gre ? GreHeaderLen(*gre) : 0;
  std::vector<uint8_t> pkt(kIpv4HeaderLen + gre_len + inner.size());
  memcpy(pkt.data() + kIpv4HeaderLen + gre_len, inner.data(), inner.size());
  if (gre) WriteGreHeader(*gre, pkt.data() + kIpv4HeaderLen, inner.size());
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(pkt.size());
  ip.ttl = 64;
  ip.protocol = protocol;
  ip.src = kRemote;
  ip.dst = kLocal;
  WriteIpv4Header(ip, pkt.data());
  return pkt;
}

TEST(ParseIoBackendTest, KnowsTheThreeBackends) {
  EXPECT_EQ(*ParseIoBackend("auto"), IoBackend::kAuto);
  EXPECT_EQ(*ParseIoBackend("uring"), IoBackend::kUring);
  EXPECT_EQ(*ParseIoBackend("io_uring"), IoBackend::kUring);
  EXPECT_EQ(*ParseIoBackend("epoll"), IoBackend::kEpoll);
  for (const char* bad : {"", "Epoll", "poll", "uring ", "select"}) {
    EXPECT_EQ(ParseIoBackend(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(StartEngineTest, ForcedBackendsAreHonoured) {
  std::string reason = "stale";
  auto epoll = StartEngine(IoBackend::kEpoll, EngineOptions{}, &reason);
  ASSERT_TRUE(epoll.ok()) << epoll.status();
  EXPECT_STREQ((*epoll)->backend_name(), "epoll");
  EXPECT_EQ(reason, "");
  auto any = StartEngine(IoBackend::kAuto, EngineOptions{}, &reason);
  ASSERT_TRUE(any.ok()) << any.status();
  // Here io_uring works unless the sandbox forbids it; then auto says why it fell back.
  if (std::string((*any)->backend_name()) == "epoll") {
    EXPECT_NE(reason, "");
  } else {
    EXPECT_EQ(reason, "");
  }
}

// This process's threads, each as its id and name (/proc/self/task/*/comm).
std::vector<std::pair<pid_t, std::string>> Threads() {
  std::vector<std::pair<pid_t, std::string>> threads;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return threads;
  while (dirent* entry = readdir(tasks)) {
    std::ifstream comm(std::string("/proc/self/task/") + entry->d_name + "/comm");
    std::string name;
    if (std::getline(comm, name)) threads.emplace_back(atoi(entry->d_name), name);
  }
  closedir(tasks);
  return threads;
}

// The CPUs the thread named `name` of this process may run on; empty when there is none.
std::vector<int> ThreadCpus(const std::string& name) {
  std::vector<int> cpus;
  for (const auto& [tid, thread_name] : Threads()) {
    if (thread_name != name) continue;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(tid, sizeof set, &set) != 0) break;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
    break;
  }
  return cpus;
}

// No thread of this process is a dataplane worker (named "dataplane-N").
bool NoWorkerThreads() {
  for (const auto& thread : Threads()) {
    if (thread.second.rfind("dataplane-", 0) == 0) return false;
  }
  return true;
}

// Each worker names its thread and, given CPUs, pins itself: worker i to the i-th (round
// again past the end), on either backend and in a pool.
TEST(StartEngineTest, WorkersRunOnTheirCpus) {
  const std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  for (IoBackend backend : {IoBackend::kUring, IoBackend::kEpoll}) {
    SCOPED_TRACE(std::string(IoBackendName(backend)));
    EngineOptions options;
    options.cpus = {allowed.back()};
    {
      // The workers of the engine before may still be listed (see below).
      ASSERT_TRUE(Eventually(NoWorkerThreads));
      auto engine = StartEngine(backend, options, nullptr);
      ASSERT_TRUE(engine.ok()) << engine.status();
      EXPECT_EQ(ThreadCpus("dataplane-0"), std::vector<int>{allowed.back()});
    }
    options.workers = 3;
    options.cpus = {allowed.back(), allowed.front()};
    {
      // The workers of the engine before may still be listed (see below).
      ASSERT_TRUE(Eventually(NoWorkerThreads));
      auto engine = StartEngine(backend, options, nullptr);
      ASSERT_TRUE(engine.ok()) << engine.status();
      EXPECT_EQ(ThreadCpus("dataplane-0"), std::vector<int>{allowed.back()});
      EXPECT_EQ(ThreadCpus("dataplane-1"), std::vector<int>{allowed.front()});
      EXPECT_EQ(ThreadCpus("dataplane-2"), std::vector<int>{allowed.back()});
    }
    // Unpinned: named, and free to run wherever the process may.
    options.cpus.clear();
    options.workers = 1;
    {
      // The workers of the engine before may still be listed (see below).
      ASSERT_TRUE(Eventually(NoWorkerThreads));
      auto engine = StartEngine(backend, options, nullptr);
      ASSERT_TRUE(engine.ok()) << engine.status();
      EXPECT_EQ(ThreadCpus("dataplane-0"), allowed);
    }
  }
}

// A CPU the kernel will not pin to fails the start with the reason, leaving nothing running.
TEST(StartEngineTest, ImpossibleCpuFailsTheStart) {
  for (IoBackend backend : {IoBackend::kUring, IoBackend::kEpoll}) {
    EngineOptions options;
    options.cpus = {CPU_SETSIZE - 1};  // no machine here has 1,024 CPUs
    auto engine = StartEngine(backend, options, nullptr);
    ASSERT_FALSE(engine.ok()) << IoBackendName(backend);
    EXPECT_NE(engine.status().message().find("CPU 1023"), std::string::npos) << engine.status();
    // A joined thread can stay listed in /proc for a moment after its join returns.
    EXPECT_TRUE(Eventually(NoWorkerThreads)) << IoBackendName(backend);
  }
}

// Which engine a test runs on, and whether its device has TUN offloads (virtio-net header).
enum class Backend { kUring, kEpoll };
struct EngineParam {
  Backend backend;
  bool offload;
  unsigned workers = 1;  // more than one: a WorkerPool of that many engines
};

std::string BackendName(const ::testing::TestParamInfo<EngineParam>& info) {
  return std::string(info.param.backend == Backend::kUring ? "IoUring" : "Epoll") +
         (info.param.offload ? "Offload" : "") +
         (info.param.workers > 1 ? "Workers" + std::to_string(info.param.workers) : "");
}

absl::StatusOr<std::unique_ptr<PacketEngine>> MakeEngine(Backend backend, unsigned workers = 1,
                                                         EngineOptions options = EngineOptions{}) {
  if (workers > 1) {
    options.workers = workers;
    return StartEngine(backend == Backend::kUring ? IoBackend::kUring : IoBackend::kEpoll, options,
                       nullptr);
  }
  if (backend == Backend::kUring) {
    auto engine = UringEngine::Start(options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<PacketEngine>(*std::move(engine));
  }
  auto engine = EpollEngine::Start(options);
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<PacketEngine>(*std::move(engine));
}

class EngineTest : public ::testing::TestWithParam<EngineParam> {
 protected:
  void SetUp() override {
    auto netlink = test::OpenWithLoopbackUp();
    ASSERT_TRUE(netlink.ok()) << netlink.status();
    netlink_ = *std::move(netlink);

    auto engine = MakeEngine(GetParam().backend, GetParam().workers, Options());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);

    // Sees every GRE and IPIP packet, like the engine's own sockets.
    gre_tap_ = std::make_unique<Fd>(socket(AF_INET, SOCK_RAW, IPPROTO_GRE));
    ipip_tap_ = std::make_unique<Fd>(socket(AF_INET, SOCK_RAW, IPPROTO_IPIP));
    sender_ = std::make_unique<Fd>(socket(AF_INET, SOCK_RAW, IPPROTO_RAW));
    ASSERT_GE(gre_tap_->get(), 0);
    ASSERT_GE(ipip_tap_->get(), 0);
    ASSERT_GE(sender_->get(), 0);
  }

  void TearDown() override {
    if (engine_ && tun_) engine_->RemoveTunnel("tun0").IgnoreError();
  }

  // What the engine is started with.
  virtual EngineOptions Options() const { return EngineOptions{}; }

  // A device "tun0" with 10.1.0.1/32, a route to 10.9.0.0/24 through it, in the engine.
  void AddTunnel(TunnelMode mode, bool keyed, uint32_t key = 0,
                 void (*customize)(EngineTunnel&) = nullptr) {
    TunDevice::CreateOptions options;
    options.offload = GetParam().offload;
    options.multi_queue = GetParam().workers > 1;
    auto tun = test::CreateRoutedDevice(*netlink_, "tun0", options, "10.1.0.1/32", "10.9.0.0/24");
    ASSERT_TRUE(tun.ok()) << tun.status();
    tun_ = *std::move(tun);
    ASSERT_EQ(tun_->offload(), GetParam().offload);

    counters_ = std::make_shared<TunnelStats>(engine_->workers());
    EngineTunnel t = test::LoopbackTunnel("tun0", *tun_, mode, keyed, key, counters_);
    if (customize != nullptr) customize(t);
    absl::Status status = engine_->AddTunnel(t);
    ASSERT_TRUE(status.ok()) << status;
  }

  // Sends `size` bytes of UDP payload from 10.1.0.1 to 10.9.0.2 with DF set or not.
  void SendInnerSized(size_t size, bool dont_fragment, int* error = nullptr) {
    Fd udp(socket(AF_INET, SOCK_DGRAM, 0));
    const int pmtu = dont_fragment ? IP_PMTUDISC_PROBE : IP_PMTUDISC_DONT;
    ASSERT_EQ(setsockopt(udp.get(), IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu), 0);
    sockaddr_in src = Addr(kInnerA);
    ASSERT_EQ(bind(udp.get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    sockaddr_in dst = Addr(kInnerFar, kPort);
    std::string payload(size, 'p');
    ssize_t n = sendto(udp.get(), payload.data(), payload.size(), 0,
                       reinterpret_cast<sockaddr*>(&dst), sizeof dst);
    if (error != nullptr) *error = n < 0 ? errno : 0;
  }

  uint64_t TunnelDrops(DropReason r) const { return counters_->Sum(&TunnelCounters::rx_drops, r); }

  // Sends `payload` from 10.1.0.1 to 10.9.0.2, which the route hands to the device.
  void SendInner(const std::string& payload) {
    Fd udp(socket(AF_INET, SOCK_DGRAM, 0));
    sockaddr_in src = Addr(kInnerA);
    ASSERT_EQ(bind(udp.get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    sockaddr_in dst = Addr(kInnerFar, kPort);
    ASSERT_EQ(sendto(udp.get(), payload.data(), payload.size(), 0,
                     reinterpret_cast<sockaddr*>(&dst), sizeof dst),
              static_cast<ssize_t>(payload.size()));
  }

  // The next packet on a tap socket that carries `payload`, or empty after a timeout. The
  // sizes of the others it read go to captured_others_, for a failure's message.
  std::vector<uint8_t> Capture(const Fd& tap, const std::string& payload) {
    std::vector<uint8_t> buf(65536);
    captured_others_.clear();
    for (int i = 0; i < 50; ++i) {
      pollfd p{tap.get(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      ssize_t n = recv(tap.get(), buf.data(), buf.size(), 0);
      if (n <= 0) continue;
      std::string bytes(reinterpret_cast<char*>(buf.data()), n);
      if (bytes.find(payload) != std::string::npos) {
        buf.resize(n);
        return buf;
      }
      captured_others_ += std::to_string(n) + " bytes; ";
    }
    return {};
  }

  // What a failed capture can tell: the tunnel's counters that are not zero and the other
  // packets the tap read.
  std::string CaptureFailure() const {
    std::string out = "tunnel counters: ";
#define COUNTER_TEXT(member, api_field, metric, help)                     \
  if (const uint64_t v = counters_->Sum(&TunnelCounters::member); v != 0) \
    out += std::string(#member) + "=" + std::to_string(v) + " ";
    TUNNEL_COUNTERS(COUNTER_TEXT)
#undef COUNTER_TEXT
    for (int r = 0; r < kDropReasonCount; ++r) {
      const DropReason reason = static_cast<DropReason>(r);
      for (const auto& [name, drops] : {std::pair{"tx_drops", &TunnelCounters::tx_drops},
                                        std::pair{"rx_drops", &TunnelCounters::rx_drops}}) {
        if (const uint64_t v = counters_->Sum(drops, reason); v != 0) {
          out += std::string(name) + "{" + std::string(DropReasonName(reason)) +
                 "}=" + std::to_string(v) + " ";
        }
      }
    }
    return out +
           "; the tap read besides: " + (captured_others_.empty() ? "nothing" : captured_others_);
  }

  void SendOuter(const std::vector<uint8_t>& pkt) {
    sockaddr_in dst = Addr(kLocal);
    ASSERT_EQ(sendto(sender_->get(), pkt.data(), pkt.size(), 0, reinterpret_cast<sockaddr*>(&dst),
                     sizeof dst),
              static_cast<ssize_t>(pkt.size()));
  }

  std::unique_ptr<Fd> BoundUdp() {
    auto udp = std::make_unique<Fd>(socket(AF_INET, SOCK_DGRAM, 0));
    sockaddr_in a = Addr(kInnerA, kPort);
    EXPECT_EQ(bind(udp->get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return udp;
  }

  static std::string ReceiveUdp(const Fd& udp, int timeout_ms = 2000) {
    pollfd p{udp.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return "";
    char buf[2048];
    ssize_t n = recv(udp.get(), buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, n) : "";
  }

  uint64_t EngineDrops(DropReason r) const {
    return engine_->counters().drops[static_cast<int>(r)];
  }

  // Declared before the engine so they are destroyed after it: the engine must be done with a
  // device before the device closes.
  std::unique_ptr<Netlink> netlink_;
  std::unique_ptr<TunDevice> tun_;
  std::shared_ptr<TunnelStats> counters_;
  std::unique_ptr<PacketEngine> engine_;
  std::unique_ptr<Fd> gre_tap_, ipip_tap_, sender_;
  std::string captured_others_;  // what the last Capture read that was not its packet
};

TEST_P(EngineTest, TransmitWrapsInGreWithKey) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 0x01020304);
  SendInner("hello-gre-tx");
  std::vector<uint8_t> pkt = Capture(*gre_tap_, "hello-gre-tx");
  ASSERT_FALSE(pkt.empty()) << "no GRE packet left the engine";

  Ipv4Header outer;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(pkt.data(), pkt.size(), &outer, &reason));
  EXPECT_EQ(outer.src, kLocal);
  EXPECT_EQ(outer.dst, kRemote);
  EXPECT_EQ(outer.protocol, kIpProtoGre);
  EXPECT_EQ(outer.ttl, 64);
  EXPECT_TRUE(outer.dont_fragment);
  GreHeader gre;
  size_t gre_len = 0;
  ASSERT_TRUE(ParseGreHeader(pkt.data() + outer.header_len, pkt.size() - outer.header_len, &gre,
                             &gre_len, &reason));
  EXPECT_TRUE(gre.has_key);
  EXPECT_EQ(gre.key, 0x01020304u);
  EXPECT_EQ(gre.protocol, kEtherTypeIpv4);
  EXPECT_EQ(gre_len, 8u);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) >= 1; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_bytes),
            counters_->Sum(&TunnelCounters::tx_packets) * (20 + 8 + 12));
}

TEST_P(EngineTest, ReceiveDeliversMatchingGreToDevice) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 77);
  auto udp = BoundUdp();
  GreHeader gre;
  gre.has_key = true;
  gre.key = 77;
  gre.protocol = kEtherTypeIpv4;
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "hello-gre-rx"), kIpProtoGre, &gre));
  EXPECT_EQ(ReceiveUdp(*udp), "hello-gre-rx");
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::rx_packets) == 1; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::rx_bytes), 20u + 8 + 12);
}

TEST_P(EngineTest, WrongOrMissingKeyIsDroppedAndCounted) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 77);
  auto udp = BoundUdp();
  GreHeader wrong;
  wrong.has_key = true;
  wrong.key = 78;
  wrong.protocol = kEtherTypeIpv4;
  GreHeader keyless;
  keyless.protocol = kEtherTypeIpv4;
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "wrong-key"), kIpProtoGre, &wrong));
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "no-key"), kIpProtoGre, &keyless));
  EXPECT_TRUE(Eventually([&] { return EngineDrops(DropReason::kNoTunnel) == 2; }));
  EXPECT_EQ(ReceiveUdp(*udp, 200), "");
  EXPECT_EQ(counters_->Sum(&TunnelCounters::rx_packets), 0u);
}

TEST_P(EngineTest, MalformedGreIsCountedByReasonAndTheLoopGoesOn) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  auto udp = BoundUdp();
  std::vector<uint8_t> inner = UdpPacket(kInnerFar, kInnerA, kPort, "after-garbage");
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> version1 = Wrap(inner, kIpProtoGre, &gre);
  version1[kIpv4HeaderLen + 1] |= 0x01;  // GRE version 1 (PPTP)
  SendOuter(version1);
  std::vector<uint8_t> routing = Wrap(inner, kIpProtoGre, &gre);
  routing[kIpv4HeaderLen] |= 0x40;
  SendOuter(routing);
  std::vector<uint8_t> truncated = Wrap(inner, kIpProtoGre, &gre);
  truncated.resize(kIpv4HeaderLen + 2);
  SendOuter(truncated);
  EXPECT_TRUE(Eventually([&] {
    return EngineDrops(DropReason::kGreVersion) == 1 && EngineDrops(DropReason::kGreRouting) == 1 &&
           EngineDrops(DropReason::kTruncated) == 1;
  }));
  SendOuter(Wrap(inner, kIpProtoGre, &gre));
  EXPECT_EQ(ReceiveUdp(*udp), "after-garbage");
}

TEST_P(EngineTest, IpipBothWays) {
  AddTunnel(TunnelMode::kIpip, /*keyed=*/false);
  SendInner("hello-ipip-tx");
  std::vector<uint8_t> pkt = Capture(*ipip_tap_, "hello-ipip-tx");
  ASSERT_FALSE(pkt.empty());
  Ipv4Header outer;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(pkt.data(), pkt.size(), &outer, &reason));
  EXPECT_EQ(outer.protocol, kIpProtoIpip);
  EXPECT_EQ(IpVersion(pkt.data() + 20, pkt.size() - 20), 4);

  auto udp = BoundUdp();
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "hello-ipip-rx"), kIpProtoIpip, nullptr));
  EXPECT_EQ(ReceiveUdp(*udp), "hello-ipip-rx");
}

TEST_P(EngineTest, AddAndRemoveAreChecked) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  EngineTunnel clash;
  clash.name = "other";
  clash.device_fd = tun_->fd();
  clash.mtu = 1400;
  clash.encap.mode = TunnelMode::kGre;
  clash.encap.local = kLocal;
  clash.encap.remote = kRemote;
  clash.stats = std::make_shared<TunnelStats>(engine_->workers());
  EXPECT_EQ(engine_->AddTunnel(clash).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine_->RemoveTunnel("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(engine_->RemoveTunnel("tun0").ok());
  EXPECT_EQ(engine_->RemoveTunnel("tun0").code(), absl::StatusCode::kNotFound);
}

TEST_P(EngineTest, RemovedTunnelNoLongerReceives) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  ASSERT_TRUE(engine_->RemoveTunnel("tun0").ok());
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "late"), kIpProtoGre, &gre));
  EXPECT_TRUE(Eventually([&] { return EngineDrops(DropReason::kNoTunnel) == 1; }));
}

// A pause (the old agent's side of a hot upgrade): once PauseReading returns, the engine reads
// the device no more, so a packet sent then waits in the device's queue for the next reader (the
// new agent) instead of being taken by a process about to exit; the reads it cancelled are not
// counted as errors.
TEST_P(EngineTest, PausedReadingLeavesPacketsInTheDeviceForTheNextReader) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  SendInner("before the pause");
  ASSERT_FALSE(Capture(*gre_tap_, "before the pause").empty());
  ASSERT_TRUE(engine_->PauseReading(absl::Seconds(5)).ok());
  SendInner("after the pause");
  // One queue: the packet is there to read. Several (a pool): the kernel may have put it in a
  // further queue, which only the pool holds; that it was not sent is checked below.
  if (GetParam().workers == 1) {
    std::string read;
    std::vector<char> buf(65536);
    for (int i = 0; i < 20 && read.find("after the pause") == std::string::npos; ++i) {
      pollfd p{tun_->fd(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = ::read(tun_->fd(), buf.data(), buf.size());
      if (n > 0) read.assign(buf.data(), static_cast<size_t>(n));
    }
    EXPECT_NE(read.find("after the pause"), std::string::npos) << "the engine took it";
  }
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kDeviceError), 0u);
  // Nothing of it left the engine either.
  pollfd tap{gre_tap_->get(), POLLIN, 0};
  std::vector<uint8_t> outer(65536);
  while (poll(&tap, 1, 200) > 0) {
    const ssize_t n = recv(gre_tap_->get(), outer.data(), outer.size(), 0);
    ASSERT_GT(n, 0);
    EXPECT_EQ(std::string(reinterpret_cast<char*>(outer.data()), static_cast<size_t>(n))
                  .find("after the pause"),
              std::string::npos);
  }
}

// Removal while packets flow both ways must wait for every operation on the device and never
// crash or leak; repeated to give races a chance.
TEST_P(EngineTest, RemoveUnderLoad) {
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> wrapped =
      Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "load"), kIpProtoGre, &gre);
  for (int round = 0; round < 5; ++round) {
    AddTunnel(TunnelMode::kGre, /*keyed=*/false);
    for (int i = 0; i < 200; ++i) {
      SendOuter(wrapped);
      if (i % 4 == 0) SendInner("load-tx");
    }
    ASSERT_TRUE(engine_->RemoveTunnel("tun0").ok());
    tun_.reset();
  }
}

// The epoll engine makes a device non-blocking while it uses it; removal gives it back as it
// came (blocking, as TunDevice opens it).
TEST_P(EngineTest, RemovalLeavesTheDeviceAsItWas) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  const int fd = tun_->fd();
  ASSERT_TRUE(engine_->RemoveTunnel("tun0").ok());
  const int flags = fcntl(fd, F_GETFL);
  ASSERT_GE(flags, 0);
  EXPECT_EQ(flags & O_NONBLOCK, 0);
}

// ip_tunnel_rcv: with icsum and iseq, a packet without a checksum, without a sequence number or
// behind the last one is dropped (counted on the tunnel); ahead is fine.
TEST_P(EngineTest, InputChecksumAndSequenceAreEnforced) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) {
    t.input_checksum = true;
    t.input_sequence = true;
  });
  auto udp = BoundUdp();
  auto send = [&](const std::string& payload, bool checksum, bool sequence, uint32_t number) {
    GreHeader gre;
    gre.protocol = kEtherTypeIpv4;
    gre.has_checksum = checksum;
    gre.has_sequence = sequence;
    gre.sequence = number;
    SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, payload), kIpProtoGre, &gre));
  };
  send("no-checksum", false, true, 1);
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kGreChecksum) == 1; }));
  send("no-sequence", true, false, 0);
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kGreSequence) == 1; }));
  send("seq-5", true, true, 5);
  EXPECT_EQ(ReceiveUdp(*udp), "seq-5");
  send("seq-4", true, true, 4);  // behind
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kGreSequence) == 2; }));
  send("seq-9", true, true, 9);  // ahead: a gap is loss, not reordering
  EXPECT_EQ(ReceiveUdp(*udp), "seq-9");
  send("seq-wrapped", true, true, 10 + 0x80000000u);  // half the space ahead counts as behind
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kGreSequence) == 3; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::rx_packets), 2u);
}

// Output sequence numbers start at 1 and increase per packet, as the kernel's o_seqno.
TEST_P(EngineTest, OutputSequenceNumbersIncrease) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) { t.encap.sequence = true; });
  for (uint32_t expected = 1; expected <= 3; ++expected) {
    const std::string payload = "seq-out-" + std::to_string(expected);
    SendInner(payload);
    std::vector<uint8_t> pkt = Capture(*gre_tap_, payload);
    ASSERT_FALSE(pkt.empty()) << CaptureFailure();
    GreHeader gre;
    size_t gre_len = 0;
    DropReason reason;
    ASSERT_TRUE(ParseGreHeader(pkt.data() + 20, pkt.size() - 20, &gre, &gre_len, &reason));
    EXPECT_TRUE(gre.has_sequence);
    EXPECT_EQ(gre.sequence, expected);
  }
}

// The peer's keepalive (a GRE packet from us to it, inside GRE) goes straight back to it.
TEST_P(EngineTest, AnswersThePeersKeepalive) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  GreHeader empty;  // protocol 0, nothing inside: Cisco's keepalive
  std::vector<uint8_t> home = Wrap({}, kIpProtoGre, &empty);
  // Wrap makes remote -> local; the home packet goes local -> remote.
  std::swap_ranges(home.begin() + 12, home.begin() + 16, home.begin() + 16);
  Ipv4Header fixed;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(home.data(), home.size(), &fixed, &reason));
  WriteIpv4Header(fixed, home.data());
  GreHeader outer;
  outer.protocol = kEtherTypeIpv4;
  SendOuter(Wrap(home, kIpProtoGre, &outer));
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::keepalive_answered) == 1; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::rx_packets), 0u) << "not delivered to the device";
}

// Keepalives every 50 ms, 2 retries: with nobody answering the peer is gone; when the replies
// come home (here the test plays the peer) it is back.
TEST_P(EngineTest, KeepaliveDownWithoutRepliesUpWithThem) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 5, [](EngineTunnel& t) {
    t.keepalive_interval = absl::Milliseconds(50);
    t.keepalive_retries = 2;
  });
  EXPECT_TRUE(counters_->peer_alive.load());
  EXPECT_TRUE(Eventually([&] { return !counters_->peer_alive.load(); }));
  EXPECT_EQ(counters_->keepalive_rtt_nanos.load(), 0) << "no reply, no round trip";
  EXPECT_EQ(counters_->last_receive_unix_nanos.load(), 0);
  EXPECT_GE(counters_->Sum(&TunnelCounters::keepalive_sent), 2u);
  // Play the peer: take a keepalive off the wire and send its inner packet home.
  std::vector<uint8_t> buf(2048);
  bool replied = false;
  for (int i = 0; i < 40 && !replied; ++i) {
    pollfd p{gre_tap_->get(), POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t n = recv(gre_tap_->get(), buf.data(), buf.size(), 0);
    // Ours: 127.0.0.1 -> 127.0.0.2, GRE with key 5 (8 bytes), then the home packet.
    if (n < 20 + 8 + 20 + 8 || buf[19] != 2) continue;
    std::vector<uint8_t> home(buf.begin() + 28, buf.begin() + n);
    EXPECT_EQ(home[9], kIpProtoGre);
    EXPECT_EQ(home[8], 255) << "Cisco's TTL";
    sockaddr_in dst = Addr(kLocal);
    ASSERT_EQ(sendto(sender_->get(), home.data(), home.size(), 0, reinterpret_cast<sockaddr*>(&dst),
                     sizeof dst),
              static_cast<ssize_t>(home.size()));
    replied = true;
  }
  ASSERT_TRUE(replied);
  EXPECT_TRUE(Eventually([&] { return counters_->peer_alive.load(); }));
  EXPECT_GE(counters_->Sum(&TunnelCounters::keepalive_replies), 1u);
  EXPECT_NE(counters_->last_keepalive_reply_unix_nanos.load(), 0);
  // The reply is timed against the keepalive sent before it (at most an interval back) and
  // counts as something received.
  EXPECT_TRUE(Eventually([&] { return counters_->keepalive_rtt_nanos.load() > 0; }));
  EXPECT_LT(counters_->keepalive_rtt_nanos.load(),
            absl::ToInt64Nanoseconds(absl::Milliseconds(500)));
  EXPECT_NE(counters_->last_receive_unix_nanos.load(), 0);
}

// Path MTU: the underlay (loopback here) carries 1300 bytes, the device 1400. A DF packet that
// fits the device but not the path is answered with "fragmentation needed" and the path's MTU;
// one without DF goes out as outer fragments (which the receiving kernel reassembles).
TEST_P(EngineTest, TooBigForThePathGetsFragNeededOrIsFragmented) {
  auto lo = netlink_->GetLinkByName("lo");
  ASSERT_TRUE(lo.ok());
  ASSERT_TRUE(netlink_->SetLinkMtu(lo->ifindex, 1300).ok());
  struct RestoreMtu {
    Netlink* netlink;
    int ifindex;
    ~RestoreMtu() { netlink->SetLinkMtu(ifindex, 65536).IgnoreError(); }
  } restore{netlink_.get(), lo->ifindex};
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  EXPECT_TRUE(Eventually([&] { return counters_->path_mtu.load() == 1300 - 24; }));

  // First without DF (before the host learns the path MTU and fragments the packet itself).
  SendInnerSized(1350, /*dont_fragment=*/false);
  std::vector<uint8_t> reassembled = Capture(*gre_tap_, std::string(1350, 'p'));
  ASSERT_FALSE(reassembled.empty()) << "fragments did not arrive whole";
  EXPECT_EQ(reassembled.size(), 20u + 4 + 20 + 8 + 1350);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_fragmented) == 1; }));

  // Then as `ping -M do` would: DF set, the socket open to hear the answer (the host applies a
  // learned path MTU through the socket the ICMP error is about).
  Fd udp(socket(AF_INET, SOCK_DGRAM, 0));
  const int pmtu = IP_PMTUDISC_DO;
  ASSERT_EQ(setsockopt(udp.get(), IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu), 0);
  sockaddr_in src = Addr(kInnerA);
  ASSERT_EQ(bind(udp.get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
  sockaddr_in dst = Addr(kInnerFar, kPort);
  ASSERT_EQ(connect(udp.get(), reinterpret_cast<sockaddr*>(&dst), sizeof dst), 0);
  const std::string payload(1350, 'd');
  ASSERT_EQ(send(udp.get(), payload.data(), payload.size(), 0), 1350);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::icmp_too_big_sent) == 1; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kTooBig), 1u);
  EXPECT_TRUE(Eventually([&] {
    int mtu = 0;
    socklen_t len = sizeof mtu;
    return getsockopt(udp.get(), IPPROTO_IP, IP_MTU, &mtu, &len) == 0 && mtu == 1300 - 24;
  }));
  EXPECT_LT(send(udp.get(), payload.data(), payload.size(), 0), 0) << "the host now knows";
  EXPECT_EQ(errno, EMSGSIZE);
}

// The IPv6 underlay: ip6gre between fd00::1 and fd00::2, both on loopback. Raw IPv6 sockets
// deliver no header, so receiving relies on the address and traffic class as ancillary data.
TEST_P(EngineTest, Ip6greBothWays) {
  auto lo = netlink_->GetLinkByName("lo");
  ASSERT_TRUE(lo.ok());
  for (const char* a : {"fd00::1/128", "fd00::2/128"}) {
    absl::Status s = netlink_->AddAddress(lo->ifindex, *IpPrefix::Parse(a));
    ASSERT_TRUE(s.ok() || absl::IsAlreadyExists(s)) << s;
  }
  static const OuterAddress kLocal6 = OuterAddress::FromIpv6(Ipv6Bytes("fd00::1").data());
  static const OuterAddress kRemote6 = OuterAddress::FromIpv6(Ipv6Bytes("fd00::2").data());
  for (const OuterAddress* a : {&kLocal6, &kRemote6}) ASSERT_TRUE(Ipv6AddressUsable(a->data()));
  AddTunnel(TunnelMode::kIp6gre, /*keyed=*/true, 9, [](EngineTunnel& t) {
    t.encap.local = kLocal6;
    t.encap.remote = kRemote6;
  });
  Fd tap(socket(AF_INET6, SOCK_RAW, IPPROTO_GRE));
  ASSERT_GE(tap.get(), 0);

  SendInner("hello-ip6gre-tx");
  std::vector<uint8_t> pkt = Capture(tap, "hello-ip6gre-tx");
  ASSERT_FALSE(pkt.empty()) << CaptureFailure() << "; " << Ipv6Counters();
  GreHeader gre;
  size_t gre_len = 0;
  DropReason reason;
  ASSERT_TRUE(ParseGreHeader(pkt.data(), pkt.size(), &gre, &gre_len, &reason));
  EXPECT_TRUE(gre.has_key);
  EXPECT_EQ(gre.key, 9u);
  EXPECT_EQ(gre.protocol, kEtherTypeIpv4);

  auto udp = BoundUdp();
  Fd sender(socket(AF_INET6, SOCK_RAW, IPPROTO_GRE));
  sockaddr_in6 from{};
  from.sin6_family = AF_INET6;
  memcpy(&from.sin6_addr, kRemote6.data(), 16);
  ASSERT_EQ(bind(sender.get(), reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
  // ECT(0) outside: copied nowhere (the inner packet is not-ECT and the outer is not CE).
  const int tclass = kEcnEct0;
  ASSERT_EQ(setsockopt(sender.get(), IPPROTO_IPV6, IPV6_TCLASS, &tclass, sizeof tclass), 0);
  std::vector<uint8_t> inner = UdpPacket(kInnerFar, kInnerA, kPort, "hello-ip6gre-rx");
  GreHeader keyed;
  keyed.has_key = true;
  keyed.key = 9;
  keyed.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> payload(GreHeaderLen(keyed) + inner.size());
  memcpy(payload.data() + GreHeaderLen(keyed), inner.data(), inner.size());
  WriteGreHeader(keyed, payload.data(), inner.size());
  sockaddr_in6 to{};
  to.sin6_family = AF_INET6;
  memcpy(&to.sin6_addr, kLocal6.data(), 16);
  ASSERT_EQ(sendto(sender.get(), payload.data(), payload.size(), 0,
                   reinterpret_cast<sockaddr*>(&to), sizeof to),
            static_cast<ssize_t>(payload.size()));
  EXPECT_EQ(ReceiveUdp(*udp), "hello-ip6gre-rx");
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::rx_packets) == 1; }));
}

// encap fou (GRE-in-UDP, RFC 8086): sent through a UDP socket to port 4754, received on the
// engine's own socket on that port.
void Fou(EngineTunnel& t) { t.encap.udp_dport = kGreInUdpPort; }

TEST_P(EngineTest, FouTransmitIsGreInUdp) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 9, Fou);
  Fd udp_tap(socket(AF_INET, SOCK_RAW, IPPROTO_UDP));
  ASSERT_GE(udp_tap.get(), 0);
  SendInner("hello-fou-tx");
  std::vector<uint8_t> pkt = Capture(udp_tap, "hello-fou-tx");
  ASSERT_FALSE(pkt.empty()) << "no UDP packet left the engine";
  Ipv4Header outer;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(pkt.data(), pkt.size(), &outer, &reason));
  EXPECT_EQ(outer.src, kLocal);
  EXPECT_EQ(outer.dst, kRemote);
  EXPECT_EQ(outer.protocol, IPPROTO_UDP);
  EXPECT_TRUE(outer.dont_fragment);
  EXPECT_EQ(outer.ttl, 64);
  const uint8_t* udp = pkt.data() + 20;
  EXPECT_EQ(LoadBe16(udp + 2), kGreInUdpPort);
  EXPECT_EQ(LoadBe16(udp + 4), pkt.size() - 20);
  GreHeader gre;
  size_t gre_len = 0;
  ASSERT_TRUE(ParseGreHeader(udp + 8, pkt.size() - 28, &gre, &gre_len, &reason));
  EXPECT_TRUE(gre.has_key);
  EXPECT_EQ(gre.key, 9u);
  EXPECT_EQ(gre.protocol, kEtherTypeIpv4);
  EXPECT_EQ(LoadBe32(udp + 8 + gre_len + 16), kInnerFar);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 1; }));
}

TEST_P(EngineTest, FouReceiveDeliversGreInUdp) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, Fou);
  auto inner_socket = BoundUdp();
  std::vector<uint8_t> payload = {0x00, 0x00, 0x08, 0x00};  // GRE, IPv4 inside
  const std::vector<uint8_t> inner = UdpPacket(kInnerFar, kInnerA, kPort, "hello-fou-rx");
  payload.insert(payload.end(), inner.begin(), inner.end());
  Fd peer(socket(AF_INET, SOCK_DGRAM, 0));
  sockaddr_in from = Addr(kRemote);
  ASSERT_EQ(bind(peer.get(), reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
  sockaddr_in to = Addr(kLocal, kGreInUdpPort);
  ASSERT_EQ(sendto(peer.get(), payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&to),
                   sizeof to),
            static_cast<ssize_t>(payload.size()));
  EXPECT_EQ(ReceiveUdp(*inner_socket), "hello-fou-rx");
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::rx_packets) == 1; }));
  // Junk on the port is counted, not delivered.
  const uint8_t junk[] = {0x01, 0x02, 0x03};
  ASSERT_EQ(sendto(peer.get(), junk, sizeof junk, 0, reinterpret_cast<sockaddr*>(&to), sizeof to),
            3);
  EXPECT_TRUE(Eventually([&] { return EngineDrops(DropReason::kTruncated) >= 1; }));
}

// ---- Loops -------------------------------------------------------------------------------

// Hands `packet` to the device as the host's stack does with what it routes there (a packet
// socket on the device; a TUN device has no link header).
void InjectIntoDevice(int ifindex, const std::vector<uint8_t>& packet) {
  Fd out(socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP)));
  ASSERT_GE(out.get(), 0);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_IP);
  to.sll_ifindex = ifindex;
  ASSERT_EQ(sendto(out.get(), packet.data(), packet.size(), 0, reinterpret_cast<sockaddr*>(&to),
                   sizeof to),
            static_cast<ssize_t>(packet.size()))
      << strerror(errno);
}

// Reads `tap` until a packet carrying `wanted` comes (true), or 3 s pass; *unwanted_seen is set
// when a packet carrying `unwanted` came on the way.
bool SeenOnTap(const Fd& tap, const std::string& wanted, const std::string& unwanted,
               bool* unwanted_seen) {
  std::vector<uint8_t> buf(65536);
  for (int i = 0; i < 30; ++i) {
    pollfd p{tap.get(), POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = recv(tap.get(), buf.data(), buf.size(), 0);
    if (n <= 0) continue;
    const std::string bytes(reinterpret_cast<char*>(buf.data()), n);
    if (bytes.find(unwanted) != std::string::npos) *unwanted_seen = true;
    if (bytes.find(wanted) != std::string::npos) return true;
  }
  return false;
}

// The tunnel's own outer packet (local -> remote, GRE with its key), handed back to its device,
// is not wrapped and sent again: dropped as a loop. Ordinary packets still go.
TEST_P(EngineTest, OwnOuterPacketInTheDeviceIsDroppedAsALoop) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 5);
  GreHeader gre;
  gre.has_key = true;
  gre.key = 5;
  gre.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> own =
      Wrap(UdpPacket(kInnerA, kInnerFar, kPort, "looped-back"), kIpProtoGre, &gre);
  // Wrap makes remote -> local; what the tunnel sends goes local -> remote.
  std::swap_ranges(own.begin() + 12, own.begin() + 16, own.begin() + 16);
  Ipv4Header header;
  DropReason reason;
  ASSERT_TRUE(ParseIpv4Header(own.data(), own.size(), &header, &reason));
  WriteIpv4Header(header, own.data());
  InjectIntoDevice(tun_->ifindex(), own);
  EXPECT_TRUE(Eventually(
      [&] { return counters_->Sum(&TunnelCounters::tx_drops, DropReason::kLoop) == 1; }));

  SendInner("after-the-loop");
  bool looped_sent = false;
  EXPECT_TRUE(SeenOnTap(*gre_tap_, "after-the-loop", "looped-back", &looped_sent));
  EXPECT_FALSE(looped_sent) << "the looped packet was wrapped and sent again";
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 1; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kLoop), 1u);
}

// The kernel's dead loop: someone routes the remote through the tunnel's own device. The first
// packet leaves; what the route brings back into the device is dropped, once, instead of going
// round and round (each time 24 bytes longer) until it no longer fits the path.
constexpr uint32_t kRoutedIntoTheTunnel = 0xC612001E;  // 198.18.0.30
TEST_P(EngineTest, RouteToTheRemoteThroughTheTunnelIsDroppedAsALoop) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) {
    t.encap.local = OuterAddress();  // sent from the address the route gives (tun0's)
    t.encap.remote = kRoutedIntoTheTunnel;
  });
  ASSERT_TRUE(netlink_->AddRoute(tun_->ifindex(), *IpPrefix::Parse("198.18.0.30/32")).ok());
  SendInner("round-and-round");
  EXPECT_TRUE(Eventually(
      [&] { return counters_->Sum(&TunnelCounters::tx_drops, DropReason::kLoop) >= 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // time for more rounds, if any
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_packets), 1u);
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kLoop), 1u);
}

// ---- Last receive time -----------------------------------------------------------------------

TEST_P(EngineTest, LastReceiveTimeAdvancesWithPacketsDelivered) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  auto udp = BoundUdp();
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  EXPECT_EQ(counters_->last_receive_unix_nanos.load(), 0);
  const int64_t before = absl::ToUnixNanos(absl::Now());
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "first"), kIpProtoGre, &gre));
  ASSERT_EQ(ReceiveUdp(*udp), "first");
  ASSERT_TRUE(Eventually([&] { return counters_->last_receive_unix_nanos.load() != 0; }));
  const int64_t first = counters_->last_receive_unix_nanos.load();
  // The worker's coarse clock, read when its loop woke for the packet: a kernel tick behind.
  EXPECT_GE(first, before - absl::ToInt64Nanoseconds(absl::Milliseconds(50)));
  EXPECT_LE(first, absl::ToUnixNanos(absl::Now()));

  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(counters_->last_receive_unix_nanos.load(), first) << "stamped with nothing received";
  SendOuter(Wrap(UdpPacket(kInnerFar, kInnerA, kPort, "second"), kIpProtoGre, &gre));
  ASSERT_EQ(ReceiveUdp(*udp), "second");
  EXPECT_TRUE(Eventually([&] {
    return counters_->last_receive_unix_nanos.load() >=
           first + absl::ToInt64Nanoseconds(absl::Milliseconds(150));
  }));
}

// ---- Worker health ---------------------------------------------------------------------------

// Every worker comes round its loop at least every tick, traffic or not: an idle engine stays
// healthy under a stall limit of a few ticks.
// ---- Multipoint: one device, a peer per inner prefix -------------------------------------------

constexpr uint32_t kPeerTwo = 0x7f000003;  // 127.0.0.3: loopback too

InnerPrefix InnerPrefix4(uint32_t network, int length) {
  InnerPrefix p;
  p.bytes = {static_cast<uint8_t>(network >> 24), static_cast<uint8_t>(network >> 16),
             static_cast<uint8_t>(network >> 8), static_cast<uint8_t>(network)};
  p.length = length;
  return p;
}

// Peer 1 at 127.0.0.2 holds 10.9.0.0/24, peer 2 at 127.0.0.3 the /32 of 10.9.0.2 inside it.
EnginePeer MultipointPeer(uint32_t id, size_t workers) {
  EnginePeer p;
  p.id = id;
  p.underlay = id == 1 ? kRemote : kPeerTwo;
  p.allowed = std::make_shared<const std::vector<InnerPrefix>>(std::vector<InnerPrefix>{
      id == 1 ? InnerPrefix4(0x0a090000, 24) : InnerPrefix4(kInnerFar, 32)});
  p.stats = std::make_shared<PeerStats>(workers);
  return p;
}

// `inner` as peer `from` sends it: GRE without key from `from` to 127.0.0.1.
std::vector<uint8_t> WrapFrom(uint32_t from, const std::vector<uint8_t>& inner) {
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> pkt(kIpv4HeaderLen + GreHeaderLen(gre) + inner.size());
  memcpy(pkt.data() + kIpv4HeaderLen + GreHeaderLen(gre), inner.data(), inner.size());
  WriteGreHeader(gre, pkt.data() + kIpv4HeaderLen, inner.size());
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(pkt.size());
  ip.ttl = 64;
  ip.protocol = kIpProtoGre;
  ip.src = from;
  ip.dst = kLocal;
  WriteIpv4Header(ip, pkt.data());
  return pkt;
}

uint32_t OuterDestination(const std::vector<uint8_t>& pkt) {
  Ipv4Header outer;
  DropReason reason;
  if (!ParseIpv4Header(pkt.data(), pkt.size(), &outer, &reason)) return 0;
  return outer.dst;
}

TEST_P(EngineTest, MultipointGreReachesEachPeerBothWays) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) {
    t.encap.remote = OuterAddress();
    t.multipoint = true;
  });
  const EnginePeer one = MultipointPeer(1, engine_->workers());
  const EnginePeer two = MultipointPeer(2, engine_->workers());
  ASSERT_TRUE(engine_->ChangePeers("tun0", {one, two}, {}).ok());

  // To 10.9.0.2: peer 2's /32 inside peer 1's /24.
  SendInner("mp-to-peer2");
  std::vector<uint8_t> pkt = Capture(*gre_tap_, "mp-to-peer2");
  ASSERT_FALSE(pkt.empty()) << CaptureFailure();
  EXPECT_EQ(OuterDestination(pkt), kPeerTwo);
  EXPECT_TRUE(Eventually([&] { return two.stats->Sum(&PeerCounters::tx_packets) == 1; }));

  // Peer 2 gone: the /24 takes it.
  ASSERT_TRUE(engine_->ChangePeers("tun0", {}, {2}).ok());
  SendInner("mp-to-peer1");
  pkt = Capture(*gre_tap_, "mp-to-peer1");
  ASSERT_FALSE(pkt.empty()) << CaptureFailure();
  EXPECT_EQ(OuterDestination(pkt), kRemote);
  EXPECT_TRUE(Eventually([&] { return one.stats->Sum(&PeerCounters::tx_packets) == 1; }));

  // Receive: from a peer, with a source it may send from.
  auto udp = BoundUdp();
  const std::vector<uint8_t> from_far = UdpPacket(kInnerFar, kInnerA, kPort, "mp-from-far");
  SendOuter(WrapFrom(kPeerTwo, from_far));  // removed: no peer's address
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kUnknownPeer) == 1; }));
  ASSERT_TRUE(engine_->ChangePeers("tun0", {two}, {}).ok());
  SendOuter(WrapFrom(kRemote, from_far));  // 10.9.0.2 is peer 2's, not peer 1's
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kSpoofedSource) == 1; }));
  SendOuter(WrapFrom(kPeerTwo, from_far));
  EXPECT_EQ(ReceiveUdp(*udp), "mp-from-far");
  SendOuter(WrapFrom(kRemote, UdpPacket(0x0a090005, kInnerA, kPort, "mp-from-one")));
  EXPECT_EQ(ReceiveUdp(*udp), "mp-from-one");
  EXPECT_TRUE(Eventually([&] {
    return one.stats->Sum(&PeerCounters::rx_packets) == 1 &&
           two.stats->Sum(&PeerCounters::rx_packets) == 1 &&
           counters_->Sum(&TunnelCounters::rx_packets) == 2;
  }));
}

TEST_P(EngineTest, MultipointPeersChangeWhileTrafficFlows) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) {
    t.encap.remote = OuterAddress();
    t.multipoint = true;
    t.peers = {};
  });
  const EnginePeer one = MultipointPeer(1, engine_->workers());
  const EnginePeer two = MultipointPeer(2, engine_->workers());
  ASSERT_TRUE(engine_->ChangePeers("tun0", {one}, {}).ok());
  constexpr int kPackets = 300;
  std::atomic<int> sent{0};
  std::thread sender([&] {
    Fd udp(socket(AF_INET, SOCK_DGRAM, 0));
    sockaddr_in src = Addr(kInnerA);
    if (bind(udp.get(), reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) return;
    sockaddr_in dst = Addr(kInnerFar, kPort);
    for (int i = 0; i < kPackets; ++i) {
      if (sendto(udp.get(), "churn", 5, 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst) == 5) {
        ++sent;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  });
  // Peer 2 comes and goes under the traffic: each packet goes to one of them, never nowhere.
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(engine_->ChangePeers("tun0", {two}, {}).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(engine_->ChangePeers("tun0", {}, {2}).ok());
  }
  sender.join();
  EXPECT_TRUE(Eventually([&] {
    return counters_->Sum(&TunnelCounters::tx_packets) == static_cast<uint64_t>(sent.load());
  })) << CaptureFailure();
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kNoPeer), 0u);
  // What a removed peer had in flight counts on the tunnel alone.
  EXPECT_LE(one.stats->Sum(&PeerCounters::tx_packets) + two.stats->Sum(&PeerCounters::tx_packets),
            counters_->Sum(&TunnelCounters::tx_packets));
  EXPECT_GT(one.stats->Sum(&PeerCounters::tx_packets), 0u);
  EXPECT_TRUE(engine_->Health(absl::Seconds(1)).ok());
  EXPECT_EQ(engine_->ChangePeers("nope", {}, {}).code(), absl::StatusCode::kNotFound);
}

TEST_P(EngineTest, IdleWorkersStayHealthy) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  for (int i = 0; i < 20; ++i) {
    const absl::Status status = engine_->Health(absl::Milliseconds(300));
    ASSERT_TRUE(status.ok()) << status;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Holds the thread it runs on, as a debugger's stop would, until released.
std::atomic<bool> hold_thread{false};
std::atomic<pid_t> held_thread{0};
void HoldThread(int) {
  held_thread.store(gettid());
  while (hold_thread.load()) {
    timespec pause{0, 1'000'000};
    nanosleep(&pause, nullptr);
  }
}

// A worker thread that stops running (held in a signal handler: a process cannot ptrace its own
// threads) makes Health UNAVAILABLE, naming it, within the stall limit; running again, it is
// healthy again. The other workers of a pool are not named.
TEST_P(EngineTest, StalledWorkerIsUnavailableUntilItRunsAgain) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  const unsigned worker = static_cast<unsigned>(engine_->workers() - 1);
  const std::string thread = "dataplane-" + std::to_string(worker);
  struct sigaction hold {};
  hold.sa_handler = HoldThread;
  sigemptyset(&hold.sa_mask);
  struct sigaction previous {};
  ASSERT_EQ(sigaction(SIGUSR1, &hold, &previous), 0);
  hold_thread = true;
  held_thread = 0;
  struct Release {
    ~Release() { hold_thread = false; }  // whatever fails below, the worker runs again
  } release;
  // A joined thread of an earlier engine can still be listed under the name for a moment.
  for (const auto& [tid, name] : Threads()) {
    if (name != thread || syscall(SYS_tgkill, getpid(), tid, SIGUSR1) != 0) continue;
    if (Eventually([&, tid = tid] { return held_thread.load() == tid; }, 500)) break;
  }
  ASSERT_NE(held_thread.load(), 0) << "no running thread " << thread;

  const absl::Duration stall = absl::Milliseconds(300);
  absl::Status status;
  EXPECT_TRUE(Eventually([&] {
    status = engine_->Health(stall);
    return !status.ok();
  }));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  const std::string named =
      "dataplane worker " + std::to_string(worker) + " (thread " + thread + ") has not run for ";
  EXPECT_NE(status.message().find(named), std::string::npos) << status;
  EXPECT_EQ(status.message().find("stopped"), std::string::npos) << status;
  if (worker > 0) {
    EXPECT_EQ(status.message().find("worker 0"), std::string::npos) << status;
  }

  hold_thread = false;
  EXPECT_TRUE(Eventually([&] { return engine_->Health(stall).ok(); })) << engine_->Health(stall);
  sigaction(SIGUSR1, &previous, nullptr);  // the handler has returned: the worker ran since
}

// The first descriptor of this process that is `kind` (as /proc/self/fd shows it), or -1.
int FirstFdOf(const std::string& kind) {
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(fds)) {
    char target[256];
    const std::string path = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t n = readlink(path.c_str(), target, sizeof target - 1);
    if (n <= 0 || std::string(target, n) != kind) continue;
    found = atoi(entry->d_name);
    break;
  }
  closedir(fds);
  return found;
}

// A worker whose ring (or epoll set) is gone, here its descriptor made /dev/null behind its
// back, ends: Health says which worker stopped and why, and commands are answered rather than
// left waiting.
TEST_P(EngineTest, WorkerWhoseRingIsGoneIsReportedStopped) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  ASSERT_TRUE(engine_->Health(absl::Seconds(10)).ok());
  const bool uring = GetParam().backend == Backend::kUring;
  const int ring = FirstFdOf(uring ? "anon_inode:[io_uring]" : "anon_inode:[eventpoll]");
  ASSERT_GE(ring, 0);
  Fd null(open("/dev/null", O_RDWR | O_CLOEXEC));
  ASSERT_EQ(dup2(null.get(), ring), ring);
  absl::Status status;
  // A long stall limit: only a worker that has ended fails it.
  EXPECT_TRUE(Eventually([&] {
    status = engine_->Health(absl::Seconds(10));
    return !status.ok();
  }));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  const std::string why = uring ? " stopped: io_uring_enter: " : " stopped: epoll_wait: ";
  EXPECT_NE(status.message().find(why), std::string::npos) << status;
  EXPECT_EQ(status.message().rfind("dataplane worker ", 0), 0u) << status;
  EXPECT_EQ(engine_->RemoveTunnel("tun0").code(), absl::StatusCode::kUnavailable);
  // The ring the kernel could no longer be asked to cancel lets go of the device as it tears
  // the ring down in the background (a few milliseconds), so the device can be made again.
  engine_.reset();
  tun_.reset();
  EXPECT_TRUE(Eventually([] { return if_nametoindex("tun0") == 0; }, 5000));
}

// A multipoint tunnel over GRE-in-UDP, peer 1 at 127.0.0.2 and peer 2 at 127.0.0.3.
void MultipointFou(EngineTunnel& t) {
  t.encap.remote = OuterAddress();
  t.encap.udp_dport = kGreInUdpPort;
  t.multipoint = true;
}

// `inner` as a peer at `from` sends it over GRE-in-UDP (keyless GRE, from a port of its own)
// to the engine's fou port.
void SendFouFrom(uint32_t from, const std::vector<uint8_t>& inner) {
  std::vector<uint8_t> payload = {0x00, 0x00, 0x08, 0x00};  // GRE, IPv4 inside
  payload.insert(payload.end(), inner.begin(), inner.end());
  Fd peer(socket(AF_INET, SOCK_DGRAM, 0));
  sockaddr_in source = Addr(from);
  ASSERT_EQ(bind(peer.get(), reinterpret_cast<sockaddr*>(&source), sizeof source), 0);
  sockaddr_in to = Addr(kLocal, kGreInUdpPort);
  ASSERT_EQ(sendto(peer.get(), payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&to),
                   sizeof to),
            static_cast<ssize_t>(payload.size()));
}

// The fou senders of a multipoint tunnel are not connected: each packet names its peer at the
// fou port; what comes in on the shared port is taken from peers only.
TEST_P(EngineTest, MultipointFouReachesEachPeerBothWays) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, MultipointFou);
  const EnginePeer one = MultipointPeer(1, engine_->workers());
  const EnginePeer two = MultipointPeer(2, engine_->workers());
  ASSERT_TRUE(engine_->ChangePeers("tun0", {one, two}, {}).ok());

  // Receive first: what the engine sends to a loopback peer comes back to its own port.
  auto udp = BoundUdp();
  const std::vector<uint8_t> from_far = UdpPacket(kInnerFar, kInnerA, kPort, "mpfou-from-far");
  SendFouFrom(0x7f000004, from_far);  // 127.0.0.4: no peer's address
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kUnknownPeer) == 1; }))
      << CaptureFailure();
  SendFouFrom(kRemote, from_far);  // 10.9.0.2 is peer 2's, not peer 1's
  EXPECT_TRUE(Eventually([&] { return TunnelDrops(DropReason::kSpoofedSource) == 1; }));
  SendFouFrom(kPeerTwo, from_far);
  EXPECT_EQ(ReceiveUdp(*udp), "mpfou-from-far");
  SendFouFrom(kRemote, UdpPacket(0x0a090005, kInnerA, kPort, "mpfou-from-one"));
  EXPECT_EQ(ReceiveUdp(*udp), "mpfou-from-one");
  EXPECT_TRUE(Eventually([&] {
    return one.stats->Sum(&PeerCounters::rx_packets) == 1 &&
           two.stats->Sum(&PeerCounters::rx_packets) == 1 &&
           counters_->Sum(&TunnelCounters::rx_packets) == 2;
  })) << CaptureFailure();

  // Transmit: 10.9.0.2 is peer 2's /32, 10.9.0.7 in peer 1's /24.
  Fd udp_tap(socket(AF_INET, SOCK_RAW, IPPROTO_UDP));
  ASSERT_GE(udp_tap.get(), 0);
  auto expect_fou_to = [&](const std::vector<uint8_t>& pkt, uint32_t peer) {
    ASSERT_GE(pkt.size(), 28u);
    EXPECT_EQ(OuterDestination(pkt), peer);
    EXPECT_EQ(LoadBe32(pkt.data() + 12), kLocal);
    EXPECT_EQ(pkt[9], IPPROTO_UDP);
    EXPECT_EQ(LoadBe16(pkt.data() + 22), kGreInUdpPort);
  };
  SendInner("mpfou-to-peer2");
  std::vector<uint8_t> pkt = Capture(udp_tap, "mpfou-to-peer2");
  ASSERT_FALSE(pkt.empty()) << CaptureFailure();
  expect_fou_to(pkt, kPeerTwo);
  {
    Fd inner(socket(AF_INET, SOCK_DGRAM, 0));
    sockaddr_in src = Addr(kInnerA);
    ASSERT_EQ(bind(inner.get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    sockaddr_in dst = Addr(0x0a090007, kPort);
    ASSERT_EQ(
        sendto(inner.get(), "mpfou-to-peer1", 14, 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst),
        14);
  }
  pkt = Capture(udp_tap, "mpfou-to-peer1");
  ASSERT_FALSE(pkt.empty()) << CaptureFailure();
  expect_fou_to(pkt, kRemote);
  EXPECT_TRUE(Eventually([&] {
    return one.stats->Sum(&PeerCounters::tx_packets) == 1 &&
           two.stats->Sum(&PeerCounters::tx_packets) == 1 &&
           counters_->Sum(&TunnelCounters::tx_packets) == 2;
  })) << CaptureFailure();
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kSendError), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, EngineTest,
                         ::testing::Values(EngineParam{Backend::kUring, false},
                                           EngineParam{Backend::kEpoll, false},
                                           EngineParam{Backend::kUring, true},
                                           EngineParam{Backend::kEpoll, true},
                                           EngineParam{Backend::kUring, false, 2},
                                           EngineParam{Backend::kEpoll, true, 2}),
                         BackendName);

// Several workers (a WorkerPool): each packet handled by exactly one worker, and the work
// spread between them.
class PoolEngineTest : public EngineTest {
 protected:
  WorkerPool& pool() { return *static_cast<WorkerPool*>(engine_.get()); }

  // A UDP datagram from the far side to the bound socket, its flow told apart by `sport`.
  static std::vector<uint8_t> FlowPacket(uint16_t sport, const std::string& payload) {
    std::vector<uint8_t> inner = UdpPacket(kInnerFar, kInnerA, kPort, payload);
    inner[kIpv4HeaderLen] = sport >> 8;
    inner[kIpv4HeaderLen + 1] = sport & 0xff;
    return inner;
  }

  // `payload` into the device from 10.1.0.1:`sport` to the far side, a flow of its own.
  static void SendInnerFrom(uint16_t sport, const std::string& payload) {
    Fd sender(socket(AF_INET, SOCK_DGRAM, 0));
    sockaddr_in src = Addr(kInnerA, sport);
    ASSERT_EQ(bind(sender.get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    sockaddr_in dst = Addr(kInnerFar, kPort);
    ASSERT_EQ(sendto(sender.get(), payload.data(), payload.size(), 0,
                     reinterpret_cast<sockaddr*>(&dst), sizeof dst),
              static_cast<ssize_t>(payload.size()));
  }
};

TEST_P(PoolEngineTest, ReceivedFlowsAreSpreadAndEachPacketTakenOnce) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 77);
  auto udp = BoundUdp();
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  gre.has_key = true;
  gre.key = 77;
  constexpr int kFlows = 200;
  std::vector<uint64_t> expected(engine_->workers());
  for (int i = 0; i < kFlows; ++i) {
    std::vector<uint8_t> outer = Wrap(FlowPacket(20000 + i, "spread"), kIpProtoGre, &gre);
    ++expected[SteeringWorker(SteeringSocket::kIpv4, kIpProtoGre, outer.data(), outer.size(),
                              static_cast<unsigned>(engine_->workers()))];
    SendOuter(outer);
  }
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::rx_packets) == kFlows; }));
  for (size_t w = 0; w < engine_->workers(); ++w) {
    EXPECT_EQ(counters_->worker(w).rx_packets.Get(), expected[w]) << "worker " << w;
    EXPECT_GT(expected[w], 0u) << "worker " << w << " got no flow of " << kFlows;
  }
  // Nothing came twice: the underlay sockets together saw each packet once.
  EXPECT_EQ(engine_->counters().rx_packets, static_cast<uint64_t>(kFlows));
  int delivered = 0;
  while (!ReceiveUdp(*udp, 200).empty()) ++delivered;
  EXPECT_EQ(delivered, kFlows);
}

TEST_P(PoolEngineTest, GarbageIsCountedOnceByWorkerZero) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  std::vector<uint8_t> outer = Wrap(FlowPacket(1, "cut short"), kIpProtoGre, &gre);
  outer.resize(kIpv4HeaderLen + 4 + 10);  // inside the inner header
  Ipv4Header ip;
  ip.total_len = static_cast<uint16_t>(outer.size());
  ip.ttl = 64;
  ip.protocol = kIpProtoGre;
  ip.src = kRemote;
  ip.dst = kLocal;
  WriteIpv4Header(ip, outer.data());
  for (int i = 0; i < 10; ++i) SendOuter(outer);
  EXPECT_TRUE(Eventually([&] { return engine_->counters().rx_packets == 10; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(engine_->counters().rx_packets, 10u);
}

TEST_P(PoolEngineTest, EachWorkerReadsAQueueOfTheDevice) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  EXPECT_EQ(pool().DeviceQueues("tun0"), engine_->workers());
  constexpr int kFlows = 100;
  for (int i = 0; i < kFlows; ++i) SendInnerFrom(static_cast<uint16_t>(30000 + i), "q");
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == kFlows; }));
  for (size_t w = 0; w < engine_->workers(); ++w) {
    EXPECT_GT(counters_->worker(w).tx_packets.Get(), 0u) << "worker " << w << " sent nothing";
  }
}

TEST_P(PoolEngineTest, SequencedTunnelIsSentByOneWorkerInOrder) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, [](EngineTunnel& t) { t.encap.sequence = true; });
  EXPECT_EQ(pool().DeviceQueues("tun0"), 1u);
  for (int i = 0; i < 20; ++i) {
    const std::string payload = "seq-" + std::to_string(i);
    SendInnerFrom(static_cast<uint16_t>(31000 + i), payload);
    std::vector<uint8_t> pkt = Capture(*gre_tap_, payload);
    ASSERT_FALSE(pkt.empty()) << payload;
    // The sequence number follows the 4-byte base header (no key, no checksum).
    EXPECT_EQ(LoadBe32(pkt.data() + kIpv4HeaderLen + 4), static_cast<uint32_t>(i + 1));
  }
  EXPECT_TRUE(Eventually([&] { return counters_->worker(0).tx_packets.Get() == 20; }));
}

TEST_P(PoolEngineTest, TunnelStatsMustHaveRoomForEveryWorker) {
  TunDevice::CreateOptions options;
  options.multi_queue = true;
  auto tun = TunDevice::Create("tun1", TunDevice::Kind::kTun, options);
  ASSERT_TRUE(tun.ok()) << tun.status();
  EngineTunnel t;
  t.name = "tun1";
  t.device_fd = (*tun)->fd();
  t.mtu = 1400;
  t.encap.mode = TunnelMode::kIpip;
  t.encap.local = kLocal;
  t.encap.remote = kRemote;
  t.stats = std::make_shared<TunnelStats>(1);
  EXPECT_EQ(engine_->AddTunnel(t).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, PoolEngineTest,
                         ::testing::Values(EngineParam{Backend::kUring, false, 2},
                                           EngineParam{Backend::kEpoll, false, 2},
                                           EngineParam{Backend::kUring, true, 3}),
                         BackendName);

// "Fragmentation needed" errors about the tunnel's packets, as an off-path forger would send
// them and as a router would: only a quote that could be one of the tunnel's packets lowers its
// path MTU, never below 552, and for a while. The underlay is 198.18.0.1 -> 198.18.0.2 on
// loopback (MTU 1500), the tunnel GRE with key 42: a path MTU of 1500 - 28.
constexpr uint32_t kIcmpLocal = 0xC6120001;   // 198.18.0.1
constexpr uint32_t kIcmpRemote = 0xC6120002;  // 198.18.0.2
constexpr uint32_t kIcmpRouter = 0xC61200FE;  // 198.18.0.254, a router on the path
constexpr uint32_t kIcmpKey = 42;

class IcmpEngineTest : public EngineTest {
 protected:
  EngineOptions Options() const override {
    EngineOptions options;
    options.path_mtu_expiry = absl::Seconds(2);
    return options;
  }

  void SetUp() override {
    EngineTest::SetUp();
    if (HasFatalFailure()) return;
    auto lo = netlink_->GetLinkByName("lo");
    ASSERT_TRUE(lo.ok());
    lo_ = lo->ifindex;
    ASSERT_TRUE(netlink_->SetLinkMtu(lo_, 1500).ok());
    // Ours, the remote, another of this host's, and a router's (any local address will do
    // as the source of what arrives on loopback).
    for (const char* a : {"198.18.0.1/32", "198.18.0.2/32", "198.18.0.9/32", "198.18.0.254/32"}) {
      absl::Status s = netlink_->AddAddress(lo_, *IpPrefix::Parse(a));
      ASSERT_TRUE(s.ok() || absl::IsAlreadyExists(s)) << s;
    }
  }

  void TearDown() override {
    EngineTest::TearDown();
    netlink_->SetLinkMtu(lo_, 65536).IgnoreError();
  }

  void AddIcmpTunnel(bool sequence = false) {
    if (sequence) {
      AddTunnel(TunnelMode::kGre, /*keyed=*/true, kIcmpKey, [](EngineTunnel& t) {
        t.encap.local = kIcmpLocal;
        t.encap.remote = kIcmpRemote;
        t.encap.sequence = true;
      });
    } else {
      AddTunnel(TunnelMode::kGre, /*keyed=*/true, kIcmpKey, [](EngineTunnel& t) {
        t.encap.local = kIcmpLocal;
        t.encap.remote = kIcmpRemote;
      });
    }
  }

  // The tunnel's packet as `quoted` describes it (a 1400-byte inner packet), quoted by a
  // "fragmentation needed" with `mtu` from the router to the packet's source, sent now.
  void SendFragNeeded(const EncapParams& quoted, uint16_t mtu, uint32_t sequence = 0) {
    std::vector<uint8_t> storage(kMaxEncapHeadroom, 0);
    const std::vector<uint8_t> inner = UdpPacket(kInnerA, kInnerFar, kPort, std::string(1372, 'q'));
    storage.insert(storage.end(), inner.begin(), inner.end());
    EncapResult outer =
        Encapsulate(quoted, storage.data() + kMaxEncapHeadroom, inner.size(), 0, sequence);
    ASSERT_NE(outer.packet, nullptr);
    std::vector<uint8_t> error(1024);
    const size_t n = WriteIcmpFragmentationNeeded(outer.packet, outer.len, kIcmpRouter, mtu,
                                                  error.data(), error.size());
    ASSERT_NE(n, 0u);
    sockaddr_in dst = Addr(quoted.local.v4());
    ASSERT_EQ(
        sendto(sender_->get(), error.data(), n, 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst),
        static_cast<ssize_t>(n));
  }

  // How the tunnel's packets look, to be changed field by field.
  static EncapParams Ours(uint32_t key = kIcmpKey) {
    EncapParams p;
    p.mode = TunnelMode::kGre;
    p.local = kIcmpLocal;
    p.remote = kIcmpRemote;
    p.has_key = true;
    p.key = key;
    p.ttl = 64;
    return p;
  }

  uint64_t Rejected() const { return TunnelDrops(DropReason::kIcmpRejected); }
  uint32_t PathMtu() const { return counters_->path_mtu.load(); }

  int lo_ = 0;
};

TEST_P(IcmpEngineTest, ForgedQuotesAreCountedAndChangeNothing) {
  AddIcmpTunnel();
  ASSERT_TRUE(Eventually([&] { return PathMtu() == 1500 - 28; })) << PathMtu();

  SendFragNeeded(Ours(kIcmpKey + 1), 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 1; })) << Rejected();
  // From another address of this host (an error goes to the quoted packet's source).
  EncapParams from_elsewhere = Ours();
  from_elsewhere.local = 0xC6120009;
  SendFragNeeded(from_elsewhere, 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 2; })) << Rejected();
  EncapParams keyless = Ours();
  keyless.has_key = false;
  SendFragNeeded(keyless, 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 3; })) << Rejected();
  // The right quote with an MTU no IPv4 path has (the kernel would take it as 552).
  SendFragNeeded(Ours(), 300);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 4; })) << Rejected();
  // About another remote: no tunnel's, counted by the engine.
  EncapParams elsewhere = Ours();
  elsewhere.remote = 0xC6120003;
  SendFragNeeded(elsewhere, 1400);
  EXPECT_TRUE(Eventually([&] { return EngineDrops(DropReason::kIcmpRejected) == 1; }));

  // Read and judged (the counts above), believed by nobody.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(PathMtu(), 1500u - 28);
  EXPECT_EQ(Rejected(), 4u) << "each error counted once, whatever the number of workers";
}

TEST_P(IcmpEngineTest, RightQuoteLowersThePathNeverBelowTheFloorAndItRecovers) {
  AddIcmpTunnel();
  ASSERT_TRUE(Eventually([&] { return PathMtu() == 1500 - 28; })) << PathMtu();
  SendFragNeeded(Ours(), 1400);
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 1400 - 28; })) << PathMtu();
  SendFragNeeded(Ours(), 552);
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 552 - 28; })) << PathMtu();
  SendFragNeeded(Ours(), 551);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 1; }));
  EXPECT_EQ(PathMtu(), 552u - 28);
  // A larger packet now gets "fragmentation needed" from the tunnel itself.
  SendInnerSized(1000, /*dont_fragment=*/true);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::icmp_too_big_sent) >= 1; }));
  // The lowered value expires (2 s here, 10 minutes by default): the route's MTU again.
  const auto lowered = std::chrono::steady_clock::now();
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 1500 - 28; }, 6000)) << PathMtu();
  // Well before the next route probe would have found it (5 s).
  EXPECT_LT(std::chrono::steady_clock::now() - lowered, std::chrono::milliseconds(4000))
      << "expired late: the tunnel's housekeeping did not wake for it";
}

TEST_P(IcmpEngineTest, SequencedTunnelBelievesOnlyNumbersItSentLately) {
  AddIcmpTunnel(/*sequence=*/true);
  ASSERT_TRUE(Eventually([&] { return PathMtu() == 1500 - 32; })) << PathMtu();
  for (int i = 0; i < 3; ++i) SendInner("numbered-" + std::to_string(i));
  ASSERT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 3; }));
  EncapParams numbered = Ours();
  numbered.sequence = true;
  SendFragNeeded(numbered, 1400, /*sequence=*/1000);  // never sent
  EXPECT_TRUE(Eventually([&] { return Rejected() == 1; })) << Rejected();
  SendFragNeeded(numbered, 1400, /*sequence=*/0);  // before the first
  EXPECT_TRUE(Eventually([&] { return Rejected() == 2; })) << Rejected();
  EXPECT_EQ(PathMtu(), 1500u - 32);
  SendFragNeeded(numbered, 1400, /*sequence=*/2);
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 1400 - 32; })) << PathMtu();
  // Numbers age out of the window within two seconds.
  std::this_thread::sleep_for(std::chrono::milliseconds(2300));
  SendFragNeeded(numbered, 1300, /*sequence=*/3);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 3; })) << Rejected();
  // 1400's, or the route's again once that expired (2 s here): never what the stale quote said.
  EXPECT_GT(PathMtu(), 1300u - 32);
}

// GRE-in-UDP: an error must quote the tunnel's UDP ports and key. The kernel, which believes
// any error naming the connected fou socket's flow, queues it there as EMSGSIZE for the next
// send: that send is made again, not taken as the path shrinking.
TEST_P(IcmpEngineTest, FouErrorsNeedItsPortsAndTheKernelsQueuedErrorIsIgnored) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, kIcmpKey, [](EngineTunnel& t) {
    t.encap.local = kIcmpLocal;
    t.encap.remote = kIcmpRemote;
    t.encap.udp_dport = kGreInUdpPort;
    t.encap.udp_sport = 50123;  // one socket, so every send meets what the kernel queued
  });
  // IPv4, UDP and GRE with a key.
  ASSERT_TRUE(Eventually([&] { return PathMtu() == 1500 - 36; })) << PathMtu();
  Fd udp_tap(socket(AF_INET, SOCK_RAW, IPPROTO_UDP));
  ASSERT_GE(udp_tap.get(), 0);
  SendInner("fou-first");
  std::vector<uint8_t> first = Capture(udp_tap, "fou-first");
  ASSERT_FALSE(first.empty());
  EncapParams quoted = Ours();
  quoted.udp_dport = kGreInUdpPort;
  quoted.udp_sport = LoadBe16(first.data() + kIpv4HeaderLen);
  ASSERT_EQ(quoted.udp_sport, 50123);

  EncapParams other_key = quoted;
  other_key.key = kIcmpKey + 1;
  SendFragNeeded(other_key, 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 1; })) << Rejected();
  EncapParams other_sport = quoted;
  other_sport.udp_sport = static_cast<uint16_t>(quoted.udp_sport ^ 1);
  SendFragNeeded(other_sport, 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 2; })) << Rejected();
  // The flow the kernel's socket has: it left EMSGSIZE queued there.
  SendInner("fou-second");
  EXPECT_FALSE(Capture(udp_tap, "fou-second").empty()) << "the send after a queued error was lost";
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 2; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_drops, DropReason::kSendError), 0u);
  EXPECT_EQ(PathMtu(), 1500u - 36);

  SendFragNeeded(quoted, 1400);
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 1400 - 36; })) << PathMtu();
  EXPECT_EQ(Rejected(), 2u);
}

// The same over an IPv6 underlay (2001:2::/48, IPv6's benchmarking range, on loopback):
// ICMPv6 "packet too big" quoting ip6gre's packets through their encapsulation-limit option.
TEST_P(IcmpEngineTest, Ip6greBelievesOnlyItsOwnPacketTooBig) {
  for (const char* a : {"2001:2::1/128", "2001:2::2/128"}) {
    absl::Status s = netlink_->AddAddress(lo_, *IpPrefix::Parse(a));
    ASSERT_TRUE(s.ok() || absl::IsAlreadyExists(s)) << s;
  }
  static const OuterAddress kLocal6 = OuterAddress::FromIpv6(Ipv6Bytes("2001:2::1").data());
  static const OuterAddress kRemote6 = OuterAddress::FromIpv6(Ipv6Bytes("2001:2::2").data());
  for (const OuterAddress* a : {&kLocal6, &kRemote6}) ASSERT_TRUE(Ipv6AddressUsable(a->data()));
  AddTunnel(TunnelMode::kIp6gre, /*keyed=*/true, kIcmpKey, [](EngineTunnel& t) {
    t.encap.local = kLocal6;
    t.encap.remote = kRemote6;
  });
  // 1500 less IPv6 (40), the encapsulation-limit option (8) and GRE with a key (8).
  ASSERT_TRUE(Eventually([&] { return PathMtu() == 1500 - 56; })) << PathMtu();

  // From the remote's address (a router's would do as well), to ours; the kernel fills in the
  // ICMPv6 checksum.
  Fd icmp6(socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6));
  ASSERT_GE(icmp6.get(), 0);
  sockaddr_in6 from{};
  from.sin6_family = AF_INET6;
  memcpy(&from.sin6_addr, kRemote6.data(), 16);
  ASSERT_EQ(bind(icmp6.get(), reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
  auto send_too_big = [&](uint32_t key, uint32_t mtu) {
    EncapParams quoted;
    quoted.mode = TunnelMode::kIp6gre;
    quoted.local = kLocal6;
    quoted.remote = kRemote6;
    quoted.has_key = true;
    quoted.key = key;
    quoted.ttl = 64;
    std::vector<uint8_t> storage(kMaxEncapHeadroom, 0);
    const std::vector<uint8_t> inner = UdpPacket(kInnerA, kInnerFar, kPort, std::string(1400, 'q'));
    storage.insert(storage.end(), inner.begin(), inner.end());
    EncapResult outer = Encapsulate(quoted, storage.data() + kMaxEncapHeadroom, inner.size(), 0, 0);
    ASSERT_NE(outer.packet, nullptr);
    std::vector<uint8_t> error(2048);
    const size_t n = WriteIcmpv6PacketTooBig(outer.packet, outer.len, kRemote6, kIpv6MinMtu,
                                             error.data(), error.size());
    ASSERT_NE(n, 0u);
    uint8_t* message = error.data() + kIpv6HeaderLen;
    StoreBe32(message + 4, mtu);  // below 1280 too, as a forger would
    sockaddr_in6 to{};
    to.sin6_family = AF_INET6;
    memcpy(&to.sin6_addr, kLocal6.data(), 16);
    ASSERT_EQ(sendto(icmp6.get(), message, n - kIpv6HeaderLen, 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof to),
              static_cast<ssize_t>(n - kIpv6HeaderLen));
  };
  send_too_big(kIcmpKey + 1, 1400);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 1; })) << Rejected() << "; " << Ipv6Counters();
  send_too_big(kIcmpKey, 1279);
  EXPECT_TRUE(Eventually([&] { return Rejected() == 2; })) << Rejected() << "; " << Ipv6Counters();
  EXPECT_EQ(PathMtu(), 1500u - 56);
  send_too_big(kIcmpKey, 1400);
  EXPECT_TRUE(Eventually([&] { return PathMtu() == 1400 - 56; }))
      << PathMtu() << "; " << Ipv6Counters();
  EXPECT_EQ(Rejected(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Backends, IcmpEngineTest,
                         ::testing::Values(EngineParam{Backend::kUring, false},
                                           EngineParam{Backend::kEpoll, false},
                                           EngineParam{Backend::kUring, false, 2},
                                           EngineParam{Backend::kEpoll, false, 2}),
                         BackendName);

// TUN offloads on both engines: what only a device with a virtio-net header does.
class OffloadEngineTest : public EngineTest {
 protected:
  // A TCP segment from `src`:`sport` to `dst`:`dport` with `payload` bytes of `fill`; its
  // checksum whole, or (partial) only the pseudo-header sum, as TSO leaves it.
  static std::vector<uint8_t> Tcp(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                  uint32_t seq, uint8_t flags, const std::string& payload,
                                  bool partial) {
    std::vector<uint8_t> pkt(40 + payload.size());
    Ipv4Header ip;
    ip.total_len = static_cast<uint16_t>(pkt.size());
    ip.ttl = 64;
    ip.dont_fragment = true;
    ip.protocol = IPPROTO_TCP;
    ip.src = src;
    ip.dst = dst;
    ip.id = 0x100;
    WriteIpv4Header(ip, pkt.data());
    uint8_t* th = pkt.data() + 20;
    StoreBe16(th, sport);
    StoreBe16(th + 2, dport);
    StoreBe32(th + 4, seq);
    StoreBe32(th + 8, 1);
    th[12] = 5 << 4;
    th[13] = flags;
    StoreBe16(th + 14, 65535);
    memcpy(th + 20, payload.data(), payload.size());
    const uint32_t pseudo =
        ChecksumAdd(pkt.data() + 12, 8) + IPPROTO_TCP + static_cast<uint32_t>(pkt.size() - 20);
    if (partial) {
      uint32_t folded = pseudo;
      while (folded >> 16) folded = (folded & 0xFFFF) + (folded >> 16);
      StoreBe16(th + 16, static_cast<uint16_t>(folded));
    } else {
      StoreBe16(th + 16, ChecksumFinish(ChecksumAdd(th, pkt.size() - 20, pseudo)));
    }
    return pkt;
  }

  // Hands the device's host side a TCPv4 super-packet to transmit, as the stack's own TSO
  // would: through a packet socket with a virtio-net header (SOCK_RAW, which PACKET_VNET_HDR
  // needs; a TUN device has no link header to write).
  void SendSuperPacket(const std::vector<uint8_t>& super, uint16_t gso_size) {
    VirtioNetHeader vnet;
    vnet.flags = kVirtioNetFlagNeedsCsum;
    vnet.gso_type = kGsoTcpv4;
    vnet.hdr_len = 40;
    vnet.gso_size = gso_size;
    vnet.csum_start = 20;
    vnet.csum_offset = 16;
    std::vector<uint8_t> frame(kVirtioNetHeaderLen);
    WriteVirtioNetHeader(vnet, frame.data());
    frame.insert(frame.end(), super.begin(), super.end());
    Fd packet(socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP)));
    ASSERT_GE(packet.get(), 0);
    int on = 1;
    ASSERT_EQ(setsockopt(packet.get(), SOL_PACKET, PACKET_VNET_HDR, &on, sizeof on), 0);
    sockaddr_ll to{};
    to.sll_family = AF_PACKET;
    to.sll_protocol = htons(ETH_P_IP);
    to.sll_ifindex = tun_->ifindex();
    ASSERT_EQ(sendto(packet.get(), frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof to),
              static_cast<ssize_t>(frame.size()))
        << strerror(errno);
  }

  static bool TcpChecksumOk(const uint8_t* ip, size_t len) {
    const size_t ihl = (ip[0] & 15) * 4;
    const uint32_t pseudo =
        ChecksumAdd(ip + 12, 8) + IPPROTO_TCP + static_cast<uint32_t>(len - ihl);
    return ChecksumFinish(ChecksumAdd(ip + ihl, len - ihl, pseudo)) == 0;
  }
};

// The host hands the device one 3,000-byte TCP super-packet (TSO, through a packet socket
// with a virtio-net header, as the stack's own TCP would); three GRE packets leave, each a
// whole segment with the kernel's fields.
TEST_P(OffloadEngineTest, SplitsATcpSuperPacketFromTheDevice) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/true, 7);
  ASSERT_NE(tun_->offload_features() & TUN_F_TSO4, 0u);
  const std::string payload =
      std::string(1000, 'A') + std::string(1000, 'B') + std::string(1000, 'C');
  std::vector<uint8_t> super = Tcp(kInnerA, kInnerFar, 40000, kPort, 1000, 0x18, payload, true);
  SendSuperPacket(super, 1000);

  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const std::string mark(1000, static_cast<char>('A' + i));
    std::vector<uint8_t> pkt = Capture(*gre_tap_, mark);
    ASSERT_FALSE(pkt.empty()) << "segment " << i << " did not leave";
    ASSERT_EQ(pkt.size(), 20u + 8 + 40 + 1000);  // outer IPv4, GRE with key, IPv4, TCP, data
    const uint8_t* inner = pkt.data() + 28;
    EXPECT_EQ(LoadBe16(inner + 2), 1040);
    EXPECT_EQ(LoadBe16(inner + 4), 0x100 + i);
    EXPECT_EQ(InternetChecksum(inner, 20), 0);
    EXPECT_EQ(LoadBe32(inner + 24), 1000u + 1000 * i);
    EXPECT_EQ(inner[33], i == 2 ? 0x18 : 0x10) << "PSH on the last segment only";
    EXPECT_TRUE(TcpChecksumOk(inner, 1040));
  }
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 3; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_super_packets), 1u);
}

// Received TCP segments of one flow reach the host in order and whole, coalesced or not (how
// many arrive in one batch is the scheduler's choice), through a device that takes a
// virtio-net header on every write.
TEST_P(OffloadEngineTest, ReceivedTcpSegmentsReachTheHostWhole) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  Fd capture(socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL)));
  ASSERT_GE(capture.get(), 0);
  sockaddr_ll at{};
  at.sll_family = AF_PACKET;
  at.sll_protocol = htons(ETH_P_ALL);
  at.sll_ifindex = tun_->ifindex();
  ASSERT_EQ(bind(capture.get(), reinterpret_cast<sockaddr*>(&at), sizeof at), 0);

  constexpr int kSegments = 8;
  std::string stream;
  std::vector<std::vector<uint8_t>> wrapped;
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  for (int i = 0; i < kSegments; ++i) {
    const std::string data(1200, static_cast<char>('a' + i));
    stream += data;
    wrapped.push_back(
        Wrap(Tcp(kInnerFar, kInnerA, kPort, 40001, 5000 + 1200 * i, 0x10, data, false), kIpProtoGre,
             &gre));
  }
  for (const auto& pkt : wrapped) SendOuter(pkt);

  // What the host received on the device, in order: incoming TCP from the far end only.
  std::string seen;
  uint32_t next_seq = 5000;
  std::vector<uint8_t> buf(70000);
  for (int polls = 0; polls < 100 && seen.size() < stream.size(); ++polls) {
    pollfd p{capture.get(), POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    sockaddr_ll from{};
    socklen_t from_len = sizeof from;
    ssize_t n = recvfrom(capture.get(), buf.data(), buf.size(), 0,
                         reinterpret_cast<sockaddr*>(&from), &from_len);
    if (n < 40 || from.sll_pkttype == PACKET_OUTGOING || buf[9] != IPPROTO_TCP) continue;
    ASSERT_EQ(LoadBe16(buf.data() + 2), n) << "the IPv4 length covers what was written";
    ASSERT_EQ(LoadBe32(buf.data() + 24), next_seq) << "in order";
    seen.append(reinterpret_cast<char*>(buf.data()) + 40, n - 40);
    next_seq += static_cast<uint32_t>(n - 40);
  }
  EXPECT_EQ(seen, stream);
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::rx_packets) == kSegments; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::rx_bytes), kSegments * 1240u);
}

// Received UDP datagrams of one flow reach the socket one by one, whole and in order, whether
// or not they were coalesced into a UDP GSO write (the kernel splits it again for a socket
// without UDP_GRO); and where the kernel takes such writes, bursts do get coalesced.
TEST_P(OffloadEngineTest, ReceivedUdpDatagramsReachTheSocketWhole) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false);
  auto udp = BoundUdp();
  GreHeader gre;
  gre.protocol = kEtherTypeIpv4;
  constexpr int kDatagrams = 8;
  constexpr int kMaxBursts = 20;
  int bursts = 0;
  uint64_t sent_bursts = 0;
  for (; bursts < kMaxBursts; ++bursts) {
    std::vector<std::vector<uint8_t>> wrapped;
    std::vector<std::string> sent;
    for (int i = 0; i < kDatagrams; ++i) {
      // Equal sizes but the last, which is shorter (it ends a coalesced flow).
      sent.push_back(std::string(i + 1 < kDatagrams ? 1000 : 300, static_cast<char>('a' + i)));
      std::vector<uint8_t> inner = UdpPacket(kInnerFar, kInnerA, kPort, sent.back());
      StoreBe16(inner.data() + kIpv4HeaderLen + 6, 0);
      uint16_t sum =
          ChecksumFinish(ChecksumAdd(inner.data() + kIpv4HeaderLen, inner.size() - kIpv4HeaderLen,
                                     ChecksumAdd(inner.data() + 12, 8) + IPPROTO_UDP +
                                         static_cast<uint32_t>(inner.size() - kIpv4HeaderLen)));
      StoreBe16(inner.data() + kIpv4HeaderLen + 6, sum == 0 ? 0xFFFF : sum);
      wrapped.push_back(Wrap(inner, kIpProtoGre, &gre));
    }
    for (const auto& pkt : wrapped) SendOuter(pkt);
    ++sent_bursts;
    for (int i = 0; i < kDatagrams; ++i) {
      ASSERT_EQ(ReceiveUdp(*udp), sent[i]) << "burst " << bursts << ", datagram " << i;
    }
    if (!tun_->udp_offload() || counters_->Sum(&TunnelCounters::rx_coalesced) > 0) break;
  }
  if (tun_->udp_offload()) {
    EXPECT_LT(bursts, kMaxBursts) << "no burst of " << kDatagrams << " was ever coalesced";
  }
  // Every datagram counts as received, coalesced or not (a coalesced write counts when it
  // completes, which can be just after the socket has the data).
  EXPECT_TRUE(Eventually([&] {
    return counters_->Sum(&TunnelCounters::rx_packets) == kDatagrams * sent_bursts;
  })) << counters_->Sum(&TunnelCounters::rx_packets)
      << " of " << kDatagrams * sent_bursts;
}

// What a raw UDP socket sees of a super-packet of 1000 'A's, 'B's and 'C's sent out (whole or
// in segments), until the 'C's have come or 2 s have passed: the datagrams that carry some of
// it, each handed to `check` (IP header first) before it is kept.
std::string SeenSegments(int udp_tap,
                         const std::function<void(const uint8_t*, size_t)>& check = nullptr) {
  std::string seen;
  std::vector<uint8_t> buf(70000);
  for (int i = 0; i < 40 && (seen.find(std::string(1000, 'C')) == std::string::npos); ++i) {
    pollfd p{udp_tap, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = recv(udp_tap, buf.data(), buf.size(), 0);
    if (n < 28) continue;
    const std::string bytes(reinterpret_cast<char*>(buf.data()), n);
    if (bytes.find(std::string(100, 'A')) == std::string::npos &&
        bytes.find(std::string(100, 'B')) == std::string::npos &&
        bytes.find(std::string(100, 'C')) == std::string::npos) {
      continue;
    }
    if (check) check(buf.data(), static_cast<size_t>(n));
    seen += bytes;
  }
  return seen;
}

// The same super-packet through a fou tunnel leaves as one UDP GSO send of three GRE-in-UDP
// datagrams.
TEST_P(OffloadEngineTest, FouSendsASuperPacketAsUdpGso) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, Fou);
  Fd udp_tap(socket(AF_INET, SOCK_RAW, IPPROTO_UDP));
  ASSERT_GE(udp_tap.get(), 0);
  const std::string payload =
      std::string(1000, 'A') + std::string(1000, 'B') + std::string(1000, 'C');
  std::vector<uint8_t> super = Tcp(kInnerA, kInnerFar, 40000, kPort, 1000, 0x18, payload, true);
  SendSuperPacket(super, 1000);
  // On loopback the GSO packet may be seen whole or split: each segment's data is there.
  const std::string seen = SeenSegments(udp_tap.get());
  for (char c : {'A', 'B', 'C'}) {
    EXPECT_NE(seen.find(std::string(1000, c)), std::string::npos) << c;
  }
  EXPECT_TRUE(Eventually([&] { return counters_->Sum(&TunnelCounters::tx_packets) == 3; }));
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_super_packets), 1u);
}

// Through a multipoint fou tunnel the super-packet's segments go to their peer (peer 2's
// 10.9.0.2) as UDP GSO sends from an unconnected sender.
TEST_P(OffloadEngineTest, MultipointFouSendsASuperPacketToItsPeer) {
  AddTunnel(TunnelMode::kGre, /*keyed=*/false, 0, MultipointFou);
  const EnginePeer one = MultipointPeer(1, engine_->workers());
  const EnginePeer two = MultipointPeer(2, engine_->workers());
  ASSERT_TRUE(engine_->ChangePeers("tun0", {one, two}, {}).ok());
  Fd udp_tap(socket(AF_INET, SOCK_RAW, IPPROTO_UDP));
  ASSERT_GE(udp_tap.get(), 0);
  const std::string payload =
      std::string(1000, 'A') + std::string(1000, 'B') + std::string(1000, 'C');
  std::vector<uint8_t> super = Tcp(kInnerA, kInnerFar, 40000, kPort, 1000, 0x18, payload, true);
  SendSuperPacket(super, 1000);
  // On loopback the GSO packet may be seen whole or split: each segment's data is there, and
  // every packet carrying one went to peer 2's fou port.
  const std::string seen = SeenSegments(udp_tap.get(), [](const uint8_t* ip, size_t) {
    EXPECT_EQ(LoadBe32(ip + 16), kPeerTwo);
    EXPECT_EQ(LoadBe16(ip + 22), kGreInUdpPort);
  });
  for (char c : {'A', 'B', 'C'}) {
    EXPECT_NE(seen.find(std::string(1000, c)), std::string::npos) << c;
  }
  EXPECT_TRUE(Eventually([&] { return two.stats->Sum(&PeerCounters::tx_packets) == 3; }));
  EXPECT_EQ(one.stats->Sum(&PeerCounters::tx_packets), 0u);
  EXPECT_EQ(counters_->Sum(&TunnelCounters::tx_super_packets), 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, OffloadEngineTest,
                         ::testing::Values(EngineParam{Backend::kUring, true},
                                           EngineParam{Backend::kEpoll, true},
                                           EngineParam{Backend::kUring, true, 2},
                                           EngineParam{Backend::kEpoll, true, 2}),
                         BackendName);

}  // namespace
}  // namespace tunnelagent::dataplane
