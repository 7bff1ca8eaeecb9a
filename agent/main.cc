// tunnel-agent: serves tunnelagent.v1.TunnelService, keeps the desired tunnels in --state_dir,
// moves their packets through the dataplane (io_uring, or epoll where io_uring is forbidden)
// and serves /metrics.
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "agent/api_server.h"
#include "agent/caller_identity.h"
#include "agent/fd_budget.h"
#include "agent/fleet_registration.h"
#include "agent/grpc_metrics.h"
#include "agent/grpc_service.h"
#include "agent/handover.h"
#include "agent/library_log.h"
#include "agent/link_control.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/node_guard.h"
#include "agent/process_metrics.h"
#include "agent/server_security.h"
#include "agent/state_store.h"
#include "agent/takeover.h"
#include "agent/tunnel_manager.h"
#include "agent/validation.h"
#include "common/metrics_endpoint.h"
#include "dataplane/backends/uring_engine.h"
#include "dataplane/control/engine_factory.h"
#include "dataplane/cpu_affinity.h"
#include "dataplane/netlink.h"
#include "dataplane/netlink_monitor.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/support/server_interceptor.h"

ABSL_FLAG(std::string, grpc_listen, "unix:/run/tunnel-agent/agent.sock",
          "gRPC listen address: unix:/path (mode 0660: root, the agent's user and "
          "--grpc_socket_group may call) or host:port (needs --auth_token_file or TLS, else "
          "--insecure)");
ABSL_FLAG(std::string, grpc_socket_group, "",
          "Group (name or gid) given the unix socket of --grpc_listen: its members may call the "
          "agent; default the agent's own group");
ABSL_FLAG(std::string, health_listen, "",
          "host:port serving grpc.health.v1.Health alone, in plaintext, for probes without a "
          "token or certificate (kubelet's gRPC probes); empty disables it");
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
          "Allow plaintext gRPC on TCP without a bearer token, or on an address that is not "
          "loopback: anyone who can reach the port may call the agent");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token every call but grpc.health.v1.Health must carry "
          "(metadata authorization: Bearer <token>)");

ABSL_FLAG(std::string, node_name, "",
          "Name reported by GetAgentInfo, and the node's name in its fleet (--fleet_etcd); "
          "default $NODE_NAME, else the host name");
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
ABSL_FLAG(uint32_t, max_addresses_per_tunnel, 256,
          "Addresses one tunnel may have; more are INVALID_ARGUMENT");
ABSL_FLAG(uint32_t, max_routes_per_tunnel, 1024,
          "Routes one tunnel may have; more are INVALID_ARGUMENT");
ABSL_FLAG(uint32_t, max_labels_per_tunnel, 64,
          "Labels one tunnel may have; more are INVALID_ARGUMENT");
ABSL_FLAG(uint32_t, max_label_key_length, 63, "Longest label key, in bytes");
ABSL_FLAG(uint32_t, max_label_value_length, 63, "Longest label value, in bytes");
ABSL_FLAG(uint32_t, max_prefixes_per_apply, 65536,
          "Addresses and routes one ApplyTunnels may carry in all (each is a netlink request); "
          "more are INVALID_ARGUMENT");
ABSL_FLAG(uint32_t, max_peers_per_tunnel, 16384,
          "Peers one multipoint tunnel may have; more are RESOURCE_EXHAUSTED");
ABSL_FLAG(uint32_t, max_prefixes_per_peer, 1024,
          "Allowed prefixes one peer of a multipoint tunnel may have; more are INVALID_ARGUMENT");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text (time, level, event and key=value fields) or json (one "
          "object a line: time, level, msg and the same fields)");
ABSL_FLAG(uint32_t, grpc_max_connections, 512,
          "API connections open at once on the agent's own listener (plaintext); more are closed "
          "at once. At most a quarter of the descriptor limit; that many descriptors are kept "
          "from tunnels for the API");
ABSL_FLAG(uint32_t, grpc_max_connections_per_peer, 128,
          "API connections one peer (a uid on the unix socket, an address on TCP) may hold; at "
          "most half of --grpc_max_connections");
ABSL_FLAG(absl::Duration, grpc_first_bytes_timeout, absl::Seconds(5),
          "A new API connection that sends nothing for this long is closed");
ABSL_FLAG(absl::Duration, grpc_idle_timeout, absl::Minutes(2),
          "API connections without a call for this long are closed (clients reconnect)");
ABSL_FLAG(absl::Duration, api_self_check_interval, absl::Seconds(5),
          "How often the agent calls its own API over its listener (GetAgentInfo; a TLS "
          "handshake on TLS); 0 disables. Failing --api_self_check_failures times in a row "
          "turns health NOT_SERVING and rebuilds gRPC's own listener");
ABSL_FLAG(absl::Duration, api_self_check_timeout, absl::Seconds(2),
          "Deadline of one self-check call");
