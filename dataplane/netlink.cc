#include "dataplane/netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <string.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <optional>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {
namespace {

// Requests are a header, a fixed struct and a few small attributes (an alias at most 256 bytes).
constexpr size_t kRequestBufferSize = 1024;
// Link replies carry many attributes and dumps batch several messages per datagram; a short
// buffer would truncate them (the kernel recommends at least 32 KiB, or 8 KiB pages).
constexpr size_t kReceiveBufferSize = 32 * 1024;
// IFNAMSIZ includes the terminating NUL.
constexpr size_t kMaxLinkNameLength = IFNAMSIZ - 1;
// The kernel refuses an alias of IFALIASZ bytes or more (dev_set_alias).
constexpr size_t kMaxLinkAliasLength = IFALIASZ - 1;

absl::Status StatusFromErrno(int err, const std::string& what, const std::string& detail) {
  std::string message = absl::StrCat(what, ": ", ErrnoText(err));
  if (!detail.empty()) absl::StrAppend(&message, " (", detail, ")");
  return absl::Status(ErrnoCode(err), message);
}

uint8_t AddressFamily(const IpAddress& address) { return address.is_v4() ? AF_INET : AF_INET6; }

size_t AddressLength(const IpAddress& address) { return address.is_v4() ? 4 : 16; }

absl::Status CheckIfindex(int ifindex, const std::string& what) {
  if (ifindex <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid ifindex ", ifindex));
  }
  return absl::OkStatus();
}

absl::Status CheckPrefix(const IpPrefix& prefix, const std::string& what) {
  const IpAddress& address = prefix.address();
  if (!address.is_v4() && !address.is_v6()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": no address given"));
  }
  if (prefix.length() < 0 || prefix.length() > address.bit_length()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": invalid prefix length ", prefix.length()));
  }
  return absl::OkStatus();
}

std::string LinkName(int ifindex) { return absl::StrCat("link ", ifindex); }

// What Transact's callbacks share: the caller's handler and the kernel's verdict.
struct TransactContext {
  int (*on_message)(const void* nlh, void* arg) = nullptr;
  void* arg = nullptr;
  int error = 0;              // positive errno from an NLMSG_ERROR or NLMSG_DONE
  std::string kernel_detail;  // the extended ACK's message, when the kernel gave one
};

int ExtAckAttribute(const nlattr* attr, void* data) {
  auto* ctx = static_cast<TransactContext*>(data);
  if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
      mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) {
    ctx->kernel_detail = mnl_attr_get_str(attr);
  }
  return MNL_CB_OK;
}

int OnData(const nlmsghdr* nlh, void* data) {
  auto* ctx = static_cast<TransactContext*>(data);
  if (ctx->on_message == nullptr) return MNL_CB_OK;
  return ctx->on_message(nlh, ctx->arg);
}

// Replaces libmnl's default so the errno and the extended ACK message are kept, and so the
// kernel's errno is told apart from libmnl's own (EPROTO, ESRCH on a port mismatch).
int OnError(const nlmsghdr* nlh, void* data) {
  auto* ctx = static_cast<TransactContext*>(data);
  if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr))) {
    ctx->error = EBADMSG;
    return MNL_CB_ERROR;
  }
  const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
  if (err->error == 0) return MNL_CB_STOP;  // the ACK
  ctx->error = err->error < 0 ? -err->error : err->error;
  if (nlh->nlmsg_flags & NLM_F_ACK_TLVS) {
    // The TLVs follow the echoed request, which is only the header when capped.
    size_t offset = sizeof(nlmsgerr);
    if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) offset += err->msg.nlmsg_len - sizeof(nlmsghdr);
    const size_t payload_len = mnl_nlmsg_get_payload_len(nlh);
    if (offset < payload_len) {
      mnl_attr_parse_payload(static_cast<const char*>(mnl_nlmsg_get_payload(nlh)) + offset,
                             payload_len - offset, ExtAckAttribute, ctx);
    }
  }
  return MNL_CB_ERROR;
}

// A dump ends with NLMSG_DONE, which carries an errno when the dump failed part way.
int OnDone(const nlmsghdr* nlh, void* data) {
  auto* ctx = static_cast<TransactContext*>(data);
  if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(int)) {
    int error;
    memcpy(&error, mnl_nlmsg_get_payload(nlh), sizeof(error));
    if (error < 0) {
      ctx->error = -error;
      return MNL_CB_ERROR;
    }
  }
  return MNL_CB_STOP;
}

nlmsghdr* PutHeader(char* buf, uint16_t type, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = flags;
  return nlh;
}

// --- reply parsers ------------------------------------------------------------------------

struct LinkReply {
  bool seen = false;
  LinkInfo info;
};

struct LinkDump {
  bool interrupted = false;
  std::vector<LinkInfo> links;
};

// A string attribute's text, with or without the terminating NUL the kernel may add.
std::string AttributeString(const nlattr* attr) {
  const char* text = static_cast<const char*>(mnl_attr_get_payload(attr));
  const size_t len = mnl_attr_get_payload_len(attr);
  return std::string(text, strnlen(text, len));
}

int LinkInfoAttribute(const nlattr* attr, void* data) {
  auto* info = static_cast<LinkInfo*>(data);
  if (mnl_attr_get_type(attr) == IFLA_INFO_KIND) info->kind = AttributeString(attr);
  return MNL_CB_OK;
}

