#include "agent/idempotency.h"

#include <atomic>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

// A call that counts how often it ran and answers "answer N" (or `error`, when set).
class CountingCall {
 public:
  absl::Status operator()(std::string* response) {
    ++calls_;
    *response = absl::StrCat("answer ", calls_);
    return error_;
  }
  int calls() const { return calls_; }
  void FailWith(absl::Status error) { error_ = std::move(error); }

 private:
  int calls_ = 0;
  absl::Status error_;
};

// Runs `call` through `cache` and returns the status and the response.
std::pair<absl::Status, std::string> Call(IdempotencyCache& cache, const std::string& method,
                                          const std::string& id, const std::string& fingerprint,
                                          CountingCall& call) {
  std::string response;
  absl::Status status = cache.Run(method, id, fingerprint, &response,
                                  [&call](std::string* out) { return call(out); });
  return {status, response};
}

TEST(IdempotencyCacheTest, SameIdGetsTheFirstAnswerWithoutRunningAgain) {
  IdempotencyCache cache;
  CountingCall call;

  auto first = Call(cache, "CreateTunnel", "id-1", "body", call);
  auto second = Call(cache, "CreateTunnel", "id-1", "body", call);
  auto third = Call(cache, "CreateTunnel", "id-1", "body", call);

  EXPECT_EQ(call.calls(), 1);
  EXPECT_TRUE(first.first.ok());
  EXPECT_EQ(first.second, "answer 1");
  EXPECT_TRUE(second.first.ok());
  EXPECT_EQ(second.second, "answer 1");
  EXPECT_EQ(third.second, "answer 1");
}

