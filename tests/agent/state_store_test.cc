#include "agent/state_store.h"

#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/tunnel_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"

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

// The store keeps tunnels by name, as the manager does.
std::vector<TunnelSpec> ByName(std::vector<TunnelSpec> specs) {
  std::sort(specs.begin(), specs.end(),
            [](const TunnelSpec& a, const TunnelSpec& b) { return a.name < b.name; });
  return specs;
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

  // Runs `in_child` in a child process in which root_/full is a tmpfs of `size` ("size=16k"),
  // mounted in the child's own mount namespace (root only) so nothing outside it sees the full
  // disk. `*exit_code`: what `in_child` returned (or the code it _exit-ed with); 77 when no
  // tmpfs could be mounted here.
  void RunOnASmallDisk(const char* size, absl::FunctionRef<int(const std::string& dir)> in_child,
                       int* exit_code) {
    const std::string dir = root_ + "/full";
    ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (unshare(CLONE_NEWNS) != 0 ||
          mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          mount("tmpfs", dir.c_str(), "tmpfs", 0, size) != 0) {
        _exit(77);
      }
      _exit(in_child(dir));
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    *exit_code = WEXITSTATUS(status);
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
  ExpectSpecsEq(ByName(tunnels), *loaded);
}

TEST_F(FileStateStoreTest, FileIsCamelCaseJsonWithVersion) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Save(SomeTunnels()).ok());
  const std::string content = ReadFile(store.path());
  EXPECT_THAT(content, HasSubstr("\"formatVersion\": 2"));
  EXPECT_THAT(content, HasSubstr("\"generation\": \""));  // uint64: a string in proto JSON
  EXPECT_THAT(content, HasSubstr("\"tunnels\""));
  EXPECT_THAT(content, HasSubstr("\"TUNNEL_MODE_GRE\""));
  EXPECT_THAT(content, HasSubstr("\n"));  // readable and diffable
  EXPECT_EQ(content.back(), '\n');
}

