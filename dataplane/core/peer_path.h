// What a worker knows about the way to one remote end of a tunnel: the remote of a
// point-to-point tunnel, or one peer of a multipoint tunnel. How its packets are wrapped and
// where they go, what the path carries (route MTU, a believed ICMP error's lower MTU), whether
// the remote answers keepalives, and whose counters see it. TunnelDatapath keeps one for a
// point-to-point tunnel and one per peer (in a BasicPeerTable<PeerPath>) for a multipoint one;
// all of it is the worker's thread's.
#ifndef TUNNELAGENT_DATAPLANE_CORE_PEER_PATH_H_
#define TUNNELAGENT_DATAPLANE_CORE_PEER_PATH_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

struct PeerPath {
  // ---- Who it is ----
  uint32_t id = 0;        // the peer's id (multipoint); 0 for a point-to-point remote
  OuterAddress underlay;  // the outer destination of what goes to it (multipoint: and the
                          // outer source of what it sends)
  // What names it to TransmitDone while a send is in flight (EncapResult::peer): a slot and
  // its generation, so that a peer removed meanwhile is no longer found. 0: the tunnel's own
  // remote (point-to-point).
  uint64_t handle = 0;
  bool has_key = false;  // a key of its own (multipoint); what `encap` sends with either way
  uint32_t key = 0;

  // ---- How its packets are wrapped and sent ----
  EncapParams encap;  // the tunnel's, to `underlay`, with its key, the source resolved
  // Outer headers in front of an IP packet (or of a frame's payload): a peer's own key may
  // make its GRE header longer than the tunnel's.
  uint32_t overhead = 0;
  OuterAddress source;  // our underlay address towards it (configured, or the route's)
  // `underlay` for sendmsg's msg_name: a raw send's, or (with the fou destination port) a
  // multipoint fou tunnel's, whose senders are not connected.
  sockaddr_in6 destination{};
  socklen_t destination_len = 0;

  // ---- Whose counters ----
  // Where path MTU, keepalive and last receive show: the tunnel's own (point-to-point) or the
  // peer's (multipoint; `stats` holds them alive).
  PathObservation* shown = nullptr;
  std::shared_ptr<PeerStats> stats;
  // The peer's shard of counters this worker writes, besides the tunnel's; null for a
  // point-to-point remote (the tunnel's counters are its).
  PeerCounters* counters = nullptr;
  int64_t last_receive_stamp = 0;  // what this worker last stored as the last receive time

  // ---- Path MTU ----
  uint32_t path_mtu = 0;   // largest inner IP packet the path carries; 0 = not known
  uint32_t route_mtu = 0;  // what the route to it allows (PacketIo::ProbeRoute); 0: none
  // The underlay MTU a believed too-big error reported, until (CLOCK_MONOTONIC nanoseconds)
  // it expires; 0: none.
  uint32_t learned_mtu = 0;
  int64_t learned_until_nanos = 0;
  absl::Time next_probe = absl::InfinitePast();
  bool refresh_due = false;  // a packet found the path smaller than its frame
  // Not asked at the last probe, as nothing was sent since the one before.
  bool path_stale = false;
  bool sent_since_probe = false;     // a packet was prepared for it since the last probe
  int64_t last_route_ask_nanos = 0;  // when the route was last asked (CLOCK_MONOTONIC, coarse)

  // ---- Keepalive (worker 0 sends them) ----
  absl::Duration keepalive_interval = absl::ZeroDuration();  // zero: off
  uint32_t keepalive_retries = 3;
  absl::Time next_keepalive = absl::InfiniteFuture();
  uint32_t keepalives_outstanding = 0;
  int64_t seen_keepalive_reply = 0;  // shown->last_keepalive_reply_unix_nanos, as last read

  // ---- Housekeeping (a multipoint tunnel's schedule of its peers) ----
  absl::Time next_tick = absl::InfinitePast();
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_PEER_PATH_H_
