// Fakes of the TunnelManager's collaborators: they record what was asked of them, in one
// shared event log so tests can check the order of steps, and fail on request.
//
// Only calls that change something are logged; refused calls (injected failures, NOT_FOUND,
// ALREADY_EXISTS) are not, so a log shows exactly what happened to the "kernel". In
// particular an AttachDevice that finds no left-behind device is not logged (count those with
// attach_calls()).
#ifndef TUNNELAGENT_TESTS_AGENT_FAKES_H_
#define TUNNELAGENT_TESTS_AGENT_FAKES_H_

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/link_control.h"
#include "agent/state_store.h"
#include "agent/tunnel_spec.h"
#include "dataplane/packet_engine.h"

namespace tunnelagent::agent::fakes {

// "link.create gre1", "engine.remove gre1", "store.save gre1,ipip1", ...
using EventLog = std::vector<std::string>;

// Fails the nth call (counted from when it was armed) of one operation, once.
class FailureSwitch {
 public:
  void Arm(int nth, absl::Status status) {
    remaining_ = nth;
    status_ = std::move(status);
  }
  absl::Status Check() {
    if (remaining_ == 0 || --remaining_ > 0) return absl::OkStatus();
    return status_;
  }

 private:
  int remaining_ = 0;
  absl::Status status_;
};

// Holds the calls that pass it while closed, as a slow kernel or disk would: for tests of
// what other threads can do meanwhile. Open lets them (and any later one) through.
class Gate {
 public:
  void Pass() {
    absl::MutexLock lock(&mu_);
    ++waiting_;
    mu_.Await(absl::Condition(&open_));
    --waiting_;
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  // Whether a call is held within `timeout`.
  bool WaitForCall(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto held = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return waiting_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&held), timeout);
  }

 private:
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

class FakeLinkControl;

class FakeDevice final : public Device {
 public:
  FakeDevice(FakeLinkControl* owner, std::string name, int fd, int ifindex)
      : owner_(owner), name_(std::move(name)), fd_(fd), ifindex_(ifindex) {}
  ~FakeDevice() override;
  int fd() const override { return fd_; }
  int ifindex() const override { return ifindex_; }
  void Keep() override;
  const std::string& name() const { return name_; }

 private:
  FakeLinkControl* const owner_;
  const std::string name_;
  const int fd_;
  const int ifindex_;
  bool keep_ = false;
};

// The kernel's links, as the agent sees them. Logs:
//   link.create NAME         CreateDevice (links() tells its kind, TUN or TAP)
//   link.attach NAME         AttachDevice that took over a left-behind device
//   link.delete NAME         DeleteDevice
//   link.keep NAME           Device::Keep
//   link.destroy NAME        a Device object went and took its link along
//   link.detach NAME         a kept Device object went; its link stays (left behind)
//   link.mtu NAME N, link.up NAME
//   link.addr NAME P, link.addr.delete NAME P, link.route NAME P, link.route.delete NAME P
//   link.remove_all N        RemoveAgentDevices removed N agent links in one batch
class FakeLinkControl final : public LinkControl {
 public:
  // The kernel's view of one link.
  struct Link {
    int fd = -1;  // of the Device attached to it; -1 when none is
    int ifindex = 0;
    uint32_t mtu = 0;
    bool up = false;
    std::vector<dataplane::IpPrefix> addresses;
    std::vector<dataplane::IpPrefix> routes;
    bool agent = true;  // made by the agent (carries its alias)
    bool attached = false;
    DeviceKind kind = DeviceKind::kTun;
  };

  explicit FakeLinkControl(EventLog* log) : log_(log) {}

