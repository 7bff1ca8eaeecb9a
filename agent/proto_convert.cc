#include "agent/proto_convert.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/validation.h"
#include "dataplane/tunnel_counters.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"

namespace tunnelagent::agent {
namespace {

using dataplane::IpAddress;
using dataplane::IpPrefix;
using dataplane::TunnelMode;

// The text is the caller's: escaped so that control bytes cannot garble logs or terminals.
std::string Quote(absl::string_view text) { return QuoteValue(text); }

absl::StatusOr<TunnelMode> ModeFromProto(int mode) {
  // proto3 enums are open: a newer client can send a number this build has never heard of,
  // and it arrives here intact rather than as UNSPECIFIED.
  switch (mode) {
    case v1::TUNNEL_MODE_UNSPECIFIED:
      return absl::InvalidArgumentError("tunnel.mode: required");
    case v1::TUNNEL_MODE_GRE:
      return TunnelMode::kGre;
    case v1::TUNNEL_MODE_GRETAP:
      return TunnelMode::kGretap;
    case v1::TUNNEL_MODE_IPIP:
      return TunnelMode::kIpip;
    case v1::TUNNEL_MODE_SIT:
      return TunnelMode::kSit;
    case v1::TUNNEL_MODE_IP6GRE:
      return TunnelMode::kIp6gre;
    case v1::TUNNEL_MODE_IP6GRETAP:
      return TunnelMode::kIp6gretap;
    case v1::TUNNEL_MODE_IP6TNL:
      return TunnelMode::kIp6tnl;
  }
  return absl::InvalidArgumentError(absl::StrCat("tunnel.mode: unknown value ", mode));
}

}  // namespace

// Empty means unspecified; ValidateSpec decides whether that is allowed for the field.
absl::StatusOr<IpAddress> AddressFromProto(absl::string_view field, const std::string& text) {
  if (text.empty()) return IpAddress();
  absl::StatusOr<IpAddress> address = IpAddress::Parse(text);
  if (!address.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", Quote(text), " is not an IP address"));
  }
  return *address;
}

absl::Status PrefixesFromProto(absl::string_view field,
                               const google::protobuf::RepeatedPtrField<std::string>& texts,
                               std::vector<IpPrefix>* out) {
  out->reserve(texts.size());
  for (int i = 0; i < texts.size(); ++i) {
    absl::StatusOr<IpPrefix> prefix = IpPrefix::Parse(texts[i]);
    if (!prefix.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "]: ", Quote(texts[i]),
                                                     " is not an IP prefix (address/length)"));
    }
    out->push_back(*prefix);
  }
  return absl::OkStatus();
}

namespace {
constexpr uint32_t kMaxByte = 255;
}  // namespace

