#include "agent/server_security.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "grpc/grpc.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "openssl/bio.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/rsa.h"
#include "openssl/x509.h"
#include "openssl/x509v3.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

// ---- which listen addresses may serve plaintext --------------------------------------------

struct ListenCase {
  const char* listen;
  bool local;
};

TEST(ServerSecurityTest, IsLocalListenAddress) {
  const ListenCase kCases[] = {
      {"unix:/run/tunnel-agent.sock", true},
      {"unix:relative.sock", true},
      {"unix-abstract:tunnel-agent", true},
      {"127.0.0.1:50051", true},
      {"127.1.2.3:50051", true},
      {"127.255.255.255:1", true},
      {"127.0.0.1", true},  // no port
      {"localhost:50051", true},
      {"LocalHost:50051", true},
      {"localhost", true},
      {"[::1]:50051", true},
      {"[::1]", true},
      {"::1", true},  // a bare IPv6 literal, no port
      {"[::ffff:127.0.0.1]:50051", true},
      {"[0:0:0:0:0:0:0:1]:50051", true},
      {"0.0.0.0:50051", false},
      {"[::]:50051", false},
      {"::", false},
      {":50051", false},  // empty host: every interface
      {"", false},
      {"198.18.0.1:50051", false},
      {"10.0.0.1:50051", false},
      {"128.0.0.1:50051", false},
      {"126.255.255.255:50051", false},
      {"[::2]:50051", false},
      {"[fe80::1]:50051", false},
      {"[::ffff:10.0.0.1]:50051", false},
      {"[::ffff:0.0.0.0]:50051", false},
      {"example.com:50051", false},
      {"localhost.example.com:50051", false},
      {"mylocalhost:50051", false},
      {"127.0.0.1.nip.io:50051", false},
      {"127.1:50051", false},  // resolvers read it as 127.0.0.1; not accepted, to be sure
      {"[::1:50051", false},   // unbalanced bracket
      {"[::1]x:50051", false},
      {"unix", false},
      {"dns:///localhost:50051", false},
  };
  for (const ListenCase& c : kCases) {
    EXPECT_EQ(IsLocalListenAddress(c.listen), c.local) << "listen address \"" << c.listen << "\"";
  }
}

// ---- flags -> security ----------------------------------------------------------------------

ServerSecurityFlags Flags(std::string listen, std::string tls_cert = "", std::string tls_key = "",
                          std::string tls_client_ca = "", std::string auth_token_file = "",
                          bool insecure = false) {
  ServerSecurityFlags flags;
  flags.listen = std::move(listen);
  flags.tls_cert = std::move(tls_cert);
  flags.tls_key = std::move(tls_key);
  flags.tls_client_ca = std::move(tls_client_ca);
  flags.auth_token_file = std::move(auth_token_file);
  flags.insecure = insecure;
  return flags;
}

// Key pairs and self-signed certificates made for the test with libcrypto.
struct Pem {
  std::string cert;
  std::string key;
};

std::string BioString(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(bio);
  return s;
}

// A certificate for `key`, valid for an hour, naming localhost.
std::string SelfSigned(EVP_PKEY* key, const char* cn) {
  X509* x509 = X509_new();
  X509_set_version(x509, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x509), 1);
  X509_gmtime_adj(X509_getm_notBefore(x509), -60);
  X509_gmtime_adj(X509_getm_notAfter(x509), 3600);
  X509_set_pubkey(x509, key);
  X509_NAME* name = X509_get_subject_name(x509);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                             -1, -1, 0);
  X509_set_issuer_name(x509, name);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, x509, x509, nullptr, nullptr, 0);
  X509_EXTENSION* san =
      X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, const_cast<char*>("DNS:localhost"));
  X509_add_ext(x509, san, -1);
  X509_EXTENSION_free(san);
  X509_sign(x509, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, x509);
  X509_free(x509);
  return BioString(bio);
}

enum class KeyForm { kPkcs8, kTraditional, kEncrypted };