TEST(IdempotencyCacheTest, AnErrorAnswerIsRememberedToo) {
  IdempotencyCache cache;
  CountingCall call;
  call.FailWith(absl::AlreadyExistsError("tunnel gre1 already exists"));

  auto first = Call(cache, "CreateTunnel", "id-1", "body", call);
  call.FailWith(absl::OkStatus());  // would succeed now, if it ran
  auto second = Call(cache, "CreateTunnel", "id-1", "body", call);

  EXPECT_EQ(call.calls(), 1);
  EXPECT_EQ(first.first.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(second.first, first.first) << "same code and message";
}

TEST(IdempotencyCacheTest, SameIdForADifferentRequestIsInvalidArgument) {
  IdempotencyCache cache;
  CountingCall call;
  ASSERT_TRUE(Call(cache, "CreateTunnel", "id-1", "body A", call).first.ok());

  auto reused = Call(cache, "CreateTunnel", "id-1", "body B", call);
  EXPECT_EQ(reused.first.code(), absl::StatusCode::kInvalidArgument) << reused.first;
  EXPECT_THAT(std::string(reused.first.message()), HasSubstr("request_id"));
  EXPECT_EQ(call.calls(), 1) << "not run";

  // The original is still answered as before.
  auto again = Call(cache, "CreateTunnel", "id-1", "body A", call);
  EXPECT_TRUE(again.first.ok());
  EXPECT_EQ(again.second, "answer 1");
  EXPECT_EQ(call.calls(), 1);
}

TEST(IdempotencyCacheTest, EmptyIdAlwaysRuns) {
  IdempotencyCache cache;
  CountingCall call;
  EXPECT_EQ(Call(cache, "CreateTunnel", "", "body", call).second, "answer 1");
  EXPECT_EQ(Call(cache, "CreateTunnel", "", "body", call).second, "answer 2");
  EXPECT_EQ(Call(cache, "CreateTunnel", "", "other body", call).second, "answer 3");
  EXPECT_EQ(call.calls(), 3);
}

TEST(IdempotencyCacheTest, SameIdOfAnotherMethodIsAnotherRequest) {
  IdempotencyCache cache;
  CountingCall create;
  CountingCall remove;
  auto created = Call(cache, "CreateTunnel", "id-1", "body", create);
  auto removed = Call(cache, "DeleteTunnel", "id-1", "other body", remove);
  EXPECT_TRUE(created.first.ok());
  EXPECT_TRUE(removed.first.ok()) << removed.first << " (not a reuse)";
  EXPECT_EQ(create.calls(), 1);
  EXPECT_EQ(remove.calls(), 1);
  // And each is remembered on its own.
  Call(cache, "CreateTunnel", "id-1", "body", create);
  Call(cache, "DeleteTunnel", "id-1", "other body", remove);
  EXPECT_EQ(create.calls(), 1);
  EXPECT_EQ(remove.calls(), 1);
}

TEST(IdempotencyCacheTest, AnswersExpire) {
  IdempotencyCache cache(absl::Milliseconds(20));
  CountingCall call;
  Call(cache, "CreateTunnel", "id-1", "body", call);
  Call(cache, "CreateTunnel", "id-1", "body", call);
  ASSERT_EQ(call.calls(), 1);

  absl::SleepFor(absl::Milliseconds(60));
  auto later = Call(cache, "CreateTunnel", "id-1", "body", call);
  EXPECT_EQ(call.calls(), 2) << "forgotten after the ttl, so it runs again";
  EXPECT_EQ(later.second, "answer 2");
  // Also a different body is no longer a reuse of a remembered id.
  absl::SleepFor(absl::Milliseconds(60));
  EXPECT_TRUE(Call(cache, "CreateTunnel", "id-1", "other", call).first.ok());
}

TEST(IdempotencyCacheTest, BeyondCapacityTheOldestIsForgotten) {
  IdempotencyCache cache(absl::Minutes(10), /*capacity=*/2);
  CountingCall call;
  Call(cache, "CreateTunnel", "a", "body", call);
  Call(cache, "CreateTunnel", "b", "body", call);
  Call(cache, "CreateTunnel", "c", "body", call);
  ASSERT_EQ(call.calls(), 3);

  EXPECT_EQ(Call(cache, "CreateTunnel", "c", "body", call).second, "answer 3");
  EXPECT_EQ(Call(cache, "CreateTunnel", "b", "body", call).second, "answer 2");
  EXPECT_EQ(call.calls(), 3) << "the two newest are remembered";
  EXPECT_EQ(Call(cache, "CreateTunnel", "a", "body", call).second, "answer 4")
      << "the oldest was forgotten";
  EXPECT_EQ(call.calls(), 4);
}

TEST(IdempotencyCacheTest, IdLongerThan128CharactersIsInvalidArgument) {
  IdempotencyCache cache;
  CountingCall call;
  auto too_long = Call(cache, "CreateTunnel", std::string(129, 'x'), "body", call);
  EXPECT_EQ(too_long.first.code(), absl::StatusCode::kInvalidArgument) << too_long.first;
  EXPECT_THAT(std::string(too_long.first.message()), HasSubstr("128"));
  EXPECT_EQ(call.calls(), 0);

  EXPECT_TRUE(Call(cache, "CreateTunnel", std::string(128, 'x'), "body", call).first.ok());
  EXPECT_EQ(call.calls(), 1);
}

TEST(IdempotencyCacheTest, ARetryRacingTheOriginalWaitsForItsAnswer) {
  IdempotencyCache cache;
  absl::Notification started;
  absl::Notification release;
  std::atomic<int> calls{0};
  auto slow = [&](std::string* out) {
    if (++calls == 1) started.Notify();
    release.WaitForNotification();
    *out = "slow answer";
    return absl::OkStatus();
  };
  std::string first;
  std::thread original(
      [&] { cache.Run("CreateTunnel", "id-1", "body", &first, slow).IgnoreError(); });
  started.WaitForNotification();
  std::string second;
  std::thread retry(
      [&] { cache.Run("CreateTunnel", "id-1", "body", &second, slow).IgnoreError(); });
  absl::SleepFor(absl::Milliseconds(20));
  release.Notify();
  original.join();
  retry.join();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(first, "slow answer");
  EXPECT_EQ(second, "slow answer");
}

}  // namespace
}  // namespace tunnelagent::agent
