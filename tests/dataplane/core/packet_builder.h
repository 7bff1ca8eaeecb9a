// A small fluent builder of whole packets for the packet core's tests, in katran's style:
//
//   Build().Ipv4({.src = kLocal4, .dst = kRemote4, .protocol = 47}).Gre({.protocol = 0x0800})
//       .Raw(inner).ToBytes()
//
// Layers are listed outermost first; ToBytes() renders them innermost first, so every length and
// checksum (IPv4 header, GRE, ICMP, ICMPv6 and TCP with their pseudo-headers) is computed here,
// with test_packets.h's reference checksum, not by the code under test. A field can be forced to
// a wrong value to make a malformed variant.
#ifndef TUNNELAGENT_TESTS_DATAPLANE_CORE_PACKET_BUILDER_H_
#define TUNNELAGENT_TESTS_DATAPLANE_CORE_PACKET_BUILDER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "dataplane/packet/outer_address.h"
#include "tests/dataplane/packet/test_packets.h"

namespace tunnelagent::dataplane::test {

// Underlay addresses (198.18.0.0/15 and a unique-local IPv6 prefix) and the inner ones (10.x,
// fd10::/16) every core test uses.
inline constexpr uint32_t kLocal4 = 0xC6120001;     // 198.18.0.1
inline constexpr uint32_t kRemote4 = 0xC6120002;    // 198.18.0.2
inline constexpr uint32_t kOther4 = 0xC6120003;     // 198.18.0.3
inline constexpr uint32_t kRouter4 = 0xC61200FE;    // 198.18.0.254
inline constexpr uint32_t kInnerSrc4 = 0x0A010001;  // 10.1.0.1
inline constexpr uint32_t kInnerDst4 = 0x0A020001;  // 10.2.0.1

using Ipv6Address = std::array<uint8_t, 16>;
inline constexpr Ipv6Address V6(uint16_t first, uint16_t second, uint16_t last) {
  return {static_cast<uint8_t>(first >> 8),
          static_cast<uint8_t>(first),
          static_cast<uint8_t>(second >> 8),
          static_cast<uint8_t>(second),
          0,
          0,
          0,
          0,
          0,
          0,
          0,
          0,
          0,
          0,
          static_cast<uint8_t>(last >> 8),
          static_cast<uint8_t>(last)};
}
inline constexpr Ipv6Address kLocal6 = V6(0xfd00, 0x18, 1);   // fd00:18::1
inline constexpr Ipv6Address kRemote6 = V6(0xfd00, 0x18, 2);  // fd00:18::2
inline constexpr Ipv6Address kOther6 = V6(0xfd00, 0x18, 3);   // fd00:18::3
inline constexpr Ipv6Address kInnerSrc6 = V6(0xfd10, 0, 1);   // fd10::1
inline constexpr Ipv6Address kInnerDst6 = V6(0xfd20, 0, 1);   // fd20::1

inline OuterAddress Outer6(const Ipv6Address& a) { return OuterAddress::FromIpv6(a.data()); }

struct Ipv4Fields {
  uint32_t src = kInnerSrc4;
  uint32_t dst = kInnerDst4;
  uint8_t protocol = 1;
  uint8_t tos = 0;
  uint8_t ttl = 64;
  uint16_t id = 0;
  bool df = true;
  bool mf = false;
  uint16_t fragment_offset = 0;  // in 8-byte units
  uint8_t version = 4;
  std::optional<uint16_t> total_len = std::nullopt;  // forced; else the header and what follows
};

struct Ipv6Fields {
  Ipv6Address src = kInnerSrc6;
  Ipv6Address dst = kInnerDst6;
  uint8_t next_header = 58;
  uint8_t traffic_class = 0;
  uint32_t flow_label = 0;
  uint8_t hop_limit = 64;
};

// The 8-byte destination-options header ip6_tunnel puts first: the tunnel encapsulation limit
// (RFC 2473) padded with PadN.
struct EncapLimitFields {
  uint8_t next_header = 47;
  uint8_t limit = 4;
};

struct GreFields {
  uint16_t protocol = 0x0800;
  bool checksum = false;
  std::optional<uint32_t> key = std::nullopt;
  std::optional<uint32_t> sequence = std::nullopt;
  uint16_t extra_flags = 0;  // e.g. the routing bit or a version, for malformed variants
  bool wrong_checksum = false;
};

struct UdpFields {
  uint16_t sport = 0;
  uint16_t dport = 0;
  // Zero: none, as GRE-in-UDP over IPv4 sends it.
};

struct TcpFields {
  uint16_t sport = 40000;
  uint16_t dport = 5001;
  uint32_t seq = 1000;
  uint32_t ack = 77;
  uint8_t flags = 0x10;  // ACK
  uint16_t window = 512;
};

struct IcmpFields {
  uint8_t type = 8;  // echo request (ICMPv6: 128)
  uint8_t code = 0;
  uint32_t rest = 0x12340001;  // identifier and sequence, or unused and next-hop MTU
};

struct EthernetFields {
  std::array<uint8_t, 6> dst = {0x02, 0, 0, 0, 0, 0x02};
  std::array<uint8_t, 6> src = {0x02, 0, 0, 0, 0, 0x01};
  uint16_t ether_type = 0x0800;
};

// The auto flow label an IPv6 underlay packet carries (ip6_make_flowlabel's FNV-1a of the inner
// addresses and protocol), computed as make_mode_goldens.py computes it.
inline uint32_t AutoFlowLabel(const Bytes& inner_ip) {
  const bool v4 = (inner_ip[0] >> 4) == 4;
  const size_t from = v4 ? 12 : 8;
  const size_t to = v4 ? 20 : 40;
  uint32_t hash = 2166136261u;
  for (size_t i = from; i < to; ++i) hash = (hash ^ inner_ip[i]) * 16777619u;
  hash ^= v4 ? inner_ip[9] : inner_ip[6];
  hash = (hash >> 20) ^ hash;
  return hash & 0xFFFFF;
}

class PacketBuilder {
 public:
  PacketBuilder& Ipv4(const Ipv4Fields& f) { return Push(f); }
  PacketBuilder& Ipv6(const Ipv6Fields& f) { return Push(f); }
  PacketBuilder& EncapLimit(const EncapLimitFields& f) { return Push(f); }
  PacketBuilder& Gre(const GreFields& f) { return Push(f); }
  PacketBuilder& Udp(const UdpFields& f) { return Push(f); }
  PacketBuilder& Tcp(const TcpFields& f) { return Push(f); }
  PacketBuilder& Icmp(const IcmpFields& f) { return Push(f); }
  PacketBuilder& Icmpv6(const IcmpFields& f) { return Push(Icmpv6Fields{f}); }
  PacketBuilder& Ethernet(const EthernetFields& f) { return Push(f); }
  // The innermost bytes: a payload, or a whole packet built before.
  PacketBuilder& Raw(const Bytes& bytes) {
    raw_.insert(raw_.end(), bytes.begin(), bytes.end());
    return *this;
  }
  PacketBuilder& Payload(size_t len, uint8_t first = 'a') {
    for (size_t i = 0; i < len; ++i) raw_.push_back(static_cast<uint8_t>(first + i % 26));
    return *this;
  }

