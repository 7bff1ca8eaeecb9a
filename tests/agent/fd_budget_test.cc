#include "agent/fd_budget.h"

#include <errno.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "dataplane/errno_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

size_t OpenNow() {
  absl::StatusOr<size_t> open = CountOpenDescriptors();
  EXPECT_TRUE(open.ok()) << open.status();
  return open.value_or(0);
}

TEST(CountOpenDescriptorsTest, CountsWhatTheProcessOpens) {
  const size_t before = OpenNow();
  std::vector<int> fds;
  for (int i = 0; i < 5; ++i) {
    int pair[2];
    ASSERT_EQ(pipe(pair), 0);
    fds.push_back(pair[0]);
    fds.push_back(pair[1]);
  }
  EXPECT_EQ(OpenNow(), before + 10);
  for (int fd : fds) close(fd);
  EXPECT_EQ(OpenNow(), before);
}

TEST(CountOpenDescriptorsTest, MissingDirectoryIsAnError) {
  EXPECT_FALSE(CountOpenDescriptors("/nonexistent/fd").ok());
}

TEST(ApiConnectionsForTest, AQuarterOfTheLimitAtMostAndNeverFewerThanEight) {
  EXPECT_EQ(ApiConnectionsFor(1 << 20, 512), 512u);
  EXPECT_EQ(ApiConnectionsFor(1024, 512), 256u);
  EXPECT_EQ(ApiConnectionsFor(256, 512), 64u);
  EXPECT_EQ(ApiConnectionsFor(16, 512), 8u);
}

// A budget whose limit is the open descriptors now plus `spare`.
FdBudget BudgetWithSpare(size_t spare, size_t api, size_t own, size_t per_tunnel,
                         size_t api_in_use = 0) {
  const size_t open = OpenNow();
  return FdBudget({.api_connections = api,
                   .own_reserve = own,
                   .per_tunnel = per_tunnel,
                   .limit = [open, spare] { return static_cast<uint64_t>(open + spare); },
                   .api_in_use = [api_in_use] { return api_in_use; }});
}

TEST(FdBudgetTest, ATunnelFitsWhileTheReserveStaysFree) {
  // 10 + 20 reserved, a tunnel of 2: 32 spare is just enough, 31 is not.
  EXPECT_TRUE(BudgetWithSpare(32, 10, 20, 2).CheckTunnel().ok());
  absl::Status short_by_one = BudgetWithSpare(31, 10, 20, 2).CheckTunnel();
  EXPECT_EQ(short_by_one.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(short_by_one.message(),
              AllOf(HasSubstr("file descriptors are short"), HasSubstr("a tunnel needs 2"),
                    HasSubstr("30 are reserved"), HasSubstr("RLIMIT_NOFILE")));
}

TEST(FdBudgetTest, ConnectionsOpenAreCountedOnce) {
  // 4 of the API's 10 places are taken: their descriptors are open already, so 6 of the
  // reserve remain to be kept free.
  EXPECT_TRUE(BudgetWithSpare(28, 10, 20, 2, /*api_in_use=*/4).CheckTunnel().ok());
  EXPECT_FALSE(BudgetWithSpare(27, 10, 20, 2, /*api_in_use=*/4).CheckTunnel().ok());
  // More in use than the cap (never, but): no negative reserve.
  EXPECT_FALSE(BudgetWithSpare(21, 10, 20, 2, /*api_in_use=*/50).CheckTunnel().ok());
}

// A directory standing for /proc/self/fd: its entries are what a budget counts, so a test
// sees when it counted. Made empty, removed at the end.
class FdDirectory {
 public:
  explicit FdDirectory(const std::string& name) : path_(::testing::TempDir() + "/" + name) {
    EXPECT_EQ(system(("rm -rf " + path_ + " && mkdir -p " + path_).c_str()), 0);
  }
  ~FdDirectory() { EXPECT_EQ(system(("rm -rf " + path_).c_str()), 0); }
  const std::string& path() const { return path_; }
  // `n` more entries: n more descriptors open, to the budget.
  void Open(int n) {
    for (int i = 0; i < n; ++i) std::ofstream(path_ + "/" + std::to_string(entries_++)).put('x');
  }

 private:
  const std::string path_;
  int entries_ = 0;
};

TEST(FdBudgetTest, CountsOnlyNearTheLimitOrNowAndThen) {
  FdDirectory fds("fd_budget_count");
  fds.Open(11);  // 10 open (the directory's own descriptor is listed too)
  uint64_t limit = 1000;
  FdBudget::Options options;
  options.api_connections = 10;
  options.own_reserve = 20;
  options.fd_dir = fds.path();
  options.limit = [&limit] { return limit; };
  FdBudget budget(options);
  ASSERT_TRUE(budget.CheckTunnel().ok());  // counted: 10 open
  // 100 tunnels, one descriptor each: the estimate (last count + what was let in since + the
  // reserve) stays below half the limit, so nothing is counted. Descriptors opened behind the
  // budget's back show that: with a real count the check below would refuse.
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(budget.CheckTunnel().ok()) << i;
    fds.Open(1);
  }
  fds.Open(400);  // 510 open now
  limit = 530;    // a real count would need 510 + 1 + 30
  EXPECT_TRUE(budget.CheckTunnel().ok()) << "trusted the estimate";
  // Near the limit the estimate is not trusted: the real count refuses.
  limit = 250;
  EXPECT_EQ(budget.CheckTunnel().code(), absl::StatusCode::kResourceExhausted);
  // Once refused, the next check counts again: room made shows at once.
  limit = 542;
  EXPECT_TRUE(budget.CheckTunnel().ok());
  // Past half the limit but with a quarter to spare, counted every 128 checks, not at each:
  // 510 open of 900, and 400 more opened behind the budget's back, which only a count sees.
  limit = 900;
  fds.Open(400);
  for (int i = 0; i < 127; ++i) ASSERT_TRUE(budget.CheckTunnel().ok()) << "trusted, " << i;
  EXPECT_EQ(budget.CheckTunnel().code(), absl::StatusCode::kResourceExhausted) << "counted";
}

