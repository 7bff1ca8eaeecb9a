#include "clients/tunnelctl/output.h"

#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace tunnelagent::tunnelctl {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;

template <typename Message>
Message FromText(const std::string& text) {
  Message message;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &message)) << text;
  return message;
}

TEST(LabelsTest, SortedByKey) {
  v1::Tunnel t = FromText<v1::Tunnel>(R"pb(
    labels { key: "owner" value: "fleet" }
    labels { key: "env" value: "prod" }
    labels { key: "a" value: "" }
  )pb");
  EXPECT_EQ(LabelsText(t.labels()), "a=, env=prod, owner=fleet");
  EXPECT_EQ(LabelsText(v1::Tunnel().labels()), "-");
}

TEST(TableTest, LabelsColumnOnlyWhenAnyTunnelHasLabels) {
  auto list = FromText<v1::ListTunnelsResponse>(R"pb(
    tunnels {
      name: "a"
      mode: TUNNEL_MODE_GRE
      remote: "192.0.2.2"
      labels { key: "owner" value: "x" }
      labels { key: "env" value: "p" }
    }
    tunnels { name: "bb" mode: TUNNEL_MODE_IPIP remote: "192.0.2.3" }
  )pb");
  const std::string want =
      "NAME  MODE  LOCAL  REMOTE     KEY  MTU   STATE    IFINDEX  RX_PKTS  TX_PKTS  LABELS\n"
      "a     gre   any    192.0.2.2  -    auto  unknown  -        0        0        "
      "env=p,owner=x\n"
      "bb    ipip  any    192.0.2.3  -    auto  unknown  -        0        0        -\n";
  EXPECT_EQ(FormatTunnelTable(list), want);
  list.mutable_tunnels(0)->clear_labels();
  EXPECT_THAT(FormatTunnelTable(list), Not(HasSubstr("LABELS")));
}

v1::Tunnel Labelled() {
  return FromText<v1::Tunnel>(R"pb(
    name: "gre1"
    mode: TUNNEL_MODE_GRE
    remote: "192.0.2.2"
    labels { key: "owner" value: "fleet" }
    labels { key: "env" value: "prod" }
    etag: "W/7"
    status {
      state: OPER_STATE_UP
      create_time { seconds: 1700000000 }
      update_time { seconds: 1700000060 nanos: 500000000 }
    }
  )pb");
}

TEST(DetailTest, LabelsEtagAndTimes) {
  const std::string detail = FormatTunnelDetail(Labelled());
  EXPECT_THAT(detail, HasSubstr("\nroutes: -\nlabels: env=prod, owner=fleet\nstate: up\n"));
  EXPECT_THAT(detail, EndsWith("\ntx_dropped: 0\n"
                               "path_mtu: -\n"
                               "etag: W/7\n"
                               "create_time: 2023-11-14T22:13:20Z\n"
                               "update_time: 2023-11-14T22:14:20.500Z\n"));
}

TEST(UpdateTest, RecreatedLineOnlyWhenRecreated) {
  v1::UpdateTunnelResponse response;
  *response.mutable_tunnel() = Labelled();
  response.add_changed_fields("mtu");
  std::string text = FormatUpdate(response);
  EXPECT_EQ(text, FormatTunnelDetail(Labelled()));
  EXPECT_THAT(text, Not(HasSubstr("recreated")));

  response.set_recreated(true);
  response.clear_changed_fields();
  response.add_changed_fields("mode");
  response.add_changed_fields("remote");
  text = FormatUpdate(response);
  EXPECT_EQ(text, FormatTunnelDetail(Labelled()) + "recreated: mode, remote\n");
}

struct EventCase {
  std::string event;  // text proto
  std::string line;
};

