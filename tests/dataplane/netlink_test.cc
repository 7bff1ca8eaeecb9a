// Runs inside a private network namespace (tests/netns_main.cc), one process per test, so
// links, addresses and routes can be made freely and vanish with the process.
#include "dataplane/netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/address.h"
#include "dataplane/tun/tun_device.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

IpPrefix Prefix(const char* text) {
  absl::StatusOr<IpPrefix> prefix = IpPrefix::Parse(text);
  EXPECT_TRUE(prefix.ok()) << text;
  return *prefix;
}

IpAddress Address(const char* text) {
  absl::StatusOr<IpAddress> address = IpAddress::Parse(text);
  EXPECT_TRUE(address.ok()) << text;
  return *address;
}

bool HaveIpv6() { return access("/proc/sys/net/ipv6", F_OK) == 0; }

// Sends one request the Netlink class cannot express (a veth pair, a route with metrics)
// and returns the errno of the kernel's ACK (0 on success).
int RawRequest(const std::function<void(nlmsghdr*)>& build) {
  mnl_socket* nl = mnl_socket_open(NETLINK_ROUTE);
  if (nl == nullptr) return errno;
  std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> closer(nl, mnl_socket_close);
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) return errno;
  std::vector<char> buf(32 * 1024);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  build(nlh);
  nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  nlh->nlmsg_seq = 1;
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return errno;
  const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
  if (n < 0) return errno;
  if (mnl_cb_run(buf.data(), n, 1, mnl_socket_get_portid(nl), nullptr, nullptr) < 0) {
    return errno;
  }
  return 0;
}

int CreateVethPair(const char* name, const char* peer) {
  return RawRequest([&](nlmsghdr* nlh) {
    nlh->nlmsg_type = RTM_NEWLINK;
    nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    ifi->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    nlattr* linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
    nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
    nlattr* peer_info = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
    mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg));  // the peer's own ifinfomsg
    mnl_attr_put_strz(nlh, IFLA_IFNAME, peer);
    mnl_attr_nest_end(nlh, peer_info);
    mnl_attr_nest_end(nlh, data);
    mnl_attr_nest_end(nlh, linkinfo);
  });
}

// `ip route add <destination>/<len> dev <ifindex> mtu <mtu>` for IPv4.
int AddRouteWithMtu(int ifindex, const IpPrefix& destination, uint32_t mtu) {
  return RawRequest([&](nlmsghdr* nlh) {
    nlh->nlmsg_type = RTM_NEWROUTE;
    nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
    rtm->rtm_family = AF_INET;
    rtm->rtm_dst_len = destination.length();
    rtm->rtm_table = RT_TABLE_MAIN;
    rtm->rtm_protocol = RTPROT_STATIC;
    rtm->rtm_scope = RT_SCOPE_LINK;
    rtm->rtm_type = RTN_UNICAST;
    mnl_attr_put(nlh, RTA_DST, 4, destination.address().bytes().data());
    mnl_attr_put_u32(nlh, RTA_OIF, ifindex);
    nlattr* metrics = mnl_attr_nest_start(nlh, RTA_METRICS);
    mnl_attr_put_u32(nlh, RTAX_MTU, mtu);
    mnl_attr_nest_end(nlh, metrics);
  });
}

// `ip route add [TYPE] <destination> [via <gateway>] [dev <ifindex>] proto <protocol>` in the
// main table, IPv4 or IPv6. `ifindex` 0 and no gateway for a route type without a device
// (unreachable, prohibit, blackhole).
// `remove`: the matching `ip route del` instead.
int AddRawRoute(const IpPrefix& destination, int ifindex, const IpAddress* gateway,
                uint8_t type = RTN_UNICAST, uint8_t protocol = RTPROT_STATIC, bool remove = false) {
  return RawRequest([&](nlmsghdr* nlh) {
    const bool v4 = destination.address().is_v4();
    nlh->nlmsg_type = remove ? RTM_DELROUTE : RTM_NEWROUTE;
    nlh->nlmsg_flags = remove ? 0 : NLM_F_CREATE | NLM_F_EXCL;
    auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
    rtm->rtm_family = v4 ? AF_INET : AF_INET6;
    rtm->rtm_dst_len = destination.length();
    rtm->rtm_table = RT_TABLE_MAIN;
    rtm->rtm_protocol = protocol;
    rtm->rtm_scope = gateway == nullptr && type == RTN_UNICAST ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE;
    rtm->rtm_type = type;
    mnl_attr_put(nlh, RTA_DST, v4 ? 4 : 16, destination.address().bytes().data());
    if (ifindex != 0) mnl_attr_put_u32(nlh, RTA_OIF, ifindex);
    if (gateway != nullptr) mnl_attr_put(nlh, RTA_GATEWAY, v4 ? 4 : 16, gateway->bytes().data());
  });
}

// True when a socket can be bound to `address`: the kernel holds it as a usable local
// address (for IPv6 that also means it is not tentative).
bool CanBind(const IpAddress& address) {
  const int fd = socket(address.is_v4() ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int rc;
  if (address.is_v4()) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    memcpy(&sin.sin_addr, address.bytes().data(), 4);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  } else {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    memcpy(&sin6.sin6_addr, address.bytes().data(), 16);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6));
  }
  close(fd);
  return rc == 0;
}

