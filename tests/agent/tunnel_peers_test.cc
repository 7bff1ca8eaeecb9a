// The peers of multipoint tunnels in the TunnelManager, against the fakes: checks across
// peers, the engine's and the store's part, events, restore, apply.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/tunnel_manager.h"
#include "agent/validation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }
IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }

TunnelSpec Hub(const std::string& name = "tnl0") {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = TunnelMode::kGre;
  spec.local = A("198.51.100.1");
  spec.multipoint = true;
  spec.addresses = {P("100.64.0.1/16")};
  spec.routes = {P("100.65.0.0/16")};
  return spec;
}

PeerSpec Peer(const std::string& name, const std::string& underlay,
              std::vector<std::string> prefixes) {
  PeerSpec peer;
  peer.name = name;
  peer.underlay = A(underlay);
  for (const std::string& p : prefixes) peer.allowed_prefixes.push_back(P(p));
  return peer;
}

class TunnelPeersTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(manager_->Create(Hub()).ok()); }

  std::vector<std::string> EnginePeerNames(const std::string& tunnel = "tnl0") {
    std::vector<std::string> underlays;
    for (const auto& [id, peer] : engine_.PeersOf(tunnel)) {
      const uint32_t v4 = peer.underlay.v4();
      underlays.push_back(absl::StrCat(id, "@", v4 >> 24, ".", (v4 >> 16) & 255, ".",
                                       (v4 >> 8) & 255, ".", v4 & 255));
    }
    return underlays;
  }

  fakes::EventLog log_;
  fakes::FakeLinkControl links_{&log_};
  fakes::FakePacketEngine engine_{&log_};
  fakes::FakeStateStore store_{&log_};
  std::unique_ptr<TunnelManager> manager_ =
      std::make_unique<TunnelManager>(&links_, &engine_, &store_, TunnelManager::Options{});
};

TEST_F(TunnelPeersTest, AMultipointTunnelHasNoRemoteAndStartsWithoutPeers) {
  const dataplane::EngineTunnel& engine = engine_.tunnels().at("tnl0");
  EXPECT_TRUE(engine.multipoint);
  EXPECT_TRUE(engine.encap.remote.is_zero());
  EXPECT_THAT(engine.peers, IsEmpty());

  TunnelSpec with_remote = Hub("tnl1");
  with_remote.remote = A("203.0.113.9");
  EXPECT_EQ(manager_->Create(with_remote).status().code(), absl::StatusCode::kInvalidArgument);
  TunnelSpec tap = Hub("tnl2");
  tap.mode = TunnelMode::kGretap;
  EXPECT_EQ(manager_->Create(tap).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TunnelPeersTest, CreateReachesEngineAndStoreWithoutTouchingTheDevice) {
  log_.clear();
  absl::StatusOr<PeerView> made =
      manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.0/24"}));
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->status.state, OperState::kUp);
  EXPECT_NE(made->spec.create_time, absl::InfinitePast());
  // One engine change, one record; no link request, no new engine tunnel.
  EXPECT_THAT(log_, ElementsAre("engine.peers tnl0", "store.peers +1 -0"));
  EXPECT_THAT(EnginePeerNames(), ElementsAre("1@198.51.100.2"));
  EXPECT_THAT(store_.saved_peers(), SizeIs(1));
  EXPECT_EQ(store_.waited().back(), 2u) << "answered before the record was durable";

  absl::StatusOr<PeerView> got = manager_->GetPeer("tnl0", "b");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->spec.underlay, A("198.51.100.2"));
  EXPECT_EQ(manager_->GetPeer("tnl0", "c").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetPeer("nope", "b").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TunnelPeersTest, RefusesWhatAnotherPeerHolds) {
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.0/24"})).ok());
  // Same name, same underlay, same prefix: ALREADY_EXISTS; a nested prefix is fine.
  EXPECT_EQ(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.3", {})).status().code(),
            absl::StatusCode::kAlreadyExists);
  absl::Status underlay = manager_->CreatePeer("tnl0", Peer("c", "198.51.100.2", {})).status();
  EXPECT_EQ(underlay.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(underlay.message(), HasSubstr("peer b"));
  absl::Status prefix =
      manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {"100.65.2.0/24"})).status();
  EXPECT_EQ(prefix.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(prefix.message(), HasSubstr("100.65.2.0/24"));
  EXPECT_TRUE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {"100.65.2.128/25"})).ok());
  // Checked before anything: a refused peer reached neither the engine nor the store.
  EXPECT_THAT(EnginePeerNames(), ElementsAre("1@198.51.100.2", "2@198.51.100.3"));
  EXPECT_THAT(store_.saved_peers(), SizeIs(2));
}

