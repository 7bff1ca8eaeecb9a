#include "clients/tunnelctl/args.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "clients/common/version.h"
#include "dataplane/tunnel_mode_info.h"

namespace tunnelagent::tunnelctl {
namespace {

struct ModeName {
  absl::string_view name;
  v1::TunnelMode mode;
};

constexpr ModeName kModes[] = {
    {"gre", v1::TUNNEL_MODE_GRE},       {"ipip", v1::TUNNEL_MODE_IPIP},
    {"gretap", v1::TUNNEL_MODE_GRETAP}, {"sit", v1::TUNNEL_MODE_SIT},
    {"ip6gre", v1::TUNNEL_MODE_IP6GRE}, {"ip6gretap", v1::TUNNEL_MODE_IP6GRETAP},
    {"ip6tnl", v1::TUNNEL_MODE_IP6TNL},
};

// How ip(8) also spells those modes: `ip tunnel show` prints gre/ip, ip/ip, ipv6/ip and
// gre/ipv6; ip -6 tunnel takes ip6ip6, ipip6 and any, which our ip6tnl all is (it carries
// IPv4 and IPv6).
constexpr ModeName kIpModeSpellings[] = {
    {"gre/ip", v1::TUNNEL_MODE_GRE},     {"ip/ip", v1::TUNNEL_MODE_IPIP},
    {"ipv6/ip", v1::TUNNEL_MODE_SIT},    {"gre/ipv6", v1::TUNNEL_MODE_IP6GRE},
    {"ip6ip6", v1::TUNNEL_MODE_IP6TNL},  {"ipip6", v1::TUNNEL_MODE_IP6TNL},
    {"any", v1::TUNNEL_MODE_IP6TNL},     {"ipv6/ipv6", v1::TUNNEL_MODE_IP6TNL},
    {"ip/ipv6", v1::TUNNEL_MODE_IP6TNL}, {"any/ipv6", v1::TUNNEL_MODE_IP6TNL},
};
// ip(8) modes tunnel-agent does not have.
constexpr absl::string_view kModesNotHere[] = {"vti", "vti6", "isatap", "erspan", "ip6erspan"};

// ip(8) words that mean something else here, with what to write instead.
struct IpWordHint {
  absl::string_view word;
  absl::string_view hint;
};
constexpr IpWordHint kIpWordHints[] = {
    {"dev",
     "ip-tunnel(8)'s 'dev' binds the tunnel to an underlay device; the agent sends by "
     "the route to 'remote' (or each peer's underlay), from 'local'. 'dev NAME' names the "
     "tunnel only right after the command"},
    {"name", "'name NAME' names the tunnel only right after the command"},
    {"encaplimit", "ip6tnl's encapsulation limit is always the kernel's default (4)"},
    {"flowlabel", "the IPv6 flow label comes from the inner addresses (as auto_flowlabels)"},
};

// Where `tunnelctl help` describes a keyword of create and update.
enum class HelpSection {
  kNone,      // in the commands' synopses only (noaddresses, state, ...)
  kArgument,  // "Arguments of create and update"
  kOption,    // "Options of create and update"
  kNoForm,    // named in the options' heading: the no- forms that go back to the default
};

// A keyword of create, update, list, peer add or peer update, the field it sets, and its
// help: `tunnelctl help` is made from this table, the one the parser reads.
struct Keyword {
  absl::string_view word;
  // The proto field (of Tunnel, of ListTunnelsRequest for "state", of Peer for the peer
  // verbs; "keepalive_retries" is the retries of Peer.keepalive).
  absl::string_view field;
  bool takes_value;
  // May be given more than once (each adds an element).
  bool repeatable;
  HelpSection section = HelpSection::kNone;
  // The help entry of create and update: its first column and its text. An empty usage in
  // kArgument or kOption: the entry before it names and describes this keyword too.
  // {modes} and {mtu} in a text are filled in from kModes and dataplane::DeviceMtuRange.
  absl::string_view usage = "";
  absl::string_view help = "";
  // The same for peer add and peer update ("Arguments of peer add and peer update"); empty
  // usage and help: not a peer keyword, or described by the peer entry before it.
  absl::string_view peer_usage = "";
  absl::string_view peer_help = "";
};

using HS = HelpSection;
constexpr Keyword kKeywords[] = {
    // Peers only (peer add, peer update).
    {"underlay", "underlay", true, false, HS::kNone, "", "", "underlay ADDR",
     "underlay address of the peer, of the tunnel's underlay family"},
    {"allowed", "allowed_prefixes", true, true, HS::kNone, "", "", "allowed PREFIX",
     "inner prefixes sent to and accepted from the peer, without host bits, like 10.1.0.0/16 "
     "(repeatable, or comma-separated)"},
    {"noallowed", "allowed_prefixes", false, false},
    // Arguments of create and update; key, nokey, label and nolabels are peers' too (Peer
    // names those fields as Tunnel does).
    {"mode", "mode", true, false, HS::kArgument, "mode MODE", "{modes}"},
    {"remote", "remote", true, false, HS::kArgument, "remote ADDR",
     "underlay address of the far end"},
    {"local", "local", true, false, HS::kArgument, "local ADDR",
     "underlay source address (default: any)"},
    {"key", "key", true, false, HS::kArgument, "key KEY",
     "GRE key: 0-4294967295 or a dotted quad like 0.0.0.5 (default: none)", "key KEY",
     "GRE key sent to the peer (default: the tunnel's output key)"},
    {"nokey", "key", false, false, HS::kNoForm},
    {"mtu", "mtu", true, false, HS::kArgument, "mtu MTU", "{mtu}"},
    {"address", "addresses", true, true, HS::kArgument, "address CIDR",
     "address to put on the device, like 10.0.0.1/30 (repeatable)"},
    {"noaddresses", "addresses", false, false},
    {"route", "routes", true, true, HS::kArgument, "route PREFIX",
     "prefix to route into the tunnel, like 10.2.0.0/16 (repeatable)"},
    {"noroutes", "routes", false, false},
    {"label", "labels", true, true, HS::kArgument, "label KEY=VALUE",
     "label of the tunnel (repeatable)", "label KEY=VALUE", "label of the peer (repeatable)"},
    {"nolabels", "labels", false, false},
    {"state", "state", true, false},
    // GRE options and outer header fields, as ip-link(8) spells them.
    {"ikey", "input_key", true, false, HS::kOption, "ikey KEY, okey KEY",
     "GRE key of one direction: required on input, sent on output (default: that of key)"},
    {"okey", "output_key", true, false, HS::kOption},
    {"noikey", "input_key", false, false, HS::kNoForm},
    {"nookey", "output_key", false, false, HS::kNoForm},
    {"csum", "checksum", false, false, HS::kOption, "csum, icsum, ocsum",
     "GRE checksums both ways, on input only, on output only"},
    {"icsum", "input_checksum", false, false, HS::kOption},
    {"ocsum", "output_checksum", false, false, HS::kOption},
    {"nocsum", "checksum", false, false, HS::kNoForm},
    {"noicsum", "input_checksum", false, false, HS::kNoForm},
    {"noocsum", "output_checksum", false, false, HS::kNoForm},
    {"seq", "sequence", false, false, HS::kOption, "seq, iseq, oseq",
     "GRE sequence numbers both ways, on input only, on output only"},
    {"iseq", "input_sequence", false, false, HS::kOption},
    {"oseq", "output_sequence", false, false, HS::kOption},
    {"noseq", "sequence", false, false, HS::kNoForm},
    {"noiseq", "input_sequence", false, false, HS::kNoForm},
    {"nooseq", "output_sequence", false, false, HS::kNoForm},
    {"ttl", "ttl", true, false, HS::kOption, "ttl TTL|inherit",
     "outer TTL or hop limit, 1-255, or inherit (= 0) the inner packet's (alias: hoplimit; "
     "default: inherit, 64 for IPv6 underlays); nottl: the default"},
    {"hoplimit", "ttl", true, false, HS::kOption},
    {"nottl", "ttl", false, false, HS::kNoForm},
    {"tos", "tos", true, false, HS::kOption, "tos TOS|inherit",
     "outer TOS / traffic class: decimal 0-255 or hexadecimal 0xNN (unlike ip-link, a bare "
     "number is decimal), or inherit (alias: tclass)"},
    {"tclass", "tos", true, false, HS::kOption},
    {"pmtudisc", "pmtudisc", false, false, HS::kOption, "pmtudisc, nopmtudisc",
     "set DF on the outer IPv4 header (default), or only copy the inner DF; nopmtudisc needs "
     "ttl inherit"},
    {"nopmtudisc", "pmtudisc", false, false, HS::kOption},
    {"ignore-df", "ignore_df", false, false, HS::kOption, "ignore-df, noignore-df",
     "never set DF on the outer header (needs nopmtudisc)"},
    {"noignore-df", "ignore_df", false, false, HS::kOption},
    {"keepalive", "keepalive", true, false, HS::kOption, "keepalive INTERVAL[,RETRIES]",
     "send a keepalive every INTERVAL (seconds 0.1-3600, e.g. 10, 0.5, 500ms, 10s); the tunnel "
     "is down after RETRIES (0-255, default 0 = 3) without a reply (gre, ipip, ip6gre, ip6tnl); "
     "nokeepalive turns it off",
     "keepalive INTERVAL[,RETRIES], retries N",
     "dead-peer detection for this peer, as for tunnels (retries 0-255); nokeepalive turns it "
     "off"},
    {"retries", "keepalive_retries", true, false},
    {"nokeepalive", "keepalive", false, false, HS::kNoForm},
    // No remote: the peers (`tunnelctl peer ...`) are the far ends.
    {"multipoint", "multipoint", false, false, HS::kOption, "multipoint, nomultipoint",
     "one device for many peers (`peer add`), each packet sent to the peer whose allowed "
     "prefixes match its destination; multipoint clears remote, nomultipoint needs one (gre, "
     "ipip, sit, ip6gre, ip6tnl)"},
    {"nomultipoint", "multipoint", false, false, HS::kOption},
    // ip-link(8): encap { fou | none } [encap-sport { auto | PORT }] [encap-dport PORT]; the
    // three make up the one field `encap`.
    {"encap", "encap", true, false, HS::kOption,
     "encap fou|none [encap-sport auto|PORT] [encap-dport PORT]",
     "carry the tunnel's packets in UDP (fou, IPv4 underlays): to encap-dport (gre, gretap: "
     "default 4754; ipip, sit: required), from encap-sport (auto, the default: flows spread "
     "over a few source ports the kernel picks); none: plain"},
    {"encap-sport", "encap_sport", true, false, HS::kOption},
    {"encap-dport", "encap_dport", true, false, HS::kOption},
};

// The keywords each verb takes, in the order its error message lists them.
constexpr absl::string_view kCreateKeywords[] = {
    "mode",      "remote",      "local",     "key",    "ikey",        "okey",
    "csum",      "icsum",       "ocsum",     "seq",    "iseq",        "oseq",
    "ttl",       "hoplimit",    "tos",       "tclass", "pmtudisc",    "nopmtudisc",
    "ignore-df", "noignore-df", "keepalive", "encap",  "encap-sport", "encap-dport",
    "mtu",       "address",     "route",     "label",  "multipoint"};
constexpr absl::string_view kUpdateKeywords[] = {
    "mode",       "remote",      "local",    "key",         "nokey",       "ikey",
    "noikey",     "okey",        "nookey",   "csum",        "nocsum",      "icsum",
    "noicsum",    "ocsum",       "noocsum",  "seq",         "noseq",       "iseq",
    "noiseq",     "oseq",        "nooseq",   "ttl",         "hoplimit",    "nottl",
    "tos",        "tclass",      "pmtudisc", "nopmtudisc",  "ignore-df",   "noignore-df",
    "keepalive",  "nokeepalive", "encap",    "encap-sport", "encap-dport", "mtu",
    "address",    "route",       "label",    "noaddresses", "noroutes",    "nolabels",
    "multipoint", "nomultipoint"};
constexpr absl::string_view kListKeywords[] = {"mode", "state", "label"};
constexpr absl::string_view kPeerCreateKeywords[] = {"underlay",  "key",     "allowed",
                                                     "keepalive", "retries", "label"};
constexpr absl::string_view kPeerUpdateKeywords[] = {
    "underlay",  "key",     "nokey",       "allowed", "noallowed",
    "keepalive", "retries", "nokeepalive", "label",   "nolabels"};
constexpr absl::string_view kPeerCommands[] = {"add", "get", "list", "update", "delete", "apply"};

const Keyword* FindKeyword(absl::string_view word) {
  for (const Keyword& k : kKeywords) {
    if (k.word == word) return &k;
  }
  return nullptr;
}

template <size_t N>
bool Contains(const absl::string_view (&words)[N], absl::string_view word) {
  for (absl::string_view w : words) {
    if (w == word) return true;
  }
  return false;
}

// "a, b or c".
template <size_t N>
std::string OneOf(const absl::string_view (&words)[N]) {
  std::string out;
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    absl::StrAppend(&out, words[i]);
  }
  return out;
}

absl::Status UsageError(absl::string_view message) { return absl::InvalidArgumentError(message); }

// Parses digits only (no sign, no white space) in `base` 10 or 16, up to `max`.
std::optional<uint64_t> ParseDigits(absl::string_view text, int base, uint64_t max) {
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (base == 16 && absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      digit = absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
    } else {
      return std::nullopt;
    }
    if (value > (max - digit) / base) return std::nullopt;
    value = value * base + digit;
  }
  return value;
}

