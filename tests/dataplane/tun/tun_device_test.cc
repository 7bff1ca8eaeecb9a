// Runs inside a private network namespace (tests/netns_main.cc), one process per test.
#include "dataplane/tun/tun_device.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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

void WriteFileForTest(const char* path, const char* value) {
  const int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!write(fd, value, strlen(value));
  close(fd);
}

// Sends a UDP datagram to `dst_text`:9999; true when the kernel took it.
bool SendUdp(const char* dst_text) {
  const int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return false;
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(9999);
  inet_pton(AF_INET, dst_text, &dst.sin_addr);
  const char payload[] = "hello";
  const ssize_t n =
      sendto(sock, payload, sizeof(payload), 0, reinterpret_cast<sockaddr*>(&dst), sizeof(dst));
  close(sock);
  return n == static_cast<ssize_t>(sizeof(payload));
}

// Reads packets from `fd` until an IPv4 one comes and checks it is the UDP datagram
// SendUdp sent to `dst` (network order bytes): a bare packet, no packet-information header.
void ExpectUdpPacket(int fd, const char dst[4]) {
  // Other traffic (IPv6 router solicitations, say) may come first; look for ours.
  uint8_t packet[2048];
  bool found = false;
  for (int i = 0; i < 10 && !found; ++i) {
    pollfd pfd{fd, POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 2000), 1) << "no packet on the TUN device";
    const ssize_t n = read(fd, packet, sizeof(packet));
    ASSERT_GT(n, 0);
    if ((packet[0] >> 4) != 4) continue;
    ASSERT_GE(n, 20);
    EXPECT_EQ(packet[9], IPPROTO_UDP);
    EXPECT_EQ(memcmp(packet + 16, dst, 4), 0);
    EXPECT_EQ(n, static_cast<ssize_t>(20 + 8 + sizeof("hello")));
    found = true;
  }
  EXPECT_TRUE(found);
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
  ASSERT_TRUE(SendUdp("198.18.7.9"));
  ExpectUdpPacket((*tun)->fd(), "\xc6\x12\x07\x09");  // 198.18.7.9
}

TEST(TunDeviceTest, PlainCreateIsNotMarkedNorPersistent) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  EXPECT_FALSE((*tun)->persistent());
  auto nl = Netlink::Open();
  ASSERT_TRUE(nl.ok()) << nl.status();
  auto link = (*nl)->GetLink((*tun)->ifindex());
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "");
  EXPECT_EQ(link->kind, "tun");
  EXPECT_FALSE(IsAgentDevice(*link));
}

// `ip link add NAME type veth peer name PEER`; 0 or the kernel's errno.
int CreateVethPair(const char* name, const char* peer) {
  mnl_socket* nl = mnl_socket_open(NETLINK_ROUTE);
  if (nl == nullptr) return errno;
  std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> closer(nl, mnl_socket_close);
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) return errno;
  std::vector<char> buf(8192);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = RTM_NEWLINK;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  nlh->nlmsg_seq = 1;
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
  nlattr* linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  nlattr* peer_info = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
  mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg));
  mnl_attr_put_strz(nlh, IFLA_IFNAME, peer);
  mnl_attr_nest_end(nlh, peer_info);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, linkinfo);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return errno;
  const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
  if (n < 0) return errno;
  if (mnl_cb_run(buf.data(), n, 1, mnl_socket_get_portid(nl), nullptr, nullptr) < 0) return errno;
  return 0;
}

// Persistent devices outlive their TunDevice, and the tests of one binary may share a
// namespace: each test removes every TUN/TAP device and veth it leaves.
class PersistentTunTest : public testing::Test {
 protected:
  void SetUp() override {
    auto nl = Netlink::Open();
    ASSERT_TRUE(nl.ok()) << nl.status();
    nl_ = std::move(*nl);
  }

  void TearDown() override {
    auto links = nl_->ListLinks();
    ASSERT_TRUE(links.ok()) << links.status();
    for (const LinkInfo& link : *links) {
      if (link.kind == "tun" || link.kind == "veth") nl_->DeleteLink(link.ifindex).IgnoreError();
    }
  }

  // The link named `name` as ListLinks reports it; nullopt when there is none.
  std::optional<LinkInfo> Listed(const std::string& name) {
    auto links = nl_->ListLinks();
    EXPECT_TRUE(links.ok()) << links.status();
    if (!links.ok()) return std::nullopt;
    for (const LinkInfo& link : *links) {
      if (link.name == name) return link;
    }
    return std::nullopt;
  }

  static TunDevice::CreateOptions AgentOptions(bool persistent) {
    TunDevice::CreateOptions options;
    options.alias = kAgentDeviceAlias;
    options.persistent = persistent;
    return options;
  }