bool Contains(const std::vector<IpPrefix>& prefixes, const IpPrefix& prefix) {
  return std::find(prefixes.begin(), prefixes.end(), prefix) != prefixes.end();
}

class NetlinkTest : public testing::Test {
 protected:
  void SetUp() override {
    auto nl = Netlink::Open();
    ASSERT_TRUE(nl.ok()) << nl.status();
    nl_ = std::move(*nl);
    auto lo = nl_->GetLinkByName("lo");
    ASSERT_TRUE(lo.ok()) << lo.status();
    ASSERT_TRUE(nl_->SetLinkUp(lo->ifindex, true).ok());
  }

  // A TUN device named `name`, up, with `mtu`.
  std::unique_ptr<TunDevice> UpTun(const char* name, uint32_t mtu = 1500) {
    auto tun = TunDevice::Create(name, TunDevice::Kind::kTun);
    EXPECT_TRUE(tun.ok()) << tun.status();
    if (!tun.ok()) return nullptr;
    EXPECT_TRUE(nl_->SetLinkMtu((*tun)->ifindex(), mtu).ok());
    EXPECT_TRUE(nl_->SetLinkUp((*tun)->ifindex(), true).ok());
    return std::move(*tun);
  }

  std::unique_ptr<Netlink> nl_;
};

TEST_F(NetlinkTest, GetsLoopback) {
  auto by_name = nl_->GetLinkByName("lo");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_name->name, "lo");
  EXPECT_EQ(by_name->ifindex, 1);
  EXPECT_TRUE(by_name->up);
  EXPECT_EQ(by_name->mtu, 65536u);

  auto by_index = nl_->GetLink(by_name->ifindex);
  ASSERT_TRUE(by_index.ok()) << by_index.status();
  EXPECT_EQ(by_index->name, "lo");
  EXPECT_EQ(by_index->mtu, by_name->mtu);
}

