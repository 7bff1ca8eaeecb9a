#include "clients/common/agent_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tunnelagent::clients {
namespace {

absl::StatusOr<std::string> ReadNamedFile(absl::string_view source, const std::string& path,
                                          std::istream& in) {
  absl::StatusOr<std::string> content = ReadInputFile(path, in);
  if (!content.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", content.status().message()));
  }
  return content;
}

std::string OneLine(absl::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ReadInputFile(const std::string& path, std::istream& in) {
  if (path == "-") {
    std::string content(std::istreambuf_iterator<char>(in), {});
    if (in.bad()) return absl::InvalidArgumentError("cannot read stdin");
    return content;
  }
  // A directory opens, then reads as nothing: said for what it is rather than "empty".
  if (struct stat st; stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", path, ": is a directory (want a file, or - for stdin)"));
  }
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
  return content.str();
}

absl::StatusOr<std::string> CheckToken(absl::string_view token, absl::string_view source) {
  absl::string_view stripped = absl::StripAsciiWhitespace(token);
  if (stripped.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": empty token"));
  for (char c : stripped) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": the token must be visible ASCII without white space (one line)"));
    }
  }
  return std::string(stripped);
}

absl::StatusOr<Credentials> LoadCredentials(const TlsOptions& tls, const std::string& token_file,
                                            const std::string& env_token, std::istream& in,
                                            const CredentialSources& sources) {
  Credentials credentials;
  if (!token_file.empty()) {
    absl::StatusOr<std::string> content = ReadNamedFile(sources.token_file, token_file, in);
    if (!content.ok()) return content.status();
    absl::StatusOr<std::string> token =
        CheckToken(*content, absl::StrCat(sources.token_file, " ", token_file));
    if (!token.ok()) return token.status();
    credentials.token = *std::move(token);
  } else if (!env_token.empty()) {
    absl::StatusOr<std::string> token = CheckToken(env_token, sources.env_token);
    if (!token.ok()) return token.status();
    credentials.token = *std::move(token);
  }

  if (tls.enabled) {
    grpc::SslCredentialsOptions ssl;
    struct {
      const std::string& source;
      const std::string& path;
      std::string* pem;
    } files[] = {
        {sources.ca_file, tls.ca_file, &ssl.pem_root_certs},
        {sources.cert_file, tls.cert_file, &ssl.pem_cert_chain},
        {sources.key_file, tls.key_file, &ssl.pem_private_key},
    };
    for (const auto& f : files) {
      if (f.path.empty()) continue;
      absl::StatusOr<std::string> pem = ReadNamedFile(f.source, f.path, in);
      if (!pem.ok()) return pem.status();
      if (pem->find("-----BEGIN ") == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(f.source, ": ", f.path, ": not PEM"));
      }
      *f.pem = *std::move(pem);
    }
    credentials.channel = grpc::SslCredentials(ssl);
  } else {
    credentials.channel = grpc::InsecureChannelCredentials();
  }
  return credentials;
}

std::string WithDefaultPort(const std::string& target) {
  const std::string port = absl::StrCat(":", kDefaultAgentPort);
  if (target.empty()) return target;
  if (target.front() == '[') {
    // A bracketed IPv6 address, with its port or without.
    return target.back() == ']' ? absl::StrCat(target, port) : target;
  }
  const size_t colons = std::count(target.begin(), target.end(), ':');
  if (colons == 0) return absl::StrCat(target, port);  // a name or an IPv4 address
  // One colon: host:port, or a scheme (unix:/path, dns:name). More: a scheme with a path, or
  // an IPv6 address alone, which gRPC wants in brackets.
  in6_addr v6;
  if (colons >= 2 && inet_pton(AF_INET6, target.c_str(), &v6) == 1) {
    return absl::StrCat("[", target, "]", port);
  }
  return target;
}

std::shared_ptr<grpc::Channel> Dial(const std::string& target, const TlsOptions& tls,
                                    const Credentials& credentials, grpc::ChannelArguments args) {
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kInitialReconnectBackoffMs);
  if (tls.enabled && !tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  return grpc::CreateCustomChannel(WithDefaultPort(target), credentials.channel, args);
}

void AddToken(grpc::ClientContext* context, const std::string& token) {
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

std::string StatusCodeName(int code) {
  if (code >= 0 && code <= 16) {
    std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
    if (!name.empty()) return name;
  }
  return absl::StrCat("CODE_", code);
}

std::string FormatRpcError(absl::string_view method, int code, absl::string_view message) {
  std::string out = absl::StrCat(method, ": ", StatusCodeName(code));
  if (!message.empty()) {
    absl::StrAppend(&out, ": ", OneLine(message));
  } else if (code == static_cast<int>(absl::StatusCode::kUnimplemented)) {
    absl::StrAppend(&out, ": the agent does not implement this call (an older version?)");
  }
  return out;
}

}  // namespace tunnelagent::clients