// As google.protobuf.Duration defines it: seconds and nanos of the same sign, |nanos| < 1e9.
absl::StatusOr<absl::Duration> DurationFromProto(absl::string_view field,
                                                 const google::protobuf::Duration& d) {
  using google::protobuf::util::TimeUtil;
  if (d.seconds() < TimeUtil::kDurationMinSeconds || d.seconds() > TimeUtil::kDurationMaxSeconds ||
      d.nanos() <= -1000000000 || d.nanos() >= 1000000000 || (d.seconds() > 0 && d.nanos() < 0) ||
      (d.seconds() < 0 && d.nanos() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", d.seconds(), "s ", d.nanos(), "ns is not a valid duration"));
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

google::protobuf::Duration DurationToProto(absl::Duration d) {
  return google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

v1::OperState StateToProto(OperState state) {
  switch (state) {
    case OperState::kUp:
      return v1::OPER_STATE_UP;
    case OperState::kDown:
      return v1::OPER_STATE_DOWN;
    case OperState::kError:
      return v1::OPER_STATE_ERROR;
  }
  return v1::OPER_STATE_UNSPECIFIED;
}

google::protobuf::Timestamp TimestampFromTime(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

absl::Time TimeFromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(google::protobuf::util::TimeUtil::TimestampToNanoseconds(t));
}

void CountersToProto(const TunnelCountersSnapshot& counters, v1::TunnelCounters* out) {
#define COPY_COUNTER(member, api_field, ...) out->set_##api_field(counters.api_field);
  TUNNEL_TRAFFIC_COUNTERS(COPY_COUNTER)
  TUNNEL_DROP_COUNTERS(COPY_COUNTER)
#undef COPY_COUNTER
}

void KeepaliveToProto(const KeepaliveSnapshot& k, v1::KeepaliveStatus* out) {
  out->set_peer_alive(k.peer_alive);
#define COPY_KEEPALIVE(member, api_field, ...) out->set_##api_field(k.api_field);
  TUNNEL_KEEPALIVE_COUNTERS(COPY_KEEPALIVE)
#undef COPY_KEEPALIVE
  if (k.last_reply != absl::InfinitePast()) {
    *out->mutable_last_reply_time() = TimestampFromTime(k.last_reply);
  }
  if (k.rtt.has_value()) *out->mutable_rtt() = DurationToProto(*k.rtt);
}

std::string StableFingerprint(const google::protobuf::Message& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    out.SetSerializationDeterministic(true);  // map order must not change the fingerprint
    message.SerializeToCodedStream(&out);
  }
  // FNV-1a: stable across builds and restarts, unlike absl::Hash.
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return absl::StrFormat("%016x", hash);
}

absl::StatusOr<TunnelSpec> SpecFromProto(const v1::Tunnel& tunnel) {
  TunnelSpec spec;
  spec.name = tunnel.name();

  absl::StatusOr<TunnelMode> mode = ModeFromProto(tunnel.mode());
  if (!mode.ok()) return mode.status();
  spec.mode = *mode;

  absl::StatusOr<IpAddress> local = AddressFromProto("tunnel.local", tunnel.local());
  if (!local.ok()) return local.status();
  spec.local = *local;

  absl::StatusOr<IpAddress> remote = AddressFromProto("tunnel.remote", tunnel.remote());
  if (!remote.ok()) return remote.status();
  spec.remote = *remote;

  if (tunnel.has_key()) spec.key = tunnel.key();
  spec.mtu = tunnel.mtu();

  if (tunnel.has_input_key()) spec.input_key = tunnel.input_key();
  if (tunnel.has_output_key()) spec.output_key = tunnel.output_key();
  spec.checksum = tunnel.checksum();
  spec.input_checksum = tunnel.input_checksum();
  spec.output_checksum = tunnel.output_checksum();
  spec.sequence = tunnel.sequence();
  spec.input_sequence = tunnel.input_sequence();
  spec.output_sequence = tunnel.output_sequence();
  // The spec holds these in a byte: the range is checked here, where the wider number is seen.
  if (tunnel.has_ttl()) {
    if (tunnel.ttl() > kMaxByte) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tunnel.ttl: ", tunnel.ttl(), " is out of range 0..255 (0 = inherit the inner TTL)"));
    }
    spec.ttl = static_cast<uint8_t>(tunnel.ttl());
  }
  if (tunnel.tos() > kMaxByte) {
    return absl::InvalidArgumentError(
        absl::StrCat("tunnel.tos: ", tunnel.tos(), " is out of range 0..255"));
  }
  spec.tos = static_cast<uint8_t>(tunnel.tos());
  spec.inherit_tos = tunnel.inherit_tos();
  spec.pmtudisc = !tunnel.has_pmtudisc() || tunnel.pmtudisc();
  spec.ignore_df = tunnel.ignore_df();
  spec.multipoint = tunnel.multipoint();
  if (tunnel.has_keepalive()) {
    absl::StatusOr<absl::Duration> interval =
        DurationFromProto("tunnel.keepalive.interval", tunnel.keepalive().interval());
    if (!interval.ok()) return interval.status();
    spec.keepalive.interval = *interval;
    spec.keepalive.retries = tunnel.keepalive().retries();
  }
  if (tunnel.has_encap()) {
    const v1::Encap& encap = tunnel.encap();
    switch (encap.type()) {
      case v1::ENCAP_TYPE_NONE:
        break;
      case v1::ENCAP_TYPE_FOU:
        spec.fou.enabled = true;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("tunnel.encap.type: unknown value ", static_cast<int>(encap.type())));
    }
    for (const auto& [field, value] :
         {std::pair<const char*, uint32_t>{"tunnel.encap.sport", encap.sport()},
          std::pair<const char*, uint32_t>{"tunnel.encap.dport", encap.dport()}}) {
      if (value > 65535) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": ", value, " is out of range 0..65535"));
      }
    }
    spec.fou.sport = static_cast<uint16_t>(encap.sport());
    spec.fou.dport = static_cast<uint16_t>(encap.dport());
  }

  if (absl::Status s = PrefixesFromProto("tunnel.addresses", tunnel.addresses(), &spec.addresses);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = PrefixesFromProto("tunnel.routes", tunnel.routes(), &spec.routes); !s.ok()) {
    return s;
  }
  spec.labels.insert(tunnel.labels().begin(), tunnel.labels().end());
  TimesFromProto(tunnel, &spec.create_time, &spec.update_time);
  return spec;
}

