#include "dataplane/core/tunnel_datapath.h"

#include <netinet/in.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
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
// How often a send the underlay refused as too big may have the route asked at once (once a
// housekeeping tick).
constexpr int64_t kUrgentRouteAskNanos = 50'000'000;
// How often a tunnel that numbers its packets marks where its sequence stands: an error must
// quote a number sent since the mark before last, so within the last one to two seconds (a
// router's answer takes a round trip; a guess has that window of 2^32 to hit).
constexpr absl::Duration kSequenceMarkInterval = absl::Seconds(1);

void Count(DropCounters& drops, DropReason reason) { drops[static_cast<int>(reason)].Add(); }

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

TunnelDatapath::~TunnelDatapath() {
  for (const FouSender& sender : fou_senders_) worker_->io->CloseFouSender(sender.handle);
}

absl::StatusOr<std::unique_ptr<TunnelDatapath>> TunnelDatapath::Create(const EngineTunnel& config,
                                                                       WorkerContext* worker,
                                                                       absl::Time now) {
  if (worker->worker >= config.stats->workers()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tunnel ", config.name, ": its counters have no room for worker ", worker->worker));
  }
  std::unique_ptr<TunnelDatapath> t(new TunnelDatapath(config, worker));
  if (!worker->io->CanSend(t->ipv6_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", config.name, ": this kernel has no IPv6 for the underlay"));
  }
  if (t->fou()) {
    if (t->ipv6_) {
      return absl::FailedPreconditionError(
          absl::StrCat("tunnel ", config.name, ": fou over an IPv6 underlay is not supported"));
    }
    // A fixed source port: one sender. Per flow: a few senders on ports the kernel picks,
    // the flow's hash choosing, so the underlay's ECMP and RSS still see several flows.
    const size_t senders = config.encap.udp_sport != 0 ? 1 : 4;
    for (size_t i = 0; i < senders; ++i) {
      // A multipoint tunnel's senders reach every peer: not connected to any.
      absl::StatusOr<FouSender> sender =
          worker->io->OpenFouSender(config.encap, /*connected=*/!config.multipoint);
      if (!sender.ok()) {
        return absl::Status(sender.status().code(),
                            absl::StrCat("tunnel ", config.name, ": ", sender.status().message()));
      }
      t->fou_senders_.push_back(*sender);
    }
  }
  if (config.multipoint) {
    // No remote to ask the route about: each peer's path is its own (MakePeerPath).
    t->peers_ = std::make_unique<MultipointPeers>();
    if (absl::Status s = t->ChangePeers(config.peers, {}, now); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("tunnel ", config.name, ": ", s.message()));
    }
    return t;
  }
  t->RefreshPath(t->remote_);
  if (t->ipv6_ && t->encap_.local.is_zero()) {
    // Raw IPv6 sends carry the source as written: it must be known before the first packet.
    return absl::FailedPreconditionError(absl::StrCat(
        "tunnel ", config.name, ": no route to the remote to take a source address from"));
  }
  t->remote_.next_probe = now + kProbeInterval;
  if (t->encap_.sequence) t->next_sequence_mark_ = now + kSequenceMarkInterval;
  // One worker sends the keepalives, so the peer sees one stream of them.
  if (config.keepalive_interval > absl::ZeroDuration() && worker->worker == 0) {
    t->remote_.next_keepalive = now;
  }
  return t;
}

TunnelDatapath::TunnelDatapath(const EngineTunnel& config, WorkerContext* worker)
    : config_(config),
      counters_(&config.stats->worker(worker->worker)),
      worker_(worker),
      ipv6_(IsIpv6UnderlayMode(config.encap.mode)),
      encap_(config.encap) {
  config_.peers.clear();  // the peer table has them; thousands need not be kept twice
  fou_header_len_ = EncapIpUdpLen(encap_);
  match_ = TunnelMatch{config.encap.mode, config.has_input_key, config.encap.local,
                       config.encap.remote, config.has_input_key ? config.input_key : 0};
  loop_check_ = LoopCheck(config.encap);
  remote_.underlay = config.encap.remote;
  remote_.has_key = config.encap.has_key;
  remote_.key = config.encap.key;
  remote_.encap = config.encap;
  remote_.destination = UnderlayAddress(ipv6_, config.encap.remote, &remote_.destination_len);
  remote_.shown = config_.stats.get();
  remote_.keepalive_interval = config.keepalive_interval;
  remote_.keepalive_retries = config.keepalive_retries;
  if (!ipv6_ && !config.encap.local.is_zero()) {
    // Without a configured local address the route picks the source: nothing to name.
    cmsghdr* c = reinterpret_cast<cmsghdr*>(send_control_);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
    in_pktinfo info{};
    memcpy(&info.ipi_spec_dst, config.encap.local.data(), sizeof info.ipi_spec_dst);
    memcpy(CMSG_DATA(c), &info, sizeof info);
    send_control_len_ = CMSG_SPACE(sizeof(in_pktinfo));
  }
  l2_header_ = IsEthernetMode(config.encap.mode) ? kEthernetHeaderLen : 0;
  max_frame_ = config.mtu + l2_header_;
  remote_.overhead = static_cast<uint32_t>(EncapHeaderLen(encap_)) + l2_header_;
  remote_.source = config.encap.local;
  if (worker->worker == 0) config_.stats->peer_alive.store(true, std::memory_order_relaxed);
  remote_.seen_keepalive_reply = config_.stats->last_keepalive_reply_unix_nanos.load();
}

