#include "common/etcd/client.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/etcd/connection.h"
#include "common/etcd/status.h"
#include "common/etcd/watch_stream.h"

namespace tunnelagent::etcd {
namespace {

// GetPrefix's page: etcd answers 1000 registrations in well under a megabyte and a
// millisecond or so.
constexpr int64_t kPageSize = 1000;
// etcd's longest lease (lease.MaxLeaseTTL).
constexpr int64_t kMaxLeaseTtlSeconds = 9000000000;

// The end of etcd's key range for "every key that starts with `prefix`" (clientv3's
// GetPrefixRangeEnd): the prefix with its last byte below 0xff incremented and what follows
// dropped; "\0", which etcd reads as "no end", when there is none.
std::string PrefixRangeEnd(absl::string_view prefix) {
  std::string end(prefix);
  for (size_t i = end.size(); i > 0; --i) {
    if (static_cast<unsigned char>(end[i - 1]) < 0xff) {
      end[i - 1] = static_cast<char>(static_cast<unsigned char>(end[i - 1]) + 1);
      end.resize(i);
      return end;
    }
  }
  return std::string(1, '\0');
}

// etcd has no empty key: the empty prefix is the range from "\0".
std::string PrefixStart(absl::string_view prefix) {
  return prefix.empty() ? std::string(1, '\0') : std::string(prefix);
}

std::string Quoted(absl::string_view key) {
  return absl::StrCat("\"", absl::CHexEscape(key), "\"");
}

absl::Status CheckKey(absl::string_view what, absl::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": empty key"));
  return absl::OkStatus();
}

absl::Status CheckLease(absl::string_view what, int64_t lease, bool required) {
  if (lease < 0 || (required && lease == 0)) {
    return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": bad lease ", lease));
  }
  return absl::OkStatus();
}

std::string LeaseName(int64_t lease) { return absl::StrCat("lease ", absl::Hex(lease)); }

class EtcdClient final : public Client {
 public:
  explicit EtcdClient(std::shared_ptr<Connection> connection)
      : connection_(std::move(connection)) {}

  absl::StatusOr<int64_t> Put(absl::string_view key, absl::string_view value,
                              int64_t lease) override {
    const std::string what = absl::StrCat("put ", Quoted(key));
    if (absl::Status s = CheckKey(what, key); !s.ok()) return s;
    if (absl::Status s = CheckLease(what, lease, false); !s.ok()) return s;
    etcdserverpb::PutRequest request;
    request.set_key(std::string(key));
    request.set_value(std::string(value));
    request.set_lease(lease);
    absl::StatusOr<etcdserverpb::PutResponse> response =
        connection_->Call<etcdserverpb::PutResponse>(
            what, Deadline(), [&](grpc::ClientContext* c, etcdserverpb::PutResponse* r) {
              return connection_->kv().Put(c, request, r);
            });
    if (!response.ok()) return response.status();
    return response->header().revision();
  }

  absl::StatusOr<RangeResult> Get(absl::string_view key) override {
    const std::string what = absl::StrCat("get ", Quoted(key));
    if (absl::Status s = CheckKey(what, key); !s.ok()) return s;
    etcdserverpb::RangeRequest request;
    request.set_key(std::string(key));
    absl::StatusOr<etcdserverpb::RangeResponse> response = Range(what, request);
    if (!response.ok()) return response.status();
    RangeResult result;
    result.revision = response->header().revision();
    for (const mvccpb::KeyValue& kv : response->kvs()) result.kvs.push_back(ToKeyValue(kv));
    return result;
  }