TEST_F(NetlinkTest, MissingLinkIsNotFound) {
  auto link = nl_->GetLink(987654);
  EXPECT_EQ(link.status().code(), absl::StatusCode::kNotFound) << link.status();
  EXPECT_NE(link.status().message().find("987654"), absl::string_view::npos) << link.status();
  auto named = nl_->GetLinkByName("ta-nosuch");
  EXPECT_EQ(named.status().code(), absl::StatusCode::kNotFound) << named.status();
  EXPECT_EQ(nl_->SetLinkUp(987654, true).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(nl_->SetLinkMtu(987654, 1400).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(nl_->DeleteLink(987654).code(), absl::StatusCode::kNotFound);
}

TEST_F(NetlinkTest, InvalidArgumentsAreRefusedLocally) {
  EXPECT_EQ(nl_->GetLink(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->GetLink(-3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->GetLinkByName("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->GetLinkByName("sixteen-chars-00").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->AddAddress(1, IpPrefix()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->AddRoute(1, IpPrefix(Address("198.18.5.0"), 33)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nl_->PathMtu(IpAddress()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NetlinkTest, SetsLinkUpDownAndMtu) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  const int ifindex = (*tun)->ifindex();

  auto link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->name, "ta-tun0");
  EXPECT_EQ(link->ifindex, ifindex);
  EXPECT_FALSE(link->up);
  EXPECT_EQ(link->mtu, 1500u);

  ASSERT_TRUE(nl_->SetLinkUp(ifindex, true).ok());
  ASSERT_TRUE(nl_->SetLinkMtu(ifindex, 1400).ok());
  link = nl_->GetLinkByName("ta-tun0");
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_TRUE(link->up);
  EXPECT_EQ(link->mtu, 1400u);

  ASSERT_TRUE(nl_->SetLinkUp(ifindex, false).ok());
  link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_FALSE(link->up);
  EXPECT_EQ(link->mtu, 1400u);
}

TEST_F(NetlinkTest, MtuOutOfRangeIsInvalidArgument) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  absl::Status status = nl_->SetLinkMtu((*tun)->ifindex(), 10);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  status = nl_->SetLinkMtu((*tun)->ifindex(), 1000000);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

TEST_F(NetlinkTest, AddsAndDeletesIpv4Address) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  const int ifindex = tun->ifindex();
  const IpPrefix address = Prefix("198.18.1.1/24");

  EXPECT_FALSE(CanBind(address.address()));
  ASSERT_TRUE(nl_->AddAddress(ifindex, address).ok());
  auto addresses = nl_->ListAddresses(ifindex);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_TRUE(Contains(*addresses, address));
  EXPECT_TRUE(CanBind(address.address()));

  absl::Status duplicate = nl_->AddAddress(ifindex, address);
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_NE(duplicate.message().find("198.18.1.1/24"), absl::string_view::npos) << duplicate;

  // The kernel added the connected route; the prefix routes out of this link.
  auto mtu = nl_->PathMtu(Address("198.18.1.77"));
  EXPECT_TRUE(mtu.ok()) << mtu.status();

  ASSERT_TRUE(nl_->DeleteAddress(ifindex, address).ok());
  addresses = nl_->ListAddresses(ifindex);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_FALSE(Contains(*addresses, address));
  EXPECT_FALSE(CanBind(address.address()));
  absl::Status again = nl_->DeleteAddress(ifindex, address);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
}

TEST_F(NetlinkTest, AddsIpv6AddressUsableAtOnce) {
  if (!HaveIpv6()) GTEST_SKIP() << "no IPv6 in this kernel";
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  const int ifindex = tun->ifindex();
  const IpPrefix address = Prefix("fd00:1::1/64");

  ASSERT_TRUE(nl_->AddAddress(ifindex, address).ok());
  auto addresses = nl_->ListAddresses(ifindex);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_TRUE(Contains(*addresses, address));
  // Bindable without waiting: not tentative, so duplicate address detection was skipped.
  EXPECT_TRUE(CanBind(address.address()));

  EXPECT_EQ(nl_->AddAddress(ifindex, address).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(nl_->DeleteAddress(ifindex, address).ok());
  EXPECT_FALSE(CanBind(address.address()));
  EXPECT_EQ(nl_->DeleteAddress(ifindex, address).code(), absl::StatusCode::kNotFound);
}

TEST_F(NetlinkTest, AddressOnMissingLinkIsNotFound) {
  absl::Status status = nl_->AddAddress(987654, Prefix("198.18.1.1/24"));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST_F(NetlinkTest, AddsAndDeletesIpv4Route) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  const int ifindex = tun->ifindex();
  const IpPrefix route = Prefix("198.18.5.0/24");

  EXPECT_EQ(nl_->PathMtu(Address("198.18.5.9")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(nl_->AddRoute(ifindex, route).ok());
  EXPECT_TRUE(nl_->PathMtu(Address("198.18.5.9")).ok());

  absl::Status duplicate = nl_->AddRoute(ifindex, route);
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_NE(duplicate.message().find("198.18.5.0/24"), absl::string_view::npos) << duplicate;

  ASSERT_TRUE(nl_->DeleteRoute(ifindex, route).ok());
  EXPECT_EQ(nl_->PathMtu(Address("198.18.5.9")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::Status again = nl_->DeleteRoute(ifindex, route);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
}

TEST_F(NetlinkTest, AddsAndDeletesIpv6Route) {
  if (!HaveIpv6()) GTEST_SKIP() << "no IPv6 in this kernel";
  auto tun = UpTun("ta-tun0", 1400);
  ASSERT_NE(tun, nullptr);
  const int ifindex = tun->ifindex();
  const IpPrefix route = Prefix("fd00:5::/64");

  ASSERT_TRUE(nl_->AddRoute(ifindex, route).ok());
  EXPECT_EQ(nl_->AddRoute(ifindex, route).code(), absl::StatusCode::kAlreadyExists);
  auto mtu = nl_->PathMtu(Address("fd00:5::9"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 1400u);
  ASSERT_TRUE(nl_->DeleteRoute(ifindex, route).ok());
  EXPECT_EQ(nl_->DeleteRoute(ifindex, route).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(nl_->PathMtu(Address("fd00:5::9")).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(NetlinkTest, RouteWithHostBitsIsInvalidArgument) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  absl::Status status = nl_->AddRoute(tun->ifindex(), Prefix("198.18.5.1/24"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

TEST_F(NetlinkTest, RouteViaMissingLinkFails) {
  absl::Status status = nl_->AddRoute(987654, Prefix("198.18.5.0/24"));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST_F(NetlinkTest, DeleteRouteLeavesOtherProtocolsAlone) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  // Installed as "static", not by the agent.
  ASSERT_EQ(AddRouteWithMtu(tun->ifindex(), Prefix("198.18.6.0/24"), 1300), 0);
  absl::Status status = nl_->DeleteRoute(tun->ifindex(), Prefix("198.18.6.0/24"));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_TRUE(nl_->PathMtu(Address("198.18.6.1")).ok());
}

TEST_F(NetlinkTest, PathMtuIsTheDeviceMtu) {
  auto tun = UpTun("ta-tun0", 1400);
  ASSERT_NE(tun, nullptr);
  ASSERT_TRUE(nl_->AddRoute(tun->ifindex(), Prefix("198.18.5.0/24")).ok());
  auto mtu = nl_->PathMtu(Address("198.18.5.9"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 1400u);

  // Follows the device when its MTU changes.
  ASSERT_TRUE(nl_->SetLinkMtu(tun->ifindex(), 1280).ok());
  mtu = nl_->PathMtu(Address("198.18.5.9"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 1280u);
}

TEST_F(NetlinkTest, PathMtuPrefersTheRouteMetric) {
  auto tun = UpTun("ta-tun0", 1400);
  ASSERT_NE(tun, nullptr);
  ASSERT_EQ(AddRouteWithMtu(tun->ifindex(), Prefix("198.18.6.0/24"), 1300), 0);
  auto mtu = nl_->PathMtu(Address("198.18.6.1"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 1300u);
}

TEST_F(NetlinkTest, PathMtuOverVeth) {
  ASSERT_EQ(CreateVethPair("ta-veth0", "ta-veth1"), 0);
  auto veth = nl_->GetLinkByName("ta-veth0");
  ASSERT_TRUE(veth.ok()) << veth.status();
  ASSERT_TRUE(nl_->SetLinkMtu(veth->ifindex, 9000).ok());
  ASSERT_TRUE(nl_->SetLinkUp(veth->ifindex, true).ok());
  ASSERT_TRUE(nl_->AddAddress(veth->ifindex, Prefix("10.77.0.1/24")).ok());
  auto mtu = nl_->PathMtu(Address("10.77.0.2"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 9000u);
  EXPECT_TRUE(nl_->DeleteLink(veth->ifindex).ok());
}

TEST_F(NetlinkTest, PathMtuWithoutRouteIsFailedPrecondition) {
  auto mtu = nl_->PathMtu(Address("10.99.0.1"));
  EXPECT_EQ(mtu.status().code(), absl::StatusCode::kFailedPrecondition) << mtu.status();
  EXPECT_NE(mtu.status().message().find("no route to 10.99.0.1"), absl::string_view::npos)
      << mtu.status();
}

TEST_F(NetlinkTest, PathMtuToLocalAddressIsLoopback) {
  auto mtu = nl_->PathMtu(Address("127.0.0.1"));
  ASSERT_TRUE(mtu.ok()) << mtu.status();
  EXPECT_EQ(*mtu, 65536u);
}

TEST_F(NetlinkTest, DeletesLink) {
  ASSERT_EQ(CreateVethPair("ta-veth2", "ta-veth3"), 0);
  auto veth = nl_->GetLinkByName("ta-veth2");
  ASSERT_TRUE(veth.ok()) << veth.status();
  ASSERT_TRUE(nl_->DeleteLink(veth->ifindex).ok());
  EXPECT_EQ(nl_->GetLink(veth->ifindex).status().code(), absl::StatusCode::kNotFound);
  // A veth pair goes as one.
  EXPECT_EQ(nl_->GetLinkByName("ta-veth3").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(nl_->DeleteLink(veth->ifindex).code(), absl::StatusCode::kNotFound);
}

TEST_F(NetlinkTest, DeletesTunLinkWhileOpen) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  ASSERT_TRUE(nl_->DeleteLink((*tun)->ifindex()).ok());
  EXPECT_EQ(nl_->GetLink((*tun)->ifindex()).status().code(), absl::StatusCode::kNotFound);
  tun->reset();  // closing the fd of a deleted device is harmless
}

TEST_F(NetlinkTest, RouteViaDownLinkIsFailedPreconditionWithKernelReason) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  // IPv4 refuses a route through a link that is down.
  absl::Status status = nl_->AddRoute((*tun)->ifindex(), Prefix("198.18.5.0/24"));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  // errno text, then the extended ACK's reason in parentheses.
  EXPECT_NE(status.message().find("Network is down ("), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("198.18.5.0/24"), absl::string_view::npos) << status;
}

TEST_F(NetlinkTest, SetsAndReadsAlias) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  const int ifindex = (*tun)->ifindex();
  auto link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "");

  ASSERT_TRUE(nl_->SetLinkAlias(ifindex, "some alias").ok());
  link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "some alias");
  link = nl_->GetLinkByName("ta-tun0");
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "some alias");
  auto links = nl_->ListLinks();
  ASSERT_TRUE(links.ok()) << links.status();
  auto it = std::find_if(links->begin(), links->end(),
                         [&](const LinkInfo& l) { return l.ifindex == ifindex; });
  ASSERT_NE(it, links->end());
  EXPECT_EQ(it->alias, "some alias");

  // The longest the kernel takes.
  const std::string longest(255, 'a');
  ASSERT_TRUE(nl_->SetLinkAlias(ifindex, longest).ok());
  link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, longest);

  // "" removes it.
  ASSERT_TRUE(nl_->SetLinkAlias(ifindex, "").ok());
  link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->alias, "");
}

TEST_F(NetlinkTest, BadAliasIsInvalidArgument) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  absl::Status status = nl_->SetLinkAlias((*tun)->ifindex(), std::string(256, 'a'));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  status = nl_->SetLinkAlias((*tun)->ifindex(), std::string("a\0b", 3));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(nl_->SetLinkAlias(0, "x").code(), absl::StatusCode::kInvalidArgument);
  status = nl_->SetLinkAlias(987654, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST_F(NetlinkTest, ListsLinksWithKinds) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  auto tap = TunDevice::Create("ta-tap0", TunDevice::Kind::kTap);
  ASSERT_TRUE(tap.ok()) << tap.status();
  ASSERT_EQ(CreateVethPair("ta-veth0", "ta-veth1"), 0);
  ASSERT_TRUE(nl_->SetLinkMtu((*tun)->ifindex(), 1400).ok());

  auto links = nl_->ListLinks();
  ASSERT_TRUE(links.ok()) << links.status();
  auto find = [&](const std::string& name) -> const LinkInfo* {
    for (const LinkInfo& link : *links) {
      if (link.name == name) return &link;
    }
    return nullptr;
  };
  const LinkInfo* lo = find("lo");
  ASSERT_NE(lo, nullptr);
  EXPECT_EQ(lo->ifindex, 1);
  EXPECT_EQ(lo->kind, "");
  EXPECT_TRUE(lo->up);
  EXPECT_EQ(lo->mtu, 65536u);
  const LinkInfo* tun_link = find("ta-tun0");
  ASSERT_NE(tun_link, nullptr);
  EXPECT_EQ(tun_link->ifindex, (*tun)->ifindex());
  EXPECT_EQ(tun_link->kind, "tun");
  EXPECT_EQ(tun_link->mtu, 1400u);
  EXPECT_FALSE(tun_link->up);
  const LinkInfo* tap_link = find("ta-tap0");
  ASSERT_NE(tap_link, nullptr);
  EXPECT_EQ(tap_link->ifindex, (*tap)->ifindex());
  EXPECT_EQ(tap_link->kind, "tun");  // TUN and TAP devices share their link kind
  for (const char* name : {"ta-veth0", "ta-veth1"}) {
    const LinkInfo* veth = find(name);
    ASSERT_NE(veth, nullptr) << name;
    EXPECT_EQ(veth->kind, "veth") << name;
    EXPECT_EQ(static_cast<int>(if_nametoindex(name)), veth->ifindex) << name;
  }
  // Every link once, in ifindex order.
  for (size_t i = 1; i < links->size(); ++i) {
    EXPECT_LT((*links)[i - 1].ifindex, (*links)[i].ifindex);
  }

  // GetLink and GetLinkByName report the kind too.
  auto by_index = nl_->GetLink((*tun)->ifindex());
  ASSERT_TRUE(by_index.ok()) << by_index.status();
  EXPECT_EQ(by_index->kind, "tun");
  auto by_name = nl_->GetLinkByName("ta-veth0");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_name->kind, "veth");
  auto loopback = nl_->GetLink(1);
  ASSERT_TRUE(loopback.ok()) << loopback.status();
  EXPECT_EQ(loopback->kind, "");

  // Deleted links are gone from the list.
  ASSERT_TRUE(nl_->DeleteLink(by_name->ifindex).ok());
  tun->reset();
  links = nl_->ListLinks();
  ASSERT_TRUE(links.ok()) << links.status();
  EXPECT_EQ(find("ta-tun0"), nullptr);
  EXPECT_EQ(find("ta-veth0"), nullptr);
  EXPECT_EQ(find("ta-veth1"), nullptr);
  EXPECT_NE(find("ta-tap0"), nullptr);
  EXPECT_NE(find("lo"), nullptr);
  ASSERT_TRUE(nl_->DeleteLink((*tap)->ifindex()).ok());
}

TEST_F(NetlinkTest, ConcurrentCallsAreSerialised) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto link = nl_->GetLink(1);
        if (!link.ok() || link->name != "lo") ++failures;
        if (nl_->GetLink(987654).status().code() != absl::StatusCode::kNotFound) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(NetlinkTest, ListAllAddressesGroupsByLinkWithoutKernelLinkLocal) {
  auto tun0 = UpTun("ta-tun0");
  auto tun1 = UpTun("ta-tun1");
  ASSERT_NE(tun0, nullptr);
  ASSERT_NE(tun1, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("198.18.1.1/24")).ok());
  ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("10.1.0.1/32")).ok());
  ASSERT_TRUE(nl_->AddAddress(tun1->ifindex(), Prefix("198.18.2.1/30")).ok());
  if (HaveIpv6()) {
    ASSERT_TRUE(nl_->AddAddress(tun1->ifindex(), Prefix("fd00:2::1/64")).ok());
  }

  auto all = nl_->ListAllAddresses();
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<IpPrefix> want0 = {Prefix("198.18.1.1/24"), Prefix("10.1.0.1/32")};
  std::vector<IpPrefix> got0 = (*all)[tun0->ifindex()];
  EXPECT_EQ(got0.size(), 2u);
  for (const IpPrefix& p : want0) EXPECT_TRUE(Contains(got0, p)) << p.ToString();
  std::vector<IpPrefix> got1 = (*all)[tun1->ifindex()];
  EXPECT_TRUE(Contains(got1, Prefix("198.18.2.1/30")));
  EXPECT_EQ(got1.size(), HaveIpv6() ? 2u : 1u);
  if (HaveIpv6()) {
    EXPECT_TRUE(Contains(got1, Prefix("fd00:2::1/64")));
  }
  EXPECT_TRUE(Contains((*all)[1], Prefix("127.0.0.1/8")));

  if (HaveIpv6()) {
    // The kernel gave the up TUN device a link-local address of its own: listed per link, not
    // in the all-links dump; one configured by hand in fe80::/10 is left out as well.
    auto per_link = nl_->ListAddresses(tun0->ifindex());
    ASSERT_TRUE(per_link.ok()) << per_link.status();
    const bool kernel_link_local = std::any_of(
        per_link->begin(), per_link->end(),
        [](const IpPrefix& p) { return p.address().is_v6() && p.address().bytes()[0] == 0xfe; });
    EXPECT_TRUE(kernel_link_local) << "the test expects the kernel's fe80:: address";
    for (const auto& [ifindex, prefixes] : *all) {
      for (const IpPrefix& p : prefixes) {
        EXPECT_FALSE(p.address().is_v6() && p.address().bytes()[0] == 0xfe &&
                     (p.address().bytes()[1] & 0xc0) == 0x80)
            << p.ToString() << " on link " << ifindex;
      }
    }
  }

  // Gone from the dump once deleted.
  ASSERT_TRUE(nl_->DeleteAddress(tun0->ifindex(), Prefix("10.1.0.1/32")).ok());
  all = nl_->ListAllAddresses();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ((*all)[tun0->ifindex()], std::vector<IpPrefix>{Prefix("198.18.1.1/24")});
}

TEST_F(NetlinkTest, ListAgentRoutesSeesOnlyTheAgentsProtocol) {
  auto tun0 = UpTun("ta-tun0");
  auto tun1 = UpTun("ta-tun1");
  ASSERT_NE(tun0, nullptr);
  ASSERT_NE(tun1, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("198.18.1.1/24")).ok());  // + a kernel route
  ASSERT_TRUE(nl_->AddRoute(tun0->ifindex(), Prefix("198.18.5.0/24")).ok());
  ASSERT_TRUE(nl_->AddRoute(tun0->ifindex(), Prefix("10.5.0.0/16")).ok());
  ASSERT_TRUE(nl_->AddRoute(tun1->ifindex(), Prefix("198.18.9.0/28")).ok());
  // The same kind of route, but another protocol's.
  ASSERT_EQ(AddRouteWithMtu(tun0->ifindex(), Prefix("198.18.6.0/24"), 1300), 0);
  ASSERT_EQ(AddRawRoute(Prefix("10.6.0.0/16"), tun1->ifindex(), nullptr), 0);
  // The agent's protocol, but a default route added by someone else: listed all the same.
  ASSERT_EQ(AddRawRoute(Prefix("0.0.0.0/0"), tun1->ifindex(), nullptr, RTN_UNICAST,
                        kRouteProtocolTunnelAgent),
            0);
  if (HaveIpv6()) {
    ASSERT_TRUE(nl_->AddRoute(tun1->ifindex(), Prefix("fd00:5::/64")).ok());
    ASSERT_EQ(AddRawRoute(Prefix("fd00:6::/64"), tun1->ifindex(), nullptr), 0);
  }

  auto routes = nl_->ListAgentRoutes();
  ASSERT_TRUE(routes.ok()) << routes.status();
  std::vector<IpPrefix> got0 = (*routes)[tun0->ifindex()];
  EXPECT_EQ(got0.size(), 2u);
  EXPECT_TRUE(Contains(got0, Prefix("198.18.5.0/24")));
  EXPECT_TRUE(Contains(got0, Prefix("10.5.0.0/16")));
  std::vector<IpPrefix> got1 = (*routes)[tun1->ifindex()];
  EXPECT_EQ(got1.size(), HaveIpv6() ? 3u : 2u);
  EXPECT_TRUE(Contains(got1, Prefix("198.18.9.0/28")));
  EXPECT_TRUE(Contains(got1, Prefix("0.0.0.0/0")));
  if (HaveIpv6()) {
    EXPECT_TRUE(Contains(got1, Prefix("fd00:5::/64")));
  }
  // Nothing on any other link (lo has the kernel's local routes only).
  EXPECT_EQ(routes->size(), 2u);

  ASSERT_TRUE(nl_->DeleteRoute(tun0->ifindex(), Prefix("10.5.0.0/16")).ok());
  routes = nl_->ListAgentRoutes();
  ASSERT_TRUE(routes.ok()) << routes.status();
  EXPECT_EQ((*routes)[tun0->ifindex()], std::vector<IpPrefix>{Prefix("198.18.5.0/24")});
}

TEST_F(NetlinkTest, ListAgentRoutesIsEmptyWithoutAny) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun->ifindex(), Prefix("198.18.1.1/24")).ok());
  auto routes = nl_->ListAgentRoutes();
  ASSERT_TRUE(routes.ok()) << routes.status();
  EXPECT_TRUE(routes->empty());
}

TEST_F(NetlinkTest, RouteGetOnLinkHasNoGateway) {
  auto tun = UpTun("ta-tun0");
  ASSERT_NE(tun, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun->ifindex(), Prefix("198.18.7.1/24")).ok());
  auto route = nl_->RouteGet(Address("198.18.7.9"));
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->ifindex, tun->ifindex());
  EXPECT_FALSE(route->gateway.has_value()) << route->gateway->ToString();
  ASSERT_TRUE(route->source.has_value());
  EXPECT_EQ(*route->source, Address("198.18.7.1"));
}

TEST_F(NetlinkTest, RouteGetViaGateway) {
  auto tun0 = UpTun("ta-tun0");
  auto tun1 = UpTun("ta-tun1");
  ASSERT_NE(tun0, nullptr);
  ASSERT_NE(tun1, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("198.18.7.1/24")).ok());
  ASSERT_TRUE(nl_->AddAddress(tun1->ifindex(), Prefix("198.18.8.1/24")).ok());
  const IpAddress gateway = Address("198.18.8.254");
  ASSERT_EQ(AddRawRoute(Prefix("198.18.200.0/24"), tun1->ifindex(), &gateway), 0);
  auto route = nl_->RouteGet(Address("198.18.200.5"));
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->ifindex, tun1->ifindex());
  ASSERT_TRUE(route->gateway.has_value());
  EXPECT_EQ(*route->gateway, gateway);
  ASSERT_TRUE(route->source.has_value());
  EXPECT_EQ(*route->source, Address("198.18.8.1"));

  if (HaveIpv6()) {
    ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("fd00:7::1/64")).ok());
    const IpAddress gateway6 = Address("fd00:7::fe");
    ASSERT_EQ(AddRawRoute(Prefix("fd00:200::/48"), tun0->ifindex(), &gateway6), 0);
    auto route6 = nl_->RouteGet(Address("fd00:200::5"));
    ASSERT_TRUE(route6.ok()) << route6.status();
    EXPECT_EQ(route6->ifindex, tun0->ifindex());
    ASSERT_TRUE(route6->gateway.has_value());
    EXPECT_EQ(*route6->gateway, gateway6);
    ASSERT_TRUE(route6->source.has_value());
    EXPECT_EQ(*route6->source, Address("fd00:7::1"));
    auto on_link6 = nl_->RouteGet(Address("fd00:7::9"));
    ASSERT_TRUE(on_link6.ok()) << on_link6.status();
    EXPECT_EQ(on_link6->ifindex, tun0->ifindex());
    EXPECT_FALSE(on_link6->gateway.has_value());
  }
}

