// The HTTP endpoint Prometheus scrapes: GET /metrics serves, in the text format, every
// collectable registered, and the endpoint's own two metrics, in seconds as Prometheus's
// conventions want them:
//   PREFIX_metrics_scrapes_total             scrapes answered
//   PREFIX_metrics_scrape_duration_seconds   time to collect and send one (histogram)
// (prometheus-cpp's Exposer, which this replaces, adds exposer_* metrics in microseconds
// that cannot be turned off or renamed.) Built on civetweb, as the Exposer was.
//
//   absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
//       MetricsEndpoint::Listen("127.0.0.1:9476", "tunnelagent");
//   (*endpoint)->RegisterCollectable(registry);
#ifndef TUNNELAGENT_COMMON_METRICS_ENDPOINT_H_
#define TUNNELAGENT_COMMON_METRICS_ENDPOINT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

struct mg_connection;
struct mg_context;

namespace tunnelagent {

class MetricsEndpoint {
 public:
  // Listens on `listen`: "HOST:PORT" or "[V6]:PORT" ("127.0.0.1:9476", "[::1]:9476",
  // "0.0.0.0:9476"). A port in use or a malformed address is an error naming it.
  // `prefix` names the endpoint's own metrics: "tunnelagent" gives
  // tunnelagent_metrics_scrapes_total.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Listen(const std::string& listen,
                                                                 absl::string_view prefix);
  ~MetricsEndpoint();  // stops serving: no scrape runs once this returns

  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // Served from the next scrape on while it lives; one that has gone is skipped.
  void RegisterCollectable(std::weak_ptr<prometheus::Collectable> collectable);

  // The TCP port listened on (the one the system chose for port 0).
  int port() const { return port_; }

  // The text one scrape serves, as the handler builds it; counts as a scrape. For tests.
  std::string Scrape();

 private:
  explicit MetricsEndpoint(absl::string_view prefix);
  static int HandleRequest(mg_connection* connection, void* endpoint);

  std::shared_ptr<prometheus::Registry> own_;  // the endpoint's own metrics, served too
  prometheus::Counter& scrapes_;
  prometheus::Histogram& scrape_duration_;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_ ABSL_GUARDED_BY(mu_);
  int port_ = 0;
  mg_context* server_ = nullptr;  // civetweb's; its threads call HandleRequest until stopped
};

}  // namespace tunnelagent

#endif  // TUNNELAGENT_COMMON_METRICS_ENDPOINT_H_