// As the agent wrote it before format version 2 (the whole state in tunnels.json, format_version
// 1), and before the GRE options, outer header fields and keepalive existed. `gre_key`: gre1's.
std::string Version1File(uint32_t gre_key) {
  return absl::StrCat(R"json({
 "formatVersion": 1,
 "tunnels": [
  {
   "name": "gre1",
   "mode": "TUNNEL_MODE_GRE",
   "local": "198.51.100.1",
   "remote": "203.0.113.7",
   "key": )json",
                      gre_key, R"json(,
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
}

// As the agent wrote it before the GRE options, outer header fields and keepalive existed:
// it loads, and every new field takes its default.
TEST_F(FileStateStoreTest, FileOfThePreviousVersionLoadsWithDefaults) {
  FileStateStore store(root_);
  WriteFile(store.path(), Version1File(/*gre_key=*/0));
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
  ExpectSpecsEq(ByName(SomeTunnels()), *loaded);
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
  ExpectLoadRefuses("{\"formatVersion\": 3, \"tunnels\": []}",
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
  int exit_code = 0;
  ASSERT_NO_FATAL_FAILURE(RunOnASmallDisk(
      "size=16k",
      [](const std::string& dir) {
        std::vector<TunnelSpec> many;
        for (int i = 0; i < 200; ++i) {
          TunnelSpec spec = SomeTunnels()[0];
          spec.name = absl::StrCat("t", i);
          many.push_back(spec);
        }
        const absl::Status s = FileStateStore(dir).Save(many);
        const bool said_so =
            absl::StrContains(s.message(), "the file system holding --state_dir is full");
        return s.code() == absl::StatusCode::kResourceExhausted && said_so ? 0 : 1;
      },
      &exit_code));
  if (exit_code == 77) GTEST_SKIP() << "cannot mount a tmpfs here";
  EXPECT_EQ(exit_code, 0) << "Save on a full tmpfs was not RESOURCE_EXHAUSTED saying so";
}

// ---- The log: one change costs its own size ---------------------------------------------

// A tunnel of its own (name, remote, key, addresses), and a version of it (the MTU).
TunnelSpec Numbered(int n, uint32_t mtu = 1400) {
  TunnelSpec spec;
  spec.name = absl::StrCat("t", n);
  spec.mode = TunnelMode::kGre;
  spec.local = A("198.18.0.1");
  spec.remote = A(absl::StrCat("198.19.", n / 250, ".", n % 250 + 1));
  spec.key = static_cast<uint32_t>(n + 1);
  spec.mtu = mtu;
  spec.addresses = {
      P(absl::StrCat("10.", 64 + n / 16384, ".", (n / 64) % 256, ".", (n % 64) * 4 + 1, "/30"))};
  return spec;
}

StateChange Upsert(std::vector<TunnelSpec> specs) { return {std::move(specs), {}}; }
StateChange Remove(std::vector<std::string> names) { return {{}, std::move(names)}; }

// What the store should load after `changes`, by name.
std::vector<TunnelSpec> Model(const std::vector<StateChange>& changes) {
  std::map<std::string, TunnelSpec> set;
  for (const StateChange& c : changes) {
    for (const TunnelSpec& spec : c.upserted) set.insert_or_assign(spec.name, spec);
    for (const std::string& name : c.removed) set.erase(name);
  }
  std::vector<TunnelSpec> out;
  for (auto& [name, spec] : set) out.push_back(spec);
  return out;
}

std::vector<TunnelSpec> LoadFresh(const std::string& dir) {
  FileStateStore store(dir);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return loaded.ok() ? ByName(*loaded) : std::vector<TunnelSpec>{};
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

// The changes a crash test replays: creates, an update, a delete, and a last change of two
// tunnels at once (one changed, one removed).
std::vector<StateChange> SomeChanges() {
  return {
      Upsert({Numbered(1)}),       Upsert({Numbered(2)}), Upsert({Numbered(3), Numbered(4)}),
      Upsert({Numbered(2, 1300)}), Remove({"t3"}),        StateChange{{Numbered(1, 1280)}, {"t4"}}};
}

TEST_F(FileStateStoreTest, ChangesRoundTripThroughTheLog) {
  const std::vector<StateChange> changes = SomeChanges();
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    for (const StateChange& c : changes) {
      absl::StatusOr<uint64_t> sequence = store.Append(c);
      ASSERT_TRUE(sequence.ok()) << sequence.status();
      ASSERT_TRUE(store.WaitDurable(*sequence).ok());
    }
    EXPECT_EQ(store.stats().commits, changes.size());
    // A new directory gets an (empty) snapshot first, then only the log grows.
    EXPECT_EQ(store.stats().compactions, 1u);
  }
  EXPECT_THAT(ListDir(root_), ::testing::UnorderedElementsAre("tunnels.json", "tunnels.log"));
  ExpectSpecsEq(Model(changes), LoadFresh(root_));
  // Appends to a log loaded from disk go on where it ended.
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    absl::StatusOr<uint64_t> sequence = store.Append(Upsert({Numbered(9)}));
    ASSERT_TRUE(sequence.ok()) << sequence.status();
    ASSERT_TRUE(store.WaitDurable(*sequence).ok());
  }
  std::vector<StateChange> more = changes;
  more.push_back(Upsert({Numbered(9)}));
  ExpectSpecsEq(Model(more), LoadFresh(root_));
}

TEST_F(FileStateStoreTest, OneChangeWritesOnlyItsOwnSize) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Load().ok());
  std::vector<TunnelSpec> many;
  for (int i = 0; i < 2000; ++i) many.push_back(Numbered(i));
  ASSERT_TRUE(store.Save(many).ok());
  ASSERT_TRUE(store.Append(Upsert({Numbered(5000)})).ok());
  const int64_t snapshot = FileSize(store.path());
  const int64_t before = FileSize(store.log_path());
  ASSERT_TRUE(store.Append(Upsert({Numbered(5001)})).ok());
  const int64_t record = FileSize(store.log_path()) - before;
  EXPECT_GT(record, 0);
  EXPECT_LT(record, 200) << "one tunnel's change should not cost the whole state";
  EXPECT_EQ(FileSize(store.path()), snapshot) << "the snapshot is not rewritten per change";
}

TEST_F(FileStateStoreTest, AVersion1FileIsMigratedOnLoad) {
  FileStateStore store(root_);
  WriteFile(store.path(), Version1File(/*gre_key=*/42));
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  EXPECT_EQ((*loaded)[0].name, "gre1");
  EXPECT_EQ((*loaded)[0].key, 42u);
  EXPECT_EQ((*loaded)[0].labels.at("owner"), "fleet");
  EXPECT_EQ((*loaded)[1].name, "ipip1");
  // Rewritten in the new format at once, holding the same tunnels.
  const std::string content = ReadFile(store.path());
  EXPECT_THAT(content, HasSubstr("\"formatVersion\": 2"));
  EXPECT_EQ(store.stats().compactions, 1u);
  ExpectSpecsEq(*loaded, LoadFresh(root_));
  // A change after the migration lands in the log, and is there at the next start.
  ASSERT_TRUE(store.Append(Remove({"ipip1"})).ok());
  std::vector<TunnelSpec> after = LoadFresh(root_);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].name, "gre1");
  EXPECT_EQ(ReadFile(store.path()), content) << "the change rewrote the snapshot";
}

// Writes `changes` through a store in `dir`; the log's size after each one.
std::vector<int64_t> WriteChanges(const std::string& dir, const std::vector<StateChange>& changes) {
  FileStateStore store(dir);
  EXPECT_TRUE(store.Load().ok());
  std::vector<int64_t> ends;
  for (const StateChange& c : changes) {
    EXPECT_TRUE(store.Append(c).ok());
    ends.push_back(FileSize(store.log_path()));
  }
  return ends;
}

