#include "agent/tunnel_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/validation.h"
#include "dataplane/packet/encap.h"

namespace tunnelagent::agent {
namespace {

using dataplane::TunnelMode;
using dataplane::TunnelSpec;

bool IsGreFamily(TunnelMode mode) {
  return mode == TunnelMode::kGre || mode == TunnelMode::kGretap || mode == TunnelMode::kIp6gre ||
         mode == TunnelMode::kIp6gretap;
}

// What the engine needs: how to wrap sent packets and which received ones are ours.
dataplane::EngineTunnel EngineTunnelFor(const TunnelSpec& spec, int device_fd, uint32_t mtu,
                                        std::shared_ptr<dataplane::TunnelCounters> counters) {
  dataplane::EngineTunnel t;
  t.name = spec.name;
  t.device_fd = device_fd;
  t.mtu = mtu;
  const bool gre = IsGreFamily(spec.mode);
  t.encap.kind = gre ? dataplane::EncapKind::kGre : dataplane::EncapKind::kIpip;
  t.encap.local = spec.local.is_v4() ? spec.local.v4() : 0;
  t.encap.remote = spec.remote.v4();
  t.encap.has_key = spec.key.has_value();
  t.encap.key = spec.key.value_or(0);
  t.protocol = gre ? dataplane::kIpProtoGre : dataplane::kIpProtoIpip;
  t.local = t.encap.local;
  t.remote = t.encap.remote;
  t.has_input_key = spec.key.has_value();
  t.input_key = spec.key.value_or(0);
  t.counters = std::move(counters);
  return t;
}

// "Any" may be spelled as no address or as 0.0.0.0; both mean the same receive match.
bool SameEndpoint(const dataplane::IpAddress& a, const dataplane::IpAddress& b) {
  return a == b || (a.is_unspecified() && b.is_unspecified());
}

uint64_t SumDrops(const dataplane::DropCounters& drops) {
  uint64_t total = 0;
  for (const dataplane::Counter& c : drops) total += c.Get();
  return total;
}

}  // namespace

TunnelManager::TunnelManager(LinkControl* links, dataplane::PacketEngine* engine, StateStore* store,
                             Options options)
    : links_(links), engine_(engine), store_(store), options_(options) {}

TunnelManager::~TunnelManager() { Shutdown(); }

absl::Status TunnelManager::Restore() {
  absl::StatusOr<std::vector<TunnelSpec>> saved = store_->Load();
  if (!saved.ok()) return saved.status();
  absl::MutexLock lock(&mu_);
  for (TunnelSpec& spec : *saved) {
    if (tunnels_.count(spec.name)) continue;  // a name saved twice: the first one wins
    Entry entry;
    entry.spec = std::move(spec);
    // A saved tunnel that no longer passes the checks, clashes with one restored before it,
    // or cannot get its device is kept (so nothing is lost) in state ERROR with the reason.
    absl::Status status = ValidateSpec(entry.spec);
    if (status.ok()) status = CheckConflicts(entry.spec);
    if (status.ok()) status = BringUp(entry);
    if (!status.ok()) entry.error = std::string(status.message());
    std::string name = entry.spec.name;
    tunnels_.emplace(std::move(name), std::move(entry));
  }
  return absl::OkStatus();
}

absl::StatusOr<TunnelView> TunnelManager::Create(const TunnelSpec& spec) {
  if (absl::Status status = ValidateSpec(spec); !status.ok()) return status;
  absl::MutexLock lock(&mu_);
  if (tunnels_.count(spec.name)) {
    return absl::AlreadyExistsError(absl::StrCat("tunnel ", spec.name, " already exists"));
  }
  if (absl::Status status = CheckConflicts(spec); !status.ok()) return status;

  Entry entry;
  entry.spec = spec;
  if (absl::Status status = BringUp(entry); !status.ok()) return status;
  // Persist last: if the disk refuses, the running tunnel is undone too, so the state file
  // and the kernel never disagree about a tunnel the caller was told failed.
  if (absl::Status status = Persist(&spec, ""); !status.ok()) {
    engine_->RemoveTunnel(spec.name).IgnoreError();
    return status;
  }
  Entry& stored = tunnels_[spec.name] = std::move(entry);
  return TunnelView{stored.spec, StatusOf(stored)};
}

absl::StatusOr<TunnelView> TunnelManager::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  return TunnelView{it->second.spec, StatusOf(it->second)};
}

std::vector<TunnelView> TunnelManager::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<TunnelView> views;
  views.reserve(tunnels_.size());
  for (const auto& [name, entry] : tunnels_) views.push_back({entry.spec, StatusOf(entry)});
  return views;
}

