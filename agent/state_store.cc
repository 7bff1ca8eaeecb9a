#include "agent/state_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/proto_convert.h"
#include "agent/scoped_fd.h"
#include "google/protobuf/util/json_util.h"
#include "tunnelagent/state/v1/state.pb.h"

namespace tunnelagent::agent {
namespace {

constexpr char kFileName[] = "tunnels.json";

std::string ErrnoText(int error) {
  char buf[256];
  // GNU strerror_r: returns the message, which may or may not be in buf.
  return strerror_r(error, buf, sizeof(buf));
}

// I/O failures are the operator's to fix (permissions, a full disk): the message carries the
// path, what was being done and the system's words for what went wrong.
absl::Status IoError(int error, absl::string_view path, absl::string_view action) {
  const std::string message =
      absl::StrCat("state file ", path, ": ", action, ": ", ErrnoText(error));
  if (error == EACCES || error == EPERM || error == EROFS) {
    return absl::PermissionDeniedError(message);
  }
  if (error == ENOSPC || error == EDQUOT) {
    return absl::ResourceExhaustedError(
        absl::StrCat(message, " (the file system holding --state_dir is full)"));
  }
  return absl::InternalError(message);
}

// The parser appends an excerpt and a caret on further lines; errors here go into one-line
// logs and gRPC statuses.
std::string FirstLine(const char* data, size_t size) {
  absl::string_view text(data, size);
  return std::string(absl::StripTrailingAsciiWhitespace(text.substr(0, text.find('\n'))));
}

absl::Status Corrupt(absl::string_view path, absl::string_view problem) {
  return absl::FailedPreconditionError(
      absl::StrCat("state file ", path, " cannot be used (left untouched): ", problem));
}

std::string TrimTrailingSlashes(std::string dir) {
  if (dir.empty()) return ".";
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

// mkdir -p with mode 0700 for the components it creates: the file holds the tunnel keys.
absl::Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (mkdir(prefix.c_str(), 0700) == 0) continue;
    const int error = errno;
    if (error != EEXIST) return IoError(error, dir, absl::StrCat("creating ", prefix));
    struct stat st;
    if (stat(prefix.c_str(), &st) != 0) return IoError(errno, dir, absl::StrCat("stat ", prefix));
    if (!S_ISDIR(st.st_mode)) return IoError(ENOTDIR, dir, absl::StrCat("creating ", prefix));
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view path) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(errno, path, "write");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Writes `content` to `tmp` and makes it durable, before anything replaces the real file.
absl::Status WriteDurably(const std::string& tmp, absl::string_view content) {
  ScopedFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return IoError(errno, tmp, "open");
  if (absl::Status s = WriteAll(fd.get(), content, tmp); !s.ok()) return s;
  if (fsync(fd.get()) != 0) return IoError(errno, tmp, "fsync");
  if (fd.Close() != 0) return IoError(errno, tmp, "close");
  return absl::OkStatus();
}

// Makes the rename itself durable: without it a crash can bring back the old directory entry.
absl::Status SyncDir(const std::string& dir) {
  ScopedFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return IoError(errno, dir, "open directory");
  // Some filesystems cannot fsync a directory at all; nothing more can be done there.
  if (fsync(fd.get()) != 0 && errno != EINVAL) return IoError(errno, dir, "fsync directory");
  return absl::OkStatus();
}

}  // namespace

FileStateStore::FileStateStore(std::string dir)
    : dir_(TrimTrailingSlashes(std::move(dir))), path_(absl::StrCat(dir_, "/", kFileName)) {}

absl::StatusOr<std::vector<TunnelSpec>> FileStateStore::Load() {
  absl::MutexLock lock(&mu_);
  std::vector<TunnelSpec> tunnels;

  ScopedFd fd(open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    // Nothing saved yet (first start, or the directory does not exist yet).
    if (errno == ENOENT) return tunnels;
    return IoError(errno, path_, "open");
  }
  std::string content;
  char buf[16384];
  for (;;) {
    const ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(errno, path_, "read");
    }
    content.append(buf, static_cast<size_t>(n));
  }

  state::v1::AgentState state;
  google::protobuf::util::JsonParseOptions options;
  // A file written by a newer agent may carry fields this one does not know; format_version
  // is what signals a change of meaning, not the presence of a new field.
  options.ignore_unknown_fields = true;
  if (const auto s = google::protobuf::util::JsonStringToMessage(content, &state, options);
      !s.ok()) {
    return Corrupt(path_, absl::StrCat("not valid JSON of tunnelagent.state.v1.AgentState: ",
                                       FirstLine(s.message().data(), s.message().size())));
  }
  if (state.format_version() != kFormatVersion) {
    return Corrupt(path_, absl::StrCat("format_version ", state.format_version(),
                                       " is not one this agent reads (", kFormatVersion, ")"));
  }
  tunnels.reserve(state.tunnels_size());
  for (int i = 0; i < state.tunnels_size(); ++i) {
    absl::StatusOr<TunnelSpec> spec = SpecFromProto(state.tunnels(i));
    if (!spec.ok()) {
      return Corrupt(
          path_, absl::StrCat("tunnels[", i, "] (name \"", absl::CEscape(state.tunnels(i).name()),
                              "\"): ", spec.status().message()));
    }
    tunnels.push_back(*std::move(spec));
  }
  return tunnels;
}

absl::Status FileStateStore::Save(const std::vector<TunnelSpec>& tunnels) {
  absl::MutexLock lock(&mu_);
  state::v1::AgentState state;
  state.set_format_version(kFormatVersion);
  for (const TunnelSpec& spec : tunnels) *state.add_tunnels() = SpecToProto(spec);

  std::string content;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = false;
  if (const auto s = google::protobuf::util::MessageToJsonString(state, &content, options);
      !s.ok()) {
    return absl::InternalError(absl::StrCat(
        "state file ", path_, ": encoding: ", FirstLine(s.message().data(), s.message().size())));
  }
  content.push_back('\n');

  if (absl::Status s = MakeDirs(dir_); !s.ok()) return s;
  const std::string tmp = absl::StrCat(dir_, "/.", kFileName, ".tmp.", getpid());
  if (absl::Status s = WriteDurably(tmp, content); !s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  if (rename(tmp.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    unlink(tmp.c_str());
    return IoError(error, path_, absl::StrCat("rename from ", tmp));
  }
  return SyncDir(dir_);
}

}  // namespace tunnelagent::agent
