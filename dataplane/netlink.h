// rtnetlink access (libmnl) for what the agent configures on its devices: link state, MTU,
// addresses and routes, and the underlay path MTU. No shelling out to `ip`.
#ifndef TUNNELAGENT_DATAPLANE_NETLINK_H_
#define TUNNELAGENT_DATAPLANE_NETLINK_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dataplane/address.h"

struct mnl_socket;

namespace tunnelagent::dataplane {

// Routes the agent installs carry this rtm_protocol, so they are recognisable as its own
// (`ip route show proto 0x7a` lists them; iproute2 prints unknown protocols as numbers).
inline constexpr uint8_t kRouteProtocolTunnelAgent = 0x7a;

struct LinkInfo {
  int ifindex = 0;
  std::string name;
  uint32_t mtu = 0;
  bool up = false;
  // The interface alias (IFLA_IFALIAS, `ip link set NAME alias TEXT`), "" when none.
  std::string alias;
  // The link's type (IFLA_INFO_KIND): "tun" for TUN and TAP devices alike, "veth", "gre"...;
  // "" for a device without one (lo, a physical NIC).
  std::string kind;
  // The link's group (IFLA_GROUP, `ip link set NAME group N`); 0, the default group, unless set.
  uint32_t group = 0;
};

// The kernel's answer to one route lookup (`ip route get DESTINATION`).
struct RouteLookup {
  int ifindex = 0;  // the output link (RTA_OIF)
  // The next hop (RTA_GATEWAY); unset when the destination is on-link (or local).
  std::optional<IpAddress> gateway;
  // The source address the kernel would pick for a packet to the destination (RTA_PREFSRC).
  std::optional<IpAddress> source;
  uint32_t mtu_metric = 0;  // the route's MTU metric (`mtu N`), 0 when it has none
};

// One change of a link's configuration, as SetLinkUp, SetLinkMtu, AddAddress, DeleteAddress,
// AddRoute and DeleteRoute make it: for Netlink::Apply, which sends many at once.
struct LinkRequest {
  enum class Kind {
    kSetUp,
    kSetDown,
    kSetMtu,
    kAddAddress,
    kDeleteAddress,
    kAddRoute,
    kDeleteRoute
  };
  Kind kind = Kind::kSetUp;
  int ifindex = 0;
  IpPrefix prefix{};  // kAddAddress .. kDeleteRoute
  uint32_t mtu = 0;   // kSetMtu
};

// One NETLINK_ROUTE socket; calls are serialised, each waits for the kernel's ACK and turns a
// negative ACK into a status carrying the errno text and what was being done.
class Netlink {
 public:
  static absl::StatusOr<std::unique_ptr<Netlink>> Open();
  ~Netlink();
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;

  absl::Status SetLinkUp(int ifindex, bool up);
  absl::Status SetLinkMtu(int ifindex, uint32_t mtu);
  // Deletes the link whatever holds it: a TUN/TAP device goes even while open or persistent.
  absl::Status DeleteLink(int ifindex);
  // Puts the link in group `group` (IFLA_GROUP), which DeleteLinkGroup removes in one batch.
  absl::Status SetLinkGroup(int ifindex, uint32_t group);
  // Deletes every link of group `group` with one request: the kernel unregisters them as one
  // batch (unregister_netdevice_many), paying the RCU grace periods of a removal once for all
  // instead of once per link (about 20 ms each). Group 0 (every link's default) is refused.
  // The kernel refuses the whole request, removing nothing, when a link of the group cannot
  // be deleted this way.
  absl::Status DeleteLinkGroup(uint32_t group);
  // Sets the interface alias (at most 255 bytes, no NUL); "" removes it.
  absl::Status SetLinkAlias(int ifindex, const std::string& alias);
  // Makes `noqueue` the link's root qdisc (`tc qdisc replace dev X root noqueue`). Done
  // before a multi-queue TUN/TAP device first goes up, it spares the kernel the default: an
  // mq qdisc with a pfifo_fast for each of the 256 possible queues, about 3.5 MiB of kernel
  // memory and a millisecond of CPU per device, for nothing (a TUN device never stops its
  // queues: what it cannot take it drops, with or without a qdisc in front).
  absl::Status SetNoQueue(int ifindex);
  // NOT_FOUND when there is no such link.
  absl::StatusOr<LinkInfo> GetLink(int ifindex);
  absl::StatusOr<LinkInfo> GetLinkByName(const std::string& name);
  // Every link of the network namespace, in ifindex order.
  absl::StatusOr<std::vector<LinkInfo>> ListLinks();

