#include "agent/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {
namespace {

std::atomic<LogFormat> log_format{LogFormat::kText};

std::string Now() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

// A JSON string: quotes, backslashes and control characters escaped; other bytes as they are
// (messages are UTF-8 or ASCII; a stray byte stays a byte rather than breaking the line).
void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

// logfmt: a value is quoted (as a JSON string) when it is empty or holds a space, a quote, an
// '=' or a control character, so every line splits back into the same fields.
void AppendTextValue(std::string* out, absl::string_view s) {
  bool quote = s.empty();
  for (unsigned char c : s) quote |= c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f;
  if (quote) {
    AppendJsonString(out, s);
  } else {
    out->append(s.data(), s.size());
  }
}

// A request can carry megabytes in one field; the log keeps a prefix and says how much more.
constexpr size_t kMaxLoggedValue = 512;
std::string Bounded(absl::string_view value) {
  if (value.size() <= kMaxLoggedValue) return std::string(value);
  return absl::StrCat(value.substr(0, kMaxLoggedValue), "...(", value.size() - kMaxLoggedValue,
                      " more bytes)");
}

void WriteLine(std::string line) {
  line.push_back('\n');
  // One write(2) of the whole line: lines of several threads never interleave.
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) return;  // stderr gone: nothing better to do with a log line
    done += static_cast<size_t>(n);
  }
}

}  // namespace

absl::Status SetLogFormat(absl::string_view name) {
  if (name == "text") {
    log_format.store(LogFormat::kText);
  } else if (name == "json") {
    log_format.store(LogFormat::kJson);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--log_format=", name, ": must be text or json"));
  }
  return absl::OkStatus();
}

LogFormat CurrentLogFormat() { return log_format.load(); }

std::string FormatLogLine(LogFormat format, absl::string_view time, const char* severity,
                          absl::string_view what, std::initializer_list<LogField> fields) {
  std::string line;
  if (format == LogFormat::kJson) {
    line = "{\"time\":";
    AppendJsonString(&line, time);
    line.append(",\"level\":");
    AppendJsonString(&line, severity);
    line.append(",\"msg\":");
    AppendJsonString(&line, what);
    for (const auto& [key, value] : fields) {
      line.push_back(',');
      AppendJsonString(&line, key);
      line.push_back(':');
      AppendJsonString(&line, Bounded(value));
    }
    line.push_back('}');
    return line;
  }
  absl::StrAppend(&line, time, " ", severity, " ", what);
  for (const auto& [key, value] : fields) {
    absl::StrAppend(&line, " ", key, "=");
    AppendTextValue(&line, Bounded(value));
  }
  return line;
}

void LogEvent(const char* severity, absl::string_view what,
              std::initializer_list<LogField> fields) {
  WriteLine(FormatLogLine(CurrentLogFormat(), Now(), severity, what, fields));
}

void WriteLogLine(const char* severity, absl::string_view message) {
  if (CurrentLogFormat() == LogFormat::kJson) {
    WriteLine(FormatLogLine(LogFormat::kJson, Now(), severity, message, {}));
    return;
  }
  WriteLine(absl::StrCat(Now(), " ", severity, " ", message));
}

}  // namespace tunnelagent::agent
