#include "dataplane/tunnel_datapath.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dataplane/engine_support.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/icmp.h"

namespace tunnelagent::dataplane {
namespace {

constexpr uint16_t kIpv4FlagDontFragment = 0x4000;
constexpr uint8_t kIpProtoDestinationOptions = 60;
constexpr size_t kMaxFragments = 64;
// How often the route towards the remote is asked for its MTU: a new device or route MTU
// shows within this.
constexpr absl::Duration kProbeInterval = absl::Seconds(5);
// How often a tunnel that numbers its packets marks where its sequence stands: an error must
// quote a number sent since the mark before last, so within the last one to two seconds (a
// router's answer takes a round trip; a guess has that window of 2^32 to hit).
constexpr absl::Duration kSequenceMarkInterval = absl::Seconds(1);

void Count(DropCounters& drops, DropReason reason) { drops[static_cast<int>(reason)].Add(); }

sockaddr_in6 SocketAddress(bool ipv6, const OuterAddress& address, socklen_t* len) {
  sockaddr_in6 storage{};
  if (ipv6) {
    storage.sin6_family = AF_INET6;
    std::memcpy(&storage.sin6_addr, address.data(), 16);
    *len = sizeof(sockaddr_in6);
  } else {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
    v4->sin_family = AF_INET;
    std::memcpy(&v4->sin_addr, address.data(), 4);
    *len = sizeof(sockaddr_in);
  }
  return storage;
}

}  // namespace

void WorkerClock::Update() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME_COARSE, &t);
  unix_nanos_ = int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
  monotonic_nanos_ = int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

int64_t WorkerClock::PreciseMonotonicNanos() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

UnderlayIo::~UnderlayIo() {
  for (int fd : {send4_, send6_, probe4_, probe6_, route_netlink_}) {
    if (fd >= 0) close(fd);
  }
}

absl::Status UnderlayIo::Open(int buffer_bytes) {
  buffer_bytes_ = buffer_bytes;
  // IPPROTO_RAW implies IP_HDRINCL (IPV6_HDRINCL for IPv6): the engine writes whole outer
  // headers; for IPv4 the kernel fills in the ID and, when 0, the source.
  absl::StatusOr<int> fd = OpenUnderlaySocket(AF_INET, IPPROTO_RAW, buffer_bytes, "send");
  if (!fd.ok()) return fd.status();
  send4_ = *fd;
  // Fragment IDs start at random, so workers (each with its own UnderlayIo) sending
  // fragments to the same peer do not reuse each other's IDs within a reassembly timeout.
  if (getrandom(&fragment_id_, sizeof fragment_id_, 0) != sizeof fragment_id_) fragment_id_ = 0;
  if (KernelHasIpv6()) {  // a kernel without IPv6 still carries the IPv4 modes
    fd = OpenUnderlaySocket(AF_INET6, IPPROTO_RAW, buffer_bytes, "IPv6 send");
    if (!fd.ok()) return fd.status();
    send6_ = *fd;
  }
  probe4_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (probe4_ < 0) return ErrnoStatus(errno, "route probe socket");
  if (send6_ >= 0) probe6_ = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  route_netlink_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (route_netlink_ < 0) return ErrnoStatus(errno, "route netlink socket");
  return absl::OkStatus();
}

