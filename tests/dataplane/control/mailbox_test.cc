#include "dataplane/control/mailbox.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {
namespace {

EngineTunnel TunnelNamed(const std::string& name) {
  EngineTunnel tunnel;
  tunnel.name = name;
  tunnel.device_fd = 0;  // never used: the thread below only answers
  tunnel.mtu = 1400;
  tunnel.stats = std::make_shared<TunnelStats>(1);
  return tunnel;
}

// A dataplane thread's side of the mailbox: waits for a wake-up (bounded: 50 rounds of 100 ms),
// runs what is queued, and records the names each round added. Names starting "bad" are refused.
class MailboxThread {
 public:
  explicit MailboxThread(CommandMailbox* mailbox) : mailbox_(mailbox) {
    thread_ = std::thread([this] {
      for (int round = 0; round < 50; ++round) {
        uint64_t wakes = 0;
        if (read(mailbox_->fd(), &wakes, sizeof wakes) != sizeof wakes) {
          usleep(100'000);
          continue;
        }
        std::vector<std::string> added;
        std::unique_ptr<EngineCommand> stop = mailbox_->RunQueued(
            [&](const EngineTunnel& tunnel) {
              if (absl::StartsWith(tunnel.name, "bad")) {
                return absl::AlreadyExistsError(absl::StrCat(tunnel.name, " refused"));
              }
              added.push_back(tunnel.name);
              return absl::OkStatus();
            },
            [](std::unique_ptr<EngineCommand> remove) { remove->done.set_value(absl::OkStatus()); },
            [](const EngineCommand&) { return absl::UnimplementedError("no multipoint here"); });
        if (!added.empty()) rounds_.push_back(std::move(added));
        if (stop != nullptr) {
          mailbox_->Close();
          stop->done.set_value(absl::OkStatus());
          return;
        }
      }
    });
  }
  ~MailboxThread() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // Valid once joined.
  const std::vector<std::vector<std::string>>& rounds() const { return rounds_; }

 private:
  CommandMailbox* mailbox_;
  std::thread thread_;
  std::vector<std::vector<std::string>> rounds_;
};

TEST(CommandMailboxTest, AddTunnelsCrossesToTheThreadOnceForAllOfThem) {
  CommandMailbox mailbox;
  ASSERT_TRUE(mailbox.Open(0).ok());
  MailboxThread thread(&mailbox);
  std::vector<EngineTunnel> tunnels;
  for (int i = 0; i < 100; ++i) tunnels.push_back(TunnelNamed(absl::StrCat("t", i)));
  tunnels[7] = TunnelNamed("bad7");  // refused by the thread
  tunnels[9].mtu = 0;                // refused before it is queued
  const std::vector<absl::Status> answers = mailbox.BeginAddTunnels(tunnels).Wait();
  ASSERT_EQ(answers.size(), tunnels.size());
  for (size_t i = 0; i < answers.size(); ++i) {
    if (i == 7) {
      EXPECT_TRUE(absl::IsAlreadyExists(answers[i])) << answers[i];
    } else if (i == 9) {
      EXPECT_TRUE(absl::IsInvalidArgument(answers[i])) << answers[i];
    } else {
      EXPECT_TRUE(answers[i].ok()) << i << ": " << answers[i];
    }
  }
  ASSERT_TRUE(mailbox.Stop().ok());
  thread.Join();
  // One wake-up, one round, every valid tunnel in order.
  ASSERT_EQ(thread.rounds().size(), 1u);
  EXPECT_EQ(thread.rounds()[0].size(), 98u);
  EXPECT_EQ(thread.rounds()[0].front(), "t0");
  EXPECT_EQ(thread.rounds()[0].back(), "t99");
}

// A change of peers crosses to the thread with what it carries and is answered with what the
// thread's change_peers says; a thread that has none answers UNIMPLEMENTED.
TEST(CommandMailboxTest, ChangePeersIsAnsweredOnTheThread) {
  CommandMailbox mailbox;
  ASSERT_TRUE(mailbox.Open(0).ok());
  std::string seen_name;
  std::vector<uint32_t> seen_upserted, seen_removed;
  std::thread thread([&] {
    for (int round = 0; round < 50; ++round) {
      uint64_t wakes = 0;
      if (read(mailbox.fd(), &wakes, sizeof wakes) != sizeof wakes) {
        usleep(100'000);
        continue;
      }
      std::unique_ptr<EngineCommand> stop = mailbox.RunQueued(
          [](const EngineTunnel&) { return absl::OkStatus(); },
          [](std::unique_ptr<EngineCommand> remove) { remove->done.set_value(absl::OkStatus()); },
          [&](const EngineCommand& command) {
            seen_name = command.name;
            for (const EnginePeer& peer : command.upserted) seen_upserted.push_back(peer.id);
            seen_removed = command.removed;
            return command.upserted.empty() ? absl::OkStatus()
                                            : absl::AlreadyExistsError("peer 7's prefix");
          });
      if (stop != nullptr) {
        mailbox.Close();
        stop->done.set_value(absl::OkStatus());
        return;
      }
    }
  });
  EnginePeer peer;
  peer.id = 7;
  const absl::Status refused = mailbox.ChangePeers("mp", {peer}, {3, 4});
  EXPECT_TRUE(absl::IsAlreadyExists(refused)) << refused;
  EXPECT_EQ(seen_name, "mp");
  EXPECT_EQ(seen_upserted, std::vector<uint32_t>{7});
  EXPECT_EQ(seen_removed, (std::vector<uint32_t>{3, 4}));
  EXPECT_TRUE(mailbox.ChangePeers("mp", {}, {7}).ok());
  ASSERT_TRUE(mailbox.Stop().ok());
  thread.join();
  EXPECT_TRUE(absl::IsUnavailable(mailbox.ChangePeers("mp", {}, {}))) << "after the stop";

  CommandMailbox other;
  ASSERT_TRUE(other.Open(0).ok());
  MailboxThread without(&other);
  EXPECT_TRUE(absl::IsUnimplemented(other.ChangePeers("mp", {}, {})));
  ASSERT_TRUE(other.Stop().ok());
}

TEST(CommandMailboxTest, AddTunnelsAfterTheThreadStoppedAnswersUnavailable) {
  CommandMailbox mailbox;
  ASSERT_TRUE(mailbox.Open(0).ok());
  {
    MailboxThread thread(&mailbox);
    ASSERT_TRUE(mailbox.Stop().ok());
  }
  std::vector<EngineTunnel> tunnels = {TunnelNamed("a"), TunnelNamed("b")};
  tunnels[1].stats = nullptr;
  const std::vector<absl::Status> answers = mailbox.BeginAddTunnels(tunnels).Wait();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(absl::IsUnavailable(answers[0])) << answers[0];
  EXPECT_TRUE(absl::IsInvalidArgument(answers[1])) << answers[1];
}

}  // namespace
}  // namespace tunnelagent::dataplane
