#include "agent/fleet_registration.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/log.h"
#include "agent/metric_family.h"
#include "dataplane/address.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;

// While etcd keeps failing, a line every so often, not one per attempt.
constexpr absl::Duration kFailureLogInterval = absl::Minutes(1);
// etcd's calls: long enough for a loaded etcd, short enough that a renewal that hangs is
// retried well within the TTL, and that a shutdown with etcd away is not held for long.
constexpr absl::Duration kMaxCallTimeout = absl::Seconds(5);
constexpr absl::Duration kMinCallTimeout = absl::Seconds(1);

// "a, b,c" to its entries; an empty entry (",,", a trailing comma) is an error.
absl::StatusOr<std::vector<std::string>> CommaList(absl::string_view text) {
  std::vector<std::string> out;
  if (absl::StripAsciiWhitespace(text).empty()) return out;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    if (piece.empty()) return absl::InvalidArgumentError("an empty entry in the list");
    out.emplace_back(piece);
  }
  return out;
}

absl::Status FlagError(absl::string_view flag, absl::string_view value, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": ", problem));
}

absl::Status CheckReadable(absl::string_view flag, const std::string& path) {
  std::ifstream file(path);
  if (!file) return FlagError(flag, path, "cannot be read");
  return absl::OkStatus();
}

// "HOST:PORT" or "[V6]:PORT" to its host (brackets off) and port; nullopt when it is not one.
std::optional<std::pair<std::string, int>> SplitHostPort(absl::string_view text) {
  std::string host;
  absl::string_view port;
  if (absl::ConsumePrefix(&text, "[")) {
    const size_t close = text.find("]:");
    if (close == absl::string_view::npos) return std::nullopt;
    host = std::string(text.substr(0, close));
    port = text.substr(close + 2);
    if (!IpAddress::Parse(host).ok() || !IpAddress::Parse(host)->is_v6()) return std::nullopt;
  } else {
    const size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) return std::nullopt;
    host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (absl::StrContains(host, ':')) return std::nullopt;  // IPv6 without brackets
  }
  int number = 0;
  if (!absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) return std::nullopt;
  if (host.empty()) return std::make_pair(host, number);
  for (char c : host) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '.' && c != ':' && c != '_') {
      return std::nullopt;
    }
  }
  return std::make_pair(host, number);
}

bool IsWildcard(const std::string& host) {
  if (host.empty() || host == "*") return true;
  absl::StatusOr<IpAddress> address = IpAddress::Parse(host);
  return address.ok() && address->is_unspecified();
}

bool IsLoopback(const std::string& host) {
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  absl::StatusOr<IpAddress> address = IpAddress::Parse(host);
  if (!address.ok()) return false;
  if (address->is_v4()) return (address->v4() >> 24) == 127;
  return *address == *IpAddress::Parse("::1");
}

// What a controller dials: --fleet_agent_endpoint, else --grpc_listen when another host can
// dial it as it is (TCP on a named address).
absl::StatusOr<std::string> AgentEndpoint(const FleetFlags& flags) {
  constexpr absl::string_view kFlag = "fleet_agent_endpoint";
  if (!flags.agent_endpoint.empty()) {
    absl::string_view text = flags.agent_endpoint;
    if (absl::ConsumePrefix(&text, "unix:")) {
      if (!absl::StartsWith(text, "/")) {
        return FlagError(kFlag, flags.agent_endpoint, "want unix:/ABSOLUTE/PATH");
      }
      return flags.agent_endpoint;
    }
    std::optional<std::pair<std::string, int>> host_port = SplitHostPort(text);
    if (!host_port.has_value()) {
      return FlagError(kFlag, flags.agent_endpoint,
                       "want HOST:PORT, [IPV6]:PORT or unix:/PATH, as tunnelctl's --agent");
    }
    if (IsWildcard(host_port->first)) {
      return FlagError(kFlag, flags.agent_endpoint,
                       "a wildcard address cannot be dialled: give this node's address");
    }
    return flags.agent_endpoint;
  }
  const std::string& listen = flags.grpc_listen;
  const std::string why =
      absl::StrCat("--fleet_agent_endpoint is required with --fleet_etcd: --grpc_listen=", listen);
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) {
    return absl::InvalidArgumentError(
        absl::StrCat(why,
                     " is a unix socket, which other hosts cannot dial; give "
                     "HOST:PORT, or unix:/PATH for a controller on this host"));
  }
  std::optional<std::pair<std::string, int>> host_port = SplitHostPort(listen);
  if (!host_port.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(why, " is not HOST:PORT"));
  }
  if (IsWildcard(host_port->first)) {
    return absl::InvalidArgumentError(
        absl::StrCat(why, " listens on every address: say which one controllers dial"));
  }
  if (IsLoopback(host_port->first)) {
    return absl::InvalidArgumentError(absl::StrCat(
        why, " is loopback, which only this host reaches: give the address controllers dial"));
  }
  return listen;
}