std::string KeyPem(EVP_PKEY* key, KeyForm form) {
  BIO* bio = BIO_new(BIO_s_mem());
  switch (form) {
    case KeyForm::kPkcs8:
      PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
      break;
    case KeyForm::kTraditional:  // "EC PRIVATE KEY", "RSA PRIVATE KEY"
      PEM_write_bio_PrivateKey_traditional(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
      break;
    case KeyForm::kEncrypted:
      PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_128_cbc(), const_cast<char*>("pass"), 4,
                                    nullptr, nullptr);
      break;
  }
  return BioString(bio);
}

Pem MakePem(EVP_PKEY* key, const char* cn, KeyForm form = KeyForm::kPkcs8) {
  Pem pem{SelfSigned(key, cn), KeyPem(key, form)};
  return pem;
}

class ServerSecurityFilesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EVP_PKEY* a = EVP_EC_gen("P-256");
    EVP_PKEY* b = EVP_EC_gen("P-256");
    EVP_PKEY* rsa = EVP_RSA_gen(2048);
    ec_ = new Pem(MakePem(a, "a"));
    ec_traditional_key_ = new std::string(KeyPem(a, KeyForm::kTraditional));
    encrypted_key_ = new std::string(KeyPem(a, KeyForm::kEncrypted));
    other_ = new Pem(MakePem(b, "b"));
    rsa_ = new Pem(MakePem(rsa, "rsa", KeyForm::kTraditional));
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
    EVP_PKEY_free(rsa);
  }

  void SetUp() override {
    char tmpl[] = "/tmp/server_security_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }

  std::string Write(const std::string& name, const std::string& content) {
    std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path) << content;
    return path;
  }

  std::string Cert() { return Write("cert.pem", ec_->cert); }
  std::string Key() { return Write("key.pem", ec_->key); }

  static Pem* ec_;  // leaked: made once per run
  static std::string* ec_traditional_key_;
  static std::string* encrypted_key_;
  static Pem* other_;
  static Pem* rsa_;
  std::string dir_;
};
Pem* ServerSecurityFilesTest::ec_;
std::string* ServerSecurityFilesTest::ec_traditional_key_;
std::string* ServerSecurityFilesTest::encrypted_key_;
Pem* ServerSecurityFilesTest::other_;
Pem* ServerSecurityFilesTest::rsa_;

TEST_F(ServerSecurityFilesTest, PlaintextOnAUnixSocketPathIsAccepted) {
  for (const char* listen : {"unix:/tmp/x.sock", "unix:///run/tunnel-agent/agent.sock"}) {
    absl::StatusOr<ServerSecurity> s = ResolveServerSecurity(Flags(listen));
    ASSERT_TRUE(s.ok()) << listen << ": " << s.status();
    EXPECT_FALSE(s->tls);
    EXPECT_TRUE(s->auth_token.empty());
  }
}

// Loopback TCP has no file mode: any local user could reach it.
TEST_F(ServerSecurityFilesTest, PlaintextOnLoopbackNeedsATokenTlsOrInsecure) {
  const std::string token = Write("token", "tok\n");
  for (const char* listen :
       {"127.0.0.1:50051", "localhost:1", "[::1]:1", "unix-abstract:tunnel-agent"}) {
    absl::StatusOr<ServerSecurity> s = ResolveServerSecurity(Flags(listen));
    ASSERT_FALSE(s.ok()) << listen;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.status().message(),
              absl::StrCat("refusing to serve plaintext gRPC on ", listen,
                           " without a bearer token, as every local user could call it: pass "
                           "--auth_token_file, or --tls_cert and --tls_key, or --insecure to "
                           "allow it (or listen on a unix: socket)"));

    s = ResolveServerSecurity(Flags(listen, "", "", "", token));
    ASSERT_TRUE(s.ok()) << listen << " with a token: " << s.status();
    EXPECT_EQ(s->auth_token, "tok");
    s = ResolveServerSecurity(Flags(listen, Cert(), Key()));
    ASSERT_TRUE(s.ok()) << listen << " with TLS: " << s.status();
    EXPECT_TRUE(s->tls);
    s = ResolveServerSecurity(Flags(listen, "", "", "", "", /*insecure=*/true));
    ASSERT_TRUE(s.ok()) << listen << " with --insecure: " << s.status();
    EXPECT_FALSE(s->tls);
  }
}

