#include "clients/tunnelctl/output.h"

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

namespace tunnelagent::tunnelctl {
namespace {

constexpr char kNone[] = "-";

std::string LocalText(const v1::Tunnel& tunnel) {
  return tunnel.local().empty() ? "any" : tunnel.local();
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
  for (const v1::Tunnel& t : response.tunnels()) labels = labels || !t.labels().empty();
  std::vector<std::vector<std::string>> rows;
  rows.push_back(
      {"NAME", "MODE", "LOCAL", "REMOTE", "KEY", "MTU", "STATE", "IFINDEX", "RX_PKTS", "TX_PKTS"});
  if (labels) rows.back().push_back("LABELS");
  for (const v1::Tunnel& t : response.tunnels()) {
    const v1::TunnelCounters& counters = t.status().counters();
    rows.push_back({OneLine(t.name()), ModeName(t.mode()), OneLine(LocalText(t)),
                    OneLine(t.remote()), KeyText(t), MtuText(t), StateName(t.status().state()),
                    IfindexText(t), absl::StrCat(counters.rx_packets()),
                    absl::StrCat(counters.tx_packets())});
    // No spaces inside the cell: a LABELS column stays one word per row.
    if (labels) rows.back().push_back(JoinLabels(t.labels(), ","));
  }
  return AlignColumns(rows);
}

std::string FormatTunnelDetail(const v1::Tunnel& t) {
  const v1::TunnelStatus& status = t.status();
  const v1::TunnelCounters& counters = status.counters();
  std::string mtu = MtuText(t);
  if (t.mtu() == 0 && status.mtu() != 0) absl::StrAppend(&mtu, " (auto)");
  std::string out = absl::StrCat(                             //
      "name: ", OneLine(t.name()), "\n",                      //
      "mode: ", ModeName(t.mode()), "\n",                     //
      "local: ", OneLine(LocalText(t)), "\n",                 //
      "remote: ", OneLine(t.remote()), "\n",                  //
      "key: ", KeyText(t), "\n",                              //
      "mtu: ", mtu, "\n",                                     //
      "addresses: ", OneLine(ListText(t.addresses())), "\n",  //
      "routes: ", OneLine(ListText(t.routes())), "\n",        //
      "labels: ", LabelsText(t.labels()), "\n",               //
      "state: ", StateName(status.state()), "\n");
  if (!status.reason().empty()) absl::StrAppend(&out, "reason: ", OneLine(status.reason()), "\n");
  absl::StrAppend(&out,                                                   //
                  "ifindex: ", IfindexText(t), "\n",                      //
                  "rx_packets: ", counters.rx_packets(), "\n",            //
                  "rx_bytes: ", counters.rx_bytes(), "\n",                //
                  "rx_dropped: ", counters.rx_dropped(), "\n",            //
                  "tx_packets: ", counters.tx_packets(), "\n",            //
                  "tx_bytes: ", counters.tx_bytes(), "\n",                //
                  "tx_dropped: ", counters.tx_dropped(), "\n",            //
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
  if (event.has_tunnel()) {
    name = TextOrNone(event.tunnel().name());
    state = StateName(event.tunnel().status().state());
  }
  return absl::StrCat(event.revision(), " ", EventTypeName(event.type()), " ", name, " ", state,
                      "\n");
}

std::string FormatApplyChanges(const v1::ApplyTunnelsResponse& response) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "ACTION", "CHANGED"});
  for (const v1::TunnelChange& change : response.changes()) {
    rows.push_back({TextOrNone(change.name()), ActionName(change.action()),
                    change.changed_fields().empty()
                        ? kNone
                        : OneLine(absl::StrJoin(change.changed_fields(), ","))});
  }
  std::string out = AlignColumns(rows);
  if (response.dry_run()) {
    out += "dry run: nothing was changed\n";
  } else {
    absl::StrAppend(&out, "applied at revision ", response.revision(), "\n");
  }
  return out;
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
      "max_tunnels: ", info.max_tunnels(), "\n",                                      //
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