bool UnderlayIo::RouteMtu(bool ipv6, const OuterAddress& remote, uint32_t* mtu) {
  const size_t address_len = ipv6 ? 16 : 4;
  struct {
    nlmsghdr header;
    rtmsg route;
    alignas(NLMSG_ALIGNTO) uint8_t attributes[RTA_SPACE(16)];
  } request{};
  const uint32_t sequence = ++route_request_;
  request.header.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg)) + RTA_SPACE(address_len);
  request.header.nlmsg_type = RTM_GETROUTE;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = sequence;
  request.route.rtm_family = ipv6 ? AF_INET6 : AF_INET;
  request.route.rtm_dst_len = ipv6 ? 128 : 32;
  request.route.rtm_flags = RTM_F_FIB_MATCH;
  auto* destination = reinterpret_cast<rtattr*>(request.attributes);
  destination->rta_type = RTA_DST;
  destination->rta_len = static_cast<unsigned short>(RTA_LENGTH(address_len));
  std::memcpy(RTA_DATA(destination), remote.data(), address_len);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(route_netlink_, &request, request.header.nlmsg_len, 0,
             reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    return false;
  }
  // rtnetlink answers inside the send, so the answer is queued by now: never wait for it.
  // Answers to earlier requests (none are left unread, but a reply is matched by number).
  alignas(nlmsghdr) uint8_t reply[8192];
  for (int attempt = 0; attempt < 4; ++attempt) {
    const ssize_t n = recv(route_netlink_, reply, sizeof reply, MSG_DONTWAIT);
    if (n < 0) return false;
    int left = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(reply); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != sequence) continue;
      if (h->nlmsg_type != RTM_NEWROUTE || h->nlmsg_len < NLMSG_LENGTH(sizeof(rtmsg))) {
        return false;  // NLMSG_ERROR: no route
      }
      const auto* route = static_cast<const rtmsg*>(NLMSG_DATA(h));
      if (route->rtm_type != RTN_UNICAST && route->rtm_type != RTN_LOCAL) return false;
      uint32_t metric = 0;
      uint32_t device = 0;  // the least of the devices' MTUs
      auto take_device = [&](int ifindex) {
        ifreq request{};
        request.ifr_ifindex = ifindex;
        if (ioctl(probe4_, SIOCGIFNAME, &request) != 0 ||
            ioctl(probe4_, SIOCGIFMTU, &request) != 0 || request.ifr_mtu <= 0) {
          return;
        }
        const auto value = static_cast<uint32_t>(request.ifr_mtu);
        if (device == 0 || value < device) device = value;
      };
      int attributes_len = static_cast<int>(RTM_PAYLOAD(h));
      for (auto* a = RTM_RTA(route); RTA_OK(a, attributes_len); a = RTA_NEXT(a, attributes_len)) {
        if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) >= sizeof(int)) {
          int ifindex = 0;
          std::memcpy(&ifindex, RTA_DATA(a), sizeof ifindex);
          take_device(ifindex);
        } else if (a->rta_type == RTA_MULTIPATH) {
          int hops_len = static_cast<int>(RTA_PAYLOAD(a));
          auto* hop = static_cast<rtnexthop*>(RTA_DATA(a));
          while (RTNH_OK(hop, hops_len)) {
            take_device(hop->rtnh_ifindex);
            hops_len -= RTNH_ALIGN(hop->rtnh_len);
            hop = RTNH_NEXT(hop);
          }
        } else if (a->rta_type == RTA_METRICS) {
          int metrics_len = static_cast<int>(RTA_PAYLOAD(a));
          for (auto* m = static_cast<rtattr*>(RTA_DATA(a)); RTA_OK(m, metrics_len);
               m = RTA_NEXT(m, metrics_len)) {
            if (m->rta_type == RTAX_MTU && RTA_PAYLOAD(m) >= sizeof(uint32_t)) {
              std::memcpy(&metric, RTA_DATA(m), sizeof metric);
            }
          }
        }
      }
      if (device == 0) return false;
      // A raw send larger than the device's MTU fails whatever the route says.
      *mtu = metric != 0 ? std::min(metric, device) : device;
      return true;
    }
  }
  return false;
}

bool UnderlayIo::Probe(bool ipv6, const OuterAddress& remote, uint32_t* mtu, OuterAddress* source) {
  const int fd = ipv6 ? probe6_ : probe4_;
  if (fd < 0) return false;
  // Connecting a UDP socket sends nothing: it looks the route up and keeps it, so the kernel
  // can say what it would use. The port is irrelevant but must not be 0.
  socklen_t len = 0;
  sockaddr_in6 address = SocketAddress(ipv6, remote, &len);
  address.sin6_port = htons(9);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), len) != 0) return false;
  if (!RouteMtu(ipv6, remote, mtu)) {
    // A route the FIB cannot name a device for (through a nexthop object): the socket's view,
    // which includes the kernel's cached PMTU for the remote, is all there is.
    int value = 0;
    socklen_t value_len = sizeof value;
    if (getsockopt(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MTU : IP_MTU, &value,
                   &value_len) != 0 ||
        value <= 0) {
      return false;
    }
    *mtu = static_cast<uint32_t>(value);
  }
  sockaddr_in6 local{};
  socklen_t local_len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) return false;
  if (ipv6) {
    *source = OuterAddress::FromIpv6(reinterpret_cast<const uint8_t*>(&local.sin6_addr));
  } else {
    *source = OuterAddress::FromIpv4Bytes(
        reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr));
  }
  return true;
}