TEST_F(ServerSecurityFilesTest, PlaintextElsewhereWithATokenStillNeedsInsecure) {
  // The token would cross the network in the clear.
  absl::StatusOr<ServerSecurity> s =
      ResolveServerSecurity(Flags("198.18.0.1:1", "", "", "", Write("token", "tok\n")));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("--insecure to allow plaintext"));
}

TEST_F(ServerSecurityFilesTest, PlaintextElsewhereIsRefusedWithWhatToPass) {
  for (const char* listen : {"0.0.0.0:50051", "[::]:50051", "198.18.0.1:50051", "host:1"}) {
    absl::StatusOr<ServerSecurity> s = ResolveServerSecurity(Flags(listen));
    ASSERT_FALSE(s.ok()) << listen;
    EXPECT_THAT(s.status().message(), HasSubstr(absl::StrCat("plaintext gRPC on ", listen)));
    EXPECT_THAT(s.status().message(), HasSubstr("--tls_cert and --tls_key"));
    EXPECT_THAT(s.status().message(), HasSubstr("--insecure"));
    EXPECT_EQ(s.status().message().find('\n'), std::string::npos) << "one line";
  }
}

TEST_F(ServerSecurityFilesTest, InsecureAllowsPlaintextAnywhere) {
  absl::StatusOr<ServerSecurity> s =
      ResolveServerSecurity(Flags("0.0.0.0:50051", "", "", "", "", true));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->tls);
}

TEST_F(ServerSecurityFilesTest, TlsAnywhere) {
  absl::StatusOr<ServerSecurity> s = ResolveServerSecurity(Flags("0.0.0.0:50051", Cert(), Key()));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls);
  EXPECT_THAT(s->cert_chain_pem, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_THAT(s->private_key_pem, HasSubstr("BEGIN PRIVATE KEY"));
  EXPECT_TRUE(s->client_ca_pem.empty());
  EXPECT_EQ(DescribeServerSecurity(*s), "TLS, no bearer token");
}

TEST_F(ServerSecurityFilesTest, MutualTls) {
  // A bundle of two CAs.
  std::string ca = Write("ca.pem", other_->cert + rsa_->cert);
  absl::StatusOr<ServerSecurity> s =
      ResolveServerSecurity(Flags("198.18.0.1:1", Cert(), Key(), ca));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->client_ca_pem, other_->cert + rsa_->cert);
  EXPECT_EQ(DescribeServerSecurity(*s), "TLS, client certificates required, no bearer token");
}

TEST_F(ServerSecurityFilesTest, KeysInEveryUnencryptedPemForm) {
  absl::StatusOr<ServerSecurity> s =
      ResolveServerSecurity(Flags("198.18.0.1:1", Cert(), Write("ec.key", *ec_traditional_key_)));
  EXPECT_TRUE(s.ok()) << "EC PRIVATE KEY: " << s.status();
  s = ResolveServerSecurity(
      Flags("198.18.0.1:1", Write("rsa.pem", rsa_->cert), Write("rsa.key", rsa_->key)));
  EXPECT_TRUE(s.ok()) << "RSA PRIVATE KEY: " << s.status();
  // A chain: the leaf first, then what signed it.
  s = ResolveServerSecurity(
      Flags("198.18.0.1:1", Write("chain.pem", ec_->cert + other_->cert), Key()));
  EXPECT_TRUE(s.ok()) << "chain: " << s.status();
}

