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
    max_peers_per_tunnel: 4096
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
            "max_peers_per_tunnel: 4096\n"
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

// ---- multipoint tunnels and peers ---------------------------------------------------------

TEST(TableTest, MultipointTunnelsShowMultipointAsRemote) {
  auto list = FromText<v1::ListTunnelsResponse>(R"pb(
    tunnels { name: "mp1" mode: TUNNEL_MODE_GRE local: "192.0.2.1" multipoint: true }
    tunnels { name: "t2" mode: TUNNEL_MODE_IPIP remote: "192.0.2.3" }
  )pb");
  EXPECT_EQ(FormatTunnelTable(list),
            "NAME  MODE  LOCAL      REMOTE      KEY  MTU   STATE    IFINDEX  RX_PKTS  TX_PKTS\n"
            "mp1   gre   192.0.2.1  multipoint  -    auto  unknown  -        0        0\n"
            "t2    ipip  any        192.0.2.3   -    auto  unknown  -        0        0\n");
  EXPECT_THAT(FormatTunnelDetail(list.tunnels(0)), HasSubstr("\nremote: multipoint\n"));
  EXPECT_THAT(FormatTunnelDetail(list.tunnels(1)), HasSubstr("\nremote: 192.0.2.3\n"));
}

// encap fou is three keywords: the list shows each as KEYWORD=VALUE, get as ip-link spells it.
TEST(TableTest, EncapOptionsAreThreeWords) {
  auto list = FromText<v1::ListTunnelsResponse>(R"pb(
    tunnels {
      name: "f1"
      mode: TUNNEL_MODE_GRE
      remote: "192.0.2.2"
      encap { type: ENCAP_TYPE_FOU }
    }
    tunnels {
      name: "f2"
      mode: TUNNEL_MODE_IPIP
      remote: "192.0.2.3"
      encap { type: ENCAP_TYPE_FOU sport: 5555 dport: 6000 }
    }
  )pb");
  const std::string table = FormatTunnelTable(list);
  EXPECT_THAT(table, HasSubstr(" encap=fou,encap-sport=auto,encap-dport=4754\n"));
  EXPECT_THAT(table, HasSubstr(" encap=fou,encap-sport=5555,encap-dport=6000\n"));
  EXPECT_THAT(FormatTunnelDetail(list.tunnels(0)),
              HasSubstr("encap fou encap-sport auto encap-dport 4754"));
}

TEST(WatchTest, PeerEventsNameTheTunnelAndThePeer) {
  const EventCase kCases[] = {
      {R"pb(type: PEER_ADDED
            revision: 12
            tunnel { name: "mp1" mode: TUNNEL_MODE_GRE }
            peer {
              name: "site-b"
              underlay: "198.18.0.2"
              status { state: OPER_STATE_UP }
            })pb",
       "12 PEER_ADDED mp1/site-b up\n"},
      {R"pb(type: PEER_UPDATED
            revision: 13
            tunnel { name: "mp1" }
            peer { name: "site-b" })pb",
       "13 PEER_UPDATED mp1/site-b unknown\n"},
      {R"pb(type: PEER_STATE_CHANGED
            revision: 14
            tunnel { name: "mp1" }
            peer {
              name: "site-b"
              status { state: OPER_STATE_DOWN reason: "keepalive: 3 replies missed" }
            }
            detail: "keepalive: 3 replies missed")pb",
       "14 PEER_STATE_CHANGED mp1/site-b down keepalive: 3 replies missed\n"},
      {R"pb(type: PEER_DELETED
            revision: 15
            tunnel { name: "mp1" }
            peer {
              name: "site-b"
              status { state: OPER_STATE_UP }
            })pb",
       "15 PEER_DELETED mp1/site-b up\n"},
      // Missing names print as "-" rather than vanish.
      {R"pb(type: PEER_DELETED revision: 16)pb", "16 PEER_DELETED -/- unknown\n"},
  };
  for (const EventCase& c : kCases) {
    SCOPED_TRACE(c.event);
    EXPECT_EQ(FormatWatchEvent(FromText<v1::TunnelEvent>(c.event)), c.line);
  }
}

TEST(PeerTableTest, ColumnsAndOptionalOnes) {
  auto list = FromText<v1::ListPeersResponse>(R"pb(
    peers {
      name: "site-b"
      underlay: "198.18.0.2"
      key: 7
      allowed_prefixes: [ "10.1.0.0/16", "10.2.0.0/16" ]
      status {
        state: OPER_STATE_UP
        counters { rx_packets: 5 tx_packets: 6 }
        path_mtu: 1476
        last_receive_time { seconds: 1700000000 }
      }
    }
    peers { name: "c" underlay: "198.18.0.3" }
  )pb");
  EXPECT_EQ(FormatPeerTable(list),
            "NAME    UNDERLAY    KEY  ALLOWED                  STATE    RX_PKTS  TX_PKTS  "
            "PATH_MTU  LAST_RECEIVE\n"
            "site-b  198.18.0.2  7    10.1.0.0/16,10.2.0.0/16  up       5        6        "
            "1476      2023-11-14T22:13:20Z\n"
            "c       198.18.0.3  -    -                        unknown  0        0        "
            "-         -\n");
  // KEEPALIVE and LABELS only when some peer has them.
  list.mutable_peers(1)->mutable_status()->mutable_keepalive()->set_peer_alive(false);
  (*list.mutable_peers(1)->mutable_labels())["owner"] = "fleet";
  const std::string table = FormatPeerTable(list);
  EXPECT_THAT(table, HasSubstr("LAST_RECEIVE          KEEPALIVE  LABELS\n"));
  EXPECT_THAT(table, HasSubstr("2023-11-14T22:13:20Z  -          -\n"));
  EXPECT_THAT(table, EndsWith("-                     dead       owner=fleet\n"));
  EXPECT_EQ(FormatPeerTable(v1::ListPeersResponse()),
            "NAME  UNDERLAY  KEY  ALLOWED  STATE  RX_PKTS  TX_PKTS  PATH_MTU  LAST_RECEIVE\n");
}

