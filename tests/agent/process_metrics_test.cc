#include "agent/process_metrics.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace tunnelagent::agent {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// name -> value of every family (each has one unlabelled sample).
std::map<std::string, double> Values(const ProcessMetrics& metrics) {
  std::map<std::string, double> values;
  for (const prometheus::MetricFamily& family : metrics.Collect()) {
    EXPECT_EQ(family.metric.size(), 1u) << family.name;
    if (family.metric.empty()) continue;
    const prometheus::ClientMetric& m = family.metric[0];
    EXPECT_THAT(m.label, IsEmpty()) << family.name;
    values[family.name] =
        family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
  }
  return values;
}

// A procfs of our own: <root>/self/{stat,limits,fd/} and <root>/stat.
class ProcessMetricsTreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/process_metrics_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    fs::create_directories(root_ + "/self/fd");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  void Write(const std::string& path, const std::string& text) {
    std::ofstream(root_ + "/" + path) << text;
  }
  ProcessMetrics Metrics() const { return ProcessMetrics(root_ + "/self", root_ + "/stat"); }

  // Fields 14 (utime), 15 (stime), 20 (threads), 22 (starttime), 23 (vsize), 24 (rss) set;
  // comm with a space and a parenthesis, as a thread name may have.
  static std::string Stat(const std::string& comm) {
    return absl::StrCat("4242 (", comm,
                        ") S 1 4242 4242 0 -1 4194560 100 0 0 0 "
                        "250 150 0 0 20 0 7 0 360000 104857600 2560 18446744073709551615 1 1 0 0 "
                        "0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n");
  }
  static constexpr char kLimits[] =
      "Limit                     Soft Limit           Hard Limit           Units     \n"
      "Max cpu time              unlimited            unlimited            seconds   \n"
      "Max open files            1024                 524288               files     \n"
      "Max address space         unlimited            unlimited            bytes     \n";

  std::string root_;
};

TEST_F(ProcessMetricsTreeTest, EveryValueInItsBaseUnit) {
  Write("self/stat", Stat("tunnel-agent (x) y"));
  Write("self/limits", kLimits);
  for (int i = 0; i < 5; ++i) Write(absl::StrCat("self/fd/", i), "");
  Write("stat", "cpu  1 2 3 4\nintr 5\nbtime 1700000000\nprocesses 9\n");
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));

  std::map<std::string, double> values = Values(Metrics());
  EXPECT_DOUBLE_EQ(values["process_cpu_seconds_total"], 400 / ticks);
  EXPECT_EQ(values["process_open_fds"], 5);
  EXPECT_EQ(values["process_max_fds"], 1024);
  EXPECT_EQ(values["process_virtual_memory_bytes"], 104857600);
  EXPECT_EQ(values["process_virtual_memory_max_bytes"], std::numeric_limits<double>::infinity());
  EXPECT_EQ(values["process_resident_memory_bytes"], 2560 * page);
  EXPECT_DOUBLE_EQ(values["process_start_time_seconds"], 1700000000 + 360000 / ticks);
  EXPECT_EQ(values["process_threads"], 7);
  EXPECT_EQ(values.size(), 8u);
}

TEST_F(ProcessMetricsTreeTest, TypesAndHelpAsTheOtherClientLibraries) {
  Write("self/stat", Stat("agent"));
  Write("self/limits", kLimits);
  Write("stat", "btime 1700000000\n");
  const std::string text = prometheus::TextSerializer().Serialize(Metrics().Collect());
  for (const char* line :
       {"# TYPE process_cpu_seconds_total counter", "# TYPE process_open_fds gauge",
        "# TYPE process_max_fds gauge", "# TYPE process_virtual_memory_bytes gauge",
        "# TYPE process_resident_memory_bytes gauge", "# TYPE process_start_time_seconds gauge",
        "# TYPE process_threads gauge",
        "# HELP process_open_fds Number of open file descriptors."}) {
    EXPECT_THAT(text, HasSubstr(line));
  }
}

// What cannot be read is left out, never exported as 0 (which an alert would take for real);
// nothing throws or crashes.
TEST_F(ProcessMetricsTreeTest, UnreadableOrGarbledFilesLeaveTheirSeriesOut) {
  // Nothing but an empty fd/ directory.
  EXPECT_THAT(Values(Metrics()), UnorderedElementsAre(std::pair("process_open_fds", 0.0)));

  Write("self/limits",
        "Max open files            lots                 524288               files\n");
  Write("stat", "btime soon\n");
  for (const std::string& stat :
       {std::string(""), std::string("4242 agent S 1"), std::string("4242 (agent) S 1 2 3"),
        std::string("4242 (agent) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 150 0 0 20 0 7 0 360000 "
                    "104857600 2560"),
        std::string(4096, ')')}) {
    Write("self/stat", stat);
    EXPECT_THAT(Values(Metrics()), UnorderedElementsAre(std::pair("process_open_fds", 0.0)))
        << stat;
  }

  // A readable stat without a boot time: everything but the start time.
  Write("self/stat", Stat("agent"));
  std::map<std::string, double> values = Values(Metrics());
  EXPECT_EQ(values.count("process_start_time_seconds"), 0u);
  EXPECT_EQ(values.count("process_max_fds"), 0u);
  EXPECT_EQ(values.count("process_resident_memory_bytes"), 1u);

  fs::remove_all(root_ + "/self/fd");
  EXPECT_EQ(Values(Metrics()).count("process_open_fds"), 0u);
}

// The real /proc of this test process: values that follow what the process does.
TEST(ProcessMetricsTest, ThisProcess) {
  ProcessMetrics metrics;
  std::map<std::string, double> before = Values(metrics);
  for (const char* name : {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                           "process_virtual_memory_bytes", "process_resident_memory_bytes",
                           "process_start_time_seconds", "process_threads"}) {
    EXPECT_EQ(before.count(name), 1u) << name;
  }
  rlimit nofile{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  EXPECT_EQ(before["process_max_fds"], static_cast<double>(nofile.rlim_cur));
  EXPECT_GT(before["process_resident_memory_bytes"], 0);
  EXPECT_GE(before["process_virtual_memory_bytes"], before["process_resident_memory_bytes"]);
  EXPECT_GE(before["process_threads"], 1);
  // Started before now, and not before this test binary was built (within a day).
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  EXPECT_LE(before["process_start_time_seconds"], now + 1);
  EXPECT_GT(before["process_start_time_seconds"], now - 86400);

  // Ten more descriptors are seen as ten more.
  int fds[10];
  for (int& fd : fds) {
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
  }
  EXPECT_EQ(Values(metrics)["process_open_fds"], before["process_open_fds"] + 10);
  for (int fd : fds) close(fd);

  // Burning CPU is seen in the counter (it ticks at 1/USER_HZ, 10 ms).
  const absl::Time until = absl::Now() + absl::Milliseconds(100);
  volatile uint64_t spin = 0;
  while (absl::Now() < until) spin = spin + 1;
  EXPECT_GT(Values(metrics)["process_cpu_seconds_total"], before["process_cpu_seconds_total"]);
}

}  // namespace
}  // namespace tunnelagent::agent
