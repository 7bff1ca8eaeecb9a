#include "dataplane/core/peer_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tunnelagent::dataplane {
namespace {

using ::testing::HasSubstr;

std::array<uint8_t, 16> V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) { return {a, b, c, d}; }
InnerPrefix P4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, int length) {
  return {V4(a, b, c, d), length, false};
}
TunnelPeer Peer(uint32_t id, uint32_t underlay_host_order) {
  TunnelPeer peer;
  peer.id = id;
  peer.underlay = OuterAddress(underlay_host_order);
  return peer;
}

TEST(PeerTable, SendPicksTheLongestMatchAndReceiveChecksTheSource) {
  PeerTable table;
  ASSERT_TRUE(table.Add(Peer(1, 0xC6120001), {P4(10, 0, 0, 0, 8)}).ok());
  ASSERT_TRUE(table.Add(Peer(2, 0xC6120002), {P4(10, 1, 0, 0, 16), P4(10, 2, 3, 4, 32)}).ok());
  EXPECT_EQ(table.prefixes(), 3u);

  EXPECT_EQ(table.ForDestination(V4(10, 9, 9, 9).data(), false)->id, 1u);
  EXPECT_EQ(table.ForDestination(V4(10, 1, 9, 9).data(), false)->id, 2u);
  EXPECT_EQ(table.ForDestination(V4(10, 2, 3, 4).data(), false)->id, 2u);
  EXPECT_EQ(table.ForDestination(V4(192, 0, 2, 1).data(), false), nullptr);  // no peer: a drop

  const TunnelPeer* one = table.ForSource(OuterAddress(0xC6120001));
  ASSERT_NE(one, nullptr);
  EXPECT_EQ(one->id, 1u);
  EXPECT_EQ(table.ForSource(OuterAddress(0xC6120009)), nullptr);  // unknown_peer
  // Peer 1 may send from 10.9.9.9, not from 10.1.2.3 (peer 2's, the longer match): spoofed.
  EXPECT_TRUE(table.MaySend(*one, V4(10, 9, 9, 9).data(), false));
  EXPECT_FALSE(table.MaySend(*one, V4(10, 1, 2, 3).data(), false));
  EXPECT_FALSE(table.MaySend(*one, V4(172, 16, 0, 1).data(), false));
}

