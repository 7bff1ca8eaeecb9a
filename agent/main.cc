// tunnel-agent: serves tunnelagent.v1.TunnelService, keeps the desired tunnels in --state_dir,
// moves their packets through the dataplane (io_uring, or epoll where io_uring is forbidden)
// and serves /metrics.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "agent/grpc_metrics.h"
#include "agent/grpc_service.h"
#include "agent/link_control.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/server_security.h"
#include "agent/state_store.h"
#include "agent/tunnel_manager.h"
#include "dataplane/cpu_affinity.h"
#include "dataplane/engine_factory.h"
#include "dataplane/netlink.h"
#include "dataplane/uring_engine.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/support/server_interceptor.h"
#include "prometheus/exposer.h"

ABSL_FLAG(std::string, grpc_listen, "127.0.0.1:50051",
          "gRPC listen address: host:port or unix:/path");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9476",
          "host:port serving Prometheus /metrics; empty disables it");
ABSL_FLAG(std::string, state_dir, "/var/lib/tunnel-agent",
          "Directory of the desired-state file (tunnels.json)");

ABSL_FLAG(std::string, tls_cert, "",
          "PEM file of the server's certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the server's private key (with --tls_cert)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM file of the CA that must have signed clients' certificates (mutual TLS)");
ABSL_FLAG(bool, insecure, false,
          "Allow plaintext gRPC on a listen address that is not loopback or a unix socket");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token every call but grpc.health.v1.Health must carry "
          "(metadata authorization: Bearer <token>)");

ABSL_FLAG(std::string, node_name, "",
          "Name reported by GetAgentInfo; default $NODE_NAME, else the host name");
ABSL_FLAG(uint32_t, max_tunnels, 4096, "Creates beyond this many tunnels fail");
ABSL_FLAG(bool, keep_devices, false,
          "On SIGTERM leave the tunnel devices in place, so the next start re-attaches to them "
          "(a restart without re-creating links); by default they are removed");
ABSL_FLAG(std::string, io_backend, "auto",
          "Dataplane backend: auto (io_uring, else epoll when io_uring is refused, e.g. by a "
          "container's seccomp profile), uring (io_uring only) or epoll");
ABSL_FLAG(uint32_t, device_reads_per_tunnel, 8,
          "Dataplane: reads kept in flight on each tunnel device");
ABSL_FLAG(bool, tun_offload, true,
          "Dataplane: TUN devices with offloads (virtio-net header, checksum, TSO/USO): the host "
          "hands over 64 KiB super-packets, split here, and received TCP is coalesced back");
ABSL_FLAG(uint32_t, dataplane_workers, 0,
          "Dataplane: threads moving packets, each with its own ring and sockets, receive "
          "spread between them by inner flow; 0: one per CPU the agent may run on, no more than "
          "its cgroup's CPU limit (a container's limits.cpu, rounded up) allows, at most 16");
ABSL_FLAG(std::string, dataplane_cpus, "",
          "Dataplane: CPUs to pin the workers to, as a CPU list (\"2-5\", \"0,2\"): worker i on "
          "the i-th, round again when there are more workers; with --dataplane_workers=0, one "
          "worker per CPU listed. Empty: not pinned");
ABSL_FLAG(uint32_t, socket_receives, 64,
          "Dataplane: receives kept in flight on each underlay socket");