// Flags that only some verbs take, by canonical name, with the verbs that take them.
struct VerbFlag {
  absl::string_view name;
  std::vector<Verb> verbs;
};

const std::vector<VerbFlag>& VerbFlags() {
  static const auto* flags = new std::vector<VerbFlag>{
      {"--request-id",
       {Verb::kCreate, Verb::kUpdate, Verb::kDelete, Verb::kApply, Verb::kPeerCreate,
        Verb::kPeerUpdate, Verb::kPeerDelete, Verb::kPeerApply}},
      {"--etag", {Verb::kUpdate, Verb::kDelete, Verb::kPeerUpdate, Verb::kPeerDelete}},
      {"--page-size", {Verb::kList, Verb::kPeerList}},
      {"--since", {Verb::kWatch}},
      {"--count", {Verb::kWatch}},
      {"--file", {Verb::kApply, Verb::kPeerApply}},
      {"--prune", {Verb::kApply, Verb::kPeerApply}},
      {"--dry-run", {Verb::kApply, Verb::kPeerApply}},
      {"--owner", {Verb::kApply, Verb::kPeerApply}},
  };
  return *flags;
}

// Walks the arguments. Flags are recognized before the command and, after it, wherever a
// keyword or a positional argument is expected; a keyword's value is always taken as is
// (so `mtu -5` is reported as a bad MTU). "--" ends the flags. In long flag names '_' and
// '-' are the same ("--tls_ca" is "--tls-ca").
class Parser {
 public:
  Parser(const std::vector<std::string>& args, const Environment& env) : args_(args) {
    if (!env.agent.empty()) command_.agent = env.agent;
    command_.env_token = env.token;
    command_.list.set_page_size(kDefaultPageSize);
  }

  absl::StatusOr<Command> Run() {
    if (std::optional<Verb> early = HelpOrVersion(); early.has_value()) {
      command_.verb = *early;
      return std::move(command_);
    }
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError("missing command");
    const std::string verb = Take();
    absl::Status status;
    if (verb == "create" || verb == "add") {
      status = ParseCreate(verb);
    } else if (verb == "update") {
      status = ParseUpdate(verb);
    } else if (verb == "get") {
      status = ParseName(verb, Verb::kGet);
    } else if (verb == "delete" || verb == "del") {
      status = ParseName(verb, Verb::kDelete);
    } else if (verb == "list" || verb == "ls") {
      status = ParseList(verb);
    } else if (verb == "show") {
      status = ParseShow(verb);
    } else if (verb == "watch") {
      status = ParseNoArgs(verb, Verb::kWatch);
    } else if (verb == "apply") {
      status = ParseApply(verb);
    } else if (verb == "info") {
      status = ParseNoArgs(verb, Verb::kInfo);
    } else if (verb == "peer") {
      status = ParsePeer();
    } else if (verb == "help") {
      command_.verb = Verb::kHelp;
      return std::move(command_);
    } else if (verb == "version") {
      command_.verb = Verb::kVersion;
      return std::move(command_);
    } else {
      status = UsageError(absl::StrCat("unknown command '", verb, "'"));
    }
    if (!status.ok()) return status;
    if (absl::Status s = CheckVerbFlags(peer_verb_.empty() ? verb : peer_verb_); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckTls(); !s.ok()) return s;
    return std::move(command_);
  }