namespace {

v1::Tunnel DesiredToProto(const TunnelSpec& spec) {
  v1::Tunnel tunnel;
  tunnel.set_name(spec.name);
  tunnel.set_mode(ModeToProto(spec.mode));
  tunnel.set_local(spec.local.ToString());
  tunnel.set_remote(spec.remote.ToString());
  if (spec.key.has_value()) tunnel.set_key(*spec.key);
  tunnel.set_mtu(spec.mtu);
  for (const IpPrefix& p : spec.addresses) tunnel.add_addresses(p.ToString());
  for (const IpPrefix& p : spec.routes) tunnel.add_routes(p.ToString());
  tunnel.mutable_labels()->insert(spec.labels.begin(), spec.labels.end());
  // Options at their defaults are left out: a tunnel that sets none serializes (and so
  // fingerprints) exactly as it did before these fields existed, so etags survive an upgrade.
  if (spec.input_key.has_value()) tunnel.set_input_key(*spec.input_key);
  if (spec.output_key.has_value()) tunnel.set_output_key(*spec.output_key);
  tunnel.set_checksum(spec.checksum);
  tunnel.set_input_checksum(spec.input_checksum);
  tunnel.set_output_checksum(spec.output_checksum);
  tunnel.set_sequence(spec.sequence);
  tunnel.set_input_sequence(spec.input_sequence);
  tunnel.set_output_sequence(spec.output_sequence);
  if (spec.ttl.has_value()) tunnel.set_ttl(*spec.ttl);
  tunnel.set_tos(spec.tos);
  tunnel.set_inherit_tos(spec.inherit_tos);
  if (!spec.pmtudisc) tunnel.set_pmtudisc(false);
  tunnel.set_ignore_df(spec.ignore_df);
  tunnel.set_multipoint(spec.multipoint);
  if (spec.keepalive.interval != absl::ZeroDuration() || spec.keepalive.retries != 0) {
    v1::Keepalive* keepalive = tunnel.mutable_keepalive();
    *keepalive->mutable_interval() = DurationToProto(spec.keepalive.interval);
    keepalive->set_retries(spec.keepalive.retries);
  }
  if (spec.fou.enabled || spec.fou.sport != 0 || spec.fou.dport != 0) {
    v1::Encap* encap = tunnel.mutable_encap();
    encap->set_type(spec.fou.enabled ? v1::ENCAP_TYPE_FOU : v1::ENCAP_TYPE_NONE);
    encap->set_sport(spec.fou.sport);
    encap->set_dport(spec.fou.dport);
  }
  return tunnel;
}

}  // namespace

std::string ComputeEtag(const TunnelSpec& spec) { return StableFingerprint(DesiredToProto(spec)); }

v1::Tunnel SpecToProto(const TunnelSpec& spec) {
  v1::Tunnel tunnel = DesiredToProto(spec);
  tunnel.set_etag(ComputeEtag(spec));
  TimesToProto(spec.create_time, spec.update_time, &tunnel);
  return tunnel;
}

v1::Tunnel TunnelToProto(const TunnelSpec& spec, const TunnelStatus& status) {
  v1::Tunnel tunnel = SpecToProto(spec);
  v1::TunnelStatus* out = tunnel.mutable_status();
  out->set_state(StateToProto(status.state));
  out->set_reason(status.reason);
  out->set_ifindex(status.ifindex);
  out->set_mtu(status.mtu);
  CountersToProto(status.counters, out->mutable_counters());
  out->set_path_mtu(status.path_mtu);
  if (status.keepalive.has_value()) KeepaliveToProto(*status.keepalive, out->mutable_keepalive());
  if (status.last_receive != absl::InfinitePast()) {
    *out->mutable_last_receive_time() = TimestampFromTime(status.last_receive);
  }
  out->set_state_changes(status.state_changes);
  uint64_t repairs = 0;
  for (const auto& [what, count] : status.repairs) repairs += count;
  out->set_repairs(repairs);
  return tunnel;
}

v1::TunnelMode ModeToProto(dataplane::TunnelMode mode) {
  switch (mode) {
    case TunnelMode::kGre:
      return v1::TUNNEL_MODE_GRE;
    case TunnelMode::kGretap:
      return v1::TUNNEL_MODE_GRETAP;
    case TunnelMode::kIpip:
      return v1::TUNNEL_MODE_IPIP;
    case TunnelMode::kSit:
      return v1::TUNNEL_MODE_SIT;
    case TunnelMode::kIp6gre:
      return v1::TUNNEL_MODE_IP6GRE;
    case TunnelMode::kIp6gretap:
      return v1::TUNNEL_MODE_IP6GRETAP;
    case TunnelMode::kIp6tnl:
      return v1::TUNNEL_MODE_IP6TNL;
  }
  return v1::TUNNEL_MODE_UNSPECIFIED;
}

}  // namespace tunnelagent::agent