// A crash in the middle of a commit leaves the log cut anywhere in its last record: the
// change is there entirely or not at all, and the store goes on from there.
TEST_F(FileStateStoreTest, ACommitCutAtAnyByteIsEntirelyThereOrNotAtAll) {
  const std::vector<StateChange> changes = SomeChanges();
  const std::string original = root_ + "/original";
  const std::vector<int64_t> ends = WriteChanges(original, changes);
  const std::string snapshot = ReadFile(original + "/tunnels.json");
  const std::string log = ReadFile(original + "/tunnels.log");
  ASSERT_EQ(static_cast<int64_t>(log.size()), ends.back());
  const int64_t last_start = ends[ends.size() - 2];
  const std::vector<StateChange> without_last(changes.begin(), changes.end() - 1);

  int cuts = 0;
  for (int64_t cut = last_start; cut <= ends.back(); ++cut) {
    SCOPED_TRACE(absl::StrCat("log cut at ", cut, " of ", ends.back()));
    const std::string dir = absl::StrCat(root_, "/cut", cut);
    ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
    WriteFile(dir + "/tunnels.json", snapshot);
    WriteFile(dir + "/tunnels.log", log.substr(0, static_cast<size_t>(cut)));
    const bool whole = cut == ends.back();
    {
      FileStateStore store(dir);
      absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      ExpectSpecsEq(Model(whole ? changes : without_last), ByName(*loaded));
      // Cut back to the last whole record, so the next change follows it.
      EXPECT_EQ(FileSize(dir + "/tunnels.log"), whole ? ends.back() : last_start);
      ASSERT_TRUE(store.Append(Upsert({Numbered(7)})).ok());
    }
    std::vector<StateChange> then = whole ? changes : without_last;
    then.push_back(Upsert({Numbered(7)}));
    ExpectSpecsEq(Model(then), LoadFresh(dir));
    std::error_code ec;
    fs::remove_all(dir, ec);
    ++cuts;
  }
  EXPECT_EQ(cuts, ends.back() - last_start + 1);
}

TEST_F(FileStateStoreTest, ALastRecordFailingItsCrcIsDropped) {
  const std::vector<StateChange> changes = SomeChanges();
  const std::vector<int64_t> ends = WriteChanges(root_, changes);
  std::string log = ReadFile(root_ + "/tunnels.log");
  log[log.size() - 1] ^= 0x40;  // in the last record's payload
  WriteFile(root_ + "/tunnels.log", log);
  ExpectSpecsEq(Model({changes.begin(), changes.end() - 1}), LoadFresh(root_));
  EXPECT_EQ(FileSize(root_ + "/tunnels.log"), ends[ends.size() - 2]);
}

// Blocks a crash allocated but never wrote read as zeros: a tail of them is no damage.
TEST_F(FileStateStoreTest, ZerosAtTheEndOfTheLogAreDropped) {
  const std::vector<StateChange> changes = SomeChanges();
  const std::vector<int64_t> ends = WriteChanges(root_, changes);
  for (size_t zeros : {1, 11, 12, 40, 4096}) {
    SCOPED_TRACE(absl::StrCat(zeros, " zero bytes"));
    WriteFile(root_ + "/tunnels.log", ReadFile(root_ + "/tunnels.log") + std::string(zeros, '\0'));
    ExpectSpecsEq(Model(changes), LoadFresh(root_));
    EXPECT_EQ(FileSize(root_ + "/tunnels.log"), ends.back());
  }
  // But not zeros with anything after them.
  WriteFile(root_ + "/tunnels.log", ReadFile(root_ + "/tunnels.log") + std::string(20, '\0') + "x");
  EXPECT_EQ(FileStateStore(root_).Load().status().code(), absl::StatusCode::kFailedPrecondition);
}

// Damage before the last record is not a crash: the agent stops, naming the file, the offset
// and the problem, and nothing is changed.
TEST_F(FileStateStoreTest, DamageInTheMiddleOfTheLogIsRefusedWithTheOffset) {
  const std::vector<StateChange> changes = SomeChanges();
  const std::vector<int64_t> ends = WriteChanges(root_, changes);
  const std::string log = ReadFile(root_ + "/tunnels.log");
  const int64_t second = ends[0];  // where the second record starts
  struct Damage {
    const char* what;
    int64_t at;
  };
  for (const Damage& d :
       {Damage{"payload", second + 14}, Damage{"length", second + 1},
        Damage{"header CRC", second + 9}, Damage{"last payload byte", ends[1] - 1}}) {
    SCOPED_TRACE(d.what);
    std::string damaged = log;
    damaged[static_cast<size_t>(d.at)] ^= 0x01;
    WriteFile(root_ + "/tunnels.log", damaged);
    FileStateStore store(root_);
    absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition) << loaded.status();
    const std::string message(loaded.status().message());
    EXPECT_THAT(message, HasSubstr(store.log_path()));
    EXPECT_THAT(message, HasSubstr(absl::StrCat("offset ", second, ":")));
    EXPECT_THAT(message, HasSubstr("CRC32C"));
    EXPECT_THAT(message, ::testing::Not(HasSubstr("\n")));
    EXPECT_EQ(ReadFile(store.log_path()), damaged) << "the damaged log was changed";
    EXPECT_THAT(ListDir(root_), ::testing::UnorderedElementsAre("tunnels.json", "tunnels.log"));
  }
}

