#include "common/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"

namespace tunnelagent {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// The whole answer to one HTTP/1.1 request sent over loopback to `port` ("" when the
// connection failed). Bounded: a 5 s receive timeout.
std::string Fetch(int port, const std::string& method, const std::string& path = "/metrics") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval timeout = {.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = absl::StrCat(
        method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) answer.append(buffer, n);
    }
  }
  close(fd);
  return answer;
}

std::unique_ptr<MetricsEndpoint> ListenOnAnyPort() {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Listen("127.0.0.1:0", "testprefix");
  EXPECT_TRUE(endpoint.ok()) << endpoint.status();
  if (!endpoint.ok()) return nullptr;
  EXPECT_GT((*endpoint)->port(), 0);
  return *std::move(endpoint);
}

TEST(MetricsEndpointTest, ServesRegisteredMetricsAndItsOwnInSeconds) {
  std::unique_ptr<MetricsEndpoint> endpoint = ListenOnAnyPort();
  ASSERT_NE(endpoint, nullptr);
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("things_total")
      .Help("Things.")
      .Register(*registry)
      .Add({})
      .Increment(3);
  endpoint->RegisterCollectable(registry);

  const std::string first = Fetch(endpoint->port(), "GET");
  EXPECT_THAT(first, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(first, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  EXPECT_THAT(first, HasSubstr("\nthings_total 3\n"));
  EXPECT_THAT(first, HasSubstr("# TYPE testprefix_metrics_scrapes_total counter\n"));
  EXPECT_THAT(first, HasSubstr("# TYPE testprefix_metrics_scrape_duration_seconds histogram\n"));
  // Counted once answered: the first scrape shows none before it.
  EXPECT_THAT(first, HasSubstr("\ntestprefix_metrics_scrapes_total 0\n"));
  EXPECT_THAT(first, Not(HasSubstr("exposer_")));

  const std::string second = Fetch(endpoint->port(), "GET");
  EXPECT_THAT(second, HasSubstr("\ntestprefix_metrics_scrapes_total 1\n"));
  EXPECT_THAT(second, HasSubstr("\ntestprefix_metrics_scrape_duration_seconds_count 1\n"));
  // The body is exactly Content-Length long.
  const size_t body = second.find("\r\n\r\n") + 4;
  EXPECT_THAT(second, HasSubstr(absl::StrCat("Content-Length: ", second.size() - body, "\r\n")));
}

TEST(MetricsEndpointTest, ACollectableThatWentIsSkipped) {
  std::unique_ptr<MetricsEndpoint> endpoint = ListenOnAnyPort();
  ASSERT_NE(endpoint, nullptr);
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("gone_total").Help("Gone.").Register(*registry).Add({});
  endpoint->RegisterCollectable(registry);
  EXPECT_THAT(endpoint->Scrape(), HasSubstr("\ngone_total 0\n"));
  registry.reset();
  const std::string text = endpoint->Scrape();
  EXPECT_THAT(text, Not(HasSubstr("gone_total")));
  EXPECT_THAT(text, HasSubstr("testprefix_metrics_scrapes_total 1\n"));
}

TEST(MetricsEndpointTest, OtherMethodsAreRefusedAndHeadHasNoBody) {
  std::unique_ptr<MetricsEndpoint> endpoint = ListenOnAnyPort();
  ASSERT_NE(endpoint, nullptr);
  const std::string post = Fetch(endpoint->port(), "POST");
  EXPECT_THAT(post, StartsWith("HTTP/1.1 405 "));
  EXPECT_THAT(post, HasSubstr("Allow: GET, HEAD\r\n"));
  const std::string head = Fetch(endpoint->port(), "HEAD");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(head.substr(head.find("\r\n\r\n") + 4), "");
  EXPECT_THAT(Fetch(endpoint->port(), "GET", "/other"), StartsWith("HTTP/1.1 404 "));
}

TEST(MetricsEndpointTest, APortInUseIsAnErrorNamingIt) {
  std::unique_ptr<MetricsEndpoint> first = ListenOnAnyPort();
  ASSERT_NE(first, nullptr);
  const std::string listen = absl::StrCat("127.0.0.1:", first->port());
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> second =
      MetricsEndpoint::Listen(listen, "testprefix");
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("cannot listen on ", listen)));

  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> bad =
      MetricsEndpoint::Listen("not an address", "testprefix");
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace tunnelagent