  std::unique_ptr<Netlink> nl_;
};

TEST_F(PersistentTunTest, CreateMarksTheDeviceAsTheAgents) {
  TunDevice::CreateOptions options = AgentOptions(/*persistent=*/false);
  options.netlink = nl_.get();
  auto tun = TunDevice::Create("ta-mark", TunDevice::Kind::kTun, options);
  ASSERT_TRUE(tun.ok()) << tun.status();
  EXPECT_FALSE((*tun)->persistent());
  auto link = nl_->GetLink((*tun)->ifindex());
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "tunnel-agent");
  EXPECT_TRUE(IsAgentDevice(*link));
  std::optional<LinkInfo> listed = Listed("ta-mark");
  ASSERT_TRUE(listed.has_value());
  EXPECT_TRUE(IsAgentDevice(*listed));

  // A TAP device too, with a socket Create opens itself.
  auto tap = TunDevice::Create("ta-marktap", TunDevice::Kind::kTap, AgentOptions(false));
  ASSERT_TRUE(tap.ok()) << tap.status();
  link = nl_->GetLinkByName("ta-marktap");
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_TRUE(IsAgentDevice(*link));

  // Not persistent: it goes with the object, as a plain one does.
  tun->reset();
  EXPECT_EQ(if_nametoindex("ta-mark"), 0u);
  EXPECT_FALSE(Listed("ta-mark").has_value());
}

TEST_F(PersistentTunTest, IsAgentDeviceWantsTheAliasOnATunDevice) {
  LinkInfo link;
  link.kind = "tun";
  link.alias = kAgentDeviceAlias;
  EXPECT_TRUE(IsAgentDevice(link));
  link.alias = "tunnel-agent2";
  EXPECT_FALSE(IsAgentDevice(link));
  link.alias = "";
  EXPECT_FALSE(IsAgentDevice(link));
  link.alias = kAgentDeviceAlias;
  link.kind = "veth";
  EXPECT_FALSE(IsAgentDevice(link));
}

TEST_F(PersistentTunTest, CreateFailsCleanlyWhenTheNameIsTaken) {
  auto first = TunDevice::Create("ta-taken", TunDevice::Kind::kTun);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = TunDevice::Create("ta-taken", TunDevice::Kind::kTun, AgentOptions(true));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  // The existing device was not marked nor made persistent.
  std::optional<LinkInfo> listed = Listed("ta-taken");
  ASSERT_TRUE(listed.has_value());
  EXPECT_EQ(listed->alias, "");
  first->reset();
  EXPECT_EQ(if_nametoindex("ta-taken"), 0u);
}

