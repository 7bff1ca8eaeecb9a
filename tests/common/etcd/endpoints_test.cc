// The etcd client's pure parts: endpoints parsed, the channel target made of them, the
// certificate name check, and Connect's refusal of bad options. No etcd needed.
#include "common/etcd/endpoints.h"

#include <string>
#include <vector>

#include "common/etcd/client.h"
#include "common/etcd/tls.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::etcd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(ParseEndpointsTest, TakesEtcdctlForms) {
  absl::StatusOr<std::vector<std::string>> endpoints = ParseEndpoints(
      "127.0.0.1:2379, http://etcd-1.example:2379,https://[::1]:2379,https://etcd_2:1");
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_THAT(*endpoints, ElementsAre("127.0.0.1:2379", "http://etcd-1.example:2379",
                                      "https://[::1]:2379", "https://etcd_2:1"));
}

TEST(ParseEndpointsTest, RefusesBadEntries) {
  struct Case {
    const char* text;
    const char* says;
  };
  const Case cases[] = {
      {"", "no etcd endpoint"},
      {"  ", "no etcd endpoint"},
      {"a:1,,b:2", "entry 2 is empty"},
      {"a:1,", "entry 2 is empty"},
      {"127.0.0.1", "no :PORT"},
      {"127.0.0.1:", "is not a port"},
      {"127.0.0.1:0", "is not a port"},
      {"127.0.0.1:65536", "is not a port"},
      {"127.0.0.1:+1", "is not a port"},
      {"127.0.0.1:2379/v3", "a path is not allowed"},
      {"unix://etcd.sock:1", "only the http:// and https://"},
      {"ftp://a:1", "only the http:// and https://"},
      {"http://", "no host"},
      {"::1:2379", "in brackets"},
      {"[::1:2379", "'[' without ']'"},
      {"[::1]2379", "no :PORT after"},
      {"[10.0.0.1]:2379", "not an IPv6 address"},
      {"a b:1", "is not a host name"},
      {"a..b:1", "is not a host name"},
      {":2379", "is not a host name"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<std::string>> endpoints = ParseEndpoints(c.text);
    ASSERT_FALSE(endpoints.ok()) << "\"" << c.text << "\" was taken";
    EXPECT_EQ(endpoints.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(endpoints.status().message()), HasSubstr(c.says)) << c.text;
  }
}

std::vector<Endpoint> Parse(const std::vector<std::string>& texts) {
  std::vector<Endpoint> out;
  for (const std::string& t : texts) {
    absl::StatusOr<Endpoint> e = ParseEndpoint(t);
    EXPECT_TRUE(e.ok()) << e.status();
    if (e.ok()) out.push_back(*e);
  }
  return out;
}

TEST(ChannelTargetTest, ListsAddressesOfOneFamily) {
  EXPECT_EQ(*ChannelTarget(Parse({"127.0.0.1:2379"})), "ipv4:127.0.0.1:2379");
  EXPECT_EQ(*ChannelTarget(Parse({"http://127.0.0.1:2379", "127.0.0.2:2479"})),
            "ipv4:127.0.0.1:2379,127.0.0.2:2479");
  EXPECT_EQ(*ChannelTarget(Parse({"[::1]:2379", "https://[fd00::1]:2"})),
            "ipv6:[::1]:2379,[fd00::1]:2");
}

TEST(ChannelTargetTest, MapsIpv4AmongIpv6) {
  EXPECT_EQ(*ChannelTarget(Parse({"[::1]:2379", "127.0.0.1:2479"})),
            "ipv6:[::1]:2379,[::ffff:127.0.0.1]:2479");
}

TEST(ChannelTargetTest, OneNameIsResolvedByGrpc) {
  EXPECT_EQ(*ChannelTarget(Parse({"https://etcd.example:2379"})), "dns:///etcd.example:2379");
}

TEST(ChannelTargetTest, SeveralNamesAreResolvedNowAndUnresolvableOnesLeftOut) {
  // "localhost" resolves everywhere; ".invalid" never does (RFC 6761).
  absl::StatusOr<std::string> target =
      ChannelTarget(Parse({"nothing.invalid:2379", "localhost:2479", "127.0.0.1:2479"}));
  ASSERT_TRUE(target.ok()) << target.status();
  // localhost may also be ::1 (then IPv4 goes in as ::ffff:127.0.0.1).
  EXPECT_THAT(*target, HasSubstr("127.0.0.1"));
  EXPECT_THAT(*target, HasSubstr(":2479"));
  EXPECT_THAT(*target, ::testing::Not(HasSubstr("2379")));

  absl::StatusOr<std::string> none = ChannelTarget(Parse({"a.invalid:2379", "b.invalid:2379"}));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("a.invalid, b.invalid"));
}

