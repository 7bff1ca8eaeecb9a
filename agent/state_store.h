// The desired tunnels on disk, so a restart loses nothing.
#ifndef TUNNELAGENT_AGENT_STATE_STORE_H_
#define TUNNELAGENT_AGENT_STATE_STORE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/tunnel_spec.h"

namespace tunnelagent::agent {

class StateStore {
 public:
  virtual ~StateStore() = default;
  // The saved tunnels; empty when nothing was ever saved.
  virtual absl::StatusOr<std::vector<TunnelSpec>> Load() = 0;
  // Replaces the saved set.
  virtual absl::Status Save(const std::vector<TunnelSpec>& tunnels) = 0;
};

// <dir>/tunnels.json: a tunnelagent.state.v1.AgentState in protobuf JSON (readable, diffable,
// tolerant of fields added later), format_version 1.
// Save writes a temporary file in the same directory, fsyncs it, renames it over the old one
// and fsyncs the directory: a crash leaves the old file or the new one, never a mix.
// Load fails, naming the file and the problem, when the file cannot be read, is not valid
// JSON of that message, has an unknown format_version, or holds a tunnel that does not parse
// (SpecFromProto) — and leaves the file untouched. The directory is created when missing.
// Safe to call from several threads (calls are serialized; the temporary file's name is per
// process).
class FileStateStore final : public StateStore {
 public:
  explicit FileStateStore(std::string dir);
  absl::StatusOr<std::vector<TunnelSpec>> Load() override;
  absl::Status Save(const std::vector<TunnelSpec>& tunnels) override;
  const std::string& path() const { return path_; }

  static constexpr int kFormatVersion = 1;

 private:
  const std::string dir_;
  const std::string path_;
  absl::Mutex mu_;
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_STATE_STORE_H_
