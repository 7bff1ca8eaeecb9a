#include "agent/state_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "agent/proto_convert.h"
#include "google/protobuf/util/json_util.h"
#include "tunnelagent/state/v1/state.pb.h"

namespace tunnelagent::agent {
namespace {

constexpr char kFileName[] = "tunnels.json";
constexpr char kLogName[] = "tunnels.log";

// The log's header: magic (8 bytes, the last one the format), generation (8), CRC32C of the
// 16 before (4). Records: payload length (4), payload CRC32C (4), CRC32C of those 8 (4), then
// the payload. All little-endian.
constexpr char kLogMagic[8] = {'T', 'A', 'L', 'O', 'G', 0, 0, 2};
constexpr size_t kLogHeaderBytes = 20;
constexpr size_t kRecordHeaderBytes = 12;
// No change comes near this (a whole ApplyTunnels of 10,000 tunnels is a few MiB): a length
// beyond it, with a header that passes its CRC, is damage, not a change.
constexpr uint32_t kMaxRecordBytes = 256u << 20;

std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    table[i] = crc;
  }
  return table;
}

void PutLe32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutLe64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string LogHeader(uint64_t generation) {
  std::string header(kLogMagic, sizeof(kLogMagic));
  PutLe64(header, generation);
  PutLe32(header, Crc32c(header.data(), header.size()));
  return header;
}

// The generation of the log header `data` (kLogHeaderBytes long), or nullopt when it is not one.
std::optional<uint64_t> ParseLogHeader(const char* data) {
  if (memcmp(data, kLogMagic, sizeof(kLogMagic)) != 0) return std::nullopt;
  if (Crc32c(data, 16) != GetLe32(data + 16)) return std::nullopt;
  return GetLe64(data + 8);
}

std::string Record(absl::string_view payload) {
  std::string record;
  record.reserve(kRecordHeaderBytes + payload.size());
  PutLe32(record, static_cast<uint32_t>(payload.size()));
  PutLe32(record, Crc32c(payload.data(), payload.size()));
  PutLe32(record, Crc32c(record.data(), 8));
  record.append(payload.data(), payload.size());
  return record;
}

std::string ErrnoText(int error) {
  char buf[256];
  // GNU strerror_r: returns the message, which may or may not be in buf.
  return strerror_r(error, buf, sizeof(buf));
}

// Erases the peers of `tunnel` from a map by (tunnel, peer name). No name holds a NUL, so
// (tunnel + NUL, "") is the first key past every (tunnel, name).
template <typename Map>
void ErasePeersOf(const std::string& tunnel, Map& map) {
  map.erase(map.lower_bound({tunnel, ""}), map.lower_bound({tunnel + '\0', ""}));
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

// The whole file; ENOENT is answered as NOT_FOUND for the caller to tell apart.
absl::StatusOr<std::string> ReadWhole(const std::string& path) {
  ScopedFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return IoError(errno, path, "open");
  }
  std::string content;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(errno, path, "read");
    }
    content.append(buf, static_cast<size_t>(n));
  }
  return content;
}

// Writes `content` to the new file `tmp` and makes it durable before anything replaces the
// real file; the descriptor stays open (O_APPEND) when `keep` is given.
absl::Status WriteDurably(const std::string& tmp, absl::string_view content,
                          ScopedFd* keep = nullptr) {
  ScopedFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600));
  if (fd.get() < 0) return IoError(errno, tmp, "open");
  if (absl::Status s = WriteAll(fd.get(), content, tmp); !s.ok()) return s;
  if (fsync(fd.get()) != 0) return IoError(errno, tmp, "fsync");
  if (keep != nullptr) {
    *keep = ScopedFd(fd.release());
    return absl::OkStatus();
  }
  if (fd.Close() != 0) return IoError(errno, tmp, "close");
  return absl::OkStatus();
}

// Makes a rename itself durable: without it a crash can bring back the old directory entry.
absl::Status SyncDir(const std::string& dir) {
  ScopedFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return IoError(errno, dir, "open directory");
  // Some filesystems cannot fsync a directory at all; nothing more can be done there.
  if (fsync(fd.get()) != 0 && errno != EINVAL) return IoError(errno, dir, "fsync directory");
  return absl::OkStatus();
}

