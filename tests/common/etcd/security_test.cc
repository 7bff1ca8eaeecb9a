// etcd's users and roles, and TLS, against a real etcd: a user whose role allows one key is
// refused every other (PERMISSION_DENIED) and not its own; a bad password and no credentials
// are UNAUTHENTICATED; an expired token is replaced without the caller noticing; TLS with a
// client certificate works and a wrong CA, a missing client certificate or a certificate
// naming no endpoint is refused.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/etcd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kOwnKey[] = "/tunnel-agent/t/nodes/n1";
constexpr char kOtherKey[] = "/tunnel-agent/t/nodes/n2";

class EtcdAuthTest : public EtcdTest {
 protected:
  EtcdClusterOptions ClusterOptions() const override {
    EtcdClusterOptions options;
    // Simple tokens live a second without use: long enough for a call, short enough for the
    // test to see one replaced.
    options.extra_args = {"--auth-token-ttl=1"};
    return options;
  }

  void SetUp() override {
    EtcdTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // root, and n1 whose role may read and write its own node key only; then auth on.
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"user", "add", "root:rootpw"},
             {"role", "add", "agent-n1"},
             {"role", "grant-permission", "agent-n1", "readwrite", kOwnKey},
             {"user", "add", "n1:n1pw"},
             {"user", "grant-role", "n1", "agent-n1"},
             {"auth", "enable"},
         }) {
      absl::StatusOr<std::string> done = cluster().Etcdctl(args);
      ASSERT_TRUE(done.ok()) << done.status();
    }
  }

  std::unique_ptr<etcd::Client> ConnectAs(const std::string& user, const std::string& password) {
    etcd::ClientOptions options;
    options.endpoints = cluster().endpoints();
    options.username = user;
    options.password = password;
    return MustConnect(options);
  }
};

