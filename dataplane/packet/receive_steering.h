// Receive steering for a pool of dataplane workers. A raw IP socket gets a copy of every packet
// of its protocol, so N workers with their own raw sockets would each handle every packet;
// instead each socket carries a classic BPF filter (SO_ATTACH_FILTER) that keeps only the
// packets of its worker. All N programs compute the same hash of the inner flow and differ only
// in the worker they compare it with, so every packet, garbage included, is accepted by exactly
// one of them; packets of one inner flow always land on one worker, which keeps their order.
//
// The hash, for protocol 47 (GRE), 4 (IPv4 inside) and 41 (IPv6 inside):
//  - the tunnel payload P starts after the outer IPv4 header (4 * IHL) on an IPv4 socket, at 0
//    on an IPv6 socket (the kernel strips the IPv6 header and its extension headers);
//  - GRE with the sequence bit, or a version other than 0, goes to worker 0, so a sequence
//    check sees every packet of its tunnel; the key, when present, is hashed; the payload is
//    IPv4, IPv6, or an Ethernet frame (gretap) carrying IPv4 or IPv6;
//  - inner IPv4: source ^ destination, and the 4 bytes of ports of TCP, UDP and SCTP when the
//    packet is not a fragment (so every fragment of a datagram goes where its first went) and
//    they are present;
//  - inner IPv6: the low 32 bits of source and destination (not the flow label: Linux picks a
//    new one for a connection after a retransmission timeout, which would move the flow to
//    another worker and reorder it), and the ports of
//    TCP, UDP and SCTP directly after the fixed header when present;
//  - anything else, or too short to parse, goes to worker 0, which counts it as a drop.
#ifndef TUNNELAGENT_DATAPLANE_PACKET_RECEIVE_STEERING_H_
#define TUNNELAGENT_DATAPLANE_PACKET_RECEIVE_STEERING_H_

#include <linux/filter.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tunnelagent::dataplane {

// What the socket's packets start with.
enum class SteeringSocket {
  kIpv4,  // raw AF_INET socket: data starts at the outer IPv4 header (IHL may be > 5)
  kIpv6,  // raw AF_INET6 socket: data starts at the outer payload (the IPv6 header is not in
          // the data)
};

// The worker (0..workers-1) that should receive this packet, as the program computes it; a C++
// reference used by tests and by the engine's tests to predict where a packet lands.
// `protocol` is the socket's IP protocol: 47 (GRE), 4 (IPv4 inside), 41 (IPv6 inside); any
// other protocol, and workers <= 1, give worker 0.
unsigned SteeringWorker(SteeringSocket socket, uint8_t protocol, const uint8_t* data, size_t len,
                        unsigned workers);

// The classic BPF program for worker `worker` of `workers` (workers >= 2, worker < workers):
// accepts whole (returns 0xFFFFFFFF) exactly the packets SteeringWorker gives to `worker`,
// returns 0 for the others. It never loads beyond the packet, and uses only instructions the
// kernel has had since Linux 3.7 (BPF_MOD). Out of its domain it still keeps the "exactly one"
// rule: with workers <= 1 it accepts everything, for worker >= workers nothing, and for a
// protocol other than 47, 4 and 41 it accepts everything on worker 0 only.
//
// The filter applies to packets that arrive after it is attached: what queued on the socket
// between socket() and SO_ATTACH_FILTER reached every worker and must be drained (or kept only
// where SteeringWorker says). Replacing the programs of all sockets for a new worker count is
// not atomic either: while they differ a packet may reach two workers or none.
std::vector<sock_filter> SteeringProgram(SteeringSocket socket, uint8_t protocol, unsigned worker,
                                         unsigned workers);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_PACKET_RECEIVE_STEERING_H_
