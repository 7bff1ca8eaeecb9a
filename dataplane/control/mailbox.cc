#include "dataplane/control/mailbox.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "dataplane/errno_status.h"

namespace tunnelagent::dataplane {

CommandMailbox::~CommandMailbox() {
  if (fd_ >= 0) close(fd_);
}

absl::Status CommandMailbox::Open(int eventfd_flags) {
  fd_ = eventfd(0, EFD_CLOEXEC | eventfd_flags);
  if (fd_ < 0) return ErrnoStatus(errno, "eventfd");
  return absl::OkStatus();
}

bool CommandMailbox::Queue(std::vector<std::unique_ptr<EngineCommand>>& commands) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    for (auto& command : commands) queue_.push_back(std::move(command));
  }
  uint64_t one = 1;
  // A full eventfd counter still wakes the reader; nothing to do on failure.
  (void)!write(fd_, &one, sizeof one);
  return true;
}

absl::Status CommandMailbox::Call(std::unique_ptr<EngineCommand> command) {
  std::future<absl::Status> done = command->done.get_future();
  std::vector<std::unique_ptr<EngineCommand>> one;
  one.push_back(std::move(command));
  if (!Queue(one)) return absl::UnavailableError("the dataplane has stopped");
  return done.get();
}

absl::Status CommandMailbox::AddTunnel(const EngineTunnel& tunnel) {
  if (absl::Status status = CheckEngineTunnel(tunnel); !status.ok()) return status;
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kAdd;
  command->tunnel = tunnel;
  return Call(std::move(command));
}

PendingAdditions CommandMailbox::BeginAddTunnels(absl::Span<const EngineTunnel> tunnels) {
  std::vector<absl::Status> answers(tunnels.size());
  std::vector<std::unique_ptr<EngineCommand>> commands;
  std::vector<std::pair<size_t, std::future<absl::Status>>> waiting;
  for (size_t i = 0; i < tunnels.size(); ++i) {
    if (answers[i] = CheckEngineTunnel(tunnels[i]); !answers[i].ok()) continue;
    auto command = std::make_unique<EngineCommand>();
    command->kind = EngineCommand::Kind::kAdd;
    command->tunnel = tunnels[i];
    waiting.emplace_back(i, command->done.get_future());
    commands.push_back(std::move(command));
  }
  if (!commands.empty() && !Queue(commands)) {
    for (const auto& [i, done] : waiting) {
      answers[i] = absl::UnavailableError("the dataplane has stopped");
    }
    return PendingAdditions(std::move(answers));
  }
  return PendingAdditions(std::move(answers), std::move(waiting));
}

absl::Status CommandMailbox::RemoveTunnel(const std::string& name) {
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kRemove;
  command->name = name;
  return Call(std::move(command));
}

absl::Status CommandMailbox::ChangePeers(const std::string& name, std::vector<EnginePeer> upserted,
                                         std::vector<uint32_t> removed) {
  return BeginChangePeers(name, std::move(upserted), std::move(removed)).get();
}

std::future<absl::Status> CommandMailbox::BeginChangePeers(const std::string& name,
                                                           std::vector<EnginePeer> upserted,
                                                           std::vector<uint32_t> removed) {
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kChangePeers;
  command->name = name;
  command->upserted = std::move(upserted);
  command->removed = std::move(removed);
  std::future<absl::Status> done = command->done.get_future();
  std::vector<std::unique_ptr<EngineCommand>> one;
  one.push_back(std::move(command));
  if (!Queue(one)) {
    std::promise<absl::Status> stopped;
    stopped.set_value(absl::UnavailableError("the dataplane has stopped"));
    return stopped.get_future();
  }
  return done;
}

absl::Status CommandMailbox::Stop() {
  auto command = std::make_unique<EngineCommand>();
  command->kind = EngineCommand::Kind::kStop;
  return Call(std::move(command));
}

std::deque<std::unique_ptr<EngineCommand>> CommandMailbox::TakeAll() {
  std::deque<std::unique_ptr<EngineCommand>> commands;
  absl::MutexLock lock(&mu_);
  commands.swap(queue_);
  return commands;
}

void CommandMailbox::Close() {
  std::deque<std::unique_ptr<EngineCommand>> late;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    late.swap(queue_);
  }
  for (auto& command : late) {
    command->done.set_value(absl::UnavailableError("the dataplane has stopped"));
  }
}

}  // namespace tunnelagent::dataplane