namespace tunnelagent::agent {
namespace {

constexpr char kVersion[] = "0.1.0";
constexpr size_t kMaxDefaultWorkers = 16;  // --dataplane_workers=0 on a large machine

// --node_name, else $NODE_NAME (Kubernetes' downward API), else the host name.
std::string NodeName() {
  if (std::string flag = absl::GetFlag(FLAGS_node_name); !flag.empty()) return flag;
  if (const char* env = getenv("NODE_NAME"); env != nullptr && *env != 0) return env;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

absl::StatusOr<dataplane::UringEngineOptions> EngineOptionsFromFlags() {
  dataplane::UringEngineOptions options;
  options.device_reads_per_tunnel = absl::GetFlag(FLAGS_device_reads_per_tunnel);
  options.socket_receives = absl::GetFlag(FLAGS_socket_receives);
  if (std::string list = absl::GetFlag(FLAGS_dataplane_cpus); !list.empty()) {
    absl::StatusOr<std::vector<int>> cpus = dataplane::ParseCpuList(list);
    absl::Status status = cpus.ok() ? dataplane::CheckCpusAllowed(*cpus) : cpus.status();
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dataplane_cpus=", list, ": ", status.message()));
    }
    options.cpus = std::move(*cpus);
  }
  options.workers = absl::GetFlag(FLAGS_dataplane_workers);
  if (options.workers == 0) {
    size_t cpus = options.cpus.empty() ? std::max<size_t>(dataplane::AllowedCpus().size(), 1)
                                       : options.cpus.size();
    // A CPU quota (a container's CPU limit) allows fewer busy threads than the mask lists:
    // as many workers as it has whole CPUs, rounded up, so none is throttled for its share.
    if (std::optional<double> limit = dataplane::CgroupCpuLimit()) {
      cpus = std::min(cpus, static_cast<size_t>(std::max(1.0, std::ceil(*limit))));
    }
    options.workers = static_cast<unsigned>(std::min(cpus, kMaxDefaultWorkers));
  }
  return options;
}

ServerSecurityFlags SecurityFlagsFromFlags() {
  ServerSecurityFlags flags;
  flags.listen = absl::GetFlag(FLAGS_grpc_listen);
  flags.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  flags.tls_key = absl::GetFlag(FLAGS_tls_key);
  flags.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  flags.insecure = absl::GetFlag(FLAGS_insecure);
  flags.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  return flags;
}

int Run() {
  // Signals are taken by one thread with sigwait: blocked here, before any thread starts, so
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Before anything is touched: a refused configuration leaves no device behind.
  absl::StatusOr<ServerSecurity> security = ResolveServerSecurity(SecurityFlagsFromFlags());
  if (!security.ok()) {
    Log("FATAL", "grpc: %s", security.status().message());
    return 1;
  }

  absl::StatusOr<std::unique_ptr<dataplane::Netlink>> netlink = dataplane::Netlink::Open();
  if (!netlink.ok()) {
    Log("FATAL", "netlink: %s", netlink.status().ToString());
    return 1;
  }
  absl::StatusOr<dataplane::IoBackend> backend =
      dataplane::ParseIoBackend(absl::GetFlag(FLAGS_io_backend));
  if (!backend.ok()) {
    Log("FATAL", "--io_backend: %s", backend.status().message());
    return 1;
  }
  absl::StatusOr<dataplane::UringEngineOptions> engine_options = EngineOptionsFromFlags();
  if (!engine_options.ok()) {
    Log("FATAL", "%s", engine_options.status().message());
    return 1;
  }
  std::string fallback_reason;
  absl::StatusOr<std::unique_ptr<dataplane::PacketEngine>> engine =
      dataplane::StartEngine(*backend, *engine_options, &fallback_reason);
  if (!engine.ok()) {
    Log("FATAL", "dataplane: %s", engine.status().ToString());
    return 1;
  }
  if (!fallback_reason.empty()) {
    Log("WARNING", "dataplane: io_uring unavailable (%s); using the epoll backend",
        fallback_reason);
  }
  const std::string worker_cpus = dataplane::FormatCpuList(engine_options->cpus);
  Log("INFO", "dataplane: %s backend started, %d worker(s)%s", (*engine)->backend_name(),
      static_cast<int>((*engine)->workers()),
      worker_cpus.empty() ? "" : absl::StrCat(", pinned to CPUs ", worker_cpus).c_str());

  FileStateStore store(absl::GetFlag(FLAGS_state_dir));
  KernelLinkControl links(netlink->get(), absl::GetFlag(FLAGS_tun_offload),
                          (*engine)->workers() > 1);
  TunnelManager::Options manager_options;
  manager_options.max_tunnels = absl::GetFlag(FLAGS_max_tunnels);
  manager_options.keep_devices = absl::GetFlag(FLAGS_keep_devices);
  const absl::Time start_time = absl::Now();
  TunnelManager manager(&links, engine->get(), &store, manager_options);
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
  auto metrics = std::make_shared<AgentMetrics>(&manager, engine->get(), kVersion,
                                                /*io_uring_fallback=*/!fallback_reason.empty());
  // Outlives the server below, whose interceptors record into it.
  absl::StatusOr<std::vector<GrpcMetrics::Method>> grpc_methods =
      GrpcMetrics::MethodsOf({"tunnelagent.v1.TunnelService", "grpc.health.v1.Health",
                              "grpc.reflection.v1alpha.ServerReflection"});
  if (!grpc_methods.ok()) {
    Log("FATAL", "metrics: %s", grpc_methods.status().ToString());
    return 1;
  }
  GrpcMetrics grpc_metrics(*grpc_methods);
  if (std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
    try {  // prometheus-cpp reports a failed bind by exception
      exposer = std::make_unique<prometheus::Exposer>(listen);
    } catch (const std::exception& e) {
      Log("FATAL", "metrics: cannot listen on %s: %s", listen, e.what());
      return 1;
    }
    exposer->RegisterCollectable(metrics);
    exposer->RegisterCollectable(grpc_metrics.registry());
    Log("INFO", "metrics: serving http://%s/metrics", listen);
  }

  // Reflection must be able to describe grpc.health.v1.Health: touching the descriptor keeps
  // the compiled-in health.proto linked and registered.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  TunnelServiceImpl service(
      &manager, AgentIdentity{kVersion, NodeName(), (*engine)->backend_name(), start_time,
                              static_cast<uint32_t>((*engine)->workers()), worker_cpus});
  grpc::ServerBuilder builder;
  const std::string listen = absl::GetFlag(FLAGS_grpc_listen);
  int port = 0;
  builder.AddListeningPort(listen, MakeServerCredentials(*security), &port);
  ApplyServerLimits(ServerLimits{}, &builder);
  builder.RegisterService(&service);
  // Called in order on every call that passed the bearer check.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  // First, so it times the whole call (calls refused by the token check never get here).
  interceptors.push_back(grpc_metrics.NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!absl::StartsWith(listen, "unix:") && port == 0)) {
    Log("FATAL", "grpc: cannot listen on %s", listen);
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  Log("INFO", "grpc: serving tunnelagent.v1.TunnelService on %s (%s)", listen,
      DescribeServerSecurity(*security));

  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    Log("INFO", "received %s, shutting down", signal == SIGTERM ? "SIGTERM" : "SIGINT");
    server->GetHealthCheckService()->SetServingStatus(false);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  // Operational state follows the devices (someone may `ip link set gre1 down`).
  absl::Notification stopping;
  std::thread monitor([&] {
    while (!stopping.WaitForNotificationWithTimeout(absl::Seconds(1))) manager.RefreshStates();
  });
  server->Wait();
  waiter.join();
  stopping.Notify();
  monitor.join();
  // The desired state stays on disk for the next start; the devices go unless --keep_devices.
  manager.Shutdown();
  Log("INFO", "stopped");
  return 0;
}

}  // namespace
}  // namespace tunnelagent::agent

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tunnel-agent [--grpc_listen=ADDR] [--metrics_listen=ADDR] [--state_dir=DIR]\n"
      "             [--tls_cert=PEM --tls_key=PEM [--tls_client_ca=PEM]] [--insecure]\n"
      "             [--auth_token_file=FILE] [--io_backend=auto|uring|epoll]\n"
      "Creates GRE, IPIP, SIT and IPv6 tunnels on request over gRPC "
      "(tunnelagent.v1.TunnelService).");
  absl::ParseCommandLine(argc, argv);
  // One descriptor per tunnel device: the usual soft limit of 1024 (systemd services,
  // containers) would cap the agent near 1,000 tunnels. Raise it to the hard limit.
  if (rlimit files{}; getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  return tunnelagent::agent::Run();
}