TEST_F(TunnelPeersTest, ValidatesEachPeer) {
  EXPECT_EQ(manager_->CreatePeer("tnl0", Peer("bad name", "198.51.100.2", {})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->CreatePeer("tnl0", Peer("b", "2001:db8::1", {})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.1/24"})).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"10.0.0.0/8", "10.0.0.0/8"}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  TunnelSpec p2p = Hub("gre1");
  p2p.multipoint = false;
  p2p.remote = A("203.0.113.9");
  p2p.addresses = {};
  p2p.routes = {};
  ASSERT_TRUE(manager_->Create(p2p).ok());
  EXPECT_EQ(manager_->CreatePeer("gre1", Peer("b", "198.51.100.2", {})).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TunnelPeersTest, UpdateKeepsTheEnginesIdAndEtagsGuardIt) {
  absl::StatusOr<PeerView> made =
      manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.0/24"}));
  ASSERT_TRUE(made.ok());
  const std::string etag = ComputePeerEtag(made->spec);
  PeerSpec moved = Peer("b", "198.51.100.9", {"100.65.2.0/24", "100.65.3.0/24"});
  std::vector<std::string> changed;
  absl::StatusOr<PeerView> updated = manager_->UpdatePeer("tnl0", moved, etag, &changed);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_THAT(changed, ElementsAre("underlay", "allowed_prefixes"));
  EXPECT_EQ(updated->spec.create_time, made->spec.create_time);
  EXPECT_THAT(EnginePeerNames(), ElementsAre("1@198.51.100.9"));
  EXPECT_THAT(*engine_.PeersOf("tnl0").at(1).allowed, SizeIs(2));
  // The old etag is stale now.
  EXPECT_EQ(manager_->UpdatePeer("tnl0", moved, etag).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(manager_->DeletePeer("tnl0", "b", etag).code(), absl::StatusCode::kAborted);
  // The old underlay is free for another peer.
  EXPECT_TRUE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.2", {})).ok());
  EXPECT_TRUE(manager_->DeletePeer("tnl0", "b").ok());
  EXPECT_THAT(EnginePeerNames(), ElementsAre("2@198.51.100.2"));
  EXPECT_EQ(store_.saved_peers().count({"tnl0", "b"}), 0u);
}

TEST_F(TunnelPeersTest, ARefusalOfTheEngineOrTheDiskChangesNothing) {
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.0/24"})).ok());
  engine_.peers_failure.Arm(1, absl::InternalError("engine says no"));
  EXPECT_FALSE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {})).ok());
  EXPECT_EQ(manager_->GetPeer("tnl0", "c").status().code(), absl::StatusCode::kNotFound);
  store_.save_failure.Arm(1, absl::ResourceExhaustedError("disk full"));
  EXPECT_FALSE(manager_->DeletePeer("tnl0", "b").ok());
  // The engine got the peer back when the disk refused its removal.
  EXPECT_THAT(EnginePeerNames(), ElementsAre("1@198.51.100.2"));
  EXPECT_TRUE(manager_->GetPeer("tnl0", "b").ok());
  // And what was refused holds nothing: c's underlay is free.
  EXPECT_TRUE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {})).ok());
}

