// The version the clients report with --version: the project's, which the build passes in
// (CMake's PROJECT_VERSION), so that the clients and the agent cannot disagree.
#ifndef TUNNELAGENT_CLIENTS_COMMON_VERSION_H_
#define TUNNELAGENT_CLIENTS_COMMON_VERSION_H_

#ifndef TUNNEL_AGENT_VERSION
#error "TUNNEL_AGENT_VERSION is not defined: build through CMake (clients_common sets it)"
#endif

namespace tunnelagent::clients {

inline constexpr char kVersion[] = TUNNEL_AGENT_VERSION;

}  // namespace tunnelagent::clients

#endif  // TUNNELAGENT_CLIENTS_COMMON_VERSION_H_
