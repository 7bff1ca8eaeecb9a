#include "agent/tunnel_manager.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/encap.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

using dataplane::EncapKind;
using dataplane::EngineTunnel;
using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using dataplane::TunnelSpec;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }
IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }

constexpr char kRemote[] = "203.0.113.7";  // 0xCB007107
constexpr char kLocal[] = "198.51.100.1";  // 0xC6336401

TunnelSpec Gre(const std::string& name, const std::string& remote = kRemote) {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = TunnelMode::kGre;
  spec.local = A(kLocal);
  spec.remote = A(remote);
  spec.addresses = {P("10.0.0.1/30"), P("fd00::1/64")};
  spec.routes = {P("10.2.0.0/16"), P("fd01::/48")};
  return spec;
}

TunnelSpec Ipip(const std::string& name, const std::string& remote = kRemote) {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = TunnelMode::kIpip;
  spec.local = A(kLocal);
  spec.remote = A(remote);
  spec.addresses = {P("10.1.0.1/30")};
  spec.routes = {P("10.3.0.0/16")};
  return spec;
}

void ExpectSpecEq(const TunnelSpec& want, const TunnelSpec& got) {
  SCOPED_TRACE(want.name);
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.mode, want.mode);
  EXPECT_EQ(got.local, want.local);
  EXPECT_EQ(got.remote, want.remote);
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.mtu, want.mtu);
  EXPECT_EQ(got.addresses, want.addresses);
  EXPECT_EQ(got.routes, want.routes);
}

std::vector<std::string> Names(const std::vector<TunnelView>& views) {
  std::vector<std::string> names;
  for (const TunnelView& v : views) names.push_back(v.spec.name);
  return names;
}

class TunnelManagerTest : public ::testing::Test {
 protected:
  void Reset(TunnelManager::Options options) {
    manager_.reset();
    manager_ = std::make_unique<TunnelManager>(&links_, &engine_, &store_, options);
  }

  // Position of `event` in the log; fails the test when it is missing.
  size_t IndexOf(const std::string& event) const {
    auto it = std::find(log_.begin(), log_.end(), event);
    EXPECT_NE(it, log_.end()) << event << " not logged";
    return it - log_.begin();
  }

  void ExpectUp(const std::string& name) {
    absl::StatusOr<TunnelView> view = manager_->Get(name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->status.state, OperState::kUp) << name;
  }

  // Declared before the manager, so they outlive it.
  fakes::EventLog log_;
  fakes::FakeLinkControl links_{&log_};
  fakes::FakePacketEngine engine_{&log_};
  fakes::FakeStateStore store_{&log_};
  std::unique_ptr<TunnelManager> manager_ =
      std::make_unique<TunnelManager>(&links_, &engine_, &store_, TunnelManager::Options{});
};

// ---- Create ------------------------------------------------------------------------------

TEST_F(TunnelManagerTest, CreateConfiguresDeviceThenEngineThenPersists) {
  TunnelSpec spec = Gre("gre1");
  spec.key = 42;

  absl::StatusOr<TunnelView> view = manager_->Create(spec);
  ASSERT_TRUE(view.ok()) << view.status();

  // Routes need the link up; the engine gets a fully configured device; disk comes last.
  EXPECT_THAT(
      log_, ElementsAre("link.create gre1", "link.mtu gre1 1472", "link.addr gre1 10.0.0.1/30",
                        "link.addr gre1 fd00::1/64", "link.up gre1", "link.route gre1 10.2.0.0/16",
                        "link.route gre1 fd01::/48", "engine.add gre1", "store.save gre1"));
  const fakes::FakeLinkControl::Link& link = links_.links().at("gre1");
  EXPECT_EQ(link.mtu, 1472u);
  EXPECT_TRUE(link.up);
  EXPECT_EQ(link.addresses, spec.addresses);
  EXPECT_EQ(link.routes, spec.routes);

  ASSERT_EQ(store_.saved().size(), 1u);
  ExpectSpecEq(spec, store_.saved()[0]);

  ExpectSpecEq(spec, view->spec);
  EXPECT_EQ(view->status.state, OperState::kUp);
  EXPECT_EQ(view->status.ifindex, link.ifindex);
  EXPECT_EQ(view->status.mtu, 1472u);
}

