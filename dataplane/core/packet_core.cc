#include "dataplane/core/packet_core.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {

PacketCore::PacketCore(PacketIo* io, const WorkerClock* clock, CoalescedWriter* writer,
                       const CoreOptions& options)
    : options_(options),
      coalescer_(kCoalescerFlows, std::max(options.coalescer_buffers, kCoalescerFlows)),
      writer_(writer) {
  worker_.io = io;
  worker_.clock = clock;
  worker_.worker = options.worker;
  worker_.path_mtu_expiry = options.path_mtu_expiry;
  worker_.fragment_id = options.first_fragment_id;
}

absl::StatusOr<TunnelDatapath*> PacketCore::AddTunnel(const EngineTunnel& config) {
  if (absl::Status status = CheckEngineTunnel(config); !status.ok()) return status;
  if (tunnels_.contains(config.name)) {
    return absl::AlreadyExistsError(absl::StrCat("tunnel ", config.name, " exists"));
  }
  absl::StatusOr<std::unique_ptr<TunnelDatapath>> path =
      TunnelDatapath::Create(config, &worker_, absl::Now());
  if (!path.ok()) return path.status();
  TunnelDatapath* tunnel = path->get();
  if (!by_match_.Insert(tunnel->match(), tunnel)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "another tunnel receives the same mode, local, remote and key as ", config.name));
  }
  if (tunnel->multipoint()) {
    multipoint_.push_back(tunnel);
  } else {
    by_remote_[config.encap.remote].push_back(tunnel);
  }
  tunnel->set_housekeeping_id(++last_housekeeping_id_);
  by_housekeeping_id_[tunnel->housekeeping_id()] = tunnel;
  worker_.housekeeping.Schedule(tunnel->housekeeping_id(), tunnel->next_tick());
  tunnels_[config.name] = std::move(*path);
  return tunnel;
}

absl::Status PacketCore::ChangePeers(absl::string_view name,
                                     const std::vector<EnginePeer>& upserted,
                                     const std::vector<uint32_t>& removed) {
  TunnelDatapath* tunnel = FindTunnel(name);
  if (tunnel == nullptr || tunnel->unlinked()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  // What the change makes due (a new peer's first visit) the tunnel tells the worker's
  // schedule itself.
  return tunnel->ChangePeers(upserted, removed, absl::Now());
}

TunnelDatapath* PacketCore::FindTunnel(absl::string_view name) const {
  auto it = tunnels_.find(name);
  return it == tunnels_.end() ? nullptr : it->second.get();
}

void PacketCore::UnlinkTunnel(TunnelDatapath* tunnel) {
  if (tunnel->unlinked()) return;
  tunnel->set_unlinked();
  by_match_.Erase(tunnel->match());
  // Its entries in the schedule are dropped as they come due.
  by_housekeeping_id_.erase(tunnel->housekeeping_id());
  multipoint_.erase(std::remove(multipoint_.begin(), multipoint_.end(), tunnel), multipoint_.end());
  auto it = by_remote_.find(tunnel->config().encap.remote);
  if (it != by_remote_.end()) {
    std::vector<TunnelDatapath*>& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), tunnel), list.end());
    if (list.empty()) by_remote_.erase(it);
  }
  coalescer_.Discard(tunnel);
}

void PacketCore::EraseTunnel(TunnelDatapath* tunnel) {
  UnlinkTunnel(tunnel);
  const std::string name = tunnel->name();  // the tunnel's own, freed by the erase
  tunnels_.erase(name);
}

void PacketCore::Clear() {
  by_remote_.clear();
  multipoint_.clear();
  by_match_.Clear();
  by_housekeeping_id_.clear();
  worker_.housekeeping.Clear();
  tunnels_.clear();
}

PacketCore::DeviceVerdict PacketCore::TakeDeviceRead(TunnelDatapath& tunnel, uint8_t* frame,
                                                     size_t read_len, EncapResult* out,
                                                     DeviceFrame* read) {
  TunnelCounters& counters = tunnel.counters();
  const size_t header = tunnel.vnet_header_len();
  if (read_len >= tunnel.read_bytes()) {
    // Filled the buffer: larger than the MTU the buffers were sized for, possibly cut.
    counters.tx_drops[static_cast<int>(DropReason::kTooBig)].Add();
    return DeviceVerdict::kDone;
  }
  read->len = read_len;
  if (header != 0) {
    if (read_len < header) {
      counters.tx_drops[static_cast<int>(DropReason::kBadInnerPacket)].Add();
      return DeviceVerdict::kDone;
    }
    read->len = read_len - header;
    read->vnet = ReadVirtioNetHeader(frame - header);
    switch (tunnel.TakeVirtioNetHeader(read->vnet, frame, read->len, &read->segments)) {
      case TunnelDatapath::DeviceRead::kDropped:
        return DeviceVerdict::kDone;
      case TunnelDatapath::DeviceRead::kSuperPacket:
        return DeviceVerdict::kSuperPacket;
      case TunnelDatapath::DeviceRead::kPacket:
        break;
    }
  }
  return tunnel.PrepareTransmit(frame, read->len, out) ? DeviceVerdict::kSend
                                                       : DeviceVerdict::kDone;
}