// Past half the limit, a recount beside the requests (the monitor's) spares them the count they
// would make every 128 checks; what it counts, they see.
TEST(FdBudgetTest, ARecountBesideTheRequestsSparesThemTheirCount) {
  FdDirectory fds("fd_budget_recount");
  fds.Open(601);  // 600 open of 1,000: past half
  FdBudget::Options options;
  options.own_reserve = 20;
  options.fd_dir = fds.path();
  options.limit = [] { return 1000; };
  FdBudget budget(options);
  ASSERT_TRUE(budget.CheckTunnel().ok());  // counted: 600 open
  budget.Recount();                        // counted again beside the requests: fresh
  // 400 more behind the budget's back (1,000 open: a count would refuse). The 129 checks after
  // the recount trust it: on its own the 129th would count, as checks do every 128 past half
  // the limit (its estimate, 600 + 20 + 129, still within the three quarters it trusts).
  fds.Open(400);
  for (int i = 0; i < 129; ++i) ASSERT_TRUE(budget.CheckTunnel().ok()) << "trusted, " << i;
  // The next recount sees them, and the check that follows counts and refuses.
  budget.Recount();
  EXPECT_EQ(budget.CheckTunnel().code(), absl::StatusCode::kResourceExhausted);
}

TEST(FdBudgetTest, TheProcessWideCheckUsesTheBudgetSet) {
  EXPECT_TRUE(CheckTunnelFdBudget().ok()) << "none set: no check";
  FdBudget none_left = BudgetWithSpare(0, 10, 20, 1);
  SetTunnelFdBudget(&none_left);
  EXPECT_EQ(CheckTunnelFdBudget().code(), absl::StatusCode::kResourceExhausted);
  SetTunnelFdBudget(nullptr);
  EXPECT_TRUE(CheckTunnelFdBudget().ok());
}

// The soft RLIMIT_NOFILE a little above what is open, for the scope; the limits as they were
// after it.
class LoweredFileLimit {
 public:
  LoweredFileLimit() {
    EXPECT_EQ(getrlimit(RLIMIT_NOFILE, &saved_), 0);
    rlimit lower = saved_;
    lower.rlim_cur = std::min<rlim_t>(saved_.rlim_max, OpenNow() + 64);
    EXPECT_EQ(setrlimit(RLIMIT_NOFILE, &lower), 0);
    soft_ = lower.rlim_cur;
  }
  ~LoweredFileLimit() { setrlimit(RLIMIT_NOFILE, &saved_); }
  rlim_t soft() const { return soft_; }
  rlim_t hard() const { return saved_.rlim_max; }

 private:
  rlimit saved_{};
  rlim_t soft_ = 0;
};

TEST(RaiseFileLimitTest, SoftLimitGoesToTheHardLimit) {
  LoweredFileLimit lowered;
  absl::StatusOr<FileLimitChange> change = RaiseFileLimit();
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->before, lowered.soft());
  EXPECT_EQ(change->after, lowered.hard());
  EXPECT_EQ(FileLimit(), lowered.hard());
}

// The descriptor table's size, as /proc/self/status says it (FDSize).
uint64_t DescriptorTableSize() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("FDSize:", 0) == 0) return std::stoull(line.substr(7));
  }
  ADD_FAILURE() << "no FDSize in /proc/self/status";
  return 0;
}

TEST(GrowDescriptorTableTest, TheTableHoldsTheSlotsAskedForAndNoDescriptorIsLeftOpen) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  const uint64_t before = DescriptorTableSize();
  const uint64_t wanted = std::min<uint64_t>(saved.rlim_cur, before * 4);
  ASSERT_GT(wanted, before) << "the soft limit leaves no room to grow the table";
  const size_t open = OpenNow();
  absl::StatusOr<uint64_t> grown = GrowDescriptorTable(wanted);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(*grown, wanted);
  EXPECT_GE(DescriptorTableSize(), wanted);
  EXPECT_EQ(OpenNow(), open);
}

TEST(GrowDescriptorTableTest, NoFurtherThanTheLimit) {
  LoweredFileLimit lowered;
  absl::StatusOr<uint64_t> grown = GrowDescriptorTable(uint64_t{1} << 40);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(*grown, lowered.soft());
}

TEST(ErrnoStatusTest, OutOfDescriptorsIsResourceExhaustedSayingSo) {
  absl::Status emfile = dataplane::ErrnoStatus(EMFILE, "creating TUN device t1");
  EXPECT_EQ(emfile.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(emfile.message(),
              AllOf(HasSubstr("creating TUN device t1"), HasSubstr("out of file descriptors"),
                    HasSubstr("RLIMIT_NOFILE")));
  EXPECT_THAT(dataplane::ErrnoStatus(ENFILE, "x").message(), HasSubstr("fs.file-max"));
  EXPECT_EQ(dataplane::ErrnoCode(ENOBUFS), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(dataplane::ErrnoCode(ENOMEM), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace tunnelagent::agent
