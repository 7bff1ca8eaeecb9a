// Requests parsed by the API itself: what a malformed one is told, from hand-made wire bytes.
#include "agent/request_parse.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tunnelagent/v1/tunnel.pb.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

// The wire format, piece by piece.
std::string Varint(uint64_t value) {
  std::string out;
  do {
    uint8_t byte = value & 0x7f;
    value >>= 7;
    if (value != 0) byte |= 0x80;
    out.push_back(static_cast<char>(byte));
  } while (value != 0);
  return out;
}
std::string Tag(int number, int wire_type) { return Varint((number << 3) | wire_type); }
std::string Bytes(int number, const std::string& value) {
  return Tag(number, 2) + Varint(value.size()) + value;
}
std::string Number(int number, uint64_t value) { return Tag(number, 0) + Varint(value); }

// Tunnel: name = 1, remote = 4, addresses = 7, labels = 9 (entry: key = 1, value = 2).
// CreateTunnelRequest: tunnel = 1, request_id = 2. ApplyTunnelsRequest: owner = 1, tunnels = 2.
std::string Label(const std::string& key, const std::string& value) {
  return Bytes(9, Bytes(1, key) + Bytes(2, value));
}

absl::Status Parse(const std::string& bytes, google::protobuf::Message* message) {
  return ParseRequestBytes(bytes, message);
}

TEST(FirstInvalidUtf8Test, FindsTheFirstByteOfABadSequence) {
  constexpr size_t kValid = absl::string_view::npos;
  EXPECT_EQ(FirstInvalidUtf8(""), kValid);
  EXPECT_EQ(FirstInvalidUtf8("gre-1"), kValid);
  EXPECT_EQ(FirstInvalidUtf8("t\xc3\xa9st \xe2\x82\xac \xf0\x9f\x98\x80"), kValid);  // é € 😀
  EXPECT_EQ(FirstInvalidUtf8("abc\xff"), 3u);
  EXPECT_EQ(FirstInvalidUtf8("\x80"), 0u);                              // a continuation byte alone
  EXPECT_EQ(FirstInvalidUtf8("ab\xc3"), 2u);                            // cut short
  EXPECT_EQ(FirstInvalidUtf8("a\xc3\x28"), 1u);                         // bad continuation
  EXPECT_EQ(FirstInvalidUtf8("\xc0\xaf"), 0u);                          // overlong '/'
  EXPECT_EQ(FirstInvalidUtf8("\xe0\x80\xaf"), 0u);                      // overlong, 3 bytes
  EXPECT_EQ(FirstInvalidUtf8("x\xed\xa0\x80"), 1u);                     // a surrogate, U+D800
  EXPECT_EQ(FirstInvalidUtf8("\xf4\x90\x80\x80"), 0u);                  // above U+10FFFF
  EXPECT_EQ(FirstInvalidUtf8("\xef\xbf\xbf\xf4\x8f\xbf\xbf"), kValid);  // U+FFFF, U+10FFFF
}

TEST(ParseRequestTest, AValidRequestParses) {
  v1::Tunnel tunnel;
  tunnel.set_name("gre1");
  (*tunnel.mutable_labels())["team"] = "a";
  v1::CreateTunnelRequest sent;
  *sent.mutable_tunnel() = tunnel;
  sent.set_request_id("r-1");
  v1::CreateTunnelRequest got;
  ASSERT_TRUE(Parse(sent.SerializeAsString(), &got).ok());
  EXPECT_EQ(got.tunnel().name(), "gre1");
  EXPECT_EQ(got.request_id(), "r-1");
  EXPECT_TRUE(DiagnoseWireFormat(sent.SerializeAsString(), *sent.GetDescriptor()).ok());
}

TEST(ParseRequestTest, InvalidUtf8NamesTheFieldTheByteAndItsOffset) {
  v1::CreateTunnelRequest request;
  absl::Status status = Parse(Bytes(1, Bytes(1, "abc\xff")), &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "tunnel.name is not valid UTF-8 (byte 0xff at offset 3)");

  status = Parse(Bytes(1, Bytes(1, "gre1")) + Bytes(2, "\xc3"), &request);
  EXPECT_EQ(status.message(), "request_id is not valid UTF-8 (byte 0xc3 at offset 0)");
}

