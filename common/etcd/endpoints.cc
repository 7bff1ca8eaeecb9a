#include "common/etcd/endpoints.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/etcd/client.h"

namespace tunnelagent::etcd {
namespace {

bool IsIpv4(const std::string& host) {
  in_addr a;
  return inet_pton(AF_INET, host.c_str(), &a) == 1;
}

bool IsIpv6(const std::string& host) {
  in6_addr a;
  return inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

// A DNS name as a host may be written: letters, digits, '-', '_' and dots between labels.
bool IsHostName(absl::string_view host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.back() == '.') return false;
  bool previous_dot = false;
  for (char c : host) {
    if (c == '.') {
      if (previous_dot) return false;
      previous_dot = true;
      continue;
    }
    previous_dot = false;
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  }
  return true;
}

absl::Status Invalid(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("etcd endpoint \"", text, "\": ", why,
                                                 " (want HOST:PORT, http://HOST:PORT or "
                                                 "https://HOST:PORT)"));
}

// One resolved address of an endpoint, as gRPC's ipv4:/ipv6: targets write it.
struct Address {
  int family = AF_INET;
  std::string ip;
  int port = 0;
};

std::string AddressTarget(const Address& a, bool as_ipv6) {
  if (!as_ipv6) return absl::StrCat(a.ip, ":", a.port);
  if (a.family == AF_INET) return absl::StrCat("[::ffff:", a.ip, "]:", a.port);
  return absl::StrCat("[", a.ip, "]:", a.port);
}

// The addresses `endpoint` names: itself when it is an address, else what getaddrinfo gives
// (TCP, in its order, without repeats).
std::vector<Address> Resolve(const Endpoint& endpoint) {
  if (IsIpv4(endpoint.host)) return {{AF_INET, endpoint.host, endpoint.port}};
  if (IsIpv6(endpoint.host)) return {{AF_INET6, endpoint.host, endpoint.port}};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(endpoint.host.c_str(), nullptr, &hints, &found) != 0) return {};
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(found, freeaddrinfo);
  std::vector<Address> out;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* raw =
        ai->ai_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        inet_ntop(ai->ai_family, raw, text, sizeof(text)) == nullptr) {
      continue;
    }
    Address a{ai->ai_family, text, endpoint.port};
    bool seen = std::any_of(out.begin(), out.end(),
                            [&](const Address& b) { return b.family == a.family && b.ip == a.ip; });
    if (!seen) out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

std::string Endpoint::HostPort() const {
  if (absl::StrContains(host, ':')) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<Endpoint> ParseEndpoint(absl::string_view text) {
  Endpoint endpoint;
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "https://")) {
    endpoint.scheme = Endpoint::Scheme::kHttps;
  } else if (absl::ConsumePrefix(&rest, "http://")) {
    endpoint.scheme = Endpoint::Scheme::kHttp;
  } else if (absl::StrContains(rest, "://")) {
    return Invalid(text, "only the http:// and https:// schemes are known");
  }
  if (rest.empty()) return Invalid(text, "no host");

  absl::string_view host;
  absl::string_view port;
  if (rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == absl::string_view::npos) return Invalid(text, "'[' without ']'");
    host = rest.substr(1, close - 1);
    absl::string_view after = rest.substr(close + 1);
    if (!absl::ConsumePrefix(&after, ":")) return Invalid(text, "no :PORT after the address");
    port = after;
    if (!IsIpv6(std::string(host))) return Invalid(text, "not an IPv6 address in brackets");
  } else {
    size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) return Invalid(text, "no :PORT");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (absl::StrContains(host, ':')) {
      return Invalid(text, "an IPv6 address goes in brackets, as in [::1]:2379");
    }
    if (!IsIpv4(std::string(host)) && !IsHostName(host)) {
      return Invalid(text, absl::StrCat("\"", host, "\" is not a host name or an IP address"));
    }
  }
  if (absl::StrContains(port, '/')) return Invalid(text, "a path is not allowed");
  int number = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) {
    return Invalid(text, absl::StrCat("\"", port, "\" is not a port (1-65535)"));
  }
  endpoint.host = std::string(host);
  endpoint.port = number;
  return endpoint;
}

absl::StatusOr<std::vector<std::string>> ParseEndpoints(absl::string_view text) {
  if (absl::StripAsciiWhitespace(text).empty()) {
    return absl::InvalidArgumentError("no etcd endpoint given");
  }
  std::vector<std::string> out;
  int position = 0;
  for (absl::string_view entry : absl::StrSplit(text, ',')) {
    ++position;
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd endpoints \"", text, "\": entry ", position, " is empty"));
    }
    absl::StatusOr<Endpoint> endpoint = ParseEndpoint(entry);
    if (!endpoint.ok()) return endpoint.status();
    out.emplace_back(entry);
  }
  return out;
}

absl::StatusOr<std::string> ChannelTarget(const std::vector<Endpoint>& endpoints) {
  if (endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoint given");
  if (endpoints.size() == 1 && !IsIpv4(endpoints[0].host) && !IsIpv6(endpoints[0].host)) {
    return absl::StrCat("dns:///", endpoints[0].HostPort());
  }
  std::vector<Address> addresses;
  std::vector<std::string> unresolved;
  for (const Endpoint& endpoint : endpoints) {
    std::vector<Address> found = Resolve(endpoint);
    if (found.empty()) unresolved.push_back(endpoint.host);
    for (Address& a : found) {
      bool seen = std::any_of(addresses.begin(), addresses.end(), [&](const Address& b) {
        return b.family == a.family && b.ip == a.ip && b.port == a.port;
      });
      if (!seen) addresses.push_back(std::move(a));
    }
  }
  if (addresses.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no etcd endpoint's name resolves (", absl::StrJoin(unresolved, ", "), ")"));
  }
  // One family per target: IPv4 addresses join IPv6 ones as IPv4-mapped addresses.
  const bool as_ipv6 = std::any_of(addresses.begin(), addresses.end(),
                                   [](const Address& a) { return a.family == AF_INET6; });
  std::vector<std::string> parts;
  for (const Address& a : addresses) parts.push_back(AddressTarget(a, as_ipv6));
  return absl::StrCat(as_ipv6 ? "ipv6:" : "ipv4:", absl::StrJoin(parts, ","));
}

}  // namespace tunnelagent::etcd