ABSL_FLAG(uint32_t, api_self_check_failures, 3,
          "Self-checks failed in a row before health turns NOT_SERVING");
ABSL_FLAG(uint32_t, socket_receives, 64,
          "Dataplane: receives kept in flight on each underlay socket");
ABSL_FLAG(bool, takeover, false,
          "Hot upgrade: take over from the agent running on the same --state_dir (same flags), "
          "which hands over its devices' queues, underlay sockets and listeners, so no packet "
          "is lost; it exits once this one serves. A running agent of another handover "
          "protocol is stopped instead (an ordinary restart, devices kept). With no agent "
          "running, an ordinary start. SIGUSR2 makes a running agent start the binary at its "
          "path with --takeover");
ABSL_FLAG(std::string, after_handover, "exit",
          "What the agent does once it has handed over to a new one (--takeover): exit, or "
          "wait (idle, until SIGTERM: a Kubernetes DaemonSet's old pod must not exit before "
          "kubelet stops it, or it would be restarted and take over back)");
ABSL_FLAG(uint32_t, test_only_handover_protocol_version, 0,
          "Tests only: speak this handover protocol version instead of the agent's own (0), to "
          "see a mismatch refused");

// A fleet on etcd: the node registers itself under /tunnel-agent/<fleet>/nodes/<node>, bound to
// a lease the agent keeps alive (agent/fleet_registration.h).
ABSL_FLAG(std::string, fleet_etcd, "",
          "Fleet: etcd endpoints to register this node with, comma-separated as etcdctl's "
          "--endpoints (HOST:PORT, http:// or https://); empty: no fleet");
ABSL_FLAG(std::string, fleet, "",
          "Fleet: its name (1-63 of [a-z0-9-_.]); required with --fleet_etcd");
ABSL_FLAG(std::string, advertise_prefixes, "",
          "Fleet: CIDRs other nodes route to this node through the fleet (its pod network), "
          "comma-separated");
ABSL_FLAG(std::string, fleet_underlay, "",
          "Fleet: this node's underlay addresses, comma-separated, where other nodes send its "
          "tunnels' packets; required with --fleet_etcd");
ABSL_FLAG(std::string, fleet_agent_endpoint, "",
          "Fleet: what a controller dials to reach this agent (HOST:PORT or unix:/PATH); default "
          "--grpc_listen when it is TCP on an address that is neither a wildcard nor loopback");
ABSL_FLAG(absl::Duration, fleet_lease_ttl, absl::Seconds(15),
          "Fleet: TTL of the registration's etcd lease (whole seconds, 2s to 1h), renewed every "
          "third of it: a node whose agent died leaves the fleet this long after");
ABSL_FLAG(std::string, fleet_etcd_ca, "", "Fleet: PEM CA bundle to verify etcd's certificate");
ABSL_FLAG(std::string, fleet_etcd_cert, "",
          "Fleet: PEM client certificate for etcd's --client-cert-auth (with --fleet_etcd_key)");
ABSL_FLAG(std::string, fleet_etcd_key, "", "Fleet: PEM private key of --fleet_etcd_cert");
ABSL_FLAG(std::string, fleet_etcd_user, "",
          "Fleet: etcd user to authenticate as (with --fleet_etcd_password_file)");
ABSL_FLAG(std::string, fleet_etcd_password_file, "",
          "Fleet: file holding the password of --fleet_etcd_user (one line)");

