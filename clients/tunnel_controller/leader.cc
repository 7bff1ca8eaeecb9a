#include "clients/tunnel_controller/leader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tunnelagent::controller {
namespace {

// After a failed call: soon again, so that etcd coming back is noticed within this.
const absl::Duration kRetry = absl::Milliseconds(250);

}  // namespace

LeaderElection::LeaderElection(etcd::Client& client, ElectionOptions options)
    : client_(client), options_(std::move(options)) {
  renewer_ = std::thread([this] { RenewLoop(); });
}

LeaderElection::~LeaderElection() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    wake_.SignalAll();
  }
  renewer_.join();
  Resign();
}

void LeaderElection::Error(absl::string_view call, const absl::Status& status) {
  if (options_.on_error) options_.on_error(call, status);
}

void LeaderElection::Revoke(int64_t lease) {
  if (lease == 0) return;
  if (absl::Status s = client_.RevokeLease(lease); !s.ok() && !absl::IsNotFound(s)) {
    Error("revoke the lease", s);
  }
}

bool LeaderElection::Campaign(const absl::Notification& stop) {
  while (!stop.HasBeenNotified()) {
    int64_t lease = 0;
    bool lapsed = false;
    {
      absl::MutexLock lock(&mu_);
      lease = lease_;
      lapsed = absl::Now() >= lease_until_;
    }
    if (lease != 0 && lapsed) {
      // Not renewed within its TTL (etcd was away): etcd may have kept it (it extends the
      // leases when it comes back), and with it this replica's place in the election.
      const absl::Time sent = absl::Now();
      absl::StatusOr<absl::Duration> renewed = client_.KeepAliveOnce(lease);
      if (!renewed.ok() && !absl::IsNotFound(renewed.status())) {
        Error("renew the lease", renewed.status());
        stop.WaitForNotificationWithTimeout(kRetry);
        continue;
      }
      absl::MutexLock lock(&mu_);
      if (lease_ != lease) continue;
      if (renewed.ok()) {
        lease_until_ = sent + *renewed;
      } else {
        lease_ = lease = 0;
      }
    }
    if (lease == 0) {
      const absl::Time sent = absl::Now();
      absl::StatusOr<int64_t> granted = client_.GrantLease(options_.ttl);
      if (!granted.ok()) {
        Error("grant a lease", granted.status());
        stop.WaitForNotificationWithTimeout(kRetry);
        continue;
      }
      absl::MutexLock lock(&mu_);
      lease_ = lease = *granted;
      lease_until_ = sent + options_.ttl;
      wake_.SignalAll();  // the renewer starts renewing it
    }
    absl::StatusOr<etcd::LeaderKey> won =
        client_.Campaign(options_.election, lease, options_.value, options_.campaign_wait);
    if (won.ok()) {
      absl::MutexLock lock(&mu_);
      // Won with a lease that is still ours and alive: lead (else campaign again).
      if (lease_ == lease && absl::Now() < lease_until_) {
        leading_ = true;
        leader_key_ = *won;
        lost_reason_.clear();
        return true;
      }
      continue;
    }
    if (absl::IsDeadlineExceeded(won.status())) continue;  // still someone else's: wait again
    if (absl::IsNotFound(won.status())) {
      absl::MutexLock lock(&mu_);
      if (lease_ == lease) lease_ = 0;  // the lease is gone: a new one
      continue;
    }
    Error("campaign", won.status());
    stop.WaitForNotificationWithTimeout(kRetry);
  }
  return false;
}

bool LeaderElection::Leading() const {
  absl::MutexLock lock(&mu_);
  return leading_ && absl::Now() < lease_until_;
}

absl::Time LeaderElection::LeadingUntil() const {
  absl::MutexLock lock(&mu_);
  return leading_ ? lease_until_ : absl::InfinitePast();
}

std::string LeaderElection::LostReason() const {
  absl::MutexLock lock(&mu_);
  return lost_reason_;
}

std::string LeaderElection::LeaderKeyName() const {
  absl::MutexLock lock(&mu_);
  return leading_ ? leader_key_.key : "";
}

bool LeaderElection::EndLocked(absl::string_view why) {
  if (!leading_) return false;
  leading_ = false;
  lost_reason_ = std::string(why);
  return true;
}

void LeaderElection::Lost(absl::string_view why) {
  int64_t lease = 0;
  bool was_leading = false;
  {
    absl::MutexLock lock(&mu_);
    was_leading = EndLocked(why);
    // The key is gone while the lease may live: give the lease up, campaign with a new one.
    lease = lease_;
    lease_ = 0;
    lease_until_ = absl::InfinitePast();
  }
  Revoke(lease);
  if (was_leading && options_.on_lost) options_.on_lost();
}

void LeaderElection::Resign() {
  int64_t lease = 0;
  bool was_leading = false;
  {
    absl::MutexLock lock(&mu_);
    was_leading = EndLocked("resigned");
    lease = lease_;
    lease_ = 0;
    lease_until_ = absl::InfinitePast();
  }
  // Revoking the lease deletes the leader key with it: a standby leads at once.
  Revoke(lease);
  if (was_leading && options_.on_lost) options_.on_lost();
}

void LeaderElection::RenewLoop() {
  const absl::Duration every = options_.ttl / 3;
  absl::Time next = absl::Now() + every;
  while (true) {
    int64_t lease = 0;
    bool ended = false;
    {
      absl::MutexLock lock(&mu_);
      // Wake for the next renewal, and exactly when the lease may lapse (to stop leading then).
      while (!shutdown_) {
        const absl::Time now = absl::Now();
        if (leading_ && now >= lease_until_) {
          ended =
              EndLocked(absl::StrCat("the lease was not renewed within its TTL of ",
                                     absl::FormatDuration(options_.ttl), " (etcd unreachable?)"));
          break;
        }
        if (lease_ != 0 && now >= next) {
          lease = lease_;
          break;
        }
        absl::Time until = lease_ != 0 ? next : absl::InfiniteFuture();
        if (leading_) until = std::min(until, lease_until_);
        wake_.WaitWithDeadline(&mu_, until);
      }
      if (shutdown_) return;
    }
    if (ended) {
      // The lease is kept: renewing it goes on, and Campaign takes it again if etcd kept it.
      if (options_.on_lost) options_.on_lost();
      continue;
    }
    const absl::Time sent = absl::Now();
    absl::StatusOr<absl::Duration> renewed = client_.KeepAliveOnce(lease);
    bool lost = false;
    {
      absl::MutexLock lock(&mu_);
      if (lease_ != lease) {
        next = absl::Now() + every;  // replaced meanwhile: renew the new one in its time
        continue;
      }
      if (renewed.ok()) {
        lease_until_ = sent + *renewed;
        next = sent + every;
      } else if (absl::IsNotFound(renewed.status())) {
        lost = EndLocked("etcd says the lease expired");
        lease_ = 0;
        lease_until_ = absl::InfinitePast();
        next = absl::Now() + every;
      } else {
        next = absl::Now() + kRetry;
      }
    }
    if (!renewed.ok() && !absl::IsNotFound(renewed.status())) {
      Error("renew the lease", renewed.status());
    }
    if (lost && options_.on_lost) options_.on_lost();
  }
}

}  // namespace tunnelagent::controller