// `content` replaces `path` whole: temporary file, fsync, rename, fsync of the directory.
absl::Status ReplaceFile(const std::string& dir, const std::string& path, const char* name,
                         absl::string_view content, ScopedFd* keep = nullptr) {
  if (absl::Status s = MakeDirs(dir); !s.ok()) return s;
  const std::string tmp = absl::StrCat(dir, "/.", name, ".tmp.", getpid());
  if (absl::Status s = WriteDurably(tmp, content, keep); !s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    unlink(tmp.c_str());
    if (keep != nullptr) *keep = ScopedFd(-1);
    return IoError(error, path, absl::StrCat("rename from ", tmp));
  }
  return SyncDir(dir);
}

}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeCrc32cTable();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

FileStateStore::FileStateStore(std::string dir) : FileStateStore(std::move(dir), Options{}) {}

FileStateStore::FileStateStore(std::string dir, Options options)
    : dir_(TrimTrailingSlashes(std::move(dir))),
      path_(absl::StrCat(dir_, "/", kFileName)),
      log_path_(absl::StrCat(dir_, "/", kLogName)),
      options_(std::move(options)) {}

FileStateStore::~FileStateStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
}

absl::StatusOr<std::vector<TunnelSpec>> FileStateStore::Load() {
  absl::MutexLock lock(&mu_);
  std::vector<TunnelSpec> tunnels;
  if (absl::Status s = LoadLocked(&tunnels); !s.ok()) return s;
  // A reader beside a running agent may have read the snapshot just before a compaction
  // replaced it and the log just after: a log newer than the snapshot. Read both again.
  for (int again = 0; options_.read_only && newer_log_ && again < 10; ++again) {
    tunnels.clear();
    if (absl::Status s = LoadLocked(&tunnels); !s.ok()) return s;
  }
  return tunnels;
}