  FailureSwitch create_device_failure;
  FailureSwitch attach_device_failure;  // checked only when there is a device to attach
  FailureSwitch delete_device_failure;
  FailureSwitch set_mtu_failure;
  FailureSwitch add_address_failure;
  FailureSwitch delete_address_failure;
  FailureSwitch set_up_failure;
  FailureSwitch add_route_failure;
  FailureSwitch delete_route_failure;
  FailureSwitch link_states_failure;
  FailureSwitch list_agent_devices_failure;
  // CreateDevice waits here when set (a slow kernel).
  Gate* create_gate = nullptr;
  // RemoveAgentDevices removes in one batch when set; answers UNIMPLEMENTED otherwise.
  bool bulk_removal = false;
  int remove_all_calls() const { return remove_all_calls_; }
  // AddRoute of one prefix (by its text, "10.2.0.0/16") fails, every time.
  std::map<std::string, absl::Status> add_route_failures;
  absl::StatusOr<uint32_t> path_mtu = 1500u;  // what PathMtu answers

  // Every link that exists, attached or not, the agent's or not.
  const std::map<std::string, Link>& links() const { return links_; }
  std::vector<std::string> LinkNames() const {
    std::vector<std::string> names;
    for (const auto& [name, link] : links_) names.push_back(name);
    return names;
  }
  // Names whose Device object was destroyed, and whose link went with it.
  const std::vector<std::string>& destroyed() const { return destroyed_; }
  // Names whose Device object was destroyed after Keep(): the link stayed.
  const std::vector<std::string>& kept() const { return kept_; }
  // DeleteDevice calls that removed a link.
  const std::vector<std::string>& deleted() const { return deleted_; }
  int create_calls() const { return create_calls_; }
  int attach_calls() const { return attach_calls_; }
  const std::vector<dataplane::IpAddress>& path_mtu_queries() const { return path_mtu_queries_; }
  bool IsFdOpen(int fd) const {
    for (const auto& [name, link] : links_) {
      if (link.attached && link.fd == fd) return true;
    }
    return false;
  }

  // ---- What tests set up ----------------------------------------------------------------

  // An agent device from an earlier run that nobody is attached to (a crash, or a shutdown
  // that kept the devices). Its addresses and routes are as given. Returns its ifindex.
  int LeaveBehind(const std::string& name) { return LeaveBehind(name, Link()); }
  int LeaveBehind(const std::string& name, Link link) {
    link.agent = true;
    link.attached = false;
    link.fd = -1;
    if (link.ifindex == 0) link.ifindex = 10 + next_++;
    links_[name] = link;
    return link.ifindex;
  }
  // A link the agent did not make (e.g. the host's eth0): never to be touched.
  int AddForeignLink(const std::string& name) {
    Link link;
    link.agent = false;
    link.up = true;
    link.ifindex = 10 + next_++;
    links_[name] = link;
    return link.ifindex;
  }
  // As `ip link set NAME up/down` by someone else.
  void SetAdminUp(const std::string& name, bool up) { links_.at(name).up = up; }
  // As `ip link del NAME` by someone else: the agent's Device object lives on, orphaned.
  void RemoveBehindTheAgentsBack(const std::string& name) { links_.erase(name); }

  // ---- LinkControl ------------------------------------------------------------------------

