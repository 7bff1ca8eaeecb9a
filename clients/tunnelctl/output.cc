#include "clients/tunnelctl/output.h"

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

namespace tunnelagent::tunnelctl {
namespace {

constexpr char kNone[] = "-";

std::string LocalText(const v1::Tunnel& tunnel) {
  return tunnel.local().empty() ? "any" : tunnel.local();
}

// A multipoint tunnel's far ends are its peers.
std::string RemoteText(const v1::Tunnel& tunnel) {
  return tunnel.multipoint() && tunnel.remote().empty() ? "multipoint" : tunnel.remote();
}

std::string KeyText(const v1::Tunnel& tunnel) {
  return tunnel.has_key() ? absl::StrCat(tunnel.key()) : kNone;
}

// The MTU in effect when the agent reports it, else the configured one.
std::string MtuText(const v1::Tunnel& tunnel) {
  uint32_t mtu = tunnel.status().mtu() != 0 ? tunnel.status().mtu() : tunnel.mtu();
  return mtu != 0 ? absl::StrCat(mtu) : "auto";
}

std::string IfindexText(const v1::Tunnel& tunnel) {
  return tunnel.status().ifindex() != 0 ? absl::StrCat(tunnel.status().ifindex()) : kNone;
}

std::string ListText(const google::protobuf::RepeatedPtrField<std::string>& items) {
  return items.empty() ? kNone : absl::StrJoin(items, ", ");
}

// Control characters (line breaks above all) would break the one-line-per-field layout.
std::string OneLine(absl::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

// Labels sorted by key (a proto map has no order).
std::vector<std::pair<std::string, std::string>> SortedLabels(
    const google::protobuf::Map<std::string, std::string>& labels) {
  std::vector<std::pair<std::string, std::string>> sorted(labels.begin(), labels.end());
  std::sort(sorted.begin(), sorted.end());
  return sorted;
}

std::string JoinLabels(const google::protobuf::Map<std::string, std::string>& labels,
                       absl::string_view separator) {
  if (labels.empty()) return kNone;
  return OneLine(absl::StrJoin(SortedLabels(labels), separator, absl::PairFormatter("=")));
}

std::string TimeText(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return kNone;
  return google::protobuf::util::TimeUtil::ToString(time);
}

std::string TextOrNone(absl::string_view text) { return text.empty() ? kNone : OneLine(text); }

bool IsGre(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_GRE || mode == v1::TUNNEL_MODE_GRETAP ||
         mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6GRETAP;
}

bool IsIpv6Underlay(v1::TunnelMode mode) {
  return mode == v1::TUNNEL_MODE_IP6GRE || mode == v1::TUNNEL_MODE_IP6GRETAP ||
         mode == v1::TUNNEL_MODE_IP6TNL;
}

// "10s", "0.5s": seconds, with a fraction (to the millisecond) only when there is one.
std::string IntervalText(const google::protobuf::Duration& d) {
  const int64_t millis = d.seconds() * 1000 + d.nanos() / 1'000'000;
  std::string text = absl::StrFormat("%d.%03d", millis / 1000, millis % 1000);
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  return text + "s";
}

// The tunnel's options as `ip -d link show` prints them: per-direction GRE keys, checksums
// and sequencing, then ttl (hoplimit for IPv6 underlays), tos, pmtudisc, ignore-df, and the
// keepalive. `all`: also what is in effect by default (ttl inherit, pmtudisc, the keys that
// come from `key`); else only what was set.
std::vector<std::string> OptionWords(const v1::Tunnel& t, bool all) {
  std::vector<std::string> words;
  const bool ipv6 = IsIpv6Underlay(t.mode());
  if (IsGre(t.mode())) {
    // Keys that only repeat `key` are the KEY column's, unless `all`.
    if (t.has_input_key() || (all && t.has_key())) {
      words.push_back(absl::StrCat("ikey ", t.has_input_key() ? t.input_key() : t.key()));
    }
    if (t.has_output_key() || (all && t.has_key())) {
      words.push_back(absl::StrCat("okey ", t.has_output_key() ? t.output_key() : t.key()));
    }
    if (t.checksum() || t.input_checksum()) words.push_back("icsum");
    if (t.checksum() || t.output_checksum()) words.push_back("ocsum");
    if (t.sequence() || t.input_sequence()) words.push_back("iseq");
    if (t.sequence() || t.output_sequence()) words.push_back("oseq");
  }
  const char* ttl = ipv6 ? "hoplimit" : "ttl";
  if (t.has_ttl()) {
    words.push_back(t.ttl() == 0 ? absl::StrCat(ttl, " inherit") : absl::StrCat(ttl, " ", t.ttl()));
  } else if (all) {
    words.push_back(ipv6 ? absl::StrCat(ttl, " 64") : absl::StrCat(ttl, " inherit"));
  }
  const char* tos = ipv6 ? "tclass" : "tos";
  if (t.inherit_tos()) {
    words.push_back(absl::StrCat(tos, " inherit"));
  } else if (t.tos() != 0) {
    words.push_back(absl::StrFormat("%s 0x%02x", tos, t.tos()));
  }
  if (!ipv6) {
    if (t.has_pmtudisc() && !t.pmtudisc()) {
      words.push_back("nopmtudisc");
    } else if (all) {
      words.push_back("pmtudisc");
    }
  }
  if (t.ignore_df()) words.push_back("ignore-df");
  if (t.encap().type() == v1::ENCAP_TYPE_FOU) {
    // Three words, as ip-link(8) takes them (the list shows each as KEYWORD=VALUE).
    words.push_back("encap fou");
    words.push_back(absl::StrCat("encap-sport ", t.encap().sport() == 0
                                                     ? std::string("auto")
                                                     : absl::StrCat(t.encap().sport())));
    words.push_back(absl::StrCat("encap-dport ", t.encap().dport() == 0
                                                     ? std::string("4754")
                                                     : absl::StrCat(t.encap().dport())));
  }
  const google::protobuf::Duration& interval = t.keepalive().interval();
  if (interval.seconds() != 0 || interval.nanos() != 0) {
    words.push_back(absl::StrCat("keepalive ", IntervalText(interval), ",",
                                 t.keepalive().retries() == 0 ? 3 : t.keepalive().retries()));
  }
  return words;
}

std::string PathMtuText(const v1::Tunnel& tunnel) {
  return tunnel.status().path_mtu() != 0 ? absl::StrCat(tunnel.status().path_mtu()) : kNone;
}

std::string PeerText(const v1::Tunnel& tunnel) {
  if (!tunnel.status().has_keepalive()) return kNone;
  return tunnel.status().keepalive().peer_alive() ? "alive" : "dead";
}

bool IsPeerEvent(v1::TunnelEvent::Type type) {
  return type == v1::TunnelEvent::PEER_ADDED || type == v1::TunnelEvent::PEER_UPDATED ||
         type == v1::TunnelEvent::PEER_DELETED || type == v1::TunnelEvent::PEER_STATE_CHANGED;
}

// Unset: the tunnel's output key is sent.
std::string PeerKeyText(const v1::Peer& peer) {
  return peer.has_key() ? absl::StrCat(peer.key()) : kNone;
}

std::string PeerPathMtuText(const v1::Peer& peer) {
  return peer.status().path_mtu() != 0 ? absl::StrCat(peer.status().path_mtu()) : kNone;
}

std::string AliveText(const v1::PeerStatus& status) {
  if (!status.has_keepalive()) return kNone;
  return status.keepalive().peer_alive() ? "alive" : "dead";
}

// "10s,3" as `keepalive` takes it; "-" when off.
std::string KeepaliveText(const v1::Keepalive& keepalive) {
  const google::protobuf::Duration& interval = keepalive.interval();
  if (interval.seconds() == 0 && interval.nanos() == 0) return kNone;
  return absl::StrCat(IntervalText(interval), ",",
                      keepalive.retries() == 0 ? 3 : keepalive.retries());
}

// The round-trip time to the microsecond ("1.234ms"); "-" before the first reply.
std::string RttText(const v1::KeepaliveStatus& keepalive) {
  if (!keepalive.has_rtt()) return kNone;
  const int64_t micros = keepalive.rtt().seconds() * 1'000'000 + keepalive.rtt().nanos() / 1000;
  return absl::StrFormat("%d.%03dms", micros / 1000, micros % 1000);
}

// Rows of cells, the first the header, as aligned columns two spaces apart (no padding
// after the last column).
std::string AlignColumns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const std::vector<std::string>& row : rows) {
    if (row.size() > width.size()) width.resize(row.size());
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const std::vector<std::string>& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out += row[i];
      if (i + 1 < row.size()) out.append(width[i] - row[i].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool indent) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = indent;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print JSON: ", status.ToString()));
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

}  // namespace

std::string ModeName(v1::TunnelMode mode) {
  switch (mode) {
    case v1::TUNNEL_MODE_UNSPECIFIED:
      return "unspecified";
    case v1::TUNNEL_MODE_GRE:
      return "gre";
    case v1::TUNNEL_MODE_GRETAP:
      return "gretap";
    case v1::TUNNEL_MODE_IPIP:
      return "ipip";
    case v1::TUNNEL_MODE_SIT:
      return "sit";
    case v1::TUNNEL_MODE_IP6GRE:
      return "ip6gre";
    case v1::TUNNEL_MODE_IP6GRETAP:
      return "ip6gretap";
    case v1::TUNNEL_MODE_IP6TNL:
      return "ip6tnl";
    default:
      return absl::StrCat(static_cast<int>(mode));
  }
}

std::string StateName(v1::OperState state) {
  switch (state) {
    case v1::OPER_STATE_UNSPECIFIED:
      return "unknown";
    case v1::OPER_STATE_UP:
      return "up";
    case v1::OPER_STATE_DOWN:
      return "down";
    case v1::OPER_STATE_ERROR:
      return "error";
    default:
      return absl::StrCat(static_cast<int>(state));
  }
}

std::string EventTypeName(v1::TunnelEvent::Type type) {
  if (v1::TunnelEvent::Type_IsValid(type) && type != v1::TunnelEvent::TYPE_UNSPECIFIED) {
    return v1::TunnelEvent::Type_Name(type);
  }
  return absl::StrCat(static_cast<int>(type));
}

std::string ActionName(v1::TunnelChange::Action action) {
  switch (action) {
    case v1::TunnelChange::UNCHANGED:
      return "unchanged";
    case v1::TunnelChange::CREATE:
      return "create";
    case v1::TunnelChange::UPDATE:
      return "update";
    case v1::TunnelChange::RECREATE:
      return "recreate";
    case v1::TunnelChange::DELETE:
      return "delete";
    default:
      return absl::StrCat(static_cast<int>(action));
  }
}

std::string LabelsText(const google::protobuf::Map<std::string, std::string>& labels) {
  return JoinLabels(labels, ", ");
}

std::string FormatTunnelTable(const v1::ListTunnelsResponse& response) {
  bool labels = false;
  bool path_mtu = false;
  bool peer = false;
  bool options = false;
  for (const v1::Tunnel& t : response.tunnels()) {
    labels = labels || !t.labels().empty();
    path_mtu = path_mtu || t.status().path_mtu() != 0;
    peer = peer || t.status().has_keepalive();
    options = options || !OptionWords(t, /*all=*/false).empty();
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back(
      {"NAME", "MODE", "LOCAL", "REMOTE", "KEY", "MTU", "STATE", "IFINDEX", "RX_PKTS", "TX_PKTS"});
  if (path_mtu) rows.back().push_back("PATH_MTU");
  if (peer) rows.back().push_back("PEER");
  if (options) rows.back().push_back("OPTIONS");
  if (labels) rows.back().push_back("LABELS");
  for (const v1::Tunnel& t : response.tunnels()) {
    const v1::TunnelCounters& counters = t.status().counters();
    rows.push_back({OneLine(t.name()), ModeName(t.mode()), OneLine(LocalText(t)),
                    OneLine(RemoteText(t)), KeyText(t), MtuText(t), StateName(t.status().state()),
                    IfindexText(t), absl::StrCat(counters.rx_packets()),
                    absl::StrCat(counters.tx_packets())});
    if (path_mtu) rows.back().push_back(PathMtuText(t));
    if (peer) rows.back().push_back(PeerText(t));
    // No spaces inside the cells: OPTIONS ("ikey=5,okey=5,icsum") and LABELS columns stay
    // one word per row.
    if (options) {
      std::vector<std::string> words = OptionWords(t, /*all=*/false);
      for (std::string& w : words) std::replace(w.begin(), w.end(), ' ', '=');
      rows.back().push_back(words.empty() ? kNone : absl::StrJoin(words, ","));
    }
    if (labels) rows.back().push_back(JoinLabels(t.labels(), ","));
  }
  return AlignColumns(rows);
}

std::string FormatTunnelDetail(const v1::Tunnel& t) {
  const v1::TunnelStatus& status = t.status();
  const v1::TunnelCounters& counters = status.counters();
  std::string mtu = MtuText(t);
  if (t.mtu() == 0 && status.mtu() != 0) absl::StrAppend(&mtu, " (auto)");
  std::string out = absl::StrCat(                                           //
      "name: ", OneLine(t.name()), "\n",                                    //
      "mode: ", ModeName(t.mode()), "\n",                                   //
      "local: ", OneLine(LocalText(t)), "\n",                               //
      "remote: ", OneLine(RemoteText(t)), "\n",                             //
      "key: ", KeyText(t), "\n",                                            //
      "mtu: ", mtu, "\n",                                                   //
      "options: ", absl::StrJoin(OptionWords(t, /*all=*/true), " "), "\n",  //
      "addresses: ", OneLine(ListText(t.addresses())), "\n",                //
      "routes: ", OneLine(ListText(t.routes())), "\n",                      //
      "labels: ", LabelsText(t.labels()), "\n",                             //
      "state: ", StateName(status.state()), "\n");
  if (!status.reason().empty()) absl::StrAppend(&out, "reason: ", OneLine(status.reason()), "\n");
  absl::StrAppend(&out,                                         //
                  "ifindex: ", IfindexText(t), "\n",            //
                  "rx_packets: ", counters.rx_packets(), "\n",  //
                  "rx_bytes: ", counters.rx_bytes(), "\n",      //
                  "rx_dropped: ", counters.rx_dropped(), "\n",  //
                  "tx_packets: ", counters.tx_packets(), "\n",  //
                  "tx_bytes: ", counters.tx_bytes(), "\n",      //
                  "tx_dropped: ", counters.tx_dropped(), "\n",  //
                  "path_mtu: ", PathMtuText(t), "\n");
  if (status.has_keepalive()) {
    const v1::KeepaliveStatus& k = status.keepalive();
    absl::StrAppend(&out,                                        //
                    "keepalive_peer: ", PeerText(t), "\n",       //
                    "keepalive_sent: ", k.sent(), "\n",          //
                    "keepalive_replies: ", k.replies(), "\n",    //
                    "keepalive_answered: ", k.answered(), "\n",  //
                    "keepalive_last_reply: ", TimeText(k.last_reply_time()), "\n");
  }
  absl::StrAppend(&out,                                                   //
                  "etag: ", TextOrNone(t.etag()), "\n",                   //
                  "create_time: ", TimeText(status.create_time()), "\n",  //
                  "update_time: ", TimeText(status.update_time()), "\n");
  return out;
}

std::string FormatUpdate(const v1::UpdateTunnelResponse& response) {
  std::string out = FormatTunnelDetail(response.tunnel());
  if (response.recreated()) {
    absl::StrAppend(&out, "recreated: ", OneLine(ListText(response.changed_fields())), "\n");
  }
  return out;
}

std::string FormatWatchEvent(const v1::TunnelEvent& event) {
  std::string name = kNone;
  std::string state = kNone;
  if (IsPeerEvent(event.type())) {
    name = absl::StrCat(TextOrNone(event.tunnel().name()), "/", TextOrNone(event.peer().name()));
    state = StateName(event.peer().status().state());
  } else if (event.has_tunnel()) {
    name = TextOrNone(event.tunnel().name());
    state = StateName(event.tunnel().status().state());
  }
  // What was repaired, or why the state changed, after the fixed columns.
  return absl::StrCat(event.revision(), " ", EventTypeName(event.type()), " ", name, " ", state,
                      event.detail().empty() ? "" : " ", OneLine(event.detail()), "\n");
}

namespace {

// The NAME ACTION CHANGED table of an apply's changes (TunnelChange or PeerChange).
template <typename Change>
std::string ChangesTable(const google::protobuf::RepeatedPtrField<Change>& changes) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "ACTION", "CHANGED"});
  for (const Change& change : changes) {
    rows.push_back({TextOrNone(change.name()), ActionName(change.action()),
                    change.changed_fields().empty()
                        ? kNone
                        : OneLine(absl::StrJoin(change.changed_fields(), ","))});
  }
  return AlignColumns(rows);
}

std::string AppliedLine(bool dry_run, uint64_t revision) {
  if (dry_run) return "dry run: nothing was changed\n";
  return absl::StrCat("applied at revision ", revision, "\n");
}

}  // namespace

