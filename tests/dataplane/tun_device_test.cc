// Runs inside a private network namespace (tests/netns_main.cc), one process per test.
#include "dataplane/tun_device.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "dataplane/address.h"
#include "dataplane/netlink.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

TEST(TunDeviceTest, CreatesTunDevice) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  EXPECT_GE((*tun)->fd(), 0);
  EXPECT_EQ((*tun)->name(), "ta-tun0");
  EXPECT_EQ((*tun)->kind(), TunDevice::Kind::kTun);
  EXPECT_GT((*tun)->ifindex(), 0);
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-tun0")), (*tun)->ifindex());
}

TEST(TunDeviceTest, CreatesTapDevice) {
  auto tap = TunDevice::Create("ta-tap0", TunDevice::Kind::kTap);
  ASSERT_TRUE(tap.ok()) << tap.status();
  EXPECT_EQ((*tap)->kind(), TunDevice::Kind::kTap);
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-tap0")), (*tap)->ifindex());
}

TEST(TunDeviceTest, FdIsBlockingAndCloseOnExec) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  const int fl = fcntl((*tun)->fd(), F_GETFL);
  ASSERT_GE(fl, 0);
  EXPECT_EQ(fl & O_NONBLOCK, 0);
  const int fdfl = fcntl((*tun)->fd(), F_GETFD);
  ASSERT_GE(fdfl, 0);
  EXPECT_NE(fdfl & FD_CLOEXEC, 0);
}

TEST(TunDeviceTest, DuplicateNameIsAlreadyExists) {
  auto first = TunDevice::Create("ta-dup", TunDevice::Kind::kTun);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = TunDevice::Create("ta-dup", TunDevice::Kind::kTun);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  auto as_tap = TunDevice::Create("ta-dup", TunDevice::Kind::kTap);
  EXPECT_EQ(as_tap.status().code(), absl::StatusCode::kAlreadyExists) << as_tap.status();
  // The first device is untouched by the failed attempts.
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-dup")), (*first)->ifindex());
}

TEST(TunDeviceTest, ExistingNonTunDeviceIsAlreadyExists) {
  auto tun = TunDevice::Create("lo", TunDevice::Kind::kTun);
  EXPECT_EQ(tun.status().code(), absl::StatusCode::kAlreadyExists) << tun.status();
  EXPECT_NE(tun.status().message().find("lo"), absl::string_view::npos);
}

TEST(TunDeviceTest, BadNamesAreInvalidArgument) {
  for (const std::string& name :
       {std::string(), std::string("this-name-is-16c"), std::string("tun%d"), std::string("a/b"),
        std::string("a b"), std::string("a:b"), std::string("."), std::string("..")}) {
    auto tun = TunDevice::Create(name, TunDevice::Kind::kTun);
    EXPECT_EQ(tun.status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << name << "\": " << tun.status();
  }
  // 15 characters is the longest a name can be.
  auto longest = TunDevice::Create("fifteen-chars-0", TunDevice::Kind::kTun);
  EXPECT_TRUE(longest.ok()) << longest.status();
}

TEST(TunDeviceTest, DeviceDisappearsWhenDestroyed) {
  auto tun = TunDevice::Create("ta-gone", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  ASSERT_NE(if_nametoindex("ta-gone"), 0u);
  tun->reset();
  EXPECT_EQ(if_nametoindex("ta-gone"), 0u);
  // And the name is free again.
  auto again = TunDevice::Create("ta-gone", TunDevice::Kind::kTun);
  EXPECT_TRUE(again.ok()) << again.status();
}

// A datagram routed out of the TUN device arrives on the fd as a bare IPv4 packet: no
// packet-information header (IFF_NO_PI).
TEST(TunDeviceTest, ReadsRoutedPacketWithoutPacketInfo) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  auto nl = Netlink::Open();
  ASSERT_TRUE(nl.ok()) << nl.status();
  const int ifindex = (*tun)->ifindex();
  ASSERT_TRUE((*nl)->AddAddress(ifindex, *IpPrefix::Parse("198.18.7.1/24")).ok());
  ASSERT_TRUE((*nl)->SetLinkUp(ifindex, true).ok());

  const int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(sock, 0);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(9999);
  inet_pton(AF_INET, "198.18.7.9", &dst.sin_addr);
  const char payload[] = "hello";
  ASSERT_EQ(
      sendto(sock, payload, sizeof(payload), 0, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)),
      static_cast<ssize_t>(sizeof(payload)));
  close(sock);

  // Other traffic (IPv6 router solicitations, say) may come first; look for ours.
  uint8_t packet[2048];
  bool found = false;
  for (int i = 0; i < 10 && !found; ++i) {
    pollfd pfd{(*tun)->fd(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 2000), 1) << "no packet on the TUN device";
    const ssize_t n = read((*tun)->fd(), packet, sizeof(packet));
    ASSERT_GT(n, 0);
    if ((packet[0] >> 4) != 4) continue;
    ASSERT_GE(n, 20);
    EXPECT_EQ(packet[9], IPPROTO_UDP);
    EXPECT_EQ(memcmp(packet + 16, "\xc6\x12\x07\x09", 4), 0);  // 198.18.7.9
    EXPECT_EQ(n, static_cast<ssize_t>(20 + 8 + sizeof(payload)));
    found = true;
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace tunnelagent::dataplane