  absl::StatusOr<std::unique_ptr<Device>> CreateDevice(const std::string& name,
                                                       DeviceKind kind) override {
    ++create_calls_;
    if (create_gate != nullptr) create_gate->Pass();
    if (absl::Status s = create_device_failure.Check(); !s.ok()) return s;
    if (links_.count(name)) return absl::AlreadyExistsError(absl::StrCat(name, " exists"));
    const int n = next_++;
    Link& link = links_[name];
    link.fd = 100 + n;
    link.ifindex = 10 + n;
    link.attached = true;
    link.kind = kind;
    log_->push_back("link.create " + name);
    return std::make_unique<FakeDevice>(this, name, link.fd, link.ifindex);
  }
  // As the real one: a left-behind agent device of the other kind is removed (logged as
  // link.delete) and NOT_FOUND answered.
  absl::StatusOr<std::unique_ptr<Device>> AttachDevice(const std::string& name,
                                                       DeviceKind kind) override {
    ++attach_calls_;
    auto it = links_.find(name);
    if (it == links_.end() || !it->second.agent) {
      return absl::NotFoundError(absl::StrCat("no device of the agent's named ", name));
    }
    if (it->second.attached) return absl::UnavailableError(absl::StrCat(name, " is busy"));
    if (it->second.kind != kind) {
      links_.erase(it);
      deleted_.push_back(name);
      log_->push_back("link.delete " + name);
      return absl::NotFoundError(absl::StrCat(name, " was of the other kind"));
    }
    if (absl::Status s = attach_device_failure.Check(); !s.ok()) return s;
    Link& link = it->second;
    link.fd = 100 + next_++;  // a new file descriptor; the same link (ifindex)
    link.attached = true;
    log_->push_back("link.attach " + name);
    return std::make_unique<FakeDevice>(this, name, link.fd, link.ifindex);
  }
  absl::StatusOr<std::vector<std::string>> ListAgentDevices() override {
    if (absl::Status s = list_agent_devices_failure.Check(); !s.ok()) return s;
    std::vector<std::string> names;
    for (const auto& [name, link] : links_) {
      if (link.agent) names.push_back(name);
    }
    return names;
  }
  absl::Status DeleteDevice(const std::string& name) override {
    if (absl::Status s = delete_device_failure.Check(); !s.ok()) return s;
    auto it = links_.find(name);
    if (it == links_.end()) return absl::NotFoundError(name);
    if (!it->second.agent) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", name, " was not created by the agent; not touching it"));
    }
    if (it->second.attached) return absl::FailedPreconditionError(name + " is attached");
    links_.erase(it);
    deleted_.push_back(name);
    log_->push_back("link.delete " + name);
    return absl::OkStatus();
  }
  absl::Status RemoveAgentDevices() override {
    ++remove_all_calls_;
    if (!bulk_removal) return absl::UnimplementedError("no removal in bulk here");
    int removed = 0;
    for (auto it = links_.begin(); it != links_.end();) {
      if (!it->second.agent) {
        ++it;
        continue;
      }
      it = links_.erase(it);
      ++removed;
    }
    log_->push_back(absl::StrCat("link.remove_all ", removed));
    return absl::OkStatus();
  }
  absl::Status SetMtu(const Device& device, uint32_t mtu) override {
    if (absl::Status s = set_mtu_failure.Check(); !s.ok()) return s;
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    (*link)->mtu = mtu;
    log_->push_back(absl::StrCat("link.mtu ", NameOf(device), " ", mtu));
    return absl::OkStatus();
  }
  absl::Status SetUp(const Device& device) override {
    if (absl::Status s = set_up_failure.Check(); !s.ok()) return s;
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    (*link)->up = true;
    log_->push_back("link.up " + NameOf(device));
    return absl::OkStatus();
  }
  // As the kernel (NLM_F_EXCL): ALREADY_EXISTS when the device has the address.
  absl::Status AddAddress(const Device& device, const dataplane::IpPrefix& address) override {
    if (absl::Status s = add_address_failure.Check(); !s.ok()) return s;
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    std::vector<dataplane::IpPrefix>& list = (*link)->addresses;
    if (std::find(list.begin(), list.end(), address) != list.end()) {
      return absl::AlreadyExistsError(absl::StrCat("address ", address.ToString(), " exists"));
    }
    list.push_back(address);
    log_->push_back(absl::StrCat("link.addr ", NameOf(device), " ", address.ToString()));
    return absl::OkStatus();
  }
  absl::Status DeleteAddress(const Device& device, const dataplane::IpPrefix& address) override {
    if (absl::Status s = delete_address_failure.Check(); !s.ok()) return s;
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    std::vector<dataplane::IpPrefix>& list = (*link)->addresses;
    auto it = std::find(list.begin(), list.end(), address);
    if (it == list.end()) return absl::NotFoundError(address.ToString());
    list.erase(it);
    log_->push_back(absl::StrCat("link.addr.delete ", NameOf(device), " ", address.ToString()));
    return absl::OkStatus();
  }
  // As the kernel's main table (NLM_F_EXCL): one route per prefix, whatever its device, so
  // ALREADY_EXISTS when any link has it.
  absl::Status AddRoute(const Device& device, const dataplane::IpPrefix& route) override {
    if (absl::Status s = add_route_failure.Check(); !s.ok()) return s;
    if (auto f = add_route_failures.find(route.ToString()); f != add_route_failures.end()) {
      return f->second;
    }
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    for (const auto& [name, other] : links_) {
      if (std::find(other.routes.begin(), other.routes.end(), route) != other.routes.end()) {
        return absl::AlreadyExistsError(
            absl::StrCat("route ", route.ToString(), " exists (dev ", name, ")"));
      }
    }
    (*link)->routes.push_back(route);
    log_->push_back(absl::StrCat("link.route ", NameOf(device), " ", route.ToString()));
    return absl::OkStatus();
  }
  absl::Status DeleteRoute(const Device& device, const dataplane::IpPrefix& route) override {
    if (absl::Status s = delete_route_failure.Check(); !s.ok()) return s;
    absl::StatusOr<Link*> link = LinkOf(device);
    if (!link.ok()) return link.status();
    std::vector<dataplane::IpPrefix>& list = (*link)->routes;
    auto it = std::find(list.begin(), list.end(), route);
    if (it == list.end()) return absl::NotFoundError(route.ToString());
    list.erase(it);
    log_->push_back(absl::StrCat("link.route.delete ", NameOf(device), " ", route.ToString()));
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<int, bool>> LinkStates() override {
    if (absl::Status s = link_states_failure.Check(); !s.ok()) return s;
    std::map<int, bool> states;
    for (const auto& [name, link] : links_) states[link.ifindex] = link.up;
    return states;
  }
  absl::StatusOr<uint32_t> PathMtu(const dataplane::IpAddress& remote) override {
    path_mtu_queries_.push_back(remote);
    return path_mtu;
  }
  absl::StatusOr<std::map<int, DeviceState>> DeviceStates() override {
    if (absl::Status s = link_states_failure.Check(); !s.ok()) return s;
    std::map<int, DeviceState> states;
    for (const auto& [name, link] : links_) {
      states[link.ifindex] =
          DeviceState{link.up, link.mtu, link.addresses, link.routes, name, link.agent};
    }
    if (after_device_states) after_device_states();  // the answer is stale by then
    return states;
  }
  // Run by DeviceStates once it has read the links: a request overtaking a refresh.
  std::function<void()> after_device_states;
  // The bulk forms, counted (the sizes of their calls, in order), then made one by one.
  std::vector<absl::Status> ApplyChanges(const std::vector<LinkChange>& changes) override {
    apply_sizes_.push_back(changes.size());
    return LinkControl::ApplyChanges(changes);
  }
  std::vector<absl::StatusOr<UnderlayRoute>> RoutesTo(
      const std::vector<dataplane::IpAddress>& destinations) override {
    routes_to_sizes_.push_back(destinations.size());
    return LinkControl::RoutesTo(destinations);
  }
  const std::vector<size_t>& apply_sizes() const { return apply_sizes_; }
  const std::vector<size_t>& routes_to_sizes() const { return routes_to_sizes_; }
  int routes_to_calls() const { return static_cast<int>(routes_to_sizes_.size()); }
  // The longest route of any link that covers `destination` (a route into a tunnel device
  // makes a loop), else `underlay_routes` by destination, else `default_underlay_route`.
  absl::StatusOr<UnderlayRoute> RouteTo(const dataplane::IpAddress& destination) override {
    const dataplane::IpPrefix host(destination, destination.is_v4() ? 32 : 128);
    int best_length = -1;
    UnderlayRoute best;
    for (const auto& [route, ifindex] : foreign_routes) {
      if (route.Overlaps(host) && route.length() > best_length) {
        best_length = route.length();
        best = UnderlayRoute{ifindex, std::nullopt, std::nullopt};
      }
    }
    for (const auto& [name, link] : links_) {
      for (const dataplane::IpPrefix& route : link.routes) {
        if (route.Overlaps(host) && route.length() > best_length) {
          best_length = route.length();
          best = UnderlayRoute{link.ifindex, std::nullopt, std::nullopt};
        }
      }
    }
    if (best_length >= 0) return best;
    if (auto it = underlay_routes.find(destination.ToString()); it != underlay_routes.end()) {
      return it->second;
    }
    return default_underlay_route;
  }
  // Routes someone else made (another route protocol: not in DeviceStates), e.g. one into a
  // tunnel device towards that tunnel's own remote: a loop.
  std::vector<std::pair<dataplane::IpPrefix, int>> foreign_routes;
  // What RouteTo answers for a destination no link's route covers.
  std::map<std::string, UnderlayRoute> underlay_routes;  // by destination, "198.18.0.2"
  UnderlayRoute default_underlay_route{1, std::nullopt, std::nullopt};
  // As `ip addr/route/link ...` by someone else on a link.
  Link& Mutable(const std::string& name) { return links_.at(name); }

 private:
  friend class FakeDevice;

  void Kept(const std::string& name) { log_->push_back("link.keep " + name); }
  void Released(const std::string& name, bool keep) {
    auto it = links_.find(name);
    if (keep) {
      if (it != links_.end()) {
        it->second.attached = false;
        it->second.fd = -1;
      }
      kept_.push_back(name);
      log_->push_back("link.detach " + name);
      return;
    }
    if (it != links_.end()) links_.erase(it);
    destroyed_.push_back(name);
    log_->push_back("link.destroy " + name);
  }
  static const std::string& NameOf(const Device& device) {
    return dynamic_cast<const FakeDevice&>(device).name();
  }
  absl::StatusOr<Link*> LinkOf(const Device& device) {
    auto it = links_.find(NameOf(device));
    // Removed by someone else, or replaced by another link of the same name.
    if (it == links_.end() || it->second.ifindex != device.ifindex()) {
      return absl::NotFoundError(absl::StrCat("no link with ifindex ", device.ifindex()));
    }
    return &it->second;
  }

  EventLog* const log_;
  std::map<std::string, Link> links_;
  std::vector<std::string> destroyed_;
  std::vector<std::string> kept_;
  std::vector<std::string> deleted_;
  std::vector<dataplane::IpAddress> path_mtu_queries_;
  std::vector<size_t> apply_sizes_;
  std::vector<size_t> routes_to_sizes_;
  int create_calls_ = 0;
  int attach_calls_ = 0;
  int remove_all_calls_ = 0;
  int next_ = 1;
};

inline void FakeDevice::Keep() {
  keep_ = true;
  owner_->Kept(name_);
}

inline FakeDevice::~FakeDevice() { owner_->Released(name_, keep_); }

class FakePacketEngine final : public dataplane::PacketEngine {
 public:
  explicit FakePacketEngine(EventLog* log) : log_(log) {}

