#include "agent/handover.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/log.h"
#include "dataplane/errno_status.h"
#include "dataplane/tun/tun_device.h"

extern char** environ;

namespace tunnelagent::agent {
namespace {

using dataplane::ErrnoText;

bool FillAddress(const std::string& path, sockaddr_un* addr) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) return false;
  memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

// Waits until `fd` is readable (or closed); DEADLINE_EXCEEDED after `timeout`.
absl::Status WaitReadable(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    pollfd p = {fd, POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left)));
    if (n > 0) return absl::OkStatus();
    if (n == 0) return absl::DeadlineExceededError("the other agent did not answer in time");
    if (errno != EINTR) return dataplane::ErrnoStatus(errno, "poll");
  }
}

bool KnownKind(int kind) {
  return kind > handover::Descriptor::KIND_UNSPECIFIED &&
         kind <= handover::Descriptor::RECEIVE_SOCKET;
}

}  // namespace

std::string HandoverSocketPath(const std::string& state_dir) {
  std::string dir = state_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return absl::StrCat(dir, "/", kHandoverSocketFile);
}

absl::Status SendHandoverMessage(int socket, const handover::Message& message,
                                 absl::Span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " descriptors in one message; at most ", kMaxFdsPerMessage));
  }
  std::string bytes;
  if (!message.SerializeToString(&bytes) || bytes.size() > kMaxHandoverMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("handover message of ", bytes.size(),
                                                   " bytes; at most ", kMaxHandoverMessageBytes));
  }
  // An empty message still needs a byte for the descriptors to ride on.
  if (bytes.empty()) bytes.push_back('\0');
  iovec iov = {bytes.data(), bytes.size()};
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    const ssize_t n = sendmsg(socket, &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(bytes.size())) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return absl::UnavailableError("the other agent closed the handover socket");
    }
    return dataplane::ErrnoStatus(n < 0 ? errno : EMSGSIZE, "sending a handover message");
  }
}

absl::Status ReceiveHandoverMessage(int socket, absl::Duration timeout, handover::Message* message,
                                    std::vector<ScopedFd>* fds) {
  fds->clear();
  if (absl::Status s = WaitReadable(socket, timeout); !s.ok()) return s;
  std::string bytes(kMaxHandoverMessageBytes + 1, '\0');
  iovec iov = {bytes.data(), bytes.size()};
  // Room for one more than allowed: a sender of too many is seen (MSG_CTRUNC), not trusted.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (kMaxFdsPerMessage + 3))];
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == ECONNRESET)
      return absl::UnavailableError("the other agent closed the handover socket");
    return dataplane::ErrnoStatus(errno, "receiving a handover message");
  }
  // Whatever came, the descriptors are ours now: owned before anything is judged.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds->emplace_back(fd);
    }
  }
  auto fail = [fds](absl::Status status) {
    fds->clear();
    return status;
  };
  if (n == 0) return fail(absl::UnavailableError("the other agent closed the handover socket"));
  if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<size_t>(n) > kMaxHandoverMessageBytes) {
    return fail(absl::DataLossError(
        absl::StrCat("handover message larger than ", kMaxHandoverMessageBytes, " bytes")));
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds->size() > kMaxFdsPerMessage) {
    return fail(absl::DataLossError(
        absl::StrCat("handover message with more than ", kMaxFdsPerMessage, " descriptors")));
  }
  // The lone byte of an empty message parses as a field of number 0: refused below unless
  // it is that one byte.
  if (n == 1 && bytes[0] == '\0') {
    message->Clear();
  } else if (!message->ParseFromArray(bytes.data(), static_cast<int>(n))) {
    return fail(absl::InvalidArgumentError("handover message does not parse"));
  }
  return absl::OkStatus();
}

