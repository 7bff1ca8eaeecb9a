// The last answers of a longest-prefix lookup, by address: a direct-mapped cache in front of a
// multipoint tunnel's peer table. Traffic is a few thousand flows at a time, each looked up
// for every packet, on send (destination) and on receive (source); an uncached lookup among
// 100,000 prefixes visits about 18 trie nodes spread over megabytes (about 200 ns once they
// fall out of the CPU's caches), a cached one is a hash and two loads (OVS's exact-match
// cache, for the same reason).
//
// Any change of the table drops every answer at once (a new generation): a cached answer is
// never older than the table. Owned and used by one worker's thread; its memory is made once,
// by Reserve (the control path's), and nothing is allocated per packet.
#ifndef TUNNELAGENT_DATAPLANE_CORE_LOOKUP_CACHE_H_
#define TUNNELAGENT_DATAPLANE_CORE_LOOKUP_CACHE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

namespace tunnelagent::dataplane {

template <typename Answer>
class LookupCache {
 public:
  // 512 KiB of entries: 16,384 addresses, four times a few thousand flows, so that few of
  // them share a slot (with 8,192, 4,096 random flows took 72-116 ns a lookup, with 16,384
  // 40-53 ns).
  static constexpr uint32_t kSlotBits = 14;

  // The answer cached for `address` (4 bytes, or 16 with `v6`) into *answer; false when there
  // is none of this generation.
  bool Find(const uint8_t* address, bool v6, Answer* answer) const {
    if (!entries_) return false;
    const Key key = KeyOf(address, v6);
    const Entry& e = entries_[SlotOf(key)];
    if (e.generation != generation_ || e.v6 != v6 || e.key.hi != key.hi || e.key.lo != key.lo) {
      return false;
    }
    *answer = e.answer;
    return true;
  }

  // Makes the entries; until then nothing is cached.
  void Reserve() {
    if (!entries_) entries_.reset(new Entry[size_t{1} << kSlotBits]());
  }

  void Store(const uint8_t* address, bool v6, Answer answer) {
    if (!entries_) return;
    const Key key = KeyOf(address, v6);
    Entry& e = entries_[SlotOf(key)];
    e.key = key;
    e.v6 = v6;
    e.generation = generation_;
    e.answer = answer;
  }

  // Every answer is stale: the table changed.
  void Clear() {
    if (++generation_ != 0) return;
    // After 2^32 changes the generations start again: entries of the first are wiped so that
    // none can pass for new.
    if (entries_) std::fill_n(entries_.get(), size_t{1} << kSlotBits, Entry{});
    generation_ = 1;
  }

 private:
  struct Key {
    uint64_t hi = 0;
    uint64_t lo = 0;  // IPv4: the address
  };
  struct Entry {
    Key key;
    uint32_t generation = 0;  // 0: empty
    bool v6 = false;
    Answer answer{};
  };

  static Key KeyOf(const uint8_t* address, bool v6) {
    Key key;
    if (v6) {
      std::memcpy(&key.hi, address, 8);
      std::memcpy(&key.lo, address + 8, 8);
    } else {
      uint32_t a;
      std::memcpy(&a, address, 4);
      key.lo = a;
    }
    return key;
  }
  static uint32_t SlotOf(const Key& key) {
    const uint64_t mixed = ((key.hi * 0x9E3779B97F4A7C15ull) ^ key.lo) * 0xBF58476D1CE4E5B9ull;
    return static_cast<uint32_t>(mixed >> (64 - kSlotBits));
  }

  std::unique_ptr<Entry[]> entries_;  // 2^kSlotBits, made by Reserve
  uint32_t generation_ = 1;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_LOOKUP_CACHE_H_
