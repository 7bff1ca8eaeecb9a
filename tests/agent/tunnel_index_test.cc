#include "agent/tunnel_index.h"

#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/tunnel_manager.h"
#include "agent/underlay_guard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }
IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }

TunnelSpec Spec(const std::string& name, const std::string& remote,
                std::vector<std::string> addresses, std::vector<std::string> routes = {}) {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = TunnelMode::kGre;
  spec.local = A("198.18.0.1");
  spec.remote = A(remote);
  for (const std::string& a : addresses) spec.addresses.push_back(P(a));
  for (const std::string& r : routes) spec.routes.push_back(P(r));
  return spec;
}

std::vector<UnderlayAddress> Underlay(const TunnelSpec& spec) {
  return UnderlayAddressesOf(spec, std::nullopt);
}

TEST(TunnelIndexTest, FindsReceiveMatchesAndOverlapsBothWays) {
  TunnelIndex index;
  index.Add(Spec("a", "198.18.1.1", {"10.0.0.1/30"}, {"10.8.0.0/16"}), {});
  index.Add(Spec("b", "198.18.1.2", {"10.0.1.1/30"}), {});
  // Same endpoints and no key: the receive match of "a".
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.1.1", {"10.9.9.1/30"})), ElementsAre("a"));
  // Inside a's route; around b's address; neither.
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.9.9", {"10.8.3.1/24"})), ElementsAre("a"));
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.9.9", {}, {"10.0.1.0/24"})),
              ElementsAre("b"));
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.9.9", {}, {"10.0.0.0/8"})),
              ElementsAre("a", "b"));
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.9.9", {"10.0.2.1/30"})), IsEmpty());

  index.Remove("a");
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.1.1", {"10.8.3.1/24"})), IsEmpty());
  // Added again under the same name: what it had before is gone.
  index.Add(Spec("b", "198.18.1.2", {"10.0.5.1/30"}), {});
  EXPECT_THAT(index.ConflictCandidates(Spec("x", "198.18.9.9", {"10.0.1.2/30"})), IsEmpty());
  EXPECT_EQ(index.size(), 1u);
}

TEST(TunnelIndexTest, UnderlayBothWays) {
  TunnelIndex index;
  TunnelSpec a = Spec("a", "198.18.1.1", {"10.0.0.1/30"}, {"172.16.0.0/12"});
  index.Add(a, Underlay(a));
  // A prefix around a's remote; a remote inside a's route.
  EXPECT_THAT(index.UnderlayCandidates(Spec("x", "198.18.9.9", {}, {"198.18.1.0/24"}), {}),
              ElementsAre("a"));
  TunnelSpec inside = Spec("x", "172.16.4.4", {"10.5.0.1/30"});
  EXPECT_THAT(index.UnderlayCandidates(inside, Underlay(inside)), ElementsAre("a"));
  TunnelSpec apart = Spec("x", "198.18.9.9", {"10.5.0.1/30"});
  EXPECT_THAT(index.UnderlayCandidates(apart, Underlay(apart)), IsEmpty());
}

// Against a full scan: for random tunnels (IPv4 and IPv6, prefixes of every length, shared
// remotes), the candidates hold every tunnel ConflictBetween or the underlay rule refuses.
TEST(TunnelIndexTest, CandidatesHoldEveryClashAFullScanFinds) {
  std::mt19937 random(7);
  auto pick = [&random](int n) { return static_cast<int>(random() % n); };
  auto v4 = [&](int length) {
    const IpAddress a = IpAddress::V4(0x0a000000u | (random() & 0x00ffffffu));
    return IpPrefix(a, length);
  };
  auto v6 = [&](int length) {
    std::array<uint8_t, 16> bytes{0xfd, 0x00};
    for (int i = 2; i < 16; ++i) bytes[i] = static_cast<uint8_t>(pick(4));
    return IpPrefix(IpAddress::V6(bytes), length);
  };
  auto random_spec = [&](const std::string& name) {
    TunnelSpec spec;
    spec.name = name;
    spec.mode = pick(2) ? TunnelMode::kGre : TunnelMode::kIpip;
    spec.local = pick(3) ? A("198.18.0.1") : IpAddress();
    spec.remote = pick(4) ? IpAddress::V4(0x0a000000u | (random() & 0x00ffffffu))
                          : A(absl::StrCat("198.18.1.", pick(8)));
    if (pick(2)) spec.key = static_cast<uint32_t>(pick(3));
    for (int i = pick(3); i > 0; --i) spec.addresses.push_back(v4(8 + pick(25)));
    for (int i = pick(2); i > 0; --i) spec.addresses.push_back(v6(32 + pick(97)));
    for (int i = pick(3); i > 0; --i) spec.routes.push_back(v4(4 + pick(29)).Network());
    return spec;
  };
  std::vector<TunnelSpec> indexed;
  TunnelIndex index;
  for (int i = 0; i < 400; ++i) {
    indexed.push_back(random_spec(absl::StrCat("t", i)));
    index.Add(indexed.back(), Underlay(indexed.back()));
  }
  // Some removed, some added again with other prefixes.
  for (int i = 0; i < 400; i += 7) index.Remove(indexed[i].name);
  for (int i = 0; i < 400; i += 14) {
    indexed[i] = random_spec(indexed[i].name);
    index.Add(indexed[i], Underlay(indexed[i]));
  }
  int conflicts = 0;
  int underlay_clashes = 0;
  for (int round = 0; round < 2000; ++round) {
    const TunnelSpec spec = random_spec("new");
    const std::vector<UnderlayAddress> underlay = Underlay(spec);
    const std::set<std::string> candidates = index.ConflictCandidates(spec);
    const std::set<std::string> underlay_candidates = index.UnderlayCandidates(spec, underlay);
    for (int i = 0; i < 400; ++i) {
      const TunnelSpec& other = indexed[i];
      if (i % 7 == 0 && i % 14 != 0) continue;  // removed
      if (!ConflictBetween(spec, other).ok()) {
        ++conflicts;
        EXPECT_TRUE(candidates.count(other.name)) << "missed " << other.name;
      }
      if (!CheckPrefixesSpareUnderlay(spec, Underlay(other)).ok() ||
          !CheckPrefixesSpareUnderlay(other, underlay).ok()) {
        ++underlay_clashes;
        EXPECT_TRUE(underlay_candidates.count(other.name)) << "missed " << other.name;
      }
    }
  }
  // The random tunnels clash often enough for the comparison to mean something.
  EXPECT_GT(conflicts, 1000);
  EXPECT_GT(underlay_clashes, 100);
}

