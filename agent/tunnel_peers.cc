// The peers of multipoint tunnels: TunnelManager's peer methods. A peer is a record of its own
// (in the manager, the engine, the state store and the events): a change costs the size of
// what changed, whatever the number of peers, and never touches the tunnel's device.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "agent/tunnel_manager.h"
#include "agent/validation.h"

namespace tunnelagent::agent {
namespace {

// IpAddress keeps an IPv4 address in its first four bytes, network order, as InnerPrefix does.
dataplane::InnerPrefix InnerPrefixOf(const dataplane::IpPrefix& prefix) {
  dataplane::InnerPrefix out;
  out.bytes = prefix.address().bytes();
  out.length = prefix.length();
  out.v6 = prefix.address().is_v6();
  return out;
}

PeerClaim KeyOf(const dataplane::IpAddress& address, int length) {
  PeerClaim key;
  key.bytes = address.bytes();
  key.length = static_cast<uint8_t>(length);
  key.family = static_cast<uint8_t>(address.family());
  return key;
}
PeerClaim UnderlayKey(const PeerSpec& spec) {
  return KeyOf(spec.underlay, spec.underlay.bit_length());
}
PeerClaim PrefixKey(const dataplane::IpPrefix& prefix) {
  return KeyOf(prefix.address(), prefix.length());
}

bool HoldsPrefix(const PeerSpec& spec, const PeerClaim& key) {
  for (const dataplane::IpPrefix& p : spec.allowed_prefixes) {
    if (PrefixKey(p) == key) return true;
  }
  return false;
}

std::string OwnerOf(const PeerSpec& spec) {
  auto it = spec.labels.find(kOwnerLabel);
  return it != spec.labels.end() ? it->second : std::string();
}

}  // namespace

dataplane::EnginePeer TunnelManager::EnginePeerOf(const PeerRecord& peer) {
  dataplane::EnginePeer out;
  out.id = peer.id;
  out.underlay = OuterAddressOf(peer.spec.underlay);
  out.has_key = peer.spec.key.has_value();
  out.key = peer.spec.key.value_or(0);
  std::vector<dataplane::InnerPrefix> allowed;
  allowed.reserve(peer.spec.allowed_prefixes.size());
  for (const dataplane::IpPrefix& p : peer.spec.allowed_prefixes) {
    allowed.push_back(InnerPrefixOf(p));
  }
  out.allowed = std::make_shared<const std::vector<dataplane::InnerPrefix>>(std::move(allowed));
  out.keepalive_interval = peer.spec.keepalive.interval;
  out.keepalive_retries = peer.spec.keepalive.effective_retries();
  out.stats = peer.stats;
  return out;
}

PeerView TunnelManager::PeerViewOf(const PeerRecord& peer) {
  PeerView view{peer.spec, {}};
  view.status.state = peer.state;
  view.status.reason = peer.reason;
  if (peer.stats) ReadObservation(*peer.stats, peer.spec.keepalive.enabled(), &view.status);
  return view;
}

std::shared_ptr<const TunnelView> TunnelManager::PeerEventTunnel(const TunnelSpec& tunnel) {
  auto view = std::make_shared<TunnelView>();
  view->spec.name = tunnel.name;
  view->spec.mode = tunnel.mode;
  view->spec.multipoint = true;
  return view;
}

void TunnelManager::RecordPeerEvent(TunnelEvent::Type type,
                                    std::shared_ptr<const TunnelView> tunnel, PeerView peer,
                                    std::string detail) {
  TunnelEvent event;
  event.type = type;
  event.tunnel = std::move(tunnel);
  event.detail = std::move(detail);
  event.peer = std::make_shared<const PeerView>(std::move(peer));
  PushEvent(std::move(event));
}

absl::StatusOr<TunnelManager::Entry*> TunnelManager::PeerTunnelLocked(const std::string& name) {
  if (frozen_.load()) return FrozenError();
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  Entry& entry = *it->second;
  if (!entry.spec.multipoint) {
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", name,
                     " is point to point (its far end is its remote): peers belong to "
                     "multipoint tunnels"));
  }
  if (!entry.peers) entry.peers = std::make_shared<PeerSet>();
  return &entry;
}