absl::Status UnderlayFromFlag(const std::string& text, v1::NodeRegistration* out) {
  constexpr absl::string_view kFlag = "fleet_underlay";
  if (absl::StripAsciiWhitespace(text).empty()) {
    return absl::InvalidArgumentError(
        "--fleet_underlay is required with --fleet_etcd: this node's underlay address(es), "
        "where other nodes send its tunnels' packets (e.g. --fleet_underlay=198.18.0.1)");
  }
  absl::StatusOr<std::vector<std::string>> list = CommaList(text);
  if (!list.ok()) return FlagError(kFlag, text, list.status().message());
  std::vector<IpAddress> seen;
  for (const std::string& entry : *list) {
    absl::StatusOr<IpAddress> address = IpAddress::Parse(entry);
    if (!address.ok()) {
      return FlagError(kFlag, text, absl::StrCat("\"", entry, "\" is not an IP address"));
    }
    if (address->is_unspecified() || address->is_multicast()) {
      return FlagError(kFlag, text,
                       absl::StrCat(entry, " cannot be a node's underlay address (",
                                    address->is_multicast() ? "multicast" : "unspecified", ")"));
    }
    if (std::find(seen.begin(), seen.end(), *address) != seen.end()) {
      return FlagError(kFlag, text, absl::StrCat(entry, " is listed twice"));
    }
    seen.push_back(*address);
    out->add_underlay(address->ToString());
  }
  return absl::OkStatus();
}

absl::Status PrefixesFromFlag(const std::string& text, v1::NodeRegistration* out) {
  constexpr absl::string_view kFlag = "advertise_prefixes";
  absl::StatusOr<std::vector<std::string>> list = CommaList(text);
  if (!list.ok()) return FlagError(kFlag, text, list.status().message());
  std::vector<IpPrefix> seen;
  for (const std::string& entry : *list) {
    absl::StatusOr<IpPrefix> prefix = IpPrefix::Parse(entry);
    if (!prefix.ok()) {
      return FlagError(kFlag, text, absl::StrCat("\"", entry, "\" is not a CIDR prefix"));
    }
    if (!prefix->is_network()) {
      return FlagError(kFlag, text,
                       absl::StrCat(entry, " has host bits set (the prefix is ",
                                    prefix->Network().ToString(), ")"));
    }
    if (std::find(seen.begin(), seen.end(), *prefix) != seen.end()) {
      return FlagError(kFlag, text, absl::StrCat(entry, " is listed twice"));
    }
    seen.push_back(*prefix);
    out->add_advertise_prefixes(prefix->ToString());
  }
  return absl::OkStatus();
}

}  // namespace

v1::Capabilities CapabilitiesOf(const v1::AgentInfo& info) {
  v1::Capabilities out;
  for (int mode : info.supported_modes()) {
    // TUNNEL_MODE_IP6GRETAP -> "ip6gretap": the enum's names are iproute2's, upper-cased.
    std::string name = v1::TunnelMode_Name(static_cast<v1::TunnelMode>(mode));
    absl::string_view bare = name;
    if (!absl::ConsumePrefix(&bare, "TUNNEL_MODE_") || bare == "UNSPECIFIED") continue;
    out.add_modes(absl::AsciiStrToLower(bare));
  }
  *out.mutable_features() = info.features();
  out.set_max_peers_per_tunnel(info.max_peers_per_tunnel());
  out.set_max_tunnels(info.max_tunnels());
  return out;
}

