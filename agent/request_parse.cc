#include "agent/request_parse.h"

#include <climits>
#include <cstdint>
#include <map>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace tunnelagent::agent {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

// protobuf's own default recursion limit: a request nested deeper is refused by the parser too.
constexpr int kMaxDepth = 100;
// A map key is quoted in a field path up to this many bytes, escaped.
constexpr size_t kMaxQuotedKey = 32;

enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

bool ReadVarint(absl::string_view* in, uint64_t* value) {
  uint64_t result = 0;
  for (int i = 0; i < 10 && i < static_cast<int>(in->size()); ++i) {
    const uint8_t byte = static_cast<uint8_t>((*in)[i]);
    result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
    if ((byte & 0x80) == 0) {
      in->remove_prefix(i + 1);
      *value = result;
      return true;
    }
  }
  return false;  // cut short, or longer than any varint may be
}

bool Skip(absl::string_view* in, size_t n) {
  if (in->size() < n) return false;
  in->remove_prefix(n);
  return true;
}

std::string Join(const std::string& path, absl::string_view name) {
  return path.empty() ? std::string(name) : absl::StrCat(path, ".", name);
}

std::string Where(const std::string& path) { return path.empty() ? "the request" : path; }

// protobuf checks the UTF-8 of proto3 strings only (proto2 ones are left as they are).
bool MustBeUtf8(const FieldDescriptor& field) {
  return field.type() == FieldDescriptor::TYPE_STRING &&
         field.file()->syntax() == google::protobuf::FileDescriptor::SYNTAX_PROTO3;
}

class WireWalker {
 public:
  absl::Status Walk(absl::string_view in, const Descriptor& descriptor, const std::string& path,
                    int depth) {
    if (depth > kMaxDepth) {
      return Invalid(absl::StrCat(Where(path), " nests messages deeper than ", kMaxDepth));
    }
    std::map<int, int> seen;  // occurrences of each repeated field so far: its index
    while (!in.empty()) {
      uint64_t tag = 0;
      if (!ReadVarint(&in, &tag)) return Invalid(absl::StrCat(Where(path), ": a tag is cut short"));
      const uint64_t number = tag >> 3;
      const uint32_t wire = tag & 7;
      if (number == 0 || number > FieldDescriptor::kMaxNumber) {
        return Invalid(absl::StrCat(Where(path), ": field number ", number, " is out of range"));
      }
      const FieldDescriptor* field = descriptor.FindFieldByNumber(static_cast<int>(number));
      std::string field_path = NameOf(descriptor, field, number, path);
      if (field != nullptr && field->is_repeated() && !field->is_map() &&
          wire == kLengthDelimited && !field->is_packable()) {
        absl::StrAppend(&field_path, "[", seen[field->number()]++, "]");
      }
      switch (wire) {
        case kVarint: {
          uint64_t unused = 0;
          if (!ReadVarint(&in, &unused)) return CutShort(field_path);
          break;
        }
        case kFixed64:
          if (!Skip(&in, 8)) return CutShort(field_path);
          break;
        case kFixed32:
          if (!Skip(&in, 4)) return CutShort(field_path);
          break;
        case kLengthDelimited: {
          uint64_t length = 0;
          if (!ReadVarint(&in, &length) || length > in.size()) return CutShort(field_path);
          const absl::string_view value = in.substr(0, length);
          in.remove_prefix(length);
          if (field == nullptr) break;  // unknown: kept as it is, whatever it holds
          if (absl::Status s = CheckValue(value, *field, field_path, depth); !s.ok()) return s;
          break;
        }
        case kStartGroup:
          if (absl::Status s = SkipGroup(&in, number, field_path, depth + 1); !s.ok()) return s;
          break;
        case kEndGroup:
          return Invalid(absl::StrCat(field_path, ": a group ends that never started"));
        default:
          return Invalid(absl::StrCat(field_path, ": wire type ", wire, " does not exist"));
      }
    }
    return absl::OkStatus();
  }

 private:
  static absl::Status Invalid(std::string message) {
    return absl::InvalidArgumentError(std::move(message));
  }
  static absl::Status CutShort(const std::string& path) {
    return Invalid(absl::StrCat(path, " is cut short"));
  }

  // In a map entry the key is "<map>[...] key" and the value the entry itself.
  static std::string NameOf(const Descriptor& descriptor, const FieldDescriptor* field,
                            uint64_t number, const std::string& path) {
    if (descriptor.options().map_entry()) {
      return number == 1 ? absl::StrCat(path, " key") : path;
    }
    if (field == nullptr) return Join(path, absl::StrCat("field ", number));
    return Join(path, field->name());
  }