struct MtuCase {
  std::string name;
  TunnelMode mode;
  std::optional<uint32_t> key;
  uint32_t spec_mtu;                  // 0 = automatic
  absl::StatusOr<uint32_t> path_mtu;  // what the route lookup answers
  uint32_t default_underlay_mtu;
  uint32_t want;
};
void PrintTo(const MtuCase& c, std::ostream* os) { *os << c.name; }

class TunnelManagerMtuTest : public TunnelManagerTest,
                             public ::testing::WithParamInterface<MtuCase> {};

TEST_P(TunnelManagerMtuTest, DeviceEngineAndStatusAgreeOnMtu) {
  const MtuCase& c = GetParam();
  TunnelManager::Options options;
  options.default_underlay_mtu = c.default_underlay_mtu;
  Reset(options);
  links_.path_mtu = c.path_mtu;
  TunnelSpec spec = c.mode == TunnelMode::kIpip ? Ipip("tun1") : Gre("tun1");
  spec.key = c.key;
  spec.mtu = c.spec_mtu;

  absl::StatusOr<TunnelView> view = manager_->Create(spec);
  ASSERT_TRUE(view.ok()) << view.status();

  EXPECT_EQ(view->status.mtu, c.want);
  EXPECT_EQ(links_.links().at("tun1").mtu, c.want);
  EXPECT_EQ(engine_.tunnels().at("tun1").mtu, c.want);
  if (c.spec_mtu == 0) {
    EXPECT_THAT(links_.path_mtu_queries(), ElementsAre(A(kRemote)));
  }
  EXPECT_EQ(store_.saved().at(0).mtu, c.spec_mtu) << "the request is saved, not the result";
}

INSTANTIATE_TEST_SUITE_P(Mtu, TunnelManagerMtuTest,
                         ::testing::ValuesIn(std::vector<MtuCase>{
                             {"Gre", TunnelMode::kGre, std::nullopt, 0, 1500u, 1500, 1476},
                             {"GreKeyed", TunnelMode::kGre, 7u, 0, 1500u, 1500, 1472},
                             {"Ipip", TunnelMode::kIpip, std::nullopt, 0, 1500u, 1500, 1480},
                             {"GreJumboPath", TunnelMode::kGre, std::nullopt, 0, 9000u, 1500, 8976},
                             {"GreNoRouteUsesDefault", TunnelMode::kGre, std::nullopt, 0,
                              absl::NotFoundError("no route"), 1500, 1476},
                             {"IpipNoRouteUsesConfiguredDefault", TunnelMode::kIpip, std::nullopt,
                              0, absl::NotFoundError("no route"), 9000, 8980},
                             {"ExplicitMtuAsIs", TunnelMode::kGre, 7u, 1300, 9000u, 1500, 1300},
                         }),
                         [](const auto& info) { return info.param.name; });

TEST_F(TunnelManagerTest, EngineTunnelOfKeyedGre) {
  TunnelSpec spec = Gre("gre1");
  spec.key = 0xDEADBEEF;
  ASSERT_TRUE(manager_->Create(spec).ok());

  const EngineTunnel& t = engine_.tunnels().at("gre1");
  EXPECT_EQ(t.name, "gre1");
  EXPECT_EQ(t.device_fd, links_.links().at("gre1").fd);
  EXPECT_EQ(t.mtu, 1472u);
  EXPECT_EQ(t.protocol, 47);
  EXPECT_EQ(t.local, 0xC6336401u);  // host order
  EXPECT_EQ(t.remote, 0xCB007107u);
  EXPECT_TRUE(t.has_input_key);
  EXPECT_EQ(t.input_key, 0xDEADBEEFu);
  EXPECT_EQ(t.encap.kind, EncapKind::kGre);
  EXPECT_EQ(t.encap.local, 0xC6336401u);
  EXPECT_EQ(t.encap.remote, 0xCB007107u);
  EXPECT_TRUE(t.encap.has_key);
  EXPECT_EQ(t.encap.key, 0xDEADBEEFu);
  EXPECT_NE(t.counters, nullptr);
}

