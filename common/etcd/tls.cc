#include "common/etcd/tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace tunnelagent::etcd {
namespace {

absl::StatusOr<std::string> ReadPem(absl::string_view option, const std::string& path) {
  if (struct stat st; stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("etcd ", option, " ", path, ": is a directory"));
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd ", option, " ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream content;
  content << file.rdbuf();
  if (file.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd ", option, " ", path, ": ", std::strerror(errno)));
  }
  if (!absl::StrContains(content.str(), "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat("etcd ", option, " ", path, ": not PEM"));
  }
  return content.str();
}

// Binary form of an IP address, or "" when `text` is none.
std::string IpBytes(absl::string_view text) {
  std::string s(text);
  in_addr v4;
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    return std::string(reinterpret_cast<const char*>(&v4), sizeof(v4));
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    return std::string(reinterpret_cast<const char*>(&v6), sizeof(v6));
  }
  return "";
}

bool DnsNameMatches(absl::string_view pattern, absl::string_view host) {
  if (absl::EqualsIgnoreCase(pattern, host)) return true;
  // "*.example.com": exactly one label in place of the star, never a bare "example.com".
  if (!absl::StartsWith(pattern, "*.")) return false;
  size_t dot = host.find('.');
  if (dot == absl::string_view::npos || dot == 0) return false;
  return absl::EqualsIgnoreCase(pattern.substr(1), host.substr(dot));
}

// Takes a server certificate that names any of `hosts` (the chain was checked by then).
class EndpointNameVerifier : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit EndpointNameVerifier(std::vector<std::string> hosts) : hosts_(std::move(hosts)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> callback, grpc::Status* sync_status) override {
    std::vector<std::string> dns_names;
    for (const grpc::string_ref& n : request->dns_names())
      dns_names.emplace_back(n.begin(), n.end());
    std::vector<std::string> ip_names;
    for (const grpc::string_ref& n : request->ip_names()) ip_names.emplace_back(n.begin(), n.end());
    for (const std::string& host : hosts_) {
      if (CertificateNamesHost(dns_names, ip_names, host)) {
        *sync_status = grpc::Status::OK;
        return true;
      }
    }
    std::vector<std::string> names = dns_names;
    names.insert(names.end(), ip_names.begin(), ip_names.end());
    *sync_status =
        grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                     absl::StrCat("etcd's certificate names ",
                                  names.empty() ? "nothing" : absl::StrJoin(names, ", "),
                                  ", none of the endpoints (", absl::StrJoin(hosts_, ", "), ")"));
    return true;
  }

  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {}

 private:
  const std::vector<std::string> hosts_;
};

}  // namespace

bool CertificateNamesHost(const std::vector<std::string>& dns_names,
                          const std::vector<std::string>& ip_names, absl::string_view host) {
  std::string host_ip = IpBytes(host);
  if (!host_ip.empty()) {
    for (const std::string& ip : ip_names) {
      if (IpBytes(ip) == host_ip) return true;
    }
    return false;
  }
  for (const std::string& name : dns_names) {
    if (DnsNameMatches(name, host)) return true;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentials(
    const ClientOptions& options, const std::vector<Endpoint>& endpoints) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "etcd client certificate: give both the certificate and its key, or neither");
  }
  std::string roots;
  if (!options.ca_file.empty()) {
    absl::StatusOr<std::string> pem = ReadPem("CA file", options.ca_file);
    if (!pem.ok()) return pem.status();
    roots = *std::move(pem);
  }
  std::vector<grpc::experimental::IdentityKeyCertPair> identity;
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem("certificate file", options.cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("key file", options.key_file);
    if (!key.ok()) return key.status();
    identity.push_back({*std::move(key), *std::move(cert)});
  }

  grpc::experimental::TlsChannelCredentialsOptions tls;
  if (!roots.empty() || !identity.empty()) {
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::StaticDataCertificateProvider>(roots, identity));
  }
  // Not watched: gRPC then trusts the system's roots.
  if (!roots.empty()) tls.watch_root_certs();
  if (!identity.empty()) tls.watch_identity_key_cert_pairs();
  std::vector<std::string> hosts;
  for (const Endpoint& e : endpoints) hosts.push_back(e.host);
  tls.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<EndpointNameVerifier>(
          std::move(hosts)));
  // The per-call host check compares against the channel's one name: the verifier does that
  // job for every member.
  tls.set_check_call_host(false);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::experimental::TlsCredentials(tls);
  if (credentials == nullptr) {
    return absl::InvalidArgumentError("etcd TLS: gRPC refused the TLS options");
  }
  return credentials;
}

}  // namespace tunnelagent::etcd