  absl::StatusOr<RangeResult> GetPrefix(absl::string_view prefix) override {
    const std::string what = absl::StrCat("get prefix ", Quoted(prefix));
    etcdserverpb::RangeRequest request;
    request.set_key(PrefixStart(prefix));
    request.set_range_end(PrefixRangeEnd(prefix));
    request.set_limit(kPageSize);
    RangeResult result;
    // Every page after the first is read at the first's revision: one consistent listing,
    // or OUT_OF_RANGE when that revision is compacted meanwhile.
    for (;;) {
      absl::StatusOr<etcdserverpb::RangeResponse> response = Range(what, request);
      if (!response.ok()) return response.status();
      if (result.revision == 0) {
        result.revision = response->header().revision();
        request.set_revision(result.revision);
      }
      for (const mvccpb::KeyValue& kv : response->kvs()) result.kvs.push_back(ToKeyValue(kv));
      if (!response->more() || response->kvs().empty()) break;
      // The next page starts just after the last key ("key\0" is the next key there can be).
      request.set_key(response->kvs().rbegin()->key() + std::string(1, '\0'));
    }
    return result;
  }

  absl::StatusOr<int64_t> Delete(absl::string_view key) override {
    const std::string what = absl::StrCat("delete ", Quoted(key));
    if (absl::Status s = CheckKey(what, key); !s.ok()) return s;
    etcdserverpb::DeleteRangeRequest request;
    request.set_key(std::string(key));
    return DeleteRange(what, request);
  }

  absl::StatusOr<int64_t> DeletePrefix(absl::string_view prefix) override {
    const std::string what = absl::StrCat("delete prefix ", Quoted(prefix));
    if (prefix.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd ", what, ": the empty prefix would delete every key"));
    }
    etcdserverpb::DeleteRangeRequest request;
    request.set_key(std::string(prefix));
    request.set_range_end(PrefixRangeEnd(prefix));
    return DeleteRange(what, request);
  }

