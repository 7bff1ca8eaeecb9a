// Client::WatchPrefix's watch: one Watch stream of etcd's, read on a thread of its own. Internal
// to the etcd client.
#ifndef TUNNELAGENT_COMMON_ETCD_WATCH_STREAM_H_
#define TUNNELAGENT_COMMON_ETCD_WATCH_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/etcd/client.h"
#include "common/etcd/connection.h"

namespace tunnelagent::etcd {

// Opens the stream and asks etcd to watch [key, range_end) from `start_revision`; returns once
// etcd has created the watch (within call_timeout), with what etcd refused it for otherwise.
absl::StatusOr<std::unique_ptr<Watch>> StartWatch(std::shared_ptr<Connection> connection,
                                                  std::string key, std::string range_end,
                                                  int64_t start_revision, WatchCallbacks callbacks);

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_WATCH_STREAM_H_