TEST_F(FileStateStoreTest, ADamagedLogHeaderIsRefused) {
  WriteChanges(root_, SomeChanges());
  std::string log = ReadFile(root_ + "/tunnels.log");
  log[10] ^= 0x01;  // the generation
  WriteFile(root_ + "/tunnels.log", log);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = FileStateStore(root_).Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("offset 0"));
  EXPECT_EQ(ReadFile(root_ + "/tunnels.log"), log);
}

uint64_t GenerationOf(const std::string& snapshot_path) {
  const std::string content = ReadFile(snapshot_path);
  const size_t at = content.find("\"generation\": \"");
  if (at == std::string::npos) return 0;
  return std::stoull(content.substr(at + 15));
}

TEST_F(FileStateStoreTest, CompactionKeepsEverythingAndBoundsTheLog) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Load().ok());
  std::vector<StateChange> changes;
  // Changes of 50 tunnels until the log was compacted twice (past the first snapshot).
  for (int i = 0; store.stats().compactions < 3 && i < 200000; ++i) {
    StateChange c = i % 7 == 6 ? Remove({absl::StrCat("t", i % 50)})
                               : Upsert({Numbered(i % 50, 1280 + static_cast<uint32_t>(i % 100))});
    ASSERT_TRUE(store.Append(c).ok());
    changes.push_back(std::move(c));
  }
  EXPECT_GE(store.stats().compactions, 3u);  // the first snapshot, then at least two
  EXPECT_LE(FileSize(store.log_path()), FileStateStore::kMinCompactionBytes + 4096);
  EXPECT_GE(GenerationOf(store.path()), 3u);
  ExpectSpecsEq(Model(changes), LoadFresh(root_));
}

// A crash after a compaction's new snapshot and before its new log leaves the old log beside
// a snapshot that already holds it: the log is ignored, whatever it says.
TEST_F(FileStateStoreTest, ALogOlderThanTheSnapshotIsIgnored) {
  const std::vector<StateChange> changes = SomeChanges();
  WriteChanges(root_, changes);
  const std::string old_log = ReadFile(root_ + "/tunnels.log");
  // The snapshot of the next generation: the same state, but t2 back at MTU 1400 and t9 new
  // (changes the old log would undo if it were applied).
  std::vector<TunnelSpec> now = Model(changes);
  for (TunnelSpec& spec : now) {
    if (spec.name == "t2") spec.mtu = 1400;
  }
  now.push_back(Numbered(9));
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    ASSERT_TRUE(store.Save(now).ok());
  }
  WriteFile(root_ + "/tunnels.log", old_log);  // as the crash left it
  FileStateStore store(root_);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSpecsEq(ByName(now), ByName(*loaded));
  EXPECT_EQ(ReadFile(root_ + "/tunnels.log"), old_log) << "loading changed the log";
  // The next change replaces the stale log and is kept.
  ASSERT_TRUE(store.Append(Remove({"t9"})).ok());
  now.pop_back();
  ExpectSpecsEq(ByName(now), LoadFresh(root_));
}

// Eight threads committing at once, as eight requests do: each is durable when WaitDurable
// returns (a flush that began after its record was written), and flushes are shared.
TEST_F(FileStateStoreTest, ConcurrentCommitsShareFlushes) {
  absl::Mutex flushed_mu;
  int64_t flushed = 0;  // the largest log size a flush began with
  FileStateStore::Options options;
  options.sync = [&](int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    absl::SleepFor(absl::Milliseconds(2));  // a disk of modest speed
    const int result = fdatasync(fd);
    absl::MutexLock lock(&flushed_mu);
    flushed = std::max<int64_t>(flushed, st.st_size);
    return result;
  };
  FileStateStore store(root_, options);
  ASSERT_TRUE(store.Load().ok());
  ASSERT_TRUE(store.Append(Upsert({Numbered(999)})).ok());  // the log exists from here on

  constexpr int kThreads = 8;
  constexpr int kEach = 40;
  absl::Mutex writers;  // the manager's change_mu_: appends are serialized, flushes are not
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        int64_t end = 0;
        uint64_t sequence = 0;
        {
          absl::MutexLock lock(&writers);
          absl::StatusOr<uint64_t> appended = store.Append(Upsert({Numbered(t * kEach + i)}));
          if (!appended.ok()) {
            ++failures;
            continue;
          }
          sequence = *appended;
          end = FileSize(store.log_path());
        }
        if (!store.WaitDurable(sequence).ok()) ++failures;
        absl::MutexLock lock(&flushed_mu);
        if (flushed < end) ++failures;  // answered before a flush covered it
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  const StateStoreStats stats = store.stats();
  EXPECT_EQ(stats.commits, static_cast<uint64_t>(kThreads * kEach + 1));
  EXPECT_GE(stats.syncs, 1u);
  EXPECT_LT(stats.syncs, stats.commits) << "no flush was shared";
  EXPECT_EQ(LoadFresh(root_).size(), static_cast<size_t>(kThreads * kEach + 1));
}

