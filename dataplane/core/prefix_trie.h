// Longest-prefix match over the IPv4 or the IPv6 prefixes of a set, for the peers of a
// multipoint tunnel: which peer an inner destination is sent to, and whether an inner source
// is one the peer it came from may use (WireGuard's allowed IPs).
//
// A path-compressed binary trie, as WireGuard's allowedips: a node holds a prefix and branches
// on the first bit after it, so a lookup visits at most one node per distinct prefix length on
// its path (at most 33 or 129). The nodes live in one vector and refer to each other by index:
// a lookup allocates nothing and takes no lock. Changes are the control path's (a worker's
// tables change only through its command queue); a removed node's slot is reused, so churn does
// not grow the trie beyond the most prefixes it ever held at once (at most two nodes each).
#ifndef TUNNELAGENT_DATAPLANE_CORE_PREFIX_TRIE_H_
#define TUNNELAGENT_DATAPLANE_CORE_PREFIX_TRIE_H_

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace tunnelagent::dataplane {

// `KeyBytes`: how much of a key a node keeps, 4 for a trie of IPv4 prefixes (a node of 24
// bytes with a pointer value, against 40 with room for IPv6: 100,000 prefixes take 5 MB
// rather than 8 on each worker).
template <typename Value, size_t KeyBytes = 16>
class PrefixTrie {
 public:
  // `bits`: 32 (IPv4) or 128 (IPv6), at most KeyBytes x 8; every key and address is that many
  // bits, network order.
  explicit PrefixTrie(int bits) : bits_(bits) {
    assert(bits == 32 || bits == 128);
    assert(bits <= static_cast<int>(KeyBytes * 8));
  }

  int bits() const { return bits_; }
  // Prefixes held (nodes that only branch are not counted).
  size_t size() const { return size_; }

  // Adds `key`/`length` (bits past `length` are ignored) with `value`. When the prefix is held
  // already, nothing changes: the answer is its value and false.
  std::pair<Value*, bool> TryInsert(const uint8_t* key, int length, Value value) {
    assert(length >= 0 && length <= bits_);
    Key k = Masked(key, length);
    int32_t parent = kNone;
    int side = 0;
    int32_t at = root_;
    while (at != kNone) {
      const Node& n = nodes_[at];
      const int common = CommonLength(k, length, n.key, n.length);
      if (common == n.length && n.length == length) {  // the prefix itself
        Node& held = nodes_[at];
        if (held.has_value) return {&held.value, false};
        held.has_value = true;
        held.value = std::move(value);
        ++size_;
        return {&held.value, true};
      }
      if (common == n.length) {  // below this node
        parent = at;
        side = Bit(k, n.length);
        at = n.child[side];
        continue;
      }
      // The paths part at `common` (< n.length): a node there takes both.
      const int32_t leaf = NewNode(k, length, std::move(value));
      if (common == length) {  // the new prefix contains the node's
        nodes_[leaf].child[Bit(nodes_[at].key, length)] = at;
        Link(parent, side, leaf);
        ++size_;
        return {&nodes_[leaf].value, true};
      }
      const int32_t fork = NewNode(Masked(k.data(), common), common);
      nodes_[fork].child[Bit(k, common)] = leaf;
      nodes_[fork].child[Bit(nodes_[at].key, common)] = at;
      Link(parent, side, fork);
      ++size_;
      return {&nodes_[leaf].value, true};
    }
    const int32_t leaf = NewNode(k, length, std::move(value));
    Link(parent, side, leaf);
    ++size_;
    return {&nodes_[leaf].value, true};
  }

  // Removes `key`/`length`; false when it was not held.
  bool Erase(const uint8_t* key, int length) {
    const Key k = Masked(key, length);
    int32_t grandparent = kNone, parent = kNone;
    int parent_side = 0, side = 0;
    int32_t at = root_;
    while (at != kNone) {
      const Node& n = nodes_[at];
      if (n.length > length || CommonLength(k, length, n.key, n.length) < n.length) return false;
      if (n.length == length) break;
      grandparent = parent;
      parent_side = side;
      parent = at;
      side = Bit(k, n.length);
      at = n.child[side];
    }
    if (at == kNone || !nodes_[at].has_value) return false;
    nodes_[at].has_value = false;
    nodes_[at].value = Value();
    --size_;
    // A node without a value stays only while it branches both ways.
    const int32_t replacement = Collapse(at);
    if (replacement == at) return true;
    Link(parent, side, replacement);
    if (parent != kNone && !nodes_[parent].has_value) {
      const int32_t parent_replacement = Collapse(parent);
      if (parent_replacement != parent) Link(grandparent, parent_side, parent_replacement);
    }
    return true;
  }

  // The value of the longest prefix holding `address` (bits() bits); null when none does.
  const Value* Lookup(const uint8_t* address) const {
    const Value* best = nullptr;
    int32_t at = root_;
    while (at != kNone) {
      const Node& n = nodes_[at];
      if (!Matches(address, n.key, n.length)) break;
      if (n.has_value) best = &n.value;
      if (n.length == bits_) break;
      at = n.child[Bit(address, n.length)];
    }
    return best;
  }

  // The value of exactly `key`/`length`; null when that prefix is not held.
  const Value* Find(const uint8_t* key, int length) const {
    const Key k = Masked(key, length);
    int32_t at = root_;
    while (at != kNone) {
      const Node& n = nodes_[at];
      if (n.length > length || !Matches(k.data(), n.key, n.length)) return nullptr;
      if (n.length == length) return n.has_value ? &n.value : nullptr;
      at = n.child[Bit(k, n.length)];
    }
    return nullptr;
  }

  // Gives back the room growth left (up to a quarter of the nodes): after a large change, as
  // the trie of a multipoint tunnel is on every worker.
  void ShrinkToFit() { nodes_.shrink_to_fit(); }

  // Nodes in use, branching ones included (at most 2 x size() - 1): for tests and memory.
  size_t nodes_in_use() const { return nodes_.size() - free_.size(); }

 private:
  static constexpr int32_t kNone = -1;
  using Key = std::array<uint8_t, KeyBytes>;

  struct Node {
    Key key{};  // the prefix, bits past `length` zero
    uint8_t length = 0;
    bool has_value = false;
    int32_t child[2] = {kNone, kNone};
    Value value{};
  };

  static int Bit(const uint8_t* bytes, int index) {
    return (bytes[index >> 3] >> (7 - (index & 7))) & 1;
  }
  static int Bit(const Key& key, int index) { return Bit(key.data(), index); }

  static Key Masked(const uint8_t* bytes, int length) {
    Key out{};
    const int whole = length >> 3;
    std::memcpy(out.data(), bytes, static_cast<size_t>(whole));
    if (length & 7) out[whole] = bytes[whole] & static_cast<uint8_t>(0xff << (8 - (length & 7)));
    return out;
  }

  // Whether the first `length` bits of `address` are `key`'s: whole words under a mask
  // rather than memcmp (a call per node visited, more than half of a warm lookup's time).
  // An IPv4 address is read as its four bytes only: it may end its buffer.
  bool Matches(const uint8_t* address, const Key& key, int length) const {
    if (length == 0) return true;
    if (KeyBytes == 4 || bits_ == 32) {
      uint32_t a, k;
      std::memcpy(&a, address, 4);
      std::memcpy(&k, key.data(), 4);
      return (__builtin_bswap32(a ^ k) >> (32 - length)) == 0;
    }
    for (int word = 0; word * 64 < length; ++word) {
      uint64_t a, k;
      std::memcpy(&a, address + 8 * word, 8);
      std::memcpy(&k, key.data() + 8 * word, 8);
      const int bits = length - 64 * word < 64 ? length - 64 * word : 64;
      if ((__builtin_bswap64(a ^ k) >> (64 - bits)) != 0) return false;
    }
    return true;
  }

  // How many leading bits the two prefixes share, at most the shorter length.
  static int CommonLength(const Key& a, int a_length, const Key& b, int b_length) {
    const int limit = a_length < b_length ? a_length : b_length;
    int common = 0;
    for (int byte = 0; common < limit; ++byte, common += 8) {
      const uint8_t differ = a[byte] ^ b[byte];
      if (differ != 0) {
        common += __builtin_clz(static_cast<unsigned>(differ)) - 24;
        break;
      }
    }
    return common < limit ? common : limit;
  }

  int32_t NewNode(const Key& key, int length) {
    int32_t index;
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
      nodes_[index] = Node();
    } else {
      index = static_cast<int32_t>(nodes_.size());
      // A quarter more at a time, not twice as much: a table of 100,000 prefixes on every
      // worker would otherwise hold up to as many nodes again unused.
      if (nodes_.size() == nodes_.capacity())
        nodes_.reserve(nodes_.size() + nodes_.size() / 4 + 16);
      nodes_.emplace_back();
    }
    nodes_[index].key = key;
    nodes_[index].length = static_cast<uint8_t>(length);
    return index;
  }
  int32_t NewNode(const Key& key, int length, Value value) {
    const int32_t index = NewNode(key, length);
    nodes_[index].has_value = true;
    nodes_[index].value = std::move(value);
    return index;
  }

  void Link(int32_t parent, int side, int32_t child) {
    if (parent == kNone) {
      root_ = child;
    } else {
      nodes_[parent].child[side] = child;
    }
  }

  // A node without a value that branches one way or none is taken out: the answer is what
  // takes its place (its one child, or none). Any other node stays: the answer is itself.
  int32_t Collapse(int32_t at) {
    const Node& n = nodes_[at];
    if (n.has_value || (n.child[0] != kNone && n.child[1] != kNone)) return at;
    const int32_t only = n.child[0] != kNone ? n.child[0] : n.child[1];
    nodes_[at] = Node();
    free_.push_back(at);
    return only;
  }

  const int bits_;
  int32_t root_ = kNone;
  size_t size_ = 0;
  std::vector<Node> nodes_;
  std::vector<int32_t> free_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_CORE_PREFIX_TRIE_H_
