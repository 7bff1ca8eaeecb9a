#include "clients/tunnel_controller/fleet.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "yaml-cpp/yaml.h"

namespace tunnelagent::controller {
namespace {

constexpr uint32_t kMinMtu = 68;
constexpr uint32_t kMaxMtu = 65535;
const absl::Duration kMinKeepalive = absl::Milliseconds(100);
const absl::Duration kMaxKeepalive = absl::Hours(1);

struct ModeEntry {
  const char* name;
  v1::TunnelMode mode;
};
constexpr ModeEntry kModes[] = {
    {"gre", v1::TUNNEL_MODE_GRE},       {"gretap", v1::TUNNEL_MODE_GRETAP},
    {"ipip", v1::TUNNEL_MODE_IPIP},     {"sit", v1::TUNNEL_MODE_SIT},
    {"ip6gre", v1::TUNNEL_MODE_IP6GRE}, {"ip6gretap", v1::TUNNEL_MODE_IP6GRETAP},
    {"ip6tnl", v1::TUNNEL_MODE_IP6TNL},
};

std::string Quote(absl::string_view text) { return absl::StrCat("\"", text, "\""); }

absl::Status CheckNodeName(absl::string_view name) {
  if (name.size() > kMaxNodeName) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(name), " is longer than ", kMaxNodeName, " characters"));
  }
  if (!absl::ascii_isalnum(name.front())) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(name), " must start with a letter or digit"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(name), " may hold only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAgentTarget(absl::string_view target) {
  for (char c : target) {
    if (absl::ascii_isspace(c)) {
      return absl::InvalidArgumentError(absl::StrCat(Quote(target), " contains white space"));
    }
  }
  if (absl::StartsWith(target, "unix:")) {
    if (target.size() == 5) return absl::InvalidArgumentError("unix: needs a socket path");
    return absl::OkStatus();
  }
  const size_t colon = target.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(target.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(target), " is not unix:/path or host:port"));
  }
  return absl::OkStatus();
}

// A prefix of a node's `prefixes`, parsed.
struct ParsedPrefix {
  bool v6 = false;
  uint32_t v4 = 0;  // host byte order
  int length = 0;
  std::string text;  // canonical
};

absl::StatusOr<ParsedPrefix> ParsePrefix(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  ParsedPrefix p;
  in_addr a4{};
  in6_addr a6{};
  if (parts.size() == 2 && inet_pton(AF_INET, parts[0].c_str(), &a4) == 1) {
    p.v6 = false;
  } else if (parts.size() == 2 && inet_pton(AF_INET6, parts[0].c_str(), &a6) == 1) {
    p.v6 = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(text), " is not a prefix like 10.244.1.0/24 or fd00:1::/64"));
  }
  const int max = p.v6 ? 128 : 32;
  if (!absl::SimpleAtoi(parts[1], &p.length) || p.length < 0 || p.length > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(text), ": the prefix length must be 0..", max));
  }
  char out[INET6_ADDRSTRLEN];
  if (!p.v6) {
    p.v4 = ntohl(a4.s_addr);
    const uint32_t mask = p.length == 0 ? 0 : ~uint32_t{0} << (32 - p.length);
    if ((p.v4 & ~mask) != 0) {
      in_addr net{};
      net.s_addr = htonl(p.v4 & mask);
      inet_ntop(AF_INET, &net, out, sizeof(out));
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(text), " has host bits set (", out, "/", p.length, " is the prefix)"));
    }
    inet_ntop(AF_INET, &a4, out, sizeof(out));
  } else {
    in6_addr net = a6;
    for (int i = 0; i < 16; ++i) {
      const int keep = std::clamp(p.length - 8 * i, 0, 8);
      net.s6_addr[i] &= static_cast<uint8_t>(0xff00 >> keep);
    }
    if (std::memcmp(&net, &a6, sizeof(net)) != 0) {
      inet_ntop(AF_INET6, &net, out, sizeof(out));
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(text), " has host bits set (", out, "/", p.length, " is the prefix)"));
    }
    inet_ntop(AF_INET6, &a6, out, sizeof(out));
  }
  p.text = absl::StrCat(out, "/", p.length);
  return p;
}

// Whether one of the two contains the other (prefixes either nest or are disjoint).
bool Overlaps(const ParsedPrefix& p, const InnerPool& pool) {
  const int shorter = std::min(p.length, pool.length);
  const uint32_t mask = shorter == 0 ? 0 : ~uint32_t{0} << (32 - shorter);
  return (p.v4 & mask) == (pool.network & mask);
}

// Walks the YAML tree; every error carries the file, the node's line and column and the
// field's path.
class Parser {
 public:
  Parser(absl::string_view source, absl::string_view base_dir, FleetText kind)
      : source_(source), base_dir_(base_dir), kind_(kind) {}

