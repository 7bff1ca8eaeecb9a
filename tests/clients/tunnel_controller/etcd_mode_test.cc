// tunnel-controller's etcd mode against a real etcd (tests/common/etcd/etcd_cluster.h): fleet
// set and get, a malformed description refused with the stored one kept, status naming the
// leader and the registrations, and the election: one leader of two, a standby leading within
// the TTL + 1 s of the leader's death (its lease revoked, or its process killed), a leader that
// stops leading when etcd is gone and leads again when it is back.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/tunnel_controller/controller.h"
#include "clients/tunnel_controller/etcd_run.h"
#include "clients/tunnel_controller/fleet_store.h"
#include "clients/tunnel_controller/leader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/etcd/client_test_util.h"
#include "tests/common/etcd/etcd_cluster.h"

namespace tunnelagent::controller {
namespace {

using ::testing::HasSubstr;
using ::tunnelagent::testing::Eventually;
using ::tunnelagent::testing::MustConnect;

constexpr char kFleet[] = "ctltest";
const absl::Duration kTtl = absl::Seconds(3);

constexpr char kDescription[] = R"(defaults:
  mode: gre
  innerPool: 100.64.0.0/16
  multipoint: true
nodes:
  - {name: pinned1, agent: "unix:/nonexistent/pinned1.sock", underlay: 198.18.5.1}
topology:
  type: mesh
)";

// A free TCP port on 127.0.0.1 (bound and closed: a small race, fine for a test).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// One sample of /metrics on 127.0.0.1:port ("" when absent or unreachable); bounded by a 2 s
// receive timeout.
std::string Sample(int port, const std::string& series) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string text;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) text.append(buf, n);
    }
  }
  close(fd);
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (absl::StartsWith(line, series + " ")) return line.substr(series.size() + 1);
  }
  return "";
}

struct Result {
  int rc = -1;
  std::string out;
  std::string err;
};

class EtcdModeTest : public ::tunnelagent::testing::EtcdTest {
 protected:
  void SetUp() override {
    EtcdTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    dir_ = cluster().dir() + "/controller-test";
    std::filesystem::create_directories(dir_);
    client_ = MustConnect(cluster());
    ASSERT_NE(client_, nullptr);
  }

  void TearDown() override {
    if (child_ > 0) {
      kill(child_, SIGKILL);
      waitpid(child_, nullptr, 0);
    }
    client_.reset();
    EtcdTest::TearDown();
  }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path) << text;
    return path;
  }

  std::vector<std::string> EtcdFlags() const {
    return {absl::StrCat("--etcd=", cluster_endpoints()), absl::StrCat("--fleet=", kFleet),
            "--timeout=3", "--retries=0", "--progress=plain"};
  }
  std::string cluster_endpoints() const {
    return const_cast<EtcdModeTest*>(this)->cluster().endpoints_flag();
  }

  Result Controller(std::vector<std::string> args) {
    for (const std::string& f : EtcdFlags()) args.push_back(f);
    std::ostringstream out;
    std::ostringstream err;
    Result r;
    r.rc = Main(args, out, err, -1, nullptr, nullptr);
    r.out = out.str();
    r.err = err.str();
    return r;
  }

  void Register(const std::string& node, const std::string& underlay) {
    const std::string json =
        absl::StrCat(R"({"node": ")", node, R"(", "underlay": [")", underlay,
                     R"("], "agentEndpoint": "unix:/nonexistent/)", node,
                     R"(.sock", "version": "0.1.0", "registeredAt": "2024-05-01T12:00:00Z"})");
    ASSERT_TRUE(client_->Put(NodeKey(kFleet, node), json).ok());
  }

  std::string LeaderValue() {
    absl::StatusOr<etcd::KeyValue> leader = client_->Leader(ElectionName(kFleet));
    return leader.ok() ? leader->value : "";
  }

  std::unique_ptr<LeaderElection> Candidate(etcd::Client& client, const std::string& value) {
    ElectionOptions o;
    o.election = ElectionName(kFleet);
    o.value = value;
    o.ttl = kTtl;
    o.campaign_wait = absl::Milliseconds(500);
    o.on_error = [value](absl::string_view call, const absl::Status& s) {
      std::cerr << value << ": " << call << ": " << s << "\n";
    };
    return std::make_unique<LeaderElection>(client, std::move(o));
  }

  std::string dir_;
  std::unique_ptr<etcd::Client> client_;
  pid_t child_ = -1;
};

