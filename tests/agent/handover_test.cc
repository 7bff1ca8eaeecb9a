#include "agent/handover.h"

#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "agent/tunnel_manager.h"
#include "gtest/gtest.h"
#include "tests/agent/fakes.h"

namespace tunnelagent::agent {
namespace {

// Descriptors open in this process now.
int OpenFds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the directory's own
}

struct Pair {
  Pair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    a = ScopedFd(fds[0]);
    b = ScopedFd(fds[1]);
  }
  ScopedFd a{-1};
  ScopedFd b{-1};
};

// Sends `fds` descriptors of `fd` in one datagram by hand, as a hostile peer might.
void SendRaw(int socket, const std::string& bytes, int fd, size_t fds) {
  std::vector<int> all(fds, fd);
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds));
  iovec iov = {const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fds > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds);
    memcpy(CMSG_DATA(c), all.data(), sizeof(int) * fds);
  }
  ASSERT_EQ(sendmsg(socket, &msg, 0), static_cast<ssize_t>(bytes.size()));
}

TEST(HandoverFraming, MessageAndDescriptorsRoundTrip) {
  Pair pair;
  ScopedFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  handover::Message sent;
  sent.mutable_hello()->set_protocol_version(7);
  sent.mutable_hello()->set_agent_version("9.9");
  const int fds[] = {event.get(), event.get()};
  ASSERT_TRUE(SendHandoverMessage(pair.a.get(), sent, fds).ok());

  handover::Message got;
  std::vector<ScopedFd> received;
  ASSERT_TRUE(ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received).ok());
  EXPECT_EQ(got.hello().protocol_version(), 7u);
  EXPECT_EQ(got.hello().agent_version(), "9.9");
  ASSERT_EQ(received.size(), 2u);
  // The same open file description: a count written through one is read through the other.
  const uint64_t five = 5;
  ASSERT_EQ(write(event.get(), &five, sizeof five), 8);
  uint64_t value = 0;
  ASSERT_EQ(read(received[1].get(), &value, sizeof value), 8);
  EXPECT_EQ(value, 5u);
}

TEST(HandoverFraming, EmptyMessageCarriesDescriptors) {
  Pair pair;
  ScopedFd event(eventfd(0, EFD_CLOEXEC));
  handover::Message empty;
  const int fds[] = {event.get()};
  ASSERT_TRUE(SendHandoverMessage(pair.a.get(), empty, fds).ok());
  handover::Message got;
  got.mutable_serving();
  std::vector<ScopedFd> received;
  ASSERT_TRUE(ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received).ok());
  EXPECT_EQ(got.body_case(), handover::Message::BODY_NOT_SET);
  EXPECT_EQ(received.size(), 1u);
}