std::string FormatApplyChanges(const v1::ApplyTunnelsResponse& response) {
  return ChangesTable(response.changes()) + AppliedLine(response.dry_run(), response.revision());
}

std::string FormatPeerTable(const v1::ListPeersResponse& response) {
  bool labels = false;
  bool keepalive = false;
  for (const v1::Peer& p : response.peers()) {
    labels = labels || !p.labels().empty();
    keepalive = keepalive || p.status().has_keepalive();
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "UNDERLAY", "KEY", "ALLOWED", "STATE", "RX_PKTS", "TX_PKTS", "PATH_MTU",
                  "LAST_RECEIVE"});
  if (keepalive) rows.back().push_back("KEEPALIVE");
  if (labels) rows.back().push_back("LABELS");
  for (const v1::Peer& p : response.peers()) {
    const v1::PeerStatus& status = p.status();
    // No spaces inside the cells: one word per column.
    rows.push_back(
        {OneLine(p.name()), TextOrNone(p.underlay()), PeerKeyText(p),
         p.allowed_prefixes().empty() ? kNone : OneLine(absl::StrJoin(p.allowed_prefixes(), ",")),
         StateName(status.state()), absl::StrCat(status.counters().rx_packets()),
         absl::StrCat(status.counters().tx_packets()), PeerPathMtuText(p),
         TimeText(status.last_receive_time())});
    if (keepalive) rows.back().push_back(AliveText(status));
    if (labels) rows.back().push_back(JoinLabels(p.labels(), ","));
  }
  return AlignColumns(rows);
}

