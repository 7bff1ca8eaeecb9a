#include "dataplane/cpu_affinity.h"

#include <sched.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <optional>
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

// A fake filesystem root for CgroupCpuLimit: files written under a fresh directory.
class FakeRoot {
 public:
  FakeRoot() {
    char dir[] = "/tmp/cgroup-test.XXXXXX";
    root_ = mkdtemp(dir) != nullptr ? dir : "";
  }
  ~FakeRoot() { std::filesystem::remove_all(root_); }
  void Write(const std::string& path, const std::string& text) const {
    std::filesystem::create_directories(std::filesystem::path(root_ + path).parent_path());
    std::ofstream(root_ + path) << text;
  }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

constexpr char kV1Mounts[] =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
constexpr char kV2Mounts[] =
    "20 1 0:18 / / rw - ext4 /dev/root rw\n"
    "30 20 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

// cgroup v1 (the cpu controller on its own hierarchy, as on a hybrid machine): the smallest
// quota along the path counts, -1 is none.
TEST(CgroupCpuLimitTest, V1QuotaAlongThePath) {
  FakeRoot fs;
  fs.Write("/proc/self/cgroup",
           "4:memory:/kubepods/pod1/c1\n1:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n");
  fs.Write("/proc/self/mountinfo", kV1Mounts);
  const std::string leaf = "/sys/fs/cgroup/cpu/kubepods/pod1/c1";
  fs.Write(leaf + "/cpu.cfs_quota_us", "150000\n");
  fs.Write(leaf + "/cpu.cfs_period_us", "100000\n");
  fs.Write("/sys/fs/cgroup/cpu/kubepods/cpu.cfs_quota_us", "-1\n");
  fs.Write("/sys/fs/cgroup/cpu/kubepods/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), 1.5);
  fs.Write("/sys/fs/cgroup/cpu/kubepods/pod1/cpu.cfs_quota_us", "100000\n");
  fs.Write("/sys/fs/cgroup/cpu/kubepods/pod1/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), 1.0);
  fs.Write(leaf + "/cpu.cfs_quota_us", "-1\n");
  fs.Write("/sys/fs/cgroup/cpu/kubepods/pod1/cpu.cfs_quota_us", "-1\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), std::nullopt);
}

// cgroup v2: cpu.max, "max" for none; also from inside a cgroup namespace ("0::/").
TEST(CgroupCpuLimitTest, V2CpuMax) {
  FakeRoot fs;
  fs.Write("/proc/self/cgroup", "0::/kubepods.slice/pod.slice/cri.scope\n");
  fs.Write("/proc/self/mountinfo", kV2Mounts);
  fs.Write("/sys/fs/cgroup/kubepods.slice/pod.slice/cri.scope/cpu.max", "max 100000\n");
  fs.Write("/sys/fs/cgroup/kubepods.slice/pod.slice/cpu.max", "250000 100000\n");
  fs.Write("/sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), 2.5);
  FakeRoot ns;
  ns.Write("/proc/self/cgroup", "0::/\n");
  ns.Write("/proc/self/mountinfo", kV2Mounts);
  ns.Write("/sys/fs/cgroup/cpu.max", "50000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(ns.root()), 0.5);
}

// A v1 container without its own cgroup namespace: the mount's root is the container's
// cgroup, which /proc/self/cgroup names in full.
TEST(CgroupCpuLimitTest, MountRootIsStrippedFromThePath) {
  FakeRoot fs;
  fs.Write("/proc/self/cgroup", "1:cpu:/docker/abc\n");
  fs.Write("/proc/self/mountinfo",
           "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n");
  fs.Write("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "300000");
  fs.Write("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), 3.0);
}

TEST(CgroupCpuLimitTest, NothingReadableIsNoLimit) {
  FakeRoot fs;
  EXPECT_EQ(CgroupCpuLimit(fs.root()), std::nullopt);  // no /proc at all
  fs.Write("/proc/self/cgroup", "garbage\n");
  fs.Write("/proc/self/mountinfo", "also garbage\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), std::nullopt);
  fs.Write("/proc/self/cgroup", "0::/x\n");
  fs.Write("/proc/self/mountinfo", kV2Mounts);
  fs.Write("/sys/fs/cgroup/x/cpu.max", "lots 100000\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), std::nullopt);
  fs.Write("/sys/fs/cgroup/x/cpu.max", "0 100000\n");
  EXPECT_EQ(CgroupCpuLimit(fs.root()), std::nullopt);
}

}  // namespace
}  // namespace tunnelagent::dataplane