  absl::StatusOr<Fleet> Parse(absl::string_view content) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(content));
    } catch (const YAML::ParserException& e) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ":", e.mark.line + 1, ":",
                                                     e.mark.column + 1, ": bad YAML: ", e.msg));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": bad YAML: ", e.what()));
    }
    fleet_.source = source_;
    if (!root.IsDefined() || root.IsNull()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": empty file (want defaults, nodes and topology)"));
    }
    if (!root.IsMap())
      return Error(root, "", "the file must be a mapping (defaults, nodes, topology)");
    if (absl::Status s = OnlyKeys(root, "", {"defaults", "nodes", "topology"}); !s.ok()) return s;
    if (absl::Status s = ParseDefaults(root["defaults"], root); !s.ok()) return s;
    if (absl::Status s = ParseNodes(root["nodes"], root); !s.ok()) return s;
    if (absl::Status s = ParseTopology(root["topology"], root); !s.ok()) return s;
    if (absl::Status s = CheckMultipoint(root); !s.ok()) return s;
    fleet_.default_tls = default_tls_;
    fleet_.default_token_file = default_token_file_;
    return std::move(fleet_);
  }

 private:
  absl::Status Error(const YAML::Node& at, absl::string_view field, absl::string_view problem) {
    const YAML::Mark mark = at.Mark();
    std::string where = source_;
    if (mark.line >= 0) absl::StrAppend(&where, ":", mark.line + 1, ":", mark.column + 1);
    if (field.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", problem));
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", problem));
  }

  static Position PositionOf(const YAML::Node& node) {
    const YAML::Mark mark = node.Mark();
    if (mark.line < 0) return {};
    return {mark.line + 1, mark.column + 1};
  }

  static std::string Join(absl::string_view parent, absl::string_view key) {
    return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
  }

  // Keys of `map` must be among `allowed`.
  absl::Status OnlyKeys(const YAML::Node& map, absl::string_view field,
                        std::initializer_list<absl::string_view> allowed) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar()) return Error(it->first, field, "keys must be plain words");
      const std::string key = it->first.Scalar();
      bool ok = false;
      for (absl::string_view a : allowed) ok = ok || a == key;
      if (!ok) {
        std::string list;
        for (absl::string_view a : allowed) absl::StrAppend(&list, list.empty() ? "" : ", ", a);
        return Error(it->first, Join(field, key),
                     absl::StrCat("unknown field (known: ", list, ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Scalar(const YAML::Node& node, absl::string_view field) {
    if (!node.IsScalar()) return Error(node, field, "must be a single value");
    return node.Scalar();
  }

  absl::StatusOr<std::string> NonEmptyString(const YAML::Node& node, absl::string_view field) {
    absl::StatusOr<std::string> text = Scalar(node, field);
    if (!text.ok()) return text.status();
    if (text->empty()) return Error(node, field, "must not be empty");
    return text;
  }

  absl::StatusOr<bool> Bool(const YAML::Node& node, absl::string_view field) {
    absl::StatusOr<std::string> text = Scalar(node, field);
    if (!text.ok()) return text.status();
    const std::string lower = absl::AsciiStrToLower(*text);
    if (lower == "true" || lower == "yes" || lower == "on") return true;
    if (lower == "false" || lower == "no" || lower == "off") return false;
    return Error(node, field, absl::StrCat(Quote(*text), " is not true or false"));
  }

  absl::StatusOr<uint32_t> Uint(const YAML::Node& node, absl::string_view field, uint64_t min,
                                uint64_t max) {
    absl::StatusOr<std::string> text = Scalar(node, field);
    if (!text.ok()) return text.status();
    uint64_t value = 0;
    bool parsed = false;
    if (absl::StartsWithIgnoreCase(*text, "0x")) {
      parsed = absl::SimpleHexAtoi(text->substr(2), &value) && text->size() > 2;
    } else {
      parsed =
          !text->empty() && absl::ascii_isdigit(text->front()) && absl::SimpleAtoi(*text, &value);
    }
    if (!parsed) return Error(node, field, absl::StrCat(Quote(*text), " is not a number"));
    if (value < min || value > max) {
      return Error(node, field, absl::StrCat(value, " is out of range ", min, "..", max));
    }
    return static_cast<uint32_t>(value);
  }

  absl::StatusOr<LinkSettings> ParseSettings(const YAML::Node& map, absl::string_view field,
                                             LinkSettings settings) {
    if (const YAML::Node n = map["mode"]; n) {
      absl::StatusOr<std::string> text = NonEmptyString(n, Join(field, "mode"));
      if (!text.ok()) return text.status();
      absl::StatusOr<v1::TunnelMode> mode = ParseMode(*text);
      if (!mode.ok()) return Error(n, Join(field, "mode"), mode.status().message());
      settings.mode = *mode;
    }
    if (const YAML::Node n = map["key"]; n) {
      absl::StatusOr<std::string> text = NonEmptyString(n, Join(field, "key"));
      if (!text.ok()) return text.status();
      const std::string lower = absl::AsciiStrToLower(*text);
      if (lower == "auto") {
        settings.key = KeySetting{KeyPolicy::kAuto, 0};
      } else if (lower == "none") {
        settings.key = KeySetting{KeyPolicy::kNone, 0};
      } else {
        absl::StatusOr<uint32_t> key = Uint(n, Join(field, "key"), 0, UINT32_MAX);
        if (!key.ok()) {
          return Error(
              n, Join(field, "key"),
              absl::StrCat(Quote(*text), " is not auto, none or a number 0..", UINT32_MAX));
        }
        settings.key = KeySetting{KeyPolicy::kFixed, *key};
      }
    }
    if (const YAML::Node n = map["mtu"]; n) {
      absl::StatusOr<std::string> text = Scalar(n, Join(field, "mtu"));
      if (!text.ok()) return text.status();
      if (absl::AsciiStrToLower(*text) == "auto" || *text == "0") {
        settings.mtu = 0;
      } else {
        absl::StatusOr<uint32_t> mtu = Uint(n, Join(field, "mtu"), kMinMtu, kMaxMtu);
        if (!mtu.ok()) return mtu.status();
        settings.mtu = *mtu;
      }
    }
    if (const YAML::Node n = map["checksum"]; n) {
      absl::StatusOr<bool> on = Bool(n, Join(field, "checksum"));
      if (!on.ok()) return on.status();
      settings.checksum = *on;
    }
    if (const YAML::Node n = map["keepalive"]; n) {
      const std::string kf = Join(field, "keepalive");
      if (!n.IsMap()) return Error(n, kf, "must be a mapping like {interval: 10s, retries: 3}");
      if (absl::Status s = OnlyKeys(n, kf, {"interval", "retries"}); !s.ok()) return s;
      KeepaliveSetting keepalive;
      const YAML::Node interval = n["interval"];
      if (!interval) return Error(n, Join(kf, "interval"), "required (0 turns keepalive off)");
      absl::StatusOr<std::string> text = Scalar(interval, Join(kf, "interval"));
      if (!text.ok()) return text.status();
      absl::StatusOr<absl::Duration> d = ParseDurationText(*text);
      if (!d.ok()) return Error(interval, Join(kf, "interval"), d.status().message());
      if (*d != absl::ZeroDuration() && (*d < kMinKeepalive || *d > kMaxKeepalive)) {
        return Error(interval, Join(kf, "interval"),
                     absl::StrCat(Quote(*text), " is out of range 100ms..1h (0: off)"));
      }
      keepalive.interval = *d;
      if (const YAML::Node r = n["retries"]; r) {
        absl::StatusOr<uint32_t> retries = Uint(r, Join(kf, "retries"), 1, 255);
        if (!retries.ok()) return retries.status();
        keepalive.retries = *retries;
      }
      settings.keepalive = keepalive;
    }
    return settings;
  }

  std::string ResolvePath(const std::string& path) const {
    if (path.empty() || path == "-" || path.front() == '/' || base_dir_.empty()) return path;
    return absl::StrCat(base_dir_, "/", path);
  }

  // tls: true | false | {ca, cert, key, serverName}; field by field over `tls`.
  absl::Status ParseTls(const YAML::Node& n, absl::string_view field, clients::TlsOptions* tls) {
    if (n.IsScalar()) {
      absl::StatusOr<bool> on = Bool(n, field);
      if (!on.ok()) {
        return Error(n, field, "must be true, false or a mapping {ca, cert, key, serverName}");
      }
      if (!*on) {
        *tls = clients::TlsOptions();
      } else {
        tls->enabled = true;
      }
      return absl::OkStatus();
    }
    if (!n.IsMap())
      return Error(n, field, "must be true, false or a mapping {ca, cert, key, serverName}");
    if (absl::Status s = OnlyKeys(n, field, {"ca", "cert", "key", "serverName"}); !s.ok()) return s;
    tls->enabled = true;
    struct {
      const char* key;
      std::string* value;
      bool path;
    } fields[] = {{"ca", &tls->ca_file, true},
                  {"cert", &tls->cert_file, true},
                  {"key", &tls->key_file, true},
                  {"serverName", &tls->server_name, false}};
    for (const auto& f : fields) {
      if (const YAML::Node v = n[f.key]; v) {
        absl::StatusOr<std::string> text = NonEmptyString(v, Join(field, f.key));
        if (!text.ok()) return text.status();
        *f.value = f.path ? ResolvePath(*text) : *text;
      }
    }
    if (tls->cert_file.empty() != tls->key_file.empty()) {
      return Error(n, field, "cert and key go together (mutual TLS)");
    }
    return absl::OkStatus();
  }

  absl::Status ParseDefaults(const YAML::Node& n, const YAML::Node& root) {
    if (!n) return Error(root, "defaults", "required (at least innerPool)");
    if (!n.IsMap()) return Error(n, "defaults", "must be a mapping");
    if (absl::Status s = OnlyKeys(n, "defaults",
                                  {"mode", "key", "innerPool", "mtu", "checksum", "keepalive",
                                   "tls", "tokenFile", "multipoint"});
        !s.ok()) {
      return s;
    }
    absl::StatusOr<LinkSettings> settings = ParseSettings(n, "defaults", {});
    if (!settings.ok()) return settings.status();
    fleet_.defaults = *std::move(settings);
    if (!fleet_.defaults.mode.has_value()) fleet_.defaults.mode = v1::TUNNEL_MODE_GRE;
    if (!fleet_.defaults.key.has_value()) fleet_.defaults.key = KeySetting{KeyPolicy::kAuto, 0};

    const YAML::Node pool = n["innerPool"];
    if (!pool)
      return Error(n, "defaults.innerPool", "required (an IPv4 prefix, e.g. 100.64.0.0/16)");
    absl::StatusOr<std::string> text = NonEmptyString(pool, "defaults.innerPool");
    if (!text.ok()) return text.status();
    std::vector<std::string> parts = absl::StrSplit(*text, '/');
    in_addr addr{};
    int length = -1;
    if (parts.size() != 2 || inet_pton(AF_INET, parts[0].c_str(), &addr) != 1 ||
        !absl::SimpleAtoi(parts[1], &length) || length < 0 || length > 32) {
      return Error(pool, "defaults.innerPool",
                   absl::StrCat(Quote(*text), " is not an IPv4 prefix like 100.64.0.0/16"));
    }
    if (length > 31) {
      return Error(pool, "defaults.innerPool",
                   absl::StrCat(Quote(*text), " is too small: each link takes a /31"));
    }
    const uint32_t network = ntohl(addr.s_addr);
    const uint32_t mask = length == 0 ? 0 : ~uint32_t{0} << (32 - length);
    if ((network & ~mask) != 0) {
      return Error(pool, "defaults.innerPool", absl::StrCat(Quote(*text), " has host bits set"));
    }
    fleet_.inner_pool = {network, length, *text};

    if (const YAML::Node t = n["tls"]; t) {
      if (absl::Status s = ParseTls(t, "defaults.tls", &default_tls_); !s.ok()) return s;
    }
    if (const YAML::Node t = n["tokenFile"]; t) {
      absl::StatusOr<std::string> path = NonEmptyString(t, "defaults.tokenFile");
      if (!path.ok()) return path.status();
      default_token_file_ = ResolvePath(*path);
    }
    if (const YAML::Node m = n["multipoint"]; m) {
      if (absl::Status s = ParseMultipoint(m, "defaults.multipoint"); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // multipoint: true | false | {device: NAME}; replaces whatever was set before.
  absl::Status ParseMultipoint(const YAML::Node& n, const std::string& field) {
    MultipointSetting setting;
    setting.position = PositionOf(n);
    setting.field = field;
    if (n.IsScalar()) {
      absl::StatusOr<bool> on = Bool(n, field);
      if (!on.ok()) return Error(n, field, "must be true, false or a mapping {device: NAME}");
      setting.enabled = *on;
    } else if (n.IsMap()) {
      if (absl::Status s = OnlyKeys(n, field, {"device"}); !s.ok()) return s;
      setting.enabled = true;
      if (const YAML::Node d = n["device"]; d) {
        absl::StatusOr<std::string> device = NonEmptyString(d, Join(field, "device"));
        if (!device.ok()) return device.status();
        if (absl::Status s = CheckDeviceName(*device); !s.ok()) {
          return Error(d, Join(field, "device"), s.message());
        }
        setting.device = *device;
      }
    } else {
      return Error(n, field, "must be true, false or a mapping {device: NAME}");
    }
    fleet_.multipoint = std::move(setting);
    multipoint_at_ = n;
    return absl::OkStatus();
  }

  // As the kernel (and the agent) take interface names.
  static absl::Status CheckDeviceName(absl::string_view name) {
    constexpr size_t kMaxDevice = 15;
    if (name.size() > kMaxDevice) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(name), " is longer than ", kMaxDevice, " characters"));
    }
    if (name == "." || name == "..") {
      return absl::InvalidArgumentError(absl::StrCat(Quote(name), " is not a device name"));
    }
    for (char c : name) {
      if (c == '/' || c == ':' || absl::ascii_isspace(c) || !absl::ascii_isprint(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat(Quote(name), " may not hold '/', ':' or white space"));
      }
    }
    return absl::OkStatus();
  }

  // A node's `prefixes`: CIDRs without host bits, outside the inner pool (whose addresses the
  // multipoint devices take), each advertised by one node only.
  absl::Status ParsePrefixes(const YAML::Node& n, const std::string& field, Node* node) {
    if (!n.IsSequence()) return Error(n, field, "must be a list of prefixes like [10.244.1.0/24]");
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string f = absl::StrCat(field, "[", i, "]");
      absl::StatusOr<std::string> text = NonEmptyString(n[i], f);
      if (!text.ok()) return text.status();
      absl::StatusOr<ParsedPrefix> prefix = ParsePrefix(*text);
      if (!prefix.ok()) return Error(n[i], f, prefix.status().message());
      if (!prefix->v6 && Overlaps(*prefix, fleet_.inner_pool)) {
        return Error(n[i], f,
                     absl::StrCat(prefix->text, " overlaps defaults.innerPool ",
                                  fleet_.inner_pool.text, " (the overlay's own addresses)"));
      }
      if (auto it = advertised_.find(prefix->text); it != advertised_.end()) {
        return Error(n[i], f, absl::StrCat(prefix->text, " is already in ", it->second));
      }
      advertised_[prefix->text] = f;
      prefix_at_.push_back({n[i], f, prefix->v6});
      node->prefixes.push_back(prefix->text);
    }
    return absl::OkStatus();
  }

  // What holds only with multipoint, or only without it.
  absl::Status CheckMultipoint(const YAML::Node& root) {
    const MultipointSetting& m = fleet_.multipoint;
    if (!m.enabled) {
      if (!prefix_at_.empty()) {
        const PrefixAt& p = prefix_at_.front();
        return Error(p.at, p.field,
                     "prefixes are routed into a multipoint device: only for a multipoint "
                     "fleet (multipoint: true in defaults or topology)");
      }
      return absl::OkStatus();
    }
    if (fleet_.topology == TopologyType::kLinks) {
      return Error(multipoint_at_, m.field,
                   "links are point to point: multipoint is for mesh and hub-spoke");
    }
    if (!fleet_.overrides.empty()) {
      return Error(root["topology"]["overrides"], "topology.overrides",
                   absl::StrCat("a multipoint device has the same settings for all its peers: "
                                "give them in defaults (",
                                m.field, " is on)"));
    }
    const v1::TunnelMode mode = *fleet_.defaults.mode;
    if (!ModeCanBeMultipoint(mode)) {
      return Error(
          multipoint_at_, m.field,
          absl::StrCat(ModeName(mode),
                       " tunnels cannot be multipoint (gre, ipip, ip6gre and ip6tnl can)"));
    }
    if (mode == v1::TUNNEL_MODE_IPIP) {
      for (const PrefixAt& p : prefix_at_) {
        if (p.v6) return Error(p.at, p.field, "IPv6, which ipip tunnels do not carry");
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseNodes(const YAML::Node& n, const YAML::Node& root) {
    if (kind_ == FleetText::kDescription) {
      // The registered nodes are the members: listing some (pinned) is optional.
      if (!n || n.IsNull()) return absl::OkStatus();
      if (!n.IsSequence()) return Error(n, "nodes", "must be a list (or left out)");
    } else {
      if (!n) return Error(root, "nodes", "required (a list of nodes)");
      if (!n.IsSequence() || n.size() == 0) return Error(n, "nodes", "must be a non-empty list");
    }
    std::map<std::string, std::string> seen;  // name -> field
    std::map<std::string, std::string> underlays;
    for (size_t i = 0; i < n.size(); ++i) {
      const YAML::Node item = n[i];
      const std::string field = absl::StrCat("nodes[", i, "]");
      if (!item.IsMap()) return Error(item, field, "must be a mapping {name, agent, underlay}");
      if (absl::Status s =
              OnlyKeys(item, field, {"name", "agent", "underlay", "tls", "tokenFile", "prefixes"});
          !s.ok()) {
        return s;
      }
      Node node;
      node.position = PositionOf(item);
      node.tls = default_tls_;
      node.token_file = default_token_file_;
      for (const char* required : {"name", "agent", "underlay"}) {
        if (!item[required]) return Error(item, Join(field, required), "required");
      }
      absl::StatusOr<std::string> name = NonEmptyString(item["name"], Join(field, "name"));
      if (!name.ok()) return name.status();
      if (absl::Status s = CheckNodeName(*name); !s.ok()) {
        return Error(item["name"], Join(field, "name"), s.message());
      }
      if (auto it = seen.find(*name); it != seen.end()) {
        return Error(item["name"], Join(field, "name"),
                     absl::StrCat(Quote(*name), " is already the name of ", it->second));
      }
      seen[*name] = field;
      node.name = *name;

      absl::StatusOr<std::string> agent = NonEmptyString(item["agent"], Join(field, "agent"));
      if (!agent.ok()) return agent.status();
      if (absl::Status s = CheckAgentTarget(*agent); !s.ok()) {
        return Error(item["agent"], Join(field, "agent"), s.message());
      }
      node.agent = *agent;

      absl::StatusOr<std::string> underlay =
          NonEmptyString(item["underlay"], Join(field, "underlay"));
      if (!underlay.ok()) return underlay.status();
      in6_addr a6{};
      in_addr a4{};
      if (inet_pton(AF_INET, underlay->c_str(), &a4) == 1) {
        node.underlay_v6 = false;
      } else if (inet_pton(AF_INET6, underlay->c_str(), &a6) == 1) {
        node.underlay_v6 = true;
      } else {
        return Error(item["underlay"], Join(field, "underlay"),
                     absl::StrCat(Quote(*underlay), " is not an IP address"));
      }
      if (auto it = underlays.find(*underlay); it != underlays.end()) {
        return Error(item["underlay"], Join(field, "underlay"),
                     absl::StrCat(*underlay, " is already the underlay of ", it->second));
      }
      underlays[*underlay] = field;
      node.underlay = *underlay;

      if (const YAML::Node t = item["tls"]; t) {
        if (absl::Status s = ParseTls(t, Join(field, "tls"), &node.tls); !s.ok()) return s;
      }
      if (const YAML::Node t = item["tokenFile"]; t) {
        absl::StatusOr<std::string> path = NonEmptyString(t, Join(field, "tokenFile"));
        if (!path.ok()) return path.status();
        node.token_file = ResolvePath(*path);
      }
      if (const YAML::Node p = item["prefixes"]; p) {
        if (absl::Status s = ParsePrefixes(p, Join(field, "prefixes"), &node); !s.ok()) return s;
      }
      fleet_.nodes.push_back(std::move(node));
    }
    return absl::OkStatus();
  }

  // [a, b] or {nodes: [a, b], <settings>}; `with_settings`: the mapping form is allowed.
  absl::StatusOr<LinkSpec> ParseLink(const YAML::Node& item, const std::string& field,
                                     bool mapping_only) {
    LinkSpec link;
    link.position = PositionOf(item);
    link.field = field;
    YAML::Node pair;
    if (item.IsSequence() && !mapping_only) {
      pair = item;
    } else if (item.IsMap()) {
      if (absl::Status s =
              OnlyKeys(item, field, {"nodes", "mode", "key", "mtu", "checksum", "keepalive"});
          !s.ok()) {
        return s;
      }
      if (!item["nodes"]) return Error(item, Join(field, "nodes"), "required ([a, b])");
      pair = item["nodes"];
      absl::StatusOr<LinkSettings> settings = ParseSettings(item, field, {});
      if (!settings.ok()) return settings.status();
      link.settings = *std::move(settings);
    } else {
      return Error(item, field,
                   mapping_only ? "must be a mapping {nodes: [a, b], ...}"
                                : "must be [a, b] or {nodes: [a, b], ...}");
    }
    const std::string pair_field = item.IsMap() ? Join(field, "nodes") : field;
    if (!pair.IsSequence() || pair.size() != 2) {
      return Error(pair, pair_field, "must be a pair of node names [a, b]");
    }
    for (int i = 0; i < 2; ++i) {
      const std::string f = absl::StrCat(pair_field, "[", i, "]");
      absl::StatusOr<std::string> name = NonEmptyString(pair[i], f);
      if (!name.ok()) return name.status();
      if (absl::Status s = CheckNamed(*name); !s.ok()) return Error(pair[i], f, s.message());
      (i == 0 ? link.a : link.b) = *name;
    }
    if (link.a == link.b) {
      return Error(pair, pair_field, absl::StrCat("links ", Quote(link.a), " to itself"));
    }
    return link;
  }

  bool HasNode(const std::string& name) const {
    for (const Node& n : fleet_.nodes) {
      if (n.name == name) return true;
    }
    return false;
  }

  // A node the topology names: one of the file's; in a description, also a node that is not
  // listed but may register (a valid name).
  absl::Status CheckNamed(const std::string& name) const {
    if (HasNode(name)) return absl::OkStatus();
    if (kind_ == FleetText::kDescription) return CheckNodeName(name);
    return absl::InvalidArgumentError(absl::StrCat("no node named ", Quote(name)));
  }

  // A list of links; a pair given twice (either way round) is an error.
  absl::Status ParseLinkList(const YAML::Node& n, const std::string& field, bool mapping_only,
                             std::vector<LinkSpec>* out) {
    if (!n.IsSequence()) return Error(n, field, "must be a list");
    std::map<std::pair<std::string, std::string>, std::string> seen;
    for (size_t i = 0; i < n.size(); ++i) {
      absl::StatusOr<LinkSpec> link =
          ParseLink(n[i], absl::StrCat(field, "[", i, "]"), mapping_only);
      if (!link.ok()) return link.status();
      auto key = std::minmax(link->a, link->b);
      if (auto it = seen.find(key); it != seen.end()) {
        return Error(
            n[i], link->field,
            absl::StrCat("the pair ", key.first, ", ", key.second, " is already in ", it->second));
      }
      seen[key] = link->field;
      out->push_back(*std::move(link));
    }
    return absl::OkStatus();
  }

  absl::Status ParseTopology(const YAML::Node& n, const YAML::Node& root) {
    if (!n) return Error(root, "topology", "required ({type: mesh | hub-spoke | links})");
    if (!n.IsMap()) return Error(n, "topology", "must be a mapping {type: ...}");
    if (absl::Status s =
            OnlyKeys(n, "topology", {"type", "hub", "links", "overrides", "multipoint"});
        !s.ok()) {
      return s;
    }
    if (const YAML::Node m = n["multipoint"]; m) {
      if (absl::Status s = ParseMultipoint(m, "topology.multipoint"); !s.ok()) return s;
    }
    const YAML::Node type = n["type"];
    if (!type) return Error(n, "topology.type", "required (mesh, hub-spoke or links)");
    absl::StatusOr<std::string> text = NonEmptyString(type, "topology.type");
    if (!text.ok()) return text.status();
    if (*text == "mesh") {
      fleet_.topology = TopologyType::kMesh;
    } else if (*text == "hub-spoke") {
      fleet_.topology = TopologyType::kHubSpoke;
    } else if (*text == "links") {
      fleet_.topology = TopologyType::kLinks;
    } else {
      return Error(type, "topology.type",
                   absl::StrCat(Quote(*text), " is not mesh, hub-spoke or links"));
    }

    const YAML::Node hub = n["hub"];
    if (fleet_.topology == TopologyType::kHubSpoke) {
      if (!hub) return Error(n, "topology.hub", "required for hub-spoke (a node's name)");
      absl::StatusOr<std::string> name = NonEmptyString(hub, "topology.hub");
      if (!name.ok()) return name.status();
      if (absl::Status s = CheckNamed(*name); !s.ok())
        return Error(hub, "topology.hub", s.message());
      fleet_.hub = *name;
    } else if (hub) {
      return Error(hub, "topology.hub", "only for type hub-spoke");
    }

    const YAML::Node links = n["links"];
    if (fleet_.topology == TopologyType::kLinks) {
      if (!links) return Error(n, "topology.links", "required for type links ([[a, b], ...])");
      if (absl::Status s = ParseLinkList(links, "topology.links", false, &fleet_.links); !s.ok()) {
        return s;
      }
    } else if (links) {
      return Error(links, "topology.links", "only for type links (use overrides)");
    }

    const YAML::Node overrides = n["overrides"];
    if (overrides) {
      if (fleet_.topology == TopologyType::kLinks) {
        return Error(overrides, "topology.overrides",
                     "only for mesh and hub-spoke (give the settings in links)");
      }
      if (absl::Status s = ParseLinkList(overrides, "topology.overrides", true, &fleet_.overrides);
          !s.ok()) {
        return s;
      }
      for (size_t i = 0; i < fleet_.overrides.size(); ++i) {
        const LinkSpec& o = fleet_.overrides[i];
        if (fleet_.topology == TopologyType::kHubSpoke && o.a != fleet_.hub && o.b != fleet_.hub) {
          return Error(overrides[i], Join(o.field, "nodes"),
                       absl::StrCat("hub-spoke has no link between ", o.a, " and ", o.b,
                                    " (one must be the hub, ", fleet_.hub, ")"));
        }
      }
    }
    return absl::OkStatus();
  }

  std::string source_;
  std::string base_dir_;
  const FleetText kind_;
  Fleet fleet_;
  clients::TlsOptions default_tls_;
  std::string default_token_file_;
  // Where things were written, for the checks made once the whole file is read.
  YAML::Node multipoint_at_;
  struct PrefixAt {
    YAML::Node at;
    std::string field;
    bool v6 = false;
  };
  std::vector<PrefixAt> prefix_at_;
  std::map<std::string, std::string> advertised_;  // prefix -> field
};

}  // namespace

absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  for (const ModeEntry& m : kModes) {
    if (lower == m.name || lower == absl::StrCat("tunnel_mode_", m.name)) return m.mode;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      Quote(text), " is not a tunnel mode (gre, gretap, ipip, sit, ip6gre, ip6gretap, ip6tnl)"));
}

std::string ModeName(v1::TunnelMode mode) {
  for (const ModeEntry& m : kModes) {
    if (m.mode == mode) return m.name;
  }
  return absl::StrCat("mode", static_cast<int>(mode));
}

bool ModeHasKey(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_GRE || mode == v1::TUNNEL_MODE_GRETAP ||
         mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6GRETAP;
}

bool ModeHasKeepalive(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_GRE || mode == v1::TUNNEL_MODE_IPIP ||
         mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6TNL;
}

bool ModeCanBeMultipoint(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_GRE || mode == v1::TUNNEL_MODE_IPIP ||
         mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6TNL;
}

bool ModeUnderlayV6(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6GRETAP ||
         mode == v1::TUNNEL_MODE_IP6TNL;
}

absl::StatusOr<absl::Duration> ParseDurationText(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  absl::Duration d;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds) && !text.empty() &&
      (absl::ascii_isdigit(text.front()) || text.front() == '.')) {
    d = absl::Seconds(seconds);
  } else if (text.empty() || !absl::ParseDuration(text, &d) || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(text), " is not a duration like 10s, 500ms or 1m30s"));
  }
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(Quote(text), " is negative"));
  }
  return d;
}

