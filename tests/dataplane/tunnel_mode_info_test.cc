#include "dataplane/tunnel_mode_info.h"

#include <string>

#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

struct ModeCase {
  TunnelMode mode;
  std::string name;
  bool implemented;
  uint32_t overhead;      // without a key
  uint32_t overhead_key;  // with a key
  uint32_t mtu_1500;      // automatic MTU on a 1500-byte underlay, without a key
  uint32_t mtu_1500_key;
};

class TunnelModeTest : public ::testing::TestWithParam<ModeCase> {};

TEST_P(TunnelModeTest, NameRoundTrips) {
  const ModeCase& c = GetParam();
  EXPECT_EQ(TunnelModeName(c.mode), c.name);
  EXPECT_EQ(ParseTunnelMode(c.name), c.mode);
}

TEST_P(TunnelModeTest, Implemented) {
  EXPECT_EQ(IsModeImplemented(GetParam().mode), GetParam().implemented);
}

TEST_P(TunnelModeTest, OverheadAndMtuMatchTheKernel) {
  const ModeCase& c = GetParam();
  const bool gre = IsGreMode(c.mode);
  EXPECT_EQ(EncapOverhead(c.mode), c.overhead);
  EXPECT_EQ(EncapOverhead(c.mode, {.key = gre}), c.overhead_key);
  EXPECT_EQ(AutomaticMtu(c.mode, {}, 1500), c.mtu_1500);
  EXPECT_EQ(AutomaticMtu(c.mode, {.key = gre}, 1500), c.mtu_1500_key);
  EXPECT_EQ(AutomaticMtu(c.mode, {}, 9000), 9000 - c.overhead);
  // Checksum and sequence number cost 4 bytes each, like the key (gre_calc_hlen).
  EXPECT_EQ(EncapOverhead(c.mode, {.key = gre, .checksum = gre, .sequence = gre}),
            c.overhead + (gre ? 12 : 0));
}

// What `ip link add type <mode> ...` gives on a 1500-byte underlay (encaplimit default 4 for
// the IPv6 tunnels). Keys exist only on the GRE family.
INSTANTIATE_TEST_SUITE_P(
    Modes, TunnelModeTest,
    ::testing::Values(ModeCase{TunnelMode::kGre, "gre", true, 24, 28, 1476, 1472},
                      ModeCase{TunnelMode::kGretap, "gretap", true, 38, 42, 1462, 1458},
                      ModeCase{TunnelMode::kIpip, "ipip", true, 20, 20, 1480, 1480},
                      ModeCase{TunnelMode::kSit, "sit", true, 20, 20, 1480, 1480},
                      ModeCase{TunnelMode::kIp6gre, "ip6gre", true, 52, 56, 1448, 1444},
                      ModeCase{TunnelMode::kIp6gretap, "ip6gretap", true, 66, 70, 1434, 1430},
                      ModeCase{TunnelMode::kIp6tnl, "ip6tnl", true, 48, 48, 1452, 1452}),
    [](const ::testing::TestParamInfo<ModeCase>& info) { return info.param.name; });

TEST(TunnelModeTest, UnknownNames) {
  for (const char* name : {"", "GRE", "gre ", " gre", "vxlan", "ip6ip6", "erspan", "greX"}) {
    EXPECT_EQ(ParseTunnelMode(name), std::nullopt) << name;
  }
}

struct MtuCase {
  TunnelMode mode;
  bool has_key;
  uint32_t underlay;
  uint32_t mtu;
};

class AutomaticMtuTest : public ::testing::TestWithParam<MtuCase> {};

// Never below what the device must carry: 68 for IPv4, 1280 where IPv6 is involved.
TEST_P(AutomaticMtuTest, NeverBelowTheMinimum) {
  const MtuCase& c = GetParam();
  EXPECT_EQ(AutomaticMtu(c.mode, {.key = c.has_key}, c.underlay), c.mtu);
}

INSTANTIATE_TEST_SUITE_P(Floor, AutomaticMtuTest,
                         ::testing::Values(MtuCase{TunnelMode::kGre, false, 0, 68},
                                           MtuCase{TunnelMode::kGre, false, 24, 68},
                                           MtuCase{TunnelMode::kGre, false, 91, 68},
                                           MtuCase{TunnelMode::kGre, false, 92, 68},
                                           MtuCase{TunnelMode::kGre, false, 93, 69},
                                           MtuCase{TunnelMode::kGre, true, 96, 68},
                                           MtuCase{TunnelMode::kGre, true, 97, 69},
                                           MtuCase{TunnelMode::kIpip, false, 576, 556},
                                           MtuCase{TunnelMode::kIp6gretap, true, 100, 1280},
                                           MtuCase{TunnelMode::kIp6tnl, false, 1280, 1280},
                                           MtuCase{TunnelMode::kSit, false, 1300, 1280},
                                           MtuCase{TunnelMode::kSit, false, 1301, 1281},
                                           MtuCase{TunnelMode::kGre, false, 65536, 65512}));

// With fou a UDP header comes in front of the tunnel's own (RFC 8086 for GRE).
TEST(TunnelModeTest, FouAddsAUdpHeader) {
  EXPECT_EQ(EncapOverhead(TunnelMode::kGre, {}, /*fou=*/true), 32u);
  EXPECT_EQ(EncapOverhead(TunnelMode::kGretap, {.key = true}, true), 50u);
  EXPECT_EQ(AutomaticMtu(TunnelMode::kGre, {}, 1500, true), 1468u);
  EXPECT_EQ(AutomaticMtu(TunnelMode::kIpip, {}, 1500, true), 1472u);
}

// The kernel's limits: 65535 (IP_MAX_MTU) less the encapsulation; 68, or IPv6's 1280 for sit.
TEST(TunnelModeTest, DeviceMtuRange) {
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kGre).min, 68u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kGre).max, 65511u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kGre, {.key = true, .checksum = true}).max, 65503u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kGre, {}, /*fou=*/true).max, 65503u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kIpip).max, 65515u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kSit).min, 1280u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kSit).max, 65515u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kIp6tnl).min, 68u);  // it carries IPv4 too
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kIp6tnl).max, 65487u);
  EXPECT_EQ(DeviceMtuRange(TunnelMode::kIp6gretap).max, 65469u);
}

}  // namespace
}  // namespace tunnelagent::dataplane
