#include "agent/tunnel_fields.h"

#include <iterator>

namespace tunnelagent::agent {
namespace {

// Equality and copy of a TunnelSpec member.
#define SPEC_MEMBER(member)                                                      \
  [](const TunnelSpec& a, const TunnelSpec& b) { return a.member == b.member; }, \
      [](const TunnelSpec& from, TunnelSpec& to) { to.member = from.member; }

// Copies of a v1::Tunnel field, by the kind of field it is.
#define PROTO_SCALAR(field) \
  [](const v1::Tunnel& from, v1::Tunnel& to) { to.set_##field(from.field()); }
#define PROTO_OPTIONAL(field)                  \
  [](const v1::Tunnel& from, v1::Tunnel& to) { \
    if (from.has_##field()) {                  \
      to.set_##field(from.field());            \
    } else {                                   \
      to.clear_##field();                      \
    }                                          \
  }
#define PROTO_MESSAGE(field)                   \
  [](const v1::Tunnel& from, v1::Tunnel& to) { \
    if (from.has_##field()) {                  \
      *to.mutable_##field() = from.field();    \
    } else {                                   \
      to.clear_##field();                      \
    }                                          \
  }
// Repeated and map fields alike: the patch's elements replace the old ones.
#define PROTO_REPEATED(field) \
  [](const v1::Tunnel& from, v1::Tunnel& to) { *to.mutable_##field() = from.field(); }

// "Any" may be spelled as no address or as 0.0.0.0; both mean the same receive match.
bool SameLocal(const TunnelSpec& a, const TunnelSpec& b) {
  return a.local == b.local || (a.local.is_unspecified() && b.local.is_unspecified());
}
void CopyLocal(const TunnelSpec& from, TunnelSpec& to) { to.local = from.local; }

constexpr FieldEffect kInPlace = FieldEffect::kInPlace;
constexpr FieldEffect kDataplane = FieldEffect::kDataplane;
constexpr FieldEffect kRecreate = FieldEffect::kRecreate;

// Every field of v1::Tunnel but name (the key), etag (a precondition) and status (output
// only), in declaration order.
const TunnelField kFields[] = {
    {"mode", kRecreate, SPEC_MEMBER(mode), PROTO_SCALAR(mode)},
    {"local", kDataplane, SameLocal, CopyLocal, PROTO_SCALAR(local)},
    {"remote", kDataplane, SPEC_MEMBER(remote), PROTO_SCALAR(remote)},
    {"key", kDataplane, SPEC_MEMBER(key), PROTO_OPTIONAL(key)},
    {"mtu", kInPlace, SPEC_MEMBER(mtu), PROTO_SCALAR(mtu)},
    {"addresses", kInPlace, SPEC_MEMBER(addresses), PROTO_REPEATED(addresses)},
    {"routes", kInPlace, SPEC_MEMBER(routes), PROTO_REPEATED(routes)},
    {"labels", kInPlace, SPEC_MEMBER(labels), PROTO_REPEATED(labels)},
    {"input_key", kDataplane, SPEC_MEMBER(input_key), PROTO_OPTIONAL(input_key)},
    {"output_key", kDataplane, SPEC_MEMBER(output_key), PROTO_OPTIONAL(output_key)},
    {"checksum", kDataplane, SPEC_MEMBER(checksum), PROTO_SCALAR(checksum)},
    {"input_checksum", kDataplane, SPEC_MEMBER(input_checksum), PROTO_SCALAR(input_checksum)},
    {"output_checksum", kDataplane, SPEC_MEMBER(output_checksum), PROTO_SCALAR(output_checksum)},
    {"sequence", kDataplane, SPEC_MEMBER(sequence), PROTO_SCALAR(sequence)},
    {"input_sequence", kDataplane, SPEC_MEMBER(input_sequence), PROTO_SCALAR(input_sequence)},
    {"output_sequence", kDataplane, SPEC_MEMBER(output_sequence), PROTO_SCALAR(output_sequence)},
    {"ttl", kDataplane, SPEC_MEMBER(ttl), PROTO_OPTIONAL(ttl)},
    {"tos", kDataplane, SPEC_MEMBER(tos), PROTO_SCALAR(tos)},
    {"inherit_tos", kDataplane, SPEC_MEMBER(inherit_tos), PROTO_SCALAR(inherit_tos)},
    {"pmtudisc", kDataplane, SPEC_MEMBER(pmtudisc), PROTO_OPTIONAL(pmtudisc)},
    {"ignore_df", kDataplane, SPEC_MEMBER(ignore_df), PROTO_SCALAR(ignore_df)},
    {"keepalive", kDataplane, SPEC_MEMBER(keepalive), PROTO_MESSAGE(keepalive)},
    {"encap", kDataplane, SPEC_MEMBER(fou), PROTO_MESSAGE(encap)},
    {"multipoint", kDataplane, SPEC_MEMBER(multipoint), PROTO_SCALAR(multipoint)},
};

#undef SPEC_MEMBER
#undef PROTO_SCALAR
#undef PROTO_OPTIONAL
#undef PROTO_MESSAGE
#undef PROTO_REPEATED

bool AnyDiffers(const TunnelSpec& a, const TunnelSpec& b, FieldEffect effect) {
  for (const TunnelField& field : kFields) {
    if (field.effect == effect && !field.equal(a, b)) return true;
  }
  return false;
}

}  // namespace

absl::Span<const TunnelField> TunnelFields() { return absl::MakeConstSpan(kFields); }

const TunnelField* FindTunnelField(absl::string_view name) {
  for (const TunnelField& field : kFields) {
    if (field.name == name) return &field;
  }
  return nullptr;
}

const std::vector<std::string>& UpdatableFields() {
  static const auto* names = [] {
    auto* out = new std::vector<std::string>;
    out->reserve(std::size(kFields));
    for (const TunnelField& field : kFields) out->push_back(field.name);
    return out;
  }();
  return *names;
}

std::vector<std::string> ChangedFields(const TunnelSpec& a, const TunnelSpec& b) {
  std::vector<std::string> changed;
  for (const TunnelField& field : kFields) {
    if (!field.equal(a, b)) changed.push_back(field.name);
  }
  return changed;
}

bool NeedsNewDevice(const TunnelSpec& a, const TunnelSpec& b) {
  return AnyDiffers(a, b, FieldEffect::kRecreate);
}

bool EncapsulationChanged(const TunnelSpec& a, const TunnelSpec& b) {
  return AnyDiffers(a, b, FieldEffect::kDataplane);
}

}  // namespace tunnelagent::agent