 private:
  // -h, --help or --version anywhere before "--" wins over everything else (the first of
  // them given), so that asking for help never fails on the rest of the line.
  std::optional<Verb> HelpOrVersion() const {
    for (const std::string& arg : args_) {
      if (arg == "--") return std::nullopt;
      if (arg == "-h" || arg == "--help") return Verb::kHelp;
      if (arg == "--version") return Verb::kVersion;
    }
    return std::nullopt;
  }

  bool AtEnd() const { return pos_ >= args_.size(); }
  const std::string& Take() { return args_[pos_++]; }

  // Consumes the flags at the current position.
  absl::Status SkipFlags() {
    while (!AtEnd() && !flags_done_) {
      const std::string& arg = args_[pos_];
      if (arg == "--") {
        flags_done_ = true;
        ++pos_;
      } else if (arg.size() > 1 && arg[0] == '-') {
        ++pos_;
        if (absl::Status s = ParseFlag(arg); !s.ok()) return s;
      } else {
        break;
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseFlag(absl::string_view arg) {
    absl::string_view spelled = arg;  // as given, for messages
    std::optional<absl::string_view> value;
    if (absl::StartsWith(arg, "--")) {
      if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
        spelled = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      }
    } else if ((absl::StartsWith(arg, "-o") || absl::StartsWith(arg, "-f")) && arg.size() > 2) {
      // -ojson, -o=json, -ffile, -f=file
      spelled = arg.substr(0, 2);
      value = arg.substr(2);
      if (absl::StartsWith(*value, "=")) value->remove_prefix(1);
    }
    std::string name = absl::StrReplaceAll(spelled, {{"_", "-"}});
    if (name == "-o") name = "--output";
    if (name == "-f") name = "--file";

    auto take_value = [&]() -> absl::Status {
      if (value.has_value()) return absl::OkStatus();
      if (AtEnd()) return UsageError(absl::StrCat("flag ", spelled, " needs a value"));
      value = Take();
      return absl::OkStatus();
    };
    // A value that must not be empty.
    auto take_text = [&](std::string* out) -> absl::Status {
      if (absl::Status s = take_value(); !s.ok()) return s;
      if (value->empty()) return UsageError(absl::StrCat("flag ", spelled, " needs a value"));
      *out = std::string(*value);
      return absl::OkStatus();
    };
    auto no_value = [&]() -> absl::Status {
      if (value.has_value()) return UsageError(absl::StrCat("flag ", spelled, " takes no value"));
      return absl::OkStatus();
    };
    auto take_number = [&](uint64_t min, uint64_t max, uint64_t* out) -> absl::Status {
      if (absl::Status s = take_value(); !s.ok()) return s;
      std::optional<uint64_t> n = ParseDigits(*value, 10, max);
      if (!n.has_value() || *n < min) {
        std::string range = max == std::numeric_limits<uint64_t>::max()
                                ? absl::StrCat(min, " or more")
                                : absl::StrCat(min, "-", max);
        return UsageError(absl::StrCat("invalid value '", *value, "' for ", spelled,
                                       " (want a number ", range, ")"));
      }
      *out = *n;
      return absl::OkStatus();
    };

    for (const VerbFlag& f : VerbFlags()) {
      if (f.name == name) verb_flags_.emplace_back(f.name, std::string(spelled));
    }

    if (name == "--agent") {
      if (absl::Status s = take_value(); !s.ok()) return s;
      if (value->empty()) return UsageError("flag --agent needs a non-empty address");
      command_.agent = std::string(*value);
    } else if (name == "--output") {
      if (absl::Status s = take_value(); !s.ok()) return s;
      if (*value == "table") {
        command_.output = OutputFormat::kTable;
      } else if (*value == "json") {
        command_.output = OutputFormat::kJson;
      } else {
        return UsageError(
            absl::StrCat("invalid output format '", *value, "' (want table or json)"));
      }
    } else if (name == "--timeout") {
      if (absl::Status s = take_value(); !s.ok()) return s;
      absl::StatusOr<std::chrono::milliseconds> timeout = ParseTimeout(*value);
      if (!timeout.ok()) return timeout.status();
      command_.timeout = *timeout;
    } else if (name == "--tls") {
      if (absl::Status s = no_value(); !s.ok()) return s;
      command_.tls.enabled = true;
    } else if (name == "--tls-ca") {
      command_.tls.enabled = true;
      return take_text(&command_.tls.ca_file);
    } else if (name == "--tls-cert") {
      command_.tls.enabled = true;
      return take_text(&command_.tls.cert_file);
    } else if (name == "--tls-key") {
      command_.tls.enabled = true;
      return take_text(&command_.tls.key_file);
    } else if (name == "--tls-server-name") {
      command_.tls.enabled = true;
      return take_text(&command_.tls.server_name);
    } else if (name == "--token-file") {
      return take_text(&command_.token_file);
    } else if (name == "--request-id") {
      if (absl::Status s = take_text(&command_.request_id); !s.ok()) return s;
      if (command_.request_id.size() > kMaxRequestIdLength) {
        return UsageError(
            absl::StrCat("flag ", spelled, ": longer than ", kMaxRequestIdLength, " characters"));
      }
    } else if (name == "--etag") {
      return take_text(&command_.etag);
    } else if (name == "--page-size") {
      uint64_t n = 0;
      if (absl::Status s = take_number(1, kMaxPageSize, &n); !s.ok()) return s;
      command_.list.set_page_size(static_cast<int32_t>(n));
    } else if (name == "--since") {
      return take_number(0, std::numeric_limits<uint64_t>::max(), &command_.since_revision);
    } else if (name == "--count") {
      uint64_t n = 0;
      if (absl::Status s = take_number(1, std::numeric_limits<uint64_t>::max(), &n); !s.ok())
        return s;
      command_.count = n;
    } else if (name == "--file") {
      return take_text(&command_.apply_file);
    } else if (name == "--prune") {
      if (absl::Status s = no_value(); !s.ok()) return s;
      command_.prune = true;
    } else if (name == "--dry-run") {
      if (absl::Status s = no_value(); !s.ok()) return s;
      command_.dry_run = true;
    } else if (name == "--owner") {
      return take_text(&command_.owner);
    } else {
      return UsageError(absl::StrCat("unknown flag '", spelled, "'"));
    }
    return absl::OkStatus();
  }

  // Flags of other verbs are errors rather than silently ignored.
  absl::Status CheckVerbFlags(absl::string_view verb) {
    for (const auto& [name, spelled] : verb_flags_) {
      for (const VerbFlag& f : VerbFlags()) {
        if (f.name != name) continue;
        bool ok = false;
        for (Verb v : f.verbs) ok = ok || v == command_.verb;
        if (!ok) return UsageError(absl::StrCat(verb, ": flag ", spelled, " does not apply"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status CheckTls() {
    const TlsOptions& tls = command_.tls;
    if (tls.cert_file.empty() != tls.key_file.empty()) {
      return UsageError("--tls_cert and --tls_key go together");
    }
    return absl::OkStatus();
  }

  // ip(8)'s `name NAME` and `dev NAME` (ip link add dev X, ip tunnel add name X) for NAME:
  // taken when the next word is not a keyword (so a tunnel may still be called "dev").
  void SkipNameWord() {
    if (pos_ + 1 >= args_.size()) return;
    if (args_[pos_] != "name" && args_[pos_] != "dev") return;
    if (FindKeyword(args_[pos_ + 1]) != nullptr) return;
    ++pos_;
  }

  // NAME, for create and update: not empty, not a keyword.
  absl::Status TakeTunnelName(absl::string_view verb) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    SkipNameWord();
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing NAME"));
    const std::string& name = Take();
    if (FindKeyword(name) != nullptr) {
      return UsageError(absl::StrCat(verb, ": missing NAME before '", name, "'"));
    }
    if (name.empty()) return UsageError(absl::StrCat(verb, ": empty NAME"));
    command_.name = name;
    command_.tunnel.set_name(name);
    return absl::OkStatus();
  }

  absl::Status ParseCreate(absl::string_view verb) {
    command_.verb = Verb::kCreate;
    if (absl::Status s = TakeTunnelName(verb); !s.ok()) return s;
    if (absl::Status s = ParseKeywords(verb, kCreateKeywords); !s.ok()) return s;
    if (fields_.count("mode") == 0) return UsageError(absl::StrCat(verb, ": missing 'mode'"));
    const bool multipoint = fields_.count("multipoint") != 0;
    if (multipoint && fields_.count("remote") != 0) {
      return UsageError(absl::StrCat(
          verb, ": 'remote' conflicts with 'multipoint' (its peers are the remote ends)"));
    }
    if (!multipoint && fields_.count("remote") == 0) {
      return UsageError(absl::StrCat(verb, ": missing 'remote' (or 'multipoint')"));
    }
    if (absl::Status s = CheckMtuOfMode(command_.tunnel); !s.ok()) {
      return UsageError(absl::StrCat(verb, ": ", s.message()));
    }
    return absl::OkStatus();
  }

  absl::Status ParseUpdate(absl::string_view verb) {
    command_.verb = Verb::kUpdate;
    if (absl::Status s = TakeTunnelName(verb); !s.ok()) return s;
    if (absl::Status s = ParseKeywords(verb, kUpdateKeywords); !s.ok()) return s;
    // An empty mask would mean a full replacement: never send one by accident.
    if (fields_.empty()) {
      return UsageError(
          absl::StrCat(verb, ": nothing to change (want ", OneOf(kUpdateKeywords), ")"));
    }
    // Options not given may add to the encapsulation: the range of those given is the widest
    // the agent can accept, so nothing it would take is refused here. Without the mode, the
    // agent alone knows it.
    if (fields_.count("mode") != 0) {
      if (absl::Status s = CheckMtuOfMode(command_.tunnel); !s.ok()) {
        return UsageError(absl::StrCat(verb, ": ", s.message()));
      }
    }
    // A multipoint tunnel has no remote, so turning it on clears the remote (else the tunnel
    // would keep the old one and be refused); turning it off needs a remote, the agent says.
    auto multipoint = fields_.find("multipoint");
    const bool to_multipoint = multipoint != fields_.end() && multipoint->second == "multipoint";
    if (to_multipoint && fields_.count("remote") != 0) {
      return UsageError(absl::StrCat(
          verb, ": 'remote' conflicts with 'multipoint' (its peers are the remote ends)"));
    }
    // update_mask paths in Tunnel's field order.
    const google::protobuf::Descriptor* tunnel = v1::Tunnel::descriptor();
    for (int i = 0; i < tunnel->field_count(); ++i) {
      const std::string& path = tunnel->field(i)->name();
      // `tos N` and `tos inherit` set both tos and inherit_tos: either replaces the other.
      const bool given = fields_.count(path) != 0 || (path == "remote" && to_multipoint) ||
                         (path == "inherit_tos" && fields_.count("tos") != 0) ||
                         (path == "encap" &&
                          (fields_.count("encap_sport") != 0 || fields_.count("encap_dport") != 0));
      if (given) command_.update_mask.add_paths(path);
    }
    return absl::OkStatus();
  }

  absl::Status ParseList(absl::string_view verb) {
    command_.verb = Verb::kList;
    return ParseKeywords(verb, kListKeywords);
  }

  // KEYWORD [VALUE] pairs up to the end, each one of `allowed`.
  template <size_t N>
  absl::Status ParseKeywords(absl::string_view verb, const absl::string_view (&allowed)[N]) {
    while (true) {
      if (absl::Status s = SkipFlags(); !s.ok()) return s;
      if (AtEnd()) return absl::OkStatus();
      const std::string& word = Take();
      // ip link's `type` is our `mode`.
      const absl::string_view meant = word == "type" ? absl::string_view("mode") : word;
      const Keyword* keyword = Contains(allowed, meant) ? FindKeyword(meant) : nullptr;
      if (keyword == nullptr) {
        for (const IpWordHint& h : kIpWordHints) {
          if (h.word == word) {
            return UsageError(absl::StrCat(verb, ": unknown argument '", word, "': ", h.hint));
          }
        }
        return UsageError(
            absl::StrCat(verb, ": unknown argument '", word, "' (want ", OneOf(allowed), ")"));
      }
      std::string value;
      if (keyword->takes_value) {
        if (AtEnd()) return UsageError(absl::StrCat(verb, ": '", word, "' needs a value"));
        value = Take();
        if (value.empty()) {
          return UsageError(absl::StrCat(verb, ": empty value for '", word, "'"));
        }
      }
      if (absl::Status s = ApplyKeyword(*keyword, value); !s.ok()) {
        return UsageError(absl::StrCat(verb, ": ", s.message()));
      }
    }
  }

  // Sets the field of `keyword` from `value` (not empty when the keyword takes one).
  absl::Status ApplyKeyword(const Keyword& keyword, const std::string& value) {
    const std::string field(keyword.field);
    auto [it, inserted] = fields_.emplace(field, keyword.word);
    if (!inserted) {
      if (it->second != keyword.word) {
        return UsageError(absl::StrCat("'", keyword.word, "' conflicts with '", it->second, "'"));
      }
      if (!keyword.repeatable) return UsageError(absl::StrCat("'", keyword.word, "' given twice"));
    }
    if (command_.verb == Verb::kList) return ApplyFilter(keyword, value);
    if (IsPeerVerb(command_.verb)) return ApplyPeerKeyword(keyword, value);
    v1::Tunnel& tunnel = command_.tunnel;
    absl::string_view word = keyword.word;
    if (word == "mode") {
      absl::StatusOr<v1::TunnelMode> mode = ParseMode(value);
      if (!mode.ok()) return mode.status();
      tunnel.set_mode(*mode);
    } else if (word == "remote") {
      if (absl::Status s = CheckAddress(word, value); !s.ok()) return s;
      tunnel.set_remote(value);
    } else if (word == "local") {
      // As in iproute2, "any" leaves the choice of the source to the kernel.
      if (value != "any") {
        if (absl::Status s = CheckAddress(word, value); !s.ok()) return s;
      }
      tunnel.set_local(value == "any" ? "" : value);
    } else if (word == "key") {
      absl::StatusOr<uint32_t> key = ParseKey(value);
      if (!key.ok()) return key.status();
      tunnel.set_key(*key);
    } else if (word == "nokey") {
      tunnel.clear_key();
    } else if (word == "mtu") {
      if (value == "auto") {
        tunnel.set_mtu(0);
      } else {
        absl::StatusOr<uint32_t> mtu = ParseMtu(value);
        if (!mtu.ok()) return mtu.status();
        tunnel.set_mtu(*mtu);
      }
    } else if (word == "address") {
      if (absl::Status s = CheckPrefix(word, value); !s.ok()) return s;
      tunnel.add_addresses(value);
    } else if (word == "route") {
      if (absl::Status s = CheckPrefix(word, value); !s.ok()) return s;
      tunnel.add_routes(value);
    } else if (word == "label") {
      absl::StatusOr<std::pair<std::string, std::string>> label = ParseLabel(value);
      if (!label.ok()) return label.status();
      return AddLabel(*label, tunnel.mutable_labels());
    } else if (word == "ikey" || word == "okey") {
      absl::StatusOr<uint32_t> key = ParseKey(value);
      if (!key.ok()) return key.status();
      if (word == "ikey") {
        tunnel.set_input_key(*key);
      } else {
        tunnel.set_output_key(*key);
      }
    } else if (word == "csum" || word == "nocsum") {
      tunnel.set_checksum(word == "csum");
    } else if (word == "icsum" || word == "noicsum") {
      tunnel.set_input_checksum(word == "icsum");
    } else if (word == "ocsum" || word == "noocsum") {
      tunnel.set_output_checksum(word == "ocsum");
    } else if (word == "seq" || word == "noseq") {
      tunnel.set_sequence(word == "seq");
    } else if (word == "iseq" || word == "noiseq") {
      tunnel.set_input_sequence(word == "iseq");
    } else if (word == "oseq" || word == "nooseq") {
      tunnel.set_output_sequence(word == "oseq");
    } else if (word == "ttl" || word == "hoplimit") {
      absl::StatusOr<uint32_t> ttl = ParseTtl(value);
      if (!ttl.ok()) return ttl.status();
      tunnel.set_ttl(*ttl);
    } else if (word == "tos" || word == "tclass") {
      absl::StatusOr<std::optional<uint32_t>> tos = ParseTos(value);
      if (!tos.ok()) return tos.status();
      tunnel.set_inherit_tos(!tos->has_value());
      tunnel.set_tos(tos->value_or(0));
    } else if (word == "pmtudisc" || word == "nopmtudisc") {
      tunnel.set_pmtudisc(word == "pmtudisc");
    } else if (word == "ignore-df" || word == "noignore-df") {
      tunnel.set_ignore_df(word == "ignore-df");
    } else if (word == "multipoint" || word == "nomultipoint") {
      tunnel.set_multipoint(word == "multipoint");
    } else if (word == "keepalive") {
      absl::StatusOr<v1::Keepalive> keepalive = ParseKeepalive(value);
      if (!keepalive.ok()) return keepalive.status();
      *tunnel.mutable_keepalive() = *keepalive;
    } else if (word == "encap") {
      if (value != "fou" && value != "none") {
        return UsageError(absl::StrCat("invalid encap '", value, "' (want fou or none)"));
      }
      tunnel.mutable_encap()->set_type(value == "fou" ? v1::ENCAP_TYPE_FOU : v1::ENCAP_TYPE_NONE);
    } else if (word == "encap-sport" || word == "encap-dport") {
      uint32_t port = 0;
      if (!(word == "encap-sport" && value == "auto") &&
          (!absl::SimpleAtoi(value, &port) || port == 0 || port > 65535)) {
        return UsageError(absl::StrCat("invalid ", word, " '", value, "' (want 1-65535",
                                       word == "encap-sport" ? " or auto)" : ")"));
      }
      if (word == "encap-sport") {
        tunnel.mutable_encap()->set_sport(port);
      } else {
        tunnel.mutable_encap()->set_dport(port);
      }
    }
    // noaddresses, noroutes, nolabels, noikey, nookey, nottl, nokeepalive: the field stays
    // empty (unset); the mask names it.
    return absl::OkStatus();
  }

  // The keywords of peer add and peer update.
  absl::Status ApplyPeerKeyword(const Keyword& keyword, const std::string& value) {
    v1::Peer& peer = command_.peer;
    absl::string_view word = keyword.word;
    if (word == "underlay") {
      if (absl::Status s = CheckAddress(word, value); !s.ok()) return s;
      peer.set_underlay(value);
    } else if (word == "key") {
      absl::StatusOr<uint32_t> key = ParseKey(value);
      if (!key.ok()) return key.status();
      peer.set_key(*key);
    } else if (word == "allowed") {
      // "allowed P1,P2" and "allowed P1 allowed P2" are the same list.
      for (absl::string_view prefix : absl::StrSplit(value, ',')) {
        if (absl::Status s = CheckNetworkPrefix("allowed prefix", prefix); !s.ok()) return s;
        peer.add_allowed_prefixes(std::string(prefix));
      }
    } else if (word == "keepalive") {
      absl::StatusOr<v1::Keepalive> keepalive = ParseKeepalive(value);
      if (!keepalive.ok()) return keepalive.status();
      *peer.mutable_keepalive() = *keepalive;
      retries_in_keepalive_ = value.find(',') != std::string::npos;
    } else if (word == "retries") {
      std::optional<uint64_t> retries = ParseDigits(value, 10, 255);
      if (!retries.has_value()) {
        return UsageError(
            absl::StrCat("invalid retries '", value, "' (want a number 0-255, 0 = 3)"));
      }
      keepalive_retries_ = static_cast<uint32_t>(*retries);
    } else if (word == "label") {
      absl::StatusOr<std::pair<std::string, std::string>> label = ParseLabel(value);
      if (!label.ok()) return label.status();
      return AddLabel(*label, peer.mutable_labels());
    }
    // nokey, noallowed, nokeepalive, nolabels: the field stays unset; the mask names it.
    return absl::OkStatus();
  }

  // `retries N` completes `keepalive INTERVAL`, in either order.
  absl::Status ApplyKeepaliveRetries(absl::string_view verb) {
    if (!keepalive_retries_.has_value()) return absl::OkStatus();
    auto keepalive = fields_.find("keepalive");
    if (keepalive == fields_.end() || keepalive->second != "keepalive") {
      return UsageError(absl::StrCat(verb, ": 'retries' needs 'keepalive INTERVAL'"));
    }
    if (retries_in_keepalive_) {
      return UsageError(
          absl::StrCat(verb, ": 'retries' conflicts with the retries of 'keepalive'"));
    }
    command_.peer.mutable_keepalive()->set_retries(*keepalive_retries_);
    return absl::OkStatus();
  }

  // The keywords of list: filters.
  absl::Status ApplyFilter(const Keyword& keyword, const std::string& value) {
    v1::ListTunnelsRequest& list = command_.list;
    if (keyword.word == "mode") {
      absl::StatusOr<v1::TunnelMode> mode = ParseMode(value);
      if (!mode.ok()) return mode.status();
      list.set_mode(*mode);
    } else if (keyword.word == "state") {
      absl::StatusOr<v1::OperState> state = ParseState(value);
      if (!state.ok()) return state.status();
      list.set_state(*state);
    } else if (keyword.word == "label") {
      absl::StatusOr<std::pair<std::string, std::string>> label = ParseLabel(value);
      if (!label.ok()) return label.status();
      return AddLabel(*label, list.mutable_labels());
    }
    return absl::OkStatus();
  }

  static absl::Status AddLabel(const std::pair<std::string, std::string>& label,
                               google::protobuf::Map<std::string, std::string>* labels) {
    if (!labels->insert({label.first, label.second}).second) {
      return UsageError(absl::StrCat("label '", label.first, "' given twice"));
    }
    return absl::OkStatus();
  }

  // VERB NAME
  absl::Status ParseName(absl::string_view verb, Verb kind) {
    command_.verb = kind;
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    SkipNameWord();
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing NAME"));
    command_.name = Take();
    if (command_.name.empty()) return UsageError(absl::StrCat(verb, ": empty NAME"));
    return ExpectEnd(verb);
  }

  // show [NAME]
  absl::Status ParseShow(absl::string_view verb) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) {
      command_.verb = Verb::kList;
      return absl::OkStatus();
    }
    return ParseName(verb, Verb::kGet);
  }

  // peer COMMAND TUNNEL ...
  absl::Status ParsePeer() {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) {
      return UsageError(absl::StrCat("peer: missing command (want ", OneOf(kPeerCommands), ")"));
    }
    const std::string& command = Take();
    peer_verb_ = absl::StrCat("peer ", command);
    const absl::string_view verb = peer_verb_;
    if (command == "add" || command == "create") {
      return ParsePeerCreate(verb);
    } else if (command == "get" || command == "show") {
      return ParsePeerName(verb, Verb::kPeerGet);
    } else if (command == "list" || command == "ls") {
      command_.verb = Verb::kPeerList;
      if (absl::Status s = TakePeerTunnel(verb, /*keywords_follow=*/false); !s.ok()) return s;
      return ExpectEnd(verb);
    } else if (command == "update") {
      return ParsePeerUpdate(verb);
    } else if (command == "delete" || command == "del") {
      return ParsePeerName(verb, Verb::kPeerDelete);
    } else if (command == "apply") {
      command_.verb = Verb::kPeerApply;
      if (absl::Status s = TakePeerTunnel(verb, /*keywords_follow=*/false); !s.ok()) return s;
      if (absl::Status s = ExpectEnd(verb); !s.ok()) return s;
      if (command_.apply_file.empty()) {
        return UsageError(absl::StrCat(verb, ": missing -f FILE"));
      }
      return absl::OkStatus();
    }
    peer_verb_.clear();
    return UsageError(
        absl::StrCat("peer: unknown command '", command, "' (want ", OneOf(kPeerCommands), ")"));
  }

  // TUNNEL of a peer verb: not empty, and, before keywords, not one of them.
  absl::Status TakePeerTunnel(absl::string_view verb, bool keywords_follow) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing TUNNEL"));
    const std::string& name = Take();
    if (name.empty()) return UsageError(absl::StrCat(verb, ": empty TUNNEL"));
    if (keywords_follow && Contains(kPeerUpdateKeywords, name)) {
      return UsageError(absl::StrCat(verb, ": missing TUNNEL and PEER before '", name, "'"));
    }
    command_.name = name;
    return absl::OkStatus();
  }

  // TUNNEL PEER: PEER as Peer.name allows it.
  absl::Status TakePeerTunnelAndName(absl::string_view verb, bool keywords_follow) {
    if (absl::Status s = TakePeerTunnel(verb, keywords_follow); !s.ok()) return s;
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing PEER"));
    const std::string& name = Take();
    if (keywords_follow && Contains(kPeerUpdateKeywords, name)) {
      return UsageError(absl::StrCat(verb, ": missing PEER before '", name, "'"));
    }
    if (absl::Status s = CheckPeerName(name); !s.ok()) {
      return UsageError(absl::StrCat(verb, ": ", s.message()));
    }
    command_.peer.set_name(name);
    return absl::OkStatus();
  }

  absl::Status ParsePeerName(absl::string_view verb, Verb kind) {
    command_.verb = kind;
    if (absl::Status s = TakePeerTunnelAndName(verb, /*keywords_follow=*/false); !s.ok()) {
      return s;
    }
    return ExpectEnd(verb);
  }

  absl::Status ParsePeerCreate(absl::string_view verb) {
    command_.verb = Verb::kPeerCreate;
    if (absl::Status s = TakePeerTunnelAndName(verb, /*keywords_follow=*/true); !s.ok()) {
      return s;
    }
    if (absl::Status s = ParseKeywords(verb, kPeerCreateKeywords); !s.ok()) return s;
    if (absl::Status s = ApplyKeepaliveRetries(verb); !s.ok()) return s;
    if (fields_.count("underlay") == 0) {
      return UsageError(absl::StrCat(verb, ": missing 'underlay'"));
    }
    return absl::OkStatus();
  }

  absl::Status ParsePeerUpdate(absl::string_view verb) {
    command_.verb = Verb::kPeerUpdate;
    if (absl::Status s = TakePeerTunnelAndName(verb, /*keywords_follow=*/true); !s.ok()) {
      return s;
    }
    if (absl::Status s = ParseKeywords(verb, kPeerUpdateKeywords); !s.ok()) return s;
    if (absl::Status s = ApplyKeepaliveRetries(verb); !s.ok()) return s;
    // An empty mask would mean a full replacement: never send one by accident.
    if (fields_.empty()) {
      return UsageError(
          absl::StrCat(verb, ": nothing to change (want ", OneOf(kPeerUpdateKeywords), ")"));
    }
    // update_mask paths in Peer's field order; `retries` is part of keepalive, which it
    // needs.
    const google::protobuf::Descriptor* peer = v1::Peer::descriptor();
    for (int i = 0; i < peer->field_count(); ++i) {
      const std::string& path = peer->field(i)->name();
      if (fields_.count(path) != 0) command_.update_mask.add_paths(path);
    }
    return absl::OkStatus();
  }

  absl::Status ParseApply(absl::string_view verb) {
    command_.verb = Verb::kApply;
    if (absl::Status s = ExpectEnd(verb); !s.ok()) return s;
    if (command_.apply_file.empty()) return UsageError(absl::StrCat(verb, ": missing -f FILE"));
    return absl::OkStatus();
  }

  absl::Status ParseNoArgs(absl::string_view verb, Verb kind) {
    command_.verb = kind;
    return ExpectEnd(verb);
  }

  absl::Status ExpectEnd(absl::string_view verb) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (!AtEnd()) {
      return UsageError(absl::StrCat(verb, ": unexpected argument '", args_[pos_], "'"));
    }
    return absl::OkStatus();
  }

  const std::vector<std::string>& args_;
  size_t pos_ = 0;
  bool flags_done_ = false;
  // Fields set by keywords, with the keyword that set each.
  std::map<std::string, absl::string_view> fields_;
  // Verb-specific flags given: canonical name, spelling.
  std::vector<std::pair<absl::string_view, std::string>> verb_flags_;
  // "peer add", ...: how messages name a peer verb; empty for the others.
  std::string peer_verb_;
  // Peer keepalive: `retries N`, and whether `keepalive INTERVAL,RETRIES` gave retries too.
  std::optional<uint32_t> keepalive_retries_;
  bool retries_in_keepalive_ = false;
  Command command_;
};

}  // namespace

