#!/usr/bin/python3
"""Writes the seed corpus of receive_fuzzer into tests/fuzz/receive_corpus/.

Most files are one IPv4 packet as a raw socket delivers it (outer header first): valid GRE
(keyless, keyed, checksum, sequence; IPv4 and IPv6 inside), gretap frames, IPIP and sit, the
ECN cases of RFC 6040, keepalives coming home (empty payloads), and malformed packets for every
rejection Decapsulate has. Files starting with 0x6_ are what an IPv6 raw socket delivers, behind
a three-byte preamble (0x60, next header selector: 0 GRE, 1 IPIP, 2 IPv6; traffic class) that
receive_fuzzer.cc reads: ip6gre, ip6gretap and ip6tnl. Packets come from 203.0.113.1 to
203.0.113.2, the addresses of the tunnels receive_fuzzer.cc puts in its table. Built with
struct.pack and a checksum of its own, not with the code under test. Deterministic: running it
again rewrites the same bytes. Files it does not name (crash inputs added by hand) are kept.

Usage: /usr/bin/python3 tests/fuzz/make_corpus.py [output dir]
"""

import os
import struct
import sys

PEER = bytes([203, 0, 113, 1])  # the packet's source
SELF = bytes([203, 0, 113, 2])  # the packet's destination
OTHER = bytes([203, 0, 113, 3])
STRANGER = bytes([198, 51, 100, 9])

PROTO_IPIP = 4
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_GRE = 47

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_TEB = 0x6558

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(payload, proto, src, dst, tos=0, ttl=64, ident=0x0102, frag=0x4000, options=b"",
         total_len=None, version=4, ihl=None):
    """An IPv4 header (correct checksum unless the fields are made inconsistent) + payload."""
    hlen = 20 + len(options)
    if ihl is None:
        ihl = hlen // 4
    if total_len is None:
        total_len = hlen + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, tos, total_len, ident, frag, ttl,
                         proto, 0, src, dst) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def icmp_echo(ident=0x1234, seq=1, data=b"abcdefgh"):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def inner_v4(tos=0, data=b"abcdefgh", options=b""):
    """ICMP echo 192.0.2.1 -> 198.51.100.2."""
    return ipv4(icmp_echo(data=data), 1, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]),
                tos=tos, ident=0x1C46, options=options)


def inner_v6(tc=0, data=b"abcdefgh", payload_len=None):
    """ICMPv6 echo 2001:db8::1 -> 2001:db8::2 (checksum left 0: nobody here checks it)."""
    payload = struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1) + data
    if payload_len is None:
        payload_len = len(payload)
    first = 6 << 28 | tc << 20
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    return struct.pack("!IHBB", first, payload_len, 58, 0x37) + src + dst + payload


def gre(inner, ptype=None, key=None, seq=None, csum=False, flags_extra=0, version=0,
        bad_csum=False):
    if ptype is None:
        ptype = ETH_IPV6 if inner and inner[0] >> 4 == 6 else ETH_IPV4
    flags = flags_extra | version
    opts = b""
    if csum:
        flags |= 0x8000
        opts += b"\0\0\0\0"
    if key is not None:
        flags |= 0x2000
        opts += struct.pack("!I", key)
    if seq is not None:
        flags |= 0x1000
        opts += struct.pack("!I", seq)
    packet = struct.pack("!HH", flags, ptype) + opts + inner
    if csum:
        value = checksum(packet) ^ (0x0001 if bad_csum else 0)
        packet = packet[:4] + struct.pack("!H", value) + packet[6:]
    return packet


def gre_pkt(inner, src=PEER, dst=SELF, tos=0, **kw):
    return ipv4(gre(inner, **kw), PROTO_GRE, src, dst, tos=tos)


def ipip_pkt(inner, src=PEER, dst=SELF, tos=0):
    return ipv4(inner, PROTO_IPIP, src, dst, tos=tos)


