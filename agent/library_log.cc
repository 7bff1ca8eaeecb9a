#include "agent/library_log.h"

#include <grpc/support/log.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/log.h"
#include "google/protobuf/stubs/logging.h"

namespace tunnelagent::agent {
namespace {

// The key shared by the locations beyond Options::max_keys.
constexpr absl::string_view kOtherLocations = "(other locations)";

LogRateLimiter& LibraryLimiter() {
  static LogRateLimiter* limiter = new LogRateLimiter();
  return *limiter;
}

void GrpcLogLine(gpr_log_func_args* args) {
  const char* severity = "INFO";
  if (args->severity == GPR_LOG_SEVERITY_ERROR) severity = "ERROR";
  if (args->severity == GPR_LOG_SEVERITY_DEBUG) severity = "DEBUG";
  LogLibraryLine(&LibraryLimiter(), "grpc", severity, args->file, args->line,
                 args->message == nullptr ? "" : args->message, absl::Now());
}

void ProtobufLogLine(google::protobuf::LogLevel level, const char* file, int line,
                     const std::string& message) {
  const char* severity = "INFO";
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO:
      break;
    case google::protobuf::LOGLEVEL_WARNING:
      severity = "WARNING";
      break;
    case google::protobuf::LOGLEVEL_ERROR:
      severity = "ERROR";
      break;
    case google::protobuf::LOGLEVEL_FATAL:
      // The process is about to end: never suppressed.
      WriteLogLine("FATAL", absl::StrCat("protobuf: ", message, " (", file, ":", line, ")"));
      return;
  }
  LogLibraryLine(&LibraryLimiter(), "protobuf", severity, file, line, message, absl::Now());
}

}  // namespace

LogRateLimiter::Decision LogRateLimiter::Admit(absl::string_view key, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = windows_.find(key);
  if (it == windows_.end()) {
    if (windows_.size() >= options_.max_keys) key = kOtherLocations;
    it = windows_.try_emplace(key, Window{now}).first;
  }
  Window& window = it->second;
  Decision decision;
  if (now - window.start >= options_.window) {
    window.start = now;
    window.printed = 0;
  }
  if (window.printed >= options_.lines_per_window) {
    ++window.suppressed;
    return decision;
  }
  ++window.printed;
  decision.print = true;
  decision.suppressed_before = window.suppressed;
  window.suppressed = 0;
  return decision;
}

void LogLibraryLine(LogRateLimiter* limiter, absl::string_view library, const char* severity,
                    const char* file, int line, absl::string_view message, absl::Time now) {
  const std::string location = absl::StrCat(file == nullptr ? "?" : file, ":", line);
  const LogRateLimiter::Decision decision = limiter->Admit(location, now);
  if (!decision.print) return;
  if (decision.suppressed_before > 0) {
    WriteLogLine("WARNING", absl::StrCat(library, ": suppressed ", decision.suppressed_before,
                                         " similar lines from ", location));
  }
  // A library may quote what a client sent: a prefix is enough.
  constexpr size_t kMaxMessage = 1024;
  WriteLogLine(severity,
               absl::StrCat(library, ": ", message.substr(0, kMaxMessage),
                            message.size() > kMaxMessage ? "..." : "", " (", location, ")"));
}

void InstallLibraryLogHandlers() {
  gpr_set_log_function(GrpcLogLine);
  google::protobuf::SetLogHandler(ProtobufLogLine);
}

}  // namespace tunnelagent::agent