int LinkAttribute(const nlattr* attr, void* data) {
  auto* info = static_cast<LinkInfo*>(data);
  switch (mnl_attr_get_type(attr)) {
    case IFLA_IFNAME:
      if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) info->name = mnl_attr_get_str(attr);
      break;
    case IFLA_MTU:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) info->mtu = mnl_attr_get_u32(attr);
      break;
    case IFLA_IFALIAS:
      info->alias = AttributeString(attr);
      break;
    case IFLA_GROUP:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) info->group = mnl_attr_get_u32(attr);
      break;
    case IFLA_LINKINFO:
      if (mnl_attr_validate(attr, MNL_TYPE_NESTED) >= 0) {
        mnl_attr_parse_nested(attr, LinkInfoAttribute, info);
      }
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

// Fills `info` from an RTM_NEWLINK message; false when it is something else.
bool ParseLink(const nlmsghdr* nlh, LinkInfo* info) {
  if (nlh->nlmsg_type != RTM_NEWLINK || mnl_nlmsg_get_payload_len(nlh) < sizeof(ifinfomsg)) {
    return false;
  }
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  info->ifindex = ifi->ifi_index;
  info->up = (ifi->ifi_flags & IFF_UP) != 0;
  mnl_attr_parse(nlh, sizeof(ifinfomsg), LinkAttribute, info);
  return true;
}

int OnLink(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* reply = static_cast<LinkReply*>(arg);
  if (!reply->seen && ParseLink(nlh, &reply->info)) reply->seen = true;
  return MNL_CB_OK;
}

int OnLinkDump(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* dump = static_cast<LinkDump*>(arg);
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) dump->interrupted = true;
  LinkInfo info;
  if (ParseLink(nlh, &info)) dump->links.push_back(std::move(info));
  return MNL_CB_OK;
}

// An address attribute of `family` (network order), or nullopt when its length does not fit.
std::optional<IpAddress> AttributeAddress(uint8_t family, const void* payload, size_t len) {
  if (family == AF_INET && len == 4) {
    uint32_t network_order;
    memcpy(&network_order, payload, 4);
    return IpAddress::V4(ntohl(network_order));
  }
  if (family == AF_INET6 && len == 16) {
    std::array<uint8_t, 16> bytes;
    memcpy(bytes.data(), payload, 16);
    return IpAddress::V6(bytes);
  }
  return std::nullopt;
}

std::optional<IpAddress> AttributeAddress(uint8_t family, const nlattr* attr) {
  return AttributeAddress(family, mnl_attr_get_payload(attr), mnl_attr_get_payload_len(attr));
}

// The reply to a single-address RTM_GETROUTE.
struct RouteReply {
  bool seen = false;
  uint8_t family = 0;
  RouteLookup route;
};

int MetricAttribute(const nlattr* attr, void* data) {
  auto* reply = static_cast<RouteReply*>(data);
  if (mnl_attr_get_type(attr) == RTAX_MTU && mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
    reply->route.mtu_metric = mnl_attr_get_u32(attr);
  }
  return MNL_CB_OK;
}

int RouteAttribute(const nlattr* attr, void* data) {
  auto* reply = static_cast<RouteReply*>(data);
  switch (mnl_attr_get_type(attr)) {
    case RTA_OIF:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
        reply->route.ifindex = static_cast<int>(mnl_attr_get_u32(attr));
      }
      break;
    case RTA_GATEWAY:
      reply->route.gateway = AttributeAddress(reply->family, attr);
      break;
    case RTA_VIA: {
      // A next hop of the other family (an IPv4 route via an IPv6 neighbour).
      const size_t len = mnl_attr_get_payload_len(attr);
      if (len >= sizeof(rtvia)) {
        const auto* via = static_cast<const rtvia*>(mnl_attr_get_payload(attr));
        reply->route.gateway = AttributeAddress(static_cast<uint8_t>(via->rtvia_family),
                                                via->rtvia_addr, len - sizeof(rtvia));
      }
      break;
    }
    case RTA_PREFSRC:
      reply->route.source = AttributeAddress(reply->family, attr);
      break;
    case RTA_METRICS:
      if (mnl_attr_validate(attr, MNL_TYPE_NESTED) >= 0) {
        mnl_attr_parse_nested(attr, MetricAttribute, reply);
      }
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int OnRoute(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* reply = static_cast<RouteReply*>(arg);
  if (nlh->nlmsg_type != RTM_NEWROUTE || reply->seen ||
      mnl_nlmsg_get_payload_len(nlh) < sizeof(rtmsg)) {
    return MNL_CB_OK;
  }
  reply->seen = true;
  reply->family = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(nlh))->rtm_family;
  mnl_attr_parse(nlh, sizeof(rtmsg), RouteAttribute, reply);
  return MNL_CB_OK;
}

// The kernel's answers to a route lookup when it has no usable route: none at all
// (ENETUNREACH), an `unreachable` route (EHOSTUNREACH), a `prohibit` one (EACCES) or a
// `blackhole` one (EINVAL). The request itself is checked before it is sent.
bool IsNoRouteErrno(int err) {
  return err == ENETUNREACH || err == EHOSTUNREACH || err == EACCES || err == EINVAL;
}

// --- route dump ---------------------------------------------------------------------------

struct AgentRouteDump {
  bool interrupted = false;
  std::map<int, std::vector<IpPrefix>> routes;
};

struct RouteDumpAttributes {
  uint8_t family = 0;
  uint32_t table = 0;
  std::optional<IpAddress> destination;
  bool destination_malformed = false;
  std::vector<int> links;
};