absl::Status FileStateStore::LoadLocked(std::vector<TunnelSpec>* out) {
  saved_.clear();
  saved_peers_.clear();
  loaded_peers_.clear();
  loaded_ = false;
  snapshot_exists_ = false;
  generation_ = 0;
  snapshot_bytes_ = 0;
  log_.reset();
  log_bytes_ = 0;
  needs_snapshot_ = false;
  newer_log_ = false;

  // What Load answers: the tunnels in the order they were first saved (a clash between two
  // saved tunnels is decided by that order), each as last changed.
  std::vector<std::string> order;
  std::map<std::string, TunnelSpec> specs;
  auto upsert = [&](const v1::Tunnel& tunnel, TunnelSpec spec, bool replace) {
    auto [it, inserted] = saved_.try_emplace(tunnel.name());
    if (!inserted && !replace) return;  // a name saved twice in one snapshot: the first wins
    it->second = tunnel.SerializeAsString();
    if (specs.insert_or_assign(tunnel.name(), std::move(spec)).second) {
      order.push_back(tunnel.name());
    }
  };

  // A peer is kept only while its tunnel is: one of a tunnel removed later goes with it.
  std::map<std::pair<std::string, std::string>, PeerSpec> peer_specs;
  auto upsert_peer = [&](const state::v1::SavedPeer& saved, absl::string_view where)
                         ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    absl::StatusOr<PeerSpec> spec = PeerFromProto(saved.peer());
    if (!spec.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " (peer \"", absl::CEscape(saved.peer().name()), "\" of \"",
                       absl::CEscape(saved.tunnel()), "\"): ", spec.status().message()));
    }
    const std::pair<std::string, std::string> key(saved.tunnel(), saved.peer().name());
    saved_peers_.insert_or_assign(key, saved.peer().SerializeAsString());
    peer_specs.insert_or_assign(key, *std::move(spec));
    return absl::OkStatus();
  };
  auto remove_peers_of = [&](const std::string& tunnel) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    ErasePeersOf(tunnel, saved_peers_);
    ErasePeersOf(tunnel, peer_specs);
  };

  bool migrate = false;
  absl::StatusOr<std::string> content = ReadWhole(path_);
  if (!content.ok() && !absl::IsNotFound(content.status())) return content.status();
  if (content.ok()) {
    state::v1::AgentState state;
    google::protobuf::util::JsonParseOptions options;
    // A file written by a newer agent may carry fields this one does not know; format_version
    // is what signals a change of meaning, not the presence of a new field.
    options.ignore_unknown_fields = true;
    if (const auto s = google::protobuf::util::JsonStringToMessage(*content, &state, options);
        !s.ok()) {
      return Corrupt(path_, absl::StrCat("not valid JSON of tunnelagent.state.v1.AgentState: ",
                                         FirstLine(s.message().data(), s.message().size())));
    }
    if (state.format_version() != 1 && state.format_version() != kFormatVersion) {
      return Corrupt(path_, absl::StrCat("format_version ", state.format_version(),
                                         " is not one this agent reads (1, ", kFormatVersion, ")"));
    }
    migrate = state.format_version() == 1;
    snapshot_exists_ = true;
    generation_ = state.generation();
    snapshot_bytes_ = static_cast<int64_t>(content->size());
    for (int i = 0; i < state.tunnels_size(); ++i) {
      absl::StatusOr<TunnelSpec> spec = SpecFromProto(state.tunnels(i));
      if (!spec.ok()) {
        return Corrupt(
            path_, absl::StrCat("tunnels[", i, "] (name \"", absl::CEscape(state.tunnels(i).name()),
                                "\"): ", spec.status().message()));
      }
      upsert(state.tunnels(i), *std::move(spec), /*replace=*/false);
    }
    for (int i = 0; i < state.peers_size(); ++i) {
      if (absl::Status s = upsert_peer(state.peers(i), absl::StrCat("peers[", i, "]")); !s.ok()) {
        return Corrupt(path_, s.message());
      }
    }
  }

  absl::StatusOr<std::string> log = ReadWhole(log_path_);
  if (!log.ok() && !absl::IsNotFound(log.status())) return log.status();
  if (log.ok()) {
    if (log->size() < kLogHeaderBytes) {
      return Corrupt(log_path_, absl::StrCat("offset 0: a header of ", log->size(), " bytes (",
                                             kLogHeaderBytes, " expected)"));
    }
    const std::optional<uint64_t> generation = ParseLogHeader(log->data());
    if (!generation.has_value()) {
      return Corrupt(log_path_, "offset 0: not a tunnel-agent state log header (bad magic or CRC)");
    }
    if (!snapshot_exists_ || migrate || *generation != generation_) {
      newer_log_ = snapshot_exists_ && !migrate && *generation > generation_;
      // A crash between a new snapshot and its log: the snapshot holds all of it.
      if (!options_.read_only) {
        Log("INFO",
            "state: %s is of generation %d, the snapshot %s is of %d: the snapshot already holds "
            "its changes; ignored, and replaced at the next change",
            log_path_, static_cast<int64_t>(*generation), path_,
            static_cast<int64_t>(migrate ? 0 : generation_));
      }
    } else {
      size_t offset = kLogHeaderBytes;
      std::string torn;  // why the last record is dropped; empty: it is not
      while (offset < log->size()) {
        const size_t remaining = log->size() - offset;
        const char* header = log->data() + offset;
        if (remaining < kRecordHeaderBytes) {
          torn = absl::StrCat("a record header of ", remaining, " bytes");
          break;
        }
        if (Crc32c(header, 8) != GetLe32(header + 8)) {
          // Zeros to the end: blocks a crash allocated but never wrote (some file systems
          // show those after a power loss), not damage to anything written.
          if (std::all_of(header, header + remaining, [](char c) { return c == 0; })) {
            torn = absl::StrCat(remaining, " zero bytes");
            break;
          }
          return Corrupt(log_path_,
                         absl::StrCat("offset ", offset, ": the record header fails its CRC32C (",
                                      remaining, " bytes follow)"));
        }
        const uint32_t length = GetLe32(header);
        if (length > kMaxRecordBytes) {
          return Corrupt(log_path_, absl::StrCat("offset ", offset, ": a record of ", length,
                                                 " bytes (at most ", kMaxRecordBytes, ")"));
        }
        if (remaining - kRecordHeaderBytes < length) {
          torn = absl::StrCat("a record of ", length, " bytes with ",
                              remaining - kRecordHeaderBytes, " written");
          break;
        }
        const char* payload = header + kRecordHeaderBytes;
        const size_t end = offset + kRecordHeaderBytes + length;
        if (Crc32c(payload, length) != GetLe32(header + 4)) {
          if (end == log->size()) {
            torn = "the last record fails its CRC32C";
            break;
          }
          return Corrupt(log_path_, absl::StrCat("offset ", offset,
                                                 ": the record fails its CRC32C, and records "
                                                 "follow it (damage, not an interrupted write)"));
        }
        state::v1::StateChange change;
        if (!change.ParseFromArray(payload, static_cast<int>(length))) {
          return Corrupt(log_path_,
                         absl::StrCat("offset ", offset, ": the record is not a StateChange"));
        }
        for (int i = 0; i < change.upserted_size(); ++i) {
          absl::StatusOr<TunnelSpec> spec = SpecFromProto(change.upserted(i));
          if (!spec.ok()) {
            return Corrupt(log_path_,
                           absl::StrCat("offset ", offset, ": upserted[", i, "] (name \"",
                                        absl::CEscape(change.upserted(i).name()),
                                        "\"): ", spec.status().message()));
          }
          upsert(change.upserted(i), *std::move(spec), /*replace=*/true);
        }
        for (const std::string& name : change.removed()) {
          saved_.erase(name);
          specs.erase(name);
          remove_peers_of(name);
        }
        for (int i = 0; i < change.upserted_peers_size(); ++i) {
          if (absl::Status s =
                  upsert_peer(change.upserted_peers(i),
                              absl::StrCat("offset ", offset, ": upserted_peers[", i, "]"));
              !s.ok()) {
            return Corrupt(log_path_, s.message());
          }
        }
        for (const state::v1::PeerKey& key : change.removed_peers()) {
          saved_peers_.erase({key.tunnel(), key.name()});
          peer_specs.erase({key.tunnel(), key.name()});
        }
        offset = end;
      }
      if (!options_.read_only) {
        ScopedFd fd(open(log_path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
        if (fd.get() < 0) return IoError(errno, log_path_, "open for appending");
        if (!torn.empty()) {
          // A crash in the middle of an append: that change was never acknowledged.
          Log("WARNING",
              "state: %s: dropping the last record at offset %d (%s): a change interrupted by a "
              "crash, never acknowledged; the log is truncated to %d bytes",
              log_path_, static_cast<int64_t>(offset), torn, static_cast<int64_t>(offset));
          if (ftruncate(fd.get(), static_cast<off_t>(offset)) != 0) {
            return IoError(errno, log_path_, "truncating the interrupted last record");
          }
          if (fsync(fd.get()) != 0) return IoError(errno, log_path_, "fsync");
        }
        log_ = std::make_shared<ScopedFd>(fd.release());
        log_bytes_ = static_cast<int64_t>(offset);
      }
    }
  }

  std::set<std::string> emitted;
  for (const std::string& name : order) {
    auto it = specs.find(name);
    if (it == specs.end() || !emitted.insert(name).second) continue;
    out->push_back(it->second);
  }
  for (auto& [key, spec] : peer_specs) {
    if (!specs.count(key.first)) {
      // Saved before its tunnel was: cannot happen through the agent; not kept.
      saved_peers_.erase(key);
      continue;
    }
    loaded_peers_.push_back({key.first, std::move(spec)});
  }
  loaded_ = true;
  durable_ = appended_;
  if (migrate && !options_.read_only) {
    if (absl::Status s = WriteSnapshotLocked(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("rewriting ", path_, " of format_version 1 as ",
                                                 kFormatVersion, ": ", s.message()));
    }
    Log("INFO",
        "state: %s was of format_version 1 (%d tunnels); rewritten as format_version %d "
        "(a snapshot and the log %s)",
        path_, static_cast<int>(out->size()), kFormatVersion, log_path_);
  }
  return absl::OkStatus();
}

absl::Status FileStateStore::WriteSnapshotLocked() {
  // A generation no log on disk has: a log left from before (this store's, or one it never
  // loaded) must read as stale beside the new snapshot.
  uint64_t generation = generation_ + 1;
  {
    ScopedFd fd(open(log_path_.c_str(), O_RDONLY | O_CLOEXEC));
    char header[kLogHeaderBytes];
    if (fd.get() >= 0 && read(fd.get(), header, sizeof(header)) == sizeof(header)) {
      if (std::optional<uint64_t> old = ParseLogHeader(header); old.has_value()) {
        generation = std::max(generation, *old + 1);
      }
    }
  }
  state::v1::AgentState state;
  state.set_format_version(kFormatVersion);
  state.set_generation(generation);
  for (const auto& [name, tunnel] : saved_) {
    if (!state.add_tunnels()->ParseFromString(tunnel)) {
      return absl::InternalError(
          absl::StrCat("state file ", path_, ": tunnel ", name, " does not encode again"));
    }
  }
  for (const auto& [key, peer] : saved_peers_) {
    state::v1::SavedPeer* saved = state.add_peers();
    saved->set_tunnel(key.first);
    if (!saved->mutable_peer()->ParseFromString(peer)) {
      return absl::InternalError(absl::StrCat("state file ", path_, ": peer ", key.second, " of ",
                                              key.first, " does not encode again"));
    }
  }
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
  if (absl::Status s = ReplaceFile(dir_, path_, kFileName, content); !s.ok()) return s;
  // The snapshot holds every change appended so far; the log it follows is stale from here.
  generation_ = generation;
  snapshot_exists_ = true;
  snapshot_bytes_ = static_cast<int64_t>(content.size());
  log_.reset();
  log_bytes_ = 0;
  compact_at_ = 0;
  needs_snapshot_ = false;
  durable_ = appended_;
  ++stats_.compactions;
  synced_.SignalAll();
  return absl::OkStatus();
}

absl::Status FileStateStore::StartLogLocked() {
  ScopedFd fd(-1);
  if (absl::Status s = ReplaceFile(dir_, log_path_, kLogName, LogHeader(generation_), &fd);
      !s.ok()) {
    return s;
  }
  log_ = std::make_shared<ScopedFd>(fd.release());
  log_bytes_ = kLogHeaderBytes;
  return absl::OkStatus();
}

void FileStateStore::ApplyLocked(const EncodedChange& change) {
  for (const auto& [name, tunnel] : change.upserted) saved_.insert_or_assign(name, tunnel);
  for (const std::string& name : change.removed) {
    saved_.erase(name);
    ErasePeersOf(name, saved_peers_);
  }
  for (const auto& [key, peer] : change.upserted_peers) saved_peers_.insert_or_assign(key, peer);
  for (const auto& key : change.removed_peers) saved_peers_.erase(key);
}

std::vector<SavedPeer> FileStateStore::TakeLoadedPeers() {
  absl::MutexLock lock(&mu_);
  return std::exchange(loaded_peers_, {});
}

absl::StatusOr<uint64_t> FileStateStore::Append(const StateChange& change) {
  // Encoded before the lock: the lock covers only the write and the bookkeeping.
  state::v1::StateChange record;
  EncodedChange encoded;
  for (const TunnelSpec& spec : change.upserted) {
    v1::Tunnel* tunnel = record.add_upserted();
    *tunnel = SpecToProto(spec);
    encoded.upserted[spec.name] = tunnel->SerializeAsString();
  }
  for (const std::string& name : change.removed) record.add_removed(name);
  encoded.removed = change.removed;
  for (const SavedPeer& peer : change.upserted_peers) {
    state::v1::SavedPeer* saved = record.add_upserted_peers();
    saved->set_tunnel(peer.tunnel);
    *saved->mutable_peer() = PeerSpecToProto(peer.spec);
    encoded.upserted_peers[{peer.tunnel, peer.spec.name}] = saved->peer().SerializeAsString();
  }
  for (const auto& [tunnel, name] : change.removed_peers) {
    state::v1::PeerKey* key = record.add_removed_peers();
    key->set_tunnel(tunnel);
    key->set_name(name);
  }
  encoded.removed_peers = change.removed_peers;
  const std::string bytes = Record(record.SerializeAsString());

  absl::MutexLock lock(&mu_);
  if (options_.read_only) {
    return absl::FailedPreconditionError(absl::StrCat("state file ", path_, ": opened read-only"));
  }
  if (!loaded_) {
    return absl::FailedPreconditionError(
        absl::StrCat("state file ", path_, ": a change before the state was loaded"));
  }
  // A change the disk refused is not saved: an error. An undo is applied all the same, and
  // the flush its sequence waits for writes a whole snapshot instead of the log.
  auto refused = [&](const absl::Status& s)
                     ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<uint64_t> {
    if (!change.undo) return s;
    Log("ERROR", "state: %s; the whole state is rewritten at the next flush", s.message());
    ApplyLocked(encoded);
    needs_snapshot_ = true;
    ++stats_.commits;
    return ++appended_;
  };
  if (needs_snapshot_) {
    // A flush failed: the log on disk may have lost what it was told. This change goes into a
    // whole snapshot instead, which makes everything before it durable too.
    // Rare (after a failed flush), so what was there is simply copied to be put back.
    std::map<std::string, std::string> tunnels_before = saved_;
    std::map<std::pair<std::string, std::string>, std::string> peers_before = saved_peers_;
    ApplyLocked(encoded);
    if (absl::Status s = WriteSnapshotLocked(); !s.ok()) {
      saved_ = std::move(tunnels_before);
      saved_peers_ = std::move(peers_before);
      return refused(s);
    }
    ++stats_.commits;
    durable_ = ++appended_;
    Log("INFO", "state: %s rewritten whole (generation %d) after a failed flush of %s", path_,
        static_cast<int64_t>(generation_), log_path_);
    // A log that cannot be started now is started by the next change.
    StartLogLocked().IgnoreError();
    return appended_;
  }
  if (!snapshot_exists_) {
    // The first change in a new directory: an empty snapshot first, so that the log always
    // has one to follow (and an operator a tunnels.json to read).
    if (absl::Status s = WriteSnapshotLocked(); !s.ok()) return refused(s);
  }
  if (log_ == nullptr) {
    if (absl::Status s = StartLogLocked(); !s.ok()) return refused(s);
  }
  // The write holds the store's lock (appends are serialized by the caller anyway); a flush
  // in progress does not, so the next change is written while the previous ones are flushed.
  if (absl::Status s = WriteAll(log_->get(), bytes, log_path_); !s.ok()) {
    // Part of the record may be there: cut it off, or the next record would follow garbage
    // (damage in the middle of the log at the next start). If even that fails, the next
    // change writes a whole snapshot instead of appending here.
    if (ftruncate(log_->get(), static_cast<off_t>(log_bytes_)) != 0) needs_snapshot_ = true;
    return refused(s);
  }
  log_bytes_ += static_cast<int64_t>(bytes.size());
  ApplyLocked(encoded);
  ++stats_.commits;
  const uint64_t sequence = ++appended_;

  const int64_t limit = std::max<int64_t>(kMinCompactionBytes, 2 * snapshot_bytes_);
  if (log_bytes_ > limit && log_bytes_ >= compact_at_) {
    // Compaction costs a snapshot of everything, once per log's worth of changes: amortized,
    // a change still costs its own size. Failing it loses nothing (the log holds it all).
    if (absl::Status s = WriteSnapshotLocked(); !s.ok()) {
      compact_at_ = log_bytes_ + kMinCompactionBytes;
      Log("WARNING", "state: compacting %s failed (%s); the log keeps growing, retried later",
          log_path_, s.ToString());
    } else if (absl::Status s = StartLogLocked(); !s.ok()) {
      Log("WARNING",
          "state: starting a new %s after compaction failed (%s); retried at the "
          "next change",
          log_path_, s.ToString());
    }
  }
  return sequence;
}

absl::Status FileStateStore::WaitDurable(uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  if (sequence > appended_) {
    return absl::InvalidArgumentError(
        absl::StrCat("state file ", log_path_, ": change ", sequence, " was never appended"));
  }
  for (;;) {
    if (sequence <= durable_) return absl::OkStatus();
    if (sequence <= failed_through_) return sync_error_;
    if (syncing_) {
      // Another caller's flush (or the flusher's) is under way; the next one (by whoever
      // wakes first) covers this change and every change appended meanwhile.
      synced_.Wait(&mu_);
      continue;
    }
    SyncLocked();
  }
}

void FileStateStore::SyncLocked() {
  if (needs_snapshot_ || log_ == nullptr) {
    // What the log holds is not to be trusted after a failed flush: a snapshot instead.
    if (absl::Status s = WriteSnapshotLocked(); !s.ok()) {
      failed_through_ = appended_;
      sync_error_ = s;
      synced_.SignalAll();
      return;
    }
    StartLogLocked().IgnoreError();
    return;
  }
  // The flush runs without the lock: changes appended meanwhile wait for the next one,
  // which covers them all at once.
  syncing_ = true;
  const uint64_t target = appended_;
  const SharedFd log = log_;
  mu_.Unlock();
  const int result = options_.sync ? options_.sync(log->get()) : fdatasync(log->get());
  const int error = errno;
  mu_.Lock();
  syncing_ = false;
  ++stats_.syncs;
  if (result == 0) {
    durable_ = std::max(durable_, target);
  } else {
    ++stats_.sync_failures;
    failed_through_ = std::max(failed_through_, target);
    const absl::Status io = IoError(error, log_path_, "fdatasync");
    sync_error_ = absl::Status(io.code(), absl::StrCat(io.message(),
                                                       "; the whole state is rewritten at "
                                                       "the next change"));
    needs_snapshot_ = true;
    Log("ERROR", "state: %s", sync_error_.message());
  }
  synced_.SignalAll();
}

void FileStateStore::FlushSoon() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    flush_wanted_ = true;
    if (flusher_started_) return;
    flusher_started_ = true;
  }
  // Started by the first caller alone, outside the lock: appends and waiters do not queue
  // behind the making of a thread.
  flusher_ = std::thread([this] { RunFlusher(); });
}