  Bytes ToBytes() const {
    Bytes out = raw_;
    // What the layer inside the current one is, for the pseudo-header checksum the IP layer
    // around it finishes.
    Transport inner = Transport::kOther;
    for (size_t i = layers_.size(); i-- > 0;) {
      const Layer& layer = layers_[i];
      if (const auto* f = std::get_if<Ipv4Fields>(&layer)) {
        FinishTransport(inner, out, PseudoIpv4(*f, out.size()));
        out = RenderIpv4(*f, out);
        inner = Transport::kOther;
      } else if (const auto* f = std::get_if<Ipv6Fields>(&layer)) {
        FinishTransport(inner, out, PseudoIpv6(*f, out.size()));
        out = RenderIpv6(*f, out);
        inner = Transport::kOther;
      } else if (const auto* f = std::get_if<EncapLimitFields>(&layer)) {
        out = Prepend({f->next_header, 0, 4, 1, f->limit, 1, 1, 0}, out);
      } else if (const auto* f = std::get_if<GreFields>(&layer)) {
        out = RenderGre(*f, out);
      } else if (const auto* f = std::get_if<UdpFields>(&layer)) {
        Bytes h(8, 0);
        Put16(h, 0, f->sport);
        Put16(h, 2, f->dport);
        Put16(h, 4, static_cast<uint16_t>(8 + out.size()));
        out = Prepend(h, out);
      } else if (const auto* f = std::get_if<TcpFields>(&layer)) {
        Bytes h(20, 0);
        Put16(h, 0, f->sport);
        Put16(h, 2, f->dport);
        Put32(h, 4, f->seq);
        Put32(h, 8, f->ack);
        h[12] = 5 << 4;
        h[13] = f->flags;
        Put16(h, 14, f->window);
        out = Prepend(h, out);
        inner = Transport::kTcp;
        continue;
      } else if (const auto* f = std::get_if<IcmpFields>(&layer)) {
        Bytes h(8, 0);
        h[0] = f->type;
        h[1] = f->code;
        Put32(h, 4, f->rest);
        out = Prepend(h, out);
        Put16(out, 2, RefChecksum(out.data(), out.size()));
      } else if (const auto* f = std::get_if<Icmpv6Fields>(&layer)) {
        Bytes h(8, 0);
        h[0] = f->icmp.type;
        h[1] = f->icmp.code;
        Put32(h, 4, f->icmp.rest);
        out = Prepend(h, out);
        inner = Transport::kIcmpv6;
        continue;
      } else if (const auto* f = std::get_if<EthernetFields>(&layer)) {
        Bytes h(f->dst.begin(), f->dst.end());
        h.insert(h.end(), f->src.begin(), f->src.end());
        h.push_back(static_cast<uint8_t>(f->ether_type >> 8));
        h.push_back(static_cast<uint8_t>(f->ether_type));
        out = Prepend(h, out);
      }
      inner = Transport::kOther;
    }
    return out;
  }

