// Device read buffers shared by a worker's tunnels (DeviceBufferPool), in the private network
// namespace netns_main.cc made:
//   - the pool against the kernel, with pipes standing for devices (both are polled files): a
//     waiting read holds no buffer, an empty pool fails a read with ENOBUFS, a buffer given
//     back serves the next read; growth to the cap, and pages given back when it shrinks;
//   - both engines with a pool far smaller than the reads in flight: every packet of a burst
//     on several tunnels is still sent (reads that found the pool empty wait and are armed
//     again, counted), a busy tunnel holds no more buffers than its reads, and tunnels removed
//     with reads in flight leave no buffer taken; with the pool off (io_uring's fallback), each
//     tunnel reads into buffers of its own.
#include "dataplane/backends/buffer_pool.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backends/epoll_engine.h"
#include "dataplane/backends/uring_engine.h"
#include "dataplane/netlink.h"
#include "dataplane/tun/tun_device.h"
#include "gtest/gtest.h"
#include "tests/dataplane/backends/loopback_underlay.h"

namespace tunnelagent::dataplane {
namespace {

using test::Addr;
using test::Fd;
using test::kPort;

// Bursts through a pool far smaller than the reads in flight take longer than one packet.
template <typename F>
bool Eventually(F condition) {
  return test::Eventually(condition, /*ms=*/5000);
}

bool Resident(const void* address) {
  unsigned char vec = 0;
  const auto page = reinterpret_cast<uintptr_t>(address) & ~uintptr_t{4095};
  return mincore(reinterpret_cast<void*>(page), 1, &vec) == 0 && (vec & 1) != 0;
}

// ---- The pool against the kernel ----------------------------------------------------------

constexpr uint16_t kGroup = 7;
constexpr size_t kBufferBytes = 4096 + 128;
constexpr size_t kReadOffset = 64;

class DeviceBufferPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int ret = io_uring_queue_init(64, &ring_, 0);
    if (ret < 0) GTEST_SKIP() << "no io_uring here: " << strerror(-ret);
    live_ = true;
  }
  void TearDown() override {
    if (live_) io_uring_queue_exit(&ring_);
    pool_.reset();  // after the ring: no read can land in its memory any more
  }

  // A pool of `min`..`max` buffers, or the test is skipped on a kernel without buffer rings.
  bool MakePool(unsigned min, unsigned max) {
    pool_ = std::make_unique<DeviceBufferPool>();
    return pool_->Register(&ring_, kGroup, min, max, kBufferBytes, kReadOffset);
  }

  // A read of `fd` that takes its buffer from the pool when there is something to read.
  void ArmRead(int fd, uint64_t tag) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    ASSERT_NE(sqe, nullptr);
    io_uring_prep_read(sqe, fd, nullptr, 100, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kGroup;
    io_uring_sqe_set_data64(sqe, tag);
    ASSERT_EQ(io_uring_submit(&ring_), 1);
  }

  struct Completion {
    uint64_t tag = 0;
    int res = 0;
    int buffer = -1;  // the pool buffer it took; -1: none
  };
  // The next completion, waiting up to a second; tag 0 when there is none.
  Completion Next() {
    __kernel_timespec timeout{1, 0};
    io_uring_cqe* cqe = nullptr;
    Completion c;
    if (io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout) != 0) return c;
    c.tag = io_uring_cqe_get_data64(cqe);
    c.res = cqe->res;
    if (cqe->flags & IORING_CQE_F_BUFFER) c.buffer = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    io_uring_cqe_seen(&ring_, cqe);
    return c;
  }

  bool NothingCompleted() {
    io_uring_cqe* cqe = nullptr;
    return io_uring_peek_cqe(&ring_, &cqe) == -EAGAIN;
  }

  io_uring ring_{};
  bool live_ = false;
  std::unique_ptr<DeviceBufferPool> pool_;
};