absl::StatusOr<std::optional<FleetRegistrationOptions>> FleetOptionsFromFlags(
    const FleetFlags& flags) {
  if (flags.etcd.empty()) {
    // A fleet flag without etcd is a configuration that does not do what its author thinks.
    const std::pair<const char*, const std::string*> others[] = {
        {"fleet", &flags.fleet},
        {"advertise_prefixes", &flags.advertise_prefixes},
        {"fleet_underlay", &flags.underlay},
        {"fleet_agent_endpoint", &flags.agent_endpoint},
        {"fleet_etcd_ca", &flags.etcd_ca},
        {"fleet_etcd_cert", &flags.etcd_cert},
        {"fleet_etcd_key", &flags.etcd_key},
        {"fleet_etcd_user", &flags.etcd_user},
        {"fleet_etcd_password_file", &flags.etcd_password_file},
    };
    for (const auto& [name, value] : others) {
      if (!value->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " needs --fleet_etcd (the etcd endpoints to register with)"));
      }
    }
    return std::nullopt;
  }
  FleetRegistrationOptions options;
  absl::StatusOr<std::vector<std::string>> endpoints = etcd::ParseEndpoints(flags.etcd);
  if (!endpoints.ok()) return FlagError("fleet_etcd", flags.etcd, endpoints.status().message());
  options.etcd.endpoints = *std::move(endpoints);

  if (flags.fleet.empty()) {
    return absl::InvalidArgumentError(
        "--fleet is required with --fleet_etcd: the fleet's name, a segment of its etcd keys "
        "(/tunnel-agent/<fleet>/...)");
  }
  if (absl::Status status = fleet::ValidateFleetName(flags.fleet); !status.ok()) {
    return FlagError("fleet", flags.fleet, status.message());
  }
  if (absl::Status status = fleet::ValidateNodeName(flags.node); !status.ok()) {
    return FlagError("node_name", flags.node, status.message());
  }
  options.key = fleet::NodeKey(flags.fleet, flags.node);

  const absl::Duration ttl = flags.lease_ttl;
  if (ttl < kMinLeaseTtl || ttl > kMaxLeaseTtl) {
    return FlagError("fleet_lease_ttl", absl::FormatDuration(ttl), "want 2s to 1h");
  }
  if (ttl != absl::Seconds(absl::ToInt64Seconds(ttl))) {
    return FlagError("fleet_lease_ttl", absl::FormatDuration(ttl),
                     "want whole seconds (etcd's leases count in seconds)");
  }
  options.lease_ttl = ttl;
  options.max_retry = std::min(options.max_retry, ttl / 3);
  options.etcd.call_timeout = std::clamp(ttl / 3, kMinCallTimeout, kMaxCallTimeout);

  v1::NodeRegistration& registration = options.registration;
  registration.set_node(flags.node);
  if (absl::Status status = UnderlayFromFlag(flags.underlay, &registration); !status.ok()) {
    return status;
  }
  if (absl::Status status = PrefixesFromFlag(flags.advertise_prefixes, &registration);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::string> endpoint = AgentEndpoint(flags);
  if (!endpoint.ok()) return endpoint.status();
  registration.set_agent_endpoint(*endpoint);

  if (flags.etcd_cert.empty() != flags.etcd_key.empty()) {
    return absl::InvalidArgumentError(
        "--fleet_etcd_cert and --fleet_etcd_key go together: the client certificate etcd's "
        "--client-cert-auth checks, and its key");
  }
  const std::pair<const char*, const std::string*> files[] = {
      {"fleet_etcd_ca", &flags.etcd_ca},
      {"fleet_etcd_cert", &flags.etcd_cert},
      {"fleet_etcd_key", &flags.etcd_key},
  };
  for (const auto& [name, path] : files) {
    if (path->empty()) continue;
    if (absl::Status status = CheckReadable(name, *path); !status.ok()) return status;
  }
  options.etcd.ca_file = flags.etcd_ca;
  options.etcd.cert_file = flags.etcd_cert;
  options.etcd.key_file = flags.etcd_key;

  if (flags.etcd_user.empty() != flags.etcd_password_file.empty()) {
    return absl::InvalidArgumentError(
        "--fleet_etcd_user and --fleet_etcd_password_file go together: etcd's user and the "
        "file holding its password");
  }
  if (!flags.etcd_user.empty()) {
    std::ifstream file(flags.etcd_password_file);
    if (!file) {
      return FlagError("fleet_etcd_password_file", flags.etcd_password_file, "cannot be read");
    }
    std::stringstream content;
    content << file.rdbuf();
    // One line, as `echo secret > file` writes it: the newline is not the password's.
    std::string password = content.str();
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) {
      password.pop_back();
    }
    if (password.empty()) {
      return FlagError("fleet_etcd_password_file", flags.etcd_password_file, "is empty");
    }
    options.etcd.username = flags.etcd_user;
    options.etcd.password = std::move(password);
  }
  return options;
}

