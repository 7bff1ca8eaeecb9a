#include "clients/tunnelctl/args.h"

#include <cmath>
#include <cstddef>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

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

// Keywords of `create` that take exactly one value.
constexpr absl::string_view kSingleKeywords[] = {"mode", "remote", "local", "key", "mtu"};

bool IsCreateKeyword(absl::string_view word) {
  for (absl::string_view k : kSingleKeywords) {
    if (word == k) return true;
  }
  return word == "address" || word == "route";
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

// Walks the arguments. Flags are recognized before the command and, after it, wherever a
// keyword or a positional argument is expected; a keyword's value is always taken as is
// (so `mtu -5` is reported as a bad MTU). "--" ends the flags.
class Parser {
 public:
  Parser(const std::vector<std::string>& args, absl::string_view env_agent) : args_(args) {
    if (!env_agent.empty()) command_.agent = std::string(env_agent);
  }

  absl::StatusOr<Command> Run() {
    if (WantsHelp()) {
      command_.verb = Verb::kHelp;
      return std::move(command_);
    }
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError("missing command");
    const std::string verb = Take();
    absl::Status status;
    if (verb == "create" || verb == "add") {
      status = ParseCreate(verb);
    } else if (verb == "get") {
      status = ParseName(verb, Verb::kGet);
    } else if (verb == "delete" || verb == "del") {
      status = ParseName(verb, Verb::kDelete);
    } else if (verb == "list" || verb == "ls") {
      status = ParseNoArgs(verb, Verb::kList);
    } else if (verb == "show") {
      status = ParseShow(verb);
    } else if (verb == "help") {
      command_.verb = Verb::kHelp;
    } else {
      status = UsageError(absl::StrCat("unknown command '", verb, "'"));
    }
    if (!status.ok()) return status;
    return std::move(command_);
  }

 private:
  // -h or --help anywhere before "--" wins over everything else.
  bool WantsHelp() const {
    for (const std::string& arg : args_) {
      if (arg == "--") return false;
      if (arg == "-h" || arg == "--help") return true;
    }
    return false;
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
    absl::string_view name = arg;
    std::optional<absl::string_view> value;
    if (absl::StartsWith(arg, "--")) {
      if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      }
    } else if (absl::StartsWith(arg, "-o") && arg.size() > 2) {  // -ojson, -o=json
      name = "-o";
      value = arg.substr(2);
      if (absl::StartsWith(*value, "=")) value->remove_prefix(1);
    }
    auto take_value = [&]() -> absl::Status {
      if (value.has_value()) return absl::OkStatus();
      if (AtEnd()) return UsageError(absl::StrCat("flag ", name, " needs a value"));
      value = Take();
      return absl::OkStatus();
    };

    if (name == "--agent") {
      if (absl::Status s = take_value(); !s.ok()) return s;
      if (value->empty()) return UsageError("flag --agent needs a non-empty address");
      command_.agent = std::string(*value);
    } else if (name == "-o" || name == "--output") {
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
    } else {
      return UsageError(absl::StrCat("unknown flag '", name, "'"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseCreate(absl::string_view verb) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing NAME"));
    const std::string& name = Take();
    if (IsCreateKeyword(name)) {
      return UsageError(absl::StrCat(verb, ": missing NAME before '", name, "'"));
    }
    if (name.empty()) return UsageError(absl::StrCat(verb, ": empty NAME"));
    command_.verb = Verb::kCreate;
    command_.name = name;
    command_.tunnel.set_name(name);

    while (true) {
      if (absl::Status s = SkipFlags(); !s.ok()) return s;
      if (AtEnd()) break;
      const std::string& keyword = Take();
      if (!IsCreateKeyword(keyword)) {
        return UsageError(absl::StrCat(verb, ": unknown argument '", keyword,
                                       "' (want mode, remote, local, key, mtu, address or route)"));
      }
      if (AtEnd()) return UsageError(absl::StrCat(verb, ": '", keyword, "' needs a value"));
      const std::string& value = Take();
      if (value.empty()) {
        return UsageError(absl::StrCat(verb, ": empty value for '", keyword, "'"));
      }
      if (absl::Status s = ApplyKeyword(keyword, value); !s.ok()) {
        return UsageError(absl::StrCat(verb, ": ", s.message()));
      }
    }
    if (seen_.count("mode") == 0) return UsageError(absl::StrCat(verb, ": missing 'mode'"));
    if (seen_.count("remote") == 0) return UsageError(absl::StrCat(verb, ": missing 'remote'"));
    return absl::OkStatus();
  }

  // Sets the field of `keyword` (a create keyword) from `value` (not empty).
  absl::Status ApplyKeyword(const std::string& keyword, const std::string& value) {
    if (keyword != "address" && keyword != "route" && !seen_.insert(keyword).second) {
      return UsageError(absl::StrCat("'", keyword, "' given twice"));
    }
    v1::Tunnel& tunnel = command_.tunnel;
    if (keyword == "mode") {
      absl::StatusOr<v1::TunnelMode> mode = ParseMode(value);
      if (!mode.ok()) return mode.status();
      tunnel.set_mode(*mode);
    } else if (keyword == "remote") {
      tunnel.set_remote(value);
    } else if (keyword == "local") {
      // As in iproute2, "any" leaves the choice of the source to the kernel.
      tunnel.set_local(value == "any" ? "" : value);
    } else if (keyword == "key") {
      absl::StatusOr<uint32_t> key = ParseKey(value);
      if (!key.ok()) return key.status();
      tunnel.set_key(*key);
    } else if (keyword == "mtu") {
      absl::StatusOr<uint32_t> mtu = ParseMtu(value);
      if (!mtu.ok()) return mtu.status();
      tunnel.set_mtu(*mtu);
    } else if (keyword == "address") {
      tunnel.add_addresses(value);
    } else if (keyword == "route") {
      tunnel.add_routes(value);
    }
    return absl::OkStatus();
  }

  // VERB NAME
  absl::Status ParseName(absl::string_view verb, Verb kind) {
    if (absl::Status s = SkipFlags(); !s.ok()) return s;
    if (AtEnd()) return UsageError(absl::StrCat(verb, ": missing NAME"));
    command_.name = Take();
    if (command_.name.empty()) return UsageError(absl::StrCat(verb, ": empty NAME"));
    command_.verb = kind;
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
  // Single-valued create keywords already given.
  std::set<std::string> seen_;
  Command command_;
};

}  // namespace

absl::StatusOr<Command> ParseArgs(const std::vector<std::string>& args,
                                  absl::string_view env_agent) {
  return Parser(args, env_agent).Run();
}

absl::StatusOr<v1::TunnelMode> ParseMode(absl::string_view text) {
  for (const ModeName& m : kModes) {
    if (text == m.name) return m.mode;
  }
  return UsageError(absl::StrCat("unknown mode '", text,
                                 "' (want gre, ipip, gretap, sit, ip6gre, ip6gretap or ip6tnl)"));
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
                                   kMaxMtu, "; omit it for the automatic MTU)"));
  }
  return static_cast<uint32_t>(*value);
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

std::string Usage() {
  return R"(Usage: tunnelctl [OPTIONS] COMMAND [ARGS]

Manage the GRE and IPIP tunnels of a tunnel-agent.

Commands:
  create NAME mode MODE remote ADDR [local ADDR] [key KEY] [mtu MTU]
         [address CIDR]... [route PREFIX]...
                   create a tunnel and print it (alias: add)
  get NAME         print one tunnel (alias: show NAME)
  list             print all tunnels (aliases: ls, show)
  delete NAME      delete a tunnel (alias: del)
  help             print this help

Arguments of create, in any order after NAME:
  mode MODE        gre, ipip, gretap, sit, ip6gre, ip6gretap or ip6tnl
  remote ADDR      underlay address of the far end
  local ADDR       underlay source address (default: any)
  key KEY          GRE key: 0-4294967295 or a dotted quad like 0.0.0.5 (default: none)
  mtu MTU          device MTU, 68-65535 (default: computed from the underlay)
  address CIDR     address to put on the device, like 10.0.0.1/30 (repeatable)
  route PREFIX     prefix to route into the tunnel, like 10.2.0.0/16 (repeatable)

Options:
  --agent=ADDR       agent address, HOST:PORT or unix:/PATH
                     (default: $TUNNELCTL_AGENT, else 127.0.0.1:50051)
  -o, --output=FMT   output format: table (default) or json
  --timeout=SECONDS  deadline of each call (default: 10)
  -h, --help         print this help

Exit status: 0 success, 1 usage error, 2 the agent failed, refused or was unreachable.
)";
}

}  // namespace tunnelagent::tunnelctl