// A failed flush is not swallowed: the waiting changes get an error, and the next change
// rewrites the whole state instead of trusting the log.
TEST_F(FileStateStoreTest, AFailedFlushIsAnErrorAndTheNextChangeWritesASnapshot) {
  std::atomic<int> syncs{0};
  FileStateStore::Options options;
  options.sync = [&](int fd) {
    if (syncs++ == 0) {
      errno = EIO;
      return -1;
    }
    return fdatasync(fd);
  };
  FileStateStore store(root_, options);
  ASSERT_TRUE(store.Load().ok());
  absl::StatusOr<uint64_t> first = store.Append(Upsert({Numbered(1)}));
  ASSERT_TRUE(first.ok());
  const absl::Status failed = store.WaitDurable(*first);
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal) << failed;
  EXPECT_THAT(std::string(failed.message()), HasSubstr("fdatasync"));
  EXPECT_THAT(std::string(failed.message()), HasSubstr(store.log_path()));
  EXPECT_EQ(store.WaitDurable(*first).code(), absl::StatusCode::kInternal) << "asked again";
  EXPECT_EQ(store.stats().sync_failures, 1u);

  const uint64_t compactions = store.stats().compactions;
  absl::StatusOr<uint64_t> second = store.Append(Upsert({Numbered(2)}));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(store.stats().compactions, compactions + 1);
  EXPECT_TRUE(store.WaitDurable(*second).ok());
  EXPECT_EQ(syncs.load(), 1) << "the snapshot made it durable; no flush needed";
  ExpectSpecsEq({Numbered(1), Numbered(2)}, LoadFresh(root_));
}

TEST_F(FileStateStoreTest, AChangeBeforeLoadIsRefused) {
  FileStateStore store(root_);
  absl::StatusOr<uint64_t> sequence = store.Append(Upsert({Numbered(1)}));
  EXPECT_EQ(sequence.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(ListDir(root_).empty());
}

TEST_F(FileStateStoreTest, ReadOnlyLoadWritesNothing) {
  FileStateStore writer(root_);
  const std::string version1 = Version1File(/*gre_key=*/42);
  WriteFile(writer.path(), version1);
  FileStateStore::Options options;
  options.read_only = true;
  FileStateStore reader(root_, options);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = reader.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->size(), 2u);
  EXPECT_EQ(ReadFile(writer.path()), version1);
  EXPECT_THAT(ListDir(root_), ::testing::ElementsAre("tunnels.json"));
}

// A full disk fails the change (the manager rolls it back) and leaves the log as it was, so
// the next change that fits is appended after the last whole one.
TEST_F(FileStateStoreTest, AChangeOnAFullDiskFailsAndLeavesTheLogWhole) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  int exit_code = 0;
  ASSERT_NO_FATAL_FAILURE(RunOnASmallDisk(
      "size=64k",
      [](const std::string& dir) {
        int step = 10;
        {
          FileStateStore store(dir);
          if (!store.Load().ok() || !store.Append(Upsert({Numbered(1)})).ok()) _exit(step);
          ++step;
          std::vector<TunnelSpec> many;  // far more than 64 KiB
          for (int i = 0; i < 2000; ++i) many.push_back(Numbered(i + 100));
          const absl::StatusOr<uint64_t> s = store.Append(Upsert(many));
          if (s.ok() || s.status().code() != absl::StatusCode::kResourceExhausted ||
              !absl::StrContains(s.status().message(),
                                 "the file system holding --state_dir is full")) {
            _exit(step);
          }
          ++step;
          if (!store.Append(Upsert({Numbered(2)})).ok()) _exit(step);
        }
        ++step;
        absl::StatusOr<std::vector<TunnelSpec>> loaded = FileStateStore(dir).Load();
        if (!loaded.ok() || loaded->size() != 2) _exit(step);
        return 0;
      },
      &exit_code));
  if (exit_code == 77) GTEST_SKIP() << "cannot mount a tmpfs here";
  EXPECT_EQ(exit_code, 0) << "failed at step " << exit_code
                          << " (10 first change, 11 the full disk's error, 12 the "
                             "change after it, 13 loading t1 and t2)";
}

