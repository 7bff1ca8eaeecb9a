// TLS to etcd over one channel to several members. gRPC checks a server's certificate against
// the one name of the channel, but each etcd member usually has a certificate of its own (its
// address or name): so the chain is checked against the CA as usual, and the name by a
// verifier of ours that takes a certificate naming any of the configured endpoints' hosts, as
// etcd's own client checks each member against the endpoint it dialled. Internal to the etcd
// client.
#ifndef TUNNELAGENT_COMMON_ETCD_TLS_H_
#define TUNNELAGENT_COMMON_ETCD_TLS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/etcd/client.h"
#include "common/etcd/endpoints.h"
#include "grpcpp/security/credentials.h"

namespace tunnelagent::etcd {

// Credentials for ClientOptions' CA (empty: the system's roots) and client certificate and key
// (both or neither), with the name check above. INVALID_ARGUMENT naming the file when one
// cannot be read or is not PEM.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentials(
    const ClientOptions& options, const std::vector<Endpoint>& endpoints);

// Whether a certificate with these subject alternative names is one for `host` (a name or an
// IP address without brackets): an IP address matches an IP SAN (compared as addresses); a
// name matches a DNS SAN case-insensitively, where "*.example.com" stands for one label.
bool CertificateNamesHost(const std::vector<std::string>& dns_names,
                          const std::vector<std::string>& ip_names, absl::string_view host);

}  // namespace tunnelagent::etcd

#endif  // TUNNELAGENT_COMMON_ETCD_TLS_H_