TEST(WatchTest, OneLinePerEvent) {
  const EventCase kCases[] = {
      {R"pb(type: EXISTING
            revision: 3
            tunnel {
              name: "gre1"
              status { state: OPER_STATE_UP }
            })pb",
       "3 EXISTING gre1 up\n"},
      {R"pb(type: SYNCED revision: 3)pb", "3 SYNCED - -\n"},
      {R"pb(type: ADDED
            revision: 4
            tunnel { name: "t2" })pb",
       "4 ADDED t2 unknown\n"},
      {R"pb(type: UPDATED
            revision: 5
            tunnel {
              name: "t2"
              status { state: OPER_STATE_DOWN }
            })pb",
       "5 UPDATED t2 down\n"},
      {R"pb(type: STATE_CHANGED
            revision: 6
            tunnel {
              name: "t2"
              status { state: OPER_STATE_ERROR reason: "x\ny" }
            })pb",
       "6 STATE_CHANGED t2 error\n"},
      {R"pb(type: DELETED
            revision: 7
            tunnel {
              name: "t2"
              status { state: OPER_STATE_UP }
            })pb",
       "7 DELETED t2 up\n"},
      {R"pb(type: RESYNC revision: 9)pb", "9 RESYNC - -\n"},
      // A name with a line break stays on one line; an unknown type prints as its number.
      {R"pb(type: 42
            revision: 10
            tunnel { name: "a\nb" })pb",
       "10 42 a b unknown\n"},
      {R"pb(revision: 11)pb", "11 0 - -\n"},
  };
  for (const EventCase& c : kCases) {
    SCOPED_TRACE(c.event);
    EXPECT_EQ(FormatWatchEvent(FromText<v1::TunnelEvent>(c.event)), c.line);
  }
}

TEST(WatchTest, JsonIsOneLine) {
  auto event = FromText<v1::TunnelEvent>(R"pb(type: ADDED
                                              revision: 4
                                              tunnel { name: "t2" mode: TUNNEL_MODE_GRE })pb");
  absl::StatusOr<std::string> json = FormatJsonLine(event);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json,
            R"({"type":"ADDED","revision":"4","tunnel":{"name":"t2","mode":"TUNNEL_MODE_GRE"}})"
            "\n");
}

TEST(ApplyTest, ChangesTable) {
  auto response = FromText<v1::ApplyTunnelsResponse>(R"pb(
    changes { name: "a" action: CREATE }
    changes {
      name: "bb"
      action: UPDATE
      changed_fields: [ "mtu", "labels" ]
    }
    changes { name: "c" action: RECREATE changed_fields: "remote" }
    changes { name: "d" action: DELETE }
    changes { name: "e" action: UNCHANGED }
    revision: 12
  )pb");
  EXPECT_EQ(FormatApplyChanges(response),
            "NAME  ACTION     CHANGED\n"
            "a     create     -\n"
            "bb    update     mtu,labels\n"
            "c     recreate   remote\n"
            "d     delete     -\n"
            "e     unchanged  -\n"
            "applied at revision 12\n");
  response.set_dry_run(true);
  response.clear_changes();
  EXPECT_EQ(FormatApplyChanges(response), "NAME  ACTION  CHANGED\ndry run: nothing was changed\n");
  EXPECT_EQ(ActionName(static_cast<v1::TunnelChange::Action>(9)), "9");
}

TEST(InfoTest, FieldLines) {
  auto info = FromText<v1::AgentInfo>(R"pb(
    version: "0.2.0"
    node_name: "node-a"
    supported_modes: [ TUNNEL_MODE_GRE, TUNNEL_MODE_IPIP ]
    features: [ "request_id", "watch" ]
    io_backend: "io_uring"
    dataplane_workers: 2
    dataplane_cpus: "2-3"
    max_tunnels: 1024
    tunnel_count: 3
    revision: 77
    start_time { seconds: 1700000000 }
  )pb");
  EXPECT_EQ(FormatAgentInfo(info),
            "version: 0.2.0\n"
            "node_name: node-a\n"
            "supported_modes: gre, ipip\n"
            "features: request_id, watch\n"
            "io_backend: io_uring\n"
            "dataplane_workers: 2\n"
            "dataplane_cpus: 2-3\n"
            "max_tunnels: 1024\n"
            "tunnel_count: 3\n"
            "revision: 77\n"
            "start_time: 2023-11-14T22:13:20Z\n");
  EXPECT_THAT(FormatAgentInfo(v1::AgentInfo()),
              HasSubstr("version: -\nnode_name: -\nsupported_modes: -\nfeatures: -\n"));
}

TEST(RpcErrorTest, UnimplementedSaysTheAgentLacksTheCall) {
  EXPECT_EQ(FormatRpcError("WatchTunnels", 12, ""),
            "WatchTunnels: UNIMPLEMENTED: the agent does not implement this call (an older "
            "version?)");
  EXPECT_EQ(FormatRpcError("WatchTunnels", 12, "not yet"), "WatchTunnels: UNIMPLEMENTED: not yet");
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
