// tunnel-state DIR: prints the desired tunnels and peers saved in the agent's --state_dir (the
// snapshot tunnels.json with the changes of tunnels.log applied) as one
// tunnelagent.state.v1.AgentState in protobuf JSON, format_version 1: the whole state in one
// document, which is also what the agent loads (and migrates) when it finds it as
// tunnels.json, so an operator can edit it and put it back while the agent is stopped.
// Reads only: no lock is taken, nothing is written; a last record being written at the same
// moment by a running agent is left out. Exit 0; 1 usage; 2 the state cannot be read (the
// message names the file, the offset and the problem).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/peer_spec.h"
#include "agent/proto_convert.h"
#include "agent/state_store.h"
#include "google/protobuf/util/json_util.h"
#include "tunnelagent/state/v1/state.pb.h"

int main(int argc, char** argv) {
  using tunnelagent::agent::FileStateStore;
  using tunnelagent::agent::TunnelSpec;
  constexpr char kUsage[] =
      "usage: tunnel-state STATE_DIR\n"
      "Prints the desired tunnels and peers saved in a tunnel-agent's --state_dir as one JSON\n"
      "document (tunnelagent.state.v1.AgentState, format_version 1), which the agent also\n"
      "loads as STATE_DIR/tunnels.json while it is stopped. Reads only.\n"
      "  -h, --help     print this help\n"
      "  --version      print the version\n";
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::printf("tunnel-state %s\n", TUNNEL_AGENT_VERSION);  // CMake's PROJECT_VERSION
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {
    std::fputs(kUsage, stderr);
    return 1;
  }
  FileStateStore::Options options;
  options.read_only = true;
  FileStateStore store(argv[1], options);
  absl::StatusOr<std::vector<TunnelSpec>> tunnels = store.Load();
  if (!tunnels.ok()) {
    std::fprintf(stderr, "tunnel-state: %s\n", tunnels.status().ToString().c_str());
    return 2;
  }
  tunnelagent::state::v1::AgentState state;
  state.set_format_version(1);
  for (const TunnelSpec& spec : *tunnels) {
    *state.add_tunnels() = tunnelagent::agent::SpecToProto(spec);
  }
  for (const tunnelagent::agent::SavedPeer& peer : store.TakeLoadedPeers()) {
    tunnelagent::state::v1::SavedPeer* saved = state.add_peers();
    saved->set_tunnel(peer.tunnel);
    *saved->mutable_peer() = tunnelagent::agent::PeerSpecToProto(peer.spec);
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  if (const auto s = google::protobuf::util::MessageToJsonString(state, &json, print); !s.ok()) {
    std::fprintf(stderr, "tunnel-state: encoding: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  std::fwrite(json.data(), 1, json.size(), stdout);
  std::fputs("\n", stdout);
  return std::fflush(stdout) == 0 ? 0 : 2;
}