  absl::StatusOr<bool> PutIfUnchanged(absl::string_view key, absl::string_view value,
                                      int64_t mod_revision, int64_t lease) override {
    const std::string what = absl::StrCat("put ", Quoted(key), " if at revision ", mod_revision);
    if (absl::Status s = CheckKey(what, key); !s.ok()) return s;
    if (absl::Status s = CheckLease(what, lease, false); !s.ok()) return s;
    if (mod_revision < 0) {
      return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": negative revision"));
    }
    etcdserverpb::TxnRequest request;
    etcdserverpb::Compare* compare = request.add_compare();
    compare->set_key(std::string(key));
    compare->set_result(etcdserverpb::Compare::EQUAL);
    if (mod_revision == 0) {
      // A key that does not exist has no creation revision.
      compare->set_target(etcdserverpb::Compare::CREATE);
      compare->set_create_revision(0);
    } else {
      compare->set_target(etcdserverpb::Compare::MOD);
      compare->set_mod_revision(mod_revision);
    }
    etcdserverpb::PutRequest* put = request.add_success()->mutable_request_put();
    put->set_key(std::string(key));
    put->set_value(std::string(value));
    put->set_lease(lease);
    absl::StatusOr<etcdserverpb::TxnResponse> response =
        connection_->Call<etcdserverpb::TxnResponse>(
            what, Deadline(), [&](grpc::ClientContext* c, etcdserverpb::TxnResponse* r) {
              return connection_->kv().Txn(c, request, r);
            });
    if (!response.ok()) return response.status();
    return response->succeeded();
  }

  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    const std::string what = absl::StrCat("grant lease of ", absl::FormatDuration(ttl));
    // etcd counts in whole seconds: a fraction is rounded up, never down to nothing.
    const double seconds = std::ceil(absl::ToDoubleSeconds(ttl));
    if (!(seconds >= 1) || seconds > kMaxLeaseTtlSeconds) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd ", what, ": the TTL must be 1 s to ", kMaxLeaseTtlSeconds, " s"));
    }
    etcdserverpb::LeaseGrantRequest request;
    request.set_ttl(static_cast<int64_t>(seconds));
    absl::StatusOr<etcdserverpb::LeaseGrantResponse> response =
        connection_->Call<etcdserverpb::LeaseGrantResponse>(
            what, Deadline(), [&](grpc::ClientContext* c, etcdserverpb::LeaseGrantResponse* r) {
              return connection_->lease().LeaseGrant(c, request, r);
            });
    if (!response.ok()) return response.status();
    if (!response->error().empty()) return FromEtcdMessage(what, response->error());
    return response->id();
  }

  absl::StatusOr<absl::Duration> KeepAliveOnce(int64_t lease) override {
    const std::string what = absl::StrCat("keep alive ", LeaseName(lease));
    if (absl::Status s = CheckLease(what, lease, true); !s.ok()) return s;
    const absl::Time deadline = Deadline();
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(lease);
    // LeaseKeepAlive is a stream: one request, one answer, and the stream closed.
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext context;
      std::string token;
      if (absl::Status s = connection_->Prepare(&context, deadline, &token); !s.ok()) return s;
      std::unique_ptr<grpc::ClientReaderWriter<etcdserverpb::LeaseKeepAliveRequest,
                                               etcdserverpb::LeaseKeepAliveResponse>>
          stream = connection_->lease().LeaseKeepAlive(&context);
      etcdserverpb::LeaseKeepAliveResponse response;
      if (stream->Write(request) && stream->Read(&response)) {
        context.TryCancel();
        stream->Finish();
        // etcd answers a lease it does not know (expired, revoked) with a TTL of 0.
        if (response.ttl() <= 0) {
          return absl::NotFoundError(
              absl::StrCat("etcd ", what, ": the lease expired or was revoked"));
        }
        return absl::Seconds(response.ttl());
      }
      grpc::Status status = stream->Finish();
      if (attempt == 0 && connection_->has_user() && IsStaleToken(status)) {
        connection_->TokenRejected(token);
        continue;
      }
      return FromGrpc(what, status);
    }
  }

  absl::Status RevokeLease(int64_t lease) override {
    const std::string what = absl::StrCat("revoke ", LeaseName(lease));
    if (absl::Status s = CheckLease(what, lease, true); !s.ok()) return s;
    etcdserverpb::LeaseRevokeRequest request;
    request.set_id(lease);
    return connection_
        ->Call<etcdserverpb::LeaseRevokeResponse>(
            what, Deadline(),
            [&](grpc::ClientContext* c, etcdserverpb::LeaseRevokeResponse* r) {
              return connection_->lease().LeaseRevoke(c, request, r);
            })
        .status();
  }

  absl::StatusOr<std::unique_ptr<Watch>> WatchPrefix(absl::string_view prefix,
                                                     int64_t start_revision,
                                                     WatchCallbacks callbacks) override {
    if (start_revision < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd watch of ", Quoted(prefix), ": negative start revision"));
    }
    return StartWatch(connection_, PrefixStart(prefix), PrefixRangeEnd(prefix), start_revision,
                      std::move(callbacks));
  }

  absl::StatusOr<LeaderKey> Campaign(absl::string_view election, int64_t lease,
                                     absl::string_view value, absl::Duration timeout) override {
    const std::string what =
        absl::StrCat("campaign in ", Quoted(election), " with ", LeaseName(lease));
    if (election.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": empty election name"));
    }
    // Lease 0 would have etcd grant a lease of its own that nobody keeps alive.
    if (absl::Status s = CheckLease(what, lease, true); !s.ok()) return s;
    if (timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": timeout must be positive"));
    }
    v3electionpb::CampaignRequest request;
    request.set_name(std::string(election));
    request.set_lease(lease);
    request.set_value(std::string(value));
    absl::StatusOr<v3electionpb::CampaignResponse> response =
        connection_->Call<v3electionpb::CampaignResponse>(
            what, absl::Now() + timeout,
            [&](grpc::ClientContext* c, v3electionpb::CampaignResponse* r) {
              return connection_->election().Campaign(c, request, r);
            });
    if (response.ok()) {
      LeaderKey leader;
      leader.name = response->leader().name();
      leader.key = response->leader().key();
      leader.revision = response->leader().rev();
      leader.lease = response->leader().lease();
      return leader;
    }
    absl::Status status = response.status();
    switch (status.code()) {
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kCancelled:
      case absl::StatusCode::kUnknown:
        return WithdrawCandidacy(election, lease, std::move(status));
      default:
        return status;
    }
  }

  absl::Status Resign(const LeaderKey& leader) override {
    const std::string what = absl::StrCat("resign from ", Quoted(leader.name));
    v3electionpb::ResignRequest request;
    v3electionpb::LeaderKey* key = request.mutable_leader();
    key->set_name(leader.name);
    key->set_key(leader.key);
    key->set_rev(leader.revision);
    key->set_lease(leader.lease);
    return connection_
        ->Call<v3electionpb::ResignResponse>(
            what, Deadline(),
            [&](grpc::ClientContext* c, v3electionpb::ResignResponse* r) {
              return connection_->election().Resign(c, request, r);
            })
        .status();
  }

  absl::StatusOr<KeyValue> Leader(absl::string_view election) override {
    const std::string what = absl::StrCat("leader of ", Quoted(election));
    if (election.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("etcd ", what, ": empty election name"));
    }
    v3electionpb::LeaderRequest request;
    request.set_name(std::string(election));
    absl::StatusOr<v3electionpb::LeaderResponse> response =
        connection_->Call<v3electionpb::LeaderResponse>(
            what, Deadline(), [&](grpc::ClientContext* c, v3electionpb::LeaderResponse* r) {
              return connection_->election().Leader(c, request, r);
            });
    if (!response.ok()) return response.status();
    if (!response->has_kv()) {
      return absl::NotFoundError(absl::StrCat("etcd ", what, ": nobody leads"));
    }
    return ToKeyValue(response->kv());
  }

 private:
  absl::Time Deadline() const { return absl::Now() + connection_->options().call_timeout; }

  absl::StatusOr<etcdserverpb::RangeResponse> Range(absl::string_view what,
                                                    const etcdserverpb::RangeRequest& request) {
    return connection_->Call<etcdserverpb::RangeResponse>(
        what, Deadline(), [&](grpc::ClientContext* c, etcdserverpb::RangeResponse* r) {
          return connection_->kv().Range(c, request, r);
        });
  }

  absl::StatusOr<int64_t> DeleteRange(absl::string_view what,
                                      const etcdserverpb::DeleteRangeRequest& request) {
    absl::StatusOr<etcdserverpb::DeleteRangeResponse> response =
        connection_->Call<etcdserverpb::DeleteRangeResponse>(
            what, Deadline(), [&](grpc::ClientContext* c, etcdserverpb::DeleteRangeResponse* r) {
              return connection_->kv().DeleteRange(c, request, r);
            });
    if (!response.ok()) return response.status();
    return response->deleted();
  }

  // etcd's Election service makes a candidate by writing "<election>/<lease in hex>" under the
  // lease, then waits for the earlier candidates to go. A Campaign that gave up (or lost its
  // connection) may leave that key behind, and the client would then become leader later
  // without knowing it: deleted here. `why` is returned, with a word when the key may remain.
  absl::Status WithdrawCandidacy(absl::string_view election, int64_t lease, absl::Status why) {
    const std::string key = absl::StrCat(election, "/", absl::Hex(lease));
    etcdserverpb::DeleteRangeRequest request;
    request.set_key(key);
    absl::StatusOr<int64_t> deleted =
        DeleteRange(absl::StrCat("withdraw candidacy ", Quoted(key)), request);
    if (deleted.ok()) {
      return absl::Status(why.code(), absl::StrCat(why.message(), " (candidacy withdrawn)"));
    }
    return absl::Status(why.code(),
                        absl::StrCat(why.message(), "; the candidacy key ", Quoted(key),
                                     " may remain until its lease ends (revoke the lease): ",
                                     deleted.status().message()));
  }

  std::shared_ptr<Connection> connection_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<Connection>> connection = Connection::Create(options);
  if (!connection.ok()) return connection.status();
  return std::make_unique<EtcdClient>(*std::move(connection));
}

}  // namespace tunnelagent::etcd
