#include "clients/tunnelctl/apply_file.h"

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"

namespace tunnelagent::tunnelctl {
namespace {

std::string OneLine(absl::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

// ":<line>:<column>" of `offset` in `content` (both from 1).
std::string Position(absl::string_view content, size_t offset) {
  absl::string_view before = content.substr(0, std::min(content.size(), offset));
  const size_t line = static_cast<size_t>(std::count(before.begin(), before.end(), '\n')) + 1;
  const size_t line_start = before.rfind('\n');
  const size_t column =
      line_start == absl::string_view::npos ? before.size() + 1 : before.size() - line_start;
  return absl::StrCat(":", line, ":", column);
}

// What a one-line error refused, as it is written in the file: the value of `invalid value X
// for type ...` (quoted or not), or the key of `NAME: Cannot find field.`. Empty when the
// message names neither.
std::string Refused(absl::string_view problem) {
  constexpr absl::string_view kValue = "invalid value ";
  if (size_t at = problem.find(kValue); at != absl::string_view::npos) {
    absl::string_view value = problem.substr(at + kValue.size());
    return std::string(value.substr(0, value.find(" for type")));
  }
  if (size_t at = problem.find(": Cannot find field"); at != absl::string_view::npos) {
    absl::string_view name = problem.substr(0, at);
    if (size_t space = name.rfind(' '); space != absl::string_view::npos) {
      name = name.substr(space + 1);
    }
    return name.empty() ? "" : absl::StrCat("\"", name, "\"");
  }
  return "";
}

// The protobuf JSON parser reports a syntax error as three lines: the problem, up to 20
// characters either side of it, and a caret under it. Returns ":<line>:<column>: <problem>"
// when that context occurs exactly once in `content`, else ": <problem> (near '<context>')".
// Other errors ("tunels: Cannot find field.", "invalid value ...") are one line: where what
// they refused occurs exactly once in `content`, with its line and column too.
std::string DescribeJsonError(absl::string_view content, absl::string_view message) {
  size_t first = message.find('\n');
  size_t last = message.rfind('\n');
  if (first == absl::string_view::npos || first == last) {
    const std::string refused = Refused(message);
    const size_t at = refused.empty() ? absl::string_view::npos : content.find(refused);
    if (at != absl::string_view::npos && content.find(refused, at + 1) == absl::string_view::npos) {
      return absl::StrCat(Position(content, at), ": ", OneLine(message));
    }
    return absl::StrCat(": ", OneLine(message));
  }
  absl::string_view problem = message.substr(0, first);
  absl::string_view context = message.substr(first + 1, last - first - 1);
  absl::string_view caret = message.substr(last + 1);
  size_t at = content.find(context);
  if (!context.empty() && at != absl::string_view::npos &&
      content.find(context, at + 1) == absl::string_view::npos && absl::EndsWith(caret, "^")) {
    return absl::StrCat(Position(content, at + caret.size() - 1), ": ", OneLine(problem));
  }
  return absl::StrCat(": ", OneLine(problem), " (near '",
                      OneLine(absl::StripAsciiWhitespace(context)), "')");
}

// The address fields of `tunnel`, by their JSON names; empty ones are the agent's to judge
// (a missing remote, a local left to the kernel).
absl::Status CheckTunnelAddresses(const v1::Tunnel& tunnel) {
  if (!tunnel.remote().empty()) {
    if (absl::Status s = CheckAddress("remote", tunnel.remote()); !s.ok()) return s;
  }
  if (!tunnel.local().empty()) {
    if (absl::Status s = CheckAddress("local", tunnel.local()); !s.ok()) return s;
  }
  for (int i = 0; i < tunnel.addresses_size(); ++i) {
    absl::Status s = CheckPrefix(absl::StrCat("addresses[", i, "]"), tunnel.addresses(i));
    if (!s.ok()) return s;
  }
  for (int i = 0; i < tunnel.routes_size(); ++i) {
    absl::Status s = CheckPrefix(absl::StrCat("routes[", i, "]"), tunnel.routes(i));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// A peer's name, addresses and prefixes, by their JSON names; an empty underlay is the
// agent's to judge.
absl::Status CheckPeer(const v1::Peer& peer) {
  if (absl::Status s = CheckPeerName(peer.name()); !s.ok()) return s;
  if (!peer.underlay().empty()) {
    if (absl::Status s = CheckAddress("underlay", peer.underlay()); !s.ok()) return s;
  }
  for (int i = 0; i < peer.allowed_prefixes_size(); ++i) {
    absl::Status s =
        CheckNetworkPrefix(absl::StrCat("allowedPrefixes[", i, "]"), peer.allowed_prefixes(i));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Parses `content` into `request`: a JSON object (the request), or a bare JSON array, read as
// the request's `list_field` (the JSON name of its repeated field). On error, returns the
// problem as DescribeJsonError does.
template <typename Request>
absl::Status ParseJsonRequest(absl::string_view content, absl::string_view list_field,
                              Request* request, bool* bare) {
  absl::string_view json = absl::StripAsciiWhitespace(content);
  if (json.empty()) return absl::InvalidArgumentError(": empty (want a JSON object or array)");
  *bare = json.front() == '[';
  if (!*bare && json.front() != '{') {
    return absl::InvalidArgumentError(
        absl::StrCat(": not JSON (want an object like {\"owner\": ..., \"", list_field,
                     "\": [...]} or an array of ", list_field, ")"));
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  // A bare array is the request's list; the wrapper stays out of the messages.
  std::string text = *bare ? absl::StrCat("{\"", list_field, "\":", json, "}") : std::string(json);
  auto status = google::protobuf::util::JsonStringToMessage(text, request, options);
  if (!status.ok()) {
    std::string message(status.message());
    if (*bare) message = absl::StrReplaceAll(message, {{absl::StrCat("(", list_field, "["), "(["}});
    return absl::InvalidArgumentError(DescribeJsonError(content, message));
  }
  return absl::OkStatus();
}

// Sets the owner of an apply from --owner and the file, as ParseApplyFile says; `what` names
// the file's list ("tunnels", "peers").
template <typename Request>
absl::Status MergeApplyFlags(const Command& command, bool bare, absl::string_view what,
                             Request* request) {
  if (!command.owner.empty()) {
    if (!request->owner().empty() && request->owner() != command.owner) {
      return absl::InvalidArgumentError(absl::StrCat(
          ": owner '", OneLine(request->owner()), "' differs from --owner '", command.owner, "'"));
    }
    request->set_owner(command.owner);
  } else if (request->owner().empty()) {
    return absl::InvalidArgumentError(
        bare ? absl::StrCat(": an array of ", what, " needs --owner")
             : std::string(": no \"owner\" (set it in the file or pass --owner)"));
  }
  if (command.prune) request->set_prune(true);
  if (command.dry_run) request->set_dry_run(true);
  if (!command.request_id.empty()) request->set_request_id(command.request_id);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::ApplyTunnelsRequest> ParseApplyFile(absl::string_view content,
                                                       absl::string_view source,
                                                       const Command& command) {
  auto error = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat("apply: ", source, problem));
  };
  v1::ApplyTunnelsRequest request;
  bool bare = false;
  if (absl::Status s = ParseJsonRequest(content, "tunnels", &request, &bare); !s.ok()) {
    return error(s.message());
  }

  // Addresses are checked as on the command line, so that a typo in the file is bad input
  // (exit 1) like the same typo in `create`, not a refusal by the agent.
  for (int i = 0; i < request.tunnels_size(); ++i) {
    if (absl::Status s = CheckTunnelAddresses(request.tunnels(i)); !s.ok()) {
      return error(absl::StrCat(": tunnels[", i, "] (", OneLine(request.tunnels(i).name()),
                                "): ", OneLine(s.message())));
    }
  }

  if (absl::Status s = MergeApplyFlags(command, bare, "tunnels", &request); !s.ok()) {
    return error(s.message());
  }
  return request;
}

absl::StatusOr<v1::ApplyPeersRequest> ParsePeerApplyFile(absl::string_view content,
                                                         absl::string_view source,
                                                         const Command& command) {
  auto error = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat("peer apply: ", source, problem));
  };
  v1::ApplyPeersRequest request;
  bool bare = false;
  if (absl::Status s = ParseJsonRequest(content, "peers", &request, &bare); !s.ok()) {
    return error(s.message());
  }
  // The file may name its tunnel, as a check that it is applied to the right one.
  if (!request.tunnel().empty() && request.tunnel() != command.name) {
    return error(absl::StrCat(": tunnel '", OneLine(request.tunnel()), "' differs from TUNNEL '",
                              command.name, "'"));
  }
  request.set_tunnel(command.name);
  for (int i = 0; i < request.peers_size(); ++i) {
    if (absl::Status s = CheckPeer(request.peers(i)); !s.ok()) {
      return error(absl::StrCat(": peers[", i, "] (", OneLine(request.peers(i).name()),
                                "): ", OneLine(s.message())));
    }
  }
  if (absl::Status s = MergeApplyFlags(command, bare, "peers", &request); !s.ok()) {
    return error(s.message());
  }
  return request;
}

}  // namespace tunnelagent::tunnelctl