TEST_F(ServerSecurityFilesTest, FlagErrors) {
  struct Case {
    ServerSecurityFlags flags;
    std::string want;
  };
  const std::string missing = absl::StrCat(dir_, "/missing.pem");
  const std::string not_pem = Write("not.pem", "hello\n");
  const std::vector<Case> cases = {
      {Flags("127.0.0.1:1", Cert()), "--tls_cert without --tls_key: pass both"},
      {Flags("127.0.0.1:1", "", Key()), "--tls_key without --tls_cert: pass both"},
      {Flags("127.0.0.1:1", "", "", Cert()),
       "--tls_client_ca needs TLS: pass --tls_cert and --tls_key too"},
      {Flags("127.0.0.1:1", missing, Key()),
       "--tls_cert: cannot read " + missing + ": No such file or directory"},
      {Flags("127.0.0.1:1", Cert(), missing), "--tls_key: cannot read " + missing},
      {Flags("127.0.0.1:1", Cert(), Key(), missing), "--tls_client_ca: cannot read " + missing},
      {Flags("127.0.0.1:1", not_pem, Key()),
       "--tls_cert: " + not_pem + " holds no PEM certificate"},
      {Flags("127.0.0.1:1", Cert(), Cert()), "holds no unencrypted PEM private key"},
      {Flags("127.0.0.1:1", Cert(), Write("enc.key", *encrypted_key_)),
       "holds no unencrypted PEM private key"},
      {Flags("127.0.0.1:1", Cert(), Write("other.key", other_->key)),
       "other.key is not the private key of the certificate in " + dir_ + "/cert.pem"},
      {Flags("127.0.0.1:1", Write("chain.pem", other_->cert + ec_->cert), Key()),
       "is not the private key of the certificate"},  // the key goes with the first
      {Flags("127.0.0.1:1", Cert(), Key(), not_pem),
       "--tls_client_ca: " + not_pem + " holds no PEM certificate"},
      {Flags("127.0.0.1:1", dir_, Key()), "Is a directory"},
      {Flags("127.0.0.1:1", "", "", "", missing), "--auth_token_file: cannot read " + missing},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ServerSecurity> s = ResolveServerSecurity(c.flags);
    ASSERT_FALSE(s.ok()) << c.want;
    EXPECT_THAT(s.status().message(), HasSubstr(c.want));
  }
}

TEST_F(ServerSecurityFilesTest, AuthToken) {
  EXPECT_EQ(*ReadAuthToken(Write("t1", "s3cret\n")), "s3cret");
  EXPECT_EQ(*ReadAuthToken(Write("t2", "  \t s3cret-with.symbols/+= \r\n\n")),
            "s3cret-with.symbols/+=");
  absl::StatusOr<std::string> empty = ReadAuthToken(Write("t3", ""));
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("is empty"));
  EXPECT_FALSE(ReadAuthToken(Write("t4", " \n\t\n")).ok());
  absl::StatusOr<std::string> two_lines = ReadAuthToken(Write("t5", "abc\ndef\n"));
  ASSERT_FALSE(two_lines.ok());
  EXPECT_THAT(two_lines.status().message(), HasSubstr("byte 0x0a at offset 3"));
  EXPECT_FALSE(ReadAuthToken(Write("t6", "abc\x01")).ok());

  absl::StatusOr<ServerSecurity> s =
      ResolveServerSecurity(Flags("unix:/x", "", "", "", Write("t7", "tok\n")));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->auth_token, "tok");
  EXPECT_EQ(DescribeServerSecurity(*s), "plaintext, bearer token required (health exempt)");
}

// ---- the bearer check -----------------------------------------------------------------------