absl::Status SendHandoverOffer(int socket, handover::Offer offer,
                               const std::vector<HandoverItem>& items) {
  offer.set_descriptors(static_cast<uint32_t>(items.size()));
  offer.set_batches(
      static_cast<uint32_t>((items.size() + kMaxFdsPerMessage - 1) / kMaxFdsPerMessage));
  handover::Message first;
  *first.mutable_offer() = std::move(offer);
  if (absl::Status s = SendHandoverMessage(socket, first); !s.ok()) return s;
  for (size_t start = 0; start < items.size(); start += kMaxFdsPerMessage) {
    const size_t end = std::min(items.size(), start + kMaxFdsPerMessage);
    handover::Message batch;
    std::vector<int> fds;
    for (size_t i = start; i < end; ++i) {
      *batch.mutable_descriptors()->add_descriptors() = items[i].what;
      fds.push_back(items[i].fd);
    }
    if (absl::Status s = SendHandoverMessage(socket, batch, fds); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---- HandedOver ---------------------------------------------------------------------------------

absl::StatusOr<HandedOver> HandedOver::Assemble(handover::Offer offer,
                                                std::vector<handover::Descriptor> descriptors,
                                                std::vector<ScopedFd> fds) {
  if (descriptors.size() != fds.size() || descriptors.size() != offer.descriptors()) {
    return absl::InvalidArgumentError(
        absl::StrCat("handover offer of ", offer.descriptors(), " descriptors came with ",
                     descriptors.size(), " descriptions and ", fds.size(), " descriptors"));
  }
  HandedOver handed;
  for (size_t i = 0; i < descriptors.size(); ++i) {
    if (!KnownKind(descriptors[i].kind())) {
      return absl::InvalidArgumentError(
          absl::StrCat("handover descriptor ", i, " is of unknown kind ", descriptors[i].kind()));
    }
    if ((descriptors[i].kind() == handover::Descriptor::DEVICE ||
         descriptors[i].kind() == handover::Descriptor::DEVICE_QUEUE) &&
        descriptors[i].tunnel().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("handover descriptor ", i, " is a device without a tunnel name"));
    }
    handed.items_.emplace_back(std::move(descriptors[i]), std::move(fds[i]));
  }
  handed.offer_ = std::move(offer);
  return handed;
}

int HandedOver::Take(handover::Descriptor::Kind kind) {
  for (auto& [what, fd] : items_) {
    if (what.kind() == kind && fd.get() >= 0) return fd.release();
  }
  return -1;
}

std::vector<std::pair<handover::Descriptor, int>> HandedOver::TakeAll(
    handover::Descriptor::Kind kind) {
  std::vector<std::pair<handover::Descriptor, int>> taken;
  for (auto& [what, fd] : items_) {
    if (what.kind() == kind && fd.get() >= 0) taken.emplace_back(what, fd.release());
  }
  return taken;
}

// ---- HandoverClient
// ------------------------------------------------------------------------------

absl::StatusOr<HandoverClient> HandoverClient::Connect(const std::string& state_dir,
                                                       uint32_t protocol_version,
                                                       const std::string& agent_version) {
  const std::string path = HandoverSocketPath(state_dir);
  sockaddr_un addr;
  if (!FillAddress(path, &addr)) {
    return absl::InvalidArgumentError(absl::StrCat("handover socket path too long: ", path));
  }
  ScopedFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return dataplane::ErrnoStatus(errno, "socket");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return absl::NotFoundError(
          absl::StrCat("no agent listens on ", path, ": ", ErrnoText(errno)));
    }
    return dataplane::ErrnoStatus(errno, absl::StrCat("connecting to ", path));
  }
  handover::Message hello;
  hello.mutable_hello()->set_protocol_version(protocol_version);
  hello.mutable_hello()->set_agent_version(agent_version);
  hello.mutable_hello()->set_pid(getpid());
  if (absl::Status s = SendHandoverMessage(fd.get(), hello); !s.ok()) return s;
  return HandoverClient(std::move(fd));
}

absl::StatusOr<HandedOver> HandoverClient::Receive(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  handover::Message message;
  std::vector<ScopedFd> fds;
  if (absl::Status s = ReceiveHandoverMessage(socket_.get(), timeout, &message, &fds); !s.ok()) {
    return s;
  }
  if (message.has_refuse()) return absl::AbortedError(message.refuse().reason());
  if (!message.has_offer() || !fds.empty()) {
    return absl::InvalidArgumentError("the running agent answered the hello with no offer");
  }
  handover::Offer offer = message.offer();
  if (offer.batches() > offer.descriptors() ||
      offer.descriptors() > offer.batches() * kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat("handover offer of ", offer.descriptors(),
                                                   " descriptors in ", offer.batches(),
                                                   " batches"));
  }
  std::vector<handover::Descriptor> descriptors;
  std::vector<ScopedFd> all;
  for (uint32_t batch = 0; batch < offer.batches(); ++batch) {
    if (absl::Status s =
            ReceiveHandoverMessage(socket_.get(), deadline - absl::Now(), &message, &fds);
        !s.ok()) {
      return s;
    }
    if (!message.has_descriptors() ||
        static_cast<size_t>(message.descriptors().descriptors_size()) != fds.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("handover batch ", batch, " does not describe its descriptors"));
    }
    for (const handover::Descriptor& d : message.descriptors().descriptors()) {
      descriptors.push_back(d);
    }
    for (ScopedFd& fd : fds) all.push_back(std::move(fd));
    if (all.size() > offer.descriptors()) break;  // Assemble says so
  }
  return HandedOver::Assemble(std::move(offer), std::move(descriptors), std::move(all));
}

