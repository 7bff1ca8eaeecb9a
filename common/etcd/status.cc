#include "common/etcd/status.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunnelagent::etcd {
namespace {

// etcd's error texts (etcdserver/api/v3rpc/rpctypes/error.go, clientv3/concurrency): matched
// by their text because the code etcd gives is not what they mean to a caller, or because an
// error that crossed etcd's own in-process client (the Election service uses one) arrives as
// UNKNOWN with the text alone.
struct Known {
  const char* text;
  absl::StatusCode code;
};
constexpr Known kKnown[] = {
    {"authentication failed, invalid user ID or password", absl::StatusCode::kUnauthenticated},
    {"invalid auth token", absl::StatusCode::kUnauthenticated},
    {"user name is empty", absl::StatusCode::kUnauthenticated},
    {"user name not found", absl::StatusCode::kUnauthenticated},
    {"revision of auth store is old", absl::StatusCode::kUnavailable},
    {"permission denied", absl::StatusCode::kPermissionDenied},
    {"required revision has been compacted", absl::StatusCode::kOutOfRange},
    {"required revision is a future revision", absl::StatusCode::kOutOfRange},
    {"requested lease not found", absl::StatusCode::kNotFound},
    {"too large lease TTL", absl::StatusCode::kInvalidArgument},
    {"election: no leader", absl::StatusCode::kNotFound},
    {"election: not leader", absl::StatusCode::kFailedPrecondition},
    {"etcdserver: no leader", absl::StatusCode::kUnavailable},
    {"etcdserver: leader changed", absl::StatusCode::kUnavailable},
    {"etcdserver: request timed out", absl::StatusCode::kUnavailable},
    {"etcdserver: server stopped", absl::StatusCode::kUnavailable},
    {"etcdserver: unhealthy cluster", absl::StatusCode::kUnavailable},
    {"etcdserver: not capable", absl::StatusCode::kUnavailable},
    {"context deadline exceeded", absl::StatusCode::kDeadlineExceeded},
};

bool KnownCode(absl::string_view message, absl::StatusCode* code) {
  for (const Known& known : kKnown) {
    if (absl::StrContains(message, known.text)) {
      *code = known.code;
      return true;
    }
  }
  return false;
}

absl::Status Make(absl::StatusCode code, absl::string_view what, absl::string_view message) {
  return absl::Status(code, absl::StrCat("etcd ", what, ": ", message));
}

}  // namespace

absl::Status FromGrpc(absl::string_view what, const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const std::string& message = status.error_message();
  absl::StatusCode code = static_cast<absl::StatusCode>(status.error_code());
  // gRPC's own deadline and connection failures keep their code whatever the text says.
  if (code != absl::StatusCode::kDeadlineExceeded && code != absl::StatusCode::kUnavailable) {
    KnownCode(message, &code);
  }
  if (code == absl::StatusCode::kUnavailable && message.empty()) {
    return Make(code, what, "no etcd endpoint answers");
  }
  return Make(code, what, message.empty() ? absl::StatusCodeToString(code) : message);
}

absl::Status FromEtcdMessage(absl::string_view what, absl::string_view message) {
  // Go's text of a gRPC error: "rpc error: code = PermissionDenied desc = etcdserver: ...".
  if (size_t desc = message.find(" desc = ");
      absl::StartsWith(message, "rpc error: ") && desc != absl::string_view::npos) {
    message.remove_prefix(desc + 8);
  }
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  KnownCode(message, &code);
  return Make(code, what, message.empty() ? "etcd gave no reason" : message);
}

bool IsStaleTokenMessage(absl::string_view message) {
  return absl::StrContains(message, "invalid auth token") ||
         absl::StrContains(message, "revision of auth store is old") ||
         absl::StrContains(message, "user name is empty");
}

bool IsStaleToken(const grpc::Status& status) {
  return !status.ok() && IsStaleTokenMessage(status.error_message());
}

}  // namespace tunnelagent::etcd