 private:
  struct Icmpv6Fields {
    IcmpFields icmp;
  };
  enum class Transport { kOther, kTcp, kIcmpv6 };
  using Layer = std::variant<Ipv4Fields, Ipv6Fields, EncapLimitFields, GreFields, UdpFields,
                             TcpFields, IcmpFields, Icmpv6Fields, EthernetFields>;
  template <typename F>
  PacketBuilder& Push(const F& f) {
    layers_.push_back(f);
    return *this;
  }

  static void Put16(Bytes& b, size_t at, uint16_t v) {
    b[at] = static_cast<uint8_t>(v >> 8);
    b[at + 1] = static_cast<uint8_t>(v);
  }
  static void Put32(Bytes& b, size_t at, uint32_t v) {
    Put16(b, at, static_cast<uint16_t>(v >> 16));
    Put16(b, at + 2, static_cast<uint16_t>(v));
  }
  static Bytes Prepend(const Bytes& header, const Bytes& rest) {
    Bytes out = header;
    out.insert(out.end(), rest.begin(), rest.end());
    return out;
  }
  // The pseudo-header (RFC 793, RFC 8200 section 8.1) as bytes, to checksum in front of the
  // segment: a different route to the same sum than the code under test takes.
  static Bytes PseudoIpv4(const Ipv4Fields& f, size_t l4_len) {
    Bytes p(12, 0);
    Put32(p, 0, f.src);
    Put32(p, 4, f.dst);
    p[9] = f.protocol;
    Put16(p, 10, static_cast<uint16_t>(l4_len));
    return p;
  }
  static Bytes PseudoIpv6(const Ipv6Fields& f, size_t l4_len) {
    Bytes p(f.src.begin(), f.src.end());
    p.insert(p.end(), f.dst.begin(), f.dst.end());
    p.resize(40, 0);
    Put32(p, 32, static_cast<uint32_t>(l4_len));
    p[39] = f.next_header;
    return p;
  }
  static void FinishTransport(Transport inner, Bytes& segment, const Bytes& pseudo) {
    if (inner == Transport::kOther) return;
    const size_t field = inner == Transport::kTcp ? 16 : 2;
    if (segment.size() < field + 2) return;
    Bytes whole = pseudo;
    whole.insert(whole.end(), segment.begin(), segment.end());
    Put16(segment, field, RefChecksum(whole.data(), whole.size()));
  }
  static Bytes RenderIpv4(const Ipv4Fields& f, const Bytes& rest) {
    Bytes h(20, 0);
    h[0] = static_cast<uint8_t>(f.version << 4 | 5);
    h[1] = f.tos;
    Put16(h, 2, f.total_len.value_or(static_cast<uint16_t>(20 + rest.size())));
    Put16(h, 4, f.id);
    Put16(h, 6,
          static_cast<uint16_t>((f.df ? 0x4000 : 0) | (f.mf ? 0x2000 : 0) | f.fragment_offset));
    h[8] = f.ttl;
    h[9] = f.protocol;
    Put32(h, 12, f.src);
    Put32(h, 16, f.dst);
    Put16(h, 10, RefChecksum(h.data(), h.size()));
    return Prepend(h, rest);
  }
  static Bytes RenderIpv6(const Ipv6Fields& f, const Bytes& rest) {
    Bytes h(8, 0);
    Put32(h, 0, uint32_t{6} << 28 | uint32_t{f.traffic_class} << 20 | (f.flow_label & 0xFFFFF));
    Put16(h, 4, static_cast<uint16_t>(rest.size()));
    h[6] = f.next_header;
    h[7] = f.hop_limit;
    h.insert(h.end(), f.src.begin(), f.src.end());
    h.insert(h.end(), f.dst.begin(), f.dst.end());
    return Prepend(h, rest);
  }
  static Bytes RenderGre(const GreFields& f, const Bytes& rest) {
    Bytes h(4, 0);
    const uint16_t flags = static_cast<uint16_t>((f.checksum ? 0x8000 : 0) | (f.key ? 0x2000 : 0) |
                                                 (f.sequence ? 0x1000 : 0) | f.extra_flags);
    Put16(h, 0, flags);
    Put16(h, 2, f.protocol);
    if (f.checksum) h.resize(h.size() + 4, 0);
    if (f.key) {
      h.resize(h.size() + 4);
      Put32(h, h.size() - 4, *f.key);
    }
    if (f.sequence) {
      h.resize(h.size() + 4);
      Put32(h, h.size() - 4, *f.sequence);
    }
    Bytes out = Prepend(h, rest);
    if (f.checksum) {
      uint16_t sum = RefChecksum(out.data(), out.size());
      if (f.wrong_checksum) sum ^= 0x0101;
      Put16(out, 4, sum);
    }
    return out;
  }

  std::vector<Layer> layers_;
  Bytes raw_;
};

inline PacketBuilder Build() { return PacketBuilder(); }

// The inner packets most cases carry: an ICMP echo 10.1.0.1 -> 10.2.0.1 (DF, TTL 64) and an
// ICMPv6 echo fd10::1 -> fd20::1 (hop limit 64), each with `payload` bytes.
inline Bytes InnerIcmp(size_t payload = 8, bool df = true, uint8_t tos = 0) {
  return Build().Ipv4({.tos = tos, .df = df}).Icmp({}).Payload(payload).ToBytes();
}
inline Bytes InnerIcmp6(size_t payload = 8) {
  return Build().Ipv6({}).Icmpv6({.type = 128}).Payload(payload).ToBytes();
}

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_CORE_PACKET_BUILDER_H_