TEST_F(EtcdModeTest, FleetSetThenGetRoundTrip) {
  const std::string file = Write("fleet.yaml", kDescription);
  Result set = Controller({"fleet", "set", "-f", file});
  ASSERT_EQ(set.rc, 0) << set.err;
  EXPECT_THAT(set.out, HasSubstr(absl::StrCat("fleet ", kFleet, ": description stored at ",
                                              DescriptionKey(kFleet))));
  EXPECT_THAT(set.out, HasSubstr("1 nodes (1 pinned, 0 registered), mesh, multipoint tnl0"));
  Result get = Controller({"fleet", "get"});
  ASSERT_EQ(get.rc, 0) << get.err;
  EXPECT_EQ(get.out, kDescription) << "the text as stored, comments and all";
  absl::StatusOr<etcd::RangeResult> stored = client_->Get(DescriptionKey(kFleet));
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->kvs.size(), 1u);
  EXPECT_EQ(stored->kvs[0].value, kDescription);
}

TEST_F(EtcdModeTest, GetWithoutADescriptionIsTwo) {
  Result get = Controller({"fleet", "get"});
  EXPECT_EQ(get.rc, 2);
  EXPECT_EQ(get.out, "");
  EXPECT_THAT(get.err, HasSubstr(absl::StrCat("fleet ", kFleet, ": no description stored at ",
                                              DescriptionKey(kFleet))));
}

TEST_F(EtcdModeTest, MalformedDescriptionIsRefusedAndTheStoredOneKept) {
  ASSERT_EQ(Controller({"fleet", "set", "-f", Write("good.yaml", kDescription)}).rc, 0);
  const std::string bad =
      Write("bad.yaml", "defaults: {innerPool: 100.64.0.0/16}\ntopology: {type: mush}\n");
  Result set = Controller({"fleet", "set", "-f", bad});
  EXPECT_EQ(set.rc, 1);
  EXPECT_THAT(set.err, HasSubstr(absl::StrCat(
                           bad, ":2:18: topology.type: \"mush\" is not mesh, hub-spoke or links")));
  // Valid YAML, but not with the nodes registered now: a pool of 2 addresses for 3 nodes.
  Register("n1", "198.18.0.1");
  Register("n2", "198.18.0.2");
  Result small = Controller({"fleet", "set", "-f",
                             Write("small.yaml",
                                   "defaults: {innerPool: 100.64.0.0/31, multipoint: true}\n"
                                   "nodes: [{name: p, agent: \"unix:/p\", underlay: 198.18.9.9}]\n"
                                   "topology: {type: mesh}\n")});
  EXPECT_EQ(small.rc, 1) << small.out;
  EXPECT_THAT(small.err, HasSubstr("(with the 2 nodes registered now)"));
  Result missing = Controller({"fleet", "set", "-f", absl::StrCat(dir_, "/absent.yaml")});
  EXPECT_EQ(missing.rc, 1);
  EXPECT_THAT(missing.err, HasSubstr("absent.yaml"));
  Result get = Controller({"fleet", "get"});
  ASSERT_EQ(get.rc, 0);
  EXPECT_EQ(get.out, kDescription);
}

TEST_F(EtcdModeTest, EtcdUnreachableIsTwo) {
  // Nothing listens on port 1.
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(Main({"fleet", "get", "--etcd=127.0.0.1:1", "--fleet=f", "--timeout=2"}, out, err, -1,
                 nullptr, nullptr),
            2);
  EXPECT_THAT(err.str(), HasSubstr("fleet get: etcd (127.0.0.1:1): UNAVAILABLE"));
  EXPECT_EQ(Main({"fleet", "set", "-f", Write("good.yaml", kDescription), "--etcd=127.0.0.1:1",
                  "--fleet=f", "--timeout=2"},
                 out, err, -1, nullptr, nullptr),
            2);
}

