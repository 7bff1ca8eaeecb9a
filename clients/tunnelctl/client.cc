#include "clients/tunnelctl/client.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "clients/common/request_id.h"
#include "clients/tunnelctl/apply_file.h"
#include "clients/tunnelctl/output.h"
#include "google/protobuf/empty.pb.h"

namespace tunnelagent::tunnelctl {
namespace {

constexpr int kAttempts = 2;  // an UNAVAILABLE call is retried once

class Runner {
 public:
  Runner(const Command& command, v1::TunnelService::StubInterface& stub, const RunOptions& options,
         std::ostream& out, std::ostream& err)
      : command_(command), stub_(stub), options_(options), out_(out), err_(err) {}

  int Run() {
    switch (command_.verb) {
      case Verb::kCreate:
        return Create();
      case Verb::kGet:
        return Get();
      case Verb::kList:
        return List();
      case Verb::kUpdate:
        return Update();
      case Verb::kDelete:
        return Delete();
      case Verb::kWatch:
        return Watch();
      case Verb::kApply:
        return Apply();
      case Verb::kInfo:
        return Info();
      case Verb::kPeerCreate:
        return PeerCreate();
      case Verb::kPeerGet:
        return PeerGet();
      case Verb::kPeerList:
        return PeerList();
      case Verb::kPeerUpdate:
        return PeerUpdate();
      case Verb::kPeerDelete:
        return PeerDelete();
      case Verb::kPeerApply:
        return PeerApply();
      case Verb::kHelp:
        break;
      case Verb::kVersion:
        return Print(VersionLine());
    }
    return Print(Usage());
  }

 private:
  bool json() const { return command_.output == OutputFormat::kJson; }

  int Fail(absl::string_view problem) {
    err_ << "tunnelctl: " << problem << "\n" << std::flush;
    return kExitAgentFailed;
  }

  int RpcFailed(absl::string_view method, const grpc::Status& status) {
    return Fail(FormatRpcError(method, status.error_code(), status.error_message()));
  }

  // Writes `text` to out_; a write error (full disk, closed pipe) is a failure.
  int Print(const absl::StatusOr<std::string>& text) {
    if (!text.ok()) return Fail(text.status().message());
    out_ << *text;
    if (!out_.flush()) return Fail("cannot write the output");
    return kExitOk;
  }

  int PrintTunnel(const v1::Tunnel& tunnel) {
    return Print(json() ? FormatJson(tunnel) : FormatTunnelDetail(tunnel));
  }

  // The id of this run's mutating call: --request-id, else made once.
  std::string RequestId() {
    if (!command_.request_id.empty()) return command_.request_id;
    if (!generated_id_.has_value()) {
      generated_id_ = options_.new_request_id ? options_.new_request_id() : clients::NewRequestId();
    }
    return *generated_id_;
  }

  void Prepare(grpc::ClientContext* context, bool deadline) const {
    if (deadline) context->set_deadline(std::chrono::system_clock::now() + command_.timeout);
    clients::AddToken(context, options_.token);
  }

  // Makes a unary call, each attempt with a fresh context and deadline; retries once on
  // UNAVAILABLE, when the channel is connected again. Mutating calls carry a request id, so
  // the retry has no second effect.
  template <typename Call>
  grpc::Status CallWithRetry(Call call) {
    for (int attempt = 1;; ++attempt) {
      grpc::ClientContext context;
      Prepare(&context, /*deadline=*/true);
      grpc::Status status = call(&context);
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= kAttempts) {
        return status;
      }
      if (options_.channel != nullptr) {
        const auto wait = std::min<std::chrono::milliseconds>(kRetryWait, command_.timeout);
        if (!options_.channel->WaitForConnected(std::chrono::system_clock::now() + wait)) {
          return status;  // still unreachable: its error says more than a second one would
        }
      } else {
        std::this_thread::sleep_for(options_.retry_delay);
      }
    }
  }