// RTA_MULTIPATH: a sequence of rtnexthop, each followed by its own attributes.
void MultipathLinks(const nlattr* attr, std::vector<int>* links) {
  const char* cursor = static_cast<const char*>(mnl_attr_get_payload(attr));
  size_t remaining = mnl_attr_get_payload_len(attr);
  while (remaining >= sizeof(rtnexthop)) {
    rtnexthop hop;
    memcpy(&hop, cursor, sizeof(hop));
    if (hop.rtnh_len < sizeof(rtnexthop) || hop.rtnh_len > remaining) break;
    if (hop.rtnh_ifindex > 0) links->push_back(hop.rtnh_ifindex);
    const size_t step = RTNH_ALIGN(hop.rtnh_len);
    if (step >= remaining) break;
    cursor += step;
    remaining -= step;
  }
}

int RouteDumpAttribute(const nlattr* attr, void* data) {
  auto* attrs = static_cast<RouteDumpAttributes*>(data);
  switch (mnl_attr_get_type(attr)) {
    case RTA_TABLE:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) attrs->table = mnl_attr_get_u32(attr);
      break;
    case RTA_DST:
      attrs->destination = AttributeAddress(attrs->family, attr);
      attrs->destination_malformed = !attrs->destination.has_value();
      break;
    case RTA_OIF:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
        attrs->links.push_back(static_cast<int>(mnl_attr_get_u32(attr)));
      }
      break;
    case RTA_MULTIPATH:
      MultipathLinks(attr, &attrs->links);
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int OnAgentRoute(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* dump = static_cast<AgentRouteDump*>(arg);
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) dump->interrupted = true;
  if (nlh->nlmsg_type != RTM_NEWROUTE || mnl_nlmsg_get_payload_len(nlh) < sizeof(rtmsg)) {
    return MNL_CB_OK;
  }
  const auto* rtm = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(nlh));
  // Checked here too: a kernel without strict checking ignores the request's filter. Cloned
  // entries are the kernel's exceptions (a learned path MTU) below a route, not routes.
  if (rtm->rtm_protocol != kRouteProtocolTunnelAgent || (rtm->rtm_flags & RTM_F_CLONED) ||
      (rtm->rtm_family != AF_INET && rtm->rtm_family != AF_INET6)) {
    return MNL_CB_OK;
  }
  RouteDumpAttributes attrs;
  attrs.family = rtm->rtm_family;
  attrs.table = rtm->rtm_table;  // RTA_TABLE, when present, holds table ids above 255
  mnl_attr_parse(nlh, sizeof(rtmsg), RouteDumpAttribute, &attrs);
  if (attrs.table != RT_TABLE_MAIN || attrs.destination_malformed) return MNL_CB_OK;
  // Without RTA_DST the route is a default route (length 0).
  const IpAddress destination =
      attrs.destination.has_value()
          ? *attrs.destination
          : (attrs.family == AF_INET ? IpAddress::V4(0) : IpAddress::V6({}));
  if (rtm->rtm_dst_len > destination.bit_length()) return MNL_CB_OK;
  const IpPrefix prefix(destination, rtm->rtm_dst_len);
  for (int link : attrs.links) dump->routes[link].push_back(prefix);
  return MNL_CB_OK;
}

// --- address dumps ------------------------------------------------------------------------

struct AddressAttributes {
  const nlattr* local = nullptr;
  const nlattr* address = nullptr;
  uint8_t protocol = 0;  // IFA_PROTO: who added the address, 0 when the kernel does not say
};

int AddressAttribute(const nlattr* attr, void* data) {
  auto* attrs = static_cast<AddressAttributes*>(data);
  switch (mnl_attr_get_type(attr)) {
    case IFA_LOCAL:
      attrs->local = attr;
      break;
    case IFA_ADDRESS:
      attrs->address = attr;
      break;
    case IFA_PROTO:
      if (mnl_attr_validate(attr, MNL_TYPE_U8) >= 0) attrs->protocol = mnl_attr_get_u8(attr);
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

struct ParsedAddress {
  int ifindex = 0;
  IpPrefix prefix;
  uint8_t protocol = 0;
};

// One RTM_NEWADDR message; nullopt for anything else.
std::optional<ParsedAddress> ParseAddress(const nlmsghdr* nlh) {
  if (nlh->nlmsg_type != RTM_NEWADDR || mnl_nlmsg_get_payload_len(nlh) < sizeof(ifaddrmsg)) {
    return std::nullopt;
  }
  const auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(nlh));
  AddressAttributes attrs;
  mnl_attr_parse(nlh, sizeof(ifaddrmsg), AddressAttribute, &attrs);
  // IFA_ADDRESS is the peer on a point-to-point address; IFA_LOCAL, when present, is ours.
  const nlattr* attr = attrs.local != nullptr ? attrs.local : attrs.address;
  if (attr == nullptr) return std::nullopt;
  std::optional<IpAddress> address = AttributeAddress(ifa->ifa_family, attr);
  if (!address.has_value() || ifa->ifa_prefixlen > address->bit_length()) return std::nullopt;
  return ParsedAddress{static_cast<int>(ifa->ifa_index), IpPrefix(*address, ifa->ifa_prefixlen),
                       attrs.protocol};
}

struct AddressDump {
  int ifindex = 0;
  bool interrupted = false;
  std::vector<IpPrefix> addresses;
};

int OnAddress(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* dump = static_cast<AddressDump*>(arg);
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) dump->interrupted = true;
  std::optional<ParsedAddress> parsed = ParseAddress(nlh);
  // Without strict checking the kernel dumps every link's addresses.
  if (!parsed.has_value() || parsed->ifindex != dump->ifindex) return MNL_CB_OK;
  dump->addresses.push_back(parsed->prefix);
  return MNL_CB_OK;
}