void FileStateStore::RunFlusher() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(
        +[](FileStateStore* store)
             ABSL_NO_THREAD_SAFETY_ANALYSIS { return store->flush_wanted_ || store->stopping_; },
        this));
    if (stopping_) return;
    flush_wanted_ = false;
    // A waiter's flush under way covers it, or one after it does; nothing to do for a change
    // already durable or already failed.
    if (!syncing_ && durable_ < appended_ && failed_through_ < appended_) SyncLocked();
  }
}

absl::Status FileStateStore::Save(const std::vector<TunnelSpec>& tunnels) {
  std::map<std::string, std::string> encoded;
  for (const TunnelSpec& spec : tunnels) {
    encoded.emplace(spec.name, SpecToProto(spec).SerializeAsString());
  }
  absl::MutexLock lock(&mu_);
  if (options_.read_only) {
    return absl::FailedPreconditionError(absl::StrCat("state file ", path_, ": opened read-only"));
  }
  std::map<std::string, std::string> before = std::exchange(saved_, std::move(encoded));
  std::map<std::pair<std::string, std::string>, std::string> peers_before = saved_peers_;
  for (auto it = saved_peers_.begin(); it != saved_peers_.end();) {
    it = saved_.count(it->first.first) ? std::next(it) : saved_peers_.erase(it);
  }
  if (absl::Status s = WriteSnapshotLocked(); !s.ok()) {
    saved_ = std::move(before);
    saved_peers_ = std::move(peers_before);
    return s;
  }
  loaded_ = true;
  // Stale beside the new snapshot already; removed so the directory shows only what counts.
  unlink(log_path_.c_str());
  return absl::OkStatus();
}

StateStoreStats FileStateStore::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace tunnelagent::agent
