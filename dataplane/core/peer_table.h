// The peers of one multipoint tunnel, as its datapath uses them: on send, the peer whose allowed
// prefixes hold the inner destination (longest match) gives the outer destination and key; on
// receive, the outer source must be a peer's underlay address, and the inner source must be
// one that peer may send from: the longest match of the inner source must be that same peer
// (WireGuard's rule; a kernel tunnel with `remote any` accepts any source).
//
// Per-packet lookups (ForDestination, ForSource, MaySend) allocate nothing and take no lock: a
// worker's tables change only through its command queue. A large table answers ForDestination
// (MaySend too) from a cache of recent answers (LookupCache) when it can. Add, Replace and Remove
// are the control path's and leave the table as it was when they refuse.
//
// What a peer is, is the caller's: any copyable `Peer` with an `id` (uint32_t) and an
// `underlay` (OuterAddress). A worker's datapath keeps its per-peer state in it (PeerPath); a
// peer stays at one address from its Add to its Remove, Replace included.
#ifndef TUNNELAGENT_DATAPLANE_CORE_PEER_TABLE_H_
#define TUNNELAGENT_DATAPLANE_CORE_PEER_TABLE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataplane/core/lookup_cache.h"
#include "dataplane/core/prefix_trie.h"
#include "dataplane/packet/outer_address.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

// The least a peer is: what the table's tests use.
struct TunnelPeer {
  uint32_t id = 0;        // the control plane's handle for it
  OuterAddress underlay;  // the outer destination of what is sent to it, and the outer source
                          // of what it sends
  bool has_key = false;   // a key of its own on send; else the tunnel's
  uint32_t key = 0;
};

template <typename Peer>
class BasicPeerTable {
 public:
  // ALREADY_EXISTS when the id or the underlay address is another peer's, or one of `allowed`
  // is held by another peer (nested prefixes are fine: the longest match wins);
  // INVALID_ARGUMENT for a prefix length past its family's bits or a prefix given twice.
  absl::Status Add(const Peer& peer, AllowedPrefixes allowed) {
    if (peers_.contains(peer.id)) return absl::AlreadyExistsError(Describe(peer.id, "exists"));
    return Put(peer, std::move(allowed), nullptr);
  }
  absl::Status Add(const Peer& peer, std::vector<InnerPrefix> allowed) {
    return Add(peer, std::make_shared<const std::vector<InnerPrefix>>(std::move(allowed)));
  }

  // The peer `peer.id` becomes `peer` with `allowed` instead of what it had; NOT_FOUND when
  // there is none; otherwise as Add (its own old prefixes and address do not conflict).
  absl::Status Replace(const Peer& peer, AllowedPrefixes allowed) {
    auto it = peers_.find(peer.id);
    if (it == peers_.end()) return absl::NotFoundError(Describe(peer.id, "not found"));
    return Put(peer, std::move(allowed), it->second.get());
  }
  absl::Status Replace(const Peer& peer, std::vector<InnerPrefix> allowed) {
    return Replace(peer, std::make_shared<const std::vector<InnerPrefix>>(std::move(allowed)));
  }

  // NOT_FOUND when there is no such peer.
  absl::Status Remove(uint32_t id) {
    auto it = peers_.find(id);
    if (it == peers_.end()) return absl::NotFoundError(Describe(id, "not found"));
    Unlink(*it->second);
    peers_.erase(it);
    answers_.Clear();
    return absl::OkStatus();
  }

  // Send: the peer the inner destination goes to; null when no allowed prefix holds it.
  Peer* ForDestination(const uint8_t* inner_destination, bool v6) const {
    Peer* answer = nullptr;
    if (answers_.Find(inner_destination, v6, &answer)) return answer;
    Peer* const* found = v6 ? v6_.Lookup(inner_destination) : v4_.Lookup(inner_destination);
    answer = found != nullptr ? *found : nullptr;
    answers_.Store(inner_destination, v6, answer);
    return answer;
  }
  // Receive: the peer whose underlay address is the outer source; null when it is no peer's.
  Peer* ForSource(const OuterAddress& outer_source) const {
    auto it = by_underlay_.find(outer_source);
    return it != by_underlay_.end() ? it->second : nullptr;
  }
  // Receive: whether `peer` may send from `inner_source` (its longest match is that peer).
  bool MaySend(const Peer& peer, const uint8_t* inner_source, bool v6) const {
    return ForDestination(inner_source, v6) == &peer;
  }

  // After a large change: see PrefixTrie::ShrinkToFit.
  void ShrinkToFit() {
    v4_.ShrinkToFit();
    v6_.ShrinkToFit();
  }

  Peer* Find(uint32_t id) const {
    auto it = peers_.find(id);
    return it != peers_.end() ? &it->second->peer : nullptr;
  }
  size_t size() const { return peers_.size(); }
  size_t prefixes() const { return v4_.size() + v6_.size(); }

