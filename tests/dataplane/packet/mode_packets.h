// Golden packets for every tunnel mode and outer-header option, written by
// make_mode_goldens.py (struct.pack and its own checksum, not this code base). Inner packets are
// test_packets.h's; the IPv4 underlay is 203.0.113.1 -> 203.0.113.2 (outer id 0x0102, DF,
// TTL 64 unless said), the IPv6 underlay 2001:db8:ff::1 -> 2001:db8:ff::2 (hop limit 64, the
// RFC 2473 encapsulation-limit option with limit 4, flow label from the inner addresses).
#ifndef TUNNELAGENT_TESTS_DATAPLANE_PACKET_MODE_PACKETS_H_
#define TUNNELAGENT_TESTS_DATAPLANE_PACKET_MODE_PACKETS_H_

namespace tunnelagent::dataplane::test {

inline constexpr char kEthInnerIcmp[] =
    "02 00 00 00 00 02 02 00 00 00 00 01 08 00 45 00 00 24 1c 46"
    "40 00 40 01 32 5c c0 00 02 01 c6 33 64 02 08 00 54 35 12 34"
    "00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGretap[] =
    "45 00 00 4a 01 02 40 00 40 2f c1 7e cb 00 71 01 cb 00 71 02"
    "00 00 65 58 02 00 00 00 00 02 02 00 00 00 00 01 08 00 45 00"
    "00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02 08 00"
    "54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kSit[] =
    "45 00 00 4c 01 02 40 00 37 29 ca 82 cb 00 71 01 cb 00 71 02"
    "60 00 00 00 00 10 3a 37 20 01 0d b8 00 00 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02"
    "80 00 80 75 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kIp6gre[] =
    "60 00 61 4c 00 30 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "2f 00 04 01 04 01 01 00 00 00 08 00 45 00 00 24 1c 46 40 00"
    "40 01 32 5c c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01"
    "61 62 63 64 65 66 67 68";
inline constexpr char kIp6greKeyCsumSeq[] =
    "60 0f 42 1c 00 50 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "2f 00 04 01 04 01 01 00 b0 00 86 dd 2e f3 00 00 00 00 00 2a"
    "00 00 00 07 60 00 00 00 00 10 3a 37 20 01 0d b8 00 00 00 00"
    "00 00 00 00 00 00 00 01 20 01 0d b8 00 00 00 00 00 00 00 00"
    "00 00 00 02 80 00 80 75 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kIp6gretap[] =
    "60 00 61 4c 00 3e 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "2f 00 04 01 04 01 01 00 00 00 65 58 02 00 00 00 00 02 02 00"
    "00 00 00 01 08 00 45 00 00 24 1c 46 40 00 40 01 32 5c c0 00"
    "02 01 c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66"
    "67 68";
inline constexpr char kIp6tnl4[] =
    "60 00 61 4c 00 2c 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "04 00 04 01 04 01 01 00 45 00 00 24 1c 46 40 00 40 01 32 5c"
    "c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64"
    "65 66 67 68";
inline constexpr char kIp6tnl6[] =
    "60 0f 42 1c 00 40 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "29 00 04 01 04 01 01 00 60 00 00 00 00 10 3a 37 20 01 0d b8"
    "00 00 00 00 00 00 00 00 00 00 00 01 20 01 0d b8 00 00 00 00"
    "00 00 00 00 00 00 00 02 80 00 80 75 12 34 00 01 61 62 63 64"
    "65 66 67 68";
inline constexpr char kGreTos28Ect0[] =
    "45 2a 00 3c 01 02 40 00 40 2f c1 62 cb 00 71 01 cb 00 71 02"
    "00 00 08 00 45 02 00 24 1c 46 40 00 40 01 32 5a c0 00 02 01"
    "c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kInnerIcmpDscpEf[] =
    "45 ba 00 24 1c 46 40 00 40 01 31 a2 c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreTosInherit[] =
    "45 ba 00 3c 01 02 40 00 40 2f c0 d2 cb 00 71 01 cb 00 71 02"
    "00 00 08 00 45 ba 00 24 1c 46 40 00 40 01 31 a2 c0 00 02 01"
    "c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kIp6greTclassInherit[] =
    "6b a0 61 4c 00 30 3c 40 20 01 0d b8 00 ff 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 ff 00 00 00 00 00 00 00 00 00 02"
    "2f 00 04 01 04 01 01 00 00 00 08 00 45 ba 00 24 1c 46 40 00"
    "40 01 31 a2 c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01"
    "61 62 63 64 65 66 67 68";
inline constexpr char kInnerIcmpNoDf[] =
    "45 00 00 24 1c 46 00 00 40 01 72 5c c0 00 02 01 c6 33 64 02"
    "08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreNoPmtudiscNoDf[] =
    "45 00 00 3c 01 02 00 00 40 2f 01 8d cb 00 71 01 cb 00 71 02"
    "00 00 08 00 45 00 00 24 1c 46 00 00 40 01 72 5c c0 00 02 01"
    "c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68";
inline constexpr char kGreKeepaliveHome[] =
    "45 00 00 1c 00 00 00 00 ff 2f 43 ae cb 00 71 02 cb 00 71 01"
    "20 00 00 00 00 00 00 2a";
inline constexpr char kGreKeepaliveSent[] =
    "45 00 00 34 01 02 40 00 40 2f c1 94 cb 00 71 01 cb 00 71 02"
    "00 00 08 00 45 00 00 1c 00 00 00 00 ff 2f 43 ae cb 00 71 02"
    "cb 00 71 01 20 00 00 00 00 00 00 2a";
inline constexpr char kIpipKeepaliveHome[] =
    "45 00 00 14 00 00 00 00 ff 04 43 e1 cb 00 71 02 cb 00 71 01";
inline constexpr char kFragNeeded[] =
    "45 00 00 40 00 00 00 00 40 01 ae bb 0a 00 00 01 c0 00 02 01"
    "03 04 f7 83 00 00 05 78 45 00 00 24 1c 46 40 00 40 01 32 5c"
    "c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64"
    "65 66 67 68";
inline constexpr char kPacketTooBig[] =
    "60 00 00 00 00 40 3a 40 fd 00 00 00 00 00 00 00 00 00 00 00"
    "00 00 00 01 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
    "02 00 33 cc 00 00 05 00 60 00 00 00 00 10 3a 37 20 01 0d b8"
    "00 00 00 00 00 00 00 00 00 00 00 01 20 01 0d b8 00 00 00 00"
    "00 00 00 00 00 00 00 02 80 00 80 75 12 34 00 01 61 62 63 64"
    "65 66 67 68";

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_PACKET_MODE_PACKETS_H_