bool IsPeerVerb(Verb verb) {
  switch (verb) {
    case Verb::kPeerCreate:
    case Verb::kPeerGet:
    case Verb::kPeerList:
    case Verb::kPeerUpdate:
    case Verb::kPeerDelete:
    case Verb::kPeerApply:
      return true;
    default:
      return false;
  }
}

std::string VersionLine() { return absl::StrCat("tunnelctl ", clients::kVersion, "\n"); }

absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args, const Environment& env) {
  return Parser(args, env).Run();
}

absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args,
                                  absl::string_view env_agent) {
  Environment env;
  env.agent = std::string(env_agent);
  return ParseArgs(args, env);
}

namespace {

// Longer than any address text (INET6_ADDRSTRLEN counts the NUL).
constexpr size_t kMaxAddressText = INET6_ADDRSTRLEN;

// The address family of `text` (AF_INET or AF_INET6), or nullopt when it is neither.
std::optional<int> AddressFamily(absl::string_view text) {
  // inet_pton needs a NUL-terminated string; an embedded NUL would cut the text short and let
  // "1.2.3.4\0junk" through.
  if (text.empty() || text.size() >= kMaxAddressText ||
      text.find('\0') != absl::string_view::npos) {
    return std::nullopt;
  }
  char buf[kMaxAddressText];
  text.copy(buf, text.size());
  buf[text.size()] = '\0';
  in6_addr bytes;
  if (inet_pton(AF_INET, buf, &bytes) == 1) return AF_INET;
  if (inet_pton(AF_INET6, buf, &bytes) == 1) return AF_INET6;
  return std::nullopt;
}

}  // namespace

