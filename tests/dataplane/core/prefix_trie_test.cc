#include "dataplane/core/prefix_trie.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

namespace tunnelagent::dataplane {
namespace {

using Bytes = std::array<uint8_t, 16>;

Bytes V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) { return {a, b, c, d}; }

// The reference: every held prefix checked against the address, the longest match winning.
class Linear {
 public:
  explicit Linear(int bits) : bits_(bits) {}
  bool Insert(const Bytes& key, int length, int value) {
    return held_.emplace(Masked(key, length, bits_), value).second;
  }
  bool Erase(const Bytes& key, int length) { return held_.erase(Masked(key, length, bits_)) > 0; }
  const int* Lookup(const Bytes& address) const {
    const int* best = nullptr;
    int best_length = -1;
    for (const auto& [prefix, value] : held_) {
      if (prefix.second > best_length && Masked(address, prefix.second, bits_) == prefix) {
        best = &value;
        best_length = prefix.second;
      }
    }
    return best;
  }
  size_t size() const { return held_.size(); }

 private:
  using Prefix = std::pair<Bytes, int>;
  static Prefix Masked(const Bytes& bytes, int length, int bits) {
    Bytes out{};
    for (int i = 0; i < length && i < bits; ++i) {
      if (bytes[i / 8] & (0x80 >> (i % 8))) out[i / 8] |= static_cast<uint8_t>(0x80 >> (i % 8));
    }
    return {out, length};
  }
  const int bits_;
  std::map<Prefix, int> held_;
};

TEST(PrefixTrie, TheLongestHeldPrefixWins) {
  PrefixTrie<int> trie(32);
  EXPECT_EQ(trie.Lookup(V4(10, 1, 2, 3).data()), nullptr);
  ASSERT_TRUE(trie.TryInsert(V4(10, 0, 0, 0).data(), 8, 1).second);
  ASSERT_TRUE(trie.TryInsert(V4(10, 1, 0, 0).data(), 16, 2).second);
  ASSERT_TRUE(trie.TryInsert(V4(10, 1, 2, 3).data(), 32, 3).second);
  ASSERT_TRUE(trie.TryInsert(V4(0, 0, 0, 0).data(), 0, 4).second);
  EXPECT_EQ(*trie.Lookup(V4(10, 1, 2, 3).data()), 3);
  EXPECT_EQ(*trie.Lookup(V4(10, 1, 2, 4).data()), 2);
  EXPECT_EQ(*trie.Lookup(V4(10, 2, 0, 1).data()), 1);
  EXPECT_EQ(*trie.Lookup(V4(192, 0, 2, 1).data()), 4);
  EXPECT_EQ(trie.size(), 4u);
  // Host bits of a key are ignored: 10.1.255.255/16 is 10.1.0.0/16.
  EXPECT_EQ(*trie.Find(V4(10, 1, 255, 255).data(), 16), 2);
  EXPECT_EQ(trie.Find(V4(10, 1, 0, 0).data(), 17), nullptr);
}

TEST(PrefixTrie, AHeldPrefixIsNotReplaced) {
  PrefixTrie<int> trie(32);
  ASSERT_TRUE(trie.TryInsert(V4(198, 18, 0, 0).data(), 15, 1).second);
  const auto again = trie.TryInsert(V4(198, 19, 0, 0).data(), 15, 2);  // the same /15
  EXPECT_FALSE(again.second);
  EXPECT_EQ(*again.first, 1);
  EXPECT_EQ(trie.size(), 1u);
}

TEST(PrefixTrie, ErasingLeavesTheOthersAndReusesNodes) {
  PrefixTrie<int> trie(32);
  ASSERT_TRUE(trie.TryInsert(V4(10, 0, 0, 0).data(), 8, 1).second);
  ASSERT_TRUE(trie.TryInsert(V4(10, 1, 0, 0).data(), 16, 2).second);
  ASSERT_TRUE(trie.TryInsert(V4(10, 128, 0, 0).data(), 16, 3).second);
  EXPECT_FALSE(trie.Erase(V4(10, 2, 0, 0).data(), 16));
  EXPECT_FALSE(trie.Erase(V4(10, 0, 0, 0).data(), 9));
  ASSERT_TRUE(trie.Erase(V4(10, 0, 0, 0).data(), 8));
  EXPECT_FALSE(trie.Erase(V4(10, 0, 0, 0).data(), 8));
  EXPECT_EQ(trie.Lookup(V4(10, 3, 0, 1).data()), nullptr);
  EXPECT_EQ(*trie.Lookup(V4(10, 1, 0, 1).data()), 2);
  EXPECT_EQ(*trie.Lookup(V4(10, 128, 9, 9).data()), 3);
  // Churn does not grow the trie: a prefix added and removed many times reuses its nodes.
  const size_t nodes = trie.nodes_in_use();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(trie.TryInsert(V4(10, 64, static_cast<uint8_t>(i), 0).data(), 24, i).second);
    ASSERT_TRUE(trie.Erase(V4(10, 64, static_cast<uint8_t>(i), 0).data(), 24));
  }
  EXPECT_EQ(trie.nodes_in_use(), nodes);
  ASSERT_TRUE(trie.Erase(V4(10, 1, 0, 0).data(), 16));
  ASSERT_TRUE(trie.Erase(V4(10, 128, 0, 0).data(), 16));
  EXPECT_EQ(trie.size(), 0u);
  EXPECT_EQ(trie.nodes_in_use(), 0u);
}