TEST_F(TunnelManagerTest, EngineTunnelOfIpipWithAnyLocal) {
  TunnelSpec spec = Ipip("ipip1");
  spec.local = IpAddress();
  ASSERT_TRUE(manager_->Create(spec).ok());

  const EngineTunnel& t = engine_.tunnels().at("ipip1");
  EXPECT_EQ(t.device_fd, links_.links().at("ipip1").fd);
  EXPECT_EQ(t.mtu, 1480u);
  EXPECT_EQ(t.protocol, 4);
  EXPECT_EQ(t.local, 0u);
  EXPECT_EQ(t.remote, 0xCB007107u);
  EXPECT_FALSE(t.has_input_key);
  EXPECT_EQ(t.encap.kind, EncapKind::kIpip);
  EXPECT_EQ(t.encap.local, 0u);
  EXPECT_EQ(t.encap.remote, 0xCB007107u);
  EXPECT_FALSE(t.encap.has_key);
  EXPECT_NE(t.counters, nullptr);
}

TEST_F(TunnelManagerTest, GetAndListReturnSpecAndStatusByName) {
  const TunnelSpec c = Gre("c-gre", "192.0.2.3");
  const TunnelSpec a = Ipip("a-ipip", "192.0.2.1");
  const TunnelSpec b = Gre("b-gre", "192.0.2.2");
  for (const TunnelSpec& spec : {c, a, b}) ASSERT_TRUE(manager_->Create(spec).ok()) << spec.name;

  std::vector<TunnelView> views = manager_->List();
  EXPECT_THAT(Names(views), ElementsAre("a-ipip", "b-gre", "c-gre"));
  for (const TunnelView& v : views) {
    SCOPED_TRACE(v.spec.name);
    EXPECT_EQ(v.status.state, OperState::kUp);
    EXPECT_EQ(v.status.ifindex, links_.links().at(v.spec.name).ifindex);
    EXPECT_EQ(v.status.mtu, links_.links().at(v.spec.name).mtu);
  }
  ExpectSpecEq(a, views[0].spec);

  absl::StatusOr<TunnelView> got = manager_->Get("b-gre");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSpecEq(b, got->spec);
  EXPECT_EQ(got->status.state, OperState::kUp);
  EXPECT_EQ(got->status.ifindex, links_.links().at("b-gre").ifindex);
  EXPECT_EQ(got->status.mtu, 1476u);

  EXPECT_EQ(manager_->Get("nope").status().code(), absl::StatusCode::kNotFound);
}

// ---- Validation --------------------------------------------------------------------------

struct InvalidCase {
  std::string name;
  void (*mutate)(TunnelSpec&);
  absl::StatusCode code;
  std::string field;  // named in the message
};
void PrintTo(const InvalidCase& c, std::ostream* os) { *os << c.name; }

class TunnelManagerInvalidTest : public TunnelManagerTest,
                                 public ::testing::WithParamInterface<InvalidCase> {};

