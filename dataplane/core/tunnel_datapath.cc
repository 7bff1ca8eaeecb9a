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
      absl::StatusOr<FouSender> sender = worker->io->OpenFouSender(config.encap);
      if (!sender.ok()) {
        return absl::Status(sender.status().code(),
                            absl::StrCat("tunnel ", config.name, ": ", sender.status().message()));
      }
      t->fou_senders_.push_back(*sender);
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
  if (config.keepalive_interval > absl::ZeroDuration() && worker->worker == 0) {
    t->next_keepalive_ = now;
  }
  return t;
}

TunnelDatapath::TunnelDatapath(const EngineTunnel& config, WorkerContext* worker)
    : config_(config),
      counters_(&config.stats->worker(worker->worker)),
      worker_(worker),
      // From the configured addresses: a tunnel without a local address sends from whichever
      // the route gives, so its looped packets can come from any.
      loop_check_(config.encap),
      ipv6_(IsIpv6UnderlayMode(config.encap.mode)),
      encap_(config.encap) {
  fou_header_len_ = EncapIpUdpLen(encap_);
  match_ = TunnelMatch{config.encap.mode, config.has_input_key, config.encap.local,
                       config.encap.remote, config.has_input_key ? config.input_key : 0};
  destination_ = UnderlayAddress(ipv6_, config.encap.remote, &destination_len_);
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
  overhead_ = static_cast<uint32_t>(EncapHeaderLen(encap_)) + l2_header_;
  source_ = config.encap.local;
  if (worker->worker == 0) config_.stats->peer_alive.store(true, std::memory_order_relaxed);
  seen_keepalive_reply_ = config_.stats->last_keepalive_reply_unix_nanos.load();
}

void TunnelDatapath::RefreshPath() {
  last_route_ask_nanos_ = monotonic_nanos();
  uint32_t underlay_mtu = 0;
  OuterAddress source;
  // A lowered path recovers by itself, as the kernel's PMTU entries expire: a path that is
  // still smaller answers the next large packet with another error.
  refresh_due_ = false;
  const bool expired = learned_mtu_ != 0 && monotonic_nanos() >= learned_until_nanos_;
  if (expired) learned_mtu_ = 0;
  if (!worker_->io->ProbeRoute(ipv6_, config_.encap.remote, &underlay_mtu, &source)) {
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
  if (worker_->worker == 0) config_.stats->path_mtu.store(path_mtu_, std::memory_order_relaxed);
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
  TickSoon();
  const uint32_t current = learned_mtu_ != 0 ? std::min(learned_mtu_, route_mtu_) : route_mtu_;
  if (route_mtu_ == 0 || report.mtu < current) {
    learned_mtu_ = report.mtu;
    learned_until_nanos_ = monotonic_nanos() + absl::ToInt64Nanoseconds(worker_->path_mtu_expiry);
    UpdatePathMtu();
  }
  return verdict;
}

bool TunnelDatapath::PrepareTransmit(uint8_t* frame, size_t len, EncapResult* packet) {
  if (path_stale_) [[unlikely]] {
    // The first packet after an idle spell: the route may have changed meanwhile.
    path_stale_ = false;
    ScheduleRefresh();
  }
  sent_since_probe_ = true;
  if (loop_check_.IsOwnOuterPacket(frame, len)) [[unlikely]] {
    // What we sent came back: wrapping it again would send it round once more, and again.
    Count(counters().tx_drops, DropReason::kLoop);
    return false;
  }
  if (path_mtu_ != 0 && len > path_mtu_ + l2_header_) {
    // Rare (the device MTU normally fits the path). The route is asked again at the next
    // tick, not here on the packet path, as the path may have grown since the last probe (or
    // shrunk further); not while a believed error holds it lower, as the route cannot say
    // more until that expires. Until then the packet is answered by what is known.
    if (!refresh_due_ && (learned_mtu_ == 0 || monotonic_nanos() >= learned_until_nanos_)) {
      ScheduleRefresh();
    }
    HandleTooBig(frame, len);
    return false;
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
  // path is smaller than thought (AskRouteSoon); it is no more than what failed.
  AskRouteSoon();
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
    if (worker_->worker == 0) stats().path_mtu.store(path_mtu_, std::memory_order_relaxed);
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
    uint8_t* out = worker_->scratch.get();
    // From the packet's own destination: the host drops what arrives on a device from one of
    // its own addresses (a martian), and the destination is routed through this very device,
    // so even a strict reverse-path check lets the error in.
    const uint32_t source = LoadBe32(frame + 16);
    const size_t n = WriteIcmpFragmentationNeeded(
        frame, len, source, static_cast<uint16_t>(std::min(path_mtu_, 65535u)), out,
        WorkerContext::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
    return;
  }
  Count(c.tx_drops, DropReason::kTooBig);
  if (version == 6 && len >= kIpv6HeaderLen) {
    uint8_t* out = worker_->scratch.get();
    const OuterAddress source = OuterAddress::FromIpv6(frame + 24);  // as for IPv4
    const size_t n =
        WriteIcmpv6PacketTooBig(frame, len, source, path_mtu_, out, WorkerContext::kScratchBytes);
    if (n != 0 && WriteIcmpToDevice(out, n)) c.icmp_too_big_sent.Add();
  }
}

bool TunnelDatapath::WriteIcmpToDevice(const uint8_t* ip, size_t len) {
  // A TUN write hands the packet to the host's stack at once; it does not block.
  return worker_->io->WriteDevice(config_.device_fd, config_.vnet_header, ip, len) ==
         static_cast<int>(len + vnet_header_len());
}

bool TunnelDatapath::SendFragments(const uint8_t* outer, size_t len) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    Fragment fragments[kMaxFragments];
    // The outer packet lives in the backend's buffer; the fragments go to the scratch space.
    const size_t count = FragmentIpv4(outer, len, path_mtu_ + overhead_ - l2_header_,
                                      worker_->NextFragmentId(), worker_->scratch.get(),
                                      WorkerContext::kScratchBytes, fragments, kMaxFragments);
    if (count == 0) return false;
    int error = 0;
    for (size_t i = 0; i < count && error == 0; ++i) {
      error = worker_->io->SendUnderlay(false, config_.encap.remote, fragments[i].data,
                                        fragments[i].len);
    }
    if (error == 0) return true;
    // The path shrank under us: cut again, once, if the route could be asked now.
    if (error != EMSGSIZE || !AskRouteSoon()) return false;
  }
  return false;
}