def cut(packet, n):
    """The first n bytes, with the outer total length (and checksum) saying n."""
    head = bytearray(packet[:n])
    if n >= 20:
        ihl = (head[0] & 0x0F) * 4
        head[2:4] = struct.pack("!H", n)
        head[10:12] = b"\0\0"
        head[10:12] = struct.pack("!H", checksum(bytes(head[:ihl])))
    return bytes(head)


def eth_frame(inner, ethertype=0x0800):
    """An Ethernet frame 02:00:00:00:00:01 -> 02:00:00:00:00:02 around `inner`."""
    return bytes.fromhex("020000000002020000000001") + struct.pack("!H", ethertype) + inner


def ipv6_input(payload, next_header, tclass=0):
    """What an IPv6 raw socket of `next_header` delivers, behind receive_fuzzer's preamble."""
    selector = {PROTO_GRE: 0, PROTO_IPIP: 1, PROTO_IPV6: 2}[next_header]
    return bytes([0x60, selector, tclass]) + payload


def corpus():
    v4 = inner_v4()
    v6 = inner_v6()
    c = {}

    # ---- valid GRE and IPIP, and the tunnel each one finds (see receive_fuzzer.cc) ----
    c["gre_v4"] = gre_pkt(v4)  # "gre"
    c["gre_v6"] = gre_pkt(v6)
    c["gre_key42_v4"] = gre_pkt(v4, key=42)  # "gre-key42"
    c["gre_key42_v6"] = gre_pkt(v6, key=42)
    c["gre_key0_v4"] = gre_pkt(v4, key=0)  # "gre-key0", not the keyless one
    c["gre_key7_v4"] = gre_pkt(v4, key=7)  # "gre-key7-any-local"
    c["gre_key7_other_dst_v4"] = gre_pkt(v4, key=7, dst=STRANGER)  # the same
    c["gre_key99_stranger_v4"] = gre_pkt(v4, key=99, src=STRANGER, dst=STRANGER)  # wildcard
    c["gre_key5_no_tunnel_v4"] = gre_pkt(v4, key=5)
    c["gre_from_other_v4"] = gre_pkt(v4, src=OTHER)  # remote-only beats local-only
    c["gre_from_stranger_v4"] = gre_pkt(v4, src=STRANGER)  # "gre-any-remote"
    c["gre_to_stranger_no_tunnel_v4"] = gre_pkt(v4, dst=STRANGER)
    c["gre_csum_v4"] = gre_pkt(v4, csum=True)
    c["gre_csum_v6"] = gre_pkt(v6, csum=True)
    c["gre_seq_v4"] = gre_pkt(v4, seq=7)
    c["gre_key_seq_v6"] = gre_pkt(v6, key=42, seq=0xFFFFFFFF)
    c["gre_csum_key_seq_v4"] = gre_pkt(v4, csum=True, key=42, seq=7)
    c["gre_csum_key_seq_v6"] = gre_pkt(v6, csum=True, key=42, seq=7)
    c["gre_rfc1701_flags_v4"] = gre_pkt(v4, flags_extra=0x0800 | 0x0700)  # s bit, recursion
    c["gre_inner_options_v4"] = gre_pkt(inner_v4(options=b"\x01\x01\x01\x00"))
    c["gre_v6_no_payload"] = gre_pkt(inner_v6(payload_len=0)[:40], key=42)
    c["ipip_v4"] = ipip_pkt(v4)  # "ipip"
    c["ipip_from_other_v4"] = ipip_pkt(v4, src=OTHER)  # "ipip-any-local-from-other"
    c["ipip_stranger_v4"] = ipip_pkt(v4, src=STRANGER, dst=STRANGER)  # "ipip-wildcard"
    c["outer_options_gre_v4"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, options=b"\x01" * 8)
    c["outer_max_ihl_ipip_v4"] = ipv4(v4, PROTO_IPIP, PEER, SELF, options=b"\x01" * 40)
    c["outer_link_padding_gre_v4"] = gre_pkt(v4) + b"\0" * 6
    c["inner_padding_gre_v4"] = gre_pkt(v4 + b"\xee" * 5)
    c["inner_padding_gre_v6"] = gre_pkt(v6 + b"\xee" * 3)
    c["gre_csum_odd_len_v4"] = gre_pkt(inner_v4(data=b"abcdefghi"), csum=True)
    # Largest packets (total length 65535): GRE around them again does not fit (kTooBig).
    c["max_size_gre_v4"] = gre_pkt(inner_v4(data=b"\x5a" * (65535 - 24 - 28)))
    c["max_size_ipip_v4"] = ipip_pkt(inner_v4(data=b"\x5a" * (65535 - 20 - 28)))
    c["outer_no_df_gre_v4"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, frag=0)

    # ---- ECN (RFC 6040 section 4.2) ----
    c["ecn_ce_over_ect0_v4"] = gre_pkt(inner_v4(tos=ECT0), tos=CE)  # marked CE
    c["ecn_ce_over_ect1_v6"] = gre_pkt(inner_v6(tc=ECT1), tos=CE)
    c["ecn_ce_over_ce_v4"] = gre_pkt(inner_v4(tos=0xB8 | CE), tos=CE)  # DSCP EF kept
    c["ecn_ce_over_not_ect_v4"] = gre_pkt(v4, tos=CE)  # kEcnError
    c["ecn_ce_over_not_ect_v6"] = gre_pkt(v6, tos=CE)
    c["ecn_ect0_over_not_ect_v4"] = gre_pkt(v4, tos=ECT0)  # unchanged
    c["ecn_ce_over_ect0_ipip"] = ipip_pkt(inner_v4(tos=ECT0), tos=0x20 | CE)
    c["ecn_ce_over_ect1_options_v4"] = gre_pkt(inner_v4(tos=ECT1, options=b"\x94\x04\0\0"),
                                               tos=CE)
    c["ecn_ce_over_ect0_csum_v4"] = gre_pkt(inner_v4(tos=ECT0), tos=CE, csum=True)
    c["ecn_ce_over_ect0_csum_key_v6"] = gre_pkt(inner_v6(tc=0xB8 | ECT0), tos=CE, csum=True,
                                                key=42)

    # ---- truncated at each boundary ----
    full = gre_pkt(v4, key=42, seq=7)  # 20 outer + 12 GRE + 36 inner
    for n in (0, 1, 19):
        c["trunc_raw_%d" % n] = full[:n]
    c["trunc_raw_ihl_past_end"] = c["outer_options_gre_v4"][:24]
    c["trunc_raw_total_len_past_end"] = full[:-1]
    for n in (20, 23, 24, 27, 31, 32, 33, 51, 52, 67):
        c["trunc_gre_key_seq_at_%d" % n] = cut(full, n)
    c["trunc_gre_csum_at_27"] = cut(gre_pkt(v4, csum=True), 27)
    c["trunc_ipip_at_39"] = cut(ipip_pkt(v4), 39)
    c["trunc_gre_v6_at_63"] = cut(gre_pkt(v6), 63)  # inner header 39 bytes
    c["trunc_gre_v6_payload"] = cut(gre_pkt(v6), len(gre_pkt(v6)) - 1)
    c["gre_only_header"] = gre_pkt(b"", ptype=ETH_IPV4)

    # ---- malformed outer header ----
    c["outer_version6"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, version=6)
    c["outer_ihl4"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, ihl=4)
    c["outer_total_len_below_ihl"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, total_len=19)
    c["outer_more_fragments"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, frag=0x2000)
    c["outer_fragment_offset"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, frag=0x0001)
    c["outer_last_fragment"] = ipv4(gre(v4), PROTO_GRE, PEER, SELF, frag=0x4000 | 0x1FFF)
    c["outer_proto_udp"] = ipv4(gre(v4), PROTO_UDP, PEER, SELF)
    c["outer_proto_6in4"] = ipv4(v6, PROTO_IPV6, PEER, SELF)

    # ---- malformed GRE ----
    c["gre_version1_pptp"] = gre_pkt(v4, version=1, key=42)
    c["gre_version7"] = gre_pkt(v4, version=7)
    c["gre_routing_bit"] = gre_pkt(v4, flags_extra=0x4000)
    c["gre_bad_checksum"] = gre_pkt(v4, csum=True, bad_csum=True)
    c["gre_bad_checksum_v6"] = gre_pkt(v6, csum=True, key=42, bad_csum=True)
    c["gre_type_teb"] = gre_pkt(v4, ptype=ETH_TEB)
    c["gre_type_zero"] = gre_pkt(v4, ptype=0)

    # ---- wrong or malformed inner packet ----
    c["inner_v6_in_ipv4_type"] = gre_pkt(v6, ptype=ETH_IPV4)
    c["inner_v4_in_ipv6_type"] = gre_pkt(v4, ptype=ETH_IPV6)
    c["inner_v6_in_ipip"] = ipip_pkt(v6)
    c["inner_version0"] = gre_pkt(b"\x05" + v4[1:], ptype=ETH_IPV4)
    c["inner_ihl4"] = gre_pkt(b"\x44" + v4[1:])
    c["inner_ihl_past_end"] = gre_pkt(b"\x4f" + v4[1:])
    c["inner_total_len_below_ihl"] = gre_pkt(v4[:2] + struct.pack("!H", 19) + v4[4:])
    c["inner_total_len_past_end"] = gre_pkt(v4[:2] + struct.pack("!H", len(v4) + 1) + v4[4:])
    c["inner_v6_payload_len_past_end"] = gre_pkt(inner_v6(payload_len=17))

    # ---- the other modes: gretap, sit, keepalives, the IPv6 underlay ----
    c["gretap_v4"] = gre_pkt(eth_frame(v4), ptype=ETH_TEB)  # "gretap"
    c["gretap_key42_arp"] = gre_pkt(eth_frame(b"\0\1\x08\0\6\4\0\1" + b"\0" * 20, 0x0806),
                                    ptype=ETH_TEB, key=42)
    c["gretap_ce_over_ect0"] = gre_pkt(eth_frame(inner_v4(tos=ECT0)), ptype=ETH_TEB, tos=CE)
    c["gretap_short_frame"] = gre_pkt(eth_frame(b"")[:13], ptype=ETH_TEB)
    c["sit_v6"] = ipv4(v6, PROTO_IPV6, PEER, SELF)  # "sit"
    c["sit_v4_inside"] = ipv4(v4, PROTO_IPV6, PEER, SELF)
    c["keepalive_home_gre_key42"] = gre_pkt(b"", ptype=0, key=42)
    c["keepalive_home_ipip"] = ipip_pkt(b"")
    c["keepalive_peer_gre"] = gre_pkt(gre_pkt(b"", ptype=0, src=SELF, dst=PEER))
    c["v6_ip6gre_v4"] = ipv6_input(gre(v4), PROTO_GRE)  # "ip6gre"
    c["v6_ip6gre_key42_v6"] = ipv6_input(gre(v6, key=42, csum=True), PROTO_GRE)
    c["v6_ip6gretap_frame"] = ipv6_input(gre(eth_frame(v4), ptype=ETH_TEB), PROTO_GRE)
    c["v6_ip6tnl_v4"] = ipv6_input(v4, PROTO_IPIP)  # "ip6tnl"
    c["v6_ip6tnl_v6"] = ipv6_input(v6, PROTO_IPV6)
    c["v6_ip6tnl_ce_over_ect0"] = ipv6_input(inner_v4(tos=ECT0), PROTO_IPIP, tclass=CE)
    c["v6_ip6tnl_ce_over_not_ect"] = ipv6_input(v6, PROTO_IPV6, tclass=CE)
    c["v6_ip6gre_empty"] = ipv6_input(gre(b"", ptype=0), PROTO_GRE)
    c["v6_ip6gre_truncated"] = ipv6_input(gre(v4)[:3], PROTO_GRE)
    return c


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "receive_corpus")
    os.makedirs(out, exist_ok=True)
    files = corpus()
    for name in sorted(files):
        with open(os.path.join(out, name), "wb") as f:
            f.write(files[name])
    print("make_corpus: wrote %d files to %s" % (len(files), out))


if __name__ == "__main__":
    main()