namespace tunnelagent::agent {
namespace {

constexpr char kVersion[] = TUNNEL_AGENT_VERSION;  // CMake's PROJECT_VERSION
constexpr size_t kMaxDefaultWorkers = 16;          // --dataplane_workers=0 on a large machine

// --node_name, else $NODE_NAME (Kubernetes' downward API), else the host name.
std::string NodeName() {
  if (std::string flag = absl::GetFlag(FLAGS_node_name); !flag.empty()) return flag;
  if (const char* env = getenv("NODE_NAME"); env != nullptr && *env != 0) return env;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

absl::StatusOr<dataplane::EngineOptions> EngineOptionsFromFlags() {
  dataplane::EngineOptions options;
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

FleetFlags FleetFlagsFromFlags() {
  return {.etcd = absl::GetFlag(FLAGS_fleet_etcd),
          .fleet = absl::GetFlag(FLAGS_fleet),
          .node = NodeName(),
          .advertise_prefixes = absl::GetFlag(FLAGS_advertise_prefixes),
          .underlay = absl::GetFlag(FLAGS_fleet_underlay),
          .agent_endpoint = absl::GetFlag(FLAGS_fleet_agent_endpoint),
          .grpc_listen = absl::GetFlag(FLAGS_grpc_listen),
          .lease_ttl = absl::GetFlag(FLAGS_fleet_lease_ttl),
          .etcd_ca = absl::GetFlag(FLAGS_fleet_etcd_ca),
          .etcd_cert = absl::GetFlag(FLAGS_fleet_etcd_cert),
          .etcd_key = absl::GetFlag(FLAGS_fleet_etcd_key),
          .etcd_user = absl::GetFlag(FLAGS_fleet_etcd_user),
          .etcd_password_file = absl::GetFlag(FLAGS_fleet_etcd_password_file)};
}

// What the node gives this agent alone, claimed before the dataplane starts or any device is
// touched: the state directory (locked, and proven writable) and the unix socket path of
// --grpc_listen (never taken from a live server). Destroyed last: the socket is removed and
// the lock released once nothing serves any more.
struct NodeClaim {
  std::optional<StateDirLock> state_lock;
  std::optional<NamespaceLock> namespace_lock;
  std::optional<gid_t> socket_group;
  // Plaintext without a token: the agent accepts itself (unix socket or TCP), caps connections
  // and knows each caller's uid and pid (or address). With a token or TLS only gRPC's own
  // listener enforces them: on a unix socket it listens on a socket staged out of reach,
  // published once it listens.
  std::unique_ptr<ApiListener> listener;
  std::optional<StagedUnixSocket> staged;
};

absl::Status Prefixed(absl::string_view prefix, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

// The caps of the agent's own listener on --grpc_listen, within the descriptor limit.
ListenerLimits ApiListenerLimits() {
  ListenerLimits limits;
  limits.max_connections =
      ApiConnectionsFor(FileLimit(), absl::GetFlag(FLAGS_grpc_max_connections));
  // One peer may take half the places at most, whatever the flag: the others keep theirs.
  limits.max_connections_per_peer =
      std::max<size_t>(1, std::min<size_t>(absl::GetFlag(FLAGS_grpc_max_connections_per_peer),
                                           limits.max_connections / 2));
  limits.first_bytes_timeout = absl::GetFlag(FLAGS_grpc_first_bytes_timeout);
  return limits;
}

// --health_listen's: probes are few.
ListenerLimits HealthListenerLimits() {
  ListenerLimits limits;
  limits.max_connections = 32;
  limits.max_connections_per_peer = 16;
  limits.first_bytes_timeout = absl::GetFlag(FLAGS_grpc_first_bytes_timeout);
  return limits;
}

// `handed`: what the agent this one takes over from handed over (the locks, the listeners),
// taken from it here; null: claimed anew. `lock_wait`: how long an agent that was asked to
// stop (a refused handover) may take to let go of the state directory.
absl::StatusOr<NodeClaim> ClaimNode(const ServerSecurity& security, HandedOver* handed,
                                    absl::Duration lock_wait) {
  NodeClaim claim;
  const std::string state_dir = absl::GetFlag(FLAGS_state_dir);
  const std::string dir_flag = absl::StrCat("--state_dir=", state_dir);
  if (absl::Status status = EnsureStateDir(state_dir); !status.ok()) {
    return Prefixed(dir_flag, status);
  }
  const int handed_lock =
      handed != nullptr ? handed->Take(handover::Descriptor::STATE_DIR_LOCK) : -1;
  absl::StatusOr<StateDirLock> lock = handed_lock >= 0
                                          ? StateDirLock::Adopt(handed_lock, state_dir)
                                          : StateDirLock::AcquireWithin(state_dir, lock_wait);
  if (!lock.ok()) return Prefixed(dir_flag, lock.status());
  claim.state_lock.emplace(*std::move(lock));
  if (absl::Status status = CheckStateDirWritable(state_dir); !status.ok()) {
    return Prefixed(dir_flag, status);
  }

  const std::string listen = absl::GetFlag(FLAGS_grpc_listen);
  const std::string group = absl::GetFlag(FLAGS_grpc_socket_group);
  const std::optional<std::string> path = UnixSocketPathOf(listen);
  if (!group.empty()) {
    if (!path.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--grpc_socket_group needs a unix:/path --grpc_listen, not ", listen));
    }
    absl::StatusOr<gid_t> gid = ResolveGroup(group);
    if (!gid.ok()) return Prefixed(absl::StrCat("--grpc_socket_group=", group), gid.status());
    claim.socket_group = *gid;
  }
  // Last: a second agent on the same directory or socket is told about those first.
  auto claim_namespace = [&claim, handed]() -> absl::Status {
    if (const int fd = handed != nullptr ? handed->Take(handover::Descriptor::NAMESPACE_LOCK) : -1;
        fd >= 0) {
      claim.namespace_lock.emplace(NamespaceLock::Adopt(fd));
      return absl::OkStatus();
    }
    absl::StatusOr<NamespaceLock> lock = NamespaceLock::Acquire();
    if (!lock.ok()) return lock.status();
    claim.namespace_lock.emplace(*std::move(lock));
    return absl::OkStatus();
  };
  const bool own_listener = !security.tls && security.auth_token.empty();
  if (const int fd = handed != nullptr ? handed->Take(handover::Descriptor::API_LISTENER) : -1;
      fd >= 0 && own_listener) {
    absl::StatusOr<std::unique_ptr<ApiListener>> listener = ApiListener::Adopt(
        fd,
        {.path = path.value_or(""), .group = claim.socket_group, .limits = ApiListenerLimits()});
    if (!listener.ok()) return Prefixed(absl::StrCat("--grpc_listen=", listen), listener.status());
    claim.listener = *std::move(listener);
    if (absl::Status status = claim_namespace(); !status.ok()) return status;
    return claim;
  } else if (fd >= 0) {
    close(fd);  // the running agent accepted itself, this one must let gRPC: flags differ
  }
  if (!path.has_value()) {
    if (own_listener && !absl::StartsWith(listen, "unix-abstract:")) {
      absl::StatusOr<std::unique_ptr<ApiListener>> listener =
          ApiListener::ListenTcp(listen, ApiListenerLimits());
      if (!listener.ok())
        return Prefixed(absl::StrCat("--grpc_listen=", listen), listener.status());
      claim.listener = *std::move(listener);
    }
    if (absl::Status status = claim_namespace(); !status.ok()) return status;
    return claim;
  }
  const std::string listen_flag = absl::StrCat("--grpc_listen=", listen);
  if (path->empty()) return absl::InvalidArgumentError(listen_flag + ": names no socket path");
  if (absl::Status status = EnsureSocketDirectory(*path); !status.ok()) {
    return Prefixed(listen_flag, status);
  }
  if (own_listener) {
    absl::StatusOr<std::unique_ptr<ApiListener>> listener = ApiListener::Listen(
        {.path = *path, .group = claim.socket_group, .limits = ApiListenerLimits()});
    if (!listener.ok()) return Prefixed(listen_flag, listener.status());
    claim.listener = *std::move(listener);
  } else {
    if (absl::Status status = ClaimSocketPath(*path); !status.ok()) {
      return Prefixed(listen_flag, status);
    }
    absl::StatusOr<StagedUnixSocket> staged = StagedUnixSocket::Prepare(*path);
    if (!staged.ok()) return Prefixed(listen_flag, staged.status());
    claim.staged.emplace(*std::move(staged));
  }
  if (absl::Status status = claim_namespace(); !status.ok()) return status;
  return claim;
}

// Both sides of a hot upgrade speak as this agent.
HandoverPeer HandoverPeerFromFlags() {
  const uint32_t override_version = absl::GetFlag(FLAGS_test_only_handover_protocol_version);
  return {.state_dir = absl::GetFlag(FLAGS_state_dir),
          .agent_version = kVersion,
          .protocol_version = override_version != 0 ? override_version : kHandoverProtocolVersion};
}

// `file_limit`: RLIMIT_NOFILE as main() raised it, logged here once the flags are known good.
// `args`: the command line's arguments, for the agent SIGUSR2 starts.
int Run(const absl::StatusOr<FileLimitChange>& file_limit, const std::vector<std::string>& args) {
  InstallLibraryLogHandlers();  // gRPC's and protobuf's lines: the agent's format, rate-limited
  // Signals are taken by one thread with sigwait: blocked here, before any thread starts, so
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR2);  // a hot upgrade: start the binary on disk with --takeover
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const std::string binary = AgentBinaryPath();  // for SIGUSR2, before an upgrade replaces it
  const std::string after_handover = absl::GetFlag(FLAGS_after_handover);
  if (after_handover != "exit" && after_handover != "wait") {
    Log("FATAL", "--after_handover=%s: want exit or wait", after_handover);
    return 1;
  }

  // Before anything is touched: a refused configuration leaves no device behind.
  absl::StatusOr<ServerSecurity> security = ResolveServerSecurity(SecurityFlagsFromFlags());
  if (!security.ok()) {
    Log("FATAL", "grpc: %s", security.status().message());
    return 1;
  }
  // The fleet flags, checked before anything is touched; the node registers once it serves.
  absl::StatusOr<std::optional<FleetRegistrationOptions>> fleet =
      FleetOptionsFromFlags(FleetFlagsFromFlags());
  if (!fleet.ok()) {
    Log("FATAL", "fleet: %s", fleet.status().message());
    return 1;
  }
  auto fleet_metrics = std::make_shared<FleetMetrics>();  // exported, fleet or not
  // A hot upgrade takes the running agent's descriptors, the state directory's lock first.
  const HandoverPeer handover_peer = HandoverPeerFromFlags();
  std::optional<Takeover> takeover;
  bool asked_to_stop = false;
  if (absl::GetFlag(FLAGS_takeover)) takeover = Takeover::Begin(handover_peer, &asked_to_stop);
  HandedOver* handed = takeover.has_value() ? &takeover->handed() : nullptr;
  // One agent per node: a second one stops here, before the dataplane or a device is touched.
  // A --takeover that found no agent to take over from waits a moment for the lock all the
  // same: the agent holding it may be dying (kill -9 closes its descriptors one by one, its
  // handover socket before its lock).
  const absl::Duration lock_wait = asked_to_stop ? absl::Seconds(60)
                                   : absl::GetFlag(FLAGS_takeover) && handed == nullptr
                                       ? absl::Seconds(5)
                                       : absl::ZeroDuration();
  absl::StatusOr<NodeClaim> node = ClaimNode(*security, handed, lock_wait);
  if (!node.ok()) {
    Log("FATAL", "%s", node.status().message());
    return 1;
  }

  absl::StatusOr<std::unique_ptr<dataplane::Netlink>> netlink = dataplane::Netlink::Open();
  if (!netlink.ok()) {
    Log("FATAL", "netlink: %s", netlink.status().ToString());
    return 1;
  }
  // Opened before anything is restored, so no change made meanwhile goes unseen.
  absl::StatusOr<std::unique_ptr<dataplane::NetlinkMonitor>> kernel_changes =
      dataplane::NetlinkMonitor::Open();
  if (!kernel_changes.ok()) {
    Log("FATAL", "netlink: %s", kernel_changes.status().ToString());
    return 1;
  }
  absl::StatusOr<dataplane::IoBackend> backend =
      dataplane::ParseIoBackend(absl::GetFlag(FLAGS_io_backend));
  if (!backend.ok()) {
    Log("FATAL", "--io_backend: %s", backend.status().message());
    return 1;
  }
  absl::StatusOr<dataplane::EngineOptions> engine_options = EngineOptionsFromFlags();
  if (!engine_options.ok()) {
    Log("FATAL", "%s", engine_options.status().message());
    return 1;
  }
  if (takeover.has_value()) takeover->AddReceiveSockets(&*engine_options);
  std::string fallback_reason;
  absl::StatusOr<std::unique_ptr<dataplane::PacketEngine>> engine =
      dataplane::StartEngine(*backend, *engine_options, &fallback_reason);
  if (takeover.has_value()) takeover->CloseReceiveSockets(&*engine_options);
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
  // Tunnels may not take the descriptors the API's connections and the agent itself need.
  const ListenerLimits api_limits =
      node->listener != nullptr ? node->listener->limits() : ApiListenerLimits();
  const bool health_listener = !absl::GetFlag(FLAGS_health_listen).empty();
  FdBudget fd_budget({
      .api_connections = api_limits.max_connections +
                         (health_listener ? HealthListenerLimits().max_connections : 0),
      .per_tunnel = (*engine)->workers(),  // the device, and a queue for each further worker
      .api_in_use = [listener = node->listener.get()]() -> size_t {
        return listener != nullptr ? listener->open_connections() : 0;
      },
  });
  SetTunnelFdBudget(&fd_budget);
  if (!file_limit.ok()) {
    Log("WARNING", "descriptors: cannot raise the limit: %s", file_limit.status().message());
  } else if (file_limit->after != file_limit->before) {
    Log("INFO", "descriptors: limit raised from %d to %d (the hard limit)", file_limit->before,
        file_limit->after);
  }
  Log("INFO",
      "descriptors: limit %d, %d kept from tunnels for %d API connections and the agent; a "
      "tunnel takes %d",
      FileLimit(), fd_budget.reserve(), fd_budget.options().api_connections,
      fd_budget.options().per_tunnel);
  // The table is grown once now, not a doubling at a time under requests (each a wait).
  if (absl::StatusOr<uint64_t> table =
          GrowDescriptorTable(fd_budget.reserve() + uint64_t{absl::GetFlag(FLAGS_max_tunnels)} *
                                                        fd_budget.options().per_tunnel);
      !table.ok()) {
    Log("WARNING", "descriptors: the table is grown as they are opened: %s",
        table.status().message());
  }

  FileStateStore store(absl::GetFlag(FLAGS_state_dir));
  KernelLinkControl kernel_links(netlink->get(), absl::GetFlag(FLAGS_tun_offload),
                                 (*engine)->workers() > 1);
  std::unique_ptr<HandedOverLinks> handed_links;
  if (takeover.has_value()) handed_links = takeover->AdoptDevices(engine->get(), &kernel_links);
  LinkControl& links = handed_links != nullptr ? static_cast<LinkControl&>(*handed_links)
                                               : static_cast<LinkControl&>(kernel_links);
  TunnelManager::Options manager_options;
  manager_options.max_tunnels = absl::GetFlag(FLAGS_max_tunnels);
  manager_options.keep_devices = absl::GetFlag(FLAGS_keep_devices);
  // The monitor below reads the kernel at most every 500 ms anyway; during a burst of changes,
  // once they pause.
  manager_options.refresh_pause = absl::Milliseconds(200);
  const absl::Time start_time = absl::Now();
  TunnelManager manager(&links, engine->get(), &store, manager_options);
  // Only the state file is read before the API must serve: the saved tunnels are known (DOWN,
  // "restoring") at once and come back on the manager's thread, each logged as it does;
  // changes wait for it (UNAVAILABLE) and Shutdown stops it. The API serves when the restore
  // is done or after 500 ms, whichever comes first: a few tunnels are all UP by the first
  // answer, thousands are still coming back while the API answers.
  if (absl::Status status = manager.BeginRestore(); !status.ok()) {
    // The file is left as it is, for an operator to look at.
    Log("FATAL", "state: %s", status.ToString());
    return 1;
  }
  manager.FinishRestoreInBackground();
  // Taken over: every tunnel must be in the engine before the running agent stops reading.
  manager.WaitForRestore(takeover.has_value() ? absl::Seconds(60) : absl::Milliseconds(500));
  const absl::Time restored_at = absl::Now();
  (*engine)->StartReceiving();

  std::unique_ptr<MetricsEndpoint> exposer;
  auto metrics = std::make_shared<AgentMetrics>(&manager, engine->get(), kVersion,
                                                /*io_uring_fallback=*/!fallback_reason.empty());
  // The exposer holds collectables weakly: they live here, as long as it does.
  auto process_metrics = std::make_shared<ProcessMetrics>();
  // Outlives the server below, whose interceptors record into it.
  absl::StatusOr<std::vector<GrpcMetrics::Method>> grpc_methods =
      GrpcMetrics::MethodsOf({"tunnelagent.v1.TunnelService", "grpc.health.v1.Health",
                              "grpc.reflection.v1alpha.ServerReflection"});
  if (!grpc_methods.ok()) {
    Log("FATAL", "metrics: %s", grpc_methods.status().ToString());
    return 1;
  }
  GrpcMetrics grpc_metrics(*grpc_methods);
  // Taken over: the running agent serves /metrics until it exits (the HTTP server binds
  // itself, the port cannot be handed over); this one binds once it is free, below.
  if (std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty() && !handed) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> bound =
        MetricsEndpoint::Listen(listen, kMetricsPrefix);
    if (!bound.ok()) {
      Log("FATAL", "metrics: %s", bound.status().message());
      return 1;
    }
    exposer = *std::move(bound);
    exposer->RegisterCollectable(metrics);
    exposer->RegisterCollectable(process_metrics);
    exposer->RegisterCollectable(grpc_metrics.registry());
    exposer->RegisterCollectable(fleet_metrics);
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
  const std::string listen = absl::GetFlag(FLAGS_grpc_listen);
  ApiServerOptions api_options;
  api_options.listen = listen;
  api_options.security = *security;
  api_options.limits.max_connection_idle_ms =
      static_cast<int>(absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_grpc_idle_timeout)));
  // For a handover: the listeners' descriptors, and whether gRPC holds the unix socket.
  ApiListener* const api_listener = node->listener.get();
  const bool grpc_owns_unix_socket = node->staged.has_value();
  api_options.listener = std::move(node->listener);
  if (node->staged.has_value()) api_options.staged.emplace(*std::move(node->staged));
  api_options.socket_group = node->socket_group;
  if (std::string health_listen = absl::GetFlag(FLAGS_health_listen); !health_listen.empty()) {
    const int handed_health =
        handed != nullptr ? handed->Take(handover::Descriptor::HEALTH_LISTENER) : -1;
    absl::StatusOr<std::unique_ptr<ApiListener>> health =
        handed_health >= 0 ? ApiListener::Adopt(handed_health, {.limits = HealthListenerLimits()})
                           : ApiListener::ListenTcp(health_listen, HealthListenerLimits());
    if (!health.ok()) {
      Log("FATAL", "grpc: --health_listen=%s: %s", health_listen, health.status().message());
      return 1;
    }
    api_options.health_listener = *std::move(health);
  }
  ApiListener* const health_listener_ptr = api_options.health_listener.get();
  api_options.add_services = [&](grpc::ServerBuilder* builder) {
    builder->RegisterService(&service);
    // Called in order on every call that passed the bearer check.
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    // First, so it times the whole call (calls refused by the token check never get here).
    interceptors.push_back(grpc_metrics.NewInterceptorFactory());
    builder->experimental().SetInterceptorCreators(std::move(interceptors));
  };
  api_options.self_check.interval = absl::GetFlag(FLAGS_api_self_check_interval);
  api_options.self_check.timeout = absl::GetFlag(FLAGS_api_self_check_timeout);
  api_options.self_check.failures =
      static_cast<int>(std::max<uint32_t>(1, absl::GetFlag(FLAGS_api_self_check_failures)));
  constexpr absl::Duration kWorkerStall = absl::Seconds(2);
  absl::Status dataplane_health = (*engine)->Health(kWorkerStall);
  if (!dataplane_health.ok()) {
    Log("ERROR", "health: NOT_SERVING: dataplane: %s", dataplane_health.message());
  }
  // Health is set before clients come in; past here no early return: the listeners' threads
  // must stop before the servers go (ApiServer::Shutdown).
  absl::StatusOr<std::unique_ptr<ApiServer>> api =
      ApiServer::Start(std::move(api_options), dataplane_health.ok());
  if (!api.ok()) {
    Log("FATAL", "%s", api.status().message());
    return 1;
  }
  if (exposer != nullptr) exposer->RegisterCollectable((*api)->metrics());
  if (std::string health_listen = absl::GetFlag(FLAGS_health_listen); !health_listen.empty()) {
    Log("INFO", "grpc: serving grpc.health.v1.Health alone on %s (plaintext)", health_listen);
  }
  Log("INFO", "grpc: serving tunnelagent.v1.TunnelService on %s (%s)", listen,
      DescribeServerSecurity(*security));
  // Health follows the dataplane: NOT_SERVING, overall and for the API, on every listener,
  // while a worker has stopped or stalls (and while the API does not answer its self-check).
  absl::Notification health_stopping;
  std::thread health_monitor([&] {
    bool serving = dataplane_health.ok();
    while (!health_stopping.WaitForNotificationWithTimeout(absl::Milliseconds(500))) {
      absl::Status status = (*engine)->Health(kWorkerStall);
      if (status.ok() == serving) continue;
      serving = status.ok();
      (*api)->SetDataplaneServing(serving);  // ignored once the health services are shut down
      if (serving) {
        Log("INFO", "health: SERVING: the dataplane runs again");
      } else {
        Log("ERROR", "health: NOT_SERVING: dataplane: %s", status.message());
      }
    }
  });

  // Taken over: the running agent is told this one serves (every tunnel is in the engine,
  // the API accepts), stops reading and accepting, and exits; /metrics is bound once it has
  // let go of the port.
  std::unique_ptr<DeferredMetricsExposer> deferred_exposer;
  if (takeover.has_value()) {
    takeover->ConfirmServing(restored_at);
    if (std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
      deferred_exposer = std::make_unique<DeferredMetricsExposer>(
          listen,
          std::vector<std::weak_ptr<prometheus::Collectable>>{
              metrics, process_metrics, grpc_metrics.registry(), (*api)->metrics(), fleet_metrics});
    }
  }
  NotifyServiceManager(absl::StrCat("MAINPID=", getpid(), "\nREADY=1"))
      .IgnoreError();  // Type=notify: this process is the service's now
  // The node joins its fleet once it serves, on a thread of its own: etcd away or slow never
  // holds the agent up. A hot upgrade's new agent registers the same key under its own lease.
  std::unique_ptr<FleetRegistration> fleet_registration;
  if (fleet->has_value()) {
    v1::AgentInfo info;
    service.DoGetAgentInfo(&info);
    (*fleet)->registration.set_version(kVersion);
    *(*fleet)->registration.mutable_capabilities() = CapabilitiesOf(info);
    fleet_registration = FleetRegistration::Start(**std::move(fleet), fleet_metrics);
  }

  // A later hot upgrade: a new agent on the same state directory takes over from this one.
  HandoverOnRequest handover(
      handover_peer,
      {.manager = &manager,
       .engine = engine->get(),
       .state_dir_lock = node->state_lock->fd(),
       .namespace_lock = node->namespace_lock.has_value() ? node->namespace_lock->fd() : -1,
       .api_listener = api_listener,
       .health_listener = health_listener_ptr,
       .grpc_owns_unix_socket = grpc_owns_unix_socket});
  std::thread waiter([&] {
    handover.WaitForStop(signals, binary, args);
    // NOT_SERVING from here on, whatever the dataplane does meanwhile; then the listeners
    // stop and the servers shut down.
    (*api)->Shutdown();
  });
  // The kernel converges to the desired state: the devices are read again whenever the kernel
  // reports a change of links, addresses or routes (someone may `ip link set gre1 down`), and
  // every 30 s in any case; the engine's keepalive verdicts are looked at every second.
  std::thread monitor([&] {
    absl::Time full_at = absl::InfinitePast();
    absl::Time earliest = absl::InfinitePast();
    bool trim_after_scrape = false;
    int bulk_trims = 0;  // rounds left that give back what a large change left free
    absl::Time next_fd_count = absl::InfinitePast();
    for (;;) {
      absl::StatusOr<bool> changed = (*kernel_changes)->WaitForChange(absl::Seconds(1));
      if (!changed.ok()) return;  // stopped
      const bool full = *changed || absl::Now() >= full_at;
      if (full) {
        // Changes come in bursts (an apply of many tunnels makes thousands): the kernel is read
        // at most every 500 ms, whatever the rate, so reading costs a bounded share of a CPU.
        while (absl::Now() < earliest) {
          if (!(*kernel_changes)->WaitForChange(earliest - absl::Now()).ok()) return;
        }
        earliest = absl::Now() + absl::Milliseconds(500);
        full_at = absl::Now() + absl::Seconds(30);
      }
      // Frozen for a handover: the kernel is the new agent's to converge.
      if (!manager.frozen()) manager.RefreshStates(full);
      // The open descriptors, counted here once a second rather than on the requests.
      if (absl::Now() >= next_fd_count) {
        fd_budget.Recount();
        next_fd_count = absl::Now() + absl::Seconds(1);
      }
      // A scrape seen on the round before has been answered by now: what it built is free,
      // and goes back to the system rather than staying resident until the next one.
      // So is what a change of thousands of peers built, on this round or the next (the
      // change may be seen before its answer has gone out and been freed).
      if (trim_after_scrape || bulk_trims > 0) malloc_trim(0);
      if (bulk_trims > 0) --bulk_trims;
      trim_after_scrape = metrics->TakeScraped();
      if (manager.TakeBulkChange()) bulk_trims = 2;
    }
  });
  (*api)->Wait();
  waiter.join();
  // Handed over: the new agent holds the node's key under its own lease, which this one's
  // lapse leaves alone; stopped: the lease is revoked, and the node leaves the fleet at once.
  if (fleet_registration != nullptr) fleet_registration->Stop();
  handover.ExitIfReplaced(after_handover);  // the new agent's now: nothing is torn down
  if (fleet_registration != nullptr) fleet_registration->Leave();
  if (deferred_exposer != nullptr) deferred_exposer->Stop();
  handover.Stop();
  health_stopping.Notify();
  health_monitor.join();
  (*kernel_changes)->Stop();
  monitor.join();
  // The desired state stays on disk for the next start; the devices go unless --keep_devices.
  manager.Shutdown();
  Log("INFO", "stopped");
  return 0;
}

}  // namespace
}  // namespace tunnelagent::agent