std::string FormatPeerDetail(const v1::Peer& p) {
  const v1::PeerStatus& status = p.status();
  const v1::TunnelCounters& counters = status.counters();
  std::string out = absl::StrCat(                                           //
      "name: ", OneLine(p.name()), "\n",                                    //
      "underlay: ", TextOrNone(p.underlay()), "\n",                         //
      "key: ", PeerKeyText(p), "\n",                                        //
      "allowed_prefixes: ", OneLine(ListText(p.allowed_prefixes())), "\n",  //
      "keepalive: ", KeepaliveText(p.keepalive()), "\n",                    //
      "labels: ", LabelsText(p.labels()), "\n",                             //
      "state: ", StateName(status.state()), "\n");
  if (!status.reason().empty()) absl::StrAppend(&out, "reason: ", OneLine(status.reason()), "\n");
  absl::StrAppend(&out,                                         //
                  "rx_packets: ", counters.rx_packets(), "\n",  //
                  "rx_bytes: ", counters.rx_bytes(), "\n",      //
                  "rx_dropped: ", counters.rx_dropped(), "\n",  //
                  "tx_packets: ", counters.tx_packets(), "\n",  //
                  "tx_bytes: ", counters.tx_bytes(), "\n",      //
                  "tx_dropped: ", counters.tx_dropped(), "\n",  //
                  "path_mtu: ", PeerPathMtuText(p), "\n",       //
                  "last_receive: ", TimeText(status.last_receive_time()), "\n");
  if (status.has_keepalive()) {
    const v1::KeepaliveStatus& k = status.keepalive();
    absl::StrAppend(&out,                                                           //
                    "keepalive_peer: ", AliveText(status), "\n",                    //
                    "keepalive_sent: ", k.sent(), "\n",                             //
                    "keepalive_replies: ", k.replies(), "\n",                       //
                    "keepalive_answered: ", k.answered(), "\n",                     //
                    "keepalive_last_reply: ", TimeText(k.last_reply_time()), "\n",  //
                    "keepalive_rtt: ", RttText(k), "\n");
  }
  absl::StrAppend(&out,                                                   //
                  "etag: ", TextOrNone(p.etag()), "\n",                   //
                  "create_time: ", TimeText(status.create_time()), "\n",  //
                  "update_time: ", TimeText(status.update_time()), "\n");
  return out;
}

