#include "dataplane/packet_engine.h"

namespace tunnelagent::dataplane {

TunnelStats::TunnelStats(size_t workers) {
  shards_.reserve(workers == 0 ? 1 : workers);
  for (size_t i = 0; i < (workers == 0 ? 1 : workers); ++i) {
    shards_.push_back(std::make_unique<TunnelCounters>());
  }
}

uint64_t TunnelStats::Sum(Counter TunnelCounters::*counter) const {
  uint64_t total = 0;
  for (const auto& shard : shards_) total += ((*shard).*counter).Get();
  return total;
}

uint64_t TunnelStats::Sum(DropCounters TunnelCounters::*drops, DropReason reason) const {
  uint64_t total = 0;
  for (const auto& shard : shards_) total += ((*shard).*drops)[static_cast<int>(reason)].Get();
  return total;
}

uint64_t TunnelStats::SumAll(DropCounters TunnelCounters::*drops) const {
  uint64_t total = 0;
  for (const auto& shard : shards_) {
    for (const Counter& c : (*shard).*drops) total += c.Get();
  }
  return total;
}

}  // namespace tunnelagent::dataplane