TEST_F(EtcdAuthTest, ARoleLimitedToOneKey) {
  std::unique_ptr<etcd::Client> n1 = ConnectAs("n1", "n1pw");
  ASSERT_NE(n1, nullptr);
  absl::StatusOr<int64_t> own = n1->Put(kOwnKey, "registration");
  ASSERT_TRUE(own.ok()) << own.status();
  absl::StatusOr<etcd::RangeResult> got = n1->Get(kOwnKey);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kvs.size(), 1u);

  absl::Status other = n1->Put(kOtherKey, "forged").status();
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied) << other;
  EXPECT_THAT(std::string(other.message()), HasSubstr("etcdserver: permission denied"));
  EXPECT_EQ(n1->Get(kOtherKey).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(n1->Delete(kOtherKey).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(n1->GetPrefix("/tunnel-agent/t/nodes/").status().code(),
            absl::StatusCode::kPermissionDenied);
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      n1->WatchPrefix("/tunnel-agent/t/nodes/", 0, recorder.Callbacks());
  ASSERT_FALSE(watch.ok());
  EXPECT_EQ(watch.status().code(), absl::StatusCode::kPermissionDenied) << watch.status();

  // root may do anything, and sees what n1 wrote.
  std::unique_ptr<etcd::Client> root = ConnectAs("root", "rootpw");
  ASSERT_NE(root, nullptr);
  ASSERT_TRUE(root->Put(kOtherKey, "by root").ok());
  absl::StatusOr<etcd::RangeResult> all = root->GetPrefix("/tunnel-agent/t/nodes/");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->kvs.size(), 2u);

  // Elections go through etcd's Election service, which acts with the caller's token: root
  // may campaign, n1 (no right under the election) may not.
  absl::StatusOr<int64_t> lease = root->GrantLease(absl::Seconds(30));
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<etcd::LeaderKey> leads =
      root->Campaign("/tunnel-agent/t/controller", *lease, "root", absl::Seconds(5));
  ASSERT_TRUE(leads.ok()) << leads.status();
  absl::StatusOr<etcd::KeyValue> leader = root->Leader("/tunnel-agent/t/controller");
  ASSERT_TRUE(leader.ok()) << leader.status();
  EXPECT_EQ(leader->value, "root");
  absl::StatusOr<int64_t> n1_lease = n1->GrantLease(absl::Seconds(30));
  ASSERT_TRUE(n1_lease.ok()) << n1_lease.status();
  absl::Status n1_campaign =
      n1->Campaign("/tunnel-agent/t/controller", *n1_lease, "n1", absl::Seconds(2)).status();
  EXPECT_EQ(n1_campaign.code(), absl::StatusCode::kPermissionDenied) << n1_campaign;
  EXPECT_EQ(n1->Leader("/tunnel-agent/t/controller").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(EtcdAuthTest, BadOrMissingCredentialsAreUnauthenticated) {
  std::unique_ptr<etcd::Client> wrong = ConnectAs("n1", "not-the-password");
  ASSERT_NE(wrong, nullptr);
  absl::Status put = wrong->Put(kOwnKey, "v").status();
  EXPECT_EQ(put.code(), absl::StatusCode::kUnauthenticated) << put;
  EXPECT_THAT(std::string(put.message()), HasSubstr("authenticate user \"n1\""));
  std::unique_ptr<etcd::Client> nobody = ConnectAs("nobody", "x");
  ASSERT_NE(nobody, nullptr);
  EXPECT_EQ(nobody->Get(kOwnKey).status().code(), absl::StatusCode::kUnauthenticated);

  std::unique_ptr<etcd::Client> anonymous = MustConnect(cluster());
  ASSERT_NE(anonymous, nullptr);
  absl::Status get = anonymous->Get(kOwnKey).status();
  EXPECT_EQ(get.code(), absl::StatusCode::kUnauthenticated) << get;
}

TEST_F(EtcdAuthTest, AnExpiredTokenIsReplaced) {
  std::unique_ptr<etcd::Client> root = ConnectAs("root", "rootpw");
  ASSERT_NE(root, nullptr);
  ASSERT_TRUE(root->Put(kOwnKey, "first").ok());
  // Past the token's TTL (1 s; etcd looks every second): etcd has forgotten it. Then a unary
  // call and a watch each find their token refused.
  absl::SleepFor(absl::Milliseconds(2500));
  absl::StatusOr<int64_t> put = root->Put(kOwnKey, "second");
  ASSERT_TRUE(put.ok()) << put.status();
  absl::SleepFor(absl::Milliseconds(2500));
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      root->WatchPrefix("/tunnel-agent/", *put, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_TRUE(recorder.WaitForEvents(1, absl::Seconds(5)));
}

// A CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it,
// and a second CA that signed nothing here, made with openssl in `dir`.
bool MakeCertificates(const std::string& dir) {
  const std::string script = dir + "/make-certificates.sh";
  std::ofstream(script) << R"sh(set -e
cd "$(dirname "$0")"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 1 -subj /CN=etcd-test-ca
key other-ca.key
openssl req -x509 -new -key other-ca.key -out other-ca.pem -days 1 -subj /CN=other-ca
sign() {
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1"
  printf '%s\n' "$2" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
    -days 1 -extfile "$1.ext" 2>/dev/null
}
sign server subjectAltName=IP:127.0.0.1
sign client extendedKeyUsage=clientAuth
)sh";
  return std::system(("bash '" + script + "'").c_str()) == 0;
}

class EtcdTlsTest : public EtcdTest {
 protected:
  EtcdClusterOptions ClusterOptions() const override {
    EtcdClusterOptions options;
    options.server_cert_file = cert_dir_ + "/server.pem";
    options.server_key_file = cert_dir_ + "/server.key";
    options.trusted_ca_file = cert_dir_ + "/ca.pem";
    options.client_ca_file = cert_dir_ + "/ca.pem";
    options.client_cert_file = cert_dir_ + "/client.pem";
    options.client_key_file = cert_dir_ + "/client.key";
    return options;
  }

  void SetUp() override {
    if (std::system("command -v openssl >/dev/null") != 0) GTEST_SKIP() << "no openssl";
    std::string pattern = (std::filesystem::temp_directory_path() / "etcd-tls.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    cert_dir_ = pattern;
    ASSERT_TRUE(MakeCertificates(cert_dir_));
    EtcdTest::SetUp();
  }

  void TearDown() override {
    EtcdTest::TearDown();
    std::error_code ignored;
    if (!cert_dir_.empty()) std::filesystem::remove_all(cert_dir_, ignored);
  }

  etcd::ClientOptions Options() {
    etcd::ClientOptions options;
    options.endpoints = cluster().endpoints();
    options.ca_file = cert_dir_ + "/ca.pem";
    options.cert_file = cert_dir_ + "/client.pem";
    options.key_file = cert_dir_ + "/client.key";
    options.call_timeout = absl::Seconds(3);
    return options;
  }

  std::string cert_dir_;
};

TEST_F(EtcdTlsTest, WorksWithTheClientCertificate) {
  std::unique_ptr<etcd::Client> client = MustConnect(Options());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<int64_t> put = client->Put("/k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  WatchRecorder recorder;
  absl::StatusOr<std::unique_ptr<etcd::Watch>> watch =
      client->WatchPrefix("/k", *put, recorder.Callbacks());
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_TRUE(recorder.WaitForEvents(1, absl::Seconds(5)));

  // A name that is not in the certificate is taken when another endpoint's is: every member
  // is checked against the list, not against one name for the channel.
  etcd::ClientOptions options = Options();
  const std::string port = cluster().endpoint(0).substr(cluster().endpoint(0).rfind(':') + 1);
  options.endpoints = {absl::StrCat("https://localhost:", port),
                       absl::StrCat("https://127.0.0.1:", port)};
  client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<etcd::RangeResult> got = client->Get("/k");
  ASSERT_TRUE(got.ok()) << got.status();
}

TEST_F(EtcdTlsTest, RefusesWhatItShould) {
  const std::string port = cluster().endpoint(0).substr(cluster().endpoint(0).rfind(':') + 1);
  struct Case {
    const char* what;
    etcd::ClientOptions options;
  };
  std::vector<Case> cases;
  etcd::ClientOptions options = Options();
  options.ca_file = cert_dir_ + "/other-ca.pem";
  cases.push_back({"a CA that did not sign etcd's certificate", options});
  options = Options();
  options.cert_file.clear();
  options.key_file.clear();
  cases.push_back({"no client certificate", options});
  options = Options();
  options.endpoints = {absl::StrCat("https://localhost:", port)};
  cases.push_back({"a certificate that names no endpoint (127.0.0.1, not localhost)", options});
  options = Options();
  options.endpoints = {absl::StrCat("http://127.0.0.1:", port)};
  options.ca_file.clear();
  options.cert_file.clear();
  options.key_file.clear();
  cases.push_back({"plaintext to a TLS port", options});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::unique_ptr<etcd::Client> client = MustConnect(c.options);
    ASSERT_NE(client, nullptr);
    absl::Status put = client->Put("/k", "v").status();
    EXPECT_EQ(put.code(), absl::StatusCode::kUnavailable) << put;
  }
}

}  // namespace
}  // namespace tunnelagent::testing