TEST_F(TunnelPeersTest, ApplyChangesOnlyWhatDiffersAndPrunesItsOwn) {
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("manual", "198.51.100.50", {})).ok());
  std::vector<PeerSpec> desired;
  for (int i = 2; i < 12; ++i) {
    desired.push_back(Peer(absl::StrCat("n", i), absl::StrCat("198.51.100.", i),
                           {absl::StrCat("100.65.", i, ".0/24")}));
  }
  absl::StatusOr<PeerApplyResult> first = manager_->ApplyPeers("tnl0", "fleet", desired, true,
                                                               /*dry_run=*/false);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->changes, SizeIs(10));
  EXPECT_EQ(first->unchanged, 0u);
  EXPECT_EQ(engine_.PeersOf("tnl0").size(), 11u);

  // The same again: nothing changes, no engine call, no record.
  const int calls = engine_.peer_calls();
  log_.clear();
  absl::StatusOr<PeerApplyResult> again =
      manager_->ApplyPeers("tnl0", "fleet", desired, true, false);
  ASSERT_TRUE(again.ok());
  EXPECT_THAT(again->changes, IsEmpty());
  EXPECT_EQ(again->unchanged, 10u);
  EXPECT_EQ(engine_.peer_calls(), calls);
  EXPECT_THAT(log_, IsEmpty());

  // One moved, one gone: two changes in one engine call and one record; "manual" untouched.
  desired[0].underlay = A("198.51.100.99");
  desired.pop_back();
  absl::StatusOr<PeerApplyResult> third =
      manager_->ApplyPeers("tnl0", "fleet", desired, true, false);
  ASSERT_TRUE(third.ok());
  ASSERT_THAT(third->changes, SizeIs(2));
  EXPECT_EQ(third->changes[0].name, "n11");
  EXPECT_EQ(third->changes[0].action, ChangeAction::kDelete);
  EXPECT_EQ(third->changes[1].name, "n2");
  EXPECT_EQ(third->changes[1].action, ChangeAction::kUpdate);
  EXPECT_THAT(log_, ElementsAre("engine.peers tnl0", "store.peers +1 -1"));
  EXPECT_TRUE(manager_->GetPeer("tnl0", "manual").ok());

  // A desired name that is another owner's: refused.
  EXPECT_EQ(
      manager_->ApplyPeers("tnl0", "fleet", {Peer("manual", "198.51.100.50", {})}, false, false)
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
  // A swap of underlays between two peers in one apply is no conflict.
  std::swap(desired[1].underlay, desired[2].underlay);
  EXPECT_TRUE(manager_->ApplyPeers("tnl0", "fleet", desired, true, false).ok());
}

TEST_F(TunnelPeersTest, TheLimitIsPerTunnel) {
  TunnelLimits limits = CurrentTunnelLimits();
  TunnelLimits small = limits;
  small.max_peers = 2;
  SetTunnelLimits(small);
  EXPECT_TRUE(manager_->CreatePeer("tnl0", Peer("a", "198.51.100.2", {})).ok());
  EXPECT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.3", {})).ok());
  EXPECT_EQ(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.4", {})).status().code(),
            absl::StatusCode::kResourceExhausted);
  SetTunnelLimits(limits);
}

TEST_F(TunnelPeersTest, EventsCarryPeersWithRevisionsOfTheirOwn) {
  const uint64_t before = manager_->revision();
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {})).ok());
  ASSERT_TRUE(manager_->DeletePeer("tnl0", "b").ok());
  absl::StatusOr<std::vector<TunnelEvent>> events =
      manager_->EventsAfter(before, absl::ZeroDuration());
  ASSERT_TRUE(events.ok());
  ASSERT_THAT(*events, SizeIs(2));
  EXPECT_EQ((*events)[0].type, TunnelEvent::Type::kPeerAdded);
  EXPECT_EQ((*events)[0].revision, before + 1);
  EXPECT_EQ((*events)[0].tunnel->spec.name, "tnl0");
  ASSERT_TRUE((*events)[0].peer != nullptr);
  EXPECT_EQ((*events)[0].peer->spec.name, "b");
  EXPECT_EQ((*events)[1].type, TunnelEvent::Type::kPeerDeleted);
}