// ---- FleetMetrics ----------------------------------------------------------------------------

std::vector<prometheus::MetricFamily> FleetMetrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> families;
  families.push_back(Family("tunnelagent_fleet_registered",
                            "1 while this node's registration is in etcd (written, and its "
                            "lease renewed less than a TTL ago), else 0; 0 without --fleet_etcd",
                            MetricType::Gauge));
  AddSample(families.back(), {}, registered() ? 1 : 0);
  families.push_back(Family("tunnelagent_fleet_etcd_errors_total",
                            "Calls to etcd of the fleet registration that failed (etcd "
                            "unreachable, refused, or the lease found lapsed)",
                            MetricType::Counter));
  AddSample(families.back(), {}, static_cast<double>(etcd_errors()));
  families.push_back(Family("tunnelagent_fleet_registrations_total",
                            "Registrations written to etcd: the first, and each one after a "
                            "lease was lost",
                            MetricType::Counter));
  AddSample(families.back(), {}, static_cast<double>(registrations()));
  return families;
}

void FleetMetrics::RegisteredUntil(absl::Time until) {
  absl::MutexLock lock(&mu_);
  registered_until_ = until;
}

void FleetMetrics::NotRegistered() {
  absl::MutexLock lock(&mu_);
  registered_until_ = absl::InfinitePast();
}

bool FleetMetrics::registered() const {
  absl::MutexLock lock(&mu_);
  return absl::Now() < registered_until_;
}

// ---- FleetRegistration -----------------------------------------------------------------------

std::unique_ptr<FleetRegistration> FleetRegistration::Start(FleetRegistrationOptions options,
                                                            std::shared_ptr<FleetMetrics> metrics) {
  return std::unique_ptr<FleetRegistration>(
      new FleetRegistration(std::move(options), std::move(metrics)));
}

FleetRegistration::FleetRegistration(FleetRegistrationOptions options,
                                     std::shared_ptr<FleetMetrics> metrics)
    : options_(std::move(options)), metrics_(std::move(metrics)) {
  thread_ = std::thread([this] { Run(); });
}

FleetRegistration::~FleetRegistration() { Stop(); }

void FleetRegistration::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void FleetRegistration::Leave() {
  Stop();
  const int64_t lease = this->lease();
  if (lease == 0) return;
  // The thread has stopped: the client is this one's now (made again if it had been dropped).
  if (client_ == nullptr) {
    absl::StatusOr<std::unique_ptr<etcd::Client>> client = etcd::Client::Connect(options_.etcd);
    if (!client.ok()) {
      Log("WARNING", "fleet: %s: cannot revoke lease %x (%s): the key goes when it lapses",
          options_.key, lease, client.status().ToString());
      return;
    }
    client_ = *std::move(client);
  }
  if (absl::Status status = client_->RevokeLease(lease); !status.ok()) {
    metrics_->AddEtcdError();
    Log("WARNING", "fleet: %s: cannot revoke lease %x (%s): the key goes when it lapses",
        options_.key, lease, status.ToString());
    return;
  }
  SetLease(0);
  metrics_->NotRegistered();
  Log("INFO", "fleet: %s: lease %x revoked, the node has left the fleet", options_.key, lease);
}

int64_t FleetRegistration::lease() const {
  absl::MutexLock lock(&mu_);
  return lease_;
}

void FleetRegistration::SetLease(int64_t lease) {
  absl::MutexLock lock(&mu_);
  lease_ = lease;
}

bool FleetRegistration::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