std::string FormatPeerApplyChanges(const v1::ApplyPeersResponse& response) {
  return absl::StrCat(ChangesTable(response.changes()), "unchanged: ", response.unchanged(), "\n",
                      AppliedLine(response.dry_run(), response.revision()));
}

std::string FormatAgentInfo(const v1::AgentInfo& info) {
  std::vector<std::string> modes;
  for (int mode : info.supported_modes())
    modes.push_back(ModeName(static_cast<v1::TunnelMode>(mode)));
  return absl::StrCat(                                                                //
      "version: ", TextOrNone(info.version()), "\n",                                  //
      "node_name: ", TextOrNone(info.node_name()), "\n",                              //
      "supported_modes: ", modes.empty() ? kNone : absl::StrJoin(modes, ", "), "\n",  //
      "features: ", OneLine(ListText(info.features())), "\n",                         //
      "io_backend: ", TextOrNone(info.io_backend()), "\n",                            //
      "dataplane_workers: ", info.dataplane_workers(), "\n",                          //
      "dataplane_cpus: ", TextOrNone(info.dataplane_cpus()), "\n",                    //
      "max_tunnels: ", info.max_tunnels(), "\n",                                      //
      "max_peers_per_tunnel: ", info.max_peers_per_tunnel(), "\n",                    //
      "tunnel_count: ", info.tunnel_count(), "\n",                                    //
      "revision: ", info.revision(), "\n",                                            //
      "start_time: ", TimeText(info.start_time()), "\n");
}

absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message) {
  return ToJson(message, /*indent=*/true);
}

absl::StatusOr<std::string> FormatJsonLine(const google::protobuf::Message& message) {
  return ToJson(message, /*indent=*/false);
}

}  // namespace tunnelagent::tunnelctl