struct Pipe {
  Pipe() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
      read_end = std::make_unique<Fd>(fds[0]);
      write_end = std::make_unique<Fd>(fds[1]);
    }
  }
  void Put(char c) const { ASSERT_EQ(write(write_end->get(), &c, 1), 1); }
  std::unique_ptr<Fd> read_end, write_end;
};

TEST_F(DeviceBufferPoolTest, WaitingReadsHoldNoBufferAndAnEmptyPoolSaysSo) {
  if (!MakePool(2, 2)) GTEST_SKIP() << "the kernel has no provided-buffer rings";
  // Four idle "devices", a read waiting on each: more reads than buffers.
  std::vector<Pipe> pipes(4);
  for (uint64_t i = 0; i < pipes.size(); ++i) ArmRead(pipes[i].read_end->get(), i + 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(NothingCompleted());

  // Two packets arrive: each read takes a buffer only now, and finds its byte in it.
  pipes[0].Put('a');
  pipes[1].Put('b');
  std::vector<Completion> got = {Next(), Next()};
  for (const Completion& c : got) {
    ASSERT_EQ(c.res, 1) << "tag " << c.tag;
    ASSERT_GE(c.buffer, 0);
    ASSERT_TRUE(pool_->Owns(static_cast<uint16_t>(c.buffer)));
    pool_->Took(static_cast<uint16_t>(c.buffer));
    EXPECT_EQ(pool_->buffer(static_cast<uint16_t>(c.buffer))[kReadOffset], c.tag == 1 ? 'a' : 'b');
  }
  EXPECT_EQ(pool_->stats().in_use, 2u);
  EXPECT_EQ(pool_->stats().provided, 0u);

  // A third packet finds the pool empty: the read fails with ENOBUFS and takes nothing.
  pipes[2].Put('c');
  Completion starved = Next();
  EXPECT_EQ(starved.tag, 3u);
  EXPECT_EQ(starved.res, -ENOBUFS);
  EXPECT_EQ(starved.buffer, -1);

  // A buffer given back serves it when armed again; the packet waited in the "device".
  EXPECT_TRUE(pool_->Recycle(static_cast<uint16_t>(got[0].buffer)));
  ArmRead(pipes[2].read_end->get(), 3);
  Completion served = Next();
  EXPECT_EQ(served.tag, 3u);
  ASSERT_EQ(served.res, 1);
  EXPECT_EQ(served.buffer, got[0].buffer);
  EXPECT_EQ(pool_->buffer(static_cast<uint16_t>(served.buffer))[kReadOffset], 'c');
}

TEST_F(DeviceBufferPoolTest, GrowsToItsCapAndShrinksWithItsPagesWhenTrafficDrops) {
  if (!MakePool(2, 8)) GTEST_SKIP() << "the kernel has no provided-buffer rings";
  EXPECT_EQ(pool_->stats().provided, 2u);
  EXPECT_EQ(pool_->Grow(), 2u);  // doubles
  EXPECT_EQ(pool_->Grow(), 4u);
  EXPECT_EQ(pool_->Grow(), 0u);  // at the cap: the read waits for a buffer to come back
  EXPECT_EQ(pool_->stats().provided, 8u);
  EXPECT_EQ(pool_->stats().high_water, 8u);
  EXPECT_EQ(pool_->stats().grown, 2u);

  // Four taken and written to (as reads do); then a period with little traffic.
  for (uint16_t id = 0; id < 4; ++id) {
    pool_->Took(id);
    memset(pool_->buffer(id), 0x5a, kBufferBytes);
    EXPECT_TRUE(Resident(pool_->buffer(id)));
  }
  const absl::Time start = absl::Now();
  pool_->Tick(start);  // the first period: the target follows the traffic from here
  pool_->Tick(start + DeviceBufferPool::kShrinkPeriod);
  // A peak of 4 in use: the target is 8, all four go back into the ring.
  for (uint16_t id = 0; id < 4; ++id) EXPECT_TRUE(pool_->Recycle(id));
  // A quiet period: the target falls to the starting count, and buffers coming back rest with
  // their pages given back to the kernel.
  pool_->Tick(start + 2 * DeviceBufferPool::kShrinkPeriod);
  pool_->Tick(start + 3 * DeviceBufferPool::kShrinkPeriod);
  pool_->Took(0);
  EXPECT_FALSE(pool_->Recycle(0));
  EXPECT_FALSE(Resident(pool_->buffer(0)));
  EXPECT_EQ(pool_->stats().shrunk, 1u);
  EXPECT_EQ(pool_->stats().provided, 7u);
  // What rests is what grows back first.
  pool_->Took(1);
  pool_->Took(2);
  EXPECT_EQ(pool_->stats().provided, 5u);
  EXPECT_EQ(pool_->Grow(), 1u);
}

TEST_F(DeviceBufferPoolTest, RefusesNonsense) {
  DeviceBufferPool pool;
  EXPECT_FALSE(pool.Register(&ring_, kGroup, 1, 0, kBufferBytes, kReadOffset));  // no buffers
  EXPECT_FALSE(pool.Register(&ring_, kGroup, 1, 4, 64, 64));  // no room after the offset
}

// ---- Both engines with a pool smaller than the reads in flight ----------------------------

constexpr int kTunnels = 6;
constexpr unsigned kReadsPerTunnel = 4;

enum class Backend { kUring, kEpoll };
struct PoolParam {
  Backend backend;
  bool offload;
};

// 10.1.<i>.1 on device i, 10.9.<i>.2 behind its far end.
uint32_t Inner(int i) { return 0x0a010001 | (static_cast<uint32_t>(i) << 8); }
uint32_t Far(int i) { return 0x0a090002 | (static_cast<uint32_t>(i) << 8); }

class SharedBuffersEngineTest : public ::testing::TestWithParam<PoolParam> {
 protected:
  void SetUp() override {
    auto netlink = test::OpenWithLoopbackUp();
    ASSERT_TRUE(netlink.ok()) << netlink.status();
    netlink_ = *std::move(netlink);
    EngineOptions options;
    options.device_reads_per_tunnel = kReadsPerTunnel;
    options.device_buffers = 2;
    options.device_buffers_max = PoolMax();
    if (GetParam().backend == Backend::kUring) {
      auto engine = UringEngine::Start(options);
      ASSERT_TRUE(engine.ok()) << engine.status();
      engine_ = *std::move(engine);
    } else {
      auto engine = EpollEngine::Start(options);
      ASSERT_TRUE(engine.ok()) << engine.status();
      engine_ = *std::move(engine);
    }
    for (int i = 0; i < kTunnels; ++i) AddTunnel(i);
  }

  void TearDown() override {
    for (int i = 0; i < static_cast<int>(devices_.size()); ++i) {
      if (engine_ && devices_[i]) engine_->RemoveTunnel(Name(i)).IgnoreError();
    }
  }

  // Two buffers for six tunnels of four reads each, unless a test says otherwise: the reads of
  // a device wake together, so some find the pool empty.
  virtual unsigned PoolMax() const { return 2; }

  static std::string Name(int i) { return absl::StrCat("pool", i); }

  void AddTunnel(int i) {
    TunDevice::CreateOptions options;
    options.offload = GetParam().offload;
    auto tun =
        test::CreateRoutedDevice(*netlink_, Name(i), options, absl::StrCat("10.1.", i, ".1/32"),
                                 absl::StrCat("10.9.", i, ".0/24"));
    ASSERT_TRUE(tun.ok()) << tun.status();

    auto stats = std::make_shared<TunnelStats>(engine_->workers());
    const EngineTunnel t = test::LoopbackTunnel(Name(i), **tun, TunnelMode::kGre, /*keyed=*/true,
                                                /*key=*/static_cast<uint32_t>(i + 1), stats);
    ASSERT_TRUE(engine_->AddTunnel(t).ok());
    if (static_cast<int>(devices_.size()) <= i) {
      devices_.resize(i + 1);
      stats_.resize(i + 1);
    }
    devices_[i] = *std::move(tun);
    stats_[i] = stats;
  }

  // `count` datagrams into each device of `tunnels`, interleaved, as fast as they go.
  void Burst(const std::vector<int>& tunnels, int count) {
    std::vector<std::unique_ptr<Fd>> senders;
    for (int i : tunnels) {
      senders.push_back(std::make_unique<Fd>(socket(AF_INET, SOCK_DGRAM, 0)));
      sockaddr_in src = Addr(Inner(i));
      ASSERT_EQ(bind(senders.back()->get(), reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    }
    const std::string payload(200, 'p');
    for (int n = 0; n < count; ++n) {
      for (size_t k = 0; k < tunnels.size(); ++k) {
        sockaddr_in dst = Addr(Far(tunnels[k]), kPort);
        ASSERT_EQ(sendto(senders[k]->get(), payload.data(), payload.size(), 0,
                         reinterpret_cast<sockaddr*>(&dst), sizeof dst),
                  static_cast<ssize_t>(payload.size()));
      }
    }
  }

  static std::vector<int> AllTunnels() {
    std::vector<int> all;
    for (int i = 0; i < kTunnels; ++i) all.push_back(i);
    return all;
  }

  // `packets` datagrams into every tunnel's device: every one of them is sent.
  void BurstIntoEveryTunnelAndSeeItSent(int packets) {
    Burst(AllTunnels(), packets);
    ASSERT_TRUE(Eventually([&] { return SentByAll() >= uint64_t{kTunnels} * packets; }))
        << SentByAll() << " of " << kTunnels * packets << " sent";
    for (int i = 0; i < kTunnels; ++i)
      EXPECT_EQ(Sent(i), static_cast<uint64_t>(packets)) << Name(i);
  }

  uint64_t Sent(int i) const { return stats_[i]->Sum(&TunnelCounters::tx_packets); }
  uint64_t SentByAll() const {
    uint64_t sum = 0;
    for (int i = 0; i < static_cast<int>(stats_.size()); ++i) {
      if (devices_[i]) sum += Sent(i);
    }
    return sum;
  }
  bool Uring() const { return GetParam().backend == Backend::kUring; }

  // Before the engine: it must be done with a device before the device closes.
  std::unique_ptr<Netlink> netlink_;
  std::vector<std::unique_ptr<TunDevice>> devices_;
  std::vector<std::shared_ptr<TunnelStats>> stats_;
  std::unique_ptr<PacketEngine> engine_;
};

TEST_P(SharedBuffersEngineTest, EveryPacketOfABurstIsSentThoughThePoolRunsOut) {
  constexpr int kPackets = 100;  // per tunnel: below the device's queue of 500
  ASSERT_NO_FATAL_FAILURE(BurstIntoEveryTunnelAndSeeItSent(kPackets));
  if (Uring()) {
    // Six tunnels' reads woke to packets with two buffers between them: some found none,
    // waited, and were armed again when a buffer came back: none is left waiting.
    EXPECT_GT(engine_->counters().device_read_waits, 0u);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the gauges: a few ticks
    EXPECT_TRUE(Eventually([&] { return engine_->counters().device_reads_waiting == 0; }))
        << engine_->counters().device_reads_waiting << " reads still wait for a buffer";
    EXPECT_TRUE(Eventually([&] { return engine_->counters().device_buffers_in_use == 0; }));
    EXPECT_LE(engine_->counters().device_buffers_ready, 2u);  // the pool's cap
  } else {
    EXPECT_EQ(engine_->counters().device_read_waits, 0u);  // one shared batch, no waits
  }
}

TEST_P(SharedBuffersEngineTest, TunnelsRemovedWithReadsInFlightLeaveNoBufferTaken) {
  Burst(AllTunnels(), 50);
  // At once, while the burst is being read: some reads hold buffers, some wait for one.
  for (int i = 1; i < kTunnels; ++i) {
    ASSERT_TRUE(engine_->RemoveTunnel(Name(i)).ok());
    devices_[i].reset();
  }
  EXPECT_TRUE(Eventually([&] { return engine_->counters().device_buffers_in_use == 0; }));
  // The pool still serves: the tunnel left, and a new one, send everything.
  const uint64_t before = Sent(0);
  AddTunnel(1);
  Burst({0, 1}, 50);
  EXPECT_TRUE(Eventually([&] { return Sent(0) == before + 50 && Sent(1) == 50; }))
      << Sent(0) - before << " and " << Sent(1) << " of 50 sent";
  EXPECT_TRUE(Eventually([&] { return engine_->counters().device_buffers_in_use == 0; }));
}

// A pool with room to spare: what a busy tunnel holds is bounded by its reads, not the pool.
class BusyTunnelEngineTest : public SharedBuffersEngineTest {
 protected:
  unsigned PoolMax() const override { return 64; }
};

TEST_P(BusyTunnelEngineTest, HoldsNoMoreBuffersThanItsReadsAndTheOthersStillSend) {
  // Tunnel 0 floods; tunnel 1 sends a packet now and then, and every one leaves.
  std::atomic<bool> flooding{true};
  std::thread flood([&] {
    for (int round = 0; round < 400 && flooding.load(); ++round) Burst({0}, 20);
  });
  uint64_t most_in_use = 0;
  for (int n = 0; n < 20; ++n) {
    Burst({1}, 1);
    most_in_use = std::max(most_in_use, engine_->counters().device_buffers_in_use);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool delivered = Eventually([&] { return Sent(1) >= 20; });
  flooding = false;
  flood.join();
  EXPECT_TRUE(delivered) << Sent(1) << " of 20 sent by the quiet tunnel";
  EXPECT_EQ(Sent(1), 20u);
  EXPECT_GT(Sent(0), 0u);
  // Sampled each tick: the flood's reads and the quiet tunnel's, never more.
  EXPECT_LE(most_in_use, 2 * kReadsPerTunnel);
  EXPECT_TRUE(Eventually([&] { return engine_->counters().device_buffers_in_use == 0; }));
}

// No shared buffers (device_buffers_max 0, as on a kernel without buffer rings): each tunnel
// reads into buffers of its own, and every packet still leaves.
class OwnBuffersEngineTest : public SharedBuffersEngineTest {
 protected:
  unsigned PoolMax() const override { return 0; }
};

TEST_P(OwnBuffersEngineTest, EveryPacketOfABurstIsSent) {
  constexpr int kPackets = 100;
  ASSERT_NO_FATAL_FAILURE(BurstIntoEveryTunnelAndSeeItSent(kPackets));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the gauges: a few ticks
  EXPECT_EQ(engine_->counters().device_read_waits, 0u);
  EXPECT_EQ(engine_->counters().device_buffers_ready, 0u);  // no pool was made
}

std::string ParamName(const ::testing::TestParamInfo<PoolParam>& info) {
  return std::string(info.param.backend == Backend::kUring ? "IoUring" : "Epoll") +
         (info.param.offload ? "Offload" : "");
}

INSTANTIATE_TEST_SUITE_P(Backends, SharedBuffersEngineTest,
                         ::testing::Values(PoolParam{Backend::kUring, false},
                                           PoolParam{Backend::kUring, true},
                                           PoolParam{Backend::kEpoll, true}),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, BusyTunnelEngineTest,
                         ::testing::Values(PoolParam{Backend::kUring, false},
                                           PoolParam{Backend::kUring, true},
                                           PoolParam{Backend::kEpoll, true}),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, OwnBuffersEngineTest,
                         ::testing::Values(PoolParam{Backend::kUring, false},
                                           PoolParam{Backend::kUring, true}),
                         ParamName);

}  // namespace
}  // namespace tunnelagent::dataplane