  int Create() {
    v1::CreateTunnelRequest request;
    *request.mutable_tunnel() = command_.tunnel;
    request.set_request_id(RequestId());
    v1::Tunnel response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.CreateTunnel(c, request, &response); });
    if (!status.ok()) return RpcFailed("CreateTunnel", status);
    return PrintTunnel(response);
  }

  int Get() {
    v1::GetTunnelRequest request;
    request.set_name(command_.name);
    v1::Tunnel response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.GetTunnel(c, request, &response); });
    if (!status.ok()) return RpcFailed("GetTunnel", status);
    return PrintTunnel(response);
  }

  // Every page of a list call into `all`: `call(context, request, page)` asks for one page,
  // `items(response)` is the response's repeated field. kExitOk, or the exit code of a failure
  // (printed).
  template <typename Request, typename Response, typename Call, typename Items>
  int AllPages(const char* method, Request request, Call call, Items items, Response* all) {
    request.clear_page_token();
    while (true) {
      Response page;
      grpc::Status status =
          CallWithRetry([&](grpc::ClientContext* c) { return call(c, request, &page); });
      if (!status.ok()) return RpcFailed(method, status);
      for (auto& item : *items(page)) *items(*all)->Add() = std::move(item);
      if (page.next_page_token().empty()) return kExitOk;
      if (page.next_page_token() == request.page_token()) {
        return Fail(absl::StrCat(method, ": the agent returned the same page token twice"));
      }
      request.set_page_token(page.next_page_token());
    }
  }

  int List() {
    v1::ListTunnelsResponse all;
    const int failed = AllPages(
        "ListTunnels", command_.list,
        [&](grpc::ClientContext* c, const v1::ListTunnelsRequest& r, v1::ListTunnelsResponse* p) {
          return stub_.ListTunnels(c, r, p);
        },
        [](v1::ListTunnelsResponse& r) { return r.mutable_tunnels(); }, &all);
    if (failed != kExitOk) return failed;
    return Print(json() ? FormatJson(all) : FormatTunnelTable(all));
  }

  int Update() {
    v1::UpdateTunnelRequest request;
    *request.mutable_tunnel() = command_.tunnel;
    request.mutable_tunnel()->set_etag(command_.etag);
    *request.mutable_update_mask() = command_.update_mask;
    request.set_request_id(RequestId());
    v1::UpdateTunnelResponse response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.UpdateTunnel(c, request, &response); });
    if (!status.ok()) return RpcFailed("UpdateTunnel", status);
    return Print(json() ? FormatJson(response) : FormatUpdate(response));
  }

  int Delete() {
    v1::DeleteTunnelRequest request;
    request.set_name(command_.name);
    request.set_etag(command_.etag);
    request.set_request_id(RequestId());
    google::protobuf::Empty response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.DeleteTunnel(c, request, &response); });
    if (!status.ok()) return RpcFailed("DeleteTunnel", status);
    // Silent on success, like ip; JSON readers still get a document.
    return json() ? Print(FormatJson(response)) : kExitOk;
  }

  // Until interrupted (exit 0), --count events (exit 0), or the stream ends (exit 2).
  int Watch() {
    grpc::ClientContext context;
    Prepare(&context, /*deadline=*/false);
    v1::WatchTunnelsRequest request;
    request.set_since_revision(command_.since_revision);
    if (options_.interrupt != nullptr) options_.interrupt->Attach(&context);
    std::unique_ptr<grpc::ClientReaderInterface<v1::TunnelEvent>> reader =
        stub_.WatchTunnels(&context, request);
    uint64_t seen = 0;
    uint64_t last_revision = command_.since_revision;
    bool done = false;  // --count reached
    std::optional<int> failed;
    v1::TunnelEvent event;
    while (reader->Read(&event)) {
      if (event.revision() != 0) last_revision = event.revision();
      int printed = Print(json() ? FormatJsonLine(event) : FormatWatchEvent(event));
      if (printed != kExitOk) failed = printed;
      done = command_.count.has_value() && ++seen >= *command_.count;
      if (failed.has_value() || done) {
        context.TryCancel();
        while (reader->Read(&event)) {
        }
        break;
      }
    }
    grpc::Status status = reader->Finish();
    if (options_.interrupt != nullptr) options_.interrupt->Detach();
    if (failed.has_value()) return *failed;
    if (done || (options_.interrupt != nullptr && options_.interrupt->triggered())) return kExitOk;
    // Where a new watch should resume (--since), once anything was seen.
    std::string resume =
        last_revision != 0 ? absl::StrCat(" (last revision ", last_revision, ")") : "";
    if (status.ok()) return Fail(absl::StrCat("WatchTunnels: the agent ended the stream", resume));
    return Fail(absl::StrCat(
        FormatRpcError("WatchTunnels", status.error_code(), status.error_message()), resume));
  }

  int Apply() {
    v1::ApplyTunnelsRequest request = options_.apply;
    if (request.request_id().empty()) request.set_request_id(RequestId());
    v1::ApplyTunnelsResponse response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.ApplyTunnels(c, request, &response); });
    if (!status.ok()) return RpcFailed("ApplyTunnels", status);
    return Print(json() ? FormatJson(response) : FormatApplyChanges(response));
  }

  int Info() {
    v1::AgentInfo response;
    grpc::Status status = CallWithRetry([&](grpc::ClientContext* c) {
      return stub_.GetAgentInfo(c, v1::GetAgentInfoRequest(), &response);
    });
    if (!status.ok()) return RpcFailed("GetAgentInfo", status);
    return Print(json() ? FormatJson(response) : FormatAgentInfo(response));
  }

  int PrintPeer(const v1::Peer& peer) {
    return Print(json() ? FormatJson(peer) : FormatPeerDetail(peer));
  }

  int PeerCreate() {
    v1::CreatePeerRequest request;
    request.set_tunnel(command_.name);
    *request.mutable_peer() = command_.peer;
    request.set_request_id(RequestId());
    v1::Peer response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.CreatePeer(c, request, &response); });
    if (!status.ok()) return RpcFailed("CreatePeer", status);
    return PrintPeer(response);
  }

  int PeerGet() {
    v1::GetPeerRequest request;
    request.set_tunnel(command_.name);
    request.set_name(command_.peer.name());
    v1::Peer response;
    grpc::Status status =
        CallWithRetry([&](grpc::ClientContext* c) { return stub_.GetPeer(c, request, &response); });
    if (!status.ok()) return RpcFailed("GetPeer", status);
    return PrintPeer(response);
  }

  int PeerList() {
    v1::ListPeersRequest request;
    request.set_tunnel(command_.name);
    request.set_page_size(command_.list.page_size());
    v1::ListPeersResponse all;
    const int failed = AllPages(
        "ListPeers", request,
        [&](grpc::ClientContext* c, const v1::ListPeersRequest& r, v1::ListPeersResponse* p) {
          return stub_.ListPeers(c, r, p);
        },
        [](v1::ListPeersResponse& r) { return r.mutable_peers(); }, &all);
    if (failed != kExitOk) return failed;
    return Print(json() ? FormatJson(all) : FormatPeerTable(all));
  }

  int PeerUpdate() {
    v1::UpdatePeerRequest request;
    request.set_tunnel(command_.name);
    *request.mutable_peer() = command_.peer;
    request.mutable_peer()->set_etag(command_.etag);
    *request.mutable_update_mask() = command_.update_mask;
    request.set_request_id(RequestId());
    v1::Peer response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.UpdatePeer(c, request, &response); });
    if (!status.ok()) return RpcFailed("UpdatePeer", status);
    return PrintPeer(response);
  }

  int PeerDelete() {
    v1::DeletePeerRequest request;
    request.set_tunnel(command_.name);
    request.set_name(command_.peer.name());
    request.set_etag(command_.etag);
    request.set_request_id(RequestId());
    google::protobuf::Empty response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.DeletePeer(c, request, &response); });
    if (!status.ok()) return RpcFailed("DeletePeer", status);
    return json() ? Print(FormatJson(response)) : kExitOk;
  }

  int PeerApply() {
    v1::ApplyPeersRequest request = options_.apply_peers;
    if (request.request_id().empty()) request.set_request_id(RequestId());
    v1::ApplyPeersResponse response;
    grpc::Status status = CallWithRetry(
        [&](grpc::ClientContext* c) { return stub_.ApplyPeers(c, request, &response); });
    if (!status.ok()) return RpcFailed("ApplyPeers", status);
    return Print(json() ? FormatJson(response) : FormatPeerApplyChanges(response));
  }

  const Command& command_;
  v1::TunnelService::StubInterface& stub_;
  const RunOptions& options_;
  std::ostream& out_;
  std::ostream& err_;
  std::optional<std::string> generated_id_;
};

}  // namespace

