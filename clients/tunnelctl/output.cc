#include "clients/tunnelctl/output.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

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

std::string FormatTunnelTable(const v1::ListTunnelsResponse& response) {
  constexpr size_t kColumns = 10;
  using Row = std::array<std::string, kColumns>;
  std::vector<Row> rows;
  rows.push_back(Row{"NAME", "MODE", "LOCAL", "REMOTE", "KEY", "MTU", "STATE", "IFINDEX", "RX_PKTS",
                     "TX_PKTS"});
  for (const v1::Tunnel& t : response.tunnels()) {
    const v1::TunnelCounters& counters = t.status().counters();
    rows.push_back(Row{OneLine(t.name()), ModeName(t.mode()), OneLine(LocalText(t)),
                       OneLine(t.remote()), KeyText(t), MtuText(t), StateName(t.status().state()),
                       IfindexText(t), absl::StrCat(counters.rx_packets()),
                       absl::StrCat(counters.tx_packets())});
  }
  std::array<size_t, kColumns> width{};
  for (const Row& row : rows) {
    for (size_t i = 0; i < kColumns; ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const Row& row : rows) {
    for (size_t i = 0; i < kColumns; ++i) {
      out += row[i];
      if (i + 1 < kColumns) out.append(width[i] - row[i].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
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
      "state: ", StateName(status.state()), "\n");
  if (!status.reason().empty()) absl::StrAppend(&out, "reason: ", OneLine(status.reason()), "\n");
  absl::StrAppend(&out,                                         //
                  "ifindex: ", IfindexText(t), "\n",            //
                  "rx_packets: ", counters.rx_packets(), "\n",  //
                  "rx_bytes: ", counters.rx_bytes(), "\n",      //
                  "rx_dropped: ", counters.rx_dropped(), "\n",  //
                  "tx_packets: ", counters.tx_packets(), "\n",  //
                  "tx_bytes: ", counters.tx_bytes(), "\n",      //
                  "tx_dropped: ", counters.tx_dropped(), "\n");
  return out;
}

absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print JSON: ", status.ToString()));
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

std::string StatusCodeName(int code) {
  if (code >= 0 && code <= 16) {
    std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
    if (!name.empty()) return name;
  }
  return absl::StrCat("CODE_", code);
}

std::string FormatRpcError(absl::string_view method, int code, absl::string_view message) {
  std::string out = absl::StrCat(method, ": ", StatusCodeName(code));
  if (!message.empty()) absl::StrAppend(&out, ": ", OneLine(message));
  return out;
}

}  // namespace tunnelagent::tunnelctl