absl::Status TunnelManager::Delete(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = tunnels_.find(name);
  if (it == tunnels_.end()) {
    return absl::NotFoundError(absl::StrCat("tunnel ", name, " not found"));
  }
  // Forget it on disk first: if that fails nothing has changed and the caller may retry.
  if (absl::Status status = Persist(nullptr, name); !status.ok()) return status;
  if (it->second.device) {
    // The engine answers once nothing in flight touches the device; only then may it close.
    absl::Status status = engine_->RemoveTunnel(name);
    if (!status.ok() && !absl::IsNotFound(status)) return status;
  }
  tunnels_.erase(it);  // closing the device removes the link, its addresses and routes
  return absl::OkStatus();
}

void TunnelManager::Shutdown() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, entry] : tunnels_) {
    if (entry.device) engine_->RemoveTunnel(name).IgnoreError();
    entry.device.reset();
  }
  tunnels_.clear();
}

absl::Status TunnelManager::BringUp(Entry& entry) {
  const TunnelSpec& spec = entry.spec;
  uint32_t mtu = spec.mtu;
  if (mtu == 0) {
    // As the kernel does: the MTU of the route towards the remote, less the headers.
    absl::StatusOr<uint32_t> path_mtu = links_->PathMtu(spec.remote);
    uint32_t underlay = path_mtu.ok() ? *path_mtu : options_.default_underlay_mtu;
    mtu = dataplane::AutomaticMtu(spec.mode, spec.key.has_value(), underlay);
  }
  absl::StatusOr<std::unique_ptr<Device>> device = links_->CreateDevice(spec.name);
  if (!device.ok()) return device.status();
  // From here on a failure destroys the device, which takes its addresses and routes along.
  absl::Status status = links_->SetMtu(**device, mtu);
  for (size_t i = 0; status.ok() && i < spec.addresses.size(); ++i) {
    status = links_->AddAddress(**device, spec.addresses[i]);
    if (!status.ok()) {
      status = absl::Status(status.code(),
                            absl::StrCat("tunnel.addresses[", i, "] ", spec.addresses[i].ToString(),
                                         ": ", status.message()));
    }
  }
  if (status.ok()) status = links_->SetUp(**device);
  for (size_t i = 0; status.ok() && i < spec.routes.size(); ++i) {
    status = links_->AddRoute(**device, spec.routes[i]);
    if (!status.ok()) {
      status = absl::Status(status.code(),
                            absl::StrCat("tunnel.routes[", i, "] ", spec.routes[i].ToString(), ": ",
                                         status.message()));
    }
  }
  auto counters = std::make_shared<dataplane::TunnelCounters>();
  if (status.ok()) {
    status = engine_->AddTunnel(EngineTunnelFor(spec, (*device)->fd(), mtu, counters));
  }
  if (!status.ok()) return status;
  entry.device = *std::move(device);
  entry.counters = std::move(counters);
  entry.mtu = mtu;
  entry.error.clear();
  return absl::OkStatus();
}

absl::Status TunnelManager::CheckConflicts(const TunnelSpec& spec) const {
  const bool gre = IsGreFamily(spec.mode);
  for (const auto& [name, other] : tunnels_) {
    // Two tunnels that would claim the same received packets (the kernel refuses these too).
    if (IsGreFamily(other.spec.mode) == gre && SameEndpoint(other.spec.local, spec.local) &&
        other.spec.remote == spec.remote && other.spec.key == spec.key) {
      return absl::AlreadyExistsError(absl::StrCat(
          "tunnel ", name, " already carries ", gre ? "GRE" : "IPIP", " from ",
          spec.local.is_unspecified() ? "any" : spec.local.ToString(), " to ",
          spec.remote.ToString(),
          spec.key ? absl::StrCat(" with key ", *spec.key) : std::string(" without a key")));
    }
  }
  return absl::OkStatus();
}

absl::Status TunnelManager::Persist(const TunnelSpec* adding, const std::string& removing) const {
  std::vector<TunnelSpec> desired;
  desired.reserve(tunnels_.size() + 1);
  for (const auto& [name, entry] : tunnels_) {
    if (name != removing) desired.push_back(entry.spec);
  }
  if (adding != nullptr) desired.push_back(*adding);
  return store_->Save(desired);
}

TunnelStatus TunnelManager::StatusOf(const Entry& entry) const {
  TunnelStatus status;
  if (!entry.device) {
    status.state = OperState::kError;
    status.reason = entry.error;
    return status;
  }
  status.state = OperState::kUp;
  status.ifindex = entry.device->ifindex();
  status.mtu = entry.mtu;
  const dataplane::TunnelCounters& c = *entry.counters;
  status.counters.tx_packets = c.tx_packets.Get();
  status.counters.tx_bytes = c.tx_bytes.Get();
  status.counters.rx_packets = c.rx_packets.Get();
  status.counters.rx_bytes = c.rx_bytes.Get();
  status.counters.tx_dropped = SumDrops(c.tx_drops);
  status.counters.rx_dropped = SumDrops(c.rx_drops);
  return status;
}

}  // namespace tunnelagent::agent
