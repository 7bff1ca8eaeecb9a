// Which tunnels may stand in the way of one, found without looking at every tunnel: the rules
// across tunnels (ConflictBetween: the same receive match, overlapping prefixes; the underlay
// rule: no prefix may cover another tunnel's underlay address) would otherwise cost a scan of
// all N tunnels per CreateTunnel and N times M pairs per ApplyTunnels of M.
//
// The index only narrows the search: it answers a superset of the tunnels that clash, by
// name, and the caller runs the exact pairwise rule on each, so what is refused and the words
// it is refused with stay those of a full scan in name order.
//
// Receive matches are hashed; prefixes and underlay addresses are sorted by family and address
// bits. The prefixes containing a given one are found by one lookup per prefix length in use
// (a handful: /30, /32, /24 in practice), those inside it by a range of the sorted order.
#ifndef TUNNELAGENT_AGENT_TUNNEL_INDEX_H_
#define TUNNELAGENT_AGENT_TUNNEL_INDEX_H_

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "agent/tunnel_spec.h"
#include "agent/underlay_guard.h"
#include "dataplane/address.h"

namespace tunnelagent::agent {

class TunnelIndex {
 public:
  // Indexes `spec` (by spec.name, replacing what that name had) with its underlay addresses.
  void Add(const TunnelSpec& spec, const std::vector<UnderlayAddress>& underlay);
  void Remove(const std::string& name);
  void Clear();
  size_t size() const { return by_name_.size(); }

  // The tunnels that may clash with `spec` by ConflictBetween: the same receive match, or an
  // address or route overlapping one of its own. Sorted by name; may include spec.name.
  std::set<std::string> ConflictCandidates(const TunnelSpec& spec) const;
  // The tunnels that may break the underlay rule with `spec`: an underlay address one of its
  // prefixes covers, or a prefix covering one of `underlay`. Sorted; may include spec.name.
  std::set<std::string> UnderlayCandidates(const TunnelSpec& spec,
                                           const std::vector<UnderlayAddress>& underlay) const;
  // The tunnels with an address or route covering `address`.
  void PrefixesCovering(const dataplane::IpAddress& address, std::set<std::string>& out) const;
  // The tunnels with an underlay address inside `prefix`.
  void UnderlayInside(const dataplane::IpPrefix& prefix, std::set<std::string>& out) const;

  // The receive match of a tunnel as one string: mode, local ("any" spelled either way),
  // remote and, where the mode has one, input key. Equal for two tunnels exactly when
  // ConflictBetween finds them claiming the same packets.
  static std::string ReceiveMatch(const TunnelSpec& spec);

 private:
  // Family (bit length: 32 or 128), network-order address bits, prefix length.
  using Key = std::tuple<int, std::array<uint8_t, 16>, int>;
  struct Indexed {
    std::string match;
    std::vector<Key> prefixes;  // addresses (as networks) and routes
    std::vector<Key> underlay;  // as host prefixes
  };
  static Key KeyOf(const dataplane::IpPrefix& prefix);  // host bits cleared
  // Prefixes of `index` overlapping `prefix` (containing it, or inside it), into `out`.
  void Overlapping(const std::multimap<Key, std::string>& index,
                   const std::array<std::array<int, 129>, 2>& lengths, const Key& prefix,
                   std::set<std::string>& out) const;
  void Insert(std::multimap<Key, std::string>& index, std::array<std::array<int, 129>, 2>& lengths,
              const Key& key, const std::string& name);
  void Erase(std::multimap<Key, std::string>& index, std::array<std::array<int, 129>, 2>& lengths,
             const Key& key, const std::string& name);

  absl::flat_hash_map<std::string, Indexed> by_name_;
  std::multimap<std::string, std::string> matches_;  // receive match -> tunnel
  std::multimap<Key, std::string> prefixes_;         // address or route -> tunnel
  std::multimap<Key, std::string> underlay_;         // underlay address -> tunnel
  // How many indexed prefixes have each length, per family (0: IPv4, 1: IPv6): the lengths
  // to look up when asking which prefixes contain an address.
  std::array<std::array<int, 129>, 2> prefix_lengths_{};
  std::array<std::array<int, 129>, 2> underlay_lengths_{};
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_INDEX_H_