// The manager over the real store: requests answered only once durable, committed together.
TEST_F(FileStateStoreTest, ConcurrentCreatesThroughTheManagerShareFlushes) {
  std::atomic<int> flushes{0};
  FileStateStore::Options options;
  options.sync = [&](int fd) {
    ++flushes;
    absl::SleepFor(absl::Milliseconds(2));
    return fdatasync(fd);
  };
  FileStateStore store(root_, options);
  fakes::EventLog log;
  fakes::FakeLinkControl links(&log);
  fakes::FakePacketEngine engine(&log);
  TunnelManager::Options manager_options;
  manager_options.max_tunnels = 1000;
  TunnelManager manager(&links, &engine, &store, manager_options);
  ASSERT_TRUE(manager.Restore().ok());
  constexpr int kThreads = 8;
  constexpr int kEach = 10;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!manager.Create(Numbered(t * kEach + i)).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  const StateStoreStats stats = store.stats();
  EXPECT_EQ(stats.commits, static_cast<uint64_t>(kThreads * kEach));
  EXPECT_LT(stats.syncs, stats.commits);
  EXPECT_EQ(LoadFresh(root_).size(), static_cast<size_t>(kThreads * kEach));
  // A delete is durable as well.
  ASSERT_TRUE(manager.Delete("t0").ok());
  EXPECT_EQ(LoadFresh(root_).size(), static_cast<size_t>(kThreads * kEach - 1));
  manager.Shutdown();
}

