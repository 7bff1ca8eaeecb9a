#include "agent/tunnel_spec.h"

#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using dataplane::GreOptions;
using dataplane::TunnelMode;

TEST(TunnelSpecTest, Defaults) {
  const TunnelSpec spec;
  EXPECT_EQ(spec.mode, TunnelMode::kGre);
  EXPECT_TRUE(spec.local.is_unspecified());
  EXPECT_FALSE(spec.key.has_value());
  EXPECT_EQ(spec.mtu, 0u);
  EXPECT_TRUE(spec.pmtudisc);
  EXPECT_FALSE(spec.keepalive.enabled());
}

TEST(TunnelSpecTest, DirectionalGreOptionsFollowIpLink) {
  TunnelSpec spec;
  spec.key = 7;
  EXPECT_EQ(InputKey(spec), 7u);
  EXPECT_EQ(OutputKey(spec), 7u);
  spec.output_key = 9;  // okey wins over key for its direction only
  EXPECT_EQ(InputKey(spec), 7u);
  EXPECT_EQ(OutputKey(spec), 9u);
  spec.input_checksum = true;
  spec.sequence = true;
  const GreOptions in = InputGreOptions(spec);
  const GreOptions out = OutputGreOptions(spec);
  EXPECT_TRUE(in.key && in.checksum && in.sequence);
  EXPECT_TRUE(out.key && !out.checksum && out.sequence);
  spec.mode = TunnelMode::kIpip;  // no GRE header, no GRE options
  EXPECT_FALSE(OutputGreOptions(spec).key);
  EXPECT_FALSE(InputGreOptions(spec).sequence);
}

TEST(TunnelSpecTest, FouHasTheRfc8086PortForGre) {
  TunnelSpec gre;
  gre.mode = TunnelMode::kGre;
  EXPECT_EQ(EffectiveFouPort(gre), 0);
  gre.fou.enabled = true;
  EXPECT_EQ(EffectiveFouPort(gre), 4754);
  gre.fou.dport = 6000;
  EXPECT_EQ(EffectiveFouPort(gre), 6000);
  TunnelSpec ipip;
  ipip.mode = TunnelMode::kIpip;
  ipip.fou.enabled = true;
  EXPECT_EQ(EffectiveFouPort(ipip), 0) << "no standard port for ipip";
}

TEST(TunnelSpecTest, DefaultTtlIsTheKernels) {
  TunnelSpec spec;
  EXPECT_EQ(EffectiveTtl(spec), 0);  // gre: inherit
  spec.mode = TunnelMode::kIp6gre;
  EXPECT_EQ(EffectiveTtl(spec), 64);  // ip6 tunnels: hoplimit 64
  spec.ttl = 0;
  EXPECT_EQ(EffectiveTtl(spec), 0);
  spec.ttl = 200;
  EXPECT_EQ(EffectiveTtl(spec), 200);
}

}  // namespace
}  // namespace tunnelagent::agent