TEST_P(TunnelManagerInvalidTest, RejectedBeforeAnythingChanges) {
  TunnelSpec spec = Gre("gre1");
  GetParam().mutate(spec);

  absl::StatusOr<TunnelView> view = manager_->Create(spec);
  EXPECT_EQ(view.status().code(), GetParam().code) << view.status();
  EXPECT_THAT(std::string(view.status().message()), HasSubstr(GetParam().field));
  EXPECT_THAT(log_, IsEmpty());
  EXPECT_EQ(links_.create_calls(), 0);
  EXPECT_EQ(engine_.add_calls(), 0);
  EXPECT_EQ(store_.save_calls(), 0);
  EXPECT_THAT(manager_->List(), IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(
    Validation, TunnelManagerInvalidTest,
    ::testing::ValuesIn(std::vector<InvalidCase>{
        {"NameWithSlash", [](TunnelSpec& s) { s.name = "bad/name"; },
         absl::StatusCode::kInvalidArgument, "tunnel.name"},
        {"NameTooLong", [](TunnelSpec& s) { s.name = "sixteen-chars-xx"; },
         absl::StatusCode::kInvalidArgument, "tunnel.name"},
        {"IpipWithKey",
         [](TunnelSpec& s) {
           s = Ipip(s.name);
           s.key = 1;
         },
         absl::StatusCode::kInvalidArgument, "tunnel.key"},
        {"NoRemote", [](TunnelSpec& s) { s.remote = IpAddress(); },
         absl::StatusCode::kInvalidArgument, "tunnel.remote"},
        {"RouteWithHostBits", [](TunnelSpec& s) { s.routes = {P("10.2.0.1/16")}; },
         absl::StatusCode::kInvalidArgument, "tunnel.routes[0]"},
        {"GretapNotImplemented", [](TunnelSpec& s) { s.mode = TunnelMode::kGretap; },
         absl::StatusCode::kUnimplemented, "tunnel.mode"},
    }),
    [](const auto& info) { return info.param.name; });

// ---- Conflicts ---------------------------------------------------------------------------

TEST_F(TunnelManagerTest, TakenNameIsAlreadyExists) {
  ASSERT_TRUE(manager_->Create(Gre("tun1")).ok());
  const size_t events = log_.size();

  absl::StatusOr<TunnelView> view = manager_->Create(Ipip("tun1", "192.0.2.9"));
  EXPECT_EQ(view.status().code(), absl::StatusCode::kAlreadyExists) << view.status();
  EXPECT_EQ(log_.size(), events) << "nothing touched";
  EXPECT_EQ(manager_->Get("tun1")->spec.mode, TunnelMode::kGre);
}

struct ConflictCase {
  std::string name;
  TunnelSpec first;
  TunnelSpec second;
  bool conflicts;
};
void PrintTo(const ConflictCase& c, std::ostream* os) { *os << c.name; }

TunnelSpec WithKey(TunnelSpec spec, std::optional<uint32_t> key) {
  spec.key = key;
  return spec;
}
TunnelSpec WithLocal(TunnelSpec spec, IpAddress local) {
  spec.local = local;
  return spec;
}

class TunnelManagerConflictTest : public TunnelManagerTest,
                                  public ::testing::WithParamInterface<ConflictCase> {};

TEST_P(TunnelManagerConflictTest, SameReceiveMatchIsAlreadyExists) {
  const ConflictCase& c = GetParam();
  ASSERT_TRUE(manager_->Create(c.first).ok());

  absl::StatusOr<TunnelView> view = manager_->Create(c.second);
  if (!c.conflicts) {
    EXPECT_TRUE(view.ok()) << view.status();
    EXPECT_THAT(engine_.TunnelNames(), ElementsAre("first", "second"));
    return;
  }
  EXPECT_EQ(view.status().code(), absl::StatusCode::kAlreadyExists) << view.status();
  EXPECT_THAT(std::string(view.status().message()), HasSubstr("tunnel first"));
  EXPECT_EQ(links_.create_calls(), 1) << "refused before any device was made";
  EXPECT_THAT(links_.LinkNames(), ElementsAre("first"));
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("first"));
  EXPECT_THAT(store_.SavedNames(), ElementsAre("first"));
  EXPECT_THAT(Names(manager_->List()), ElementsAre("first"));
}

INSTANTIATE_TEST_SUITE_P(
    Conflicts, TunnelManagerConflictTest,
    ::testing::ValuesIn(std::vector<ConflictCase>{
        {"GreSameEndpoints", Gre("first"), Gre("second"), true},
        {"GreSameEndpointsSameKey", WithKey(Gre("first"), 5), WithKey(Gre("second"), 5), true},
        {"IpipSameEndpoints", Ipip("first"), Ipip("second"), true},
        {"AnyLocalSpelledTwoWays", WithLocal(Gre("first"), IpAddress()),
         WithLocal(Gre("second"), IpAddress::V4(0)), true},
        {"GreOtherKey", WithKey(Gre("first"), 5), WithKey(Gre("second"), 6), false},
        {"GreKeyAndNoKey", WithKey(Gre("first"), 5), Gre("second"), false},
        {"GreAndIpip", Gre("first"), Ipip("second"), false},
        {"OtherRemote", Gre("first"), Gre("second", "192.0.2.1"), false},
        {"OtherLocal", Gre("first"), WithLocal(Gre("second"), A("198.51.100.2")), false},
    }),
    [](const auto& info) { return info.param.name; });

// ---- Rollback ----------------------------------------------------------------------------

enum class Step { kCreateDevice, kSetMtu, kAddAddress, kSetUp, kAddRoute, kEngineAdd, kSave };

struct RollbackCase {
  std::string name;
  Step step;
  int nth;  // which call of the step fails
  absl::Status error;
  std::string message;  // expected in the returned message
};
void PrintTo(const RollbackCase& c, std::ostream* os) { *os << c.name; }

class TunnelManagerRollbackTest : public TunnelManagerTest,
                                  public ::testing::WithParamInterface<RollbackCase> {
 protected:
  void Inject(const RollbackCase& c) {
    switch (c.step) {
      case Step::kCreateDevice:
        return links_.create_device_failure.Arm(c.nth, c.error);
      case Step::kSetMtu:
        return links_.set_mtu_failure.Arm(c.nth, c.error);
      case Step::kAddAddress:
        return links_.add_address_failure.Arm(c.nth, c.error);
      case Step::kSetUp:
        return links_.set_up_failure.Arm(c.nth, c.error);
      case Step::kAddRoute:
        return links_.add_route_failure.Arm(c.nth, c.error);
      case Step::kEngineAdd:
        return engine_.add_failure.Arm(c.nth, c.error);
      case Step::kSave:
        return store_.save_failure.Arm(c.nth, c.error);
    }
  }
};

TEST_P(TunnelManagerRollbackTest, FailedStepLeavesNothingBehind) {
  const RollbackCase& c = GetParam();
  ASSERT_TRUE(manager_->Create(Ipip("keep", "192.0.2.1")).ok());
  const int saves = store_.save_calls();
  log_.clear();
  Inject(c);

  absl::StatusOr<TunnelView> view = manager_->Create(Gre("gre1"));
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.status().code(), c.error.code()) << view.status();
  EXPECT_THAT(std::string(view.status().message()), HasSubstr(c.message));

  if (c.step != Step::kCreateDevice) {
    EXPECT_THAT(links_.destroyed(), ElementsAre("gre1"));
  }
  if (c.step == Step::kSave) {
    EXPECT_LT(IndexOf("engine.remove gre1"), IndexOf("link.destroy gre1"))
        << "the device closed while the engine could still use it";
  } else {
    EXPECT_EQ(store_.save_calls(), saves);
  }
  EXPECT_THAT(links_.LinkNames(), ElementsAre("keep"));
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("keep"));
  EXPECT_THAT(store_.SavedNames(), ElementsAre("keep"));
  EXPECT_THAT(Names(manager_->List()), ElementsAre("keep"));
  EXPECT_EQ(manager_->Get("gre1").status().code(), absl::StatusCode::kNotFound);

  // Nothing is left to get in the way of trying again.
  absl::StatusOr<TunnelView> retry = manager_->Create(Gre("gre1"));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->status.state, OperState::kUp);
  EXPECT_THAT(store_.SavedNames(), UnorderedElementsAre("keep", "gre1"));
}