// The manager's index follows every change: what an update or a delete lets go of is free at
// once, what it takes is taken, a failed create leaves nothing behind, an apply checks against
// the set as it will be, and after a restart the saved set is what stands in the way.
TEST(TunnelManagerIndexTest, ConflictsFollowEveryChange) {
  fakes::EventLog log;
  fakes::FakeLinkControl links{&log};
  fakes::FakePacketEngine engine{&log};
  fakes::FakeStateStore store{&log};
  auto manager = std::make_unique<TunnelManager>(&links, &engine, &store, TunnelManager::Options{});
  auto code = [&manager](const TunnelSpec& spec) { return manager->Create(spec).status().code(); };
  using absl::StatusCode;

  ASSERT_EQ(code(Spec("a", "198.18.1.1", {"10.0.0.1/30"})), StatusCode::kOk);
  EXPECT_EQ(code(Spec("b", "198.18.1.2", {"10.0.0.2/30"})), StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(Spec("b", "198.18.1.1", {"10.0.9.1/30"})), StatusCode::kAlreadyExists);

  TunnelSpec patch;
  patch.addresses = {P("10.0.1.1/30")};
  ASSERT_TRUE(manager->Update("a", patch, {"addresses"}, "").ok());
  EXPECT_EQ(code(Spec("c", "198.18.1.3", {"10.0.1.2/30"})), StatusCode::kFailedPrecondition);
  ASSERT_EQ(code(Spec("b", "198.18.1.2", {"10.0.0.2/30"})), StatusCode::kOk) << "let go of";

  // A create the kernel refuses is rolled back: its prefix and endpoints stay free.
  links.add_address_failure.Arm(1, absl::InternalError("refused"));
  EXPECT_EQ(code(Spec("d", "198.18.1.4", {"10.0.2.1/30"})), StatusCode::kInternal);
  ASSERT_EQ(code(Spec("d2", "198.18.1.4", {"10.0.2.2/30"})), StatusCode::kOk);

  ASSERT_TRUE(manager->Delete("a").ok());
  ASSERT_EQ(code(Spec("c", "198.18.1.3", {"10.0.1.2/30"})), StatusCode::kOk) << "deleted";

  // Apply: against the staying tunnels and each other.
  absl::StatusOr<ApplyResult> apply = manager->Apply(
      "o", {Spec("e", "198.18.1.5", {"10.0.3.1/30"}), Spec("f", "198.18.1.6", {"10.0.3.2/30"})},
      false, false);
  EXPECT_EQ(apply.status().code(), StatusCode::kFailedPrecondition) << apply.status();
  apply = manager->Apply("o", {Spec("e", "198.18.1.5", {"10.0.1.3/30"})}, false, false);
  EXPECT_EQ(apply.status().code(), StatusCode::kFailedPrecondition) << "c's";
  apply = manager->Apply("o", {Spec("e", "198.18.1.5", {"10.0.3.1/30"})}, false, false);
  ASSERT_TRUE(apply.ok()) << apply.status();
  EXPECT_EQ(code(Spec("g", "198.18.1.7", {"10.0.3.2/30"})), StatusCode::kFailedPrecondition);
  apply = manager->Apply("o", {}, /*prune=*/true, false);
  ASSERT_TRUE(apply.ok()) << apply.status();
  ASSERT_EQ(code(Spec("g", "198.18.1.7", {"10.0.3.2/30"})), StatusCode::kOk) << "pruned";

  // A new manager on the saved set: b, c, d2 and g are in the way, e is not.
  manager.reset();
  manager = std::make_unique<TunnelManager>(&links, &engine, &store, TunnelManager::Options{});
  ASSERT_TRUE(manager->Restore().ok());
  EXPECT_EQ(code(Spec("h", "198.18.1.8", {"10.0.1.1/30"})), StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(Spec("h", "198.18.1.8", {"10.0.3.3/30"})), StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(Spec("h", "198.18.1.8", {"10.0.3.5/30"})), StatusCode::kOk);
}

}  // namespace
}  // namespace tunnelagent::agent
