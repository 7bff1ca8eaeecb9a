// The log lines of the libraries the agent runs on (gRPC's gpr_log, protobuf's GOOGLE_LOG) go
// through the agent's log, in its format, and through one rate limiter: a client that makes a
// library complain on every request (a malformed message, a connection that fails its
// handshake) cannot flood the log or the disk under it. Each source location may print
// `lines_per_window` lines per window; the lines beyond are counted and reported once, as
// "suppressed K similar lines", before the next line that location prints.
#ifndef TUNNELAGENT_AGENT_LIBRARY_LOG_H_
#define TUNNELAGENT_AGENT_LIBRARY_LOG_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnelagent::agent {

class LogRateLimiter {
 public:
  struct Options {
    int lines_per_window = 10;
    absl::Duration window = absl::Minutes(1);
    // Source locations tracked at once; lines of any further one share a single budget, so a
    // library that logs from ever new places still cannot grow this without bound.
    size_t max_keys = 1024;
  };

  struct Decision {
    bool print = false;
    // Lines of this key suppressed since it last printed; reported (once) before this line
    // when it is printed.
    uint64_t suppressed_before = 0;
  };

  LogRateLimiter() : LogRateLimiter(Options()) {}
  explicit LogRateLimiter(Options options) : options_(options) {}

  // One line of source location `key` at `now`.
  Decision Admit(absl::string_view key, absl::Time now);

 private:
  struct Window {
    absl::Time start;
    int printed = 0;
    uint64_t suppressed = 0;
  };

  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Window> windows_ ABSL_GUARDED_BY(mu_);
};

// Sends gRPC's and protobuf's log output through one LogRateLimiter into the agent's log
// ("grpc: ..." and "protobuf: ..."). Once, at start, before the server is built.
void InstallLibraryLogHandlers();

// What the handlers do with one line, for tests: "grpc" or "protobuf", the library's severity
// name, its source location and message.
void LogLibraryLine(LogRateLimiter* limiter, absl::string_view library, const char* severity,
                    const char* file, int line, absl::string_view message, absl::Time now);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_LIBRARY_LOG_H_