int main(int argc, char** argv) {
  // Blocks of 128 KiB and more (a request of thousands of peers, the encoded state, the
  // vectors a large change builds) always come from mmap and go back the moment they are
  // freed. Left to itself glibc raises that threshold to the largest block freed so far, and
  // the next large blocks land in the heap among long-lived records, where malloc_trim cannot
  // give them back: after one ApplyPeers of 10,000 peers that is 15-25 MiB resident for good.
  // The packet path allocates nothing, so only the control path pays for the mmap.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  // --help lists the agent's own flags (absl looks, by default, only in a file named after the
  // program); --version prints the version, not absl's build mode.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StartsWith(file, "agent/") || absl::StrContains(file, "/agent/");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] {
    return absl::StrCat("tunnel-agent ", tunnelagent::agent::kVersion, "\n");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "tunnel-agent [--grpc_listen=unix:/PATH|HOST:PORT] [--grpc_socket_group=GROUP]\n"
      "             [--health_listen=HOST:PORT] [--metrics_listen=ADDR] [--state_dir=DIR]\n"
      "             [--tls_cert=PEM --tls_key=PEM [--tls_client_ca=PEM]] [--insecure]\n"
      "             [--auth_token_file=FILE] [--io_backend=auto|uring|epoll]\n"
      "Creates GRE, IPIP, SIT and IPv6 tunnels on request over gRPC "
      "(tunnelagent.v1.TunnelService).");
  absl::ParseCommandLine(argc, argv);
  tunnelagent::agent::SetTunnelLimits(
      {absl::GetFlag(FLAGS_max_addresses_per_tunnel), absl::GetFlag(FLAGS_max_routes_per_tunnel),
       absl::GetFlag(FLAGS_max_labels_per_tunnel), absl::GetFlag(FLAGS_max_label_key_length),
       absl::GetFlag(FLAGS_max_label_value_length), absl::GetFlag(FLAGS_max_prefixes_per_apply),
       absl::GetFlag(FLAGS_max_peers_per_tunnel), absl::GetFlag(FLAGS_max_prefixes_per_peer)});
  if (absl::Status status = tunnelagent::agent::SetLogFormat(absl::GetFlag(FLAGS_log_format));
      !status.ok()) {
    fprintf(stderr, "tunnel-agent: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  // A descriptor per tunnel device and worker: the usual soft limit of 1024 (systemd
  // services, containers) would cap the agent near 1,000 tunnels. Raise it to the hard limit.
  // Logged once the configuration is known good (a refused one prints one line only).
  const absl::StatusOr<tunnelagent::agent::FileLimitChange> file_limit =
      tunnelagent::agent::RaiseFileLimit();
  return tunnelagent::agent::Run(file_limit, std::vector<std::string>(argv + 1, argv + argc));
}