void FleetRegistration::Run() {
  const absl::Duration renew_interval = options_.lease_ttl / 3;
  absl::Duration retry = options_.first_retry;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    Round round;
    const int64_t lease = this->lease();
    if (client_ == nullptr) {
      round = Connect();
    } else if (superseded_) {
      round = WaitForKeyGone();
    } else if (lease == 0) {
      round = Register();
    } else if (failures_ > 0) {
      // Failing until now: the lease may have lapsed meanwhile, or etcd come back from a
      // backup; renew it, then make sure the key is still this agent's.
      round = Renew(lease);
      if (round == Round::kDone) round = CheckKey(lease);
    } else {
      round = Renew(lease);
    }
    switch (round) {
      case Round::kDone:
        if (failures_ > 0) EtcdAnswered();
        retry = options_.first_retry;
        if (!Sleep(renew_interval)) return;
        break;
      case Round::kAgain:
        break;
      case Round::kFailed:
        // etcd failing for a TTL: a new client. Its channel connects at once, where the old
        // one's may be waiting out gRPC's reconnect backoff, and its endpoints' names are
        // resolved again (a member may have moved). The lease, if any, stays this agent's:
        // the new client renews it as the old one did.
        if (client_ != nullptr && absl::Now() - failing_since_ >= options_.lease_ttl &&
            absl::Now() - connected_at_ >= options_.lease_ttl) {
          client_.reset();
        }
        if (!Sleep(retry)) return;
        retry = std::min(retry * 2, options_.max_retry);
        break;
    }
  }
}

FleetRegistration::Round FleetRegistration::Connect() {
  absl::StatusOr<std::unique_ptr<etcd::Client>> client = etcd::Client::Connect(options_.etcd);
  if (!client.ok()) {
    EtcdFailed("connecting", client.status());
    return Round::kFailed;
  }
  client_ = *std::move(client);
  connected_at_ = absl::Now();
  return Round::kAgain;
}

absl::StatusOr<bool> FleetRegistration::Write(int64_t lease, bool take_over) {
  v1::NodeRegistration registration = options_.registration;
  *registration.mutable_registered_at() =
      google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(absl::Now()));
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  // Every field, empty ones too: a reader with jq or etcdctl sees the whole record.
  print.always_print_primitive_fields = true;
  if (auto status = google::protobuf::util::MessageToJsonString(registration, &json, print);
      !status.ok()) {
    return absl::InternalError(absl::StrCat("encoding the registration: ", status.ToString()));
  }
  if (take_over) {
    absl::StatusOr<int64_t> revision = client_->Put(options_.key, json, lease);
    if (!revision.ok()) return revision.status();
    return true;
  }
  return client_->PutIfUnchanged(options_.key, json, /*mod_revision=*/0, lease);
}

FleetRegistration::Round FleetRegistration::Register() {
  const absl::Time asked = absl::Now();
  absl::StatusOr<int64_t> lease = client_->GrantLease(options_.lease_ttl);
  if (!lease.ok()) {
    EtcdFailed("granting a lease", lease.status());
    return Round::kFailed;
  }
  // The first registration replaces whatever the key holds (a killed agent's registration);
  // later ones only a key that has gone.
  const bool take_over = !ever_registered_;
  absl::StatusOr<bool> written = Write(*lease, take_over);
  if (!written.ok() || !*written) {
    // The lease holds nothing: let it go now rather than keep it for a TTL.
    client_->RevokeLease(*lease).IgnoreError();
  }
  if (!written.ok()) {
    EtcdFailed("writing the registration", written.status());
    return Round::kFailed;
  }
  if (!*written) {
    superseded_ = true;
    metrics_->NotRegistered();
    absl::StatusOr<etcd::RangeResult> held = client_->Get(options_.key);
    const int64_t other =
        held.ok() && !held->kvs.empty() ? held->kvs.front().lease : static_cast<int64_t>(-1);
    Log("WARNING",
        "fleet: %s was registered by another agent (lease %x) while this one's lease was "
        "lost: another agent of node %s (a newer one after a hot upgrade, or a second node of "
        "the same name) holds it; this agent stands back and registers again once the key "
        "has gone",
        options_.key, other, options_.registration.node());
    return Round::kDone;
  }
  SetLease(*lease);
  ever_registered_ = true;
  metrics_->AddRegistration();
  metrics_->RegisteredUntil(asked + options_.lease_ttl);
  Log("INFO", "fleet: registered %s (lease %x, TTL %s, renewed every %s)", options_.key, *lease,
      absl::FormatDuration(options_.lease_ttl),
      absl::FormatDuration(absl::Trunc(options_.lease_ttl / 3, absl::Milliseconds(1))));
  return Round::kDone;
}