// IPv6 link-local addresses (fe80::/10) come with every link that goes up; SLAAC ones with
// router advertisements. Neither was configured by anyone.
bool IsKernelConfigured(const ParsedAddress& address) {
  if (address.protocol == IFAPROT_KERNEL_LL || address.protocol == IFAPROT_KERNEL_RA) return true;
  const IpAddress& ip = address.prefix.address();
  return ip.is_v6() && ip.bytes()[0] == 0xfe && (ip.bytes()[1] & 0xc0) == 0x80;
}

struct AllAddressDump {
  bool interrupted = false;
  std::map<int, std::vector<IpPrefix>> addresses;
};

int OnAnyAddress(const void* msg, void* arg) {
  const auto* nlh = static_cast<const nlmsghdr*>(msg);
  auto* dump = static_cast<AllAddressDump*>(arg);
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) dump->interrupted = true;
  std::optional<ParsedAddress> parsed = ParseAddress(nlh);
  if (!parsed.has_value() || IsKernelConfigured(*parsed)) return MNL_CB_OK;
  dump->addresses[parsed->ifindex].push_back(parsed->prefix);
  return MNL_CB_OK;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Netlink>> Netlink::Open() {
  mnl_socket* socket = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (socket == nullptr) {
    const int err = errno;
    return StatusFromErrno(err, "opening a NETLINK_ROUTE socket", "");
  }
  if (mnl_socket_bind(socket, 0, MNL_SOCKET_AUTOPID) < 0) {
    const int err = errno;
    mnl_socket_close(socket);
    return StatusFromErrno(err, "binding the NETLINK_ROUTE socket", "");
  }
  // Best effort: the kernel's own explanation of a rejection (extended ACK) makes errors far
  // clearer than errno alone, and capping ACKs stops each error echoing the whole request.
  int one = 1;
  mnl_socket_setsockopt(socket, NETLINK_EXT_ACK, &one, sizeof(one));
  mnl_socket_setsockopt(socket, NETLINK_CAP_ACK, &one, sizeof(one));
  // Best effort too: with strict checking the kernel applies a dump request's filters (the
  // route protocol, the link of an address dump) instead of sending everything, which matters
  // on a node with a large routing table. The parsers filter again for kernels without it.
  mnl_socket_setsockopt(socket, NETLINK_GET_STRICT_CHK, &one, sizeof(one));
  return std::unique_ptr<Netlink>(new Netlink(socket));
}

Netlink::Netlink(mnl_socket* socket) : socket_(socket), port_id_(mnl_socket_get_portid(socket)) {}

Netlink::~Netlink() { mnl_socket_close(socket_); }

absl::Status Netlink::Transact(void* request, const std::string& what,
                               int (*on_message)(const void* nlh, void* arg), void* arg) {
  auto* nlh = static_cast<nlmsghdr*>(request);
  const uint32_t seq = ++seq_;
  last_errno_ = 0;
  nlh->nlmsg_seq = seq;
  nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
    const int err = errno;
    return StatusFromErrno(err, what, "sending the request");
  }

  TransactContext ctx;
  ctx.on_message = on_message;
  ctx.arg = arg;
  mnl_cb_t control[NLMSG_MIN_TYPE] = {};
  control[NLMSG_ERROR] = OnError;
  control[NLMSG_DONE] = OnDone;
  std::vector<char> buf(kReceiveBufferSize);
  while (true) {
    const ssize_t n = mnl_socket_recvfrom(socket_, buf.data(), buf.size());
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      // ENOSPC here means a reply was truncated; never a property of the request.
      return absl::InternalError(absl::StrCat(what, ": receiving the reply: ", ErrnoText(err)));
    }
    // Replies to an earlier request whose reader gave up (a failed receive) may still be
    // queued; every datagram answers a single request, so drop those whole.
    const auto* first = reinterpret_cast<const nlmsghdr*>(buf.data());
    if (mnl_nlmsg_ok(first, static_cast<int>(n)) && first->nlmsg_seq != seq) continue;

    ctx.error = 0;
    const int ret =
        mnl_cb_run2(buf.data(), n, seq, port_id_, OnData, &ctx, control, NLMSG_MIN_TYPE);
    if (ret == MNL_CB_OK) continue;
    if (ret == MNL_CB_STOP) return absl::OkStatus();
    if (ctx.error != 0) {
      last_errno_ = ctx.error;
      return StatusFromErrno(ctx.error, what, ctx.kernel_detail);
    }
    // libmnl's own checks (sequence or port mismatch, malformed message) or a parser failure.
    return absl::InternalError(absl::StrCat(what, ": bad netlink reply: ", ErrnoText(errno)));
  }
}

absl::Status Netlink::SetLinkAttribute(int ifindex, uint16_t attribute, uint32_t value,
                                       const std::string& what) {
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_NEWLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  mnl_attr_put_u32(nlh, attribute, value);
  absl::MutexLock lock(&mu_);
  return Transact(nlh, what, nullptr, nullptr);
}

absl::Status Netlink::DeleteLink(int ifindex) {
  const std::string what = absl::StrCat("deleting ", LinkName(ifindex));
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_DELLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  absl::MutexLock lock(&mu_);
  return Transact(nlh, what, nullptr, nullptr);
}

absl::Status Netlink::SetLinkGroup(int ifindex, uint32_t group) {
  return SetLinkAttribute(ifindex, IFLA_GROUP, group,
                          absl::StrCat("putting ", LinkName(ifindex), " in link group ", group));
}