absl::Status TunnelManager::CheckPeerChange(const Entry& entry,
                                            const std::vector<PeerSpec>& upserted,
                                            const std::vector<std::string>& removed) const {
  const PeerSet& set = *entry.peers;
  std::map<std::string, const PeerSpec*> incoming;
  size_t after = set.peers.size();
  for (const PeerSpec& peer : upserted) {
    incoming.emplace(peer.name, &peer);
    after += set.peers.count(peer.name) ? 0 : 1;
  }
  const std::set<std::string> leaving(removed.begin(), removed.end());
  for (const std::string& name : removed) after -= set.peers.count(name);
  if (after > CurrentTunnelLimits().max_peers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tunnel ", entry.spec.name, " would have ", after, " peers, at most ",
                     CurrentTunnelLimits().max_peers, " (--max_peers_per_tunnel)"));
  }
  // Whether `holder`, which holds a key now, gives it up in this change.
  auto lets_go = [&](const std::string& holder, auto holds) {
    if (leaving.count(holder)) return true;
    auto it = incoming.find(holder);
    return it != incoming.end() && !holds(*it->second);
  };
  absl::flat_hash_map<PeerClaim, const std::string*> claimed_underlay;  // by this change
  absl::flat_hash_map<PeerClaim, const std::string*> claimed_prefix;
  for (const PeerSpec& peer : upserted) {
    const PeerClaim underlay = UnderlayKey(peer);
    if (auto it = set.by_underlay.find(underlay);
        it != set.by_underlay.end() && *it->second != peer.name &&
        !lets_go(*it->second, [&](const PeerSpec& p) { return UnderlayKey(p) == underlay; })) {
      return absl::AlreadyExistsError(absl::StrCat("peer ", peer.name, ": underlay ",
                                                   peer.underlay.ToString(), " is peer ",
                                                   *it->second, "'s"));
    }
    if (auto [it, fresh] = claimed_underlay.emplace(underlay, &peer.name); !fresh) {
      return absl::AlreadyExistsError(absl::StrCat("peers ", *it->second, " and ", peer.name,
                                                   " have the same underlay ",
                                                   peer.underlay.ToString()));
    }
    for (const dataplane::IpPrefix& p : peer.allowed_prefixes) {
      const PeerClaim prefix = PrefixKey(p);
      if (auto it = set.by_prefix.find(prefix);
          it != set.by_prefix.end() && *it->second != peer.name &&
          !lets_go(*it->second, [&](const PeerSpec& q) { return HoldsPrefix(q, prefix); })) {
        return absl::AlreadyExistsError(absl::StrCat("peer ", peer.name, ": allowed prefix ",
                                                     p.ToString(), " is peer ", *it->second, "'s"));
      }
      if (auto [it, fresh] = claimed_prefix.emplace(prefix, &peer.name); !fresh) {
        return absl::AlreadyExistsError(
            absl::StrCat("peers ", *it->second, " and ", peer.name, " both allow ", p.ToString()));
      }
    }
  }
  return absl::OkStatus();
}

void TunnelManager::IndexPeer(PeerSet& set, const std::string& name, const PeerSpec& spec) {
  set.by_underlay[UnderlayKey(spec)] = &name;
  for (const dataplane::IpPrefix& p : spec.allowed_prefixes) set.by_prefix[PrefixKey(p)] = &name;
}

void TunnelManager::UnindexPeer(PeerSet& set, const PeerSpec& spec) {
  set.by_underlay.erase(UnderlayKey(spec));
  for (const dataplane::IpPrefix& p : spec.allowed_prefixes) set.by_prefix.erase(PrefixKey(p));
}