absl::Status CheckAddress(absl::string_view what, absl::string_view text) {
  if (!AddressFamily(text).has_value()) {
    return UsageError(absl::StrCat("invalid ", what, " '", text,
                                   "' (want an IPv4 or IPv6 address, like 198.18.0.2 or fd00::2)"));
  }
  return absl::OkStatus();
}

absl::Status CheckPrefix(absl::string_view what, absl::string_view text) {
  const size_t slash = text.find('/');
  std::optional<int> family = AddressFamily(text.substr(0, slash));
  bool ok = family.has_value();
  if (ok && slash != absl::string_view::npos) {
    absl::string_view length = text.substr(slash + 1);
    const uint64_t max = *family == AF_INET ? 32 : 128;
    ok = !(length.size() > 1 && length[0] == '0') && ParseDigits(length, 10, max).has_value();
  }
  if (!ok) {
    return UsageError(absl::StrCat("invalid ", what, " '", text,
                                   "' (want ADDRESS/LENGTH, like 10.0.0.1/30 or fd00::1/64)"));
  }
  return absl::OkStatus();
}

absl::Status CheckNetworkPrefix(absl::string_view what, absl::string_view text) {
  if (absl::Status s = CheckPrefix(what, text); !s.ok()) return s;
  const size_t slash = text.find('/');
  if (slash == absl::string_view::npos) return absl::OkStatus();  // a host prefix
  const std::string address(text.substr(0, slash));
  const int family = *AddressFamily(address);
  in6_addr bytes;
  inet_pton(family, address.c_str(), &bytes);
  const size_t size = family == AF_INET ? 4 : 16;
  uint64_t length = 0;
  absl::SimpleAtoi(text.substr(slash + 1), &length);
  // Clear the host bits; when anything changed, the network is what was probably meant.
  in6_addr network = bytes;
  for (size_t i = 0; i < size; ++i) {
    const uint64_t first_bit = i * 8;
    if (length >= first_bit + 8) continue;
    const unsigned kept = length > first_bit ? static_cast<unsigned>(length - first_bit) : 0;
    network.s6_addr[i] &= static_cast<uint8_t>(0xff00u >> kept);
  }
  if (memcmp(&network, &bytes, size) == 0) return absl::OkStatus();
  char text_out[kMaxAddressText];
  inet_ntop(family, &network, text_out, sizeof(text_out));
  return UsageError(absl::StrCat("invalid ", what, " '", text, "' (host bits set; want ", text_out,
                                 "/", length, ")"));
}