absl::Status Netlink::DeleteLinkGroup(uint32_t group) {
  const std::string what = absl::StrCat("deleting the links of group ", group);
  // Group 0 holds every link nobody grouped: the host's own among them.
  if (group == 0) return absl::InvalidArgumentError(what + ": the default group is not deleted");
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_DELLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = 0;  // no link named: the kernel takes IFLA_GROUP (rtnl_group_dellink)
  mnl_attr_put_u32(nlh, IFLA_GROUP, group);
  absl::MutexLock lock(&mu_);
  return Transact(nlh, what, nullptr, nullptr);
}

absl::Status Netlink::SetNoQueue(int ifindex) {
  const std::string what = absl::StrCat("making noqueue the qdisc of ", LinkName(ifindex));
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE);
  auto* tcm = static_cast<tcmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(tcmsg)));
  tcm->tcm_family = AF_UNSPEC;
  tcm->tcm_ifindex = ifindex;
  tcm->tcm_handle = 0;
  tcm->tcm_parent = TC_H_ROOT;
  mnl_attr_put_strz(nlh, TCA_KIND, "noqueue");
  absl::MutexLock lock(&mu_);
  return Transact(nlh, what, nullptr, nullptr);
}

absl::Status Netlink::SetLinkAlias(int ifindex, const std::string& alias) {
  const std::string what =
      absl::StrCat("setting the alias of ", LinkName(ifindex), " to \"", alias, "\"");
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  if (alias.size() > kMaxLinkAliasLength || alias.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": an alias has at most ", kMaxLinkAliasLength, " bytes and no NUL"));
  }
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_NEWLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  // Without the NUL, as iproute2 sends it: the kernel takes the attribute's length as the
  // alias's, and a length of 0 removes the alias.
  mnl_attr_put(nlh, IFLA_IFALIAS, alias.size(), alias.data());
  absl::MutexLock lock(&mu_);
  return Transact(nlh, what, nullptr, nullptr);
}

absl::StatusOr<LinkInfo> Netlink::GetLink(int ifindex) {
  const std::string what = absl::StrCat("looking up ", LinkName(ifindex));
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_GETLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  // Statistics are most of a link reply and unused here.
  mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  LinkReply reply;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Transact(nlh, what, OnLink, &reply); !s.ok()) return s;
  if (!reply.seen) return absl::InternalError(absl::StrCat(what, ": no link in the reply"));
  return reply.info;
}

absl::StatusOr<LinkInfo> Netlink::GetLinkByName(const std::string& name) {
  const std::string what = absl::StrCat("looking up link \"", name, "\"");
  if (name.empty() || name.size() > kMaxLinkNameLength || name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a link name has 1 to ", kMaxLinkNameLength, " characters"));
  }
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_GETLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  LinkReply reply;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Transact(nlh, what, OnLink, &reply); !s.ok()) return s;
  if (!reply.seen) return absl::InternalError(absl::StrCat(what, ": no link in the reply"));
  return reply.info;
}

namespace {

// A dump that raced with a change is flagged inconsistent (NLM_F_DUMP_INTR); a retry normally
// gets a clean one. `dump_once` makes one dump into what its caller keeps and says whether it
// was interrupted.
absl::Status DumpConsistently(absl::string_view what,
                              absl::FunctionRef<absl::StatusOr<bool>()> dump_once) {
  constexpr int kAttempts = 3;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    absl::StatusOr<bool> interrupted = dump_once();
    if (!interrupted.ok()) return interrupted.status();
    if (!*interrupted) return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat(what, ": the dump kept being interrupted"));
}

}  // namespace

absl::StatusOr<std::vector<LinkInfo>> Netlink::ListLinks() {
  const std::string what = "listing the links";
  LinkDump dump;
  absl::Status status = DumpConsistently(what, [&]() -> absl::StatusOr<bool> {
    alignas(nlmsghdr) char buf[kRequestBufferSize];
    nlmsghdr* nlh = PutHeader(buf, RTM_GETLINK, NLM_F_DUMP);
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    ifi->ifi_family = AF_UNSPEC;
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    dump = LinkDump();
    absl::MutexLock lock(&mu_);
    if (absl::Status s = Transact(nlh, what, OnLinkDump, &dump); !s.ok()) return s;
    return dump.interrupted;
  });
  if (!status.ok()) return status;
  std::sort(dump.links.begin(), dump.links.end(),
            [](const LinkInfo& a, const LinkInfo& b) { return a.ifindex < b.ifindex; });
  return std::move(dump.links);
}

namespace {

// RTM_NEWADDR / RTM_DELADDR share their layout.
nlmsghdr* PutAddressRequest(char* buf, uint16_t type, uint16_t flags, int ifindex,
                            const IpPrefix& prefix) {
  const IpAddress& address = prefix.address();
  nlmsghdr* nlh = PutHeader(buf, type, flags);
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AddressFamily(address);
  ifa->ifa_prefixlen = static_cast<uint8_t>(prefix.length());
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = ifindex;
  if (address.is_v4()) {
    // IFA_ADDRESS alone would make it a point-to-point peer; both equal means a plain address.
    mnl_attr_put(nlh, IFA_LOCAL, 4, address.bytes().data());
    mnl_attr_put(nlh, IFA_ADDRESS, 4, address.bytes().data());
  } else {
    mnl_attr_put(nlh, IFA_ADDRESS, 16, address.bytes().data());
    // Without this the address stays tentative (unbindable) for a second or more of DAD,
    // pointless on a tunnel whose far end cannot hold the same address.
    ifa->ifa_flags = IFA_F_NODAD;
    mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_NODAD);
  }
  return nlh;
}