TEST_F(PersistentTunTest, PersistentDeviceSurvivesAndIsReattached) {
  auto tun = TunDevice::Create("ta-keep", TunDevice::Kind::kTun, AgentOptions(true));
  ASSERT_TRUE(tun.ok()) << tun.status();
  EXPECT_TRUE((*tun)->persistent());
  const int ifindex = (*tun)->ifindex();
  ASSERT_TRUE(nl_->AddAddress(ifindex, *IpPrefix::Parse("198.18.8.1/24")).ok());
  ASSERT_TRUE(nl_->SetLinkMtu(ifindex, 1400).ok());
  ASSERT_TRUE(nl_->SetLinkUp(ifindex, true).ok());

  // "The agent stops": the device, its mark and its configuration stay.
  tun->reset();
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-keep")), ifindex);
  std::optional<LinkInfo> listed = Listed("ta-keep");
  ASSERT_TRUE(listed.has_value());
  EXPECT_TRUE(IsAgentDevice(*listed));
  EXPECT_EQ(listed->ifindex, ifindex);
  EXPECT_EQ(listed->mtu, 1400u);
  EXPECT_TRUE(listed->up);

  // "The agent starts again" and takes it back.
  auto again = TunDevice::Attach("ta-keep", TunDevice::Kind::kTun);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->ifindex(), ifindex);
  EXPECT_EQ((*again)->name(), "ta-keep");
  EXPECT_EQ((*again)->kind(), TunDevice::Kind::kTun);
  EXPECT_TRUE((*again)->persistent());
  const int fl = fcntl((*again)->fd(), F_GETFL);
  ASSERT_GE(fl, 0);
  EXPECT_EQ(fl & O_NONBLOCK, 0);
  EXPECT_NE(fcntl((*again)->fd(), F_GETFD) & FD_CLOEXEC, 0);
  auto addresses = nl_->ListAddresses(ifindex);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_NE(std::find(addresses->begin(), addresses->end(), *IpPrefix::Parse("198.18.8.1/24")),
            addresses->end());

  // The fd works: a datagram routed into the device comes out of it, without PI header.
  ASSERT_TRUE(SendUdp("198.18.8.9"));
  ExpectUdpPacket((*again)->fd(), "\xc6\x12\x08\x09");  // 198.18.8.9

  // Destroyed while still persistent: it stays again.
  again->reset();
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-keep")), ifindex);

  // Not persistent any more: it goes with the object.
  again = TunDevice::Attach("ta-keep", TunDevice::Kind::kTun);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE((*again)->SetPersistent(false).ok());
  EXPECT_FALSE((*again)->persistent());
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-keep")), ifindex);  // not before
  again->reset();
  EXPECT_EQ(if_nametoindex("ta-keep"), 0u);
  EXPECT_FALSE(Listed("ta-keep").has_value());
  EXPECT_EQ(TunDevice::Attach("ta-keep", TunDevice::Kind::kTun).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(PersistentTunTest, SetPersistentOnAPlainDevice) {
  auto tap = TunDevice::Create("ta-ptap", TunDevice::Kind::kTap);
  ASSERT_TRUE(tap.ok()) << tap.status();
  const int ifindex = (*tap)->ifindex();
  ASSERT_TRUE((*tap)->SetPersistent(true).ok());
  EXPECT_TRUE((*tap)->persistent());
  tap->reset();
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-ptap")), ifindex);

  // Attach checks the kind.
  auto as_tun = TunDevice::Attach("ta-ptap", TunDevice::Kind::kTun);
  EXPECT_EQ(as_tun.status().code(), absl::StatusCode::kFailedPrecondition) << as_tun.status();
  EXPECT_NE(as_tun.status().message().find("ta-ptap"), absl::string_view::npos);
  auto as_tap = TunDevice::Attach("ta-ptap", TunDevice::Kind::kTap);
  ASSERT_TRUE(as_tap.ok()) << as_tap.status();
  EXPECT_EQ((*as_tap)->ifindex(), ifindex);
  EXPECT_EQ((*as_tap)->kind(), TunDevice::Kind::kTap);

  // And Netlink::DeleteLink removes a persistent device even while it is attached.
  ASSERT_TRUE(nl_->DeleteLink(ifindex).ok());
  EXPECT_EQ(if_nametoindex("ta-ptap"), 0u);
  absl::Status status = (*as_tap)->SetPersistent(true);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  as_tap->reset();
  EXPECT_EQ(if_nametoindex("ta-ptap"), 0u);
}

TEST_F(PersistentTunTest, AttachToMissingDeviceIsNotFound) {
  auto tun = TunDevice::Attach("ta-nosuch", TunDevice::Kind::kTun);
  EXPECT_EQ(tun.status().code(), absl::StatusCode::kNotFound) << tun.status();
  EXPECT_NE(tun.status().message().find("ta-nosuch"), absl::string_view::npos);
  // Nor was one created on the way.
  EXPECT_EQ(if_nametoindex("ta-nosuch"), 0u);
  EXPECT_EQ(TunDevice::Attach("ta-nosuch", TunDevice::Kind::kTap).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(if_nametoindex("ta-nosuch"), 0u);
}

TEST_F(PersistentTunTest, AttachToBadNameIsInvalidArgument) {
  for (const char* name : {"", "tun%d", "a/b", "this-name-is-16c"}) {
    EXPECT_EQ(TunDevice::Attach(name, TunDevice::Kind::kTun).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
  }
}

TEST_F(PersistentTunTest, AttachToOtherDevicesIsFailedPrecondition) {
  ASSERT_EQ(CreateVethPair("ta-veth0", "ta-veth1"), 0);
  const unsigned int veth_index = if_nametoindex("ta-veth0");
  for (TunDevice::Kind kind : {TunDevice::Kind::kTun, TunDevice::Kind::kTap}) {
    for (const char* name : {"ta-veth0", "lo"}) {
      auto tun = TunDevice::Attach(name, kind);
      EXPECT_EQ(tun.status().code(), absl::StatusCode::kFailedPrecondition)
          << name << ": " << tun.status();
    }
  }
  // Both untouched.
  EXPECT_EQ(if_nametoindex("ta-veth0"), veth_index);
  auto lo = nl_->GetLink(1);
  ASSERT_TRUE(lo.ok()) << lo.status();
  EXPECT_EQ(lo->name, "lo");
  EXPECT_EQ(lo->kind, "");
}

TEST_F(PersistentTunTest, AttachToADeviceInUseIsFailedPrecondition) {
  auto held = TunDevice::Create("ta-held", TunDevice::Kind::kTun, AgentOptions(true));
  ASSERT_TRUE(held.ok()) << held.status();
  auto second = TunDevice::Attach("ta-held", TunDevice::Kind::kTun);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();

  // Likewise a device that is not persistent, which only its creator can hold.
  auto plain = TunDevice::Create("ta-plain", TunDevice::Kind::kTun);
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto taken = TunDevice::Attach("ta-plain", TunDevice::Kind::kTun);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kFailedPrecondition) << taken.status();
  // The holders keep their devices.
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-held")), (*held)->ifindex());
  EXPECT_EQ(static_cast<int>(if_nametoindex("ta-plain")), (*plain)->ifindex());
  plain->reset();
  EXPECT_EQ(if_nametoindex("ta-plain"), 0u);
}

TEST_F(PersistentTunTest, MultiQueueDeviceSpreadsFlowsOverItsQueues) {
  TunDevice::CreateOptions options = AgentOptions(false);
  options.multi_queue = true;
  auto tun = TunDevice::Create("ta-mq", TunDevice::Kind::kTun, options);
  ASSERT_TRUE(tun.ok()) << tun.status();
  EXPECT_TRUE((*tun)->multi_queue());
  const int ifindex = (*tun)->ifindex();
  auto queue = TunDevice::OpenQueue("ta-mq", TunDevice::Kind::kTun, false, ifindex);
  ASSERT_TRUE(queue.ok()) << queue.status();
  WriteFileForTest("/proc/sys/net/ipv6/conf/ta-mq/disable_ipv6", "1");
  ASSERT_TRUE(nl_->AddAddress(ifindex, *IpPrefix::Parse("198.18.9.1/24")).ok());
  ASSERT_TRUE(nl_->SetLinkUp(ifindex, true).ok());
  for (int i = 2; i < 66; ++i) {
    ASSERT_TRUE(SendUdp(("198.18.9." + std::to_string(i)).c_str()));
  }
  // Each flow (here: each destination) goes to one queue; 64 of them reach both.
  int got[2] = {0, 0};
  const int fds[2] = {(*tun)->fd(), *queue};
  for (int i = 0; i < 2; ++i) {
    uint8_t packet[2048];
    pollfd pfd{fds[i], POLLIN, 0};
    while (poll(&pfd, 1, 200) == 1 && read(fds[i], packet, sizeof packet) > 0) {
      if ((packet[0] >> 4) == 4) ++got[i];
    }
  }
  EXPECT_EQ(got[0] + got[1], 64);
  EXPECT_GT(got[0], 0);
  EXPECT_GT(got[1], 0);
  close(*queue);
  // The wrong kind, or a device that is gone, is refused.
  EXPECT_EQ(TunDevice::OpenQueue("ta-mq", TunDevice::Kind::kTap, false, ifindex).status().code(),
            absl::StatusCode::kFailedPrecondition);
  tun->reset();
  EXPECT_EQ(TunDevice::OpenQueue("ta-mq", TunDevice::Kind::kTun, false, ifindex).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(if_nametoindex("ta-mq"), 0u);  // the try did not leave a new device behind
}

TEST_F(PersistentTunTest, SingleQueueDeviceIsAttachedWithOneQueue) {
  // As an older run of the agent left it: persistent, one queue.
  auto old = TunDevice::Create("ta-sq", TunDevice::Kind::kTun, AgentOptions(true));
  ASSERT_TRUE(old.ok()) << old.status();
  const int ifindex = (*old)->ifindex();
  EXPECT_FALSE((*old)->multi_queue());
  EXPECT_EQ(TunDevice::OpenQueue("ta-sq", TunDevice::Kind::kTun, false, ifindex).status().code(),
            absl::StatusCode::kFailedPrecondition);
  old->reset();
  auto again = TunDevice::Attach("ta-sq", TunDevice::Kind::kTun, false, /*multi_queue=*/true);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->multi_queue());
  EXPECT_EQ((*again)->ifindex(), ifindex);
  // And one left multi-queue is attached as such.
  ASSERT_TRUE((*again)->SetPersistent(false).ok());
  again->reset();
  TunDevice::CreateOptions options = AgentOptions(true);
  options.multi_queue = true;
  auto mq = TunDevice::Create("ta-sq", TunDevice::Kind::kTun, options);
  ASSERT_TRUE(mq.ok()) << mq.status();
  mq->reset();
  auto mq_again = TunDevice::Attach("ta-sq", TunDevice::Kind::kTun, false, /*multi_queue=*/true);
  ASSERT_TRUE(mq_again.ok()) << mq_again.status();
  EXPECT_TRUE((*mq_again)->multi_queue());
  // A run with one worker takes a multi-queue device as it is.
  mq_again->reset();
  auto single = TunDevice::Attach("ta-sq", TunDevice::Kind::kTun, false, /*multi_queue=*/false);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_TRUE((*single)->multi_queue());
  EXPECT_EQ(TunDevice::Attach("ta-sq", TunDevice::Kind::kTap, false, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace tunnelagent::dataplane
