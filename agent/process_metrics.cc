#include "agent/process_metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace tunnelagent::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return std::move(text).str();
}

// The fields of /proc/<pid>/stat this collector uses, in their raw units.
struct ProcStat {
  double utime_ticks = 0;
  double stime_ticks = 0;
  double threads = 0;
  double start_ticks = 0;  // after boot
  double vsize_bytes = 0;
  double rss_pages = 0;
};

// proc(5): "pid (comm) state ppid ...". comm may hold spaces and parentheses, so the fields are
// counted from the last ')'; the token after it is field 3 (state).
std::optional<ProcStat> ParseStat(absl::string_view text) {
  const size_t paren = text.rfind(')');
  if (paren == absl::string_view::npos) return std::nullopt;
  const std::vector<absl::string_view> fields =
      absl::StrSplit(text.substr(paren + 1), ' ', absl::SkipWhitespace());
  // Field n (1-based, as proc(5) numbers them) is fields[n - 3].
  auto field = [&](size_t n, double& out) {
    uint64_t value = 0;
    if (n - 3 >= fields.size() || !absl::SimpleAtoi(fields[n - 3], &value)) return false;
    out = static_cast<double>(value);
    return true;
  };
  ProcStat stat;
  if (!field(14, stat.utime_ticks) || !field(15, stat.stime_ticks) || !field(20, stat.threads) ||
      !field(22, stat.start_ticks) || !field(23, stat.vsize_bytes) || !field(24, stat.rss_pages)) {
    return std::nullopt;
  }
  return stat;
}

// The soft limit of the /proc/<pid>/limits line starting with `name` ("Max open files"), +Inf
// for "unlimited".
std::optional<double> SoftLimit(absl::string_view limits, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(limits, '\n')) {
    if (!absl::ConsumePrefix(&line, name)) continue;
    const std::vector<absl::string_view> values = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (values.empty()) return std::nullopt;
    if (values[0] == "unlimited") return std::numeric_limits<double>::infinity();
    uint64_t value = 0;
    if (!absl::SimpleAtoi(values[0], &value)) return std::nullopt;
    return static_cast<double>(value);
  }
  return std::nullopt;
}

// Seconds since the epoch at which the system booted ("btime" of /proc/stat).
std::optional<double> BootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    uint64_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value)) return std::nullopt;
    return static_cast<double>(value);
  }
  return std::nullopt;
}

// Entries of fd/: one per open descriptor (the directory's own, open while counting, included,
// as the other client libraries count it).
std::optional<double> CountOpenFds(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return std::nullopt;
  double count = 0;
  while (const dirent* entry = readdir(d)) {
    if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0) ++count;
  }
  closedir(d);
  return count;
}

void AddFamily(std::vector<MetricFamily>& families, std::string name, std::string help,
               MetricType type, double value) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  ClientMetric metric;
  if (type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  families.push_back(std::move(family));
}

double SysconfOr(int name, double fallback) {
  const long value = sysconf(name);
  return value > 0 ? static_cast<double>(value) : fallback;
}

}  // namespace

ProcessMetrics::ProcessMetrics(std::string proc_self, std::string proc_stat)
    : proc_self_(std::move(proc_self)),
      proc_stat_(std::move(proc_stat)),
      // Linux has had USER_HZ 100 and 4 KiB pages on every common architecture; sysconf only
      // fails on a broken libc.
      ticks_per_second_(SysconfOr(_SC_CLK_TCK, 100)),
      page_size_(SysconfOr(_SC_PAGESIZE, 4096)) {}

std::vector<MetricFamily> ProcessMetrics::Collect() const {
  std::vector<MetricFamily> families;
  const std::optional<std::string> stat_text = ReadFile(proc_self_ + "/stat");
  const std::optional<ProcStat> stat =
      stat_text ? ParseStat(*stat_text) : std::optional<ProcStat>();
  if (stat) {
    AddFamily(families, "process_cpu_seconds_total",
              "Total user and system CPU time spent in seconds.", MetricType::Counter,
              (stat->utime_ticks + stat->stime_ticks) / ticks_per_second_);
  }
  if (std::optional<double> open = CountOpenFds(proc_self_ + "/fd")) {
    AddFamily(families, "process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
              *open);
  }
  const std::optional<std::string> limits = ReadFile(proc_self_ + "/limits");
  if (std::optional<double> max = limits ? SoftLimit(*limits, "Max open files") : std::nullopt) {
    AddFamily(families, "process_max_fds", "Maximum number of open file descriptors.",
              MetricType::Gauge, *max);
  }
  if (stat) {
    AddFamily(families, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
              MetricType::Gauge, stat->vsize_bytes);
  }
  if (std::optional<double> max = limits ? SoftLimit(*limits, "Max address space") : std::nullopt) {
    AddFamily(families, "process_virtual_memory_max_bytes",
              "Maximum amount of virtual memory available in bytes.", MetricType::Gauge, *max);
  }
  if (stat) {
    AddFamily(families, "process_resident_memory_bytes", "Resident memory size in bytes.",
              MetricType::Gauge, stat->rss_pages * page_size_);
    const std::optional<std::string> system = ReadFile(proc_stat_);
    if (std::optional<double> boot = system ? BootTime(*system) : std::nullopt) {
      AddFamily(families, "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
                *boot + stat->start_ticks / ticks_per_second_);
    }
    AddFamily(families, "process_threads", "Number of OS threads in the process.",
              MetricType::Gauge, stat->threads);
  }
  return families;
}

}  // namespace tunnelagent::agent