 private:
  struct Entry {
    Peer peer;
    AllowedPrefixes allowed;
  };
  // Prefixes from which lookups go through the answer cache (a trie this small is a few nodes
  // deep).
  static constexpr size_t kCachedFrom = 64;

  static std::string Describe(uint32_t id, const char* what) {
    return absl::StrCat("peer ", id, " ", what);
  }
  static std::string Describe(const InnerPrefix& prefix) {
    std::string text;
    if (prefix.v6) {
      for (int i = 0; i < 16; i += 2) {
        absl::StrAppend(&text, i ? ":" : "",
                        absl::Hex((prefix.bytes[i] << 8) | prefix.bytes[i + 1]));
      }
    } else {
      for (int i = 0; i < 4; ++i) absl::StrAppend(&text, i ? "." : "", prefix.bytes[i]);
    }
    return absl::StrCat(text, "/", prefix.length);
  }

  Peer* const* FindPrefix(const InnerPrefix& p) const {
    return p.v6 ? v6_.Find(p.bytes.data(), p.length) : v4_.Find(p.bytes.data(), p.length);
  }
  void InsertPrefix(const InnerPrefix& p, Peer* peer) {
    if (p.v6) {
      v6_.TryInsert(p.bytes.data(), p.length, peer);
    } else {
      v4_.TryInsert(p.bytes.data(), p.length, peer);
    }
  }
  void ErasePrefix(const InnerPrefix& p) {
    if (p.v6) {
      v6_.Erase(p.bytes.data(), p.length);
    } else {
      v4_.Erase(p.bytes.data(), p.length);
    }
  }

  // Adds `peer` with `allowed`, taking the place of `old` (same id) when given: every check
  // first, so that a refusal changes nothing.
  absl::Status Put(const Peer& peer, AllowedPrefixes allowed, Entry* old) {
    if (auto it = by_underlay_.find(peer.underlay);
        it != by_underlay_.end() && (old == nullptr || it->second != &old->peer)) {
      return absl::AlreadyExistsError(
          absl::StrCat("peer ", peer.id, ": its underlay address is peer ", it->second->id, "'s"));
    }
    PrefixTrie<bool, 4> seen4(32);
    PrefixTrie<bool> seen6(128);
    for (const InnerPrefix& prefix : *allowed) {
      if (prefix.length < 0 || prefix.length > (prefix.v6 ? 128 : 32)) {
        return absl::InvalidArgumentError(
            absl::StrCat("peer ", peer.id, ": prefix length ", prefix.length, " out of range"));
      }
      const bool fresh = prefix.v6
                             ? seen6.TryInsert(prefix.bytes.data(), prefix.length, true).second
                             : seen4.TryInsert(prefix.bytes.data(), prefix.length, true).second;
      if (!fresh) {
        return absl::InvalidArgumentError(
            absl::StrCat("peer ", peer.id, ": ", Describe(prefix), " given twice"));
      }
      Peer* const* holder = FindPrefix(prefix);
      if (holder != nullptr && (old == nullptr || *holder != &old->peer)) {
        return absl::AlreadyExistsError(absl::StrCat("peer ", peer.id, ": ", Describe(prefix),
                                                     " is peer ", (*holder)->id, "'s"));
      }
    }
    Entry* entry = old;
    if (entry == nullptr) {
      auto made = std::make_unique<Entry>();
      entry = made.get();
      peers_.emplace(peer.id, std::move(made));
    } else {
      Unlink(*entry);
    }
    entry->peer = peer;
    entry->allowed = std::move(allowed);
    by_underlay_.emplace(peer.underlay, &entry->peer);
    for (const InnerPrefix& prefix : *entry->allowed) InsertPrefix(prefix, &entry->peer);
    answers_.Clear();
    // A table of a few prefixes answers faster than a cache would; a large one needs it.
    if (prefixes() >= kCachedFrom) answers_.Reserve();
    return absl::OkStatus();
  }

  // Takes `entry`'s address and prefixes out of the lookups.
  void Unlink(const Entry& entry) {
    by_underlay_.erase(entry.peer.underlay);
    for (const InnerPrefix& prefix : *entry.allowed) ErasePrefix(prefix);
  }

  absl::flat_hash_map<uint32_t, std::unique_ptr<Entry>> peers_;  // by id; entries never move
  absl::flat_hash_map<OuterAddress, Peer*> by_underlay_;
  PrefixTrie<Peer*, 4> v4_{32};
  PrefixTrie<Peer*> v6_{128};
  mutable LookupCache<Peer*> answers_;  // ForDestination's, dropped at every change
};

using PeerTable = BasicPeerTable<TunnelPeer>;

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_PEER_TABLE_H_
