// Runs inside a private network namespace (tests/netns_main.cc): every notification the
// monitor sees comes from what the test itself changes.
#include "dataplane/netlink_monitor.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "dataplane/address.h"
#include "dataplane/netlink.h"
#include "dataplane/tun/tun_device.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

// Long enough for a notification on a loaded machine; a wait that should time out uses
// kQuietWait instead, so no test sleeps for this long unless it fails.
constexpr absl::Duration kChangeWait = absl::Seconds(5);
constexpr absl::Duration kQuietWait = absl::Milliseconds(300);

IpPrefix Prefix(const char* text) {
  absl::StatusOr<IpPrefix> prefix = IpPrefix::Parse(text);
  EXPECT_TRUE(prefix.ok()) << text;
  return *prefix;
}

// No IPv6 address generation on a link: bringing it up would otherwise add a link-local
// address and, a moment later, announce the end of its duplicate address detection, a
// notification the test did not cause.
void NoIpv6AutoAddress(const std::string& link) {
  const std::string path = "/proc/sys/net/ipv6/conf/" + link + "/addr_gen_mode";
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;  // no IPv6: nothing to quiet
  (void)!write(fd, "1", 1);
  close(fd);
}

class NetlinkMonitorTest : public testing::Test {
 protected:
  void SetUp() override {
    auto nl = Netlink::Open();
    ASSERT_TRUE(nl.ok()) << nl.status();
    nl_ = std::move(*nl);
    auto lo = nl_->GetLinkByName("lo");
    ASSERT_TRUE(lo.ok()) << lo.status();
    ASSERT_TRUE(nl_->SetLinkUp(lo->ifindex, true).ok());

    auto tun = TunDevice::Create("ta-mon0", TunDevice::Kind::kTun);
    ASSERT_TRUE(tun.ok()) << tun.status();
    tun_ = std::move(*tun);
    NoIpv6AutoAddress("ta-mon0");
    ASSERT_TRUE(nl_->SetLinkUp(tun_->ifindex(), true).ok());
  }

  // A monitor opened after the set-up, with whatever the set-up announced consumed.
  std::unique_ptr<NetlinkMonitor> QuietMonitor(
      const NetlinkMonitor::Options& options = NetlinkMonitor::Options()) {
    auto monitor = NetlinkMonitor::Open(options);
    EXPECT_TRUE(monitor.ok()) << monitor.status();
    if (!monitor.ok()) return nullptr;
    for (int i = 0; i < 10; ++i) {
      absl::StatusOr<bool> changed = (*monitor)->WaitForChange(absl::Milliseconds(50));
      EXPECT_TRUE(changed.ok()) << changed.status();
      if (!changed.ok() || !*changed) break;
    }
    return std::move(*monitor);
  }

  // One wait that must see a change, then one that must not: each change below is one event.
  void ExpectOneChange(NetlinkMonitor& monitor, const char* what) {
    absl::StatusOr<bool> changed = monitor.WaitForChange(kChangeWait);
    ASSERT_TRUE(changed.ok()) << what << ": " << changed.status();
    EXPECT_TRUE(*changed) << what;
    changed = monitor.WaitForChange(kQuietWait);
    ASSERT_TRUE(changed.ok()) << what << ": " << changed.status();
    EXPECT_FALSE(*changed) << what << ": a second wake-up";
  }

  std::unique_ptr<Netlink> nl_;
  std::unique_ptr<TunDevice> tun_;
};

TEST_F(NetlinkMonitorTest, TimesOutWithoutChanges) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  const absl::Time start = absl::Now();
  absl::StatusOr<bool> changed = monitor->WaitForChange(kQuietWait);
  const absl::Duration waited = absl::Now() - start;
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_FALSE(*changed);
  EXPECT_GE(waited, kQuietWait);
  EXPECT_LT(waited, kQuietWait + absl::Seconds(2));
  // A zero timeout only looks.
  changed = monitor->WaitForChange(absl::ZeroDuration());
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_FALSE(*changed);
}

TEST_F(NetlinkMonitorTest, WakesOnAddressAdd) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  const uint64_t before = monitor->notifications();
  ASSERT_TRUE(nl_->AddAddress(tun_->ifindex(), Prefix("198.18.30.1/24")).ok());
  ExpectOneChange(*monitor, "address add");
  // The address and the prefix route the kernel adds with it.
  EXPECT_GE(monitor->notifications(), before + 1);

  ASSERT_TRUE(nl_->DeleteAddress(tun_->ifindex(), Prefix("198.18.30.1/24")).ok());
  ExpectOneChange(*monitor, "address delete");
}

TEST_F(NetlinkMonitorTest, WakesOnIpv6AddressAdd) {
  if (access("/proc/sys/net/ipv6", F_OK) != 0) GTEST_SKIP() << "no IPv6 in this kernel";
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun_->ifindex(), Prefix("fd00:30::1/64")).ok());
  ExpectOneChange(*monitor, "IPv6 address add");
}