int UnderlayIo::SendNow(bool ipv6, const OuterAddress& destination, const uint8_t* packet,
                        size_t len) {
  const int fd = send_fd(ipv6);
  if (fd < 0) return EAFNOSUPPORT;
  socklen_t address_len = 0;
  sockaddr_in6 address = SocketAddress(ipv6, destination, &address_len);
  if (sendto(fd, packet, len, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&address), address_len) <
      0) {
    return errno;
  }
  return 0;
}

size_t WriteFouControl(uint8_t* control, uint8_t tos, uint8_t ttl, uint16_t gso_size) {
  msghdr msg{};
  msg.msg_control = control;
  msg.msg_controllen = kFouSendControlBytes;
  std::memset(control, 0, kFouSendControlBytes);
  size_t used = 0;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  const int tos_value = tos;
  const int ttl_value = ttl;
  for (const auto& [type, value] : {std::pair<int, int>{IP_TOS, tos_value}, {IP_TTL, ttl_value}}) {
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &value, sizeof value);
    used += CMSG_SPACE(sizeof(int));
    msg.msg_controllen = used;
    c = reinterpret_cast<cmsghdr*>(control + used);
  }
  if (gso_size != 0) {
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    std::memcpy(CMSG_DATA(c), &gso_size, sizeof gso_size);
    used += CMSG_SPACE(sizeof(uint16_t));
  }
  return used;
}

TunnelDatapath::~TunnelDatapath() {
  for (int fd : fou_fds_) close(fd);
}

absl::StatusOr<std::unique_ptr<TunnelDatapath>> TunnelDatapath::Create(const EngineTunnel& config,
                                                                       UnderlayIo* io,
                                                                       const WorkerClock* clock,
                                                                       absl::Time now,
                                                                       unsigned worker) {
  if (worker >= config.counters->workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tunnel ", config.name, ": its counters have no room for worker ", worker));
  }
  std::unique_ptr<TunnelDatapath> t(new TunnelDatapath(config, io, clock, worker));
  if (io->send_fd(t->ipv6_) < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", config.name, ": this kernel has no IPv6 for the underlay"));
  }
  if (t->fou()) {
    if (t->ipv6_) {
      return absl::FailedPreconditionError(
          absl::StrCat("tunnel ", config.name, ": fou over an IPv6 underlay is not supported"));
    }
    // A fixed source port: one socket. Per flow: a few sockets on ports the kernel picks,
    // the flow's hash choosing, so the underlay's ECMP and RSS still see several flows.
    const size_t sockets = config.encap.udp_sport != 0 ? 1 : 4;
    for (size_t i = 0; i < sockets; ++i) {
      absl::StatusOr<int> fd =
          OpenFouSendSocket(config.encap.local, config.encap.udp_sport, config.encap.remote,
                            config.encap.udp_dport, io->buffer_bytes());
      if (!fd.ok()) {
        return absl::Status(fd.status().code(),
                            absl::StrCat("tunnel ", config.name, ": ", fd.status().message()));
      }
      t->fou_fds_.push_back(*fd);
      // Its source port, which an error about its packets must quote.
      sockaddr_in bound{};
      socklen_t bound_len = sizeof bound;
      if (getsockname(*fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) == 0) {
        t->fou_sports_.push_back(ntohs(bound.sin_port));
      }
    }
  }
  t->RefreshPath();
  if (t->ipv6_ && t->encap_.local.is_zero()) {
    // Raw IPv6 sends carry the source as written: it must be known before the first packet.
    return absl::FailedPreconditionError(absl::StrCat(
        "tunnel ", config.name, ": no route to the remote to take a source address from"));
  }
  t->next_probe_ = now + kProbeInterval;
  if (t->encap_.sequence) t->next_sequence_mark_ = now + kSequenceMarkInterval;
  // One worker sends the keepalives, so the peer sees one stream of them.
  if (config.keepalive_interval > absl::ZeroDuration() && worker == 0) t->next_keepalive_ = now;
  return t;
}