absl::StatusOr<uint64_t> TunnelManager::ChangePeersLocked(Entry& entry,
                                                          std::vector<PeerSpec> upserted,
                                                          const std::vector<std::string>& removed) {
  if (upserted.empty() && removed.empty()) return 0;
  if (absl::Status s = CheckPeerChange(entry, upserted, removed); !s.ok()) return s;
  PeerSet& set = *entry.peers;
  const std::string& tunnel = entry.spec.name;
  const absl::Time now = absl::Now();

  // The peers as they will be, and as they were (to put back if the engine or the disk
  // refuses).
  std::vector<std::shared_ptr<PeerRecord>> fresh;
  std::vector<PeerRef> before;  // of those replaced or removed
  std::vector<uint32_t> created_ids;
  fresh.reserve(upserted.size());
  for (PeerSpec& spec : upserted) {
    auto peer = std::make_shared<PeerRecord>();
    if (auto it = set.peers.find(spec.name); it != set.peers.end()) {
      before.push_back(it->second);
      *peer = *it->second;
      spec.create_time = it->second->spec.create_time;
    } else {
      peer->id = set.next_id++;
      peer->stats = std::make_shared<dataplane::PeerStats>(engine_->workers());
      created_ids.push_back(peer->id);
      spec.create_time = now;
    }
    spec.update_time = now;
    peer->spec = std::move(spec);
    fresh.push_back(std::move(peer));
  }
  std::vector<uint32_t> removed_ids;
  for (const std::string& name : removed) {
    const PeerRef& peer = set.peers.at(name);
    before.push_back(peer);
    removed_ids.push_back(peer->id);
  }

  // The engine first: a peer it refuses is refused to the caller, with nothing recorded.
  auto engine_peers = [](const auto& peers) {
    std::vector<dataplane::EnginePeer> out;
    out.reserve(peers.size());
    for (const auto& peer : peers) out.push_back(EnginePeerOf(*peer));
    return out;
  };
  auto put_back_engine = [&] {
    if (!entry.in_engine) return;
    absl::Status s = engine_->ChangePeers(tunnel, engine_peers(before), created_ids);
    if (!s.ok()) {
      Log("ERROR", "tunnel %s: putting the dataplane's peers back failed: %s", tunnel,
          s.ToString());
    }
  };
  if (entry.in_engine) {
    if (absl::Status s = engine_->ChangePeers(tunnel, engine_peers(fresh), removed_ids); !s.ok()) {
      put_back_engine();
      return Annotate(s, absl::StrCat("tunnel ", tunnel, ": the dataplane refused the peers"));
    }
  }
  StateChange change;
  change.upserted_peers.reserve(fresh.size());
  for (const auto& peer : fresh) change.upserted_peers.push_back({tunnel, peer->spec});
  for (const std::string& name : removed) change.removed_peers.emplace_back(tunnel, name);
  absl::StatusOr<uint64_t> sequence = store_->Append(change);
  if (!sequence.ok()) {
    put_back_engine();
    return sequence.status();
  }

  // A change this large leaves megabytes free behind it (TakeBulkChange).
  constexpr size_t kBulkChange = 256;
  if (upserted.size() + removed.size() >= kBulkChange) bulk_change_.store(true);
  // Committed: the change path's set, then the readers' (the same records).
  std::vector<std::pair<TunnelEvent::Type, PeerRef>> events;
  events.reserve(removed.size() + fresh.size());
  for (const std::string& name : removed) {
    auto it = set.peers.find(name);
    UnindexPeer(set, it->second->spec);
    events.emplace_back(TunnelEvent::Type::kPeerDeleted, it->second);
    set.peers.erase(it);
  }
  for (const auto& peer : fresh) {
    if (auto it = set.peers.find(peer->spec.name); it != set.peers.end()) {
      UnindexPeer(set, it->second->spec);
    }
  }
  for (auto& peer : fresh) {
    auto [it, created] = set.peers.insert_or_assign(peer->spec.name, peer);
    IndexPeer(set, it->first, peer->spec);
    events.emplace_back(created ? TunnelEvent::Type::kPeerAdded : TunnelEvent::Type::kPeerUpdated,
                        std::move(peer));
  }
  absl::MutexLock lock(&mu_);
  std::map<std::string, PeerRef>& published = published_peers_[tunnel];
  const std::shared_ptr<const TunnelView> event_tunnel = PeerEventTunnel(entry.spec);
  for (auto& [type, peer] : events) {
    if (type == TunnelEvent::Type::kPeerDeleted) {
      published.erase(peer->spec.name);
    } else {
      published.insert_or_assign(peer->spec.name, peer);
    }
    RecordPeerEvent(type, event_tunnel, PeerViewOf(*peer));
  }
  return *sequence;
}

