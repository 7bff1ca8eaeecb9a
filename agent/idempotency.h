// Answers of mutating requests remembered by request_id (AIP-155), so a client that retries
// after a lost reply gets the first answer instead of a second effect.
#ifndef TUNNELAGENT_AGENT_IDEMPOTENCY_H_
#define TUNNELAGENT_AGENT_IDEMPOTENCY_H_

#include <deque>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {

class IdempotencyCache {
 public:
  explicit IdempotencyCache(absl::Duration ttl = absl::Minutes(10), size_t capacity = 10000)
      : ttl_(ttl), capacity_(capacity) {}

  // Runs `call` for (method, request_id) the first time and remembers its status and
  // `*response`; a later call with the same pair gets those back without running. Reusing an
  // id for a different request (another `fingerprint`) is INVALID_ARGUMENT. An empty id just
  // runs `call`. Calls that carry an id run one at a time, so a retry racing the original
  // waits for it.
  absl::Status Run(absl::string_view method, absl::string_view request_id,
                   absl::string_view fingerprint, std::string* response,
                   absl::FunctionRef<absl::Status(std::string* response)> call);

 private:
  struct Answer {
    std::string fingerprint;
    absl::Status status;
    std::string response;
    absl::Time expires;
  };
  void Expire(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration ttl_;
  const size_t capacity_;
  absl::Mutex run_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  std::map<std::string, Answer> answers_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // oldest first
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_IDEMPOTENCY_H_