TEST(PeerDetailTest, EveryField) {
  auto peer = FromText<v1::Peer>(R"pb(
    name: "site-b"
    underlay: "fd00::2"
    key: 9
    allowed_prefixes: [ "10.1.0.0/16", "fd10::/64" ]
    keepalive {
      interval { nanos: 500000000 }
      retries: 5
    }
    labels { key: "owner" value: "fleet" }
    etag: "p3"
    status {
      state: OPER_STATE_DOWN
      reason: "keepalive:\nno reply"
      counters { rx_packets: 1 rx_bytes: 2 rx_dropped: 3 tx_packets: 4 tx_bytes: 5 tx_dropped: 6 }
      path_mtu: 1400
      last_receive_time { seconds: 1700000000 }
      keepalive {
        peer_alive: false
        sent: 10
        replies: 7
        answered: 8
        last_reply_time { seconds: 1700000001 }
        rtt { nanos: 1234567 }
      }
      create_time { seconds: 1700000002 }
      update_time { seconds: 1700000003 }
    }
  )pb");
  EXPECT_EQ(FormatPeerDetail(peer),
            "name: site-b\n"
            "underlay: fd00::2\n"
            "key: 9\n"
            "allowed_prefixes: 10.1.0.0/16, fd10::/64\n"
            "keepalive: 0.5s,5\n"
            "labels: owner=fleet\n"
            "state: down\n"
            "reason: keepalive: no reply\n"
            "rx_packets: 1\n"
            "rx_bytes: 2\n"
            "rx_dropped: 3\n"
            "tx_packets: 4\n"
            "tx_bytes: 5\n"
            "tx_dropped: 6\n"
            "path_mtu: 1400\n"
            "last_receive: 2023-11-14T22:13:20Z\n"
            "keepalive_peer: dead\n"
            "keepalive_sent: 10\n"
            "keepalive_replies: 7\n"
            "keepalive_answered: 8\n"
            "keepalive_last_reply: 2023-11-14T22:13:21Z\n"
            "keepalive_rtt: 1.234ms\n"
            "etag: p3\n"
            "create_time: 2023-11-14T22:13:22Z\n"
            "update_time: 2023-11-14T22:13:23Z\n");
  EXPECT_EQ(FormatPeerDetail(FromText<v1::Peer>(R"pb(name: "p" underlay: "198.18.0.2")pb")),
            "name: p\n"
            "underlay: 198.18.0.2\n"
            "key: -\n"
            "allowed_prefixes: -\n"
            "keepalive: -\n"
            "labels: -\n"
            "state: unknown\n"
            "rx_packets: 0\n"
            "rx_bytes: 0\n"
            "rx_dropped: 0\n"
            "tx_packets: 0\n"
            "tx_bytes: 0\n"
            "tx_dropped: 0\n"
            "path_mtu: -\n"
            "last_receive: -\n"
            "etag: -\n"
            "create_time: -\n"
            "update_time: -\n");
  // A keepalive without an answer yet has no rtt; retries 0 is the default 3.
  peer.mutable_status()->mutable_keepalive()->clear_rtt();
  peer.mutable_keepalive()->set_retries(0);
  EXPECT_THAT(FormatPeerDetail(peer), HasSubstr("\nkeepalive_rtt: -\n"));
  EXPECT_THAT(FormatPeerDetail(peer), HasSubstr("\nkeepalive: 0.5s,3\n"));
}

TEST(PeerJsonTest, CamelCaseNames) {
  auto peer = FromText<v1::Peer>(R"pb(name: "p"
                                      key: 0
                                      allowed_prefixes: "10.1.0.0/16"
                                      status { path_mtu: 1400 })pb");
  absl::StatusOr<std::string> json = FormatJson(peer);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, HasSubstr("\"allowedPrefixes\": [\n  \"10.1.0.0/16\"\n ]"));
  // key 0 is a key (optional field), so it is printed.
  EXPECT_THAT(*json, HasSubstr("\"key\": 0"));
  EXPECT_THAT(*json, HasSubstr("\"pathMtu\": 1400"));
}

TEST(PeerApplyTest, ChangesAndUnchangedCount) {
  auto response = FromText<v1::ApplyPeersResponse>(R"pb(
    changes { name: "a" action: CREATE }
    changes {
      name: "bb"
      action: UPDATE
      changed_fields: [ "underlay", "allowed_prefixes" ]
    }
    changes { name: "c" action: DELETE }
    unchanged: 997
    revision: 40
  )pb");
  EXPECT_EQ(FormatPeerApplyChanges(response),
            "NAME  ACTION  CHANGED\n"
            "a     create  -\n"
            "bb    update  underlay,allowed_prefixes\n"
            "c     delete  -\n"
            "unchanged: 997\n"
            "applied at revision 40\n");
  response.clear_changes();
  response.set_dry_run(true);
  EXPECT_EQ(FormatPeerApplyChanges(response),
            "NAME  ACTION  CHANGED\nunchanged: 997\ndry run: nothing was changed\n");
}

}  // namespace
}  // namespace tunnelagent::tunnelctl