TEST(PrefixTrie, Ipv6HostRoutesAndTheDefault) {
  PrefixTrie<int> trie(128);
  Bytes host{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  Bytes other = host;
  other[15] = 2;
  ASSERT_TRUE(trie.TryInsert(host.data(), 128, 1).second);
  ASSERT_TRUE(trie.TryInsert(Bytes{}.data(), 0, 2).second);
  ASSERT_TRUE(trie.TryInsert(host.data(), 127, 3).second);
  EXPECT_EQ(*trie.Lookup(host.data()), 1);
  EXPECT_EQ(*trie.Lookup(other.data()), 2);  // ::2 is outside ::0/127
  other[15] = 0;
  EXPECT_EQ(*trie.Lookup(other.data()), 3);
}

// Random sets of nested, overlapping and disjoint prefixes, added and removed in random order:
// every lookup agrees with a linear scan of the held prefixes.
template <size_t KeyBytes = 16>
void AgreesWithALinearScan(int bits, uint32_t seed) {
  std::mt19937 random(seed);
  PrefixTrie<int, KeyBytes> trie(bits);
  Linear reference(bits);
  std::vector<std::pair<Bytes, int>> added;
  // Few distinct leading bytes, so that prefixes nest and share paths.
  auto random_bytes = [&] {
    Bytes b{};
    for (int i = 0; i < bits / 8; ++i) b[i] = static_cast<uint8_t>(random() % (i < 2 ? 4 : 256));
    return b;
  };
  for (int step = 0; step < 4000; ++step) {
    const int action = static_cast<int>(random() % 10);
    if (action < 6 || added.empty()) {
      const Bytes key = random_bytes();
      const int length = static_cast<int>(random() % (bits + 1));
      const bool inserted = trie.TryInsert(key.data(), length, step).second;
      ASSERT_EQ(inserted, reference.Insert(key, length, step)) << "step " << step;
      if (inserted) added.emplace_back(key, length);
    } else if (action < 8) {
      const size_t pick = random() % added.size();
      const auto [key, length] = added[pick];
      added.erase(added.begin() + static_cast<std::ptrdiff_t>(pick));
      ASSERT_EQ(trie.Erase(key.data(), length), reference.Erase(key, length)) << "step " << step;
    }
    const Bytes address = random_bytes();
    const int* got = trie.Lookup(address.data());
    const int* want = reference.Lookup(address);
    ASSERT_EQ(got == nullptr, want == nullptr) << "step " << step;
    if (got != nullptr) {
      ASSERT_EQ(*got, *want) << "step " << step;
    }
    ASSERT_EQ(trie.size(), reference.size());
    ASSERT_LE(trie.nodes_in_use(), 2 * trie.size() + 1);
  }
}

TEST(PrefixTrie, Ipv4AgreesWithALinearScan) {
  for (uint32_t seed : {1u, 2u, 3u}) AgreesWithALinearScan(32, seed);
}

// The peer tables' IPv4 tries keep only the four bytes IPv4 needs.
TEST(PrefixTrie, Ipv4WithFourByteKeysAgreesWithALinearScan) {
  for (uint32_t seed : {6u, 7u, 8u}) AgreesWithALinearScan<4>(32, seed);
}

TEST(PrefixTrie, Ipv6AgreesWithALinearScan) {
  for (uint32_t seed : {4u, 5u}) AgreesWithALinearScan(128, seed);
}

// The size the multipoint tunnels are made for: 100,000 prefixes, each found again.
TEST(PrefixTrie, HoldsAHundredThousandPrefixes) {
  PrefixTrie<uint32_t> trie(32);
  for (uint32_t i = 0; i < 100000; ++i) {
    const uint32_t network = (10u << 24) | (i << 6);  // 10.0.0.0/8 cut into /26s
    const Bytes key = V4(static_cast<uint8_t>(network >> 24), static_cast<uint8_t>(network >> 16),
                         static_cast<uint8_t>(network >> 8), static_cast<uint8_t>(network));
    ASSERT_TRUE(trie.TryInsert(key.data(), 26, i).second);
  }
  EXPECT_EQ(trie.size(), 100000u);
  EXPECT_LE(trie.nodes_in_use(), 200000u);
  for (uint32_t i = 0; i < 100000; i += 997) {
    const uint32_t host = (10u << 24) | (i << 6) | 37;
    const Bytes address = V4(static_cast<uint8_t>(host >> 24), static_cast<uint8_t>(host >> 16),
                             static_cast<uint8_t>(host >> 8), static_cast<uint8_t>(host));
    const uint32_t* found = trie.Lookup(address.data());
    ASSERT_NE(found, nullptr) << i;
    EXPECT_EQ(*found, i);
  }
}

}  // namespace
}  // namespace tunnelagent::dataplane
