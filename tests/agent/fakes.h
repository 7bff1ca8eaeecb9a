// Fakes of the TunnelManager's collaborators: they record what was asked of them, in one
// shared event log so tests can check the order of steps, and fail on request.
#ifndef TUNNELAGENT_TESTS_AGENT_FAKES_H_
#define TUNNELAGENT_TESTS_AGENT_FAKES_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "agent/link_control.h"
#include "agent/state_store.h"
#include "dataplane/packet_engine.h"
#include "dataplane/tunnel_spec.h"

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

class FakeLinkControl;

class FakeDevice final : public Device {
 public:
  FakeDevice(FakeLinkControl* owner, std::string name, int fd, int ifindex)
      : owner_(owner), name_(std::move(name)), fd_(fd), ifindex_(ifindex) {}
  ~FakeDevice() override;
  int fd() const override { return fd_; }
  int ifindex() const override { return ifindex_; }
  const std::string& name() const { return name_; }

 private:
  FakeLinkControl* const owner_;
  const std::string name_;
  const int fd_;
  const int ifindex_;
};

class FakeLinkControl final : public LinkControl {
 public:
  // The kernel's view of one live device.
  struct Link {
    int fd = -1;
    int ifindex = 0;
    uint32_t mtu = 0;
    bool up = false;
    std::vector<dataplane::IpPrefix> addresses;
    std::vector<dataplane::IpPrefix> routes;
  };

  explicit FakeLinkControl(EventLog* log) : log_(log) {}

  FailureSwitch create_device_failure;
  FailureSwitch set_mtu_failure;
  FailureSwitch add_address_failure;
  FailureSwitch set_up_failure;
  FailureSwitch add_route_failure;
  absl::StatusOr<uint32_t> path_mtu = 1500u;  // what PathMtu answers

  const std::map<std::string, Link>& links() const { return links_; }  // live devices
  std::vector<std::string> LinkNames() const {
    std::vector<std::string> names;
    for (const auto& [name, link] : links_) names.push_back(name);
    return names;
  }
  const std::vector<std::string>& destroyed() const { return destroyed_; }
  int create_calls() const { return create_calls_; }
  const std::vector<dataplane::IpAddress>& path_mtu_queries() const { return path_mtu_queries_; }
  bool IsFdOpen(int fd) const {
    for (const auto& [name, link] : links_) {
      if (link.fd == fd) return true;
    }
    return false;
  }

  absl::StatusOr<std::unique_ptr<Device>> CreateDevice(const std::string& name) override {
    ++create_calls_;
    if (absl::Status s = create_device_failure.Check(); !s.ok()) return s;
    if (links_.count(name)) return absl::AlreadyExistsError(absl::StrCat(name, " exists"));
    const int n = next_++;
    Link& link = links_[name];
    link.fd = 100 + n;
    link.ifindex = 10 + n;
    log_->push_back("link.create " + name);
    return std::make_unique<FakeDevice>(this, name, 100 + n, 10 + n);
  }
  absl::Status SetMtu(const Device& device, uint32_t mtu) override {
    if (absl::Status s = set_mtu_failure.Check(); !s.ok()) return s;
    LinkOf(device).mtu = mtu;
    log_->push_back(absl::StrCat("link.mtu ", NameOf(device), " ", mtu));
    return absl::OkStatus();
  }
  absl::Status SetUp(const Device& device) override {
    if (absl::Status s = set_up_failure.Check(); !s.ok()) return s;
    LinkOf(device).up = true;
    log_->push_back("link.up " + NameOf(device));
    return absl::OkStatus();
  }
  absl::Status AddAddress(const Device& device, const dataplane::IpPrefix& address) override {
    if (absl::Status s = add_address_failure.Check(); !s.ok()) return s;
    LinkOf(device).addresses.push_back(address);
    log_->push_back(absl::StrCat("link.addr ", NameOf(device), " ", address.ToString()));
    return absl::OkStatus();
  }
  absl::Status AddRoute(const Device& device, const dataplane::IpPrefix& route) override {
    if (absl::Status s = add_route_failure.Check(); !s.ok()) return s;
    LinkOf(device).routes.push_back(route);
    log_->push_back(absl::StrCat("link.route ", NameOf(device), " ", route.ToString()));
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> PathMtu(const dataplane::IpAddress& remote) override {
    path_mtu_queries_.push_back(remote);
    return path_mtu;
  }

 private:
  friend class FakeDevice;

  void Destroyed(const std::string& name) {
    links_.erase(name);
    destroyed_.push_back(name);
    log_->push_back("link.destroy " + name);
  }
  static const std::string& NameOf(const Device& device) {
    return dynamic_cast<const FakeDevice&>(device).name();
  }
  Link& LinkOf(const Device& device) { return links_.at(NameOf(device)); }

  EventLog* const log_;
  std::map<std::string, Link> links_;
  std::vector<std::string> destroyed_;
  std::vector<dataplane::IpAddress> path_mtu_queries_;
  int create_calls_ = 0;
  int next_ = 1;
};

inline FakeDevice::~FakeDevice() { owner_->Destroyed(name_); }

class FakePacketEngine final : public dataplane::PacketEngine {
 public:
  explicit FakePacketEngine(EventLog* log) : log_(log) {}