// RTM_NEWROUTE / RTM_DELROUTE share their layout.
nlmsghdr* PutRouteRequest(char* buf, uint16_t type, uint16_t flags, uint8_t scope, int ifindex,
                          const IpPrefix& destination) {
  const IpAddress& address = destination.address();
  nlmsghdr* nlh = PutHeader(buf, type, flags);
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AddressFamily(address);
  rtm->rtm_dst_len = static_cast<uint8_t>(destination.length());
  rtm->rtm_table = RT_TABLE_MAIN;
  rtm->rtm_protocol = kRouteProtocolTunnelAgent;
  rtm->rtm_scope = scope;
  rtm->rtm_type = RTN_UNICAST;
  mnl_attr_put(nlh, RTA_DST, AddressLength(address), address.bytes().data());
  mnl_attr_put_u32(nlh, RTA_OIF, ifindex);
  return nlh;
}

// Builds the request for `r` into `out` and says in `what` what it does; the single calls and
// Apply send the same. The checks the kernel would make less clearly are made here.
absl::Status BuildLinkRequest(const LinkRequest& r, std::vector<char>* out, std::string* what) {
  using Kind = LinkRequest::Kind;
  const int ifindex = r.ifindex;
  switch (r.kind) {
    case Kind::kSetUp:
    case Kind::kSetDown:
      *what = absl::StrCat("setting ", LinkName(ifindex), r.kind == Kind::kSetUp ? " up" : " down");
      break;
    case Kind::kSetMtu:
      *what = absl::StrCat("setting the MTU of ", LinkName(ifindex), " to ", r.mtu);
      break;
    case Kind::kAddAddress:
      *what = absl::StrCat("adding address ", r.prefix.ToString(), " to ", LinkName(ifindex));
      break;
    case Kind::kDeleteAddress:
      *what = absl::StrCat("deleting address ", r.prefix.ToString(), " from ", LinkName(ifindex));
      break;
    case Kind::kAddRoute:
      *what = absl::StrCat("adding route ", r.prefix.ToString(), " via ", LinkName(ifindex));
      break;
    case Kind::kDeleteRoute:
      *what = absl::StrCat("deleting route ", r.prefix.ToString(), " via ", LinkName(ifindex));
      break;
  }
  if (absl::Status s = CheckIfindex(ifindex, *what); !s.ok()) return s;
  const bool prefixed =
      r.kind != Kind::kSetUp && r.kind != Kind::kSetDown && r.kind != Kind::kSetMtu;
  if (prefixed) {
    if (absl::Status s = CheckPrefix(r.prefix, *what); !s.ok()) return s;
  }
  if (r.kind == Kind::kAddRoute && !r.prefix.is_network()) {
    return absl::InvalidArgumentError(absl::StrCat(*what, ": host bits are set"));
  }
  out->assign(kRequestBufferSize, 0);
  char* buf = out->data();
  nlmsghdr* nlh = nullptr;
  switch (r.kind) {
    case Kind::kSetUp:
    case Kind::kSetDown:
    case Kind::kSetMtu: {
      nlh = PutHeader(buf, RTM_NEWLINK, 0);
      auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
      ifi->ifi_family = AF_UNSPEC;
      ifi->ifi_index = ifindex;
      if (r.kind == Kind::kSetMtu) {
        mnl_attr_put_u32(nlh, IFLA_MTU, r.mtu);
      } else {
        ifi->ifi_flags = r.kind == Kind::kSetUp ? IFF_UP : 0;
        ifi->ifi_change = IFF_UP;
      }
      break;
    }
    case Kind::kAddAddress:
      nlh = PutAddressRequest(buf, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifindex, r.prefix);
      break;
    case Kind::kDeleteAddress:
      nlh = PutAddressRequest(buf, RTM_DELADDR, 0, ifindex, r.prefix);
      break;
    case Kind::kAddRoute:
      nlh = PutRouteRequest(buf, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, RT_SCOPE_LINK, ifindex,
                            r.prefix);
      break;
    case Kind::kDeleteRoute:
      // Scope "nowhere" matches any scope on delete; the protocol limits it to the agent's
      // routes.
      nlh = PutRouteRequest(buf, RTM_DELROUTE, 0, RT_SCOPE_NOWHERE, ifindex, r.prefix);
      break;
  }
  out->resize(nlh->nlmsg_len);
  return absl::OkStatus();
}

// The RTM_GETROUTE of a route lookup (`ip route get DESTINATION`).
void BuildRouteLookup(const IpAddress& destination, std::vector<char>* out) {
  out->assign(kRequestBufferSize, 0);
  nlmsghdr* nlh = PutHeader(out->data(), RTM_GETROUTE, 0);
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AddressFamily(destination);
  rtm->rtm_dst_len = static_cast<uint8_t>(destination.bit_length());
  mnl_attr_put(nlh, RTA_DST, AddressLength(destination), destination.bytes().data());
  out->resize(nlh->nlmsg_len);
}

}  // namespace