TunnelDatapath::TunnelDatapath(const EngineTunnel& config, UnderlayIo* io, const WorkerClock* clock,
                               unsigned worker)
    : config_(config),
      counters_(&config.counters->worker(worker)),
      io_(io),
      clock_(clock),
      // From the configured addresses: a tunnel without a local address sends from whichever
      // the route gives, so its looped packets can come from any.
      loop_check_(config.encap),
      ipv6_(IsIpv6UnderlayMode(config.encap.mode)),
      encap_(config.encap),
      worker_(worker) {
  fou_header_len_ = EncapIpUdpLen(encap_);
  match_ = TunnelMatch{config.encap.mode, config.has_input_key, config.encap.local,
                       config.encap.remote, config.has_input_key ? config.input_key : 0};
  destination_ = SocketAddress(ipv6_, config.encap.remote, &destination_len_);
  l2_header_ = IsEthernetMode(config.encap.mode) ? kEthernetHeaderLen : 0;
  max_frame_ = config.mtu + l2_header_;
  overhead_ = static_cast<uint32_t>(EncapHeaderLen(encap_)) + l2_header_;
  source_ = config.encap.local;
  if (worker == 0) config_.counters->peer_alive.store(true, std::memory_order_relaxed);
  seen_keepalive_reply_ = config_.counters->last_keepalive_reply_unix_nanos.load();
}

void TunnelDatapath::RefreshPath() {
  uint32_t underlay_mtu = 0;
  OuterAddress source;
  // A lowered path recovers by itself, as the kernel's PMTU entries expire: a path that is
  // still smaller answers the next large packet with another error.
  const bool expired = learned_mtu_ != 0 && clock_->monotonic_nanos() >= learned_until_nanos_;
  if (expired) learned_mtu_ = 0;
  if (!io_->Probe(ipv6_, config_.encap.remote, &underlay_mtu, &source)) {
    if (expired) UpdatePathMtu();
    return;
  }
  if (config_.encap.local.is_zero()) {
    source_ = source;
    if (ipv6_) encap_.local = source;
  }
  route_mtu_ = underlay_mtu;
  UpdatePathMtu();
}

void TunnelDatapath::UpdatePathMtu() {
  uint32_t underlay_mtu = route_mtu_;
  if (learned_mtu_ != 0 && learned_mtu_ < underlay_mtu) underlay_mtu = learned_mtu_;
  path_mtu_ = underlay_mtu > overhead_ ? underlay_mtu - overhead_ : 1;
  // Every worker that sends keeps its own; worker 0's is the one shown (with several workers
  // each judges the same errors alike, and a tunnel one worker sends is worker 0's).
  if (worker_ == 0) config_.counters->path_mtu.store(path_mtu_, std::memory_order_relaxed);
}

QuoteVerdict TunnelDatapath::TakeTooBig(const TooBigReport& report) {
  if (!config_.read_device) return QuoteVerdict::kOtherFlow;
  OwnPacketPattern pattern;
  pattern.mode = encap_.mode;
  pattern.source = source_;
  pattern.remote = config_.encap.remote;
  pattern.checksum = encap_.checksum;
  pattern.has_key = encap_.has_key;
  pattern.key = encap_.key;
  pattern.sequence = encap_.sequence;
  pattern.udp_dport = encap_.udp_dport;
  pattern.udp_sports = fou_sports_.data();
  pattern.udp_sport_count = fou_sports_.size();
  uint32_t sequence = 0;
  QuoteVerdict verdict = CheckTooBigQuote(pattern, report, &sequence);
  if (verdict == QuoteVerdict::kOurs && encap_.sequence && !SentLately(sequence)) {
    verdict = QuoteVerdict::kRejected;
  }
  if (verdict == QuoteVerdict::kRejected) {
    if (worker_ == 0) Count(counters().rx_drops, DropReason::kIcmpRejected);
    return verdict;
  }
  if (verdict != QuoteVerdict::kOurs) return verdict;
  const uint32_t current = learned_mtu_ != 0 ? std::min(learned_mtu_, route_mtu_) : route_mtu_;
  if (route_mtu_ == 0 || report.mtu < current) {
    learned_mtu_ = report.mtu;
    learned_until_nanos_ =
        clock_->monotonic_nanos() + absl::ToInt64Nanoseconds(io_->path_mtu_expiry());
    UpdatePathMtu();
  }
  return verdict;
}

