// Metric families built at scrape time (prometheus::Collectable::Collect), for the collectors
// that read their figures from elsewhere when asked instead of keeping prometheus-cpp counters.
#ifndef TUNNELAGENT_AGENT_METRIC_FAMILY_H_
#define TUNNELAGENT_AGENT_METRIC_FAMILY_H_

#include <string>
#include <vector>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"

namespace tunnelagent::agent {

// An empty family: name, help and type (counter or gauge).
prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type);

// Adds one sample with `labels` to `family`, as a counter or a gauge after the family's type.
void AddSample(prometheus::MetricFamily& family,
               std::vector<prometheus::ClientMetric::Label> labels, double value);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_METRIC_FAMILY_H_