absl::StatusOr<PeerView> TunnelManager::CreatePeer(const std::string& tunnel,
                                                   const PeerSpec& peer) {
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  absl::StatusOr<Entry*> entry = PeerTunnelLocked(tunnel);
  if (!entry.ok()) return entry.status();
  if (absl::Status s = ValidatePeer(peer, (*entry)->spec); !s.ok()) return s;
  if ((*entry)->peers->peers.count(peer.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("peer ", peer.name, " of tunnel ", tunnel, " already exists"));
  }
  absl::StatusOr<uint64_t> sequence = ChangePeersLocked(**entry, {peer}, {});
  if (!sequence.ok()) return sequence.status();
  PeerView view = PeerViewOf(*(*entry)->peers->peers.at(peer.name));
  lock.Release();  // durable before the answer, as a tunnel's create
  if (absl::Status s = WaitDurable(*sequence); !s.ok()) return s;
  return view;
}

absl::StatusOr<const std::map<std::string, TunnelManager::PeerRef>*>
TunnelManager::PublishedPeersLocked(const std::string& tunnel) const {
  static const std::map<std::string, PeerRef> kNone;
  auto t = published_.find(tunnel);
  if (t == published_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", tunnel, " not found"));
  }
  if (!t->second.spec.multipoint) {
    return absl::FailedPreconditionError(
        absl::StrCat("tunnel ", tunnel, " is point to point: it has no peers"));
  }
  auto peers = published_peers_.find(tunnel);
  return peers == published_peers_.end() ? &kNone : &peers->second;
}

absl::StatusOr<PeerView> TunnelManager::GetPeer(const std::string& tunnel,
                                                const std::string& name) const {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<const std::map<std::string, PeerRef>*> peers = PublishedPeersLocked(tunnel);
  if (!peers.ok()) return peers.status();
  auto it = (*peers)->find(name);
  if (it == (*peers)->end()) {
    return absl::NotFoundError(absl::StrCat("peer ", name, " of tunnel ", tunnel, " not found"));
  }
  return PeerViewOf(*it->second);
}

absl::StatusOr<TunnelManager::PeerPage> TunnelManager::ListPeers(const std::string& tunnel,
                                                                 const std::string& after,
                                                                 size_t limit) const {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<const std::map<std::string, PeerRef>*> peers = PublishedPeersLocked(tunnel);
  if (!peers.ok()) return peers.status();
  PeerPage page;
  for (auto it = (*peers)->upper_bound(after); it != (*peers)->end(); ++it) {
    if (page.peers.size() == limit) {
      page.more = true;
      break;
    }
    page.peers.push_back(PeerViewOf(*it->second));
  }
  return page;
}

absl::StatusOr<PeerView> TunnelManager::UpdatePeer(const std::string& tunnel,
                                                   const PeerSpec& desired, const std::string& etag,
                                                   std::vector<std::string>* changed_fields) {
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  absl::StatusOr<Entry*> entry = PeerTunnelLocked(tunnel);
  if (!entry.ok()) return entry.status();
  auto it = (*entry)->peers->peers.find(desired.name);
  if (it == (*entry)->peers->peers.end()) {
    return absl::NotFoundError(
        absl::StrCat("peer ", desired.name, " of tunnel ", tunnel, " not found"));
  }
  if (!etag.empty() && etag != ComputePeerEtag(it->second->spec)) {
    return absl::AbortedError(absl::StrCat("peer ", desired.name, " changed since etag ", etag,
                                           " was read; get it again and retry"));
  }
  if (absl::Status s = ValidatePeer(desired, (*entry)->spec); !s.ok()) return s;
  std::vector<std::string> changed = ChangedPeerFields(it->second->spec, desired);
  if (changed_fields != nullptr) *changed_fields = changed;
  uint64_t sequence = 0;
  if (!changed.empty()) {
    absl::StatusOr<uint64_t> done = ChangePeersLocked(**entry, {desired}, {});
    if (!done.ok()) return done.status();
    sequence = *done;
  }
  PeerView view = PeerViewOf(*(*entry)->peers->peers.at(desired.name));
  lock.Release();
  if (sequence != 0) {
    if (absl::Status s = WaitDurable(sequence); !s.ok()) return s;
  }
  return view;
}

