// The agent's core: the desired tunnels, their devices and their place in the dataplane.
// Every change is checked first, applied to the kernel and the dataplane, persisted, and
// rolled back if any step fails, so a failed request leaves nothing behind.
#ifndef TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_
#define TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/link_control.h"
#include "agent/state_store.h"
#include "agent/tunnel_status.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tunnel_spec.h"

namespace tunnelagent::agent {

struct TunnelView {
  dataplane::TunnelSpec spec;
  TunnelStatus status;
};

class TunnelManager {
 public:
  struct Options {
    // The underlay MTU assumed when no route to the remote exists yet (the kernel's
    // ETH_DATA_LEN fallback).
    uint32_t default_underlay_mtu = 1500;
  };

  TunnelManager(LinkControl* links, dataplane::PacketEngine* engine, StateStore* store,
                Options options);
  ~TunnelManager();

  // Brings back every tunnel of the state store. A tunnel that cannot be brought up stays
  // desired, in state ERROR with the reason, and is not lost from the state file. Fails only
  // when the state cannot be read.
  absl::Status Restore();

  // INVALID_ARGUMENT / UNIMPLEMENTED from validation, ALREADY_EXISTS for a taken name or a
  // (mode, local, remote, key) another tunnel carries, or the kernel's error.
  absl::StatusOr<TunnelView> Create(const dataplane::TunnelSpec& spec);
  absl::StatusOr<TunnelView> Get(const std::string& name) const;
  std::vector<TunnelView> List() const;  // by name
  absl::Status Delete(const std::string& name);

  // Stops every tunnel's dataplane and removes its device; the desired state stays on disk.
  void Shutdown();

  // Calls `visit` for each tunnel with its counters, under the manager's lock: for metrics,
  // read at scrape time.
  template <typename Visitor>
  void ForEachTunnel(Visitor visit) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : tunnels_) {
      visit(entry.spec, StatusOf(entry), entry.counters.get());
    }
  }

 private:
  struct Entry {
    dataplane::TunnelSpec spec;
    std::unique_ptr<Device> device;  // null when the tunnel could not be brought up
    std::shared_ptr<dataplane::TunnelCounters> counters;
    uint32_t mtu = 0;
    std::string error;  // why device is null
  };

  // Creates the device, configures it and adds it to the dataplane; undoes all of it on
  // failure.
  absl::Status BringUp(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckConflicts(const dataplane::TunnelSpec& spec) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Saves the desired set as it will be: the current tunnels plus `adding`, less `removing`.
  absl::Status Persist(const dataplane::TunnelSpec* adding, const std::string& removing) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TunnelStatus StatusOf(const Entry& entry) const;

  LinkControl* const links_;
  dataplane::PacketEngine* const engine_;
  StateStore* const store_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::map<std::string, Entry> tunnels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_TUNNEL_MANAGER_H_