  FailureSwitch add_failure;

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
    if (absl::Status s = add_failure.Check(); !s.ok()) return s;
    if (tunnels_.count(tunnel.name)) return absl::AlreadyExistsError(tunnel.name);
    // As the real engine: one tunnel per receive match (protocol, local, remote, key).
    for (const auto& [name, t] : tunnels_) {
      if (t.protocol == tunnel.protocol && t.local == tunnel.local && t.remote == tunnel.remote &&
          t.has_input_key == tunnel.has_input_key &&
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
    log_->push_back("engine.remove " + name);
    if (tunnels_.erase(name) == 0) return absl::NotFoundError(name);
    return absl::OkStatus();
  }
  const dataplane::DataplaneCounters& counters() const override { return counters_; }
  const char* backend_name() const override { return "fake"; }

 private:
  EventLog* const log_;
  std::map<std::string, dataplane::EngineTunnel> tunnels_;
  dataplane::DataplaneCounters counters_;
  int add_calls_ = 0;
  int remove_calls_ = 0;
};

// In memory. Load answers `load_result` when set, else what was last saved.
class FakeStateStore final : public StateStore {
 public:
  explicit FakeStateStore(EventLog* log) : log_(log) {}

  FailureSwitch save_failure;
  std::optional<absl::StatusOr<std::vector<dataplane::TunnelSpec>>> load_result;

  const std::vector<dataplane::TunnelSpec>& saved() const { return saved_; }
  std::vector<std::string> SavedNames() const {
    std::vector<std::string> names;
    for (const dataplane::TunnelSpec& spec : saved_) names.push_back(spec.name);
    return names;
  }
  int save_calls() const { return save_calls_; }

  absl::StatusOr<std::vector<dataplane::TunnelSpec>> Load() override {
    if (load_result.has_value()) return *load_result;
    return saved_;
  }
  absl::Status Save(const std::vector<dataplane::TunnelSpec>& tunnels) override {
    ++save_calls_;
    if (absl::Status s = save_failure.Check(); !s.ok()) return s;
    saved_ = tunnels;
    std::string names;
    for (const dataplane::TunnelSpec& spec : tunnels) {
      absl::StrAppend(&names, names.empty() ? "" : ",", spec.name);
    }
    log_->push_back("store.save " + names);
    return absl::OkStatus();
  }

 private:
  EventLog* const log_;
  std::vector<dataplane::TunnelSpec> saved_;
  int save_calls_ = 0;
};

}  // namespace tunnelagent::agent::fakes

#endif  // TUNNELAGENT_TESTS_AGENT_FAKES_H_
