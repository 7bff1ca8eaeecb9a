#include "dataplane/cpu_affinity.h"

#include <sched.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tunnelagent::dataplane {
namespace {

TEST(CpuListTest, ParsesNumbersAndRangesInOrder) {
  EXPECT_EQ(*ParseCpuList("0"), (std::vector<int>{0}));
  EXPECT_EQ(*ParseCpuList("0-3"), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(*ParseCpuList("8,2-3,5"), (std::vector<int>{8, 2, 3, 5}));
  EXPECT_EQ(*ParseCpuList("4-4"), (std::vector<int>{4}));
  EXPECT_EQ(*ParseCpuList("1023"), (std::vector<int>{1023}));
}

TEST(CpuListTest, RefusesWhatIsNotACpuList) {
  for (const char* bad : {"", ",", "1,", ",1", "a", "1-", "-1", "3-1", "1,1", "0-2,2", " 1", "1 ",
                          "+1", "1.5", "0x1", "1024", "0-1024", "99999999999"}) {
    absl::StatusOr<std::vector<int>> cpus = ParseCpuList(bad);
    EXPECT_EQ(cpus.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  EXPECT_NE(ParseCpuList("3-1").status().message().find("backwards"), std::string::npos);
  EXPECT_NE(ParseCpuList("1,1").status().message().find("twice"), std::string::npos);
}

TEST(CpuListTest, FormatsRunsAsRanges) {
  EXPECT_EQ(FormatCpuList({}), "");
  EXPECT_EQ(FormatCpuList({3}), "3");
  EXPECT_EQ(FormatCpuList({0, 1, 2, 5}), "0-2,5");
  EXPECT_EQ(FormatCpuList({5, 6, 0, 1}), "5-6,0-1");
  EXPECT_EQ(*ParseCpuList(FormatCpuList({0, 2, 3, 4, 9})), (std::vector<int>{0, 2, 3, 4, 9}));
}

TEST(CpuListTest, WorkersGoRoundTheList) {
  EXPECT_EQ(WorkerCpu({}, 0), -1);
  EXPECT_EQ(WorkerCpu({4, 6}, 0), 4);
  EXPECT_EQ(WorkerCpu({4, 6}, 1), 6);
  EXPECT_EQ(WorkerCpu({4, 6}, 2), 4);
}

TEST(CpuListTest, AllowedCpusAreTheProcessAffinity) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const std::vector<int> allowed = AllowedCpus();
  EXPECT_EQ(allowed.size(), static_cast<size_t>(CPU_COUNT(&set)));
  EXPECT_TRUE(CheckCpusAllowed(allowed).ok());
  EXPECT_TRUE(CheckCpusAllowed({}).ok());
  absl::Status past = CheckCpusAllowed({allowed.front(), 1023});
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.message().find("CPU 1023 is not one this process may run on (allowed: "),
            std::string::npos)
      << past;
}

}  // namespace
}  // namespace tunnelagent::dataplane
