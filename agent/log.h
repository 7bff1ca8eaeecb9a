// Logging to stderr (Abseil 20220623 has no absl/log): one line per event, UTC timestamp,
// severity, message, and for events an operator acts on (a change, a refused request, a state
// change, a repair) named fields. Kubernetes and journald collect stderr.
//
// --log_format=text: `2026-12-05T10:00:00.000Z INFO tunnel.create tunnel=gre1 result=OK`,
// values quoted when they hold a space, a quote or '='; --log_format=json: one JSON object a
// line, {"time":...,"level":...,"msg":...,"tunnel":"gre1",...}.
#ifndef TUNNELAGENT_AGENT_LOG_H_
#define TUNNELAGENT_AGENT_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::agent {

enum class LogFormat { kText, kJson };

// "text" or "json"; INVALID_ARGUMENT otherwise. Set once at start, before other threads log.
absl::Status SetLogFormat(absl::string_view name);
LogFormat CurrentLogFormat();

// One field of an event line.
using LogField = std::pair<absl::string_view, std::string>;

// An event: `what` (e.g. "tunnel.create") and its fields, in the given order.
void LogEvent(const char* severity, absl::string_view what, std::initializer_list<LogField> fields);

// The line as written (without the newline), for tests.
std::string FormatLogLine(LogFormat format, absl::string_view time, const char* severity,
                          absl::string_view what, std::initializer_list<LogField> fields);

// Writes one whole line to stderr (a single write, so lines of several threads never mix).
void WriteLogLine(const char* severity, absl::string_view message);

// A free-form message.
template <typename... Args>
void Log(const char* severity, const absl::FormatSpec<Args...>& format, const Args&... args) {
  WriteLogLine(severity, absl::StrFormat(format, args...));
}

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_LOG_H_