absl::Status Netlink::Send(const LinkRequest& request) {
  std::vector<char> message;
  std::string what;
  if (absl::Status s = BuildLinkRequest(request, &message, &what); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  return Transact(message.data(), what, nullptr, nullptr);
}

absl::Status Netlink::SetLinkUp(int ifindex, bool up) {
  return Send(
      {.kind = up ? LinkRequest::Kind::kSetUp : LinkRequest::Kind::kSetDown, .ifindex = ifindex});
}

absl::Status Netlink::SetLinkMtu(int ifindex, uint32_t mtu) {
  return Send({.kind = LinkRequest::Kind::kSetMtu, .ifindex = ifindex, .mtu = mtu});
}

absl::Status Netlink::AddAddress(int ifindex, const IpPrefix& address) {
  return Send({.kind = LinkRequest::Kind::kAddAddress, .ifindex = ifindex, .prefix = address});
}

absl::Status Netlink::DeleteAddress(int ifindex, const IpPrefix& address) {
  return Send({.kind = LinkRequest::Kind::kDeleteAddress, .ifindex = ifindex, .prefix = address});
}

absl::Status Netlink::AddRoute(int ifindex, const IpPrefix& destination) {
  return Send({.kind = LinkRequest::Kind::kAddRoute, .ifindex = ifindex, .prefix = destination});
}

absl::Status Netlink::DeleteRoute(int ifindex, const IpPrefix& destination) {
  return Send({.kind = LinkRequest::Kind::kDeleteRoute, .ifindex = ifindex, .prefix = destination});
}

absl::StatusOr<std::vector<IpPrefix>> Netlink::ListAddresses(int ifindex) {
  const std::string what = absl::StrCat("listing the addresses of ", LinkName(ifindex));
  if (absl::Status s = CheckIfindex(ifindex, what); !s.ok()) return s;
  AddressDump dump;
  absl::Status status = DumpConsistently(what, [&]() -> absl::StatusOr<bool> {
    alignas(nlmsghdr) char buf[kRequestBufferSize];
    nlmsghdr* nlh = PutHeader(buf, RTM_GETADDR, NLM_F_DUMP);
    auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
    ifa->ifa_family = AF_UNSPEC;
    ifa->ifa_index = ifindex;
    dump = AddressDump();
    dump.ifindex = ifindex;
    absl::MutexLock lock(&mu_);
    if (absl::Status s = Transact(nlh, what, OnAddress, &dump); !s.ok()) return s;
    return dump.interrupted;
  });
  if (!status.ok()) return status;
  return std::move(dump.addresses);
}

absl::StatusOr<std::map<int, std::vector<IpPrefix>>> Netlink::ListAllAddresses() {
  const std::string what = "listing the addresses of every link";
  AllAddressDump dump;
  absl::Status status = DumpConsistently(what, [&]() -> absl::StatusOr<bool> {
    alignas(nlmsghdr) char buf[kRequestBufferSize];
    nlmsghdr* nlh = PutHeader(buf, RTM_GETADDR, NLM_F_DUMP);
    auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
    ifa->ifa_family = AF_UNSPEC;
    dump = AllAddressDump();
    absl::MutexLock lock(&mu_);
    if (absl::Status s = Transact(nlh, what, OnAnyAddress, &dump); !s.ok()) return s;
    return dump.interrupted;
  });
  if (!status.ok()) return status;
  return std::move(dump.addresses);
}

absl::StatusOr<std::map<int, std::vector<IpPrefix>>> Netlink::ListAgentRoutes() {
  const std::string what = "listing the agent's routes";
  AgentRouteDump dump;
  absl::Status status = DumpConsistently(what, [&]() -> absl::StatusOr<bool> {
    alignas(nlmsghdr) char buf[kRequestBufferSize];
    nlmsghdr* nlh = PutHeader(buf, RTM_GETROUTE, NLM_F_DUMP);
    auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
    rtm->rtm_family = AF_UNSPEC;
    // The protocol alone as the kernel-side filter: every family of an AF_UNSPEC dump accepts
    // it, while MPLS refuses a table in the header and would fail the whole dump.
    rtm->rtm_protocol = kRouteProtocolTunnelAgent;
    dump = AgentRouteDump();
    absl::MutexLock lock(&mu_);
    if (absl::Status s = Transact(nlh, what, OnAgentRoute, &dump); !s.ok()) return s;
    return dump.interrupted;
  });
  if (!status.ok()) return status;
  return std::move(dump.routes);
}

absl::StatusOr<RouteLookup> Netlink::LookupRoute(const IpAddress& destination,
                                                 const std::string& what, int* kernel_errno) {
  *kernel_errno = 0;
  alignas(nlmsghdr) char buf[kRequestBufferSize];
  nlmsghdr* nlh = PutHeader(buf, RTM_GETROUTE, 0);
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AddressFamily(destination);
  rtm->rtm_dst_len = static_cast<uint8_t>(destination.bit_length());
  mnl_attr_put(nlh, RTA_DST, AddressLength(destination), destination.bytes().data());
  RouteReply reply;
  {
    absl::MutexLock lock(&mu_);
    absl::Status s = Transact(nlh, what, OnRoute, &reply);
    if (!s.ok()) {
      *kernel_errno = last_errno_;
      return s;
    }
  }
  if (!reply.seen) return absl::InternalError(absl::StrCat(what, ": no route in the reply"));
  return reply.route;
}

absl::StatusOr<RouteLookup> Netlink::RouteGet(const IpAddress& destination) {
  if (!destination.is_v4() && !destination.is_v6()) {
    return absl::InvalidArgumentError("looking up the route: no destination given");
  }
  const std::string what = absl::StrCat("looking up the route to ", destination.ToString());
  int kernel_errno = 0;
  absl::StatusOr<RouteLookup> route = LookupRoute(destination, what, &kernel_errno);
  if (!route.ok() && IsNoRouteErrno(kernel_errno)) {
    return absl::NotFoundError(
        absl::StrCat("no route to ", destination.ToString(), ": ", ErrnoText(kernel_errno)));
  }
  return route;
}

absl::StatusOr<uint32_t> Netlink::PathMtu(const IpAddress& destination) {
  if (!destination.is_v4() && !destination.is_v6()) {
    return absl::InvalidArgumentError("finding the path MTU: no destination given");
  }
  const std::string what = absl::StrCat("finding the path MTU to ", destination.ToString());
  int kernel_errno = 0;
  absl::StatusOr<RouteLookup> route = LookupRoute(destination, what, &kernel_errno);
  if (!route.ok()) {
    // Neither the caller's arguments nor its permissions are at fault: the routing table has
    // to change.
    if (IsNoRouteErrno(kernel_errno)) {
      return absl::FailedPreconditionError(
          absl::StrCat("no route to ", destination.ToString(), ": ", ErrnoText(kernel_errno)));
    }
    return route.status();
  }
  if (route->mtu_metric != 0) return route->mtu_metric;
  if (route->ifindex <= 0) {
    return absl::InternalError(absl::StrCat(what, ": the route has no output device"));
  }
  absl::StatusOr<LinkInfo> link = GetLink(route->ifindex);
  if (!link.ok()) return link.status();
  return link->mtu;
}

void Netlink::RunBatch(std::vector<BatchItem>& items) {
  std::vector<char> datagram;
  std::vector<char> buf(kReceiveBufferSize);
  // The items of the datagram in flight, by sequence number less `first_seq`.
  std::vector<size_t> in_flight;
  size_t next = 0;
  while (next < items.size()) {
    datagram.clear();
    in_flight.clear();
    const uint32_t first_seq = seq_ + 1;
    for (; next < items.size() && in_flight.size() < kRequestsInFlight; ++next) {
      BatchItem& item = items[next];
      if (item.message.empty()) continue;  // refused before sending
      auto* nlh = reinterpret_cast<nlmsghdr*>(item.message.data());
      nlh->nlmsg_seq = ++seq_;
      nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
      datagram.insert(datagram.end(), item.message.begin(),
                      item.message.begin() + NLMSG_ALIGN(nlh->nlmsg_len));
      in_flight.push_back(next);
    }
    if (in_flight.empty()) break;
    if (mnl_socket_sendto(socket_, datagram.data(), datagram.size()) < 0) {
      const int err = errno;
      for (size_t i : in_flight) {
        items[i].status = StatusFromErrno(err, items[i].what, "sending the request");
      }
      continue;
    }
    std::vector<bool> answered(in_flight.size(), false);
    size_t waiting = in_flight.size();
    while (waiting > 0) {
      const ssize_t n = mnl_socket_recvfrom(socket_, buf.data(), buf.size());
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        // ENOBUFS: answers were lost; ENOSPC: one was truncated. Those not read are unknown.
        for (size_t k = 0; k < in_flight.size(); ++k) {
          if (answered[k]) continue;
          items[in_flight[k]].status = absl::InternalError(
              absl::StrCat(items[in_flight[k]].what, ": receiving the reply: ", ErrnoText(err)));
        }
        break;
      }
      int remaining = static_cast<int>(n);
      for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(nlh, remaining);
           nlh = mnl_nlmsg_next(nlh, &remaining)) {
        // An answer to an earlier request whose reader gave up is not ours.
        const uint32_t k = nlh->nlmsg_seq - first_seq;  // wraps to a large number when older
        if (k >= in_flight.size() || answered[k]) continue;
        BatchItem& item = items[in_flight[k]];
        if (nlh->nlmsg_type == NLMSG_ERROR || nlh->nlmsg_type == NLMSG_DONE) {
          TransactContext ctx;
          if (nlh->nlmsg_type == NLMSG_ERROR && OnError(nlh, &ctx) != MNL_CB_STOP) {
            item.kernel_errno = ctx.error;
            item.status = StatusFromErrno(ctx.error, item.what, ctx.kernel_detail);
          }
          answered[k] = true;
          --waiting;
        } else if (item.on_message != nullptr) {
          item.on_message(nlh, item.arg);
        }
      }
    }
  }
}

