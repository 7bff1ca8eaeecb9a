#include "agent/state_store.h"

#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "agent/tunnel_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

namespace fs = std::filesystem;
using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;
using ::testing::HasSubstr;

IpAddress A(const std::string& text) { return *IpAddress::Parse(text); }
IpPrefix P(const std::string& text) { return *IpPrefix::Parse(text); }

void ExpectSpecEq(const TunnelSpec& want, const TunnelSpec& got) {
  SCOPED_TRACE(want.name);
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.mode, want.mode);
  EXPECT_EQ(got.local, want.local);
  EXPECT_EQ(got.remote, want.remote);
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.mtu, want.mtu);
  EXPECT_EQ(got.addresses, want.addresses);
  EXPECT_EQ(got.routes, want.routes);
  // And every other desired field, options included.
  EXPECT_THAT(ChangedFields(want, got), ::testing::IsEmpty());
}

void ExpectSpecsEq(const std::vector<TunnelSpec>& want, const std::vector<TunnelSpec>& got) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ExpectSpecEq(want[i], got[i]);
}

std::vector<TunnelSpec> SomeTunnels() {
  TunnelSpec full;
  full.name = "gre1";
  full.mode = TunnelMode::kGre;
  full.local = A("198.51.100.1");
  full.remote = A("203.0.113.7");
  full.key = 42;
  full.mtu = 1400;
  full.addresses = {P("10.0.0.1/30"), P("fd00::1/64")};
  full.routes = {P("10.2.0.0/16"), P("fd01::/48")};

  // Zero values that must survive: proto3 JSON leaves defaults out, but the key is optional.
  TunnelSpec key_zero;
  key_zero.name = "gre2";
  key_zero.mode = TunnelMode::kGre;
  key_zero.remote = A("203.0.113.8");
  key_zero.key = 0;

  TunnelSpec ipip;
  ipip.name = "ipip1";
  ipip.mode = TunnelMode::kIpip;
  ipip.local = A("0.0.0.0");
  ipip.remote = A("203.0.113.9");
  ipip.mtu = 1480;
  ipip.addresses = {P("10.1.0.1/31")};
  ipip.routes = {P("0.0.0.0/0")};

  // Every option, at values whose presence or zero must survive the file.
  TunnelSpec options;
  options.name = "gre3";
  options.mode = TunnelMode::kGretap;
  options.remote = A("203.0.113.10");
  options.input_key = 0;
  options.output_key = 7;
  options.checksum = true;
  options.input_checksum = true;
  options.output_checksum = true;
  options.sequence = true;
  options.input_sequence = true;
  options.output_sequence = true;
  options.ttl = 0;
  options.tos = 0xb8;
  options.inherit_tos = true;
  options.pmtudisc = false;
  options.ignore_df = true;

  TunnelSpec keepalive;
  keepalive.name = "ip6tnl1";
  keepalive.mode = TunnelMode::kIp6tnl;
  keepalive.remote = A("2001:db8::2");
  keepalive.ttl = 255;
  keepalive.keepalive = {absl::Milliseconds(2500), 9};

  return {full, key_zero, ipip, options, keepalive};
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  return names;
}

class FileStateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/state_store_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Asserts Load fails with `code`, names the file, and did not change it.
  void ExpectLoadRefuses(const std::string& content, absl::StatusCode code) {
    FileStateStore store(root_);
    WriteFile(store.path(), content);
    absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), code) << loaded.status();
    EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(store.path()));
    EXPECT_EQ(ReadFile(store.path()), content);
    EXPECT_THAT(ListDir(root_), ::testing::ElementsAre("tunnels.json"));
  }

  std::string root_;
};

TEST_F(FileStateStoreTest, PathIsTunnelsJsonInDir) {
  EXPECT_EQ(FileStateStore(root_).path(), root_ + "/tunnels.json");
  EXPECT_EQ(FileStateStore(root_ + "//").path(), root_ + "/tunnels.json");
}

TEST_F(FileStateStoreTest, RoundTrip) {
  const std::vector<TunnelSpec> tunnels = SomeTunnels();
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Save(tunnels).ok());
  }
  // A fresh store, as after a restart.
  FileStateStore store(root_);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSpecsEq(tunnels, *loaded);
}

TEST_F(FileStateStoreTest, FileIsCamelCaseJsonWithVersion) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  const std::string content = ReadFile(store.path());
  EXPECT_THAT(content, HasSubstr("\"formatVersion\": 1"));
  EXPECT_THAT(content, HasSubstr("\"tunnels\""));
  EXPECT_THAT(content, HasSubstr("\"TUNNEL_MODE_GRE\""));
  EXPECT_THAT(content, HasSubstr("\n"));  // readable and diffable
  EXPECT_EQ(content.back(), '\n');
}