absl::Status TunnelManager::DeletePeer(const std::string& tunnel, const std::string& name,
                                       const std::string& etag) {
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  absl::StatusOr<Entry*> entry = PeerTunnelLocked(tunnel);
  if (!entry.ok()) return entry.status();
  auto it = (*entry)->peers->peers.find(name);
  if (it == (*entry)->peers->peers.end()) {
    return absl::NotFoundError(absl::StrCat("peer ", name, " of tunnel ", tunnel, " not found"));
  }
  if (!etag.empty() && etag != ComputePeerEtag(it->second->spec)) {
    return absl::AbortedError(absl::StrCat("peer ", name, " changed since etag ", etag,
                                           " was read; get it again and retry"));
  }
  absl::StatusOr<uint64_t> sequence = ChangePeersLocked(**entry, {}, {name});
  if (!sequence.ok()) return sequence.status();
  lock.Release();
  return WaitDurable(*sequence);
}

absl::StatusOr<PeerApplyResult> TunnelManager::ApplyPeers(const std::string& tunnel,
                                                          const std::string& owner,
                                                          std::vector<PeerSpec> desired, bool prune,
                                                          bool dry_run) {
  if (owner.empty()) return absl::InvalidArgumentError("owner: required");
  if (absl::Status status = ValidateLabels({{kOwnerLabel, owner}}); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("owner: ", status.message()));
  }
  if (desired.size() > CurrentTunnelLimits().max_peers) {
    return absl::InvalidArgumentError(absl::StrCat("peers: ", desired.size(), " peers, at most ",
                                                   CurrentTunnelLimits().max_peers,
                                                   " (--max_peers_per_tunnel)"));
  }
  if (absl::Status status = RestoreStatus(); !status.ok()) return status;
  absl::ReleasableMutexLock lock(&change_mu_);
  absl::StatusOr<Entry*> found = PeerTunnelLocked(tunnel);
  if (!found.ok()) return found.status();
  Entry& entry = **found;
  const PeerSet& set = *entry.peers;

  PeerApplyResult result;
  std::vector<PeerSpec> upserted;
  std::vector<std::string> removed;
  std::set<std::string> names;
  for (size_t i = 0; i < desired.size(); ++i) {
    PeerSpec& peer = desired[i];
    peer.labels[kOwnerLabel] = owner;
    const std::string where = absl::StrCat("peers[", i, "]");
    if (absl::Status s = ValidatePeer(peer, entry.spec); !s.ok()) return Annotate(s, where);
    if (!names.insert(peer.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": peer ", peer.name, " is given twice"));
    }
    PlannedChange change;
    change.name = peer.name;
    if (auto it = set.peers.find(peer.name); it != set.peers.end()) {
      if (OwnerOf(it->second->spec) != owner) {
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": peer ", peer.name, " of tunnel ", tunnel, " is not owner ",
                         owner, "'s (its owner label is \"", OwnerOf(it->second->spec), "\")"));
      }
      change.changed_fields = ChangedPeerFields(it->second->spec, peer);
      if (change.changed_fields.empty()) {
        ++result.unchanged;
        continue;
      }
      change.action = ChangeAction::kUpdate;
    } else {
      change.action = ChangeAction::kCreate;
    }
    result.changes.push_back(std::move(change));
    upserted.push_back(std::move(peer));
  }
  if (prune) {
    for (const auto& [name, peer] : set.peers) {
      if (names.count(name) || OwnerOf(peer->spec) != owner) continue;
      result.changes.push_back({name, ChangeAction::kDelete, {}});
      removed.push_back(name);
    }
  }
  std::sort(result.changes.begin(), result.changes.end(),
            [](const PlannedChange& a, const PlannedChange& b) { return a.name < b.name; });
  if (dry_run) {
    if (absl::Status s = CheckPeerChange(entry, upserted, removed); !s.ok()) return s;
    result.revision = revision();
    return result;
  }
  absl::StatusOr<uint64_t> sequence = ChangePeersLocked(entry, std::move(upserted), removed);
  if (!sequence.ok()) return sequence.status();
  result.revision = revision();
  lock.Release();
  if (*sequence != 0) {
    if (absl::Status s = WaitDurable(*sequence); !s.ok()) return s;
  }
  return result;
}

