#include "dataplane/core/tunnel_table.h"

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

struct Tunnel {
  std::string name;
  TunnelMatch match;
};

constexpr uint32_t kSelf = 0xC0000201;   // 192.0.2.1: the packets' destination
constexpr uint32_t kPeer = 0xC6336402;   // 198.51.100.2: the packets' source
constexpr uint32_t kOther = 0xCB007103;  // 203.0.113.3

TunnelMatch Gre(uint32_t local, uint32_t remote) {
  return {TunnelMode::kGre, false, local, remote, 0};
}
TunnelMatch GreKey(uint32_t local, uint32_t remote, uint32_t key) {
  return {TunnelMode::kGre, true, local, remote, key};
}
TunnelMatch Ipip(uint32_t local, uint32_t remote) {
  return {TunnelMode::kIpip, false, local, remote, 0};
}

Decapsulated Packet(TunnelMode mode, OuterAddress src, OuterAddress dst, bool has_key = false,
                    uint32_t key = 0) {
  Decapsulated d;
  d.mode = mode;
  d.outer_src = src;
  d.outer_dst = dst;
  d.has_key = has_key;
  d.key = key;
  return d;
}

// Owns the tunnels a case declares and a table over them.
class Fixture {
 public:
  explicit Fixture(const std::vector<Tunnel>& tunnels) : tunnels_(tunnels) {
    for (const Tunnel& t : tunnels_) {
      EXPECT_TRUE(table_.Insert(t.match, &t)) << t.name;
    }
  }
  // The name of the tunnel found, or "" for none.
  std::string Find(const Decapsulated& d) const {
    const Tunnel* t = table_.Lookup(d);
    return t == nullptr ? "" : t->name;
  }
  TunnelTable<const Tunnel>& table() { return table_; }

 private:
  const std::vector<Tunnel> tunnels_;  // never resized: the table points into it
  TunnelTable<const Tunnel> table_;
};

struct LookupCase {
  std::string name;
  std::vector<Tunnel> tunnels;
  Decapsulated packet;
  std::string expected;  // "" = no tunnel
};

std::ostream& operator<<(std::ostream& os, const LookupCase& c) { return os << c.name; }

class TunnelTableLookupTest : public ::testing::TestWithParam<LookupCase> {};

TEST_P(TunnelTableLookupTest, FindsTheExpectedTunnel) {
  const LookupCase& c = GetParam();
  Fixture f(c.tunnels);
  EXPECT_EQ(f.Find(c.packet), c.expected);
}

// Every specificity at once, so each step of the order is seen beating the ones after it.
const std::vector<Tunnel> kAllSpecificities = {
    {"exact", Gre(kSelf, kPeer)},
    {"remote-only", Gre(0, kPeer)},
    {"local-only", Gre(kSelf, 0)},
    {"wildcard", Gre(0, 0)},
};