// As the agent wrote it before the GRE options, outer header fields and keepalive existed:
// it loads, and every new field takes its default.
TEST_F(FileStateStoreTest, FileOfThePreviousVersionLoadsWithDefaults) {
  FileStateStore store(root_);
  WriteFile(store.path(), R"json({
 "formatVersion": 1,
 "tunnels": [
  {
   "name": "gre1",
   "mode": "TUNNEL_MODE_GRE",
   "local": "198.51.100.1",
   "remote": "203.0.113.7",
   "key": 0,
   "mtu": 1400,
   "addresses": [
    "10.0.0.1/30"
   ],
   "routes": [
    "10.2.0.0/16"
   ],
   "labels": {
    "owner": "fleet"
   },
   "etag": "6c1e0e8a2d4b8f11",
   "status": {
    "createTime": "2024-01-02T03:04:05Z",
    "updateTime": "2024-01-02T03:04:06Z"
   }
  },
  {
   "name": "ipip1",
   "mode": "TUNNEL_MODE_IPIP",
   "remote": "203.0.113.9",
   "etag": "0000000000000000"
  }
 ]
}
)json");
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  const TunnelSpec& gre = (*loaded)[0];
  EXPECT_EQ(gre.name, "gre1");
  EXPECT_EQ(gre.key, 0u);
  EXPECT_EQ(gre.mtu, 1400u);
  EXPECT_EQ(gre.labels.at("owner"), "fleet");
  EXPECT_EQ(gre.create_time, absl::FromUnixSeconds(1704164645));
  for (const TunnelSpec& spec : *loaded) {
    SCOPED_TRACE(spec.name);
    EXPECT_FALSE(spec.input_key.has_value());
    EXPECT_FALSE(spec.output_key.has_value());
    EXPECT_FALSE(spec.checksum || spec.input_checksum || spec.output_checksum);
    EXPECT_FALSE(spec.sequence || spec.input_sequence || spec.output_sequence);
    EXPECT_FALSE(spec.ttl.has_value());
    EXPECT_EQ(spec.tos, 0);
    EXPECT_FALSE(spec.inherit_tos);
    EXPECT_TRUE(spec.pmtudisc);
    EXPECT_FALSE(spec.ignore_df);
    EXPECT_FALSE(spec.keepalive.enabled());
    EXPECT_EQ(spec.keepalive.retries, 0u);
  }
  // Saved again, the file gains nothing for options left at their defaults.
  ASSERT_TRUE(store.Save(*loaded).ok());
  const std::string content = ReadFile(store.path());
  for (const char* field : {"inputKey", "outputKey", "checksum", "sequence", "ttl", "tos",
                            "pmtudisc", "ignoreDf", "keepalive"}) {
    EXPECT_THAT(content, ::testing::Not(HasSubstr(field))) << field;
  }
}

TEST_F(FileStateStoreTest, OptionsAreWrittenByTheirJsonNames) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  const std::string content = ReadFile(store.path());
  EXPECT_THAT(content, HasSubstr("\"inputKey\": 0"));
  EXPECT_THAT(content, HasSubstr("\"ttl\": 0"));
  EXPECT_THAT(content, HasSubstr("\"pmtudisc\": false"));
  EXPECT_THAT(content, HasSubstr("\"interval\": \"2.500s\""));
}

TEST_F(FileStateStoreTest, MissingFileIsEmpty) {
  FileStateStore store(root_);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->empty());
}

TEST_F(FileStateStoreTest, MissingDirectoryIsEmpty) {
  FileStateStore store(root_ + "/not/there");
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->empty());
}

TEST_F(FileStateStoreTest, SaveCreatesDirectories) {
  const std::string dir = root_ + "/var/lib/tunnel-agent";
  FileStateStore store(dir);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0077, 0u) << "the state holds GRE keys: owner only";
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSpecsEq(SomeTunnels(), *loaded);
}

TEST_F(FileStateStoreTest, SaveReplacesEverythingAndLeavesNoTemporaryFile) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  EXPECT_THAT(ListDir(root_), ::testing::ElementsAre("tunnels.json"));

  const std::vector<TunnelSpec> fewer = {SomeTunnels()[2]};
  ASSERT_TRUE(store.Save(fewer).ok());
  EXPECT_THAT(ListDir(root_), ::testing::ElementsAre("tunnels.json"));
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSpecsEq(fewer, *loaded);
  EXPECT_THAT(ReadFile(store.path()), ::testing::Not(HasSubstr("gre1")));

  ASSERT_TRUE(store.Save({}).ok());
  loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->empty());
  EXPECT_THAT(ListDir(root_), ::testing::ElementsAre("tunnels.json"));
}

TEST_F(FileStateStoreTest, SaveReplacesAFileItCouldNotWriteInPlace) {
  // rename() swaps the directory entry, so even a read-only old file is replaced whole.
  FileStateStore store(root_);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  ASSERT_EQ(chmod(store.path().c_str(), 0400), 0);
  ASSERT_TRUE(store.Save({}).ok());
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->empty());
}

