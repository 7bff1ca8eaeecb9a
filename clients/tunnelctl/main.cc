// tunnelctl: the operator CLI of tunnel-agent. Parses the command line (args.h), makes one
// gRPC call with a deadline, prints the result (output.h).
//
// Exit status: 0 success, 1 usage error, 2 the call failed (refused by the agent, agent
// unreachable, deadline exceeded) or the result could not be written.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/tunnelctl/args.h"
#include "clients/tunnelctl/output.h"
#include "google/protobuf/empty.pb.h"
#include "grpcpp/grpcpp.h"
#include "tunnelagent/v1/tunnel.grpc.pb.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::tunnelctl {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;
constexpr int kExitFailed = 2;

int Fail(absl::string_view problem) {
  std::cerr << "tunnelctl: " << problem << "\n";
  return kExitFailed;
}

int RpcFailed(absl::string_view method, const grpc::Status& status) {
  return Fail(FormatRpcError(method, status.error_code(), status.error_message()));
}

// Writes `text` to stdout; a write error (full disk, closed pipe) is a failure.
int Print(const absl::StatusOr<std::string>& text) {
  if (!text.ok()) return Fail(text.status().message());
  std::cout << *text;
  if (!std::cout.flush()) return Fail("cannot write the output");
  return kExitOk;
}

int PrintTunnel(const Command& command, const v1::Tunnel& tunnel) {
  if (command.output == OutputFormat::kJson) return Print(FormatJson(tunnel));
  return Print(FormatTunnelDetail(tunnel));
}

int Run(const Command& command) {
  if (command.verb == Verb::kHelp) return Print(Usage());
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(command.agent, grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::TunnelService::Stub> stub = v1::TunnelService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + command.timeout);

  switch (command.verb) {
    case Verb::kCreate: {
      v1::CreateTunnelRequest request;
      *request.mutable_tunnel() = command.tunnel;
      v1::Tunnel response;
      grpc::Status status = stub->CreateTunnel(&context, request, &response);
      if (!status.ok()) return RpcFailed("CreateTunnel", status);
      return PrintTunnel(command, response);
    }
    case Verb::kGet: {
      v1::GetTunnelRequest request;
      request.set_name(command.name);
      v1::Tunnel response;
      grpc::Status status = stub->GetTunnel(&context, request, &response);
      if (!status.ok()) return RpcFailed("GetTunnel", status);
      return PrintTunnel(command, response);
    }
    case Verb::kList: {
      v1::ListTunnelsResponse response;
      grpc::Status status = stub->ListTunnels(&context, v1::ListTunnelsRequest(), &response);
      if (!status.ok()) return RpcFailed("ListTunnels", status);
      if (command.output == OutputFormat::kJson) return Print(FormatJson(response));
      return Print(FormatTunnelTable(response));
    }
    case Verb::kDelete: {
      v1::DeleteTunnelRequest request;
      request.set_name(command.name);
      google::protobuf::Empty response;
      grpc::Status status = stub->DeleteTunnel(&context, request, &response);
      if (!status.ok()) return RpcFailed("DeleteTunnel", status);
      // Silent on success, like ip; JSON readers still get a document.
      if (command.output == OutputFormat::kJson) return Print(FormatJson(response));
      return kExitOk;
    }
    case Verb::kHelp:
      break;
  }
  return Print(Usage());  // Not reached: handled above.
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  const char* env_agent = std::getenv("TUNNELCTL_AGENT");
  absl::StatusOr<Command> command = ParseArgs(args, env_agent != nullptr ? env_agent : "");
  if (!command.ok()) {
    std::cerr << "tunnelctl: " << command.status().message() << "\n"
              << "see 'tunnelctl help'\n";
    return kExitUsage;
  }
  return Run(*command);
}

}  // namespace
}  // namespace tunnelagent::tunnelctl

int main(int argc, char** argv) { return tunnelagent::tunnelctl::Main(argc, argv); }