bool TunnelDatapath::PrepareTransmit(uint8_t* frame, size_t len, EncapResult* packet) {
  if (loop_check_.IsOwnOuterPacket(frame, len)) [[unlikely]] {
    // What we sent came back: wrapping it again would send it round once more, and again.
    Count(counters().tx_drops, DropReason::kLoop);
    return false;
  }
  if (path_mtu_ != 0 && len > path_mtu_ + l2_header_) {
    // Rare (the device MTU normally fits the path): ask the route again before refusing, as
    // the path may have grown since the last probe, or shrunk further. Not while a believed
    // error holds it lower: the route cannot say more until that expires.
    if (learned_mtu_ == 0 || clock_->monotonic_nanos() >= learned_until_nanos_) RefreshPath();
    if (len > path_mtu_ + l2_header_) {
      HandleTooBig(frame, len);
      return false;
    }
  }
  const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
  *packet = Encapsulate(encap_, frame, len, 0, sequence);
  if (packet->packet == nullptr) {
    Count(counters().tx_drops, packet->drop);
    return false;
  }
  return true;
}

void TunnelDatapath::TransmitDone(uint8_t* frame, size_t len, int result) {
  TunnelCounters& c = counters();
  if (result >= 0) {
    c.tx_packets.Add();
    c.tx_bytes.Add(len);
    return;
  }
  if (result != -EMSGSIZE) {
    Count(c.tx_drops, DropReason::kSendError);
    return;
  }
  // The underlay refused the packet as larger than its MTU (raw sends never fragment): the
  // path is smaller than thought. Ask the route again; it cannot be more than what failed.
  RefreshPath();
  const uint32_t failed = static_cast<uint32_t>(len - l2_header_);
  if (fou() && path_mtu_ >= failed) {
    // The route carries it, and a fou socket checks sizes against the device alone: the
    // refusal is an ICMP error the kernel queued on the connected socket (it believes any),
    // not this packet's size, and that send consumed it. Only errors the engine judged itself
    // lower the path; the packet goes again, once.
    if (!ResendFou(frame, len)) Count(c.tx_drops, DropReason::kSendError);
    return;
  }
  if (path_mtu_ == 0 || path_mtu_ >= failed) {
    path_mtu_ = failed > 1 ? failed - 1 : 1;
    if (worker_ == 0) stats().path_mtu.store(path_mtu_, std::memory_order_relaxed);
  }
  HandleTooBig(frame, len);
}

void TunnelDatapath::HandleTooBig(uint8_t* frame, size_t len) {
  TunnelCounters& c = counters();
  const int ip_offset = InnerIpOffset(encap_.mode, frame, len);
  if (l2_header_ != 0 || ip_offset != 0) {
    // A bridge has nobody to tell: the frame is dropped, as a too-long frame on any link.
    Count(c.tx_drops, DropReason::kTooBig);
    return;
  }
  const uint8_t version = IpVersion(frame, len);
  if (version == 4 && len >= kIpv4HeaderLen) {
    const bool inner_df = (LoadBe16(frame + 6) & kIpv4FlagDontFragment) != 0;
    // Without DF the kernel fragments the outer packet (ip_tunnel's last resort); over IPv6 it
    // answers frag-needed whatever the DF bit (ip4ip6_tnl_xmit).
    if (!inner_df && !ipv6_) {
      const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
      EncapResult outer = Encapsulate(encap_, frame, len, 0, sequence);
      if (outer.packet == nullptr) {
        Count(c.tx_drops, outer.drop);
        return;
      }
      if (!SendFragments(outer.packet, outer.len)) {
        Count(c.tx_drops, DropReason::kTooBig);
        return;
      }
      c.tx_fragmented.Add();
      c.tx_packets.Add();
      c.tx_bytes.Add(len);
      return;
    }
    Count(c.tx_drops, DropReason::kTooBig);
    uint8_t* out = io_->scratch();
    // From the packet's own destination: the host drops what arrives on a device from one of
    // its own addresses (a martian), and the destination is routed through this very device,
    // so even a strict reverse-path check lets the error in.
    const uint32_t source = LoadBe32(frame + 16);
    const size_t n = WriteIcmpFragmentationNeeded(
        frame, len, source, static_cast<uint16_t>(std::min(path_mtu_, 65535u)), out,
        UnderlayIo::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
    return;
  }
  Count(c.tx_drops, DropReason::kTooBig);
  if (version == 6 && len >= kIpv6HeaderLen) {
    uint8_t* out = io_->scratch();
    const OuterAddress source = OuterAddress::FromIpv6(frame + 24);  // as for IPv4
    const size_t n =
        WriteIcmpv6PacketTooBig(frame, len, source, path_mtu_, out, UnderlayIo::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
  }
}

bool TunnelDatapath::WriteIcmpToDevice(const uint8_t* ip, size_t len) {
  // A TUN write hands the packet to the host's stack at once; it does not block. With
  // offloads an empty virtio-net header goes first.
  uint8_t header[kVirtioNetHeaderLen] = {};
  iovec parts[2] = {{header, sizeof header}, {const_cast<uint8_t*>(ip), len}};
  const int first = config_.vnet_header ? 0 : 1;
  const size_t total = len + (config_.vnet_header ? sizeof header : 0);
  return writev(config_.device_fd, parts + first, 2 - first) == static_cast<ssize_t>(total);
}

bool TunnelDatapath::SendFragments(const uint8_t* outer, size_t len) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    Fragment fragments[kMaxFragments];
    // The outer packet lives in the engine's buffer; the fragments go to the scratch space.
    const size_t count =
        FragmentIpv4(outer, len, path_mtu_ + overhead_ - l2_header_, io_->NextFragmentId(),
                     io_->scratch(), UnderlayIo::kScratchBytes, fragments, kMaxFragments);
    if (count == 0) return false;
    int error = 0;
    for (size_t i = 0; i < count && error == 0; ++i) {
      error = io_->SendNow(false, config_.encap.remote, fragments[i].data, fragments[i].len);
    }
    if (error == 0) return true;
    if (error != EMSGSIZE) return false;
    // The path shrank under us: learn it and cut again, once.
    RefreshPath();
  }
  return false;
}

