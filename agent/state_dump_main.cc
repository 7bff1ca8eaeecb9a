// tunnel-state DIR: prints the desired tunnels saved in the agent's --state_dir (the snapshot
// tunnels.json with the changes of tunnels.log applied) as one tunnelagent.state.v1.AgentState
// in protobuf JSON, format_version 1: the whole state in one document, which is also what
// the agent loads (and migrates) when it finds it as tunnels.json, so an operator can edit it
// and put it back while the agent is stopped.
// Reads only: no lock is taken, nothing is written; a last record being written at the same
// moment by a running agent is left out. Exit 0; 1 usage; 2 the state cannot be read (the
// message names the file, the offset and the problem).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/proto_convert.h"
#include "agent/state_store.h"
#include "google/protobuf/util/json_util.h"
#include "tunnelagent/state/v1/state.pb.h"

int main(int argc, char** argv) {
  using tunnelagent::agent::FileStateStore;
  using tunnelagent::agent::TunnelSpec;
  if (argc != 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: %s STATE_DIR   (prints the saved desired tunnels as JSON)\n",
                 argv[0]);
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
