#include "common/metrics_endpoint.h"

#include <civetweb.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace tunnelagent {
namespace {

// 1 ms .. 10 s: a few hundred tunnels serialize in a millisecond or two; a scrape that takes
// seconds is one Prometheus's scrape_timeout will cut.
const prometheus::Histogram::BucketBoundaries& ScrapeBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *buckets;
}

}  // namespace

MetricsEndpoint::MetricsEndpoint(absl::string_view prefix)
    : own_(std::make_shared<prometheus::Registry>()),
      scrapes_(prometheus::BuildCounter()
                   .Name(absl::StrCat(prefix, "_metrics_scrapes_total"))
                   .Help("Scrapes of /metrics answered.")
                   .Register(*own_)
                   .Add({})),
      scrape_duration_(prometheus::BuildHistogram()
                           .Name(absl::StrCat(prefix, "_metrics_scrape_duration_seconds"))
                           .Help("Time to collect and serialize the metrics of one scrape.")
                           .Register(*own_)
                           .Add({}, ScrapeBuckets())) {
  collectables_.push_back(own_);
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Listen(const std::string& listen,
                                                                         absl::string_view prefix) {
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint(prefix));
  // Two threads, as the Exposer had: scrapes are rare. A client that sends its request slowly
  // holds one for request_timeout_ms at most; more connections wait in civetweb's queue.
  const char* options[] = {"listening_ports",    listen.c_str(), "num_threads", "2",
                           "request_timeout_ms", "10000",        nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  mg_init_data init = {
      .callbacks = &callbacks, .user_data = nullptr, .configuration_options = options};
  char text[256] = "";
  unsigned code = 0;
  mg_error_data error = {.code = &code, .text = text, .text_buffer_size = sizeof(text)};
  endpoint->server_ = mg_start2(&init, &error);
  if (endpoint->server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, ": ",
                                               text[0] != '\0' ? text : "civetweb refused it"));
  }
  mg_set_request_handler(endpoint->server_, "/metrics", &MetricsEndpoint::HandleRequest,
                         endpoint.get());
  mg_server_port port;
  if (mg_get_server_ports(endpoint->server_, 1, &port) == 1) endpoint->port_ = port.port;
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  // mg_stop returns once civetweb's threads have ended: no handler runs on a freed object.
  if (server_ != nullptr) mg_stop(server_);
}

void MetricsEndpoint::RegisterCollectable(std::weak_ptr<prometheus::Collectable> collectable) {
  absl::MutexLock lock(&mu_);
  collectables_.push_back(std::move(collectable));
}

std::string MetricsEndpoint::Scrape() {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables;
  {
    // Copied out: collecting takes the collectables' own locks, not this one.
    absl::MutexLock lock(&mu_);
    collectables = collectables_;
  }
  std::vector<prometheus::MetricFamily> families;
  for (const std::weak_ptr<prometheus::Collectable>& weak : collectables) {
    std::shared_ptr<prometheus::Collectable> collectable = weak.lock();
    if (collectable == nullptr) continue;
    std::vector<prometheus::MetricFamily> more = collectable->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  std::string text = prometheus::TextSerializer().Serialize(families);
  scrape_duration_.Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  scrapes_.Increment();
  return text;
}

int MetricsEndpoint::HandleRequest(mg_connection* connection, void* endpoint) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (std::strcmp(request->request_method, "GET") != 0 &&
      std::strcmp(request->request_method, "HEAD") != 0) {
    mg_printf(connection,
              "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n");
    return 405;
  }
  const std::string text = static_cast<MetricsEndpoint*>(endpoint)->Scrape();
  mg_printf(connection,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: %zu\r\nConnection: close\r\n\r\n",
            text.size());
  if (std::strcmp(request->request_method, "GET") == 0) {
    mg_write(connection, text.data(), text.size());
  }
  return 200;
}

}  // namespace tunnelagent