  FailureSwitch add_failure;
  // AddTunnel / RemoveTunnel wait here when set (a dataplane slow to answer its commands).
  Gate* add_gate = nullptr;
  Gate* remove_gate = nullptr;

  const std::map<std::string, dataplane::EngineTunnel>& tunnels() const { return tunnels_; }
  std::vector<std::string> TunnelNames() const {
    std::vector<std::string> names;
    for (const auto& [name, tunnel] : tunnels_) names.push_back(name);
    return names;
  }
  int add_calls() const { return add_calls_; }
  int remove_calls() const { return remove_calls_; }

  absl::Status AddTunnel(const dataplane::EngineTunnel& tunnel) override {
    ++add_calls_;
    if (add_gate != nullptr) add_gate->Pass();
    if (absl::Status s = add_failure.Check(); !s.ok()) return s;
    if (tunnels_.count(tunnel.name)) return absl::AlreadyExistsError(tunnel.name);
    // As the real engine: one tunnel per receive match (mode, local, remote, key).
    for (const auto& [name, t] : tunnels_) {
      if (t.encap.mode == tunnel.encap.mode && t.encap.local == tunnel.encap.local &&
          t.encap.remote == tunnel.encap.remote && t.has_input_key == tunnel.has_input_key &&
          (!t.has_input_key || t.input_key == tunnel.input_key)) {
        return absl::AlreadyExistsError("engine: same receive match as " + name);
      }
    }
    tunnels_[tunnel.name] = tunnel;
    log_->push_back("engine.add " + tunnel.name);
    return absl::OkStatus();
  }
  absl::Status RemoveTunnel(const std::string& name) override {
    ++remove_calls_;
    if (remove_gate != nullptr) remove_gate->Pass();
    log_->push_back("engine.remove " + name);
    if (tunnels_.erase(name) == 0) return absl::NotFoundError(name);
    return absl::OkStatus();
  }
  FailureSwitch peers_failure;
  int peer_calls() const { return peer_calls_; }
  // The peers of a multipoint tunnel as the engine has them: by id.
  std::map<uint32_t, dataplane::EnginePeer> PeersOf(const std::string& tunnel) const {
    std::map<uint32_t, dataplane::EnginePeer> out;
    auto it = tunnels_.find(tunnel);
    if (it == tunnels_.end()) return out;
    for (const dataplane::EnginePeer& peer : it->second.peers) out[peer.id] = peer;
    return out;
  }
  absl::Status ChangePeers(const std::string& tunnel, std::vector<dataplane::EnginePeer> upserted,
                           std::vector<uint32_t> removed) override {
    ++peer_calls_;
    if (absl::Status s = peers_failure.Check(); !s.ok()) return s;
    auto it = tunnels_.find(tunnel);
    if (it == tunnels_.end()) return absl::NotFoundError(tunnel);
    if (!it->second.multipoint) return absl::FailedPreconditionError(tunnel + " not multipoint");
    std::vector<dataplane::EnginePeer>& peers = it->second.peers;
    for (uint32_t id : removed) {
      peers.erase(std::remove_if(peers.begin(), peers.end(),
                                 [id](const dataplane::EnginePeer& p) { return p.id == id; }),
                  peers.end());
    }
    for (dataplane::EnginePeer& peer : upserted) {
      auto same = std::find_if(peers.begin(), peers.end(),
                               [&](const dataplane::EnginePeer& p) { return p.id == peer.id; });
      if (same != peers.end()) {
        *same = std::move(peer);
      } else {
        peers.push_back(std::move(peer));
      }
    }
    log_->push_back("engine.peers " + tunnel);
    return absl::OkStatus();
  }
  dataplane::DataplaneCountersSnapshot counters() const override { return counters_.Snapshot(); }
  const char* backend_name() const override { return "fake"; }
  size_t workers() const override { return workers_; }
  void set_workers(size_t workers) { workers_ = workers; }

