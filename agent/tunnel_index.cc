#include "agent/tunnel_index.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;

int FamilySlot(int bits) { return bits == 128 ? 1 : 0; }

// `bytes` with every bit from `length` on set to `value` (within the family's `bits`).
std::array<uint8_t, 16> FillFrom(std::array<uint8_t, 16> bytes, int length, int bits, bool value) {
  for (int bit = length; bit < bits; ++bit) {
    const uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
    if (value) {
      bytes[bit / 8] |= mask;
    } else {
      bytes[bit / 8] &= static_cast<uint8_t>(~mask);
    }
  }
  return bytes;
}

}  // namespace

std::string TunnelIndex::ReceiveMatch(const TunnelSpec& spec) {
  const std::optional<uint32_t> key = InputKey(spec);
  return absl::StrCat(static_cast<int>(spec.mode), "|",
                      spec.local.is_unspecified() ? std::string() : spec.local.ToString(), "|",
                      static_cast<int>(spec.remote.family()), spec.remote.ToString(), "|",
                      key ? absl::StrCat(*key) : std::string("-"));
}

TunnelIndex::Key TunnelIndex::KeyOf(const IpPrefix& prefix) {
  const int bits = prefix.address().bit_length();
  const int length = std::clamp(prefix.length(), 0, bits);
  return {bits, FillFrom(prefix.address().bytes(), length, bits, false), length};
}

void TunnelIndex::Insert(std::multimap<Key, std::string>& index,
                         std::array<std::array<int, 129>, 2>& lengths, const Key& key,
                         const std::string& name) {
  index.emplace(key, name);
  ++lengths[FamilySlot(std::get<0>(key))][std::get<2>(key)];
}

void TunnelIndex::Erase(std::multimap<Key, std::string>& index,
                        std::array<std::array<int, 129>, 2>& lengths, const Key& key,
                        const std::string& name) {
  auto [first, last] = index.equal_range(key);
  for (auto it = first; it != last; ++it) {
    if (it->second != name) continue;
    index.erase(it);
    --lengths[FamilySlot(std::get<0>(key))][std::get<2>(key)];
    return;
  }
}

void TunnelIndex::Add(const TunnelSpec& spec, const std::vector<UnderlayAddress>& underlay) {
  Remove(spec.name);
  Indexed& entry = by_name_[spec.name];
  entry.match = ReceiveMatch(spec);
  matches_.emplace(entry.match, spec.name);
  // Prefixes of no family can overlap nothing (IpPrefix::Overlaps), and the unspecified
  // address is covered by nothing (the underlay rule): neither is indexed.
  for (const IpPrefix& p : spec.addresses) {
    if (p.address().bit_length() != 0) entry.prefixes.push_back(KeyOf(p));
  }
  for (const IpPrefix& p : spec.routes) {
    if (p.address().bit_length() != 0) entry.prefixes.push_back(KeyOf(p));
  }
  for (const UnderlayAddress& u : underlay) {
    if (u.address.is_unspecified()) continue;
    entry.underlay.push_back(KeyOf(IpPrefix(u.address, u.address.bit_length())));
  }
  for (const Key& key : entry.prefixes) Insert(prefixes_, prefix_lengths_, key, spec.name);
  for (const Key& key : entry.underlay) Insert(underlay_, underlay_lengths_, key, spec.name);
}

void TunnelIndex::Remove(const std::string& name) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return;
  const Indexed& entry = it->second;
  for (auto [first, last] = matches_.equal_range(entry.match); first != last; ++first) {
    if (first->second == name) {
      matches_.erase(first);
      break;
    }
  }
  for (const Key& key : entry.prefixes) Erase(prefixes_, prefix_lengths_, key, name);
  for (const Key& key : entry.underlay) Erase(underlay_, underlay_lengths_, key, name);
  by_name_.erase(it);
}

void TunnelIndex::Clear() {
  by_name_.clear();
  matches_.clear();
  prefixes_.clear();
  underlay_.clear();
  prefix_lengths_ = {};
  underlay_lengths_ = {};
}

void TunnelIndex::Overlapping(const std::multimap<Key, std::string>& index,
                              const std::array<std::array<int, 129>, 2>& lengths, const Key& prefix,
                              std::set<std::string>& out) const {
  const auto& [bits, bytes, length] = prefix;
  if (bits == 0) return;
  // Those containing it: at each prefix length in use up to its own, its bits cut there.
  const std::array<int, 129>& in_use = lengths[FamilySlot(bits)];
  for (int l = 0; l <= length; ++l) {
    if (in_use[l] == 0) continue;
    for (auto [first, last] = index.equal_range(Key{bits, FillFrom(bytes, l, bits, false), l});
         first != last; ++first) {
      out.insert(first->second);
    }
  }
  // Those inside it: their networks lie between its first and its last address.
  const std::array<uint8_t, 16> end = FillFrom(bytes, length, bits, true);
  for (auto it = index.lower_bound(Key{bits, bytes, 0}); it != index.end(); ++it) {
    if (std::get<0>(it->first) != bits || std::get<1>(it->first) > end) break;
    out.insert(it->second);
  }
}

std::set<std::string> TunnelIndex::ConflictCandidates(const TunnelSpec& spec) const {
  std::set<std::string> out;
  for (auto [first, last] = matches_.equal_range(ReceiveMatch(spec)); first != last; ++first) {
    out.insert(first->second);
  }
  for (const IpPrefix& p : spec.addresses) Overlapping(prefixes_, prefix_lengths_, KeyOf(p), out);
  for (const IpPrefix& p : spec.routes) Overlapping(prefixes_, prefix_lengths_, KeyOf(p), out);
  return out;
}

void TunnelIndex::PrefixesCovering(const IpAddress& address, std::set<std::string>& out) const {
  if (address.is_unspecified()) return;
  Overlapping(prefixes_, prefix_lengths_, KeyOf(IpPrefix(address, address.bit_length())), out);
}

void TunnelIndex::UnderlayInside(const IpPrefix& prefix, std::set<std::string>& out) const {
  Overlapping(underlay_, underlay_lengths_, KeyOf(prefix), out);
}

std::set<std::string> TunnelIndex::UnderlayCandidates(
    const TunnelSpec& spec, const std::vector<UnderlayAddress>& underlay) const {
  std::set<std::string> out;
  for (const IpPrefix& p : spec.addresses) UnderlayInside(p, out);
  for (const IpPrefix& p : spec.routes) UnderlayInside(p, out);
  for (const UnderlayAddress& u : underlay) PrefixesCovering(u.address, out);
  return out;
}

}  // namespace tunnelagent::agent