TEST(CertificateNamesHostTest, MatchesAddressesAndNames) {
  const std::vector<std::string> dns = {"etcd-0.example.com", "*.etcd.example.com"};
  const std::vector<std::string> ips = {"127.0.0.1", "fd00:0:0::1"};
  EXPECT_TRUE(CertificateNamesHost(dns, ips, "127.0.0.1"));
  EXPECT_TRUE(CertificateNamesHost(dns, ips, "fd00::1"));
  EXPECT_FALSE(CertificateNamesHost(dns, ips, "127.0.0.2"));
  EXPECT_TRUE(CertificateNamesHost(dns, ips, "ETCD-0.example.com"));
  EXPECT_TRUE(CertificateNamesHost(dns, ips, "m1.etcd.example.com"));
  EXPECT_FALSE(CertificateNamesHost(dns, ips, "a.m1.etcd.example.com"));
  EXPECT_FALSE(CertificateNamesHost(dns, ips, "etcd.example.com"));
  EXPECT_FALSE(CertificateNamesHost(dns, ips, "etcd-1.example.com"));
  // An address is never matched by a DNS name that spells it.
  EXPECT_FALSE(CertificateNamesHost({"127.0.0.1"}, {}, "127.0.0.1"));
}

ClientOptions OptionsFor(std::vector<std::string> endpoints) {
  ClientOptions options;
  options.endpoints = std::move(endpoints);
  return options;
}

TEST(ConnectTest, RefusesBadOptions) {
  struct Case {
    ClientOptions options;
    const char* says;
  };
  std::vector<Case> cases;
  cases.push_back({OptionsFor({}), "no etcd endpoint"});
  cases.push_back({OptionsFor({"127.0.0.1"}), "no :PORT"});
  cases.push_back(
      {OptionsFor({"http://127.0.0.1:1", "https://127.0.0.1:2"}), "mix http:// and https://"});
  ClientOptions options = OptionsFor({"127.0.0.1:1"});
  options.cert_file = "/etc/hostname";
  cases.push_back({options, "both the certificate and its key"});
  options = OptionsFor({"127.0.0.1:1"});
  options.ca_file = "/nonexistent/ca.pem";
  cases.push_back({options, "CA file /nonexistent/ca.pem: No such file"});
  options.ca_file = "/etc/hostname";
  cases.push_back({options, "not PEM"});
  options.ca_file = "/etc";
  cases.push_back({options, "is a directory"});
  options = OptionsFor({"127.0.0.1:1"});
  options.password = "x";
  cases.push_back({options, "password given without a user name"});
  options = OptionsFor({"127.0.0.1:1"});
  options.call_timeout = absl::ZeroDuration();
  cases.push_back({options, "call_timeout must be positive"});
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(c.options);
    ASSERT_FALSE(client.ok()) << c.says;
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << client.status();
    EXPECT_THAT(std::string(client.status().message()), HasSubstr(c.says));
  }
}

TEST(ConnectTest, DoesNotNeedEtcdUp) {
  // Nothing listens on port 1: Connect succeeds, the first call says UNAVAILABLE.
  ClientOptions options = OptionsFor({"127.0.0.1:1"});
  options.call_timeout = absl::Seconds(3);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<RangeResult> got = (*client)->Get("/k");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(std::string(got.status().message()), StartsWith("etcd get \"/k\": "));
}

}  // namespace
}  // namespace tunnelagent::etcd