absl::Status CheckPeerName(absl::string_view text) {
  bool ok = !text.empty() && text.size() <= kMaxPeerNameLength;
  for (char c : text) {
    ok = ok &&
         (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return UsageError(absl::StrCat("invalid peer name '", text, "' (want 1-", kMaxPeerNameLength,
                                   " letters, digits, '.', '_' or '-')"));
  }
  return absl::OkStatus();
}

absl::Status CheckMtuOfMode(const v1::Tunnel& tunnel) {
  if (tunnel.mtu() == 0) return absl::OkStatus();  // none given, or auto
  std::optional<dataplane::TunnelMode> mode;
  for (const ModeName& m : kModes) {
    if (m.mode == tunnel.mode()) mode = dataplane::ParseTunnelMode(m.name);
  }
  if (!mode.has_value()) return absl::OkStatus();
  // What the agent sends: the GRE fields of the output direction, and UDP with fou.
  dataplane::GreOptions output;
  if (dataplane::IsGreMode(*mode)) {
    output = {.key = tunnel.has_key() || tunnel.has_output_key(),
              .checksum = tunnel.checksum() || tunnel.output_checksum(),
              .sequence = tunnel.sequence() || tunnel.output_sequence()};
  }
  const dataplane::MtuRange range =
      dataplane::DeviceMtuRange(*mode, output, tunnel.encap().type() == v1::ENCAP_TYPE_FOU);
  if (tunnel.mtu() < range.min || tunnel.mtu() > range.max) {
    return UsageError(absl::StrCat("invalid mtu '", tunnel.mtu(), "' for mode ",
                                   dataplane::TunnelModeName(*mode), " with these options (want ",
                                   range.min, "-", range.max, ", or auto)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text) {
  for (const ModeName& m : kModes) {
    if (text == m.name) return m.mode;
  }
  for (const ModeName& m : kIpModeSpellings) {
    if (text == m.name) return m.mode;
  }
  for (absl::string_view mode : kModesNotHere) {
    if (text == mode) {
      return UsageError(absl::StrCat(
          "mode '", text, "' is ip(8)'s but not tunnel-agent's (want gre, ipip, gretap, sit, ",
          "ip6gre, ip6gretap or ip6tnl)"));
    }
  }
  return UsageError(absl::StrCat("unknown mode '", text,
                                 "' (want gre, ipip, gretap, sit, ip6gre, ip6gretap or ip6tnl)"));
}

absl::StatusOr<v1::OperState> ParseState(absl::string_view text) {
  if (text == "up") return v1::OPER_STATE_UP;
  if (text == "down") return v1::OPER_STATE_DOWN;
  if (text == "error") return v1::OPER_STATE_ERROR;
  return UsageError(absl::StrCat("unknown state '", text, "' (want up, down or error)"));
}

absl::StatusOr<uint32_t> ParseKey(absl::string_view text) {
  constexpr uint64_t kMax = 0xffffffff;
  std::optional<uint64_t> value;
  if (text.find('.') != absl::string_view::npos) {
    std::vector<absl::string_view> parts = absl::StrSplit(text, '.');
    if (parts.size() == 4) {
      uint64_t v = 0;
      bool ok = true;
      for (absl::string_view part : parts) {
        std::optional<uint64_t> octet =
            part.size() <= 3 ? ParseDigits(part, 10, 255) : std::nullopt;
        if (!octet.has_value()) {
          ok = false;
          break;
        }
        v = (v << 8) | *octet;
      }
      if (ok) value = v;
    }
  } else if (absl::StartsWith(text, "0x") || absl::StartsWith(text, "0X")) {
    value = ParseDigits(text.substr(2), 16, kMax);
  } else {
    value = ParseDigits(text, 10, kMax);
  }
  if (!value.has_value()) {
    return UsageError(absl::StrCat("invalid key '", text,
                                   "' (want a number 0-4294967295 or a dotted quad like 0.0.0.5)"));
  }
  return static_cast<uint32_t>(*value);
}

absl::StatusOr<uint32_t> ParseMtu(absl::string_view text) {
  std::optional<uint64_t> value = ParseDigits(text, 10, kMaxMtu);
  if (!value.has_value() || *value < kMinMtu) {
    return UsageError(absl::StrCat("invalid mtu '", text, "' (want a number ", kMinMtu, "-",
                                   kMaxMtu, ", or auto for the automatic MTU)"));
  }
  return static_cast<uint32_t>(*value);
}

absl::StatusOr<uint32_t> ParseTtl(absl::string_view text) {
  if (text == "inherit") return 0;
  std::optional<uint64_t> value = ParseDigits(text, 10, 255);
  if (!value.has_value()) {
    return UsageError(
        absl::StrCat("invalid ttl '", text, "' (want a number 0-255, or inherit = 0)"));
  }
  return static_cast<uint32_t>(*value);
}

absl::StatusOr<std::optional<uint32_t>> ParseTos(absl::string_view text) {
  if (text == "inherit") return std::optional<uint32_t>();
  std::optional<uint64_t> value;
  if (absl::StartsWith(text, "0x") || absl::StartsWith(text, "0X")) {
    value = ParseDigits(text.substr(2), 16, 255);
  } else {
    value = ParseDigits(text, 10, 255);
  }
  if (!value.has_value()) {
    return UsageError(absl::StrCat("invalid tos '", text,
                                   "' (want a number 0-255, hexadecimal as 0xNN, or inherit)"));
  }
  return std::optional<uint32_t>(static_cast<uint32_t>(*value));
}

absl::StatusOr<v1::Keepalive> ParseKeepalive(absl::string_view text) {
  auto invalid = [text]() {
    return UsageError(absl::StrCat("invalid keepalive '", text,
                                   "' (want INTERVAL[,RETRIES]: seconds 0.1-3600 such as 10 or "
                                   "0.5, or with a unit such as 500ms or 10s; retries 0-255, 0 "
                                   "= 3)"));
  };
  std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  if (parts.size() > 2) return invalid();
  absl::string_view interval = parts[0];
  double scale = 1;  // to seconds
  if (absl::EndsWith(interval, "ms")) {
    interval.remove_suffix(2);
    scale = 0.001;
  } else if (absl::EndsWith(interval, "s")) {
    interval.remove_suffix(1);
  }
  double seconds = 0;
  // Digits and a point only: no sign, exponent, "inf" or "nan".
  if (interval.empty() || interval.find_first_not_of("0123456789.") != absl::string_view::npos ||
      !absl::SimpleAtod(interval, &seconds)) {
    return invalid();
  }
  seconds *= scale;
  if (seconds < 0.1 - 1e-9 || seconds > 3600) return invalid();
  v1::Keepalive keepalive;
  const auto nanos = static_cast<int64_t>(std::llround(seconds * 1e9));
  keepalive.mutable_interval()->set_seconds(nanos / 1'000'000'000);
  keepalive.mutable_interval()->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  if (parts.size() == 2) {
    std::optional<uint64_t> retries = ParseDigits(parts[1], 10, 255);
    if (!retries.has_value()) return invalid();
    keepalive.set_retries(static_cast<uint32_t>(*retries));
  }
  return keepalive;
}

absl::StatusOr<std::chrono::milliseconds> ParseTimeout(absl::string_view text) {
  double seconds = 0;
  const double max_seconds = kMaxTimeout.count() / 1000.0;
  if (!absl::SimpleAtod(text, &seconds) || !std::isfinite(seconds) || seconds <= 0 ||
      seconds > max_seconds) {
    return UsageError(absl::StrCat("invalid timeout '", text,
                                   "' (want seconds, more than 0 and at most ", max_seconds, ")"));
  }
  // Round up so that a tiny positive timeout does not become 0.
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
}

absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(absl::string_view text) {
  size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return UsageError(absl::StrCat("invalid label '", text, "' (want KEY=VALUE)"));
  }
  return std::make_pair(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
}

namespace {

constexpr size_t kHelpWidth = 92;
constexpr size_t kHelpTextColumn = 19;

// `text` from `column` on, wrapped at kHelpWidth; lines after the first start at `indent`.
void AppendWrapped(std::string* out, absl::string_view text, size_t column, size_t indent) {
  bool first = true;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!first && column + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(out, "\n", std::string(indent, ' '));
      column = indent;
    } else if (!first) {
      out->push_back(' ');
      ++column;
    }
    absl::StrAppend(out, word);
    column += word.size();
    first = false;
  }
  absl::StrAppend(out, "\n");
}

// One entry of the help: "  USAGE" and the text from column 19; a usage too long for its
// column has the text on the lines below.
void AppendHelpEntry(std::string* out, absl::string_view usage, absl::string_view text) {
  absl::StrAppend(out, "  ", usage);
  const size_t column = 2 + usage.size();
  absl::StrAppend(
      out, column + 1 > kHelpTextColumn ? "\n" : "",
      std::string(column + 1 > kHelpTextColumn ? kHelpTextColumn : kHelpTextColumn - column, ' '));
  AppendWrapped(out, text, kHelpTextColumn, kHelpTextColumn);
}

// "gre, ipip, ... or ip6tnl", and the MTU ranges, by the rule the agent checks with.
std::string FillHelp(absl::string_view text) {
  std::string modes;
  for (size_t i = 0; i < std::size(kModes); ++i) {
    if (i > 0) modes += i + 1 == std::size(kModes) ? " or " : ", ";
    absl::StrAppend(&modes, kModes[i].name);
  }
  const dataplane::MtuRange gre = dataplane::DeviceMtuRange(dataplane::TunnelMode::kGre);
  const dataplane::MtuRange sit = dataplane::DeviceMtuRange(dataplane::TunnelMode::kSit);
  const std::string mtu =
      absl::StrCat("device MTU, ", gre.min, " (sit: ", sit.min,
                   ") up to 65535 less the encapsulation (gre: ", gre.max,
                   ", less with key, csum, seq or encap), or auto (default: computed from the "
                   "underlay)");
  return absl::StrReplaceAll(text, {{"{modes}", modes}, {"{mtu}", mtu}});
}

}  // namespace

std::string KeywordHelp() {
  std::string out = "Arguments of create and update, in any order after NAME:\n";
  for (const Keyword& k : kKeywords) {
    if (k.section == HelpSection::kArgument && !k.usage.empty()) {
      AppendHelpEntry(&out, k.usage, FillHelp(k.help));
    }
  }
  std::vector<absl::string_view> no_forms;
  for (const Keyword& k : kKeywords) {
    if (k.section == HelpSection::kNoForm) no_forms.push_back(k.word);
  }
  out += "\n";
  AppendWrapped(&out,
                absl::StrCat("Options of create and update, as ip-link(8) names them (update "
                             "also takes the no- forms: ",
                             absl::StrJoin(no_forms, " "), ", which go back to the default):"),
                0, 0);
  for (const Keyword& k : kKeywords) {
    if (k.section == HelpSection::kOption && !k.usage.empty()) {
      AppendHelpEntry(&out, k.usage, FillHelp(k.help));
    }
  }
  return out + "\n";
}

std::string PeerKeywordHelp() {
  std::string out = "Arguments of peer add and peer update:\n";
  for (const Keyword& k : kKeywords) {
    if (!k.peer_usage.empty()) AppendHelpEntry(&out, k.peer_usage, FillHelp(k.peer_help));
  }
  return out;
}

std::vector<std::string> HelpKeywords() {
  std::vector<std::string> words;
  for (const Keyword& k : kKeywords) words.emplace_back(k.word);
  return words;
}

std::string Usage() {
  return R"(Usage: tunnelctl [OPTIONS] COMMAND [ARGS]

Manage the GRE, IPIP, SIT and IPv6 tunnels of a tunnel-agent.

Commands:
  create NAME mode MODE remote ADDR|multipoint [local ADDR] [key KEY] [mtu MTU]
         [OPTION]... [address CIDR]... [route PREFIX]... [label KEY=VALUE]...
                   create a tunnel and print it (alias: add); multipoint: no remote, the
                   peers of `peer add` are the far ends
  get NAME         print one tunnel, its labels, etag and times (alias: show NAME)
  list [mode MODE] [state up|down|error] [label KEY=VALUE]...
                   print the tunnels that match, all pages (aliases: ls, show)
  update NAME [mode MODE] [local ADDR] [remote ADDR] [key KEY|nokey] [mtu MTU|auto]
         [OPTION|noOPTION]... [address CIDR]...|noaddresses [route PREFIX]...|noroutes
         [label KEY=VALUE]...|nolabels [multipoint|nomultipoint] [--etag=ETAG]
                   change only the fields given; addresses, routes and labels given
                   replace the whole list or map; print the tunnel, and "recreated:
                   FIELDS" when the agent had to make a new device
  delete NAME [--etag=ETAG]
                   delete a tunnel (alias: del)
  watch [--since=REVISION] [--count=N]
                   print every change as "REVISION TYPE NAME STATE" (NAME is TUNNEL/PEER
                   for the PEER_* events; one JSON object a line with -o json) until
                   interrupted, or after N events
  apply -f FILE [--prune] [--dry-run] [--owner=NAME]
                   make the tunnels of an owner exactly those of FILE ("-": stdin), a
                   JSON ApplyTunnelsRequest ({"owner": ..., "tunnels": [...]}) or a JSON
                   array of tunnels (then --owner is required); print the changes
  info             print what the agent is and can do
  peer COMMAND TUNNEL ...
                   the peers of a multipoint tunnel, see "Peer commands" below
  help             print this help (also -h, --help)
  version          print tunnelctl's version (also --version)

)" + KeywordHelp() +
         R"(Spellings of ip(8) taken too: `name NAME` and `dev NAME` right after the command for NAME,
`type MODE` for `mode MODE`, and the modes as ip(8) shows or takes them: gre/ip, ip/ip,
ipv6/ip, gre/ipv6, and ip6ip6, ipip6, any, ipv6/ipv6, ip/ipv6, any/ipv6 (all ip6tnl). Not
taken, with a hint: ip-tunnel(8)'s `dev` after the name (the underlay device: the agent
sends by the route), encaplimit, flowlabel, and the modes vti, vti6, isatap, erspan.

Peer commands (the peers of a multipoint tunnel TUNNEL; PEER: 1-63 letters, digits, '.',
'_' or '-'):
  peer add TUNNEL PEER underlay ADDR [key KEY] [allowed PREFIX[,PREFIX]...]...
         [keepalive INTERVAL[,RETRIES] [retries N]] [label KEY=VALUE]...
                   create a peer and print it (alias: peer create)
  peer get TUNNEL PEER
                   print one peer, its state, counters, path MTU and keepalive (alias:
                   peer show)
  peer list TUNNEL [--page-size=N]
                   print the tunnel's peers, all pages (alias: peer ls)
  peer update TUNNEL PEER [underlay ADDR] [key KEY|nokey] [allowed PREFIX[,PREFIX]...]...
         |noallowed [keepalive INTERVAL[,RETRIES] [retries N]|nokeepalive]
         [label KEY=VALUE]...|nolabels [--etag=ETAG]
                   change only the fields given (allowed prefixes and labels given
                   replace the whole list or map) and print the peer
  peer delete TUNNEL PEER [--etag=ETAG]
                   delete a peer (alias: peer del)
  peer apply TUNNEL -f FILE [--prune] [--dry-run] [--owner=NAME]
                   make the peers of an owner on TUNNEL exactly those of FILE, a JSON
                   ApplyPeersRequest ({"owner": ..., "peers": [...]}) or a JSON array of
                   peers (then --owner is required); print the changes and how many
                   peers are unchanged

)" + PeerKeywordHelp() +
         R"(
Options of commands:
  --request-id=ID    id of a create, update, delete or apply (of a tunnel or a peer), so
                     that retrying it has no second effect (default: a random UUID per
                     invocation; an UNAVAILABLE call is retried once with the same id)
  --etag=ETAG        update or delete only if the tunnel's (peer's) etag is still ETAG
  --page-size=N      tunnels (peers) per ListTunnels (ListPeers) call, 1-1000 (default:
                     500)
  --since=REVISION   watch: start after this revision (default: the current set first)
  --count=N          watch: stop after N events
  -f, --file=FILE    apply, peer apply: the desired tunnels (peers)
  --prune            apply, peer apply: also delete the owner's tunnels (peers) that FILE
                     does not list
  --dry-run          apply, peer apply: print what would change, change nothing
  --owner=NAME       apply, peer apply: the owner (labels["owner"]) whose tunnels (peers)
                     FILE lists