TEST_F(FileStateStoreTest, CorruptJsonIsRefusedAndKept) {
  ExpectLoadRefuses("{\"formatVersion\": 1, \"tunnels\": [", absl::StatusCode::kFailedPrecondition);
  // One line: it goes into logs and gRPC statuses.
  const absl::Status s = FileStateStore(root_).Load().status();
  EXPECT_THAT(std::string(s.message()), ::testing::Not(HasSubstr("\n")));
}

TEST_F(FileStateStoreTest, EmptyFileIsRefused) {
  ExpectLoadRefuses("", absl::StatusCode::kFailedPrecondition);
}

TEST_F(FileStateStoreTest, WrongShapeIsRefused) {
  ExpectLoadRefuses("{\"formatVersion\": 1, \"tunnels\": {\"name\": \"gre1\"}}",
                    absl::StatusCode::kFailedPrecondition);
}

TEST_F(FileStateStoreTest, UnknownFormatVersionIsRefused) {
  ExpectLoadRefuses("{\"formatVersion\": 2, \"tunnels\": []}",
                    absl::StatusCode::kFailedPrecondition);
}

TEST_F(FileStateStoreTest, MissingFormatVersionIsRefused) {
  ExpectLoadRefuses("{\"tunnels\": []}", absl::StatusCode::kFailedPrecondition);
}

TEST_F(FileStateStoreTest, TunnelThatDoesNotParseIsRefused) {
  const std::string content = R"({
  "formatVersion": 1,
  "tunnels": [
    {"name": "gre1", "mode": "TUNNEL_MODE_GRE", "remote": "203.0.113.7"},
    {"name": "gre2", "mode": "TUNNEL_MODE_GRE", "remote": "1.2.3"}
  ]
})";
  ExpectLoadRefuses(content, absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = FileStateStore(root_).Load();
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tunnels[1]"));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tunnel.remote"));
}

TEST_F(FileStateStoreTest, UnknownFieldsAreIgnored) {
  // As a newer agent might write it; also accepts the proto field names.
  WriteFile(root_ + "/tunnels.json", R"({
  "format_version": 1,
  "writtenBy": "tunnel-agent 9.9",
  "tunnels": [
    {"name": "gre1", "mode": "TUNNEL_MODE_GRE", "remote": "203.0.113.7",
     "key": 0, "futureOption": {"x": [1, 2]}}
  ]
})");
  absl::StatusOr<std::vector<TunnelSpec>> loaded = FileStateStore(root_).Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].name, "gre1");
  EXPECT_EQ((*loaded)[0].key, 0u);
}

TEST_F(FileStateStoreTest, UnreadableFileIsAnErrorNamingIt) {
  // A directory where the file should be: open succeeds, read fails.
  FileStateStore store(root_);
  ASSERT_EQ(mkdir(store.path().c_str(), 0700), 0);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(store.path()));
}

TEST_F(FileStateStoreTest, SaveIntoUnwritableDirectoryFails) {
  if (geteuid() == 0) GTEST_SKIP() << "root writes anywhere";
  FileStateStore store(root_);
  ASSERT_EQ(chmod(root_.c_str(), 0500), 0);
  const absl::Status s = store.Save(SomeTunnels());
  ASSERT_EQ(chmod(root_.c_str(), 0700), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(root_));
}

TEST_F(FileStateStoreTest, SaveWhereTheDirectoryIsAFileFails) {
  const std::string file = root_ + "/file";
  WriteFile(file, "x");
  const absl::Status s = FileStateStore(file + "/sub").Save(SomeTunnels());
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(file));
  EXPECT_EQ(ReadFile(file), "x");
}

// A full disk is RESOURCE_EXHAUSTED saying so. The full disk is a 16 KiB tmpfs mounted in a
// child's own mount namespace (root only), so nothing outside the child sees it.
TEST_F(FileStateStoreTest, SaveOnAFullDiskIsResourceExhausted) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  const std::string dir = root_ + "/full";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (unshare(CLONE_NEWNS) != 0 ||
        mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=16k") != 0) {
      _exit(77);
    }
    std::vector<TunnelSpec> many;
    for (int i = 0; i < 200; ++i) {
      TunnelSpec spec = SomeTunnels()[0];
      spec.name = absl::StrCat("t", i);
      many.push_back(spec);
    }
    const absl::Status s = FileStateStore(dir).Save(many);
    const bool said_so =
        absl::StrContains(s.message(), "the file system holding --state_dir is full");
    _exit(s.code() == absl::StatusCode::kResourceExhausted && said_so ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot mount a tmpfs here";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "Save on a full tmpfs was not RESOURCE_EXHAUSTED saying so";
}

}  // namespace
}  // namespace tunnelagent::agent