INSTANTIATE_TEST_SUITE_P(
    Order, TunnelTableLookupTest,
    ::testing::Values(LookupCase{"ExactBeatsAll", kAllSpecificities,
                                 Packet(TunnelMode::kGre, kPeer, kSelf), "exact"},
                      LookupCase{"RemoteOnlyWhenDestinationDiffers", kAllSpecificities,
                                 Packet(TunnelMode::kGre, kPeer, kOther), "remote-only"},
                      LookupCase{"LocalOnlyWhenSourceUnknown", kAllSpecificities,
                                 Packet(TunnelMode::kGre, kOther, kSelf), "local-only"},
                      LookupCase{"WildcardLast", kAllSpecificities,
                                 Packet(TunnelMode::kGre, kOther, kOther), "wildcard"},
                      // Remote-only beats local-only even when both match the packet.
                      LookupCase{"RemoteOnlyBeatsLocalOnly",
                                 {{"local-only", Gre(kSelf, 0)}, {"remote-only", Gre(0, kPeer)}},
                                 Packet(TunnelMode::kGre, kPeer, kSelf),
                                 "remote-only"},
                      LookupCase{"LocalOnlyBeatsWildcard",
                                 {{"wildcard", Gre(0, 0)}, {"local-only", Gre(kSelf, 0)}},
                                 Packet(TunnelMode::kGre, kPeer, kSelf),
                                 "local-only"},
                      LookupCase{"ExactBeatsWildcard",
                                 {{"wildcard", Gre(0, 0)}, {"exact", Gre(kSelf, kPeer)}},
                                 Packet(TunnelMode::kGre, kPeer, kSelf),
                                 "exact"},
                      LookupCase{"ExactNeedsBothAddresses",
                                 {{"exact", Gre(kSelf, kPeer)}},
                                 Packet(TunnelMode::kGre, kPeer, kOther),
                                 ""},
                      LookupCase{"AddressesNotSwapped",
                                 {{"exact", Gre(kSelf, kPeer)}},
                                 Packet(TunnelMode::kGre, kSelf, kPeer),
                                 ""},
                      LookupCase{"EmptyTable", {}, Packet(TunnelMode::kGre, kPeer, kSelf), ""}),
    [](const auto& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Key, TunnelTableLookupTest,
    ::testing::Values(
        LookupCase{"KeyedPacketFindsItsKey",
                   {{"key42", GreKey(kSelf, kPeer, 42)}, {"key43", GreKey(kSelf, kPeer, 43)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, true, 43),
                   "key43"},
        LookupCase{"WrongKeyNoMatch",
                   {{"key42", GreKey(kSelf, kPeer, 42)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, true, 41),
                   ""},
        LookupCase{"KeylessPacketNeverFindsKeyedTunnel",
                   {{"key0", GreKey(kSelf, kPeer, 0)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf),
                   ""},
        LookupCase{"KeyedPacketNeverFindsKeylessTunnel",
                   {{"keyless", Gre(kSelf, kPeer)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, true, 0),
                   ""},
        LookupCase{"KeyZeroIsNotKeyless",
                   {{"keyless", Gre(kSelf, kPeer)}, {"key0", GreKey(kSelf, kPeer, 0)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, true, 0),
                   "key0"},
        LookupCase{"KeylessPicksKeyless",
                   {{"key0", GreKey(kSelf, kPeer, 0)}, {"keyless", Gre(kSelf, kPeer)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf),
                   "keyless"},
        // A key mismatch on the exact tunnel falls through to a less specific one with the key.
        LookupCase{"KeyBeforeSpecificity",
                   {{"exact-key1", GreKey(kSelf, kPeer, 1)}, {"wildcard-key2", GreKey(0, 0, 2)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, true, 2),
                   "wildcard-key2"},
        // A keyless packet's key field is ignored whatever it holds.
        LookupCase{"StrayKeyOfKeylessPacketIgnored",
                   {{"keyless", Gre(kSelf, kPeer)}},
                   Packet(TunnelMode::kGre, kPeer, kSelf, false, 99),
                   "keyless"}),
    [](const auto& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Protocol, TunnelTableLookupTest,
    ::testing::Values(LookupCase{"IpipPacketFindsIpip",
                                 {{"gre", Gre(kSelf, kPeer)}, {"ipip", Ipip(kSelf, kPeer)}},
                                 Packet(TunnelMode::kIpip, kPeer, kSelf),
                                 "ipip"},
                      LookupCase{"GrePacketFindsGre",
                                 {{"ipip", Ipip(kSelf, kPeer)}, {"gre", Gre(kSelf, kPeer)}},
                                 Packet(TunnelMode::kGre, kPeer, kSelf),
                                 "gre"},
                      LookupCase{"IpipNeverFindsGre",
                                 {{"gre", Gre(kSelf, kPeer)}, {"gre-any", Gre(0, 0)}},
                                 Packet(TunnelMode::kIpip, kPeer, kSelf),
                                 ""},
                      LookupCase{"GreNeverFindsIpip",
                                 {{"ipip", Ipip(kSelf, kPeer)}, {"ipip-any", Ipip(0, 0)}},
                                 Packet(TunnelMode::kGre, kPeer, kSelf),
                                 ""},
                      LookupCase{"IpipWildcardOnlyForIpip",
                                 {{"ipip-any", Ipip(0, 0)}, {"gre-exact", Gre(kSelf, kPeer)}},
                                 Packet(TunnelMode::kIpip, kPeer, kSelf),
                                 "ipip-any"}),
    [](const auto& info) { return info.param.name; });

TEST(TunnelTableTest, InsertDuplicateFails) {
  const Tunnel a{"a", GreKey(kSelf, kPeer, 42)};
  const Tunnel b{"b", GreKey(kSelf, kPeer, 42)};
  TunnelTable<const Tunnel> table;
  EXPECT_TRUE(table.Insert(a.match, &a));
  EXPECT_FALSE(table.Insert(b.match, &b));
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kPeer, kSelf, true, 42)), &a);  // first one kept
  // Differing in any one field is not a duplicate.
  for (const TunnelMatch& m :
       {GreKey(kSelf, kPeer, 43), GreKey(0, kPeer, 42), GreKey(kSelf, 0, 42), Gre(kSelf, kPeer),
        TunnelMatch{TunnelMode::kIpip, true, kSelf, kPeer, 42}}) {
    EXPECT_TRUE(table.Insert(m, &b));
  }
  EXPECT_EQ(table.size(), 6u);
}

TEST(TunnelTableTest, KeylessMatchIgnoresKeyField) {
  const Tunnel a{"a", Gre(kSelf, kPeer)};
  TunnelTable<const Tunnel> table;
  ASSERT_TRUE(table.Insert(TunnelMatch{TunnelMode::kGre, false, kSelf, kPeer, 7}, &a));
  EXPECT_TRUE(table.Contains(Gre(kSelf, kPeer)));
  EXPECT_FALSE(table.Insert(Gre(kSelf, kPeer), &a));  // the same match, key field aside
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kPeer, kSelf)), &a);
  table.Erase(TunnelMatch{TunnelMode::kGre, false, kSelf, kPeer, 9});
  EXPECT_EQ(table.size(), 0u);
}

TEST(TunnelTableTest, EraseFallsBackToLessSpecific) {
  Fixture f(kAllSpecificities);
  const Decapsulated packet = Packet(TunnelMode::kGre, kPeer, kSelf);
  const std::vector<std::string> order = {"exact", "remote-only", "local-only", "wildcard"};
  for (size_t i = 0; i < kAllSpecificities.size(); ++i) {
    EXPECT_EQ(f.Find(packet), order[i]);
    EXPECT_TRUE(f.table().Contains(kAllSpecificities[i].match));
    f.table().Erase(kAllSpecificities[i].match);
    EXPECT_FALSE(f.table().Contains(kAllSpecificities[i].match));
    EXPECT_EQ(f.table().size(), kAllSpecificities.size() - i - 1);
  }
  EXPECT_EQ(f.Find(packet), "");
}

TEST(TunnelTableTest, EraseOnlyTheNamedMatch) {
  Fixture f({{"key1", GreKey(kSelf, kPeer, 1)}, {"key2", GreKey(kSelf, kPeer, 2)}});
  f.table().Erase(GreKey(kSelf, kPeer, 3));  // absent: nothing happens
  f.table().Erase(Gre(kSelf, kPeer));
  EXPECT_EQ(f.table().size(), 2u);
  f.table().Erase(GreKey(kSelf, kPeer, 1));
  EXPECT_EQ(f.Find(Packet(TunnelMode::kGre, kPeer, kSelf, true, 1)), "");
  EXPECT_EQ(f.Find(Packet(TunnelMode::kGre, kPeer, kSelf, true, 2)), "key2");
}

TEST(TunnelTableTest, EraseThenInsertAgain) {
  const Tunnel a{"a", Gre(kSelf, kPeer)};
  const Tunnel b{"b", Gre(kSelf, kPeer)};
  TunnelTable<const Tunnel> table;
  ASSERT_TRUE(table.Insert(a.match, &a));
  table.Erase(a.match);
  ASSERT_TRUE(table.Insert(b.match, &b));
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kPeer, kSelf)), &b);
  table.Clear();
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kPeer, kSelf)), nullptr);
}