absl::StatusOr<Inputs> LoadInputs(const Command& command, std::istream& in) {
  int from_stdin = 0;
  for (const std::string* path :
       {&command.token_file, &command.tls.ca_file, &command.tls.cert_file, &command.tls.key_file}) {
    if (*path == "-") ++from_stdin;
  }
  const bool apply = command.verb == Verb::kApply || command.verb == Verb::kPeerApply;
  if (apply && command.apply_file == "-") ++from_stdin;
  if (from_stdin > 1) return absl::InvalidArgumentError("only one file can be read from stdin");

  Inputs inputs;
  absl::StatusOr<clients::Credentials> credentials =
      clients::LoadCredentials(command.tls, command.token_file, command.env_token, in);
  if (!credentials.ok()) return credentials.status();
  inputs.token = credentials->token;
  inputs.credentials = credentials->channel;

  if (command.verb == Verb::kApply) {
    absl::StatusOr<std::string> content = ReadInputFile(command.apply_file, in);
    if (!content.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("apply: ", content.status().message()));
    }
    absl::StatusOr<v1::ApplyTunnelsRequest> request =
        ParseApplyFile(*content, command.apply_file == "-" ? "stdin" : command.apply_file, command);
    if (!request.ok()) return request.status();
    inputs.apply = *std::move(request);
  } else if (command.verb == Verb::kPeerApply) {
    absl::StatusOr<std::string> content = ReadInputFile(command.apply_file, in);
    if (!content.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("peer apply: ", content.status().message()));
    }
    absl::StatusOr<v1::ApplyPeersRequest> request = ParsePeerApplyFile(
        *content, command.apply_file == "-" ? "stdin" : command.apply_file, command);
    if (!request.ok()) return request.status();
    inputs.apply_peers = *std::move(request);
  }
  return inputs;
}

