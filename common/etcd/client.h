// A client of etcd's v3 API (KV, Lease, Watch, Election, Auth), over gRPC with the stubs
// generated at build time from the .proto files etcd ships (Debian's golang-etcd-server-dev).
// What the fleet needs and no more: keys under a prefix, leases kept alive, watches that
// report compaction, and leader election through etcd's own election service.
//
// Every call is bounded by ClientOptions::call_timeout. Errors are absl::Status: UNAVAILABLE
// when no endpoint answers (the caller keeps its last state and retries), NOT_FOUND for a
// lease that has expired, PERMISSION_DENIED when etcd's roles refuse the key,
// UNAUTHENTICATED for bad credentials, OUT_OF_RANGE for a watch or read whose revision was
// compacted (the caller lists again).
//
//   absl::StatusOr<std::unique_ptr<etcd::Client>> client =
//       etcd::Client::Connect({.endpoints = {"127.0.0.1:2379"}});
//   absl::StatusOr<int64_t> lease = (*client)->GrantLease(absl::Seconds(15));
//   (*client)->Put("/tunnel-agent/prod/nodes/n1", value, *lease);
#ifndef TUNNELAGENT_COMMON_ETCD_CLIENT_H_
#define TUNNELAGENT_COMMON_ETCD_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tunnelagent::etcd {

struct ClientOptions {
  // "HOST:PORT", "http://HOST:PORT" or "https://HOST:PORT", as etcdctl's --endpoints takes
  // them; several: the channel moves to the next when one does not answer.
  // One gRPC channel over all of them, connected to every member (round_robin): calls go to
  // the members that are up, and one that dies is left at once (and tried again every second
  // until it is back). One endpoint that is a host name is resolved by gRPC, again at each
  // reconnection; several with names among them are resolved once, at Connect (a name that
  // does not resolve then is left out).
  std::vector<std::string> endpoints;
  // TLS: on with an https:// endpoint or a CA file. Client certificate and key for etcd's
  // --client-cert-auth (the certificate's CN is then the etcd user).
  // (Also on with a client certificate alone; http:// and https:// endpoints do not mix.) The
  // member's certificate must chain to the CA (empty: the system's roots) and name the host
  // of one of the endpoints, as a DNS or IP subject alternative name.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // etcd's user and password auth: Authenticate once, the token sent on every call, and
  // fetched again when etcd says it expired.
  // (Authenticated on the first call, not at Connect; a user given to an etcd without auth
  // is ignored, as etcdctl does.)
  std::string username;
  std::string password;
  absl::Duration call_timeout = absl::Seconds(5);
};

// "a,b,c" (etcdctl's --endpoints) to the list; INVALID_ARGUMENT on an empty entry or one that
// is not HOST:PORT with an optional http:// or https://.
absl::StatusOr<std::vector<std::string>> ParseEndpoints(absl::string_view text);

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;  // 0: no lease
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;  // the store's revision the result was read at
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for kDelete: the key and mod_revision only
};

// A watch of every key under a prefix from a revision on, delivered on a thread of its own
// until the object goes. `on_events` gets each batch in revision order with the revision it
// brings the watcher to; `on_end` gets why the watch ended: OUT_OF_RANGE when its start
// revision was compacted (list again, then watch from the list's revision + 1), UNAVAILABLE
// when etcd went away (the same). Neither is called after the destructor returns.
// Also: a batch without events is etcd's progress notification (nothing under the prefix
// changed up to `revision`, a revision to resume from); on_end may also say PERMISSION_DENIED
// or UNAUTHENTICATED; it is not called when the watch ends because its object goes. The
// destructor may run inside a callback (the thread then ends by itself after it returns).
class Watch {
 public:
  virtual ~Watch() = default;
};

struct WatchCallbacks {
  std::function<void(const std::vector<WatchEvent>& events, int64_t revision)> on_events;
  std::function<void(const absl::Status& why)> on_end;
};

// Leadership won through etcd's Election service: held while the lease it was won with lives.
struct LeaderKey {
  std::string name;
  std::string key;
  int64_t revision = 0;
  int64_t lease = 0;
};

class Client {
 public:
  // Checks the options and reads the TLS files (INVALID_ARGUMENT naming what is wrong), but
  // does not wait for etcd: a program starts while etcd is down, and its calls say
  // UNAVAILABLE until etcd is back. UNAVAILABLE when several endpoints are names and none
  // resolves.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  virtual ~Client() = default;

  // KV. Put returns the store's revision after the write; a lease of 0 is none.
  virtual absl::StatusOr<int64_t> Put(absl::string_view key, absl::string_view value,
                                      int64_t lease = 0) = 0;
  virtual absl::StatusOr<RangeResult> Get(absl::string_view key) = 0;
  // Every key under the prefix, read at one revision (paged internally).
  // Pages of 1000 keys, each within call_timeout; OUT_OF_RANGE when that revision is compacted
  // before the last page (list again). The empty prefix is every key.
  virtual absl::StatusOr<RangeResult> GetPrefix(absl::string_view prefix) = 0;
  // The number of keys deleted.
  virtual absl::StatusOr<int64_t> Delete(absl::string_view key) = 0;
  // (INVALID_ARGUMENT for the empty prefix rather than deleting every key.)
  virtual absl::StatusOr<int64_t> DeletePrefix(absl::string_view prefix) = 0;
  // Writes only if the key's mod_revision is still `mod_revision` (0: only if the key does
  // not exist): false when it changed meanwhile.
  virtual absl::StatusOr<bool> PutIfUnchanged(absl::string_view key, absl::string_view value,
                                              int64_t mod_revision, int64_t lease = 0) = 0;

  // Lease. KeepAliveOnce renews the lease and returns the TTL it was renewed to; NOT_FOUND
  // once it has expired or was revoked (the keys bound to it are gone: register again).
  virtual absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) = 0;
  virtual absl::StatusOr<absl::Duration> KeepAliveOnce(int64_t lease) = 0;
  virtual absl::Status RevokeLease(int64_t lease) = 0;

  // Watch from `start_revision` (0: from now).
  // Returns once etcd has created the watch (within call_timeout), or with why it did not
  // (UNAVAILABLE, PERMISSION_DENIED, UNAUTHENTICATED).
  virtual absl::StatusOr<std::unique_ptr<Watch>> WatchPrefix(absl::string_view prefix,
                                                             int64_t start_revision,
                                                             WatchCallbacks callbacks) = 0;

  // Election. Campaign blocks until this client leads `election` (or `timeout` passes:
  // DEADLINE_EXCEEDED, still a candidate no more); the leadership lasts as long as `lease`.
  // (etcd keeps a candidate as the key "<election>/<lease in hex>" under the lease: after a
  // timeout or a lost connection the client deletes it; when it cannot, the error says so and
  // the key stays until the lease ends: revoke the lease. `lease` must not be 0; NOT_FOUND for
  // a lease that is gone.)
  virtual absl::StatusOr<LeaderKey> Campaign(absl::string_view election, int64_t lease,
                                             absl::string_view value, absl::Duration timeout) = 0;
  virtual absl::Status Resign(const LeaderKey& leader) = 0;
  // The current leader's value; NOT_FOUND when nobody leads.
  virtual absl::StatusOr<KeyValue> Leader(absl::string_view election) = 0;
};

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_CLIENT_H_