absl::StatusOr<PeerPath> TunnelDatapath::MakePeerPath(const EnginePeer& peer, const PeerPath* old,
                                                      absl::Time now) const {
  if (!peer.stats || worker_->worker >= peer.stats->workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer ", peer.id, ": its counters have no room for worker ", worker_->worker));
  }
  if (!peer.allowed) {
    return absl::InvalidArgumentError(absl::StrCat("peer ", peer.id, ": no allowed prefixes list"));
  }
  bool family_ok = !peer.underlay.is_zero();
  for (size_t i = 4; i < 16 && !ipv6_; ++i) family_ok = family_ok && peer.underlay.bytes[i] == 0;
  if (!family_ok) {
    return absl::InvalidArgumentError(absl::StrCat("peer ", peer.id, ": needs an ",
                                                   ipv6_ ? "IPv6" : "IPv4", " underlay address"));
  }
  if (peer.keepalive_interval > absl::ZeroDuration() && !SupportsKeepalive(encap_.mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer ", peer.id, ": keepalives in a mode that has none"));
  }
  // The same peer at the same address keeps what is known of its path and its keepalives.
  const bool same_path = old != nullptr && old->underlay == peer.underlay;
  PeerPath p = same_path ? *old : PeerPath();
  p.id = peer.id;
  p.underlay = peer.underlay;
  p.has_key = peer.has_key;
  p.key = peer.key;
  p.encap = config_.encap;
  p.encap.remote = peer.underlay;
  if (peer.has_key) {
    p.encap.has_key = true;
    p.encap.key = peer.key;
  }
  p.overhead = static_cast<uint32_t>(EncapHeaderLen(p.encap)) + l2_header_;
  if (!same_path) p.source = config_.encap.local;
  p.destination = UnderlayAddress(ipv6_, peer.underlay, &p.destination_len);
  if (fou()) {
    // What a fou send names (fou is IPv4 only): the peer at the tunnel's fou port.
    reinterpret_cast<sockaddr_in*>(&p.destination)->sin_port = htons(encap_.udp_dport);
  }
  p.stats = peer.stats;
  p.shown = peer.stats.get();
  p.counters = &peer.stats->worker(worker_->worker);
  const bool keepalive_changed = !same_path || p.keepalive_interval != peer.keepalive_interval;
  p.keepalive_interval = peer.keepalive_interval;
  p.keepalive_retries = peer.keepalive_retries;
  if (keepalive_changed) {
    p.keepalives_outstanding = 0;
    p.seen_keepalive_reply = p.shown->last_keepalive_reply_unix_nanos.load();
    // One worker sends the keepalives, so the peer sees one stream of them.
    const bool sends = p.keepalive_interval > absl::ZeroDuration() && worker_->worker == 0;
    p.next_keepalive = sends ? now : absl::InfiniteFuture();
  }
  if (!same_path) {
    // The route is asked once the peer is sent to (an idle peer costs no route lookup), or at
    // once when keepalives need the source address the route gives.
    p.path_stale = true;
    p.refresh_due = p.next_keepalive != absl::InfiniteFuture();
    p.next_probe = absl::InfiniteFuture();
  }
  return p;
}

absl::Status TunnelDatapath::ChangePeers(const std::vector<EnginePeer>& upserted,
                                         const std::vector<uint32_t>& removed, absl::Time now) {
  if (!peers_) {
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", config_.name, " is not multipoint"));
  }
  for (uint32_t id : removed) peers_->Remove(id);
  absl::Status first;
  for (const EnginePeer& peer : upserted) {
    const PeerPath* old = peers_->table().Find(peer.id);
    absl::StatusOr<PeerPath> path = MakePeerPath(peer, old, now);
    absl::Status status = path.status();
    if (status.ok()) status = peers_->Upsert(*std::move(path), peer.allowed);
    if (!status.ok()) {
      first.Update(status);
      continue;
    }
    PeerPath& p = *peers_->table().Find(peer.id);
    if (old == nullptr && worker_->worker == 0) {
      p.shown->peer_alive.store(true, std::memory_order_relaxed);
    }
    // Visited once at the next tick, which works out when it is next due (never, for a new
    // peer without keepalives until it is sent to).
    peers_->Schedule(p, absl::InfinitePast());
    TickSoon();
  }
  // Thousands of peers at once (an apply, a restore) leave growth room in the tables, on every
  // worker: given back now, as the next change of that size is rare.
  constexpr size_t kLargeChange = 256;
  if (upserted.size() + removed.size() >= kLargeChange) peers_->ShrinkToFit();
  return first;
}

void TunnelDatapath::RefreshPath(PeerPath& p) {
  p.last_route_ask_nanos = monotonic_nanos();
  uint32_t underlay_mtu = 0;
  OuterAddress source;
  // A lowered path recovers by itself, as the kernel's PMTU entries expire: a path that is
  // still smaller answers the next large packet with another error.
  p.refresh_due = false;
  const bool expired = p.learned_mtu != 0 && monotonic_nanos() >= p.learned_until_nanos;
  if (expired) p.learned_mtu = 0;
  if (!worker_->io->ProbeRoute(ipv6_, p.underlay, &underlay_mtu, &source)) {
    if (expired) UpdatePathMtu(p);
    return;
  }
  if (config_.encap.local.is_zero()) {
    p.source = source;
    if (ipv6_) {
      p.encap.local = source;
      if (&p == &remote_) encap_.local = source;
    }
  }
  p.route_mtu = underlay_mtu;
  UpdatePathMtu(p);
}

void TunnelDatapath::UpdatePathMtu(PeerPath& p) {
  uint32_t underlay_mtu = p.route_mtu;
  if (p.learned_mtu != 0 && p.learned_mtu < underlay_mtu) underlay_mtu = p.learned_mtu;
  p.path_mtu = underlay_mtu > p.overhead ? underlay_mtu - p.overhead : 1;
  // Every worker that sends keeps its own; worker 0's is the one shown (with several workers
  // each judges the same errors alike, and a tunnel one worker sends is worker 0's).
  if (worker_->worker == 0) p.shown->path_mtu.store(p.path_mtu, std::memory_order_relaxed);
}

QuoteVerdict TunnelDatapath::TakeTooBig(const TooBigReport& report) {
  if (!config_.read_device) return QuoteVerdict::kOtherFlow;
  PeerPath* found = peers_ ? peers_->table().ForSource(report.quoted_dst) : &remote_;
  if (found == nullptr) return QuoteVerdict::kOtherFlow;
  PeerPath& p = *found;
  OwnPacketPattern pattern;
  pattern.mode = p.encap.mode;
  pattern.source = p.source;
  pattern.remote = p.underlay;
  pattern.checksum = p.encap.checksum;
  pattern.has_key = p.encap.has_key;
  pattern.key = p.encap.key;
  pattern.sequence = p.encap.sequence;
  pattern.udp_dport = p.encap.udp_dport;
  uint16_t sports[4] = {};
  const size_t sport_count = std::min(fou_senders_.size(), std::size(sports));
  for (size_t i = 0; i < sport_count; ++i) sports[i] = fou_senders_[i].port;
  pattern.udp_sports = sports;
  pattern.udp_sport_count = sport_count;
  uint32_t sequence = 0;
  QuoteVerdict verdict = CheckTooBigQuote(pattern, report, &sequence);
  if (verdict == QuoteVerdict::kOurs && encap_.sequence && !SentLately(sequence)) {
    verdict = QuoteVerdict::kRejected;
  }
  if (verdict == QuoteVerdict::kRejected) {
    if (worker_->worker == 0) Count(counters().rx_drops, DropReason::kIcmpRejected);
    return verdict;
  }
  if (verdict != QuoteVerdict::kOurs) return verdict;
  // Housekeeping runs next tick and from then on also for the lowered MTU's expiry.
  TickSoon(p);
  const uint32_t current = p.learned_mtu != 0 ? std::min(p.learned_mtu, p.route_mtu) : p.route_mtu;
  if (p.route_mtu == 0 || report.mtu < current) {
    p.learned_mtu = report.mtu;
    p.learned_until_nanos = monotonic_nanos() + absl::ToInt64Nanoseconds(worker_->path_mtu_expiry);
    UpdatePathMtu(p);
  }
  return verdict;
}

bool TunnelDatapath::PrepareTransmit(uint8_t* frame, size_t len, EncapResult* packet) {
  PeerPath* path = &remote_;
  if (peers_) {
    // The inner header is at the start in every multipoint mode (no tap modes).
    const uint8_t version = IpVersion(frame, len);
    if (version == 4 && len >= kIpv4HeaderLen) {
      path = peers_->table().ForDestination(frame + 16, false);
    } else if (version == 6 && len >= kIpv6HeaderLen) {
      path = peers_->table().ForDestination(frame + 24, true);
    } else {
      Count(counters().tx_drops, DropReason::kBadInnerPacket);
      return false;
    }
    if (path == nullptr) [[unlikely]] {
      AnswerNoPeer(frame, len);
      return false;
    }
  }
  PeerPath& p = *path;
  if (p.path_stale) [[unlikely]] {
    // The first packet after an idle spell: the route may have changed meanwhile.
    p.path_stale = false;
    ScheduleRefresh(p);
  }
  p.sent_since_probe = true;
  if (loop_check_.IsOwnOuterPacketTo(frame, len, p.underlay)) [[unlikely]] {
    // What we sent came back: wrapping it again would send it round once more, and again.
    CountDrop(p, &TunnelCounters::tx_drops, DropReason::kLoop);
    return false;
  }
  if (p.path_mtu != 0 && len > p.path_mtu + l2_header_) {
    // Rare (the device MTU normally fits the path). The route is asked again at the next
    // tick, not here on the packet path, as the path may have grown since the last probe (or
    // shrunk further); not while a believed error holds it lower, as the route cannot say
    // more until that expires. Until then the packet is answered by what is known.
    if (!p.refresh_due && (p.learned_mtu == 0 || monotonic_nanos() >= p.learned_until_nanos)) {
      ScheduleRefresh(p);
    }
    HandleTooBig(p, frame, len);
    return false;
  }
  const uint32_t sequence = p.encap.sequence ? ++tx_sequence_ : 0;
  *packet = Encapsulate(p.encap, frame, len, 0, sequence);
  if (packet->packet == nullptr) {
    CountDrop(p, &TunnelCounters::tx_drops, packet->drop);
    return false;
  }
  packet->destination = reinterpret_cast<const sockaddr*>(&p.destination);
  packet->destination_len = p.destination_len;
  packet->peer = p.handle;
  return true;
}

void TunnelDatapath::AnswerNoPeer(const uint8_t* frame, size_t len) {
  TunnelCounters& c = counters();
  Count(c.tx_drops, DropReason::kNoPeer);
  // As a router without a route answers, from the packet's own destination (as HandleTooBig
  // does, for the same reason: the host takes it in through this very device).
  // Nothing answers a packet sent to a group or to everyone (RFC 1122 3.2.2, RFC 4443 2.4):
  // the host's own multicast (IPv6 neighbour and router discovery, MLD) goes to no peer.
  const uint8_t version = IpVersion(frame, len);
  if ((version == 4 && len >= kIpv4HeaderLen &&
       ((frame[16] & 0xF0) == 0xE0 || LoadBe32(frame + 16) == 0xFFFFFFFFu)) ||
      (version == 6 && len >= kIpv6HeaderLen && frame[24] == 0xFF)) {
    return;
  }
  if (!TakeIcmpToken()) return;
  uint8_t* out = worker_->scratch.get();
  size_t n = 0;
  if (version == 4) {
    n = WriteIcmpHostUnreachable(frame, len, LoadBe32(frame + 16), out,
                                 WorkerContext::kScratchBytes);
  } else {
    n = WriteIcmpv6AddressUnreachable(frame, len, OuterAddress::FromIpv6(frame + 24), out,
                                      WorkerContext::kScratchBytes);
  }
  if (n != 0) WriteIcmpToDevice(out, n);
}

bool TunnelDatapath::TakeIcmpToken() {
  const int64_t now = monotonic_nanos();
  const int64_t earned = (now - icmp_refilled_nanos_) / kNanosPerIcmpToken;
  if (earned > 0) {
    icmp_tokens_ = std::min<int64_t>(kIcmpBurst, icmp_tokens_ + earned);
    icmp_refilled_nanos_ = now;
  }
  if (icmp_tokens_ == 0) return false;
  --icmp_tokens_;
  return true;
}

void TunnelDatapath::TransmitDone(uint8_t* frame, size_t len, int result, uint64_t peer) {
  TunnelCounters& c = counters();
  PeerPath* path = PathOf(peer);
  if (result >= 0) {
    c.tx_packets.Add();
    c.tx_bytes.Add(len);
    if (path != nullptr) CountPeer(*path, &PeerCounters::tx_packets, &PeerCounters::tx_bytes, len);
    return;
  }
  if (result != -EMSGSIZE) {
    if (path != nullptr) {
      CountDrop(*path, &TunnelCounters::tx_drops, DropReason::kSendError);
    } else {
      Count(c.tx_drops, DropReason::kSendError);
    }
    return;
  }
  if (path == nullptr) {
    // The peer went while its packet was on its way: nobody's path to lower.
    Count(c.tx_drops, DropReason::kTooBig);
    return;
  }
  PeerPath& p = *path;
  // The underlay refused the packet as larger than its MTU (raw sends never fragment): the
  // path is smaller than thought (AskRouteSoon); it is no more than what failed.
  AskRouteSoon(p);
  const uint32_t failed = static_cast<uint32_t>(len - l2_header_);
  if (fou() && !peers_ && p.path_mtu >= failed) {
    // The route carries it, and a fou socket checks sizes against the device alone: the
    // refusal is an ICMP error the kernel queued on the connected socket (it believes any),
    // not this packet's size, and that send consumed it. Only errors the engine judged itself
    // lower the path; the packet goes again, once. A multipoint tunnel's senders are not
    // connected and have no errors queued: their refusal is the packet's size, as a raw one.
    if (!ResendFou(p, frame, len)) CountDrop(p, &TunnelCounters::tx_drops, DropReason::kSendError);
    return;
  }
  if (p.path_mtu == 0 || p.path_mtu >= failed) {
    p.path_mtu = failed > 1 ? failed - 1 : 1;
    if (worker_->worker == 0) p.shown->path_mtu.store(p.path_mtu, std::memory_order_relaxed);
  }
  HandleTooBig(p, frame, len);
}

void TunnelDatapath::HandleTooBig(PeerPath& p, uint8_t* frame, size_t len) {
  TunnelCounters& c = counters();
  const int ip_offset = InnerIpOffset(encap_.mode, frame, len);
  if (l2_header_ != 0 || ip_offset != 0) {
    // A bridge has nobody to tell: the frame is dropped, as a too-long frame on any link.
    CountDrop(p, &TunnelCounters::tx_drops, DropReason::kTooBig);
    return;
  }
  const uint8_t version = IpVersion(frame, len);
  if (version == 4 && len >= kIpv4HeaderLen) {
    const bool inner_df = (LoadBe16(frame + 6) & kIpv4FlagDontFragment) != 0;
    // Without DF the kernel fragments the outer packet (ip_tunnel's last resort); over IPv6 it
    // answers frag-needed whatever the DF bit (ip4ip6_tnl_xmit).
    if (!inner_df && !ipv6_) {
      const uint32_t sequence = p.encap.sequence ? ++tx_sequence_ : 0;
      EncapResult outer = Encapsulate(p.encap, frame, len, 0, sequence);
      if (outer.packet == nullptr) {
        CountDrop(p, &TunnelCounters::tx_drops, outer.drop);
        return;
      }
      if (!SendFragments(p, outer.packet, outer.len)) {
        CountDrop(p, &TunnelCounters::tx_drops, DropReason::kTooBig);
        return;
      }
      c.tx_fragmented.Add();
      c.tx_packets.Add();
      c.tx_bytes.Add(len);
      CountPeer(p, &PeerCounters::tx_packets, &PeerCounters::tx_bytes, len);
      return;
    }
    CountDrop(p, &TunnelCounters::tx_drops, DropReason::kTooBig);
    uint8_t* out = worker_->scratch.get();
    // From the packet's own destination: the host drops what arrives on a device from one of
    // its own addresses (a martian), and the destination is routed through this very device,
    // so even a strict reverse-path check lets the error in.
    const uint32_t source = LoadBe32(frame + 16);
    const size_t n = WriteIcmpFragmentationNeeded(
        frame, len, source, static_cast<uint16_t>(std::min(p.path_mtu, 65535u)), out,
        WorkerContext::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
    return;
  }
  CountDrop(p, &TunnelCounters::tx_drops, DropReason::kTooBig);
  if (version == 6 && len >= kIpv6HeaderLen) {
    uint8_t* out = worker_->scratch.get();
    const OuterAddress source = OuterAddress::FromIpv6(frame + 24);  // as for IPv4
    const size_t n =
        WriteIcmpv6PacketTooBig(frame, len, source, p.path_mtu, out, WorkerContext::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
  }
}

bool TunnelDatapath::WriteIcmpToDevice(const uint8_t* ip, size_t len) {
  // A TUN write hands the packet to the host's stack at once; it does not block.
  return worker_->io->WriteDevice(config_.device_fd, config_.vnet_header, ip, len) ==
         static_cast<int>(len + vnet_header_len());
}

bool TunnelDatapath::SendFragments(PeerPath& p, const uint8_t* outer, size_t len) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    Fragment fragments[kMaxFragments];
    // The outer packet lives in the backend's buffer; the fragments go to the scratch space.
    const size_t count = FragmentIpv4(outer, len, p.path_mtu + p.overhead - l2_header_,
                                      worker_->NextFragmentId(), worker_->scratch.get(),
                                      WorkerContext::kScratchBytes, fragments, kMaxFragments);
    if (count == 0) return false;
    int error = 0;
    for (size_t i = 0; i < count && error == 0; ++i) {
      error = worker_->io->SendUnderlay(false, p.underlay, fragments[i].data, fragments[i].len);
    }
    if (error == 0) return true;
    // The path shrank under us: cut again, once, if the route could be asked now.
    if (error != EMSGSIZE || !AskRouteSoon(p)) return false;
  }
  return false;
}

bool TunnelDatapath::AskRouteSoon(PeerPath& p) {
  if (monotonic_nanos() - p.last_route_ask_nanos >= kUrgentRouteAskNanos) {
    RefreshPath(p);
    return true;
  }
  if (!p.refresh_due) ScheduleRefresh(p);
  return false;
}

bool TunnelDatapath::ApplyReceiveRules(const Decapsulated& d) {
  TunnelCounters& c = counters();
  PeerPath* path = &remote_;
  if (peers_) {
    path = peers_->table().ForSource(d.outer_src);
    if (path == nullptr) [[unlikely]] {
      Count(c.rx_drops, DropReason::kUnknownPeer);
      return false;
    }
  }
  // ip_tunnel_rcv: a tunnel that wants checksums drops packets without one (a wrong one never
  // got this far), and one that wants sequence numbers drops packets without one or behind.
  if (config_.input_checksum && !d.has_checksum) {
    Count(c.rx_drops, DropReason::kGreChecksum);
    return false;
  }
  if (d.inner_len == 0) {
    TakeKeepaliveReply(*path);
    return false;
  }
  // A multipoint tunnel numbers nothing (CheckEngineTunnel): its peers' rules are all.
  if (peers_) return ApplyPeerRules(*path, d);
  if (config_.input_sequence) {
    if (!d.has_sequence ||
        (rx_sequence_ != 0 && static_cast<int32_t>(d.sequence - rx_sequence_) < 0)) {
      Count(c.rx_drops, DropReason::kGreSequence);
      return false;
    }
    rx_sequence_ = d.sequence + 1;
  }
  return !AnswerPeerKeepalive(remote_, d);
}

bool TunnelDatapath::ApplyPeerRules(PeerPath& peer, const Decapsulated& d) {
  // Its keepalive is a packet from it to itself: answered whatever its inner source.
  if (AnswerPeerKeepalive(peer, d)) return false;
  // Only from an inner source whose longest match is this very peer (WireGuard's rule): a peer
  // cannot speak for another's prefixes.
  const uint8_t version = IpVersion(d.inner, d.inner_len);
  const bool allowed = (version == 4 && d.inner_len >= kIpv4HeaderLen &&
                        peers_->table().MaySend(peer, d.inner + 12, false)) ||
                       (version == 6 && d.inner_len >= kIpv6HeaderLen &&
                        peers_->table().MaySend(peer, d.inner + 8, true));
  if (!allowed) {
    CountDrop(peer, &TunnelCounters::rx_drops, DropReason::kSpoofedSource);
    return false;
  }
  // Counted on the peer as it is handed to the device (the tunnel counts the device's write).
  CountPeer(peer, &PeerCounters::rx_packets, &PeerCounters::rx_bytes, d.inner_len);
  StampReceived(peer);
  return true;
}

void TunnelDatapath::TakeKeepaliveReply(PeerPath& p) {
  // An empty payload is our keepalive, come home through the peer. Its sequence number is
  // ours, not the peer's stream's: it neither passes nor moves the receive window.
  // Tick sees the new reply time (from whichever worker took the reply) and starts counting
  // missed replies again.
  counters().keepalive_replies.Add();
  if (p.counters != nullptr) p.counters->keepalive_replies.Add();
  PathObservation& shown = *p.shown;
  // The reply cannot say which keepalive it answers: it is a packet we built for the peer
  // to forward back as any router would, and an IPv6 one has no field to number it in. So
  // it is timed against the latest keepalive sent: a reply that comes back after the next
  // keepalive has left (a round trip longer than the interval) reads short.
  const int64_t sent = shown.last_keepalive_sent_nanos.load(std::memory_order_relaxed);
  const int64_t rtt = WorkerClock::PreciseMonotonicNanos() - sent;
  if (sent != 0 && rtt > 0) shown.keepalive_rtt_nanos.store(rtt, std::memory_order_relaxed);
  shown.peer_alive.store(true, std::memory_order_relaxed);
  shown.last_keepalive_reply_unix_nanos.store(absl::ToUnixNanos(absl::Now()),
                                              std::memory_order_relaxed);
  StampReceived(p);
}

bool TunnelDatapath::AnswerPeerKeepalive(PeerPath& p, const Decapsulated& d) {
  if (!IsPeerKeepalive(d)) return false;
  // The peer's keepalive: a packet from it to itself, which a router would send back by
  // routing it. Send it straight home instead of through the host.
  if (worker_->io->SendUnderlay(ipv6_, d.outer_src, d.inner, d.inner_len) == 0) {
    counters().keepalive_answered.Add();
    if (p.counters != nullptr) p.counters->keepalive_answered.Add();
  } else {
    CountDrop(p, &TunnelCounters::rx_drops, DropReason::kSendError);
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

void TunnelDatapath::DeviceWriteDone(size_t len, int result, uint32_t packets) {
  TunnelCounters& c = counters();
  if (result >= 0) {
    c.rx_packets.Add(packets);
    c.rx_bytes.Add(len);
    if (packets > 1) c.rx_coalesced.Add();
    StampReceived(remote_);
  } else {
    c.rx_drops[static_cast<int>(DropReason::kDeviceError)].Add(packets);
  }
}

TunnelDatapath::DeviceRead TunnelDatapath::TakeVirtioNetHeader(const VirtioNetHeader& header,
                                                               uint8_t* frame, size_t len,
                                                               size_t* segments) {
  DropReason reason = DropReason::kBadInnerPacket;
  switch (ClassifyVirtioRead(header, frame, len, segments, &reason)) {
    case VirtioRead::kPacket:
      return DeviceRead::kPacket;
    case VirtioRead::kSuperPacket:
      counters().tx_super_packets.Add();
      return DeviceRead::kSuperPacket;
    case VirtioRead::kMalformed:
      break;
  }
  Count(counters().tx_drops, reason);
  return DeviceRead::kDropped;
}

TunnelDatapath::FouPayload TunnelDatapath::FouPayloadOf(const EncapResult& packet) const {
  const uint16_t sport = LoadBe16(packet.packet + kIpv4HeaderLen);
  FouPayload out;
  out.sender = fou_senders_[sport % fou_senders_.size()].handle;
  out.payload.iov_base = packet.packet + fou_header_len_;
  out.payload.iov_len = packet.len - fou_header_len_;
  out.tos = packet.packet[1];
  out.ttl = packet.packet[8];
  if (peers_) {
    out.destination = packet.destination;
    out.destination_len = packet.destination_len;
  }
  return out;
}

size_t TunnelDatapath::NextFouRun(const EncapResult* packets, size_t count, iovec* iovs,
                                  int* sender, uint16_t* gso_size) const {
  const size_t size = packets[0].len - fou_header_len_;
  *sender = FouPayloadOf(packets[0]).sender;
  size_t n = 0;
  size_t bytes = 0;
  while (n < count && n < kMaxFouRun && (n == 0 || fou_gso_)) {
    const FouPayload p = FouPayloadOf(packets[n]);
    const size_t len = p.payload.iov_len;
    // One GSO send has one destination: a run stops where the peer changes.
    if (n > 0 && (len > size || bytes + len > kMaxFouRunBytes || p.sender != *sender ||
                  packets[n].peer != packets[0].peer || iovs[n - 1].iov_len != size)) {
      break;
    }
    iovs[n] = p.payload;
    bytes += len;
    ++n;
  }
  *gso_size = n > 1 ? static_cast<uint16_t>(size) : 0;
  return n;
}

void TunnelDatapath::SendFouNow(uint8_t* const* frames, const size_t* lens,
                                const EncapResult* packets, size_t count) {
  iovec iov[kMaxFouRun];
  for (size_t first = 0; first < count;) {
    int sender = -1;
    uint16_t gso_size = 0;
    const size_t n = NextFouRun(packets + first, count - first, iov, &sender, &gso_size);
    const FouPayload head = FouPayloadOf(packets[first]);
    const int sent = worker_->io->SendFou(sender, head.destination, head.destination_len, iov, n,
                                          head.tos, head.ttl, gso_size);
    if (sent == -EIO && n > 1) {
      fou_gso_ = false;  // no UDP GSO on this path (wireguard-go's probe): one by one from now
      continue;
    }
    for (size_t i = 0; i < n; ++i) {
      TransmitDone(frames[first + i], lens[first + i],
                   sent >= 0 ? static_cast<int>(iov[i].iov_len) : sent, packets[first + i].peer);
    }
    first += n;
  }
}

bool TunnelDatapath::ResendFou(PeerPath& p, uint8_t* frame, size_t len) {
  const uint32_t sequence = p.encap.sequence ? ++tx_sequence_ : 0;
  EncapResult packet = Encapsulate(p.encap, frame, len, 0, sequence);
  if (packet.packet == nullptr) return false;
  packet.destination = reinterpret_cast<const sockaddr*>(&p.destination);
  packet.destination_len = p.destination_len;
  const FouPayload f = FouPayloadOf(packet);
  if (worker_->io->SendFou(f.sender, f.destination, f.destination_len, &f.payload, 1, f.tos, f.ttl,
                           0) < 0) {
    return false;
  }
  counters().tx_packets.Add();
  counters().tx_bytes.Add(len);
  CountPeer(p, &PeerCounters::tx_packets, &PeerCounters::tx_bytes, len);
  return true;
}

void TunnelDatapath::WriteToDeviceNow(const Decapsulated& d) {
  const int n =
      worker_->io->WriteDevice(config_.device_fd, config_.vnet_header, d.inner, d.inner_len);
  DeviceWriteDone(d.inner_len, n);
}

void TunnelDatapath::SendNow(uint8_t* frame, size_t len, const EncapResult& packet) {
  if (fou()) return SendFouNow(&frame, &len, &packet, 1);
  const PeerPath* p = PathOf(packet.peer);
  if (p == nullptr) {  // prepared for a peer gone since (not on this thread's way: defensive)
    Count(counters().tx_drops, DropReason::kNoPeer);
    return;
  }
  const int error = worker_->io->SendUnderlay(ipv6_, p->underlay, packet.packet, packet.len);
  TransmitDone(frame, len, error == 0 ? static_cast<int>(packet.len) : -error, packet.peer);
}

void TunnelDatapath::Tick(absl::Time now) {
  if (now < next_tick_) return;
  if (peers_) {
    peers_->TickDue(now, [this, now](PeerPath& p) {
      ++peer_visits_;
      return TickPath(p, now);
    });
    next_tick_ = peers_->next_due();
    return;
  }
  absl::Time next = TickPath(remote_, now);
  if (now >= next_sequence_mark_) {
    sequence_marks_[1] = sequence_marks_[0];
    sequence_marks_[0] = tx_sequence_;
    next_sequence_mark_ = now + kSequenceMarkInterval;
  }
  next_tick_ = std::min(next, next_sequence_mark_);
}

absl::Time TunnelDatapath::TickPath(PeerPath& p, absl::Time now) {
  const int64_t learned_left = p.learned_until_nanos - monotonic_nanos();
  if (p.refresh_due || (p.learned_mtu != 0 && learned_left <= 0)) {
    RefreshPath(p);
    p.next_probe = now + kProbeInterval;
  } else if (now >= p.next_probe) {
    // Only a path sent on since the last probe is asked: thousands of idle ones would cost
    // the worker thousands of route questions a second. An idle one's path is marked stale,
    // and its next packet has the route asked at the next tick. An idle peer is not visited
    // again until then (a point-to-point tunnel's remote is: its tunnel ticks anyway).
    if (p.sent_since_probe) {
      RefreshPath(p);
      p.next_probe = now + kProbeInterval;
    } else {
      p.path_stale = true;
      p.next_probe = &p == &remote_ ? now + kProbeInterval : absl::InfiniteFuture();
    }
    p.sent_since_probe = false;
  }
  absl::Time next = p.next_probe;
  if (p.learned_mtu != 0) {
    next = std::min(next, now + absl::Nanoseconds(std::max<int64_t>(learned_left, 0)));
  }
  if (now >= p.next_keepalive) {
    // A reply may have come to another worker: it leaves the time in the shared stats.
    const int64_t last_reply = p.shown->last_keepalive_reply_unix_nanos.load();
    if (last_reply != p.seen_keepalive_reply) {
      p.seen_keepalive_reply = last_reply;
      p.keepalives_outstanding = 0;
    }
    if (p.keepalives_outstanding >= p.keepalive_retries) {
      p.shown->peer_alive.store(false, std::memory_order_relaxed);
    }
    SendKeepalive(p);
    p.next_keepalive = now + p.keepalive_interval;
  }
  return std::min(next, p.next_keepalive);
}

void TunnelDatapath::SendKeepalive(PeerPath& p) {
  ++p.keepalives_outstanding;
  if (p.source.is_zero()) return;  // no route to the peer: nothing can come back either
  // What the peer will send home: a packet of this tunnel's kind from the peer to us, carrying
  // what our receive side requires, with nothing inside.
  EncapParams home;
  home.mode = p.encap.mode;
  home.local = p.underlay;
  home.remote = p.source;
  home.has_key = config_.has_input_key;
  home.key = config_.input_key;
  home.checksum = config_.input_checksum;
  home.sequence = config_.input_sequence;
  home.pmtudisc = false;
  uint8_t* end = worker_->scratch.get() + kMaxEncapHeadroom * 2;
  EncapResult inner = EncapsulateEmpty(home, end, rx_sequence_);
  const uint32_t sequence = p.encap.sequence ? ++tx_sequence_ : 0;
  EncapResult outer = Encapsulate(p.encap, inner.packet, inner.len, 0, sequence);
  if (outer.packet == nullptr) return;
  // Before the send: a reply can be back (at another worker) before SendNow returns.
  p.shown->last_keepalive_sent_nanos.store(WorkerClock::PreciseMonotonicNanos(),
                                           std::memory_order_relaxed);
  if (worker_->io->SendUnderlay(ipv6_, p.underlay, outer.packet, outer.len) == 0) {
    counters().keepalive_sent.Add();
    if (p.counters != nullptr) p.counters->keepalive_sent.Add();
  }
}

}  // namespace tunnelagent::dataplane
