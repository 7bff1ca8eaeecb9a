// tunnel-agent: serves tunnelagent.v1.TunnelService, keeps the desired tunnels in --state_dir,
// moves their packets through the io_uring dataplane and serves /metrics.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/grpc_service.h"
#include "agent/link_control.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/state_store.h"
#include "agent/tunnel_manager.h"
#include "dataplane/netlink.h"
#include "dataplane/uring_engine.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/exposer.h"

ABSL_FLAG(std::string, grpc_listen, "127.0.0.1:50051",
          "gRPC listen address: host:port or unix:/path");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9476",
          "host:port serving Prometheus /metrics; empty disables it");
ABSL_FLAG(std::string, state_dir, "/var/lib/tunnel-agent",
          "Directory of the desired-state file (tunnels.json)");

ABSL_FLAG(uint32_t, device_reads_per_tunnel, 8,
          "Dataplane: reads kept in flight on each tunnel device");
ABSL_FLAG(uint32_t, socket_receives, 64,
          "Dataplane: receives kept in flight on each underlay socket");

namespace tunnelagent::agent {
namespace {

constexpr char kVersion[] = "0.1.0";

dataplane::UringEngineOptions EngineOptionsFromFlags() {
  dataplane::UringEngineOptions options;
  options.device_reads_per_tunnel = absl::GetFlag(FLAGS_device_reads_per_tunnel);
  options.socket_receives = absl::GetFlag(FLAGS_socket_receives);
  return options;
}

int Run() {
  // Signals are taken by one thread with sigwait: blocked here, before any thread starts, so
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<dataplane::Netlink>> netlink = dataplane::Netlink::Open();
  if (!netlink.ok()) {
    Log("FATAL", "netlink: %s", netlink.status().ToString());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<dataplane::UringEngine>> engine =
      dataplane::UringEngine::Start(EngineOptionsFromFlags());
  if (!engine.ok()) {
    Log("FATAL", "dataplane: %s", engine.status().ToString());
    return 1;
  }
  Log("INFO", "dataplane: %s backend started", (*engine)->backend_name());

  FileStateStore store(absl::GetFlag(FLAGS_state_dir));
  KernelLinkControl links(netlink->get());
  TunnelManager manager(&links, engine->get(), &store, TunnelManager::Options{});
  if (absl::Status status = manager.Restore(); !status.ok()) {
    // The file is left as it is, for an operator to look at.
    Log("FATAL", "state: %s", status.ToString());
    return 1;
  }
  for (const TunnelView& view : manager.List()) {
    if (view.status.state == OperState::kUp) {
      Log("INFO", "restored tunnel %s (ifindex %d, mtu %d)", view.spec.name, view.status.ifindex,
          view.status.mtu);
    } else {
      Log("ERROR", "tunnel %s could not be restored: %s", view.spec.name, view.status.reason);
    }
  }

  std::unique_ptr<prometheus::Exposer> exposer;
  auto metrics = std::make_shared<AgentMetrics>(&manager, engine->get(), kVersion);
  if (std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
    try {  // prometheus-cpp reports a failed bind by exception
      exposer = std::make_unique<prometheus::Exposer>(listen);
    } catch (const std::exception& e) {
      Log("FATAL", "metrics: cannot listen on %s: %s", listen, e.what());
      return 1;
    }
    exposer->RegisterCollectable(metrics);
    Log("INFO", "metrics: serving http://%s/metrics", listen);
  }

  // Reflection must be able to describe grpc.health.v1.Health: touching the descriptor keeps
  // the compiled-in health.proto linked and registered.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  TunnelServiceImpl service(&manager);
  grpc::ServerBuilder builder;
  const std::string listen = absl::GetFlag(FLAGS_grpc_listen);
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!absl::StartsWith(listen, "unix:") && port == 0)) {
    Log("FATAL", "grpc: cannot listen on %s", listen);
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  Log("INFO", "grpc: serving tunnelagent.v1.TunnelService on %s", listen);

  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    Log("INFO", "received %s, shutting down", signal == SIGTERM ? "SIGTERM" : "SIGINT");
    server->GetHealthCheckService()->SetServingStatus(false);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  waiter.join();
  // Devices go with the process; the desired state stays on disk for the next start.
  manager.Shutdown();
  Log("INFO", "stopped");
  return 0;
}

}  // namespace
}  // namespace tunnelagent::agent

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tunnel-agent [--grpc_listen=ADDR] [--metrics_listen=ADDR] [--state_dir=DIR]\n"
      "Creates GRE and IPIP tunnels on request over gRPC (tunnelagent.v1.TunnelService).");
  absl::ParseCommandLine(argc, argv);
  return tunnelagent::agent::Run();
}