std::vector<absl::Status> Netlink::Apply(const std::vector<LinkRequest>& requests) {
  std::vector<BatchItem> items(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    items[i].status = BuildLinkRequest(requests[i], &items[i].message, &items[i].what);
    if (!items[i].status.ok()) items[i].message.clear();
  }
  {
    absl::MutexLock lock(&mu_);
    RunBatch(items);
  }
  std::vector<absl::Status> statuses;
  statuses.reserve(items.size());
  for (BatchItem& item : items) statuses.push_back(std::move(item.status));
  return statuses;
}

std::vector<absl::StatusOr<RouteLookup>> Netlink::RouteGetMany(
    const std::vector<IpAddress>& destinations) {
  std::vector<BatchItem> items(destinations.size());
  std::vector<RouteReply> replies(destinations.size());
  for (size_t i = 0; i < destinations.size(); ++i) {
    const IpAddress& destination = destinations[i];
    if (!destination.is_v4() && !destination.is_v6()) {
      items[i].status = absl::InvalidArgumentError("looking up the route: no destination given");
      continue;
    }
    items[i].what = absl::StrCat("looking up the route to ", destination.ToString());
    BuildRouteLookup(destination, &items[i].message);
    items[i].on_message = OnRoute;
    items[i].arg = &replies[i];
  }
  {
    absl::MutexLock lock(&mu_);
    RunBatch(items);
  }
  std::vector<absl::StatusOr<RouteLookup>> routes;
  routes.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const BatchItem& item = items[i];
    if (!item.status.ok()) {
      // As RouteGet words it.
      routes.push_back(
          IsNoRouteErrno(item.kernel_errno)
              ? absl::NotFoundError(absl::StrCat("no route to ", destinations[i].ToString(), ": ",
                                                 ErrnoText(item.kernel_errno)))
              : item.status);
    } else if (!replies[i].seen) {
      routes.push_back(absl::InternalError(absl::StrCat(item.what, ": no route in the reply")));
    } else {
      routes.push_back(replies[i].route);
    }
  }
  return routes;
}

}  // namespace tunnelagent::dataplane