absl::StatusOr<Fleet> ParseFleet(absl::string_view content, absl::string_view source,
                                 absl::string_view base_dir, FleetText kind) {
  return Parser(source, base_dir, kind).Parse(content);
}

absl::Status AddNode(Node node, Fleet* fleet) {
  if (node.name.empty()) return absl::InvalidArgumentError("no name");
  if (absl::Status s = CheckNodeName(node.name); !s.ok()) return s;
  for (const Node& n : fleet->nodes) {
    if (n.name == node.name) {
      return absl::InvalidArgumentError(absl::StrCat(Quote(node.name), " is already a node"));
    }
  }
  if (node.agent.empty()) return absl::InvalidArgumentError("agent: none given");
  if (absl::Status s = CheckAgentTarget(node.agent); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("agent: ", s.message()));
  }
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, node.underlay.c_str(), &a4) == 1) {
    node.underlay_v6 = false;
  } else if (inet_pton(AF_INET6, node.underlay.c_str(), &a6) == 1) {
    node.underlay_v6 = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("underlay: ", Quote(node.underlay), " is not an IP address"));
  }
  for (const Node& n : fleet->nodes) {
    if (n.underlay == node.underlay) {
      return absl::InvalidArgumentError(
          absl::StrCat("underlay: ", node.underlay, " is already the underlay of ", n.name));
    }
  }
  if (!node.prefixes.empty() && !fleet->multipoint.enabled) {
    return absl::InvalidArgumentError(
        "prefixes are routed into a multipoint device: only for a multipoint fleet");
  }
  std::map<std::string, std::string> advertised;  // prefix -> node
  for (const Node& n : fleet->nodes) {
    for (const std::string& p : n.prefixes) advertised[p] = n.name;
  }
  std::vector<std::string> canonical;
  for (const std::string& text : node.prefixes) {
    absl::StatusOr<ParsedPrefix> prefix = ParsePrefix(text);
    if (!prefix.ok())
      return absl::InvalidArgumentError(absl::StrCat("prefixes: ", prefix.status().message()));
    if (!prefix->v6 && Overlaps(*prefix, fleet->inner_pool)) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefixes: ", prefix->text, " overlaps defaults.innerPool ",
                       fleet->inner_pool.text, " (the overlay's own addresses)"));
    }
    if (prefix->v6 && fleet->defaults.mode == v1::TUNNEL_MODE_IPIP) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefixes: ", prefix->text, " is IPv6, which ipip tunnels do not carry"));
    }
    if (auto it = advertised.find(prefix->text); it != advertised.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prefixes: ", prefix->text, " is already ",
          it->second == node.name ? "given" : absl::StrCat("advertised by ", it->second)));
    }
    advertised[prefix->text] = node.name;
    canonical.push_back(prefix->text);
  }
  node.prefixes = std::move(canonical);
  node.tls = fleet->default_tls;
  node.token_file = fleet->default_token_file;
  node.position = {};
  fleet->nodes.push_back(std::move(node));
  return absl::OkStatus();
}

absl::StatusOr<Fleet> LoadFleetFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream content;
  content << file.rdbuf();
  if (file.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash == 0 ? 1 : slash);
  return ParseFleet(content.str(), path, dir);
}

}  // namespace tunnelagent::controller