absl::Status HandoverClient::Serving(absl::Duration timeout) {
  handover::Message serving;
  serving.mutable_serving()->set_pid(getpid());
  if (absl::Status s = SendHandoverMessage(socket_.get(), serving); !s.ok()) return s;
  handover::Message answer;
  std::vector<ScopedFd> fds;
  if (absl::Status s = ReceiveHandoverMessage(socket_.get(), timeout, &answer, &fds); !s.ok()) {
    return s;
  }
  if (!answer.has_released()) {
    return absl::InvalidArgumentError("the old agent answered serving with something else");
  }
  return absl::OkStatus();
}

// ---- HandoverServer
// ------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<HandoverServer>> HandoverServer::Listen(Options options) {
  const std::string path = HandoverSocketPath(options.state_dir);
  sockaddr_un addr;
  if (!FillAddress(path, &addr)) {
    return absl::InvalidArgumentError(absl::StrCat("handover socket path too long: ", path));
  }
  ScopedFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return dataplane::ErrnoStatus(errno, "socket");
  // The caller holds the state directory's lock: what is at the path is a dead agent's.
  unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return dataplane::ErrnoStatus(errno, absl::StrCat("binding ", path));
  }
  // 0600 before listen(2): until then a connect is refused whatever the mode.
  if (chmod(path.c_str(), 0600) != 0 || listen(fd.get(), 4) != 0) {
    const int error = errno;
    unlink(path.c_str());
    return dataplane::ErrnoStatus(error, absl::StrCat("listening on ", path));
  }
  ScopedFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (stop.get() < 0) return dataplane::ErrnoStatus(errno, "eventfd");
  return std::unique_ptr<HandoverServer>(
      new HandoverServer(std::move(options), std::move(fd), std::move(stop)));
}

HandoverServer::~HandoverServer() { Stop(); }

void HandoverServer::Start(HandoverHooks hooks) {
  hooks_ = std::move(hooks);
  thread_ = std::thread([this] { Loop(); });
}

void HandoverServer::Stop() {
  bool handed_over;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    handed_over = handed_over_;
    // A handover in progress ends now (the new agent sees the socket close), not after its
    // timeouts; the conversation's thread still owns the descriptor.
    if (session_fd_ >= 0) shutdown(session_fd_, SHUT_RDWR);
  }
  const uint64_t one = 1;
  (void)!write(stop_fd_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  // Once handed over the path is the new agent's (it listens there now).
  if (!handed_over) unlink(HandoverSocketPath(options_.state_dir).c_str());
}

bool HandoverServer::handed_over() const {
  absl::MutexLock lock(&mu_);
  return handed_over_;
}

void HandoverServer::Loop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Log("ERROR", "handover: poll: %s; no hot upgrade possible", ErrnoText(errno));
      return;
    }
    if (p[1].revents != 0) return;
    ScopedFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.get() < 0) {
      // Out of descriptors, say: the connection waits in the backlog; do not spin on it.
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        absl::SleepFor(absl::Milliseconds(100));
      }
      continue;
    }
    ucred peer = {};
    socklen_t len = sizeof peer;
    if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 ||
        (peer.uid != 0 && peer.uid != getuid())) {
      Log("WARNING", "handover: refused a connection from uid %d (pid %d): only root or uid %d",
          static_cast<int>(peer.uid), static_cast<int>(peer.pid), static_cast<int>(getuid()));
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      session_fd_ = conn.get();
    }
    const bool taken = Session(conn.get());
    {
      absl::MutexLock lock(&mu_);
      session_fd_ = -1;
    }
    if (taken) return;
  }
}

