// Which tunnel a received packet belongs to: the kernel's ip_tunnel_lookup, as a hash table.
// Single-threaded (the dataplane thread owns it); lookups allocate nothing.
#ifndef TUNNELAGENT_DATAPLANE_CORE_TUNNEL_TABLE_H_
#define TUNNELAGENT_DATAPLANE_CORE_TUNNEL_TABLE_H_

#include <cstdint>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "dataplane/packet/encap.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet/tunnel_mode.h"

namespace tunnelagent::dataplane {

// A tunnel's receive match: its mode (which the packet's outer protocol and GRE protocol
// type determine, as the kernel's separate ip_gre, gretap, ipip, sit, ip6gre and ip6tnl tables
// do), its local (the packet's destination; zero = any) and remote (the packet's source; zero =
// any) addresses, and its input key, if any.
struct TunnelMatch {
  TunnelMode mode = TunnelMode::kGre;
  bool has_key = false;
  OuterAddress local;
  OuterAddress remote;
  uint32_t key = 0;  // 0 when !has_key

  template <typename H>
  friend H AbslHashValue(H h, const TunnelMatch& m) {
    return H::combine(std::move(h), m.mode, m.has_key, m.local, m.remote, m.key);
  }
  friend bool operator==(const TunnelMatch& a, const TunnelMatch& b) {
    return a.mode == b.mode && a.has_key == b.has_key && a.local == b.local &&
           a.remote == b.remote && a.key == b.key;
  }
};

template <typename Tunnel>
class TunnelTable {
 public:
  // False when another tunnel has the same match.
  bool Insert(const TunnelMatch& match, Tunnel* tunnel) {
    return table_.emplace(Normalized(match), tunnel).second;
  }
  void Erase(const TunnelMatch& match) { table_.erase(Normalized(match)); }
  bool Contains(const TunnelMatch& match) const { return table_.contains(Normalized(match)); }
  void Clear() { table_.clear(); }
  size_t size() const { return table_.size(); }

  // ip_tunnel_lookup's order: local and remote, remote only, local only, neither; the key
  // always matches exactly (a keyless packet only finds a keyless tunnel, a keyed one only a
  // tunnel with that key). At most four hash probes, whatever the number of tunnels.
  Tunnel* Lookup(const Decapsulated& packet) const {
    TunnelMatch key{packet.mode, packet.has_key, {}, {}, packet.has_key ? packet.key : 0};
    const OuterAddress any;
    const std::pair<const OuterAddress&, const OuterAddress&> candidates[] = {
        {packet.outer_dst, packet.outer_src},
        {any, packet.outer_src},
        {packet.outer_dst, any},
        {any, any},
    };
    for (const auto& [local, remote] : candidates) {
      key.local = local;
      key.remote = remote;
      auto it = table_.find(key);
      if (it != table_.end()) return it->second;
    }
    return nullptr;
  }

 private:
  static TunnelMatch Normalized(TunnelMatch m) {
    if (!m.has_key) m.key = 0;
    return m;
  }
  absl::flat_hash_map<TunnelMatch, Tunnel*> table_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_TUNNEL_TABLE_H_