INSTANTIATE_TEST_SUITE_P(
    Steps, TunnelManagerRollbackTest,
    ::testing::ValuesIn(std::vector<RollbackCase>{
        {"CreateDeviceNameTaken", Step::kCreateDevice, 1,
         absl::AlreadyExistsError("link gre1 exists"), "link gre1 exists"},
        {"CreateDevice", Step::kCreateDevice, 1, absl::PermissionDeniedError("no CAP_NET_ADMIN"),
         "no CAP_NET_ADMIN"},
        {"SetMtu", Step::kSetMtu, 1, absl::InvalidArgumentError("mtu refused"), "mtu refused"},
        {"SecondAddress", Step::kAddAddress, 2, absl::AlreadyExistsError("address taken"),
         "tunnel.addresses[1] fd00::1/64: address taken"},
        {"SetUp", Step::kSetUp, 1, absl::InternalError("link refused up"), "link refused up"},
        {"SecondRoute", Step::kAddRoute, 2, absl::AlreadyExistsError("route exists"),
         "tunnel.routes[1] fd01::/48: route exists"},
        {"EngineAdd", Step::kEngineAdd, 1, absl::ResourceExhaustedError("no buffers"),
         "no buffers"},
        {"Save", Step::kSave, 1, absl::UnavailableError("disk full"), "disk full"},
    }),
    [](const auto& info) { return info.param.name; });

// ---- Delete ------------------------------------------------------------------------------

