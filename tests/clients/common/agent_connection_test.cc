// What the clients dial: a host alone gets the agent's usual port, as gRPC would otherwise
// take 443; anything with a port, a unix socket or a gRPC scheme stays as written.
#include "clients/common/agent_connection.h"

#include "gtest/gtest.h"

namespace tunnelagent::clients {
namespace {

TEST(WithDefaultPort, AHostAloneGetsTheAgentPort) {
  EXPECT_EQ(WithDefaultPort("localhost"), "localhost:50051");
  EXPECT_EQ(WithDefaultPort("node-1.example"), "node-1.example:50051");
  EXPECT_EQ(WithDefaultPort("198.18.0.1"), "198.18.0.1:50051");
  EXPECT_EQ(WithDefaultPort("[2001:db8::1]"), "[2001:db8::1]:50051");
  EXPECT_EQ(WithDefaultPort("::1"), "[::1]:50051");
  EXPECT_EQ(WithDefaultPort("2001:db8::1"), "[2001:db8::1]:50051");
}

TEST(WithDefaultPort, AnythingElseStaysAsWritten) {
  EXPECT_EQ(WithDefaultPort("localhost:7000"), "localhost:7000");
  EXPECT_EQ(WithDefaultPort("198.18.0.1:50051"), "198.18.0.1:50051");
  EXPECT_EQ(WithDefaultPort("[2001:db8::1]:7000"), "[2001:db8::1]:7000");
  EXPECT_EQ(WithDefaultPort("unix:/run/tunnel-agent/agent.sock"),
            "unix:/run/tunnel-agent/agent.sock");
  EXPECT_EQ(WithDefaultPort("unix:///run/a.sock"), "unix:///run/a.sock");
  EXPECT_EQ(WithDefaultPort("dns:///agent.example:7000"), "dns:///agent.example:7000");
  EXPECT_EQ(WithDefaultPort("ipv6:[::1]:7000"), "ipv6:[::1]:7000");
  EXPECT_EQ(WithDefaultPort(""), "");
}

}  // namespace
}  // namespace tunnelagent::clients