bool TunnelDatapath::AskRouteSoon() {
  if (monotonic_nanos() - last_route_ask_nanos_ >= kUrgentRouteAskNanos) {
    RefreshPath();
    return true;
  }
  if (!refresh_due_) ScheduleRefresh();
  return false;
}

bool TunnelDatapath::ApplyReceiveRules(const Decapsulated& d) {
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
    if (worker_->io->SendUnderlay(ipv6_, d.outer_src, d.inner, d.inner_len) == 0) {
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

void TunnelDatapath::DeviceWriteDone(size_t len, int result, uint32_t packets) {
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
    if (n > 0 && (len > size || bytes + len > kMaxFouRunBytes || p.sender != *sender ||
                  iovs[n - 1].iov_len != size)) {
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
    const int sent = worker_->io->SendFou(sender, iov, n, head.tos, head.ttl, gso_size);
    if (sent == -EIO && n > 1) {
      fou_gso_ = false;  // no UDP GSO on this path (wireguard-go's probe): one by one from now
      continue;
    }
    for (size_t i = 0; i < n; ++i) {
      TransmitDone(frames[first + i], lens[first + i],
                   sent >= 0 ? static_cast<int>(iov[i].iov_len) : sent);
    }
    first += n;
  }
}

bool TunnelDatapath::ResendFou(uint8_t* frame, size_t len) {
  const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
  const EncapResult packet = Encapsulate(encap_, frame, len, 0, sequence);
  if (packet.packet == nullptr) return false;
  const FouPayload p = FouPayloadOf(packet);
  if (worker_->io->SendFou(p.sender, &p.payload, 1, p.tos, p.ttl, 0) < 0) return false;
  counters().tx_packets.Add();
  counters().tx_bytes.Add(len);
  return true;
}

void TunnelDatapath::WriteToDeviceNow(const Decapsulated& d) {
  const int n =
      worker_->io->WriteDevice(config_.device_fd, config_.vnet_header, d.inner, d.inner_len);
  DeviceWriteDone(d.inner_len, n);
}

void TunnelDatapath::SendNow(uint8_t* frame, size_t len, const EncapResult& packet) {
  if (fou()) return SendFouNow(&frame, &len, &packet, 1);
  const int error =
      worker_->io->SendUnderlay(ipv6_, config_.encap.remote, packet.packet, packet.len);
  TransmitDone(frame, len, error == 0 ? static_cast<int>(packet.len) : -error);
}

void TunnelDatapath::Tick(absl::Time now) {
  if (now < next_tick_) return;
  const int64_t learned_left = learned_until_nanos_ - monotonic_nanos();
  if (refresh_due_ || (learned_mtu_ != 0 && learned_left <= 0)) {
    RefreshPath();
    next_probe_ = now + kProbeInterval;
  } else if (now >= next_probe_) {
    // Only a tunnel that sent since the last probe is asked: thousands of idle ones would
    // cost the worker thousands of route questions a second. An idle one's path is marked
    // stale, and its next packet has the route asked at the next tick.
    if (sent_since_probe_) {
      RefreshPath();
    } else {
      path_stale_ = true;
    }
    sent_since_probe_ = false;
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
  next_tick_ = std::min(next, next_keepalive_);
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
  uint8_t* end = worker_->scratch.get() + kMaxEncapHeadroom * 2;
  EncapResult inner = EncapsulateEmpty(home, end, rx_sequence_);
  const uint32_t sequence = encap_.sequence ? ++tx_sequence_ : 0;
  EncapResult outer = Encapsulate(encap_, inner.packet, inner.len, 0, sequence);
  if (outer.packet == nullptr) return;
  // Before the send: a reply can be back (at another worker) before SendNow returns.
  stats().last_keepalive_sent_nanos.store(WorkerClock::PreciseMonotonicNanos(),
                                          std::memory_order_relaxed);
  if (worker_->io->SendUnderlay(ipv6_, config_.encap.remote, outer.packet, outer.len) == 0) {
    counters().keepalive_sent.Add();
  }
}

}  // namespace tunnelagent::dataplane
