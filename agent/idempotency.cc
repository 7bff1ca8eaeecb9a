#include "agent/idempotency.h"

#include "absl/strings/str_cat.h"

namespace tunnelagent::agent {

absl::Status IdempotencyCache::Run(absl::string_view method, absl::string_view request_id,
                                   absl::string_view fingerprint, std::string* response,
                                   absl::FunctionRef<absl::Status(std::string* response)> call) {
  if (request_id.empty()) return call(response);
  if (request_id.size() > 128) {
    return absl::InvalidArgumentError("request_id: longer than 128 characters");
  }
  const std::string key = absl::StrCat(method, "\n", request_id);
  absl::MutexLock run(&run_mu_);
  {
    absl::MutexLock lock(&mu_);
    Expire(absl::Now());
    auto it = answers_.find(key);
    if (it != answers_.end()) {
      if (it->second.fingerprint != fingerprint) {
        return absl::InvalidArgumentError(
            absl::StrCat("request_id: ", request_id, " was already used for a different request"));
      }
      *response = it->second.response;
      return it->second.status;
    }
  }
  absl::Status status = call(response);
  absl::MutexLock lock(&mu_);
  answers_[key] = {std::string(fingerprint), status, *response, absl::Now() + ttl_};
  order_.push_back(key);
  return status;
}

void IdempotencyCache::Expire(absl::Time now) {
  while (!order_.empty()) {
    auto it = answers_.find(order_.front());
    if (it != answers_.end() && it->second.expires > now && answers_.size() <= capacity_) break;
    if (it != answers_.end()) answers_.erase(it);
    order_.pop_front();
  }
}

}  // namespace tunnelagent::agent