bool TunnelDatapath::AcceptReceived(const Decapsulated& d) {
  TunnelCounters& c = counters();
  // ip_tunnel_rcv: a tunnel that wants checksums drops packets without one (a wrong one never
  // got this far), and one that wants sequence numbers drops packets without one or behind.
  if (config_.input_checksum && !d.has_checksum) {
    Count(c.rx_drops, DropReason::kGreChecksum);
    return false;
  }
  if (d.inner_len == 0) {
    // An empty payload is our keepalive, come home through the peer. Its sequence number is
    // ours, not the peer's stream's: it neither passes nor moves the receive window.
    // Tick sees the new reply time (from whichever worker took the reply) and starts counting
    // missed replies again.
    c.keepalive_replies.Add();
    // The reply cannot say which keepalive it answers: it is a packet we built for the peer
    // to forward back as any router would, and an IPv6 one has no field to number it in. So
    // it is timed against the latest keepalive sent: a reply that comes back after the next
    // keepalive has left (a round trip longer than the interval) reads short.
    const int64_t sent = stats().last_keepalive_sent_nanos.load(std::memory_order_relaxed);
    const int64_t rtt = WorkerClock::PreciseMonotonicNanos() - sent;
    if (sent != 0 && rtt > 0) stats().keepalive_rtt_nanos.store(rtt, std::memory_order_relaxed);
    stats().peer_alive.store(true, std::memory_order_relaxed);
    stats().last_keepalive_reply_unix_nanos.store(absl::ToUnixNanos(absl::Now()),
                                                  std::memory_order_relaxed);
    StampReceived();
    return false;
  }
  if (config_.input_sequence) {
    if (!d.has_sequence ||
        (rx_sequence_ != 0 && static_cast<int32_t>(d.sequence - rx_sequence_) < 0)) {
      Count(c.rx_drops, DropReason::kGreSequence);
      return false;
    }
    rx_sequence_ = d.sequence + 1;
  }
  if (IsPeerKeepalive(d)) {
    // The peer's keepalive: a packet from it to itself, which a router would send back by
    // routing it. Send it straight home instead of through the host.
    if (io_->SendNow(ipv6_, d.outer_src, d.inner, d.inner_len) == 0) {
      c.keepalive_answered.Add();
    } else {
      Count(c.rx_drops, DropReason::kSendError);
    }
    return false;
  }
  return true;
}