// A request waits for its flush without the writers' lock: another request commits meanwhile
// (and is carried by the next flush).
TEST_F(FileStateStoreTest, AFlushInProgressKeepsNoOtherRequestWaiting) {
  fakes::Gate disk;
  std::atomic<bool> gated{true};
  FileStateStore::Options options;
  options.sync = [&](int fd) {
    if (gated.load()) disk.Pass();
    return fdatasync(fd);
  };
  FileStateStore store(root_, options);
  fakes::EventLog log;
  fakes::FakeLinkControl links(&log);
  fakes::FakePacketEngine engine(&log);
  TunnelManager manager(&links, &engine, &store, TunnelManager::Options{});
  ASSERT_TRUE(manager.Restore().ok());
  std::thread first([&] { EXPECT_TRUE(manager.Create(Numbered(1)).ok()); });
  ASSERT_TRUE(disk.WaitForCall(absl::Seconds(10))) << "the create never flushed";
  // Published at its commit, which the flush of its record written ahead does not hold up:
  // readers see it while it is being flushed.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!manager.Get("t1").ok() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(manager.Get("t1").ok());
  std::thread second([&] { EXPECT_TRUE(manager.Create(Numbered(2)).ok()); });
  deadline = absl::Now() + absl::Seconds(10);
  while (store.stats().commits < 2 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(store.stats().commits, 2u) << "the second request waited for the first one's flush";
  gated.store(false);
  disk.Open();
  first.join();
  second.join();
  EXPECT_EQ(LoadFresh(root_).size(), 2u);
  manager.Shutdown();
}

// FlushSoon flushes on the store's own thread: the caller's WaitDurable then finds the change
// durable and flushes nothing more.
TEST_F(FileStateStoreTest, FlushSoonMakesTheChangeDurableInTheBackground) {
  std::atomic<int> flushes{0};
  FileStateStore::Options options;
  options.sync = [&](int fd) {
    ++flushes;
    return fdatasync(fd);
  };
  FileStateStore store(root_, options);
  ASSERT_TRUE(store.Load().ok());
  const absl::StatusOr<uint64_t> sequence = store.Append(Upsert({Numbered(1)}));
  ASSERT_TRUE(sequence.ok()) << sequence.status();
  EXPECT_EQ(flushes.load(), 0) << "an append alone flushed";
  store.FlushSoon();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (flushes.load() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(flushes.load(), 1) << "FlushSoon did not flush";
  // syncs counts a flush once it is over; WaitDurable waits for one under way.
  EXPECT_TRUE(store.WaitDurable(*sequence).ok());
  EXPECT_EQ(flushes.load(), 1);
  EXPECT_EQ(store.stats().syncs, 1u);
  EXPECT_EQ(LoadFresh(root_).size(), 1u);
}

// A record taken back (StateChange::undo) is taken back even when the disk refuses the write:
// the store forgets it at once and writes itself whole at the next chance, so the tunnel never
// comes back at the next start.
TEST_F(FileStateStoreTest, AnUndoTheDiskRefusesIsTakenBackAllTheSame) {
  const std::string log_path = FileStateStore(root_).log_path();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Files may not grow past the log's size for a while: the write fails with EFBIG.
    signal(SIGXFSZ, SIG_IGN);
    FileStateStore store(root_);
    if (!store.Load().ok()) _exit(10);
    for (int n : {1, 2}) {
      const absl::StatusOr<uint64_t> s = store.Append(Upsert({Numbered(n)}));
      if (!s.ok() || !store.WaitDurable(*s).ok()) _exit(11);
    }
    rlimit limit;
    if (getrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(12);
    const rlim_t unlimited = limit.rlim_cur;
    limit.rlim_cur = static_cast<rlim_t>(FileSize(log_path));
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(12);
    StateChange undo = Remove({"t2"});
    undo.undo = true;
    const absl::StatusOr<uint64_t> taken_back = store.Append(undo);
    if (!taken_back.ok()) _exit(13);
    (void)store.WaitDurable(*taken_back);  // a snapshot of t1 may or may not fit
    limit.rlim_cur = unlimited;
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(12);
    const absl::StatusOr<uint64_t> next = store.Append(Upsert({Numbered(3)}));
    if (!next.ok() || !store.WaitDurable(*next).ok()) _exit(14);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "failed at step " << WEXITSTATUS(status)
                                    << " (10 load, 11 the first changes, 12 the file size "
                                       "limit, 13 the undo, 14 the change after it)";
  std::vector<std::string> names;
  for (const TunnelSpec& spec : LoadFresh(root_)) names.push_back(spec.name);
  EXPECT_THAT(names, ::testing::ElementsAre("t1", "t3"));
}

// A create the kernel refuses leaves nothing on disk: its record, written ahead, is taken back
// durably before the caller hears of the failure.
TEST_F(FileStateStoreTest, ACreateTheKernelRefusesIsNotOnDisk) {
  FileStateStore store(root_);
  fakes::EventLog log;
  fakes::FakeLinkControl links(&log);
  fakes::FakePacketEngine engine(&log);
  TunnelManager manager(&links, &engine, &store, TunnelManager::Options{});
  ASSERT_TRUE(manager.Restore().ok());
  ASSERT_TRUE(manager.Create(Numbered(1)).ok());
  links.set_up_failure.Arm(1, absl::InternalError("link refused up"));
  const absl::StatusOr<TunnelView> refused = manager.Create(Numbered(2));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInternal) << refused.status();
  EXPECT_EQ(store.stats().commits, 3u) << "the record written ahead and taken back";
  std::vector<std::string> names;
  for (const TunnelSpec& spec : LoadFresh(root_)) names.push_back(spec.name);
  EXPECT_THAT(names, ::testing::ElementsAre("t1"));
  manager.Shutdown();
}

// A failed flush reaches the caller as an error saying the change is in effect but not yet
// durable, never as OK.
TEST(TunnelManagerDurabilityTest, AFailedFlushIsAnErrorThatSaysTheChangeIsInEffect) {
  fakes::EventLog log;
  fakes::FakeLinkControl links(&log);
  fakes::FakePacketEngine engine(&log);
  fakes::FakeStateStore store(&log);
  TunnelManager manager(&links, &engine, &store, TunnelManager::Options{});
  ASSERT_TRUE(manager.Restore().ok());
  store.sync_failure.Arm(1, absl::InternalError("state file x/tunnels.log: fdatasync: I/O error"));
  absl::StatusOr<TunnelView> created = manager.Create(Numbered(1));
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(created.status().message()), HasSubstr("in effect but not yet saved"));
  EXPECT_THAT(std::string(created.status().message()), HasSubstr("fdatasync: I/O error"));
  EXPECT_TRUE(manager.Get("t1").ok()) << "the change is in effect";
  EXPECT_THAT(store.SavedNames(), ::testing::ElementsAre("t1"));
  // Every kind of change waits for its own commit.
  ASSERT_TRUE(manager.Delete("t1").ok());
  ASSERT_TRUE(manager.Apply("fleet", {Numbered(2)}, /*prune=*/true, /*dry_run=*/false).ok());
  TunnelSpec patch = Numbered(2, 1300);
  ASSERT_TRUE(manager.Update("t2", patch, {"mtu"}, "").ok());
  EXPECT_THAT(store.waited(), ::testing::ElementsAre(1, 2, 3, 4));
  manager.Shutdown();
}

}  // namespace
}  // namespace tunnelagent::agent