TEST(ServerSecurityTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("abd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abcabc", "abc"));  // the expected one repeated
  EXPECT_FALSE(ConstantTimeEquals("", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", ""));
}

TEST(ServerSecurityTest, CheckBearerToken) {
  using V = std::vector<absl::string_view>;
  const std::string kPath = "/tunnelagent.v1.TunnelService/ListTunnels";
  struct Case {
    std::string path;
    V authorization;
    bool ok;
  };
  const std::vector<Case> cases = {
      {kPath, V{"Bearer tok"}, true},
      {kPath, V{"bearer tok"}, true},
      {kPath, V{"BEARER tok"}, true},
      {kPath, V{"Bearer  tok"}, true},
      {kPath, V{"Basic dXNlcjpwdw==", "Bearer tok"}, true},
      {kPath, V{}, false},
      {kPath, V{"Bearer tok2"}, false},
      {kPath, V{"Bearer to"}, false},
      {kPath, V{"Bearer "}, false},
      {kPath, V{"Bearer"}, false},
      {kPath, V{"tok"}, false},
      {kPath, V{"Basic tok"}, false},
      {kPath, V{"Bearertok"}, false},
      {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", V{}, false},
      {"/grpc.health.v1.Health/Check", V{}, true},
      {"/grpc.health.v1.Health/Watch", V{"Bearer wrong"}, true},
      {"/grpc.health.v1.HealthX/Check", V{}, false},
      {"", V{}, false},
  };
  for (const Case& c : cases) {
    absl::Status status = CheckBearerToken(c.path, c.authorization, "tok");
    EXPECT_EQ(status.ok(), c.ok) << c.path << " " << testing::PrintToString(c.authorization);
    if (!status.ok()) {
      EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
      EXPECT_EQ(status.message(), "missing or invalid bearer token");
    }
  }
  EXPECT_TRUE(CheckBearerToken(kPath, {}, "").ok()) << "no token configured";
}

// ---- a real server on a unix socket: the check runs before any handler -----------------------

class CountingService final : public v1::TunnelService::Service {
 public:
  grpc::Status GetTunnel(grpc::ServerContext* context, const v1::GetTunnelRequest* request,
                         v1::Tunnel* response) override {
    ++calls;
    saw_authorization = context->client_metadata().count("authorization") != 0;
    response->set_name(request->name());
    return grpc::Status::OK;
  }
  std::atomic<int> calls{0};
  std::atomic<bool> saw_authorization{false};
};

class ServerSecurityServerTest : public ::testing::Test {
 protected:
  // gRPC stays initialized for the whole run: else the last object of each test shuts it down,
  // and gRPC 1.51's shutdown can wait up to 10 s for its executor thread's epoll_wait.
  static void SetUpTestSuite() { grpc_init(); }

  void Start(const ServerSecurity& security) {
    socket_ = absl::StrCat("unix:/tmp/server_security_test.", getpid(), ".sock");
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(socket_, MakeServerCredentials(security));
    ApplyServerLimits(ServerLimits{}, &builder);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(socket_, grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    unlink(socket_.substr(5).c_str());
  }

  grpc::Status Get(const std::string& name, const char* authorization,
                   v1::Tunnel* response = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (authorization != nullptr) context.AddMetadata("authorization", authorization);
    v1::GetTunnelRequest request;
    request.set_name(name);
    v1::Tunnel tunnel;
    return v1::TunnelService::NewStub(channel_)->GetTunnel(&context, request,
                                                           response ? response : &tunnel);
  }

  // A channel to the server with TLS credentials: trusting `root`, presenting `client` if set.
  std::shared_ptr<grpc::Channel> TlsChannel(const std::string& root, const Pem* client) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = root;
    if (client != nullptr) {
      options.pem_private_key = client->key;
      options.pem_cert_chain = client->cert;
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    return grpc::CreateCustomChannel(socket_, grpc::SslCredentials(options), args);
  }

  std::string socket_;
  CountingService service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerSecurityServerTest, BearerTokenOnPlaintext) {
  ServerSecurity security;
  security.auth_token = "s3cret";
  Start(security);

  for (const char* bad : {static_cast<const char*>(nullptr), "Bearer wrong", "Bearer s3cre",
                          "s3cret", "Bearer s3cret2"}) {
    grpc::Status status = Get("t1", bad);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << (bad ? bad : "(none)");
    EXPECT_EQ(status.error_message(), "missing or invalid bearer token");
  }
  EXPECT_EQ(service_.calls, 0) << "a rejected call reached the service";

  v1::Tunnel tunnel;
  grpc::Status status = Get("t1", "Bearer s3cret", &tunnel);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(tunnel.name(), "t1");
  EXPECT_EQ(service_.calls, 1);
  EXPECT_FALSE(service_.saw_authorization) << "the token is consumed by the check";

  // Health needs no token.
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse health;
  status = grpc::health::v1::Health::NewStub(channel_)->Check(
      &context, grpc::health::v1::HealthCheckRequest(), &health);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ServerSecurityServerTest, NoTokenConfiguredLetsEveryCallThrough) {
  Start(ServerSecurity{});
  EXPECT_TRUE(Get("t1", nullptr).ok());
  EXPECT_TRUE(Get("t1", "Bearer anything").ok());
  EXPECT_EQ(service_.calls, 2);
}

TEST_F(ServerSecurityServerTest, OversizedRequestIsRefused) {
  Start(ServerSecurity{});
  grpc::Status status = Get(std::string(5 << 20, 'x'), nullptr);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(service_.calls, 0);
  EXPECT_TRUE(Get("t1", nullptr).ok()) << "the server keeps serving";
  EXPECT_TRUE(Get(std::string((4 << 20) - 64, 'x'), nullptr).ok()) << "just under 4 MiB";
}

TEST_F(ServerSecurityServerTest, MutualTlsAndBearerToken) {
  EVP_PKEY* server_key = EVP_EC_gen("P-256");
  EVP_PKEY* client_key = EVP_EC_gen("P-256");
  EVP_PKEY* rogue_key = EVP_EC_gen("P-256");
  const Pem server = MakePem(server_key, "server");
  const Pem client = MakePem(client_key, "client");  // self-signed: its own CA
  const Pem rogue = MakePem(rogue_key, "rogue");
  EVP_PKEY_free(server_key);
  EVP_PKEY_free(client_key);
  EVP_PKEY_free(rogue_key);
  ServerSecurity security;
  security.tls = true;
  security.cert_chain_pem = server.cert;
  security.private_key_pem = server.key;
  security.client_ca_pem = client.cert;
  security.auth_token = "tok";
  Start(security);

  grpc::Status status = Get("t1", "Bearer tok");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << "plaintext client";
  channel_ = TlsChannel(server.cert, nullptr);
  status = Get("t1", "Bearer tok");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << "no client certificate";
  channel_ = TlsChannel(server.cert, &rogue);
  status = Get("t1", "Bearer tok");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << "certificate of another CA";
  channel_ = TlsChannel(rogue.cert, &client);
  status = Get("t1", "Bearer tok");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << "server not trusted";
  EXPECT_EQ(service_.calls, 0);

  channel_ = TlsChannel(server.cert, &client);
  status = Get("t1", "Bearer wrong");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  EXPECT_EQ(service_.calls, 0);
  status = Get("t1", "Bearer tok");
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(service_.calls, 1);
}

// ---- the health-only listener ---------------------------------------------------------------

// The status code of a call of `method` with an empty request, whatever its type.
grpc::StatusCode CallCode(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& method) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice empty("");  // an empty message of any type
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status result;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) {
                   result = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();
  return result.error_code();
}

TEST(HealthOnlyServerTest, AnswersHealthAndNothingElse) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();  // as the agent does
  absl::StatusOr<HealthOnlyServer> health_only = StartHealthOnlyServer("127.0.0.1:0");
  ASSERT_TRUE(health_only.ok()) << health_only.status();
  const int port = health_only->port;
  ASSERT_GT(port, 0);
  grpc::Server* server = health_only->server.get();
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto check = [&](const std::string& service, grpc::health::v1::HealthCheckResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    return grpc::health::v1::Health::NewStub(channel)->Check(&context, request, response);
  };
  grpc::health::v1::HealthCheckResponse health;
  grpc::Status status = check("", &health);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  server->GetHealthCheckService()->SetServingStatus("tunnelagent.v1.TunnelService", false);
  status = check("tunnelagent.v1.TunnelService", &health);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);

  // Any other method, server reflection included, is not there.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::Tunnel tunnel;
  status =
      v1::TunnelService::NewStub(channel)->GetTunnel(&context, v1::GetTunnelRequest(), &tunnel);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  constexpr char kReflection[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  EXPECT_EQ(CallCode(channel, kReflection), grpc::StatusCode::UNIMPLEMENTED);

  // Control: an ordinary server of this process does serve reflection, so the above can fail.
  grpc::ServerBuilder builder;
  int other_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &other_port);
  std::unique_ptr<grpc::Server> ordinary = builder.BuildAndStart();
  ASSERT_NE(ordinary, nullptr);
  EXPECT_NE(CallCode(grpc::CreateChannel(absl::StrCat("127.0.0.1:", other_port),
                                         grpc::InsecureChannelCredentials()),
                     kReflection),
            grpc::StatusCode::UNIMPLEMENTED);
  ordinary->Shutdown(std::chrono::system_clock::now());
  server->Shutdown(std::chrono::system_clock::now());

  EXPECT_FALSE(StartHealthOnlyServer("unix:/tmp/x.sock").ok());
}

}  // namespace
}  // namespace tunnelagent::agent