TEST_F(EtcdModeTest, StatusNamesTheLeaderAndTheMembers) {
  ASSERT_EQ(Controller({"fleet", "set", "-f", Write("fleet.yaml", kDescription)}).rc, 0);
  Register("n1", "198.18.0.1");
  Register("n2", "198.18.0.2");
  Register("v6", "2001:2::3");  // no IPv4 underlay for gre: not a member
  Result status = Controller({"status"});
  EXPECT_EQ(status.rc, 2) << "the agents cannot be reached";
  EXPECT_THAT(status.out, HasSubstr(absl::StrCat("fleet ", kFleet, ": no leader")));
  EXPECT_THAT(status.out, ::testing::ContainsRegex("pinned1 +pinned +- +198.18.5.1"));
  EXPECT_THAT(status.out, ::testing::ContainsRegex("n1 +registered +[0-9hms]+ +198.18.0.1 +unix:"));
  EXPECT_THAT(status.out, HasSubstr("not a member: v6: underlay: no IPv4 address for gre"));
  EXPECT_THAT(status.out, HasSubstr("status: 0/3 nodes converged"));

  std::unique_ptr<etcd::Client> other = MustConnect(cluster());
  std::unique_ptr<LeaderElection> leader = Candidate(*other, "ctl-a/42");
  absl::Notification stop;
  ASSERT_TRUE(leader->Campaign(stop));
  status = Controller({"status"});
  EXPECT_THAT(status.out, HasSubstr(absl::StrCat("fleet ", kFleet, ": led by ctl-a/42")));
}

// run --etcd in process, its agents unreachable (what it decides shows in its metrics): members
// from the registrations and the pinned nodes, a leaving node kept for the grace, a malformed
// description kept out.
TEST_F(EtcdModeTest, TheLeaderFollowsRegistrationsGraceAndDescription) {
  constexpr char kNoPinned[] =
      "defaults: {innerPool: 100.64.0.0/16, multipoint: true}\ntopology: {type: mesh}\n";
  ASSERT_TRUE(client_->Put(DescriptionKey(kFleet), kNoPinned).ok());
  Register("n1", "198.18.0.1");
  Register("n2", "198.18.0.2");
  const int port = FreePort();
  absl::StatusOr<Options> options =
      ParseArgs({"run", absl::StrCat("--etcd=", cluster_endpoints()),
                 absl::StrCat("--fleet=", kFleet), "--grace=2s", "--lease_ttl=2s", "--interval=1m",
                 "--timeout=1", "--retries=0", absl::StrCat("--metrics_listen=127.0.0.1:", port)});
  ASSERT_TRUE(options.ok()) << options.status();
  std::ostringstream out;
  std::ostringstream err;
  absl::Notification stop;
  int rc = -1;
  std::thread leader([&] { rc = RunWithEtcd(*options, out, err, &stop); });
  auto is = [&](const std::string& series, const std::string& value) {
    return [&, series, value] { return Sample(port, series) == value; };
  };
  // Multipoint: the peers each called member is given are the members it sees.
  EXPECT_TRUE(Eventually(is("tunnelcontroller_leader", "1"), absl::Seconds(10)));
  EXPECT_TRUE(Eventually(is("tunnelcontroller_nodes_registered", "2"), absl::Seconds(5)));
  EXPECT_TRUE(Eventually(is("tunnelcontroller_peers_desired", "2"), absl::Seconds(5)));
  EXPECT_EQ(Sample(port, "tunnelcontroller_nodes"), "2");

  // A pinned node: a member without registering.
  ASSERT_TRUE(client_->Put(DescriptionKey(kFleet), kDescription).ok());
  EXPECT_TRUE(Eventually(is("tunnelcontroller_peers_desired", "6"), absl::Seconds(5)));
  EXPECT_EQ(Sample(port, "tunnelcontroller_nodes_registered"), "2");

  // A description that is not valid (written past fleet set) changes nothing.
  ASSERT_TRUE(client_->Put(DescriptionKey(kFleet), "defaults: {innerPool: nope}\n").ok());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Sample(port, "tunnelcontroller_peers_desired"), "6");
  EXPECT_EQ(Sample(port, "tunnelcontroller_nodes"), "3");

  // n2 leaves: not called from now on, still the others' peer for the grace, then gone.
  const absl::Time left = absl::Now();
  ASSERT_TRUE(client_->Delete(NodeKey(kFleet, "n2")).ok());
  EXPECT_TRUE(Eventually(is("tunnelcontroller_nodes", "2"), absl::Seconds(2)));
  EXPECT_EQ(Sample(port, "tunnelcontroller_peers_desired"), "4") << "n2 still p1's and n1's peer";
  EXPECT_EQ(Sample(port, "tunnelcontroller_nodes_registered"), "1");
  EXPECT_TRUE(Eventually(is("tunnelcontroller_peers_desired", "2"), absl::Seconds(4)));
  const absl::Duration gone = absl::Now() - left;
  EXPECT_GE(gone, absl::Seconds(2)) << "removed before the grace was over";
  EXPECT_LE(gone, absl::Seconds(3));
  std::cout << "a leaving node removed " << absl::FormatDuration(gone) << " after (grace 2s)\n";

  stop.Notify();
  leader.join();
  EXPECT_EQ(rc, 2) << "stopped after a pass that could not reach the agents";
  EXPECT_THAT(err.str(), HasSubstr("the stored description is not valid (the previous one is "
                                   "kept): /tunnel-agent/ctltest/description:1:23"));
  EXPECT_THAT(err.str(), HasSubstr("n2 unregistered: a member for another 2s"));
  EXPECT_THAT(err.str(), HasSubstr("grace over, removed from the fleet: n2"));
  EXPECT_EQ(LeaderValue(), "") << "it resigned when stopped";
}

