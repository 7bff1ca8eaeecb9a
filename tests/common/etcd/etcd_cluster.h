// A real etcd for tests: 1 or 3 members on 127.0.0.1, free ports, a temporary data directory,
// each member's output in a log file there; a member can be killed (SIGKILL) and started
// again on its data; everything is killed and removed when the object goes, and the members
// die with the test process (PR_SET_PDEATHSIG) if it crashes. tests/common/etcd/etcd_cluster.sh
// does the same for bash tests.
//
//   class MyTest : public tunnelagent::testing::EtcdTest {};  // SetUp starts 1 member
//   TEST_F(MyTest, Works) {
//     auto client = tunnelagent::etcd::Client::Connect({.endpoints = cluster().endpoints()});
//     ...
//   }
//
// Link the CMake target `etcd_cluster` (tests/CMakeLists.txt). EtcdTest skips (GTEST_SKIP)
// when the etcd binary is missing; tests/common/etcd/etcd_test_main.cc as the binary's main
// turns a run where every test skipped into exit code 77, which CTest reports as skipped.
#ifndef TUNNELAGENT_TESTS_COMMON_ETCD_ETCD_CLUSTER_H_
#define TUNNELAGENT_TESTS_COMMON_ETCD_ETCD_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tunnelagent::testing {

struct EtcdClusterOptions {
  int members = 1;  // 1 or 3
  // Client TLS: the members serve https:// with this certificate and key (which must name
  // 127.0.0.1), and take only client certificates signed by trusted_ca_file when that is set
  // (--client-cert-auth). etcdctl (Etcdctl) then uses client_ca/cert/key_file.
  std::string server_cert_file;
  std::string server_key_file;
  std::string trusted_ca_file;
  std::string client_ca_file;
  std::string client_cert_file;
  std::string client_key_file;
  // More etcd flags for every member, after the fixture's own (a later flag wins), e.g.
  // "--auth-token-ttl=1".
  std::vector<std::string> extra_args;
  // How long a member may take to report itself healthy.
  absl::Duration start_timeout = absl::Seconds(10);
};

class EtcdCluster {
 public:
  // Whether an etcd binary is on PATH (and etcdctl, for Etcdctl).
  static bool Available();

  // Starts every member and waits until each reports itself healthy (its /health on a
  // plain-HTTP metrics port), within options.start_timeout; the error carries the end of
  // the log of a member that did not come up.
  static absl::StatusOr<std::unique_ptr<EtcdCluster>> Start(const EtcdClusterOptions& options);

  // Kills every member and removes the data directory.
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  int size() const { return static_cast<int>(members_.size()); }
  // "http://127.0.0.1:PORT" (https:// with TLS) of every member, or of member `i`.
  std::vector<std::string> endpoints() const;
  std::string endpoint(int i) const;
  // The endpoints joined by commas, as etcdctl's --endpoints takes them.
  std::string endpoints_flag() const;
  const std::string& dir() const { return dir_; }

  // SIGKILL to member i (no clean shutdown), waiting for it to be gone.
  absl::Status KillMember(int i);
  // Starts member i again on its data, with the same ports, and waits until it is healthy.
  absl::Status StartMember(int i);
  // Kills every member (their data stays until the object goes).
  void StopAll();
  // Starts every stopped member again and waits until all are healthy.
  absl::Status StartAll();
  // Waits until every running member says it is healthy: it has a raft leader and a read
  // through raft works. After a member dies that can take an election timeout (0.5 s here),
  // during which etcd holds writes sent to the dead leader until their deadline.
  absl::Status WaitHealthy();
  bool running(int i) const;

  // Runs etcdctl (API v3) against every member with the TLS files of the options and `args`
  // (e.g. {"user", "add", "root:pw"}; add "--user=root:pw" once auth is on), bounded to 15 s;
  // its standard output, or an error with its output and status.
  absl::StatusOr<std::string> Etcdctl(const std::vector<std::string>& args) const;

  // The last `bytes` bytes of member i's log.
  std::string LogTail(int i, size_t bytes = 4000) const;

 private:
  struct Member {
    std::string name;
    std::string data_dir;
    std::string log_file;
    int client_port = 0;
    int peer_port = 0;
    int metrics_port = 0;
    pid_t pid = -1;
  };

  EtcdCluster() = default;
  std::vector<std::string> Args(const Member& member) const;
  absl::Status Spawn(Member& member);
  absl::Status WaitMemberHealthy(int i);

  EtcdClusterOptions options_;
  std::string dir_;
  std::string initial_cluster_;
  std::vector<Member> members_;
};

// A GoogleTest fixture with a cluster started in SetUp (skipped when etcd is missing) and
// stopped in TearDown, whatever happened (after printing the end of each member's log when
// the test failed). Override ClusterOptions for 3 members, TLS, flags.
class EtcdTest : public ::testing::Test {
 protected:
  virtual EtcdClusterOptions ClusterOptions() const { return {}; }
  void SetUp() override;
  void TearDown() override;
  EtcdCluster& cluster() { return *cluster_; }

 private:
  std::unique_ptr<EtcdCluster> cluster_;
};

}  // namespace tunnelagent::testing

#endif  // TUNNELAGENT_TESTS_COMMON_ETCD_ETCD_CLUSTER_H_
