// Minimal structured-enough logging to stderr (Abseil 20220623 has no absl/log): one line per
// event, UTC timestamp, severity, message. Kubernetes and journald collect stderr.
#ifndef TUNNELAGENT_AGENT_LOG_H_
#define TUNNELAGENT_AGENT_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {

template <typename... Args>
void Log(const char* severity, const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
                   severity, " ", absl::StrFormat(format, args...), "\n");
  fputs(line.c_str(), stderr);
}

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_LOG_H_