TEST_F(NetlinkMonitorTest, WakesOnRouteAdd) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  ASSERT_TRUE(nl_->AddRoute(tun_->ifindex(), Prefix("198.18.31.0/24")).ok());
  ExpectOneChange(*monitor, "route add");
  ASSERT_TRUE(nl_->DeleteRoute(tun_->ifindex(), Prefix("198.18.31.0/24")).ok());
  ExpectOneChange(*monitor, "route delete");
}

TEST_F(NetlinkMonitorTest, WakesOnMtuChange) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  ASSERT_TRUE(nl_->SetLinkMtu(tun_->ifindex(), 1400).ok());
  ExpectOneChange(*monitor, "MTU change");
}

TEST_F(NetlinkMonitorTest, WakesOnLinkDown) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  ASSERT_TRUE(nl_->SetLinkUp(tun_->ifindex(), false).ok());
  ExpectOneChange(*monitor, "link down");
}

TEST_F(NetlinkMonitorTest, BurstMadeBeforeTheWaitIsOneWakeUp) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  constexpr int kRoutes = 1000;
  for (int i = 0; i < kRoutes; ++i) {
    const IpPrefix route(IpAddress::V4(0xC6130000u + static_cast<uint32_t>(i)), 32);  // 198.19.x
    ASSERT_TRUE(nl_->AddRoute(tun_->ifindex(), route).ok()) << route.ToString();
  }
  ExpectOneChange(*monitor, "1000 route adds");
  EXPECT_EQ(monitor->notifications(), static_cast<uint64_t>(kRoutes));
  EXPECT_EQ(monitor->overruns(), 0u) << "receive buffer " << monitor->receive_buffer_bytes();
}

TEST_F(NetlinkMonitorTest, BurstMadeDuringTheWaitIsFewWakeUps) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  constexpr int kRoutes = 1000;
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::thread writer([&] {
    for (int i = 0; i < kRoutes; ++i) {
      const IpPrefix route(IpAddress::V4(0xC6130000u + static_cast<uint32_t>(i)), 32);
      if (!nl_->AddRoute(tun_->ifindex(), route).ok()) ++failures;
      // Paced like a script or an apply, not one tight loop: a burst with short gaps.
      if (i % 10 == 9) absl::SleepFor(absl::Milliseconds(1));
    }
    done = true;
  });
  int wake_ups = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    absl::StatusOr<bool> changed = monitor->WaitForChange(kQuietWait);
    ASSERT_TRUE(changed.ok()) << changed.status();
    if (*changed) {
      ++wake_ups;
    } else if (done) {
      break;
    }
  }
  writer.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(monitor->notifications(), static_cast<uint64_t>(kRoutes));
  // Without settling, each gap in the burst would end a wait (about 100 wake-ups).
  EXPECT_GE(wake_ups, 1);
  EXPECT_LE(wake_ups, 10);
}

TEST_F(NetlinkMonitorTest, OverrunCountsAsChange) {
  // A buffer so small that the kernel must drop most of a burst.
  NetlinkMonitor::Options options;
  options.receive_buffer_bytes = 1;  // the kernel rounds it up to its minimum
  auto monitor = QuietMonitor(options);
  ASSERT_NE(monitor, nullptr);
  for (int i = 0; i < 200; ++i) {
    const IpPrefix route(IpAddress::V4(0xC6130000u + static_cast<uint32_t>(i)), 32);
    ASSERT_TRUE(nl_->AddRoute(tun_->ifindex(), route).ok()) << route.ToString();
  }
  absl::StatusOr<bool> changed = monitor->WaitForChange(kChangeWait);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  EXPECT_GE(monitor->overruns(), 1u);
  EXPECT_LT(monitor->notifications(), 200u);
  // The overrun is over: the next wait is quiet again.
  changed = monitor->WaitForChange(kQuietWait);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_FALSE(*changed);
}

TEST_F(NetlinkMonitorTest, WakeReturnsTrue) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  monitor->Wake();
  absl::StatusOr<bool> changed = monitor->WaitForChange(kChangeWait);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  EXPECT_EQ(monitor->notifications(), 0u);
  changed = monitor->WaitForChange(kQuietWait);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_FALSE(*changed);
}

TEST_F(NetlinkMonitorTest, StopEndsAWaitPromptly) {
  auto monitor = QuietMonitor();
  ASSERT_NE(monitor, nullptr);
  absl::Status result;
  absl::Duration waited;
  std::thread waiter([&] {
    const absl::Time start = absl::Now();
    result = monitor->WaitForChange(absl::InfiniteDuration()).status();
    waited = absl::Now() - start;
  });
  absl::SleepFor(absl::Milliseconds(100));
  monitor->Stop();
  waiter.join();
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled) << result;
  EXPECT_LT(waited, absl::Seconds(2));
  // And every later wait, at once.
  const absl::Time start = absl::Now();
  EXPECT_EQ(monitor->WaitForChange(kChangeWait).status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST_F(NetlinkMonitorTest, BadOptionsAreInvalidArgument) {
  NetlinkMonitor::Options options;
  options.receive_buffer_bytes = 0;
  EXPECT_EQ(NetlinkMonitor::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = NetlinkMonitor::Options();
  options.quiet = absl::Milliseconds(-1);
  EXPECT_EQ(NetlinkMonitor::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tunnelagent::dataplane