std::shared_ptr<grpc::Channel> Dial(const Command& command, const Inputs& inputs) {
  clients::Credentials credentials;
  credentials.token = inputs.token;
  credentials.channel = inputs.credentials;
  return clients::Dial(command.agent, command.tls, credentials);
}

void Interrupt::Trigger() {
  absl::MutexLock lock(&mu_);
  triggered_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool Interrupt::triggered() const {
  absl::MutexLock lock(&mu_);
  return triggered_;
}

void Interrupt::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  context_ = context;
  if (triggered_) context_->TryCancel();
}

void Interrupt::Detach() {
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
}

int RunCommand(const Command& command, v1::TunnelService::StubInterface& stub,
               const RunOptions& options, std::ostream& out, std::ostream& err) {
  return Runner(command, stub, options, out, err).Run();
}

int Main(const std::vector<std::string>& args, const Process& process) {
  std::ostream& out = *process.out;
  std::ostream& err = *process.err;
  absl::StatusOr<Command> command = ParseArgs(args, process.env);
  if (!command.ok()) {
    err << "tunnelctl: " << command.status().message() << "\n"
        << "see 'tunnelctl help'\n"
        << std::flush;
    return kExitBadInput;
  }
  if (command->verb == Verb::kHelp || command->verb == Verb::kVersion) {
    out << (command->verb == Verb::kHelp ? Usage() : VersionLine());
    if (!out.flush()) {
      err << "tunnelctl: cannot write the output\n" << std::flush;
      return kExitAgentFailed;
    }
    return kExitOk;
  }
  if (command->verb == Verb::kWatch && process.before_watch) process.before_watch();

  absl::StatusOr<Inputs> inputs = LoadInputs(*command, *process.in);
  if (!inputs.ok()) {
    err << "tunnelctl: " << inputs.status().message() << "\n" << std::flush;
    return kExitBadInput;
  }

  std::shared_ptr<grpc::Channel> channel = Dial(*command, *inputs);
  std::unique_ptr<v1::TunnelService::Stub> stub = v1::TunnelService::NewStub(channel);
  RunOptions options;
  options.channel = channel;
  options.token = inputs->token;
  options.apply = inputs->apply;
  options.apply_peers = inputs->apply_peers;
  options.new_request_id = process.new_request_id;
  options.interrupt = process.interrupt;
  return RunCommand(*command, *stub, options, out, err);
}

}  // namespace tunnelagent::tunnelctl
