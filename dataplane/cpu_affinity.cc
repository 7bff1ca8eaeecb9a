#include "dataplane/cpu_affinity.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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