TEST_F(EtcdModeTest, OneLeaderOfTwoAndTheStandbyTakesOverWhenTheLeaseIsRevoked) {
  std::unique_ptr<etcd::Client> ca = MustConnect(cluster());
  std::unique_ptr<etcd::Client> cb = MustConnect(cluster());
  std::unique_ptr<LeaderElection> a = Candidate(*ca, "a/1");
  std::unique_ptr<LeaderElection> b = Candidate(*cb, "b/2");
  absl::Notification stop;
  ASSERT_TRUE(a->Campaign(stop));
  EXPECT_TRUE(a->Leading());
  absl::Notification b_leads;
  std::thread standby([&] {
    if (b->Campaign(stop)) b_leads.Notify();
  });
  // b waits while a leads, across several of a's renewals.
  EXPECT_FALSE(b_leads.WaitForNotificationWithTimeout(kTtl + absl::Seconds(1)));
  EXPECT_TRUE(a->Leading());
  EXPECT_EQ(LeaderValue(), "a/1");

  // a's lease revoked behind its back (as etcd does when a leader dies): b leads at once, a
  // knows it no longer leads by its next renewal.
  absl::StatusOr<etcd::KeyValue> key = client_->Leader(ElectionName(kFleet));
  ASSERT_TRUE(key.ok());
  const absl::Time revoked = absl::Now();
  ASSERT_TRUE(client_->RevokeLease(key->lease).ok());
  EXPECT_TRUE(b_leads.WaitForNotificationWithTimeout(kTtl + absl::Seconds(1)));
  const absl::Duration takeover = absl::Now() - revoked;
  EXPECT_LT(takeover, kTtl + absl::Seconds(1));
  std::cout << "standby led " << absl::FormatDuration(takeover) << " after the revocation\n";
  EXPECT_TRUE(Eventually([&] { return !a->Leading(); }, kTtl));
  EXPECT_THAT(a->LostReason(), HasSubstr("lease"));
  EXPECT_EQ(LeaderValue(), "b/2");
  stop.Notify();
  standby.join();

  // a campaigns again: it waits behind b, and leads once b resigns.
  absl::Notification stop_a;
  absl::Notification a_leads;
  std::thread again([&] {
    if (a->Campaign(stop_a)) a_leads.Notify();
  });
  EXPECT_FALSE(a_leads.WaitForNotificationWithTimeout(absl::Seconds(1)));
  b->Resign();
  EXPECT_TRUE(a_leads.WaitForNotificationWithTimeout(absl::Seconds(2)));
  stop_a.Notify();
  again.join();
}