size_t PacketCore::PrepareSegments(TunnelDatapath& tunnel, const DeviceFrame& read,
                                   const uint8_t* frame, size_t* next, SegmentBatch& batch,
                                   size_t* made) {
  SegmentArena arena;
  arena.data = batch.memory.get();
  arena.bytes = kSegmentArenaBytes;
  arena.headroom = kDeviceHeadroom;
  arena.segments = batch.segments;
  arena.max_segments = kMaxSegments;
  *made = *next < read.segments ? SegmentSuperPacket(read.vnet, frame, read.len, *next, arena) : 0;
  *next += *made;
  size_t prepared = 0;
  for (size_t i = 0; i < *made; ++i) {
    if (tunnel.PrepareTransmit(batch.segments[i].data, batch.segments[i].len,
                               &batch.packets[prepared])) {
      batch.frames[prepared] = batch.segments[i].data;
      batch.lens[prepared++] = batch.segments[i].len;
    }
  }
  return prepared;
}

void PacketCore::SendPreparedNow(TunnelDatapath& tunnel, SegmentBatch& batch, size_t count) {
  if (tunnel.fou()) return tunnel.SendFouNow(batch.frames, batch.lens, batch.packets, count);
  for (size_t i = 0; i < count; ++i) {
    tunnel.SendNow(batch.frames[i], batch.lens[i], batch.packets[i]);
  }
}

bool PacketCore::TakeDatagram(const ReceiveSocket& socket, uint8_t* data, size_t len,
                              size_t capacity, const msghdr& msg, Delivery* out) {
  counters_.rx_packets.Add();
  if (len > capacity || (msg.msg_flags & MSG_TRUNC) != 0) {
    Drop(DropReason::kTooBig);
    return false;
  }
  Decapsulated packet;
  DropReason reason;
  if (!DecodeReceived(socket, data, len, msg, &packet, &reason)) {
    Drop(reason);
    return false;
  }
  TunnelDatapath* tunnel = MatchReceived(packet);
  if (tunnel == nullptr) return false;
  out->tunnel = tunnel;
  out->data = packet.inner;
  out->len = packet.inner_len;
  out->inner_len = static_cast<uint32_t>(packet.inner_len);
  if (tunnel->vnet_header()) {
    // On its own, behind an empty virtio-net header (in room the outer headers, or the
    // receive headroom, leave).
    out->data = PrependEmptyVirtioNetHeader(out->data);
    out->len += kVirtioNetHeaderLen;
  }
  return true;
}

void PacketCore::TakeFouDatagrams(uint8_t protocol, uint8_t* data, size_t len, const msghdr& msg) {
  // Several datagrams at once (UDP GRO): each written now, or coalesced, before the buffer
  // goes back to a receive.
  ForEachFouDatagram(
      protocol, data, len, msg, [this] { counters_.rx_packets.Add(); },
      [this](Decapsulated& packet) {
        if (TunnelDatapath* tunnel = MatchReceived(packet)) tunnel->WriteToDeviceNow(packet);
      },
      [this](DropReason reason) { Drop(reason); });
}

void PacketCore::ReceiveFailed(int error) {
  if (error != -EINTR && error != -EAGAIN) Drop(DropReason::kSocketError);
}

void PacketCore::ReceivedTooBig() {
  counters_.rx_packets.Add();
  Drop(DropReason::kTooBig);
}

TunnelDatapath* PacketCore::MatchReceived(const Decapsulated& packet) {
  TunnelDatapath* tunnel = by_match_.Lookup(packet);
  if (tunnel == nullptr) {
    Drop(DropReason::kNoTunnel);
    return nullptr;
  }
  if (!tunnel->ApplyReceiveRules(packet)) return nullptr;
  if (tunnel->vnet_header()) {
    switch (
        coalescer_.Add(tunnel, packet.inner, packet.inner_len, tunnel->config().udp_coalescing)) {
      case Coalescer::Verdict::kTaken:
        return nullptr;
      case Coalescer::Verdict::kFlushThenDeliver:
        FlushCoalesced();  // what came before it goes first
        break;
      case Coalescer::Verdict::kDeliver:
        break;
    }
  }
  return tunnel;
}

void PacketCore::FlushCoalesced() {
  if (coalescer_.open_flows() == 0) return;
  coalescer_.Flush([this](const Coalescer::Flushed& f) {
    writer_->WriteCoalesced(*static_cast<TunnelDatapath*>(const_cast<void*>(f.owner)), f);
  });
}

void PacketCore::TakeTooBig(const TooBigReport& report) {
  bool judged = false;
  auto it = by_remote_.find(report.quoted_dst);
  if (it != by_remote_.end()) {
    for (TunnelDatapath* tunnel : it->second) {
      judged |= tunnel->TakeTooBig(report) != QuoteVerdict::kOtherFlow;
    }
  }
  for (TunnelDatapath* tunnel : multipoint_) {
    judged |= tunnel->TakeTooBig(report) != QuoteVerdict::kOtherFlow;
  }
  const uint8_t p = report.quoted_protocol;
  if (!judged && options_.worker == 0 &&
      (p == kIpProtoGre || p == kIpProtoIpip || p == kIpProtoIpv6)) {
    Drop(DropReason::kIcmpRejected);
  }
}

void PacketCore::Tick(absl::Time now) {
  worker_.housekeeping.TakeDue(now, due_);
  for (const HousekeepingSchedule::Entry& entry : due_) {
    auto it = by_housekeeping_id_.find(entry.tunnel);
    if (it == by_housekeeping_id_.end()) continue;  // unlinked or gone
    TunnelDatapath& tunnel = *it->second;
    if (entry.when != tunnel.next_tick()) continue;  // moved: its newer entry stands
    tunnel.Tick(now);
    worker_.housekeeping.Schedule(entry.tunnel, tunnel.next_tick());
  }
}

}  // namespace tunnelagent::dataplane