TEST_F(TunnelManagerTest, DeleteUnknownIsNotFound) {
  EXPECT_EQ(manager_->Delete("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_.save_calls(), 0);
  EXPECT_EQ(engine_.remove_calls(), 0);
}

TEST_F(TunnelManagerTest, DeleteForgetsOnDiskThenStopsEngineThenClosesDevice) {
  ASSERT_TRUE(manager_->Create(Ipip("keep", "192.0.2.1")).ok());
  ASSERT_TRUE(manager_->Create(Gre("gre1")).ok());
  log_.clear();

  ASSERT_TRUE(manager_->Delete("gre1").ok());

  EXPECT_THAT(log_, ElementsAre("store.save keep", "engine.remove gre1", "link.destroy gre1"));
  EXPECT_THAT(store_.SavedNames(), ElementsAre("keep"));
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("keep"));
  EXPECT_THAT(links_.LinkNames(), ElementsAre("keep"));
  EXPECT_THAT(Names(manager_->List()), ElementsAre("keep"));
  EXPECT_EQ(manager_->Get("gre1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TunnelManagerTest, DeleteWhoseSaveFailsChangesNothing) {
  ASSERT_TRUE(manager_->Create(Gre("gre1")).ok());
  store_.save_failure.Arm(1, absl::UnavailableError("disk gone"));

  absl::Status status = manager_->Delete("gre1");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;

  ExpectUp("gre1");
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("gre1"));
  EXPECT_EQ(engine_.remove_calls(), 0);
  EXPECT_THAT(links_.LinkNames(), ElementsAre("gre1"));
  EXPECT_THAT(store_.SavedNames(), ElementsAre("gre1"));

  EXPECT_TRUE(manager_->Delete("gre1").ok()) << "a retry succeeds";
  EXPECT_THAT(links_.LinkNames(), IsEmpty());
}

// ---- Restore -----------------------------------------------------------------------------

TEST_F(TunnelManagerTest, RestoreBringsUpEverySavedTunnel) {
  TunnelSpec gre = WithKey(Gre("gre1"), 9);
  TunnelSpec ipip = Ipip("ipip1");
  store_.load_result = std::vector<TunnelSpec>{gre, ipip};

  ASSERT_TRUE(manager_->Restore().ok());

  ExpectUp("gre1");
  ExpectUp("ipip1");
  ExpectSpecEq(gre, manager_->Get("gre1")->spec);
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("gre1", "ipip1"));
  EXPECT_EQ(links_.links().at("gre1").mtu, 1472u);
  EXPECT_EQ(links_.links().at("ipip1").mtu, 1480u);
  EXPECT_TRUE(links_.links().at("ipip1").up);
  EXPECT_EQ(links_.links().at("ipip1").routes, ipip.routes);
}

TEST_F(TunnelManagerTest, RestoreWhoseLoadFailsCreatesNothing) {
  store_.load_result = absl::DataLossError("tunnels.json: not JSON");

  absl::Status status = manager_->Restore();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("tunnels.json"));
  EXPECT_THAT(manager_->List(), IsEmpty());
  EXPECT_EQ(links_.create_calls(), 0);
  EXPECT_EQ(engine_.add_calls(), 0);
  EXPECT_EQ(store_.save_calls(), 0);
}

struct RestoreFailureCase {
  std::string name;
  std::vector<TunnelSpec> saved;  // "gre1" first, which comes up; then "bad", which cannot
  int failing_create_device;      // 0: none
  std::string reason;
};
void PrintTo(const RestoreFailureCase& c, std::ostream* os) { *os << c.name; }

class TunnelManagerRestoreTest : public TunnelManagerTest,
                                 public ::testing::WithParamInterface<RestoreFailureCase> {};

TEST_P(TunnelManagerRestoreTest, TunnelThatCannotComeUpIsKeptInError) {
  const RestoreFailureCase& c = GetParam();
  store_.load_result = c.saved;
  if (c.failing_create_device > 0) {
    links_.create_device_failure.Arm(c.failing_create_device, absl::UnavailableError("busy"));
  }

  ASSERT_TRUE(manager_->Restore().ok());

  ExpectUp("gre1");
  absl::StatusOr<TunnelView> bad = manager_->Get("bad");
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(bad->status.state, OperState::kError);
  EXPECT_THAT(bad->status.reason, HasSubstr(c.reason));
  EXPECT_EQ(bad->status.ifindex, 0);
  ExpectSpecEq(c.saved[1], bad->spec);
  EXPECT_THAT(engine_.TunnelNames(), ElementsAre("gre1"));
  EXPECT_THAT(links_.LinkNames(), ElementsAre("gre1"));

  // Still desired: the next save, for another tunnel, keeps it.
  ASSERT_TRUE(manager_->Create(Gre("other", "192.0.2.99")).ok());
  EXPECT_THAT(store_.SavedNames(), UnorderedElementsAre("gre1", "bad", "other"));

  // It can be deleted, and there is nothing in the engine to remove.
  const int removes = engine_.remove_calls();
  ASSERT_TRUE(manager_->Delete("bad").ok());
  EXPECT_EQ(engine_.remove_calls(), removes);
  EXPECT_THAT(store_.SavedNames(), Not(Contains("bad")));
  EXPECT_EQ(manager_->Get("bad").status().code(), absl::StatusCode::kNotFound);
  ExpectUp("gre1");
}