bool HandoverServer::Session(int socket) {
  handover::Message message;
  std::vector<ScopedFd> fds;
  absl::Status status = ReceiveHandoverMessage(socket, options_.step_timeout, &message, &fds);
  if (!status.ok() || !message.has_hello() || !fds.empty()) {
    Log("WARNING", "handover: a connection without a proper hello: %s",
        status.ok() ? "unexpected message" : std::string(status.message()));
    return false;
  }
  const handover::Hello hello = message.hello();
  auto refuse = [&](const std::string& reason) {
    handover::Message answer;
    answer.mutable_refuse()->set_reason(reason);
    SendHandoverMessage(socket, answer).IgnoreError();
  };
  if (hello.protocol_version() != options_.protocol_version) {
    const std::string reason = absl::StrCat("the running agent (version ", options_.agent_version,
                                            ") speaks handover protocol ",
                                            options_.protocol_version, ", the new one (version ",
                                            hello.agent_version(), ") ", hello.protocol_version());
    Log("WARNING", "handover: refused pid %d: %s", hello.pid(), reason);
    if (hooks_.refused) hooks_.refused();
    refuse(reason);
    return false;
  }
  Log("INFO", "handover: agent %s (pid %d) takes over; changes are refused until it serves",
      hello.agent_version(), hello.pid());
  absl::StatusOr<std::vector<HandoverItem>> items = hooks_.prepare();
  if (!items.ok()) {
    Log("WARNING", "handover: refused pid %d: %s", hello.pid(), items.status().message());
    refuse(std::string(items.status().message()));
    hooks_.resume(items.status());
    return false;
  }
  handover::Offer offer;
  offer.set_protocol_version(options_.protocol_version);
  offer.set_agent_version(options_.agent_version);
  offer.set_pid(getpid());
  for (const HandoverItem& item : *items) {
    if (item.what.kind() == handover::Descriptor::RECEIVE_SOCKET) {
      offer.set_workers(std::max(offer.workers(), item.what.worker() + 1));
    }
  }
  status = SendHandoverOffer(socket, offer, *items);
  if (status.ok()) {
    status = ReceiveHandoverMessage(socket, options_.serving_timeout, &message, &fds);
    if (status.ok() && (!message.has_serving() || !fds.empty())) {
      status = absl::InvalidArgumentError("the new agent sent something else than serving");
    }
  }
  if (!status.ok()) {
    Log("WARNING", "handover: pid %d did not take over (%s); going on as before", hello.pid(),
        status.message());
    hooks_.resume(status);
    return false;
  }
  Log("INFO", "handover: pid %d serves; this agent stops reading and accepting",
      message.serving().pid());
  {
    absl::MutexLock lock(&mu_);
    handed_over_ = true;
  }
  hooks_.release(message.serving().pid());
  handover::Message released;
  released.mutable_released();
  SendHandoverMessage(socket, released).IgnoreError();
  return true;
}

// ---- HandedOverLinks ----------------------------------------------------------------------------

HandedOverLinks::HandedOverLinks(LinkControl* links,
                                 std::vector<std::pair<handover::Descriptor, int>> devices)
    : links_(links) {
  absl::MutexLock lock(&mu_);
  for (auto& [what, fd] : devices) {
    auto [it, added] = devices_.emplace(what.tunnel(), std::make_pair(what, fd));
    if (!added) close(fd);  // a name twice: the first stands
  }
}

HandedOverLinks::~HandedOverLinks() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, device] : devices_) close(device.second);
}

absl::StatusOr<std::unique_ptr<Device>> HandedOverLinks::AttachDevice(const std::string& name,
                                                                      DeviceKind kind) {
  std::optional<std::pair<handover::Descriptor, int>> handed;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = devices_.find(name); it != devices_.end()) {
      handed = it->second;
      devices_.erase(it);
    }
  }
  if (!handed.has_value()) return links_->AttachDevice(name, kind);
  const DeviceKind was = handed->first.tap() ? DeviceKind::kTap : DeviceKind::kTun;
  if (was != kind) {
    // The saved tunnel's mode changed kind since (it cannot while handing over: changes are
    // refused); the kernel's way decides.
    close(handed->second);
    return links_->AttachDevice(name, kind);
  }
  absl::StatusOr<std::unique_ptr<dataplane::TunDevice>> tun =
      dataplane::TunDevice::Adopt(handed->second, kind);
  if (!tun.ok()) return tun.status();
  // The same as a device attached after a restart: removed when it goes unless kept.
  return std::make_unique<TunLink>(*std::move(tun));
}

size_t HandedOverLinks::unclaimed() const {
  absl::MutexLock lock(&mu_);
  return devices_.size();
}

// ---- Service managers
// -----------------------------------------------------------------------------

absl::Status NotifyServiceManager(const std::string& state) {
  const char* socket_path = getenv("NOTIFY_SOCKET");
  if (socket_path == nullptr || *socket_path == 0) return absl::OkStatus();
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  const size_t len = strlen(socket_path);
  if (len >= sizeof addr.sun_path) return absl::InvalidArgumentError("NOTIFY_SOCKET too long");
  memcpy(addr.sun_path, socket_path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;  // an abstract name
  ScopedFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return dataplane::ErrnoStatus(errno, "socket");
  const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  if (sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
             reinterpret_cast<const sockaddr*>(&addr), addr_len) < 0) {
    return dataplane::ErrnoStatus(errno, absl::StrCat("notifying ", socket_path));
  }
  return absl::OkStatus();
}

absl::StatusOr<pid_t> SpawnTakeover(const std::string& binary,
                                    const std::vector<std::string>& args) {
  std::vector<std::string> argv_strings;
  argv_strings.push_back(binary);
  for (const std::string& arg : args) {
    if (arg != "--takeover" && arg != "--takeover=true") argv_strings.push_back(arg);
  }
  argv_strings.push_back("--takeover");
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // the agent blocks the signals it sigwaits for
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  const int error = posix_spawn(&pid, binary.c_str(), nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (error != 0) return dataplane::ErrnoStatus(error, absl::StrCat("starting ", binary));
  return pid;
}

}  // namespace tunnelagent::agent