void TunnelManager::LoadPeers(std::vector<SavedPeer> saved) {
  size_t skipped = 0;
  for (SavedPeer& peer : saved) {
    auto it = tunnels_.find(peer.tunnel);
    if (it == tunnels_.end() || !it->second->spec.multipoint) {
      ++skipped;
      continue;
    }
    Entry& entry = *it->second;
    if (!entry.peers) entry.peers = std::make_shared<PeerSet>();
    PeerSet& set = *entry.peers;
    absl::Status status = ValidatePeer(peer.spec, entry.spec);
    if (status.ok()) status = CheckPeerChange(entry, {peer.spec}, {});
    if (status.ok() && set.peers.count(peer.spec.name)) {
      status = absl::AlreadyExistsError("saved twice");
    }
    if (!status.ok()) {
      // Cannot happen through the agent (every peer was checked when it was saved); kept out
      // of the dataplane rather than let a damaged file take another peer's traffic.
      Log("ERROR", "state: peer %s of tunnel %s is not restored: %s", peer.spec.name, peer.tunnel,
          status.ToString());
      ++skipped;
      continue;
    }
    auto record = std::make_shared<PeerRecord>();
    record->id = set.next_id++;
    record->stats = std::make_shared<dataplane::PeerStats>(engine_->workers());
    record->spec = std::move(peer.spec);
    auto [kept, created] = set.peers.emplace(record->spec.name, record);
    IndexPeer(set, kept->first, record->spec);
  }
  if (skipped != 0) {
    Log("WARNING", "state: %d saved peers not restored (see above)", static_cast<int64_t>(skipped));
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [name, entry] : tunnels_) {
    if (entry->peers) published_peers_[name] = entry->peers->peers;
  }
}

void TunnelManager::RefreshPeerStates() {
  for (auto& [name, entry] : tunnels_) {
    if (!entry->peers || !entry->in_engine) continue;
    for (auto& [peer_name, peer] : entry->peers->peers) {
      if (!peer->spec.keepalive.enabled() || !peer->stats) continue;
      const bool alive = peer->stats->peer_alive.load(std::memory_order_relaxed);
      const OperState state = alive ? OperState::kUp : OperState::kDown;
      if (state == peer->state) continue;
      auto changed = std::make_shared<PeerRecord>(*peer);
      changed->state = state;
      changed->reason =
          alive ? std::string()
                : absl::StrCat("keepalive: no reply from ", peer->spec.underlay.ToString(), " in ",
                               peer->spec.keepalive.effective_retries(), " intervals");
      Log("INFO", "tunnel %s: peer %s is %s%s%s", name, peer_name, alive ? "UP" : "DOWN",
          alive ? "" : ": ", changed->reason);
      peer = changed;
      absl::MutexLock lock(&mu_);
      published_peers_[name].insert_or_assign(peer_name, peer);
      RecordPeerEvent(TunnelEvent::Type::kPeerStateChanged, PeerEventTunnel(entry->spec),
                      PeerViewOf(*peer), peer->reason);
    }
  }
}

}  // namespace tunnelagent::agent