TEST_F(TunnelPeersTest, ARestartBringsThePeersBackIntoTheEngine) {
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {"100.65.2.0/24"})).ok());
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {"100.65.3.0/24"})).ok());
  manager_->Shutdown();
  manager_ = std::make_unique<TunnelManager>(&links_, &engine_, &store_, TunnelManager::Options{});
  ASSERT_TRUE(manager_->Restore().ok());
  ASSERT_TRUE(engine_.tunnels().count("tnl0"));
  EXPECT_THAT(engine_.tunnels().at("tnl0").peers, SizeIs(2));
  absl::StatusOr<TunnelManager::PeerPage> page = manager_->ListPeers("tnl0", "", 10);
  ASSERT_TRUE(page.ok());
  ASSERT_THAT(page->peers, SizeIs(2));
  EXPECT_EQ(page->peers[0].spec.name, "b");
  // And their holdings with them: c's prefix is still c's.
  EXPECT_EQ(
      manager_->CreatePeer("tnl0", Peer("d", "198.51.100.4", {"100.65.3.0/24"})).status().code(),
      absl::StatusCode::kAlreadyExists);
}

TEST_F(TunnelPeersTest, DeletingTheTunnelTakesItsPeers) {
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("b", "198.51.100.2", {})).ok());
  ASSERT_TRUE(manager_->Delete("tnl0").ok());
  EXPECT_THAT(store_.saved_peers(), IsEmpty());
  EXPECT_EQ(manager_->ListPeers("tnl0", "", 10).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(manager_->Create(Hub()).ok());
  absl::StatusOr<TunnelManager::PeerPage> page = manager_->ListPeers("tnl0", "", 10);
  ASSERT_TRUE(page.ok());
  EXPECT_THAT(page->peers, IsEmpty());
}

TEST_F(TunnelPeersTest, ListPagesByName) {
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(manager_
                    ->CreatePeer(
                        "tnl0", Peer(absl::StrCat("p", i), absl::StrCat("198.51.100.", 10 + i), {}))
                    .ok());
  }
  absl::StatusOr<TunnelManager::PeerPage> first = manager_->ListPeers("tnl0", "", 2);
  ASSERT_TRUE(first.ok());
  ASSERT_THAT(first->peers, SizeIs(2));
  EXPECT_TRUE(first->more);
  absl::StatusOr<TunnelManager::PeerPage> rest = manager_->ListPeers("tnl0", "p1", 10);
  ASSERT_TRUE(rest.ok());
  ASSERT_THAT(rest->peers, SizeIs(3));
  EXPECT_EQ(rest->peers[0].spec.name, "p2");
  EXPECT_FALSE(rest->more);
}

TEST_F(TunnelPeersTest, AKeepaliveVerdictChangesOnePeersStateOnly) {
  PeerSpec b = Peer("b", "198.51.100.2", {});
  b.keepalive.interval = absl::Seconds(1);
  ASSERT_TRUE(manager_->CreatePeer("tnl0", b).ok());
  ASSERT_TRUE(manager_->CreatePeer("tnl0", Peer("c", "198.51.100.3", {})).ok());
  engine_.PeersOf("tnl0").at(1).stats->peer_alive.store(false);
  manager_->RefreshStates(false);
  EXPECT_EQ(manager_->GetPeer("tnl0", "b")->status.state, OperState::kDown);
  EXPECT_THAT(manager_->GetPeer("tnl0", "b")->status.reason, HasSubstr("keepalive"));
  EXPECT_EQ(manager_->GetPeer("tnl0", "c")->status.state, OperState::kUp);
  EXPECT_EQ(manager_->Get("tnl0")->status.state, OperState::kUp);
  absl::StatusOr<std::vector<TunnelEvent>> events =
      manager_->EventsAfter(manager_->revision() - 1, absl::ZeroDuration());
  ASSERT_TRUE(events.ok());
  ASSERT_THAT(*events, SizeIs(1));
  EXPECT_EQ((*events)[0].type, TunnelEvent::Type::kPeerStateChanged);
}

}  // namespace
}  // namespace tunnelagent::agent