// 10,000 tunnels of every shape: each packet still finds exactly its own tunnel (Lookup
// probes at most four keys, whatever the table holds).
TEST(TunnelTableTest, TenThousandTunnels) {
  constexpr uint32_t kCount = 10000;
  constexpr uint32_t kBase = 0x0A000000;  // 10.0.0.0/8
  std::vector<Tunnel> tunnels;
  tunnels.reserve(kCount);
  for (uint32_t i = 0; i < kCount; ++i) {
    switch (i % 4) {
      case 0:  // a peer of its own
        tunnels.push_back({"gre-peer", Gre(kSelf, kBase + i)});
        break;
      case 1:  // one peer, many keys
        tunnels.push_back({"gre-key", GreKey(kSelf, kPeer, i)});
        break;
      case 2:  // keyed, any local address
        tunnels.push_back({"gre-key-any-local", GreKey(0, kBase + i, i)});
        break;
      case 3:
        tunnels.push_back({"ipip", Ipip(kSelf, kBase + i)});
        break;
    }
  }
  TunnelTable<const Tunnel> table;
  for (const Tunnel& t : tunnels) ASSERT_TRUE(table.Insert(t.match, &t));
  ASSERT_EQ(table.size(), kCount);

  for (uint32_t i = 0; i < kCount; ++i) {
    const TunnelMatch& m = tunnels[i].match;
    const OuterAddress dst = m.local.is_zero() ? OuterAddress(kOther) : m.local;
    const Decapsulated d = Packet(m.mode, m.remote, dst, m.has_key, m.key);
    ASSERT_EQ(table.Lookup(d), &tunnels[i]) << i;
    EXPECT_FALSE(table.Insert(m, &tunnels[0])) << i;
  }
  // Near misses find nothing: an unused key, an address past the range, the other protocol.
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kPeer, kSelf, true, kCount + 1)), nullptr);
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kBase + kCount, kSelf)), nullptr);
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kIpip, kBase + 0, kSelf)), nullptr);  // GRE peer
  EXPECT_EQ(table.Lookup(Packet(TunnelMode::kGre, kBase + 3, kSelf)), nullptr);   // IPIP peer

  // Erase every other tunnel; the rest are unaffected.
  for (uint32_t i = 0; i < kCount; i += 2) table.Erase(tunnels[i].match);
  EXPECT_EQ(table.size(), kCount / 2);
  for (uint32_t i = 0; i < kCount; ++i) {
    const TunnelMatch& m = tunnels[i].match;
    const OuterAddress dst = m.local.is_zero() ? OuterAddress(kOther) : m.local;
    const Tunnel* found = table.Lookup(Packet(m.mode, m.remote, dst, m.has_key, m.key));
    ASSERT_EQ(found, i % 2 == 0 ? nullptr : &tunnels[i]) << i;
  }
}

}  // namespace
}  // namespace tunnelagent::dataplane