TEST(ParseRequestTest, RepeatedFieldsAreNamedWithTheirIndex) {
  v1::ApplyTunnelsRequest request;
  const std::string ok_tunnel = Bytes(1, "a") + Bytes(7, "10.0.0.1/30");
  const std::string bad_tunnel = Bytes(1, "d") + Bytes(7, "10.0.0.1/30") + Bytes(7, "10.\xfe");
  const std::string bytes = Bytes(1, "team") + Bytes(2, ok_tunnel) + Bytes(2, ok_tunnel) +
                            Bytes(2, ok_tunnel) + Bytes(2, bad_tunnel);
  absl::Status status = Parse(bytes, &request);
  EXPECT_EQ(status.message(), "tunnels[3].addresses[1] is not valid UTF-8 (byte 0xfe at offset 3)");
}

TEST(ParseRequestTest, MapValuesAreNamedByTheirKeyAndBadKeysSaySo) {
  v1::CreateTunnelRequest request;
  absl::Status status =
      Parse(Bytes(1, Bytes(1, "gre1") + Label("team", "a") + Label("k", "x\x80")), &request);
  EXPECT_EQ(status.message(), "tunnel.labels[\"k\"] is not valid UTF-8 (byte 0x80 at offset 1)");

  status = Parse(Bytes(1, Label("\xffkey", "v")), &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "tunnel.labels[\"\\xffkey\"] key is not valid UTF-8 (byte 0xff at offset 0)");

  // A long key is quoted only in part.
  status = Parse(Bytes(1, Label(std::string(5000, 'k'), "\xff")), &request);
  EXPECT_THAT(status.message(), HasSubstr("kkk...\"] is not valid UTF-8"));
  EXPECT_LT(status.message().size(), 200u);
}

TEST(ParseRequestTest, MalformedWireFormatIsInvalidArgumentSayingWhere) {
  v1::CreateTunnelRequest request;
  // The tunnel's length says 10 bytes; 2 follow.
  absl::Status status = Parse(Tag(1, 2) + Varint(10) + "ab", &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "tunnel is cut short");

  // Inside the tunnel, a name whose length runs past the tunnel's end.
  status = Parse(Bytes(1, Tag(1, 2) + Varint(50) + "abc"), &request);
  EXPECT_EQ(status.message(), "tunnel.name is cut short");

  status = Parse(Bytes(1, Tag(4, 7) + "x"), &request);
  EXPECT_EQ(status.message(), "tunnel.remote: wire type 7 does not exist");

  status = Parse(std::string("\x00\x01", 2), &request);
  EXPECT_EQ(status.message(), "the request: field number 0 is out of range");

  status = Parse(std::string("\x8a\x80\x80", 3), &request);  // a tag without its last byte
  EXPECT_EQ(status.message(), "the request: a tag is cut short");
}

TEST(ParseRequestTest, UnknownFieldsAreSkippedWhateverTheyHold) {
  v1::GetTunnelRequest request;
  const std::string bytes = Bytes(1, "gre1") + Bytes(99, "\xff\xfe") + Number(98, 7) + Tag(97, 1) +
                            std::string(8, '\0') + Tag(96, 5) + std::string(4, '\0');
  ASSERT_TRUE(Parse(bytes, &request).ok());
  EXPECT_EQ(request.name(), "gre1");
}

TEST(ParseRequestTest, NestingBeyondTheLimitIsRefused) {
  // Groups nested 200 deep in an unknown field: protobuf refuses them, and so does the walk.
  std::string bytes;
  for (int i = 0; i < 200; ++i) bytes += Tag(50, 3);
  for (int i = 0; i < 200; ++i) bytes += Tag(50, 4);
  v1::GetTunnelRequest request;
  absl::Status status = Parse(bytes, &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("deeper than 100"));
}

}  // namespace
}  // namespace tunnelagent::agent