TEST_F(NetlinkTest, RouteGetToLocalAddressIsLoopback) {
  auto route = nl_->RouteGet(Address("127.0.0.1"));
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->ifindex, 1);
  EXPECT_FALSE(route->gateway.has_value());
}

TEST_F(NetlinkTest, RouteGetUnreachableIsNotFound) {
  // No route at all (this namespace has no default route).
  auto none = nl_->RouteGet(Address("10.99.0.1"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
  EXPECT_NE(none.status().message().find("no route to 10.99.0.1"), absl::string_view::npos)
      << none.status();
  if (HaveIpv6()) {
    auto none6 = nl_->RouteGet(Address("fd00:99::1"));
    EXPECT_EQ(none6.status().code(), absl::StatusCode::kNotFound) << none6.status();
  }
  // Routes whose type refuses the destination: each is "no route" too, for RouteGet and for
  // PathMtu alike.
  struct Case {
    const char* prefix;
    const char* address;
    uint8_t type;
  };
  std::vector<Case> cases = {Case{"198.18.20.0/24", "198.18.20.1", RTN_UNREACHABLE},
                             Case{"198.18.21.0/24", "198.18.21.1", RTN_PROHIBIT},
                             Case{"198.18.22.0/24", "198.18.22.1", RTN_BLACKHOLE}};
  if (HaveIpv6()) {
    cases.push_back(Case{"fd00:20::/64", "fd00:20::1", RTN_UNREACHABLE});
    cases.push_back(Case{"fd00:22::/64", "fd00:22::1", RTN_BLACKHOLE});
  }
  for (const Case& c : cases) {
    // Such routes need no link, so they outlive the test unless removed.
    ASSERT_EQ(AddRawRoute(Prefix(c.prefix), 0, nullptr, c.type), 0) << c.prefix;
    auto route = nl_->RouteGet(Address(c.address));
    EXPECT_EQ(route.status().code(), absl::StatusCode::kNotFound)
        << c.prefix << ": " << route.status();
    auto mtu = nl_->PathMtu(Address(c.address));
    EXPECT_EQ(mtu.status().code(), absl::StatusCode::kFailedPrecondition)
        << c.prefix << ": " << mtu.status();
    EXPECT_EQ(AddRawRoute(Prefix(c.prefix), 0, nullptr, c.type, RTPROT_STATIC, true), 0)
        << c.prefix;
  }
  EXPECT_EQ(nl_->RouteGet(IpAddress()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NetlinkTest, ListAddressesStillFiltersByLink) {
  // The per-link listing keeps working beside the all-links dump (strict or not).
  auto tun0 = UpTun("ta-tun0");
  auto tun1 = UpTun("ta-tun1");
  ASSERT_NE(tun0, nullptr);
  ASSERT_NE(tun1, nullptr);
  ASSERT_TRUE(nl_->AddAddress(tun0->ifindex(), Prefix("198.18.1.1/24")).ok());
  ASSERT_TRUE(nl_->AddAddress(tun1->ifindex(), Prefix("198.18.2.1/24")).ok());
  auto addresses = nl_->ListAddresses(tun0->ifindex());
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_TRUE(Contains(*addresses, Prefix("198.18.1.1/24")));
  EXPECT_FALSE(Contains(*addresses, Prefix("198.18.2.1/24")));
}

// ---- Many requests in flight ------------------------------------------------------------------

TEST_F(NetlinkTest, ApplyMakesManyChangesInOrderWithOneAnswerEach) {
  auto tun = TunDevice::Create("ta-tun0", TunDevice::Kind::kTun);
  ASSERT_TRUE(tun.ok()) << tun.status();
  const int ifindex = (*tun)->ifindex();
  using Kind = LinkRequest::Kind;
  std::vector<LinkRequest> requests = {
      {.kind = Kind::kSetMtu, .ifindex = ifindex, .mtu = 1400},
      {.kind = Kind::kSetUp, .ifindex = ifindex},
      {.kind = Kind::kAddAddress, .ifindex = ifindex, .prefix = Prefix("198.18.7.1/24")},
      {.kind = Kind::kAddAddress, .ifindex = ifindex, .prefix = Prefix("198.18.7.1/24")},
      {.kind = Kind::kAddRoute, .ifindex = ifindex, .prefix = Prefix("198.18.9.0/24")},
      // Refused before sending, as the single call refuses it; the rest still go.
      {.kind = Kind::kAddRoute, .ifindex = ifindex, .prefix = Prefix("198.18.8.1/24")},
      {.kind = Kind::kDeleteRoute, .ifindex = ifindex, .prefix = Prefix("198.18.10.0/24")},
      {.kind = Kind::kSetMtu, .ifindex = 987654, .mtu = 1400},
  };
  // More than go in one datagram: each gets its own answer all the same.
  for (int i = 0; i < 150; ++i) {
    requests.push_back({.kind = Kind::kAddRoute,
                        .ifindex = ifindex,
                        .prefix = Prefix(absl::StrCat("198.19.", i, ".0/24").c_str())});
  }
  requests.push_back({.kind = Kind::kSetDown, .ifindex = ifindex});

  const std::vector<absl::Status> statuses = nl_->Apply(requests);

  ASSERT_EQ(statuses.size(), requests.size());
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_TRUE(statuses[1].ok()) << statuses[1];
  EXPECT_TRUE(statuses[2].ok()) << statuses[2];
  EXPECT_EQ(statuses[3].code(), absl::StatusCode::kAlreadyExists) << statuses[3];
  EXPECT_THAT(std::string(statuses[3].message()), testing::HasSubstr("198.18.7.1/24"));
  EXPECT_TRUE(statuses[4].ok()) << statuses[4];
  EXPECT_EQ(statuses[5].code(), absl::StatusCode::kInvalidArgument) << statuses[5];
  EXPECT_THAT(std::string(statuses[5].message()), testing::HasSubstr("host bits"));
  EXPECT_EQ(statuses[6].code(), absl::StatusCode::kNotFound) << statuses[6];
  EXPECT_EQ(statuses[7].code(), absl::StatusCode::kNotFound) << statuses[7];
  for (size_t i = 8; i < statuses.size(); ++i) EXPECT_TRUE(statuses[i].ok()) << i << statuses[i];
  // What the kernel has now is what the requests made, in their order (down last).
  auto link = nl_->GetLink(ifindex);
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_EQ(link->mtu, 1400u);
  EXPECT_FALSE(link->up);
  auto addresses = nl_->ListAddresses(ifindex);
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_TRUE(Contains(*addresses, Prefix("198.18.7.1/24")));
  auto routes = nl_->ListAgentRoutes();
  ASSERT_TRUE(routes.ok()) << routes.status();
  // Taking the link down removed its IPv4 routes again.
  EXPECT_FALSE(Contains((*routes)[ifindex], Prefix("198.19.149.0/24")));
  // And the socket serves single requests as before.
  EXPECT_TRUE(nl_->SetLinkUp(ifindex, true).ok());
  EXPECT_TRUE(nl_->Apply({}).empty());
}

TEST_F(NetlinkTest, RouteGetManyAnswersAsRouteGetDoesForEach) {
  auto tun = UpTun("ta-tun0", 1400);
  ASSERT_NE(tun, nullptr);
  ASSERT_TRUE(nl_->AddRoute(tun->ifindex(), Prefix("198.18.5.0/24")).ok());
  std::vector<IpAddress> destinations;
  for (int i = 0; i < 100; ++i) {
    destinations.push_back(i % 2 ? Address("198.18.5.9") : Address("198.18.6.9"));
  }
  destinations.push_back(IpAddress());

  const std::vector<absl::StatusOr<RouteLookup>> routes = nl_->RouteGetMany(destinations);

  ASSERT_EQ(routes.size(), destinations.size());
  for (size_t i = 0; i + 1 < routes.size(); ++i) {
    absl::StatusOr<RouteLookup> single = nl_->RouteGet(destinations[i]);
    ASSERT_EQ(routes[i].status().code(), single.status().code()) << i << routes[i].status();
    if (!single.ok()) {
      EXPECT_EQ(routes[i].status().code(), absl::StatusCode::kNotFound);
      EXPECT_EQ(routes[i].status().message(), single.status().message());
      continue;
    }
    EXPECT_EQ(routes[i]->ifindex, tun->ifindex());
    EXPECT_EQ(routes[i]->ifindex, single->ifindex);
  }
  EXPECT_EQ(routes.back().status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tunnelagent::dataplane