 private:
  EventLog* const log_;
  size_t workers_ = 1;
  std::map<std::string, dataplane::EngineTunnel> tunnels_;
  dataplane::DataplaneCounters counters_;
  int add_calls_ = 0;
  int peer_calls_ = 0;
  int remove_calls_ = 0;
};

// In memory. Load answers `load_result` when set, else what was last saved.
class FakeStateStore final : public StateStore {
 public:
  explicit FakeStateStore(EventLog* log) : log_(log) {}

  FailureSwitch save_failure;  // fails an Append (or a Save): nothing is saved
  FailureSwitch sync_failure;  // fails a WaitDurable: the change is saved but not durable
  Gate* save_gate = nullptr;   // Append and Save wait here when set (a slow disk)
  std::optional<absl::StatusOr<std::vector<TunnelSpec>>> load_result;

  // The saved set, by name, as a full save would have written it.
  const std::vector<TunnelSpec>& saved() const { return saved_; }
  std::vector<std::string> SavedNames() const {
    std::vector<std::string> names;
    for (const TunnelSpec& spec : saved_) names.push_back(spec.name);
    return names;
  }
  int save_calls() const { return save_calls_; }
  // The sequences WaitDurable was asked for, in order.
  std::vector<uint64_t> waited() const {
    absl::MutexLock lock(&mu_);
    return waited_;
  }