// The peer's keepalive is a packet of this tunnel's kind from us back to the peer: its source
// is the outer destination, its destination the outer source.
bool TunnelDatapath::IsPeerKeepalive(const Decapsulated& d) const {
  if (!SupportsKeepalive(encap_.mode)) return false;
  const uint8_t* ip = d.inner;
  if (ipv6_) {
    if (d.inner_len < kIpv6HeaderLen || IpVersion(ip, d.inner_len) != 6) return false;
    uint8_t next = ip[6];
    // Through the peer's own encapsulation-limit option, if it put one in.
    if (next == kIpProtoDestinationOptions && d.inner_len >= kIpv6HeaderLen + 8) {
      next = ip[kIpv6HeaderLen];
    }
    return next == d.protocol && std::memcmp(ip + 8, d.outer_dst.data(), 16) == 0 &&
           std::memcmp(ip + 24, d.outer_src.data(), 16) == 0;
  }
  if (d.inner_len < kIpv4HeaderLen || IpVersion(ip, d.inner_len) != 4) return false;
  return ip[9] == d.protocol && LoadBe32(ip + 12) == d.outer_dst.v4() &&
         LoadBe32(ip + 16) == d.outer_src.v4();
}

void TunnelDatapath::DeliverDone(size_t len, int result, uint32_t packets) {
  TunnelCounters& c = counters();
  if (result >= 0) {
    c.rx_packets.Add(packets);
    c.rx_bytes.Add(len);
    if (packets > 1) c.rx_coalesced.Add();
    StampReceived();
  } else {
    c.rx_drops[static_cast<int>(DropReason::kDeviceError)].Add(packets);
  }
}

TunnelDatapath::DeviceRead TunnelDatapath::TakeVirtioNetHeader(const VirtioNetHeader& header,
                                                               uint8_t* frame, size_t len,
                                                               size_t* segments) {
  const uint8_t gso = header.gso_type & static_cast<uint8_t>(~kGsoEcn);
  if (gso == kGsoNone) {
    if ((header.flags & kVirtioNetFlagNeedsCsum) != 0 &&
        !CompleteChecksum(frame, len, header.csum_start, header.csum_offset)) {
      Count(counters().tx_drops, DropReason::kBadInnerPacket);
      return DeviceRead::kDropped;
    }
    return DeviceRead::kPacket;
  }
  DropReason reason = DropReason::kBadInnerPacket;
  *segments = CountSegments(header, frame, len, &reason);
  if (*segments == 0) {
    Count(counters().tx_drops, reason);
    return DeviceRead::kDropped;
  }
  counters().tx_super_packets.Add();
  return DeviceRead::kSuperPacket;
}

int TunnelDatapath::FouSendFd(const EncapResult& packet) const {
  const uint16_t sport = LoadBe16(packet.packet + kIpv4HeaderLen);
  return fou_fds_[sport % fou_fds_.size()];
}

size_t TunnelDatapath::NextFouRun(const EncapResult* packets, size_t count, iovec* iovs, int* fd,
                                  uint16_t* gso_size) const {
  const size_t size = packets[0].len - fou_header_len_;
  *fd = FouSendFd(packets[0]);
  size_t n = 0;
  size_t bytes = 0;
  while (n < count && n < kMaxFouRun && (n == 0 || fou_gso_)) {
    const EncapResult& p = packets[n];
    const size_t len = p.len - fou_header_len_;
    if (n > 0 && (len > size || bytes + len > kMaxFouRunBytes || FouSendFd(p) != *fd ||
                  iovs[n - 1].iov_len != size)) {
      break;
    }
    iovs[n].iov_base = p.packet + fou_header_len_;
    iovs[n].iov_len = len;
    bytes += len;
    ++n;
  }
  *gso_size = n > 1 ? static_cast<uint16_t>(size) : 0;
  return n;
}

void TunnelDatapath::SendFouNow(uint8_t* const* frames, const size_t* lens,
                                const EncapResult* packets, size_t count) {
  iovec iov[kMaxFouRun];
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];
  for (size_t first = 0; first < count;) {
    int fd = -1;
    uint16_t gso_size = 0;
    const size_t n = NextFouRun(packets + first, count - first, iov, &fd, &gso_size);
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    msg.msg_control = control;
    msg.msg_controllen =
        WriteFouControl(control, packets[first].packet[1], packets[first].packet[8], gso_size);
    const ssize_t sent = sendmsg(fd, &msg, MSG_DONTWAIT);
    const int error = sent < 0 ? errno : 0;
    if (error == EIO && n > 1) {
      fou_gso_ = false;  // no UDP GSO on this path (wireguard-go's probe): one by one from now
      continue;
    }
    for (size_t i = 0; i < n; ++i) {
      TransmitDone(frames[first + i], lens[first + i],
                   error == 0 ? static_cast<int>(iov[i].iov_len) : -error);
    }
    first += n;
  }
}

