// The desired tunnels on disk, so a restart loses nothing.
#ifndef TUNNELAGENT_AGENT_STATE_STORE_H_
#define TUNNELAGENT_AGENT_STATE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/peer_spec.h"
#include "agent/scoped_fd.h"
#include "agent/tunnel_spec.h"

namespace tunnelagent::agent {

// A peer of a multipoint tunnel as the store keeps it: with its tunnel's name.
struct SavedPeer {
  std::string tunnel;
  PeerSpec spec;
};

// One committed change of the desired set: the tunnels a request created or changed, whole,
// and the names of those it deleted (their peers go with them); then the peers created or
// changed, whole, and those deleted (tunnel, peer name).
struct StateChange {
  std::vector<TunnelSpec> upserted{};
  std::vector<std::string> removed{};
  std::vector<SavedPeer> upserted_peers{};
  std::vector<std::pair<std::string, std::string>> removed_peers{};
  // Takes back a change appended before whose effect never happened: applied to what the
  // store holds even when the disk refuses the write (the store then rewrites itself whole at
  // the next flush), so that nothing saved outlives it.
  bool undo = false;
};

// What the store did since it was made, for metrics: commits against syncs shows how many
// changes one disk flush carries (group commit).
struct StateStoreStats {
  uint64_t commits = 0;        // changes appended
  uint64_t syncs = 0;          // flushes of the log (fdatasync) waited for by commits
  uint64_t sync_failures = 0;  // of those, the ones that failed
  uint64_t compactions = 0;    // snapshots written (compaction, migration, full saves)
};

class StateStore {
 public:
  virtual ~StateStore() = default;
  // The saved tunnels; empty when nothing was ever saved. Called once at start, before any
  // Append.
  virtual absl::StatusOr<std::vector<TunnelSpec>> Load() = 0;
  // The saved peers the last Load read (each of a tunnel it returned), taken once.
  virtual std::vector<SavedPeer> TakeLoadedPeers() { return {}; }
  // Writes one committed change where a crash of the agent cannot lose it (the page cache),
  // not yet where a crash of the machine cannot: WaitDurable does that. Called in commit
  // order, one at a time (the manager's writers' lock). An error (a full disk) means the
  // change is not saved at all, so the caller can roll it back. The answer is the change's
  // sequence number for WaitDurable.
  virtual absl::StatusOr<uint64_t> Append(const StateChange& change) = 0;
  // Returns once the change `sequence` (and every one before it) is durable. Called without
  // the manager's lock, so that concurrent requests share one flush (group commit). An error
  // means the change was appended (it is in effect) but may not survive a crash of the machine.
  virtual absl::Status WaitDurable(uint64_t sequence) = 0;
  // Starts making every change appended so far durable in the background, so that a caller
  // with other work to do before its WaitDurable overlaps the flush with that work. A hint:
  // WaitDurable flushes by itself when nobody has.
  virtual void FlushSoon() {}
  // Replaces the saved set with `tunnels`, durable on return.
  virtual absl::Status Save(const std::vector<TunnelSpec>& tunnels) = 0;
  virtual StateStoreStats stats() const { return {}; }
};

// Two files in <dir>:
// - tunnels.json, a snapshot: tunnelagent.state.v1.AgentState in protobuf JSON (readable,
//   diffable, tolerant of fields added later), format_version 2 and a generation number;
//   written to a temporary file, fsynced, renamed over the old one, and the directory fsynced:
//   a crash leaves the old snapshot or the new one, never a mix.
// - tunnels.log, the changes since: length-prefixed, CRC32C-checked records (state.proto has
//   the layout) under a header naming the snapshot generation they follow. A change costs
//   one write() of its own size and, shared with every change appended meanwhile, one
//   fdatasync: the cost of a change does not grow with the number of tunnels.
// When the log outgrows max(1 MiB, twice the snapshot) it is compacted: a new snapshot of
// generation + 1, then a new log for that generation. A log whose generation is not the
// snapshot's is what a crash between the two left: the snapshot already holds all of it, and
// the log is ignored (and replaced by the next change).
//
// Load fails with FAILED_PRECONDITION, naming the file, the offset and the problem, and
// leaving the files untouched, when the snapshot is not valid JSON of that message, has an
// unknown format_version, or holds a tunnel that does not parse (SpecFromProto), or when a
// record in the middle of the log is damaged. A damaged last record is what a crash in the
// middle of an append leaves (that change was never acknowledged): it is dropped with one
// WARNING and the log truncated to the record before. A tunnels.json of format_version 1 (the
// whole state in one file) is loaded and rewritten as format_version 2, logged once.
// The directory is created when missing. Thread-safe.
class FileStateStore final : public StateStore {
 public:
  struct Options {
    // Makes the log's appended data durable: fdatasync(2) unless a test injects a slower or
    // failing one. Answers 0, or -1 with errno set.
    std::function<int(int fd)> sync;
    // Load only: no migration, no truncated tail, no file written (tools reading a running
    // agent's directory).
    bool read_only = false;
  };

