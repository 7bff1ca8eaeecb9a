#include "dataplane/cpu_affinity.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {
namespace {

absl::StatusOr<int> ParseCpu(absl::string_view text) {
  int cpu = -1;
  // SimpleAtoi takes a sign and spaces; a CPU number is digits only.
  if (text.empty() ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(text, &cpu)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a CPU number"));
  }
  if (cpu >= CPU_SETSIZE) {
    return absl::InvalidArgumentError(
        absl::StrCat("CPU ", cpu, " is past the limit of ", CPU_SETSIZE - 1));
  }
  return cpu;
}

}  // namespace

absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty CPU list");
  std::vector<int> cpus;
  std::vector<bool> seen(CPU_SETSIZE, false);
  for (absl::string_view element : absl::StrSplit(text, ',')) {
    const size_t dash = element.find('-');
    absl::StatusOr<int> first = ParseCpu(element.substr(0, dash));
    if (!first.ok()) return first.status();
    int last = *first;
    if (dash != absl::string_view::npos) {
      absl::StatusOr<int> end = ParseCpu(element.substr(dash + 1));
      if (!end.ok()) return end.status();
      if (*end < *first) {
        return absl::InvalidArgumentError(absl::StrCat("range '", element, "' runs backwards"));
      }
      last = *end;
    }
    for (int cpu = *first; cpu <= last; ++cpu) {
      if (seen[static_cast<size_t>(cpu)]) {
        return absl::InvalidArgumentError(absl::StrCat("CPU ", cpu, " appears twice"));
      }
      seen[static_cast<size_t>(cpu)] = true;
      cpus.push_back(cpu);
    }
  }
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    absl::StrAppend(&out, out.empty() ? "" : ",", cpus[i]);
    if (j > i) absl::StrAppend(&out, "-", cpus[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

absl::Status CheckCpusAllowed(const std::vector<int>& cpus) {
  const std::vector<int> allowed = AllowedCpus();
  for (int cpu : cpus) {
    if (!std::binary_search(allowed.begin(), allowed.end(), cpu)) {
      return absl::InvalidArgumentError(
          absl::StrCat("CPU ", cpu, " is not one this process may run on (allowed: ",
                       allowed.empty() ? "unknown" : FormatCpuList(allowed), ")"));
    }
  }
  return absl::OkStatus();
}

namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The limit one cgroup directory sets, if any: cgroup v2's cpu.max ("max 100000" or "150000
// 100000"), else v1's cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us.
std::optional<double> DirectoryCpuLimit(const std::string& dir, bool v2) {
  int64_t quota = 0;
  int64_t period = 0;
  if (v2) {
    std::optional<std::string> max = ReadFile(dir + "/cpu.max");
    if (!max) return std::nullopt;
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::StripAsciiWhitespace(*max), ' ', absl::SkipEmpty());
    if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &quota) ||
        !absl::SimpleAtoi(fields[1], &period)) {
      return std::nullopt;  // "max": no limit
    }
  } else {
    std::optional<std::string> q = ReadFile(dir + "/cpu.cfs_quota_us");
    std::optional<std::string> p = ReadFile(dir + "/cpu.cfs_period_us");
    if (!q || !p || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*q), &quota) ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(*p), &period)) {
      return std::nullopt;
    }
  }
  if (quota <= 0 || period <= 0) return std::nullopt;
  return static_cast<double>(quota) / static_cast<double>(period);
}

}  // namespace

std::optional<double> CgroupCpuLimit(const std::string& root) {
  std::optional<std::string> cgroups = ReadFile(root + "/proc/self/cgroup");
  std::optional<std::string> mounts = ReadFile(root + "/proc/self/mountinfo");
  if (!cgroups || !mounts) return std::nullopt;
  // This process's cgroup: v1's cpu hierarchy where there is one, else v2's unified one
  // ("0::/path"). A hybrid machine keeps the cpu controller on v1.
  std::string v1_path;
  std::string v2_path;
  bool has_v1 = false;
  bool has_v2 = false;
  for (absl::string_view line : absl::StrSplit(*cgroups, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) {
      has_v2 = true;
      v2_path = std::string(f[2]);
    }
    for (absl::string_view controller : absl::StrSplit(f[1], ',')) {
      if (controller == "cpu") {
        has_v1 = true;
        v1_path = std::string(f[2]);
      }
    }
  }
  // Where that hierarchy is mounted, and which of its paths the mount's root is (inside a
  // container with its own cgroup namespace, "/").
  std::string mount_point;
  std::string mount_root;
  bool v2 = false;
  for (absl::string_view line : absl::StrSplit(*mounts, '\n', absl::SkipEmpty())) {
    const size_t dash = line.find(" - ");
    if (dash == absl::string_view::npos) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line.substr(0, dash), ' ');
    std::vector<absl::string_view> tail =
        absl::StrSplit(line.substr(dash + 3), ' ', absl::SkipEmpty());
    if (f.size() < 5 || tail.size() < 3) continue;
    bool match = false;
    if (has_v1 && tail[0] == "cgroup") {
      for (absl::string_view option : absl::StrSplit(tail[2], ',')) match |= option == "cpu";
    }
    const bool unified = !has_v1 && has_v2 && tail[0] == "cgroup2";
    if (match || unified) {
      mount_root = std::string(f[3]);
      mount_point = std::string(f[4]);
      v2 = unified;
      break;
    }
  }
  if (mount_point.empty()) return std::nullopt;
  std::string path = v2 ? v2_path : v1_path;
  if (mount_root != "/" && absl::StartsWith(path, mount_root)) {
    path = path.substr(mount_root.size());
  } else if (mount_root != "/") {
    return std::nullopt;  // our cgroup is outside what is mounted
  }
  // From our cgroup up to the mount's root, the smallest limit.
  std::optional<double> limit;
  std::string relative = std::string(absl::StripSuffix(path, "/"));
  for (;;) {
    if (std::optional<double> here = DirectoryCpuLimit(root + mount_point + relative, v2)) {
      limit = limit ? std::min(*limit, *here) : *here;
    }
    if (relative.empty()) break;
    relative = relative.substr(0, relative.rfind('/'));
  }
  return limit;
}

int WorkerCpu(const std::vector<int>& cpus, unsigned worker) {
  return cpus.empty() ? -1 : cpus[worker % cpus.size()];
}

absl::Status SetUpWorkerThread(unsigned worker, int cpu) {
  // At most 15 characters: "dataplane-" and up to five digits.
  const std::string name = absl::StrCat("dataplane-", worker % 100000);
  pthread_setname_np(pthread_self(), name.c_str());
  if (cpu < 0) return absl::OkStatus();
  if (cpu >= CPU_SETSIZE) return absl::InvalidArgumentError(absl::StrCat("no CPU ", cpu));
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set); err != 0) {
    return ErrnoStatus(err, absl::StrCat("pinning dataplane worker ", worker, " to CPU ", cpu));
  }
  return absl::OkStatus();
}

}  // namespace tunnelagent::dataplane