  absl::Status CheckValue(absl::string_view value, const FieldDescriptor& field,
                          const std::string& path, int depth) {
    if (MustBeUtf8(field)) {
      const size_t bad = FirstInvalidUtf8(value);
      if (bad == absl::string_view::npos) return absl::OkStatus();
      return Invalid(absl::StrFormat("%s is not valid UTF-8 (byte 0x%02x at offset %d)", path,
                                     static_cast<uint8_t>(value[bad]), bad));
    }
    if (field.cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return absl::OkStatus();
    if (field.is_map())
      return Walk(value, *field.message_type(), MapEntryPath(value, path), depth + 1);
    return Walk(value, *field.message_type(), path, depth + 1);
  }

  // labels["k"]: the key as the entry holds it (the last one, as protobuf takes it), escaped
  // and cut short; labels[?] when the entry has no readable key.
  static std::string MapEntryPath(absl::string_view entry, const std::string& path) {
    std::string key;
    bool found = false;
    while (!entry.empty()) {
      uint64_t tag = 0;
      if (!ReadVarint(&entry, &tag)) break;
      uint64_t value = 0;
      if ((tag & 7) == kLengthDelimited) {
        if (!ReadVarint(&entry, &value) || value > entry.size()) break;
        if ((tag >> 3) == 1) {
          absl::string_view bytes = entry.substr(0, value);
          key = absl::StrCat("\"", absl::CHexEscape(bytes.substr(0, kMaxQuotedKey)),
                             bytes.size() > kMaxQuotedKey ? "...\"" : "\"");
          found = true;
        }
        entry.remove_prefix(value);
      } else if ((tag & 7) == kVarint) {
        if (!ReadVarint(&entry, &value)) break;
        if ((tag >> 3) == 1) {
          key = absl::StrCat(value);
          found = true;
        }
      } else if ((tag & 7) == kFixed64) {
        if (!Skip(&entry, 8)) break;
      } else if ((tag & 7) == kFixed32) {
        if (!Skip(&entry, 4)) break;
      } else {
        break;
      }
    }
    return absl::StrCat(path, "[", found ? key : "?", "]");
  }

  // Skips a (long deprecated) group up to its END_GROUP.
  absl::Status SkipGroup(absl::string_view* in, uint64_t number, const std::string& path,
                         int depth) {
    if (depth > kMaxDepth) {
      return Invalid(absl::StrCat(path, " nests groups deeper than ", kMaxDepth));
    }
    for (;;) {
      uint64_t tag = 0;
      if (!ReadVarint(in, &tag)) return CutShort(path);
      uint64_t value = 0;
      switch (tag & 7) {
        case kVarint:
          if (!ReadVarint(in, &value)) return CutShort(path);
          break;
        case kFixed64:
          if (!Skip(in, 8)) return CutShort(path);
          break;
        case kFixed32:
          if (!Skip(in, 4)) return CutShort(path);
          break;
        case kLengthDelimited:
          if (!ReadVarint(in, &value) || !Skip(in, value)) return CutShort(path);
          break;
        case kStartGroup:
          if (absl::Status s = SkipGroup(in, tag >> 3, path, depth + 1); !s.ok()) return s;
          break;
        case kEndGroup:
          if ((tag >> 3) != number) {
            return Invalid(absl::StrCat(path, ": a group ends with the wrong field number"));
          }
          return absl::OkStatus();
        default:
          return Invalid(absl::StrCat(path, ": wire type ", tag & 7, " does not exist"));
      }
    }
  }
};

}  // namespace

size_t FirstInvalidUtf8(absl::string_view text) {
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t lead = static_cast<uint8_t>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint8_t second_min = 0x80;
    uint8_t second_max = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      length = 2;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      length = 3;
      if (lead == 0xe0) second_min = 0xa0;  // overlong below U+0800
      if (lead == 0xed) second_max = 0x9f;  // surrogates U+D800..U+DFFF
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      length = 4;
      if (lead == 0xf0) second_min = 0x90;  // overlong below U+10000
      if (lead == 0xf4) second_max = 0x8f;  // above U+10FFFF
    } else {
      return i;  // a continuation byte alone, an overlong lead (0xc0, 0xc1), or 0xf5..0xff
    }
    if (n - i < length) return i;
    for (size_t k = 1; k < length; ++k) {
      const uint8_t byte = static_cast<uint8_t>(text[i + k]);
      const uint8_t low = k == 1 ? second_min : 0x80;
      const uint8_t high = k == 1 ? second_max : 0xbf;
      if (byte < low || byte > high) return i;
    }
    i += length;
  }
  return absl::string_view::npos;
}

absl::Status DiagnoseWireFormat(absl::string_view bytes, const Descriptor& descriptor) {
  return WireWalker().Walk(bytes, descriptor, "", 0);
}

absl::Status ParseRequestBytes(absl::string_view bytes, google::protobuf::Message* message) {
  if (bytes.size() <= static_cast<size_t>(INT_MAX) &&
      message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::OkStatus();
  }
  if (absl::Status why = DiagnoseWireFormat(bytes, *message->GetDescriptor()); !why.ok()) {
    return why;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request is not a valid ", message->GetDescriptor()->full_name()));
}

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  if (!buffer.Valid()) return ParseRequestBytes("", message);  // an empty message
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return absl::InternalError("the request could not be read");
  if (slices.size() == 1) {
    return ParseRequestBytes(
        absl::string_view(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()),
        message);
  }
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return ParseRequestBytes(bytes, message);
}

void SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  out->Clear();
  // Only fails on a message too large to send, which none of the agent's can be.
  grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, out, &own_buffer)
      .IgnoreError();
}

}  // namespace tunnelagent::agent