  explicit FileStateStore(std::string dir);
  FileStateStore(std::string dir, Options options);
  ~FileStateStore() override;

  absl::StatusOr<std::vector<TunnelSpec>> Load() override;
  std::vector<SavedPeer> TakeLoadedPeers() override;
  absl::StatusOr<uint64_t> Append(const StateChange& change) override;
  absl::Status WaitDurable(uint64_t sequence) override;
  void FlushSoon() override;
  absl::Status Save(const std::vector<TunnelSpec>& tunnels) override;
  StateStoreStats stats() const override;

  const std::string& path() const { return path_; }
  const std::string& log_path() const { return log_path_; }

  static constexpr int kFormatVersion = 2;
  // A log longer than this (or twice the snapshot, whichever is more) is compacted.
  static constexpr int64_t kMinCompactionBytes = 1 << 20;

 private:
  // The open log, shared with a flush in progress (which runs without mu_) so that a
  // compaction swapping the log does not close it under the flush.
  using SharedFd = std::shared_ptr<ScopedFd>;

  absl::Status LoadLocked(std::vector<TunnelSpec>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new snapshot of saved_ with a new generation, then a new empty log for it; on success
  // everything appended so far is durable.
  absl::Status WriteSnapshotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new empty log for the current generation (replacing a stale one), opened for appends.
  absl::Status StartLogLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A change as the store applies it: records already encoded.
  struct EncodedChange {
    std::map<std::string, std::string> upserted;  // tunnel name -> v1.Tunnel bytes
    std::vector<std::string> removed;
    std::map<std::pair<std::string, std::string>, std::string> upserted_peers;  // -> v1.Peer
    std::vector<std::pair<std::string, std::string>> removed_peers;
  };
  void ApplyLocked(const EncodedChange& change) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One flush of everything appended (a snapshot instead when the log is not to be trusted);
  // drops mu_ during the fdatasync. Signals synced_ when done.
  void SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The flusher thread (FlushSoon): one flush per wake-up until the store goes.
  void RunFlusher();

  const std::string dir_;
  const std::string path_;
  const std::string log_path_;
  const Options options_;

  mutable absl::Mutex mu_;
  absl::CondVar synced_;  // a flush (or a snapshot) finished
  // The saved tunnels by name, each a tunnelagent.v1.Tunnel in protobuf binary: what a
  // snapshot is written from.
  std::map<std::string, std::string> saved_ ABSL_GUARDED_BY(mu_);
  // The saved peers by (tunnel, peer name), each a tunnelagent.v1.Peer in protobuf binary.
  std::map<std::pair<std::string, std::string>, std::string> saved_peers_ ABSL_GUARDED_BY(mu_);
  // What the last Load read of them, for TakeLoadedPeers.
  std::vector<SavedPeer> loaded_peers_ ABSL_GUARDED_BY(mu_);
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
  bool snapshot_exists_ ABSL_GUARDED_BY(mu_) = false;
  // The last load found a log of a later generation than the snapshot it read.
  bool newer_log_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t snapshot_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  SharedFd log_ ABSL_GUARDED_BY(mu_);  // null: no log to append to yet (StartLogLocked)
  int64_t log_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // A failed compaction is tried again once the log has grown by this much more.
  int64_t compact_at_ ABSL_GUARDED_BY(mu_) = 0;
  // A flush failed: what the log holds on disk is unknown (Linux may have dropped the dirty
  // pages), so the next commit writes a whole snapshot instead.
  bool needs_snapshot_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t appended_ ABSL_GUARDED_BY(mu_) = 0;        // sequence of the last change appended
  uint64_t durable_ ABSL_GUARDED_BY(mu_) = 0;         // ... of the last one known durable
  uint64_t failed_through_ ABSL_GUARDED_BY(mu_) = 0;  // changes up to here got a flush error
  absl::Status sync_error_ ABSL_GUARDED_BY(mu_);
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_wanted_ ABSL_GUARDED_BY(mu_) = false;  // FlushSoon since the flusher last looked
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;      // the destructor runs: the flusher ends
  StateStoreStats stats_ ABSL_GUARDED_BY(mu_);
  bool flusher_started_ ABSL_GUARDED_BY(mu_) = false;
  std::thread flusher_;  // started by the first FlushSoon; joined by the destructor
};

// CRC32C (Castagnoli), as the log's records carry it; `crc` continues an earlier value.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_STATE_STORE_H_