namespace tunnelagent::agent {
namespace {

TunnelSpec MultipointTunnel(const std::string& name) {
  TunnelSpec spec;
  spec.name = name;
  spec.mode = dataplane::TunnelMode::kGre;
  spec.local = *dataplane::IpAddress::Parse("198.51.100.1");
  spec.multipoint = true;
  return spec;
}

SavedPeer SavedPeerOf(const std::string& tunnel, const std::string& name, int n) {
  SavedPeer peer{tunnel, {}};
  peer.spec.name = name;
  peer.spec.underlay = *dataplane::IpAddress::Parse(absl::StrCat("198.51.100.", n));
  peer.spec.key = n;
  peer.spec.allowed_prefixes = {*dataplane::IpPrefix::Parse(absl::StrCat("100.65.", n, ".0/24"))};
  peer.spec.keepalive.interval = absl::Seconds(5);
  peer.spec.labels = {{"owner", "fleet"}};
  return peer;
}

// What a fresh store loads: the peers as (tunnel/name, underlay) in order.
std::vector<std::string> LoadedPeers(const std::string& dir) {
  FileStateStore store(dir);
  EXPECT_TRUE(store.Load().ok());
  std::vector<std::string> out;
  for (const SavedPeer& peer : store.TakeLoadedPeers()) {
    out.push_back(absl::StrCat(peer.tunnel, "/", peer.spec.name, "@", peer.spec.underlay.ToString(),
                               " key ", peer.spec.key.value_or(0), " ",
                               peer.spec.allowed_prefixes.at(0).ToString()));
  }
  return out;
}

TEST_F(FileStateStoreTest, PeersAreRecordsOfTheirOwnThroughLogAndSnapshot) {
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    StateChange tunnels;
    tunnels.upserted = {MultipointTunnel("tnl0"), MultipointTunnel("tnl1")};
    ASSERT_TRUE(store.Append(tunnels).ok());
    StateChange peers;
    peers.upserted_peers = {SavedPeerOf("tnl0", "b", 2), SavedPeerOf("tnl0", "c", 3),
                            SavedPeerOf("tnl1", "b", 4)};
    ASSERT_TRUE(store.Append(peers).ok());
    // One peer changed: the record holds that peer alone.
    const int64_t before = FileSize(store.log_path());
    StateChange one;
    one.upserted_peers = {SavedPeerOf("tnl0", "c", 9)};
    ASSERT_TRUE(store.Append(one).ok());
    EXPECT_LT(FileSize(store.log_path()) - before, 200);
    StateChange gone;
    gone.removed_peers = {{"tnl0", "b"}};
    ASSERT_TRUE(store.Append(gone).ok());
  }
  EXPECT_THAT(LoadedPeers(root_),
              ::testing::ElementsAre("tnl0/c@198.51.100.9 key 9 100.65.9.0/24",
                                     "tnl1/b@198.51.100.4 key 4 100.65.4.0/24"));
  // A tunnel removed takes its peers, in the log and in the snapshot a full save writes.
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    ASSERT_TRUE(store.Append(Remove({"tnl1"})).ok());
  }
  EXPECT_THAT(LoadedPeers(root_),
              ::testing::ElementsAre("tnl0/c@198.51.100.9 key 9 100.65.9.0/24"));
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    ASSERT_TRUE(store.Save({MultipointTunnel("tnl0")}).ok());
  }
  EXPECT_THAT(LoadedPeers(root_),
              ::testing::ElementsAre("tnl0/c@198.51.100.9 key 9 100.65.9.0/24"));
  std::ifstream snapshot(root_ + "/tunnels.json");
  std::stringstream text;
  text << snapshot.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("\"allowedPrefixes\""));
}

TEST_F(FileStateStoreTest, PeersSurviveCompaction) {
  FileStateStore store(root_);
  ASSERT_TRUE(store.Load().ok());
  StateChange tunnel;
  tunnel.upserted = {MultipointTunnel("tnl0")};
  ASSERT_TRUE(store.Append(tunnel).ok());
  for (int i = 0; store.stats().compactions < 3 && i < 200000; ++i) {
    StateChange c;
    c.upserted_peers = {SavedPeerOf("tnl0", absl::StrCat("p", i % 20), 10 + i % 20)};
    ASSERT_TRUE(store.Append(c).ok());
  }
  EXPECT_GE(store.stats().compactions, 3u);
  EXPECT_EQ(LoadedPeers(root_).size(), 20u);
}

TEST_F(FileStateStoreTest, APeerThatDoesNotParseIsRefusedNamingIt) {
  {
    FileStateStore store(root_);
    ASSERT_TRUE(store.Load().ok());
    StateChange tunnel;
    tunnel.upserted = {MultipointTunnel("tnl0")};
    ASSERT_TRUE(store.Save({MultipointTunnel("tnl0")}).ok());
  }
  std::ifstream in(root_ + "/tunnels.json");
  std::stringstream text;
  text << in.rdbuf();
  std::string json = text.str();
  const size_t end = json.rfind('}');
  json.insert(end,
              ",\"peers\":[{\"tunnel\":\"tnl0\",\"peer\":{\"name\":\"b\",\"underlay\":\"nope\"}}]");
  std::ofstream(root_ + "/tunnels.json") << json;
  FileStateStore store(root_);
  absl::StatusOr<std::vector<TunnelSpec>> loaded = store.Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(loaded.status().message(), HasSubstr("peers[0]"));
  EXPECT_THAT(loaded.status().message(), HasSubstr("underlay"));
}

}  // namespace
}  // namespace tunnelagent::agent