TEST(HandoverFraming, TooManyDescriptorsToSendIsRefused) {
  Pair pair;
  std::vector<int> fds(kMaxFdsPerMessage + 1, pair.a.get());
  absl::Status status = SendHandoverMessage(pair.a.get(), handover::Message(), fds);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

TEST(HandoverFraming, TooManyDescriptorsReceivedAreClosedAndRefused) {
  Pair pair;
  ScopedFd event(eventfd(0, EFD_CLOEXEC));
  const int before = OpenFds();
  SendRaw(pair.a.get(), "x", event.get(), 253);  // SCM_MAX_FD: more than the protocol allows
  handover::Message got;
  std::vector<ScopedFd> received;
  absl::Status status = ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_TRUE(received.empty());
  EXPECT_EQ(OpenFds(), before);  // none leaked
}

TEST(HandoverFraming, GarbageDoesNotParseAndLeaksNothing) {
  Pair pair;
  ScopedFd event(eventfd(0, EFD_CLOEXEC));
  const int before = OpenFds();
  SendRaw(pair.a.get(), std::string("\xff\xff\xff\xff\xff\x01", 6), event.get(), 3);
  handover::Message got;
  std::vector<ScopedFd> received;
  absl::Status status = ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(OpenFds(), before);
}

TEST(HandoverFraming, OversizedMessageIsRefused) {
  Pair pair;
  const int size = 1 << 20;
  setsockopt(pair.a.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  setsockopt(pair.b.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  SendRaw(pair.a.get(), std::string(kMaxHandoverMessageBytes + 100, 'x'), -1, 0);
  handover::Message got;
  std::vector<ScopedFd> received;
  absl::Status status = ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
}

TEST(HandoverFraming, ClosedPeerAndSilence) {
  Pair pair;
  handover::Message got;
  std::vector<ScopedFd> received;
  absl::Status status =
      ReceiveHandoverMessage(pair.b.get(), absl::Milliseconds(50), &got, &received);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  pair.a.Close();
  status = ReceiveHandoverMessage(pair.b.get(), absl::Seconds(1), &got, &received);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

TEST(HandoverOffer, ManyDescriptorsGoInBatches) {
  Pair pair;
  ScopedFd event(eventfd(0, EFD_CLOEXEC));
  std::vector<HandoverItem> items(600);
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].what.set_kind(handover::Descriptor::DEVICE);
    items[i].what.set_tunnel("t" + std::to_string(i));
    items[i].fd = event.get();
  }
  std::thread sender([&] {
    handover::Offer offer;
    offer.set_workers(2);
    EXPECT_TRUE(SendHandoverOffer(pair.a.get(), offer, items).ok());
  });
  // The client's reading of an offer, over the socket pair.
  handover::Message first;
  std::vector<ScopedFd> fds;
  ASSERT_TRUE(ReceiveHandoverMessage(pair.b.get(), absl::Seconds(2), &first, &fds).ok());
  ASSERT_TRUE(first.has_offer());
  EXPECT_EQ(first.offer().batches(), 3u);
  EXPECT_EQ(first.offer().descriptors(), 600u);
  std::vector<handover::Descriptor> descriptions;
  std::vector<ScopedFd> all;
  for (uint32_t i = 0; i < first.offer().batches(); ++i) {
    handover::Message batch;
    ASSERT_TRUE(ReceiveHandoverMessage(pair.b.get(), absl::Seconds(2), &batch, &fds).ok());
    EXPECT_LE(fds.size(), kMaxFdsPerMessage);
    for (const auto& d : batch.descriptors().descriptors()) descriptions.push_back(d);
    for (ScopedFd& fd : fds) all.push_back(std::move(fd));
  }
  sender.join();
  absl::StatusOr<HandedOver> handed =
      HandedOver::Assemble(first.offer(), std::move(descriptions), std::move(all));
  ASSERT_TRUE(handed.ok()) << handed.status();
  std::vector<std::pair<handover::Descriptor, int>> devices =
      handed->TakeAll(handover::Descriptor::DEVICE);
  ASSERT_EQ(devices.size(), 600u);
  EXPECT_EQ(devices[599].first.tunnel(), "t599");
  for (auto& [what, fd] : devices) close(fd);
}

TEST(HandoverOffer, AssembleRefusesWhatDoesNotAddUp) {
  handover::Offer offer;
  offer.set_descriptors(2);
  std::vector<handover::Descriptor> one(1);
  one[0].set_kind(handover::Descriptor::API_LISTENER);
  std::vector<ScopedFd> fds;
  fds.emplace_back(eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(HandedOver::Assemble(offer, one, std::move(fds)).status().code(),
            absl::StatusCode::kInvalidArgument);

  offer.set_descriptors(1);
  std::vector<handover::Descriptor> unknown(1);
  unknown[0].set_kind(static_cast<handover::Descriptor::Kind>(99));
  fds.clear();
  fds.emplace_back(eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(HandedOver::Assemble(offer, unknown, std::move(fds)).status().code(),
            absl::StatusCode::kInvalidArgument);

  std::vector<handover::Descriptor> nameless(1);
  nameless[0].set_kind(handover::Descriptor::DEVICE);
  fds.clear();
  fds.emplace_back(eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(HandedOver::Assemble(offer, nameless, std::move(fds)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class HandoverSession : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/handover_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    server_.reset();
    unlink(HandoverSocketPath(dir_).c_str());
    rmdir(dir_.c_str());
  }
  void StartServer() {
    absl::StatusOr<std::unique_ptr<HandoverServer>> server =
        HandoverServer::Listen({.state_dir = dir_, .agent_version = "1.0"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start({
        .prepare = [this]() -> absl::StatusOr<std::vector<HandoverItem>> {
          prepared_.store(true);
          HandoverItem item;
          item.what.set_kind(handover::Descriptor::RECEIVE_SOCKET);
          item.what.set_worker(1);
          item.what.set_protocol(47);
          item.fd = event_.get();
          return std::vector<HandoverItem>{item};
        },
        .resume = [this](const absl::Status&) { resumed_.Notify(); },
        .release = [this](pid_t pid) { released_to_.store(pid); },
        .refused = [this] { refused_.store(true); },
    });
  }

  std::string dir_;
  ScopedFd event_{eventfd(0, EFD_CLOEXEC)};
  std::unique_ptr<HandoverServer> server_;
  std::atomic<bool> prepared_{false};
  std::atomic<bool> refused_{false};
  std::atomic<pid_t> released_to_{0};
  absl::Notification resumed_;
};

TEST_F(HandoverSession, NoAgentIsNotFound) {
  absl::StatusOr<HandoverClient> client =
      HandoverClient::Connect(dir_, kHandoverProtocolVersion, "2.0");
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound) << client.status();
}

TEST_F(HandoverSession, HandsOverAndReleases) {
  StartServer();
  absl::StatusOr<HandoverClient> client =
      HandoverClient::Connect(dir_, kHandoverProtocolVersion, "2.0");
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<HandedOver> handed = client->Receive(absl::Seconds(5));
  ASSERT_TRUE(handed.ok()) << handed.status();
  EXPECT_TRUE(prepared_.load());
  EXPECT_EQ(handed->offer().workers(), 2u);
  EXPECT_EQ(handed->offer().pid(), getpid());
  std::vector<std::pair<handover::Descriptor, int>> sockets =
      handed->TakeAll(handover::Descriptor::RECEIVE_SOCKET);
  ASSERT_EQ(sockets.size(), 1u);
  EXPECT_EQ(sockets[0].first.protocol(), 47u);
  close(sockets[0].second);
  EXPECT_EQ(handed->Take(handover::Descriptor::API_LISTENER), -1);
  ASSERT_TRUE(client->Serving(absl::Seconds(5)).ok());
  EXPECT_EQ(released_to_.load(), getpid());
  EXPECT_TRUE(server_->handed_over());
  EXPECT_FALSE(resumed_.HasBeenNotified());
}

TEST_F(HandoverSession, VersionMismatchIsRefusedWithTheReason) {
  StartServer();
  absl::StatusOr<HandoverClient> client =
      HandoverClient::Connect(dir_, kHandoverProtocolVersion + 1, "2.0");
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<HandedOver> handed = client->Receive(absl::Seconds(5));
  EXPECT_EQ(handed.status().code(), absl::StatusCode::kAborted) << handed.status();
  EXPECT_NE(handed.status().message().find("handover protocol"), std::string::npos);
  EXPECT_TRUE(refused_.load());
  EXPECT_FALSE(prepared_.load());  // nothing frozen, nothing handed
  EXPECT_FALSE(server_->handed_over());
}

TEST_F(HandoverSession, NewAgentGoneBeforeServingResumes) {
  StartServer();
  {
    absl::StatusOr<HandoverClient> client =
        HandoverClient::Connect(dir_, kHandoverProtocolVersion, "2.0");
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE(client->Receive(absl::Seconds(5)).ok());
  }  // closed: as a new agent killed before it served
  EXPECT_TRUE(resumed_.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(released_to_.load(), 0);
  EXPECT_FALSE(server_->handed_over());
  // And a later one still can take over.
  absl::StatusOr<HandoverClient> again =
      HandoverClient::Connect(dir_, kHandoverProtocolVersion, "2.0");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->Receive(absl::Seconds(5)).ok());
  EXPECT_TRUE(again->Serving(absl::Seconds(5)).ok());
}

TEST_F(HandoverSession, StopEndsAHandoverInProgress) {
  StartServer();
  absl::StatusOr<HandoverClient> client =
      HandoverClient::Connect(dir_, kHandoverProtocolVersion, "2.0");
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(client->Receive(absl::Seconds(5)).ok());
  const absl::Time start = absl::Now();
  server_->Stop();  // the old agent stops (SIGTERM) while the new one restores
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(resumed_.HasBeenNotified());
  EXPECT_FALSE(client->Serving(absl::Seconds(1)).ok());
  EXPECT_FALSE(server_->handed_over());
}

TEST_F(HandoverSession, AHelloOfGarbageIsIgnored) {
  StartServer();
  ScopedFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  const std::string path = HandoverSocketPath(dir_);
  memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(send(fd.get(), "\xff\xff\xff", 3, 0), 3);
  char byte;
  // The server hangs up on it without freezing anything.
  EXPECT_EQ(recv(fd.get(), &byte, 1, 0), 0);
  EXPECT_FALSE(prepared_.load());
}

// The old agent's manager while it hands over: changes refused, reads answered, devices listed;
// and changes again once the new agent went away.
TEST(TunnelManagerFreeze, RefusesChangesWhileFrozen) {
  fakes::EventLog log;
  fakes::FakeLinkControl links(&log);
  fakes::FakePacketEngine engine(&log);
  fakes::FakeStateStore store(&log);
  TunnelManager manager(&links, &engine, &store, {});
  ASSERT_TRUE(manager.Restore().ok());
  TunnelSpec spec;
  spec.name = "t1";
  spec.mode = dataplane::TunnelMode::kGre;
  spec.remote = *dataplane::IpAddress::Parse("203.0.113.7");
  ASSERT_TRUE(manager.Create(spec).ok());

  manager.Freeze();
  EXPECT_TRUE(manager.frozen());
  TunnelSpec other = spec;
  other.name = "t2";
  other.remote = *dataplane::IpAddress::Parse("203.0.113.8");
  absl::StatusOr<TunnelView> refused = manager.Create(other);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_NE(refused.status().message().find("handing over"), std::string::npos);
  EXPECT_EQ(manager.Delete("t1").code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(manager.Get("t1").ok());  // reads still answer
  std::vector<TunnelManager::HandoverDevice> devices = manager.DevicesForHandover();
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0].name, "t1");
  EXPECT_GE(devices[0].fd, 0);
  EXPECT_FALSE(devices[0].tap);

  manager.Unfreeze();
  EXPECT_TRUE(manager.Create(other).ok());
}

}  // namespace
}  // namespace tunnelagent::agent