  // load_result when set (and, when it is a set of tunnels, the base later changes apply to).
  absl::StatusOr<std::vector<TunnelSpec>> Load() override {
    if (!load_result.has_value()) return saved_;
    if (load_result->ok()) {
      saved_ = **load_result;
      std::stable_sort(saved_.begin(), saved_.end(),
                       [](const TunnelSpec& a, const TunnelSpec& b) { return a.name < b.name; });
    }
    return *load_result;
  }
  // Logged as "store.save" with every saved name, as a full save: what the tests read is the
  // set the change leaves on disk.
  absl::StatusOr<uint64_t> Append(const StateChange& change) override {
    ++save_calls_;
    if (save_gate != nullptr) save_gate->Pass();
    // An undo is applied whatever the disk says (StateChange::undo).
    if (absl::Status s = save_failure.Check(); !s.ok() && !change.undo) return s;
    std::map<std::string, TunnelSpec> by_name;
    for (TunnelSpec& spec : saved_) by_name.emplace(spec.name, std::move(spec));
    for (const TunnelSpec& spec : change.upserted) by_name.insert_or_assign(spec.name, spec);
    for (const std::string& name : change.removed) {
      by_name.erase(name);
      for (auto it = saved_peers_.begin(); it != saved_peers_.end();) {
        it = it->first.first == name ? saved_peers_.erase(it) : std::next(it);
      }
    }
    std::vector<TunnelSpec> tunnels;
    for (auto& [name, spec] : by_name) tunnels.push_back(std::move(spec));
    if (change.upserted_peers.empty() && change.removed_peers.empty()) {
      Record(std::move(tunnels));
    } else {
      saved_ = std::move(tunnels);
      for (const SavedPeer& peer : change.upserted_peers) {
        saved_peers_.insert_or_assign({peer.tunnel, peer.spec.name}, peer.spec);
      }
      for (const auto& key : change.removed_peers) saved_peers_.erase(key);
      log_->push_back(absl::StrCat("store.peers +", change.upserted_peers.size(), " -",
                                   change.removed_peers.size()));
    }
    absl::MutexLock lock(&mu_);
    return ++appended_;
  }
  // The saved peers by (tunnel, name).
  const std::map<std::pair<std::string, std::string>, PeerSpec>& saved_peers() const {
    return saved_peers_;
  }
  std::vector<SavedPeer> TakeLoadedPeers() override {
    std::vector<SavedPeer> out;
    for (const auto& [key, spec] : saved_peers_) out.push_back({key.first, spec});
    return out;
  }
  absl::Status WaitDurable(uint64_t sequence) override {
    absl::MutexLock lock(&mu_);
    waited_.push_back(sequence);
    if (sequence > appended_) return absl::InvalidArgumentError("never appended");
    return sync_failure.Check();
  }
  absl::Status Save(const std::vector<TunnelSpec>& tunnels) override {
    ++save_calls_;
    if (save_gate != nullptr) save_gate->Pass();
    if (absl::Status s = save_failure.Check(); !s.ok()) return s;
    std::vector<TunnelSpec> sorted = tunnels;
    std::sort(sorted.begin(), sorted.end(),
              [](const TunnelSpec& a, const TunnelSpec& b) { return a.name < b.name; });
    Record(std::move(sorted));
    return absl::OkStatus();
  }

 private:
  void Record(std::vector<TunnelSpec> tunnels) {
    saved_ = std::move(tunnels);
    std::string names;
    for (const TunnelSpec& spec : saved_) {
      absl::StrAppend(&names, names.empty() ? "" : ",", spec.name);
    }
    log_->push_back("store.save " + names);
  }

  EventLog* const log_;
  std::vector<TunnelSpec> saved_;
  std::map<std::pair<std::string, std::string>, PeerSpec> saved_peers_;
  int save_calls_ = 0;
  // WaitDurable runs without the manager's lock, so concurrently with other calls.
  mutable absl::Mutex mu_;
  uint64_t appended_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> waited_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnelagent::agent::fakes

#endif  // TUNNELAGENT_TESTS_AGENT_FAKES_H_