  // Adds `address` (with its prefix length) to the link; an IPv4 one also gets the
  // connected route the kernel adds for it.
  absl::Status AddAddress(int ifindex, const IpPrefix& address);
  absl::Status DeleteAddress(int ifindex, const IpPrefix& address);
  // The addresses configured on the link, IPv4 and IPv6 (link-local ones included), as the
  // kernel reports them: for checking what AddAddress did. Where the kernel filters dumps by
  // link (strict checking), a missing link is NOT_FOUND; elsewhere it lists nothing.
  absl::StatusOr<std::vector<IpPrefix>> ListAddresses(int ifindex);
  // Every link's addresses by ifindex, IPv4 and IPv6, in one dump, as added (address and prefix
  // length), without those the kernel configures by itself: IPv6 link-local ones (fe80::/10),
  // added when a link comes up, and those from router advertisements. A link without any is
  // absent from the map.
  absl::StatusOr<std::map<int, std::vector<IpPrefix>>> ListAllAddresses();
  // Unicast route in the main table to `destination` (host bits must be zero) out of
  // the link, scope link, protocol kRouteProtocolTunnelAgent. ALREADY_EXISTS if present.
  absl::Status AddRoute(int ifindex, const IpPrefix& destination);
  absl::Status DeleteRoute(int ifindex, const IpPrefix& destination);
  // The main table's routes of protocol kRouteProtocolTunnelAgent (the ones AddRoute makes,
  // whoever added them), IPv4 and IPv6, in one dump, by output ifindex (each hop's link for a
  // multipath route), as destination/length. Other protocols' routes (the kernel's prefix
  // routes, static ones), other tables and cached exceptions are left out.
  absl::StatusOr<std::map<int, std::vector<IpPrefix>>> ListAgentRoutes();
  // The route the kernel would use to reach `destination` (what `ip route get` shows).
  // NOT_FOUND when there is none (no route, or an unreachable, prohibit or blackhole one).
  absl::StatusOr<RouteLookup> RouteGet(const IpAddress& destination);

  // The MTU of the path the kernel would use to reach `destination`: the route's MTU metric
  // if it has one, else the output device's MTU. NOT_FOUND / FAILED_PRECONDITION when
  // there is no route.
  absl::StatusOr<uint32_t> PathMtu(const IpAddress& destination);

  // Many requests in flight at once. The kernel handles the messages of one datagram in
  // order, each as if sent alone, and acknowledges each: `requests` go out up to
  // kRequestsInFlight to a datagram, so thousands cost a few dozen system calls and wake-ups
  // instead of two each. One status per request, in order, as the single call would answer
  // (a request the single call would refuse before sending is refused here the same way; the
  // others still go). Requests on one link are made in the order given.
  std::vector<absl::Status> Apply(const std::vector<LinkRequest>& requests);
  // RouteGet of each destination, the same way.
  std::vector<absl::StatusOr<RouteLookup>> RouteGetMany(const std::vector<IpAddress>& destinations);

  // At most this many requests wait for their answers: each answer is a datagram of its own
  // in the socket's receive buffer (about 1 KiB of it with the kernel's overhead), and one
  // that does not fit is lost (ENOBUFS). 64 answers, or 64 lookups with their ACKs, stay well
  // inside the default 208 KiB.
  static constexpr size_t kRequestsInFlight = 64;

 private:
  // A request of a batch: built (or refused, `status` says why) before anything is sent.
  struct BatchItem {
    std::vector<char> message;  // empty when refused
    std::string what;
    absl::Status status;
    int kernel_errno = 0;  // of the kernel's negative ACK, 0 when none
    // Sees each non-error reply message to this request (may be null).
    int (*on_message)(const void* nlh, void* arg) = nullptr;
    void* arg = nullptr;
  };
  // Sends the built items, kRequestsInFlight to a datagram, and files each answer (reply
  // messages, then the ACK) under its request by sequence number.
  void RunBatch(std::vector<BatchItem>& items) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One request of a LinkRequest, built and sent alone.
  absl::Status Send(const LinkRequest& request);
  explicit Netlink(mnl_socket* socket);
  // The RTM_GETROUTE request behind RouteGet and PathMtu. On failure `*kernel_errno` holds the
  // errno of the kernel's negative ACK (0 when the failure was not the kernel's answer), so
  // each caller says "no route" its own way.
  absl::StatusOr<RouteLookup> LookupRoute(const IpAddress& destination, const std::string& what,
                                          int* kernel_errno);
  // RTM_NEWLINK setting one 32-bit attribute (IFLA_MTU, IFLA_GROUP) of link `ifindex`.
  absl::Status SetLinkAttribute(int ifindex, uint16_t attribute, uint32_t value,
                                const std::string& what);
  // Sends one request built in `buf` and processes replies until the ACK; `on_message`
  // (may be null) sees each non-error reply message.
  absl::Status Transact(void* nlh, const std::string& what,
                        int (*on_message)(const void* nlh, void* arg), void* arg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  mnl_socket* socket_ ABSL_GUARDED_BY(mu_);
  uint32_t port_id_ = 0;
  uint32_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  // The errno of the kernel's negative ACK to the last Transact, 0 when there was none.
  int last_errno_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_NETLINK_H_