FleetRegistration::Round FleetRegistration::Renew(int64_t lease) {
  const absl::Time asked = absl::Now();
  absl::StatusOr<absl::Duration> ttl = client_->KeepAliveOnce(lease);
  if (ttl.ok()) {
    metrics_->RegisteredUntil(asked + *ttl);
    return Round::kDone;
  }
  if (absl::IsNotFound(ttl.status())) {
    // Lapsed (etcd away longer than the TTL, or this agent stalled) or revoked by someone:
    // the key went with it. Register again at once, under a new lease.
    metrics_->AddEtcdError();
    metrics_->NotRegistered();
    SetLease(0);
    Log("WARNING", "fleet: %s: lease %x has lapsed or was revoked (%s); registering again",
        options_.key, lease, ttl.status().message());
    return Round::kAgain;
  }
  EtcdFailed("renewing the lease", ttl.status());
  return Round::kFailed;
}

FleetRegistration::Round FleetRegistration::CheckKey(int64_t lease) {
  absl::StatusOr<etcd::RangeResult> held = client_->Get(options_.key);
  if (!held.ok()) {
    EtcdFailed("reading the registration", held.status());
    return Round::kFailed;
  }
  if (!held->kvs.empty() && held->kvs.front().lease == lease) return Round::kDone;
  if (held->kvs.empty()) {
    // Gone while the lease lives (deleted by hand, or etcd restored from a backup): written
    // again under the same lease, if nobody has taken it meanwhile.
    absl::StatusOr<bool> written = Write(lease, /*take_over=*/false);
    if (!written.ok()) {
      EtcdFailed("writing the registration", written.status());
      return Round::kFailed;
    }
    if (*written) {
      metrics_->AddRegistration();
      Log("WARNING", "fleet: %s had gone while lease %x lived; registered again", options_.key,
          lease);
      return Round::kDone;
    }
  }
  // Another agent's registration holds the key: stand back (see the header).
  superseded_ = true;
  metrics_->NotRegistered();
  client_->RevokeLease(lease).IgnoreError();
  SetLease(0);
  Log("WARNING",
      "fleet: %s is held by another agent's registration (lease %x, not this one's %x): "
      "another agent of node %s registered after this one; this agent stands back and "
      "registers again once the key has gone",
      options_.key, held->kvs.empty() ? int64_t{-1} : held->kvs.front().lease, lease,
      options_.registration.node());
  return Round::kDone;
}

FleetRegistration::Round FleetRegistration::WaitForKeyGone() {
  absl::StatusOr<etcd::RangeResult> held = client_->Get(options_.key);
  if (!held.ok()) {
    EtcdFailed("reading the registration", held.status());
    return Round::kFailed;
  }
  if (!held->kvs.empty()) return Round::kDone;  // still the other agent's: look again later
  superseded_ = false;
  Log("INFO", "fleet: %s has gone; registering again", options_.key);
  return Round::kAgain;
}

void FleetRegistration::EtcdFailed(absl::string_view what, const absl::Status& status) {
  metrics_->AddEtcdError();
  const absl::Time now = absl::Now();
  if (++failures_ == 1) failing_since_ = now;
  if (failures_ == 1 || now - last_failure_log_ >= kFailureLogInterval) {
    last_failure_log_ = now;
    Log("WARNING",
        "fleet: %s: %s: %s (%d failure(s) in a row; the agent serves and forwards as before, "
        "and retries)",
        options_.key, what, status.ToString(), failures_);
  }
}

void FleetRegistration::EtcdAnswered() {
  Log("INFO", "fleet: %s: etcd answers again after %d failure(s)", options_.key, failures_);
  failures_ = 0;
}

}  // namespace tunnelagent::agent
