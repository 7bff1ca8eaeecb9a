// Requests as they arrive: the API parses each one itself, so a request that is not a valid
// message is INVALID_ARGUMENT saying what is wrong with it and where (gRPC's own parsing
// answers INTERNAL with an empty message, and protobuf logs a line per request).
//
// The diagnosis walks the wire format beside the message's Descriptor and names the field by
// its path: "tunnel.name", "tunnels[3].addresses[0]", "tunnel.labels[\"k\"]".
#ifndef TUNNELAGENT_AGENT_REQUEST_PARSE_H_
#define TUNNELAGENT_AGENT_REQUEST_PARSE_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace grpc {
class ByteBuffer;
}  // namespace grpc

namespace tunnelagent::agent {

// The offset of the first byte of `text` that does not begin or continue a well-formed UTF-8
// sequence (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF); npos when
// `text` is all valid.
size_t FirstInvalidUtf8(absl::string_view text);

// Why `bytes` is not a valid `descriptor` message, as INVALID_ARGUMENT: a string field that is
// not valid UTF-8 ("tunnel.name is not valid UTF-8 (byte 0xff at offset 3)"), a field cut
// short, a malformed tag or length, nesting beyond protobuf's limit. OK when the walk finds
// nothing wrong.
absl::Status DiagnoseWireFormat(absl::string_view bytes,
                                const google::protobuf::Descriptor& descriptor);

// Parses `bytes` into `message`; INVALID_ARGUMENT as DiagnoseWireFormat says when it cannot.
absl::Status ParseRequestBytes(absl::string_view bytes, google::protobuf::Message* message);

// The same for a request as gRPC hands it over.
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);

// A response (or a streamed message) as gRPC sends it; `out` is emptied first, so a stream may
// reuse one buffer.
void SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* out);

}  // namespace tunnelagent::agent

#endif  // TUNNELAGENT_AGENT_REQUEST_PARSE_H_
