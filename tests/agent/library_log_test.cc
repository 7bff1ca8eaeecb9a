// The rate limiter of the libraries' log lines.
#include "agent/library_log.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

LogRateLimiter::Options Limit(int lines, absl::Duration window, size_t keys = 1024) {
  LogRateLimiter::Options options;
  options.lines_per_window = lines;
  options.window = window;
  options.max_keys = keys;
  return options;
}

TEST(LogRateLimiterTest, PrintsNPerWindowThenReportsWhatItSuppressed) {
  LogRateLimiter limiter(Limit(3, absl::Minutes(1)));
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  int printed = 0;
  for (int i = 0; i < 100; ++i) {
    LogRateLimiter::Decision d = limiter.Admit("parse.cc:12", t0 + absl::Milliseconds(i));
    EXPECT_EQ(d.suppressed_before, 0u);
    printed += d.print;
  }
  EXPECT_EQ(printed, 3);
  // Still inside the window: nothing.
  EXPECT_FALSE(limiter.Admit("parse.cc:12", t0 + absl::Seconds(59)).print);
  // The next window: printed, after a summary of the 98 lines suppressed.
  LogRateLimiter::Decision next = limiter.Admit("parse.cc:12", t0 + absl::Seconds(60));
  EXPECT_TRUE(next.print);
  EXPECT_EQ(next.suppressed_before, 98u);
  // Reported once.
  next = limiter.Admit("parse.cc:12", t0 + absl::Seconds(61));
  EXPECT_TRUE(next.print);
  EXPECT_EQ(next.suppressed_before, 0u);
}

TEST(LogRateLimiterTest, EachSourceLocationHasItsOwnBudget) {
  LogRateLimiter limiter(Limit(1, absl::Minutes(1)));
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  EXPECT_TRUE(limiter.Admit("a.cc:1", t0).print);
  EXPECT_FALSE(limiter.Admit("a.cc:1", t0).print);
  EXPECT_TRUE(limiter.Admit("b.cc:2", t0).print);
  EXPECT_FALSE(limiter.Admit("b.cc:2", t0).print);
}

TEST(LogRateLimiterTest, LocationsBeyondTheLimitShareOneBudget) {
  LogRateLimiter limiter(Limit(2, absl::Minutes(1), /*keys=*/3));
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  for (const char* key : {"a:1", "b:1", "c:1"}) EXPECT_TRUE(limiter.Admit(key, t0).print);
  // Every further location: two lines between them, then nothing.
  int printed = 0;
  for (int i = 0; i < 50; ++i) printed += limiter.Admit(absl::StrCat("new:", i), t0).print;
  EXPECT_EQ(printed, 2);
  // The first three keep their own budget.
  EXPECT_TRUE(limiter.Admit("a:1", t0).print);
}

TEST(LogRateLimiterTest, ManyThreadsNeverPrintMoreThanTheBudget) {
  LogRateLimiter limiter(Limit(5, absl::Hours(1)));
  std::atomic<int> printed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) printed += limiter.Admit("x.cc:9", absl::Now()).print;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(printed.load(), 5);
}

}  // namespace
}  // namespace tunnelagent::agent