INSTANTIATE_TEST_SUITE_P(
    Restore, TunnelManagerRestoreTest,
    ::testing::ValuesIn(std::vector<RestoreFailureCase>{
        {"NoLongerValid", {Gre("gre1"), WithKey(Ipip("bad"), 3)}, 0, "tunnel.key"},
        {"ConflictsWithEarlier", {Gre("gre1"), Gre("bad")}, 0, "already carries"},
        {"DeviceCannotBeCreated", {Gre("gre1"), Ipip("bad")}, 2, "busy"},
    }),
    [](const auto& info) { return info.param.name; });

// ---- Shutdown ----------------------------------------------------------------------------

TEST_F(TunnelManagerTest, ShutdownStopsEverythingButKeepsDesiredState) {
  ASSERT_TRUE(manager_->Create(Gre("gre1")).ok());
  ASSERT_TRUE(manager_->Create(Ipip("ipip1")).ok());
  const int saves = store_.save_calls();
  log_.clear();

  manager_->Shutdown();

  EXPECT_THAT(engine_.tunnels(), IsEmpty());
  EXPECT_THAT(links_.links(), IsEmpty());
  for (const std::string name : {"gre1", "ipip1"}) {
    EXPECT_LT(IndexOf("engine.remove " + name), IndexOf("link.destroy " + name)) << name;
  }
  EXPECT_EQ(store_.save_calls(), saves);
  EXPECT_THAT(store_.SavedNames(), UnorderedElementsAre("gre1", "ipip1"));

  // A new manager brings the same tunnels back.
  Reset({});
  ASSERT_TRUE(manager_->Restore().ok());
  ExpectUp("gre1");
  ExpectUp("ipip1");
}

TEST_F(TunnelManagerTest, DestructorShutsDown) {
  ASSERT_TRUE(manager_->Create(Gre("gre1")).ok());
  manager_.reset();
  EXPECT_THAT(engine_.tunnels(), IsEmpty());
  EXPECT_THAT(links_.links(), IsEmpty());
  EXPECT_THAT(store_.SavedNames(), ElementsAre("gre1"));
}

// ---- Counters ----------------------------------------------------------------------------

TEST_F(TunnelManagerTest, StatusShowsTheEnginesCounters) {
  ASSERT_TRUE(manager_->Create(Gre("gre1")).ok());
  dataplane::TunnelCounters& c = *engine_.tunnels().at("gre1").counters;
  auto drop = [](dataplane::DropReason r) { return static_cast<size_t>(r); };

  c.tx_packets.Add(3);
  c.tx_bytes.Add(300);
  c.rx_packets.Add(2);
  c.rx_bytes.Add(250);
  c.tx_drops[drop(dataplane::DropReason::kTooBig)].Add(1);
  c.tx_drops[drop(dataplane::DropReason::kSendError)].Add(2);
  c.rx_drops[drop(dataplane::DropReason::kNoTunnel)].Add(4);
  c.rx_drops[drop(dataplane::DropReason::kTruncated)].Add(5);

  absl::StatusOr<TunnelView> view = manager_->Get("gre1");
  ASSERT_TRUE(view.ok()) << view.status();
  const TunnelCountersSnapshot& s = view->status.counters;
  EXPECT_EQ(s.tx_packets, 3u);
  EXPECT_EQ(s.tx_bytes, 300u);
  EXPECT_EQ(s.rx_packets, 2u);
  EXPECT_EQ(s.rx_bytes, 250u);
  EXPECT_EQ(s.tx_dropped, 3u);
  EXPECT_EQ(s.rx_dropped, 9u);
}

}  // namespace
}  // namespace tunnelagent::agent
