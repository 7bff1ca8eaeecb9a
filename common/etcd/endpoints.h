// etcd endpoints as etcdctl's --endpoints takes them, parsed, and turned into the target of one
// gRPC channel over all of them. Internal to the etcd client (common/etcd/client.cc); its tests
// use it directly.
#ifndef TUNNELAGENT_COMMON_ETCD_ENDPOINTS_H_
#define TUNNELAGENT_COMMON_ETCD_ENDPOINTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::etcd {

struct Endpoint {
  enum class Scheme { kNone, kHttp, kHttps };
  Scheme scheme = Scheme::kNone;
  std::string host;  // a name, an IPv4 address, or an IPv6 address without its brackets
  int port = 0;

  // "host:port", with brackets around an IPv6 address.
  std::string HostPort() const;
};

// "HOST:PORT", "http://HOST:PORT" or "https://HOST:PORT"; IPv6 in brackets. INVALID_ARGUMENT
// otherwise, saying what is wrong.
absl::StatusOr<Endpoint> ParseEndpoint(absl::string_view text);

// The gRPC target for a channel to any of `endpoints` (a non-empty list):
//  - IP addresses: "ipv4:a:p,b:p" or "ipv6:[a]:p,[b]:p" (IPv4 addresses written as IPv4-mapped
//    IPv6 ones when both families are present; gRPC connects to those over IPv4);
//  - one endpoint that is a name: "dns:///name:port", so that gRPC resolves it again whenever
//    it reconnects;
//  - several endpoints with names among them: every name resolved now (getaddrinfo) and the
//    addresses listed as above; a name that does not resolve is left out (a member whose name
//    is gone), UNAVAILABLE when nothing resolves. The addresses are not looked up again for
//    the life of the channel: make a new client to follow a member that moved.
absl::StatusOr<std::string> ChannelTarget(const std::vector<Endpoint>& endpoints);

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_ENDPOINTS_H_