TEST_F(EtcdModeTest, AKilledLeaderProcessIsReplacedWithinTheTtlAndASecond) {
  // The real tunnel-controller, beside this test binary's directory.
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string controller =
      (std::filesystem::path(exe).parent_path().parent_path() / "bin" / "tunnel-controller")
          .string();
  if (access(controller.c_str(), X_OK) != 0) GTEST_SKIP() << controller << " not built";
  const std::string log = absl::StrCat(dir_, "/leader.log");
  child_ = fork();
  ASSERT_GE(child_, 0);
  if (child_ == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    const std::string etcd = absl::StrCat("--etcd=", cluster_endpoints());
    const std::string fleet = absl::StrCat("--fleet=", kFleet);
    const std::string ttl = absl::StrCat("--lease_ttl=", absl::ToInt64Seconds(kTtl), "s");
    execl(controller.c_str(), controller.c_str(), "run", etcd.c_str(), fleet.c_str(), ttl.c_str(),
          "--metrics_listen=", static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::string child_value = absl::StrCat("/", child_);
  ASSERT_TRUE(
      Eventually([&] { return absl::EndsWith(LeaderValue(), child_value); }, absl::Seconds(10)))
      << "the controller did not lead; its log:\n"
      << std::ifstream(log).rdbuf();

  std::unique_ptr<etcd::Client> cb = MustConnect(cluster());
  std::unique_ptr<LeaderElection> standby = Candidate(*cb, "standby/1");
  absl::Notification stop;
  absl::Notification leads;
  std::thread t([&] {
    if (standby->Campaign(stop)) leads.Notify();
  });
  EXPECT_FALSE(leads.WaitForNotificationWithTimeout(absl::Seconds(1)));
  const absl::Time killed = absl::Now();
  ASSERT_EQ(kill(child_, SIGKILL), 0);
  waitpid(child_, nullptr, 0);
  child_ = -1;
  EXPECT_TRUE(leads.WaitForNotificationWithTimeout(kTtl + absl::Seconds(1)));
  const absl::Duration takeover = absl::Now() - killed;
  EXPECT_LE(takeover, kTtl + absl::Seconds(1));
  std::cout << "standby led " << absl::FormatDuration(takeover) << " after kill -9 (TTL "
            << absl::FormatDuration(kTtl) << ")\n";
  EXPECT_EQ(LeaderValue(), "standby/1");
  stop.Notify();
  t.join();
}

TEST_F(EtcdModeTest, ALeaderCutOffFromEtcdStopsLeadingAndLeadsAgainWhenItIsBack) {
  std::unique_ptr<etcd::Client> ca = MustConnect(cluster());
  std::unique_ptr<LeaderElection> a = Candidate(*ca, "a/1");
  absl::Notification stop;
  ASSERT_TRUE(a->Campaign(stop));
  const absl::Time until = a->LeadingUntil();
  cluster().StopAll();
  const absl::Time stopped = absl::Now();
  // It stops leading by the time its lease may have lapsed, not later.
  ASSERT_TRUE(Eventually([&] { return !a->Leading(); }, kTtl + absl::Seconds(1)));
  EXPECT_LE(absl::Now(), until + kTtl / 3 + absl::Milliseconds(200));
  EXPECT_GE(absl::Now() - stopped, absl::ZeroDuration());
  EXPECT_THAT(a->LostReason(), HasSubstr("not renewed within its TTL"));

  ASSERT_TRUE(cluster().StartAll().ok());
  // etcd kept the lease (and extended it): the same replica leads again, with its key.
  const absl::Time back = absl::Now();
  absl::Notification leads;
  std::thread t([&] {
    if (a->Campaign(stop)) leads.Notify();
  });
  EXPECT_TRUE(leads.WaitForNotificationWithTimeout(absl::Seconds(10)));
  std::cout << "led again " << absl::FormatDuration(absl::Now() - back) << " after etcd was back\n";
  EXPECT_EQ(LeaderValue(), "a/1");
  stop.Notify();
  t.join();
}

}  // namespace
}  // namespace tunnelagent::controller
