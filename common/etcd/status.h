// etcd's answers as absl::Status: gRPC's code, corrected where etcd's own code says less than
// its message (a bad password is INVALID_ARGUMENT there, "no leader" of an election UNKNOWN).
// Internal to the etcd client.
#ifndef TUNNELAGENT_COMMON_ETCD_STATUS_H_
#define TUNNELAGENT_COMMON_ETCD_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tunnelagent::etcd {

// The status for a failed call; the message is "etcd <what>: <etcd's message>".
//   UNAVAILABLE        no endpoint answers, or etcd has no quorum, leader or time to answer
//   DEADLINE_EXCEEDED  call_timeout (or Campaign's timeout) passed
//   NOT_FOUND          a lease that expired or was revoked; an election without a leader
//   PERMISSION_DENIED  etcd's roles refuse the key
//   UNAUTHENTICATED    a bad user or password, a token etcd no longer takes, or no credentials
//                      where etcd wants them
//   OUT_OF_RANGE       a revision that was compacted (or is in the future)
//   INVALID_ARGUMENT   a request etcd refuses as malformed (an empty key, a TTL too long)
absl::Status FromGrpc(absl::string_view what, const grpc::Status& status);

// The same for a reason etcd gives in a message rather than as a gRPC status (a watch's
// cancel_reason): mapped by its text alone.
absl::Status FromEtcdMessage(absl::string_view what, absl::string_view message);

// Whether etcd refused the call's token as one to fetch again (it expired, or etcd's auth store
// changed since, or no token was sent although etcd now wants one), rather than the user.
bool IsStaleToken(const grpc::Status& status);
bool IsStaleTokenMessage(absl::string_view message);

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_STATUS_H_
