// Every per-tunnel counter of the dataplane, declared once. Each list below is an X-macro
// (as Envoy's stats macros are): X(member, api_field, metric, help) for each counter, from which
// the engine's TunnelCounters members, the sums the agent hands out, the Prometheus families
// and the copy into the API's messages are all generated. A new counter is one line here.
//
//   member     the TunnelCounters member the packet path adds to (counters.tx_packets)
//   api_field  its name in the API message that carries it (the same name where there is one)
//   metric     the Prometheus family, a contract with dashboards and alerts: never renamed
//   help       the family's help text
#ifndef TUNNELAGENT_DATAPLANE_TUNNEL_COUNTERS_H_
#define TUNNELAGENT_DATAPLANE_TUNNEL_COUNTERS_H_

// What the tunnel device would show. The API reports them in TunnelStatus.counters (the
// TunnelCounters message); bytes are inner bytes.
#define TUNNEL_TRAFFIC_COUNTERS(X)                                 \
  X(tx_packets, tx_packets, "tunnelagent_tunnel_tx_packets_total", \
    "Packets read from the tunnel device and sent encapsulated.")  \
  X(tx_bytes, tx_bytes, "tunnelagent_tunnel_tx_bytes_total",       \
    "Inner bytes of the packets counted in tx_packets.")           \
  X(rx_packets, rx_packets, "tunnelagent_tunnel_rx_packets_total", \
    "Packets received for the tunnel and written to its device.")  \
  X(rx_bytes, rx_bytes, "tunnelagent_tunnel_rx_bytes_total",       \
    "Inner bytes of the packets counted in rx_packets.")

// How the path and the TUN offloads were used: too-big packets answered with ICMP
// "fragmentation needed" / ICMPv6 "packet too big" written back into the device, packets sent
// as outer IPv4 fragments, super-packets read and split, and coalesced packets written (each of
// more than one received segment; the segments also count in rx_packets). Metrics only.
#define TUNNEL_PATH_COUNTERS(X)                                                           \
  X(icmp_too_big_sent, icmp_too_big_sent, "tunnelagent_tunnel_icmp_too_big_total",        \
    "Packets too big for the path answered with ICMP fragmentation-needed or ICMPv6 "     \
    "packet-too-big.")                                                                    \
  X(tx_fragmented, tx_fragmented, "tunnelagent_tunnel_tx_fragmented_total",               \
    "Packets sent as outer IPv4 fragments (too big for the path, DF not set).")           \
  X(tx_super_packets, tx_super_packets, "tunnelagent_tunnel_tx_super_packets_total",      \
    "TCP/UDP super-packets (TUN offloads: TSO, USO) the host handed over and the "        \
    "dataplane split into packets the underlay carries.")                                 \
  X(rx_coalesced, rx_coalesced, "tunnelagent_tunnel_rx_coalesced_packets_total",          \
    "Packets of several received TCP segments (or UDP datagrams) of one flow, coalesced " \
    "(userspace GRO) and written to the device as one.")

// Keepalives (only when configured): sent, replies seen, and the peer's keepalives this agent
// sent back. The API reports them in TunnelStatus.keepalive (KeepaliveStatus); the metrics
// only for tunnels with keepalive on (the others would only add series stuck at 0).
#define TUNNEL_KEEPALIVE_COUNTERS(X)                                             \
  X(keepalive_sent, sent, "tunnelagent_tunnel_keepalive_sent_total",             \
    "Keepalives sent to the peer.")                                              \
  X(keepalive_replies, replies, "tunnelagent_tunnel_keepalive_replies_total",    \
    "Keepalives that came back from the peer.")                                  \
  X(keepalive_answered, answered, "tunnelagent_tunnel_keepalive_answered_total", \
    "Keepalives of the peer's that this agent sent back.")

// Every plain counter of a tunnel.
#define TUNNEL_COUNTERS(X) \
  TUNNEL_TRAFFIC_COUNTERS(X) TUNNEL_PATH_COUNTERS(X) TUNNEL_KEEPALIVE_COUNTERS(X)

// Drops, one counter per DropReason: X(member, api_field, direction). The API reports each
// direction's total in TunnelStatus.counters; the metric tunnelagent_tunnel_drops_total has
// them by direction and reason.
#define TUNNEL_DROP_COUNTERS(X) \
  X(tx_drops, tx_dropped, "tx") \
  X(rx_drops, rx_dropped, "rx")

#endif  // TUNNELAGENT_DATAPLANE_TUNNEL_COUNTERS_H_