TEST(PeerTable, ConflictsAreRefusedAndChangeNothing) {
  PeerTable table;
  ASSERT_TRUE(table.Add(Peer(1, 0xC6120001), {P4(10, 0, 0, 0, 8)}).ok());

  absl::Status same_prefix =
      table.Add(Peer(2, 0xC6120002), {P4(10, 1, 0, 0, 16), P4(10, 0, 0, 0, 8)});
  EXPECT_EQ(same_prefix.code(), absl::StatusCode::kAlreadyExists) << same_prefix;
  EXPECT_THAT(std::string(same_prefix.message()), HasSubstr("10.0.0.0/8 is peer 1's"));
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.ForDestination(V4(10, 1, 0, 1).data(), false)->id, 1u) << "10.1/16 was added";

  EXPECT_EQ(table.Add(Peer(2, 0xC6120001), std::vector<InnerPrefix>{}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table.Add(Peer(1, 0xC6120003), std::vector<InnerPrefix>{}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table.Add(Peer(3, 0xC6120003), {P4(10, 5, 0, 0, 16), P4(10, 5, 0, 0, 16)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Add(Peer(3, 0xC6120003), {P4(10, 5, 0, 0, 33)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.prefixes(), 1u);
  EXPECT_EQ(table.ForSource(OuterAddress(0xC6120003)), nullptr);
}

TEST(PeerTable, ReplaceMovesPrefixesAndAddressAndRemoveForgets) {
  PeerTable table;
  ASSERT_TRUE(table.Add(Peer(1, 0xC6120001), {P4(10, 1, 0, 0, 16)}).ok());
  ASSERT_TRUE(table.Add(Peer(2, 0xC6120002), {P4(10, 2, 0, 0, 16)}).ok());
  // Its own prefix kept, one added, a new address: no conflict with itself.
  TunnelPeer moved = Peer(1, 0xC6120011);
  moved.has_key = true;
  moved.key = 7;
  ASSERT_TRUE(table.Replace(moved, {P4(10, 1, 0, 0, 16), P4(10, 3, 0, 0, 16)}).ok());
  EXPECT_EQ(table.ForSource(OuterAddress(0xC6120001)), nullptr);
  ASSERT_NE(table.ForSource(OuterAddress(0xC6120011)), nullptr);
  EXPECT_EQ(table.ForDestination(V4(10, 3, 0, 1).data(), false)->key, 7u);
  // Taking peer 2's prefix is refused and leaves peer 1 as it was.
  EXPECT_EQ(table.Replace(Peer(1, 0xC6120011), {P4(10, 2, 0, 0, 16)}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table.ForDestination(V4(10, 3, 0, 1).data(), false)->id, 1u);
  EXPECT_EQ(table.Replace(Peer(9, 0xC6120009), std::vector<InnerPrefix>{}).code(),
            absl::StatusCode::kNotFound);

  ASSERT_TRUE(table.Remove(1).ok());
  EXPECT_EQ(table.Remove(1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.ForDestination(V4(10, 1, 0, 1).data(), false), nullptr);
  EXPECT_EQ(table.ForSource(OuterAddress(0xC6120011)), nullptr);
  EXPECT_EQ(table.prefixes(), 1u);
  // The prefixes it had are free for another peer.
  EXPECT_TRUE(table.Add(Peer(3, 0xC6120003), {P4(10, 1, 0, 0, 16)}).ok());
}

TEST(PeerTable, Ipv6InnerPrefixesAreTheirOwn) {
  PeerTable table;
  InnerPrefix v6{{0xfd, 0, 0, 1}, 64, true};
  ASSERT_TRUE(table.Add(Peer(1, 0xC6120001), {v6}).ok());
  std::array<uint8_t, 16> inside{0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5};
  EXPECT_EQ(table.ForDestination(inside.data(), true)->id, 1u);
  // The same leading bytes read as IPv4 are another address.
  EXPECT_EQ(table.ForDestination(inside.data(), false), nullptr);
  EXPECT_EQ(table.Add(Peer(2, 0xC6120002), {v6}).code(), absl::StatusCode::kAlreadyExists);
}

// The size a fleet mesh is made for: 10,000 peers, ten prefixes each.
// A large table answers from its cache of recent answers: an answer given before a change
// is never given after it.
TEST(PeerTable, CachedAnswersGoWithEveryChange) {
  PeerTable table;
  std::vector<InnerPrefix> many;  // 100 /24s in 10.1.0.0/16: the table is cached
  for (int i = 0; i < 100; ++i) many.push_back(P4(10, 1, static_cast<uint8_t>(i), 0, 24));
  ASSERT_TRUE(table.Add(Peer(1, 0xC6120001), many).ok());
  const auto address = V4(10, 1, 7, 9);
  const auto elsewhere = V4(10, 2, 0, 1);
  for (int round = 0; round < 2; ++round) {  // the second round's answers are the cache's
    EXPECT_EQ(table.ForDestination(address.data(), false)->id, 1u);
    EXPECT_EQ(table.ForDestination(elsewhere.data(), false), nullptr);
  }
  // A more specific prefix of another peer, and a prefix where there was none.
  ASSERT_TRUE(table.Add(Peer(2, 0xC6120002), {P4(10, 1, 7, 0, 28), P4(10, 2, 0, 0, 16)}).ok());
  EXPECT_EQ(table.ForDestination(address.data(), false)->id, 2u);
  EXPECT_EQ(table.ForDestination(elsewhere.data(), false)->id, 2u);
  // Moved by a replacement, then gone.
  ASSERT_TRUE(table.Replace(Peer(2, 0xC6120002), {P4(10, 2, 0, 0, 16)}).ok());
  EXPECT_EQ(table.ForDestination(address.data(), false)->id, 1u);
  const TunnelPeer* two = table.Find(2);
  ASSERT_NE(two, nullptr);
  EXPECT_TRUE(table.MaySend(*two, elsewhere.data(), false));
  ASSERT_TRUE(table.Remove(2).ok());
  EXPECT_EQ(table.ForDestination(elsewhere.data(), false), nullptr);
  ASSERT_TRUE(table.Remove(1).ok());
  EXPECT_EQ(table.ForDestination(address.data(), false), nullptr);
}

TEST(PeerTable, TenThousandPeersAHundredThousandPrefixes) {
  PeerTable table;
  for (uint32_t id = 0; id < 10000; ++id) {
    std::vector<InnerPrefix> allowed;
    for (uint32_t j = 0; j < 10; ++j) {
      const uint32_t network = (10u << 24) | ((id * 10 + j) << 6);
      allowed.push_back(P4(static_cast<uint8_t>(network >> 24), static_cast<uint8_t>(network >> 16),
                           static_cast<uint8_t>(network >> 8), static_cast<uint8_t>(network), 26));
    }
    ASSERT_TRUE(table.Add(Peer(id, 0xC6130000 + id), allowed).ok()) << id;
  }
  EXPECT_EQ(table.prefixes(), 100000u);
  for (uint32_t id = 0; id < 10000; id += 333) {
    const uint32_t host = (10u << 24) | ((id * 10 + 9) << 6) | 1;
    const TunnelPeer* peer =
        table.ForDestination(V4(static_cast<uint8_t>(host >> 24), static_cast<uint8_t>(host >> 16),
                                static_cast<uint8_t>(host >> 8), static_cast<uint8_t>(host))
                                 .data(),
                             false);
    ASSERT_NE(peer, nullptr);
    EXPECT_EQ(peer->id, id);
    EXPECT_EQ(table.ForSource(OuterAddress(0xC6130000 + id)), peer);
  }
}

}  // namespace
}  // namespace tunnelagent::dataplane
