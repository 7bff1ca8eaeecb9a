// The packet core's tunnel table: what AddTunnel refuses and with which code, that a refused
// tunnel leaves nothing behind (no receive match, no open fou sender), and that a tunnel's
// route is asked once when it is added.
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

struct AddCase {
  std::string name = "";
  TunnelMode mode = TunnelMode::kGre;
  std::function<void(EngineTunnel&)> configure = [](EngineTunnel&) {};
  std::function<void(FakePacketIo&)> world = [](FakePacketIo&) {};
  CoreOptions options = {};
  absl::StatusCode code = absl::StatusCode::kOk;
  // CheckEngineTunnel's refusals are about the fields alone and do not name the tunnel.
  bool names_the_tunnel = true;
};

void PrintTo(const AddCase& c, std::ostream* os) { *os << c.name; }

std::vector<AddCase> Cases() {
  return {
      {.name = "gre"},
      {.name = "ip6gre", .mode = TunnelMode::kIp6gre},
      {.name = "no_device",
       .configure = [](EngineTunnel& t) { t.device_fd = -1; },
       .code = absl::StatusCode::kInvalidArgument,
       .names_the_tunnel = false},
      {.name = "no_mtu",
       .configure = [](EngineTunnel& t) { t.mtu = 0; },
       .code = absl::StatusCode::kInvalidArgument,
       .names_the_tunnel = false},
      {.name = "mtu_over_65535",
       .configure = [](EngineTunnel& t) { t.mtu = 65536; },
       .code = absl::StatusCode::kInvalidArgument,
       .names_the_tunnel = false},
      {.name = "no_counters",
       .configure = [](EngineTunnel& t) { t.stats.reset(); },
       .code = absl::StatusCode::kInvalidArgument,
       .names_the_tunnel = false},
      {.name = "counters_without_room_for_this_worker",
       .options = {.worker = 1, .workers = 2},
       .code = absl::StatusCode::kInvalidArgument},
      {.name = "ipv6_on_a_kernel_without_it",
       .mode = TunnelMode::kIp6tnl,
       .world = [](FakePacketIo& io) { io.ipv6_sendable = false; },
       .code = absl::StatusCode::kFailedPrecondition},
      {.name = "ipv6_without_local_or_route",
       .mode = TunnelMode::kIp6gre,
       .configure = [](EngineTunnel& t) { t.encap.local = OuterAddress(); },
       .world = [](FakePacketIo& io) { io.has_route = false; },
       .code = absl::StatusCode::kFailedPrecondition},
      // An IPv4 tunnel without a route still starts: the kernel picks the source when it can.
      {.name = "ipv4_without_local_or_route",
       .mode = TunnelMode::kIpip,
       .configure = [](EngineTunnel& t) { t.encap.local = OuterAddress(); },
       .world = [](FakePacketIo& io) { io.has_route = false; }},
  };
}

class AddTable : public ::testing::TestWithParam<AddCase> {};

TEST_P(AddTable, RefusedWithTheRightCodeAndNothingLeftBehind) {
  const AddCase& c = GetParam();
  CoreHarness h(c.options);
  c.world(h.io);
  EngineTunnel config = MakeTunnel(c.mode);
  c.configure(config);
  absl::StatusOr<TunnelDatapath*> t = h.core.AddTunnel(config);
  EXPECT_EQ(t.status().code(), c.code) << t.status();
  if (c.code == absl::StatusCode::kOk) {
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(h.core.FindTunnel("t0"), *t);
    EXPECT_EQ(h.core.tunnel_count(), 1u);
    return;
  }
  EXPECT_FALSE(t.status().message().empty());
  if (c.names_the_tunnel) {
    EXPECT_NE(t.status().message().find("t0"), absl::string_view::npos) << t.status();
  }
  EXPECT_EQ(h.core.FindTunnel("t0"), nullptr);
  EXPECT_EQ(h.core.tunnel_count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Configs, AddTable, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<AddCase>& info) {
                           return info.param.name;
                         });

TEST(Tunnels, NameOrReceiveMatchTakenIsAlreadyExists) {
  CoreHarness h;
  TunnelDatapath& first = h.Add(MakeTunnel(TunnelMode::kGre, "t0"));
  EXPECT_EQ(h.core.AddTunnel(MakeTunnel(TunnelMode::kIpip, "t0")).status().code(),
            absl::StatusCode::kAlreadyExists);
  // Another name, the same mode, addresses and (no) key: the packets could not be told apart.
  EngineTunnel same_match = MakeTunnel(TunnelMode::kGre, "t1");
  same_match.encap.udp_dport = 4754;  // its fou senders are opened, then closed again
  EXPECT_EQ(h.core.AddTunnel(same_match).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(h.io.fou_opened.size(), 4u);
  EXPECT_EQ(h.io.fou_closed.size(), 4u);
  EXPECT_EQ(h.core.tunnel_count(), 1u);
  EXPECT_EQ(h.core.FindTunnel("t1"), nullptr);
  // The first still receives.
  const Bytes inner = InnerIcmp();
  CoreHarness::Receive r = h.ReceiveIpv4(
      Build().Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 47}).Gre({}).Raw(inner).ToBytes());
  EXPECT_EQ(r.delivery.tunnel, &first);
  // With another input key it is another tunnel.
  EngineTunnel keyed = MakeTunnel(TunnelMode::kGre, "t2");
  keyed.has_input_key = true;
  keyed.input_key = 1;
  EXPECT_TRUE(h.core.AddTunnel(keyed).ok());
  EXPECT_EQ(h.core.tunnel_count(), 2u);
}

TEST(Tunnels, RouteIsAskedOnceAtAdd) {
  CoreHarness h;
  h.io.route_mtu = 1450;
  TunnelDatapath& t = h.Add(MakeTunnel(TunnelMode::kIpip));
  EXPECT_EQ(h.io.route_probes, 1);
  EXPECT_EQ(t.stats().path_mtu.load(), 1430u);
  // Traffic does not ask it.
  for (int i = 0; i < 10; ++i) h.Read(t, InnerIcmp());
  EXPECT_EQ(h.io.route_probes, 1);
}

TEST(Tunnels, ClearForgetsEveryTunnel) {
  CoreHarness h;
  h.Add(MakeTunnel(TunnelMode::kGre, "a"));
  h.Add(MakeTunnel(TunnelMode::kIpip, "b"));
  size_t seen = 0;
  h.core.ForEachTunnel([&](TunnelDatapath&) { ++seen; });
  EXPECT_EQ(seen, 2u);
  h.core.Clear();
  EXPECT_EQ(h.core.tunnel_count(), 0u);
  EXPECT_FALSE(h.ReceiveIpv4(Build()
                                 .Ipv4({.src = kRemote4, .dst = kLocal4, .protocol = 4})
                                 .Raw(InnerIcmp())
                                 .ToBytes(),
                             4)
                   .deliver);
  EXPECT_EQ(h.core.counters().drops[static_cast<int>(DropReason::kNoTunnel)].Get(), 1u);
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