bool TunnelDatapath::ResendFou(uint8_t* frame, size_t len) {
  const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
  const EncapResult packet = Encapsulate(encap_, frame, len, 0, sequence);
  if (packet.packet == nullptr) return false;
  iovec iov{packet.packet + fou_header_len_, packet.len - fou_header_len_};
  alignas(cmsghdr) uint8_t control[kFouSendControlBytes];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = WriteFouControl(control, packet.packet[1], packet.packet[8], 0);
  if (sendmsg(FouSendFd(packet), &msg, MSG_DONTWAIT) < 0) return false;
  counters().tx_packets.Add();
  counters().tx_bytes.Add(len);
  return true;
}

void TunnelDatapath::DeliverNow(const Decapsulated& d) {
  uint8_t header[kVirtioNetHeaderLen] = {};
  iovec parts[2] = {{header, sizeof header}, {d.inner, d.inner_len}};
  const int first = config_.vnet_header ? 0 : 1;
  const ssize_t n = writev(config_.device_fd, parts + first, 2 - first);
  DeliverDone(d.inner_len, n >= 0 ? static_cast<int>(n) : -errno);
}

void TunnelDatapath::SendNow(uint8_t* frame, size_t len, const EncapResult& packet) {
  if (fou()) return SendFouNow(&frame, &len, &packet, 1);
  const int error = io_->SendNow(ipv6_, config_.encap.remote, packet.packet, packet.len);
  TransmitDone(frame, len, error == 0 ? static_cast<int>(packet.len) : -error);
}

absl::Time TunnelDatapath::Tick(absl::Time now) {
  const int64_t learned_left = learned_until_nanos_ - clock_->monotonic_nanos();
  if (now >= next_probe_ || (learned_mtu_ != 0 && learned_left <= 0)) {
    RefreshPath();
    next_probe_ = now + kProbeInterval;
  }
  if (now >= next_sequence_mark_) {
    sequence_marks_[1] = sequence_marks_[0];
    sequence_marks_[0] = tx_sequence_;
    next_sequence_mark_ = now + kSequenceMarkInterval;
  }
  absl::Time next = std::min(next_probe_, next_sequence_mark_);
  if (learned_mtu_ != 0) {
    next = std::min(next, now + absl::Nanoseconds(std::max<int64_t>(learned_left, 0)));
  }
  if (now >= next_keepalive_) {
    // A reply may have come to another worker: it leaves the time in the shared stats.
    const int64_t last_reply = stats().last_keepalive_reply_unix_nanos.load();
    if (last_reply != seen_keepalive_reply_) {
      seen_keepalive_reply_ = last_reply;
      keepalives_outstanding_ = 0;
    }
    if (keepalives_outstanding_ >= config_.keepalive_retries) {
      stats().peer_alive.store(false, std::memory_order_relaxed);
    }
    SendKeepalive();
    next_keepalive_ = now + config_.keepalive_interval;
  }
  return std::min(next, next_keepalive_);
}

void TunnelDatapath::SendKeepalive() {
  ++keepalives_outstanding_;
  if (source_.is_zero()) return;  // no route to the peer: nothing can come back either
  // What the peer will send home: a packet of this tunnel's kind from the peer to us, carrying
  // what our receive side requires, with nothing inside.
  EncapParams home;
  home.mode = encap_.mode;
  home.local = config_.encap.remote;
  home.remote = source_;
  home.has_key = config_.has_input_key;
  home.key = config_.input_key;
  home.checksum = config_.input_checksum;
  home.sequence = config_.input_sequence;
  home.pmtudisc = false;
  uint8_t* end = io_->scratch() + kMaxEncapHeadroom * 2;
  EncapResult inner = EncapsulateEmpty(home, end, rx_sequence_);
  const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
  EncapResult outer = Encapsulate(encap_, inner.packet, inner.len, 0, sequence);
  if (outer.packet == nullptr) return;
  // Before the send: a reply can be back (at another worker) before SendNow returns.
  stats().last_keepalive_sent_nanos.store(WorkerClock::PreciseMonotonicNanos(),
                                          std::memory_order_relaxed);
  if (io_->SendNow(ipv6_, config_.encap.remote, outer.packet, outer.len) == 0) {
    counters().keepalive_sent.Add();
  }
}

}  // namespace tunnelagent::dataplane