Options:
  --agent=ADDR       agent address, HOST[:PORT] (port 50051 when left out) or unix:/PATH
                     (default: $TUNNELCTL_AGENT, else unix:/run/tunnel-agent/agent.sock, the
                     agent's default)
  -o, --output=FMT   output format: table (default) or json
  --timeout=SECONDS  deadline of each call (default: 10; a watch has none)
  --tls              connect with TLS, trusting the system's roots
  --tls_ca=FILE      trust the CAs of this PEM file instead (implies --tls)
  --tls_cert=FILE    client certificate (PEM) for mutual TLS, with --tls_key (implies --tls)
  --tls_key=FILE     its private key (PEM)
  --tls_server_name=NAME
                     expect NAME in the agent's certificate (implies --tls)
  --token_file=FILE  send "authorization: Bearer TOKEN" with the token of FILE on every
                     call (default: $TUNNELCTL_TOKEN, if set)
  -h, --help         print this help
  --version          print tunnelctl's version
In flag names '_' and '-' are the same (--tls-ca, --request_id).

Exit status:
  0  success (watch: also when interrupted or after --count events)
  1  bad input, nothing sent: unknown command or flag, bad argument or address, unreadable
     or malformed file (apply -f, --token_file, --tls_*)
  2  the agent refused or failed the call (any gRPC error, INVALID_ARGUMENT from the agent
     included) or could not be reached, or the output could not be written; watch: also
     when the stream ends. One line on stderr says which.
)";
}

}  // namespace tunnelagent::tunnelctl
